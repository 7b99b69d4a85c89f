//! One Watch stream per registry, shared by all its watches (the service watches, and the
//! watches of its own keys that each lease's task keeps), as etcd's Go client shares one stream
//! among a client's watches: etcd carries one stream per registry rather than one per watch.
//!
//! The stream is opened by the first watch that needs it and closed when its last watch leaves.
//! A task owns it: it sends the watches' create and cancel requests, hands each response to the
//! watch it belongs to (a service watch's events it applies itself, see [`Inline`]), and, while a service watch is on it, asks for a progress report when the
//! whole stream is quiet (the watches of a registry's own keys need none: their lease's
//! keep-alives watch the member, and a stream that carries only them costs no request while
//! nothing changes). When the stream fails, or its member does not answer that report in time or
//! is given up by a lease's keep-alive (the member is ejected), every watch on it is told and
//! resumes on its own, on a new stream that the first of them opens and the others join.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::conn::{is_member_failure, Connection};
use crate::error::{Error, ErrorKind, Result};

/// How long a watch stream may stay quiet before it asks its member for a progress report, and
/// how long that report may take before the member is given up for another. Both half the
/// call timeout, within [0.5 s, 5 s].
pub(crate) fn watch_liveness(timeout: Duration) -> Duration {
    (timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// What a watch gets from the shared stream.
pub(crate) enum Delivery {
    /// A response for its own watcher: created, events, progress, cancelled or compacted.
    Response(WatchResponse),
    /// The stream is gone. `silent`: its member stopped answering and was ejected, so the watch
    /// may resume at once on another one.
    Ended { error: Error, silent: bool },
}

/// Takes responses of a watcher on the stream's task, as they come, before its channel does:
/// true when it took the response, which then does not go to the channel. A service watch applies
/// its events there, one hand-over between tasks fewer per event than through the channel.
pub(crate) type Inline = Arc<dyn Fn(&WatchResponse) -> bool + Send + Sync>;

/// A watcher to start.
struct NewWatcher {
    token: u64,
    key: Vec<u8>,
    options: WatchOptions,
    sink: UnboundedSender<Delivery>,
    inline: Option<Inline>,
    /// Whether the stream must check its member while this watcher is on it.
    checked: bool,
}

enum Command {
    Add(Box<NewWatcher>),
    Cancel {
        token: u64,
    },
    /// The stream's member was given up elsewhere: end every watch, which resumes elsewhere.
    Abandon,
    /// Whether the key of a watch refused for authentication could be read (see
    /// [`Session::may_be_stale_token`]).
    Probed {
        token: u64,
        readable: bool,
    },
}

/// How old a stream opened with a renewed token (after one was ended for its stale token) must
/// be for a refusal of its auth token to be taken for an expired token again: until then it is
/// a lack of permission.
const STALE_TOKEN_AGE: Duration = Duration::from_secs(1);

/// No member: see `WatchMux::token_reopened`.
const NO_MEMBER: usize = usize::MAX;

/// Whether etcd refused a watcher for its authentication: no permission, or a token that
/// expired after the stream was opened (etcd checks the token a stream was opened with for
/// each watcher it creates; versions differ in the reason they give).
fn is_auth_refusal(reason: &str) -> bool {
    reason.contains("permission denied") || reason.contains("invalid auth token")
}

/// The open stream, as the registry's slot holds it.
struct Open {
    commands: UnboundedSender<Command>,
    member: usize,
}

/// The shared stream of one registry's connection.
pub(crate) struct WatchMux {
    conn: Arc<Connection>,
    handle: tokio::runtime::Handle,
    /// The task that owns the open stream; `None` while none is open.
    session: tokio::sync::Mutex<Option<Open>>,
    next_token: AtomicU64,
    /// The member whose stream was ended as its token was found stale (see
    /// [`Session::probed`]; [`NO_MEMBER`] for none): the next stream opened there carries a
    /// renewed token, and a refusal in its first moments is not probed again.
    token_reopened: AtomicUsize,
}

/// One watch on the shared stream: a watcher in etcd, and more that [`Subscription::add`] puts
/// on the same stream, whose responses all come to it. Dropping it cancels them.
pub(crate) struct Subscription {
    mux: Arc<WatchMux>,
    /// Its first watcher.
    token: u64,
    /// Its watchers on the stream (their tokens).
    tokens: HashSet<u64>,
    checked: bool,
    commands: UnboundedSender<Command>,
    /// Where its watchers' responses go.
    sink: UnboundedSender<Delivery>,
    inline: Option<Inline>,
    deliveries: UnboundedReceiver<Delivery>,
    /// The answer to its creation, taken by [`WatchMux::subscribe`], delivered first.
    first: Option<Delivery>,
}

impl Subscription {
    /// The token of the watcher it began with.
    pub(crate) fn first(&self) -> u64 {
        self.token
    }

    /// Starts another watcher, of `key` with `options`, on the same stream; its responses come
    /// with the others'. Its token, for [`Subscription::cancel`]. Fails once the stream ended.
    pub(crate) fn add(&mut self, key: &[u8], options: WatchOptions) -> Result<u64> {
        let token = self.mux.next_token.fetch_add(1, Ordering::Relaxed);
        let add = NewWatcher {
            token,
            key: key.to_vec(),
            options,
            sink: self.sink.clone(),
            inline: self.inline.clone(),
            checked: self.checked,
        };
        self.commands
            .send(Command::Add(Box::new(add)))
            .map_err(|_| Error::new(ErrorKind::Connection, "the watch stream ended"))?;
        self.tokens.insert(token);
        Ok(token)
    }

    /// Cancels the watcher `token` of this subscription.
    pub(crate) fn cancel(&mut self, token: u64) -> Result<()> {
        if self.tokens.remove(&token) {
            self.commands
                .send(Command::Cancel { token })
                .map_err(|_| Error::new(ErrorKind::Connection, "the watch stream ended"))?;
        }
        Ok(())
    }

    /// The next response for this watch, or the end of its stream.
    pub(crate) async fn next(&mut self) -> Delivery {
        if let Some(first) = self.first.take() {
            return first;
        }
        self.deliveries
            .recv()
            .await
            .unwrap_or_else(|| Delivery::Ended {
                error: Error::new(ErrorKind::Connection, "the watch stream ended"),
                silent: false,
            })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A stream already gone has nothing to cancel.
        for token in self.tokens.drain() {
            let _ = self.commands.send(Command::Cancel { token });
        }
    }
}

impl WatchMux {
    pub(crate) fn new(conn: Arc<Connection>, handle: tokio::runtime::Handle) -> Arc<WatchMux> {
        Arc::new(WatchMux {
            conn,
            handle,
            session: tokio::sync::Mutex::new(None),
            next_token: AtomicU64::new(1),
            token_reopened: AtomicUsize::new(NO_MEMBER),
        })
    }

    /// Starts a watcher of `key` with `options` on the open stream, or opens one with it (on a
    /// healthy member, each try given `attempt`) when none is open, or when the open one's member
    /// has been ejected since (a lease's keep-alive gave it up: the watches on it move too).
    /// `checked`: the stream checks its member while this watch is on it (see the module's
    /// documentation). `inline` takes responses before the subscription's channel (see
    /// [`Inline`]); the answer to the creation always goes to the channel. Returns once etcd has
    /// answered the watcher's creation, or the stream ended (the answer, or the end, is then the
    /// subscription's first delivery).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        key: &[u8],
        options: WatchOptions,
        attempt: Duration,
        checked: bool,
        inline: Option<Inline>,
    ) -> Result<Subscription> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sink, deliveries) = mpsc::unbounded_channel();
        let add = NewWatcher {
            token,
            key: key.to_vec(),
            options,
            sink: sink.clone(),
            inline: inline.clone(),
            checked,
        };
        let commands = self.start(add, attempt).await?;
        let mut subscription = Subscription {
            mux: self.clone(),
            token,
            tokens: HashSet::from([token]),
            checked,
            commands,
            sink,
            inline,
            deliveries,
            first: None,
        };
        // A watch in place is a watcher in etcd: what is registered is watched from then on.
        subscription.first = subscription.deliveries.recv().await;
        Ok(subscription)
    }

    /// Puts the watcher of `add` on the open stream, or opens one with it; the stream's commands.
    async fn start(
        self: &Arc<Self>,
        add: NewWatcher,
        attempt: Duration,
    ) -> Result<UnboundedSender<Command>> {
        // Held while a stream is opened: watches starting meanwhile join it.
        let mut session = self.session.lock().await;
        let add = match session.take() {
            Some(open) if self.conn.is_ejected(open.member) => {
                let _ = open.commands.send(Command::Abandon);
                add
            }
            Some(open) => match open.commands.send(Command::Add(Box::new(add))) {
                Ok(()) => {
                    let commands = open.commands.clone();
                    *session = Some(open);
                    return Ok(commands);
                }
                // Refused only by a task that ended without clearing the slot (it panicked).
                Err(mpsc::error::SendError(Command::Add(add))) => *add,
                Err(_) => return Err(Error::new(ErrorKind::Internal, "a watch lost on its way")),
            },
            None => add,
        };
        let NewWatcher {
            token,
            key,
            options,
            sink,
            inline,
            checked,
        } = add;
        let (member, stream) = self
            .conn
            .call_at("starting a watch", attempt, |c| {
                // Events of one revision come in one message, of any size.
                let mut watch = c.watch_client().max_decoding_message_size(usize::MAX);
                let (key, options) = (key.clone(), options.clone());
                async move { watch.watch(key, Some(options)).await }
            })
            .await?;
        let (requests, responses) = stream.split();
        let (commands, inbox) = mpsc::unbounded_channel();
        let task = Session {
            mux: self.clone(),
            me: commands.clone(),
            member,
            requests,
            responses,
            inbox,
            pending: VecDeque::from([(token, key)]),
            tokens: HashMap::new(),
            held: HashMap::new(),
            opened: Instant::now(),
            after_token_reopen: self.token_reopened.swap(NO_MEMBER, Ordering::SeqCst) == member,
            subs: HashMap::from([(
                token,
                Sub {
                    sink,
                    inline,
                    id: None,
                    checked,
                },
            )]),
            checked: usize::from(checked),
            liveness: watch_liveness(self.conn.timeout),
        };
        self.handle.spawn(task.run());
        *session = Some(Open {
            commands: commands.clone(),
            member,
        });
        Ok(commands)
    }
}

/// Sends a request on the stream of `member`, given `liveness`: a member that stops reading
/// (paused with its connection open) fills the stream's buffer, and is then ejected.
async fn bounded<F>(conn: &Connection, member: usize, liveness: Duration, request: F) -> Result<()>
where
    F: std::future::Future<Output = std::result::Result<(), etcd_client::Error>>,
{
    match tokio::time::timeout(liveness, request).await {
        Ok(sent) => Ok(sent?),
        Err(_) => {
            let e = Error::new(
                ErrorKind::Timeout,
                format!("watch requests unread for {liveness:?}"),
            );
            conn.eject(member, &e);
            Err(e)
        }
    }
}

/// How the stream ends after a request failed: [`bounded`]'s timeout means a silent member.
fn sent_failed(e: Error) -> Option<(Error, bool)> {
    let silent = e.kind() == ErrorKind::Timeout;
    Some((e, silent))
}

struct Sub {
    sink: UnboundedSender<Delivery>,
    inline: Option<Inline>,
    /// The watcher's id, once etcd has said it.
    id: Option<i64>,
    checked: bool,
}

/// The task that owns an open stream. Every watch on it is told when it ends (a subscription
/// holds a sender of its own deliveries, to add watchers: it waits for that word).
struct Session {
    mux: Arc<WatchMux>,
    /// Its own commands' sender: tells whether the registry's slot still names this session.
    me: UnboundedSender<Command>,
    member: usize,
    requests: WatchRequestSender,
    responses: WatchResponseStream,
    inbox: UnboundedReceiver<Command>,
    /// Watches whose create request was sent and not answered yet, with their keys, in the
    /// order sent (etcd answers creates in order).
    pending: VecDeque<(u64, Vec<u8>)>,
    /// The watch of each watcher id etcd gave.
    tokens: HashMap<i64, u64>,
    /// Refusals held back while [`Session::may_be_stale_token`] finds out whether they are
    /// the stream's expired token.
    held: HashMap<u64, WatchResponse>,
    opened: Instant,
    /// Opened after a stream was ended for its stale token.
    after_token_reopen: bool,
    subs: HashMap<u64, Sub>,
    /// How many of `subs` are checked: the member is checked while any is.
    checked: usize,
    liveness: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Watches are left here only when the task did not end by `run` (it panicked).
        for (_, sub) in self.subs.drain() {
            let _ = sub.sink.send(Delivery::Ended {
                error: Error::new(ErrorKind::Internal, "the watch stream's task failed"),
                silent: false,
            });
        }
    }
}

impl Session {
    async fn run(mut self) {
        let Some((error, silent)) = self.serve().await else {
            return;
        };
        // Watches resuming must open a new stream, not join this one.
        {
            let mut slot = self.mux.session.lock().await;
            if slot
                .as_ref()
                .is_some_and(|s| s.commands.same_channel(&self.me))
            {
                *slot = None;
            }
        }
        // Watches added after the stream failed and before the slot was cleared end too.
        self.inbox.close();
        while let Ok(command) = self.inbox.try_recv() {
            if let Command::Add(add) = command {
                let NewWatcher { token, sink, .. } = *add;
                let sub = Sub {
                    sink,
                    inline: None,
                    id: None,
                    checked: false,
                };
                self.subs.insert(token, sub);
            }
        }
        for (_, sub) in self.subs.drain() {
            let _ = sub.sink.send(Delivery::Ended {
                error: error.clone(),
                silent,
            });
        }
    }

    /// Serves the stream until it fails (its error, and whether its member went silent) or no
    /// watch is left on it (`None`, the slot cleared).
    async fn serve(&mut self) -> Option<(Error, bool)> {
        // A quiet stream asks for a progress report; one not answered in time means the member
        // is paused, overloaded or cut off (a paused member keeps its TCP connections open, so
        // the stream would otherwise wait for the HTTP/2 ping to fail, or forever).
        let mut asked_at: Option<Instant> = None;
        let mut quiet_since = Instant::now();
        loop {
            let checking = self.checked > 0;
            if !checking {
                asked_at = None;
            }
            let wake = asked_at.unwrap_or(quiet_since) + self.liveness;
            // Biased: an answer that came as the deadline passed (the task ran late) is taken
            // rather than the member given up.
            tokio::select! {
                biased;
                command = self.inbox.recv() => {
                    // `me` keeps the channel open.
                    let command = command?;
                    if let Command::Probed { token, readable } = command {
                        if let Some(end) = self.probed(token, readable) {
                            return Some(end);
                        }
                    } else if let Err(e) = self.command(command).await {
                        return sent_failed(e);
                    }
                    if self.subs.is_empty() {
                        match self.end_if_unused().await {
                            Ok(true) => return None,
                            Ok(false) => {}
                            Err(e) => {
                                return sent_failed(e);
                            }
                        }
                    }
                }
                message = self.responses.message() => {
                    asked_at = None;
                    quiet_since = Instant::now();
                    match message {
                        Ok(Some(resp)) => {
                            if let Err(e) = self.route(resp).await {
                                return sent_failed(e);
                            }
                        }
                        Ok(None) => {
                            let e = Error::new(ErrorKind::Connection, "the watch stream was closed by etcd");
                            return Some((e, false));
                        }
                        Err(e) => {
                            let e = Error::from(e);
                            if is_member_failure(&e) {
                                self.mux.conn.eject(self.member, &e);
                            }
                            return Some((e, false));
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake), if checking => {
                    if asked_at.is_some() {
                        let e = Error::new(
                            ErrorKind::Timeout,
                            format!("watch unanswered for {:?}", self.liveness),
                        );
                        self.mux.conn.eject(self.member, &e);
                        return Some((e, true));
                    }
                    // A watcher's creation not answered yet is the question outstanding (etcd
                    // answers it at once). No progress request goes behind it: etcd 3.4.25-3.4.30
                    // and 3.5.8-3.5.12 defer one that comes while a new watcher catches up, and
                    // then ignore every later one on the stream (etcd-io/etcd#17507), so the
                    // member would be taken for silent.
                    if !self.pending.is_empty() {
                        asked_at = Some(Instant::now());
                        continue;
                    }
                    let asked = self.requests.request_progress();
                    if let Err(e) = bounded(&self.mux.conn, self.member, self.liveness, asked).await {
                        return sent_failed(e);
                    }
                    asked_at = Some(Instant::now());
                }
            }
        }
    }

    async fn command(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Add(add) => {
                let NewWatcher {
                    token,
                    key,
                    options,
                    sink,
                    inline,
                    checked,
                } = *add;
                let create = self.requests.watch(key.clone(), Some(options));
                let sent = bounded(&self.mux.conn, self.member, self.liveness, create).await;
                // Kept even when the create could not be sent: a failed send ends the stream,
                // and the end is told to every watch kept here (its subscriber waits for it).
                let sub = Sub {
                    sink,
                    inline,
                    id: None,
                    checked,
                };
                self.subs.insert(token, sub);
                sent?;
                self.pending.push_back((token, key));
                self.checked += usize::from(checked);
            }
            Command::Cancel { token } => {
                self.held.remove(&token);
                let Some(sub) = self.subs.remove(&token) else {
                    return Ok(());
                };
                self.checked -= usize::from(sub.checked);
                if let Some(id) = sub.id {
                    self.tokens.remove(&id);
                    let cancel = self.requests.cancel(id);
                    bounded(&self.mux.conn, self.member, self.liveness, cancel).await?;
                }
            }
            // Handled by `serve`.
            Command::Probed { .. } => {}
            Command::Abandon => {
                let endpoint = self.mux.conn.endpoint(self.member);
                tracing::debug!(%endpoint, "the watch stream moves off a member given up");
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("etcd member {endpoint} was given up"),
                ));
            }
        }
        Ok(())
    }

    /// With no watch left, closes the stream unless a watch was added meanwhile; true if closed.
    async fn end_if_unused(&mut self) -> Result<bool> {
        let mux = self.mux.clone();
        let mut slot = mux.session.lock().await;
        // Every watch added before the lock was taken is in the inbox now.
        while let Ok(command) = self.inbox.try_recv() {
            self.command(command).await?;
        }
        if !self.subs.is_empty() {
            return Ok(false);
        }
        if slot
            .as_ref()
            .is_some_and(|s| s.commands.same_channel(&self.me))
        {
            *slot = None;
        }
        // A watcher added since, to a subscription whose watchers all left (a subscription
        // sends on its own sender, not through the slot), is told the stream ended, so that it
        // opens a new one; one added after this is refused, as to any stream that ended.
        self.inbox.close();
        while let Ok(command) = self.inbox.try_recv() {
            if let Command::Add(add) = command {
                let _ = add.sink.send(Delivery::Ended {
                    error: Error::new(ErrorKind::Connection, "the watch stream was closed"),
                    silent: true,
                });
            }
        }
        Ok(true)
    }

    /// Hands a response to the watch it belongs to.
    async fn route(&mut self, resp: WatchResponse) -> Result<()> {
        let id = resp.watch_id();
        let token = if resp.created() {
            let Some((token, key)) = self.pending.pop_front() else {
                return Ok(());
            };
            match self.subs.get_mut(&token) {
                Some(sub) => {
                    if !resp.canceled() {
                        sub.id = Some(id);
                        self.tokens.insert(id, token);
                    } else if self.may_be_stale_token(&resp) {
                        self.probe(token, key);
                        self.held.insert(token, resp);
                        return Ok(());
                    }
                }
                // Left before etcd made its watcher.
                None if !resp.canceled() => {
                    let cancel = self.requests.cancel(id);
                    return bounded(&self.mux.conn, self.member, self.liveness, cancel).await;
                }
                None => return Ok(()),
            }
            token
        } else {
            // Id -1: the answer to this task's progress request, which only shows the member is
            // alive; otherwise a watcher since cancelled, whose late responses nobody wants.
            match self.tokens.get(&id) {
                Some(token) => *token,
                None => return Ok(()),
            }
        };
        self.deliver(token, resp);
        Ok(())
    }

    fn deliver(&self, token: u64, resp: WatchResponse) {
        if let Some(sub) = self.subs.get(&token) {
            if sub.inline.as_ref().is_some_and(|take| take(&resp)) {
                return;
            }
            // A watch gone meanwhile has sent its cancel, which comes next.
            let _ = sub.sink.send(Delivery::Response(resp));
        }
    }

    /// A watcher refused for authentication, by a registry with credentials: etcd checks the
    /// token the stream was opened with, which expires (the `--auth-token-ttl` of simple
    /// tokens, 5 min by default; a restart) while calls renew theirs. Every watcher made on
    /// the stream from then on would be refused, for ever. A stream just opened may carry an
    /// expired token too: its member's client renews its token only when a call of its own is
    /// refused, and one that only carried keep-alives (which etcd does not check) or nothing
    /// since the registry connected has not. Only a stream opened after one was ended for its
    /// token, with a renewed one, takes a refusal in its first moments for a lack of permission
    /// at once (the probe may read a narrower range than the watch: no loop of reopening).
    fn may_be_stale_token(&self, resp: &WatchResponse) -> bool {
        let reason = resp.cancel_reason();
        let young = self.opened.elapsed() < STALE_TOKEN_AGE;
        self.mux.conn.has_credentials()
            && (crate::error::is_old_auth_revision(reason)
                || (is_auth_refusal(reason) && !(young && self.after_token_reopen)))
    }

    /// Reads the refused watcher's key on the stream's member, beside the stream: a refusal of
    /// a key that can be read is the stream's expired or old token (the read renews the
    /// member's token then). Answers with [`Command::Probed`].
    fn probe(&self, token: u64, key: Vec<u8>) {
        let (conn, me, member) = (self.mux.conn.clone(), self.me.clone(), self.member);
        self.mux.handle.spawn(async move {
            let read = conn
                .call_on(member, "reading a key whose watch was refused", |c| {
                    let mut kv = c.kv_client();
                    // A key ending in '/' is watched with its prefix (as every caller does).
                    let mut options = etcd_client::GetOptions::new().with_count_only();
                    if key.ends_with(b"/") {
                        options = options.with_prefix();
                    }
                    let key = key.clone();
                    async move { kv.get(key, Some(options)).await }
                })
                .await;
            let _ = me.send(Command::Probed {
                token,
                readable: read.is_ok(),
            });
        });
    }

    /// The answer of [`Session::probe`]: a key that can be read ends the stream (every watch
    /// resumes at once on a new one, opened with a renewed token); otherwise the refusal is
    /// delivered.
    fn probed(&mut self, token: u64, readable: bool) -> Option<(Error, bool)> {
        // Cancelled meanwhile.
        let resp = self.held.remove(&token)?;
        if readable && self.subs.contains_key(&token) {
            let endpoint = self.mux.conn.endpoint(self.member);
            tracing::info!(%endpoint, "etcd refused a watch with the expired or old auth token of the watch stream; reopening it");
            self.mux.token_reopened.store(self.member, Ordering::SeqCst);
            let e = Error::new(
                ErrorKind::Auth,
                format!("the auth token of the watch stream on {endpoint} expired or is old"),
            );
            // Silent: resumed at once, not after a backoff step.
            return Some((e, true));
        }
        self.deliver(token, resp);
        None
    }
}
