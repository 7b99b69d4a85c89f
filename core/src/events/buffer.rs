//! The unread events of one subscriber, with the two policies of the [module docs](super):
//! a watch's events of one node are merged, other events are bounded.

use std::collections::{HashMap, VecDeque};

use super::{Event, Overflow, EVENT_QUEUE_CAPACITY};
use crate::registration::StatusEvent;
use crate::watch::{WatchEvent, WatchEventKind};

/// What a queue does with an event: the last event of a registration is never dropped; the
/// events of a watch are merged per node.
pub(crate) trait Queued: Sized {
    /// `Unregistered`: never dropped.
    fn is_final(&self) -> bool {
        false
    }

    /// The watch and node an event is merged by; `None` for an event that is not merged (a
    /// status event), which counts against the bound.
    fn merge_key(&self) -> Option<MergeKey<'_>> {
        None
    }

    /// `older`, still unread, and `newer` with the same [`merge_key`](Self::merge_key) as one
    /// event.
    fn merge(older: Self, newer: Self) -> Self {
        let _ = older;
        newer
    }
}

/// See [`Queued::merge_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MergeKey<'a> {
    /// An added/updated/removed event of a node.
    Node(u64, &'a str),
    /// A `Resynced` event.
    Resynced(u64),
}

impl Queued for StatusEvent {
    fn is_final(&self) -> bool {
        matches!(self, StatusEvent::Unregistered)
    }
}

impl Queued for Event {
    fn is_final(&self) -> bool {
        Event::is_final(self)
    }

    fn merge_key(&self) -> Option<MergeKey<'_>> {
        match self {
            Event::Watch {
                watch_id, event, ..
            } => watch_key(*watch_id, event),
            Event::Status { .. } => None,
        }
    }

    fn merge(older: Self, newer: Self) -> Self {
        match (older, newer) {
            (
                Event::Watch { event: older, .. },
                Event::Watch {
                    watch_id,
                    service,
                    event,
                },
            ) => Event::Watch {
                watch_id,
                service,
                event: merge_watch(older, event),
            },
            (_, newer) => newer,
        }
    }
}

fn watch_key(watch_id: u64, event: &WatchEvent) -> Option<MergeKey<'_>> {
    match (event.kind, &event.node) {
        (WatchEventKind::Resynced, _) => Some(MergeKey::Resynced(watch_id)),
        (_, Some(node)) => Some(MergeKey::Node(watch_id, &node.name)),
        (_, None) => None,
    }
}

/// The one event a reader gets for a node's two changes it has not read: its newer node info
/// and revision, with the kind that takes the reader from what it knew before the older one to
/// the state after the newer one. A node gone at the end is `Removed` even if the reader never
/// had its `Added`: a reader that started from a listing (or `nodes()`) may hold it.
fn merge_watch(older: WatchEvent, newer: WatchEvent) -> WatchEvent {
    use WatchEventKind::{Added, Removed, Updated};
    let kind = match (older.kind, newer.kind) {
        (_, Removed) => Removed,
        // The reader does not know the node yet.
        (Added, _) => Added,
        // The reader knew the node: it is still there, with new info.
        (Updated | Removed, Added | Updated) => Updated,
        // Two `Resynced`: the newer one.
        (_, kind) => kind,
    };
    WatchEvent { kind, ..newer }
}

/// Unread events of one subscriber. A reader less than [`EVENT_QUEUE_CAPACITY`] events behind
/// gets every event; once that many are unread, and until it has read them all, a watch's
/// events are merged per node, in place: the merged event keeps the place of the node's last
/// unread event (an earlier one, kept from before the merging began, is read before it: merged
/// there, a later change would be undone by it), and carries the newer info and revision. A newer `Resynced` instead replaces an unread one at the back, so
/// that the differences of a resync all come before it; the older one's slot is left empty
/// until it is read past (or the queue is compacted), as is a dropped status event's.
pub(crate) struct Buffer<T = Event> {
    /// `None`: an event merged into a later one.
    items: VecDeque<Option<T>>,
    /// The position (counted from the first event ever queued) of `items[0]`.
    head: u64,
    /// How many `items` are `Some`.
    live: usize,
    /// How many of those are not merged (status events): what the bound applies to.
    unmerged: usize,
    /// How many unread events start the merging.
    merge_from: usize,
    /// Merging: from `merge_from` unread events until none is.
    merging: bool,
    /// While merging, the position of the last event queued of each merge key; an entry whose
    /// event has been read or merged since is stale, and is checked for when looked up.
    index: Option<Box<Index>>,
    dropped: u64,
    pub(super) closed: bool,
}

#[derive(Default)]
struct Index {
    nodes: HashMap<u64, HashMap<Box<str>, u64>>,
    resynced: HashMap<u64, u64>,
    /// Entries in `nodes` and `resynced`.
    len: usize,
}

impl Index {
    fn get(&self, key: MergeKey<'_>) -> Option<u64> {
        match key {
            MergeKey::Node(id, name) => self.nodes.get(&id)?.get(name).copied(),
            MergeKey::Resynced(id) => self.resynced.get(&id).copied(),
        }
    }

    fn set(&mut self, key: MergeKey<'_>, at: u64) {
        let old = match key {
            MergeKey::Node(id, name) => {
                let nodes = self.nodes.entry(id).or_default();
                match nodes.get_mut(name) {
                    Some(slot) => Some(std::mem::replace(slot, at)),
                    None => nodes.insert(name.into(), at),
                }
            }
            MergeKey::Resynced(id) => self.resynced.insert(id, at),
        };
        if old.is_none() {
            self.len += 1;
        }
    }
}

impl<T> Default for Buffer<T> {
    fn default() -> Self {
        Buffer {
            items: VecDeque::new(),
            head: 0,
            live: 0,
            unmerged: 0,
            merge_from: EVENT_QUEUE_CAPACITY,
            merging: false,
            index: None,
            dropped: 0,
            closed: false,
        }
    }
}

impl<T: Queued> Buffer<T> {
    /// The same events made into another kind, in order, with the dropped count.
    pub(crate) fn map<U: Queued>(self, f: impl FnMut(T) -> U) -> Buffer<U> {
        let mut mapped = Buffer {
            items: self.items.into_iter().flatten().map(f).map(Some).collect(),
            dropped: self.dropped,
            closed: self.closed,
            ..Buffer::default()
        };
        mapped.reindex();
        mapped
    }

    /// How many events are unread.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Whether no event is unread.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The newest unread event.
    pub(crate) fn last_mut(&mut self) -> Option<&mut T> {
        self.items.iter_mut().rev().flatten().next()
    }

    /// How many events the bound has dropped.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues `event`: while merging, merged with the unread event of its watch's node if there
    /// is one; else at the back, dropping the oldest non-final unmerged event first when those are at the
    /// bound. Returns what to log about a drop (not logged here: the caller holds this buffer's
    /// lock).
    pub(crate) fn push(&mut self, event: T) -> Overflow {
        let mut overflow = Overflow::NONE;
        if !self.merging && self.live >= self.merge_from {
            self.merging = true;
            self.reindex();
        }
        let unread = |key| self.index.as_ref().and_then(|i| i.get(key));
        let event = match event.merge_key().filter(|_| self.merging) {
            Some(key @ MergeKey::Resynced(_)) => {
                if let Some(at) = unread(key) {
                    let _ = self.take_at(at);
                }
                event
            }
            Some(key) => match unread(key).and_then(|at| self.slot(at)) {
                Some(slot) => {
                    *slot = Some(match slot.take() {
                        Some(older) => T::merge(older, event),
                        None => event,
                    });
                    return overflow;
                }
                None => event,
            },
            None => {
                if self.unmerged >= EVENT_QUEUE_CAPACITY {
                    let oldest = self.items.iter().position(|e| {
                        e.as_ref()
                            .is_some_and(|e| e.merge_key().is_none() && !e.is_final())
                    });
                    if let Some(at) = oldest {
                        self.take_at(self.head + at as u64);
                        self.dropped += 1;
                        overflow = Overflow::dropped(self.dropped);
                    }
                }
                event
            }
        };
        // Most queues hold an event or two at a time (one per registration, or a handler's
        // backlog): room for exactly what they hold rather than the usual four to start.
        if self.items.len() < 4 {
            self.items.reserve_exact(1);
        }
        let at = self.head + self.items.len() as u64;
        match event.merge_key() {
            Some(key) if self.merging => {
                self.index.get_or_insert_with(Default::default).set(key, at)
            }
            Some(_) => {}
            None => self.unmerged += 1,
        }
        self.items.push_back(Some(event));
        self.live += 1;
        self.compact_if_sparse();
        overflow
    }

    /// The slot at position `at` if it holds an event (not read, replaced or dropped yet).
    fn slot(&mut self, at: u64) -> Option<&mut Option<T>> {
        let at = usize::try_from(at.checked_sub(self.head)?).ok()?;
        self.items.get_mut(at).filter(|slot| slot.is_some())
    }

    /// Takes the event at position `at` out, leaving its slot empty; `None` if it was read or
    /// taken already.
    fn take_at(&mut self, at: u64) -> Option<T> {
        let event = self.slot(at)?.take()?;
        self.live -= 1;
        if event.merge_key().is_none() {
            self.unmerged -= 1;
        }
        Some(event)
    }

    /// The oldest unread event.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        while let Some(slot) = self.items.pop_front() {
            self.head += 1;
            if let Some(event) = slot {
                self.live -= 1;
                if event.merge_key().is_none() {
                    self.unmerged -= 1;
                }
                if self.live == 0 {
                    self.release();
                }
                return Some(event);
            }
        }
        self.release();
        None
    }

    /// Empty: keeps no memory (a queue per registration mostly idles).
    fn release(&mut self) {
        self.head += self.items.len() as u64;
        self.items = VecDeque::new();
        self.index = None;
        self.merging = false;
    }

    /// The oldest unread event for which `f` holds, taken out.
    pub(crate) fn take_first(&mut self, f: impl Fn(&T) -> bool) -> Option<T> {
        let at = self.items.iter().position(|e| e.as_ref().is_some_and(&f))?;
        let event = self.take_at(self.head + at as u64);
        self.compact_if_sparse();
        event
    }

    /// Whether an unread event satisfies `f`.
    pub(crate) fn any(&self, f: impl Fn(&T) -> bool) -> bool {
        self.items.iter().flatten().any(f)
    }

    /// Takes out every unread event for which `f` holds, in order.
    pub(crate) fn take_all(&mut self, f: impl Fn(&T) -> bool) -> Vec<T> {
        let (taken, kept): (Vec<T>, Vec<T>) = std::mem::take(&mut self.items)
            .into_iter()
            .flatten()
            .partition(|e| f(e));
        self.items = kept.into_iter().map(Some).collect();
        self.reindex();
        if self.live == 0 {
            self.release();
        }
        taken
    }

    /// Drops the empty slots once they outnumber the events, so that a service resyncing again
    /// and again, or status events dropped again and again, while nobody reads cost no memory.
    fn compact_if_sparse(&mut self) {
        let empty = self.items.len() - self.live;
        if self.live == 0 {
            self.release();
        } else if empty > 32 + self.live
            || self.index.as_ref().map_or(0, |i| i.len) > 64 + 2 * self.live
        {
            self.items.retain(Option::is_some);
            self.reindex();
        }
    }

    /// Rebuilds the counts and index after `items` changed wholesale (no empty slots left).
    fn reindex(&mut self) {
        self.index = None;
        self.live = 0;
        self.unmerged = 0;
        for (at, event) in self.items.iter().enumerate() {
            let Some(event) = event else { continue };
            self.live += 1;
            match event.merge_key() {
                Some(key) if self.merging => {
                    let at = self.head + at as u64;
                    self.index.get_or_insert_with(Default::default).set(key, at);
                }
                Some(_) => {}
                None => self.unmerged += 1,
            }
        }
        if self.live == 0 {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::status;
    use crate::registration::Node;
    use WatchEventKind::{Added, Removed, Resynced, Updated};

    fn watch(id: u64, kind: WatchEventKind, node: &str, revision: i64) -> Event {
        Event::Watch {
            watch_id: id,
            service: "s".into(),
            event: WatchEvent {
                kind,
                node: (kind != Resynced).then(|| Node {
                    name: node.into(),
                    info: [("rev".to_string(), revision.to_string())].into(),
                    info_absent: false,
                }),
                revision,
            },
        }
    }

    /// A buffer that merges from its first event.
    fn merging() -> Buffer {
        Buffer {
            merge_from: 0,
            ..Buffer::default()
        }
    }

    /// What is unread, as (kind, node, revision), oldest first.
    fn drain(buffer: &mut Buffer) -> Vec<(&'static str, String, i64)> {
        std::iter::from_fn(|| buffer.pop_front())
            .map(|e| match e {
                Event::Watch { event, .. } => (
                    event.kind.as_str(),
                    event.node.map(|n| n.name).unwrap_or_default(),
                    event.revision,
                ),
                Event::Status { event, .. } => (event.kind_str(), String::new(), 0),
            })
            .collect()
    }

    #[test]
    fn two_unread_changes_of_a_node_are_one_event_taking_the_reader_to_the_newer_state() {
        let table = [
            (Added, Updated, Some("added")),
            (Added, Added, Some("added")),
            (Added, Removed, Some("removed")),
            (Updated, Updated, Some("updated")),
            (Updated, Added, Some("updated")),
            (Updated, Removed, Some("removed")),
            (Removed, Added, Some("updated")),
            (Removed, Updated, Some("updated")),
            (Removed, Removed, Some("removed")),
        ];
        for (older, newer, merged) in table {
            let mut buffer = merging();
            let _ = buffer.push(watch(1, older, "n", 1));
            let _ = buffer.push(watch(1, newer, "n", 2));
            let expected: Vec<_> = merged
                .map(|k| (k, "n".to_string(), 2))
                .into_iter()
                .collect();
            assert_eq!(drain(&mut buffer), expected, "{older:?} then {newer:?}");
        }
        // The merged event carries the newer info.
        let mut buffer = merging();
        let _ = buffer.push(watch(1, Added, "n", 1));
        let _ = buffer.push(watch(1, Updated, "n", 2));
        let Some(Event::Watch { event, .. }) = buffer.pop_front() else {
            panic!("no event")
        };
        assert_eq!(event.node.unwrap().info["rev"], "2");
    }

    #[test]
    fn a_merged_event_keeps_the_place_of_the_nodes_last_unread_event() {
        // The reader knows "b"; "a" is added, "b" removed, "a" updated: "a" comes first, so
        // the reader never holds an empty set while "a" was live all along.
        let mut buffer = merging();
        let _ = buffer.push(watch(1, Added, "a", 1));
        let _ = buffer.push(watch(1, Removed, "b", 2));
        let _ = buffer.push(watch(1, Updated, "a", 3));
        assert_eq!(
            drain(&mut buffer),
            [("added", "a".into(), 3), ("removed", "b".into(), 2)]
        );
        // A newer resync replaces an unread one at the back: the differences stay before it.
        let _ = buffer.push(watch(1, Added, "a", 1));
        let _ = buffer.push(watch(1, Resynced, "", 2));
        let _ = buffer.push(watch(1, Removed, "c", 3));
        let _ = buffer.push(watch(1, Updated, "a", 4));
        let _ = buffer.push(watch(1, Resynced, "", 5));
        assert_eq!(buffer.len(), 3);
        assert_eq!(
            drain(&mut buffer),
            [
                ("added", "a".into(), 4),
                ("removed", "c".into(), 3),
                ("resynced", String::new(), 5),
            ]
        );
    }

    #[test]
    fn only_unread_events_of_the_same_watch_and_node_are_merged() {
        let mut buffer = merging();
        let _ = buffer.push(watch(1, Added, "n", 1));
        let _ = buffer.push(watch(2, Added, "n", 1));
        let _ = buffer.push(watch(1, Added, "m", 2));
        assert_eq!(buffer.len(), 3);
        // Read: a later change is an event of its own.
        assert!(buffer.pop_front().is_some());
        let _ = buffer.push(watch(1, Removed, "n", 3));
        let _ = buffer.push(watch(2, Removed, "n", 3));
        let ids: Vec<u64> = std::iter::from_fn(|| buffer.pop_front())
            .map(|e| e.id())
            .collect();
        // Watch 2's "n" merged in place; watch 1's, read already, is an event of its own.
        assert_eq!(ids, [2, 1, 1]);
    }

    #[test]
    fn a_node_changing_while_nobody_reads_costs_one_event() {
        let mut buffer = merging();
        for node in 0..10 {
            let _ = buffer.push(watch(1, Added, &format!("n{node}"), 0));
        }
        for revision in 1..=100_000 {
            let node = format!("n{}", revision % 10);
            let _ = buffer.push(watch(1, Updated, &node, revision));
            assert!(buffer.items.len() <= 10 + 32 + 10, "{}", buffer.items.len());
            assert!(buffer.index.as_ref().map_or(0, |i| i.len) <= 64 + 2 * 10);
        }
        assert_eq!(buffer.len(), 10);
        let drained = drain(&mut buffer);
        assert!(drained.iter().all(|(kind, _, _)| *kind == "added"));
        let revisions: Vec<i64> = drained.iter().map(|e| e.2).collect();
        let last = |node: i64| if node == 0 { 100_000 } else { 99_990 + node };
        assert_eq!(revisions, (0..10).map(last).collect::<Vec<_>>());
        assert_eq!(buffer.dropped(), 0);
    }

    #[test]
    fn a_reader_that_keeps_up_partly_still_gets_every_node_once() {
        // Many distinct nodes, read in part between pushes: the index goes stale and is
        // rebuilt, and every node comes out once, with its last change.
        let mut buffer = merging();
        let mut seen = std::collections::BTreeMap::new();
        for round in 0..50_i64 {
            for node in 0..200 {
                let _ = buffer.push(watch(1, Updated, &format!("n{node}"), round * 1000 + node));
            }
            for _ in 0..150 {
                if let Some(Event::Watch { event, .. }) = buffer.pop_front() {
                    seen.insert(event.node.unwrap().name, event.revision);
                }
            }
        }
        for (_, node, revision) in drain(&mut buffer) {
            seen.insert(node, revision);
        }
        assert_eq!(seen.len(), 200);
        assert!(seen
            .iter()
            .all(|(node, revision)| { *revision == 49_000 + node[1..].parse::<i64>().unwrap() }));
    }

    #[test]
    fn watch_events_do_not_count_against_the_bound_of_status_events() {
        let mut buffer = merging();
        let _ = buffer.push(status(9, StatusEvent::Unregistered));
        for node in 0..2 * EVENT_QUEUE_CAPACITY {
            let _ = buffer.push(watch(1, Added, &format!("n{node}"), node as i64));
            let _ = buffer.push(status(
                2,
                StatusEvent::Registered {
                    lease_id: node as i64,
                },
            ));
        }
        assert_eq!(buffer.dropped(), EVENT_QUEUE_CAPACITY as u64 + 1);
        assert_eq!(buffer.len(), 3 * EVENT_QUEUE_CAPACITY);
        let drained = drain(&mut buffer);
        assert_eq!(drained[0].0, "unregistered");
        assert_eq!(
            drained.iter().filter(|e| e.0 == "added").count(),
            2 * EVENT_QUEUE_CAPACITY
        );
    }

    #[test]
    fn taking_events_out_keeps_merging_right() {
        let mut buffer = merging();
        let _ = buffer.push(watch(1, Added, "n", 1));
        let _ = buffer.push(watch(2, Added, "n", 1));
        let _ = buffer.push(watch(2, Added, "m", 2));
        let taken = buffer.take_all(|e| e.id() == 1);
        assert_eq!(taken.len(), 1);
        let _ = buffer.push(watch(2, Removed, "n", 3));
        let first = buffer.take_first(|e| e.id() == 2);
        assert!(matches!(first, Some(Event::Watch { event, .. }) if event.revision == 3));
        let _ = buffer.push(watch(1, Removed, "n", 4));
        assert_eq!(
            drain(&mut buffer),
            [("added", "m".into(), 2), ("removed", "n".into(), 4)]
        );
        assert!(buffer.is_empty());
        // Emptied by taking events out: the merging ends with it.
        let mut buffer = Buffer::default();
        for node in 0..EVENT_QUEUE_CAPACITY {
            let _ = buffer.push(watch(1, Added, &format!("n{node}"), 1));
        }
        let _ = buffer.push(watch(1, Updated, "n0", 2));
        assert_eq!(buffer.len(), EVENT_QUEUE_CAPACITY, "merging");
        drop(buffer.take_all(|_| true));
        let _ = buffer.push(watch(1, Added, "n0", 3));
        let _ = buffer.push(watch(1, Updated, "n0", 4));
        assert_eq!(buffer.len(), 2, "merging ended with the queue emptied");
    }
}

#[cfg(test)]
mod threshold_tests {
    use super::*;

    #[test]
    fn a_reader_less_than_the_bound_behind_gets_every_event_then_they_merge_until_it_catches_up() {
        use crate::registration::Node;
        let event = |kind, node: &str| Event::Watch {
            watch_id: 1,
            service: "s".into(),
            event: WatchEvent {
                kind,
                node: Some(Node {
                    name: node.into(),
                    info: Default::default(),
                    info_absent: false,
                }),
                revision: 0,
            },
        };
        let mut buffer = Buffer::default();
        for _ in 0..EVENT_QUEUE_CAPACITY / 2 {
            let _ = buffer.push(event(WatchEventKind::Updated, "a"));
            let _ = buffer.push(event(WatchEventKind::Updated, "b"));
        }
        assert_eq!(buffer.len(), EVENT_QUEUE_CAPACITY, "every event kept");
        // At the bound: a new event of "a" or "b" is merged with its last unread one.
        for _ in 0..100 {
            let _ = buffer.push(event(WatchEventKind::Updated, "a"));
            let _ = buffer.push(event(WatchEventKind::Updated, "b"));
        }
        assert_eq!(buffer.len(), EVENT_QUEUE_CAPACITY);
        // Until the reader has caught up.
        for _ in 0..EVENT_QUEUE_CAPACITY - 1 {
            assert!(buffer.pop_front().is_some());
        }
        let _ = buffer.push(event(WatchEventKind::Updated, "a"));
        let _ = buffer.push(event(WatchEventKind::Updated, "b"));
        assert_eq!(buffer.len(), 2);
        while buffer.pop_front().is_some() {}
        let _ = buffer.push(event(WatchEventKind::Updated, "a"));
        let _ = buffer.push(event(WatchEventKind::Updated, "a"));
        assert_eq!(buffer.len(), 2, "every event kept again");
        assert_eq!(buffer.dropped(), 0);
    }
}
