//! One lease per distinct TTL, shared by every key registered with that TTL, and the task that
//! keeps it alive, repairs it and re-registers its keys after outages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, LeaseGrantResponse, LeaseKeepAliveStream, LeaseKeeper,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff;
use crate::conn::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::mux::{Delivery, Subscription, WatchMux};
use crate::registration::{KeyOf, RegShared, StatusEvent};

/// The most bytes of keys and values one transaction carries: etcd's default request limit
/// (`--max-request-bytes`), less room for the request's own framing. A server configured with a
/// lower limit refuses a transaction as too large, and its keys are then put one by one.
const MAX_TXN_BYTES: usize = crate::registry::MAX_REQUEST_BYTES - 64 * 1024;

/// What an operation of a transaction adds to its key and value in the request (its framing
/// and lease id), counted generously.
const TXN_OP_OVERHEAD: usize = 32;

/// A group's key watch watches up to this many of its keys one by one, and the others by their
/// directory (see [`KeyWatch`]). One: a group of a single key (the usual: one node per TTL per
/// process) costs etcd a watcher of that key only. More would cost each of the next keys a
/// watcher's creation right after its put, while readers wait for the key (measured: register
/// → visible with a lease held about 8 % slower with 32).
const EXACT_KEY_WATCHERS: usize = 1;

pub(crate) enum GroupCmd {
    Add(Arc<RegShared>),
    Remove {
        id: u64,
        /// The key now belongs to this newer registration of the same node: stop keeping it,
        /// but leave it in etcd, and revoke a lease left without members only once the
        /// successor is registered (it moves the key to its own lease first).
        successor: Option<Arc<RegShared>>,
        done: Option<oneshot::Sender<Result<()>>>,
        /// When the unregister waiting for `done` gives up: the revoke that may follow the
        /// delete is bounded by it, so that a key deleted is not reported as not deleted.
        deadline: Instant,
    },
    Close {
        done: oneshot::Sender<()>,
    },
    /// The member's info changed: put it (at once when connected, else at the next attempt).
    Update {
        id: u64,
    },
    /// A node unregistered from a group of another TTL, whose key this group's lease may still
    /// hold: an older registration of the node, here, put it, and the newer one had not moved it
    /// to its own lease yet. Deleted while on this lease (later, if etcd is not reached now).
    DeleteStale {
        key: Box<str>,
        done: oneshot::Sender<Result<()>>,
    },
}

/// What the registry keeps of a group.
pub(crate) struct GroupHandle {
    pub(crate) tx: mpsc::UnboundedSender<GroupCmd>,
    /// The lease held now, 0 for none.
    pub(crate) lease: Arc<AtomicI64>,
    /// Tells this group from a later one of the same TTL (see [`Retire`]).
    pub(crate) generation: u64,
}

/// Asked by a group left without members and with no command queued: whether it may end. The
/// registry answers under the lock it sends every command under, so that when it says yes
/// (and forgets the group) nothing can be queued any more; a registration of the TTL then
/// starts a new group. A registry using many TTLs in turn thus keeps no idle task per TTL.
pub(crate) type Retire = Box<dyn Fn(&mpsc::UnboundedReceiver<GroupCmd>) -> bool + Send + Sync>;

pub(crate) struct LeaseGroup {
    ttl_secs: i64,
    /// The TTL etcd granted the lease held: more than `ttl_secs` below etcd's minimum (a TTL of
    /// 1 s is granted about 2 s, more with longer election timeouts).
    granted_secs: i64,
    conn: Arc<Connection>,
    /// The registry's shared watch stream, for the watch of the group's keys.
    mux: Arc<WatchMux>,
    backoff_min: Duration,
    backoff_max: Duration,
    rx: mpsc::UnboundedReceiver<GroupCmd>,
    members: BTreeMap<u64, Arc<RegShared>>,
    /// The members' keys, each with the number of members holding it (two for a moment when
    /// a registration replaces another of the same node): [`Self::is_member_key`] in O(1), as
    /// it runs for every confirmation of the key watch.
    member_keys: HashMap<KeyOf, u32>,
    lease: Option<i64>,
    lease_shared: Arc<AtomicI64>,
    /// Set when the registry closes, so that an attempt in flight (which may wait for a
    /// silent etcd up to the timeout, several times) is abandoned at once.
    closing: watch::Receiver<bool>,
    /// A command taken from `rx` while collecting joins to put together, handled next.
    deferred: Option<GroupCmd>,
    /// Keys of members removed whose delete failed (etcd not reached, or refusing it: "too
    /// many requests", a permission taken away), left on the lease the other members keep
    /// alive: deleted (while still on it) with the next keep-alive, or they would stay for as
    /// long as the group lives. A retry etcd refuses for good (not for lack of a resource) is
    /// logged and dropped; one it does not get, or refuses for lack of a resource, waits for
    /// the next keep-alive again.
    unremoved: Vec<Box<str>>,
    retire: Retire,
    /// Set when a write carrying the lease was given up after its request may have reached a
    /// member (see [`Connection::call_write`]): that member may still carry it out later, after
    /// newer writes (an update's older info put back, the key of a node unregistered since put
    /// again on the lease its other members keep alive, a delete of a key put again since).
    /// The keep-alive loop then moves every key to a new lease and revokes this one: from then
    /// on such a write is refused, and one carried out before the revoke is undone by it.
    maybe_late: AtomicBool,
    /// No lease replacement before then (one per keep-alive period at most).
    replace_after: Instant,
    /// The grant of an attempt given up while etcd had it (the registry closing as the first
    /// registration of a TTL was being made): [`LeaseGroup::close`] has its answer waited for
    /// and the lease revoked, which would otherwise stay in etcd for a TTL after the close. (In a
    /// mutex only to make the group `Sync`; reached through `&mut self`, it is never locked.)
    granting: std::sync::Mutex<Option<Granting>>,
}

/// A lease grant in flight, kept beyond the attempt that sent it (see `granting`).
type Granting = Pin<Box<dyn Future<Output = Result<LeaseGrantResponse>> + Send>>;

/// Why the keep-alive loop ended.
enum Exit {
    /// The registry closed, or every handle is gone.
    Closed,
    /// The last member left; the lease is revoked.
    Empty,
    /// The keys moved to a new lease, established (see [`LeaseGroup::replace_lease`]).
    Replaced(Box<Established>),
    /// Lease or connection lost.
    Lost(Error),
}

/// What a command did to the group while it was between attempts.
enum Flow {
    Continue,
    Stop,
}

impl LeaseGroup {
    /// Starts the task of a new group, with `first` (its first member's `Add`) already queued:
    /// the task takes it when it first runs, instead of running and being woken again by it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn(
        handle: &tokio::runtime::Handle,
        ttl_secs: i64,
        conn: Arc<Connection>,
        mux: Arc<WatchMux>,
        backoff_min: Duration,
        backoff_max: Duration,
        closing: watch::Receiver<bool>,
        first: GroupCmd,
        generation: u64,
        retire: Retire,
    ) -> GroupHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        // Cannot fail: the receiver is right here.
        let _ = tx.send(first);
        let lease = Arc::new(AtomicI64::new(0));
        let group = LeaseGroup {
            ttl_secs,
            granted_secs: ttl_secs,
            conn,
            mux,
            backoff_min,
            backoff_max,
            rx,
            members: BTreeMap::new(),
            member_keys: HashMap::new(),
            lease: None,
            lease_shared: lease.clone(),
            closing,
            deferred: None,
            unremoved: Vec::new(),
            retire,
            maybe_late: AtomicBool::new(false),
            replace_after: Instant::now(),
            granting: std::sync::Mutex::new(None),
        };
        handle.spawn(group.run());
        GroupHandle {
            tx,
            lease,
            generation,
        }
    }

    fn set_lease(&mut self, lease: Option<i64>) {
        self.lease = lease;
        self.lease_shared
            .store(lease.unwrap_or(0), Ordering::SeqCst);
    }

    /// The next command: one put aside while collecting joins first, then the channel's.
    async fn recv(&mut self) -> Option<GroupCmd> {
        match self.deferred.take() {
            Some(cmd) => Some(cmd),
            None => self.rx.recv().await,
        }
    }

    async fn run(mut self) {
        let mut attempt = 0u32;
        // A new lease that the keep-alive loop established for the keys (see `Exit::Replaced`).
        let mut replaced: Option<Established> = None;
        loop {
            if self.members.is_empty() {
                attempt = 0;
                // Nothing left to keep: the lease is revoked (or left to expire) and no key
                // waits to be deleted (`unremoved` is kept only while members keep the lease).
                // Not while closing: the close to come revokes a lease a member left to it.
                if self.deferred.is_none() && !*self.closing.borrow() && (self.retire)(&self.rx) {
                    return;
                }
                match self.recv().await {
                    None => return Box::pin(self.abandoned()).await,
                    Some(cmd) => match Box::pin(self.handle_offline(cmd)).await {
                        Flow::Continue => continue,
                        Flow::Stop => return,
                    },
                }
            }
            let mut closing = self.closing.clone();
            let established = match replaced.take() {
                Some(established) => Some(Ok(established)),
                // A registry closed already starts no attempt.
                None => tokio::select! {
                    biased;
                    _ = closing.wait_for(|closing| *closing) => None,
                    result = Box::pin(self.establish()) => Some(result),
                },
            };
            let Some(established) = established else {
                Box::pin(self.close_now()).await;
                return;
            };
            let error = match established {
                Ok(established) => {
                    attempt = 0;
                    match Box::pin(self.maintain(established)).await {
                        Exit::Closed => return,
                        Exit::Empty => continue,
                        Exit::Replaced(established) => {
                            replaced = Some(*established);
                            continue;
                        }
                        Exit::Lost(error) => {
                            let error = self.conn.located(error);
                            tracing::warn!(ttl = self.ttl_secs, lease = ?self.lease, %error, "keep-alive lost, will retry");
                            for member in self.members.values() {
                                member.attempt_failed(&error);
                            }
                            error
                        }
                    }
                }
                Err(error) => {
                    for member in self.members.values() {
                        member.attempt_failed(&error);
                    }
                    error
                }
            };
            attempt = attempt.saturating_add(1);
            let mut delay = backoff::delay(attempt, self.backoff_min, self.backoff_max);
            // The lease was revoked or expired while etcd answered (someone else revoked it, or
            // a woken stale leader did): the keys are gone now, and etcd is there. The first
            // retry goes at once; the backoff paces the next ones.
            if attempt == 1 && error.kind() == ErrorKind::NotFound {
                delay = Duration::ZERO;
            }
            // Credentials and certificates stay wrong until someone fixes them: say it once.
            if attempt == 1 || !matches!(error.kind(), ErrorKind::Auth | ErrorKind::Tls) {
                tracing::warn!(ttl = self.ttl_secs, attempt, ?delay, %error, "registration attempt failed, retrying");
            } else {
                tracing::debug!(ttl = self.ttl_secs, attempt, ?delay, %error, "registration attempt failed, retrying");
            }
            for member in self.members.values() {
                member.emit(StatusEvent::Retrying {
                    attempt,
                    delay,
                    error: error.clone(),
                });
            }
            // The step is slept with etcd probed meanwhile: once it answers again after it could
            // not be reached, the attempt starts at once (after a short random spread) instead
            // of sleeping through the rest of the step.
            let wake = Instant::now() + delay;
            let conn = self.conn.clone();
            // A connection lost or refused, or etcd silent until a deadline: it was not
            // reached. (An etcd that answers its status but cannot serve, e.g. without quorum,
            // is then retried once per call timeout; any answer gets the whole step.)
            let unreached = matches!(error.kind(), ErrorKind::Connection | ErrorKind::Timeout);
            let mut back = Box::pin(conn.wait_back(wake, unreached));
            loop {
                tokio::select! {
                    came_back = &mut back => {
                        if came_back {
                            tokio::time::sleep(backoff::spread(backoff::RECONNECT_SPREAD)).await;
                        }
                        break;
                    }
                    cmd = self.recv() => match cmd {
                        None => return Box::pin(self.abandoned()).await,
                        Some(cmd) => if let Flow::Stop = Box::pin(self.handle_offline(cmd)).await { return },
                    },
                }
                if self.members.is_empty() {
                    break;
                }
            }
        }
    }

    /// A command while there is no live keep-alive: members join the next attempt.
    async fn handle_offline(&mut self, cmd: GroupCmd) -> Flow {
        match cmd {
            GroupCmd::Add(reg) => {
                self.add_member(reg);
                Flow::Continue
            }
            GroupCmd::Remove {
                id,
                successor,
                done,
                deadline,
            } => {
                let result = self.remove(id, successor, None, deadline).await;
                if let Some(done) = done {
                    let _ = done.send(result);
                }
                Flow::Continue
            }
            GroupCmd::Close { done } => {
                self.close().await;
                let _ = done.send(());
                Flow::Stop
            }
            // The next attempt puts every member whose info etcd does not have yet.
            GroupCmd::Update { .. } => Flow::Continue,
            // Deleted once the lease is kept alive again; without members the lease is not
            // kept, and the key expires with it.
            GroupCmd::DeleteStale { key, done } => {
                if !self.members.is_empty() {
                    self.unremoved.push(key);
                }
                let _ = done.send(Ok(()));
                Flow::Continue
            }
        }
    }

    /// Gets a lease (the old one first: leases survive etcd restarts), opens its keep-alive
    /// stream and makes sure every member's key is in etcd on it.
    ///
    /// Two round trips for an old lease: the renewal of the old lease and the check
    /// of its keys go out together, then the puts of what is missing. For a new lease three:
    /// the grant, the puts, then its keep-alive stream; the keys are in etcd after two.
    async fn establish(&mut self) -> Result<Established> {
        let attempt = self.conn.attempt_timeout();
        if let Some(id) = self.lease {
            // etcd holds the renewal of a lease that expired but is not revoked yet until its
            // revoke (up to a second or more after an outage, with many leases to revoke): a
            // check saying it expired does not wait for that.
            let (renewed, checked) = {
                let renew = self.keep_alive(id, attempt);
                let check = self.attached_keys(id, attempt);
                tokio::pin!(renew, check);
                tokio::select! {
                checked = &mut check => match checked {
                    Ok((None, revision)) => (
                        Err(Error::new(ErrorKind::NotFound, format!("lease {id:x} expired"))),
                        Ok((None, revision)),
                    ),
                    checked => (renew.await, checked),
                },
                renewed = &mut renew => match renewed {
                    Err(e) if e.kind() == ErrorKind::NotFound => (Err(e), Ok((None, 0))),
                    renewed => (renewed, check.await),
                },
                }
            };
            match renewed {
                Ok(pair) => {
                    let (attached, revision) = checked?;
                    let Some(attached) = attached else {
                        self.set_lease(None);
                        return Err(Error::new(
                            ErrorKind::NotFound,
                            format!("lease {id:x} expired"),
                        ));
                    };
                    let missing = self.to_put(&attached);
                    let (refused, put_at) = self.put_all(id, &missing, attempt).await?;
                    return Ok(self.established(pair, refused, revision, put_at));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    tracing::info!(
                        lease = id,
                        "lease expired while disconnected; granting a new one"
                    );
                    self.set_lease(None);
                }
                Err(e) => return Err(e),
            }
        }
        let ttl = self.ttl_secs;
        // A grant that times out on one member may still succeed there: that lease is never
        // used and expires after one TTL. One in flight when the registry closes is kept in
        // `granting` for the close to revoke.
        let granting = self.granting.get_mut().unwrap_or_else(|e| e.into_inner());
        let grant = granting.insert(grant(&self.conn, ttl, None));
        let granted = grant.await;
        *granting = None;
        let granted = granted?;
        let id = granted.id();
        let granted_at = granted.header().map_or(0, |h| h.revision());
        self.granted_secs = granted.ttl();
        self.set_lease(Some(id));
        // Writes carrying the lease lost cannot land any more.
        self.maybe_late.store(false, Ordering::SeqCst);
        tracing::debug!(lease = id, ttl, "granted lease");
        // A fresh lease has its whole TTL: its keys need not wait for the keep-alive's answer.
        // The keep-alive stream is opened after the puts, not beside them: etcd then serves the
        // puts alone, and the keys become visible sooner (registering a node is the first of
        // its TTL in most programs). The members are registered once both are done and the
        // watch of their keys is open (see `maintain`).
        let missing = self.to_put(&HashSet::new());
        let (refused, put_at) = self.put_all(id, &missing, attempt).await?;
        let pair = self.keep_alive(id, attempt).await;
        Ok(self.established(pair?, refused, granted_at, put_at))
    }

    /// Members to put on a lease holding `attached`: keys missing from it, and keys whose info
    /// was updated since their last put (e.g. while etcd was down).
    fn to_put(&self, attached: &HashSet<Vec<u8>>) -> Vec<Arc<RegShared>> {
        self.members
            .values()
            .filter(|m| !attached.contains(m.key.as_bytes()) || m.stale())
            .cloned()
            .collect()
    }

    /// What the keep-alive loop starts from: the watch of the keys starts after the earliest of
    /// the revisions seen (0 for none), and every member whose put was not refused is to be
    /// told it is registered (see [`LeaseGroup::announce`]).
    fn established(
        &self,
        keep_alive: KeepAlive,
        refused: Refused,
        checked_at: i64,
        put_at: i64,
    ) -> Established {
        let revision = [checked_at, put_at]
            .into_iter()
            .filter(|r| *r > 0)
            .min()
            .unwrap_or(0);
        Established {
            keep_alive,
            revision,
            refused,
        }
    }

    /// Every member whose put was not refused is registered on `lease`.
    fn announce(&self, lease: i64, refused: &Refused) {
        for member in self.members.values() {
            if !refused.contains_key(&member.id) {
                member.registered(lease);
            }
        }
        tracing::debug!(
            lease,
            ttl = self.ttl_secs,
            registered = self.members.len() - refused.len(),
            "registered"
        );
    }

    /// Opens a keep-alive stream of lease `id` on the first member that answers (opening it is
    /// a renewal: etcd answers the first keep-alive before the stream is handed over).
    async fn keep_alive(&self, id: i64, attempt: Duration) -> Result<KeepAlive> {
        let (member, (keeper, stream)) = self
            .conn
            .call_at("opening the lease keep-alive", attempt, |c| {
                let mut lease = c.lease_client();
                async move { lease.keep_alive(id).await }
            })
            .await?;
        Ok(KeepAlive {
            member,
            keeper,
            stream,
        })
    }

    /// The keys attached to a live lease, or `None` when the lease is gone, and the revision
    /// etcd answered at. etcd tells a lease it does not hold by a TTL of -1; it gives the
    /// remaining TTL in whole seconds, rounded down, so a live lease with less than a second
    /// left (always so for a TTL of 1 s) answers 0.
    async fn attached_keys(
        &self,
        id: i64,
        attempt: Duration,
    ) -> Result<(Option<HashSet<Vec<u8>>>, i64)> {
        let result = self
            .conn
            .call_at("checking the lease", attempt, |c| {
                let mut lease = c.lease_client();
                async move {
                    lease
                        .time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
                        .await
                }
            })
            .await;
        let resp = match result {
            Ok((_, resp)) => resp,
            // The list of keys is larger than etcd-client's lease client takes (4 MiB, some
            // 100 000 keys; it has no setting): treat every key as missing, so all are put
            // again. Whether the lease lives is told by the keep-alive sent beside this.
            Err(e) if e.message().contains("message length too large") => {
                tracing::debug!(
                    lease = id,
                    "the lease's key list is too large to read; putting every key"
                );
                return Ok((Some(HashSet::new()), 0));
            }
            Err(e) => return Err(e),
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.ttl() < 0 {
            return Ok((None, revision));
        }
        Ok((Some(resp.keys().iter().cloned().collect()), revision))
    }

    /// Puts keys on the lease, in transactions of at most etcd's limit of operations
    /// (`Connection::txn_ops`: its default, or the lower limit a server was found to have) and
    /// [`MAX_TXN_BYTES`] bytes. A member whose own put is refused (too large for this server, no
    /// permission for its key) is told so and retried at the next check; a transport failure
    /// fails the whole attempt. An etcd out of space or overloaded refuses every key alike: the
    /// members not put yet are refused with it at once, without a request each.
    /// Returns the members whose put was refused, and the revision of the first transaction
    /// (0 for none).
    async fn put_all(
        &self,
        lease: i64,
        members: &[Arc<RegShared>],
        attempt: Duration,
    ) -> Result<(Refused, i64)> {
        let mut refused = Refused::new();
        let mut first = 0;
        let mut start = 0;
        // So many keys that their puts outlast a third of the TTL (a hundred thousand nodes
        // of a short TTL): the lease is renewed on the way, or it would expire before the
        // last of them, and every attempt would start again.
        let renew_every = Duration::from_secs(self.ttl_secs.max(1) as u64) / 3;
        let mut renew_at = Instant::now() + renew_every;
        while start < members.len() {
            if Instant::now() >= renew_at {
                self.keep_alive(lease, attempt).await?;
                renew_at = Instant::now() + renew_every;
            }
            // The next transaction: as many members as fit, their values read now.
            let mut chunk: Vec<Arc<RegShared>> = Vec::new();
            let mut values = Vec::new();
            let mut bytes = 0;
            let mut taken = 0;
            let max_ops = self.conn.txn_ops.load(Ordering::Relaxed).max(1);
            for m in &members[start..] {
                if values.len() == max_ops {
                    break;
                }
                let (value, generation) = m.value();
                let size = m.key.len() + value.len() + TXN_OP_OVERHEAD;
                if !values.is_empty() && bytes + size > MAX_TXN_BYTES {
                    break;
                }
                taken += 1;
                // Left before its first put: not put any more (see `RegShared::leave`). Claimed
                // here, as its put is about to be sent, not before: one in a later transaction
                // that is never sent is not taken for put.
                if !m.claim_put() {
                    continue;
                }
                bytes += size;
                chunk.push(m.clone());
                values.push((value, generation));
            }
            let rest = &members[start..];
            start += taken;
            let chunk = chunk.as_slice();
            if chunk.is_empty() {
                continue;
            }
            // One key: a plain put, which etcd serves a little faster than a transaction.
            if let [member] = chunk {
                match self.put_one(lease, member, attempt).await? {
                    Ok(revision) if first == 0 => first = revision,
                    Ok(_) => {}
                    Err(e) => {
                        refused.insert(member.id, e);
                    }
                }
                continue;
            }
            let mut generations = Vec::with_capacity(chunk.len());
            let ops: Vec<TxnOp> = chunk
                .iter()
                .zip(values)
                .map(|(m, (value, generation))| {
                    generations.push(generation);
                    TxnOp::put(
                        m.key.as_bytes(),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            let result = self
                .conn
                .call_write("registering keys", attempt, &self.maybe_late, |c| {
                    let (mut kv, txn) = (c.kv_client(), Txn::new().and_then(ops.clone()));
                    async move { kv.txn(txn).await }
                })
                .await;
            match result {
                Ok((_, resp)) => {
                    if first == 0 {
                        first = resp.header().map_or(0, |h| h.revision());
                    }
                    for (member, generation) in chunk.iter().zip(generations) {
                        member.landed(generation);
                    }
                }
                // A server with a lower `--max-txn-ops`: the same keys again, in transactions
                // of half as many operations, until they fit (the registry keeps that size).
                Err(e) if is_too_many_ops(&e) => {
                    let fewer = (chunk.len() / 2).max(1);
                    let before = self.conn.txn_ops.fetch_min(fewer, Ordering::Relaxed);
                    if fewer < before {
                        tracing::info!(operations = fewer, error = %e, "etcd refused a transaction as having too many operations; putting keys in smaller ones");
                    }
                    start -= taken;
                }
                Err(e) if e.kind() == ErrorKind::ResourceExhausted => {
                    tracing::warn!(count = rest.len(), error = %e, "etcd refused the keys");
                    refuse_all(&mut refused, rest, &e);
                    break;
                }
                Err(e) if is_per_key(&e) => {
                    // Find the culprit(s), or fit a server's lower size limit: put them one by
                    // one.
                    for member in chunk {
                        if let Err(e) = self.put_one(lease, member, attempt).await? {
                            refused.insert(member.id, e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((refused, first))
    }

    /// Puts one key; a per-key refusal is reported to its registration only. Returns the
    /// revision of the put, or etcd's refusal.
    async fn put_one(
        &self,
        lease: i64,
        member: &Arc<RegShared>,
        attempt: Duration,
    ) -> Result<std::result::Result<i64, Error>> {
        let (value, generation) = member.value();
        let result = self
            .conn
            .call_write("registering a key", attempt, &self.maybe_late, |c| {
                let (mut kv, key, value) = (c.kv_client(), member.key.as_bytes(), value.clone());
                async move {
                    kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await;
        match result {
            Ok((_, resp)) => {
                member.landed(generation);
                Ok(Ok(resp.header().map_or(0, |h| h.revision())))
            }
            Err(e) if is_per_key(&e) => {
                tracing::warn!(key = %member.key, error = %e, "etcd refused the key");
                member.attempt_failed(&e);
                Ok(Err(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps the lease alive: a keep-alive every TTL/3 and nothing else while nothing changes;
    /// a watch of the group's own keys (deletions only, see [`KeyWatch`]) notices a key deleted
    /// or the lease revoked by someone else as it happens, and the keys are then checked and put
    /// back. Without a working watch (not allowed, or broken until the next keep-alive), the
    /// lease's keys are checked with every keep-alive instead. Members joining meanwhile are put
    /// together, in transactions.
    ///
    /// A keep-alive not answered within [`answer_deadline`] (a sixth of the TTL: half the time
    /// until the next one is due) means the member is paused, overloaded or cut off: it is
    /// ejected and the lease is renewed at once through another member, while it still has most
    /// of its TTL left (see [`LeaseGroup::renew_elsewhere`]).
    async fn maintain(&mut self, established: Established) -> Exit {
        let Some(lease) = self.lease else {
            return Exit::Lost(Error::new(ErrorKind::Internal, "no lease"));
        };
        let Established {
            keep_alive:
                KeepAlive {
                    mut member,
                    mut keeper,
                    mut stream,
                },
            revision,
            refused,
        } = established;
        let ttl = Duration::from_secs(self.ttl_secs.max(1) as u64);
        let period = (ttl / 3).max(Duration::from_millis(500));
        let answer_within = answer_deadline(ttl);
        // How long one member may take for a call of this loop while others are left.
        let attempt = answer_within.min(self.conn.attempt_timeout());
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = Instant::now();
        // How long the lease lives after a renewal: the TTL etcd granted, which is more than
        // the one asked for below etcd's minimum. Counting a lease lost one requested TTL
        // after its last answer would take a stall of etcd shorter than its real TTL for a
        // loss, and register everything again.
        let mut lease_ttl = answered_ttl(ttl, self.granted_secs);
        // When the oldest keep-alive still unanswered was sent.
        let mut waiting_since: Option<Instant> = None;
        // The members are registered once all of it is in place: their keys, the keep-alive and
        // the watch of the keys. A caller waiting for that then starts its next work after this
        // registration's, not beside its last step. A watch slow to open (a member that
        // answered the keep-alive but is slow now) delays it by `attempt` at most.
        let (opened, announced) = {
            let opening = tokio::time::timeout(period, self.watch_keys(revision, attempt));
            tokio::pin!(opening);
            tokio::select! {
                opened = &mut opening => (opened, false),
                _ = tokio::time::sleep(attempt) => {
                    self.announce(lease, &refused);
                    ((&mut opening).await, true)
                }
            }
        };
        let mut watch = opened
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, "opening the key watch")))
            .map_err(|e| tracing::debug!(error = %e, "no watch of the keys; checking them with every keep-alive"))
            .ok();
        if !announced {
            self.announce(lease, &refused);
        }
        // Whether etcd refused the watch (e.g. no read permission): then the keys are checked
        // with every keep-alive for as long as this lease is kept.
        let mut watch_refused = false;
        // Members whose put etcd refused (no space left, a value too large for this server,
        // no permission for the key) are put again with backoff, for as long as they are
        // members and the lease is kept: (when, retry number). An operator who frees space or
        // grants the permission sees them registered without restarting anything.
        let mut retry: Option<(Instant, u32)> = None;
        // Those members (a key deleted by someone else and refused when put back is not stale:
        // its info had landed).
        let mut to_retry: HashSet<u64> = HashSet::new();
        self.retry_refused(&mut retry, &mut to_retry, 1, &refused);
        // Members refused when they joined: their keys are not in the watch yet.
        let mut unwatched: HashSet<u64> = HashSet::new();
        // A check of the keys did not get done (etcd did not answer it in time): the next
        // keep-alive checks them, even with a watch.
        let mut recheck = false;
        loop {
            let lost_at = last_answer + lease_ttl;
            if self.maybe_late.load(Ordering::SeqCst)
                && Instant::now() >= self.replace_after
                && !*self.closing.borrow()
            {
                self.replace_after = Instant::now() + period;
                match before_loss(lost_at, lease_ttl, self.replace_lease(lease, attempt)).await {
                    Ok(established) => return Exit::Replaced(Box::new(established)),
                    Err(e) => {
                        tracing::debug!(lease, error = %e, "replacing the lease failed; keeping it for now")
                    }
                }
            }
            let silent_at = waiting_since.map(|sent| sent + answer_within);
            let silence = tokio::time::sleep_until(silent_at.unwrap_or(lost_at));
            // Biased, in this order: a keep-alive answer that came while a step took long (a
            // slow delete, a check) is read before the silence and loss deadlines it beat,
            // which are due by then too (tokio's random pick could eject a healthy member or
            // count the lease lost); and the keep-alive due, the silence of the member that
            // carries it and the loss go before commands, which may keep coming (many updates
            // or unregisters) and would otherwise let the lease lapse on a silent member.
            let failover = tokio::select! {
                biased;
                message = stream.message() => match message {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        last_answer = Instant::now();
                        lease_ttl = answered_ttl(ttl, resp.ttl());
                        waiting_since = None;
                        self.conn.streamed(member);
                        None
                    }
                    Ok(Some(_)) => {
                        self.set_lease(None);
                        return Exit::Lost(Error::new(ErrorKind::NotFound, format!("lease {lease:x} expired or was revoked")));
                    }
                    Ok(None) => Some(Error::new(ErrorKind::Connection, "the keep-alive stream was closed by etcd")),
                    Err(e) => Some(Error::from(e)),
                },
                _ = ticker.tick() => {
                    match keeper.keep_alive().await {
                        Err(e) => Some(Error::from(e)),
                        Ok(()) => {
                            waiting_since.get_or_insert_with(Instant::now);
                            if !self.unremoved.is_empty() {
                                self.delete_unremoved(lease, attempt).await;
                            }
                            // No watch: try to open it again (then check once, for what was
                            // deleted while there was none), else check every time.
                            let unwatched_keys = watch.is_none();
                            if unwatched_keys && !watch_refused {
                                watch = tokio::time::timeout(attempt, self.watch_keys(0, attempt))
                                    .await
                                    .ok()
                                    .and_then(|w| w.ok());
                                if watch.is_some() {
                                    // It watches every member's key.
                                    unwatched.clear();
                                }
                            }
                            if unwatched_keys || recheck {
                                match before_loss(lost_at, lease_ttl, self.check_keys(lease, attempt, period)).await {
                                    Err(e) => return Exit::Lost(e),
                                    Ok(Some(refused)) => {
                                        recheck = false;
                                        self.retry_refused(&mut retry, &mut to_retry, 1, &refused);
                                    }
                                    Ok(None) => recheck = true,
                                }
                            }
                            None
                        }
                    }
                }
                // Before commands, which may keep coming: their deadlines pass while a
                // command is handled, and must not wait for the queue to drain.
                _ = silence, if silent_at.is_some() => Some(Error::new(
                    ErrorKind::Timeout,
                    format!("keep-alive unanswered for {answer_within:?}"),
                )),
                _ = tokio::time::sleep_until(lost_at) => {
                    self.conn.eject(member, &unanswered(lease_ttl));
                    return Exit::Lost(unanswered(lease_ttl));
                }
                cmd = self.recv() => match cmd {
                    None => {
                        self.abandoned().await;
                        return Exit::Closed;
                    }
                    Some(GroupCmd::Close { done }) => {
                        self.close().await;
                        let _ = done.send(());
                        return Exit::Closed;
                    }
                    Some(GroupCmd::Add(reg)) => {
                        // Everyone joining right now goes in the same transactions.
                        let mut joining = vec![reg];
                        loop {
                            match self.rx.try_recv() {
                                Ok(GroupCmd::Add(reg)) => joining.push(reg),
                                Ok(other) => {
                                    self.deferred = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        for reg in &joining {
                            self.add_member(reg.clone());
                        }
                        match before_loss(lost_at, lease_ttl, self.put_all(lease, &joining, attempt)).await {
                            Ok((refused, revision)) => {
                                let landed: Vec<&Arc<RegShared>> =
                                    joining.iter().filter(|r| !refused.contains_key(&r.id)).collect();
                                for reg in &landed {
                                    reg.registered(lease);
                                }
                                unwatched.extend(refused.keys());
                                self.retry_refused(&mut retry, &mut to_retry, 1, &refused);
                                if let Some(w) = watch.as_mut() {
                                    if w.add(landed.iter().map(|r| r.key.as_bytes()), revision).is_err() {
                                        watch = None;
                                    }
                                }
                            }
                            Err(e) => return Exit::Lost(e),
                        }
                        None
                    }
                    Some(GroupCmd::Remove {
                        id,
                        successor,
                        done,
                        deadline,
                    }) => {
                        let gone = self.members.get(&id).cloned();
                        // Bounded: the keep-alive must not wait behind a delete to a silent
                        // member. Two members' attempts: one silent member does not keep the
                        // key from being deleted through another.
                        let result = self.remove(id, successor, Some(attempt), deadline).await;
                        if let Some(done) = done {
                            let _ = done.send(result);
                        }
                        if self.members.is_empty() {
                            return Exit::Empty;
                        }
                        // A member etcd refused was never added to the watch: cancelling its
                        // key would take a count off the directory that watches other members.
                        let watched = !unwatched.remove(&id);
                        if let (Some(w), Some(gone), true) = (watch.as_mut(), gone, watched) {
                            let key = gone.key.as_bytes();
                            if !self.is_member_key(key) && w.cancel(key).is_err() {
                                watch = None;
                            }
                        }
                        None
                    }
                    Some(GroupCmd::DeleteStale { key, done }) => {
                        // Bounded as a `Remove`'s delete; only this key (not those waiting in
                        // `unremoved`, whose failures are not this unregister's).
                        let result = match self.is_member_key(key.as_bytes()) {
                            true => Ok(()),
                            false => self.delete_or_keep(key, lease, attempt).await,
                        };
                        let _ = done.send(result);
                        None
                    }
                    Some(GroupCmd::Update { id }) => {
                        // Not stale: a put since the update (an earlier Update command's, which
                        // read the newest info) already carried it.
                        // Nor when it left before its first put (its `Remove` is queued).
                        let Some(reg) = self.members.get(&id).filter(|m| m.stale() && m.claim_put()).cloned() else {
                            continue;
                        };
                        match before_loss(lost_at, lease_ttl, self.put_one(lease, &reg, attempt)).await {
                            Ok(Ok(_)) => reg.registered(lease),
                            Ok(Err(e)) => self.retry_refused(&mut retry, &mut to_retry, 1, &Refused::from([(id, e)])),
                            // The next attempt puts it, as the member is still stale.
                            Err(e) => return Exit::Lost(e),
                        }
                        None
                    }
                },
                _ = tokio::time::sleep_until(retry.map_or(lost_at, |(at, _)| at)), if retry.is_some() => {
                    let tries = retry.map_or(1, |(_, n)| n);
                    // Every member etcd may hold an older info of, or none (never put).
                    let pending: Vec<Arc<RegShared>> = self
                        .members
                        .values()
                        .filter(|m| m.stale() || to_retry.contains(&m.id))
                        .cloned()
                        .collect();
                    to_retry.clear();
                    tracing::debug!(count = pending.len(), tries, "putting the refused keys again");
                    match before_loss(lost_at, lease_ttl, self.put_all(lease, &pending, attempt)).await {
                        Ok((refused, revision)) => {
                            let landed: Vec<&Arc<RegShared>> =
                                pending.iter().filter(|r| !refused.contains_key(&r.id)).collect();
                            for reg in &landed {
                                reg.registered(lease);
                            }
                            let newly: Vec<&[u8]> = landed
                                .iter()
                                .filter(|r| unwatched.remove(&r.id))
                                .map(|r| r.key.as_bytes())
                                .collect();
                            if let Some(w) = watch.as_mut() {
                                if w.add(newly.into_iter(), revision).is_err() {
                                    watch = None;
                                }
                            }
                            retry = None;
                            self.retry_refused(&mut retry, &mut to_retry, tries.saturating_add(1), &refused);
                        }
                        Err(e) => return Exit::Lost(e),
                    }
                    None
                }
                seen = KeyWatch::next(&mut watch) => {
                    match seen {
                        Ok(deleted) => {
                            if deleted.iter().any(|k| self.is_member_key(k)) {
                                match before_loss(lost_at, lease_ttl, self.check_keys(lease, attempt, period)).await {
                                    Err(e) => return Exit::Lost(e),
                                    // A key put back may have been refused (e.g. no space left).
                                    Ok(Some(refused)) => self.retry_refused(&mut retry, &mut to_retry, 1, &refused),
                                    // The deletion is not seen again: checked with the next
                                    // keep-alive, and each one after until a check is done.
                                    Ok(None) => recheck = true,
                                }
                            }
                        }
                        Err(refused) => {
                            // Checked with the next keep-alive (and, unless etcd refused the
                            // watch itself, watched again from then on).
                            tracing::debug!(refused, "the watch of the keys ended");
                            watch_refused |= refused;
                            watch = None;
                        }
                    }
                    None
                }
            };
            let Some(error) = failover else { continue };
            self.conn.eject(member, &error);
            // A stream that broke (member killed or restarted) with no other member to turn to
            // is a lost connection: the group re-establishes itself from scratch, with backoff.
            if error.kind() == ErrorKind::Connection && !self.conn.has_alternative(member) {
                return Exit::Lost(error);
            }
            // The watch may be on the member given up: it is started again with the next
            // keep-alive (and the keys checked once then), on a member that answers (a shared
            // stream on the member given up moves, see `WatchMux::subscribe`).
            watch = None;
            match before_loss(
                lost_at,
                lease_ttl,
                self.renew_elsewhere(lease, member, &error, attempt),
            )
            .await
            {
                Ok(fresh) => {
                    member = fresh.member;
                    keeper = fresh.keeper;
                    stream = fresh.stream;
                    last_answer = Instant::now();
                    waiting_since = None;
                    ticker.reset();
                }
                Err(e) => {
                    if e.kind() == ErrorKind::NotFound {
                        self.set_lease(None);
                    }
                    return Exit::Lost(e);
                }
            }
        }
    }

    /// When to put refused keys again, for retry number `tries`: the registration backoff.
    fn retry_after(&self, tries: u32) -> (Instant, u32) {
        let delay = backoff::delay(tries, self.backoff_min, self.backoff_max);
        (Instant::now() + delay, tries)
    }

    /// Schedules the put of the `refused` members again (retry number `tries`), unless it is
    /// scheduled already, notes them in `to_retry`, and tells each of them when and why, as
    /// after any failed attempt.
    fn retry_refused(
        &self,
        retry: &mut Option<(Instant, u32)>,
        to_retry: &mut HashSet<u64>,
        tries: u32,
        refused: &Refused,
    ) {
        if refused.is_empty() {
            return;
        }
        to_retry.extend(refused.keys());
        let (at, _) = *retry.get_or_insert_with(|| self.retry_after(tries));
        let delay = at.saturating_duration_since(Instant::now());
        for (id, error) in refused {
            if let Some(member) = self.members.get(id) {
                member.emit(StatusEvent::Retrying {
                    attempt: 0,
                    delay,
                    error: error.clone(),
                });
            }
        }
    }

    /// Whether `key` is the key of a member.
    fn is_member_key(&self, key: &[u8]) -> bool {
        self.member_keys.contains_key(key)
    }

    fn add_member(&mut self, reg: Arc<RegShared>) {
        // A key waiting to be deleted is this registration's now: a newer registration of the
        // node it may be handed to (see `GroupCmd::Remove`) finds it in etcd.
        if !self.unremoved.is_empty() {
            self.unremoved
                .retain(|key| key.as_bytes() != reg.key.as_bytes());
        }
        *self.member_keys.entry(KeyOf(reg.clone())).or_insert(0) += 1;
        if let Some(old) = self.members.insert(reg.id, reg) {
            self.forget_key(&old);
        }
    }

    fn remove_member(&mut self, id: u64) -> Option<Arc<RegShared>> {
        let reg = self.members.remove(&id)?;
        self.forget_key(&reg);
        Some(reg)
    }

    /// Called once `reg` has left `members`.
    fn forget_key(&mut self, reg: &Arc<RegShared>) {
        let Some((held, count)) = self.member_keys.remove_entry(reg.key.as_bytes()) else {
            return;
        };
        if count <= 1 {
            return;
        }
        // Another member holds the same key (the node registered again): the map's key must
        // be a member that stays, or it would keep the one leaving alive.
        let held = if Arc::ptr_eq(&held.0, reg) {
            match self.members.values().find(|m| m.key == reg.key) {
                Some(member) => KeyOf(member.clone()),
                None => return,
            }
        } else {
            held
        };
        self.member_keys.insert(held, count - 1);
    }

    /// Opens a watch of every member's key, for deletions from `revision` on (0: from now).
    async fn watch_keys(&self, revision: i64, attempt: Duration) -> Result<KeyWatch> {
        let keys: Vec<&[u8]> = self.members.values().map(|m| m.key.as_bytes()).collect();
        let Some(first) = keys.first() else {
            return Err(Error::new(ErrorKind::Internal, "no key to watch"));
        };
        // The first key starts the watch; it is watched by itself (see `KeyWatch::unit_of`).
        let first = first.to_vec();
        let options = KeyWatch::options(&first, revision);
        let sub = self
            .mux
            .subscribe(&first, options, attempt, false, None)
            .await?;
        let mut watch = KeyWatch {
            tokens: HashMap::from([(first.clone(), sub.first())]),
            sub,
            counts: HashMap::from([(first, 1)]),
            exact: 1,
            from: revision,
        };
        watch.add(keys[1..].iter().copied(), revision)?;
        Ok(watch)
    }

    /// The member at `from` failed or went silent: opens a new keep-alive stream of `lease` on
    /// another member (which renews it) without waiting for anything else.
    async fn renew_elsewhere(
        &self,
        lease: i64,
        from: usize,
        why: &Error,
        attempt: Duration,
    ) -> Result<KeepAlive> {
        let started = Instant::now();
        let fresh = self.keep_alive(lease, attempt).await?;
        tracing::warn!(
            lease,
            ttl = self.ttl_secs,
            from = %self.conn.endpoint(from),
            to = %self.conn.endpoint(fresh.member),
            took = ?started.elapsed(),
            error = %why,
            "keep-alive moved to another etcd member; lease renewed"
        );
        Ok(fresh)
    }

    /// Moves every member's key from `old` to a new lease, opens its keep-alive, then revokes
    /// `old` (see `maybe_late`). The keys are in etcd throughout, on one lease or the other, and
    /// their watchers see no change (a put of the same info). On failure `old` is kept, with its
    /// keys as they were (the new lease, revoked or left to expire, takes nothing with it that
    /// `old` lacks), and the replacement is tried again later. The same when the call is dropped
    /// before it finished (the keep-alive deadline of `old` came first): every await is before
    /// the new lease is taken on.
    async fn replace_lease(&mut self, old: i64, attempt: Duration) -> Result<Established> {
        self.maybe_late.store(false, Ordering::SeqCst);
        // Until the new lease is taken on, an end (an error, or the call dropped) undoes it.
        let mut undo = Unfinished {
            maybe_late: &self.maybe_late,
            conn: &self.conn,
            granting: None,
            granted: None,
        };
        let ttl = self.ttl_secs;
        let grant = undo.granting.insert(grant(&self.conn, ttl, Some(attempt)));
        let granted = grant.await;
        undo.granting = None;
        let granted = granted?;
        let id = granted.id();
        undo.granted = Some(id);
        let granted_at = granted.header().map_or(0, |h| h.revision());
        let granted_secs = granted.ttl();
        let members: Vec<Arc<RegShared>> = self.members.values().cloned().collect();
        // The keep-alive first: failing, it leaves every key where it was.
        let moved = async {
            let keep_alive = self.keep_alive(id, attempt).await?;
            let (refused, put_at) = self.put_all(id, &members, attempt).await?;
            Ok::<_, Error>((refused, put_at, keep_alive))
        }
        .await;
        // On an error, `undo` revokes the new lease: keys put on it already are on `old` no
        // more, and deleted with it, they are put back there as any key deleted is (the key
        // watch, or the next check).
        let (refused, put_at, keep_alive) = moved?;
        // Every put refused (etcd overloaded: "too many requests"): nothing moved, and revoking
        // `old` would delete every key. The new lease is undone and the old one kept.
        if refused.len() == members.len() {
            if let Some(e) = refused.values().next() {
                return Err(e.clone());
            }
        }
        undo.granted = None;
        std::mem::forget(undo);
        self.granted_secs = granted_secs;
        self.set_lease(Some(id));
        // Not awaited: from here on the keys are the new lease's, whatever becomes of this call.
        let conn = self.conn.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(attempt * 2, revoke(&conn, old)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(lease = old, error = %e, "revoking the replaced lease failed; it will expire")
                }
                Err(_) => tracing::debug!(
                    lease = old,
                    "revoking the replaced lease did not finish in time; it will expire"
                ),
            }
        });
        // Their keys were on `old`: gone with it, or expiring with it.
        self.unremoved.clear();
        tracing::info!(
            old,
            lease = id,
            ttl,
            keys = members.len(),
            "a write may still reach etcd late through a member that did not answer in time: \
             the keys moved to a new lease and the old one was revoked"
        );
        Ok(self.established(keep_alive, refused, granted_at, put_at))
    }

    /// Puts back keys that are missing from the lease (deleted by someone else); notices a lease
    /// revoked by someone else. A failed check is not a loss by itself (`None`: to be done
    /// again): the keep-alive deadline decides that.
    async fn repair(&mut self, lease: i64, attempt: Duration) -> Result<Option<Refused>> {
        match self
            .attached_keys(lease, attempt)
            .await
            .map(|(keys, _)| keys)
        {
            Ok(None) => {
                self.set_lease(None);
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!("lease {lease:x} expired or was revoked"),
                ))
            }
            Ok(Some(keys)) => {
                // Keys deleted by someone else, and updated info whose put was refused.
                let to_put: Vec<Arc<RegShared>> = self
                    .members
                    .values()
                    .filter(|m| !keys.contains(m.key.as_bytes()) || m.stale())
                    .cloned()
                    .collect();
                let missing = to_put
                    .iter()
                    .filter(|m| !keys.contains(m.key.as_bytes()))
                    .count();
                if missing > 0 {
                    tracing::warn!(
                        count = missing,
                        "keys missing from their lease (deleted by someone else?); putting them back"
                    );
                }
                // In transactions, as a whole directory deleted at once may be thousands.
                let (refused, _) = self.put_all(lease, &to_put, attempt).await?;
                for member in to_put.iter().filter(|m| !refused.contains_key(&m.id)) {
                    member.registered(lease);
                }
                Ok(Some(refused))
            }
            Err(e) => {
                tracing::debug!(error = %e, "lease check failed");
                Ok(None)
            }
        }
    }

    /// [`LeaseGroup::repair`] within `within`: `None` when the check did not get done in time
    /// (or failed without the lease being lost).
    async fn check_keys(
        &mut self,
        lease: i64,
        attempt: Duration,
        within: Duration,
    ) -> Result<Option<Refused>> {
        tokio::time::timeout(within, self.repair(lease, attempt))
            .await
            .unwrap_or(Ok(None))
    }

    /// Removes a member: deletes its key (unless a newer registration owns it) and revokes the
    /// lease when it was the last member. The member is unregistered whatever etcd answers.
    ///
    /// The key is deleted only while it is on this group's lease: a key another process put
    /// since (the same node registered by a new instance started before the old one stopped)
    /// stays, and its watchers see no removal. Without a lease (lost, and not granted again
    /// yet) nothing is deleted: the lost lease took the key with it, and a key there now is
    /// someone else's (an older registration's lease of another TTL is dealt with apart, see
    /// `stale_groups`).
    ///
    /// `within` bounds each member's part of the delete, which may go to two members in all; a
    /// delete that failed (etcd not reached, or refusing it) is tried again with the next
    /// keep-alive (see `unremoved`) when other members keep the lease alive, and its error is
    /// returned all the same: the member is gone, its key not yet.
    async fn remove(
        &mut self,
        id: u64,
        successor: Option<Arc<RegShared>>,
        within: Option<Duration>,
        deadline: Instant,
    ) -> Result<()> {
        let Some(reg) = self.remove_member(id) else {
            return Ok(());
        };
        match &successor {
            // Leases that hold the key for this registration hold it for its successor now.
            Some(successor) => {
                pass_on(&self.conn, successor, reg.take_handed_over(None));
            }
            // Its end: the key goes with them, as with its own lease. Not waited for while the
            // registry closes (as below); bounded as its delete is in the keep-alive's loop.
            None if *self.closing.borrow() => {
                let (conn, leases) = (self.conn.clone(), reg.take_handed_over(None));
                if !leases.is_empty() {
                    tokio::spawn(async move { revoke_all(&conn, leases, None).await });
                }
            }
            None => {
                let bound = within.map_or(deadline, |w| deadline.min(Instant::now() + w * 2));
                revoke_all(&self.conn, reg.take_handed_over(None), Some(bound)).await;
            }
        }
        if *self.closing.borrow() {
            // The registry is closing: its close revokes the lease (kept for it), which
            // deletes the key, and no unregister queued behind this one waits for etcd.
            reg.emit(StatusEvent::Unregistered);
            return Ok(());
        }
        let mut result = Ok(());
        // A member that never sent a put has nothing in etcd, nor has one whose lease is gone:
        // deleting its key would delete one put by someone else.
        if successor.is_none() && !reg.leave() && self.lease.is_some() {
            let attempt = within.unwrap_or_else(|| self.conn.attempt_timeout());
            let delete = delete_own(&self.conn, &reg.key, self.lease, attempt, &self.maybe_late);
            result = match within {
                Some(within) => tokio::time::timeout(within * 2, delete)
                    .await
                    .unwrap_or_else(|_| Err(Error::timeout("deleting the key", within * 2))),
                None => delete.await,
            };
            // Refused too: the other members keep the lease, and the key with it, alive.
            if let Err(e) = &result {
                if self.lease.is_some() && !self.members.is_empty() {
                    tracing::debug!(key = %reg.key, error = %e, "deleting the key failed; tried again with the next keep-alive");
                    self.unremoved.push(reg.key.clone());
                }
            }
        }
        // When etcd could not be reached in time, the revoke would only wait as long again.
        let reached = !matches!(&result, Err(e) if e.kind() == ErrorKind::Timeout);
        if self.members.is_empty() {
            if let Some(lease) = self.lease {
                self.set_lease(None);
                if !reached {
                    tracing::debug!(lease, "etcd not reached; the lease will expire");
                } else if let Some(successor) = successor {
                    // Revoked now, the lease would take the key with it until the successor
                    // puts it again: watchers would see the node removed and added. The
                    // successor's put moves the key to its lease; the lease, not kept alive
                    // any more, expires meanwhile if etcd cannot be reached (after the TTL
                    // etcd granted it: the successor has until then).
                    // Handed over (see `pass_on`): the successor's end (its unregister, the
                    // registry's close) revokes it too, if it comes first, and a newer
                    // registration of the node takes it on.
                    let ttl = self.granted_secs.max(self.ttl_secs) as u64;
                    let expires = Instant::now() + Duration::from_secs(ttl);
                    pass_on(&self.conn, &successor, vec![(lease, expires)]);
                } else {
                    // Within the unregister's deadline: it gives up after it, and would report
                    // a key it saw deleted as not deleted in time.
                    match tokio::time::timeout_at(deadline, self.revoke(lease)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "revoking the lease failed; it will expire")
                        }
                        Err(_) => tracing::debug!(
                            lease,
                            "revoking the lease did not finish in time; it will expire"
                        ),
                    }
                }
            }
        }
        reg.emit(StatusEvent::Unregistered);
        result
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        revoke(&self.conn, lease).await
    }
}

/// Hands `leases` (each with when it expires at the latest), which hold the key of a node, over
/// to its registration `to`, the one that is to put the key on its own lease: revoked once it
/// has (or once it ended, if its end did not take them first), as they hold nothing of its own
/// then; left to expire if it has not by then. Revoked now, they would take the key with them
/// until `to` puts it (watchers would see the node removed and added), and not at a failed
/// attempt of `to` (etcd out of space, overloaded): the key stays meanwhile.
fn pass_on(conn: &Arc<Connection>, to: &Arc<RegShared>, leases: Vec<(i64, Instant)>) {
    let Some(until) = leases.iter().map(|(_, expires)| *expires).max() else {
        return;
    };
    to.hand_over(&leases);
    let (conn, to) = (conn.clone(), to.clone());
    tokio::spawn(async move {
        to.wait_registered_or_ended(until.saturating_duration_since(Instant::now()))
            .await;
        revoke_all(&conn, to.take_handed_over(Some(&leases)), None).await;
    });
}

/// Revokes the leases handed over to `reg` (see [`pass_on`]), at its end, within `deadline`.
pub(crate) async fn revoke_handed_over(conn: &Connection, reg: &RegShared, deadline: Instant) {
    revoke_all(conn, reg.take_handed_over(None), Some(deadline)).await;
}

/// Revokes `leases` not expired yet, one after another, all within `deadline` if given (else
/// each within the connection's timeout); those not revoked expire.
async fn revoke_all(conn: &Connection, leases: Vec<(i64, Instant)>, deadline: Option<Instant>) {
    let now = Instant::now();
    let leases: Vec<i64> = leases
        .into_iter()
        .filter(|(_, expires)| *expires > now)
        .map(|(lease, _)| lease)
        .collect();
    if leases.is_empty() {
        return;
    }
    let all = async {
        for lease in &leases {
            if let Err(e) = revoke(conn, *lease).await {
                tracing::debug!(lease, error = %e, "revoking a lease handed over failed; it will expire");
            }
        }
    };
    match deadline {
        Some(deadline) => {
            if tokio::time::timeout_at(deadline, all).await.is_err() {
                tracing::debug!(
                    ?leases,
                    "revoking the leases handed over did not finish in time; they will expire"
                );
            }
        }
        None => all.await,
    }
}

impl LeaseGroup {
    /// Deletes the keys of `unremoved` still on `lease` (not those a member holds again), each
    /// within `within` per member tried (two at most); those etcd still does not get stay for
    /// the next keep-alive. Those not tried within one key's bound stay for it too: the
    /// keep-alive's loop waits for this.
    async fn delete_unremoved(&mut self, lease: i64, within: Duration) {
        let mut keys = std::mem::take(&mut self.unremoved);
        keys.retain(|key| !self.is_member_key(key.as_bytes()));
        let until = Instant::now() + within * 2;
        for key in keys {
            if Instant::now() < until {
                let _ = self.delete_or_keep(key, lease, within).await;
            } else {
                self.unremoved.push(key);
            }
        }
    }

    /// Deletes `key` while it is on `lease`, within `within` per member tried (two at most);
    /// when etcd is not reached, or refuses for lack of a resource ("too many requests", its
    /// database full), the key waits in `unremoved` for the next keep-alive. Any other refusal
    /// (a permission taken away) drops the key with a warning.
    async fn delete_or_keep(&mut self, key: Box<str>, lease: i64, within: Duration) -> Result<()> {
        let delete = delete_own(&self.conn, &key, Some(lease), within, &self.maybe_late);
        let deleted = tokio::time::timeout(within * 2, delete)
            .await
            .unwrap_or_else(|_| Err(Error::timeout("deleting the key", within * 2)));
        match &deleted {
            Ok(()) => tracing::debug!(%key, "deleted the key of an unregistered node"),
            Err(e)
                if !matches!(
                    e.kind(),
                    ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::ResourceExhausted
                ) =>
            {
                tracing::warn!(%key, error = %e, "etcd refused to delete the key of an unregistered node");
            }
            Err(_) => self.unremoved.push(key),
        }
        deleted
    }

    /// The registry is closing while an attempt was in flight: close, then answer whatever
    /// commands are queued.
    async fn close_now(&mut self) {
        self.close().await;
        self.rx.close();
        while let Some(cmd) = self.recv().await {
            match cmd {
                GroupCmd::Add(reg) => {
                    let deadline = Instant::now() + self.conn.timeout;
                    revoke_handed_over(&self.conn, &reg, deadline).await;
                    reg.emit(StatusEvent::Unregistered);
                }
                GroupCmd::Remove { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
                GroupCmd::Close { done } => {
                    let _ = done.send(());
                }
                GroupCmd::DeleteStale { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                GroupCmd::Update { .. } => {}
            }
        }
    }

    /// The registry is gone without `close()` (dropped; a binding's object collected): nobody
    /// can unregister the members any more, nor would their keys be kept alive. They end as at
    /// `close()`: the lease revoked, and `Unregistered` for each (a callback's last call).
    async fn abandoned(&mut self) {
        if !self.members.is_empty() {
            tracing::debug!(
                ttl = self.ttl_secs,
                "registry dropped without close; closing its lease"
            );
        }
        self.close().await;
    }

    /// Revokes the lease (which deletes every key on it at once) and unregisters every member.
    async fn close(&mut self) {
        let granting = self.granting.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(grant) = granting.take() {
            // Nothing was put on it yet: only the lease itself is left to revoke. Not waited
            // for: the close of an attempt stuck on a silent etcd returns at once.
            revoke_when_granted(&self.conn, grant);
        }
        if let Some(lease) = self.lease {
            self.set_lease(None);
            if let Err(e) = self.revoke(lease).await {
                tracing::warn!(error = %e, "revoking the lease at close failed; keys expire with it");
                // Try the keys one by one, in case only the revoke was refused (not when etcd
                // could not be reached in time: each delete would wait as long again).
                let refused = !matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection);
                // Each only while it is on this lease, as in `remove`.
                for member in self.members.values().filter(|_| refused) {
                    let attempt = self.conn.attempt_timeout();
                    let _ = delete_own(
                        &self.conn,
                        &member.key,
                        Some(lease),
                        attempt,
                        &self.maybe_late,
                    )
                    .await;
                }
            }
        }
        self.member_keys.clear();
        let members = std::mem::take(&mut self.members);
        // The leases handed over to members, all within one timeout.
        let handed: Vec<(i64, Instant)> = members
            .values()
            .flat_map(|m| m.take_handed_over(None))
            .collect();
        revoke_all(&self.conn, handed, Some(Instant::now() + self.conn.timeout)).await;
        for member in members.into_values() {
            member.emit(StatusEvent::Unregistered);
        }
    }
}

async fn revoke(conn: &Connection, lease: i64) -> Result<()> {
    let result = conn
        .call("revoking the lease", |c| {
            let mut leases = c.lease_client();
            async move { leases.revoke(lease).await }
        })
        .await;
    match result {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes `key` while it is on `lease`: a key another process put since, on its own lease,
/// stays. Without a lease, deletes it whoever holds it.
///
/// `attempt` bounds each member's part, as in [`Connection::call_at`]; `maybe_late` is set as
/// [`Connection::call_write`] does.
async fn delete_own(
    conn: &Connection,
    key: &str,
    lease: Option<i64>,
    attempt: Duration,
    maybe_late: &AtomicBool,
) -> Result<()> {
    conn.call_write("deleting the key", attempt, maybe_late, |c| {
        let (mut kv, key) = (c.kv_client(), key.as_bytes());
        async move {
            match lease {
                Some(lease) => {
                    let ours = Compare::lease(key, CompareOp::Equal, lease);
                    let txn = Txn::new().when([ours]).and_then([TxnOp::delete(key, None)]);
                    kv.txn(txn).await.map(drop)
                }
                None => kv.delete(key, None).await.map(drop),
            }
        }
    })
    .await
    .map(drop)
}

/// What [`LeaseGroup::establish`] hands to the keep-alive loop.
struct Established {
    keep_alive: KeepAlive,
    /// The revision at which every member's key was known to be on the lease (0: unknown).
    revision: i64,
    /// The members whose put etcd refused: not registered.
    refused: Refused,
}

/// Members whose put etcd refused, by id, with the refusal.
type Refused = HashMap<u64, Error>;

/// A watch of a group's own keys, deletions only, on the registry's shared stream (see
/// [`crate::mux`]): it costs etcd nothing while nothing is deleted, and tells at once when
/// someone deletes a key or revokes the lease (which deletes its keys).
///
/// Each watcher covers a unit: the first [`EXACT_KEY_WATCHERS`] keys are watched one by one,
/// the others by their service directory (`<base>/<service>/`), so that a lease of 100 000
/// nodes of one service is two watchers, not 100 000. The deletions of other nodes of a
/// directory watched come too, and are told apart by key. A watcher of one key is what etcd
/// matches a write against cheapest (by a map lookup, where a directory's goes through an
/// interval tree), and it wakes only for that key: a process that holds a node in each of many
/// TTLs of one service, or a fleet whose processes each hold a node of the same service, does
/// not have every put of the service sent to every group's watcher.
struct KeyWatch {
    /// Its watchers on the shared stream.
    sub: Subscription,
    /// The watcher of each unit.
    tokens: HashMap<Vec<u8>, u64>,
    /// The units watched: a key (1), or a directory (ending in '/') with how many keys it was
    /// asked to cover; its watcher goes when none is left.
    counts: HashMap<Vec<u8>, u32>,
    /// How many units are single keys.
    exact: usize,
    /// The revision the watch started from (0: from when it was made): the group's read or
    /// write then holds the deletions made at it.
    from: i64,
}

/// The directory of a key: everything up to its last '/' (the whole key when it has none).
fn dir_of(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|b| *b == b'/') {
        Some(i) => &key[..=i],
        None => key,
    }
}

/// Whether a unit of a [`KeyWatch`] is a directory (a key never ends in '/': its node name is
/// not empty).
fn is_dir(unit: &[u8]) -> bool {
    unit.ends_with(b"/")
}

impl KeyWatch {
    /// The watch of `unit`: every key under it when it is a directory, else that key alone.
    fn options(unit: &[u8], revision: i64) -> WatchOptions {
        let options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let options = if is_dir(unit) {
            options.with_prefix()
        } else {
            options
        };
        // From `revision` itself, not the one after: its events are the puts that wrote it
        // (filtered out), and etcd 3.6+ answers no progress request on a stream while one of
        // its watchers starts at a revision etcd has not reached (the stream's member would
        // be taken for silent; see `mux`).
        if revision > 0 {
            options.with_start_revision(revision)
        } else {
            options
        }
    }

    /// The unit that is to cover `key`: the key itself when it is watched already, else its
    /// directory when that is, else the key while fewer than [`EXACT_KEY_WATCHERS`] keys are
    /// watched one by one, else its directory.
    fn unit_of<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        let dir = dir_of(key);
        if self.counts.contains_key(key) {
            key
        } else if self.counts.contains_key(dir) || self.exact >= EXACT_KEY_WATCHERS {
            dir
        } else {
            key
        }
    }

    /// Watches more keys, for deletions after `revision` (0: from now): a watcher for each unit
    /// not watched yet.
    fn add<'a>(&mut self, keys: impl Iterator<Item = &'a [u8]>, revision: i64) -> Result<()> {
        for key in keys {
            let unit = self.unit_of(key);
            let count = self.counts.entry(unit.to_vec()).or_insert(0);
            if *count > 0 && !is_dir(unit) {
                // The same key again (a node registered again): one count per key, as it is
                // cancelled once, when its last registration leaves.
                continue;
            }
            *count += 1;
            if *count > 1 {
                continue;
            }
            if !is_dir(unit) {
                self.exact += 1;
            }
            let token = self.sub.add(unit, Self::options(unit, revision))?;
            self.tokens.insert(unit.to_vec(), token);
        }
        Ok(())
    }

    /// Stops watching `key` (none of the group's members has it any more): its own watcher
    /// goes, or its directory's with the last key it covers.
    fn cancel(&mut self, key: &[u8]) -> Result<()> {
        let unit = if self.counts.contains_key(key) {
            key
        } else {
            dir_of(key)
        };
        match self.counts.get_mut(unit) {
            Some(count) if *count > 1 => {
                *count -= 1;
                return Ok(());
            }
            Some(_) => {
                self.counts.remove(unit);
                if !is_dir(unit) {
                    self.exact -= 1;
                }
            }
            None => return Ok(()),
        }
        if let Some(token) = self.tokens.remove(unit) {
            self.sub.cancel(token)?;
        }
        Ok(())
    }

    /// The keys deleted by the next response that has any; `Err(refused)` when the watch
    /// ended, `refused` when etcd cancelled or refused a watcher itself (no permission, history
    /// compacted) rather than the stream ending. Never ready without a watch.
    async fn next(watch: &mut Option<KeyWatch>) -> std::result::Result<Vec<Vec<u8>>, bool> {
        let Some(w) = watch.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            let resp: WatchResponse = match w.sub.next().await {
                Delivery::Response(resp) => resp,
                Delivery::Ended { .. } => return Err(false),
            };
            // Only etcd's own cancellations come here (the stream keeps ours): history
            // compacted past the start (watched again from now, the keys checked then), or a
            // refusal.
            if resp.canceled() {
                return Err(resp.compact_revision() <= 0);
            }
            // Deletions made at the revision the watch started from are in what the group
            // read or wrote then (a lease revoked just before it was granted anew).
            let from = w.from;
            let deleted: Vec<Vec<u8>> = resp
                .events()
                .iter()
                .filter(|e| e.event_type() == EventType::Delete)
                .filter_map(|e| e.kv())
                .filter(|kv| kv.mod_revision() > from)
                .map(|kv| kv.key().to_vec())
                .collect();
            if !deleted.is_empty() {
                return Ok(deleted);
            }
        }
    }
}

/// A keep-alive stream and the member it goes to.
struct KeepAlive {
    member: usize,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// How long a keep-alive may go unanswered before its member is given up for another: half the
/// time until the next one is due, so that the lease still has half its TTL left when it is
/// renewed elsewhere, however late in its period the member stopped.
fn answer_deadline(ttl: Duration) -> Duration {
    (ttl / 6).max(Duration::from_millis(250))
}

/// Runs a call of the keep-alive loop, but no longer than the lease can live without an answer:
/// a call stuck on a silent etcd must not keep the loop from noticing the loss.
///
/// The call is boxed at once: the loop makes these calls rarely (nodes joining, repairs), and
/// held inline they would make the loop's future, and the stack frames that poll it, the size
/// of the largest.
/// A lease replacement not finished (see [`LeaseGroup::replace_lease`]): when dropped, the
/// replacement is due again, and the new lease, if granted (or once granted, for a grant in
/// flight), is revoked.
struct Unfinished<'a> {
    maybe_late: &'a AtomicBool,
    conn: &'a Arc<Connection>,
    granting: Option<Granting>,
    granted: Option<i64>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.maybe_late.store(true, Ordering::SeqCst);
        if let Some(grant) = self.granting.take() {
            revoke_when_granted(self.conn, grant);
        }
        if let (Some(id), Ok(runtime)) = (self.granted, tokio::runtime::Handle::try_current()) {
            let conn = self.conn.clone();
            runtime.spawn(async move { revoke(&conn, id).await });
        }
    }
}

/// A lease grant of `ttl` seconds, each member's part within `attempt` (the connection's own
/// when `None`), kept as a future that may outlive the call that awaits it (see `granting`).
fn grant(conn: &Arc<Connection>, ttl: i64, attempt: Option<Duration>) -> Granting {
    let conn = conn.clone();
    Box::pin(async move {
        let attempt = attempt.unwrap_or_else(|| conn.attempt_timeout());
        conn.call_at("granting a lease", attempt, |c| {
            let mut lease = c.lease_client();
            async move { lease.grant(ttl, None).await }
        })
        .await
        .map(|(_, granted)| granted)
    })
}

/// Revokes the lease of `grant`, a grant its caller gave up while etcd may have had it, once
/// etcd answers: in the background, for an attempt's time at most (a grant still waiting for
/// an unreachable etcd is not made afterwards). Without a runtime (being shut down), the lease
/// expires after its TTL.
fn revoke_when_granted(conn: &Arc<Connection>, grant: Granting) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let conn = conn.clone();
    let within = conn.attempt_timeout();
    runtime.spawn(async move {
        if let Ok(Ok(granted)) = tokio::time::timeout(within, grant).await {
            if let Err(e) = revoke(&conn, granted.id()).await {
                tracing::debug!(lease = granted.id(), error = %e, "revoking a lease whose grant was given up failed; it will expire");
            }
        }
    });
}

fn before_loss<'a, T: 'a>(
    lost_at: Instant,
    ttl: Duration,
    call: impl std::future::Future<Output = Result<T>> + Send + 'a,
) -> impl std::future::Future<Output = Result<T>> + Send + 'a {
    let call = Box::pin(call);
    async move {
        tokio::time::timeout_at(lost_at, call)
            .await
            .unwrap_or_else(|_| Err(unanswered(ttl)))
    }
}

/// How long a lease lives after a renewal answered with a TTL of `answered` seconds: that, or
/// the TTL asked for if more (etcd never grants less than asked).
fn answered_ttl(requested: Duration, answered: i64) -> Duration {
    requested.max(Duration::from_secs(answered.max(0) as u64))
}

fn unanswered(ttl: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("no keep-alive answer for {ttl:?}"),
    )
}

/// Refuses `members` with `error` (etcd refused an earlier put of theirs for a reason that
/// holds for every key), telling each of them.
fn refuse_all(refused: &mut Refused, members: &[Arc<RegShared>], error: &Error) {
    for member in members {
        member.attempt_failed(error);
        refused.insert(member.id, error.clone());
    }
}

/// etcd's refusal of a transaction with more operations than its `--max-txn-ops`.
fn is_too_many_ops(e: &Error) -> bool {
    e.message().contains("too many operations in txn request")
}

/// A refusal of the write itself, not a failure of the connection: the keys are then tried one
/// by one, and each refused one is put again later. (A full or overloaded etcd refuses every
/// key alike; every key is retried then.)
fn is_per_key(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidArgument | ErrorKind::ResourceExhausted
    ) || (e.kind() == ErrorKind::Auth
        && (e.message().contains("permission denied")
            // Refused again after the token was renewed: users or roles changed once more.
            || crate::error::is_old_auth_revision(e.message())))
}
