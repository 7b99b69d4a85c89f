//! The registry's one etcd client, connected lazily and shared by every operation.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::tls::{self, ClientTls};

/// HTTP/2 ping interval while a stream is open: detects half-open connections and paused servers.
/// etcd sends GOAWAY to clients that ping more often than every 5 s, hence the margin.
const PING_INTERVAL: Duration = Duration::from_secs(7);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct Connection {
    endpoints: Vec<String>,
    credentials: Option<(String, String)>,
    pub(crate) timeout: Duration,
    client: Mutex<Option<Client>>,
    auth_disabled_warned: AtomicBool,
    tls: Option<ClientTls>,
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
            auth_disabled_warned: AtomicBool::new(false),
            tls: None,
        }
    }

    /// Connects over TLS with these options (checked by `tls::client_options`).
    pub(crate) fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
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
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.options.clone());
        }
        options
    }

    /// The shared client, connecting (and authenticating) first if there is none.
    pub(crate) async fn client(&self) -> Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = self
            .with_timeout("connecting to etcd", self.connect())
            .await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn connect(&self) -> Result<Client> {
        let with_user = self.credentials.is_some();
        match Client::connect(&self.endpoints, Some(self.options(with_user))).await {
            Ok(client) => Ok(client),
            Err(err) if with_user && err.to_string().contains("authentication is not enabled") => {
                if !self.auth_disabled_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "credentials were given but etcd has authentication disabled; proceeding without them"
                    );
                }
                Ok(Client::connect(&self.endpoints, Some(self.options(false))).await?)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Forgets the client, so that the next call connects afresh. Used after transport failures,
    /// so a channel that went bad can never wedge the registry.
    pub(crate) async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// Runs `f` on the shared client within the timeout.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        self.with_timeout(what, async move { f(client).await.map_err(Error::from) })
            .await
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

fn contextualize(err: Error, what: &str) -> Error {
    if err.kind() == ErrorKind::Timeout {
        return err;
    }
    Error::new(err.kind(), format!("{what}: {}", err.message()))
}
