package etcdregistry

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is the full configuration of a registry; NewEtcdRegistry covers the common part.
type Config struct {
	// Endpoints of the etcd cluster, "host:port", "http://host:port" or "https://host:port"
	// (TLS, see the TLS type). At least one.
	Endpoints []string
	// BasePath prefixes every key: nodes live at <BasePath>/<service>/<node>, joined like
	// path.Join. May be empty (keys then start with the service name).
	BasePath string
	// Username and Password for an etcd with authentication; an empty Username means none.
	// Given to an etcd without authentication, they are ignored (with a warning in the log).
	Username, Password string
	// Timeout of connecting and of each etcd call. 0 means DefaultTimeout (10 s).
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the retry delays of registrations and watches after a
	// failure: BackoffMin doubling up to BackoffMax, each shortened by up to 20 % at random.
	// 0 means DefaultBackoffMin (1 s) and DefaultBackoffMax (30 s).
	BackoffMin, BackoffMax time.Duration
	// TLS to etcd; nil means plain HTTP/2 unless an endpoint is "https://".
	TLS *TLS
}

// EtcdRegistry registers nodes of services in etcd and discovers them. All methods are safe
// for concurrent use. It holds one etcd connection (made when first needed) and one lease per
// distinct TTL. Close it when done: Close unregisters everything at once. A registry that is no
// longer referenced, and has no running registration or watch, is closed by the garbage
// collector as a safety net.
type EtcdRegistry struct {
	h *handle
}

// made reports whether r was made by this package (New and its variants), not nil or a zero
// value: the methods of one that was not return an error matching ErrInvalidArgument.
func (r *EtcdRegistry) made() bool { return r != nil && r.h != nil }

// handle owns the C registry. The EtcdRegistry users see wraps it so that the goroutine pulling
// events (which references only the handle) does not keep the EtcdRegistry alive: when nothing
// else does, its finalizer closes the handle, which ends that goroutine.
type handle struct {
	// life guards ptr: every C call holds the read lock; close frees ptr under the write lock,
	// so no call is inside the library when it is freed.
	life    sync.RWMutex
	ptr     *cRegistry  // nil once freed
	freeing atomic.Bool // set once close is about to free ptr

	mu            sync.Mutex
	closing       bool                      // guarded by mu; set before the C registry is closed
	registrations map[nodeKey]*Registration // guarded by mu: the live registration of each node
	// registering makes registering in the library and recording in registrations one step, so
	// that of two registrations of one node made at once, the map keeps the one the library
	// keeps (the later, which replaces the other).
	registering sync.Mutex

	closed    chan struct{} // closed once the C registry is closed
	closeOnce sync.Once
	closeErr  error

	dispatchOnce    sync.Once
	dispatchStarted bool
	dispatchDone    chan struct{}
	routes          *routes
	// waitInLibrary makes the dispatcher wait inside next_event instead of on the event
	// descriptor (what it does when it cannot have one); set by tests before the first use.
	waitInLibrary bool
}

type nodeKey struct{ service, node string }

// keyOf is the key of a node in registrations: its names as they are in etcd, a '/' becoming
// '-' (the library's rule), so that "a/b" and "a-b" are one node, as they are one key.
func keyOf(service, node string) nodeKey {
	return nodeKey{strings.ReplaceAll(service, "/", "-"), strings.ReplaceAll(node, "/", "-")}
}

// NewEtcdRegistry creates a registry. It accepts what go.lumeweb.com/etcd-registry accepts: a
// defaultTimeout <= 0 means the default of 10 s, and empty entries in endpoints are skipped. A
// list of only empty entries is accepted too, as etcd's Go client accepts it, and every call
// then fails as there: with a deadline error once the timeout has passed, as nothing can be
// reached. It fails only on no endpoint at all (nil or empty) or a malformed one; it does
// not dial, so etcd may be down now: every operation connects when it needs to, and
// registrations retry until etcd is up. Credentials are used when both username and password
// are given (as the original does); New takes a username with an empty password.
// defaultTimeout bounds each etcd call, waiting for etcd to be reachable included.
func NewEtcdRegistry(endpoints []string, basePath, username, password string, defaultTimeout time.Duration) (*EtcdRegistry, error) {
	usable := make([]string, 0, len(endpoints))
	for _, e := range endpoints {
		if strings.TrimSpace(e) != "" {
			usable = append(usable, e)
		}
	}
	if len(usable) == 0 && len(endpoints) > 0 {
		// Only empty entries: clientv3 takes them and its dialer then fails every attempt
		// ("missing address") until each call's deadline. The library has no endpoint without
		// an address, so it gets one where nothing answers, which behaves the same.
		usable = []string{unreachableEndpoint}
	}
	if len(usable) == 0 {
		return nil, invalidArgument("new registry", "no etcd endpoints")
	}
	if username == "" || password == "" {
		// As the original: credentials are used only when both are given.
		username, password = "", ""
	}
	return New(Config{
		Endpoints: usable,
		BasePath:  basePath,
		Username:  username,
		Password:  password,
		Timeout:   max(defaultTimeout, 0),
	})
}

// unreachableEndpoint stands for an endpoint list of only empty entries: the loopback discard
// port, where no etcd answers (connections are refused), so each call fails at its deadline.
const unreachableEndpoint = "127.0.0.1:9"

// New creates a registry from a full configuration. Like NewEtcdRegistry, it does not dial.
func New(cfg Config) (*EtcdRegistry, error) {
	const op = "new registry"
	if len(cfg.Endpoints) == 0 {
		return nil, invalidArgument(op, "no etcd endpoints")
	}
	for _, e := range cfg.Endpoints {
		if strings.TrimSpace(e) == "" {
			return nil, invalidArgument(op, "empty etcd endpoint")
		}
	}
	if cfg.TLS != nil && cfg.TLS.usesFiles() && cfg.TLS.usesPEM() {
		return nil, invalidArgument(op, "TLS: give the CA, certificate and key as files or as PEM, not both")
	}
	if cfg.Timeout < 0 || cfg.BackoffMin < 0 || cfg.BackoffMax < 0 {
		return nil, invalidArgument(op, "durations must not be negative")
	}
	if cfg.BackoffMin > 0 || cfg.BackoffMax > 0 {
		if cfg.BackoffMin == 0 {
			cfg.BackoffMin = min(DefaultBackoffMin, cfg.BackoffMax)
		}
		if cfg.BackoffMax == 0 {
			cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffMin)
		}
	}
	p, err := cConnect(cfg)
	if err != nil {
		return nil, err
	}
	r := &EtcdRegistry{h: &handle{
		ptr:           p,
		registrations: map[nodeKey]*Registration{},
		closed:        make(chan struct{}),
		dispatchDone:  make(chan struct{}),
		routes:        newRoutes(),
	}}
	runtime.SetFinalizer(r, finalizeRegistry)
	return r, nil
}

func finalizeRegistry(r *EtcdRegistry) {
	// Closing waits for etcd (revoking leases); never block the finalizer goroutine on it.
	go r.h.close()
}

// Close unregisters every node of this registry (their keys are deleted at once), stops its
// watches and releases it. Registrations still running end with ErrClosed on their error
// channels. Close is idempotent and safe to call concurrently. It never fails because etcd is
// unreachable: the revoke is tried within the timeout, a warning is logged when etcd could not
// be told, and the keys expire with their lease (within the TTL). Any other use afterwards
// returns an error matching ErrClosed. A list or services call still waiting for etcd does
// not hold Close up: it ends on its own, with its answer or its error. (Where no eventfd can
// be had, not on Linux or out of descriptors, such a call waits inside C, and Close waits for
// it to leave C, up to the registry's timeout, even once the call's context has ended.)
func (r *EtcdRegistry) Close() error {
	if !r.made() {
		return notMade("close", "the EtcdRegistry")
	}
	err := r.h.close()
	runtime.SetFinalizer(r, nil)
	return err
}

// GetServiceNodes lists the nodes of a service in one etcd request, in descending key order
// (as go.lumeweb.com/etcd-registry lists them). Every key below the service is a node, named
// by the rest of its key: <base>/<service>/sub/deep is the node "sub/deep". An empty service
// name is an error; a service without nodes gives an empty slice and no error.
func (r *EtcdRegistry) GetServiceNodes(service string) ([]Node, error) {
	return r.GetServiceNodesContext(context.Background(), service)
}

// GetServiceNodesContext is GetServiceNodes bounded by ctx as well as by the registry's
// timeout: when ctx ends while etcd has not answered yet, it returns ctx.Err() at once. A nil
// ctx is an error matching ErrInvalidArgument. An extension: the original library has no such
// call.
func (r *EtcdRegistry) GetServiceNodesContext(ctx context.Context, service string) ([]Node, error) {
	const op = "list"
	if !r.made() {
		return nil, notMade(op, "the EtcdRegistry")
	}
	if ctx == nil {
		return nil, invalidArgument(op, "nil context")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Started holding the registry, waited for without: a Close meanwhile neither waits for
	// the answer nor holds up other calls behind it.
	h := r.h
	var call *asyncCall
	var nodes []Node
	err := h.use(op, func(p *cRegistry) error {
		var err error
		call, err = cListStart(p, service)
		return err
	})
	if err == nil && call != nil {
		nodes, err = cList(ctx, call)
	} else if err == nil {
		// No eventfd here: as in ServicesContext, the list blocks in C in a goroutine of its
		// own when ctx can end, which holds the registry until it leaves C.
		nodes, _, err = untilDone(ctx, func() ([]Node, error) {
			var nodes []Node
			err := h.use(op, func(p *cRegistry) error {
				var err error
				nodes, err = cListInC(p, service)
				return err
			})
			return nodes, err
		}, nil)
	}
	runtime.KeepAlive(r)
	if err != nil {
		return nil, err
	}
	// The library lists in ascending key order; every key has the same prefix.
	slices.Reverse(nodes)
	return nodes, nil
}

// Services lists the names of the services under the base path that have at least one node,
// sorted and without duplicates, in one etcd request that reads keys only (no values). Names
// are as they appear in keys: a '/' given at registration reads as '-'. An extension: the
// original library has no such call.
func (r *EtcdRegistry) Services() ([]string, error) {
	return r.ServicesContext(context.Background())
}

// ServicesContext is Services bounded by ctx as well as by the registry's timeout: when ctx
// ends while etcd has not answered yet, it returns ctx.Err() at once. A nil ctx is an error
// matching ErrInvalidArgument. An extension, like Services.
func (r *EtcdRegistry) ServicesContext(ctx context.Context) ([]string, error) {
	const op = "services"
	if !r.made() {
		return nil, notMade(op, "the EtcdRegistry")
	}
	if ctx == nil {
		return nil, invalidArgument(op, "nil context")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := r.h
	var names []string
	var call *asyncCall
	err := h.use(op, func(p *cRegistry) error {
		var err error
		call, err = cServicesStart(p)
		return err
	})
	if err == nil && call != nil {
		names, err = cServices(ctx, call)
	} else if err == nil {
		// No eventfd here: the call blocks in C, in a goroutine of its own when ctx can end. That
		// goroutine holds the registry (h.use) itself, for as long as it is in C: Close, which
		// frees the registry, waits for it even after this call has returned ctx.Err().
		names, _, err = untilDone(ctx, func() ([]string, error) {
			var names []string
			err := h.use(op, func(p *cRegistry) error {
				var err error
				names, err = cServicesInC(p)
				return err
			})
			return names, err
		}, nil)
	}
	runtime.KeepAlive(r)
	if err != nil {
		return nil, err
	}
	return names, nil
}

// ActiveEndpoint is the etcd endpoint (a URL, e.g. "http://10.0.0.1:2379") that calls and
// keep-alives go to now; it changes when that member fails or stops answering and another one
// takes over. It does not reach etcd. Empty once the registry is closed. An extension: the
// original library has no such call.
func (r *EtcdRegistry) ActiveEndpoint() string {
	if !r.made() {
		return ""
	}
	var endpoint string
	_ = r.h.use("active endpoint", func(p *cRegistry) error {
		var err error
		endpoint, err = cActiveEndpoint(p)
		return err
	})
	runtime.KeepAlive(r)
	return endpoint
}

// use runs f with the C registry, or fails with ErrClosed once it is freed, or about to be
// (a call waiting for the lock then would wait for every call in C to return).
func (h *handle) use(op string, f func(p *cRegistry) error) error {
	if h.freeing.Load() {
		return closedError(op)
	}
	h.life.RLock()
	defer h.life.RUnlock()
	if h.ptr == nil {
		return closedError(op)
	}
	return f(h.ptr)
}

// open reports whether the registry is not closing.
func (h *handle) open() bool {
	return !h.isClosing()
}

// isClosing reports whether close has begun (it is set before the C registry is closed, so the
// StatusUnregistered events close queues are known to come from it).
func (h *handle) isClosing() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closing
}

// close follows the header's shutdown order: close the C registry (which revokes the leases,
// queues every registration's StatusUnregistered and ends the pull queue), let the dispatcher
// hand those over and leave, then free it.
func (h *handle) close() error {
	first := false
	h.closeOnce.Do(func() {
		first = true
		h.mu.Lock()
		h.closing = true
		h.mu.Unlock()
		// ptr is only ever cleared below, by this one call.
		h.closeErr = cClose(h.ptr)
		close(h.closed)
		h.dispatchOnce.Do(func() {}) // no dispatcher can start after this
		for _, w := range h.routes.allWatches() {
			w.stop(false) // close stopped every watch in the library
		}
		if h.dispatchStarted {
			<-h.dispatchDone
		}
		h.freeing.Store(true)
		h.life.Lock()
		cFree(h.ptr)
		h.ptr = nil
		h.life.Unlock()
	})
	if first {
		return h.closeErr
	}
	return nil
}

// isClosed reports whether close has begun.
func (h *handle) isClosed() bool {
	select {
	case <-h.closed:
		return true
	default:
		return false
	}
}
