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

// eventsBuffer is the buffer of a registration's events channel. Once the registration has
// ended, what its reader has not taken yet is left there, without waiting for the reader: the
// newest eventsBuffer events, StatusUnregistered last (older ones are dropped, and counted). So
// a reader that stopped reading holds up no goroutine, and keeps nothing else referenced.
const eventsBuffer = 8

// Registration is one node registered by Register: its key is put under a lease, kept alive,
// and re-registered after any loss, until its context ends, Unregister or Close is called, or
// a newer registration of the same node replaces it. It has no goroutine of its own: the
// registry's dispatcher hands it its events (see dispatch.go).
//
// It is kept small (issue #11: memory per registration): its channels are made when first
// asked for (Done, Errors, Events, a waiting Unregister), what they would carry waits in the
// struct meanwhile, and the pending events are kept without the names, which the registration
// holds once.
type Registration struct {
	r       *EtcdRegistry // keeps the registry alive while the registration is referenced
	id      uint64
	service string
	node    string
	ctx     context.Context

	mu sync.Mutex
	// done is closed on the first registration; made by Done, nil until then. Once closed it is
	// let go (closedChan stands for it).
	done    chan struct{}
	x       *regExtra          // made when first needed (nil for a registration left alone)
	backlog backlog[statusRec] // events Events' reader has not taken yet

	reading    bool // Events has been called
	noReader   bool // made by RegisterNode, whose caller cannot call Events: no event is kept
	pumping    bool // a goroutine is handing the backlog to events
	over       bool // StatusUnregistered is in the backlog (or was handed over)
	eventsDone bool // events is closed
	registered bool // done is closed
	errsDone   bool // the error channel is closed (or will be, when made)
	ended      bool // the registration has ended
}

// regExtra is the part of a Registration that only some need: one whose context can end, whose
// error channel or events are asked for, that is waited for, or that ends. Guarded by the
// registration's lock.
type regExtra struct {
	stopCtx func() bool // stops watching ctx; nil when ctx can never end
	// errs is the error channel (see RegisterNode), made by Errors; until then, what it would
	// hold waits in errBuf (the newest errChanSize values).
	errs     chan error
	errBuf   []error
	events   chan StatusEvent // made by Events (see eventsBuffer); closed after StatusUnregistered
	finished chan struct{}    // made by a waiter; closed when the registration has ended
	reason   error            // why it ends, set by the first of Unregister, ctx or Close, else by end
	ctxEnded bool             // reason is ctx.Err(): the end was claimed when ctx ended
	// unregistering is set while the library has not answered the unregister of the Unregister
	// that claimed the end: CLOSED means Close came first and ended the registration, whose
	// reason is then ErrClosed. Its StatusUnregistered waits in held meanwhile.
	unregistering bool
	held          *StatusEvent
	// stop is closed by end to wake a pump blocked on a reader who does not read; made by the
	// pump the first time it finds the events channel full.
	stop chan struct{}
}

// more is the registration's regExtra, made if needed. g.mu must be held.
func (g *Registration) more() *regExtra {
	if g.x == nil {
		g.x = &regExtra{}
	}
	return g.x
}

// closedChan stands for every closed done or finished channel.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// statusRec is a StatusEvent waiting in a backlog, without the names (the registration's).
type statusRec struct {
	err     error
	delay   time.Duration
	leaseID int64
	attempt int32
	kind    int32
}

func newStatusRec(ev StatusEvent) statusRec {
	return statusRec{err: ev.Err, delay: ev.Delay, leaseID: ev.LeaseID, attempt: int32(ev.Attempt), kind: int32(ev.Kind)}
}

func (g *Registration) event(rec statusRec) StatusEvent {
	return StatusEvent{Kind: StatusKind(rec.kind), Service: g.service, Node: g.node,
		Attempt: int(rec.attempt), Delay: rec.delay, Err: rec.err, LeaseID: rec.leaseID}
}

func isFinalRec(rec statusRec) bool { return StatusKind(rec.kind) == StatusUnregistered }

// RegisterNode registers node under service with a lease of ttl (rounded up to whole seconds)
// and keeps it registered, in the background, for as long as ctx lives. It returns at once.
//
// An empty service or node name or ttl <= 0 is an immediate error. Then done is closed when the
// node is registered for the first time, and errChan (buffered; never blocked on) receives the
// error of each failed attempt before that, e.g. one matching context.DeadlineExceeded when etcd
// does not answer in time; attempts go on with backoff. After the first registration, losses
// and re-registrations are reported by Register's status events, not on errChan.
//
// When ctx ends, the node is unregistered (its key deleted at once) and errChan is closed,
// without a value once done was closed, as in go.lumeweb.com/etcd-registry; when ctx ends
// before the first registration (also when that lands after ctx ended: done is then never
// closed), ctx.Err() is sent first. A registration that ends otherwise sends ErrUnregistered
// (UnregisterNode), ErrClosed (Close) or ErrReplaced (the same node registered again on this
// registry). errChan is closed after that last error, so `for err := range errChan` ends
// when the registration does.
func (r *EtcdRegistry) RegisterNode(ctx context.Context, service string, node Node, ttl time.Duration) (done <-chan struct{}, errChan <-chan error, err error) {
	// The Registration is not handed out, so nobody can ever read its status events: none is
	// kept (a long outage would otherwise fill its backlog with 1024 Retrying events).
	g, err := r.register(ctx, service, node, ttl, false)
	if err != nil {
		return nil, nil, err
	}
	return g.Done(), g.Errors(), nil
}

// Register is RegisterNode returning the Registration, which also gives the status events,
// the state and the lease, and can be unregistered.
func (r *EtcdRegistry) Register(ctx context.Context, service string, node Node, ttl time.Duration) (*Registration, error) {
	return r.register(ctx, service, node, ttl, true)
}

// register is Register; keepEvents is false when the caller will never call Events.
func (r *EtcdRegistry) register(ctx context.Context, service string, node Node, ttl time.Duration, keepEvents bool) (*Registration, error) {
	const op = "register"
	switch {
	case !r.made():
		return nil, notMade(op, "the EtcdRegistry")
	case ctx == nil:
		return nil, invalidArgument(op, "nil context")
	}
	// Names, the TTL and the info are checked by the library (the core's rules), below, also
	// when ctx has already ended.
	h := r.h
	g := &Registration{
		r:        r,
		service:  service,
		node:     node.Name,
		ctx:      ctx,
		noReader: !keepEvents,
	}
	if !h.open() {
		return nil, closedError(op)
	}
	if err := ctx.Err(); err != nil {
		// A context that has already ended registers nothing, but bad arguments are an error
		// whatever the context: the library checks them without registering.
		if err := h.use(op, func(p *cRegistry) error {
			return cCheckRegister(p, service, node.Name, node.Info, ttl)
		}); err != nil {
			return nil, err
		}
		// Ended before it began: nothing is registered, so the library has no event to give;
		// the registration ends here as one that was unregistered at once would.
		g.end(err, StatusEvent{Kind: StatusUnregistered, Service: service, Node: node.Name})
		return g, nil
	}
	h.startDispatcher()
	caughtUp := h.routes.beginCreate()
	h.registering.Lock()
	err := h.use(op, func(p *cRegistry) error {
		var err error
		g.id, err = cRegister(p, service, node.Name, node.Info, ttl)
		return err
	})
	if err == nil {
		h.mu.Lock()
		h.registrations[keyOf(service, node.Name)] = g
		h.mu.Unlock()
	}
	h.registering.Unlock()
	if err != nil {
		h.routes.abortCreate()
		return nil, err
	}
	if testHookRouting != nil {
		testHookRouting(g)
	}
	if h.routes.addRegistration(g, caughtUp) {
		// The dispatcher caught up with dropped events while g was not routed yet: g's own
		// Registered event may have been among them.
		g.catchUp()
	}
	if ctx.Done() != nil { // else ctx never ends: nothing to watch
		g.mu.Lock()
		if !g.ended {
			g.more().stopCtx = context.AfterFunc(ctx, func() {
				if g.claimEnd(ctx.Err(), true) {
					_ = g.unregister()
				}
			})
		}
		g.mu.Unlock()
	}
	runtime.KeepAlive(r)
	return g, nil
}

// testHookRouting, set by tests, runs in register once the library has made the registration
// and before its events are routed to it.
var testHookRouting func(g *Registration)

// UnregisterNode unregisters a node this registry registered: its key is deleted at once and
// its registration ends (ErrUnregistered on its error channel). ErrNotFound when this registry
// holds no registration of that node; one ending when called (its context just ended) is
// waited for, as Unregister does, and one Close ends first gets ErrClosed, as there. The
// deletion goes on if ctx ends first.
func (r *EtcdRegistry) UnregisterNode(ctx context.Context, service, name string) error {
	switch {
	case !r.made():
		return notMade(unregisterLabel, "the EtcdRegistry")
	case ctx == nil:
		return invalidArgument(unregisterLabel, "nil context")
	case service == "":
		return invalidArgument(unregisterLabel, "service name must not be empty")
	case name == "":
		return invalidArgument(unregisterLabel, "node name must not be empty")
	}
	h := r.h
	h.mu.Lock()
	g := h.registrations[keyOf(service, name)]
	h.mu.Unlock()
	runtime.KeepAlive(r)
	if g == nil {
		if h.isClosed() {
			return closedError(unregisterLabel)
		}
		return &Error{Code: CodeNotFound, Op: unregisterLabel,
			Message: fmt.Sprintf("node %q of service %q is not registered by this registry", name, service)}
	}
	// Found: it had not ended when called (end forgets it first), even if it has by now.
	return g.unregisterLive(ctx, false)
}

// Service is the service the node is registered under.
func (g *Registration) Service() string {
	if !g.made() {
		return ""
	}
	return g.service
}

// made reports whether g was made by this package (Register, RegisterNode), not nil or a zero
// value: the methods of one that was not return an error matching ErrInvalidArgument, or
// report an ended registration.
func (g *Registration) made() bool { return g != nil && g.r != nil }

// NodeName is the registered node's name.
func (g *Registration) NodeName() string {
	if !g.made() {
		return ""
	}
	return g.node
}

// Done is closed when the node is registered for the first time (see RegisterNode).
func (g *Registration) Done() <-chan struct{} {
	if !g.made() {
		return nil // never registered
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.registered {
		return closedChan
	}
	if g.done == nil {
		g.done = make(chan struct{})
	}
	return g.done
}

// Errors is the error channel RegisterNode returns.
func (g *Registration) Errors() <-chan error {
	if !g.made() {
		return closedErrors
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	x := g.more()
	if x.errs == nil {
		x.errs = make(chan error, errChanSize)
		for _, err := range x.errBuf {
			x.errs <- err
		}
		x.errBuf = nil
		if g.errsDone {
			close(x.errs)
		}
	}
	return x.errs
}

// pushErrLocked puts err on the error channel, or keeps it for the channel's maker.
func (g *Registration) pushErrLocked(err error) {
	x := g.more()
	if x.errs != nil {
		pushLatest(x.errs, err)
		return
	}
	if len(x.errBuf) == errChanSize {
		copy(x.errBuf, x.errBuf[1:])
		x.errBuf = x.errBuf[:errChanSize-1]
	}
	x.errBuf = append(x.errBuf, err)
}

// finishedChan is closed when the registration has ended.
func (g *Registration) finishedChan() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.finishedLocked()
}

// finishedLocked is finishedChan with g.mu held. Finished means the registration has ended and
// its last events are on the events channel (a pump running then hands them over first).
func (g *Registration) finishedLocked() <-chan struct{} {
	if g.ended && !g.pumping {
		return closedChan
	}
	x := g.more()
	if x.finished == nil {
		x.finished = make(chan struct{})
	}
	return x.finished
}

// Events delivers every status event of the registration in order since Register, ending with
// StatusUnregistered, after which it is closed. Events not read yet, before Events is first
// called too, wait with the library's bound and policy (see "Event delivery" in the root
// README): past 1024 unread ones the oldest is dropped (never StatusUnregistered) and counted by
// Dropped; State always tells where things stand. So a registration whose Events is never
// read holds up to 1024 events (during a long outage, mostly StatusRetrying ones); RegisterNode,
// whose Registration nobody can read, keeps none. Once the registration has ended nothing waits for the reader any more: of the events
// it has not taken then, the last 8 stay on the channel (StatusUnregistered last) and older ones
// are dropped. Asked for first after the end, Events holds every event not dropped before.
func (g *Registration) Events() <-chan StatusEvent {
	if !g.made() {
		return closedEvents
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	x := g.more()
	if x.events == nil {
		size := eventsBuffer
		if g.over { // ended: room for every event left, handed over at once below
			size = max(size, g.backlog.len())
		}
		x.events = make(chan StatusEvent, size)
	}
	g.reading = true
	g.pumpLocked()
	return x.events
}

// Dropped is how many status events were dropped because Events' reader fell behind.
func (g *Registration) Dropped() uint64 {
	if !g.made() {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.backlog.dropped
}

// State is where the registration stands now. It does not talk to etcd.
func (g *Registration) State() State {
	if !g.made() || g.hasEnded() {
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
	if !g.made() || g.hasEnded() {
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
	if !g.made() {
		return notMade(op, "the Registration")
	}
	if g.hasEnded() {
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
// if it had already ended when called (ErrClosed after Close). One already ending when called
// (its context ended, another Unregister) is waited for, and nil returned (ErrClosed when Close
// ended it), so Unregister right after cancelling its context does not depend on timing. One
// that Close ends first, while Unregister is under way, ends as Close ends it: ErrClosed,
// returned and on its error channel. If
// ctx ends first, Unregister returns ctx.Err() and the deletion goes on. It never fails because
// etcd is unreachable: a warning is logged, nil returned, and the key expires with its lease
// (or, when other nodes of the registry keep that lease alive, is deleted as soon as etcd
// answers again). A node that never reached etcd (unreachable ever since it was registered) is
// unregistered at once: nothing of it is in etcd, and nothing of it is written afterwards.
func (g *Registration) Unregister(ctx context.Context) error {
	if !g.made() {
		return notMade(unregisterLabel, "the Registration")
	}
	if ctx == nil {
		ctx = context.Background()
	}
	return g.unregisterLive(ctx, g.hasEnded())
}

// unregisterLive is Unregister; endedBefore tells whether the registration had ended when
// Unregister or UnregisterNode was called.
func (g *Registration) unregisterLive(ctx context.Context, endedBefore bool) error {
	if !g.claimEnd(ErrUnregistered, false) {
		// Ending already (Close, its context, another Unregister) or ended.
		select {
		case <-g.finishedChan():
		case <-ctx.Done():
			return ctx.Err()
		}
		g.mu.Lock()
		reason := g.x.reason // made by finishedChan, set by end
		g.mu.Unlock()
		switch {
		case reason == ErrClosed || (endedBefore && g.r.h.isClosing()):
			return closedError(unregisterLabel)
		case !endedBefore && reason != ErrReplaced:
			return nil // it ended as asked, its key deleted
		}
		return &Error{Code: CodeNotFound, Op: unregisterLabel, Message: "the registration has already ended"}
	}
	result := make(chan error, 1)
	go func() {
		if testHookUnregistering != nil {
			testHookUnregistering(g)
		}
		err := g.unregister()
		closed := isCode(err, CodeClosed)
		g.unregisterAnswered(closed)
		if closed {
			// Close came first: it ended the registration, and revoking the lease deleted the key.
			err = closedError(unregisterLabel)
		}
		result <- err
	}()
	select {
	case err := <-result:
		// The library queued StatusUnregistered before returning: wait until it is handed over.
		select {
		case <-g.finishedChan():
		case <-ctx.Done():
			return ctx.Err()
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *Registration) hasEnded() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ended
}

// claimEnd records why the registration ends (byCtx: its context ended, else Unregister,
// which must then call unregisterAnswered); false if an end is already under way.
func (g *Registration) claimEnd(reason error, byCtx bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if (g.x != nil && g.x.reason != nil) || g.over {
		return false
	}
	x := g.more()
	x.reason, x.ctxEnded, x.unregistering = reason, byCtx, !byCtx
	return true
}

// unregisterAnswered takes the library's answer to Unregister's unregister (closed: CLOSED,
// Close came first), and ends the registration if its StatusUnregistered came meanwhile.
func (g *Registration) unregisterAnswered(closed bool) {
	g.mu.Lock()
	x := g.x // made by claimEnd
	x.unregistering = false
	if closed {
		x.reason = ErrClosed
	}
	held := x.held
	x.held = nil
	g.mu.Unlock()
	if held != nil {
		g.finish(*held) // the last event of g: nothing is delivered after it
	}
}

// deliver applies one event from the dispatcher, in order; it never blocks.
func (g *Registration) deliver(ev StatusEvent) {
	switch ev.Kind {
	case StatusRegistered:
		g.landed()
	case StatusRetrying:
		g.mu.Lock()
		if !g.registered {
			g.pushErrLocked(ev.Err)
		}
		g.mu.Unlock()
	case StatusUnregistered:
		g.mu.Lock()
		if g.x != nil && g.x.unregistering {
			// Whether Unregister or Close ended it is known when the library answers Unregister.
			g.x.held = &ev
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.finish(ev)
		return
	}
	g.mu.Lock()
	if !g.noReader || g.reading {
		g.backlog.push(newStatusRec(ev), isFinalRec)
		g.pumpLocked()
	}
	g.mu.Unlock()
}

// finish ends the registration with its StatusUnregistered event, for the reason claimed, else
// the one the library's event stands for.
func (g *Registration) finish(ev StatusEvent) {
	var reason error
	g.mu.Lock()
	if g.x != nil {
		reason = g.x.reason
	}
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
}

// landed records the first registration: done is closed, unless ctx ended first.
func (g *Registration) landed() {
	g.mu.Lock()
	first := !g.registered && g.ctx.Err() == nil // landed after ctx ended: done stays open
	var done chan struct{}
	if first {
		g.registered = true
		done, g.done = g.done, nil // closedChan stands for it from now on
	}
	g.mu.Unlock()
	if done != nil {
		close(done)
	}
}

// catchUp closes done if the library says the node has been registered: its Registered event
// may have been dropped from the library's queue (see handle.catchUp). It runs on the
// dispatcher, or in register: landed is idempotent, under g.mu, so either may come first.
func (g *Registration) catchUp() {
	g.mu.Lock()
	registered := g.registered
	g.mu.Unlock()
	if registered {
		return
	}
	var state State
	err := g.r.h.use("registration state", func(p *cRegistry) error {
		var err error
		state, err = cRegistrationState(p, g.id)
		return err
	})
	// Registered now, or registered once and retrying since (Registering is before the first).
	if err == nil && (state == StateRegistered || state == StateRetrying) {
		g.landed()
	}
}

// pumpLocked starts handing the backlog to the events channel if Events is read and no
// goroutine does it yet; the goroutine ends when the backlog is empty or the registration has
// ended. Once it has, the rest is handed over at once, without a goroutine (finishEventsLocked).
func (g *Registration) pumpLocked() {
	switch {
	case !g.reading || g.pumping || g.eventsDone:
	case g.over:
		g.finishEventsLocked()
	case g.backlog.len() > 0:
		g.pumping = true
		go g.pump()
	}
}

// pump hands the backlog to the events channel, waiting for the reader. Once the registration
// has ended, it hands the rest over (finishEventsLocked) and only then marks it finished
// (Unregister returns), as end does when no pump runs: end cannot close the events channel
// while the pump may be sending on it.
func (g *Registration) pump() {
	for {
		g.mu.Lock()
		if g.over {
			g.pumping = false
			g.finishEventsLocked()
			finished := g.takeFinishedLocked()
			g.mu.Unlock()
			if finished != nil {
				close(finished)
			}
			return
		}
		rec, ok := g.backlog.pop()
		if !ok {
			g.pumping = false
			g.mu.Unlock()
			return
		}
		x := g.x // made by Events, which started the pump
		ev := g.event(rec)
		select {
		case x.events <- ev: // room in the buffer: no need to wait, nor to unlock
			g.mu.Unlock()
			continue
		default:
		}
		if x.stop == nil {
			x.stop = make(chan struct{})
		}
		events, stop := x.events, x.stop
		g.mu.Unlock()
		select {
		case events <- ev:
		case <-stop:
			// Ended: first in line again, for finishEventsLocked.
			g.mu.Lock()
			g.backlog.pushFront(rec, isFinalRec)
			g.mu.Unlock()
		}
	}
}

// takeFinishedLocked takes the finished channel of an ended registration for its caller to
// close, nil while a pump has yet to hand the last events over (it closes it then).
func (g *Registration) takeFinishedLocked() chan struct{} {
	if g.pumping || g.x == nil {
		return nil
	}
	finished := g.x.finished
	g.x.finished = nil
	return finished
}

// finishEventsLocked hands the rest of the backlog of an ended registration to the events
// channel without waiting for the reader, and closes it: when its buffer is full, the oldest
// event in it is dropped (counted) to make room, so it ends with the newest events and
// StatusUnregistered last.
func (g *Registration) finishEventsLocked() {
	events := g.x.events
	for {
		rec, ok := g.backlog.pop()
		if !ok {
			break
		}
		ev := g.event(rec)
		for sent := false; !sent; {
			select {
			case events <- ev:
				sent = true
			default:
				select {
				case <-events:
					g.backlog.dropped++
				default: // the reader took one meanwhile
				}
			}
		}
	}
	close(events)
	g.eventsDone = true
}

// unregister deletes the key and forgets the registration in the library, which then queues
// StatusUnregistered. CLOSED when Close came first (it revoked the lease, deleting the key).
//
// It waits for etcd parked, not in C (see asyncCall), and outside the registry's lock: a
// registry whose registrations all end at once (a shared context cancelled at shutdown) while
// etcd is slow neither takes an OS thread per registration nor holds up Close.
func (g *Registration) unregister() error {
	var wait func() error
	err := g.r.h.use(unregisterLabel, func(p *cRegistry) error {
		var err error
		wait, err = cStartUnregister(p, g.id)
		return err
	})
	if err == nil {
		err = wait()
	}
	return err
}

// testHookUnregistering, set by tests, runs once Unregister has claimed the end and before it
// asks the library to unregister.
var testHookUnregistering func(g *Registration)

// testHookEnding, set by tests, runs in end between letting go of ctx and marking the
// registration ended.
var testHookEnding func(g *Registration)

// end ends the registration: last (StatusUnregistered) is its last event, reason goes on the
// error channel, which is then closed; but for a context that ended after done was closed, as
// go.lumeweb.com/etcd-registry closes errChan without a value then.
func (g *Registration) end(reason error, last StatusEvent) {
	h := g.r.h
	var stopCtx func() bool
	g.mu.Lock()
	if g.x != nil {
		stopCtx, g.x.stopCtx = g.x.stopCtx, nil
	}
	g.mu.Unlock()
	if stopCtx != nil {
		stopCtx()
	}
	if g.id != 0 {
		h.routes.removeRegistration(g.id)
		h.mu.Lock()
		if key := keyOf(g.service, g.node); h.registrations[key] == g {
			delete(h.registrations, key)
		}
		h.mu.Unlock()
	}
	if testHookEnding != nil {
		testHookEnding(g)
	}
	g.mu.Lock()
	g.backlog.push(newStatusRec(last), isFinalRec)
	g.over = true
	x := g.more()
	if x.reason == nil {
		x.reason = reason // for an Unregister waiting for the end
	}
	if !x.ctxEnded || !g.registered {
		g.pushErrLocked(reason)
	}
	g.errsDone = true
	if x.errs != nil {
		close(x.errs)
	}
	g.ended = true
	if x.stop != nil {
		close(x.stop) // a pump blocked on a reader who does not read: it hands the rest over now
		x.stop = nil
	}
	// After the error: a reader that sees Events closed finds it on errs. With no pump running,
	// the rest is on the events channel once this returns.
	g.pumpLocked()
	// Register may have started following ctx since the look above (it checks ended): stop that.
	stopCtx, x.stopCtx = x.stopCtx, nil
	finished := g.takeFinishedLocked()
	g.mu.Unlock()
	if stopCtx != nil {
		stopCtx()
	}
	if finished != nil {
		close(finished)
	}
}

// pushLatest sends v without blocking, dropping the oldest value when ch is full. Only one
// goroutine at a time sends on each channel (under the registration's lock), so the loop ends
// after at most one drop.
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
