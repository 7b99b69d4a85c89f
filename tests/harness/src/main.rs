//! `etcd-harness` — run a real etcd cluster for non-Rust test suites.
//!
//! ```text
//! etcd-harness serve [--members N] [--proxy] [--peer-proxies] [--auth-token-ttl S] [--quota-backend-bytes B]
//! etcd-harness run   [--members N] [--proxy] [--peer-proxies] [--auth-token-ttl S] [--quota-backend-bytes B] -- CMD ARGS...
//! etcd-harness ctl   [SOCKET] COMMAND ARGS...
//! ```
//! See `usage()` below for the line protocol.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use etcd_harness::{EtcdCluster, EtcdClusterBuilder};
use serde_json::{json, Value};

const USAGE: &str = "\
etcd-harness: real etcd clusters with fault injection for tests

USAGE:
  etcd-harness serve [--members N] [--proxy] [--peer-proxies] [--auth-token-ttl S] [--quota-backend-bytes B] [TLS]
      Start the cluster and print ONE JSON line:
        {\"ok\":true,\"endpoints\":[..],\"direct_endpoints\":[..],\"control\":SOCKET,
         \"pids\":[..],\"members\":N,\"proxy\":BOOL,\"base_dir\":DIR,\"tls\":FILES,
         \"etcd_version\":\"3.5.1\"} (ETCD_VERSION=3.4|3.5|3.5.12|3.5.36|3.6|3.7 picks the etcd)
      then read commands from stdin, one per line, answering each with one
      JSON line. EOF on stdin (or `quit`) shuts everything down, exit 0.
  etcd-harness run [--members N] [--proxy] [--peer-proxies] [--auth-token-ttl S] [--quota-backend-bytes B] [TLS] -- CMD ARGS...
      Start the cluster, run CMD with ETCD_ENDPOINTS (comma-separated client
      endpoints), ETCD_HARNESS_DIRECT_ENDPOINTS, ETCD_HARNESS_CONTROL (socket)
      and ETCD_HARNESS_BIN set, then shut down; exit with CMD's exit code.
      With TLS also ETCD_HARNESS_TLS_<NAME> for each PEM file (see FILES).
  TLS options: --tls (https client URLs, certificates generated into
      BASE_DIR/tls), --client-cert-auth (implies --tls; etcd requires a client
      certificate), --tls-expired-server (implies --tls; etcd's certificate
      expired). FILES (null without TLS) maps NAME to a path: ca, client_cert,
      client_key (CN etcd-registry-client), expired_client_cert,
      expired_client_key, other_ca (a CA etcd does not trust),
      other_client_cert, other_client_key (signed by other_ca), server_cert,
      server_key. etcd's certificate is valid for 127.0.0.1, ::1, localhost
      and etcd.test.
  etcd-harness ctl [SOCKET] COMMAND ARGS...
      Send one command to SOCKET (default $ETCD_HARNESS_CONTROL), print the
      JSON reply, exit 1 unless it is ok.

COMMANDS (stdin and control socket; replies {\"ok\":true[,\"value\":V]} or
{\"ok\":false,\"error\":\"...\"}):
  kill I | restart I | stop I | start I | pause I | resume I | pid I
  wipe I                      kill, empty its data dir, start (one member only)
  partition | heal | reset | partition-member I | heal-member I
  isolate I | rejoin          cut member I off from its peers / undo (--peer-proxies)
  leader                      value: member index
  enable-auth USER PASSWORD
  compact                     value: compacted revision
  revision                    value: current revision
  put KEY VALUE               VALUE is the rest of the line (may be empty)
  get KEY                     value: string or null
  get-prefix PREFIX           value: [[key, value], ...]
  delete KEY                  value: number deleted
  delete-prefix PREFIX        value: number deleted
  lease-count                 value: number of leases
  leases                      value: [lease id, ...]
  lease-revoke ID             ID decimal or 0xHEX
  endpoints | direct-endpoints | pids
  etcdctl ARGS...             value: stdout (ARGS split on whitespace)
  ping | help | quit
";

static SIGNALED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGHUP, handler);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sub) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    match sub.as_str() {
        "serve" => serve(&args[1..]),
        "run" => run(&args[1..]),
        "ctl" => ctl(&args[1..]),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("etcd-harness: unknown subcommand {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Parse cluster options; returns the builder and the remaining args after `--`.
fn parse_opts(args: &[String]) -> Result<(EtcdClusterBuilder, Vec<String>), String> {
    let mut b = EtcdCluster::builder();
    let mut it = args.iter();
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<u64, String> {
            let v = inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: not a number: {v:?}"))
        };
        match flag {
            "--members" => b = b.members(value("--members")? as usize),
            "--auth-token-ttl" => b = b.auth_token_ttl(value("--auth-token-ttl")?),
            "--start-timeout" => {
                b = b.start_timeout(Duration::from_secs(value("--start-timeout")?))
            }
            "--proxy" => b = b.proxy(true),
            "--peer-proxies" => b = b.peer_proxies(true),
            "--quota-backend-bytes" => {
                let bytes = value("--quota-backend-bytes")?;
                b = b.arg(format!("--quota-backend-bytes={bytes}"))
            }
            "--tls" => b = b.tls(true),
            "--client-cert-auth" => b = b.client_cert_auth(true),
            "--tls-expired-server" => b = b.tls_expired_server(true),
            "--" => {
                rest = it.cloned().collect();
                break;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok((b, rest))
}

enum Msg {
    /// A command line; reply goes to the sender, or to stdout if `None`.
    Cmd(String, Option<Sender<String>>),
    StdinEof,
    ChildExited(i32),
}

fn ok(value: Option<Value>) -> Value {
    match value {
        Some(v) => json!({"ok": true, "value": v}),
        None => json!({"ok": true}),
    }
}

fn err(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

fn index(arg: &str) -> Result<usize, String> {
    arg.trim()
        .parse()
        .map_err(|_| format!("expected a member index, got {arg:?}"))
}

/// Execute one protocol command. Returns the reply and whether to quit.
fn execute(c: &EtcdCluster, line: &str) -> (Value, bool) {
    let line = line.trim_end_matches(['\r', '\n']).trim_start();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let r: Result<Option<Value>, String> = (|| {
        let unit = |r: io::Result<()>| r.map(|_| None).map_err(|e| e.to_string());
        let val = |v: Value| Ok(Some(v));
        let with_index = |f: &dyn Fn(usize) -> io::Result<()>| -> Result<Option<Value>, String> {
            unit(f(index(rest)?))
        };
        match cmd {
            "kill" => with_index(&|i| c.kill(i)),
            "restart" => with_index(&|i| c.restart(i)),
            "wipe" => with_index(&|i| c.wipe(i)),
            "stop" => with_index(&|i| c.stop(i)),
            "start" => with_index(&|i| c.start(i)),
            "pause" => with_index(&|i| c.pause(i)),
            "resume" => with_index(&|i| c.resume(i)),
            "partition-member" => with_index(&|i| c.partition_member(i)),
            "heal-member" => with_index(&|i| c.heal_member(i)),
            "isolate" => with_index(&|i| c.isolate(i)),
            "rejoin" => unit(c.rejoin_all()),
            "pid" => val(json!(c.pid(index(rest)?))),
            "pids" => val(json!((0..c.len()).map(|i| c.pid(i)).collect::<Vec<_>>())),
            "partition" => unit(c.partition()),
            "heal" => unit(c.heal()),
            "reset" => unit(c.reset_connections()),
            "leader" => val(json!(c.leader().map_err(|e| e.to_string())?)),
            "enable-auth" => {
                let (user, pw) = rest
                    .split_once(' ')
                    .ok_or("usage: enable-auth USER PASSWORD")?;
                unit(c.enable_auth(user, pw))
            }
            "compact" => val(json!(c.compact_to_latest().map_err(|e| e.to_string())?)),
            "revision" => val(json!(c.revision().map_err(|e| e.to_string())?)),
            "put" => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                if k.is_empty() {
                    return Err("usage: put KEY VALUE".into());
                }
                unit(c.put(k, v))
            }
            "get" => val(json!(c.get(rest).map_err(|e| e.to_string())?)),
            "get-prefix" => {
                let kvs = c.get_prefix(rest).map_err(|e| e.to_string())?;
                val(json!(kvs
                    .into_iter()
                    .map(|(k, v)| [k, v])
                    .collect::<Vec<_>>()))
            }
            "delete" => val(json!(c.delete(rest).map_err(|e| e.to_string())?)),
            "delete-prefix" => val(json!(c.delete_prefix(rest).map_err(|e| e.to_string())?)),
            "lease-count" => val(json!(c.lease_count().map_err(|e| e.to_string())?)),
            "leases" => val(json!(c.lease_list().map_err(|e| e.to_string())?)),
            "lease-revoke" => {
                let s = rest.trim();
                let id = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    Some(h) => i64::from_str_radix(h, 16),
                    None => s.parse(),
                }
                .map_err(|_| format!("bad lease id {s:?}"))?;
                unit(c.lease_revoke(id))
            }
            "endpoints" => val(json!(c.endpoints())),
            "direct-endpoints" => val(json!(c.direct_endpoints())),
            "etcdctl" => {
                let args: Vec<&str> = rest.split_whitespace().collect();
                val(json!(c.etcdctl(&args).map_err(|e| e.to_string())?))
            }
            "ping" => Ok(None),
            "help" => val(json!(USAGE)),
            "" => Err("empty command".into()),
            other => Err(format!("unknown command {other:?} (try `help`)")),
        }
    })();
    let quit = cmd == "quit";
    if quit {
        return (ok(None), true);
    }
    match r {
        Ok(v) => (ok(v), false),
        Err(e) => (err(e), false),
    }
}

fn write_stdout_line(v: &Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Bind the control socket and serve it on background threads.
fn start_control(path: &Path, tx: Sender<Msg>) -> io::Result<()> {
    let listener = UnixListener::bind(path)?;
    thread::Builder::new()
        .name("control-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let _ = thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || serve_control_conn(stream, tx));
            }
        })?;
    Ok(())
}

fn serve_control_conn(stream: UnixStream, tx: Sender<Msg>) {
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let (rtx, rrx) = mpsc::channel();
        if tx.send(Msg::Cmd(line, Some(rtx))).is_err() {
            return;
        }
        let Ok(reply) = rrx.recv() else { return };
        if writeln!(w, "{reply}").and_then(|_| w.flush()).is_err() {
            return;
        }
    }
}

fn start_cluster(args: &[String]) -> Result<(EtcdCluster, Vec<String>, PathBuf), ExitCode> {
    let (builder, rest) = parse_opts(args).map_err(|e| {
        eprintln!("etcd-harness: {e}\n\n{USAGE}");
        ExitCode::from(2)
    })?;
    let cluster = builder.start().map_err(|e| {
        eprintln!("etcd-harness: failed to start etcd: {e}");
        ExitCode::FAILURE
    })?;
    let control = cluster.base_dir().join("control.sock");
    Ok((cluster, rest, control))
}

/// Main executor loop. Returns the exit code.
fn event_loop(cluster: EtcdCluster, rx: mpsc::Receiver<Msg>, child_pid: Option<u32>) -> i32 {
    let mut code = 0;
    let mut forwarded_signal = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Cmd(line, reply)) => {
                let (mut resp, quit) = execute(&cluster, &line);
                if quit && child_pid.is_some() {
                    resp = err("quit is not available in `run` mode");
                } else if quit {
                    drop(cluster);
                    match reply {
                        Some(r) => {
                            let _ = r.send(resp.to_string());
                        }
                        None => write_stdout_line(&resp),
                    }
                    return 0;
                }
                match reply {
                    Some(r) => {
                        let _ = r.send(resp.to_string());
                    }
                    None => write_stdout_line(&resp),
                }
            }
            Ok(Msg::StdinEof) => break,
            Ok(Msg::ChildExited(c)) => {
                code = c;
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                if SIGNALED.load(Ordering::SeqCst) {
                    match child_pid {
                        None => {
                            code = 0;
                            break;
                        }
                        Some(pid) if !forwarded_signal => {
                            forwarded_signal = true;
                            // SAFETY: signal our own child; it is reaped by the waiter thread.
                            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                        }
                        Some(_) => {}
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(cluster);
    code
}

fn serve(args: &[String]) -> ExitCode {
    install_signal_handlers();
    let (cluster, rest, control) = match start_cluster(args) {
        Ok(x) => x,
        Err(code) => {
            write_stdout_line(&err("failed to start etcd (see stderr)"));
            return code;
        }
    };
    if !rest.is_empty() {
        eprintln!("etcd-harness serve: unexpected arguments after --: {rest:?}");
        return ExitCode::from(2);
    }
    let (tx, rx) = mpsc::channel();
    if let Err(e) = start_control(&control, tx.clone()) {
        eprintln!("etcd-harness: cannot bind {}: {e}", control.display());
        return ExitCode::FAILURE;
    }
    write_stdout_line(&json!({
        "ok": true,
        "endpoints": cluster.endpoints(),
        "direct_endpoints": cluster.direct_endpoints(),
        "control": control,
        "pids": (0..cluster.len()).map(|i| cluster.pid(i)).collect::<Vec<_>>(),
        "members": cluster.len(),
        "proxy": cluster.has_proxy(),
        "base_dir": cluster.base_dir(),
        "etcd_version": etcd_harness::etcd_version().ok(),
        "tls": tls_json(&cluster),
    }));
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(Msg::Cmd(line, None)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Msg::StdinEof);
        })
        .expect("spawn stdin thread");
    let code = event_loop(cluster, rx, None);
    ExitCode::from(code as u8)
}

fn run(args: &[String]) -> ExitCode {
    install_signal_handlers();
    let (cluster, rest, control) = match start_cluster(args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some((prog, prog_args)) = rest.split_first() else {
        eprintln!("etcd-harness run: missing `-- CMD ARGS...`\n\n{USAGE}");
        return ExitCode::from(2);
    };
    let (tx, rx) = mpsc::channel();
    if let Err(e) = start_control(&control, tx.clone()) {
        eprintln!("etcd-harness: cannot bind {}: {e}", control.display());
        return ExitCode::FAILURE;
    }
    let mut cmd = Command::new(prog);
    cmd.args(prog_args)
        .env("ETCD_ENDPOINTS", cluster.endpoints().join(","))
        .env(
            "ETCD_HARNESS_DIRECT_ENDPOINTS",
            cluster.direct_endpoints().join(","),
        )
        .env("ETCD_HARNESS_CONTROL", &control);
    for (name, path) in cluster.tls().map(|t| t.entries()).unwrap_or_default() {
        cmd.env(format!("ETCD_HARNESS_TLS_{}", name.to_uppercase()), path);
    }
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("ETCD_HARNESS_BIN", exe);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcd-harness run: cannot start {prog:?}: {e}");
            return ExitCode::from(127);
        }
    };
    let pid = child.id();
    thread::Builder::new()
        .name("child-wait".into())
        .spawn(move || {
            let code = match child.wait() {
                Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
                Err(_) => 1,
            };
            let _ = tx.send(Msg::ChildExited(code));
        })
        .expect("spawn waiter thread");
    let code = event_loop(cluster, rx, Some(pid));
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The PEM files of a TLS cluster by name (`ca`, `client_cert`, …), or null.
fn tls_json(cluster: &EtcdCluster) -> Value {
    match cluster.tls() {
        Some(files) => Value::Object(
            files
                .entries()
                .into_iter()
                .map(|(name, path)| (name.to_string(), json!(path)))
                .collect(),
        ),
        None => Value::Null,
    }
}

fn ctl(args: &[String]) -> ExitCode {
    let (socket, cmd_args): (PathBuf, &[String]) = match args.first() {
        Some(first) if first.contains('/') || first.ends_with(".sock") => {
            (PathBuf::from(first), &args[1..])
        }
        _ => match std::env::var_os("ETCD_HARNESS_CONTROL") {
            Some(s) => (PathBuf::from(s), args),
            None => {
                eprintln!("etcd-harness ctl: no SOCKET given and ETCD_HARNESS_CONTROL is unset");
                return ExitCode::from(2);
            }
        },
    };
    if cmd_args.is_empty() {
        eprintln!("etcd-harness ctl: missing COMMAND\n\n{USAGE}");
        return ExitCode::from(2);
    }
    let line = cmd_args.join(" ");
    let reply = (|| -> io::Result<String> {
        let mut s = UnixStream::connect(&socket)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        writeln!(s, "{line}")?;
        s.flush()?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply)?;
        if reply.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "harness closed the connection without replying",
            ));
        }
        Ok(reply)
    })();
    match reply {
        Ok(reply) => {
            print!("{reply}");
            let _ = io::stdout().flush();
            let okay = serde_json::from_str::<Value>(&reply)
                .ok()
                .and_then(|v| v.get("ok").and_then(Value::as_bool))
                .unwrap_or(false);
            if okay {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("etcd-harness ctl: {}: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}
