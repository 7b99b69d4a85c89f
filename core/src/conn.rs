//! The registry's etcd clients, one per endpoint, connected lazily and shared by every
//! operation. Calls go to a preferred member; a member that fails or stops answering is ejected
//! for a while (see [`crate::health`]) and the call moves on to another one at once.
//!
//! Wait-for-ready, the rule of etcd's own Go client and the same in every language: a call that
//! cannot reach any member keeps trying until its timeout, then fails with a timeout error
//! whose message carries the last failure to reach etcd — which
//! endpoint, and why (e.g. "connection refused"). An answer from etcd (a refusal, an auth error)
//! or a TLS failure fails the call at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{unreachable_cause, Error, ErrorKind, Result};
use crate::health::Health;
use crate::tls::{self, ClientTls};

/// HTTP/2 ping interval while a stream is open: detects half-open connections and paused servers.
/// etcd sends GOAWAY to clients that ping more often than every 5 s, hence the margin.
const PING_INTERVAL: Duration = Duration::from_secs(7);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause between two tries while waiting for etcd (after a round over every member reached
/// none, one member per pause, in turns): doubling from the first to the last value, each
/// shortened by up to half at random (many clients waiting for the same etcd come back spread
/// over the last pause, not in step). The last value bounds how late a call notices that etcd
/// is back, when every member comes back.
const READY_RETRY_MIN: Duration = Duration::from_millis(50);
const READY_RETRY_MAX: Duration = Duration::from_millis(200);

/// Pace of the probes while a lease group waits out its backoff step after etcd could not be
/// reached (see [`Connection::wait_back`]): one connection attempt per 0.1–0.2 s, at random.
const PROBE_PAUSE: Duration = Duration::from_millis(200);
/// A probe unanswered this long counts as "not reached"; it is abandoned for a new one on a
/// fresh connection (a paused or black-holed member holds at most one probe per second).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// etcd's default limit of operations in one transaction (`--max-txn-ops`).
pub(crate) const MAX_TXN_OPS: usize = 128;
/// After requests to a member failed twice in a row without reaching it (connection refused,
/// reset or closed), the next one goes to it no sooner than this after the last failure:
/// every task of a registry that waits for etcd (a call waiting for it, a lease group or a
/// watch probing during its backoff step) shares the member's attempts, so a registry connects
/// to a member that is down about 10 times a second however many TTLs and watches it has. A
/// task that comes sooner gets that failure again, as if it had tried. One failure alone does
/// not hold the next request back: a connection that broke while etcd restarted is followed
/// by a new one at once.
const DIAL_GAP: Duration = Duration::from_millis(100);
/// Failures further apart than this are not in a row.
const STREAK_WITHIN: Duration = Duration::from_secs(1);
/// A read not answered this soon by the preferred member goes to the next one too (see
/// [`Connection::call_read`]).
const HEDGE_AFTER: Duration = Duration::from_millis(200);
/// A probe answered later than this was held by an etcd that did not answer until then.
const PROBE_QUICK: Duration = Duration::from_millis(250);

pub(crate) struct Connection {
    endpoints: Vec<String>,
    credentials: Option<(String, String)>,
    pub(crate) timeout: Duration,
    /// One client per endpoint, made on first use and dropped when the member is ejected.
    /// Shared, not cloned per call: an `etcd_client::Client` is several KiB (a client per
    /// service), which every call's future would otherwise hold.
    clients: Vec<Mutex<Option<Arc<Client>>>>,
    /// Per member: when a request to it last failed without reaching it, and why, and how many
    /// did in a row (see [`DIAL_GAP`]).
    refused: Vec<std::sync::Mutex<Option<Refused>>>,
    health: Health,
    /// Bumped by [`Connection::reset`]: probes of an older generation stop.
    generation: AtomicU64,
    this: Weak<Connection>,
    auth_disabled_warned: AtomicBool,
    /// Per member: its client was made without the credentials, etcd's authentication being
    /// off then. Refused for authentication, it is dropped: the next call connects with them.
    without_user: Vec<AtomicBool>,
    /// Per member: which client's auth token was last renewed for a refusal as older than
    /// etcd's auth store (its address), and when (see [`Connection::with_fresh_token`]).
    token_renewed: Vec<Mutex<Option<(usize, Instant)>>>,
    tls: Option<Arc<ClientTls>>,
    /// The most operations a transaction may carry: etcd's default limit (`--max-txn-ops`)
    /// until etcd refuses one as having too many, then what it took (see `LeaseGroup::put_all`).
    pub(crate) txn_ops: AtomicUsize,
}

impl Connection {
    /// `tls`: connect over TLS with these options (checked by `tls::client_options`).
    pub(crate) fn new(
        endpoints: Vec<String>,
        credentials: Option<(String, String)>,
        timeout: Duration,
        tls: Option<ClientTls>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Connection {
            clients: endpoints.iter().map(|_| Mutex::new(None)).collect(),
            refused: endpoints.iter().map(|_| Default::default()).collect(),
            without_user: endpoints.iter().map(|_| AtomicBool::new(false)).collect(),
            token_renewed: endpoints.iter().map(|_| Mutex::new(None)).collect(),
            health: Health::new(endpoints.len()),
            endpoints,
            credentials,
            timeout,
            generation: AtomicU64::new(0),
            this: this.clone(),
            auth_disabled_warned: AtomicBool::new(false),
            txn_ops: AtomicUsize::new(MAX_TXN_OPS),
            tls: tls.map(Arc::new),
        })
    }

    fn options(&self, with_user: bool, tls: Option<etcd_client::TlsOptions>) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(false)
            // A member cut off from the others (a partition inside the cluster) still answers
            // a watch's progress requests, but sees none of the majority's writes: without a
            // leader it refuses calls at once and, after a few election timeouts, ends the
            // streams (watches, keep-alives) with "no leader", which moves them to a member
            // that has one. Without this, a watch on it would wait, silent, until the partition
            // heals, and every call on it would take its whole attempt timeout.
            .with_require_leader(true)
            // Expired or invalidated tokens (etcd restarts, --auth-token-ttl) are renewed.
            .with_auto_token_refresh(true);
        if let (true, Some((user, password))) = (with_user, &self.credentials) {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        options
    }

    /// The TLS options for a new connection. Their PEM files are read (and the options built
    /// again when they changed) on a thread for blocking work: a slow file system (a stalled
    /// network mount) must not hold a runtime thread, whose other tasks keep leases alive.
    async fn tls_options(&self) -> Option<etcd_client::TlsOptions> {
        let tls = self.tls.clone()?;
        match tokio::task::spawn_blocking(move || tls.options()).await {
            Ok(options) => Some(options),
            // No thread for it (the runtime is shutting down): read here.
            Err(_) => self.tls.as_ref().map(|tls| tls.options()),
        }
    }

    /// The client of endpoint `i`, connecting first if there is none.
    async fn client_of(&self, i: usize) -> Result<Arc<Client>> {
        if let Some(r) = &*lock(&self.refused[i]) {
            if r.streak >= 2 && r.at.elapsed() < DIAL_GAP {
                return Err(r.error.clone());
            }
        }
        let mut slot = self.clients[i].lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = Arc::new(self.connecting(i).await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Connecting, boxed and out of line: only a call without a client yet needs it. A runtime
    /// thread keeps every stack page it ever touched, and a future built in a function's frame
    /// takes its whole size there (etcd-client's connect: 6 KiB), so each is built in a small
    /// function of its own and polled through a pointer, not inlined into its callers' frames.
    #[inline(never)]
    fn connecting(&self, i: usize) -> Pin<Box<dyn Future<Output = Result<Client>> + Send + '_>> {
        Box::pin(self.connect(i))
    }

    async fn connect(&self, i: usize) -> Result<Client> {
        let endpoint = &self.endpoints[i];
        let with_user = self.credentials.is_some();
        let tls = self.tls_options().await;
        match dial(endpoint, self.options(with_user, tls.clone())).await {
            Ok(client) => Ok(client),
            Err(err) if with_user && err.to_string().contains("authentication is not enabled") => {
                if !self.auth_disabled_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "credentials were given but etcd has authentication disabled; proceeding without them"
                    );
                }
                let client = dial(endpoint, self.options(false, tls))
                    .await
                    .map_err(|e| self.reached_error(i, e))?;
                self.without_user[i].store(true, Ordering::SeqCst);
                Ok(client)
            }
            Err(err) => Err(self.reached_error(i, err)),
        }
    }

    /// Forgets every client, so that the next call connects afresh, and stops the probes.
    pub(crate) fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for (i, slot) in self.clients.iter().enumerate() {
            match slot.try_lock() {
                Ok(mut slot) => *slot = None,
                // A connect in flight (with credentials it authenticates, which a silent member
                // may not answer for a long while): its client is dropped once it is made, not
                // waited for.
                Err(_) => {
                    if let (Some(this), Ok(handle)) =
                        (self.this.upgrade(), tokio::runtime::Handle::try_current())
                    {
                        handle.spawn(async move {
                            *this.clients[i].lock().await = None;
                        });
                    }
                }
            }
        }
    }

    /// Runs `f` on the shared client within the timeout, failing over to another member when
    /// the one in use fails or is silent (see [`Connection::call_at`]).
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let attempt = self.attempt_timeout();
        self.call_at(what, attempt, f).await.map(|(_, v)| v)
    }

    /// A read that may be asked of several members at once: like [`Connection::call`], but
    /// when the preferred member has not answered within [`HEDGE_AFTER`] (or a third of the
    /// timeout, if shorter) the same read goes to the next member too, and the first answer
    /// wins; so does a read sent to the next member after the others failed. A member that just went silent
    /// (paused, cut off) and is not ejected yet costs the first read after it that short delay
    /// instead of a third of the timeout.
    ///
    /// No read is cut short before the call's timeout: a member still silent after a third of
    /// it gets company (the next member), not a cancellation, so a read that every member
    /// needs longer for (the list of a very large service over a slow link) is answered as it
    /// would be with one member. A member that fails at the transport level is ejected and the
    /// next one asked at once; once every member was asked, one that failed is asked again the
    /// usual way ([`Connection::call_until`], which also waits for etcd) beside the reads still
    /// in flight: followers that answered "leader changed" while a paused leader's read hangs
    /// answer once the election is over. One silent until the timeout is ejected then (the
    /// others are not: a follower may be slow only because its leader is, until an election).
    /// An answer from etcd, even a refusal, is final.
    pub(crate) async fn call_read<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let order = self.health.order(started);
        if order.len() < 2 {
            return self.call(what, f).await;
        }
        let deadline = started + self.timeout;
        let attempt = self.attempt_timeout();
        let on = |i: usize| {
            let f = &f;
            Box::pin(async move {
                let without_user = self.without_user[i].load(Ordering::SeqCst);
                let client = self.client_of(i).await?;
                let result = self
                    .with_fresh_token(i, &client, f)
                    .await
                    .map_err(|e| self.reached_error(i, e));
                if !self.now_with_user(i, without_user, &result) {
                    return result;
                }
                let client = self.client_of(i).await?;
                self.with_fresh_token(i, &client, f)
                    .await
                    .map_err(|e| self.reached_error(i, e))
            })
        };
        // The reads in flight: the member, when it was asked, its read.
        let mut running = Vec::with_capacity(order.len());
        let mut unreached: Vec<Option<String>> = vec![None; self.endpoints.len()];
        let (mut next, mut next_at) = (0usize, started);
        // Once a member failed and every member was asked: the usual way (which waits for
        // etcd, and asks again the members that failed, e.g. followers that answered "leader
        // changed" during an election) beside the reads still in flight.
        let mut failed = false;
        let mut fallback = None;
        enum Step<R, F> {
            Read(R),
            Fallback(F),
            Timer,
        }
        loop {
            let now = Instant::now();
            if next < order.len() && now >= next_at {
                let i = order[next];
                running.push((i, now, on(i)));
                next += 1;
                // The read just sent is the only one in flight (the first, or the next after
                // the others failed): the next member gets it soon if it is not ejected.
                let soon = running.len() == 1
                    && next < order.len()
                    && !self.health.is_ejected(order[next], now);
                next_at = now
                    + if soon {
                        HEDGE_AFTER.min(attempt)
                    } else {
                        attempt
                    };
            }
            if failed && next >= order.len() && fallback.is_none() {
                if now >= deadline {
                    return Err(timeout_error(what, self.timeout, &unreached));
                }
                let ongoing = Ongoing {
                    busy: running.iter().map(|(i, _, _)| *i).collect(),
                    unreached: unreached.clone(),
                };
                fallback = Some(Box::pin(
                    self.call_until(what, attempt, deadline, &f, None, ongoing),
                ));
            }
            let wake = if next < order.len() {
                next_at.min(deadline)
            } else {
                deadline
            };
            // An answer ready as the deadline comes is taken.
            let step = tokio::select! {
                biased;
                done = first_done(&mut running), if !running.is_empty() => Step::Read(done),
                result = async { fallback.as_mut().expect("a fallback").await },
                    if fallback.is_some() => Step::Fallback(result),
                _ = tokio::time::sleep_until(wake) => Step::Timer,
            };
            let timed_out = match step {
                Step::Fallback(Ok((_, value))) => return Ok(value),
                // The deadline came for the usual way too: its message would miss the members
                // being asked here.
                Step::Fallback(Err(e))
                    if e.kind() == ErrorKind::Timeout && Instant::now() >= deadline =>
                {
                    true
                }
                Step::Fallback(Err(e)) => return Err(e),
                Step::Read((i, Ok(value))) => {
                    self.answered(i);
                    return Ok(value);
                }
                Step::Read((i, Err(e))) if !is_member_failure(&e) => {
                    return Err(self.contextualize_at(e, what, i));
                }
                Step::Read((i, Err(e))) => {
                    if is_unreachable(&e) {
                        unreached[i] = Some(e.message().to_string());
                    }
                    self.eject(i, &e);
                    failed = true;
                    next_at = Instant::now();
                    // The usual way, if it is running, was started while this read was in
                    // flight and leaves its member out: it starts again with the member among
                    // those to ask (once per member at most, as each read fails once).
                    fallback = None;
                    false
                }
                Step::Timer => Instant::now() >= deadline,
            };
            if timed_out {
                let first = running.iter().map(|(_, asked, _)| *asked).min();
                for (i, asked, _) in &running {
                    let message = format!(
                        "etcd at {} did not answer within {:?}",
                        self.endpoints[*i],
                        deadline.saturating_duration_since(*asked)
                    );
                    if Some(*asked) == first {
                        self.eject(*i, &Error::new(ErrorKind::Timeout, message.clone()));
                    }
                    unreached[*i] = Some(message);
                }
                return Err(timeout_error(what, self.timeout, &unreached));
            }
        }
    }

    /// Whether calls carry credentials (and so an auth token, which can expire).
    pub(crate) fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Runs `f` once on member `i`'s client, within an attempt's timeout: no failover, for a
    /// question about that member (its client's auth token is renewed, as on any call, when
    /// etcd says it expired).
    pub(crate) async fn call_on<T, F, Fut>(&self, i: usize, what: &str, f: F) -> Result<T>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let attempt = self.attempt_timeout();
        let call = async {
            let client = self.client_of(i).await?;
            self.with_fresh_token(i, &client, &f)
                .await
                .map_err(Error::from)
        };
        match tokio::time::timeout(attempt, call).await {
            Ok(result) => result.map_err(|e| contextualize(e, what)),
            Err(_) => Err(Error::timeout(what, attempt)),
        }
    }

    /// Runs `f` on `client`. When etcd refuses the client's auth token as older than its auth
    /// store (a JWT token handed out before a change to users or roles, which etcd refuses
    /// until the client authenticates again; etcd-client renews a token only when it expired),
    /// authenticates again and runs `f` once more, as etcd's own clients do.
    ///
    /// Calls refused together authenticate once: each authentication is a write in etcd's
    /// log, and a registry may have many calls in flight on a member.
    async fn with_fresh_token<T, F, Fut>(
        &self,
        i: usize,
        client: &Arc<Client>,
        f: &F,
    ) -> std::result::Result<T, etcd_client::Error>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let sent_at = Instant::now();
        match f(client).await {
            Err(e) if self.has_credentials() && is_old_auth_revision(&e) => {
                let mut last = self.token_renewed[i].lock().await;
                // Renewed since this call was sent, on this client (held by this call, so no
                // other client can have its address meanwhile): its token is the new one.
                let renewed =
                    last.is_some_and(|(of, at)| of == Arc::as_ptr(client) as usize && at > sent_at);
                if !renewed {
                    tracing::debug!(error = %e, "etcd's users or roles changed since the auth token was handed out; authenticating again");
                    client.refresh_token().await?;
                    *last = Some((Arc::as_ptr(client) as usize, Instant::now()));
                }
                drop(last);
                f(client).await
            }
            result => result,
        }
    }

    /// How long one member may take while others are left to try: a third of the timeout.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        (self.timeout / 3).max(Duration::from_millis(100))
    }

    /// Runs `f` on the members in turn, best first, within the timeout in all; returns the
    /// index of the member that answered with the result. While other members are left, one
    /// may take no longer than `attempt`; a member that fails at the transport level or takes
    /// longer is ejected and the next one is tried at once. An answer from etcd (even a
    /// refusal) is final.
    pub(crate) async fn call_at<T, F, Fut>(
        &self,
        what: &str,
        attempt: Duration,
        f: F,
    ) -> Result<(usize, T)>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_until(
            what,
            attempt,
            Instant::now() + self.timeout,
            f,
            None,
            Ongoing::default(),
        )
        .await
    }

    /// [`Connection::call_at`] for a write, setting `maybe_late` when an attempt was given up
    /// after its request may have reached its member (it went unanswered in time, or the
    /// connection broke after it was sent): that member may still carry the write out later,
    /// after the call has returned and after newer writes made through other members.
    pub(crate) async fn call_write<T, F, Fut>(
        &self,
        what: &str,
        attempt: Duration,
        maybe_late: &AtomicBool,
        f: F,
    ) -> Result<(usize, T)>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_until(
            what,
            attempt,
            Instant::now() + self.timeout,
            f,
            Some(maybe_late),
            Ongoing::default(),
        )
        .await
    }

    /// [`Connection::call_at`] with its deadline given (and see [`Connection::call_write`]).
    /// `ongoing`: what a call that began otherwise (see [`Connection::call_read`]) has done.
    async fn call_until<T, F, Fut>(
        &self,
        what: &str,
        attempt: Duration,
        deadline: Instant,
        f: F,
        maybe_late: Option<&AtomicBool>,
        ongoing: Ongoing,
    ) -> Result<(usize, T)>
    where
        F: Fn(&Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let Ongoing { busy, unreached } = ongoing;
        let mut tried: Vec<usize> = busy.clone();
        let mut last_error: Option<Error> = None;
        // The last failure to reach each member, for the message of a call that timed out.
        let mut unreached = if unreached.len() == self.endpoints.len() {
            unreached
        } else {
            vec![None; self.endpoints.len()]
        };
        let mut pause = READY_RETRY_MIN;
        // Pauses waited so far, after a whole round over the members reached none of them.
        let mut waited = 0usize;
        loop {
            let now = Instant::now();
            let mut order: Vec<usize> = self
                .health
                .order(now)
                .into_iter()
                .filter(|i| !tried.contains(i))
                .collect();
            if order.is_empty() {
                // Every member was tried. Not reached at all: wait for etcd (see the module doc).
                match last_error {
                    Some(e) if !is_unreachable(&e) => return Err(e),
                    _ => {}
                }
                let jittered = pause.mul_f64(1.0 - 0.5 * crate::backoff::random_unit());
                tokio::time::sleep_until(deadline.min(Instant::now() + jittered)).await;
                pause = (pause * 2).min(READY_RETRY_MAX);
                // From now on one member per pause, in turns: one connection attempt per
                // pause while etcd is down, not one per member.
                let n = self.endpoints.len();
                // In the health order: the ejected members (silent ones) take their turn last.
                let free: Vec<usize> = self
                    .health
                    .order(Instant::now())
                    .into_iter()
                    .filter(|j| !busy.contains(j))
                    .collect();
                let next = if free.is_empty() {
                    waited % n
                } else {
                    free[waited % free.len()]
                };
                waited += 1;
                tried = (0..n).filter(|&j| j != next).collect();
                order = vec![next];
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || order.is_empty() {
                return Err(timeout_error(what, self.timeout, &unreached));
            }
            let i = order[0];
            // The last member of the first round may take the rest of the time, unless it is
            // ejected (it was silent: the others, which failed, may be back sooner); while
            // waiting for etcd, one silent member must not keep the others from being tried.
            let several = self.endpoints.len() > 1;
            let limit = if order.len() > 1
                || !busy.is_empty()
                || (several && (waited > 0 || self.health.is_ejected(i, now)))
            {
                attempt.min(left)
            } else {
                left
            };
            let endpoint = &self.endpoints[i];
            // Boxed: a request's future is large (several KiB), and every task awaiting a call
            // would otherwise hold room for the largest one it ever makes.
            // Whether the request may have been sent: a client was at hand, and it did not
            // fail to connect.
            let (sent, unsent) = (AtomicBool::new(false), AtomicBool::new(false));
            let run = Box::pin(async {
                let without_user = self.without_user[i].load(Ordering::SeqCst);
                let client = self.client_of(i).await?;
                sent.store(true, Ordering::Relaxed);
                let result = self.with_fresh_token(i, &client, &f).await.map_err(|e| {
                    if unreachable_cause(&e).is_some() {
                        unsent.store(true, Ordering::Relaxed);
                    }
                    self.reached_error(i, e)
                });
                if !self.now_with_user(i, without_user, &result) {
                    return result;
                }
                // Refused before it was carried out: sent again, as if for the first time.
                let client = self.client_of(i).await?;
                self.with_fresh_token(i, &client, &f).await.map_err(|e| {
                    if unreachable_cause(&e).is_some() {
                        unsent.store(true, Ordering::Relaxed);
                    }
                    self.reached_error(i, e)
                })
            });
            // Whoever gives up on this call while the attempt is in flight (a caller's
            // timeout around it) gives up on a write that may land later, as a timeout here
            // does.
            let in_flight = LateIfDropped {
                flag: maybe_late,
                sent: &sent,
                unsent: &unsent,
            };
            let outcome = tokio::time::timeout(limit, run).await;
            std::mem::forget(in_flight);
            let may_land = sent.load(Ordering::Relaxed)
                && !unsent.load(Ordering::Relaxed)
                && match &outcome {
                    Ok(Ok(_)) => false,
                    Ok(Err(e)) => is_member_failure(e) && e.kind() != ErrorKind::Tls,
                    Err(_) => true,
                };
            if let Some(flag) = maybe_late.filter(|_| may_land) {
                flag.store(true, Ordering::SeqCst);
            }
            let error = match outcome {
                Ok(Ok(value)) => {
                    self.answered(i);
                    return Ok((i, value));
                }
                Ok(Err(e)) if is_member_failure(&e) => {
                    if is_unreachable(&e) {
                        unreached[i] = Some(e.message().to_string());
                    }
                    self.contextualize_at(e, what, i)
                }
                Ok(Err(e)) => return Err(self.contextualize_at(e, what, i)),
                Err(_) => {
                    let message = format!("etcd at {endpoint} did not answer within {limit:?}");
                    // An attempt cut short by the call's deadline (e.g. a connection attempt
                    // in flight when it came) says less than the member's earlier failure.
                    if unreached[i].is_none() || limit >= attempt {
                        unreached[i] = Some(message.clone());
                    }
                    Error::new(ErrorKind::Timeout, message)
                }
            };
            self.eject(i, &error);
            tried.push(i);
            last_error = Some(error);
        }
    }

    /// Waits until `until` (the end of a backoff step), but returns `true` as soon as etcd
    /// answers again after it could not be reached: `unreached` says the failure that led here
    /// was a connection lost or refused or a deadline etcd let pass, and a probe that fails or goes unanswered during the
    /// wait says so too. An etcd that answers at once while `unreached` is false was reached
    /// all along (the failure was an answer: auth, a refusal), so the whole step is slept:
    /// the backoff still paces retries against a reachable etcd.
    ///
    /// Probes are `Status` calls, one at a time, on the members in turn: while etcd is down
    /// they are connection attempts (0.1–0.2 s apart) that never reach it; a paused or
    /// black-holed member holds at most one unanswered probe per [`PROBE_TIMEOUT`]. The client
    /// a probe connects is the one the next attempt uses.
    pub(crate) async fn wait_back(&self, until: Instant, mut unreached: bool) -> bool {
        let mut k = 0usize;
        loop {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let order = self.health.order(now);
            let i = order[k % order.len()];
            let endpoint = &self.endpoints[i];
            let probe = self.status_of(i);
            let (answered, from_etcd) =
                match tokio::time::timeout_at(until.min(now + PROBE_TIMEOUT), probe).await {
                    Ok(Ok(())) => (true, true),
                    // An answer from etcd, even a refusal, shows it is reached; so does a TLS
                    // failure (a handshake answered): probing on would only repeat handshakes
                    // with a misconfigured client, and the next attempt reports it.
                    Ok(Err((e, from_etcd))) => (
                        !is_member_failure(&e) || e.kind() == ErrorKind::Tls,
                        from_etcd,
                    ),
                    Err(_) => (false, false),
                };
            // A late answer (a member resumed, a network healed) came from an etcd that was
            // not reached until then.
            if answered && now.elapsed() > PROBE_QUICK {
                unreached = true;
            }
            if answered {
                if unreached {
                    tracing::debug!(%endpoint, "etcd answers again; retrying before the backoff step ends");
                    return true;
                }
                tokio::time::sleep_until(until).await;
                return false;
            }
            unreached = true;
            // Not when etcd itself answered (e.g. "no leader" while the cluster has lost its
            // quorum): its connection works, and a new one per probe would only load it.
            if !from_etcd {
                self.forget_client(i);
            }
            k += 1;
            let pause = PROBE_PAUSE.mul_f64(1.0 - 0.5 * crate::backoff::random_unit());
            tokio::time::sleep_until(until.min(Instant::now() + pause)).await;
        }
    }

    /// The error of a call to member `i`, saying what was done; a TLS error names the endpoint
    /// (certificates are per server) and, without a client certificate, that one is required.
    fn contextualize_at(&self, err: Error, what: &str, i: usize) -> Error {
        if err.kind() != ErrorKind::Tls {
            return contextualize(err, what);
        }
        let mut message = err.message();
        if self.tls.as_ref().is_some_and(|t| !t.has_client_cert) {
            message = tls::without_client_cert(message);
        }
        Error::new(
            ErrorKind::Tls,
            format!("{what} ({}): {message}", self.endpoints[i]),
        )
    }

    /// A connection error names the endpoints it concerns (when it does not name one yet).
    pub(crate) fn located(&self, err: Error) -> Error {
        if err.kind() != ErrorKind::Connection || err.message().contains("etcd at ") {
            return err;
        }
        let at = match self.endpoints.as_slice() {
            [one] => format!("etcd at {one}"),
            many => format!("etcd at one of {}", many.join(", ")),
        };
        Error::new(ErrorKind::Connection, format!("{at}: {}", err.message()))
    }

    /// The member at `i` answered a call: it is back in use, and preferred.
    fn answered(&self, i: usize) {
        self.health.answered(i);
        self.reached(i);
    }

    /// The member at `i` answered a keep-alive: preferred unless it was ejected since it last
    /// answered a call (see [`Health::streamed`]).
    pub(crate) fn streamed(&self, i: usize) {
        self.health.streamed(i);
        self.reached(i);
    }

    /// The endpoint of member `i`, for logs and tests.
    pub(crate) fn endpoint(&self, i: usize) -> &str {
        &self.endpoints[i]
    }

    /// The endpoint calls go to now.
    pub(crate) fn active_endpoint(&self) -> &str {
        self.endpoint(self.health.order(Instant::now())[0])
    }

    /// Whether member `i` is ejected (given up for a while; see [`Connection::eject`]).
    pub(crate) fn is_ejected(&self, i: usize) -> bool {
        self.health.is_ejected(i, Instant::now())
    }

    /// Whether there is another member to turn to than `i`.
    pub(crate) fn has_alternative(&self, i: usize) -> bool {
        let now = Instant::now();
        (0..self.endpoints.len()).any(|j| j != i && !self.health.is_ejected(j, now))
    }

    /// Member `i` failed or stopped answering: avoid it for a while, drop its connection (a
    /// channel that went bad must never wedge the registry) and probe it back in the
    /// background.
    pub(crate) fn eject(&self, i: usize, why: &Error) {
        if self.endpoints.len() == 1 {
            // Nowhere else to go: only connect afresh next time.
            self.forget_client(i);
            return;
        }
        let Some(ejection) = self.health.eject(i, Instant::now()) else {
            return;
        };
        tracing::warn!(endpoint = %self.endpoints[i], period = ?ejection.period, error = %why, "etcd member ejected; using the others meanwhile");
        self.forget_client(i);
        if let Some(id) = ejection.start_probe {
            // Made here, not in the task: a task dropped before it first runs (its runtime
            // shut down) drops it too, and the member is not left ejected for good.
            let stopped = ProbeStopped {
                conn: self.this.clone(),
                i,
                id,
                armed: true,
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let generation = self.generation.load(Ordering::SeqCst);
                    handle.spawn(probe(stopped, generation));
                }
                Err(_) => drop(stopped),
            }
        }
    }

    /// Asks member `i` for its status. A failure says whether etcd itself answered it (a
    /// refusal such as "no leader", over a connection that works).
    async fn status_of(&self, i: usize) -> std::result::Result<(), (Error, bool)> {
        let client = self.client_of(i).await.map_err(|e| (e, false))?;
        match client.maintenance_client().status().await {
            Ok(_) => {
                self.reached(i);
                Ok(())
            }
            Err(e) => {
                let from_etcd = !not_answered(&e);
                Err((self.reached_error(i, e), from_etcd))
            }
        }
    }

    /// A request reached member `i` (etcd answered, even with a refusal): the failures to
    /// reach it before are no longer in a row, and no request to it is held back.
    fn reached(&self, i: usize) {
        let mut refused = lock(&self.refused[i]);
        if refused.is_some() {
            *refused = None;
        }
    }

    /// Whether a request to member `i`, made without the user (`without_user` before it), was
    /// refused because etcd turned its authentication on: its client was just dropped (see
    /// [`Connection::reached_error`]), and the request is made again at once with the
    /// credentials rather than failed with an error that the next attempt would not get.
    fn now_with_user<T>(&self, i: usize, without_user: bool, result: &Result<T>) -> bool {
        without_user
            && !self.without_user[i].load(Ordering::SeqCst)
            && matches!(result, Err(e) if e.kind() == ErrorKind::Auth)
    }

    /// The error of a request to member `i` (see [`reached_error`]); a request that did not
    /// reach it (see [`not_answered`]) is noted, for [`DIAL_GAP`].
    fn reached_error(&self, i: usize, err: etcd_client::Error) -> Error {
        let failed = not_answered(&err);
        let err = reached_error(&self.endpoints[i], err);
        // etcd turned its authentication on since this client was made without the user.
        if err.kind() == ErrorKind::Auth && self.without_user[i].swap(false, Ordering::SeqCst) {
            tracing::info!(endpoint = %self.endpoints[i], "etcd now requires authentication; connecting with the credentials");
            self.forget_client(i);
        }
        if !failed {
            self.reached(i);
        } else {
            let mut refused = lock(&self.refused[i]);
            let now = Instant::now();
            let streak = match &*refused {
                Some(r) if now.duration_since(r.at) < STREAK_WITHIN => r.streak.saturating_add(1),
                _ => 1,
            };
            *refused = Some(Refused {
                at: now,
                streak,
                error: err.clone(),
            });
        }
        err
    }

    /// Drops the client of member `i` (unless someone is connecting it right now), so that the
    /// next call connects afresh.
    fn forget_client(&self, i: usize) {
        if let Ok(mut slot) = self.clients[i].try_lock() {
            *slot = None;
        }
    }

    /// Connects to every endpoint and asks each for its status at once, so that the first
    /// operation finds warm connections and members that do not answer are already ejected.
    pub(crate) async fn warm_up(&self) {
        let checks = (0..self.endpoints.len()).map(|i| async move {
            let result = self
                .with_timeout("checking the member", async {
                    let mut client = self.client_of(i).await?.maintenance_client();
                    client.status().await.map_err(Error::from)
                })
                .await;
            (i, result)
        });
        let results = join_all(checks).await;
        for (i, result) in results {
            match result {
                Ok(_) => {}
                Err(e) if is_member_failure(&e) && self.endpoints.len() > 1 => self.eject(i, &e),
                Err(e) => {
                    tracing::debug!(endpoint = %self.endpoints[i], error = %e, "first connection attempt failed; operations will retry")
                }
            }
        }
    }

    pub(crate) async fn with_timeout<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Err(e)) if e.kind() == ErrorKind::Tls => {
                let mut message = e.message();
                if self.tls.as_ref().is_some_and(|t| !t.has_client_cert) {
                    message = tls::without_client_cert(message);
                }
                let endpoints = self.endpoints.join(", ");
                Err(Error::new(
                    ErrorKind::Tls,
                    format!("{what} ({endpoints}): {message}"),
                ))
            }
            Ok(result) => result.map_err(|e| contextualize(e, what)),
            Err(_) => Err(Error::timeout(what, self.timeout)),
        }
    }
}

/// The last failure to reach a member, and how many came in a row (see [`DIAL_GAP`]).
struct Refused {
    at: Instant,
    streak: u32,
    error: Error,
}

/// Whether a request failed without an answer from etcd: its connection could not be made, or
/// broke (a status made by the transport, which carries its cause, not one etcd sent).
fn not_answered(err: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match err {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(status) => std::error::Error::source(status).is_some(),
        _ => unreachable_cause(err).is_some(),
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// etcd-client's connect to one member, boxed out of line (see [`Connection::connecting`]).
#[inline(never)]
fn dial(endpoint: &str, options: ConnectOptions) -> Pin<Box<Dialing<'_>>> {
    Box::pin(Client::connect([endpoint], Some(options)))
}

type Dialing<'a> = dyn Future<Output = std::result::Result<Client, etcd_client::Error>> + Send + 'a;

/// An error of member `endpoint`: a failure to reach it says so, with the endpoint and the
/// cause ("cannot reach etcd at http://127.0.0.1:2379: connection refused").
fn reached_error(endpoint: &str, err: etcd_client::Error) -> Error {
    match unreachable_cause(&err) {
        Some(cause) => Error::new(
            ErrorKind::Connection,
            format!("cannot reach etcd at {endpoint}: {cause}"),
        ),
        None => {
            let err = Error::from(err);
            if err.kind() == ErrorKind::Connection {
                Error::new(
                    ErrorKind::Connection,
                    format!("etcd at {endpoint}: {}", err.message()),
                )
            } else {
                err
            }
        }
    }
}

/// Whether `err` says that etcd was not reached (worth waiting for), as opposed to an answer.
fn is_unreachable(err: &Error) -> bool {
    matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout)
}

/// What a call has done before it goes on the usual way ([`Connection::call_until`]).
#[derive(Default)]
struct Ongoing {
    /// Members being asked already: they are not asked again, and none of the others may take
    /// the rest of the time.
    busy: Vec<usize>,
    /// The last failure to reach each member (empty: none yet), for a timeout's message.
    unreached: Vec<Option<String>>,
}

/// Sets `flag` when dropped after the request was sent (a client was at hand, and it did not
/// fail to connect): dropped, the attempt of a write was given up with its outcome unknown.
struct LateIfDropped<'a> {
    flag: Option<&'a AtomicBool>,
    sent: &'a AtomicBool,
    unsent: &'a AtomicBool,
}

impl Drop for LateIfDropped<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.flag {
            if self.sent.load(Ordering::Relaxed) && !self.unsent.load(Ordering::Relaxed) {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The first of `running`'s reads to end, with its member, taken out of `running`.
async fn first_done<T, R: Future<Output = T> + Unpin>(
    running: &mut Vec<(usize, Instant, R)>,
) -> (usize, T) {
    std::future::poll_fn(|cx| {
        for k in 0..running.len() {
            if let std::task::Poll::Ready(out) = Pin::new(&mut running[k].2).poll(cx) {
                let (i, _, _) = running.swap_remove(k);
                return std::task::Poll::Ready((i, out));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The timeout error of `what`, with the last failure to reach each member that was tried.
fn timeout_error(what: &str, timeout: Duration, unreached: &[Option<String>]) -> Error {
    let err = Error::timeout(what, timeout);
    let causes: Vec<&str> = unreached.iter().flatten().map(String::as_str).collect();
    if causes.is_empty() {
        return err;
    }
    Error::new(
        ErrorKind::Timeout,
        format!("{}: {}", err.message(), causes.join("; ")),
    )
}

/// The end of a probe (see [`probe`]) that stopped without an answer: when dropped armed,
/// the member is no longer followed (a new ejection starts another probe, and the member is not
/// left ejected for good: it stays ejected while a probe follows it).
struct ProbeStopped {
    conn: Weak<Connection>,
    i: usize,
    id: u64,
    armed: bool,
}

impl Drop for ProbeStopped {
    fn drop(&mut self) {
        if let (true, Some(c)) = (self.armed, self.conn.upgrade()) {
            c.health.probe_stopped(self.i, self.id);
        }
    }
}

/// Follows an ejected member: when its ejection is over, asks for its status (on a fresh
/// connection); an answer puts it back in use, silence or a failure ejects it for longer.
/// Ended any other way than below (its runtime shut down, a panic), `stopped` marks the member
/// unprobed; superseded (the member answered a call meanwhile), it ends.
async fn probe(mut stopped: ProbeStopped, generation: u64) {
    let (conn, i, id) = (stopped.conn.clone(), stopped.i, stopped.id);
    loop {
        let Some(c) = conn.upgrade() else { return };
        if c.generation.load(Ordering::SeqCst) != generation {
            c.health.probe_stopped(i, id);
            stopped.armed = false;
            return;
        }
        let Some(until) = c.health.probe_due(i, id) else {
            // Back in use meanwhile (it answered a call; `probe_due` marked it unprobed), or
            // superseded.
            stopped.armed = false;
            return;
        };
        if until > Instant::now() {
            drop(c);
            tokio::time::sleep_until(until).await;
            continue;
        }
        let result = tokio::time::timeout(c.timeout, c.status_of(i)).await;
        // Any answer from etcd, even a refusal, shows the member is back.
        let (answered, from_etcd) = match &result {
            Ok(Ok(())) => (true, true),
            Ok(Err((e, from_etcd))) => (!is_member_failure(e), *from_etcd),
            Err(_) => (false, false),
        };
        if answered {
            tracing::info!(endpoint = %c.endpoints[i], "etcd member answers again; back in use");
            c.health.reinstate(i, id);
            stopped.armed = false;
            return;
        }
        let Some(until) = c.health.probe_failed(i, id, Instant::now()) else {
            stopped.armed = false;
            return;
        };
        tracing::debug!(endpoint = %c.endpoints[i], back_in = ?until.saturating_duration_since(Instant::now()), "etcd member still does not answer");
        // As in `wait_back`: a refusal came over a connection that works.
        if !from_etcd {
            c.forget_client(i);
        }
    }
}

/// Runs futures concurrently and returns their outputs in order (no extra dependency).
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (k, f) in set.iter_mut().enumerate() {
            if outputs[k].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[k] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}

/// A failure that says the member (or the way to it) is unwell, not that etcd refused.
/// etcd's refusal of an auth token older than its auth store: "revision of auth store is old"
/// (`InvalidArgument`), or, from etcd 3.5.1 and older, its internal "auth: revision in header
/// is old" (`Unknown`).
pub(crate) fn is_old_auth_revision(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            crate::error::is_old_auth_revision(status.message())
        }
        _ => false,
    }
}

pub(crate) fn is_member_failure(e: &Error) -> bool {
    // TLS too: a member restarting mid-handshake fails so; a wrong CA fails on every member
    // alike, and the last member's error is returned at once.
    matches!(
        e.kind(),
        ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Tls
    )
}

fn contextualize(err: Error, what: &str) -> Error {
    if err.kind() == ErrorKind::Timeout {
        return err;
    }
    Error::new(err.kind(), format!("{what}: {}", err.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write whose caller gives up on it while its request is on the way (a timeout around
    /// the call, shorter than the library's) is marked as one that may land late, and it does.
    #[test]
    fn a_write_given_up_by_its_caller_in_flight_is_marked_as_one_that_may_land_late() {
        let etcd = etcd_harness::EtcdCluster::builder()
            .proxy(true)
            .start()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let conn = Connection::new(etcd.endpoints(), None, Duration::from_secs(10), None);
            let late = AtomicBool::new(false);
            let put = |value: &'static str| {
                move |c: &Client| {
                    let mut kv = c.kv_client();
                    async move { kv.put("/late/k", value, None).await }
                }
            };
            let attempt = conn.attempt_timeout();
            conn.call_write("a put", attempt, &late, put("1"))
                .await
                .unwrap();
            assert!(!late.load(Ordering::SeqCst), "a write answered is not late");

            etcd.delay_member(0, Duration::from_secs(1)).unwrap();
            let given_up = tokio::time::timeout(
                Duration::from_millis(300),
                conn.call_write("a put", attempt, &late, put("2")),
            )
            .await;
            assert!(given_up.is_err(), "the caller gave up first");
            assert!(
                late.load(Ordering::SeqCst),
                "a write given up in flight is not marked as one that may land late"
            );
            // And it lands.
            let deadline = Instant::now() + Duration::from_secs(30);
            while etcd.get("/late/k").unwrap().as_deref() != Some("2") {
                assert!(Instant::now() < deadline, "the write never landed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            etcd.delay_member(0, Duration::ZERO).unwrap();
        });
    }

    /// A member ejected from a runtime that shuts down before its probe first runs (a caller's
    /// throwaway runtime) is not left ejected for good.
    #[test]
    fn a_probe_never_run_leaves_no_member_ejected_for_good() {
        let endpoints = vec!["127.0.0.1:9".to_string(), "127.0.0.1:10".to_string()];
        let conn = Connection::new(endpoints, None, Duration::from_secs(10), None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { conn.eject(0, &Error::timeout("a call", Duration::ZERO)) });
        assert!(conn.is_ejected(0));
        drop(runtime);
        let later = Instant::now() + crate::health::EJECT_MIN + Duration::from_millis(1);
        assert!(
            !conn.health.is_ejected(0, later),
            "the member stays ejected after its period with no probe following it"
        );
    }
}
