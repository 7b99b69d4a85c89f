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
	"net"
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

// Delays of a resolver, read when it is built. Variables so that tests can change them.
var (
	// retryMin and retryMax bound the delay between attempts to start the watch while etcd
	// cannot be reached: retryMin, doubling up to retryMax.
	retryMin = time.Second
	retryMax = 30 * time.Second
	// resolveNowMin is the least time between the starts of two attempts when ResolveNow cuts
	// the delay short (gRPC calls ResolveNow on every connection failure).
	resolveNowMin = time.Second
	// lastKnownAfter is how long a resolver that has given its client nothing yet waits for
	// its first watch before it gives the nodes the Builder last knew of the service.
	lastKnownAfter = time.Second
)

// delays are the package's delays as a resolver read them when it was built.
type delays struct {
	retryMin, retryMax, resolveNowMin, lastKnownAfter time.Duration
}

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
// the watch starts in the background. Starting it may wait for etcd up to the registry's
// timeout (e.g. while etcd refuses connections), and until the resolver's first update gRPC
// holds the client's calls (a call with a deadline may end with DeadlineExceeded). Once an
// attempt has failed, the resolver reports the error to the client (so calls fail with it
// rather than hang) and tries again after 1 s, doubling to 30 s, or sooner when gRPC asks
// (ResolveNow), though not within 1 s of the previous attempt's start.
//
// When this Builder resolved the service before (gRPC closes the resolver of a client left
// idle, 30 minutes by default, and builds a new one at its next call; or another client of
// the Builder resolved it), the client gets the nodes last known instead, with a warning in
// the log: after 1 s if the watch has not started by then, or at once if it failed. The live
// set follows once the watch starts.
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
		delays: delays{
			retryMin:       retryMin,
			retryMax:       retryMax,
			resolveNowMin:  resolveNowMin,
			lastKnownAfter: lastKnownAfter,
		},
		resolveNow: make(chan struct{}, 1),
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
	delays  delays

	resolveNow chan struct{} // ResolveNow's requests: one waits at most

	// Only run touches these.
	last     []resolved      // what the client was last given
	gaveLast bool            // the client was given the Builder's last known state
	skipped  map[string]bool // the nodes without an address warned about
}

// resolved is one node as given to the client, to tell whether anything changed.
type resolved struct {
	node etcdregistry.Node
	addr string
}

// ResolveNow asks for a new attempt to start the watch now, when one failed and the resolver
// waits before the next (the nodes the client has may be dead, and etcd back): the next
// attempt starts at once, though not within resolveNowMin (1 s) of the previous attempt's
// start. Otherwise it does nothing: a started watch already has every change.
func (r *etcdResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.resolveNow <- struct{}{}:
	default: // one already waits
	}
}

// Close stops the watch; the client gets no update afterwards.
func (r *etcdResolver) Close() {
	r.cancel()
	r.wg.Wait()
}

// run starts the watch, retrying while etcd cannot be reached, and follows it until Close.
func (r *etcdResolver) run() {
	defer r.wg.Done()
	delay := r.delays.retryMin
	for {
		// A request made before this attempt is answered by it.
		select {
		case <-r.resolveNow:
		default:
		}
		started := time.Now()
		w, err := r.watch()
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
					r.giveLastKnown(state, err.Error())
				}
			} else {
				r.cc.ReportError(err)
			}
			if !r.wait(delay, started) {
				return
			}
			delay = min(2*delay, r.delays.retryMax)
			continue
		}
		delay = r.delays.retryMin
		r.follow(w)
		if r.ctx.Err() != nil {
			return
		}
		// The watch ended by itself: its registry was closed. The next WatchService says so.
	}
}

// watch starts the watch. While it waits for etcd (up to the registry's timeout), gRPC holds
// the client's calls until the resolver's first update: a resolver that has given its client
// nothing yet, for a service the Builder knows nodes of, gives them if the watch has not
// started within lastKnownAfter.
func (r *etcdResolver) watch() (*etcdregistry.Watch, error) {
	if r.last != nil || r.gaveLast {
		return r.b.reg.WatchService(r.ctx, r.service)
	}
	if _, ok := r.b.lastKnown(r.service); !ok {
		return r.b.reg.WatchService(r.ctx, r.service)
	}
	type result struct {
		w   *etcdregistry.Watch
		err error
	}
	done := make(chan result, 1)
	go func() {
		w, err := r.b.reg.WatchService(r.ctx, r.service)
		done <- result{w, err}
	}()
	timer := time.NewTimer(r.delays.lastKnownAfter)
	defer timer.Stop()
	select {
	case res := <-done:
		return res.w, res.err
	case <-r.ctx.Done():
	case <-timer.C:
		if state, ok := r.b.lastKnown(r.service); ok && r.ctx.Err() == nil {
			r.giveLastKnown(state, fmt.Sprintf("grpcresolver: watching service %q: not started after %v", r.service, r.delays.lastKnownAfter))
		}
	}
	// WatchService returns once it has started the watch, failed, or seen ctx end (Close).
	res := <-done
	return res.w, res.err
}

// giveLastKnown gives the client the state the Builder last gave for the service, with a
// warning saying why.
func (r *etcdResolver) giveLastKnown(state resolver.State, why string) {
	logger.Warningf("%s; using the %d nodes last known meanwhile", why, len(state.Addresses))
	_ = r.cc.UpdateState(state)
	r.gaveLast = true
}

// wait waits delay after a failed attempt that started at started, or less when ResolveNow
// asks, though not until resolveNowMin after started. It is false when Close ends it.
func (r *etcdResolver) wait(delay time.Duration, started time.Time) bool {
	due := time.Now().Add(delay)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return false
		case <-timer.C:
			return true
		case <-r.resolveNow:
			if earliest := started.Add(r.delays.resolveNowMin); earliest.Before(due) {
				due = earliest
				timer.Reset(time.Until(due))
			}
		}
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

// warnIfSkipped warns, once per node, about a node that is skipped for want of an address the
// client could dial (see addressOf).
// The warning names its info keys, not their values (which may be secrets). A node that is
// removed or gains an address is forgotten: it is warned about again if it comes back (or
// loses its address) later.
func (r *etcdResolver) warnIfSkipped(ev etcdregistry.WatchEvent) {
	switch {
	case ev.Type == etcdregistry.WatchRemoved:
		delete(r.skipped, ev.Node.Name)
	case ev.Type != etcdregistry.WatchAdded && ev.Type != etcdregistry.WatchUpdated:
	default:
		_, why := r.addressOf(ev.Node)
		if why == "" {
			delete(r.skipped, ev.Node.Name)
			return
		}
		if r.skipped[ev.Node.Name] {
			return
		}
		if r.skipped == nil {
			r.skipped = make(map[string]bool)
		}
		r.skipped[ev.Node.Name] = true
		logger.Warningf("service %q: node %q is skipped: %s", r.service, ev.Node.Name, why)
	}
}

// addressOf is the address of node n, or why it has none the client could dial: its info has
// no value under the address key, or one that is neither "host:port" nor a "unix:" address
// (e.g. no port, or a URL), which gRPC would only fail to dial (its dialer takes "unix:" for
// a socket and anything else for TCP).
func (r *etcdResolver) addressOf(n etcdregistry.Node) (addr string, why string) {
	addr, ok := n.Info[r.b.addressKey]
	if !ok || addr == "" {
		return "", fmt.Sprintf("its info has no %q (info keys: %q)", r.b.addressKey, slices.Sorted(maps.Keys(n.Info)))
	}
	if strings.HasPrefix(addr, "unix:") {
		return addr, ""
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return "", fmt.Sprintf("its %q, %q, is not host:port", r.b.addressKey, addr)
	}
	return addr, ""
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
		if addr, why := r.addressOf(n); why == "" {
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

// String names the node and its info's keys, not their values: grpc prints attributes in its
// logs and channelz traces, and info values may be secrets.
func (v nodeValue) String() string {
	return fmt.Sprintf("%s %v", v.Name, slices.Sorted(maps.Keys(v.Info)))
}

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
