// A module of its own, like go/grpcresolver, so that the other examples need no grpc-go.
module github.com/etcd-registry/etcd-registry/examples/go/grpc

go 1.26.0

// The packages are used from this checkout (build the Rust library first: see go/README.md).
replace (
	github.com/etcd-registry/etcd-registry/go => ../../../go
	github.com/etcd-registry/etcd-registry/go/grpcresolver => ../../../go/grpcresolver
)

require (
	github.com/etcd-registry/etcd-registry/go v0.0.0
	github.com/etcd-registry/etcd-registry/go/grpcresolver v0.0.0
	google.golang.org/grpc v1.85.0
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
