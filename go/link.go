package etcdregistry

// The C library is found by pkg-config, the way cgo packages find their C dependencies: the
// package etcd_registry-static (written by `ffi/install.sh --prefix DIR`, found with
// PKG_CONFIG_PATH=DIR/lib/pkgconfig unless DIR is a system prefix) gives the header's
// directory and links the archive, so programs need no LD_LIBRARY_PATH. In this repository,
// go/run-tests.sh points PKG_CONFIG_PATH at the build tree (`ffi/install.sh --in-tree`).
// go/README.md says why pkg-config rather than a library shipped inside the module.

// #cgo pkg-config: etcd_registry-static
import "C"
