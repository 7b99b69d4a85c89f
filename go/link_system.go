//go:build etcd_registry_system

package etcdregistry

// An installed library, found by pkg-config (`ffi/install.sh --prefix DIR --static`, then
// PKG_CONFIG_PATH=DIR/lib/pkgconfig). --static asks for the archive's system libraries too.

// #cgo pkg-config: --static etcd_registry
import "C"
