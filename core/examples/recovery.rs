//! Recovery and load figures for the benchmarks, against a real etcd started here (the test
//! harness): what idle registries cost etcd, what reaches etcd while it is down, and how long
//! after etcd is back every node is registered again, with etcd's request rate meanwhile.
//!
//! ```sh
//! cargo run -p etcd-registry --example recovery -- \
//!     [--registries 20] [--nodes 5] [--ttl 6] [--outages 5,10,60] [--mode kill|pause] [--idle 18]
//! ```
//!
//! Each registry is a `Registry` of its own (its own connection, as a process would have), with
//! the default configuration (timeout 10 s, backoff 1 s doubling to 30 s). Requests are counted
//! by etcd itself (`grpc_server_msg_received_total`: unary requests and stream messages such as
//! each keep-alive). With `--mode kill` etcd is killed (SIGKILL) and its client port answered
//! meanwhile by a listener that counts connection attempts and closes them; with `--mode pause`
//! it is frozen (SIGSTOP: connections accepted, nothing answered) and what it received meanwhile
//! is counted when it resumes. `back_after_s` counts from etcd accepting connections again
//! (killed: its client port open; paused: SIGCONT), `back_after_healthy_s` from its health
//! endpoint answering (it has a leader; 0 when the nodes were back before that was seen). Note
//! that etcd renews every lease's TTL when it restarts: a killed etcd keeps the leases whatever
//! the outage; `--mode pause` past the TTL makes them expire. Output: one `key=value` line per
//! figure, for scripts.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_harness::EtcdCluster;
use etcd_registry::{Config, Node, Registry};

struct Args {
    registries: usize,
    nodes: usize,
    ttl: u64,
    outages: Vec<u64>,
    pause: bool,
    idle: Option<u64>,
}

fn args() -> Args {
    let mut args = Args {
        registries: 20,
        nodes: 5,
        ttl: 6,
        outages: vec![5, 10, 60],
        pause: false,
        idle: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--registries" => args.registries = value.parse().expect("--registries N"),
            "--nodes" => args.nodes = value.parse().expect("--nodes N"),
            "--ttl" => args.ttl = value.parse().expect("--ttl SECS"),
            "--outages" => {
                args.outages = value
                    .split(',')
                    .map(|s| s.trim().parse().expect("--outages SECS,SECS"))
                    .collect()
            }
            "--mode" => args.pause = value == "pause",
            "--idle" => args.idle = Some(value.parse().expect("--idle SECS")),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn received(etcd: &EtcdCluster) -> BTreeMap<String, u64> {
    etcd.grpc_received(0).unwrap_or_default()
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(m, n)| (m.clone(), n.saturating_sub(*before.get(m).unwrap_or(&0))))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn sum(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

/// Answers etcd's client port while etcd is down: counts connection attempts, closes them.
fn count_connects(port: u16, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(_) if !stop.load(Ordering::SeqCst) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return,
        }
    };
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                count.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

async fn keys(client: &mut etcd_client::Client) -> i64 {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    match client.get("/bench/", Some(options)).await {
        Ok(resp) => resp.count(),
        Err(_) => -1,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let total = (args.registries * args.nodes) as i64;
    let ttl = Duration::from_secs(args.ttl);
    let etcd = Arc::new(EtcdCluster::start_single().expect("start etcd"));
    let endpoint = etcd.direct_endpoint(0);
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    println!(
        "setup registries={} nodes_per_registry={} ttl_s={} etcd={}",
        args.registries,
        args.nodes,
        args.ttl,
        etcd_harness::etcd_version().unwrap_or_default()
    );

    let mut registries = Vec::new();
    let mut regs = Vec::new();
    let started = Instant::now();
    for r in 0..args.registries {
        let registry = Registry::connect(Config::new(etcd.endpoints(), "/bench"))
            .await
            .expect("connect");
        for n in 0..args.nodes {
            let info = [("addr".to_string(), format!("10.0.{r}.{n}:8080"))];
            regs.push(
                registry
                    .register("svc", Node::new(format!("r{r}-n{n}"), info.into()), ttl)
                    .expect("register"),
            );
        }
        registries.push(registry);
    }
    for reg in &regs {
        reg.wait_registered(Duration::from_secs(60))
            .await
            .expect("registered");
    }
    println!("registered_all_s={:.3}", started.elapsed().as_secs_f64());

    // Idle: past the set-up, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = Duration::from_secs(args.idle.unwrap_or(3 * args.ttl));
    let before = received(&etcd);
    tokio::time::sleep(idle).await;
    let idle_got = diff(&received(&etcd), &before);
    let per_registry = sum(&idle_got) as f64 / idle.as_secs_f64() / args.registries as f64;
    println!(
        "idle_requests_per_s_per_registry={per_registry:.3} floor={:.3} idle_s={} by_method={idle_got:?}",
        3.0 / args.ttl as f64,
        idle.as_secs()
    );

    for &outage in &args.outages {
        let down = Duration::from_secs(outage);
        let before = received(&etcd);
        let connects = Arc::new(AtomicU64::new(0));
        let went_down = Instant::now();
        if args.pause {
            etcd.pause(0).expect("pause");
            tokio::time::sleep(down).await;
            etcd.resume(0).expect("resume");
        } else {
            etcd.kill(0).expect("kill");
            let stop = Arc::new(AtomicBool::new(false));
            let counter = {
                let (stop, connects) = (stop.clone(), connects.clone());
                std::thread::spawn(move || count_connects(port, stop, connects))
            };
            tokio::time::sleep(down).await;
            stop.store(true, Ordering::SeqCst);
            counter.join().unwrap();
            // Back once its client port accepts connections (etcd answers right after).
            let e = etcd.clone();
            tokio::task::spawn_blocking(move || e.start(0).expect("start"))
                .await
                .unwrap();
        }
        let down_for = went_down.elapsed();
        // From here etcd accepts connections (it answers once it has elected itself leader):
        // poll its key count, its health and its request counters every 100 ms.
        let back_at = Instant::now();
        let healthy = {
            let e = etcd.clone();
            tokio::task::spawn_blocking(move || {
                e.wait_healthy(0).expect("healthy");
                Instant::now()
            })
        };
        // A killed etcd restarts its counters.
        let base = if args.pause {
            before.clone()
        } else {
            BTreeMap::new()
        };
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .expect("observer");
        let mut last = (Instant::now(), sum(&diff(&received(&etcd), &base)));
        let mut peak = 0f64;
        let back = loop {
            if keys(&mut client).await == total {
                break back_at.elapsed();
            }
            if back_at.elapsed() > Duration::from_secs(120) {
                panic!("nodes not back within 120 s");
            }
            if last.0.elapsed() >= Duration::from_millis(100) {
                let n = sum(&diff(&received(&etcd), &base));
                let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                peak = peak.max(rate);
                last = (Instant::now(), n);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let healthy = healthy.await.unwrap();
        let after_healthy = back_at + back;
        let after_healthy = after_healthy.saturating_duration_since(healthy);
        let got = diff(&received(&etcd), &base);
        let n = sum(&got);
        let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
        peak = peak.max(rate);
        let lease_lost = down_for > ttl;
        println!(
            "outage_s={outage} mode={} lease_expired={lease_lost} back_after_s={:.3} \
             back_after_healthy_s={:.3} \
             down_connects_per_s_per_registry={:.2} requests_until_back={n} \
             peak_requests_per_s={peak:.0} by_method={got:?}",
            if args.pause { "pause" } else { "kill" },
            back.as_secs_f64(),
            after_healthy.as_secs_f64(),
            connects.load(Ordering::SeqCst) as f64 / down.as_secs_f64() / args.registries as f64,
        );
        // Let the keep-alives settle before the next outage.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for registry in &registries {
        let _ = registry.close().await;
    }
}
