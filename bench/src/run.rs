//! The orchestrator: starts etcd through the harness, runs every layer's driver through the
//! measurements (interleaving layers, several rounds), and hands the results to the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_harness::EtcdCluster;
use serde_json::{json, Value};

use crate::child::{num, samples, Driver, Layer, Res};
use crate::direct::Direct;
use crate::report::{self, ByLayer, Pct, Recovery, Results, FLOOR};
use crate::{stats, sysinfo};

/// Base path of every key the benchmark writes.
pub const BASE: &str = "/bench";
/// TTL of the register → visible registrations (long enough never to expire during a run).
const REGISTER_TTL: u64 = 30;
/// Longest time one step of the scale curve may take (then it is reported as not reached).
const SCALE_BUDGET: Duration = Duration::from_secs(150);
/// How many times a second registry repeats each scale step but the last, timed.
const SCALE_REPEATS: usize = 4;
/// Lists of the whole service per scale step, by the core's and the floor's lister in turn.
const SCALE_LISTS: usize = 7;
/// The service of the second registry of the scale phase.
const SCALE_SMALL: &str = "scale-small";
/// Longest wait for a driver's reply to one command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(180);
/// Each layer's lists and registrations of a round are split into this many chunks, alternated
/// with the same chunks run by a floor driver beside it: the ratio compares runs seconds apart.
const CHUNKS: usize = 5;

/// `hold SERVICE C TTL` on `d`, waiting up to the scale step's budget: the milliseconds it
/// took, or None past the budget (or when the driver died).
fn timed_hold(d: &mut Driver, service: &str, c: usize, ttl: u64) -> Res<Option<f64>> {
    let t0 = Instant::now();
    d.send(&format!("hold {service} {c} {ttl}"))?;
    loop {
        match d.recv(Duration::from_secs(1)) {
            Ok(v) => return Ok(Some(num(&v, "ms")?)),
            Err(e) if !e.contains("no reply within") => return Err(format!("hold: {e}")),
            Err(_) if t0.elapsed() < SCALE_BUDGET && d.alive() => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Iterations and durations, full or quick (`BENCH_QUICK=1`).
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    /// (nodes in the service, timed lists per round).
    pub list: Vec<(usize, usize)>,
    pub register_iters: usize,
    pub watch_events: usize,
    pub watch_gap: Duration,
    pub bulk_ttl: u64,
    pub window: Duration,
    /// Registrations for the memory and lease count at scale (not in quick runs).
    pub big: usize,
    pub recovery_rounds: usize,
    pub recovery_nodes: usize,
    pub short_outage: Duration,
    pub long_ttl: u64,
    pub short_ttl: u64,
    pub long_outage: Duration,
    /// The 60 s outage (full runs only; zero: skipped), and its TTL.
    pub outage_60: Duration,
    pub outage_60_ttl: u64,
    pub recovery_timeout: Duration,
    /// Registrations held by one registry for the scale curve.
    pub scale: Vec<usize>,
    /// Fleet run: registry processes, services, processes that also watch, TTL.
    pub fleet_processes: usize,
    pub fleet_services: usize,
    pub fleet_watchers: usize,
    pub fleet_ttl: u64,
    /// How long every member of the fleet's cluster stays down before they all start again.
    pub fleet_outage: Duration,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        let full = !quick;
        Settings {
            quick,
            // A round runs every layer's series once (about 25 s for eight layers). Medians
            // of 11 per-round ratios: with 5, the same build moved by ±0.10 from run to run.
            rounds: if full { 11 } else { 3 },
            list: if full {
                vec![(1, 100), (100, 100), (1000, 30), (10000, 10)]
            } else {
                vec![(1, 50), (100, 50), (1000, 15), (10000, 5)]
            },
            register_iters: if full { 60 } else { 30 },
            watch_events: if full { 200 } else { 50 },
            watch_gap: Duration::from_millis(3),
            bulk_ttl: 6,
            window: Duration::from_secs(if full { 10 } else { 4 }),
            big: if full { 10_000 } else { 0 },
            recovery_rounds: if full { 2 } else { 1 },
            recovery_nodes: 100,
            short_outage: Duration::from_secs(5),
            long_ttl: 10,
            short_ttl: 3,
            long_outage: Duration::from_secs(6),
            outage_60: Duration::from_secs(if full { 60 } else { 0 }),
            outage_60_ttl: 10,
            recovery_timeout: Duration::from_secs(45),
            scale: if full {
                vec![1000, 10_000, 100_000]
            } else {
                vec![1000, 10_000]
            },
            fleet_processes: if full { 200 } else { 40 },
            fleet_services: if full { 2 } else { 1 },
            fleet_watchers: if full { 20 } else { 4 },
            // The bulk phase's TTL, so that its single-registry idle rate models a process.
            fleet_ttl: 6,
            // Past the TTL: every registry has lost its keep-alive and is in its retry loop.
            fleet_outage: Duration::from_secs(if full { 10 } else { 8 }),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "rounds": self.rounds,
            "list_sizes_and_iterations": self.list,
            "register_visible_iterations": self.register_iters,
            "watch_events": self.watch_events,
            "watch_put_gap_ms": self.watch_gap.as_millis() as u64,
            "bulk_ttl_s": self.bulk_ttl,
            "idle_window_s": self.window.as_secs_f64(),
            "big_registrations": self.big,
            "recovery_rounds": self.recovery_rounds,
            "recovery_nodes": self.recovery_nodes,
            "short_outage_s": self.short_outage.as_secs_f64(),
            "short_outage_ttl_s": self.long_ttl,
            "long_outage_s": self.long_outage.as_secs_f64(),
            "long_outage_ttl_s": self.short_ttl,
            "outage_60_s": self.outage_60.as_secs_f64(),
            "outage_60_ttl_s": self.outage_60_ttl,
            "scale_registrations": self.scale,
            "fleet_processes": self.fleet_processes,
            "fleet_services": self.fleet_services,
            "fleet_watchers": self.fleet_watchers,
            "fleet_ttl_s": self.fleet_ttl,
            "fleet_outage_s": self.fleet_outage.as_secs_f64(),
            "drivers_ignore_sigpipe": std::env::var("BENCH_IGNORE_SIGPIPE").is_ok_and(|v| v == "1"),
        })
    }
}

fn known_layer(name: &str, command: Vec<String>) -> Layer {
    // Targets (issue #15): C and Rust ≤ ×1.05 the raw etcd-client floor; Go and Python ≤ ×1.00
    // the best native peer of their language.
    let (label, target, language, peer) = match name {
        "raw" => ("raw etcd-client (floor)", None, "rust", true),
        "core" => ("Rust core", Some(1.05), "rust", false),
        "c" => ("C library", Some(1.05), "c", false),
        "python" => ("Python", Some(1.0), "python", false),
        "go" => ("Go", Some(1.0), "go", false),
        "go-clientv3" => ("Go clientv3 (peer)", None, "go", true),
        "py-etcd3" => ("Python etcd3 (peer)", None, "python", true),
        "py-aetcd" => ("Python aetcd (peer)", None, "python", true),
        other => (other, None, "?", false),
    };
    Layer {
        name: name.to_string(),
        label: label.to_string(),
        command,
        target_ratio: target,
        language,
        peer,
    }
}

const USAGE: &str = "usage: etcd-registry-bench [run] [--quick] [--layer NAME=COMMAND]... \
[--label NAME=LABEL]... [--skip NAME=REASON]... [--phases latency,bulk,recovery,scale,fleet] [--out DIR] [--markdown FILE] [--log-dir DIR]";

pub fn main(args: &[String]) -> i32 {
    let mut quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "etcd-registry-bench".into());
    let mut layers = vec![
        known_layer("raw", vec![exe.clone(), "driver".into(), "raw".into()]),
        known_layer("core", vec![exe, "driver".into(), "core".into()]),
    ];
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut phases = vec![
        "latency".to_string(),
        "bulk".into(),
        "recovery".into(),
        "scale".into(),
        "fleet".into(),
    ];
    let mut out_dir = PathBuf::from("bench/results");
    let mut markdown = PathBuf::from("BENCHMARKS.md");
    let mut log_dir = std::env::temp_dir().join("etcd-registry-bench-logs");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Option<String> {
            let v = it.next().cloned();
            if v.is_none() {
                eprintln!("{name} needs a value\n{USAGE}");
            }
            v
        };
        match a.as_str() {
            "--quick" => quick = true,
            "--layer" => {
                let Some(v) = value("--layer") else { return 2 };
                let Some((name, cmd)) = v.split_once('=') else {
                    eprintln!("--layer NAME=COMMAND\n{USAGE}");
                    return 2;
                };
                let cmd = cmd.split_whitespace().map(str::to_string).collect();
                layers.push(known_layer(name, cmd));
            }
            "--label" => {
                let Some(v) = value("--label") else { return 2 };
                let Some((name, label)) = v.split_once('=') else {
                    eprintln!("--label NAME=LABEL\n{USAGE}");
                    return 2;
                };
                for l in layers.iter_mut().filter(|l| l.name == name) {
                    l.label = label.to_string();
                }
            }
            "--skip" => {
                let Some(v) = value("--skip") else { return 2 };
                let (name, reason) = v.split_once('=').unwrap_or((v.as_str(), "not built"));
                skipped.push((name.to_string(), reason.to_string()));
            }
            "--phases" => {
                let Some(v) = value("--phases") else { return 2 };
                phases = v.split(',').map(str::to_string).collect();
            }
            "--out" => match value("--out") {
                Some(v) => out_dir = v.into(),
                None => return 2,
            },
            "--markdown" => match value("--markdown") {
                Some(v) => markdown = v.into(),
                None => return 2,
            },
            "--log-dir" => match value("--log-dir") {
                Some(v) => log_dir = v.into(),
                None => return 2,
            },
            "run" => {}
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                return 2;
            }
        }
    }
    let settings = Settings::new(quick);
    let started = Instant::now();
    let mut results = Results {
        machine: sysinfo::machine(),
        settings: settings.to_json(),
        date_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        layers: layers.clone(),
        skipped,
        latency: BTreeMap::new(),
        paired_floor: BTreeMap::new(),
        paired_peer: BTreeMap::new(),
        bulk: BTreeMap::new(),
        recovery: BTreeMap::new(),
        scale: Vec::new(),
        fleet: None,
        errors: Vec::new(),
        duration_s: 0.0,
        phases: phases.clone(),
    };
    let mut bench = Bench {
        settings,
        layers,
        log_dir,
        results: &mut results,
    };
    if let Err(e) = bench.run(&phases) {
        eprintln!("benchmark aborted: {e}");
        bench.results.errors.push(format!("aborted: {e}"));
    }
    results.duration_s = started.elapsed().as_secs_f64();
    for table in report::tables(&results) {
        println!("\n{table}");
    }
    println!();
    for (name, reason) in &results.skipped {
        println!("skipped: {name} not built ({reason})");
    }
    if !results.errors.is_empty() {
        println!("\nerrors during the run:");
        for e in &results.errors {
            println!("  - {}", e.replace('\n', "\n    "));
        }
    }
    if let Err(e) = report::write_all(&results, &out_dir, &markdown) {
        eprintln!("writing the results: {e}");
        return 1;
    }
    println!(
        "\nwrote {}, {} and {} in {:.0} s",
        out_dir.join("latest.json").display(),
        out_dir.join("latest.svg").display(),
        markdown.display(),
        results.duration_s
    );
    0
}

struct Bench<'a> {
    settings: Settings,
    layers: Vec<Layer>,
    log_dir: PathBuf,
    results: &'a mut Results,
}

fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench {t:6.1}s] {msg}");
}

fn nodes_value(k: usize) -> String {
    json!({
        "address": format!("10.1.{}.{}:8080", k / 256 % 256, k % 256),
        "version": "1.4.2",
        "zone": format!("zone-{}", k % 3),
    })
    .to_string()
}

fn prefix(service: &str) -> String {
    format!("{BASE}/{service}/")
}

/// Stores one round's percentiles of `us` under measurement → layer.
fn put_round(
    table: &mut ByLayer,
    rounds: usize,
    measurement: &str,
    layer: &str,
    round: usize,
    us: &[f64],
) {
    let slot = table
        .entry(measurement.to_string())
        .or_default()
        .entry(layer.to_string())
        .or_insert_with(|| vec![None; rounds]);
    if round < slot.len() {
        slot[round] = pct(us);
    }
}

/// A layer's samples of one measurement and round, and those of each driver run beside it.
type Samples = (Vec<f64>, Vec<Vec<f64>>);

fn pct(us: &[f64]) -> Option<Pct> {
    match (stats::percentile(us, 50.0), stats::percentile(us, 99.0)) {
        (Some(p50), Some(p99)) => Some(Pct {
            p50,
            p99,
            n: us.len(),
        }),
        _ => None,
    }
}

impl Bench<'_> {
    fn run(&mut self, phases: &[String]) -> Res<()> {
        let wants = |p: &str| phases.iter().any(|x| x == p);
        if wants("latency") {
            progress("starting etcd");
            let etcd = EtcdCluster::builder()
                .start()
                .map_err(|e| format!("starting etcd: {e}"))?;
            let mut direct = Direct::new(etcd.direct_endpoints())?;
            self.latency(&etcd, &mut direct)?;
        }
        if wants("bulk") {
            if let Err(e) = self.bulk() {
                self.error(format!("bulk/footprint: {e}"));
            }
        }
        if wants("recovery") {
            if let Err(e) = self.recovery() {
                self.error(format!("recovery: {e}"));
            }
        }
        if wants("scale") {
            if let Err(e) = self.scale() {
                self.error(format!("scale: {e}"));
            }
        }
        if wants("fleet") {
            if let Err(e) = self.fleet() {
                self.error(format!("fleet: {e}"));
            }
        }
        Ok(())
    }

    fn error(&mut self, e: String) {
        eprintln!("[bench] error: {e}");
        self.results.errors.push(e);
    }

    // ------------------------------------------------------------------------ latency

    fn latency(&mut self, etcd: &EtcdCluster, direct: &mut Direct) -> Res<()> {
        progress("filling the listed services");
        for &(size, _) in &self.settings.list {
            let kvs: Vec<(String, String)> = (0..size)
                .map(|k| {
                    (
                        format!("{}n{k:05}", prefix(&format!("list-{size}"))),
                        nodes_value(k),
                    )
                })
                .collect();
            direct.put_many(&kvs)?;
        }
        let n = self.layers.len();
        for round in 0..self.settings.rounds {
            for i in 0..n {
                // Interleaved: each round starts with the next layer.
                let layer = self.layers[(i + round) % n].clone();
                progress(&format!(
                    "latency round {}/{}: {}",
                    round + 1,
                    self.settings.rounds,
                    layer.name
                ));
                if let Err(e) = self.latency_round(etcd, direct, &layer, round) {
                    self.error(format!("latency round {round} of {}: {e}", layer.name));
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, measurement: &str, layer: &str, round: usize, us: &[f64]) {
        let rounds = self.settings.rounds;
        put_round(
            &mut self.results.latency,
            rounds,
            measurement,
            layer,
            round,
            us,
        );
    }

    /// Records a layer's samples of a round and those of each driver run beside it: the
    /// floor's under `paired_floor`, a native peer's under `paired_peer`.
    fn record_pair(
        &mut self,
        measurement: &str,
        layer: &str,
        round: usize,
        beside: &[String],
        pair: &Samples,
    ) {
        let (us, theirs) = pair;
        self.record(measurement, layer, round, us);
        let rounds = self.settings.rounds;
        for (name, their_us) in beside.iter().zip(theirs) {
            if their_us.is_empty() {
                continue;
            }
            if name == FLOOR {
                let table = &mut self.results.paired_floor;
                put_round(table, rounds, measurement, layer, round, their_us);
            } else {
                let table = self
                    .results
                    .paired_peer
                    .entry(measurement.to_string())
                    .or_default();
                put_round(table, rounds, layer, name, round, their_us);
            }
        }
    }

    /// Runs `cmd(chunk, iterations, who)` CHUNKS times on the layer's driver (`who` None) and
    /// on each driver beside it (`who` its name), rotating which goes first; `reply` checks
    /// each answer and takes its samples. Returns the layer's samples and each beside driver's.
    fn chunked(
        layer: &mut Driver,
        beside: &mut [(String, Driver)],
        iters: usize,
        cmd: impl Fn(usize, usize, Option<&str>) -> String,
        reply: impl Fn(&Value) -> Res<Vec<f64>>,
    ) -> Res<Samples> {
        let mut mine = Vec::new();
        let mut theirs = vec![Vec::new(); beside.len()];
        let chunks = CHUNKS.min(iters.max(1));
        let turns = beside.len() + 1;
        for c in 0..chunks {
            let n = iters / chunks + usize::from(c < iters % chunks);
            for turn in 0..turns {
                match (turn + c) % turns {
                    0 => mine.extend(reply(&layer.call(&cmd(c, n, None), REPLY_TIMEOUT)?)?),
                    k => {
                        let (name, driver) = &mut beside[k - 1];
                        let answer = driver.call(&cmd(c, n, Some(name.as_str())), REPLY_TIMEOUT)?;
                        theirs[k - 1].extend(reply(&answer)?);
                    }
                }
            }
        }
        Ok((mine, theirs))
    }

    /// The layers run beside `layer` in its rounds: the floor, and for a Go or Python layer of
    /// etcd-registry the native peers of its language (its reference).
    fn beside_of(&self, layer: &Layer) -> Vec<Layer> {
        self.layers
            .iter()
            .filter(|l| l.name != layer.name)
            .filter(|l| {
                l.name == FLOOR
                    || (l.peer
                        && !layer.peer
                        && matches!(layer.language, "go" | "python")
                        && l.language == layer.language)
            })
            .cloned()
            .collect()
    }

    fn latency_round(
        &mut self,
        etcd: &EtcdCluster,
        direct: &mut Direct,
        layer: &Layer,
        round: usize,
    ) -> Res<()> {
        let mut d = Driver::spawn(layer, &etcd.endpoints(), BASE, &self.log_dir)?;
        let mut beside = Vec::new();
        for l in self.beside_of(layer) {
            let driver = Driver::spawn(&l, &etcd.endpoints(), BASE, &self.log_dir)?;
            beside.push((l.name, driver));
        }
        let names: Vec<String> = beside.iter().map(|(n, _)| n.clone()).collect();
        // A service of the layer's own (None) or of a driver beside it.
        let suffix = |who: Option<&str>| who.map_or(String::new(), |w| format!("-{w}"));
        let suffixes: Vec<String> = std::iter::once(None)
            .chain(names.iter().map(|n| Some(n.as_str())))
            .map(suffix)
            .collect();
        for (size, iters) in self.settings.list.clone() {
            let listed = Self::chunked(
                &mut d,
                &mut beside,
                iters,
                |_, n, _| format!("list list-{size} {n}"),
                |v| {
                    let got = num(v, "nodes")? as usize;
                    if got != size {
                        return Err(format!("listed {got} nodes of {size}"));
                    }
                    samples(v)
                },
            );
            match listed {
                Ok(pair) => {
                    let m = format!("list_{size}");
                    self.record_pair(&m, &layer.name, round, &names, &pair)
                }
                Err(e) => self.error(format!("{} list {size}: {e}", layer.name)),
            }
        }
        // Register → visible, with a lease held and as the first of its TTL; each chunk of
        // each driver into a fresh service.
        for (measurement, tag, first) in [
            ("register_visible", "rv", ""),
            ("register_first", "rf", " first"),
        ] {
            let service = |c: usize, who: &str| format!("{tag}-{}-{round}-{c}{who}", layer.name);
            let registered = Self::chunked(
                &mut d,
                &mut beside,
                self.settings.register_iters,
                |c, n, who| {
                    let service = service(c, &suffix(who));
                    format!("register_visible {service} {n} {REGISTER_TTL}{first}")
                },
                samples,
            );
            for c in 0..CHUNKS {
                for who in &suffixes {
                    let _ = direct.delete_prefix(&prefix(&service(c, who)));
                }
            }
            match registered {
                Ok(pair) => self.record_pair(measurement, &layer.name, round, &names, &pair),
                Err(e) => self.error(format!("{} {measurement}: {e}", layer.name)),
            }
        }
        let services: Vec<String> = suffixes
            .iter()
            .map(|who| format!("wl-{}-{round}{who}", layer.name))
            .collect();
        let watched = self.watch_lag(&mut d, &mut beside, direct, &services);
        for s in &services {
            let _ = direct.delete_prefix(&prefix(s));
        }
        match watched {
            Ok(pair) => self.record_pair("watch_lag", &layer.name, round, &names, &pair),
            Err(e) => {
                self.error(format!("{} watch: {e}", layer.name));
                // The drivers may be stuck in the watch: dropped (killed) here.
                return Ok(());
            }
        }
        for (_, b) in beside {
            b.quit(Duration::from_secs(10));
        }
        d.quit(Duration::from_secs(10));
        Ok(())
    }

    /// The layer's driver watches `services[0]` and each driver beside it the next one; we put
    /// one warm-up node into each, wait until it has been seen, then put the timed nodes, each
    /// carrying the unix time (ns) taken just before its put, to one service after the other
    /// (which comes first rotates), so that all lags are measured over the same seconds.
    fn watch_lag(
        &mut self,
        d: &mut Driver,
        beside: &mut [(String, Driver)],
        direct: &mut Direct,
        services: &[String],
    ) -> Res<Samples> {
        let n = self.settings.watch_events;
        let ready = Duration::from_secs(30);
        d.call(&format!("watch {} {n}", services[0]), ready)?;
        for ((_, b), s) in beside.iter_mut().zip(&services[1..]) {
            b.call(&format!("watch {s} {n}"), ready)?;
        }
        for s in services {
            direct.put(&format!("{}warm", prefix(s)), r#"{"warm":"1"}"#)?;
        }
        d.recv(ready)?;
        for (_, b) in beside.iter_mut() {
            b.recv(ready)?;
        }
        for i in 0..n {
            for k in 0..services.len() {
                let s = &services[(i + k) % services.len()];
                let t = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let value = json!({ "t": t.to_string() }).to_string();
                direct.put(&format!("{}w{i:04}", prefix(s)), &value)?;
                std::thread::sleep(self.settings.watch_gap);
            }
        }
        let mine = samples(&d.recv(Duration::from_secs(60))?)?;
        let mut theirs = Vec::new();
        for (_, b) in beside.iter_mut() {
            theirs.push(samples(&b.recv(Duration::from_secs(60))?)?);
        }
        Ok((mine, theirs))
    }

    // --------------------------------------------------------------- bulk and footprint

    /// One etcd per layer, so that etcd's counters and lease list belong to one layer while
    /// every layer idles at once. The timed registration of 1 000 nodes runs one layer at a
    /// time; the idle window and the 9 000 further registrations run for all layers at once.
    fn bulk(&mut self) -> Res<()> {
        progress("bulk registration and footprint: starting one etcd per layer");
        let mut slots: Vec<Slot> = Vec::new();
        for layer in self.layers.clone() {
            let etcd = EtcdCluster::builder()
                .start()
                .map_err(|e| format!("starting etcd: {e}"))?;
            let direct = Direct::new(etcd.direct_endpoints())?;
            let mut slot = Slot {
                service: format!("fp-{}", layer.name),
                layer,
                etcd,
                direct,
                driver: None,
                f: BTreeMap::new(),
                leases_before: 0,
            };
            match slot.start(&self.log_dir) {
                Ok(()) => {}
                Err(e) => self.slot_failed(&mut slot, e),
            }
            slots.push(slot);
        }
        let ttl = self.settings.bulk_ttl;
        for slot in &mut slots {
            if slot.driver.is_none() {
                continue;
            }
            progress(&format!(
                "bulk registration of 1 000 nodes: {}",
                slot.layer.name
            ));
            if let Err(e) = slot.register_1000(ttl) {
                self.slot_failed(slot, e);
            }
        }
        progress("idle window, every layer at once");
        let mut before = Vec::new();
        for slot in &mut slots {
            before.push(slot.idle_counters().ok());
        }
        let t0 = Instant::now();
        std::thread::sleep(self.settings.window);
        let secs = t0.elapsed().as_secs_f64();
        for (slot, before) in slots.iter_mut().zip(before) {
            if let (Some(before), Ok(after)) = (before, slot.idle_counters()) {
                slot.record_idle(before, after, secs);
            }
        }
        let more = self.settings.big.saturating_sub(1000);
        if more > 0 {
            progress(&format!(
                "registering {more} more nodes, every layer at once"
            ));
            for slot in &mut slots {
                let service = slot.service.clone();
                if let Some(d) = slot.driver.as_mut() {
                    if let Err(e) = d.send(&format!("hold {service} {more} {ttl}")) {
                        self.slot_failed(slot, e);
                    }
                }
            }
            for slot in &mut slots {
                if let Err(e) = slot.after_big() {
                    self.slot_failed(slot, e);
                }
            }
        }
        for slot in &mut slots {
            if let Some(d) = slot.driver.as_mut() {
                let _ = d.send("release");
            }
        }
        for mut slot in slots {
            if let Some(mut d) = slot.driver.take() {
                if let Err(e) = d.recv(REPLY_TIMEOUT) {
                    self.results.errors.push(format!("release: {e}"));
                }
                d.quit(Duration::from_secs(10));
            }
            self.results.bulk.insert(slot.layer.name.clone(), slot.f);
        }
        Ok(())
    }

    fn slot_failed(&mut self, slot: &mut Slot, e: String) {
        self.error(format!("{} bulk/footprint: {e}", slot.layer.name));
        slot.f.insert("error".to_string(), json!(e));
        slot.driver = None; // killed on drop
    }

    // ------------------------------------------------------------------------ recovery

    /// Every layer holds its nodes at once through one proxy; etcd is killed and restarted, or
    /// partitioned past the TTL and healed. A driver that dies is recorded as such (and started
    /// again for the next run); the other layers' runs go on.
    fn recovery(&mut self) -> Res<()> {
        progress("starting etcd behind a proxy for the recovery runs");
        let etcd = EtcdCluster::builder()
            .proxy(true)
            .start()
            .map_err(|e| format!("starting etcd: {e}"))?;
        let mut direct = Direct::new(etcd.direct_endpoints())?;
        let mut drivers: Vec<(Layer, Option<Driver>)> =
            self.layers.iter().map(|l| (l.clone(), None)).collect();
        for round in 0..self.settings.recovery_rounds {
            let mut scenarios = vec!["restart", "partition"];
            if round == 0 && !self.settings.outage_60.is_zero() {
                scenarios.push("outage60");
            }
            for scenario in scenarios {
                progress(&format!(
                    "recovery round {}/{}: {scenario}",
                    round + 1,
                    self.settings.recovery_rounds
                ));
                for (layer, slot) in &mut drivers {
                    if slot.as_mut().is_some_and(|d| !d.alive()) {
                        *slot = None;
                    }
                    if slot.is_none() {
                        match Driver::spawn(layer, &etcd.endpoints(), BASE, &self.log_dir) {
                            Ok(d) => *slot = Some(d),
                            Err(e) => {
                                self.results
                                    .errors
                                    .push(format!("{} recovery: {e}", layer.name));
                            }
                        }
                    }
                }
                let r = self.recovery_run(&etcd, &mut direct, &mut drivers, scenario, round);
                if let Err(e) = r {
                    self.error(format!("recovery {scenario}: {e}"));
                }
                if !etcd.is_running(0) {
                    etcd.restart(0)
                        .map_err(|e| format!("restarting etcd: {e}"))?;
                }
                etcd.heal().map_err(|e| e.to_string())?;
                for (_, slot) in &mut drivers {
                    if let Some(d) = slot.as_mut() {
                        if let Err(e) = d.call("release", REPLY_TIMEOUT) {
                            self.results.errors.push(format!("release: {e}"));
                            *slot = None;
                        }
                    }
                }
            }
        }
        for (_, slot) in drivers {
            if let Some(d) = slot {
                d.quit(Duration::from_secs(10));
            }
        }
        Ok(())
    }

    fn recovery_run(
        &mut self,
        etcd: &EtcdCluster,
        direct: &mut Direct,
        drivers: &mut [(Layer, Option<Driver>)],
        scenario: &str,
        round: usize,
    ) -> Res<()> {
        let s = &self.settings;
        let (ttl, outage) = match scenario {
            "restart" => (s.long_ttl, s.short_outage),
            "outage60" => (s.outage_60_ttl, s.outage_60),
            _ => (s.short_ttl, s.long_outage),
        };
        let n = s.recovery_nodes;
        let count = drivers.len();
        let services: Vec<String> = drivers
            .iter()
            .map(|(l, _)| format!("rec-{scenario}-{}-{round}", l.name))
            .collect();
        let mut failure: Vec<Option<String>> = drivers
            .iter()
            .map(|(_, d)| d.is_none().then(|| "driver not running".to_string()))
            .collect();
        // A failed call: the layer's run ends here, its driver is dropped (killed if alive).
        let fail = |failure: &mut Vec<Option<String>>,
                    slot: &mut Option<Driver>,
                    i: usize,
                    at: &str,
                    e: String| {
            let why = slot
                .as_mut()
                .and_then(Driver::exit_status)
                .map_or(e, |st| format!("driver died ({st})"));
            failure[i] = Some(format!("{at}: {why}"));
            *slot = None;
        };
        for (i, (_, slot)) in drivers.iter_mut().enumerate() {
            if let Some(d) = slot.as_mut() {
                if let Err(e) = d.call(&format!("hold {} {n} {ttl}", services[i]), REPLY_TIMEOUT) {
                    fail(&mut failure, slot, i, "registering", e);
                }
            }
        }
        let down = Instant::now();
        match scenario {
            "restart" => etcd.kill(0).map_err(|e| format!("kill: {e}"))?,
            _ => etcd.partition().map_err(|e| format!("partition: {e}"))?,
        }
        std::thread::sleep(outage.saturating_sub(down.elapsed()));
        // What each layer believes just before etcd is back, and (partition) whether the
        // lease really expired meanwhile.
        let mut believed = vec![0usize; count];
        for (i, (_, slot)) in drivers.iter_mut().enumerate() {
            if let Some(d) = slot.as_mut() {
                match d.call("state", Duration::from_secs(10)) {
                    Ok(v) => believed[i] = num(&v, "registered").unwrap_or(0.0) as usize,
                    Err(e) => fail(&mut failure, slot, i, "during the outage", e),
                }
            }
        }
        let mut keys_left = vec![None; count];
        if scenario != "restart" {
            for (i, service) in services.iter().enumerate() {
                keys_left[i] = direct.count(&prefix(service)).ok();
            }
        }
        match scenario {
            "restart" => etcd.restart(0).map_err(|e| format!("restart: {e}"))?,
            _ => etcd.heal().map_err(|e| format!("heal: {e}"))?,
        }
        let back = Instant::now();
        let outage_s = (back - down).as_secs_f64();
        let mut visible: Vec<Option<f64>> = vec![None; count];
        let mut registered: Vec<Option<f64>> = vec![None; count];
        while back.elapsed() < s.recovery_timeout {
            for (i, (_, slot)) in drivers.iter_mut().enumerate() {
                if failure[i].is_some() {
                    continue;
                }
                if visible[i].is_none()
                    && direct.count(&prefix(&services[i])).ok() == Some(n as i64)
                {
                    visible[i] = Some(back.elapsed().as_secs_f64());
                }
                if registered[i].is_none() {
                    let Some(d) = slot.as_mut() else { continue };
                    match d.call("state", Duration::from_secs(10)) {
                        Ok(v) if num(&v, "registered").unwrap_or(0.0) as usize == n => {
                            registered[i] = Some(back.elapsed().as_secs_f64());
                        }
                        Ok(_) => {}
                        Err(e) => fail(&mut failure, slot, i, "after the outage", e),
                    }
                }
            }
            let done = (0..count)
                .all(|i| failure[i].is_some() || (visible[i].is_some() && registered[i].is_some()));
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let rounds = s.recovery_rounds;
        for (i, (layer, _)) in drivers.iter().enumerate() {
            if let Some(f) = &failure[i] {
                self.results
                    .errors
                    .push(format!("{} recovery {scenario}: {f}", layer.name));
            }
            let rec = Recovery {
                outage_s,
                ttl_s: ttl,
                visible_s: visible[i],
                registered_s: registered[i],
                registered_during_outage: believed[i],
                keys_left_at_heal: keys_left[i],
                failure: failure[i].clone(),
            };
            let slot = self
                .results
                .recovery
                .entry(scenario.to_string())
                .or_default()
                .entry(layer.name.clone())
                .or_insert_with(|| vec![None; rounds]);
            if round < slot.len() {
                slot[round] = Some(rec);
            }
        }
        for service in &services {
            let _ = direct.delete_prefix(&prefix(service));
        }
        Ok(())
    }
}
/// One layer's driver and etcd during the bulk phase, and what was measured.
struct Slot {
    layer: Layer,
    service: String,
    etcd: EtcdCluster,
    direct: Direct,
    driver: Option<Driver>,
    f: BTreeMap<String, Value>,
    leases_before: usize,
}

/// (keep-alives, lease checks, all gRPC messages received by etcd, driver CPU ticks).
type Counters = ((f64, f64, f64), u64);

impl Slot {
    fn driver(&mut self) -> Res<&mut Driver> {
        self.driver
            .as_mut()
            .ok_or_else(|| "driver not running".to_string())
    }

    fn sample(&mut self, at: &str) {
        std::thread::sleep(Duration::from_millis(300));
        let Some(pid) = self.driver.as_ref().map(Driver::pid) else {
            return;
        };
        if let Some((threads, rss)) = sysinfo::threads_rss(pid) {
            self.f.insert(format!("threads_{at}"), json!(threads));
            self.f.insert(format!("rss_kib_{at}"), json!(rss));
        }
    }

    fn leases(&self) -> Res<usize> {
        let now = self.etcd.lease_count().map_err(|e| e.to_string())?;
        Ok(now.saturating_sub(self.leases_before))
    }

    fn start(&mut self, log_dir: &std::path::Path) -> Res<()> {
        self.leases_before = self.etcd.lease_count().map_err(|e| e.to_string())?;
        self.driver = Some(Driver::spawn(
            &self.layer,
            &self.etcd.endpoints(),
            BASE,
            log_dir,
        )?);
        self.sample("start");
        Ok(())
    }

    fn register_1000(&mut self, ttl: u64) -> Res<()> {
        let service = self.service.clone();
        let one = self
            .driver()?
            .call(&format!("hold {service} 1 {ttl}"), REPLY_TIMEOUT)?;
        self.sample("1");
        let rest = self
            .driver()?
            .call(&format!("hold {service} 999 {ttl}"), REPLY_TIMEOUT)?;
        self.f.insert(
            "register_1000_ms".into(),
            json!(num(&one, "ms")? + num(&rest, "ms")?),
        );
        self.sample("1000");
        let keys = self.direct.count(&prefix(&service))?;
        self.f.insert("keys_1000".into(), json!(keys));
        let leases = self.leases()?;
        self.f.insert("leases_1000".into(), json!(leases));
        Ok(())
    }

    fn idle_counters(&mut self) -> Res<Counters> {
        let pid = self.driver()?.pid();
        let metrics = sysinfo::grpc_received(&self.etcd.direct_endpoint(0))?;
        let cpu = sysinfo::cpu_ticks(pid).ok_or("no /proc stat")?;
        Ok((metrics, cpu))
    }

    fn record_idle(&mut self, before: Counters, after: Counters, secs: f64) {
        let ((k0, t0, a0), c0) = before;
        let ((k1, t1, a1), c1) = after;
        self.f.insert("window_s".into(), json!(secs));
        self.f
            .insert("keepalive_per_s".into(), json!((k1 - k0) / secs));
        self.f
            .insert("lease_checks_per_s".into(), json!((t1 - t0) / secs));
        self.f
            .insert("requests_per_s".into(), json!((a1 - a0) / secs));
        self.f.insert(
            "idle_cpu_percent".into(),
            json!(c1.saturating_sub(c0) as f64 / sysinfo::clock_ticks() / secs * 100.0),
        );
    }

    /// Reads the answer to the `hold` of the big registration already sent, then samples.
    fn after_big(&mut self) -> Res<()> {
        let Some(d) = self.driver.as_mut() else {
            return Ok(());
        };
        let more = d.recv(REPLY_TIMEOUT)?;
        self.f
            .insert("register_big_more_ms".into(), json!(num(&more, "ms")?));
        self.sample("big");
        let leases = self.leases()?;
        self.f.insert("leases_big".into(), json!(leases));
        let keys = self.direct.count(&prefix(&self.service))?;
        self.f.insert("keys_big".into(), json!(keys));
        Ok(())
    }
}

// ------------------------------------------------------------------------ scale and fleet

/// gRPC streams open on one etcd member: (Watch, LeaseKeepAlive), started minus handled.
fn open_streams(body: &str) -> (f64, f64) {
    let open = |method: &str| {
        let m = format!("grpc_method=\"{method}\"");
        sysinfo::metric_sum(body, "grpc_server_started_total", &[&m])
            - sysinfo::metric_sum(body, "grpc_server_handled_total", &[&m])
    };
    (open("Watch"), open("LeaseKeepAlive"))
}

/// (keep-alives, lease checks, all messages) received by every member of `etcd`, summed.
fn received_all(etcd: &EtcdCluster) -> Res<(f64, f64, f64)> {
    let mut sum = (0.0, 0.0, 0.0);
    for i in 0..etcd.len() {
        let (k, t, a) = sysinfo::grpc_received(&etcd.direct_endpoint(i))?;
        sum = (sum.0 + k, sum.1 + t, sum.2 + a);
    }
    Ok(sum)
}

impl Bench<'_> {
    /// One core registry holding 1k, 10k, 100k registrations of one TTL: time to register,
    /// memory, keep-alives/s, and a second process listing and watching the service.
    fn scale(&mut self) -> Res<()> {
        let core = self
            .layers
            .iter()
            .find(|l| l.name == "core")
            .cloned()
            .ok_or("no core layer")?;
        let raw = self
            .layers
            .iter()
            .find(|l| l.name == "raw")
            .cloned()
            .ok_or("no raw layer")?;
        progress("scale: starting etcd");
        let etcd = EtcdCluster::builder()
            .start()
            .map_err(|e| format!("starting etcd: {e}"))?;
        let mut direct = Direct::new(etcd.direct_endpoints())?;
        let leases_before = etcd.lease_count().map_err(|e| e.to_string())?;
        let ttl = self.settings.bulk_ttl;
        let service = "scale";
        let mut holder = Driver::spawn(&core, &etcd.endpoints(), BASE, &self.log_dir)?;
        let mut reader = Driver::spawn(&core, &etcd.endpoints(), BASE, &self.log_dir)?;
        let mut floor = Driver::spawn(&raw, &etcd.endpoints(), BASE, &self.log_dir)?;
        let mut small = Driver::spawn(&core, &etcd.endpoints(), BASE, &self.log_dir)?;
        let pid = holder.pid();
        holder.call(&format!("hold {service} 1 {ttl}"), REPLY_TIMEOUT)?;
        std::thread::sleep(Duration::from_millis(300));
        let rss_1 = sysinfo::threads_rss(pid).map_or(0, |(_, r)| r);
        let mut have = 1usize;
        let mut total_ms = 0.0;
        let steps = self.settings.scale.clone();
        for (i, &n) in steps.iter().enumerate() {
            progress(&format!("scale: one registry holding {n} registrations"));
            // The step in one go, as a program registers its nodes; within a time budget: a
            // registry whose cost grows faster than linearly would otherwise hold the run for
            // an hour. Past it, the row says how far it got.
            let more = n - have;
            let Some(step_ms) = timed_hold(&mut holder, service, more, ttl)? else {
                let keys = direct.count(&prefix(service))?;
                let rss = sysinfo::threads_rss(pid).map_or(0, |(_, r)| r);
                self.error(format!(
                    "scale: {keys} of {n} registrations in etcd after the budget of {} s",
                    SCALE_BUDGET.as_secs()
                ));
                self.results.scale.push(json!({
                    "registrations": n,
                    "keys_in_etcd": keys,
                    "budget_exceeded_s": SCALE_BUDGET.as_secs(),
                    "rss_kib": rss,
                }));
                break;
            };
            // A step of 1 000 takes about 12 ms, and one timing of it moved by a quarter
            // between runs: every step but the last is also made by a second registry
            // (`small`: the steps up to this one, the last timed, then released), several
            // times, and the cost per registration is the p50 of all these timings.
            let mut per_reg_us = vec![step_ms * 1e3 / more as f64];
            if i + 1 < steps.len() {
                for _ in 0..SCALE_REPEATS {
                    // Its first registration grants the lease, as the holder's did.
                    small.call(&format!("hold {SCALE_SMALL} 1 {ttl}"), REPLY_TIMEOUT)?;
                    let mut held = 1;
                    for &m in &steps[..=i] {
                        let c = m - held;
                        let v =
                            small.call(&format!("hold {SCALE_SMALL} {c} {ttl}"), REPLY_TIMEOUT)?;
                        if m == n {
                            per_reg_us.push(num(&v, "ms")? * 1e3 / c as f64);
                        }
                        held = m;
                    }
                    small.call("release", Duration::from_secs(60))?;
                }
            }
            total_ms += step_ms;
            have = n;
            std::thread::sleep(Duration::from_millis(300));
            let rss = sysinfo::threads_rss(pid).map_or(0, |(_, r)| r);
            let keys = direct.count(&prefix(service))?;
            let leases = etcd
                .lease_count()
                .map_err(|e| e.to_string())?
                .saturating_sub(leases_before);
            let before = (received_all(&etcd)?, sysinfo::cpu_ticks(pid).unwrap_or(0));
            let t0 = Instant::now();
            std::thread::sleep(self.settings.window);
            let secs = t0.elapsed().as_secs_f64();
            let after = (received_all(&etcd)?, sysinfo::cpu_ticks(pid).unwrap_or(0));
            // Seven at every step: the p50 of fewer moved by a third between runs at 100 000.
            // Taking turns with the floor's lister (each call a connection, one list to warm
            // it, one timed), so that the growth per node that is etcd's own shows apart from
            // the core's.
            let (mut listed, mut floor_listed) = (Vec::new(), Vec::new());
            for _ in 0..SCALE_LISTS {
                let one = reader.call(&format!("list {service} 1 1"), REPLY_TIMEOUT)?;
                listed.extend(samples(&one)?);
                let one = floor.call(&format!("list {service} 1 1"), REPLY_TIMEOUT)?;
                floor_listed.extend(samples(&one)?);
            }
            let list_p50 = stats::percentile(&listed, 50.0);
            let floor_list_p50 = stats::percentile(&floor_listed, 50.0);
            let t0 = Instant::now();
            let watched = self.scale_watch(&mut reader, &mut direct, service);
            let watch_ms = t0.elapsed().as_secs_f64() * 1e3;
            let _ = direct.delete_prefix(&format!("{}w", prefix(service)));
            let (watch_ready_ms, lag_p50) = match watched {
                Ok((ready, lags)) => (Some(ready), stats::percentile(&lags, 50.0)),
                Err(e) => {
                    self.error(format!("scale watch at {n}: {e}"));
                    reader = Driver::spawn(&core, &etcd.endpoints(), BASE, &self.log_dir)?;
                    (None, None)
                }
            };
            self.results.scale.push(json!({
                "registrations": n,
                "keys_in_etcd": keys,
                "leases": leases,
                "register_step_ms": step_ms,
                "register_total_ms": total_ms,
                "register_us_per_registration": stats::percentile(&per_reg_us, 50.0),
                "register_us_per_registration_timings": per_reg_us,
                "rss_kib": rss,
                "bytes_per_registration": (rss.saturating_sub(rss_1) as f64 * 1024.0) / (n - 1).max(1) as f64,
                "keepalive_per_s": (after.0 .0 - before.0 .0) / secs,
                "lease_checks_per_s": (after.0 .1 - before.0 .1) / secs,
                "requests_per_s": (after.0 .2 - before.0 .2) / secs,
                "idle_cpu_percent": after.1.saturating_sub(before.1) as f64 / sysinfo::clock_ticks() / secs * 100.0,
                "list_p50_us": list_p50,
                "floor_list_p50_us": floor_list_p50,
                "watch_ready_ms": watch_ready_ms,
                "watch_lag_p50_us": lag_p50,
                "watch_total_ms": watch_ms,
            }));
        }
        if holder.call("release", Duration::from_secs(30)).is_ok() {
            holder.quit(Duration::from_secs(10));
        } // else dropped: killed
        reader.quit(Duration::from_secs(10));
        floor.quit(Duration::from_secs(10));
        small.quit(Duration::from_secs(10));
        Ok(())
    }

    /// A watch of the big service from a second process: (ms until the watch is ready, lags).
    fn scale_watch(
        &mut self,
        d: &mut Driver,
        direct: &mut Direct,
        service: &str,
    ) -> Res<(f64, Vec<f64>)> {
        let n = 20;
        let t0 = Instant::now();
        d.call(&format!("watch {service} {n}"), REPLY_TIMEOUT)?;
        let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
        direct.put(&format!("{}warm", prefix(service)), r#"{"warm":"1"}"#)?;
        d.recv(REPLY_TIMEOUT)?;
        for i in 0..n {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let value = json!({ "t": t.to_string() }).to_string();
            direct.put(&format!("{}w{i:04}", prefix(service)), &value)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((ready_ms, samples(&d.recv(REPLY_TIMEOUT)?)?))
    }

    /// A scaled-down fleet on a 3-member cluster: many core registry processes, each holding
    /// one node of one of a few services, some also watching one; what etcd carries.
    fn fleet(&mut self) -> Res<()> {
        let core = self
            .layers
            .iter()
            .find(|l| l.name == "core")
            .cloned()
            .ok_or("no core layer")?;
        let s = &self.settings;
        let (procs, services, watchers, ttl) = (
            s.fleet_processes,
            s.fleet_services.max(1),
            s.fleet_watchers,
            s.fleet_ttl,
        );
        progress(&format!(
            "fleet: 3-member etcd, {procs} registry processes, {services} services, {watchers} watching"
        ));
        // Behind proxies, which count the connection attempts while etcd is down.
        let etcd = EtcdCluster::builder()
            .members(3)
            .proxy(true)
            .start()
            .map_err(|e| format!("starting etcd: {e}"))?;
        let mut direct = Direct::new(etcd.direct_endpoints())?;
        let leases_before = etcd.lease_count().map_err(|e| e.to_string())?;
        let streams_before: Vec<(f64, f64)> = (0..etcd.len())
            .map(|i| sysinfo::metrics(&etcd.direct_endpoint(i)).map(|b| open_streams(&b)))
            .collect::<Res<_>>()?;
        let mut drivers = Vec::new();
        let started = Instant::now();
        for i in 0..procs {
            let mut d = Driver::spawn(&core, &etcd.endpoints(), BASE, &self.log_dir)?;
            d.send(&format!("hold fleet-{} 1 {ttl} p{i}-", i % services))?;
            drivers.push(d);
        }
        for d in &mut drivers {
            d.recv(REPLY_TIMEOUT)?;
        }
        // A watching process watches two services (when there are two), on one stream.
        for (i, d) in drivers.iter_mut().enumerate().take(watchers) {
            d.call(&format!("watch_idle fleet-{}", i % services), REPLY_TIMEOUT)?;
            if services > 1 {
                let other = (i + 1) % services;
                d.call(&format!("watch_idle fleet-{other}"), REPLY_TIMEOUT)?;
            }
        }
        let start_s = started.elapsed().as_secs_f64();
        let mut keys = 0;
        for k in 0..services {
            keys += direct.count(&prefix(&format!("fleet-{k}")))?;
        }
        let leases = etcd
            .lease_count()
            .map_err(|e| e.to_string())?
            .saturating_sub(leases_before);
        std::thread::sleep(Duration::from_secs(2));
        let before = received_all(&etcd)?;
        let t0 = Instant::now();
        std::thread::sleep(self.settings.window);
        let secs = t0.elapsed().as_secs_f64();
        let after = received_all(&etcd)?;
        let mut per_member = Vec::new();
        let (mut watch_streams, mut keepalive_streams) = (0.0, 0.0);
        for (i, (w0, k0)) in streams_before.iter().enumerate() {
            let body = sysinfo::metrics(&etcd.direct_endpoint(i))?;
            let (w, k) = open_streams(&body);
            let (w, k) = (w - w0, k - k0);
            let watchers_gauge =
                sysinfo::metric_sum(&body, "etcd_debugging_mvcc_watcher_total", &[]);
            let (ka, _, all) = sysinfo::grpc_received(&etcd.direct_endpoint(i))?;
            per_member.push(json!({"watch_streams": w, "keepalive_streams": k, "watchers": watchers_gauge, "keepalives_total": ka, "messages_total": all}));
            watch_streams += w;
            keepalive_streams += k;
        }
        let rss: u64 = drivers
            .iter()
            .filter_map(|d| sysinfo::threads_rss(d.pid()).map(|(_, r)| r))
            .sum();
        let restart = fleet_restart(&etcd, &mut drivers, s.fleet_outage).unwrap_or_else(|e| {
            self.error(format!("fleet restart: {e}"));
            json!({ "error": e })
        });
        // One node changes: how many watch events etcd sends (every watcher of that service).
        self.results.fleet = Some(json!({
            "processes": procs,
            "services": services,
            "watching_processes": watchers,
            "ttl_s": ttl,
            "members": etcd.len(),
            "start_s": start_s,
            "keys": keys,
            "leases": leases,
            "window_s": secs,
            "keepalive_per_s": (after.0 - before.0) / secs,
            "lease_checks_per_s": (after.1 - before.1) / secs,
            "requests_per_s": (after.2 - before.2) / secs,
            "watch_streams": watch_streams,
            "keepalive_streams": keepalive_streams,
            "per_member": per_member,
            "driver_rss_kib_total": rss,
            "restart": restart,
        }));
        progress("fleet: stopping the processes");
        for d in &mut drivers {
            let _ = d.send("release");
        }
        for mut d in drivers {
            let _ = d.recv(Duration::from_secs(30));
            d.quit(Duration::from_secs(5));
        }
        Ok(())
    }
}

/// Every member of the fleet's cluster SIGKILLed for `outage`, then all started again at once:
/// the connection attempts the registries make while etcd is down (counted by the proxies in
/// front of the members, from 1 s after the kill), then what etcd receives while they all come
/// back (its gRPC messages, sampled every 100 ms) and when each layer says registered again.
fn fleet_restart(etcd: &EtcdCluster, drivers: &mut [Driver], outage: Duration) -> Res<Value> {
    let procs = drivers.len().max(1) as f64;
    let members = etcd.len();
    let accepted = || {
        (0..members)
            .map(|i| etcd.proxy_accepted_total(i))
            .sum::<u64>()
    };
    progress(&format!(
        "fleet: every member down for {:.0} s, then all started at once",
        outage.as_secs_f64()
    ));
    // Each process keeps, from now on, when its registration's events said registered.
    for d in drivers.iter_mut() {
        d.call("track", Duration::from_secs(10))?;
    }
    for i in 0..members {
        etcd.kill(i).map_err(|e| format!("kill: {e}"))?;
    }
    let settle = Duration::from_secs(1);
    std::thread::sleep(settle);
    let (a0, t0) = (accepted(), Instant::now());
    std::thread::sleep(outage.saturating_sub(settle));
    let (a1, down_s) = (accepted(), t0.elapsed().as_secs_f64());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = Instant::now();
    let up_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let sampler = {
        let stop = stop.clone();
        let endpoints: Vec<String> = (0..members).map(|i| etcd.direct_endpoint(i)).collect();
        std::thread::spawn(move || {
            // Per member, its last counter read (0 until it answers: counters restart at 0).
            let mut last = vec![0.0; endpoints.len()];
            let mut series: Vec<(f64, f64, bool)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut leader = false;
                for (i, e) in endpoints.iter().enumerate() {
                    if let Ok(body) = sysinfo::metrics(e) {
                        last[i] = sysinfo::metric_sum(&body, "grpc_server_msg_received_total", &[]);
                        leader |= sysinfo::metric_sum(&body, "etcd_server_has_leader", &[]) >= 1.0;
                    }
                }
                series.push((up.elapsed().as_secs_f64(), last.iter().sum(), leader));
                std::thread::sleep(Duration::from_millis(100));
            }
            series
        })
    };
    let started = (0..members).try_for_each(|i| etcd.start(i).map_err(|e| format!("start: {e}")));
    // When each process was registered again: the time its registrations' status events said
    // so (the core driver reports it), else when it was first seen registered (polled in turns
    // over all of them, which with 200 busy processes can lag by a pass). Both kept.
    let mut back: Vec<Option<(f64, f64)>> = vec![None; drivers.len()];
    let mut polled = Ok(());
    if started.is_ok() {
        let deadline = up + Duration::from_secs(60);
        while Instant::now() < deadline && back.iter().any(Option::is_none) {
            for (d, back) in drivers.iter_mut().zip(back.iter_mut()) {
                if back.is_some() {
                    continue;
                }
                let state = d.call("state", Duration::from_secs(10)).and_then(|v| {
                    let all = num(&v, "registered")? >= num(&v, "total")?;
                    let seen = up.elapsed().as_secs_f64();
                    Ok(match v.get("registered_at_unix") {
                        _ if !all => None,
                        None => Some((seen, seen)),
                        // Its events have not said it yet.
                        Some(Value::Null) => None,
                        Some(at) => Some(((at.as_f64().unwrap_or(0.0) - up_unix).max(0.0), seen)),
                    })
                });
                match state {
                    Ok(at) => *back = at,
                    Err(e) => {
                        polled = Err(e);
                        break;
                    }
                }
            }
            if polled.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The traffic right after, for the rate to settle back to the idle keep-alives.
        std::thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let series = sampler.join().map_err(|_| "the metrics sampler panicked")?;
    started?;
    polled?;
    let back: Vec<(f64, f64)> = back
        .into_iter()
        .collect::<Option<_>>()
        .ok_or("not every registry registered again within 60 s")?;
    let seen_s = back.iter().map(|b| b.1).fold(0.0, f64::max);
    let mut back: Vec<f64> = back.into_iter().map(|b| b.0).collect();
    back.sort_by(f64::total_cmp);
    let registered_s = back.last().copied().unwrap_or(0.0);
    let first_back_s = back.first().copied().unwrap_or(0.0);
    let median_back_s = back.get(back.len() / 2).copied().unwrap_or(0.0);
    etcd.wait_all_healthy()
        .map_err(|e| format!("the cluster after the restart: {e}"))?;

    let leader_s = series.iter().find(|s| s.2).map(|s| s.0);
    // Messages until the first sample at or after everyone was seen registered (not the
    // events' time: the counters of members that are starting are read late).
    let until_registered = series
        .iter()
        .find(|s| s.0 >= seen_s.max(registered_s))
        .or(series.last())
        .map_or(0.0, |s| s.1);
    // The busiest 100 ms step and the busiest second (from any sample to the first one a
    // second or more later).
    let mut peak_step: f64 = 0.0;
    let mut peak_second: f64 = 0.0;
    for (i, a) in series.iter().enumerate() {
        if let Some(b) = series.get(i + 1) {
            if b.0 > a.0 {
                peak_step = peak_step.max((b.1 - a.1) / (b.0 - a.0));
            }
        }
        if let Some(b) = series[i..].iter().find(|b| b.0 - a.0 >= 1.0) {
            peak_second = peak_second.max((b.1 - a.1) / (b.0 - a.0));
        }
    }
    Ok(json!({
        "outage_s": outage.as_secs_f64(),
        "down_window_s": down_s,
        "connection_attempts": a1 - a0,
        "connection_attempts_per_s_per_process": (a1 - a0) as f64 / down_s / procs,
        "leader_s": leader_s,
        "first_registered_s": first_back_s,
        "median_registered_s": median_back_s,
        "registered_s": registered_s,
        "registered_seen_s": seen_s,
        "messages_until_registered": until_registered,
        "messages_per_process": until_registered / procs,
        "peak_step_per_s": peak_step,
        "peak_second_per_s": peak_second,
        "series": series.iter().map(|s| json!([s.0, s.1, s.2])).collect::<Vec<_>>(),
    }))
}
