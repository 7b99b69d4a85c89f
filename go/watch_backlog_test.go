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
// has the newer one's info and revision, and stays in place, before an event of another node
// that came in between. Nothing vanishes: added then removed is removed.
func TestWatchBacklogMergesAnUnreadEventWithTheNodesNewerOne(t *testing.T) {
	table := []struct {
		older, newer, merged WatchEventType
	}{
		{WatchAdded, WatchAdded, WatchAdded},
		{WatchAdded, WatchUpdated, WatchAdded},
		{WatchAdded, WatchRemoved, WatchRemoved},
		{WatchUpdated, WatchAdded, WatchUpdated},
		{WatchUpdated, WatchUpdated, WatchUpdated},
		{WatchUpdated, WatchRemoved, WatchRemoved},
		{WatchRemoved, WatchAdded, WatchUpdated},
		{WatchRemoved, WatchUpdated, WatchUpdated},
		{WatchRemoved, WatchRemoved, WatchRemoved},
	}
	for _, c := range table {
		t.Run(fmt.Sprintf("%v+%v", c.older, c.newer), func(t *testing.T) {
			if got := mergeWatchTypes(c.older, c.newer); got != c.merged {
				t.Fatalf("mergeWatchTypes: %v, want %v", got, c.merged)
			}
			b := watchBacklog{mergeAlways: true}
			b.push(watchEv(c.older, "n", 1))
			b.push(watchEv(WatchUpdated, "other", 2))
			b.push(watchEv(c.newer, "n", 3))
			want := []WatchEvent{watchEv(c.merged, "n", 3), watchEv(WatchUpdated, "other", 2)}
			if b.len() != len(want) {
				t.Fatalf("len %d, want %d", b.len(), len(want))
			}
			if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(want)) {
				t.Fatalf("got %v, want %v", got, describe(want))
			}
		})
	}
	// The reader knows b. a added (unread), b removed, a updated: a's merged event keeps its
	// place, so the reader never sees a set without a (moved to the back, it would see b
	// removed while a is not there yet: no backend at all).
	t.Run("no node set that never existed", func(t *testing.T) {
		b := watchBacklog{mergeAlways: true}
		b.push(watchEv(WatchAdded, "a", 1))
		b.push(watchEv(WatchRemoved, "b", 2))
		b.push(watchEv(WatchUpdated, "a", 3))
		b.push(watchEv(WatchUpdated, "c", 4))
		b.push(watchEv(WatchRemoved, "c", 5))
		want := []WatchEvent{watchEv(WatchAdded, "a", 3), watchEv(WatchRemoved, "b", 2),
			watchEv(WatchRemoved, "c", 5)}
		if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(want)) {
			t.Fatalf("got %v, want %v", got, describe(want))
		}
	})
	// A new WatchResynced takes the unread one out and goes to the back, after the differences
	// of its resync; a node's event merged meanwhile stays where it was, before it.
	t.Run("resynced", func(t *testing.T) {
		b := watchBacklog{mergeAlways: true}
		b.push(watchEv(WatchAdded, "a", 1))
		b.push(watchEv(WatchResynced, "", 2))
		b.push(watchEv(WatchRemoved, "b", 3))
		b.push(watchEv(WatchUpdated, "a", 4))
		b.push(watchEv(WatchResynced, "", 5))
		b.push(watchEv(WatchUpdated, "b", 6))
		want := []WatchEvent{watchEv(WatchAdded, "a", 4), watchEv(WatchUpdated, "b", 6),
			watchEv(WatchResynced, "", 5)}
		if b.len() != len(want) {
			t.Fatalf("len %d, want %d", b.len(), len(want))
		}
		if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(want)) {
			t.Fatalf("got %v, want %v", got, describe(want))
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
			t.Fatalf("got %v, want %v", got, describe(want))
		}
	})
}

// 100 000 updates of 10 nodes, read now and then: at most 10 events wait, merged in place they
// take no slot of their own, and each event read carries its node's newest info and revision.
func TestWatchBacklogOfManyMergesStaysSmall(t *testing.T) {
	const nodes, updates = 10, 100_000
	b := watchBacklog{mergeAlways: true}
	rev := int64(0)
	newest := map[string]int64{}
	for i := range nodes {
		rev++
		b.push(watchEv(WatchAdded, fmt.Sprint("node", i), rev))
		newest[fmt.Sprint("node", i)] = rev
	}
	check := func(ev WatchEvent) {
		t.Helper()
		if ev.Revision != newest[ev.Node.Name] || ev.Node.Info["rev"] != fmt.Sprint(ev.Revision) {
			t.Fatalf("read %v, the node's newest revision is %d", describe([]WatchEvent{ev}),
				newest[ev.Node.Name])
		}
	}
	reads := 0
	for i := range updates {
		rev++
		name := fmt.Sprint("node", i%nodes)
		b.push(watchEv(WatchUpdated, name, rev))
		newest[name] = rev
		if b.len() > nodes || len(b.slots) > nodes {
			t.Fatalf("after %d updates %d events wait in %d slots, more than the %d nodes",
				i+1, b.len(), len(b.slots), nodes)
		}
		if i%997 == 0 { // now and then the reader takes one
			ev, ok := b.pop()
			if !ok {
				t.Fatal("nothing to read")
			}
			check(ev)
			reads++
		}
	}
	if b.len() != nodes {
		t.Fatalf("%d events wait, want %d", b.len(), nodes)
	}
	got := drainBacklog(t, &b)
	for _, ev := range got {
		check(ev)
	}
	if reads+len(got) > nodes+updates/997+1 {
		t.Fatalf("%d events read", reads+len(got))
	}
}

// A service of 100 000 nodes added, each then updated and half of them removed, all unread: the
// backlog holds one event per node, in place (this is linear: a scan per push would take minutes
// here); the removed ones are removed, the others added with their newest info.
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
	if b.len() != nodes || len(b.slots) != nodes {
		t.Fatalf("%d events wait in %d slots, want %d", b.len(), len(b.slots), nodes)
	}
	for i, ev := range drainBacklog(t, &b) {
		want := watchEv(WatchAdded, fmt.Sprint(i), int64(nodes+i+1))
		if i%2 == 0 {
			want = watchEv(WatchRemoved, fmt.Sprint(i), int64(2*nodes+i/2+1))
		}
		if got, want := describe([]WatchEvent{ev}), describe([]WatchEvent{want}); got[0] != want[0] {
			t.Fatalf("event %d: %v, want %v", i, got[0], want[0])
		}
	}
}

// scanningBacklog is the reference for watchBacklog: a plain list, merged by scanning it.
type scanningBacklog struct {
	events      []WatchEvent
	merging     bool
	mergeAlways bool
}

func (m *scanningBacklog) push(ev WatchEvent) {
	if len(m.events) >= eventQueueCapacity || m.mergeAlways {
		m.merging = true
	}
	if m.merging {
		for i := len(m.events) - 1; i >= 0; i-- {
			old := m.events[i]
			if ev.Type == WatchResynced && old.Type == WatchResynced {
				m.events = slices.Delete(m.events, i, i+1)
				break
			}
			if ev.Type != WatchResynced && old.Type != WatchResynced && old.Node.Name == ev.Node.Name {
				ev.Type = mergeWatchTypes(old.Type, ev.Type)
				m.events[i] = ev
				return
			}
		}
	}
	m.events = append(m.events, ev)
}

func (m *scanningBacklog) pop() (WatchEvent, bool) {
	if len(m.events) == 0 {
		return WatchEvent{}, false
	}
	ev := m.events[0]
	m.events = m.events[1:]
	if len(m.events) == 0 {
		m.merging = false
	}
	return ev, true
}

// Random pushes and pops against scanningBacklog: the same events come out. Merging from the
// first event; and from eventQueueCapacity waiting until the reader has caught up, in phases
// where the reader falls far behind, then catches up.
func TestWatchBacklogMatchesAScanningModel(t *testing.T) {
	for _, c := range []struct {
		name            string
		mergeAlways     bool
		steps, nodes    int
		resyncedPercent int
		popPercent      func(step int) int
	}{
		{"merging always", true, 50_000, 200, 25, func(int) int { return 33 }},
		{"from the threshold", false, 64_000, 300, 1, func(step int) int {
			if step/4000%2 == 0 {
				return 25 // falls behind: about 2000 more events than reads in a phase
			}
			return 75 // catches up
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			b := watchBacklog{mergeAlways: c.mergeAlways}
			model := scanningBacklog{mergeAlways: c.mergeAlways}
			kinds := []WatchEventType{WatchAdded, WatchUpdated, WatchRemoved}
			merged, maxLen := 0, 0
			for i := range c.steps {
				if rng.IntN(100) < c.popPercent(i) {
					got, ok := b.pop()
					want, wantOK := model.pop()
					if ok != wantOK {
						t.Fatalf("step %d: pop ok %v, model %v", i, ok, wantOK)
					}
					if got, want := describe([]WatchEvent{got}), describe([]WatchEvent{want}); got[0] != want[0] {
						t.Fatalf("step %d: popped %v, want %v", i, got[0], want[0])
					}
					continue
				}
				ev := watchEv(kinds[rng.IntN(len(kinds))], fmt.Sprint(rng.IntN(c.nodes)), int64(i+1))
				if rng.IntN(100) < c.resyncedPercent {
					ev = watchEv(WatchResynced, "", int64(i+1))
				}
				before := len(model.events)
				b.push(ev)
				model.push(ev)
				if len(model.events) == before {
					merged++
				}
				maxLen = max(maxLen, len(model.events))
				if b.len() != len(model.events) {
					t.Fatalf("step %d: len %d, model %d", i, b.len(), len(model.events))
				}
			}
			if !c.mergeAlways && (merged == 0 || maxLen > eventQueueCapacity+c.nodes+1) {
				t.Fatalf("%d events merged, at most %d waited", merged, maxLen)
			}
			if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(model.events)) {
				t.Fatalf("drained %d events unlike the model's %d", len(got), len(model.events))
			}
		})
	}
}

// A reader less than eventQueueCapacity events behind gets every event; from there until it
// has taken them all, a node's new event is merged in place with its last unread one.
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
	// The first 1022 as they came; the last a and b hold the newest a and b, in place.
	for i := 0; i < eventQueueCapacity-1; i++ {
		ev, ok := b.pop()
		want := int64(i + 1)
		if i == eventQueueCapacity-2 {
			want = rev - 1
		}
		if !ok || ev.Revision != want {
			t.Fatalf("event %d: %v (ok %v), want revision %d", i, describe([]WatchEvent{ev}), ok, want)
		}
	}
	// b's unread event is in front; a's was read, so a's new one goes to the back, and b's
	// newer one is merged in front of it: out of revision order.
	push("a")
	push("b")
	if b.len() != 2 {
		t.Fatalf("%d events wait, want 2 (still merging until caught up)", b.len())
	}
	want := []WatchEvent{watchEv(WatchUpdated, "b", rev), watchEv(WatchUpdated, "a", rev-1)}
	if got := describe(drainBacklog(t, &b)); !slices.Equal(got, describe(want)) {
		t.Fatalf("got %v, want %v", got, describe(want))
	}
	push("a")
	push("a")
	if got := describe(drainBacklog(t, &b)); len(got) != 2 {
		t.Fatalf("caught up, every event is kept again: got %v", got)
	}
}
