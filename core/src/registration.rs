//! One registration's state machine and status events.
//!
//! ```text
//!             register()
//!                 │
//!                 ▼
//!          ┌─ Registering ──(attempt fails: Failed, Retrying…)──┐
//!          │      │ key put                                    │
//!          │      ▼                                            │
//!          │  Registered ◄──(Reregistered)── Retrying ◄────────┘
//!          │      │  keep-alive lost (KeepAliveLost, Retrying…) ▲
//!          │      └─────────────────────────────────────────────┘
//!          ▼
//!    Unregistered  (from any state, on unregister() or close(); the last event)
//! ```
//!
//! `Updated` does not change the state: it follows the put that carried the newest info given to
//! [`Registration::update`] into etcd (after `Registered`/`Reregistered` when that put was the
//! registration itself).
//!
//! Every event of a registration is emitted by the one task that owns its lease, so events of a
//! registration are totally ordered, and none follows `Unregistered`.
//!
//! The registration's current info is the one source of every put of its key: the first
//! registration, re-registration after an outage, putting back a deleted key, and an update. Each
//! update raises a generation counter; the lease's task records the generation of each put that
//! lands, and puts the key again whenever that is older than the current one. All puts of a key
//! run one after the other in that task, each reading the info when it is sent, so a put of an
//! older info never follows a newer one, and an update made while etcd is down is put when it
//! comes back.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, ErrorKind, Result};
use crate::events::{Buffer, Event, EventStream, Hub, Next, Overflow, Queue, Subscriber};
use crate::keys::{decode_info, Info};

/// A service node: its name and its info.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The node's name, unique within its service.
    pub name: String,
    /// What the node tells about itself (address, version …).
    pub info: Info,
    /// The node has no info object at all, as opposed to an empty one: registered, its value
    /// is stored empty (what the Go library writes for a nil map; an empty info is stored as
    /// `{}`); listed or watched, its value was empty, `null`, or not a JSON object. Only
    /// meaningful with an empty `info` (a non-empty one is always written).
    pub info_absent: bool,
}

impl Node {
    /// A node with a name and info.
    pub fn new(name: impl Into<String>, info: Info) -> Self {
        Node {
            name: name.into(),
            info,
            info_absent: false,
        }
    }

    /// A node with no info object: its value in etcd is empty (see [`Node::info_absent`]).
    pub fn without_info(name: impl Into<String>) -> Self {
        Node {
            name: name.into(),
            info: Info::new(),
            info_absent: true,
        }
    }
}

/// Where a registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistrationState {
    /// Not registered yet: the first attempt is under way or being retried.
    Registering,
    /// The key is in etcd and its lease is kept alive.
    Registered,
    /// The key was registered, then the lease or the connection was lost; retrying.
    Retrying,
    /// Unregistered by the caller or by `close()`; final.
    Unregistered,
}

impl RegistrationState {
    /// Lowercase name, as the bindings show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationState::Registering => "registering",
            RegistrationState::Registered => "registered",
            RegistrationState::Retrying => "retrying",
            RegistrationState::Unregistered => "unregistered",
        }
    }
}

/// A change of a registration, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusEvent {
    /// The key was put for the first time, and everything that keeps it is in place: its
    /// lease's keep-alive, and the watch of the lease's keys when the lease is new (or, when
    /// etcd is slow to open that watch, a moment later than the keep-alive).
    Registered {
        /// The lease the key is attached to.
        lease_id: i64,
    },
    /// The first attempt failed (before any registration): the reason, e.g. an auth error.
    /// Retrying events follow.
    Failed {
        /// Why.
        error: Error,
    },
    /// A registered node lost its keep-alive (etcd down, partition, lease expired).
    KeepAliveLost {
        /// Why.
        error: Error,
    },
    /// The next attempt comes after `delay`.
    Retrying {
        /// 1 for the first retry after a failure, counting up until success.
        attempt: u32,
        /// How long until the attempt.
        delay: Duration,
        /// The failure that made the retry necessary.
        error: Error,
    },
    /// The key is back after a loss.
    Reregistered {
        /// The lease the key is attached to now (the old one if it survived).
        lease_id: i64,
    },
    /// The info given to [`Registration::update`] is in etcd. Several updates made before one
    /// put could land (while etcd was down, or in quick succession) give one `Updated`, for the
    /// newest.
    Updated {
        /// The lease the key is attached to.
        lease_id: i64,
    },
    /// The registration ended; the last event.
    Unregistered,
}

impl StatusEvent {
    /// Lowercase name of the event kind.
    pub fn kind_str(&self) -> &'static str {
        match self {
            StatusEvent::Registered { .. } => "registered",
            StatusEvent::Failed { .. } => "failed",
            StatusEvent::KeepAliveLost { .. } => "keepalive_lost",
            StatusEvent::Retrying { .. } => "retrying",
            StatusEvent::Reregistered { .. } => "reregistered",
            StatusEvent::Updated { .. } => "updated",
            StatusEvent::Unregistered => "unregistered",
        }
    }
}

/// A registration's key as a map key, without a copy of it.
pub(crate) struct KeyOf(pub(crate) Arc<RegShared>);

impl PartialEq for KeyOf {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for KeyOf {}

impl std::hash::Hash for KeyOf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, so that lookups by `&[u8]` (through `Borrow`) find it.
        self.0.key.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for KeyOf {
    fn borrow(&self) -> &[u8] {
        self.0.key.as_bytes()
    }
}

/// `info` as entries to keep, or `None` when decoding `value` gives it back exactly.
fn unless_decodable(info: Info, value: &str) -> Option<Box<[(String, String)]>> {
    match decode_info(value.as_bytes()) {
        Ok(decoded) if !value.is_empty() && decoded == info => None,
        _ => Some(info.into_iter().collect()),
    }
}

/// One registration, as the registry, its lease's task and the handles share it. Held once per
/// registration, so kept small: the names as part of the key when they can be, the info as a
/// list rather than a map, the usual event history without an allocation, and no channel of its
/// own.
pub(crate) struct RegShared {
    pub(crate) id: u64,
    /// The service and node names as given.
    names: Names,
    /// Where the events go besides the subscribers: fixed at creation (`register_routed`).
    route: Option<Subscriber>,
    hub: Arc<Hub>,
    pub(crate) key: Box<str>,
    pub(crate) ttl_secs: i64,
    inner: Mutex<RegInner>,
    /// Told when the registration's state changes, for `wait_registered`.
    changed: Notify,
    /// Whether a put of the key was ever sent, or the registration left before one was
    /// ([`RegShared::claim_put`], [`RegShared::leave`]): one that never was ends at once.
    put: AtomicU8,
    /// Set when a newer registration of the same node replaced this one: it has ended for its
    /// user from then on, while its lease's task lets it go (which emits `Unregistered`).
    replaced: AtomicBool,
}

/// [`RegShared::put`]: no put of the key sent yet.
const NEVER_PUT: u8 = 0;
/// A put was sent: etcd may hold the key.
const PUT_SENT: u8 = 1;
/// Left before any put was sent: none will be.
const LEFT_UNPUT: u8 = 2;

struct RegInner {
    /// The node's current info when decoding `value` would not give it back exactly (e.g. info
    /// given as bytes that are not UTF-8), as sorted entries; `None` in the usual case, where
    /// `Node` is rebuilt from `value` when asked for: the info is not held twice.
    info: Option<Box<[(String, String)]>>,
    info_absent: bool,
    /// The info encoded: what every put of the key writes.
    value: Box<str>,
    /// 1 for the info given to `register`, one more for each `update`.
    generation: u64,
    /// The generation of the last put that landed in etcd; 0 before the first.
    landed: u64,
    /// The newest generation an `Updated` event (or the first registration) has told about.
    announced: u64,
    state: RegistrationState,
    registered_once: bool,
    error_before_first: Option<Box<Error>>,
    /// The lease the key is held by now; 0 for none (etcd never grants lease 0).
    lease_id: i64,
    /// Failed attempts since the last registration: the number a `Retrying` event carries. Kept
    /// per registration, since one that joins a lease group mid-backoff starts at 1 too.
    attempts: u32,
    listeners: Listeners,
    /// The lease groups (TTL and generation) whose lease may still hold the key: those of older
    /// registrations of the node, of other TTLs, replaced before this one put the key on its
    /// own lease. Its unregister deletes the key from them too. Empty in the usual case.
    stale_groups: Box<[(i64, u64)]>,
    /// Leases of groups gone that may hold the key still, each with when it expires at the
    /// latest: an older registration of the node, of another TTL, was its group's last member
    /// and handed its lease over (`hand_over`), or a registration this one replaced held them.
    /// Taken, and revoked, by whichever comes first: a task waiting for this registration to
    /// register (see `group::pass_on`), or its end (its unregister, the registry's close; a
    /// newer registration takes them on instead).
    handed_over: Vec<(i64, tokio::time::Instant)>,
}

/// A registration's service and node names, as given.
enum Names {
    /// The key's last two components, `<service>/<node>`, are the names (neither has a '/',
    /// which the key would hold as '-'): the usual case, without a copy.
    InKey { service_len: u32, node_len: u32 },
    /// Names that the key does not hold as they are.
    Given(Box<(Arc<str>, Arc<str>)>),
}

impl Names {
    fn new(key: &str, service: &str, node: &str) -> Names {
        let in_key = key
            .strip_suffix(node)
            .and_then(|k| k.strip_suffix('/'))
            .and_then(|k| k.strip_suffix(service))
            .is_some_and(|k| k.is_empty() || k.ends_with('/'));
        match (
            in_key,
            u32::try_from(service.len()),
            u32::try_from(node.len()),
        ) {
            (true, Ok(service_len), Ok(node_len)) => Names::InKey {
                service_len,
                node_len,
            },
            _ => Names::Given(Box::new((Arc::from(service), Arc::from(node)))),
        }
    }

    fn get<'a>(&'a self, key: &'a str) -> (&'a str, &'a str) {
        match self {
            Names::InKey {
                service_len,
                node_len,
            } => {
                let node_at = key.len() - *node_len as usize;
                let service_at = node_at - 1 - *service_len as usize;
                (&key[service_at..node_at - 1], &key[node_at..])
            }
            Names::Given(names) => (&names.0, &names.1),
        }
    }

    /// The names as an event carries them.
    fn shared(&self, key: &str) -> (Arc<str>, Arc<str>) {
        match self {
            Names::Given(names) => (names.0.clone(), names.1.clone()),
            Names::InKey { .. } => {
                let (service, node) = self.get(key);
                (Arc::from(service), Arc::from(node))
            }
        }
    }
}

/// Who gets a registration's events besides its route and the registry's streams.
enum Listeners {
    /// Nobody yet, for a registration made without a route: its events are kept for the first
    /// subscriber, so that it misses none; bounded like every event queue.
    Pending(Backlog),
    /// The queues of the `subscribe()` streams (not the streams: dropping one unsubscribes).
    Subscribed(Vec<Arc<Queue>>),
}

/// The events of a registration nobody has subscribed to yet. Kept as status events only (the
/// names are added when a subscriber takes them). Most registrations never have a subscriber
/// and each keeps its history until it ends, and most histories are one `Registered`: that one
/// is held without an allocation. A run of `Retrying` events is kept as its newest one (whose
/// `attempt` counts the run): a registration riding out a long outage keeps three events for
/// it (`KeepAliveLost`, the last `Retrying`, `Reregistered`), not one per attempt.
enum Backlog {
    Empty,
    Registered { lease_id: i64 },
    Events(Box<Buffer<StatusEvent>>),
}

impl Backlog {
    fn push(&mut self, event: StatusEvent) -> Overflow {
        if let (Backlog::Events(events), StatusEvent::Retrying { .. }) = (&mut *self, &event) {
            if let Some(last) = events.last_mut() {
                if matches!(last, StatusEvent::Retrying { .. }) {
                    *last = event;
                    return Overflow::NONE;
                }
            }
        }
        match (&mut *self, event) {
            (Backlog::Empty, StatusEvent::Registered { lease_id }) => {
                *self = Backlog::Registered { lease_id };
                Overflow::NONE
            }
            (Backlog::Events(events), event) => events.push(event),
            (_, event) => {
                let mut events = std::mem::replace(self, Backlog::Empty).into_buffer();
                let overflow = events.push(event);
                *self = Backlog::Events(Box::new(events));
                overflow
            }
        }
    }

    fn into_buffer(self) -> Buffer<StatusEvent> {
        match self {
            Backlog::Empty => Buffer::default(),
            Backlog::Registered { lease_id } => {
                let mut events = Buffer::default();
                // An empty buffer has room: nothing is dropped.
                let _ = events.push(StatusEvent::Registered { lease_id });
                events
            }
            Backlog::Events(events) => *events,
        }
    }
}

impl RegShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        service: &str,
        node: Node,
        key: String,
        value: String,
        ttl_secs: i64,
        route: Option<Subscriber>,
        hub: Arc<Hub>,
    ) -> Self {
        let names = Names::new(&key, service, &node.name);
        let listeners = match route {
            None => Listeners::Pending(Backlog::Empty),
            Some(_) => Listeners::Subscribed(Vec::new()),
        };
        RegShared {
            id,
            names,
            route,
            hub,
            key: key.into_boxed_str(),
            ttl_secs,
            inner: Mutex::new(RegInner {
                info: unless_decodable(node.info, &value),
                info_absent: node.info_absent,
                value: value.into_boxed_str(),
                generation: 1,
                landed: 0,
                announced: 1,
                state: RegistrationState::Registering,
                registered_once: false,
                error_before_first: None,
                lease_id: 0,
                attempts: 0,
                listeners,
                stale_groups: Box::default(),
                handed_over: Vec::new(),
            }),
            changed: Notify::new(),
            put: AtomicU8::new(NEVER_PUT),
            replaced: AtomicBool::new(false),
        }
    }

    /// Leases that hold the key until this registration puts it on its own (see `handed_over`).
    pub(crate) fn hand_over(&self, leases: &[(i64, tokio::time::Instant)]) {
        self.lock().handed_over.extend_from_slice(leases);
    }

    /// Takes the leases handed over to this registration (all, or only those of `of`) that it
    /// still holds (not taken, nor passed on to a newer registration), with when each expires.
    pub(crate) fn take_handed_over(
        &self,
        of: Option<&[(i64, tokio::time::Instant)]>,
    ) -> Vec<(i64, tokio::time::Instant)> {
        let mut inner = self.lock();
        let mut taken = Vec::new();
        inner.handed_over.retain(|held| {
            let take = of.is_none_or(|of| of.contains(held));
            if take {
                taken.push(*held);
            }
            !take
        });
        taken
    }

    /// A newer registration of the node has replaced this one (see `replaced`).
    pub(crate) fn mark_replaced(&self) {
        self.replaced.store(true, Ordering::SeqCst);
    }

    /// Called before each put of the key: whether it may be sent (not once the registration
    /// has left without one, nor once a newer registration of the node has replaced it: the
    /// key and its info are the newer one's, which a put of this one, still a member of its
    /// lease's task until that task takes the replacement, would overwrite with older info).
    pub(crate) fn claim_put(&self) -> bool {
        if self.replaced.load(Ordering::SeqCst) {
            return false;
        }
        match self
            .put
            .compare_exchange(NEVER_PUT, PUT_SENT, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state == PUT_SENT,
        }
    }

    /// Called on a new registration of a node whose older registration may have put its key:
    /// the key is then to be deleted at its end, as if it had put it.
    pub(crate) fn inherit_put(&self) {
        self.put.store(PUT_SENT, Ordering::SeqCst);
    }

    /// The lease groups (TTL, generation) whose lease may still hold the key (see
    /// `RegInner::stale_groups`).
    pub(crate) fn stale_groups(&self) -> Box<[(i64, u64)]> {
        self.lock().stale_groups.clone()
    }

    /// Called on a new registration of a node whose older registration `old`, in the lease
    /// group `old_group` (TTL, generation; `None` when it has none now), may have put its key:
    /// this one takes over the groups whose lease may hold the key, but its own TTL's.
    pub(crate) fn inherit_stale_groups(&self, old: &RegShared, old_group: Option<(i64, u64)>) {
        let mut groups = old.stale_groups().into_vec();
        groups.extend(old_group);
        groups.retain(|(ttl, _)| *ttl != self.ttl_secs);
        groups.dedup();
        self.lock().stale_groups = groups.into_boxed_slice();
    }

    /// Called when the registration ends: whether no put of its key was ever sent, in which
    /// case none will be, and etcd has nothing of it to delete.
    pub(crate) fn leave(&self) -> bool {
        match self
            .put
            .compare_exchange(NEVER_PUT, LEFT_UNPUT, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state == LEFT_UNPUT,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state(&self) -> RegistrationState {
        self.lock().state
    }

    pub(crate) fn service(&self) -> &str {
        self.names.get(&self.key).0
    }

    pub(crate) fn node(&self) -> Node {
        let inner = self.lock();
        Node {
            name: self.names.get(&self.key).1.to_string(),
            info: match &inner.info {
                Some(entries) => entries.iter().cloned().collect(),
                None => decode_info(inner.value.as_bytes()).unwrap_or_default(),
            },
            info_absent: inner.info_absent,
        }
    }

    /// The value to put now and its generation.
    pub(crate) fn value(&self) -> (String, u64) {
        let inner = self.lock();
        (inner.value.to_string(), inner.generation)
    }

    /// Whether etcd may hold an older info than the current one (or none yet).
    pub(crate) fn stale(&self) -> bool {
        let inner = self.lock();
        inner.landed != inner.generation
    }

    /// Records that a put of `generation` landed.
    pub(crate) fn landed(&self, generation: u64) {
        let mut inner = self.lock();
        inner.landed = inner.landed.max(generation);
    }

    /// Replaces the info (already checked and encoded); the lease's task puts it.
    pub(crate) fn set_info(&self, info: Info, value: String) {
        let mut inner = self.lock();
        inner.info = unless_decodable(info, &value);
        inner.info_absent = false;
        inner.value = value.into_boxed_str();
        inner.generation += 1;
    }

    /// Applies an event to the state and hands it to the subscribers. Called only by the task
    /// that owns the registration's lease.
    pub(crate) fn emit(&self, mut event: StatusEvent) {
        let mut inner = self.lock();
        if inner.state == RegistrationState::Unregistered {
            return;
        }
        match &mut event {
            StatusEvent::Registered { lease_id } | StatusEvent::Reregistered { lease_id } => {
                inner.state = RegistrationState::Registered;
                inner.registered_once = true;
                inner.lease_id = *lease_id;
                inner.attempts = 0;
            }
            StatusEvent::Failed { error } => {
                inner.error_before_first = Some(Box::new(error.clone()));
            }
            StatusEvent::KeepAliveLost { .. } => {
                inner.state = RegistrationState::Retrying;
                inner.lease_id = 0;
            }
            StatusEvent::Retrying { error, attempt, .. } => {
                // The group counts its own attempts (they set the backoff); the event carries
                // this registration's count.
                inner.attempts = inner.attempts.saturating_add(1);
                *attempt = inner.attempts;
                if inner.registered_once {
                    inner.state = RegistrationState::Retrying;
                } else {
                    inner.error_before_first = Some(Box::new(error.clone()));
                }
            }
            StatusEvent::Updated { .. } => {}
            StatusEvent::Unregistered => {
                inner.state = RegistrationState::Unregistered;
                inner.lease_id = 0;
            }
        }
        let last = matches!(event, StatusEvent::Unregistered);
        // What full queues dropped: logged at the end, once no lock is held.
        let mut overflow = Overflow::NONE;
        // Straight into every subscriber's queue, under the lock: events of a registration are
        // queued in the order they happened, and none after `Unregistered`.
        let listeners = &mut inner.listeners;
        match listeners {
            // Nobody subscribed: nobody can any more (a later subscription gets an ended stream).
            Listeners::Pending(_) if last => *listeners = Listeners::Subscribed(Vec::new()),
            Listeners::Pending(pending) => overflow = pending.push(event.clone()),
            Listeners::Subscribed(_) => {}
        }
        let subscribed = matches!(listeners, Listeners::Subscribed(queues) if !queues.is_empty());
        // Made only when someone takes it (the names may have to be copied out of the key).
        if subscribed || self.route.is_some() || self.hub.has_streams() {
            let event = self.event(event);
            if let Listeners::Subscribed(queues) = listeners {
                queues.retain(|queue| queue.push_event(&event, &mut overflow));
            }
            if let Some(route) = &self.route {
                route.push(&event, &mut overflow);
            }
            self.hub.publish(&event, &mut overflow);
        }
        if let (true, Listeners::Subscribed(queues)) = (last, listeners) {
            // Ends every per-registration stream after the Unregistered event.
            for queue in queues.drain(..) {
                queue.close();
            }
        }
        drop(inner);
        self.changed.notify_waiters();
        overflow.log();
    }

    /// The events that fit a successful put (recorded with [`RegShared::landed`]) or a key
    /// found in place, given where the registration stood: `Registered` or `Reregistered`, then
    /// `Updated` when info given to `update` has landed since the last one.
    pub(crate) fn registered(&self, lease_id: i64) {
        // Replaced by a newer registration of its node (which speaks for the node from then
        // on), or left before any put of its key (a transaction of its group skipped it):
        // nothing to tell.
        if self.replaced.load(Ordering::SeqCst) || self.put.load(Ordering::SeqCst) == LEFT_UNPUT {
            return;
        }
        let (state, once) = {
            let inner = self.lock();
            (inner.state, inner.registered_once)
        };
        match state {
            RegistrationState::Registered => {
                // Already registered (a repeated put, or its key moved to a new lease): nothing
                // to tell.
                self.lock().lease_id = lease_id;
            }
            // Gone (it ended before its group got to it): nothing to tell, no lease.
            RegistrationState::Unregistered => return,
            _ if once => self.emit(StatusEvent::Reregistered { lease_id }),
            _ => self.emit(StatusEvent::Registered { lease_id }),
        }
        let update_landed = {
            let mut inner = self.lock();
            // Generations start at 1: nothing landed (0) is never newer.
            if inner.landed > inner.announced {
                inner.announced = inner.landed;
                true
            } else {
                false
            }
        };
        if update_landed {
            self.emit(StatusEvent::Updated { lease_id });
        }
    }

    /// A failure of an attempt: `Failed` the first time before any registration, and
    /// `KeepAliveLost` when a registered node loses its lease.
    pub(crate) fn attempt_failed(&self, error: &Error) {
        let (state, first_error) = {
            let inner = self.lock();
            (inner.state, inner.error_before_first.is_none())
        };
        match state {
            RegistrationState::Registering if first_error => self.emit(StatusEvent::Failed {
                error: error.clone(),
            }),
            RegistrationState::Registered => self.emit(StatusEvent::KeepAliveLost {
                error: error.clone(),
            }),
            _ => {}
        }
    }

    /// `event` of this registration, with its names.
    fn event(&self, event: StatusEvent) -> Event {
        let (service, node) = self.names.shared(&self.key);
        Event::Status {
            registration_id: self.id,
            service,
            node,
            event,
        }
    }

    pub(crate) fn subscribe(&self) -> StatusEvents {
        let mut inner = self.lock();
        let unregistered = inner.state == RegistrationState::Unregistered;
        let listeners = &mut inner.listeners;
        let stream = match std::mem::replace(listeners, Listeners::Subscribed(Vec::new())) {
            Listeners::Pending(backlog) => {
                EventStream::with_backlog(backlog.into_buffer().map(|e| self.event(e)))
            }
            Listeners::Subscribed(queues) => {
                *listeners = Listeners::Subscribed(queues);
                EventStream::new()
            }
        };
        if unregistered {
            stream.close();
        } else if let Listeners::Subscribed(queues) = listeners {
            queues.push(stream.queue());
        }
        StatusEvents { stream }
    }

    /// After `Unregistered`: waits until a handler route has been called with it.
    pub(crate) async fn finish_route(&self) {
        if let Some(route) = &self.route {
            route.finish(self.id).await;
        }
    }

    pub(crate) async fn wait_registered(&self, timeout: Duration) -> Result<()> {
        self.wait_first(timeout, true).await
    }

    /// Waits until the registration has been registered once or has ended, or `timeout`
    /// passes; failed attempts before the first registration do not end the wait (a lease
    /// handed over to this registration is kept for it meanwhile).
    pub(crate) async fn wait_registered_or_ended(&self, timeout: Duration) {
        let _ = self.wait_first(timeout, false).await;
    }

    /// [`Self::wait_registered`]; `on_failure`: also returns at a failed attempt before the
    /// first registration.
    async fn wait_first(&self, timeout: Duration, on_failure: bool) -> Result<()> {
        // A timeout too long for the clock waits without one.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            // Enabled before the state is read, so a change made after the read wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let inner = self.lock();
                if inner.registered_once {
                    return Ok(());
                }
                if inner.state == RegistrationState::Unregistered {
                    return Err(Error::new(
                        ErrorKind::Closed,
                        "unregistered before the first registration",
                    ));
                }
                if let Some(error) = inner.error_before_first.as_ref().filter(|_| on_failure) {
                    return Err(Error::clone(error));
                }
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(Error::wait_timeout("the first registration", timeout));
                    }
                }
                None => changed.await,
            }
        }
    }

    pub(crate) fn lease_id(&self) -> Option<i64> {
        Some(self.lock().lease_id).filter(|&id| id != 0)
    }

    /// Waits until the registration has ended (`Unregistered` emitted).
    pub(crate) async fn wait_unregistered(&self) {
        loop {
            // Enabled before the state is read, so a change made after the read wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state() == RegistrationState::Unregistered {
                return;
            }
            changed.await;
        }
    }
}

/// The handle of one registered node. Cheap to clone; dropping it does not unregister (the
/// registration lives until [`Registration::unregister`] or [`Registry::close`](crate::Registry::close)).
#[derive(Clone)]
pub struct Registration {
    pub(crate) shared: Arc<RegShared>,
    pub(crate) registry: crate::Registry,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.shared.id)
            .field("key", &self.shared.key)
            .field("state", &self.state())
            .finish()
    }
}

impl Registration {
    /// An id unique within the process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The service name as given.
    pub fn service(&self) -> &str {
        self.shared.service()
    }

    /// The node, with its current info (as given to `register`, or to the last `update`).
    pub fn node(&self) -> Node {
        self.shared.node()
    }

    /// The etcd key, `<base_path>/<service>/<node>`.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The lease TTL in whole seconds, as granted by this library (etcd may raise it to its
    /// minimum).
    pub fn ttl_secs(&self) -> i64 {
        self.shared.ttl_secs
    }

    /// The current state. A registration replaced by a newer registration of the same node is
    /// `Unregistered` from the moment the newer one is made, as `update` then says (its
    /// `Unregistered` event follows).
    pub fn state(&self) -> RegistrationState {
        if self.shared.replaced.load(Ordering::SeqCst) {
            return RegistrationState::Unregistered;
        }
        self.shared.state()
    }

    /// The lease the key is attached to while registered (`None` once replaced, as `state`).
    pub fn lease_id(&self) -> Option<i64> {
        if self.shared.replaced.load(Ordering::SeqCst) {
            return None;
        }
        self.shared.lease_id()
    }

    /// Status events. The first subscriber receives every event since `register` (of a run of
    /// `Retrying` events that came before it subscribed, the newest: its `attempt` counts
    /// them); later subscribers receive the events from now on. The stream ends after `Unregistered`. Bounded
    /// like every event queue (see [`crate::events`]). A registration made with
    /// [`Registry::register_routed`](crate::Registry::register_routed) keeps no history: its
    /// events went to its route.
    pub fn subscribe(&self) -> StatusEvents {
        self.shared.subscribe()
    }

    /// Waits until the node has been registered once. Fails at once with the error of the last
    /// failed attempt if attempts failed and none succeeded yet (retries go on in the
    /// background), with a `Timeout` error after `timeout`, or with `Closed` when unregistered.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<()> {
        self.registry.check_same_process()?;
        self.shared.wait_registered(timeout).await
    }

    /// Replaces the node's info: the key is put again, on the same lease, with one put. Returns
    /// at once, like [`Registry::register`](crate::Registry::register): the put goes through the
    /// registration's lease task, and an `Updated` status event follows once it has landed
    /// (watchers see one `Updated` watch event). While etcd is down the new info is kept and put
    /// when it is back, before or with the re-registration; it is never lost. Updates of one
    /// registration are applied in the order they were made: after concurrent updates, or
    /// several during an outage, etcd ends with the last one (intermediate ones may be skipped).
    ///
    /// `InvalidArgument` for info as `register` refuses it (an empty key, too large for etcd);
    /// `NotFound` once the registration has ended (unregistered, or replaced by a newer
    /// registration of the same node); `Closed` after [`Registry::close`](crate::Registry::close).
    pub fn update(&self, info: Info) -> Result<()> {
        self.registry.update_reg(&self.shared, info)
    }

    /// [`Registration::update`] with the info as bytes (see
    /// [`Registry::register_bytes`](crate::Registry::register_bytes)).
    pub fn update_bytes(&self, info: &crate::keys::InfoBytes) -> Result<()> {
        self.registry.update_reg_bytes(&self.shared, info)
    }

    /// Ends the registration: stops keeping the key alive and deletes it, revoking the lease
    /// when no other key uses it. Idempotent. After it returns the state is `Unregistered` and
    /// no event of this registration follows; a handler it was routed to has been called with
    /// `Unregistered` and is not running for it. A registration replaced by a newer
    /// registration of the same node (which owns the key) has ended by itself: this waits for
    /// that end, with the same guarantee, deletes nothing and returns `Ok`. A key another
    /// process has registered since (the same node, on that process's lease) is not deleted
    /// either: it is left to that process. Called from inside a handler (on the dispatcher
    /// thread, through a runtime's `block_on`), it returns without delivering to the handler,
    /// which could make no blocking call inside the runtime: call
    /// [`Handler::finish`](crate::Handler::finish) then, once out of it (the C library
    /// does); otherwise the handler gets `Unregistered` after the running handler returns.
    ///
    /// Shutdown rule, the same in every language: it never fails because etcd is unreachable.
    /// The delete is tried within the configured timeout; when etcd cannot be reached in that
    /// time a warning is logged and `Ok` returned, and the key disappears when its lease
    /// expires (within the TTL), or, when other members keep that lease alive, is deleted as
    /// soon as etcd answers again. A registration none of whose puts was sent yet (etcd
    /// unreachable ever since it was registered) ends at once: etcd holds nothing of it, and no
    /// put of it follows. An error is returned only when etcd answered and refused the
    /// delete (e.g. a permission error, "too many requests"), or for a registry from before
    /// `fork()`. The registration has ended all the same (state `Unregistered`, its
    /// `Unregistered` event sent; unregistering again returns `Ok`); the key refused is left to
    /// its lease: when other keys keep that lease alive, the delete is tried again with their
    /// next keep-alive (within a third of the TTL), and a refusal then that is not for lack of
    /// a resource is logged and the key left there as long as they keep the lease alive;
    /// otherwise the lease is revoked, or expires within the TTL.
    pub async fn unregister(&self) -> Result<()> {
        self.registry.unregister_reg(&self.shared).await
    }

    /// Like [`Registration::unregister`] (the registration ends whatever happens), but also
    /// returns the error when etcd could not be reached to delete the key, for a caller that
    /// reports it (the command-line tool's exit code). Bindings use `unregister`.
    pub async fn try_unregister(&self) -> Result<()> {
        self.registry.try_unregister_reg(&self.shared).await
    }
}

/// The status events of one registration ([`Registration::subscribe`]), ending after
/// `Unregistered`. Dropping it unsubscribes.
#[derive(Debug)]
pub struct StatusEvents {
    stream: EventStream,
}

/// Why [`StatusEvents::try_recv`] gave no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// None is queued now.
    Empty,
    /// The stream has ended (after `Unregistered`).
    Closed,
}

fn status_of(event: Event) -> Option<StatusEvent> {
    match event {
        Event::Status { event, .. } => Some(event),
        Event::Watch { .. } => None,
    }
}

impl StatusEvents {
    /// The next event; `None` after `Unregistered` has been read.
    pub async fn recv(&mut self) -> Option<StatusEvent> {
        self.stream.next().await.and_then(status_of)
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> std::result::Result<StatusEvent, TryRecvError> {
        match self.stream.try_next() {
            Next::Event(event) => status_of(event).ok_or(TryRecvError::Closed),
            Next::Empty => Err(TryRecvError::Empty),
            Next::Closed => Err(TryRecvError::Closed),
        }
    }

    /// How many events were dropped because this subscriber fell behind (see [`crate::events`]).
    pub fn dropped(&self) -> u64 {
        self.stream.dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EVENT_QUEUE_CAPACITY;

    fn registration(route: Option<Subscriber>) -> RegShared {
        let node = Node::new("n1", Info::new());
        RegShared::new(
            1,
            "api",
            node,
            "/s/api/n1".into(),
            "{}".into(),
            5,
            route,
            Arc::default(),
        )
    }

    fn retrying(attempt: u32) -> StatusEvent {
        StatusEvent::Retrying {
            attempt,
            delay: Duration::from_secs(1),
            error: Error::new(ErrorKind::Connection, "down"),
        }
    }

    #[test]
    fn the_first_subscriber_gets_every_event_so_far_in_order_and_later_ones_none() {
        let reg = registration(None);
        reg.emit(StatusEvent::Registered { lease_id: 7 });
        reg.emit(StatusEvent::KeepAliveLost {
            error: Error::new(ErrorKind::Connection, "down"),
        });
        let mut first = reg.subscribe();
        reg.emit(StatusEvent::Reregistered { lease_id: 8 });
        let mut second = reg.subscribe();
        reg.emit(StatusEvent::Unregistered);

        let mut seen = Vec::new();
        while let Ok(event) = first.try_recv() {
            seen.push(event.kind_str());
        }
        assert_eq!(
            seen,
            [
                "registered",
                "keepalive_lost",
                "reregistered",
                "unregistered"
            ]
        );
        assert_eq!(first.try_recv(), Err(TryRecvError::Closed));
        // A later subscriber gets what came after it subscribed, then the end.
        assert_eq!(second.try_recv(), Ok(StatusEvent::Unregistered));
        assert_eq!(second.try_recv(), Err(TryRecvError::Closed));
        // After the end, a subscription is ended at once.
        assert_eq!(reg.subscribe().try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn names_come_back_as_given_whether_or_not_the_key_holds_them() {
        let cases = [
            ("api", "n1", "/s/api/n1"),
            ("api", "n1", "api/n1"),
            ("a/pi", "n/1", "/s/a-pi/n-1"),
            ("api", "1", "/s/api/n1"),
            ("pi", "n1", "/s/api/n1"),
        ];
        for (service, node, key) in cases {
            let reg = RegShared::new(
                1,
                service,
                Node::new(node, Info::new()),
                key.into(),
                "{}".into(),
                5,
                None,
                Arc::default(),
            );
            assert_eq!((reg.service(), reg.node().name.as_str()), (service, node));
            let events = reg.subscribe();
            reg.emit(StatusEvent::Unregistered);
            match events.stream.try_next() {
                Next::Event(Event::Status {
                    service: s,
                    node: n,
                    ..
                }) => assert_eq!((&*s, &*n), (service, node), "{key}"),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_replaced_registration_puts_its_key_no_more() {
        let reg = registration(None);
        assert!(reg.claim_put());
        assert!(
            reg.claim_put(),
            "a registration puts its key as often as needed"
        );
        reg.mark_replaced();
        assert!(!reg.claim_put(), "the key is the newer registration's");
        let never_put = registration(None);
        never_put.mark_replaced();
        assert!(!never_put.claim_put());
    }

    #[test]
    fn a_late_first_subscriber_gets_the_registration_it_missed() {
        let reg = registration(None);
        reg.emit(StatusEvent::Registered { lease_id: 7 });
        let mut events = reg.subscribe();
        assert_eq!(
            events.try_recv(),
            Ok(StatusEvent::Registered { lease_id: 7 })
        );
        assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(reg.lease_id(), Some(7));
        // Before anything happened, the first subscriber gets nothing yet.
        let quiet = registration(None);
        assert_eq!(quiet.subscribe().try_recv(), Err(TryRecvError::Empty));
        assert_eq!(quiet.lease_id(), None);
    }

    #[test]
    fn unread_history_keeps_the_newest_events_and_counts_the_dropped() {
        let reg = registration(None);
        let extra = 10;
        // Outages of one retry each: two events per outage.
        for outage in 1..=(EVENT_QUEUE_CAPACITY / 2 + extra) as i64 {
            reg.emit(retrying(1));
            reg.emit(StatusEvent::Reregistered { lease_id: outage });
        }
        let mut events = reg.subscribe();
        assert_eq!(events.dropped(), 2 * extra as u64);
        let mut leases = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let StatusEvent::Reregistered { lease_id } = event {
                leases.push(lease_id);
            }
        }
        assert_eq!(leases.len(), EVENT_QUEUE_CAPACITY / 2);
        assert_eq!(leases.first(), Some(&(extra as i64 + 1)));
        assert_eq!(
            leases.last(),
            Some(&((EVENT_QUEUE_CAPACITY / 2 + extra) as i64))
        );
    }

    #[test]
    fn a_run_of_retries_nobody_read_is_kept_as_its_newest() {
        let reg = registration(None);
        reg.emit(StatusEvent::Registered { lease_id: 7 });
        for _ in 0..2 {
            reg.emit(StatusEvent::KeepAliveLost {
                error: Error::new(ErrorKind::Connection, "etcd down"),
            });
            for attempt in 1..=(3 * EVENT_QUEUE_CAPACITY) as u32 {
                reg.emit(retrying(attempt));
            }
            reg.emit(StatusEvent::Reregistered { lease_id: 8 });
        }
        let mut events = reg.subscribe();
        assert_eq!(events.dropped(), 0);
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(match event {
                StatusEvent::Retrying { attempt, .. } => format!("retrying {attempt}"),
                other => format!("{other:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_string(),
            });
        }
        let run = format!("retrying {}", 3 * EVENT_QUEUE_CAPACITY);
        assert_eq!(
            seen,
            [
                "Registered",
                "KeepAliveLost",
                &run,
                "Reregistered",
                "KeepAliveLost",
                &run,
                "Reregistered"
            ]
        );
        // A subscriber reading them gets every one.
        for attempt in 1..=3 {
            reg.emit(retrying(attempt));
        }
        let attempts: Vec<u32> = std::iter::from_fn(|| match events.try_recv() {
            Ok(StatusEvent::Retrying { attempt, .. }) => Some(attempt),
            _ => None,
        })
        .collect();
        assert_eq!(attempts, [1, 2, 3]);
    }

    #[test]
    fn a_routed_registration_keeps_no_history_for_subscribers() {
        let stream = EventStream::new();
        let reg = registration(Some(crate::events::Route::stream(&stream).subscriber()));
        reg.emit(StatusEvent::Registered { lease_id: 7 });
        let mut late = reg.subscribe();
        assert_eq!(late.try_recv(), Err(TryRecvError::Empty));
        assert!(matches!(
            stream.try_next(),
            Next::Event(Event::Status {
                event: StatusEvent::Registered { lease_id: 7 },
                ..
            })
        ));
    }
}
