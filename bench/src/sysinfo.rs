//! What the orchestrator reads from the system: a driver's threads, memory and CPU from
//! /proc, etcd's /metrics, and the machine the run is on.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

/// Threads and resident memory (KiB) of a process.
pub fn threads_rss(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Threads:")?, field("VmRSS:")?))
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    if s.trim().is_empty() {
        s = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    out.status.success().then(|| s.trim().to_string())
}

/// gRPC messages etcd has received: (LeaseKeepAlive, LeaseTimeToLive, all methods), from the
/// `grpc_server_msg_received_total` counters of `http://ENDPOINT/metrics`.
pub fn grpc_received(endpoint: &str) -> Result<(f64, f64, f64), String> {
    let body = metrics(endpoint)?;
    let (mut keepalive, mut ttl, mut total) = (0.0, 0.0, 0.0);
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        total += value;
        if rest.contains("grpc_method=\"LeaseKeepAlive\"") {
            keepalive += value;
        } else if rest.contains("grpc_method=\"LeaseTimeToLive\"") {
            ttl += value;
        }
    }
    Ok((keepalive, ttl, total))
}

/// The text of etcd's `http://ENDPOINT/metrics`.
pub fn metrics(endpoint: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(endpoint).map_err(|e| format!("metrics: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("metrics: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("metrics: {e}"))?;
    Ok(body)
}

/// Sum of the samples of metric `name` whose labels contain every one of `labels`.
pub fn metric_sum(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            if !labels.iter().all(|x| rest.contains(x)) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The etcd server the harness starts for every layer (`ETCD_VERSION` or `ETCD_BIN` choose
/// it, default 3.5): "3.5.1 (/path/to/etcd)", from its `etcd --version`.
pub fn etcd_description() -> String {
    match (etcd_harness::etcd_version(), etcd_harness::etcd_binary()) {
        (Ok(v), Ok(p)) => format!("{v} ({})", p.display()),
        (Err(e), _) | (_, Err(e)) => format!("unknown ({e})"),
    }
}

/// How the CPUs idle, which sets the price of every hand-over between threads: on a virtual
/// machine whose idle vCPU halts at once, waking a thread on it goes through the hypervisor.
/// "haltpoll driver, haltpoll governor, guest halt polling 0 ns", or what of it /sys shows.
pub fn cpu_idle() -> String {
    let read = |path: &str| {
        fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let idle = "/sys/devices/system/cpu/cpuidle";
    describe_cpu_idle(
        read(&format!("{idle}/current_driver")),
        read(&format!("{idle}/current_governor"))
            .or_else(|| read(&format!("{idle}/current_governor_ro"))),
        read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    )
}

fn describe_cpu_idle(
    driver: Option<String>,
    governor: Option<String>,
    halt_poll_ns: Option<String>,
) -> String {
    let mut parts = Vec::new();
    if let Some(d) = driver {
        parts.push(format!("{d} driver"));
    }
    if let Some(g) = governor {
        parts.push(format!("{g} governor"));
    }
    if let Some(ns) = halt_poll_ns {
        parts.push(format!("guest halt polling {ns} ns"));
    }
    if parts.is_empty() {
        "unknown (no cpuidle in /sys)".into()
    } else {
        parts.join(", ")
    }
}

/// The machine the run is on.
pub fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("Linux".to_string(), |v| v.trim_matches('"').to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = command_output("nproc", &[])
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let etcd = etcd_description();
    json!({
        "nproc": nproc,
        "cpu": cpu,
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "os": format!("{os}, kernel {kernel}"),
        "rustc": command_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        "go": command_output("go", &["version"]).unwrap_or_else(|| "not installed".into()),
        "python": command_output(&python, &["--version"]).unwrap_or_else(|| "not installed".into()),
        "etcd": etcd,
        "cpu_idle": cpu_idle(),
        "commit": command_output("git", &["describe", "--always", "--dirty"]).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    /// The report names the idle driver and the guest's halt polling when /sys has them, and
    /// says so when it has none.
    #[test]
    fn the_cpu_idle_setup_is_described() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            super::describe_cpu_idle(some("haltpoll"), some("haltpoll"), some("0")),
            "haltpoll driver, haltpoll governor, guest halt polling 0 ns"
        );
        assert_eq!(
            super::describe_cpu_idle(some("intel_idle"), some("menu"), None),
            "intel_idle driver, menu governor"
        );
        assert_eq!(
            super::describe_cpu_idle(None, None, None),
            "unknown (no cpuidle in /sys)"
        );
    }

    /// The version recorded with the results is the one the harness starts (needs etcd, as
    /// every test here does).
    #[test]
    fn the_etcd_version_is_recorded() {
        let machine = super::machine();
        let etcd = machine["etcd"].as_str().unwrap();
        let version = etcd_harness::etcd_version().unwrap();
        assert!(version.starts_with("3."), "{version}");
        assert!(etcd.starts_with(&format!("{version} (")), "{etcd}");
    }

    /// Open streams are read from a real etcd's /metrics: one watch opened by a client shows
    /// as one Watch stream more than before it.
    #[test]
    fn metric_sums_count_an_open_watch_stream() {
        use etcd_client::{Client, WatchOptions};
        let etcd = etcd_harness::EtcdCluster::builder().start().unwrap();
        let endpoint = etcd.direct_endpoint(0);
        let open = |body: &str| {
            let m = "grpc_method=\"Watch\"";
            super::metric_sum(body, "grpc_server_started_total", &[m])
                - super::metric_sum(body, "grpc_server_handled_total", &[m])
        };
        let before = open(&super::metrics(&endpoint).unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _watch = rt.block_on(async {
            let mut c = Client::connect([endpoint.as_str()], None).await.unwrap();
            c.watch("/x/", Some(WatchOptions::new().with_prefix()))
                .await
                .unwrap()
        });
        // The server counts the stream when it starts handling it: poll with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut now = before;
        while now != before + 1.0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            now = open(&super::metrics(&endpoint).unwrap());
        }
        assert_eq!(now, before + 1.0);
        assert_eq!(
            super::metric_sum(
                "x_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_totally 9\n",
                "x_total",
                &["a="]
            ),
            5.0
        );
    }
}
