package etcdregistry

/*
#include "shims.h"
*/
import "C"

// Version returns the version of the C library this program is linked with, e.g. "0.1.0":
// the one version of etcd-registry (Cargo.toml), the same that C's etcd_registry_version()
// and Python's etcd_registry.__version__ report.
func Version() string {
	return C.GoString(C.etcd_registry_version())
}
