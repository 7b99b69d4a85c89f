module github.com/etcd-registry/etcd-registry/examples/go

go 1.24

require github.com/etcd-registry/etcd-registry/go v0.0.0

// The package is used from this checkout (build the Rust library first: see go/README.md).
replace github.com/etcd-registry/etcd-registry/go => ../../go
