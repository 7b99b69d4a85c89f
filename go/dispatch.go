package etcdregistry

import (
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Events reach Go through the C library's pull queue, not through callbacks: registrations and
// watches are made with a NULL callback, and one goroutine per registry (dispatch) waits for
// them (in Go's netpoller on the registry's event descriptor, or, where there is none, inside
// etcd_registry_next_event), then hands each event to its registration or watch. So no Rust
// thread ever calls into Go for them and C keeps no Go pointer.
//
// The one queue is the library's (one policy for every language: see "Event delivery" in the
// root README). A registration or watch has no goroutine of its own: the events its reader has not
// taken yet wait in a backlog with the library's policy, emptied into its channel by a
// goroutine that runs only while there is something to hand over (and, for a registration,
// only once Events has been called, and only while it lives: see eventsBuffer). A
// registration's backlog is bounded and drops its oldest status events (backlog, below); a
// watch's drops nothing: past 1024 unread events it merges a node's newer event into that
// node's unread one, in place (added then removed is removed; revisions may then come out of
// order across nodes), as the library's queue does (watchBacklog, in watch_backlog.go).

// eventQueueCapacity is the library's EVENT_QUEUE_CAPACITY: how many unread status events a
// queue holds before the oldest one that is not final is dropped.
const eventQueueCapacity = 1024

// backlog holds the status events a registration's reader has not taken yet, with the
// library's overflow policy: at capacity the oldest event that is not final is dropped, and
// counted. It is a ring, grown by doubling up to eventQueueCapacity (one event takes one slot,
// as a registration left alone holds just its Registered event), so a push at capacity costs
// O(1), however long a reader stays away.
type backlog[T any] struct {
	ring    []T // len(ring) is the capacity now; nil when empty
	head    int // index of the oldest event
	n       int // events held
	dropped uint64
}

func (b *backlog[T]) len() int { return b.n }

// at is the i-th oldest event held.
func (b *backlog[T]) at(i int) *T { return &b.ring[(b.head+i)%len(b.ring)] }

func (b *backlog[T]) push(v T, final func(T) bool) {
	if b.n >= eventQueueCapacity {
		b.dropOldest(final)
	}
	b.grow()
	*b.at(b.n) = v
	b.n++
}

// pushFront puts v back as the oldest event (one taken by pop and not handed over). At capacity
// v itself, the oldest, is dropped, unless it is final.
func (b *backlog[T]) pushFront(v T, final func(T) bool) {
	if b.n >= eventQueueCapacity && !final(v) {
		b.dropped++
		return
	}
	b.grow()
	b.head = (b.head - 1 + len(b.ring)) % len(b.ring)
	b.ring[b.head] = v
	b.n++
}

// dropOldest drops the oldest event that is not final (counted). The final event is the last
// one ever pushed, so that is the oldest one but in a backlog of one.
func (b *backlog[T]) dropOldest(final func(T) bool) {
	var zero T
	for i := range b.n {
		if final(*b.at(i)) {
			continue
		}
		// Close the gap by moving the older ones up one slot: none when it is the oldest.
		for j := i; j > 0; j-- {
			*b.at(j) = *b.at(j - 1)
		}
		*b.at(0) = zero
		b.head = (b.head + 1) % len(b.ring)
		b.n--
		b.dropped++
		return
	}
}

// grow makes room for one more event.
func (b *backlog[T]) grow() {
	if b.n < len(b.ring) {
		return
	}
	ring := make([]T, max(1, min(2*len(b.ring), eventQueueCapacity+1)))
	for i := range b.n {
		ring[i] = *b.at(i)
	}
	b.ring, b.head = ring, 0
}

func (b *backlog[T]) pop() (T, bool) {
	var zero T
	if b.n == 0 {
		return zero, false
	}
	slot := b.at(0)
	v := *slot
	*slot = zero
	b.head = (b.head + 1) % len(b.ring)
	b.n--
	if b.n == 0 {
		b.ring, b.head = nil, 0 // let the array go
	}
	return v, true
}

// routes maps the ids the library gives registrations and watches to them.
//
// An event can be pulled before the call that created its registration or watch has returned
// the id (etcd_registry_watch lists first, and may take up to the timeout). While such a call
// is under way (creating > 0), the dispatcher waits for it before routing an event of an unknown
// id: the event and those after it stay in the library's bounded queue meanwhile, nothing is
// buffered here. Once no creation is under way, an unknown id belongs to a registration or watch
// that already ended, and its event is dropped.
//
// An event of a watch known to have ended (endWatch) is dropped at once, creations or not: it
// is one the dispatcher pulled just before the watch was unwatched (Close, its context, or a
// WatchService whose context ended before it was made), and waiting for unrelated creations
// (another WatchService listing on a slow member, up to the timeout) would hold up every event.
type routes struct {
	mu            sync.Mutex
	created       sync.Cond // signalled when a creation ends or a watch is ended
	registrations map[uint64]*Registration
	watches       map[uint64]*Watch
	creating      int
	// catchUps counts the dispatcher's catch-ups (handle.catchUp): a registration being created
	// while one looked was not in registrations, and catches up by itself (see register).
	catchUps uint64
	// pulling is set while the dispatcher takes an event and routes it: from beginPull to the
	// end of lookup, or to endPull when none came.
	pulling bool
	// endedWatches are the watches ended during the pull under way (nil when none). The library
	// queues no event of a watch once unwatch has returned, and drops the queued ones: only a
	// next_event call already under way may still return one. So a watch ended between pulls
	// needs no entry, and the entries are forgotten when the pull ends. At most
	// eventQueueCapacity (many watches ending while the dispatcher waits inside next_event,
	// where there is no event descriptor): past that, an event of one is routed as one of an
	// unknown id.
	endedWatches map[uint64]struct{}
}

func newRoutes() *routes {
	r := &routes{
		registrations: map[uint64]*Registration{},
		watches:       map[uint64]*Watch{},
	}
	r.created.L = &r.mu
	return r
}

// beginCreate must precede the C call that creates a registration or watch; one of
// addRegistration, addWatch or abortCreate must follow it. It returns the catch-ups so far,
// for addRegistration.
func (r *routes) beginCreate() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.creating++
	return r.catchUps
}

func (r *routes) endCreateLocked() {
	r.creating--
	r.created.Broadcast()
}

func (r *routes) abortCreate() {
	r.mu.Lock()
	r.endCreateLocked()
	r.mu.Unlock()
}

// addRegistration routes g's events from now on; caughtUp is what beginCreate returned. It
// reports whether the dispatcher caught up meanwhile, without g.
func (r *routes) addRegistration(g *Registration, caughtUp uint64) (missed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.registrations[g.id] = g
	r.endCreateLocked()
	return r.catchUps != caughtUp
}

func (r *routes) addWatch(w *Watch) {
	r.mu.Lock()
	r.watches[w.id] = w
	r.endCreateLocked()
	r.mu.Unlock()
}

func (r *routes) removeRegistration(id uint64) {
	r.mu.Lock()
	delete(r.registrations, id)
	r.mu.Unlock()
}

// endWatch forgets watch id once the library has stopped it (unwatch has returned, or the
// registry was closed), routed or not: an event of it the pull under way has taken is dropped,
// and a lookup waiting on such an event is woken to drop it.
func (r *routes) endWatch(id uint64) {
	r.mu.Lock()
	delete(r.watches, id)
	if r.pulling && len(r.endedWatches) < eventQueueCapacity {
		if r.endedWatches == nil {
			r.endedWatches = map[uint64]struct{}{}
		}
		r.endedWatches[id] = struct{}{}
		r.created.Broadcast()
	}
	r.mu.Unlock()
}

// beginPull is called by the dispatcher before each next_event call; lookup, or endPull when
// the call gave no event, ends the pull.
func (r *routes) beginPull() {
	r.mu.Lock()
	r.pulling = true
	r.mu.Unlock()
}

func (r *routes) endPull() {
	r.mu.Lock()
	r.endPullLocked()
	r.mu.Unlock()
}

func (r *routes) endPullLocked() {
	r.pulling = false
	r.endedWatches = nil
}

// catchUp counts a catch-up and returns every live registration for it, under one lock: a
// registration being created then is either among them or told by addRegistration.
func (r *routes) catchUp() []*Registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.catchUps++
	out := make([]*Registration, 0, len(r.registrations))
	for _, g := range r.registrations {
		out = append(out, g)
	}
	return out
}

// allWatches is every live watch, for Close.
func (r *routes) allWatches() []*Watch {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Watch, 0, len(r.watches))
	for _, w := range r.watches {
		out = append(out, w)
	}
	return out
}

// lookup finds the registration or watch of ev, waiting for creations under way unless its
// watch is known to have ended, and ends the pull that took ev.
func (r *routes) lookup(ev pulled) (*Registration, *Watch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.endPullLocked()
	for {
		if ev.watch {
			if w, ok := r.watches[ev.id]; ok {
				return nil, w
			}
			if _, ok := r.endedWatches[ev.id]; ok {
				return nil, nil
			}
		} else if g, ok := r.registrations[ev.id]; ok {
			return g, nil
		}
		if r.creating == 0 {
			return nil, nil
		}
		r.created.Wait()
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
// while inside a library call; next_event returns what close queued (every registration's
// StatusUnregistered), then CLOSED.
//
// It waits for events in Go's netpoller, on a copy of the library's event descriptor, and takes
// them with next_event without waiting: no OS thread stays blocked in C, and an event wakes
// the goroutine the way a socket wakes clientv3's. Without the descriptor (it could not be
// had), it waits inside next_event instead.
//
// When the dispatcher falls behind (a burst of thousands of registrations landing at once on a
// busy machine), the library's queue drops the oldest events past its bound, Registered ones
// among them, and a registration would never see its first registration. So whenever the queue
// runs empty, and every catchUpEvery events, the dispatcher asks how many events were dropped;
// if that grew, it catches up from the library's state (see catchUp).
func (h *handle) dispatch() {
	defer close(h.dispatchDone)
	const catchUpEvery = 256
	var dropped uint64 // the drops already caught up with
	wake := h.eventFile()
	defer func() {
		if wake != nil {
			wake.Close()
		}
	}()
	var buf [64]byte
	timeout := uint64(0)
	pulledSince := 0
	for {
		var ev pulled
		h.routes.beginPull()
		err := h.use("next event", func(p *cRegistry) error {
			var err error
			ev, err = cNextEvent(p, timeout)
			return err
		})
		if err != nil {
			h.routes.endPull()
		}
		switch {
		case err == nil:
			g, w := h.routes.lookup(ev) // ends the pull
			if g != nil {
				g.deliver(ev.status)
			} else if w != nil {
				w.deliver(ev.event)
			}
			timeout = 0 // look again without waiting: the queue may be empty now
			if pulledSince++; pulledSince >= catchUpEvery {
				pulledSince = 0
				h.catchUp(&dropped)
			}
		case isCode(err, CodeClosed):
			return
		case isCode(err, CodeTimeout):
			if timeout != 0 {
				continue // waited in next_event: none yet
			}
			// The queue is empty: check for drops, then wait for the next event.
			pulledSince = 0
			h.catchUp(&dropped)
			if wake != nil {
				// Parked in the netpoller until the library signals an event (or the close).
				if _, err := wake.Read(buf[:]); err == nil {
					continue
				}
				wake.Close()
				wake = nil
			}
			timeout = waitForever
			// Readers the events just went to are runnable on this goroutine's P. Blocked in
			// C, it would keep that P until another thread woke up to take them over: they
			// run first, here.
			runtime.Gosched()
		default:
			// Not expected (a bug inside the library); do not spin on it.
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// eventFile is a pollable copy of the library's event descriptor, or nil when there is none.
func (h *handle) eventFile() *os.File {
	if h.waitInLibrary {
		return nil
	}
	var fd int
	err := h.use("event fd", func(p *cRegistry) error {
		var err error
		fd, err = cEventFD(p)
		return err
	})
	if err != nil {
		return nil
	}
	// A copy of our own (the library closes its descriptor at free), close-on-exec as os
	// makes them. The copy shares the descriptor's non-blocking mode, so os polls it.
	syscall.ForkLock.RLock()
	own, err := syscall.Dup(fd)
	if err == nil {
		syscall.CloseOnExec(own)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil // out of descriptors: wait in the library instead
	}
	return os.NewFile(uintptr(own), "etcd-registry events")
}

// catchUp makes up for events the library's queue dropped since the last look (*seen is the
// drop count then): every registration not registered yet asks the library for its state, and
// one registered meanwhile closes its done channel as its dropped Registered event would have.
// Runs on the dispatcher, in order with deliver. A registration that Register has made in the
// library but not routed yet is not among them: Register has it catch up by itself.
func (h *handle) catchUp(seen *uint64) {
	var now uint64
	err := h.use("dropped events", func(p *cRegistry) error {
		var err error
		now, err = cDroppedEvents(p)
		return err
	})
	if err != nil || now == *seen {
		return
	}
	*seen = now
	for _, g := range h.routes.catchUp() {
		g.catchUp()
	}
}
