package etcdregistry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// followedCtx is a context that counts who follows it: context.AfterFunc on it calls its
// AfterFunc method, and the stop that returns is what stops following it. onFirstDone, when
// set, runs the first time Done is called.
type followedCtx struct {
	context.Context
	following   atomic.Int64
	followed    chan struct{} // gets a value each time AfterFunc is called
	onFirstDone func()
	once        sync.Once
}

func newFollowedCtx(parent context.Context) *followedCtx {
	return &followedCtx{Context: parent, followed: make(chan struct{}, 1)}
}

func (c *followedCtx) AfterFunc(f func()) func() bool {
	c.following.Add(1)
	select {
	case c.followed <- struct{}{}:
	default:
	}
	stop := context.AfterFunc(c.Context, f)
	var once sync.Once
	return func() bool {
		once.Do(func() { c.following.Add(-1) })
		return stop()
	}
}

func (c *followedCtx) Done() <-chan struct{} {
	if c.onFirstDone != nil {
		c.once.Do(c.onFirstDone)
	}
	return c.Context.Done()
}

// Value hides the cancelCtx inside (context.AfterFunc would follow that one directly).
func (c *followedCtx) Value(any) any { return nil }

// A registration that ends (here unregistered from another goroutine) while Register is
// between publishing it and following its context stops following that context: it used to
// stay followed until the context ended, keeping the registration and its registry referenced.
func TestRegistrationEndedDuringRegisterStopsFollowingItsContext(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx := newFollowedCtx(parent)

	// Register calls ctx.Done() first once the registration is published, just before
	// following ctx: it waits there until the registration's end is half done.
	inWindow, proceed := make(chan struct{}), make(chan struct{})
	ctx.onFirstDone = func() {
		close(inWindow)
		<-proceed
	}
	var hookOnce sync.Once
	testHookEnding = func(g *Registration) {
		if g.service != service {
			return
		}
		hookOnce.Do(func() {
			close(proceed)
			select { // Register follows ctx now, before the end goes on
			case <-ctx.followed:
			case <-time.After(waitLimit):
				t.Error("Register did not follow its context")
			}
		})
	}
	defer func() { testHookEnding = nil }()

	registered := make(chan *Registration, 1)
	go func() {
		g, err := r.Register(ctx, service, Node{Name: "n1"}, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		registered <- g
	}()
	select {
	case <-inWindow:
	case <-time.After(waitLimit):
		t.Fatal("Register did not look at its context")
	}
	go func() { _ = r.UnregisterNode(context.Background(), service, "n1") }()
	g := <-registered
	if g == nil {
		t.FailNow()
	}
	select {
	case <-g.finishedChan():
	case <-time.After(waitLimit):
		t.Fatal("the registration did not end")
	}
	// end lets go of ctx just after marking the registration ended.
	eventually(t, "the ended registration stops following its context", func() bool {
		return ctx.following.Load() == 0
	})
}

// Registrations whose Events channel is no longer read when they end leave no goroutine behind
// waiting for a reader, and do not keep their registry referenced: dropped, it is closed by the
// garbage collector. A reader that comes back still finds StatusUnregistered, then the close.
func TestUndrainedEventsHoldNothingOnceTheRegistrationEnds(t *testing.T) {
	r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h := r.h
	t.Cleanup(func() { _ = h.close() })
	service := serviceName(t)
	var events []<-chan StatusEvent
	for i := range 20 {
		g, err := r.Register(context.Background(), service, Node{Name: fmt.Sprintf("n%d", i)}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch i % 3 {
		case 0: // the reader stops after the first registration
			waitStatus(t, g.Events(), StatusRegistered)
		case 1: // Events asked for, never read
			g.Events()
		case 2: // read after the end only
		}
		if err := g.Unregister(context.Background()); err != nil {
			t.Fatal(err)
		}
		events = append(events, g.Events())
	}
	eventually(t, "no goroutine waits to hand over status events", func() bool {
		return goroutinesIn(".(*Registration).pump(") == 0
	})
	for i, ch := range events {
		if last := waitStatus(t, ch, StatusUnregistered); !errors.Is(last.Err, ErrUnregistered) {
			t.Fatalf("n%d: last event %v", i, last)
		}
		if ev, ok := <-ch; ok {
			t.Fatalf("n%d: %v after StatusUnregistered", i, ev)
		}
	}
	r = nil
	eventually(t, "the registry is closed by the garbage collector", func() bool {
		runtime.GC()
		return h.isClosed()
	})
}

// When a registration ends while more events wait than the channel's buffer holds, the newest
// stay, StatusUnregistered last, and the older ones are counted as dropped.
func TestEndedRegistrationKeepsItsNewestUnreadEvents(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	g, err := r.Register(context.Background(), service, Node{Name: "n1"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	events := g.Events() // never read until the registration has ended
	eventually(t, "registered", func() bool { return g.State() == StateRegistered })
	const updates = 2 * eventsBuffer
	for i := range updates {
		v := fmt.Sprint(i)
		if err := g.Update(map[string]string{"v": v}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "update "+v+" in etcd", func() bool {
			return shared.getPrefix(t, "/services/"+service+"/")["/services/"+service+"/n1"] == `{"v":"`+v+`"}`
		})
	}
	if err := g.Unregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Read only once it is all handed over (else the reader may take some before).
	eventually(t, "the events are handed over", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.eventsDone
	})
	var got []StatusEvent
	for ev := range events {
		got = append(got, ev)
	}
	if len(got) != eventsBuffer || got[len(got)-1].Kind != StatusUnregistered {
		t.Fatalf("got %d events ending with %v, want the newest %d ending with StatusUnregistered", len(got), got[len(got)-1].Kind, eventsBuffer)
	}
	for _, ev := range got[:len(got)-1] {
		if ev.Kind != StatusUpdated {
			t.Fatalf("kept %v, want only the newest (StatusUpdated)", ev.Kind)
		}
	}
	// Registered, every update, Unregistered: what was not kept was dropped.
	if total := uint64(len(got)) + g.Dropped(); total != updates+2 {
		t.Fatalf("%d kept + %d dropped, want %d events", len(got), g.Dropped(), updates+2)
	}
}

// A registration made by RegisterNode, whose Registration (and so whose status events) nobody
// can read, keeps none of its events while etcd is unreachable and it retries: each Retrying
// event used to wait for a reader that could never come, up to 1024 per registration. One made
// by Register keeps them for Events, called late, as Events promises.
func TestStatusEventsNobodyCanReadAreNotKept(t *testing.T) {
	// A port where nothing listens any more: every attempt is refused at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r, err := New(Config{Endpoints: []string{addr}, BasePath: "/services",
		Timeout: 100 * time.Millisecond, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	service := serviceName(t)
	_, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "dropin"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	late, err := r.Register(t.Context(), service, Node{Name: "late"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Each error on an error channel is a Retrying event already handed to its registration.
	const retries = 40
	for range retries {
		recvErr(t, errs)
		recvErr(t, late.Errors())
	}
	dropin := r.mustRegistration(t, service, "dropin")
	dropin.mu.Lock()
	kept := dropin.backlog.len()
	dropin.mu.Unlock()
	if kept != 0 {
		t.Errorf("a RegisterNode registration keeps %d status events nobody can read", kept)
	}
	// Register's: every event since Register waits for Events, StatusFailed (the first
	// attempt) then a Retrying event for each retry.
	events := late.Events()
	if ev := waitStatus(t, events, StatusFailed); ev.Attempt > 1 {
		t.Fatalf("first event of a registration read late: %v", ev)
	}
	for i := range retries {
		if ev := waitStatus(t, events, StatusRetrying); ev.Attempt != i+1 {
			t.Fatalf("Retrying event %d of a registration read late: attempt %d", i+1, ev.Attempt)
		}
	}
}

// A registration's unread status events are bounded by the library's 1024, the oldest dropped
// (counted) and the final one never, at a constant cost per event however long nobody reads.
func TestStatusBacklogKeepsTheNewest1024(t *testing.T) {
	final := func(v int) bool { return v < 0 }
	var b backlog[int]
	const pushed = 3000
	for i := range pushed {
		b.push(i, final)
	}
	b.push(-1, final)
	if b.len() != eventQueueCapacity || b.dropped != pushed+1-eventQueueCapacity {
		t.Fatalf("holds %d, dropped %d; want %d and %d", b.len(), b.dropped, eventQueueCapacity, pushed+1-eventQueueCapacity)
	}
	if len(b.ring) > eventQueueCapacity+1 {
		t.Fatalf("a ring of %d slots for %d events", len(b.ring), b.len())
	}
	first, _ := b.pop()
	b.pushFront(first, final) // put back, as a pump that could not hand it over does
	want := pushed + 1 - eventQueueCapacity
	for i := range eventQueueCapacity - 1 {
		if v, ok := b.pop(); !ok || v != want+i {
			t.Fatalf("event %d: %d, %v; want %d", i, v, ok, want+i)
		}
	}
	if v, ok := b.pop(); !ok || v != -1 {
		t.Fatalf("last: %d, %v; want the final event", v, ok)
	}
	if _, ok := b.pop(); ok || b.ring != nil {
		t.Fatal("an emptied backlog still holds something")
	}
}

// Once Unregister has returned, StatusUnregistered is on Events and the channel is closed, also
// when the reader left more events unread than the channel holds (a goroutine was then still
// waiting to hand them over, and Unregister could return before it had: a race, hence several
// registrations).
func TestUnregisterReturnsWithTheLastEventOnEvents(t *testing.T) {
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	const nodes = 20
	regs := make([]*Registration, nodes)
	events := make([]<-chan StatusEvent, nodes)
	for i := range regs {
		g, err := r.Register(context.Background(), service, Node{Name: fmt.Sprintf("n%d", i)}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		regs[i], events[i] = g, g.Events() // not read until Unregister has returned
	}
	eventually(t, "registered", func() bool { return len(shared.getPrefix(t, "/services/"+service+"/")) == nodes })
	// Registered and eventsBuffer updates: one more than the channel holds.
	for v := range eventsBuffer {
		info := map[string]string{"v": fmt.Sprint(v)}
		for _, g := range regs {
			if err := g.Update(info); err != nil {
				t.Fatal(err)
			}
		}
		want := `{"v":"` + fmt.Sprint(v) + `"}`
		eventually(t, "update "+want+" in etcd", func() bool {
			kv := shared.getPrefix(t, "/services/"+service+"/")
			for i := range nodes {
				if kv[fmt.Sprintf("/services/%s/n%d", service, i)] != want {
					return false
				}
			}
			return true
		})
	}
	for i, g := range regs {
		if err := g.Unregister(context.Background()); err != nil {
			t.Fatal(err)
		}
		var last StatusEvent
	drain:
		for {
			select {
			case ev, ok := <-events[i]:
				if ok {
					last = ev
					continue
				}
				if last.Kind != StatusUnregistered {
					t.Fatalf("n%d: Events closed after %v, want StatusUnregistered last", i, last.Kind)
				}
				break drain
			default:
				t.Fatalf("n%d: Unregister has returned; Events is not closed yet, last event read %v", i, last.Kind)
			}
		}
	}
}
