// Package grpcresolver resolves gRPC targets to the nodes of a service registered with
// etcdregistry: a grpc-go resolver.Builder on (*etcdregistry.EtcdRegistry).WatchService.
//
//	reg, err := etcdregistry.NewEtcdRegistry([]string{"localhost:2379"}, "/services", "", "", 10*time.Second)
//	builder, err := grpcresolver.NewBuilder(reg)
//	conn, err := grpc.NewClient("etcd-registry:///my-service",
//		grpc.WithResolvers(builder),
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
//
// The client dials the address each node of "my-service" holds in its info (the key
// "address" by default, WithAddressKey to change it) and follows the service live: a node
// that registers is dialled, one that unregisters or expires is dropped, one whose info
// changes is updated, with no polling. Nodes without an address are skipped, with a warning
// in grpc's log (grpclog component "etcd-registry"). Each resolved address, and its endpoint,
// carries the node in its attributes: NodeOf reads it, e.g. in a custom balancer or picker.
//
// The package is a module of its own so that etcdregistry keeps no dependency beyond the
// standard library.
package grpcresolver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/resolver"
)

const (
	// DefaultScheme is the scheme of the targets a Builder resolves unless WithScheme says
	// otherwise: "etcd-registry:///<service>".
	DefaultScheme = "etcd-registry"
	// DefaultAddressKey is the info key that holds a node's address ("host:port") unless
	// WithAddressKey says otherwise.
	DefaultAddressKey = "address"
)

// Delays between attempts to start the watch while etcd cannot be reached.
const (
	retryMin = time.Second
	retryMax = 30 * time.Second
)

var logger = grpclog.Component("etcd-registry")

// Option changes a Builder.
type Option func(*Builder)

// WithScheme makes the Builder resolve targets of this scheme instead of DefaultScheme, e.g.
// to use two registries in one process. A scheme is lower case (gRPC lower-cases the one of a
// target): a letter, then letters, digits, '+', '-' or '.'.
func WithScheme(scheme string) Option {
	return func(b *Builder) { b.scheme = scheme }
}

// WithAddressKey makes the Builder dial the address held under this info key instead of
// DefaultAddressKey.
func WithAddressKey(key string) Option {
	return func(b *Builder) { b.addressKey = key }
}

// Builder is a resolver.Builder that resolves "<scheme>:///<service>" to the addresses of the
// service's nodes. Give it to grpc.NewClient with grpc.WithResolvers, or register it
// process-wide with resolver.Register (at init time, as grpc requires). One Builder serves any
// number of clients and services; each client watches its service on its own, over the
// Builder's registry, until the client is closed. The registry must outlive the clients.
type Builder struct {
	reg        *etcdregistry.EtcdRegistry
	scheme     string
	addressKey string

	mu    sync.Mutex
	known map[string]resolver.State // the state last given for each service, by any client
}

// remember notes the state last given for service.
func (b *Builder) remember(service string, state resolver.State) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.known == nil {
		b.known = make(map[string]resolver.State)
	}
	b.known[service] = state
}

// lastKnown is the state last given for service, if any.
func (b *Builder) lastKnown(service string) (resolver.State, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	state, ok := b.known[service]
	return state, ok
}

// NewBuilder makes a Builder over reg. It fails with an error matching
// etcdregistry.ErrInvalidArgument when reg is nil, the scheme is not a valid lower-case URI
// scheme or the address key is empty.
func NewBuilder(reg *etcdregistry.EtcdRegistry, opts ...Option) (*Builder, error) {
	b := &Builder{reg: reg, scheme: DefaultScheme, addressKey: DefaultAddressKey}
	for _, opt := range opts {
		opt(b)
	}
	switch {
	case reg == nil:
		return nil, invalidArgument("nil registry")
	case !validScheme(b.scheme):
		return nil, invalidArgument(fmt.Sprintf("scheme %q is not a lower-case URI scheme (a letter, then letters, digits, '+', '-' or '.')", b.scheme))
	case b.addressKey == "":
		return nil, invalidArgument("empty address key")
	}
	return b, nil
}

func invalidArgument(message string) error {
	return &etcdregistry.Error{Code: etcdregistry.CodeInvalidArgument, Op: "grpc resolver", Message: message}
}

func validScheme(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Scheme is the scheme of the targets this Builder resolves.
func (b *Builder) Scheme() string { return b.scheme }

// Build starts resolving target, "<scheme>:///<service>" (or "<scheme>:<service>"); gRPC
// calls it. It fails only on a target without a service, with an authority, or naming a
// service the registry refuses (blank, ".", "..", or with a NUL). It does not wait for etcd:
// the watch starts in the background, and while etcd cannot be reached the resolver reports
// the error to the client (so calls fail with it rather than hang) and tries again, after 1 s
// doubling to 30 s. When this Builder resolved the service before (gRPC closes the resolver
// of a client left idle, 30 minutes by default, and builds a new one at its next call), the
// client gets the nodes last known instead of the error meanwhile, with a warning in the log,
// and the live set once the watch starts.
func (b *Builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	if target.URL.Host != "" {
		return nil, fmt.Errorf("grpcresolver: target %q has an authority (%q); use %s:///<service>", target.String(), target.URL.Host, b.scheme)
	}
	service := target.Endpoint()
	if service == "" {
		return nil, fmt.Errorf("grpcresolver: target %q names no service; use %s:///<service>", target.String(), b.scheme)
	}
	// The names the library refuses to watch: refused here at once rather than retried.
	if strings.TrimSpace(service) == "" || service == "." || service == ".." || strings.ContainsRune(service, 0) {
		return nil, fmt.Errorf("grpcresolver: target %q: %q is not a service name the registry can watch", target.String(), service)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &etcdResolver{
		b:       b,
		service: service,
		cc:      cc,
		ctx:     ctx,
		cancel:  cancel,
	}
	r.wg.Add(1)
	go r.run()
	return r, nil
}

// etcdResolver follows one service for one client.
type etcdResolver struct {
	b       *Builder
	service string
	cc      resolver.ClientConn
	ctx     context.Context // ends with Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	last     []resolved // what the client was last given; only run touches it
	gaveLast bool       // the client was given the Builder's last known state; only run touches it
}

// resolved is one node as given to the client, to tell whether anything changed.
type resolved struct {
	node etcdregistry.Node
	addr string
}

// ResolveNow does nothing: the resolver follows etcd's changes as they happen, and retries a
// watch that could not start on its own schedule.
func (r *etcdResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops the watch; the client gets no update afterwards.
func (r *etcdResolver) Close() {
	r.cancel()
	r.wg.Wait()
}

// run starts the watch, retrying while etcd cannot be reached, and follows it until Close.
func (r *etcdResolver) run() {
	defer r.wg.Done()
	delay := retryMin
	for {
		w, err := r.b.reg.WatchService(r.ctx, r.service)
		if r.ctx.Err() != nil {
			if err == nil {
				_ = w.Close()
			}
			return
		}
		if err != nil {
			err = fmt.Errorf("grpcresolver: watching service %q: %w", r.service, err)
			if errors.Is(err, etcdregistry.ErrClosed) || errors.Is(err, etcdregistry.ErrInvalidArgument) {
				r.cc.ReportError(err)
				return // the registry is closed, or refuses the name: retrying changes nothing
			}
			// A client that had the service's nodes before (gRPC closes the resolver of an
			// idle client and builds a new one when it is used again), or another client of
			// this Builder, gets them while etcd cannot be reached, rather than failing every
			// call with the error: the nodes are most likely still there.
			if state, ok := r.b.lastKnown(r.service); ok && r.last == nil {
				if !r.gaveLast {
					logger.Warningf("%v; using the %d nodes last known meanwhile", err, len(state.Addresses))
					_ = r.cc.UpdateState(state)
					r.gaveLast = true
				}
			} else {
				r.cc.ReportError(err)
			}
			timer := time.NewTimer(delay)
			select {
			case <-r.ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			delay = min(2*delay, retryMax)
			continue
		}
		delay = retryMin
		r.follow(w)
		if r.ctx.Err() != nil {
			return
		}
		// The watch ended by itself: its registry was closed. The next WatchService says so.
	}
}

// follow gives the client the service's nodes now, then again after every batch of changes,
// until the watch ends.
func (r *etcdResolver) follow(w *etcdregistry.Watch) {
	defer w.Close()
	r.update(w)
	for ev := range w.Events() {
		r.warnIfSkipped(ev)
		// Changes that came together make one update.
	more:
		for {
			select {
			case ev, ok := <-w.Events():
				if !ok {
					return
				}
				r.warnIfSkipped(ev)
			default:
				break more
			}
		}
		r.update(w)
	}
}

func (r *etcdResolver) warnIfSkipped(ev etcdregistry.WatchEvent) {
	if ev.Type != etcdregistry.WatchAdded && ev.Type != etcdregistry.WatchUpdated {
		return
	}
	if ev.Node.Info[r.b.addressKey] == "" {
		logger.Warningf("service %q: node %q is skipped: its info has no %q (info: %v)", r.service, ev.Node.Name, r.b.addressKey, ev.Node.Info)
	}
}

// update gives the client the watch's live node set, unless it is what the client has.
func (r *etcdResolver) update(w *etcdregistry.Watch) {
	nodes, err := w.Nodes()
	if err != nil {
		return // the watch stopped; run decides what follows
	}
	slices.SortFunc(nodes, func(a, b etcdregistry.Node) int { return strings.Compare(a.Name, b.Name) })
	current := make([]resolved, 0, len(nodes))
	for _, n := range nodes {
		if addr := n.Info[r.b.addressKey]; addr != "" {
			current = append(current, resolved{node: n, addr: addr})
		}
	}
	if r.last != nil && slices.EqualFunc(current, r.last, func(a, b resolved) bool {
		return a.addr == b.addr && a.node.Name == b.node.Name && maps.Equal(a.node.Info, b.node.Info)
	}) {
		return
	}
	r.last = current
	state := resolver.State{
		Addresses: make([]resolver.Address, 0, len(current)),
		Endpoints: make([]resolver.Endpoint, 0, len(current)),
	}
	for _, c := range current {
		attrs := attributes.New(nodeKey{}, nodeValue(c.node))
		addr := resolver.Address{Addr: c.addr, Attributes: attrs}
		state.Addresses = append(state.Addresses, addr)
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{addr}, Attributes: attrs})
	}
	// A watch-based resolver may ignore the error: re-resolving would give the same list.
	_ = r.cc.UpdateState(state)
	r.b.remember(r.service, state)
}

// nodeKey is the attribute key of the node behind an address.
type nodeKey struct{}

// nodeValue is the attribute value: a Node with the Equal grpc's attributes need (a map is
// not comparable with ==).
type nodeValue etcdregistry.Node

func (v nodeValue) Equal(o any) bool {
	ov, ok := o.(nodeValue)
	return ok && v.Name == ov.Name && maps.Equal(v.Info, ov.Info)
}

func (v nodeValue) String() string { return fmt.Sprintf("%s %v", v.Name, v.Info) }

// NodeOf returns the registry node behind a resolved address or endpoint, from its
// Attributes (resolver.Address.Attributes or resolver.Endpoint.Attributes, as a balancer or
// picker sees them). ok is false for attributes that no Builder of this package made. The
// Info map is the caller's own copy.
//
// gRPC makes a new connection when an address's attributes change, so a change of a node's
// info reconnects to it, even when its address stays the same.
func NodeOf(attrs *attributes.Attributes) (node etcdregistry.Node, ok bool) {
	v, ok := attrs.Value(nodeKey{}).(nodeValue)
	if !ok {
		return etcdregistry.Node{}, false
	}
	return etcdregistry.Node{Name: v.Name, Info: maps.Clone(v.Info)}, true
}
