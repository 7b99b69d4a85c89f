package etcdregistry

import (
	"context"
	"errors"
	"fmt"
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
