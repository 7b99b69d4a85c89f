//! One lease per distinct TTL, shared by every key registered with that TTL, and the task that
//! keeps it alive, repairs it and re-registers its keys after outages.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff;
use crate::conn::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::registration::{RegShared, StatusEvent};

/// etcd's default limit of operations in one transaction.
const MAX_TXN_OPS: usize = 128;

pub(crate) enum GroupCmd {
    Add(Arc<RegShared>),
    Remove {
        id: u64,
        /// The key now belongs to a newer registration of the same node: stop keeping it, but
        /// leave it in etcd.
        keep_key: bool,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
    /// The member's info changed: put it (at once when connected, else at the next attempt).
    Update {
        id: u64,
    },
}

/// What the registry keeps of a group.
pub(crate) struct GroupHandle {
    pub(crate) tx: mpsc::UnboundedSender<GroupCmd>,
    /// The lease held now, 0 for none.
    pub(crate) lease: Arc<AtomicI64>,
}

pub(crate) struct LeaseGroup {
    ttl_secs: i64,
    conn: Arc<Connection>,
    backoff_min: Duration,
    backoff_max: Duration,
    rx: mpsc::UnboundedReceiver<GroupCmd>,
    members: BTreeMap<u64, Arc<RegShared>>,
    lease: Option<i64>,
    lease_shared: Arc<AtomicI64>,
    /// Set when the registry closes, so that an attempt in flight (which may wait for a
    /// silent etcd up to the timeout, several times) is abandoned at once.
    closing: watch::Receiver<bool>,
}

/// Why the keep-alive loop ended.
enum Exit {
    /// The registry closed, or every handle is gone.
    Closed,
    /// The last member left; the lease is revoked.
    Empty,
    /// Lease or connection lost.
    Lost(Error),
}

/// What a command did to the group while it was between attempts.
enum Flow {
    Continue,
    Stop,
}

impl LeaseGroup {
    pub(crate) fn spawn(
        handle: &tokio::runtime::Handle,
        ttl_secs: i64,
        conn: Arc<Connection>,
        backoff_min: Duration,
        backoff_max: Duration,
        closing: watch::Receiver<bool>,
    ) -> GroupHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let lease = Arc::new(AtomicI64::new(0));
        let group = LeaseGroup {
            ttl_secs,
            conn,
            backoff_min,
            backoff_max,
            rx,
            members: BTreeMap::new(),
            lease: None,
            lease_shared: lease.clone(),
            closing,
        };
        handle.spawn(group.run());
        GroupHandle { tx, lease }
    }

    fn set_lease(&mut self, lease: Option<i64>) {
        self.lease = lease;
        self.lease_shared
            .store(lease.unwrap_or(0), Ordering::SeqCst);
    }

    async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if self.members.is_empty() {
                attempt = 0;
                match self.rx.recv().await {
                    None => return,
                    Some(cmd) => match self.handle_offline(cmd).await {
                        Flow::Continue => continue,
                        Flow::Stop => return,
                    },
                }
            }
            let mut closing = self.closing.clone();
            let established = tokio::select! {
                result = self.establish() => Some(result),
                _ = closing.wait_for(|closing| *closing) => None,
            };
            let Some(established) = established else {
                self.close_now().await;
                return;
            };
            let error = match established {
                Ok(keep_alive) => {
                    attempt = 0;
                    match self.maintain(keep_alive).await {
                        Exit::Closed => return,
                        Exit::Empty => continue,
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
            let delay = backoff::delay(attempt, self.backoff_min, self.backoff_max);
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
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    cmd = self.rx.recv() => match cmd {
                        None => return,
                        Some(cmd) => if let Flow::Stop = self.handle_offline(cmd).await { return },
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
                self.members.insert(reg.id, reg);
                Flow::Continue
            }
            GroupCmd::Remove { id, keep_key, done } => {
                let result = self.remove(id, keep_key).await;
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
        }
    }

    /// Gets a lease (the old one first: leases survive etcd restarts), opens its keep-alive
    /// stream and makes sure every member's key is in etcd on it.
    async fn establish(&mut self) -> Result<KeepAlive> {
        let attempt = self.conn.attempt_timeout();
        let mut kept = None;
        if let Some(id) = self.lease {
            match self.keep_alive(id, attempt).await {
                Ok(pair) => kept = Some((id, pair)),
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
        let (lease, pair, attached) = match kept {
            Some((id, pair)) => match self.attached_keys(id, attempt).await? {
                Some(attached) => (id, pair, attached),
                None => {
                    self.set_lease(None);
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("lease {id:x} expired"),
                    ));
                }
            },
            None => {
                let ttl = self.ttl_secs;
                // A grant that times out on one member may still succeed there: that lease is
                // never used and expires after one TTL.
                let granted = self
                    .conn
                    .call("granting a lease", |mut c| async move {
                        c.lease_grant(ttl, None).await
                    })
                    .await?;
                let id = granted.id();
                self.set_lease(Some(id));
                tracing::debug!(lease = id, ttl, "granted lease");
                let pair = self.keep_alive(id, attempt).await?;
                (id, pair, HashSet::new())
            }
        };
        // Keys missing from the lease, and keys whose info was updated since their last put
        // (e.g. while etcd was down).
        let missing: Vec<Arc<RegShared>> = self
            .members
            .values()
            .filter(|m| !attached.contains(m.key.as_bytes()) || m.stale())
            .cloned()
            .collect();
        let refused = self.put_all(lease, &missing, attempt).await?;
        for member in self.members.values() {
            if !refused.contains(&member.id) {
                member.registered(lease);
            }
        }
        Ok(pair)
    }

    /// Opens a keep-alive stream of lease `id` on the first member that answers (opening it is
    /// a renewal: etcd answers the first keep-alive before the stream is handed over).
    async fn keep_alive(&self, id: i64, attempt: Duration) -> Result<KeepAlive> {
        let (member, (keeper, stream)) = self
            .conn
            .call_at(
                "opening the lease keep-alive",
                attempt,
                |mut c| async move { c.lease_keep_alive(id).await },
            )
            .await?;
        Ok(KeepAlive {
            member,
            keeper,
            stream,
        })
    }

    /// The keys attached to a live lease, or `None` when the lease is gone. `Ok(None)` only for
    /// a lease with TTL ≤ 0.
    async fn attached_keys(&self, id: i64, attempt: Duration) -> Result<Option<HashSet<Vec<u8>>>> {
        let (_, resp) = self
            .conn
            .call_at("checking the lease", attempt, |mut c| async move {
                c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
                    .await
            })
            .await?;
        if resp.ttl() <= 0 {
            return Ok(None);
        }
        Ok(Some(resp.keys().iter().cloned().collect()))
    }

    /// Puts keys on the lease, in transactions of at most [`MAX_TXN_OPS`]. A member whose own
    /// put is refused (too large for this server, no permission for its key) is told so and
    /// retried at the next check; a transport failure fails the whole attempt.
    /// Returns the ids of the members whose put was refused.
    async fn put_all(
        &self,
        lease: i64,
        members: &[Arc<RegShared>],
        attempt: Duration,
    ) -> Result<HashSet<u64>> {
        let mut refused = HashSet::new();
        for chunk in members.chunks(MAX_TXN_OPS) {
            let mut generations = Vec::with_capacity(chunk.len());
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|m| {
                    let (value, generation) = m.value();
                    generations.push(generation);
                    TxnOp::put(
                        m.key.clone(),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            let result = self
                .conn
                .call_at("registering keys", attempt, |mut c| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { c.txn(txn).await }
                })
                .await;
            match result {
                Ok(_) => {
                    for (member, generation) in chunk.iter().zip(generations) {
                        member.landed(generation);
                    }
                }
                Err(e) if is_per_key(&e) => {
                    // Find the culprit(s): put them one by one.
                    for member in chunk {
                        if !self.put_one(lease, member, attempt).await? {
                            refused.insert(member.id);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    }

    /// Puts one key; a per-key refusal is reported to its registration only.
    async fn put_one(
        &self,
        lease: i64,
        member: &Arc<RegShared>,
        attempt: Duration,
    ) -> Result<bool> {
        let (value, generation) = member.value();
        let result = self
            .conn
            .call_at("registering a key", attempt, |mut c| {
                let (key, value) = (member.key.clone(), value.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await;
        match result {
            Ok(_) => {
                member.landed(generation);
                Ok(true)
            }
            Err(e) if is_per_key(&e) => {
                tracing::warn!(key = %member.key, error = %e, "etcd refused the key");
                member.attempt_failed(&e);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps the lease alive: a keep-alive every TTL/3, a check of the lease's keys at the same
    /// pace (keys deleted by someone else are put back), and commands in between.
    ///
    /// A keep-alive not answered within [`answer_deadline`] (a sixth of the TTL: half the time
    /// until the next one is due) means the member is paused, overloaded or cut off: it is
    /// ejected and the lease is renewed at once through another member, while it still has most
    /// of its TTL left (see [`LeaseGroup::renew_elsewhere`]).
    async fn maintain(&mut self, keep_alive: KeepAlive) -> Exit {
        let Some(lease) = self.lease else {
            return Exit::Lost(Error::new(ErrorKind::Internal, "no lease"));
        };
        let KeepAlive {
            mut member,
            mut keeper,
            mut stream,
        } = keep_alive;
        let ttl = Duration::from_secs(self.ttl_secs.max(1) as u64);
        let period = (ttl / 3).max(Duration::from_millis(500));
        let answer_within = answer_deadline(ttl);
        // How long one member may take for a call of this loop while others are left.
        let attempt = answer_within.min(self.conn.attempt_timeout());
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = Instant::now();
        // When the oldest keep-alive still unanswered was sent.
        let mut waiting_since: Option<Instant> = None;
        loop {
            let lost_at = last_answer + ttl;
            let silent_at = waiting_since.map(|sent| sent + answer_within);
            let silence = tokio::time::sleep_until(silent_at.unwrap_or(lost_at));
            let failover = tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    None => return Exit::Closed,
                    Some(GroupCmd::Close { done }) => {
                        self.close().await;
                        let _ = done.send(());
                        return Exit::Closed;
                    }
                    Some(GroupCmd::Add(reg)) => {
                        self.members.insert(reg.id, reg.clone());
                        match before_loss(lost_at, ttl, self.put_one(lease, &reg, attempt)).await {
                            Ok(true) => reg.registered(lease),
                            Ok(false) => {}
                            Err(e) => return Exit::Lost(e),
                        }
                        None
                    }
                    Some(GroupCmd::Remove { id, keep_key, done }) => {
                        let result = self.remove(id, keep_key).await;
                        if let Some(done) = done {
                            let _ = done.send(result);
                        }
                        if self.members.is_empty() {
                            return Exit::Empty;
                        }
                        None
                    }
                    Some(GroupCmd::Update { id }) => {
                        // Not stale: a put since the update (an earlier Update command's, which
                        // read the newest info) already carried it.
                        let Some(reg) = self.members.get(&id).filter(|m| m.stale()).cloned() else {
                            continue;
                        };
                        match before_loss(lost_at, ttl, self.put_one(lease, &reg, attempt)).await {
                            Ok(true) => reg.registered(lease),
                            Ok(false) => {}
                            // The next attempt puts it, as the member is still stale.
                            Err(e) => return Exit::Lost(e),
                        }
                        None
                    }
                },
                _ = ticker.tick() => {
                    match keeper.keep_alive().await {
                        Err(e) => Some(Error::from(e)),
                        Ok(()) => {
                            waiting_since.get_or_insert_with(Instant::now);
                            let check = tokio::time::timeout(period, self.repair(lease, attempt));
                            match before_loss(lost_at, ttl, async { check.await.unwrap_or(Ok(())) }).await {
                                Err(e) => return Exit::Lost(e),
                                Ok(()) => None,
                            }
                        }
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        last_answer = Instant::now();
                        waiting_since = None;
                        self.conn.answered(member);
                        None
                    }
                    Ok(Some(_)) => {
                        self.set_lease(None);
                        return Exit::Lost(Error::new(ErrorKind::NotFound, format!("lease {lease:x} expired or was revoked")));
                    }
                    Ok(None) => Some(Error::new(ErrorKind::Connection, "the keep-alive stream was closed by etcd")),
                    Err(e) => Some(Error::from(e)),
                },
                _ = silence, if silent_at.is_some() => Some(Error::new(
                    ErrorKind::Timeout,
                    format!("keep-alive unanswered for {answer_within:?}"),
                )),
                _ = tokio::time::sleep_until(lost_at) => {
                    self.conn.eject(member, &unanswered(ttl));
                    return Exit::Lost(unanswered(ttl));
                }
            };
            let Some(error) = failover else { continue };
            self.conn.eject(member, &error);
            // A stream that broke (member killed or restarted) with no other member to turn to
            // is a lost connection: the group re-establishes itself from scratch, with backoff.
            if error.kind() == ErrorKind::Connection && !self.conn.has_alternative(member) {
                return Exit::Lost(error);
            }
            match before_loss(
                lost_at,
                ttl,
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

    /// Puts back keys that are missing from the lease (deleted by someone else); notices a lease
    /// revoked by someone else. A failed check is not a loss by itself: the keep-alive deadline
    /// decides that.
    async fn repair(&mut self, lease: i64, attempt: Duration) -> Result<()> {
        match self.attached_keys(lease, attempt).await {
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
                for member in &to_put {
                    if self.put_one(lease, member, attempt).await? {
                        member.registered(lease);
                    }
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "lease check failed");
                Ok(())
            }
        }
    }

    /// Removes a member: deletes its key (unless a newer registration owns it) and revokes the
    /// lease when it was the last member. The member is unregistered whatever etcd answers.
    async fn remove(&mut self, id: u64, keep_key: bool) -> Result<()> {
        let Some(reg) = self.members.remove(&id) else {
            return Ok(());
        };
        let mut result = Ok(());
        if !keep_key {
            let key = reg.key.clone();
            result = self
                .conn
                .call("deleting the key", |mut c| {
                    let key = key.clone();
                    async move { c.delete(key, None).await }
                })
                .await
                .map(|_| ());
        }
        // When etcd could not be reached in time, the revoke would only wait as long again.
        let reached = !matches!(&result, Err(e) if e.kind() == ErrorKind::Timeout);
        if self.members.is_empty() {
            if let Some(lease) = self.lease {
                self.set_lease(None);
                if !reached {
                    tracing::debug!(lease, "etcd not reached; the lease will expire");
                } else if let Err(e) = self.revoke(lease).await {
                    tracing::debug!(error = %e, "revoking the lease failed; it will expire");
                }
            }
        }
        reg.emit(StatusEvent::Unregistered);
        result
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        let result = self
            .conn
            .call("revoking the lease", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        match result {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The registry is closing while an attempt was in flight: close, then answer whatever
    /// commands are queued.
    async fn close_now(&mut self) {
        self.close().await;
        self.rx.close();
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                GroupCmd::Add(reg) => reg.emit(StatusEvent::Unregistered),
                GroupCmd::Remove { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
                GroupCmd::Close { done } => {
                    let _ = done.send(());
                }
                GroupCmd::Update { .. } => {}
            }
        }
    }

    /// Revokes the lease (which deletes every key on it at once) and unregisters every member.
    async fn close(&mut self) {
        if let Some(lease) = self.lease {
            self.set_lease(None);
            if let Err(e) = self.revoke(lease).await {
                tracing::warn!(error = %e, "revoking the lease at close failed; keys expire with it");
                // Try the keys one by one, in case only the revoke was refused (not when etcd
                // could not be reached in time: each delete would wait as long again).
                let refused = !matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection);
                for member in self.members.values().filter(|_| refused) {
                    let key = member.key.clone();
                    let _ = self
                        .conn
                        .call("deleting the key", |mut c| {
                            let key = key.clone();
                            async move { c.delete(key, None).await }
                        })
                        .await;
                }
            }
        }
        for member in std::mem::take(&mut self.members).into_values() {
            member.emit(StatusEvent::Unregistered);
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
async fn before_loss<T>(
    lost_at: Instant,
    ttl: Duration,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout_at(lost_at, call)
        .await
        .unwrap_or_else(|_| Err(unanswered(ttl)))
}

fn unanswered(ttl: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("no keep-alive answer for {ttl:?}"),
    )
}

/// A refusal that concerns one key and not the connection.
fn is_per_key(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::InvalidArgument)
        || (e.kind() == ErrorKind::Auth && e.message().contains("permission denied"))
}
