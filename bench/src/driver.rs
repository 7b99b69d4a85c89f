//! The two Rust drivers, `raw` (plain `etcd-client`, the floor) and `core` (the `etcd-registry`
//! crate), speaking the driver protocol of `bench/README.md` on stdin/stdout. The C, Python and
//! Go drivers speak the same protocol.
//!
//! Usage: `etcd-registry-bench driver raw|core ENDPOINTS BASE_PATH`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use registry::{
    Config, Node, Registration, RegistrationState, Registry, StatusEvent, WatchEventKind,
};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

type Info = BTreeMap<String, String>;
type Reply = Result<Value, String>;

/// Untimed operations before every timed series.
const WARMUP: usize = 3;
/// Longest wait for one operation of a timed series.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn main(args: &[String]) -> i32 {
    let [layer, endpoints, base] = args else {
        eprintln!("usage: etcd-registry-bench driver raw|core ENDPOINTS BASE_PATH");
        return 2;
    };
    let endpoints: Vec<String> = endpoints
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    let mut driver = match layer.as_str() {
        "raw" => Driver::Raw(Raw {
            endpoints,
            base: base.clone(),
            hold: None,
        }),
        "core" => Driver::Core(Core {
            endpoints,
            base: base.clone(),
            hold: None,
            registered_at: Vec::new(),
            watches: Vec::new(),
        }),
        other => {
            eprintln!("unknown layer {other:?}: raw or core");
            return 2;
        }
    };
    log_to_stderr();
    emit(json!({"ready": true}));
    // Created at the first command, so that the thread count at `ready` is the bare process.
    let mut runtime: Option<tokio::runtime::Runtime> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if words[0] == "quit" {
            break;
        }
        let rt = runtime.get_or_insert_with(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
        });
        let reply = rt.block_on(driver.handle(&words));
        emit(reply.unwrap_or_else(|e| json!({ "error": e })));
    }
    if let Some(rt) = runtime {
        rt.block_on(driver.release());
    }
    0
}

/// One JSON line on stdout (Rust's stdout is line-buffered, so each line is flushed).
fn emit(v: Value) {
    println!("{v}");
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn node_info(k: usize) -> Info {
    [
        (
            "address".to_string(),
            format!("10.0.{}.{}:8080", k / 256 % 256, k % 256),
        ),
        ("version".to_string(), "1.0.0".to_string()),
    ]
    .into()
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize, what: &str) -> Result<T, String> {
    words
        .get(i)
        .ok_or_else(|| format!("{}: missing {what}", words[0]))?
        .parse()
        .map_err(|_| format!("{}: bad {what} {:?}", words[0], words[i]))
}

/// The optional warm-up count of `list SERVICE N [WARMUP]` (default WARMUP).
fn warmup(words: &[&str]) -> Result<usize, String> {
    if words.len() > 3 {
        arg(words, 3, "warmup")
    } else {
        Ok(WARMUP)
    }
}

/// Lag in microseconds of a watched node whose info carries `t` (unix ns at the put).
fn lag_of(info: &Info, now_ns: u128) -> Option<f64> {
    let t: u128 = info.get("t")?.parse().ok()?;
    Some(now_ns.saturating_sub(t) as f64 / 1000.0)
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(OP_TIMEOUT, fut)
        .await
        .map_err(|_| format!("{what}: no result within {OP_TIMEOUT:?}"))
}

enum Driver {
    Raw(Raw),
    Core(Core),
}

impl Driver {
    async fn handle(&mut self, words: &[&str]) -> Reply {
        match (words[0], self) {
            ("list", Driver::Raw(d)) => {
                d.list(
                    arg(words, 1, "service")?,
                    arg(words, 2, "n")?,
                    warmup(words)?,
                )
                .await
            }
            ("list", Driver::Core(d)) => {
                d.list(
                    arg(words, 1, "service")?,
                    arg(words, 2, "n")?,
                    warmup(words)?,
                )
                .await
            }
            ("register_visible", Driver::Raw(d)) => {
                d.register_visible(
                    arg(words, 1, "service")?,
                    arg(words, 2, "n")?,
                    arg(words, 3, "ttl")?,
                    words.get(4) == Some(&"first"),
                )
                .await
            }
            ("register_visible", Driver::Core(d)) => {
                d.register_visible(
                    arg(words, 1, "service")?,
                    arg(words, 2, "n")?,
                    arg(words, 3, "ttl")?,
                    words.get(4) == Some(&"first"),
                )
                .await
            }
            ("watch", Driver::Raw(d)) => {
                d.watch(arg(words, 1, "service")?, arg(words, 2, "n")?)
                    .await
            }
            ("watch", Driver::Core(d)) => {
                d.watch(arg(words, 1, "service")?, arg(words, 2, "n")?)
                    .await
            }
            ("hold", Driver::Raw(d)) => {
                d.hold(
                    arg(words, 1, "service")?,
                    arg(words, 2, "n")?,
                    arg(words, 3, "ttl")?,
                )
                .await
            }
            ("hold", Driver::Core(d)) => {
                d.hold(
                    arg(words, 1, "service")?,
                    arg(words, 2, "n")?,
                    arg(words, 3, "ttl")?,
                    words.get(4).copied().unwrap_or("n"),
                )
                .await
            }
            ("watch_idle", Driver::Core(d)) => d.watch_idle(arg(words, 1, "service")?).await,
            ("state", Driver::Raw(d)) => Ok(d.state()),
            ("state", Driver::Core(d)) => Ok(d.state()),
            ("track", Driver::Core(d)) => d.track(),
            ("release", d) => {
                d.release().await;
                Ok(json!({"released": true}))
            }
            (other, _) => Err(format!("unknown command {other:?}")),
        }
    }

    async fn release(&mut self) {
        match self {
            Driver::Raw(d) => d.release().await,
            Driver::Core(d) => d.release().await,
        }
    }
}

// ------------------------------------------------------------------------------------ raw

/// The floor: what a program does with `etcd-client` alone. A registration is one put on a
/// lease granted once per TTL (as the core shares one lease per TTL), kept alive every TTL/3;
/// a listing is one range request decoded into (name, info) like the core's; after any loss it
/// retries every 100 ms (the core backs off 1 s doubling to 30 s).
struct Raw {
    endpoints: Vec<String>,
    base: String,
    hold: Option<RawHold>,
}

struct RawHold {
    state: Arc<Mutex<RawState>>,
    keeper: JoinHandle<()>,
    ttl: i64,
}

struct RawState {
    client: Client,
    lease: Option<i64>,
    keys: Vec<(String, String)>,
    healthy: bool,
}

fn raw_options() -> ConnectOptions {
    // The core's connection settings: HTTP/2 pings while streams are open.
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(7), Duration::from_secs(3))
        .with_keep_alive_while_idle(false)
}

async fn raw_connect(endpoints: &[String]) -> Result<Client, String> {
    Client::connect(endpoints, Some(raw_options()))
        .await
        .map_err(|e| format!("connect: {e}"))
}

async fn raw_list(c: &mut Client, prefix: &str) -> Result<Vec<(String, Info)>, String> {
    // Without tonic's 4 MiB default limit on an answer, as the core lists (a 100 000-node
    // service is about 9 MB).
    let resp = c
        .kv_client()
        .max_decoding_message_size(usize::MAX)
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("get: {e}"))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(prefix)?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            let info: Info = serde_json::from_slice(kv.value()).unwrap_or_default();
            Some((name.to_string(), info))
        })
        .collect())
}

fn lock(state: &Mutex<RawState>) -> std::sync::MutexGuard<'_, RawState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Raw {
    fn prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.base.trim_end_matches('/'))
    }

    async fn list(&mut self, service: String, n: usize, warmup: usize) -> Reply {
        let prefix = self.prefix(&service);
        let mut c = raw_connect(&self.endpoints).await?;
        let mut samples = Vec::with_capacity(n);
        let mut nodes = 0;
        for i in 0..warmup + n {
            let t0 = Instant::now();
            let listing = within("list", raw_list(&mut c, &prefix)).await??;
            let took = t0.elapsed();
            nodes = listing.len();
            if i >= warmup {
                samples.push(us(took));
            }
        }
        Ok(json!({"us": samples, "nodes": nodes}))
    }

    /// With `first`, every registration is the first of its TTL (TTL + 1 + i s): a lease is
    /// granted for it, inside the timed span.
    async fn register_visible(
        &mut self,
        service: String,
        n: usize,
        ttl: i64,
        first: bool,
    ) -> Reply {
        let prefix = self.prefix(&service);
        let mut a = raw_connect(&self.endpoints).await?;
        let mut b = raw_connect(&self.endpoints).await?;
        let mut leases = Vec::new();
        if !first {
            let id = a
                .lease_grant(ttl, None)
                .await
                .map_err(|e| format!("grant: {e}"))?
                .id();
            leases.push(id);
        }
        let mut samples = Vec::with_capacity(n);
        let mut kept = Vec::new();
        for i in 0..WARMUP + n {
            let name = format!("n{i}");
            let value = serde_json::to_string(&node_info(i)).unwrap_or_default();
            let t0 = Instant::now();
            // The reader polls from the register call on, beside the write, as it must for
            // every layer (their register returns before the key lands): a reader elsewhere
            // does not know when a writer's put has returned.
            let write = async {
                if first {
                    let id = a
                        .lease_grant(ttl + 1 + i as i64, None)
                        .await
                        .map_err(|e| format!("grant: {e}"))?
                        .id();
                    leases.push(id);
                }
                let lease = *leases.last().ok_or("no lease")?;
                a.put(
                    format!("{prefix}{name}"),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(|e| format!("put: {e}"))?;
                // As a program registering itself does, and as every layer and peer does: a
                // new lease is kept alive from right after the put, whether a reader has seen
                // the key yet or not (the writer cannot know), its stream held open.
                if first {
                    kept.push(
                        a.lease_keep_alive(lease)
                            .await
                            .map_err(|e| format!("keep-alive: {e}"))?,
                    );
                }
                Ok::<(), String>(())
            };
            let read = within("register_visible", async {
                loop {
                    if raw_list(&mut b, &prefix)
                        .await?
                        .iter()
                        .any(|(n, _)| *n == name)
                    {
                        return Ok::<_, String>(t0.elapsed());
                    }
                }
            });
            let (written, seen) = tokio::join!(write, read);
            written?;
            let seen = seen??;
            if i >= WARMUP {
                samples.push(us(seen));
            }
        }
        drop(kept);
        for lease in leases {
            let _ = a.lease_revoke(lease).await;
        }
        Ok(json!({ "us": samples }))
    }

    async fn watch(&mut self, service: String, n: usize) -> Reply {
        let prefix = self.prefix(&service);
        let mut c = raw_connect(&self.endpoints).await?;
        let mut stream = c
            .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("watch: {e}"))?;
        loop {
            let m = within("watch creation", stream.message())
                .await?
                .map_err(|e| format!("watch: {e}"))?
                .ok_or("watch stream closed")?;
            if m.created() {
                break;
            }
        }
        emit(json!({"ready": true}));
        let mut samples = Vec::with_capacity(n);
        let mut warm = false;
        while samples.len() < n {
            let m = within("watch event", stream.message())
                .await?
                .map_err(|e| format!("watch: {e}"))?
                .ok_or("watch stream closed")?;
            let now = unix_ns();
            for ev in m.events() {
                if ev.event_type() != EventType::Put {
                    continue;
                }
                let Some(kv) = ev.kv() else { continue };
                let info: Info = serde_json::from_slice(kv.value()).unwrap_or_default();
                if info.contains_key("warm") && !warm {
                    warm = true;
                    emit(json!({"warm": true}));
                } else if let Some(lag) = lag_of(&info, now) {
                    samples.push(lag);
                }
            }
        }
        Ok(json!({ "us": samples }))
    }

    async fn hold(&mut self, service: String, n: usize, ttl: i64) -> Reply {
        let prefix = self.prefix(&service);
        if self.hold.is_none() {
            let mut client = raw_connect(&self.endpoints).await?;
            let lease = client
                .lease_grant(ttl, None)
                .await
                .map_err(|e| format!("grant: {e}"))?
                .id();
            let state = Arc::new(Mutex::new(RawState {
                client,
                lease: Some(lease),
                keys: Vec::new(),
                healthy: true,
            }));
            let keeper = tokio::spawn(raw_keeper(state.clone(), self.endpoints.clone(), ttl));
            self.hold = Some(RawHold { state, keeper, ttl });
        }
        let hold = self.hold.as_ref().ok_or("no hold")?;
        if hold.ttl != ttl {
            return Err("raw driver: one TTL per hold session".into());
        }
        let t0 = Instant::now();
        for _ in 0..n {
            let (mut client, lease, k) = {
                let st = lock(&hold.state);
                (
                    st.client.clone(),
                    st.lease.ok_or("no lease")?,
                    st.keys.len(),
                )
            };
            let key = format!("{prefix}n{k}");
            let value = serde_json::to_string(&node_info(k)).unwrap_or_default();
            within(
                "put",
                client.put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
            )
            .await?
            .map_err(|e| format!("put: {e}"))?;
            lock(&hold.state).keys.push((key, value));
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let total = lock(&hold.state).keys.len();
        Ok(json!({"ms": ms, "registered": total}))
    }

    fn state(&self) -> Value {
        let (registered, total) = match &self.hold {
            None => (0, 0),
            Some(h) => {
                let st = lock(&h.state);
                (if st.healthy { st.keys.len() } else { 0 }, st.keys.len())
            }
        };
        json!({"registered": registered, "total": total})
    }

    async fn release(&mut self) {
        if let Some(hold) = self.hold.take() {
            hold.keeper.abort();
            let (mut client, lease) = {
                let st = lock(&hold.state);
                (st.client.clone(), st.lease)
            };
            if let Some(lease) = lease {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), client.lease_revoke(lease)).await;
            }
        }
    }
}

/// Keeps the raw lease alive; after a loss, retries every 100 ms: keeps the lease if it
/// survived (putting back missing keys), else grants a new one and puts every key again.
async fn raw_keeper(state: Arc<Mutex<RawState>>, endpoints: Vec<String>, ttl: i64) {
    loop {
        let error = raw_keep_alive(&state, ttl).await;
        tracing_free_log(&format!("raw keep-alive lost: {error}"));
        lock(&state).healthy = false;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match tokio::time::timeout(Duration::from_secs(5), raw_recover(&state, &endpoints, ttl))
                .await
            {
                Ok(Ok(())) => break,
                Ok(Err(e)) => tracing_free_log(&format!("raw recovery failed: {e}")),
                Err(_) => tracing_free_log("raw recovery timed out"),
            }
        }
        lock(&state).healthy = true;
    }
}

/// With `BENCH_DRIVER_LOG=error|warn|info|debug|trace`, the library's log goes to stderr (the
/// driver's log file), with times. Off by default: a subscriber would add its code and work to
/// the driver the benchmark measures.
fn log_to_stderr() {
    let level = match std::env::var("BENCH_DRIVER_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("info") => tracing::Level::INFO,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => return,
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The level for the library; its dependencies (tonic, hyper, h2) say only warnings.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("etcd_registry", level)
        .with_default(tracing::Level::WARN);
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(|| PidStderr)
                .with_ansi(false),
        )
        .with(filter)
        .try_init();
}

/// Stderr with each line led by the process id: many drivers of a layer share one log file.
struct PidStderr;

impl std::io::Write for PidStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The subscriber writes each event whole: one line, one write.
        let line = [format!("[{}] ", std::process::id()).as_bytes(), buf].concat();
        std::io::stderr().write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn tracing_free_log(msg: &str) {
    eprintln!("[raw] {msg}");
}

async fn raw_keep_alive(state: &Mutex<RawState>, ttl: i64) -> String {
    let (mut client, lease) = {
        let st = lock(state);
        (st.client.clone(), st.lease)
    };
    let Some(lease) = lease else {
        return "no lease".into();
    };
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return e.to_string(),
    };
    let ttl = Duration::from_secs(ttl.max(1) as u64);
    let period = (ttl / 3).max(Duration::from_millis(500));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    return e.to_string();
                }
            }
            m = stream.message() => match m {
                Ok(Some(r)) if r.ttl() > 0 => last = tokio::time::Instant::now(),
                Ok(Some(_)) => {
                    lock(state).lease = None;
                    return "lease expired".into();
                }
                Ok(None) => return "keep-alive stream closed".into(),
                Err(e) => return e.to_string(),
            },
            _ = tokio::time::sleep_until(last + ttl) => return "no keep-alive answer for the TTL".into(),
        }
    }
}

async fn raw_recover(
    state: &Mutex<RawState>,
    endpoints: &[String],
    ttl: i64,
) -> Result<(), String> {
    let mut client = raw_connect(endpoints).await?;
    let (lease, keys) = {
        let st = lock(state);
        (st.lease, st.keys.clone())
    };
    let mut attached = std::collections::HashSet::new();
    let mut live = None;
    if let Some(id) = lease {
        let r = client
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .map_err(|e| format!("ttl: {e}"))?;
        if r.ttl() > 0 {
            live = Some(id);
            attached.extend(r.keys().iter().cloned());
        }
    }
    let lease = match live {
        Some(id) => id,
        None => client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| format!("grant: {e}"))?
            .id(),
    };
    let missing: Vec<&(String, String)> = keys
        .iter()
        .filter(|(k, _)| !attached.contains(k.as_bytes()))
        .collect();
    for chunk in missing.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| {
                TxnOp::put(
                    k.as_str(),
                    v.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(|e| format!("txn: {e}"))?;
    }
    let mut st = lock(state);
    st.client = client;
    st.lease = Some(lease);
    Ok(())
}

// ----------------------------------------------------------------------------------- core

/// The Rust core, with its default configuration, on a 2-worker runtime of the driver's own
/// (what `#[tokio::main]` gives on this 2-core machine; the floor runs on the same).
struct Core {
    endpoints: Vec<String>,
    base: String,
    hold: Option<(Registry, Vec<Registration>)>,
    /// Per held registration after `track`, when its status events last said registered (Unix
    /// ns; 0 while they say it is not), kept by a task per registration that reads its events.
    registered_at: Vec<Arc<AtomicU64>>,
    /// Watches opened by `watch_idle`, and the readers of `registered_at`, until `release`.
    watches: Vec<JoinHandle<()>>,
}

impl Core {
    async fn registry(&self) -> Result<Registry, String> {
        Registry::connect(Config::new(self.endpoints.clone(), self.base.clone()))
            .await
            .map_err(|e| format!("connect: {e}"))
    }

    async fn list(&mut self, service: String, n: usize, warmup: usize) -> Reply {
        let r = self.registry().await?;
        let mut samples = Vec::with_capacity(n);
        let mut nodes = 0;
        for i in 0..warmup + n {
            let t0 = Instant::now();
            let listing = within("list", r.list(&service))
                .await?
                .map_err(|e| format!("list: {e}"))?;
            let took = t0.elapsed();
            nodes = listing.len();
            if i >= warmup {
                samples.push(us(took));
            }
        }
        let _ = r.close().await;
        Ok(json!({"us": samples, "nodes": nodes}))
    }

    /// With `first`, every registration is the first of its TTL (TTL + 1 + i s).
    async fn register_visible(
        &mut self,
        service: String,
        n: usize,
        ttl: u64,
        first: bool,
    ) -> Reply {
        let a = self.registry().await?;
        let b = self.registry().await?;
        let mut regs = Vec::with_capacity(WARMUP + n);
        let mut samples = Vec::with_capacity(n);
        for i in 0..WARMUP + n {
            let name = format!("n{i}");
            let ttl = if first { ttl + 1 + i as u64 } else { ttl };
            let t0 = Instant::now();
            let reg = a
                .register(
                    &service,
                    Node::new(name.clone(), node_info(i)),
                    Duration::from_secs(ttl),
                )
                .map_err(|e| format!("register: {e}"))?;
            regs.push(reg);
            within("register_visible", async {
                loop {
                    let nodes = b.list(&service).await.map_err(|e| format!("list: {e}"))?;
                    if nodes.iter().any(|n| n.name == name) {
                        return Ok::<(), String>(());
                    }
                }
            })
            .await??;
            if i >= WARMUP {
                samples.push(us(t0.elapsed()));
            }
            // As the floor and the peers do (and a careful user would before timing another):
            // the registration is complete, its keep-alive running, before the next begins.
            if let Some(reg) = regs.last() {
                reg.wait_registered(OP_TIMEOUT)
                    .await
                    .map_err(|e| format!("register: {e}"))?;
            }
        }
        let _ = a.close().await;
        let _ = b.close().await;
        Ok(json!({ "us": samples }))
    }

    async fn watch(&mut self, service: String, n: usize) -> Reply {
        let r = self.registry().await?;
        let w = r.watch(&service).await.map_err(|e| format!("watch: {e}"))?;
        emit(json!({"ready": true}));
        let mut samples = Vec::with_capacity(n);
        let mut warm = false;
        while samples.len() < n {
            let ev = within("watch event", w.next())
                .await?
                .ok_or("watch ended")?;
            let now = unix_ns();
            if !matches!(ev.kind, WatchEventKind::Added | WatchEventKind::Updated) {
                continue;
            }
            let Some(node) = ev.node else { continue };
            if node.info.contains_key("warm") && !warm {
                warm = true;
                emit(json!({"warm": true}));
            } else if let Some(lag) = lag_of(&node.info, now) {
                samples.push(lag);
            }
        }
        drop(w);
        let _ = r.close().await;
        Ok(json!({ "us": samples }))
    }

    /// `hold SERVICE N TTL [NAME_PREFIX]`: the core driver alone takes a prefix for the node
    /// names (default `n`), so that many fleet processes can share a service.
    async fn hold(&mut self, service: String, n: usize, ttl: u64, name_prefix: &str) -> Reply {
        if self.hold.is_none() {
            self.hold = Some((self.registry().await?, Vec::new()));
        }
        let (registry, regs) = self.hold.as_mut().ok_or("no hold")?;
        let start = regs.len();
        let t0 = Instant::now();
        for k in start..start + n {
            let reg = registry
                .register(
                    &service,
                    Node::new(format!("{name_prefix}{k}"), node_info(k)),
                    Duration::from_secs(ttl),
                )
                .map_err(|e| format!("register: {e}"))?;
            regs.push(reg);
        }
        for reg in &regs[start..] {
            reg.wait_registered(Duration::from_secs(120))
                .await
                .map_err(|e| format!("wait_registered: {e}"))?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(json!({"ms": ms, "registered": regs.len()}))
    }

    /// `track`: from now on, each held registration's status events are read (a task per
    /// registration, so not while the footprint of many is measured) and `state` says when
    /// they last said registered.
    fn track(&mut self) -> Reply {
        let Some((_, regs)) = &self.hold else {
            return Err("nothing held".into());
        };
        for reg in &regs[self.registered_at.len()..] {
            // Later subscribers get the events from now on: start from the state now.
            let mut events = reg.subscribe();
            let now = || u64::try_from(unix_ns()).unwrap_or(u64::MAX);
            let registered = reg.state() == RegistrationState::Registered;
            let at = Arc::new(AtomicU64::new(if registered { now() } else { 0 }));
            self.registered_at.push(at.clone());
            self.watches.push(tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let t = match event {
                        StatusEvent::Registered { .. } | StatusEvent::Reregistered { .. } => now(),
                        StatusEvent::Updated { .. } => continue,
                        _ => 0,
                    };
                    at.store(t, Ordering::SeqCst);
                }
            }));
        }
        Ok(json!({"tracked": self.registered_at.len()}))
    }

    fn state(&self) -> Value {
        let (registered, total) = match &self.hold {
            None => (0, 0),
            Some((_, regs)) => (
                regs.iter()
                    .filter(|r| r.state() == RegistrationState::Registered)
                    .count(),
                regs.len(),
            ),
        };
        // When the last of them said registered, once all have (the fleet's restart measures
        // the way back by it, not by when it asked).
        let at = self.registered_at.iter().map(|a| a.load(Ordering::SeqCst));
        let registered_at = if self.registered_at.is_empty() {
            // Not tracked: no such field.
            return json!({"registered": registered, "total": total});
        } else if self.registered_at.len() == total && at.clone().all(|t| t > 0) {
            json!(at.max().unwrap_or(0) as f64 / 1e9)
        } else {
            Value::Null
        };
        json!({"registered": registered, "total": total, "registered_at_unix": registered_at})
    }

    /// `watch_idle SERVICE`: a watch on the held registry, kept (its events drained) until
    /// `release`, as a fleet process that also discovers a service does.
    async fn watch_idle(&mut self, service: String) -> Reply {
        if self.hold.is_none() {
            self.hold = Some((self.registry().await?, Vec::new()));
        }
        let (registry, _) = self.hold.as_ref().ok_or("no hold")?;
        let w = registry
            .watch(&service)
            .await
            .map_err(|e| format!("watch: {e}"))?;
        self.watches.push(tokio::spawn(
            async move { while w.next().await.is_some() {} },
        ));
        Ok(json!({"watching": self.watches.len()}))
    }

    async fn release(&mut self) {
        for w in self.watches.drain(..) {
            w.abort();
        }
        self.registered_at.clear();
        if let Some((registry, _)) = self.hold.take() {
            let _ = registry.close().await;
        }
    }
}
