package etcdregistry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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

// A watch whose reader does not read while a service of 1800 nodes is made, then partly
// updated, deleted and added again: nothing is lost. The reader applies the events as a
// consumer does (added or updated: insert or replace; removed: delete if present; merged in
// place, they are not in revision order across nodes, and a node added and removed unread
// comes as a removal of a node it never knew), and ends with etcd's live set, from far fewer
// events than changes. (Before unread events were merged per node, a backlog past 1024 dropped
// its oldest and the reader's view lost nodes for ever.)
func TestAWatchReadLateLosesNothing(t *testing.T) {
	c := nativeClient(t)
	r := newRegistry(t, shared.endpoints)
	service := serviceName(t)
	prefix := "/services/" + service + "/"
	live := map[string]string{} // node → its "v", as the test leaves etcd
	deleted := map[string]bool{}
	var ops []clientv3.Op
	changes := 0
	lastRev := int64(0)
	commit := func() {
		t.Helper()
		for len(ops) > 0 {
			n := min(len(ops), 100) // etcd takes at most 128 operations in a transaction
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			resp, err := c.Txn(ctx).Then(ops[:n]...).Commit()
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			lastRev = resp.Header.Revision
			ops = ops[n:]
		}
	}
	put := func(node, v string) {
		ops = append(ops, clientv3.OpPut(prefix+node, fmt.Sprintf(`{"v":%q}`, v)))
		live[node] = v
		delete(deleted, node)
		changes++
	}
	del := func(node string) {
		ops = append(ops, clientv3.OpDelete(prefix+node))
		delete(live, node)
		deleted[node] = true
		changes++
	}
	for i := range 200 {
		put(fmt.Sprintf("pre-%04d", i), "0")
	}
	commit()

	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// settle waits until the watch has been handed everything committed so far (a marker
	// node's newest event has reached its backlog, merged in place perhaps, so anywhere in it):
	// this paces the test below the library's own queue bound, which before the library merged
	// watch events dropped past 1024 unread ones, and the events the watch holds are then all
	// there are.
	marks := 0
	settle := func() {
		t.Helper()
		marks++
		put("zz-marker", fmt.Sprint(marks))
		commit()
		rev := lastRev
		eventually(t, "the watch has every event", func() bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			for _, s := range w.backlog.slots {
				if s.ev.Revision >= rev {
					return true
				}
			}
			return false
		})
	}
	settle()
	batch := func(n int, f func(i int)) {
		for i := range n {
			f(i)
			if len(ops) >= 500 {
				commit()
				settle()
			}
		}
		commit()
		settle()
	}
	batch(1600, func(i int) { put(fmt.Sprintf("n-%04d", i), "0") })
	batch(800, func(i int) { put(fmt.Sprintf("n-%04d", i), "1") })
	batch(400, func(i int) { put(fmt.Sprintf("n-%04d", i), "2") })
	batch(100, func(i int) { put(fmt.Sprintf("pre-%04d", 100+i), "1") })
	batch(400, func(i int) { del(fmt.Sprintf("n-%04d", 800+i)) })
	batch(50, func(i int) { del(fmt.Sprintf("pre-%04d", 50+i)) })
	batch(100, func(i int) { put(fmt.Sprintf("n-%04d", 1000+i), "3") })
	if len(live) != 200+1600-400-50+100+1 || len(deleted) != 350 {
		t.Fatalf("the test made %d live nodes and deleted %d", len(live), len(deleted))
	}

	// A node new at the end: its WatchAdded cannot be merged with an older event, so it is the
	// last event, and once it is read every event has been (the marker's last change, merged
	// in place, may come earlier).
	put("zzz-end", "0")
	commit()

	// The reader reads now, applying each event to its own view as a consumer does.
	seen := map[string]string{}
	events := 0
	timeout := time.After(waitLimit)
	for ended := false; !ended; {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("the watch ended after %d events", events)
			}
			events++
			name := ev.Node.Name
			_, known := seen[name]
			ended = name == "zzz-end"
			switch ev.Type {
			case WatchAdded:
				// Merged only with an older WatchAdded: the reader cannot know the node.
				if known {
					t.Fatalf("%v of %s, which the reader knew", ev.Type, name)
				}
				seen[name] = ev.Node.Info["v"]
			case WatchUpdated: // may be of a node the reader never knew (added, removed, added)
				seen[name] = ev.Node.Info["v"]
			case WatchRemoved: // may be of a node the reader never knew (added, then removed)
				delete(seen, name)
			default:
				t.Fatalf("unexpected %v of %s", ev.Type, name)
			}
		case <-timeout:
			t.Fatalf("%d events read, the reader has %d nodes of %d live", events, len(seen), len(live))
		}
	}
	if !maps.Equal(seen, live) {
		t.Fatalf("the reader has %d nodes, etcd %d: %v", len(seen), len(live), seen)
	}
	// Past the library's bound, a node's events were merged: fewer than the changes made, at
	// most the first eventQueueCapacity plus one per node touched.
	if limit := eventQueueCapacity + len(live) + len(deleted); events > limit || events >= changes {
		t.Fatalf("%d events read for %d changes, more than %d: not merged", events, changes, limit)
	}
	if got := w.Dropped(); got != 0 {
		t.Fatalf("Dropped() = %d", got)
	}
	var libraryDropped uint64
	if err := r.h.use("dropped", func(p *cRegistry) error {
		var err error
		libraryDropped, err = cDroppedEvents(p)
		return err
	}); err != nil || libraryDropped != 0 {
		t.Fatalf("the library's queue dropped %d events (%v)", libraryDropped, err)
	}
	nodes, err := w.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != len(live) {
		t.Fatalf("the watch's live set has %d nodes, etcd %d", len(nodes), len(live))
	}
	for _, n := range nodes {
		if v, ok := live[n.Name]; !ok || n.Info["v"] != v {
			t.Fatalf("the watch's live set has %s with v %q, etcd %q", n.Name, n.Info["v"], v)
		}
	}
	resp, err := c.Get(t.Context(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != int64(len(live)) {
		t.Fatalf("etcd holds %d nodes, the test made %d", resp.Count, len(live))
	}
}
