package etcdregistry

import (
	"context"
	"runtime"
)

// Watch follows the nodes of one service: it starts with one WatchAdded per node present,
// then reports every change, resuming after disconnects and re-listing after compaction,
// until its context ends, Close is called on it or on the registry.
type Watch struct {
	r       *EtcdRegistry // keeps the registry alive while the watch is referenced
	id      uint64
	service string

	events       chan WatchEvent
	finished     chan struct{}
	box          *mailbox[WatchEvent]
	stopRequests chan chan struct{}
}

// WatchService starts watching a service. It lists the service first, so it fails (e.g. with
// ErrConnection or a timeout) when etcd cannot be reached now; afterwards the watch rides out
// outages by itself. An empty service name is an error.
func (r *EtcdRegistry) WatchService(ctx context.Context, service string) (*Watch, error) {
	const op = "watch"
	switch {
	case ctx == nil:
		return nil, invalidArgument(op, "nil context")
	case service == "":
		return nil, invalidArgument(op, "service name must not be empty")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := r.h
	w := &Watch{
		r:            r,
		service:      service,
		events:       make(chan WatchEvent),
		finished:     make(chan struct{}),
		box:          newMailbox[WatchEvent](),
		stopRequests: make(chan chan struct{}),
	}
	if !h.track() {
		return nil, closedError(op)
	}
	h.startDispatcher()
	h.routes.beginCreate()
	err := h.use(op, func(p *cRegistry) error {
		var err error
		w.id, err = cWatch(p, service)
		return err
	})
	if err != nil {
		h.routes.abortCreate()
		h.goroutines.Done()
		return nil, err
	}
	h.routes.addWatch(w.id, w.box)
	go w.run(ctx)
	runtime.KeepAlive(r)
	return w, nil
}

// Service is the watched service.
func (w *Watch) Service() string { return w.service }

// Events delivers the watch's events in order; it is closed when the watch stops. Events are
// queued without limit until read: read them, or stop the watch.
func (w *Watch) Events() <-chan WatchEvent { return w.events }

// Nodes is the live node set of the service now, as the watch's events have built it, sorted
// by name. It does not talk to etcd. ErrClosed once the watch has stopped.
func (w *Watch) Nodes() ([]Node, error) {
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
	reply := make(chan struct{})
	select {
	case w.stopRequests <- reply:
		<-reply
	case <-w.finished:
	}
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

// run is the watch's goroutine: it moves events from the mailbox to the channel, queueing
// them while the reader is busy, until the watch stops.
func (w *Watch) run(ctx context.Context) {
	h := w.r.h
	defer h.goroutines.Done()
	defer runtime.KeepAlive(w.r)
	var queue []WatchEvent
	for {
		var out chan WatchEvent // nil (never ready) while there is nothing to send
		var next WatchEvent
		if len(queue) > 0 {
			out, next = w.events, queue[0]
		}
		select {
		case <-ctx.Done():
			w.stop(true)
			return
		case <-h.closed:
			w.stop(false) // close stopped every watch
			return
		case reply := <-w.stopRequests:
			w.stop(true)
			close(reply)
			return
		case <-w.box.ready():
			queue = append(queue, w.box.take()...)
		case out <- next:
			queue[0] = WatchEvent{}
			queue = queue[1:]
		}
	}
}

func (w *Watch) stop(unwatch bool) {
	h := w.r.h
	if unwatch {
		// Fails only when the registry is closed (which stopped the watch) or the id is gone.
		_ = h.use("unwatch", func(p *cRegistry) error { return cUnwatch(p, w.id) })
	}
	h.routes.removeWatch(w.id)
	close(w.events)
	close(w.finished)
}
