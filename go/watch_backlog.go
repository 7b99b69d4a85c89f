package etcdregistry

// watchBacklog holds the events a watch's reader has not taken yet, with the library's policy
// for watch events (see "Event delivery" in the root README). Nothing is dropped: a reader less
// than eventQueueCapacity events behind gets every event; once that many wait, and until the
// reader has taken them all, a node's new event is merged with that node's last unread one, so
// beyond the first eventQueueCapacity it holds at most one event per node (and one
// WatchResynced), and a reader that falls behind still ends with the service's live set.
//
// The merge is in place: the merged event keeps the position of the node's last unread event
// (so no change of a node reaches the reader later than the changes of other nodes made after
// it; an earlier unread event of the node, kept from before the merging began, is read before
// it) and takes the newer event's Node and Revision, with the kind
// mergeWatchTypes gives. So a node live all along is never shown gone (moved to the back, the
// merged event of a node added unread came after the removals made meanwhile, which could
// leave the reader with no node at all), but once merging, events of different nodes may come
// out of revision order. A WatchResynced is the exception: a new one takes an unread one out
// and goes to the back, so that every difference event of a resync stays before its
// WatchResynced.
//
// Each push and pop is O(1) amortised: index maps a node's name to the sequence number of its
// last unread event. Only a replaced WatchResynced leaves a hole (gone) in slots, which pop
// skips; once the holes outnumber the events, compactIfSparse copies the events into a slice
// of their own size. When the backlog runs empty it lets go of its slice and its index.
type watchBacklog struct {
	slots    []watchSlot
	base     int            // sequence number of slots[0]
	gone     int            // holes in slots
	index    map[string]int // node name → sequence number of its last unread event
	resynced int            // sequence number + 1 of the last unread WatchResynced; 0 when none
	// merging from eventQueueCapacity waiting events until none waits.
	merging bool
	// mergeAlways makes it merge from the first event (for tests of the merge itself).
	mergeAlways bool
}

type watchSlot struct {
	ev   WatchEvent
	gone bool // a WatchResynced replaced by a newer one
}

// compactMin is how many holes a backlog tolerates before compacting even when they are fewer
// than the events: compacting a short backlog often would cost more than the holes do.
const compactMin = 64

// mergeWatchTypes is the kind of the event that replaces an unread event of kind older and a
// newer one of the same node: the kind that takes a reader from what it knew before the older
// one to the node's state after the newer one. A node gone at the end is WatchRemoved even if
// the reader never had its WatchAdded: a reader that started from a listing or Nodes() may hold
// it (so a reader applies WatchRemoved as delete-if-present). Nothing vanishes.
func mergeWatchTypes(older, newer WatchEventType) WatchEventType {
	switch {
	case newer == WatchRemoved:
		return WatchRemoved
	case older == WatchAdded: // the reader does not know the node yet
		return WatchAdded
	case older == WatchUpdated || older == WatchRemoved: // the reader knew the node, still there
		return WatchUpdated
	}
	return newer
}

// len is how many events wait.
func (b *watchBacklog) len() int { return len(b.slots) - b.gone }

func (b *watchBacklog) push(ev WatchEvent) {
	if b.len() >= eventQueueCapacity || b.mergeAlways {
		b.merging = true
	}
	if ev.Type == WatchResynced {
		if b.resynced != 0 && b.merging {
			s := &b.slots[b.resynced-1-b.base]
			*s = watchSlot{gone: true}
			b.gone++
		}
		b.resynced = b.base + len(b.slots) + 1
		b.slots = append(b.slots, watchSlot{ev: ev})
		b.compactIfSparse()
		return
	}
	name := ev.Node.Name
	if seq, ok := b.index[name]; ok && b.merging {
		s := &b.slots[seq-b.base]
		ev.Type = mergeWatchTypes(s.ev.Type, ev.Type)
		s.ev = ev // in place: the older event's position, the newer Node and Revision
		return
	}
	if b.index == nil {
		b.index = map[string]int{}
	}
	b.index[name] = b.base + len(b.slots)
	b.slots = append(b.slots, watchSlot{ev: ev})
}

func (b *watchBacklog) pop() (WatchEvent, bool) {
	for len(b.slots) > 0 {
		s := b.slots[0]
		b.slots[0] = watchSlot{}
		b.slots = b.slots[1:]
		seq := b.base
		b.base++
		if s.gone {
			b.gone--
			continue
		}
		if s.ev.Type == WatchResynced {
			if b.resynced == seq+1 {
				b.resynced = 0
			}
		} else if b.index[s.ev.Node.Name] == seq {
			delete(b.index, s.ev.Node.Name)
		}
		b.emptyOrCompact()
		return s.ev, true
	}
	b.emptyOrCompact()
	return WatchEvent{}, false
}

// emptyOrCompact lets go of everything once nothing waits (and stops merging), or compacts a
// sparse backlog.
func (b *watchBacklog) emptyOrCompact() {
	if b.len() == 0 {
		*b = watchBacklog{base: b.base, mergeAlways: b.mergeAlways}
		return
	}
	b.compactIfSparse()
}

// compactIfSparse copies the events into a slice of their own size, and the index into a map of
// its own size (a Go map never shrinks), once the holes outnumber them. Each hole is copied
// over at most once, so this costs O(1) per push, amortised.
func (b *watchBacklog) compactIfSparse() {
	if b.gone < compactMin || b.gone <= b.len() {
		return
	}
	slots := make([]watchSlot, 0, b.len())
	index := make(map[string]int, len(b.index))
	b.resynced = 0
	for _, s := range b.slots {
		if s.gone {
			continue
		}
		seq := b.base + len(slots)
		if s.ev.Type == WatchResynced {
			b.resynced = seq + 1
		} else {
			index[s.ev.Node.Name] = seq
		}
		slots = append(slots, s)
	}
	b.slots, b.index, b.gone = slots, index, 0
}
