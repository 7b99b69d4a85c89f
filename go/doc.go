// Package etcdregistry registers service nodes in etcd and discovers them. It is a drop-in
// replacement for go.lumeweb.com/etcd-registry (same NewEtcdRegistry, Node, RegisterNode and
// GetServiceNodes, same key layout <basePath>/<service>/<node> with a JSON info value), built
// through cgo on the Rust etcd-registry library (libetcd_registry, include/etcd_registry.h).
// An existing service changes only its import path:
//
//	import etcdregistry "github.com/etcd-registry/etcd-registry/go"
//
//	reg, err := etcdregistry.NewEtcdRegistry([]string{"localhost:2379"}, "/services", "", "", 10*time.Second)
//	done, errChan, err := reg.RegisterNode(ctx, "my-service",
//		etcdregistry.Node{Name: "node1", Info: map[string]string{"version": "1.0.0"}}, 30*time.Second)
//	select {
//	case <-done: // first registration landed
//	case err := <-errChan: // it failed (retries go on) or ctx ended
//		log.Print(err)
//	}
//	nodes, err := reg.GetServiceNodes("my-service")
//
// Unlike the library it replaces, a registration never gives up: it keeps its lease alive and
// re-registers after any outage, with backoff (1 s doubling to 30 s), until its context ends.
// Beyond the old API: Register (status events, state, lease, Update of the info in place),
// UnregisterNode, WatchService (change events and the live node set), GetServiceNodesContext
// and ServicesContext (calls that return ctx.Err() as soon as their context ends), Services,
// Close (unregisters everything), SetLogger (the library's logs into log/slog) and New
// (backoff and the rest of the configuration).
//
// # Errors
//
// Every error is an *Error with a Code, except the ctx.Err() of a caller's context, which a
// call taking one returns as it is when that context ends; errors.Is works with the sentinels ErrInvalidArgument,
// ErrConnection, ErrTimeout, ErrAuth, ErrNotFound, ErrClosed, ErrInternal, ErrTLS (also an
// ErrConnection) and ErrResourceExhausted, and a timeout
// also matches context.DeadlineExceeded (its text says "context deadline exceeded"). An
// authentication failure says "authentication".
//
// # Building
//
// The package finds the Rust library through pkg-config (etcd_registry-static) and links it
// statically, so a Go program needs no LD_LIBRARY_PATH. It requires cgo (CGO_ENABLED=1 and a C
// compiler): without it the build fails with "undefined:
// etcdregistry_requires_cgo_set_CGO_ENABLED_1_and_a_C_compiler". Install the library once, then
// use the go command as usual:
//
//	ffi/install.sh --prefix "$HOME/.local"                # from a checkout of the repository
//	export PKG_CONFIG_PATH="$HOME/.local/lib/pkgconfig"
//	go build ./...
//
// In the repository itself, go/run-tests.sh does everything, or eval "$(scripts/go-env.sh)"
// points pkg-config at the build tree. See go/README.md.
//
// # Threads and lifetimes
//
// The library runs its own threads. Events come to Go through its pull queue: one goroutine
// per registry waits in Go's netpoller on the registry's event descriptor
// (etcd_registry_event_fd; where there is none, inside etcd_registry_next_event), takes the
// queued events with etcd_registry_next_event and puts each in the queue of its
// registration or watch (read through their channels; neither has a goroutine of its own), so
// no foreign thread calls into Go for them and C holds no Go pointer.
// Only the optional log forwarding is a callback, with a runtime/cgo.Handle as its user data
// and a recover() in the exported trampoline. A registry is closed by a finalizer when it is
// unreachable and has no running registration or watch, but call Close: it is what deletes the
// keys at once.
package etcdregistry
