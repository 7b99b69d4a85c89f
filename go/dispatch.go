package etcdregistry

import (
	"sync"
	"time"
)

// Events reach Go through the C library's pull queue, not through callbacks: registrations and
// watches are made with a NULL callback, and one goroutine per registry (dispatch) waits in
// etcd_registry_next_event, then hands each event to the mailbox of its registration or watch.
// So no Rust thread ever calls into Go for them and C keeps no Go pointer. The dispatcher never
// blocks on a consumer: mailboxes are unbounded, and each registration or watch has its own
// goroutine that empties its mailbox. The dispatcher exits when next_event reports CLOSED.

// mailbox is an unbounded queue with one consumer. put never blocks.
type mailbox[T any] struct {
	mu     sync.Mutex
	items  []T
	notify chan struct{} // holds one token while items is not empty
}

func newMailbox[T any]() *mailbox[T] {
	return &mailbox[T]{notify: make(chan struct{}, 1)}
}

func (m *mailbox[T]) put(items ...T) {
	if len(items) == 0 {
		return
	}
	m.mu.Lock()
	m.items = append(m.items, items...)
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// ready is signalled after put; then take returns what came in.
func (m *mailbox[T]) ready() <-chan struct{} { return m.notify }

func (m *mailbox[T]) take() []T {
	m.mu.Lock()
	defer m.mu.Unlock()
	items := m.items
	m.items = nil
	return items
}

// routes maps the ids the library gives registrations and watches to their mailboxes.
//
// An event can be pulled before the call that created its registration or watch has returned
// the id (etcd_registry_watch lists first, and may take up to the timeout). While such a call
// is under way (creating > 0), events of unknown ids are kept in pending and handed over when
// the id is claimed; once no creation is under way, pending events can only belong to ids that
// already ended, and are dropped.
type routes struct {
	mu             sync.Mutex
	registrations  map[uint64]*mailbox[StatusEvent]
	watches        map[uint64]*mailbox[WatchEvent]
	creating       int
	pendingStatus  map[uint64][]StatusEvent
	pendingWatches map[uint64][]WatchEvent
}

func newRoutes() *routes {
	return &routes{
		registrations:  map[uint64]*mailbox[StatusEvent]{},
		watches:        map[uint64]*mailbox[WatchEvent]{},
		pendingStatus:  map[uint64][]StatusEvent{},
		pendingWatches: map[uint64][]WatchEvent{},
	}
}

// beginCreate must precede the C call that creates a registration or watch; one of
// addRegistration, addWatch or abortCreate must follow it.
func (r *routes) beginCreate() {
	r.mu.Lock()
	r.creating++
	r.mu.Unlock()
}

func (r *routes) endCreateLocked() {
	r.creating--
	if r.creating == 0 {
		clear(r.pendingStatus)
		clear(r.pendingWatches)
	}
}

func (r *routes) abortCreate() {
	r.mu.Lock()
	r.endCreateLocked()
	r.mu.Unlock()
}

func (r *routes) addRegistration(id uint64, box *mailbox[StatusEvent]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.registrations[id] = box
	box.put(r.pendingStatus[id]...)
	delete(r.pendingStatus, id)
	r.endCreateLocked()
}

func (r *routes) addWatch(id uint64, box *mailbox[WatchEvent]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watches[id] = box
	box.put(r.pendingWatches[id]...)
	delete(r.pendingWatches, id)
	r.endCreateLocked()
}

func (r *routes) removeRegistration(id uint64) {
	r.mu.Lock()
	delete(r.registrations, id)
	r.mu.Unlock()
}

func (r *routes) removeWatch(id uint64) {
	r.mu.Lock()
	delete(r.watches, id)
	r.mu.Unlock()
}

func (r *routes) deliver(ev pulled) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.watch {
		if box, ok := r.watches[ev.id]; ok {
			box.put(ev.event)
		} else if r.creating > 0 {
			r.pendingWatches[ev.id] = append(r.pendingWatches[ev.id], ev.event)
		}
		return
	}
	if box, ok := r.registrations[ev.id]; ok {
		box.put(ev.status)
	} else if r.creating > 0 {
		r.pendingStatus[ev.id] = append(r.pendingStatus[ev.id], ev.status)
	}
}

// startDispatcher starts the pulling goroutine on first use (a registry that only lists
// needs none). It does nothing once the registry is closing.
func (h *handle) startDispatcher() {
	h.dispatchOnce.Do(func() {
		h.dispatchStarted = true
		go h.dispatch()
	})
}

// dispatch pulls events until the registry is closed. It holds the handle's read lock only
// while inside next_event, which close wakes with CLOSED.
func (h *handle) dispatch() {
	defer close(h.dispatchDone)
	for {
		var ev pulled
		err := h.use("next event", func(p *cRegistry) error {
			var err error
			ev, err = cNextEvent(p, waitForever)
			return err
		})
		switch {
		case err == nil:
			h.routes.deliver(ev)
		case isCode(err, CodeClosed):
			return
		case isCode(err, CodeTimeout):
			// nothing came within the (long) wait; wait again
		default:
			// Not expected (a bug inside the library); do not spin on it.
			time.Sleep(100 * time.Millisecond)
		}
	}
}
