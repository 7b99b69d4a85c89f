//! `etcd-registry-bench`: the benchmark of every layer of etcd-registry against a raw
//! `etcd-client` floor. `bench/run.sh` builds the drivers and runs it; see bench/README.md.
//!
//! - `etcd-registry-bench [run] [options]`: the orchestrator (starts etcd, runs the layers,
//!   prints the tables, writes bench/results/latest.{json,svg} and BENCHMARKS.md).
//! - `etcd-registry-bench driver raw|core ENDPOINTS BASE_PATH`: the Rust drivers.
//! - `etcd-registry-bench scale-svg LATEST_JSON OUT_SVG`: redraws the scale chart of a run.

mod child;
mod direct;
mod driver;
mod report;
mod run;
mod stats;
mod sysinfo;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("driver") => driver::main(&args[1..]),
        Some("scale-svg") if args.len() == 3 => {
            match report::scale_svg_from_json(args[1].as_ref(), args[2].as_ref()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("scale-svg: {e}");
                    1
                }
            }
        }
        Some("-h" | "--help" | "help") => {
            println!("etcd-registry-bench [run] [--quick] [--layer NAME=COMMAND]... [--skip NAME=REASON]... [--phases latency,bulk,recovery] [--out DIR] [--markdown FILE] [--log-dir DIR]");
            println!("etcd-registry-bench driver raw|core ENDPOINTS BASE_PATH");
            println!("etcd-registry-bench scale-svg LATEST_JSON OUT_SVG");
            0
        }
        _ => run::main(&args),
    };
    std::process::exit(code);
}
