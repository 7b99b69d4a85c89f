package etcdregistry

import (
	"testing"
	"time"
)

// An event of a watch that has ended (unwatched after the dispatcher pulled it, or abandoned by
// its WatchService) is dropped at once, not held until unrelated creations end (found by
// review: one such event held up every event while another WatchService listed on a slow
// member, up to the timeout). Creations stay open until lookup has returned.
func TestEventOfAnEndedWatchIsDroppedWhileCreationsAreUnderWay(t *testing.T) {
	r := newRoutes()
	r.beginCreate()
	r.beginCreate()
	r.beginPull() // the dispatcher took an event of watch 99, then it was unwatched
	r.endWatch(99)
	returned := make(chan struct{})
	var g *Registration
	var w *Watch
	go func() {
		g, w = r.lookup(pulled{watch: true, id: 99})
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		r.abortCreate() // let lookup return
		r.abortCreate()
		<-returned
		t.Fatal("the event of an ended watch waited for the creations under way")
	}
	r.abortCreate()
	r.abortCreate()
	if g != nil || w != nil {
		t.Fatalf("routed to %v, %v", g, w)
	}
	// Forgotten once routed (the library queues no event of it any more), and not recorded
	// between pulls: the set stays small.
	if r.endedWatches != nil {
		t.Fatalf("ended watches still held: %v", r.endedWatches)
	}
	r.endWatch(100)
	if r.endedWatches != nil {
		t.Fatalf("a watch ended between pulls is held: %v", r.endedWatches)
	}
}

// A watch that ends while lookup waits for creations wakes it: its event is dropped at once.
func TestLookupWaitingForCreationsDropsTheEventOfAWatchEndedMeanwhile(t *testing.T) {
	r := newRoutes()
	r.beginCreate()
	r.beginPull()
	returned := make(chan struct{})
	go func() {
		r.lookup(pulled{watch: true, id: 7})
		close(returned)
	}()
	select {
	case <-returned:
		t.Fatal("lookup of an unknown id returned while a creation was under way")
	case <-time.After(100 * time.Millisecond): // lookup is waiting, or about to
	}
	r.endWatch(7)
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		r.abortCreate()
		<-returned
		t.Fatal("ending the watch did not wake the lookup waiting on its event")
	}
	r.abortCreate()
}
