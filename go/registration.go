package etcdregistry

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// errChanSize is the error channel's buffer. It is written without ever blocking: when full,
// its oldest value is dropped to make room for the newest, so a reader that falls behind still
// sees how things ended.
const (
	errChanSize     = 16
	unregisterLabel = "unregister"
)

// Registration is one node registered by Register: its key is put under a lease, kept alive,
// and re-registered after any loss, until its context ends, Unregister or Close is called, or
// a newer registration of the same node replaces it. It has no goroutine of its own: the
// registry's dispatcher hands it its events (see dispatch.go).
type Registration struct {
	r       *EtcdRegistry // keeps the registry alive while the registration is referenced
	id      uint64
	service string
	node    string
	ctx     context.Context
	stopCtx func() bool // stops watching ctx

	done     chan struct{}    // closed on the first registration
	errs     chan error       // see RegisterNode
	events   chan StatusEvent // unbuffered; closed after StatusUnregistered
	finished chan struct{}    // closed when the registration has ended

	mu         sync.Mutex
	backlog    backlog[StatusEvent] // events Events' reader has not taken yet
	reading    bool                 // Events has been called
	pumping    bool                 // a goroutine is handing the backlog to events
	over       bool                 // StatusUnregistered is in the backlog (or was handed over)
	eventsDone bool                 // events is closed
	registered bool
	reason     error // why it ends, set by the first of Unregister, ctx or Close
}

func isFinalStatus(ev StatusEvent) bool { return ev.Kind == StatusUnregistered }

// RegisterNode registers node under service with a lease of ttl (rounded up to whole seconds)
// and keeps it registered, in the background, for as long as ctx lives. It returns at once.
//
// An empty service or node name or ttl <= 0 is an immediate error. Then done is closed when the
// node is registered for the first time, and errChan (buffered; never blocked on) receives the
// error of each failed attempt before that, e.g. one matching context.DeadlineExceeded when etcd
// does not answer in time; attempts go on with backoff. After the first registration, losses
// and re-registrations are reported by Register's status events, not on errChan.
//
// When ctx ends, the node is unregistered (its key deleted at once) and ctx.Err() is sent on
// errChan; if ctx has already ended when the first registration lands, done is not closed and
// ctx.Err() is sent instead. A registration that ends otherwise sends ErrUnregistered
// (UnregisterNode), ErrClosed (Close) or ErrReplaced (the same node registered again on this
// registry). errChan is closed after that last error, so `for err := range errChan` ends
// when the registration does.
func (r *EtcdRegistry) RegisterNode(ctx context.Context, service string, node Node, ttl time.Duration) (done <-chan struct{}, errChan <-chan error, err error) {
	g, err := r.Register(ctx, service, node, ttl)
	if err != nil {
		return nil, nil, err
	}
	return g.done, g.errs, nil
}

// Register is RegisterNode returning the Registration, which also gives the status events,
// the state and the lease, and can be unregistered.
func (r *EtcdRegistry) Register(ctx context.Context, service string, node Node, ttl time.Duration) (*Registration, error) {
	const op = "register"
	switch {
	case ctx == nil:
		return nil, invalidArgument(op, "nil context")
	}
	// Names, the TTL and the info are checked by the library (the core's rules), below.
	h := r.h
	g := &Registration{
		r:        r,
		service:  service,
		node:     node.Name,
		ctx:      ctx,
		done:     make(chan struct{}),
		errs:     make(chan error, errChanSize),
		events:   make(chan StatusEvent),
		finished: make(chan struct{}),
	}
	if !h.open() {
		return nil, closedError(op)
	}
	if err := ctx.Err(); err != nil {
		// Ended before it began: nothing is registered, so the library has no event to give;
		// the registration ends here as one that was unregistered at once would.
		g.end(err, StatusEvent{Kind: StatusUnregistered, Service: service, Node: node.Name})
		return g, nil
	}
	h.startDispatcher()
	h.routes.beginCreate()
	err := h.use(op, func(p *cRegistry) error {
		var err error
		g.id, err = cRegister(p, service, node.Name, node.Info, ttl)
		return err
	})
	if err != nil {
		h.routes.abortCreate()
		return nil, err
	}
	h.mu.Lock()
	h.registrations[nodeKey{service, node.Name}] = g
	h.mu.Unlock()
	h.routes.addRegistration(g)
	g.stopCtx = context.AfterFunc(ctx, func() {
		if g.claimEnd(ctx.Err()) {
			_ = g.unregister()
		}
	})
	runtime.KeepAlive(r)
	return g, nil
}

// UnregisterNode unregisters a node this registry registered: its key is deleted at once and
// its registration ends (ErrUnregistered on its error channel). ErrNotFound when this registry
// holds no registration of that node. The deletion goes on if ctx ends first.
func (r *EtcdRegistry) UnregisterNode(ctx context.Context, service, name string) error {
	switch {
	case ctx == nil:
		return invalidArgument(unregisterLabel, "nil context")
	case service == "":
		return invalidArgument(unregisterLabel, "service name must not be empty")
	case name == "":
		return invalidArgument(unregisterLabel, "node name must not be empty")
	}
	h := r.h
	h.mu.Lock()
	g := h.registrations[nodeKey{service, name}]
	h.mu.Unlock()
	runtime.KeepAlive(r)
	if g == nil {
		if h.isClosed() {
			return closedError(unregisterLabel)
		}
		return &Error{Code: CodeNotFound, Op: unregisterLabel,
			Message: fmt.Sprintf("node %q of service %q is not registered by this registry", name, service)}
	}
	return g.Unregister(ctx)
}

// Service is the service the node is registered under.
func (g *Registration) Service() string { return g.service }

// NodeName is the registered node's name.
func (g *Registration) NodeName() string { return g.node }

// Done is closed when the node is registered for the first time (see RegisterNode).
func (g *Registration) Done() <-chan struct{} { return g.done }

// Errors is the error channel RegisterNode returns.
func (g *Registration) Errors() <-chan error { return g.errs }

// Events delivers every status event of the registration in order since Register, ending with
// StatusUnregistered, after which it is closed. Events not read yet wait with the library's
// bound and policy (see the README's "Events" section): past 1024 unread ones the oldest is
// dropped (never StatusUnregistered) and counted by Dropped; State always tells where things
// stand.
func (g *Registration) Events() <-chan StatusEvent {
	g.mu.Lock()
	g.reading = true
	g.pumpLocked()
	g.mu.Unlock()
	return g.events
}

// Dropped is how many status events were dropped because Events' reader fell behind.
func (g *Registration) Dropped() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.backlog.dropped
}

// State is where the registration stands now. It does not talk to etcd.
func (g *Registration) State() State {
	if g.ended() {
		return StateUnregistered
	}
	state := StateUnregistered
	_ = g.r.h.use("registration state", func(p *cRegistry) error {
		s, err := cRegistrationState(p, g.id)
		if err == nil {
			state = s
		}
		return err
	})
	runtime.KeepAlive(g)
	return state
}

// LeaseID is the etcd lease the key is attached to now, 0 while it is not registered.
func (g *Registration) LeaseID() int64 {
	if g.ended() {
		return 0
	}
	var lease int64
	_ = g.r.h.use("lease id", func(p *cRegistry) error {
		var err error
		lease, err = cRegistrationLeaseID(p, g.id)
		return err
	})
	runtime.KeepAlive(g)
	return lease
}

// Update replaces the node's info: the key is put again on the same lease with one put,
// without unregistering. It returns at once, like Register; a StatusUpdated event follows once
// the new info is in etcd (watchers see one WatchUpdated). Made while etcd is down, the info is
// put when etcd is back, never lost; updates apply in the order they were made, so after
// concurrent updates etcd holds the last one (intermediate ones may be skipped).
//
// A nil info is stored as {} (an update always stores an object). ErrInvalidArgument for an
// empty info key or info too large for etcd, ErrNotFound once the registration has ended
// (ErrClosed after Close).
func (g *Registration) Update(info map[string]string) error {
	const op = "update"
	if g.ended() {
		if g.r.h.isClosed() {
			return closedError(op)
		}
		return &Error{Code: CodeNotFound, Op: op, Message: "the registration has already ended"}
	}
	err := g.r.h.use(op, func(p *cRegistry) error { return cUpdate(p, g.id, info) })
	runtime.KeepAlive(g)
	return err
}

// Unregister deletes the node's key at once and ends the registration (ErrUnregistered on its
// error channel; StatusUnregistered, the last event, is on Events when it returns). ErrNotFound
// if it has already ended (ErrClosed after Close). If ctx ends first, Unregister returns
// ctx.Err() and the deletion goes on. It never fails because etcd is unreachable: a warning is
// logged, nil returned, and the key expires with its lease.
func (g *Registration) Unregister(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if !g.claimEnd(ErrUnregistered) {
		// Ending already (Close, its context, another Unregister) or ended.
		select {
		case <-g.finished:
		case <-ctx.Done():
			return ctx.Err()
		}
		if g.r.h.isClosing() {
			return closedError(unregisterLabel)
		}
		return &Error{Code: CodeNotFound, Op: unregisterLabel, Message: "the registration has already ended"}
	}
	result := make(chan error, 1)
	go func() { result <- g.unregister() }()
	select {
	case err := <-result:
		// The library queued StatusUnregistered before returning: wait until it is handed over.
		select {
		case <-g.finished:
		case <-ctx.Done():
			return ctx.Err()
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *Registration) ended() bool {
	select {
	case <-g.finished:
		return true
	default:
		return false
	}
}

// claimEnd records why the registration ends; false if an end is already under way.
func (g *Registration) claimEnd(reason error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reason != nil || g.over {
		return false
	}
	g.reason = reason
	return true
}

// deliver applies one event from the dispatcher, in order; it never blocks.
func (g *Registration) deliver(ev StatusEvent) {
	switch ev.Kind {
	case StatusRegistered:
		g.mu.Lock()
		first := !g.registered && g.ctx.Err() == nil // landed after ctx ended: done stays open
		g.registered = g.registered || first
		g.mu.Unlock()
		if first {
			close(g.done)
		}
	case StatusRetrying:
		g.mu.Lock()
		registered := g.registered
		g.mu.Unlock()
		if !registered {
			pushLatest(g.errs, ev.Err)
		}
	case StatusUnregistered:
		g.mu.Lock()
		reason := g.reason
		g.mu.Unlock()
		if reason == nil {
			if g.r.h.isClosing() {
				reason = ErrClosed // close revoked the lease
			} else {
				reason = ErrReplaced // a newer registration of the node owns the key now
			}
		}
		ev.Err = reason
		g.end(reason, ev)
		return
	}
	g.mu.Lock()
	g.backlog.push(ev, isFinalStatus)
	g.pumpLocked()
	g.mu.Unlock()
}

// pumpLocked starts handing the backlog to the events channel if Events is read and no
// goroutine does it yet; the goroutine ends when the backlog is empty.
func (g *Registration) pumpLocked() {
	if !g.reading || g.pumping || (len(g.backlog.items) == 0 && !g.over) {
		return
	}
	g.pumping = true
	go g.pump()
}

func (g *Registration) pump() {
	for {
		g.mu.Lock()
		ev, ok := g.backlog.pop()
		if !ok {
			g.pumping = false
			if g.over && !g.eventsDone {
				close(g.events)
				g.eventsDone = true
			}
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.events <- ev
	}
}

// unregister deletes the key and forgets the registration in the library, which then queues
// StatusUnregistered.
func (g *Registration) unregister() error {
	err := g.r.h.use(unregisterLabel, func(p *cRegistry) error { return cUnregister(p, g.id) })
	if isCode(err, CodeClosed) {
		return nil // Close revoked the lease, which deleted the key
	}
	return err
}

// end ends the registration: last (StatusUnregistered) is its last event, reason goes on the
// error channel, which is then closed.
func (g *Registration) end(reason error, last StatusEvent) {
	h := g.r.h
	if g.stopCtx != nil {
		g.stopCtx()
	}
	if g.id != 0 {
		h.routes.removeRegistration(g.id)
		h.mu.Lock()
		if h.registrations[nodeKey{g.service, g.node}] == g {
			delete(h.registrations, nodeKey{g.service, g.node})
		}
		h.mu.Unlock()
	}
	g.mu.Lock()
	g.backlog.push(last, isFinalStatus)
	g.over = true
	g.pumpLocked()
	g.mu.Unlock()
	pushLatest(g.errs, reason)
	close(g.errs)
	close(g.finished)
}

// pushLatest sends v without blocking, dropping the oldest value when ch is full. Only one
// goroutine sends on each channel, so the loop ends after at most one drop.
func pushLatest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
