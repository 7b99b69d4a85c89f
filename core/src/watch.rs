//! A service's live node set, kept by a watch that resumes after disconnects and resyncs after
//! compaction. It never stops by itself: only `cancel()`, dropping it, or closing the registry
//! end it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use tokio::task::AbortHandle;

use crate::backoff;
use crate::conn::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, EventStream, Hub, Next, Overflow, Subscriber};
use crate::keys::node_name_of;
use crate::listing::{fetch, fetch_at, node_of, Listing};
use crate::mux::{watch_liveness, Delivery, Inline, WatchMux};
use crate::registration::Node;

/// What happened to a watched service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchEventKind {
    /// A node appeared (including the nodes present when the watch started).
    Added,
    /// A node's info changed.
    Updated,
    /// A node disappeared (unregistered, or its lease expired).
    Removed,
    /// The watch missed history (compaction while disconnected, or etcd's history is not the
    /// one it followed: its data lost or restored from an older snapshot, see the README's
    /// fault table), re-listed the service and
    /// emitted the difference as Added/Updated/Removed events just before this one. `node` is
    /// `None`. (For a reader far behind, a later change of a node may be merged into its
    /// difference event: the set at `Resynced` may then be newer than the re-listing.)
    Resynced,
}

impl WatchEventKind {
    /// Lowercase name, as the bindings show it.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventKind::Added => "added",
            WatchEventKind::Updated => "updated",
            WatchEventKind::Removed => "removed",
            WatchEventKind::Resynced => "resynced",
        }
    }
}

/// One change of a watched service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchEventKind,
    /// The node concerned (for `Removed`, its last known info); `None` for `Resynced`.
    pub node: Option<Node>,
    /// The etcd revision of the change.
    pub revision: i64,
}

#[derive(Default)]
pub(crate) struct WatchState {
    nodes: BTreeMap<String, Node>,
    revision: i64,
    /// The etcd watcher whose events are applied (counted up by each `Follower::follow`, and
    /// by every re-listing). Another one's, gone but still answered until the stream's task
    /// handles its cancel, change nothing: applied after a re-listing replaced the live set,
    /// they would move the revision past changes the set then lacks.
    follower: u64,
}

/// Where a watch's events go: its own stream (read by [`Watch::next`]) or the route it was
/// made with, and the registry-wide streams.
pub(crate) struct WatchRoute {
    id: u64,
    service: Arc<str>,
    own: Option<EventStream>,
    route: Option<Subscriber>,
    hub: Arc<Hub>,
    /// Set by `end()`: the watch is over even if its task has not finished aborting yet.
    ended: std::sync::atomic::AtomicBool,
    /// Held while an event is pushed and while `ended` is set: once `end()` has set it, no event
    /// is pushed any more (events are pushed by the watch's task and by the stream's).
    gate: Mutex<()>,
    /// A unit test's hold inside `emit`, after the `ended` check, before the push.
    #[cfg(test)]
    hold: Option<Box<dyn Fn() + Send + Sync>>,
}

impl WatchRoute {
    /// Pushes an event everywhere; false once nobody can read it any more.
    fn emit(&self, event: WatchEvent) -> bool {
        let event = Event::Watch {
            watch_id: self.id,
            service: self.service.clone(),
            event,
        };
        let mut overflow = Overflow::NONE;
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.ended.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        #[cfg(test)]
        if let Some(hold) = &self.hold {
            hold();
        }
        let own = self
            .own
            .as_ref()
            .map(|s| s.queue().push_event(&event, &mut overflow));
        if let Some(route) = &self.route {
            route.push(&event, &mut overflow);
        }
        self.hub.publish(&event, &mut overflow);
        drop(gate);
        // No lock is held here any more: the warning may go to a host callback.
        overflow.log();
        own != Some(false)
    }

    /// Sets `ended`, after any push under way.
    fn set_ended(&self) {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether nobody reads its events any more: ended, or its own stream closed.
    fn is_closed(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
            || self.own.as_ref().is_some_and(EventStream::is_closed)
    }

    /// Ends the delivery: the own stream ends after what it holds; a shared stream forgets the
    /// watch's queued events; a handler is stopped (and no call of it runs when this returns).
    pub(crate) fn end(&self) {
        self.set_ended();
        if let Some(own) = &self.own {
            own.close();
        }
        if let Some(route) = &self.route {
            route.cancel(self.id);
        }
    }

    /// [`WatchRoute::end`] without waiting for a handler's call that is running: it may still
    /// be running when this returns, but no other call of it starts for the watch.
    fn end_without_waiting(&self) {
        self.set_ended();
        if let Some(own) = &self.own {
            own.close();
        }
        if let Some(route) = &self.route {
            route.forget(self.id);
        }
    }

    /// [`WatchRoute::end`] for async callers (does not block a runtime thread).
    pub(crate) async fn end_async(&self) {
        self.set_ended();
        if let Some(own) = &self.own {
            own.close();
        }
        if let Some(route) = &self.route {
            route.cancel_async(self.id).await;
        }
    }
}

/// A watch on one service: ordered events and the live node set.
pub struct Watch {
    pub(crate) id: u64,
    service: String,
    state: Arc<Mutex<WatchState>>,
    route: Arc<WatchRoute>,
    task: AbortHandle,
    registry: crate::Registry,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("id", &self.id)
            .field("service", &self.service)
            .finish()
    }
}

fn lock(state: &Mutex<WatchState>) -> MutexGuard<'_, WatchState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watch {
    /// An id unique within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The service watched.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The live node set now, sorted by name.
    pub fn nodes(&self) -> Vec<Node> {
        lock(&self.state).nodes.values().cloned().collect()
    }

    /// The last etcd revision the live set reflects.
    pub fn revision(&self) -> i64 {
        lock(&self.state).revision
    }

    /// The next event, in order; `None` once the watch is cancelled or its registry closed (or
    /// in a child process after `fork()`), and always for a watch made with a route
    /// ([`Registry::watch_routed`](crate::Registry::watch_routed)), whose events go there.
    /// The first events are one `Added` per node present when the watch started. Never dropped:
    /// a reader far behind gets a node's unread events merged (see [`crate::events`]).
    pub async fn next(&self) -> Option<WatchEvent> {
        if self.registry.check_same_process().is_err() {
            return None;
        }
        watch_event_of(self.route.own.as_ref()?.next().await?)
    }

    /// The next event if one is ready, without waiting. `Err(())` when the watch has ended.
    #[allow(clippy::result_unit_err)]
    pub fn try_next(&self) -> std::result::Result<Option<WatchEvent>, ()> {
        match self.route.own.as_ref().map(EventStream::try_next) {
            Some(Next::Event(event)) => Ok(watch_event_of(event)),
            Some(Next::Empty) => Ok(None),
            Some(Next::Closed) | None => Err(()),
        }
    }

    /// How many events were dropped because the reader of [`Watch::next`] fell behind: always
    /// 0, a watch's events are merged instead (see [`crate::events`]). Kept for the programs
    /// written when they were dropped.
    pub fn dropped(&self) -> u64 {
        self.route.own.as_ref().map_or(0, EventStream::dropped)
    }

    /// Stops the watch. Events already delivered stay readable; then `next()` returns `None`.
    /// With a route: its queued events are dropped from a shared stream, and once this returns
    /// a handler is not running and is not called again (see [`crate::events`]).
    ///
    /// It blocks while a call of the handler runs: in async code, use
    /// [`Watch::cancel_async`], which waits without blocking the runtime's thread (a handler
    /// waiting for that runtime would otherwise never return).
    pub fn cancel(&self) {
        if self.forked() {
            return;
        }
        self.task.abort();
        self.registry.forget_watch(self.id);
        self.route.end();
    }

    /// [`Watch::cancel`] for async code: the same, waiting for a running call of a handler
    /// without blocking the thread.
    pub async fn cancel_async(&self) {
        if self.forked() {
            return;
        }
        self.task.abort();
        self.registry.forget_watch(self.id);
        self.route.end_async().await;
    }

    /// Whether the watch has ended (cancelled, or its registry closed).
    pub fn is_finished(&self) -> bool {
        self.route.ended.load(std::sync::atomic::Ordering::SeqCst) || self.task.is_finished()
    }

    /// In a child process after fork(), a watch made before belongs to the parent: its task,
    /// its registry and their locks are the parent's (one may have been held at the fork), so
    /// ending it only marks it ended here; the parent's watch goes on.
    fn forked(&self) -> bool {
        if self.registry.in_this_process() {
            return false;
        }
        self.route
            .ended
            .store(true, std::sync::atomic::Ordering::SeqCst);
        true
    }

    pub(crate) fn abort_handle(&self) -> AbortHandle {
        self.task.clone()
    }

    pub(crate) fn route(&self) -> Arc<WatchRoute> {
        self.route.clone()
    }
}

fn watch_event_of(event: Event) -> Option<WatchEvent> {
    match event {
        Event::Watch { event, .. } => Some(event),
        Event::Status { .. } => None,
    }
}

/// Dropping a watch cancels it. Outside a tokio runtime this is [`Watch::cancel`]: it returns
/// once a handler's call for the watch that is running has returned. Within a runtime (async
/// code, where a drop cannot wait without blocking the runtime's thread, which that call may be
/// waiting for) it does not wait for it; use [`Watch::cancel_async`] first to wait.
impl Drop for Watch {
    fn drop(&mut self) {
        if self.forked() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.cancel();
            return;
        }
        self.task.abort();
        self.registry.forget_watch(self.id);
        self.route.end_without_waiting();
    }
}

pub(crate) struct WatchSetup {
    pub(crate) id: u64,
    pub(crate) service: String,
    pub(crate) prefix: String,
    pub(crate) conn: Arc<Connection>,
    pub(crate) mux: Arc<WatchMux>,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) registry: crate::Registry,
    pub(crate) route: Option<Subscriber>,
    pub(crate) hub: Arc<Hub>,
}

/// Lists the service, then spawns the task that follows it.
pub(crate) async fn start(setup: WatchSetup, handle: &tokio::runtime::Handle) -> Result<Watch> {
    let listing = fetch(&setup.conn, &setup.prefix).await?;
    let tx = Arc::new(WatchRoute {
        id: setup.id,
        service: Arc::from(setup.service.as_str()),
        own: setup.route.is_none().then(EventStream::new),
        route: setup.route,
        hub: setup.hub,
        ended: Default::default(),
        gate: Mutex::new(()),
        #[cfg(test)]
        hold: None,
    });
    let mut state = WatchState {
        nodes: BTreeMap::new(),
        revision: listing.revision,
        follower: 0,
    };
    for (node, mod_revision) in listing.nodes {
        state.nodes.insert(node.name.clone(), node.clone());
        tx.emit(WatchEvent {
            kind: WatchEventKind::Added,
            node: Some(node),
            revision: mod_revision,
        });
    }
    let state = Arc::new(Mutex::new(state));
    let follower = Follower {
        prefix: setup.prefix,
        conn: setup.conn,
        mux: setup.mux,
        backoff: setup.backoff,
        state: state.clone(),
        tx: tx.clone(),
    };
    let task = handle.spawn(follower.run()).abort_handle();
    Ok(Watch {
        id: setup.id,
        service: setup.service,
        state,
        route: tx,
        task,
        registry: setup.registry,
    })
}

/// Applies the events of `resp`, an answer to the etcd watcher `follower`, to the live set of
/// the watch of `prefix` and emits what changed; false once nobody reads the watch's events.
/// An answer to another watcher than the live set's changes nothing (see
/// [`WatchState::follower`]).
///
/// The whole response is applied under one lock, so that the live set is never seen with a
/// revision half applied (see `Follower::verify`).
fn apply(
    prefix: &str,
    state: &Mutex<WatchState>,
    tx: &WatchRoute,
    resp: &WatchResponse,
    follower: u64,
) -> bool {
    let mut changes = Vec::new();
    let mut state = lock(state);
    if state.follower != follower {
        return true;
    }
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let Some(name) = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| node_name_of(prefix, k))
        else {
            continue;
        };
        let revision = kv.mod_revision();
        state.revision = state.revision.max(revision);
        let out = match event.event_type() {
            EventType::Put => {
                let node = node_of(prefix, kv.key(), kv.value())
                    .unwrap_or_else(|| Node::new(name, Default::default()));
                let kind = match state.nodes.insert(name.to_string(), node.clone()) {
                    Some(old) if old == node => None,
                    Some(_) => Some(WatchEventKind::Updated),
                    None => Some(WatchEventKind::Added),
                };
                kind.map(|kind| WatchEvent {
                    kind,
                    node: Some(node),
                    revision,
                })
            }
            EventType::Delete => state.nodes.remove(name).map(|node| WatchEvent {
                kind: WatchEventKind::Removed,
                node: Some(node),
                revision,
            }),
        };
        changes.extend(out);
    }
    drop(state);
    changes.into_iter().all(|out| tx.emit(out))
}

/// A digest of a set of nodes, in name order: equal sets have equal digests.
fn digest<'a>(nodes: impl Iterator<Item = &'a Node>) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for node in nodes {
        (&node.name, &node.info, node.info_absent).hash(&mut hasher);
    }
    hasher.finish()
}

struct Follower {
    prefix: String,
    conn: Arc<Connection>,
    backoff: (Duration, Duration),
    mux: Arc<WatchMux>,
    state: Arc<Mutex<WatchState>>,
    tx: Arc<WatchRoute>,
}

enum StreamEnd {
    Compacted(i64),
    Failed(Error),
    /// The member stopped answering and was ejected: resume at once on another one.
    Silent(Error),
    /// etcd answered by cancelling the watch: it was reached.
    Refused(Error),
    /// etcd's history is not the one the watch followed: its revision went back below the
    /// watch's, or what it held at the watch's revision is not the watch's set (its data was
    /// lost, or restored from an older snapshot). This listing of the service, at the new
    /// store's revision, replaces the live set.
    Rewound(Listing),
}

impl Follower {
    async fn run(self) {
        let mut attempt = 0u32;
        // The live set comes from a listing just made: nothing to check on resuming.
        let mut listed = true;
        loop {
            let end = self.follow(&mut attempt, !listed).await;
            listed = false;
            let mut refused = false;
            let error = match end {
                StreamEnd::Compacted(compact) => {
                    tracing::info!(prefix = %self.prefix, compact, "watch fell behind a compaction; re-listing");
                    self.fence();
                    match self.resync().await {
                        Ok(()) => {
                            attempt = 0;
                            listed = true;
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                StreamEnd::Silent(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "watch resuming at once on a new stream");
                    if self.tx.is_closed() {
                        return;
                    }
                    continue;
                }
                StreamEnd::Failed(e) => e,
                StreamEnd::Refused(e) => {
                    refused = true;
                    e
                }
                StreamEnd::Rewound(listing) => {
                    tracing::warn!(prefix = %self.prefix, revision = listing.revision, "etcd's history is not the one the watch followed (its data was lost or restored); re-listing");
                    self.replace(listing);
                    attempt = 0;
                    listed = true;
                    continue;
                }
            };
            if self.tx.is_closed() {
                return;
            }
            attempt = attempt.saturating_add(1);
            let delay = backoff::delay(attempt, self.backoff.0, self.backoff.1);
            tracing::warn!(prefix = %self.prefix, attempt, ?delay, %error, "watch interrupted, resuming");
            // As a lease's group does: the step is slept with etcd probed meanwhile, and once
            // etcd answers again after it could not be reached the watch resumes at once (after
            // a short random spread), not at the end of a step of up to the backoff's maximum.
            // A refusal (etcd cancelled the watch) was an answer: the whole step is slept.
            let unreached =
                !refused && matches!(error.kind(), ErrorKind::Connection | ErrorKind::Timeout);
            let wake = tokio::time::Instant::now() + delay;
            if self.conn.wait_back(wake, unreached).await {
                tokio::time::sleep(backoff::spread(backoff::RECONNECT_SPREAD)).await;
            }
        }
    }

    /// Follows the service from the last revision seen (again, see below) until the stream fails.
    /// With `verify`, checks first that etcd's history is the one followed so far (see
    /// [`Self::verify`]).
    async fn follow(&self, attempt: &mut u32, verify: bool) -> StreamEnd {
        // Resume AT the last revision reflected, not after it. etcd accepts a watch that starts
        // exactly at the compaction revision, yet the compaction has already dropped the
        // deletions made in that revision: resuming at last + 1 == compaction revision would
        // lose them silently. One revision earlier turns that case into a compaction error (and
        // a resync); the last revision's own events come again and change nothing (a put of an
        // identical node and a delete of an absent one emit no event).
        let (start, seen, me) = {
            let mut state = lock(&self.state);
            state.follower += 1;
            let seen = verify.then(|| digest(state.nodes.values()));
            (state.revision.max(1), seen, state.follower)
        };
        // Before the watcher is made: its events are not applied to a set etcd no longer
        // holds, and a compaction after it was made does not fail the check.
        if let Some(seen) = seen {
            if let Some(end) = self.verify(start, seen).await {
                return end;
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let liveness = watch_liveness(self.conn.timeout);
        // Events are applied on the stream's task as they come (see `Inline`); the rest comes
        // here, in order with them: what comes after an event batch was applied before it.
        let inline: Inline = {
            let (prefix, state, tx) = (self.prefix.clone(), self.state.clone(), self.tx.clone());
            Arc::new(move |resp: &WatchResponse| {
                let events_only = !resp.created()
                    && !resp.canceled()
                    && resp.compact_revision() == 0
                    && !resp.events().is_empty();
                if events_only {
                    // Nobody reading any more: the watch's task is being stopped.
                    let _ = apply(&prefix, &state, &tx, resp, me);
                }
                events_only
            })
        };
        let mut watcher = match self
            .mux
            .subscribe(
                self.prefix.as_bytes(),
                options,
                liveness,
                true,
                Some(inline),
            )
            .await
        {
            Ok(watcher) => watcher,
            Err(e) => return StreamEnd::Failed(e),
        };
        loop {
            let resp = match watcher.next().await {
                Delivery::Response(resp) => resp,
                Delivery::Ended {
                    error,
                    silent: true,
                } => return StreamEnd::Silent(error),
                Delivery::Ended { error, .. } => return StreamEnd::Failed(error),
            };
            if resp.compact_revision() > 0 {
                return StreamEnd::Compacted(resp.compact_revision());
            }
            if resp.canceled() {
                return StreamEnd::Refused(Error::new(
                    ErrorKind::Connection,
                    format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                ));
            }
            if resp.created() {
                *attempt = 0;
                // etcd's revision is below the one this watch resumed from: the store went
                // back (a watch from a revision it has not reached would wait, silent, until it
                // does), or this member lags behind the one the watch was on. A linearizable
                // listing tells which.
                if resp.header().is_some_and(|h| h.revision() < start) {
                    match fetch(&self.conn, &self.prefix).await {
                        Ok(listing) if listing.revision < start => {
                            self.fence();
                            return StreamEnd::Rewound(listing);
                        }
                        Ok(_) => {}
                        Err(e) => return StreamEnd::Failed(e),
                    }
                }
                continue;
            }
            if resp.events().is_empty() {
                // A progress notification of this watcher: everything up to this revision has
                // been seen. (The answers to the stream's progress requests, watch id -1, are not
                // handed to watches: etcd before 3.5.8 sends them with the store's revision even
                // while a watcher is still catching up, etcd-io/etcd#15220.)
                if let Some(h) = resp.header() {
                    let mut state = lock(&self.state);
                    if state.follower == me {
                        state.revision = state.revision.max(h.revision());
                    }
                }
                continue;
            }
            if !apply(&self.prefix, &self.state, &self.tx, &resp, me) {
                return StreamEnd::Failed(Error::closed());
            }
        }
    }

    /// Whether etcd still holds the history followed so far, checked before resuming from
    /// `start`; if not, how the stream ends. A store lost or restored and written to since can
    /// have reached `start` again: its revision alone looks like the old history going on. So
    /// the service as etcd held it at `start` (a read of its history, one request per
    /// resumption) must be the live set there, whose digest is `seen`.
    async fn verify(&self, start: i64, seen: u64) -> Option<StreamEnd> {
        let error = match fetch_at(&self.conn, &self.prefix, start).await {
            Ok(past) if digest(past.nodes.iter().map(|(node, _)| node)) == seen => return None,
            Ok(_) => return Some(self.relist(None).await),
            Err(e) => e,
        };
        if error.kind() != ErrorKind::InvalidArgument {
            return Some(StreamEnd::Failed(error));
        }
        if error.message().contains("compacted") {
            // So would a watch from `start` be: re-listed as on its answer.
            return Some(StreamEnd::Compacted(start));
        }
        // A future revision: the store is behind `start`. A linearizable read is served at the
        // latest revision, so it went back, which the listing confirms.
        Some(self.relist(Some(start)).await)
    }

    /// The stream's end that makes a listing of the service, made now, the live set; with
    /// `below`, only when that listing is below it (else the watch resumes as it was).
    async fn relist(&self, below: Option<i64>) -> StreamEnd {
        // Nothing of the watcher followed so far is applied from here: the listing replaces it.
        self.fence();
        match fetch(&self.conn, &self.prefix).await {
            Ok(listing) if below.is_none_or(|below| listing.revision < below) => {
                StreamEnd::Rewound(listing)
            }
            Ok(_) => StreamEnd::Failed(Error::new(
                ErrorKind::Internal,
                "etcd answered a read of its history as a future revision, then listed past it",
            )),
            Err(e) => StreamEnd::Failed(e),
        }
    }

    /// Stops applying the answers of the watcher being followed: a re-listing is to replace the
    /// live set.
    fn fence(&self) {
        lock(&self.state).follower += 1;
    }

    /// Re-lists the service and emits the difference to the live set, then `Resynced`.
    async fn resync(&self) -> Result<()> {
        let listing = fetch(&self.conn, &self.prefix).await?;
        self.replace(listing);
        Ok(())
    }

    /// Makes `listing` the live set: emits the difference, then `Resynced`.
    fn replace(&self, listing: Listing) {
        let fresh: BTreeMap<String, Node> = listing
            .nodes
            .into_iter()
            .map(|(n, _)| (n.name.clone(), n))
            .collect();
        let revision = listing.revision;
        let mut events = Vec::new();
        {
            let mut state = lock(&self.state);
            for (name, node) in &state.nodes {
                if !fresh.contains_key(name) {
                    events.push((WatchEventKind::Removed, Some(node.clone())));
                }
            }
            for (name, node) in &fresh {
                match state.nodes.get(name) {
                    None => events.push((WatchEventKind::Added, Some(node.clone()))),
                    Some(old) if old != node => {
                        events.push((WatchEventKind::Updated, Some(node.clone())))
                    }
                    Some(_) => {}
                }
            }
            events.push((WatchEventKind::Resynced, None));
            state.nodes = fresh;
            state.revision = revision;
            state.follower += 1;
        }
        for (kind, node) in events {
            self.tx.emit(WatchEvent {
                kind,
                node,
                revision,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Route;
    use std::sync::mpsc;

    /// The answer of an etcd watcher the live set no longer follows (a re-listing replaced the
    /// set while the stream's task had not yet handled the watcher's cancel) changes nothing,
    /// and emits nothing; the followed watcher's own answer is applied.
    #[test]
    fn an_answer_to_a_watcher_no_longer_followed_changes_nothing() {
        let etcd = etcd_harness::EtcdCluster::start_single().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resp = runtime.block_on(async {
            let mut client = etcd_client::Client::connect(etcd.endpoints(), None)
                .await
                .unwrap();
            let options = WatchOptions::new().with_prefix();
            let mut stream = client.watch("/s/api/", Some(options)).await.unwrap();
            client.put("/s/api/late", "{}", None).await.unwrap();
            loop {
                let resp = stream.message().await.unwrap().expect("a response");
                if !resp.events().is_empty() {
                    break resp;
                }
            }
        });
        let route = WatchRoute {
            id: 1,
            service: Arc::from("api"),
            own: Some(EventStream::new()),
            route: None,
            hub: Arc::new(Hub::default()),
            ended: Default::default(),
            gate: Mutex::new(()),
            hold: None,
        };
        let state = Mutex::new(WatchState {
            nodes: BTreeMap::new(),
            revision: 1,
            follower: 3,
        });

        assert!(apply("/s/api/", &state, &route, &resp, 2));
        assert!(lock(&state).nodes.is_empty());
        assert_eq!(lock(&state).revision, 1);
        assert_eq!(route.own.as_ref().unwrap().try_next(), Next::Empty);

        assert!(apply("/s/api/", &state, &route, &resp, 3));
        assert_eq!(lock(&state).nodes.keys().collect::<Vec<_>>(), vec!["late"]);
        assert_eq!(
            lock(&state).revision,
            resp.events()[0].kv().unwrap().mod_revision()
        );
        assert!(matches!(
            route.own.as_ref().unwrap().try_next(),
            Next::Event(Event::Watch {
                event: WatchEvent {
                    kind: WatchEventKind::Added,
                    ..
                },
                ..
            })
        ));
    }

    /// An event being pushed while the watch ends: `end()` returns after the push, and drops it
    /// from the shared stream with the watch's other queued events, so that nothing of the
    /// watch is read after `cancel()` returned.
    #[test]
    fn a_push_under_way_when_the_watch_ends_leaves_nothing_in_a_shared_stream() {
        let shared = EventStream::new();
        let (inside_tx, inside) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let ended = Mutex::new(ended);
        let route = Arc::new(WatchRoute {
            id: 7,
            service: Arc::from("api"),
            own: None,
            route: Some(Route::stream(&shared).subscriber()),
            hub: Arc::new(Hub::default()),
            ended: Default::default(),
            gate: Mutex::new(()),
            hold: Some(Box::new(move || {
                inside_tx.send(()).unwrap();
                // Gives `end()` time to return while this push is under way. It must not (it
                // waits for the push), so this wait runs out; were it to return, the push
                // would go on after it.
                let _ = ended
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_millis(200));
            })),
        });
        let pushing = {
            let route = route.clone();
            std::thread::spawn(move || {
                route.emit(WatchEvent {
                    kind: WatchEventKind::Added,
                    node: Some(Node::new("a", Default::default())),
                    revision: 2,
                })
            })
        };
        inside.recv().unwrap();
        let ending = {
            let route = route.clone();
            std::thread::spawn(move || {
                route.end();
                let _ = ended_tx.send(());
            })
        };
        pushing.join().unwrap();
        ending.join().unwrap();
        assert_eq!(shared.try_next(), Next::Empty);
        // Once ended, nothing is pushed at all.
        assert!(!route.emit(WatchEvent {
            kind: WatchEventKind::Removed,
            node: Some(Node::new("a", Default::default())),
            revision: 3,
        }));
    }
}
