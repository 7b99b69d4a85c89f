package etcdregistry

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
)

// Channel sizes. Both channels are written without ever blocking: when one is full, its
// oldest value is dropped to make room for the newest, so a reader that falls behind still
// sees how things ended.
const (
	errChanSize     = 16
	eventsChanSize  = 64
	unregisterLabel = "unregister"
)

// Registration is one node registered by Register: its key is put under a lease, kept alive,
// and re-registered after any loss, until its context ends, Unregister or Close is called, or
// a newer registration of the same node replaces it.
type Registration struct {
	r       *EtcdRegistry // keeps the registry alive while the registration is referenced
	id      uint64
	service string
	node    string

	done     chan struct{}    // closed on the first registration
	errs     chan error       // see RegisterNode
	events   chan StatusEvent // every status event; closed after StatusUnregistered
	finished chan struct{}    // closed when the registration has ended

	box                *mailbox[StatusEvent] // events from the dispatcher
	unregisterRequests chan chan error
}

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
	case service == "":
		return nil, invalidArgument(op, "service name must not be empty")
	case node.Name == "":
		return nil, invalidArgument(op, "node name must not be empty")
	case ttl <= 0:
		return nil, invalidArgument(op, "ttl must be greater than zero")
	}
	h := r.h
	g := &Registration{
		r:                  r,
		service:            service,
		node:               node.Name,
		done:               make(chan struct{}),
		errs:               make(chan error, errChanSize),
		events:             make(chan StatusEvent, eventsChanSize),
		finished:           make(chan struct{}),
		box:                newMailbox[StatusEvent](),
		unregisterRequests: make(chan chan error),
	}
	if !h.track() {
		return nil, closedError(op)
	}
	if err := ctx.Err(); err != nil {
		// Ended before it began: nothing to register.
		g.finish(err, nil)
		h.goroutines.Done()
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
		h.goroutines.Done()
		return nil, err
	}
	h.routes.addRegistration(g.id, g.box)
	h.mu.Lock()
	h.registrations[nodeKey{service, node.Name}] = g
	h.mu.Unlock()
	go g.run(ctx)
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

// Events delivers every status event of the registration in order, ending with
// StatusUnregistered, after which it is closed. It holds the newest 64 events: a reader that
// falls further behind loses the oldest ones (State always tells where things stand).
func (g *Registration) Events() <-chan StatusEvent { return g.events }

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
// error channel). ErrNotFound if it has already ended (ErrClosed after Close). If ctx ends
// first, Unregister returns ctx.Err() and the deletion goes on. It never fails because etcd is
// unreachable: a warning is logged, nil returned, and the key expires with its lease.
func (g *Registration) Unregister(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	reply := make(chan error, 1)
	select {
	case g.unregisterRequests <- reply:
	case <-g.finished:
		if g.r.h.isClosed() {
			return closedError(unregisterLabel)
		}
		return &Error{Code: CodeNotFound, Op: unregisterLabel, Message: "the registration has already ended"}
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
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

// run is the registration's goroutine: it applies its status events in order and ends it.
func (g *Registration) run(ctx context.Context) {
	h := g.r.h
	defer h.goroutines.Done()
	defer runtime.KeepAlive(g.r)
	registered := false
	for {
		// The endings first: select chooses at random among ready cases.
		if h.isClosed() {
			g.finish(ErrClosed, nil) // close revoked the lease already
			return
		}
		if err := ctx.Err(); err != nil {
			g.finish(err, g.unregister())
			return
		}
		select {
		case <-ctx.Done():
		case <-h.closed:
		case reply := <-g.unregisterRequests:
			err := g.unregister()
			reply <- err
			g.finish(ErrUnregistered, err)
			return
		case <-g.box.ready():
			for _, ev := range g.box.take() {
				switch ev.Kind {
				case StatusRegistered:
					if err := ctx.Err(); err != nil {
						// Landed after ctx ended: done stays open.
						g.finish(err, g.unregister())
						return
					}
					registered = true
					close(g.done)
				case StatusRetrying:
					if !registered {
						pushLatest(g.errs, ev.Err)
					}
				case StatusUnregistered:
					// Replaced by a newer registration of the node, which owns the key now.
					g.finishReplaced(ev)
					return
				}
				pushLatest(g.events, ev)
			}
		}
	}
}

// unregister deletes the key and forgets the registration in the library.
func (g *Registration) unregister() error {
	err := g.r.h.use(unregisterLabel, func(p *cRegistry) error { return cUnregister(p, g.id) })
	if isCode(err, CodeClosed) {
		return nil // Close revoked the lease, which deleted the key
	}
	return err
}

// finish ends the registration: it sends reason on the error channel and, as the last status
// event, StatusUnregistered with reason (and the error of deleting the key, if that failed:
// the key then expires with its lease).
func (g *Registration) finish(reason, cleanupErr error) {
	last := StatusEvent{Kind: StatusUnregistered, Service: g.service, Node: g.node, Err: reason}
	if cleanupErr != nil {
		last.Err = errors.Join(reason, cleanupErr)
	}
	g.end(reason, last)
}

func (g *Registration) finishReplaced(ev StatusEvent) {
	ev.Err = ErrReplaced
	g.end(ErrReplaced, ev)
}

func (g *Registration) end(reason error, last StatusEvent) {
	h := g.r.h
	if g.id != 0 {
		h.routes.removeRegistration(g.id)
		h.mu.Lock()
		if h.registrations[nodeKey{g.service, g.node}] == g {
			delete(h.registrations, nodeKey{g.service, g.node})
		}
		h.mu.Unlock()
	}
	pushLatest(g.events, last)
	close(g.events)
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
