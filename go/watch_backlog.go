package etcdregistry

// watchBacklog holds the events a watch's reader has not taken yet, with the library's policy
// for watch events (see "Event delivery" in the root README). Nothing is dropped: a reader less
// than eventQueueCapacity events behind gets every event; once that many wait, and until the
// reader has taken them all, an unread event of a node is merged with that node's newer event,
// so beyond the first eventQueueCapacity it holds at most one event per node (and one
// WatchResynced), and a reader that falls behind still ends with the service's live set. The
// merged event goes to the back, so the backlog stays in revision order; it has the newer
// event's Node and Revision, and the kind mergeWatchTypes gives.
//
// Each push and pop is O(1) amortised: index maps a node's name to the sequence number of its
// unread event, and a merged-away event leaves a hole (gone) that pop skips; once the holes
// outnumber the events, compactIfSparse copies the events into a slice of their own size. When
// the backlog runs empty it lets go of its slice and its index.
type watchBacklog struct {
	slots    []watchSlot
	base     int            // sequence number of slots[0]
	gone     int            // holes in slots
	index    map[string]int // node name → sequence number of its unread event
	resynced int            // sequence number + 1 of the unread WatchResynced; 0 when none
	// merging from eventQueueCapacity waiting events until none waits.
	merging bool
	// mergeAlways makes it merge from the first event (for tests of the merge itself).
	mergeAlways bool
}

type watchSlot struct {
	ev   WatchEvent
	gone bool // merged into a newer event
}

// compactMin is how many holes a backlog tolerates before compacting even when they are fewer
// than the events: compacting a short backlog often would cost more than the holes do.
const compactMin = 64

// mergeWatchTypes is the kind of the event that replaces an unread event of kind older and a
// newer one of the same node; ok is false when both vanish (a node added and removed unread:
// the reader never learns of it).
func mergeWatchTypes(older, newer WatchEventType) (kind WatchEventType, ok bool) {
	switch older {
	case WatchAdded: // the reader does not know the node yet
		if newer == WatchRemoved {
			return 0, false
		}
		return WatchAdded, true
	case WatchUpdated, WatchRemoved: // the reader knows the node
		if newer == WatchRemoved {
			return WatchRemoved, true
		}
		return WatchUpdated, true
	}
	return newer, true
}

// len is how many events wait.
func (b *watchBacklog) len() int { return len(b.slots) - b.gone }

func (b *watchBacklog) push(ev WatchEvent) {
	if b.len() >= eventQueueCapacity || b.mergeAlways {
		b.merging = true
	}
	if ev.Type == WatchResynced {
		if b.resynced != 0 && b.merging {
			b.takeOut(b.resynced - 1)
		}
		b.resynced = b.base + len(b.slots) + 1
		b.slots = append(b.slots, watchSlot{ev: ev})
		b.compactIfSparse()
		return
	}
	name := ev.Node.Name
	if seq, ok := b.index[name]; ok && b.merging {
		older := b.takeOut(seq)
		delete(b.index, name)
		kind, ok := mergeWatchTypes(older.Type, ev.Type)
		if !ok {
			b.emptyOrCompact()
			return
		}
		ev.Type = kind
	}
	if b.index == nil {
		b.index = map[string]int{}
	}
	b.index[name] = b.base + len(b.slots)
	b.slots = append(b.slots, watchSlot{ev: ev})
	b.compactIfSparse()
}

// takeOut leaves a hole where the event of sequence number seq was, and returns the event.
func (b *watchBacklog) takeOut(seq int) WatchEvent {
	s := &b.slots[seq-b.base]
	ev := s.ev
	*s = watchSlot{gone: true} // lets go of the event's info now
	b.gone++
	return ev
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
			b.resynced = 0
		} else if b.index[s.ev.Node.Name] == seq {
			delete(b.index, s.ev.Node.Name)
		}
		b.emptyOrCompact()
		return s.ev, true
	}
	b.emptyOrCompact()
	return WatchEvent{}, false
}

// emptyOrCompact lets go of everything once nothing waits, or compacts a sparse backlog.
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
