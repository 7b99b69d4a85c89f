//go:build !etcd_registry_release && !etcd_registry_system

package etcdregistry

// Default: link the static library of a debug build in this repository (`cargo build -p
// etcd-registry-ffi`, the profile the C suite also builds), so a Go binary needs no
// LD_LIBRARY_PATH. Build tags choose another: etcd_registry_release (target/release),
// etcd_registry_system (pkg-config --static, after `ffi/install.sh --static`).

// #cgo LDFLAGS: ${SRCDIR}/../target/debug/libetcd_registry.a -lgcc_s -lutil -lrt -lpthread -lm -ldl
import "C"
