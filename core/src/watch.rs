//! A service's live node set, kept by a watch that resumes after disconnects and resyncs after
//! compaction. It never stops by itself: only `cancel()`, dropping it, or closing the registry
//! end it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::backoff;
use crate::conn::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::{decode_info, node_name_of, Info};
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
    /// The watch missed history (compaction while disconnected), re-listed the service and
    /// emitted the difference as Added/Updated/Removed events just before this one. `node` is
    /// `None`.
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
}

/// A watch on one service: ordered events and the live node set.
pub struct Watch {
    pub(crate) id: u64,
    service: String,
    state: Arc<Mutex<WatchState>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchEvent>>,
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
    /// in a child process after `fork()`).
    /// The first events are one `Added` per node present when the watch started.
    pub async fn next(&self) -> Option<WatchEvent> {
        if self.registry.check_same_process().is_err() {
            return None;
        }
        self.events.lock().await.recv().await
    }

    /// The next event if one is ready, without waiting. `Err(())` when the watch has ended.
    #[allow(clippy::result_unit_err)]
    pub fn try_next(&self) -> std::result::Result<Option<WatchEvent>, ()> {
        let Ok(mut events) = self.events.try_lock() else {
            return Ok(None);
        };
        match events.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(()),
        }
    }

    /// Stops the watch. Events already delivered stay readable; then `next()` returns `None`.
    pub fn cancel(&self) {
        self.task.abort();
        self.registry.forget_watch(self.id);
    }

    /// Whether the watch has ended (cancelled, or its registry closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub(crate) fn abort_handle(&self) -> AbortHandle {
        self.task.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A service's nodes with their mod revisions, and the revision of the listing.
pub(crate) struct Listing {
    pub(crate) nodes: Vec<(Node, i64)>,
    pub(crate) revision: i64,
}

/// Lists the direct children of `prefix` in one range request. Values that are not JSON objects
/// keep their node with empty info, and are logged.
pub(crate) async fn fetch(conn: &Connection, prefix: &str) -> Result<Listing> {
    let resp = fetch_raw(conn, prefix).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let nodes = resp
        .kvs()
        .iter()
        .filter_map(|kv| node_of(prefix, kv.key(), kv.value()).map(|n| (n, kv.mod_revision())))
        .collect();
    Ok(Listing { nodes, revision })
}

/// Every key under `prefix`, in one range request.
pub(crate) async fn fetch_raw(conn: &Connection, prefix: &str) -> Result<etcd_client::GetResponse> {
    conn.call_read("listing nodes", |mut c| {
        let key = prefix.to_string();
        async move {
            c.get(key, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
        }
    })
    .await
}

/// Hands each direct child of `prefix` in `resp` to `f` as borrowed text: its name and its info
/// as (key, value) pairs sorted by key, decoded as [`node_of`] does.
pub(crate) fn each_node<T>(
    resp: &etcd_client::GetResponse,
    prefix: &str,
    mut f: impl FnMut(&str, &[(&str, &str)], bool) -> T,
) -> Vec<T> {
    let mut out = Vec::with_capacity(resp.kvs().len());
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for kv in resp.kvs() {
        let Some(key) = std::str::from_utf8(kv.key()).ok() else {
            continue;
        };
        let Some(name) = node_name_of(prefix, key) else {
            continue;
        };
        pairs.clear();
        // The usual value, an object of strings without escapes, is read in place.
        if let Ok(map) =
            serde_json::from_slice::<std::collections::BTreeMap<&str, &str>>(kv.value())
        {
            pairs.extend(map);
            out.push(f(name, &pairs, false));
            continue;
        }
        let (info, absent) = info_of(key, kv.value());
        let owned: Vec<(&str, &str)> = info.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        out.push(f(name, &owned, absent));
    }
    out
}

fn node_of(prefix: &str, key: &[u8], value: &[u8]) -> Option<Node> {
    let key = std::str::from_utf8(key).ok()?;
    let name = node_name_of(prefix, key)?;
    let (info, info_absent) = info_of(key, value);
    Some(Node {
        name: name.to_string(),
        info,
        info_absent,
    })
}

/// The info of the node at `key`, and whether it has no info object (its value is empty,
/// `null`, or not a JSON object: logged unless empty or `null`).
fn info_of(key: &str, value: &[u8]) -> (Info, bool) {
    if value.iter().all(u8::is_ascii_whitespace) || value.trim_ascii() == b"null" {
        return (Info::new(), true);
    }
    match decode_info(value) {
        Ok(info) => (info, false),
        Err(problem) => {
            tracing::warn!(key, problem = %problem.0, "node value is not a JSON object of strings; listing the node with no info");
            (Info::new(), true)
        }
    }
}

pub(crate) struct WatchSetup {
    pub(crate) id: u64,
    pub(crate) service: String,
    pub(crate) prefix: String,
    pub(crate) conn: Arc<Connection>,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) registry: crate::Registry,
}

/// Lists the service, then spawns the task that follows it.
pub(crate) async fn start(setup: WatchSetup, handle: &tokio::runtime::Handle) -> Result<Watch> {
    let listing = fetch(&setup.conn, &setup.prefix).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut state = WatchState {
        nodes: BTreeMap::new(),
        revision: listing.revision,
    };
    for (node, mod_revision) in listing.nodes {
        state.nodes.insert(node.name.clone(), node.clone());
        let _ = tx.send(WatchEvent {
            kind: WatchEventKind::Added,
            node: Some(node),
            revision: mod_revision,
        });
    }
    let state = Arc::new(Mutex::new(state));
    let follower = Follower {
        prefix: setup.prefix,
        conn: setup.conn,
        backoff: setup.backoff,
        state: state.clone(),
        tx,
    };
    let task = handle.spawn(follower.run()).abort_handle();
    Ok(Watch {
        id: setup.id,
        service: setup.service,
        state,
        events: tokio::sync::Mutex::new(rx),
        task,
        registry: setup.registry,
    })
}

struct Follower {
    prefix: String,
    conn: Arc<Connection>,
    backoff: (Duration, Duration),
    state: Arc<Mutex<WatchState>>,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

enum StreamEnd {
    Compacted(i64),
    Failed(Error),
    /// The member stopped answering and was ejected: resume at once on another one.
    Silent(Error),
}

/// How long a watch stream may stay quiet before it asks its member for a progress report, and
/// how long that report may take before the member is given up for another. Both half the
/// call timeout, within [0.5 s, 5 s].
fn watch_liveness(timeout: Duration) -> Duration {
    (timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

impl Follower {
    async fn run(self) {
        let mut attempt = 0u32;
        loop {
            let end = self.follow(&mut attempt).await;
            let error = match end {
                StreamEnd::Compacted(compact) => {
                    tracing::info!(prefix = %self.prefix, compact, "watch fell behind a compaction; re-listing");
                    match self.resync().await {
                        Ok(()) => {
                            attempt = 0;
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                StreamEnd::Silent(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "watch moving to another etcd member");
                    if self.tx.is_closed() {
                        return;
                    }
                    continue;
                }
                StreamEnd::Failed(e) => e,
            };
            if self.tx.is_closed() {
                return;
            }
            attempt = attempt.saturating_add(1);
            let delay = backoff::delay(attempt, self.backoff.0, self.backoff.1);
            tracing::warn!(prefix = %self.prefix, attempt, ?delay, %error, "watch interrupted, resuming");
            tokio::time::sleep(delay).await;
        }
    }

    /// Follows the service from the last revision seen (again, see below) until the stream fails.
    async fn follow(&self, attempt: &mut u32) -> StreamEnd {
        // Resume AT the last revision reflected, not after it. etcd accepts a watch that starts
        // exactly at the compaction revision, yet the compaction has already dropped the
        // deletions made in that revision: resuming at last + 1 == compaction revision would
        // lose them silently. One revision earlier turns that case into a compaction error (and
        // a resync); the last revision's own events come again and change nothing (a put of an
        // identical node and a delete of an absent one emit no event).
        let start = lock(&self.state).revision.max(1);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let liveness = watch_liveness(self.conn.timeout);
        let (member, stream) = match self
            .conn
            .call_at("starting a watch", liveness, |mut c| {
                let (key, options) = (self.prefix.clone(), options.clone());
                async move { c.watch(key, Some(options)).await }
            })
            .await
        {
            Ok(started) => started,
            Err(e) => return StreamEnd::Failed(e),
        };
        let (mut requests, mut stream) = stream.split();
        // A quiet stream asks for a progress report; one not answered in time means the member
        // is paused, overloaded or cut off (a paused member keeps its TCP connections open, so
        // the stream would otherwise wait for the HTTP/2 ping to fail, or forever).
        let mut asked_at: Option<Instant> = None;
        let mut quiet_since = Instant::now();
        loop {
            let wake = match asked_at {
                Some(asked) => asked + liveness,
                None => quiet_since + liveness,
            };
            let message = tokio::select! {
                message = stream.message() => message,
                _ = tokio::time::sleep_until(wake) => {
                    if asked_at.is_some() {
                        let error = Error::new(
                            ErrorKind::Timeout,
                            format!("watch unanswered for {liveness:?} (context deadline exceeded)"),
                        );
                        self.conn.eject(member, &error);
                        return StreamEnd::Silent(error);
                    }
                    if let Err(e) = requests.request_progress().await {
                        return StreamEnd::Failed(e.into());
                    }
                    asked_at = Some(Instant::now());
                    continue;
                }
            };
            asked_at = None;
            quiet_since = Instant::now();
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    return StreamEnd::Failed(Error::new(
                        ErrorKind::Connection,
                        "the watch stream was closed by etcd",
                    ))
                }
                Err(e) => {
                    let e = Error::from(e);
                    if crate::conn::is_member_failure(&e) {
                        self.conn.eject(member, &e);
                    }
                    return StreamEnd::Failed(e);
                }
            };
            if resp.compact_revision() > 0 {
                return StreamEnd::Compacted(resp.compact_revision());
            }
            if resp.canceled() {
                return StreamEnd::Failed(Error::new(
                    ErrorKind::Connection,
                    format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                ));
            }
            if resp.created() {
                *attempt = 0;
                continue;
            }
            if resp.events().is_empty() {
                // A progress notification: everything up to this revision has been seen. Not so
                // for the answer to our own progress request (watch id -1): etcd before 3.5.8
                // sends it with the store's revision even while this watcher is still catching
                // up (etcd-io/etcd#15220), so it only shows that the member is alive.
                if resp.watch_id() == -1 {
                    continue;
                }
                if let Some(h) = resp.header() {
                    let mut state = lock(&self.state);
                    state.revision = state.revision.max(h.revision());
                }
                continue;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(name) = std::str::from_utf8(kv.key())
                    .ok()
                    .and_then(|k| node_name_of(&self.prefix, k))
                else {
                    continue;
                };
                let revision = kv.mod_revision();
                let mut state = lock(&self.state);
                state.revision = state.revision.max(revision);
                let out = match event.event_type() {
                    EventType::Put => {
                        let node = node_of(&self.prefix, kv.key(), kv.value())
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
                drop(state);
                if let Some(out) = out {
                    if self.tx.send(out).is_err() {
                        return StreamEnd::Failed(Error::closed());
                    }
                }
            }
        }
    }

    /// Re-lists the service and emits the difference to the live set, then `Resynced`.
    async fn resync(&self) -> Result<()> {
        let listing = fetch(&self.conn, &self.prefix).await?;
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
        }
        for (kind, node) in events {
            let _ = self.tx.send(WatchEvent {
                kind,
                node,
                revision,
            });
        }
        Ok(())
    }
}
