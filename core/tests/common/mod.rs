//! Shared helpers of the core's integration tests. Every test starts its own real etcd through
//! the harness; nothing is mocked.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use etcd_harness::EtcdCluster;
use etcd_registry::StatusEvents;
use etcd_registry::{Config, Info, Node, StatusEvent};
use tokio::time::Instant;

/// Generous upper bound for anything that should happen "soon": tests poll, never sleep.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "etcd_registry=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn etcd() -> EtcdCluster {
    init_logs();
    EtcdCluster::start_single().expect("start etcd")
}

pub fn etcd_with_proxy() -> EtcdCluster {
    init_logs();
    EtcdCluster::builder()
        .proxy(true)
        .start()
        .expect("start etcd behind a proxy")
}

/// A configuration with quick retries, so recovery tests stay short.
pub fn config(etcd: &EtcdCluster, base: &str) -> Config {
    Config::new(etcd.endpoints(), base)
        .with_timeout(Duration::from_secs(2))
        .with_backoff(Duration::from_millis(200), Duration::from_secs(2))
}

pub fn info(pairs: &[(&str, &str)]) -> Info {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn node(name: &str, pairs: &[(&str, &str)]) -> Node {
    Node::new(name, info(pairs))
}

/// The value of an unlabelled gauge in member 0's metrics.
pub fn gauge(etcd: &EtcdCluster, name: &str) -> u64 {
    gauge_of(etcd, 0, name)
}

/// The value of an unlabelled gauge in member `i`'s metrics.
pub fn gauge_of(etcd: &EtcdCluster, i: usize, name: &str) -> u64 {
    let metrics = etcd.metrics(i).unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in etcd's metrics")) as u64
}

/// The member the registry's calls go to now.
pub fn member_in_use(etcd: &EtcdCluster, registry: &etcd_registry::Registry) -> usize {
    let active = registry.active_endpoint();
    etcd.endpoints()
        .iter()
        .position(|e| active.ends_with(e.trim_start_matches("http://")))
        .unwrap_or_else(|| panic!("{active} is none of {:?}", etcd.endpoints()))
}

/// A gRPC server counter of member 0 for one method, summed over its other labels: e.g.
/// `grpc_counter(etcd, "grpc_server_handled_total", "Authenticate")` (calls answered),
/// `grpc_counter(etcd, "grpc_server_started_total", "Watch")` (streams opened).
pub fn grpc_counter(etcd: &EtcdCluster, counter: &str, method: &str) -> u64 {
    let metrics = etcd.metrics(0).unwrap();
    let method = format!("grpc_method=\"{method}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(counter) && l.contains(&method))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Polls `check` until it returns true, failing the test after `DEADLINE`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads events until one matches, returning it and everything read before it. The deadline is
/// for the whole wait: a registration that keeps failing sends an event per attempt, and a
/// deadline per event would then wait forever.
pub async fn wait_event(
    events: &mut StatusEvents,
    what: &str,
    matches: impl Fn(&StatusEvent) -> bool,
) -> (StatusEvent, Vec<StatusEvent>) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + 2 * DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if matches(&event) => return (event, seen),
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("event stream ended while waiting for {what}; saw {seen:?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

/// Runs blocking harness work off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Adds a row to the fault-scenario summary that `scripts/test.sh` prints at the end, when
/// `SURVIVAL_SUMMARY` names a file. Called by a test once everything it checks has held.
pub fn record(scenario: &str, recovery: &str) {
    use std::io::Write;
    let Ok(path) = std::env::var("SURVIVAL_SUMMARY") else {
        return;
    };
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{scenario}\tpass\t{recovery}");
    }
}

/// How long `since` is ago, as the summary shows it.
pub fn secs_since(since: tokio::time::Instant) -> String {
    format!("{:.2}s", since.elapsed().as_secs_f64())
}

/// Adds a row to the etcd-version table (version × scenario) that `scripts/test.sh` prints, when
/// `ETCD_VERSIONS_SUMMARY` names a file: the version of the etcd the harness really started
/// (`etcd --version`) and the scenario. Called at the end of each test of the compatibility
/// subset that `scripts/etcd-compat.sh` runs against etcd 3.4, 3.5.12, 3.5.36, 3.6 and 3.7.
pub fn record_version(scenario: &str) {
    use std::io::Write;
    let Ok(path) = std::env::var("ETCD_VERSIONS_SUMMARY") else {
        return;
    };
    let version = etcd_harness::etcd_version().unwrap_or_else(|_| "unknown".into());
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{version}\t{scenario}");
    }
}
