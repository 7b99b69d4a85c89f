package etcdregistry

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func watchEv(typ WatchEventType, node string, rev int64) WatchEvent {
	ev := WatchEvent{Type: typ, Service: "s", Revision: rev}
	if typ != WatchResynced {
		ev.Node = Node{Name: node, Info: map[string]string{"rev": fmt.Sprint(rev)}}
	}
	return ev
}

// drainBacklog pops every event, then checks that the drained backlog let go of its memory.
func drainBacklog(t *testing.T, b *watchBacklog) []WatchEvent {
	t.Helper()
	var out []WatchEvent
	for {
		ev, ok := b.pop()
		if !ok {
			break
		}
		out = append(out, ev)
	}
	if b.len() != 0 || b.slots != nil || b.index != nil || b.gone != 0 || b.resynced != 0 {
		t.Fatalf("a drained backlog holds %d slots (%d gone), %d index entries, resynced %d",
			len(b.slots), b.gone, len(b.index), b.resynced)
	}
	return out
}

func describe(evs []WatchEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%v %s@%d", ev.Type, ev.Node.Name, ev.Revision)
		if ev.Type != WatchResynced && ev.Node.Info["rev"] != fmt.Sprint(ev.Revision) {
			out[i] += " (info of rev " + ev.Node.Info["rev"] + ")"
		}
	}
	return out
}

// Every pair of an unread event of a node and a newer one of the same node: the merged event
// (if any) has the newer one's info and revision, and goes to the back, after an event of
// another node that came in between.
func TestWatchBacklogMergesAnUnreadEventWithTheNodesNewerOne(t *testing.T) {
	const none = WatchEventType(-1)
	table := []struct {
		older, newer, merged WatchEventType
	}{
		{WatchAdded, WatchAdded, WatchAdded},
		{WatchAdded, WatchUpdated, WatchAdded},
		{WatchAdded, WatchRemoved, none},
		{WatchUpdated, WatchAdded, WatchUpdated},
		{WatchUpdated, WatchUpdated, WatchUpdated},
		{WatchUpdated, WatchRemoved, WatchRemoved},
		{WatchRemoved, WatchAdded, WatchUpdated},
		{WatchRemoved, WatchUpdated, WatchUpdated},
		{WatchRemoved, WatchRemoved, WatchRemoved},
	}
	for _, c := range table {
		t.Run(fmt.Sprintf("%v+%v", c.older, c.newer), func(t *testing.T) {
			b := watchBacklog{mergeAlways: true}
			b.push(watchEv(c.older, "n", 1))
			b.push(watchEv(WatchUpdated, "other", 2))
			b.push(watchEv(c.newer, "n", 3))
			want := []WatchEvent{watchEv(WatchUpdated, "other", 2)}
			if c.merged != none {
				want = append(want, watchEv(c.merged, "n", 3))
			}
			if b.len() != len(want) {
				t.Fatalf("len %d, want %d", b.len(), len(want))
			}
			if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(want)) {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
	t.Run("resynced", func(t *testing.T) {
		b := watchBacklog{mergeAlways: true}
		b.push(watchEv(WatchResynced, "", 1))
		b.push(watchEv(WatchAdded, "a", 2))
		b.push(watchEv(WatchResynced, "", 3))
		want := []WatchEvent{watchEv(WatchAdded, "a", 2), watchEv(WatchResynced, "", 3)}
		if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(want)) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})
	t.Run("read events are not merged", func(t *testing.T) {
		b := watchBacklog{mergeAlways: true}
		b.push(watchEv(WatchAdded, "n", 1))
		if ev, _ := b.pop(); ev.Type != WatchAdded {
			t.Fatalf("popped %v", ev.Type)
		}
		b.push(watchEv(WatchRemoved, "n", 2))
		want := []WatchEvent{watchEv(WatchRemoved, "n", 2)}
		if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(want)) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})
}

// 100 000 updates of 10 nodes, read now and then: at most 10 events wait, the slots stay few
// (the holes merges leave are compacted away), and what is read is in revision order.
func TestWatchBacklogOfManyMergesStaysSmall(t *testing.T) {
	const nodes, updates = 10, 100_000
	b := watchBacklog{mergeAlways: true}
	rev := int64(0)
	for i := range nodes {
		rev++
		b.push(watchEv(WatchAdded, fmt.Sprint("node", i), rev))
	}
	lastRead := int64(0)
	maxSlots := 0
	for i := range updates {
		rev++
		b.push(watchEv(WatchUpdated, fmt.Sprint("node", i%nodes), rev))
		if b.len() > nodes {
			t.Fatalf("after %d updates %d events wait, more than the %d nodes", i+1, b.len(), nodes)
		}
		maxSlots = max(maxSlots, len(b.slots))
		if i%997 == 0 { // now and then the reader takes one
			ev, ok := b.pop()
			if !ok || ev.Revision <= lastRead {
				t.Fatalf("popped %v (ok %v) after revision %d", ev, ok, lastRead)
			}
			lastRead = ev.Revision
		}
	}
	if b.len() != nodes {
		t.Fatalf("%d events wait, want %d", b.len(), nodes)
	}
	if limit := 2*compactMin + 2*nodes; maxSlots > limit {
		t.Fatalf("the backlog grew to %d slots for %d events (limit %d)", maxSlots, nodes, limit)
	}
	got := drainBacklog(t, &b)
	for i, ev := range got {
		if ev.Revision <= lastRead || ev.Node.Info["rev"] != fmt.Sprint(ev.Revision) {
			t.Fatalf("event %d: %v after revision %d", i, ev, lastRead)
		}
		lastRead = ev.Revision
	}
	if lastRead != rev {
		t.Fatalf("the last event read has revision %d, want %d", lastRead, rev)
	}
}

// A service of 100 000 nodes added, each then updated and half of them removed, all unread: the
// backlog holds one event per node left, in revision order (this is linear: a scan per push
// would take minutes here).
func TestWatchBacklogOfALargeServiceIsLinear(t *testing.T) {
	const nodes = 100_000
	b := watchBacklog{mergeAlways: true}
	rev := int64(0)
	for i := range nodes {
		rev++
		b.push(watchEv(WatchAdded, fmt.Sprint(i), rev))
	}
	for i := range nodes {
		rev++
		b.push(watchEv(WatchUpdated, fmt.Sprint(i), rev))
	}
	for i := 0; i < nodes; i += 2 {
		rev++
		b.push(watchEv(WatchRemoved, fmt.Sprint(i), rev))
	}
	if b.len() != nodes/2 {
		t.Fatalf("%d events wait, want %d", b.len(), nodes/2)
	}
	last := int64(0)
	for i, ev := range drainBacklog(t, &b) {
		if ev.Type != WatchAdded || ev.Revision <= last || ev.Node.Name != fmt.Sprint(2*i+1) {
			t.Fatalf("event %d: %v %s@%d after revision %d", i, ev.Type, ev.Node.Name, ev.Revision, last)
		}
		last = ev.Revision
	}
}

// Random pushes and pops against a plain list merged by scanning it: the same events come out.
func TestWatchBacklogMatchesAScanningModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	b := watchBacklog{mergeAlways: true}
	var model []WatchEvent
	modelPush := func(ev WatchEvent) {
		for i, old := range model {
			if old.Type == WatchResynced && ev.Type == WatchResynced ||
				old.Type != WatchResynced && ev.Type != WatchResynced && old.Node.Name == ev.Node.Name {
				model = slices.Delete(model, i, i+1)
				if ev.Type != WatchResynced {
					kind, ok := mergeWatchTypes(old.Type, ev.Type)
					if !ok {
						return
					}
					ev.Type = kind
				}
				break
			}
		}
		model = append(model, ev)
	}
	types := []WatchEventType{WatchAdded, WatchUpdated, WatchRemoved, WatchResynced}
	for i := range 50_000 {
		if rng.IntN(3) == 0 {
			got, ok := b.pop()
			if ok != (len(model) > 0) {
				t.Fatalf("step %d: pop ok %v with %d in the model", i, ok, len(model))
			}
			if ok {
				got, want := describe([]WatchEvent{got}), describe(model[:1])
				if got[0] != want[0] {
					t.Fatalf("step %d: popped %v, want %v", i, got[0], want[0])
				}
				model = model[1:]
			}
			continue
		}
		ev := watchEv(types[rng.IntN(len(types))], fmt.Sprint(rng.IntN(200)), int64(i+1))
		b.push(ev)
		modelPush(ev)
		if b.len() != len(model) {
			t.Fatalf("step %d: len %d, model %d", i, b.len(), len(model))
		}
	}
	if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(model)) {
		t.Fatalf("drained %d events unlike the model's %d", len(got), len(model))
	}
}

// A reader less than eventQueueCapacity events behind gets every event; from there until it
// has taken them all, a node's new event is merged with its last unread one.
func TestWatchBacklogMergesOnlyOnceTheReaderIsFarBehind(t *testing.T) {
	var b watchBacklog
	rev := int64(0)
	push := func(node string) {
		rev++
		b.push(watchEv(WatchUpdated, node, rev))
	}
	for i := 0; i < eventQueueCapacity/2; i++ {
		push("a")
		push("b")
	}
	if b.len() != eventQueueCapacity {
		t.Fatalf("%d events wait, want every one of %d", b.len(), eventQueueCapacity)
	}
	for i := 0; i < 100; i++ {
		push("a")
		push("b")
	}
	if b.len() != eventQueueCapacity {
		t.Fatalf("%d events wait past the bound, want %d", b.len(), eventQueueCapacity)
	}
	for i := 0; i < eventQueueCapacity-1; i++ {
		if _, ok := b.pop(); !ok {
			t.Fatal("an event is missing")
		}
	}
	push("a")
	push("b")
	if b.len() != 2 {
		t.Fatalf("%d events wait, want 2 (still merging until caught up)", b.len())
	}
	drainBacklog(t, &b)
	push("a")
	push("a")
	if got := describe(drainBacklog(t, &b)); len(got) != 2 {
		t.Fatalf("caught up, every event is kept again: got %v", got)
	}
}
