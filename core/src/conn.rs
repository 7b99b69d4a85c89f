//! The registry's one etcd client, connected lazily and shared by every operation.
//!
//! Wait-for-ready, the rule of etcd's own Go client and the same in every language: a call that
//! cannot reach etcd keeps trying to connect until its timeout, then fails with a timeout error
//! ("context deadline exceeded") whose message carries the last connection error — which
//! endpoint, and why (e.g. "connection refused"). A failure that is not about reaching etcd (a
//! refusal, an auth error) fails the call at once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{unreachable_cause, Error, ErrorKind, Result};

/// HTTP/2 ping interval while a stream is open: detects half-open connections and paused servers.
/// etcd sends GOAWAY to clients that ping more often than every 5 s, hence the margin.
const PING_INTERVAL: Duration = Duration::from_secs(7);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause between two connection attempts while waiting for etcd: doubling from the first to the
/// last value.
const READY_RETRY_MIN: Duration = Duration::from_millis(50);
const READY_RETRY_MAX: Duration = Duration::from_millis(500);

pub(crate) struct Connection {
    endpoints: Vec<String>,
    credentials: Option<(String, String)>,
    pub(crate) timeout: Duration,
    client: Mutex<Option<Client>>,
    /// Held while one connection attempt is under way, so that callers waiting for etcd share
    /// it instead of dialling side by side. Never held while sleeping.
    connecting: Mutex<()>,
    /// The last failure to reach etcd ("cannot reach etcd at …: connection refused"), for the
    /// message of a call that timed out waiting.
    last_unreachable: StdMutex<Option<String>>,
    auth_disabled_warned: AtomicBool,
}

impl Connection {
    pub(crate) fn new(
        endpoints: Vec<String>,
        credentials: Option<(String, String)>,
        timeout: Duration,
    ) -> Self {
        Connection {
            endpoints,
            credentials,
            timeout,
            client: Mutex::new(None),
            connecting: Mutex::new(()),
            last_unreachable: StdMutex::new(None),
            auth_disabled_warned: AtomicBool::new(false),
        }
    }

    fn options(&self, with_user: bool) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(false)
            // Expired or invalidated tokens (etcd restarts, --auth-token-ttl) are renewed.
            .with_auto_token_refresh(true);
        if let (true, Some((user, password))) = (with_user, &self.credentials) {
            options = options.with_user(user.clone(), password.clone());
        }
        options
    }

    /// The shared client, connecting (and authenticating) first if there is none, and waiting
    /// for etcd to answer for up to the timeout.
    pub(crate) async fn client(&self) -> Result<Client> {
        let what = "connecting to etcd";
        let deadline = Instant::now() + self.timeout;
        match tokio::time::timeout_at(deadline, self.ready_client(deadline)).await {
            Ok(result) => result.map_err(|e| contextualize(e, what)),
            Err(_) => Err(self.timeout_error(what)),
        }
    }

    async fn ready_client(&self, deadline: Instant) -> Result<Client> {
        let mut pause = READY_RETRY_MIN;
        loop {
            if let Some(client) = self.client.lock().await.as_ref() {
                return Ok(client.clone());
            }
            let failure = {
                let _attempt = self.connecting.lock().await;
                // Someone else may have connected while this call waited for its turn.
                if let Some(client) = self.client.lock().await.as_ref() {
                    return Ok(client.clone());
                }
                match self.connect().await {
                    Ok(client) => {
                        *self.client.lock().await = Some(client.clone());
                        *self.last_unreachable_slot() = None;
                        return Ok(client);
                    }
                    Err(Attempt::Unreachable(message)) => message,
                    Err(Attempt::Failed(e)) => return Err(e),
                }
            };
            tracing::debug!(error = %failure, ?pause, "etcd not reachable yet; waiting for it");
            *self.last_unreachable_slot() = Some(failure);
            tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
            pause = (pause * 2).min(READY_RETRY_MAX);
        }
    }

    /// One connection attempt: a client that etcd has answered (an authentication, or a status
    /// request), or why not.
    async fn connect(&self) -> std::result::Result<Client, Attempt> {
        let with_user = self.credentials.is_some();
        let client = match Client::connect(&self.endpoints, Some(self.options(with_user))).await {
            Ok(client) => client,
            Err(err) if with_user && err.to_string().contains("authentication is not enabled") => {
                if !self.auth_disabled_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "credentials were given but etcd has authentication disabled; proceeding without them"
                    );
                }
                Client::connect(&self.endpoints, Some(self.options(false)))
                    .await
                    .map_err(|e| self.attempt_error(e))?
            }
            Err(err) => return Err(self.attempt_error(err)),
        };
        if !with_user {
            // Connecting without credentials does not dial: ask etcd something to know that
            // it answers. Any answer will do (even a refusal).
            if let Err(err) = client.clone().status().await {
                if let Attempt::Unreachable(message) = self.attempt_error(err) {
                    return Err(Attempt::Unreachable(message));
                }
            }
        }
        Ok(client)
    }

    fn attempt_error(&self, err: etcd_client::Error) -> Attempt {
        match unreachable_cause(&err) {
            Some(cause) => Attempt::Unreachable(self.unreachable_message(&cause)),
            None => Attempt::Failed(err.into()),
        }
    }

    /// "cannot reach etcd at http://127.0.0.1:2379: connection refused".
    fn unreachable_message(&self, cause: &str) -> String {
        match self.endpoints.as_slice() {
            [one] => format!("cannot reach etcd at {one}: {cause}"),
            many => format!("cannot reach etcd at any of {}: {cause}", many.join(", ")),
        }
    }

    fn last_unreachable_slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The timeout error of `what`, with the last failure to reach etcd if there was one.
    fn timeout_error(&self, what: &str) -> Error {
        let err = Error::timeout(what, self.timeout);
        match self.last_unreachable_slot().as_deref() {
            Some(last) => Error::new(ErrorKind::Timeout, format!("{}: {last}", err.message())),
            None => err,
        }
    }

    /// Forgets the client, so that the next call connects afresh. Used after transport failures,
    /// so a channel that went bad can never wedge the registry.
    pub(crate) async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// Runs `f` on the shared client within the timeout, waiting for etcd (see the module doc):
    /// when etcd cannot be reached, the client is made afresh and `f` tried again until the
    /// timeout. `f` may therefore run more than once, but only again when etcd was not reached.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        let attempts = async {
            let mut pause = READY_RETRY_MIN;
            loop {
                let client = self.ready_client(deadline).await?;
                let err = match f(client).await {
                    Ok(value) => return Ok(value),
                    Err(err) => err,
                };
                let Some(cause) = unreachable_cause(&err) else {
                    return Err(self.located(err.into()));
                };
                let message = self.unreachable_message(&cause);
                tracing::debug!(error = %message, what, "etcd not reachable; waiting for it");
                *self.last_unreachable_slot() = Some(message);
                self.reset().await;
                tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                pause = (pause * 2).min(READY_RETRY_MAX);
            }
        };
        match tokio::time::timeout_at(deadline, attempts).await {
            Ok(result) => result.map_err(|e| contextualize(e, what)),
            Err(_) => Err(self.timeout_error(what)),
        }
    }

    pub(crate) async fn with_timeout<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result.map_err(|e| contextualize(self.located(e), what)),
            Err(_) => Err(self.timeout_error(what)),
        }
    }

    /// A connection error names the endpoints it concerns.
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
}

/// How one connection attempt failed.
enum Attempt {
    /// etcd was not reached: worth waiting for. The message names the endpoints and the cause.
    Unreachable(String),
    /// etcd answered with an error, or the configuration is unusable: no use waiting.
    Failed(Error),
}

fn contextualize(err: Error, what: &str) -> Error {
    if err.kind() == ErrorKind::Timeout {
        return err;
    }
    Error::new(err.kind(), format!("{what}: {}", err.message()))
}
