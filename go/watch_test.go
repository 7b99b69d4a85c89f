package etcdregistry

import (
	"context"
	"errors"
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
// used to record how to stop following its context after it was published.
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
