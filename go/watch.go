package etcdregistry

import (
	"context"
	"runtime"
	"sync"
)

// Watch follows the nodes of one service: it starts with one WatchAdded per node present,
// then reports every change, resuming after disconnects and re-listing after compaction,
// until its context ends, Close is called on it or on the registry. It has no goroutine of its
// own: the registry's dispatcher hands it its events (see dispatch.go). A watch dropped
// without being stopped (a context that never ends, no Close) is not collected: the registry
// holds it, and it keeps the registry alive, until one of them is closed.
type Watch struct {
	r       *EtcdRegistry // keeps the registry alive while the watch is referenced
	id      uint64
	service string

	events   chan WatchEvent // unbuffered; closed when the watch stops
	finished chan struct{}

	mu         sync.Mutex
	stopCtx    func() bool  // stops following ctx; nil once stopping
	backlog    watchBacklog // events the reader has not taken yet, merged per node
	pumping    bool         // a goroutine is handing the backlog to events
	stopping   bool
	eventsDone bool // events is closed
}

// WatchService starts watching a service. It lists the service first, so it fails (e.g. with
// ErrConnection or a timeout) when etcd cannot be reached now, and returns ctx.Err() if ctx
// ends before that listing does; afterwards the watch rides out outages by itself. An empty
// service name is an error.
func (r *EtcdRegistry) WatchService(ctx context.Context, service string) (*Watch, error) {
	const op = "watch"
	switch {
	case !r.made():
		return nil, notMade(op, "the EtcdRegistry")
	case ctx == nil:
		return nil, invalidArgument(op, "nil context")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := r.h
	w := &Watch{
		r:        r,
		service:  service,
		events:   make(chan WatchEvent),
		finished: make(chan struct{}),
	}
	if !h.open() {
		return nil, closedError(op)
	}
	h.startDispatcher()
	h.routes.beginCreate()
	id, err := startWatch(ctx, h, service)
	if err != nil {
		return nil, err
	}
	w.id = id
	if testHookWatchMade != nil {
		testHookWatchMade(r)
	}
	h.routes.addWatch(w)
	// Published: Close (or ctx, once followed) may stop the watch from now on, so what stops
	// following ctx is recorded under the lock, and not at all once the watch is stopping.
	stopCtx := context.AfterFunc(ctx, func() { w.stop(true) })
	w.mu.Lock()
	if w.stopping {
		w.mu.Unlock()
		stopCtx()
	} else {
		w.stopCtx = stopCtx
		w.mu.Unlock()
	}
	// Close stops the watches it finds routed after marking the registry closed: a watch routed
	// after Close looked is seen closed here, and stopped (stop is idempotent, for both).
	if h.isClosed() {
		w.stop(false)
		return nil, closedError(op)
	}
	runtime.KeepAlive(r)
	return w, nil
}

// testHookWatchMade, set by tests, runs once the library has made a watch and before
// WatchService publishes it.
var testHookWatchMade func(r *EtcdRegistry)

// startWatch makes the library's watch, whose first listing waits for etcd: parked in the
// netpoller (etcd_registry_watch_async), outside the registry's lock, or where there is no
// eventfd blocked in C in a goroutine of its own. When ctx ends first it returns ctx.Err(); the
// watch, if the library then makes it, is stopped at once. On error the creation begun by the
// caller is ended.
func startWatch(ctx context.Context, h *handle, service string) (uint64, error) {
	const op = "watch"
	// Once ctx has ended: the watch, if made, is stopped, and an event of it the dispatcher has
	// already pulled is dropped at once (endWatch), not held until every creation has ended.
	abandoned := func(id uint64, err error) {
		if err == nil {
			_ = h.use("unwatch", func(p *cRegistry) error { return cUnwatch(p, id) })
			h.routes.endWatch(id)
		}
		h.routes.abortCreate()
	}
	var wait func(ctx context.Context) (uint64, error)
	err := h.use(op, func(p *cRegistry) error {
		var err error
		wait, err = cStartWatch(p, service, abandoned)
		return err
	})
	if err != nil {
		h.routes.abortCreate()
		return 0, err
	}
	if wait != nil {
		id, err := wait(ctx)
		if err != nil && (ctx.Err() == nil || err != ctx.Err()) {
			// Not handed to abandoned: the call failed, or waiting for it did.
			h.routes.abortCreate()
		}
		return id, err
	}
	start := func() (id uint64, err error) {
		err = h.use(op, func(p *cRegistry) error {
			id, err = cWatch(p, service)
			return err
		})
		return id, err
	}
	id, answered, err := untilDone(ctx, start, abandoned)
	if err != nil && answered {
		h.routes.abortCreate()
	}
	return id, err
}

// Service is the watched service.
func (w *Watch) Service() string {
	if !w.made() {
		return ""
	}
	return w.service
}

// made reports whether w was made by this package (WatchService), not nil or a zero value: the
// methods of one that was not return an error matching ErrInvalidArgument, or report a stopped
// watch.
func (w *Watch) made() bool { return w != nil && w.r != nil }

// Events delivers the watch's events; it is closed when the watch stops. Nothing is dropped
// when the reader falls behind. A reader less than 1024 events behind gets every event, in
// revision order; from there until it has caught up, a node's new event is merged with its
// last unread event, in place: the merged event keeps that event's position, takes the newer
// Node and Revision, and has this type:
//
//	unread \ newer   Added     Updated   Removed
//	Added            Added     Added     Removed
//	Updated          Updated   Updated   Removed
//	Removed          Updated   Updated   Removed
//
// Nothing vanishes: a node added and removed unread comes as Removed, since a reader that
// started from Nodes() or a listing may hold it. So a reader applies Added and Updated as
// insert-or-replace and Removed as delete-if-present (Updated and Removed may be of a node it
// never saw). Merged in place, a node's change never reaches the reader after changes of other
// nodes made later, so a node live all along is never shown gone; but revisions are then out
// of order across nodes (a merged event carries a newer revision than events after it). A
// newer WatchResynced instead takes an unread one out and goes to the back, after every
// difference event of its resync. So the events waiting number at most 1024 plus one per node,
// and applied in order they always leave the reader with the live set. The library's own queue
// has the same policy (see "Event delivery" in the root README). An event the package has
// already taken for the reader (at most one, waiting for the next receive) is not merged any
// more.
func (w *Watch) Events() <-chan WatchEvent {
	if !w.made() {
		return closedWatchEvents
	}
	return w.events
}

// Dropped is how many of the watch's events were dropped because the reader of Events fell
// behind. None are: unread events are merged per node, in place, instead (see Events; a node
// added and removed unread still comes as Removed), so it is always 0. It stays for the
// programs written when a watch dropped its oldest events past 1024.
func (w *Watch) Dropped() uint64 { return 0 }

// Nodes is the live node set of the service now, as the watch's events have built it, sorted
// by name. It does not talk to etcd. ErrClosed once the watch has stopped.
func (w *Watch) Nodes() ([]Node, error) {
	if !w.made() {
		return nil, notMade("watch nodes", "the Watch")
	}
	if w.stopped() {
		return nil, &Error{Code: CodeClosed, Op: "watch nodes", Message: "the watch has stopped"}
	}
	var nodes []Node
	err := w.r.h.use("watch nodes", func(p *cRegistry) error {
		var err error
		nodes, err = cWatchNodes(p, w.id)
		return err
	})
	runtime.KeepAlive(w)
	if isCode(err, CodeNotFound) { // stopped meanwhile
		return nil, &Error{Code: CodeClosed, Op: "watch nodes", Message: "the watch has stopped"}
	}
	return nodes, err
}

// Close stops the watch and closes its channel; events not yet read are dropped. Idempotent.
func (w *Watch) Close() error {
	if !w.made() {
		return notMade("watch close", "the Watch")
	}
	w.stop(true)
	return nil
}

func (w *Watch) stopped() bool {
	select {
	case <-w.finished:
		return true
	default:
		return false
	}
}

// deliver queues one event from the dispatcher, in order; it never blocks.
func (w *Watch) deliver(ev WatchEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return
	}
	// A reader already waiting takes the event straight from the dispatcher (nothing is queued
	// before it then): no goroutine is started, and the reader runs on this P as soon as the
	// dispatcher yields (see dispatch).
	if !w.pumping {
		select {
		case w.events <- ev:
			return
		default:
		}
	}
	w.backlog.push(ev)
	if !w.pumping {
		w.pumping = true
		go w.pump()
	}
}

// pump hands the backlog to the events channel, and ends when it is empty or the watch stops.
func (w *Watch) pump() {
	for {
		w.mu.Lock()
		ev, ok := w.backlog.pop()
		if !ok || w.stopping {
			w.pumping = false
			w.closeEventsLocked()
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		select {
		case w.events <- ev:
		case <-w.finished:
		}
	}
}

// closeEventsLocked closes the channel once the watch has stopped and no goroutine sends on it.
func (w *Watch) closeEventsLocked() {
	if w.stopping && !w.pumping && !w.eventsDone {
		close(w.events)
		w.eventsDone = true
	}
}

// stop ends the watch once; unwatch tells the library (not needed when the registry closed).
func (w *Watch) stop(unwatch bool) {
	w.mu.Lock()
	if w.stopping {
		w.mu.Unlock()
		<-w.finished
		return
	}
	w.stopping = true
	w.backlog = watchBacklog{}
	stopCtx := w.stopCtx
	w.stopCtx = nil
	w.mu.Unlock()
	if stopCtx != nil {
		stopCtx()
	}
	h := w.r.h
	if unwatch {
		// Fails only when the registry is closed (which stopped the watch) or the id is gone.
		_ = h.use("unwatch", func(p *cRegistry) error { return cUnwatch(p, w.id) })
	}
	h.routes.endWatch(w.id)
	close(w.finished)
	w.mu.Lock()
	w.closeEventsLocked()
	w.mu.Unlock()
}
