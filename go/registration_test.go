package etcdregistry

import (
	"context"
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
	if n := ctx.following.Load(); n != 0 {
		t.Fatalf("the ended registration still follows its context (%d)", n)
	}
}
