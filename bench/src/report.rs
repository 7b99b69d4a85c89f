//! Tables, JSON, the SVG chart and BENCHMARKS.md, from the collected results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::child::Layer;
use crate::stats::median;

/// p50 and p99 (µs) of one round of one layer.
#[derive(Debug, Clone, Copy)]
pub struct Pct {
    pub p50: f64,
    pub p99: f64,
    pub n: usize,
}

/// One recovery run of one layer. Times in seconds from etcd reachable again.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub outage_s: f64,
    pub ttl_s: u64,
    pub visible_s: Option<f64>,
    pub registered_s: Option<f64>,
    pub registered_during_outage: usize,
    pub keys_left_at_heal: Option<i64>,
    /// Why the layer's run ended early (e.g. its driver died), if it did.
    pub failure: Option<String>,
}

/// key → layer → one entry per round (None: failed).
pub type ByLayer = BTreeMap<String, BTreeMap<String, Vec<Option<Pct>>>>;

pub struct Results {
    pub machine: Value,
    pub settings: Value,
    pub date_unix: u64,
    pub layers: Vec<Layer>,
    pub skipped: Vec<(String, String)>,
    /// measurement → layer → one entry per round (None: failed).
    pub latency: ByLayer,
    /// measurement → layer → the floor measured beside that layer, one entry per round.
    pub paired_floor: ByLayer,
    /// measurement → layer → native peer → that peer measured beside the layer, one entry per
    /// round (Go and Python layers).
    pub paired_peer: BTreeMap<String, ByLayer>,
    /// layer → named numbers.
    pub bulk: BTreeMap<String, BTreeMap<String, Value>>,
    /// scenario → layer → one entry per round.
    pub recovery: BTreeMap<String, BTreeMap<String, Vec<Option<Recovery>>>>,
    /// One row per size of the scale curve (one core registry).
    pub scale: Vec<Value>,
    /// The scaled-down fleet run.
    pub fleet: Option<Value>,
    pub errors: Vec<String>,
    pub duration_s: f64,
    pub phases: Vec<String>,
}

/// The latency measurements, in table order: (key, title).
pub const MEASUREMENTS: &[(&str, &str)] = &[
    ("register_visible", "register → visible (lease held)"),
    ("register_first", "register → visible (first of its TTL)"),
    ("list_1", "list, 1 node"),
    ("list_100", "list, 100 nodes"),
    ("list_1000", "list, 1 000 nodes"),
    ("list_10000", "list, 10 000 nodes"),
    ("watch_lag", "watch lag (put → event)"),
];

const WATCH_P99_TARGET_US: f64 = 5000.0;
/// Recovery target (issue #15): from etcd reachable again to every node registered and visible.
const RECOVERY_TARGET_S: f64 = 0.5;
/// The floor's layer name.
pub const FLOOR: &str = "raw";

/// Medians over the rounds of one layer's p50, p99, and of its per-round ratios to the floor.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub ratio_p50: Option<f64>,
    pub ratio_p99: Option<f64>,
    /// Median of per-round ratios of the p50 to the best (lowest p50) native peer of the
    /// layer's language in that round (Go and Python layers only).
    pub ratio_peer: Option<f64>,
    pub rounds: usize,
}

/// The native peers a layer of etcd-registry is compared with: the peers of its language.
pub fn peers_of<'a>(r: &'a Results, layer: &Layer) -> Vec<&'a Layer> {
    if layer.peer || !matches!(layer.language, "go" | "python") {
        return Vec::new();
    }
    r.layers
        .iter()
        .filter(|l| l.peer && l.language == layer.language)
        .collect()
}

/// The ratio a layer's target applies to: to the best peer (Go, Python), else to the floor.
pub fn target_value(layer: &Layer, s: &Summary) -> Option<f64> {
    if matches!(layer.language, "go" | "python") {
        s.ratio_peer
    } else {
        s.ratio_p50
    }
}

/// The median over the rounds of the layer's p50 ÷ the best peer's p50 of that round: the
/// peers run beside the layer, alternating chunks, when they were; else their own run.
fn peer_ratio(r: &Results, measurement: &str, layer: &Layer) -> Option<f64> {
    let by_layer = r.latency.get(measurement)?;
    let rounds = by_layer.get(&layer.name)?;
    let beside = r
        .paired_peer
        .get(measurement)
        .and_then(|m| m.get(&layer.name))
        .filter(|b| !b.is_empty());
    let peers: Vec<&Vec<Option<Pct>>> = match beside {
        Some(beside) => beside.values().collect(),
        None => peers_of(r, layer)
            .iter()
            .filter_map(|p| by_layer.get(&p.name))
            .collect(),
    };
    if peers.is_empty() {
        return None;
    }
    let v: Vec<f64> = rounds
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let best = peers
                .iter()
                .filter_map(|p| p.get(i).copied().flatten().map(|x| x.p50))
                .fold(f64::INFINITY, f64::min);
            (best.is_finite()).then_some(a.as_ref()?.p50 / best)
        })
        .collect();
    median(&v)
}

pub fn summary(r: &Results, measurement: &str, layer: &str) -> Option<Summary> {
    let by_layer = r.latency.get(measurement)?;
    let rounds = by_layer.get(layer)?;
    let ok: Vec<Pct> = rounds.iter().flatten().copied().collect();
    let p50 = median(&ok.iter().map(|p| p.p50).collect::<Vec<_>>())?;
    let p99 = median(&ok.iter().map(|p| p.p99).collect::<Vec<_>>())?;
    // The floor run beside this layer, alternating chunks; else the floor's own run.
    let floor = r
        .paired_floor
        .get(measurement)
        .and_then(|m| m.get(layer))
        .or_else(|| by_layer.get(FLOOR));
    let ratios = |f: fn(&Pct) -> f64| -> Option<f64> {
        let floor = floor?;
        let v: Vec<f64> = rounds
            .iter()
            .zip(floor)
            .filter_map(|(a, b)| Some(f(a.as_ref()?) / f(b.as_ref()?)))
            .collect();
        median(&v)
    };
    Some(Summary {
        p50,
        p99,
        ratio_p50: ratios(|p| p.p50),
        ratio_p99: ratios(|p| p.p99),
        ratio_peer: r
            .layers
            .iter()
            .find(|l| l.name == layer)
            .and_then(|l| peer_ratio(r, measurement, l)),
        rounds: ok.len(),
    })
}

fn ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("×{r:.2}"))
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

/// The target cell of a list/register row: the layer's ratio target on the p50 (to the best
/// peer for Go and Python, to the floor for Rust and C).
fn ratio_target(layer: &Layer, s: &Summary) -> String {
    if layer.name == FLOOR {
        return "floor".into();
    }
    let what = if matches!(layer.language, "go" | "python") {
        "peer"
    } else {
        "floor"
    };
    match (layer.target_ratio, target_value(layer, s)) {
        (Some(t), Some(r)) => format!("≤ ×{t:.2} {what} {}", mark(r <= t)),
        (Some(t), None) => format!("≤ ×{t:.2} {what} ?"),
        _ => "—".into(),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(
        s,
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for row in rows {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    s
}

fn fnum(f: &BTreeMap<String, Value>, k: &str) -> Option<f64> {
    f.get(k).and_then(Value::as_f64)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".into(), f)
}

/// The headline: p50 ratio of every layer to its reference (the best native peer of its
/// language for Go and Python, the raw floor for the rest) for every latency measurement.
pub fn headline(r: &Results) -> String {
    let mut header = vec!["layer"];
    header.extend(MEASUREMENTS.iter().map(|(_, t)| *t));
    let mut rows = Vec::new();
    for layer in &r.layers {
        let mut row = vec![layer.label.clone()];
        for (m, _) in MEASUREMENTS {
            let cell = match summary(r, m, &layer.name) {
                None => "—".into(),
                Some(s) if layer.name == FLOOR => format!("{} (p50)", ms(s.p50)),
                Some(s) => {
                    let value = if layer.peer {
                        s.ratio_p50
                    } else {
                        target_value(layer, &s)
                    };
                    let target = match (layer.target_ratio, value) {
                        (Some(t), Some(x)) => format!(" {}", mark(x <= t)),
                        _ => String::new(),
                    };
                    let watch = if *m == "watch_lag" {
                        format!(" (p99 {})", ms(s.p99))
                    } else {
                        String::new()
                    };
                    format!("{}{target}{watch}", ratio(value))
                }
            };
            row.push(cell);
        }
        rows.push(row);
    }
    format!(
        "### Headline: p50 as a multiple of the reference (median of per-round ratios)\n\nReference: Go and Python layers, the best native peer of their language run beside them (target ≤ ×1.00); Rust core and C, the raw etcd-client floor run beside them (target ≤ ×1.05); the peers themselves, the floor (no target).\n\n{}",
        table(&header, &rows)
    )
}

fn latency_table(r: &Results, m: &str, title: &str) -> String {
    let mut rows = Vec::new();
    for layer in &r.layers {
        let Some(s) = summary(r, m, &layer.name) else {
            rows.push(vec![layer.label.clone(), "failed".into()]);
            continue;
        };
        let target = if m == "watch_lag" && layer.target_ratio.is_some() {
            format!(
                "{}; p99 < 5 ms {}",
                ratio_target(layer, &s),
                mark(s.p99 < WATCH_P99_TARGET_US)
            )
        } else if m == "watch_lag" {
            format!("p99 < 5 ms {}", mark(s.p99 < WATCH_P99_TARGET_US))
        } else {
            ratio_target(layer, &s)
        };
        rows.push(vec![
            layer.label.clone(),
            ms(s.p50),
            ms(s.p99),
            ratio(s.ratio_p50),
            ratio(s.ratio_p99),
            ratio(s.ratio_peer),
            target,
            s.rounds.to_string(),
        ]);
    }
    format!(
        "### {title}\n\n{}",
        table(
            &[
                "layer",
                "p50",
                "p99",
                "p50 vs floor",
                "p99 vs floor",
                "p50 vs best peer",
                "target",
                "rounds"
            ],
            &rows
        )
    )
}

/// The bulk figures of the layers a layer is compared with: the peers of its language (Go,
/// Python), else the floor; none for the peers and the floor.
fn bulk_refs<'a>(r: &'a Results, layer: &Layer) -> Vec<&'a BTreeMap<String, Value>> {
    if layer.peer {
        return Vec::new();
    }
    let names: Vec<&str> = match layer.language {
        "go" | "python" => peers_of(r, layer).iter().map(|l| l.name.as_str()).collect(),
        _ => vec![FLOOR],
    };
    names.iter().filter_map(|n| r.bulk.get(*n)).collect()
}

/// "value (×ratio to the best reference ✓/✗)" for a lower-is-better figure.
fn vs_best(r: &Results, layer: &Layer, key: &str, show: impl Fn(f64) -> String) -> String {
    let Some(v) = r.bulk.get(&layer.name).and_then(|f| fnum(f, key)) else {
        return "—".into();
    };
    let best = bulk_refs(r, layer)
        .iter()
        .filter_map(|f| fnum(f, key))
        .fold(f64::INFINITY, f64::min);
    if best.is_finite() && best > 0.0 {
        format!("{} (×{:.2} {})", show(v), v / best, mark(v <= best))
    } else {
        show(v)
    }
}

fn bulk_table(r: &Results) -> String {
    let mut rows = Vec::new();
    let mib = |v: f64| format!("{:.1} MiB", v / 1024.0);
    for layer in &r.layers {
        let Some(f) = r.bulk.get(&layer.name) else {
            continue;
        };
        let leases = fnum(f, "leases_1000");
        rows.push(vec![
            layer.label.clone(),
            vs_best(r, layer, "register_1000_ms", |v| format!("{v:.0} ms")),
            vs_best(r, layer, "rss_kib_1000", mib),
            opt(leases, |v| format!("{v:.0} {}", mark(v == 1.0))),
            opt(fnum(f, "keepalive_per_s"), |v| format!("{v:.2}")),
            opt(fnum(f, "lease_checks_per_s"), |v| format!("{v:.2}")),
            opt(fnum(f, "requests_per_s"), |v| format!("{v:.2}")),
        ]);
    }
    let ttl = r
        .settings
        .get("bulk_ttl_s")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let window = r
        .settings
        .get("idle_window_s")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    format!(
        "### Registering 1 000 nodes of one TTL ({ttl} s)\n\nEach layer on its own etcd. Time from the first register call until all 1 000 are registered (one layer at a time), and the driver's RSS holding them; in brackets the ratio to the best reference (Go and Python: their native peers; Rust core and C: the raw floor), target ≤ ×1.00. Then, every layer idle at once for {window:.0} s, what its etcd received (`grpc_server_msg_received_total`): the idle requests/s per registry. Expected keep-alives: one per TTL/3 = {:.2}/s, whatever the number of nodes.\n\n{}",
        3.0 / ttl.max(1) as f64,
        table(
            &[
                "layer",
                "time for 1 000",
                "RSS holding 1 000",
                "leases held (target 1)",
                "keep-alive req/s",
                "lease checks/s",
                "all etcd req/s (idle)"
            ],
            &rows
        )
    )
}

fn footprint_table(r: &Results) -> String {
    let mut rows = Vec::new();
    let mib = |v: f64| format!("{:.1} MiB", v / 1024.0);
    let big = r
        .settings
        .get("big_registrations")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let not_quick = || "— (not in quick runs)".to_string();
    // Issue #11: each of C and Go holds at most 2 KiB per registration above the floor's RSS.
    let floor_big = r.bulk.get(FLOOR).and_then(|f| fnum(f, "rss_kib_big"));
    for layer in &r.layers {
        let Some(f) = r.bulk.get(&layer.name) else {
            continue;
        };
        let started = match (fnum(f, "threads_start"), fnum(f, "threads_1")) {
            (Some(a), Some(b)) => format!("+{:.0} ({a:.0} → {b:.0})", b - a),
            _ => "—".into(),
        };
        rows.push(vec![
            layer.label.clone(),
            started,
            opt(fnum(f, "rss_kib_start"), mib),
            opt(fnum(f, "rss_kib_1"), mib),
            if big == 0 {
                not_quick()
            } else {
                opt(fnum(f, "rss_kib_big"), mib)
            },
            if big == 0 {
                not_quick()
            } else if layer.name == FLOOR {
                "—".into()
            } else {
                match (fnum(f, "rss_kib_big"), floor_big) {
                    (Some(rss), Some(floor)) => {
                        let per = (rss - floor) / big as f64;
                        let target = matches!(layer.name.as_str(), "c" | "go");
                        format!(
                            "{per:.2} KiB{}",
                            if target {
                                format!(" {}", mark(per <= 2.0))
                            } else {
                                String::new()
                            }
                        )
                    }
                    _ => "—".into(),
                }
            },
            if big == 0 {
                not_quick()
            } else {
                opt(fnum(f, "leases_big"), |v| {
                    format!("{v:.0} {}", mark(v == 1.0))
                })
            },
            opt(fnum(f, "idle_cpu_percent"), |v| format!("{v:.2} %")),
        ]);
    }
    let big_label = if big == 0 {
        "10 000".to_string()
    } else {
        thousands(big)
    };
    let rss_big = format!("RSS, {big_label} registrations");
    let per_above =
        format!("RSS above the floor per registration, {big_label} (C, Go: target ≤ 2 KiB)");
    let leases_big = format!("leases for {big_label} (target 1)");
    format!(
        "### Footprint of the driver process\n\nThreads started by the layer (threads of the bare process → with a registry and 1 registration), resident memory, and CPU while idle with 1 000 registrations kept alive (every layer idle at once, each on its own etcd).\n\n{}",
        table(
            &[
                "layer",
                "threads started",
                "RSS bare",
                "RSS, 1 registration",
                &rss_big,
                &per_above,
                &leases_big,
                "idle CPU"
            ],
            &rows
        )
    )
}

/// 10000 → "10 000".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Median over the runs that did not fail; `None` if every run failed or one never recovered.
fn recovery_summary(rounds: &[Option<Recovery>], f: fn(&Recovery) -> Option<f64>) -> Option<f64> {
    let ok: Vec<&Recovery> = rounds
        .iter()
        .flatten()
        .filter(|x| x.failure.is_none())
        .collect();
    let v: Vec<f64> = ok.iter().filter_map(|x| f(x)).collect();
    if v.len() < ok.len() {
        return None; // a run never recovered
    }
    median(&v)
}

fn recovery_table(r: &Results) -> String {
    let mut rows = Vec::new();
    let secs = |v: f64| format!("{v:.2} s");
    let never = |rounds: &[Option<Recovery>], f: fn(&Recovery) -> Option<f64>| -> String {
        let runs: Vec<&Recovery> = rounds.iter().flatten().collect();
        let failed: Vec<&str> = runs.iter().filter_map(|x| x.failure.as_deref()).collect();
        if runs.is_empty() {
            return "—".into();
        }
        if failed.len() == runs.len() {
            return format!("✗ {}", failed[0]);
        }
        let base = recovery_summary(rounds, f).map_or("not within the timeout".into(), secs);
        if failed.is_empty() {
            base
        } else {
            format!(
                "{base}; ✗ {} in {} of {} runs",
                failed[0],
                failed.len(),
                runs.len()
            )
        }
    };
    // Whether the layer still reported its nodes registered at the end of the outage.
    let stale = |rounds: &[Option<Recovery>]| -> String {
        let runs: Vec<&Recovery> = rounds
            .iter()
            .flatten()
            .filter(|x| x.failure.is_none())
            .collect();
        if runs.is_empty() {
            return "—".into();
        }
        let stale = runs
            .iter()
            .filter(|x| x.registered_during_outage > 0)
            .count();
        if stale == 0 {
            "no".into()
        } else {
            format!("yes, {stale} of {} runs", runs.len())
        }
    };
    let scenarios: Vec<(&str, &str)> = [
        ("restart", "5 s outage"),
        ("partition", "> TTL"),
        ("outage60", "60 s"),
    ]
    .into_iter()
    .filter(|(k, _)| r.recovery.contains_key(*k))
    .collect();
    let empty = Vec::new();
    for layer in &r.layers {
        let runs: Vec<&Vec<Option<Recovery>>> = scenarios
            .iter()
            .map(|(k, _)| {
                r.recovery
                    .get(*k)
                    .and_then(|m| m.get(&layer.name))
                    .unwrap_or(&empty)
            })
            .collect();
        if runs.iter().all(|x| x.is_empty()) {
            continue;
        }
        let mut row = vec![layer.label.clone()];
        for rounds in runs {
            for f in [
                (|x: &Recovery| x.visible_s) as fn(&Recovery) -> Option<f64>,
                |x: &Recovery| x.registered_s,
            ] {
                let mut cell = never(rounds, f);
                if !layer.peer && !rounds.is_empty() {
                    let ok = recovery_summary(rounds, f).is_some_and(|v| v <= RECOVERY_TARGET_S);
                    cell = format!("{cell} {}", mark(ok));
                }
                row.push(cell);
            }
            row.push(stale(rounds));
        }
        rows.push(row);
    }
    let s = &r.settings;
    let get = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut header = vec!["layer".to_string()];
    for (_, t) in &scenarios {
        header.push(format!("{t}: visible"));
        header.push(format!("{t}: registered"));
        header.push(format!("{t}: still claimed registered at the end"));
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let sixty = if r.recovery.contains_key("outage60") {
        format!(
            " *60 s*: the proxy black-holes everything for {:.0} s with a TTL of {:.0} s (one round, full runs only).",
            get("outage_60_s"),
            get("outage_60_ttl_s")
        )
    } else {
        " The 60 s outage runs in full runs only.".to_string()
    };
    format!(
        "### Recovery: from etcd reachable again to all {} nodes visible / all registered again\n\nAll layers at once, through one TCP proxy; target for the layers of etcd-registry: ≤ {RECOVERY_TARGET_S} s for both, whatever the outage. *5 s outage*: etcd SIGKILLed for {:.0} s and restarted (TTL {:.0} s: the lease survives, the keys stay; “registered” is the layer's own state returning to registered). *Outage longer than the TTL*: the proxy black-holes everything for {:.0} s with a TTL of {:.0} s, so etcd expires the lease and deletes the keys.{sixty} “Still claimed registered” means the layer's registration state said registered when the outage ended although etcd had been unreachable (and, past the TTL, the keys gone) for the whole outage. Median of {} round(s).\n\n{}",
        get("recovery_nodes"),
        get("short_outage_s"),
        get("short_outage_ttl_s"),
        get("long_outage_s"),
        get("long_outage_ttl_s"),
        get("recovery_rounds"),
        table(&header, &rows)
    )
}

fn sget(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// Growth of the list's cost per node from the previous size: ✓ if it grew by at most 25 %,
/// or by at most 5 % more than the floor's list of the same service grew (etcd's own growth).
fn list_growth_mark(prev: Option<f64>, now: Option<f64>, floor_growth: Option<f64>) -> String {
    match (prev, now) {
        (Some(a), Some(b)) if a > 0.0 => {
            let g = b / a;
            let ok = g <= 1.25 || floor_growth.is_some_and(|f| g <= f * 1.05);
            format!(" (per node ×{g:.2} {})", mark(ok))
        }
        _ => String::new(),
    }
}

/// Growth of a per-unit cost from the previous size: ✓ if it grew by at most 25 %.
fn linear_mark(prev: Option<f64>, now: Option<f64>) -> String {
    match (prev, now) {
        (Some(a), Some(b)) if a > 0.0 => format!(" (×{:.2} {})", b / a, mark(b <= a * 1.25)),
        _ => String::new(),
    }
}

fn scale_table(r: &Results) -> String {
    let mut rows = Vec::new();
    let mut prev: Option<&Value> = None;
    for row in &r.scale {
        let n = sget(row, "registrations").unwrap_or(0.0);
        if let Some(b) = sget(row, "budget_exceeded_s") {
            rows.push(vec![
                thousands(n as u64),
                format!(
                    "✗ not within {b:.0} s: {} registered",
                    thousands(sget(row, "keys_in_etcd").unwrap_or(0.0) as u64)
                ),
                "—".into(),
                opt(sget(row, "rss_kib"), |v| format!("{:.1} MiB", v / 1024.0)),
            ]);
            continue;
        }
        let per_reg = sget(row, "register_us_per_registration");
        let bytes = sget(row, "bytes_per_registration");
        let list_per_node = sget(row, "list_p50_us").map(|v| v / n.max(1.0));
        let p = |k: &str| prev.and_then(|x| sget(x, k));
        let per_node =
            |row: &Value, k: &str| Some(sget(row, k)? / sget(row, "registrations")?.max(1.0));
        let prev_list = prev.and_then(|x| per_node(x, "list_p50_us"));
        let floor_growth = prev.and_then(|x| {
            Some(per_node(row, "floor_list_p50_us")? / per_node(x, "floor_list_p50_us")?)
        });
        rows.push(vec![
            thousands(n as u64),
            opt(sget(row, "register_total_ms"), |v| {
                format!("{:.2} s", v / 1e3)
            }),
            format!(
                "{}{}",
                opt(per_reg, |v| format!("{v:.0} µs")),
                linear_mark(p("register_us_per_registration"), per_reg)
            ),
            opt(sget(row, "rss_kib"), |v| format!("{:.1} MiB", v / 1024.0)),
            format!(
                "{}{}",
                opt(bytes, |v| format!("{v:.0} B")),
                linear_mark(p("bytes_per_registration"), bytes)
            ),
            opt(sget(row, "leases"), |v| {
                format!("{v:.0} {}", mark(v == 1.0))
            }),
            opt(sget(row, "keepalive_per_s"), |v| format!("{v:.2}")),
            opt(sget(row, "requests_per_s"), |v| format!("{v:.2}")),
            opt(sget(row, "idle_cpu_percent"), |v| format!("{v:.2} %")),
            format!(
                "{}{}",
                opt(sget(row, "list_p50_us"), ms),
                list_growth_mark(prev_list, list_per_node, floor_growth)
            ),
            format!(
                "{}{}",
                opt(sget(row, "floor_list_p50_us"), ms),
                floor_growth.map_or(String::new(), |g| format!(" (per node ×{g:.2})"))
            ),
            opt(sget(row, "watch_ready_ms"), |v| format!("{v:.0} ms")),
            opt(sget(row, "watch_lag_p50_us"), ms),
        ]);
        prev = Some(row);
    }
    format!(
        "### Scale: one Rust core registry holding 1 000 → 100 000 registrations of one TTL\n\nOne registry (the `core` driver) registers more nodes of one service and one TTL ({} s) step by step on its own etcd. Per step: the time to register all; per registration, the step's time per registration (the p50 of its timings: every step but the last is also made, timed, by a second registry 4 times, so that a 12-ms step is not one sample); the registry's RSS and its growth per registration since it held 1, the leases it holds (target 1), what etcd received while it idled (keep-alives/s should stay at one per TTL/3), and a second process listing the whole service (p50 of 7) taking turns with the floor's lister, then starting a watch of it (time until the watch is ready, then the lag of 20 puts). In brackets: the per-unit cost against the previous step (✓ if it grew by at most 25 %: linear or better; for the list, also ✓ when it grew by at most 5 % more than the floor's list of the same service did, since that growth is etcd's own). Chart: [`bench/results/scale.svg`](bench/results/scale.svg).\n\n![scale chart](bench/results/scale.svg)\n\n{}",
        r.settings.get("bulk_ttl_s").and_then(Value::as_u64).unwrap_or(0),
        table(
            &[
                "registrations",
                "time to register all",
                "per registration (this step)",
                "RSS",
                "RSS per registration",
                "leases",
                "keep-alive req/s",
                "all etcd req/s",
                "idle CPU",
                "list all (p50)",
                "floor's list all (p50)",
                "watch ready",
                "watch lag p50"
            ],
            &rows
        )
    )
}

/// A panel of the scale chart: (key of the row, title, how a value is shown).
type Series = (&'static str, &'static str, fn(f64) -> String);

/// The scale curve: time to register all, RSS, list time against registrations, on log-log
/// axes, each with the linear line through the first point (dashed).
pub fn scale_svg(r: &Results) -> String {
    const W: f64 = 760.0;
    const PW: f64 = 230.0;
    const PH: f64 = 200.0;
    let series: [Series; 3] = [
        ("register_total_ms", "time to register all", |v| {
            format!("{:.2} s", v / 1e3)
        }),
        ("rss_kib", "registry RSS", |v| {
            format!("{:.0} MiB", v / 1024.0)
        }),
        ("list_p50_us", "list of all nodes (p50)", |v| ms(v)),
    ];
    let mut s = String::new();
    let h = PH + 90.0;
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="Helvetica, Arial, sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="18" font-size="14" font-weight="bold">One core registry, 1k → 100k registrations (log-log; dashed: linear from the first point)</text>"##
    );
    for (i, (key, title, show)) in series.iter().enumerate() {
        let x0 = 20.0 + i as f64 * (PW + 25.0) + 10.0;
        let y0 = 40.0;
        let pts: Vec<(f64, f64)> = r
            .scale
            .iter()
            // A step past its time budget has no point: its RSS is of fewer registrations.
            .filter(|row| row.get("budget_exceeded_s").is_none())
            .filter_map(|row| Some((sget(row, "registrations")?, sget(row, key)?)))
            .filter(|(n, v)| *n > 0.0 && *v > 0.0)
            .collect();
        let _ = writeln!(
            s,
            r##"<text x="{x0:.1}" y="{:.1}" font-weight="bold">{}</text>"##,
            y0 + 4.0,
            esc(title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{PW}" height="{PH}" fill="none" stroke="#ccc"/>"##,
            y0 + 12.0
        );
        if pts.is_empty() {
            continue;
        }
        let (n0, v0) = pts[0];
        let lin = |n: f64| v0 * n / n0;
        let nmax = pts.iter().map(|p| p.0).fold(n0, f64::max);
        let vmin = pts.iter().map(|p| p.1).fold(v0, f64::min);
        let vmax = pts.iter().map(|p| p.1).fold(lin(nmax), f64::max);
        let lx =
            |n: f64| x0 + 20.0 + (n / n0).log10() / (nmax / n0).log10().max(1e-9) * (PW - 60.0);
        let ly = |v: f64| {
            y0 + 12.0 + PH
                - 20.0
                - (v / vmin).log10() / (vmax / vmin).log10().max(1e-9) * (PH - 40.0)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
            lx(n0),
            ly(v0),
            lx(nmax),
            ly(lin(nmax))
        );
        let path: Vec<String> = pts
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", lx(*n), ly(*v)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#4e79a7" stroke-width="2"/>"##,
            path.join(" ")
        );
        for (n, v) in &pts {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#4e79a7"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                lx(*n),
                ly(*v),
                lx(*n),
                ly(*v) - 7.0,
                esc(&show(*v)),
                lx(*n),
                y0 + 12.0 + PH + 14.0,
                thousands(*n as u64)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn fleet_section(r: &Results) -> Option<String> {
    let f = r.fleet.as_ref()?;
    let g = |k: &str| sget(f, k).unwrap_or(0.0);
    let (p, w, svc, ttl) = (
        g("processes"),
        g("watching_processes"),
        g("services"),
        g("ttl_s"),
    );
    let (req, ka, checks) = (
        g("requests_per_s"),
        g("keepalive_per_s"),
        g("lease_checks_per_s"),
    );
    let (ws, ks, leases) = (g("watch_streams"), g("keepalive_streams"), g("leases"));
    // Per registry process, from the single-registry idle window of the bulk phase when its
    // TTL is the fleet's; else the design: one keep-alive per TTL/3.
    let core = r.bulk.get("core");
    let single = core
        .filter(|_| r.settings.get("bulk_ttl_s").and_then(Value::as_f64) == Some(ttl))
        .and_then(|c| fnum(c, "requests_per_s"));
    let per_proc = single.unwrap_or(3.0 / ttl.max(1.0));
    let source = if single.is_some() {
        "the idle requests/s of one core registry measured in the bulk phase (same TTL)"
    } else {
        "the design: one keep-alive per TTL/3 (no bulk-phase figure with this TTL)"
    };
    let pred = |x: f64, m: f64| {
        if m > 0.0 {
            format!("{x:.1} (measured/model ×{:.2})", m / x)
        } else {
            format!("{x:.1}")
        }
    };
    let per_ka_stream = if p > 0.0 { ks / p } else { 0.0 };
    // Watch streams: one per registry process, shared by the watch of its own keys (deletions
    // only) and its service watches.
    let model_ws = p;
    let per_watch_stream = if model_ws > 0.0 { ws / model_ws } else { 0.0 };
    let per_req = if p > 0.0 { req / p } else { 0.0 };
    let (fp, fw, fs) = (10_000.0, 1_000.0, 100.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Load on etcd at fleet scale\n\n**Measured, scaled down**: {p:.0} registry processes (the `core` driver, each its own process with its own connection), each holding one node of one of {svc:.0} services with a TTL of {ttl:.0} s, {w:.0} of them also watching {}, on a 3-member etcd cluster (started in {:.1} s). Over {:.0} s of idling, summed over the 3 members:\n",
        if svc >= 2.0 {
            "two services (two watchers on one Watch stream)"
        } else {
            "one service"
        },
        g("start_s"),
        g("window_s")
    );
    let _ = writeln!(
        s,
        "{}",
        table(
            &["figure", "measured", "model for this run", "per process"],
            &[
                vec![
                    "leases held".into(),
                    format!("{leases:.0}"),
                    pred(p, leases),
                    "1 per TTL".into()
                ],
                vec![
                    "keep-alive requests/s".into(),
                    format!("{ka:.1}"),
                    pred(p * 3.0 / ttl.max(1.0), ka),
                    format!("{:.3} (one per TTL/3)", 3.0 / ttl.max(1.0))
                ],
                vec![
                    "lease checks/s (LeaseTimeToLive)".into(),
                    format!("{checks:.1}"),
                    "—".into(),
                    format!("{:.3}", if p > 0.0 { checks / p } else { 0.0 })
                ],
                vec![
                    "all gRPC requests/s".into(),
                    format!("{req:.1}"),
                    pred(p * per_proc, req),
                    format!("{per_req:.3} (model {per_proc:.3})")
                ],
                vec![
                    "open LeaseKeepAlive streams".into(),
                    format!("{ks:.0}"),
                    pred(p, ks),
                    format!("{per_ka_stream:.2} (model 1)")
                ],
                vec![
                    "open Watch streams".into(),
                    format!("{ws:.0}"),
                    pred(model_ws, ws),
                    format!("{per_watch_stream:.2} per stream of the model (1 per process, whatever it watches: its own keys and its service watches share it)")
                ],
            ]
        )
    );
    let _ = writeln!(
        s,
        "The model per registry process: one lease per TTL, one keep-alive every TTL/3 on one long-lived LeaseKeepAlive stream, one Watch stream for all its watches (its own keys, deletions only: silent while nothing is deleted; and in a watching process its service watches), and as its idle request rate {source}. \n\n**The fleet**: {} processes, {} services, {} watchers (processes that also watch one service), TTL {ttl:.0} s, on a 3-member cluster. From the per-process figures measured above (model in brackets):\n",
        thousands(fp as u64),
        fs as u64,
        thousands(fw as u64)
    );
    let _ = writeln!(
        s,
        "{}",
        table(
            &["what etcd carries", "whole cluster", "per member (clients spread evenly)"],
            &[
                vec![
                    "leases".into(),
                    format!("{} (model {})", thousands((fp * leases / p.max(1.0)) as u64), thousands(fp as u64)),
                    "all on the leader (leases live in the leader's lessor)".into()
                ],
                vec![
                    "keep-alive requests/s".into(),
                    format!("{:.0} (model {:.0})", fp * ka / p.max(1.0), fp * 3.0 / ttl.max(1.0)),
                    format!("{:.0} received per member; followers forward each to the leader, which renews all", fp * ka / p.max(1.0) / 3.0)
                ],
                vec![
                    "all gRPC requests/s (idle)".into(),
                    format!("{:.0} (model {:.0})", fp * per_req, fp * per_proc),
                    format!("{:.0}", fp * per_req / 3.0)
                ],
                vec![
                    "open LeaseKeepAlive streams".into(),
                    format!("{} (model {})", thousands((fp * per_ka_stream) as u64), thousands(fp as u64)),
                    thousands((fp * per_ka_stream / 3.0) as u64)
                ],
                vec![
                    "open Watch streams".into(),
                    format!("{} (model {})", thousands((fp * per_watch_stream) as u64), thousands(fp as u64)),
                    thousands((fp * per_watch_stream / 3.0) as u64)
                ],
                vec![
                    "client connections".into(),
                    format!("{} (one per process)", thousands(fp as u64)),
                    thousands((fp / 3.0) as u64)
                ],
                vec![
                    "watch events per node change".into(),
                    format!("{:.0} (the watchers of its service: {} / {})", fw / fs, thousands(fw as u64), fs as u64),
                    "—".into()
                ],
                vec![
                    "own-key watchers a node change reaches".into(),
                    format!("1 (its own process's: a process's first key of a TTL is watched by itself, not through the directory of the service's {:.0} nodes)", fp / fs),
                    "—".into()
                ],
            ]
        )
    );
    let _ = writeln!(
        s,
        "Idle, the fleet costs etcd about {:.0} requests/s (keep-alives) and {} long-lived streams; writes (puts, lease grants) happen only when a process starts, stops or recovers. A recovery of all {} processes at once (after an outage past the TTL) costs at least one lease grant and the puts of every node per process.\n",
        fp * per_req,
        thousands((fp * per_ka_stream + fp * per_watch_stream) as u64),
        thousands(fp as u64)
    );
    if let Some(restart) = f.get("restart") {
        s.push_str(&fleet_restart_section(restart, p, ttl, fp));
    }
    Some(s)
}

/// While etcd is down, at most this many connection attempts per second per registry: one probe
/// per 0.1–0.2 s, each up to two connections (etcd-client's channel connects again at once when a
/// connection dies while it is made, as through a proxy that accepts and then closes).
const DOWN_ATTEMPTS_BOUND: f64 = 20.0;
/// When etcd is back, at most this many messages per registry in the busiest second: its probe,
/// the renewal of its lease and the check of its keys (or a grant and its puts), its key watch.
const COMEBACK_MESSAGES_BOUND: f64 = 5.0;
/// Every registry registered again at most this long after etcd answers.
const COMEBACK_BOUND_S: f64 = 0.5;

/// The fleet's cluster killed and started again: the traffic while it is down and on the way
/// back, against the bounds above.
fn fleet_restart_section(r: &Value, p: f64, ttl: f64, fleet: f64) -> String {
    let mut s = String::new();
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        let _ = writeln!(s, "**Whole cluster restarted**: not measured ({e}).\n");
        return s;
    }
    let g = |k: &str| sget(r, k).unwrap_or(0.0);
    let attempts = g("connection_attempts_per_s_per_process");
    let leader = sget(r, "leader_s");
    let (first, median, last) = (
        g("first_registered_s"),
        g("median_registered_s"),
        g("registered_s"),
    );
    let messages = g("messages_until_registered");
    let per_proc = |x: f64| if p > 0.0 { x / p } else { 0.0 };
    let peak = g("peak_second_per_s");
    // etcd served again no later than its metrics said so, nor than the first registry came
    // back (the metrics of a member that is just starting may answer late).
    let answered = leader.map_or(first, |l| l.min(first));
    let after_answer = last - answered;
    let _ = writeln!(
        s,
        "**Whole cluster restarted**: every member SIGKILLed for {:.0} s (past the TTL of {ttl:.0} s: every registry had lost its keep-alive and was retrying), then all three started at once. Connection attempts counted by TCP proxies in front of the members, from 1 s after the kill; etcd's gRPC messages sampled every 100 ms from the start (a member's counters start at 0 and are readable once it serves); when each process was registered again is the time its registration's status event said so (asked of each process in turns until all had; the last was seen {:.2} s after the start).\n",
        g("outage_s"),
        sget(r, "registered_seen_s").unwrap_or(last)
    );
    let _ = writeln!(
        s,
        "{}",
        table(
            &["figure", "measured", "per registry process", "stated bound"],
            &[
                vec![
                    "connection attempts/s while etcd was down (no request reaches it)".into(),
                    format!("{:.0}", g("connection_attempts") / g("down_window_s").max(1e-9)),
                    format!("{attempts:.1}"),
                    format!("≤ {DOWN_ATTEMPTS_BOUND:.0}/s {}", mark(attempts <= DOWN_ATTEMPTS_BOUND)),
                ],
                vec![
                    "etcd serving again (its metrics read with a leader, or the first registry back)".into(),
                    format!("{answered:.2} s after the start"),
                    "—".into(),
                    "—".into(),
                ],
                vec![
                    "registered again: first, median, last".into(),
                    format!("{first:.2} s, {median:.2} s, {last:.2} s after the start"),
                    "—".into(),
                    format!(
                        "last ≤ {COMEBACK_BOUND_S:.1} s after etcd serves: {after_answer:.2} s {}",
                        mark(after_answer <= COMEBACK_BOUND_S)
                    ),
                ],
                vec![
                    "messages etcd received until every registry was back".into(),
                    format!("{messages:.0}"),
                    format!("{:.1}", per_proc(messages)),
                    "—".into(),
                ],
                vec![
                    "messages/s in the busiest second".into(),
                    format!("{peak:.0}"),
                    format!("{:.1}", per_proc(peak)),
                    format!(
                        "≤ {COMEBACK_MESSAGES_BOUND:.0}/s {}",
                        mark(per_proc(peak) <= COMEBACK_MESSAGES_BOUND)
                    ),
                ],
            ]
        )
    );
    let _ = writeln!(
        s,
        "While etcd is down a registry sends it nothing. Between attempts it probes one member every 0.1–0.2 s at random; during an attempt, each of its calls (the renewal of its lease and the check of its keys go together) tries every member once, then one member every 0.1–0.2 s in turns. Each try is a connection attempt that a stopped member's host refuses (two through a proxy that accepts and then closes, as here; one per second against a host that does not answer). The backoff steps (1 s doubling to 30 s) pace the attempts at etcd itself; the probes only end a step early once etcd answers. Once a probe is answered, the registry waits 0–0.2 s at random, then renews its lease and checks its keys together, and opens its key watch again. For the fleet of {} processes that is about {} connection attempts/s while the cluster is down, refused without reaching etcd, and about {} messages when it is back, at most {} in its busiest second by the bound above.\n",
        thousands(fleet as u64),
        thousands((fleet * attempts) as u64),
        thousands((fleet * per_proc(messages)) as u64),
        thousands((fleet * COMEBACK_MESSAGES_BOUND) as u64),
    );
    s
}

/// Every table, in order.
pub fn tables(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    if !r.latency.is_empty() {
        out.push(headline(r));
        for (m, title) in MEASUREMENTS {
            if r.latency.contains_key(*m) {
                out.push(latency_table(r, m, title));
            }
        }
    }
    if !r.bulk.is_empty() {
        out.push(bulk_table(r));
        out.push(footprint_table(r));
    }
    if !r.recovery.is_empty() {
        out.push(recovery_table(r));
        if let Some(note) = sigpipe_note(r) {
            out.push(note);
        }
    }
    if !r.scale.is_empty() {
        out.push(scale_table(r));
    }
    if let Some(f) = fleet_section(r) {
        out.push(f);
    }
    out
}

/// Explains drivers killed by SIGPIPE, and says whether this run let the drivers ignore it.
fn sigpipe_note(r: &Results) -> Option<String> {
    let ignored = r.settings["drivers_ignore_sigpipe"].as_bool() == Some(true);
    let mut died: Vec<&str> = r
        .recovery
        .values()
        .flat_map(|by_layer| by_layer.iter())
        .filter(|(_, runs)| {
            runs.iter()
                .flatten()
                .any(|x| x.failure.as_deref().is_some_and(|f| f.contains("SIGPIPE")))
        })
        .map(|(layer, _)| layer.as_str())
        .collect();
    died.sort_unstable();
    died.dedup();
    if ignored {
        return Some("> This run set `BENCH_IGNORE_SIGPIPE=1`: the C and Go drivers ignore SIGPIPE (the Python interpreter always does), so their recovery could be measured. A default run leaves SIGPIPE at its default action, which checks that the library never lets one reach its host.\n".into());
    }
    if died.is_empty() {
        return None;
    }
    Some(format!(
        "> **Killed by SIGPIPE: {}.** When etcd goes away, the library's runtime threads write to the dead connection and the kernel sends SIGPIPE to the process; a host program that leaves SIGPIPE at its default action (as C programs and every Go program do) is killed. The library blocks SIGPIPE on its runtime threads, so this is a regression: find the thread that wrote. `BENCH_IGNORE_SIGPIPE=1 bench/run.sh` makes the C and Go drivers ignore it, to measure their recovery anyway.\n",
        died.join(", ")
    ))
}

/// One measurement's rounds of one layer, as `latest.json` holds them.
fn rounds_json(rounds: &[Option<Pct>]) -> Value {
    rounds
        .iter()
        .map(|p| p.map(|p| json!({"p50_us": p.p50, "p99_us": p.p99, "samples": p.n})))
        .collect()
}

fn to_json(r: &Results) -> Value {
    let mut latency = serde_json::Map::new();
    for (m, by_layer) in &r.latency {
        let mut layers = serde_json::Map::new();
        for (layer, rounds) in by_layer {
            let s = summary(r, m, layer);
            layers.insert(
                layer.clone(),
                json!({
                    "p50_us": s.map(|s| s.p50),
                    "p99_us": s.map(|s| s.p99),
                    "ratio_p50": s.and_then(|s| s.ratio_p50),
                    "ratio_p99": s.and_then(|s| s.ratio_p99),
                    "rounds": rounds_json(rounds),
                    "floor_beside_rounds": r.paired_floor.get(m).and_then(|f| f.get(layer)).map(|rounds| rounds_json(rounds)),
                    "peers_beside_rounds": r.paired_peer.get(m).and_then(|f| f.get(layer)).map(|peers| peers.iter().map(|(peer, rounds)| (peer.clone(), rounds_json(rounds))).collect::<serde_json::Map<_, _>>()),
                }),
            );
        }
        latency.insert(m.clone(), Value::Object(layers));
    }
    let mut recovery = serde_json::Map::new();
    for (scenario, by_layer) in &r.recovery {
        let mut layers = serde_json::Map::new();
        for (layer, rounds) in by_layer {
            layers.insert(
                layer.clone(),
                json!({
                    "visible_s": recovery_summary(rounds, |x| x.visible_s),
                    "registered_s": recovery_summary(rounds, |x| x.registered_s),
                    "rounds": rounds.iter().map(|x| x.as_ref().map(|x| json!({
                        "outage_s": x.outage_s,
                        "ttl_s": x.ttl_s,
                        "visible_s": x.visible_s,
                        "registered_s": x.registered_s,
                        "registered_during_outage": x.registered_during_outage,
                        "keys_left_at_heal": x.keys_left_at_heal,
                        "failure": x.failure,
                    }))).collect::<Vec<_>>(),
                }),
            );
        }
        recovery.insert(scenario.clone(), Value::Object(layers));
    }
    json!({
        "date_unix": r.date_unix,
        "duration_s": r.duration_s,
        "machine": r.machine,
        "settings": r.settings,
        "phases": r.phases,
        "layers": r.layers.iter().map(|l| json!({"name": l.name, "label": l.label, "target_ratio": l.target_ratio})).collect::<Vec<_>>(),
        "skipped": r.skipped.iter().map(|(n, why)| json!({"layer": n, "reason": why})).collect::<Vec<_>>(),
        "latency": latency,
        "bulk_and_footprint": r.bulk,
        "recovery": recovery,
        "scale": r.scale,
        "fleet": r.fleet,
        "errors": r.errors,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars of p50 (dark) and p99 (light) per layer, one panel per measurement, each
/// panel on its own linear scale.
pub fn svg(r: &Results) -> String {
    const W: f64 = 760.0;
    const LABEL_W: f64 = 190.0;
    const VALUE_W: f64 = 200.0;
    const ROW: f64 = 20.0;
    const TITLE: f64 = 26.0;
    const GAP: f64 = 14.0;
    let colors = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
    ];
    let bar_w = W - LABEL_W - VALUE_W - 20.0;
    let panels: Vec<(&str, &str)> = MEASUREMENTS
        .iter()
        .copied()
        .filter(|(m, _)| r.latency.contains_key(*m))
        .collect();
    let n = r.layers.len() as f64;
    let panel_h = TITLE + n * ROW + GAP;
    let height = 48.0 + panels.len() as f64 * panel_h + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="20" font-size="14" font-weight="bold">etcd-registry latency per layer: dark p50, light p99 (medians of rounds), × p50 vs floor</text>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">{}</text>"##,
        esc(&format!(
            "{} · {} cores · etcd {} · {}",
            r.machine["cpu"].as_str().unwrap_or("?"),
            r.machine["nproc"],
            r.machine["etcd"]
                .as_str()
                .and_then(|e| e.split(' ').next())
                .unwrap_or("?"),
            if r.settings["quick"].as_bool() == Some(true) {
                "quick run"
            } else {
                "full run"
            }
        ))
    );
    let mut y = 48.0;
    for (m, title) in panels {
        let _ = writeln!(
            s,
            r##"<text x="10" y="{:.1}" font-weight="bold">{}</text>"##,
            y + 16.0,
            esc(title)
        );
        let sums: Vec<Option<Summary>> = r.layers.iter().map(|l| summary(r, m, &l.name)).collect();
        let max = sums
            .iter()
            .flatten()
            .map(|x| x.p99.max(x.p50))
            .fold(0.0, f64::max)
            .max(1.0);
        let mut row_y = y + TITLE;
        for (i, (layer, sum)) in r.layers.iter().zip(&sums).enumerate() {
            let color = colors[i % colors.len()];
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LABEL_W - 8.0,
                row_y + 13.0,
                esc(&layer.label)
            );
            match sum {
                Some(x) => {
                    let w99 = (x.p99 / max * bar_w).max(1.0);
                    let w50 = (x.p50 / max * bar_w).max(1.0);
                    let _ = writeln!(
                        s,
                        r##"<rect x="{LABEL_W}" y="{:.1}" width="{w99:.1}" height="14" fill="{color}" fill-opacity="0.35"/>"##,
                        row_y + 2.0
                    );
                    let _ = writeln!(
                        s,
                        r##"<rect x="{LABEL_W}" y="{:.1}" width="{w50:.1}" height="14" fill="{color}"/>"##,
                        row_y + 2.0
                    );
                    let vs_floor = match x.ratio_p50 {
                        Some(r) if layer.name != FLOOR => format!("  (×{r:.2})"),
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}">{} / {}{}</text>"##,
                        LABEL_W + w99.max(w50) + 6.0,
                        row_y + 13.0,
                        ms(x.p50),
                        ms(x.p99),
                        esc(&vs_floor)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{LABEL_W}" y="{:.1}" fill="#999">no result</text>"##,
                        row_y + 13.0
                    );
                }
            }
            row_y += ROW;
        }
        y += panel_h;
    }
    s.push_str("</svg>\n");
    s
}

fn markdown(r: &Results) -> String {
    let m = &r.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `bench/run.sh` (do not edit by hand: the next run rewrites this file). It starts its own etcd (the test harness: one member on loopback, `--unsafe-no-fsync`; the version below, `ETCD_VERSION=3.4|3.5|3.6|3.7 bench/run.sh` picks another), runs every layer as a separate driver process speaking one protocol (`bench/README.md`), interleaves the layers round by round and reports medians of the rounds. Within a round, each layer's lists and registrations run in 5 chunks alternated with the same chunks of the drivers running beside it (a floor driver; for the Go and Python layers also the native peers of their language), and its watch and theirs get the events of the watch-lag series in turn, so every ratio compares runs seconds apart on this noisy machine. `BENCH_QUICK=1 bench/run.sh` does fewer iterations. Raw data: [`bench/results/latest.json`](bench/results/latest.json); chart: [`bench/results/latest.svg`](bench/results/latest.svg).\n"
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(
        s,
        "- CPU: {} ({} cores visible to the run, shared with other work: expect noise)",
        m["cpu"].as_str().unwrap_or("?"),
        m["nproc"]
    );
    if let Some(idle) = m["cpu_idle"].as_str() {
        let _ = writeln!(s, "- CPU idle: {idle}");
    }
    let _ = writeln!(s, "- memory: {} GiB", m["memory_gib"]);
    let _ = writeln!(s, "- OS: {}", m["os"].as_str().unwrap_or("?"));
    for k in ["rustc", "go", "python", "etcd"] {
        let _ = writeln!(s, "- {k}: {}", m[k].as_str().unwrap_or("?"));
    }
    let _ = writeln!(
        s,
        "- tree: `{}`; {} run, {} latency rounds, took {:.0} s",
        m["commit"].as_str().unwrap_or("?"),
        if r.settings["quick"].as_bool() == Some(true) {
            "quick"
        } else {
            "full"
        },
        r.settings["rounds"],
        r.duration_s
    );
    let _ = writeln!(s, "\n## Layers\n");
    for l in &r.layers {
        let reference = if matches!(l.language, "go" | "python") {
            "the best native peer of its language"
        } else {
            "the raw floor"
        };
        let target = l.target_ratio.map_or(String::new(), |t| {
            format!(" — target: p50 ≤ ×{t:.2} {reference} for every latency measurement; 1 000 registrations and RSS holding them ≤ {reference}; recovery ≤ 0.5 s")
        });
        let _ = writeln!(s, "- **{}** (`{}`){target}", l.label, l.name);
    }
    for (name, reason) in &r.skipped {
        let _ = writeln!(
            s,
            "- **{name}: skipped** — not built ({reason}); no numbers for it in this run"
        );
    }
    let _ = writeln!(s, "\n## Results\n");
    let _ = writeln!(s, "![latency chart](bench/results/latest.svg)\n");
    for t in tables(r) {
        let _ = writeln!(s, "{t}");
    }
    if !r.errors.is_empty() {
        let _ = writeln!(s, "### Errors during the run\n");
        for e in &r.errors {
            let first = e.lines().next().unwrap_or("");
            let _ = writeln!(s, "- {}", first);
        }
        s.push('\n');
    }
    if !r.latency.is_empty() || !r.bulk.is_empty() || !r.scale.is_empty() {
        s.push_str(TARGETS);
        s.push('\n');
    }
    s.push_str(METHOD);
    s
}

/// Why the targets still missed are missed: kept by hand beside the code that measures them.
const TARGETS: &str = include_str!("../TARGETS.md");

const METHOD: &str = "## How each number is measured\n\n\
- **The floor** (`raw`) is a Rust program using `etcd-client` 0.21 directly, with what a careful user would write and nothing more: a listing is one range request decoded into (name, info) pairs exactly like the core's; a registration is one put on a lease granted once per TTL (the core also shares one lease per TTL) and kept alive every TTL/3; after a loss it retries every 100 ms (the core backs off 1 s doubling to 30 s, with jitter). Ratios are taken per round (layer ÷ the floor run beside it, chunk for chunk, in that round) and the median of those is reported; the floor's own row is its run alone. Register → visible registers a fifth of its nodes per chunk, each chunk into a fresh service, and the other registry lists it until the node shows.\n\
- **The native peers** (`go-clientv3`, `py-etcd3`, `py-aetcd`) are drivers on etcd's own Go client and on the Python clients etcd3 and aetcd, written as a careful user would (one long-lived client, one lease per TTL kept alive every TTL/3, a prefix get decoded from JSON, a new lease and every key put back after a loss, retried every 100 ms). The Go and Python layers are compared with the best (lowest p50) peer of their language run beside them in the same round (their chunks alternated with the layer's and the floor's, and their watches fed in turn with the layer's); the peers also have rounds of their own, beside the floor like every layer, so their own ratios are to the floor.\n\
- **register → visible (lease held)**: from the register call until a *second* client of the same layer lists the service and finds the node (listing again at once until it does, from the register call on: for the floor and the peers too, whose reader polls beside their grant and put). 3 untimed warm-ups first, the first of which takes the lease of the TTL. **(first of its TTL)**: the same, but registration i has the TTL 31 + i s, so that each needs a new lease (granted inside the timed span; the floor and clientv3 open its keep-alive right after the put, as the layers do). After each sample, untimed, every driver lets its write finish before the next one (the floor and the peers their put and keep-alive, the layers until the registration says registered).\n\
- **list**: one `list` call of a service of 1, 100, 1 000 or 10 000 nodes (values ~70 bytes of JSON), 3 untimed warm-ups first.\n\
- **watch lag**: the orchestrator puts a node whose info carries the wall-clock time (ns) taken just before the put; the layer's watch (iterator or callback) computes now − that time on delivery. One put every 3 ms plus the put's own time, to the layer's service and to the service of each watch running beside it in turn (with the floor alone beside it, each watch sees one event every 6 ms; which gets its event first rotates).\n\
- **1 000 nodes of one TTL**: each layer gets its own etcd, so that etcd's counters and lease list belong to that layer alone. Register 1 node and then 999 more (the calls, then waiting until every registration is confirmed), one layer at a time; leases held is the growth of etcd's lease list. Then every layer idles at once for the window: keep-alives/s, lease checks/s and all gRPC messages/s are differences of that etcd's `grpc_server_msg_received_total` (LeaseKeepAlive, LeaseTimeToLive, all methods).\n\
- **footprint**: `/proc/PID/status` (Threads, VmRSS) of the driver process: bare (the process started, before the library is used: the Python driver imports the module at its first command), with a registry and 1 registration, and (full runs) with 10 000 registrations of one TTL (the last 9 000 registered by every layer at once); idle CPU is utime+stime from `/proc/PID/stat` over the idle window. The Rust drivers create a 2-worker tokio runtime at their first command (what `#[tokio::main]` gives on 2 cores); the C, Go and Python layers run on the library's global runtime, 1 worker by default.\n\
- **recovery**: every layer holds its nodes at once through one TCP proxy (the harness's). “Visible” polls etcd directly (every 20 ms) until the layer's service has all its keys again; “registered” polls the layer's own registration states. Both are measured from the moment etcd answers again (restart healthy, or proxy healed).\n\
- **Go lists** read the C list through its flat entry array (two native calls per list, none per node) and copy each node's strings in one piece; what remains is building a `map[string]string` per node (the drop-in API's `Node.Info`, about 410 bytes each). Measured apart (Go and C drivers listing 10 000 nodes, 4 fresh processes each, after 400 lists of 1 000): Go p50 ×1.21 the C library's, ×1.14 with GOGC=off.\n- **scale**: one core registry on its own etcd registers 1 000, then up to 10 000 and 100 000 nodes of one service and one TTL, each step in one go (every step but the last is also made, timed, by a second registry 4 times: the time per registration is the p50 of the 5 timings); after each step: RSS (`/proc`), the etcd requests over an idle window, a second core process listing the service in turns with a floor (raw) process (7 lists each, each after a warm-up list on its connection; their p50s) and watching it (20 puts 20 ms apart).\n\
- **fleet**: a 3-member etcd; the `core` driver started as many separate processes, each registering one node (`hold SERVICE 1 TTL p<i>-`) of one of a few services, some also watching two services (`watch_idle`, twice); after 2 s of settling, the gRPC messages received by all members over the idle window, the open streams (`grpc_server_started_total` − `grpc_server_handled_total` for Watch and LeaseKeepAlive, minus those open before) and the leases granted. Then every member is SIGKILLed (`fleet_outage_s`) and all are started again at once: the connections accepted by the TCP proxies in front of the members while they are down (the clients' connection attempts), etcd's `grpc_server_msg_received_total` summed over the members every 100 ms after the start, and each process's `state` polled in turns until every one says registered.\n\
- Targets are checked on the medians (ratios on the p50); a missed target is shown ✗ and never fails the run.\n";

/// Writes latest.json, latest.svg and the markdown file.
pub fn write_all(r: &Results, out_dir: &Path, markdown_path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(out_dir)?;
    let json = serde_json::to_string_pretty(&to_json(r)).map_err(std::io::Error::other)?;
    fs::write(out_dir.join("latest.json"), json + "\n")?;
    fs::write(out_dir.join("latest.svg"), svg(r))?;
    if !r.scale.is_empty() {
        fs::write(out_dir.join("scale.svg"), scale_svg(r))?;
    }
    fs::write(markdown_path, markdown(r))?;
    Ok(())
}

/// `etcd-registry-bench scale-svg LATEST_JSON OUT_SVG`: redraws the scale chart from a run's
/// JSON (after a change of the chart, without running the benchmark again).
pub fn scale_svg_from_json(json_path: &Path, out: &Path) -> std::io::Result<()> {
    let v: Value =
        serde_json::from_str(&fs::read_to_string(json_path)?).map_err(std::io::Error::other)?;
    let r = Results {
        machine: v["machine"].clone(),
        settings: v["settings"].clone(),
        date_unix: 0,
        layers: Vec::new(),
        skipped: Vec::new(),
        latency: BTreeMap::new(),
        paired_floor: BTreeMap::new(),
        paired_peer: BTreeMap::new(),
        bulk: BTreeMap::new(),
        recovery: BTreeMap::new(),
        scale: v["scale"].as_array().cloned().unwrap_or_default(),
        fleet: None,
        errors: Vec::new(),
        duration_s: 0.0,
        phases: Vec::new(),
    };
    fs::write(out, scale_svg(&r))
}
