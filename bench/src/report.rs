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

pub struct Results {
    pub machine: Value,
    pub settings: Value,
    pub date_unix: u64,
    pub layers: Vec<Layer>,
    pub skipped: Vec<(String, String)>,
    /// measurement → layer → one entry per round (None: failed).
    pub latency: BTreeMap<String, BTreeMap<String, Vec<Option<Pct>>>>,
    /// measurement → layer → the floor measured beside that layer, one entry per round.
    pub paired_floor: BTreeMap<String, BTreeMap<String, Vec<Option<Pct>>>>,
    /// layer → named numbers.
    pub bulk: BTreeMap<String, BTreeMap<String, Value>>,
    /// scenario → layer → one entry per round.
    pub recovery: BTreeMap<String, BTreeMap<String, Vec<Option<Recovery>>>>,
    pub errors: Vec<String>,
    pub duration_s: f64,
    pub phases: Vec<String>,
}

/// The latency measurements, in table order: (key, title).
pub const MEASUREMENTS: &[(&str, &str)] = &[
    ("register_visible", "register → visible"),
    ("list_1", "list, 1 node"),
    ("list_100", "list, 100 nodes"),
    ("list_1000", "list, 1 000 nodes"),
    ("list_10000", "list, 10 000 nodes"),
    ("watch_lag", "watch lag (put → event)"),
];

const WATCH_P99_TARGET_US: f64 = 5000.0;
/// The floor's layer name.
pub const FLOOR: &str = "raw";

/// Medians over the rounds of one layer's p50, p99, and of its per-round ratios to the floor.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub ratio_p50: Option<f64>,
    pub ratio_p99: Option<f64>,
    pub rounds: usize,
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

/// The target cell of a list/register row: the layer's ratio target on the p50.
fn ratio_target(layer: &Layer, s: &Summary) -> String {
    if layer.name == FLOOR {
        return "floor".into();
    }
    match (layer.target_ratio, s.ratio_p50) {
        (Some(t), Some(r)) => format!("≤ ×{t:.2} {}", mark(r <= t)),
        (Some(t), None) => format!("≤ ×{t:.2} ?"),
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

/// The headline: p50 ratio to the floor of every layer and latency measurement.
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
                    let target = if *m == "watch_lag" {
                        format!(" (p99 {} {})", ms(s.p99), mark(s.p99 < WATCH_P99_TARGET_US))
                    } else {
                        match (layer.target_ratio, s.ratio_p50) {
                            (Some(t), Some(x)) => format!(" {}", mark(x <= t)),
                            _ => String::new(),
                        }
                    };
                    format!("{}{target}", ratio(s.ratio_p50))
                }
            };
            row.push(cell);
        }
        rows.push(row);
    }
    format!(
        "### Headline: p50 as a multiple of the raw etcd-client floor (median of per-round ratios)\n\n{}",
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
        let target = if m == "watch_lag" {
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
                "target",
                "rounds"
            ],
            &rows
        )
    )
}

fn bulk_table(r: &Results) -> String {
    let mut rows = Vec::new();
    for layer in &r.layers {
        let Some(f) = r.bulk.get(&layer.name) else {
            continue;
        };
        let leases = fnum(f, "leases_1000");
        rows.push(vec![
            layer.label.clone(),
            opt(fnum(f, "register_1000_ms"), |v| format!("{v:.0} ms")),
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
        "### Registering 1 000 nodes of one TTL ({ttl} s)\n\nEach layer on its own etcd. Time from the first register call until all 1 000 are registered (one layer at a time); then, every layer idle at once for {window:.0} s, what its etcd received (`grpc_server_msg_received_total`). Expected keep-alives: one per TTL/3 = {:.2}/s, whatever the number of nodes.\n\n{}",
        3.0 / ttl.max(1) as f64,
        table(
            &[
                "layer",
                "time for 1 000",
                "leases held (target 1)",
                "keep-alive req/s",
                "lease checks/s",
                "all etcd req/s"
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
        if i > 0 && (s.len() - i) % 3 == 0 {
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
    let empty = Vec::new();
    for layer in &r.layers {
        let a = r
            .recovery
            .get("restart")
            .and_then(|m| m.get(&layer.name))
            .unwrap_or(&empty);
        let b = r
            .recovery
            .get("partition")
            .and_then(|m| m.get(&layer.name))
            .unwrap_or(&empty);
        if a.is_empty() && b.is_empty() {
            continue;
        }
        rows.push(vec![
            layer.label.clone(),
            never(a, |x| x.visible_s),
            never(a, |x| x.registered_s),
            stale(a),
            never(b, |x| x.visible_s),
            never(b, |x| x.registered_s),
            stale(b),
        ]);
    }
    let s = &r.settings;
    let get = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    format!(
        "### Recovery: from etcd reachable again to all {} nodes visible / all registered again\n\nAll layers at once, through one TCP proxy. *5 s outage*: etcd SIGKILLed for {:.0} s and restarted (TTL {:.0} s: the lease survives, the keys stay; “registered” is the layer's own state returning to registered). *Outage longer than the TTL*: the proxy black-holes everything for {:.0} s with a TTL of {:.0} s, so etcd expires the lease and deletes the keys. “Still claimed registered” means the layer's registration state said registered when the outage ended although etcd had been unreachable (and, past the TTL, the keys gone) for the whole outage. Median of {} round(s).\n\n{}",
        get("recovery_nodes"),
        get("short_outage_s"),
        get("short_outage_ttl_s"),
        get("long_outage_s"),
        get("long_outage_ttl_s"),
        get("recovery_rounds"),
        table(
            &[
                "layer",
                "5 s outage: visible",
                "5 s outage: registered",
                "5 s outage: still claimed registered at the end",
                "> TTL: visible",
                "> TTL: registered",
                "> TTL: still claimed registered at the end"
            ],
            &rows
        )
    )
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
                    "rounds": rounds.iter().map(|p| p.map(|p| json!({"p50_us": p.p50, "p99_us": p.p99, "samples": p.n}))).collect::<Vec<_>>(),
                    "floor_beside_rounds": r.paired_floor.get(m).and_then(|f| f.get(layer)).map(|rounds| rounds.iter().map(|p| p.map(|p| json!({"p50_us": p.p50, "p99_us": p.p99, "samples": p.n}))).collect::<Vec<_>>()),
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
        "Generated by `bench/run.sh` (do not edit by hand: the next run rewrites this file). It starts its own etcd (the test harness: one member on loopback, `--unsafe-no-fsync`; the version below, `ETCD_VERSION=3.4|3.5|3.6|3.7 bench/run.sh` picks another), runs every layer as a separate driver process speaking one protocol (`bench/README.md`), interleaves the layers round by round and reports medians of the rounds. Within a round, each layer's lists and registrations run in 5 chunks alternated with the same chunks of a floor driver running beside it, so every ratio compares runs seconds apart on this noisy machine. `BENCH_QUICK=1 bench/run.sh` does fewer iterations. Raw data: [`bench/results/latest.json`](bench/results/latest.json); chart: [`bench/results/latest.svg`](bench/results/latest.svg).\n"
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(
        s,
        "- CPU: {} ({} cores visible to the run, shared with other work: expect noise)",
        m["cpu"].as_str().unwrap_or("?"),
        m["nproc"]
    );
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
        let target = l.target_ratio.map_or(String::new(), |t| {
            format!(" — target ≤ ×{t:.2} the floor for list and register")
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
    s.push_str(METHOD);
    s
}

const METHOD: &str = "## How each number is measured\n\n\
- **The floor** (`raw`) is a Rust program using `etcd-client` 0.21 directly, with what a careful user would write and nothing more: a listing is one range request decoded into (name, info) pairs exactly like the core's; a registration is one put on a lease granted once per TTL (the core also shares one lease per TTL) and kept alive every TTL/3; after a loss it retries every 100 ms (the core backs off 1 s doubling to 30 s, with jitter). Ratios are taken per round (layer ÷ the floor run beside it, chunk for chunk, in that round) and the median of those is reported; the floor's own row is its run alone. Register → visible registers a fifth of its nodes per chunk, each chunk into a fresh service, and the other registry lists it until the node shows.\n\
- **register → visible**: from the register call until a *second* client of the same layer lists the service and finds the node (listing again at once until it does). 3 untimed warm-ups first.\n\
- **list**: one `list` call of a service of 1, 100, 1 000 or 10 000 nodes (values ~70 bytes of JSON), 3 untimed warm-ups first.\n\
- **watch lag**: the orchestrator puts a node whose info carries the wall-clock time (ns) taken just before the put; the layer's watch (iterator or callback) computes now − that time on delivery. One put every 3 ms plus the put's own time.\n\
- **1 000 nodes of one TTL**: each layer gets its own etcd, so that etcd's counters and lease list belong to that layer alone. Register 1 node and then 999 more (the calls, then waiting until every registration is confirmed), one layer at a time; leases held is the growth of etcd's lease list. Then every layer idles at once for the window: keep-alives/s, lease checks/s and all gRPC messages/s are differences of that etcd's `grpc_server_msg_received_total` (LeaseKeepAlive, LeaseTimeToLive, all methods).\n\
- **footprint**: `/proc/PID/status` (Threads, VmRSS) of the driver process: bare (the process started, before the library is used: the Python driver imports the module at its first command), with a registry and 1 registration, and (full runs) with 10 000 registrations of one TTL (the last 9 000 registered by every layer at once); idle CPU is utime+stime from `/proc/PID/stat` over the idle window. The Rust drivers create a 2-worker tokio runtime at their first command (the size of the global runtime the C and Python bindings share).\n\
- **recovery**: every layer holds its nodes at once through one TCP proxy (the harness's). “Visible” polls etcd directly (every 20 ms) until the layer's service has all its keys again; “registered” polls the layer's own registration states. Both are measured from the moment etcd answers again (restart healthy, or proxy healed).\n\
- **Go lists** read the C list through its flat entry array (two native calls per list, none per node) and copy each node's strings in one piece; what remains is building a `map[string]string` per node (the drop-in API's `Node.Info`, about 410 bytes each). Measured apart (Go and C drivers listing 10 000 nodes, 4 fresh processes each, after 400 lists of 1 000): Go p50 ×1.21 the C library's, ×1.14 with GOGC=off.\n- Targets are checked on the medians (ratios on the p50); a missed target is shown ✗ and never fails the run.\n";

/// Writes latest.json, latest.svg and the markdown file.
pub fn write_all(r: &Results, out_dir: &Path, markdown_path: &Path) -> std::io::Result<()> {
    fs::create_dir_all(out_dir)?;
    let json = serde_json::to_string_pretty(&to_json(r)).map_err(std::io::Error::other)?;
    fs::write(out_dir.join("latest.json"), json + "\n")?;
    fs::write(out_dir.join("latest.svg"), svg(r))?;
    fs::write(markdown_path, markdown(r))?;
    Ok(())
}
