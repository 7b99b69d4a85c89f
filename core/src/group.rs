//! One lease per distinct TTL, shared by every key registered with that TTL, and the task that
//! keeps it alive, repairs it and re-registers its keys after outages.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
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
                Ok((keeper, stream)) => {
                    attempt = 0;
                    match self.maintain(keeper, stream).await {
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
            if matches!(error.kind(), ErrorKind::Connection | ErrorKind::Timeout) {
                self.conn.reset().await;
            }
            attempt = attempt.saturating_add(1);
            let delay = backoff::delay(attempt, self.backoff_min, self.backoff_max);
            if attempt == 1 || error.kind() != ErrorKind::Auth {
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
        }
    }

    /// Gets a lease (the old one first: leases survive etcd restarts), opens its keep-alive
    /// stream and makes sure every member's key is in etcd on it.
    async fn establish(&mut self) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        let mut client = self.conn.client().await?;
        let mut kept = None;
        if let Some(id) = self.lease {
            match self.keep_alive(&mut client, id).await {
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
            Some((id, pair)) => match self.attached_keys(&mut client, id).await? {
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
                let mut c = client.clone();
                let granted = self
                    .conn
                    .with_timeout("granting a lease", async move {
                        Ok(c.lease_grant(ttl, None).await?)
                    })
                    .await?;
                let id = granted.id();
                self.set_lease(Some(id));
                tracing::debug!(lease = id, ttl, "granted lease");
                let pair = self.keep_alive(&mut client, id).await?;
                (id, pair, HashSet::new())
            }
        };
        let missing: Vec<Arc<RegShared>> = self
            .members
            .values()
            .filter(|m| !attached.contains(m.key.as_bytes()))
            .cloned()
            .collect();
        let refused = self.put_all(&client, lease, &missing).await?;
        for member in self.members.values() {
            if !refused.contains(&member.id) {
                member.registered(lease);
            }
        }
        Ok(pair)
    }

    async fn keep_alive(
        &self,
        client: &mut Client,
        id: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        let mut c = client.clone();
        self.conn
            .with_timeout("opening the lease keep-alive", async move {
                Ok(c.lease_keep_alive(id).await?)
            })
            .await
    }

    /// The keys attached to a live lease, or `None` when the lease is gone. `Ok(None)` only for
    /// a lease with TTL ≤ 0.
    async fn attached_keys(
        &self,
        client: &mut Client,
        id: i64,
    ) -> Result<Option<HashSet<Vec<u8>>>> {
        let mut c = client.clone();
        let resp = self
            .conn
            .with_timeout("checking the lease", async move {
                Ok(
                    c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
                        .await?,
                )
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
        client: &Client,
        lease: i64,
        members: &[Arc<RegShared>],
    ) -> Result<HashSet<u64>> {
        let mut refused = HashSet::new();
        for chunk in members.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|m| {
                    TxnOp::put(
                        m.key.clone(),
                        m.value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            let mut c = client.clone();
            let result = self
                .conn
                .with_timeout("registering keys", async move {
                    Ok(c.txn(Txn::new().and_then(ops)).await?)
                })
                .await;
            match result {
                Ok(_) => {}
                Err(e) if is_per_key(&e) => {
                    // Find the culprit(s): put them one by one.
                    for member in chunk {
                        if !self.put_one(client, lease, member).await? {
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
    async fn put_one(&self, client: &Client, lease: i64, member: &Arc<RegShared>) -> Result<bool> {
        let mut c = client.clone();
        let (key, value) = (member.key.clone(), member.value.clone());
        let result = self
            .conn
            .with_timeout("registering a key", async move {
                Ok(c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await?)
            })
            .await;
        match result {
            Ok(_) => Ok(true),
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
    async fn maintain(
        &mut self,
        mut keeper: LeaseKeeper,
        mut stream: LeaseKeepAliveStream,
    ) -> Exit {
        let Some(lease) = self.lease else {
            return Exit::Lost(Error::new(ErrorKind::Internal, "no lease"));
        };
        let ttl = Duration::from_secs(self.ttl_secs.max(1) as u64);
        let period = (ttl / 3).max(Duration::from_millis(500));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = Instant::now();
        loop {
            let lost_at = last_answer + ttl;
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    None => return Exit::Closed,
                    Some(GroupCmd::Close { done }) => {
                        self.close().await;
                        let _ = done.send(());
                        return Exit::Closed;
                    }
                    Some(GroupCmd::Add(reg)) => {
                        self.members.insert(reg.id, reg.clone());
                        let put = async {
                            let client = self.conn.client().await?;
                            self.put_one(&client, lease, &reg).await
                        };
                        match before_loss(lost_at, ttl, put).await {
                            Ok(true) => reg.registered(lease),
                            Ok(false) => {}
                            Err(e) => return Exit::Lost(e),
                        }
                    }
                    Some(GroupCmd::Remove { id, keep_key, done }) => {
                        let result = self.remove(id, keep_key).await;
                        if let Some(done) = done {
                            let _ = done.send(result);
                        }
                        if self.members.is_empty() {
                            return Exit::Empty;
                        }
                    }
                },
                _ = ticker.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        return Exit::Lost(e.into());
                    }
                    if let Err(e) = before_loss(lost_at, ttl, self.repair(lease)).await {
                        return Exit::Lost(e);
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(resp)) if resp.ttl() > 0 => last_answer = Instant::now(),
                    Ok(Some(_)) => {
                        self.set_lease(None);
                        return Exit::Lost(Error::new(ErrorKind::NotFound, format!("lease {lease:x} expired or was revoked")));
                    }
                    Ok(None) => return Exit::Lost(Error::new(ErrorKind::Connection, "the keep-alive stream was closed by etcd")),
                    Err(e) => return Exit::Lost(e.into()),
                },
                _ = tokio::time::sleep_until(lost_at) => return Exit::Lost(unanswered(ttl)),
            }
        }
    }

    /// Puts back keys that are missing from the lease (deleted by someone else); notices a lease
    /// revoked by someone else. A failed check is not a loss by itself: the keep-alive deadline
    /// decides that.
    async fn repair(&mut self, lease: i64) -> Result<()> {
        let Ok(mut client) = self.conn.client().await else {
            return Ok(());
        };
        match self.attached_keys(&mut client, lease).await {
            Ok(None) => {
                self.set_lease(None);
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!("lease {lease:x} expired or was revoked"),
                ))
            }
            Ok(Some(keys)) => {
                let missing: Vec<Arc<RegShared>> = self
                    .members
                    .values()
                    .filter(|m| !keys.contains(m.key.as_bytes()))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                tracing::warn!(
                    count = missing.len(),
                    "keys missing from their lease (deleted by someone else?); putting them back"
                );
                for member in &missing {
                    if self.put_one(&client, lease, member).await? {
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
        format!("no keep-alive answer for {ttl:?} (context deadline exceeded)"),
    )
}

/// A refusal that concerns one key and not the connection.
fn is_per_key(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::InvalidArgument)
        || (e.kind() == ErrorKind::Auth && e.message().contains("permission denied"))
}
