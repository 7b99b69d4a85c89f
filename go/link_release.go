//go:build etcd_registry_release && !etcd_registry_system

package etcdregistry

// The static library of a release build in this repository
// (`cargo build --release -p etcd-registry-ffi`).

// #cgo LDFLAGS: ${SRCDIR}/../target/release/libetcd_registry.a -lgcc_s -lutil -lrt -lpthread -lm -ldl
import "C"
