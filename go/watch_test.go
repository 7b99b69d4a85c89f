package etcdregistry

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// waitEventsClosed reads w's events until the channel is closed.
func waitEventsClosed(t *testing.T, w *Watch) {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("the watch's events were not closed")
		}
	}
}

// A registry closed from another goroutine as soon as a watch is made, one that learns of the
// watch only through the registry, stops it without a data race (run with -race): the watch
// used to record how to stop following its context after it was published. The close may come
// before WatchService returns, which then fails with ErrClosed (as in the next test) instead of
// returning the watch.
func TestCloseRightAfterAWatchIsMadeIsRaceFree(t *testing.T) {
	r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background()) // a context the watch follows
	defer cancel()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		deadline := time.Now().Add(waitLimit)
		for len(r.h.routes.allWatches()) == 0 && time.Now().Before(deadline) {
			runtime.Gosched()
		}
		_ = r.Close()
	}()
	w, err := r.WatchService(ctx, serviceName(t))
	<-closed
	if errors.Is(err, ErrClosed) {
		return
	}
	if err != nil {
		t.Fatalf("WatchService: %v", err)
	}
	waitEventsClosed(t, w)
}

// A registry closed after the library has made a watch but before WatchService has returned
// it: WatchService fails with ErrClosed and stops the watch (it used to return a watch that no
// one would ever stop, whose events were never closed).
func TestWatchMadeWhileTheRegistryClosesIsStopped(t *testing.T) {
	r, err := NewEtcdRegistry(shared.endpoints, "/services", "", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	testHookWatchMade = func(r *EtcdRegistry) { _ = r.Close() }
	defer func() { testHookWatchMade = nil }()
	w, err := r.WatchService(context.Background(), serviceName(t)) // no node: no event to route
	testHookWatchMade = nil
	if err == nil {
		waitEventsClosed(t, w)
		t.Fatal("WatchService returned a watch of a registry closed meanwhile")
	}
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("WatchService: got %v, want ErrClosed", err)
	}
	if n := len(r.h.routes.allWatches()); n != 0 {
		t.Fatalf("%d watches still routed after Close", n)
	}
}

// etcd restarted on an empty data directory: its revision starts again at 1, below the
// watch's. The watch re-lists (the old nodes removed, then WatchResynced) and follows the new
// store.
func TestAWatchFollowsAnEtcdThatLostItsData(t *testing.T) {
	h := newHarness(t)
	r, err := New(Config{Endpoints: h.endpoints, BasePath: "/services", Timeout: 2 * time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := r.WatchService(t.Context(), "api")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range 10 {
		h.do(t, fmt.Sprintf("put /services/api/old%d {}", i))
	}
	for i := range 10 {
		waitWatch(t, w, WatchAdded, fmt.Sprintf("old%d", i))
	}
	h.do(t, "wipe 0")
	removed := map[string]bool{}
	timeout := time.After(waitLimit)
	for resynced := false; !resynced; {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatal("watch ended before resyncing")
			}
			switch ev.Type {
			case WatchRemoved:
				removed[ev.Node.Name] = true
			case WatchResynced:
				resynced = true
			default:
				t.Fatalf("unexpected event %v %s before the resync", ev.Type, ev.Node.Name)
			}
		case <-timeout:
			t.Fatalf("no resync came; removed so far: %v", removed)
		}
	}
	if len(removed) != 10 {
		t.Fatalf("removed %v, want old0..old9", removed)
	}
	if nodes, err := w.Nodes(); err != nil || len(nodes) != 0 {
		t.Fatalf("live set %v (%v) after the resync, want none", nodeNames(nodes), err)
	}
	h.do(t, `put /services/api/new {"v":"1"}`)
	ev := waitWatch(t, w, WatchAdded, "new")
	if ev.Node.Info["v"] != "1" {
		t.Fatalf("added %+v", ev.Node)
	}
}
