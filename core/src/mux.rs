//! One Watch stream per registry, shared by all its service watches, as etcd's Go client shares
//! one stream among a client's watches: etcd carries one stream, and one progress check while it
//! is quiet, per registry rather than per watch.
//!
//! The stream is opened by the first watch that needs it and closed when its last watch leaves.
//! A task owns it: it sends the watches' create and cancel requests, hands each response to the
//! watch it belongs to, and asks for a progress report when the whole stream is quiet. When the
//! stream fails, or its member does not answer that report in time (the member is then ejected),
//! every watch on it is told and resumes on its own, on a new stream that the first of them opens
//! and the others join.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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

enum Command {
    Add {
        token: u64,
        key: String,
        options: WatchOptions,
        sink: UnboundedSender<Delivery>,
    },
    Cancel {
        token: u64,
    },
}

/// The shared stream of one registry's connection.
pub(crate) struct WatchMux {
    conn: Arc<Connection>,
    handle: tokio::runtime::Handle,
    /// The commands of the task that owns the open stream; `None` while none is open.
    session: tokio::sync::Mutex<Option<UnboundedSender<Command>>>,
    next_token: AtomicU64,
}

/// One watch on the shared stream; dropping it cancels the watcher in etcd.
pub(crate) struct Subscription {
    token: u64,
    commands: UnboundedSender<Command>,
    deliveries: UnboundedReceiver<Delivery>,
}

impl Subscription {
    /// The next response for this watch, or the end of its stream.
    pub(crate) async fn next(&mut self) -> Delivery {
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
        let _ = self.commands.send(Command::Cancel { token: self.token });
    }
}

impl WatchMux {
    pub(crate) fn new(conn: Arc<Connection>, handle: tokio::runtime::Handle) -> Arc<WatchMux> {
        Arc::new(WatchMux {
            conn,
            handle,
            session: tokio::sync::Mutex::new(None),
            next_token: AtomicU64::new(1),
        })
    }

    /// Starts a watcher of `key` with `options` on the open stream, or opens one with it (on a
    /// healthy member, each try given `attempt`) when none is open.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        key: &str,
        options: WatchOptions,
        attempt: Duration,
    ) -> Result<Subscription> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sink, deliveries) = mpsc::unbounded_channel();
        // Held while a stream is opened: watches starting meanwhile join it.
        let mut session = self.session.lock().await;
        if let Some(commands) = session.as_ref() {
            let add = Command::Add {
                token,
                key: key.to_string(),
                options: options.clone(),
                sink: sink.clone(),
            };
            // Refused only by a task that ended without clearing the slot (it panicked).
            if commands.send(add).is_ok() {
                return Ok(Subscription {
                    token,
                    commands: commands.clone(),
                    deliveries,
                });
            }
        }
        let (member, stream) = self
            .conn
            .call_at("starting a watch", attempt, |c| {
                // Events of one revision come in one message, of any size.
                let mut watch = c.watch_client().max_decoding_message_size(usize::MAX);
                let (key, options) = (key.to_string(), options.clone());
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
            pending: VecDeque::from([token]),
            tokens: HashMap::new(),
            subs: HashMap::from([(token, Sub { sink, id: None })]),
            liveness: watch_liveness(self.conn.timeout),
        };
        self.handle.spawn(task.run());
        *session = Some(commands.clone());
        Ok(Subscription {
            token,
            commands,
            deliveries,
        })
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
    /// The watcher's id, once etcd has said it.
    id: Option<i64>,
}

/// The task that owns an open stream.
struct Session {
    mux: Arc<WatchMux>,
    /// Its own commands' sender: tells whether the registry's slot still names this session.
    me: UnboundedSender<Command>,
    member: usize,
    requests: WatchRequestSender,
    responses: WatchResponseStream,
    inbox: UnboundedReceiver<Command>,
    /// Watches whose create request was sent and not answered yet, in the order sent (etcd
    /// answers creates in order).
    pending: VecDeque<u64>,
    /// The watch of each watcher id etcd gave.
    tokens: HashMap<i64, u64>,
    subs: HashMap<u64, Sub>,
    liveness: Duration,
}

impl Session {
    async fn run(mut self) {
        let Some((error, silent)) = self.serve().await else {
            return;
        };
        // Watches resuming must open a new stream, not join this one.
        {
            let mut slot = self.mux.session.lock().await;
            if slot.as_ref().is_some_and(|s| s.same_channel(&self.me)) {
                *slot = None;
            }
        }
        // Watches added after the stream failed and before the slot was cleared end too.
        self.inbox.close();
        while let Ok(command) = self.inbox.try_recv() {
            if let Command::Add { token, sink, .. } = command {
                self.subs.insert(token, Sub { sink, id: None });
            }
        }
        for sub in self.subs.values() {
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
            let wake = asked_at.unwrap_or(quiet_since) + self.liveness;
            tokio::select! {
                command = self.inbox.recv() => {
                    // `me` keeps the channel open.
                    let command = command?;
                    if let Err(e) = self.command(command).await {
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
                _ = tokio::time::sleep_until(wake) => {
                    if asked_at.is_some() {
                        let e = Error::new(
                            ErrorKind::Timeout,
                            format!("watch unanswered for {:?}", self.liveness),
                        );
                        self.mux.conn.eject(self.member, &e);
                        return Some((e, true));
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
            Command::Add {
                token,
                key,
                options,
                sink,
            } => {
                let create = self.requests.watch(key, Some(options));
                bounded(&self.mux.conn, self.member, self.liveness, create).await?;
                self.pending.push_back(token);
                self.subs.insert(token, Sub { sink, id: None });
            }
            Command::Cancel { token } => {
                if let Some(Sub { id: Some(id), .. }) = self.subs.remove(&token) {
                    self.tokens.remove(&id);
                    let cancel = self.requests.cancel(id);
                    bounded(&self.mux.conn, self.member, self.liveness, cancel).await?;
                }
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
        if slot.as_ref().is_some_and(|s| s.same_channel(&self.me)) {
            *slot = None;
        }
        Ok(true)
    }

    /// Hands a response to the watch it belongs to.
    async fn route(&mut self, resp: WatchResponse) -> Result<()> {
        let id = resp.watch_id();
        let token = if resp.created() {
            let Some(token) = self.pending.pop_front() else {
                return Ok(());
            };
            match self.subs.get_mut(&token) {
                Some(sub) => {
                    if !resp.canceled() {
                        sub.id = Some(id);
                        self.tokens.insert(id, token);
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
        if let Some(sub) = self.subs.get(&token) {
            // A watch gone meanwhile has sent its cancel, which comes next.
            let _ = sub.sink.send(Delivery::Response(resp));
        }
        Ok(())
    }
}
