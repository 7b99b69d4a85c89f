//! The `etcd-registry` program, run as a user runs it, against real etcd servers started by the
//! harness: output (text and JSON), signals, an etcd restart under `register`, bad input and
//! exit statuses.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use etcd_harness::EtcdCluster;
use serde_json::{json, Value};

/// Generous bound for anything that should happen soon: the tests poll, never sleep.
const DEADLINE: Duration = Duration::from_secs(30);

/// Every variable the program reads; removed so the caller's environment (the harness exports
/// ETCD_ENDPOINTS) never leaks into a test.
const ENV: &[&str] = &[
    "ETCD_ENDPOINTS",
    "ETCD_REGISTRY_BASE_PATH",
    "ETCD_USERNAME",
    "ETCD_PASSWORD",
    "ETCD_PASSWORD_FILE",
    "ETCD_CACERT",
    "ETCD_CERT",
    "ETCD_KEY",
    "ETCD_TLS_SERVER_NAME",
    "ETCD_REGISTRY_TIMEOUT",
    "ETCD_REGISTRY_BACKOFF_MIN",
    "ETCD_REGISTRY_BACKOFF_MAX",
    "ETCD_REGISTRY_LOG",
];

fn etcd() -> EtcdCluster {
    EtcdCluster::start_single().expect("start etcd")
}

/// The program with a clean environment, short timeouts and quick retries.
fn program(endpoints: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcd-registry"));
    for var in ENV {
        cmd.env_remove(var);
    }
    cmd.env("ETCD_ENDPOINTS", endpoints)
        .env("ETCD_REGISTRY_TIMEOUT", "2s")
        .env("ETCD_REGISTRY_BACKOFF_MIN", "200ms")
        .env("ETCD_REGISTRY_BACKOFF_MAX", "1s");
    cmd
}

fn at(etcd: &EtcdCluster) -> Command {
    program(&etcd.endpoints().join(","))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs to completion (killed and failed after `DEADLINE`).
fn run(cmd: &mut Command, args: &[&str]) -> Run {
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcd-registry");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let code = wait_exit(&mut child, args);
    Run {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn wait_exit(child: &mut Child, what: &[&str]) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status
                .code()
                .unwrap_or_else(|| panic!("{what:?} died by a signal: {status}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what:?} did not exit within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A long-running invocation (`watch`, `register`) whose stdout is read line by line.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    args: Vec<String>,
    stderr: thread::JoinHandle<String>,
}

impl Running {
    fn start(cmd: &mut Command, args: &[&str]) -> Running {
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcd-registry");
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            stderr,
        }
    }

    /// Reads lines until one matches, returning it; fails after `DEADLINE` or at end of output.
    fn expect(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "{:?}: no line {what} ({e}); lines so far: {:#?}",
                    self.args, self.seen
                ),
            }
        }
    }

    /// Like `expect`, for `--json` output: the next object whose "event" is `event`.
    fn expect_event(&mut self, event: &str) -> Value {
        let line = self.expect(&format!("with event {event:?}"), |line| {
            serde_json::from_str::<Value>(line).expect("a JSON object per line")["event"] == event
        });
        serde_json::from_str(&line).unwrap()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Waits until `sig`, sent before, is no longer pending: the process took it (a signal sent
    /// again while one is pending merges with it).
    fn wait_delivered(&self, sig: libc::c_int) {
        let path = format!("/proc/{}/status", self.child.id());
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = std::fs::read_to_string(&path).unwrap();
            let pending = status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("ShdPnd:")
                        .or_else(|| l.strip_prefix("SigPnd:"))
                })
                .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
                .fold(0, |all, mask| all | mask);
            if pending & (1 << (sig - 1)) == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "signal {sig} still pending");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the exit, then returns the status, the rest of stdout and stderr.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let code = wait_exit(&mut self.child, &args);
        let rest: Vec<String> = self.lines.iter().collect();
        (code, rest, self.stderr.join().unwrap())
    }
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn list_prints_nodes_as_text_and_json() {
    let etcd = etcd();
    etcd.put(
        "/services/api/node-1",
        r#"{"address":"10.0.0.5:8080","version":"1.0"}"#,
    )
    .unwrap();
    etcd.put("/services/api/node-2", r#"{"note":"two words"}"#)
        .unwrap();
    etcd.put("/services/api2/other", "{}").unwrap();
    etcd.put("/elsewhere/api/node-9", r#"{"a":"b"}"#).unwrap();

    let text = run(&mut at(&etcd), &["list", "api"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert_eq!(
        text.stdout,
        "node-1 address=10.0.0.5:8080 version=1.0\nnode-2 note=\"two words\"\n"
    );
    assert_eq!(text.stderr, "");

    let js = run(&mut at(&etcd), &["list", "api", "--json"]);
    assert_eq!(js.code, 0, "{}", js.stderr);
    assert!(
        js.stdout
            .starts_with(r#"{"name":"node-1","info":{"address":"#),
        "the name comes first: {}",
        js.stdout
    );
    assert_eq!(
        json_lines(&js.stdout),
        vec![
            json!({"name": "node-1", "info": {"address": "10.0.0.5:8080", "version": "1.0"}}),
            json!({"name": "node-2", "info": {"note": "two words"}}),
        ]
    );

    // A service without nodes: nothing, and success.
    let none = run(&mut at(&etcd), &["list", "nosuch"]);
    assert_eq!(
        (none.code, none.stdout.as_str()),
        (0, ""),
        "{}",
        none.stderr
    );

    // The base path from the environment, then from the flag (which wins).
    let env = run(
        at(&etcd).env("ETCD_REGISTRY_BASE_PATH", "/elsewhere"),
        &["list", "api"],
    );
    assert_eq!((env.code, env.stdout.as_str()), (0, "node-9 a=b\n"));
    let flag = run(
        at(&etcd).env("ETCD_REGISTRY_BASE_PATH", "/nothing"),
        &["--base-path", "/elsewhere", "list", "api"],
    );
    assert_eq!((flag.code, flag.stdout.as_str()), (0, "node-9 a=b\n"));
}

#[test]
fn services_prints_the_services_under_the_base_path() {
    let etcd = etcd();
    for key in [
        "/services/web/n1",
        "/services/api/n1",
        "/services/api/n2",
        "/services/a-b/x",
        "/services/not-a-node",
        "/other/zzz/n1",
    ] {
        etcd.put(key, "{}").unwrap();
    }
    let text = run(&mut at(&etcd), &["services"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert_eq!(text.stdout, "a-b\napi\nweb\n");

    let js = run(&mut at(&etcd), &["--json", "services"]);
    assert_eq!(
        json_lines(&js.stdout),
        vec![
            json!({"service": "a-b"}),
            json!({"service": "api"}),
            json!({"service": "web"})
        ]
    );

    let empty = run(&mut at(&etcd), &["--base-path", "/empty", "services"]);
    assert_eq!((empty.code, empty.stdout.as_str()), (0, ""));
}

#[test]
fn watch_prints_one_line_per_event_until_interrupted() {
    let etcd = etcd();
    etcd.put("/services/api/n1", r#"{"v":"1"}"#).unwrap();

    let mut js = Running::start(&mut at(&etcd), &["watch", "api", "--json"]);
    let mut text = Running::start(&mut at(&etcd), &["watch", "api"]);
    let added = js.expect_event("added");
    assert!(
        js.seen[0].starts_with(r#"{"event":"added","name":"n1","info":{"v":"1"},"revision":"#),
        "{}",
        js.seen[0]
    );
    assert_eq!(added["name"], "n1");
    assert_eq!(added["info"], json!({"v": "1"}));
    assert!(added["revision"].as_i64().unwrap() > 0);
    text.expect("added n1", |l| l == "added n1 v=1");

    etcd.put("/services/api/n2", r#"{"v":"2"}"#).unwrap();
    let added = js.expect_event("added");
    assert_eq!(
        (added["name"].as_str(), &added["info"]),
        (Some("n2"), &json!({"v": "2"}))
    );
    text.expect("added n2", |l| l == "added n2 v=2");

    etcd.put("/services/api/n1", r#"{"v":"1b"}"#).unwrap();
    let updated = js.expect_event("updated");
    assert_eq!(
        (updated["name"].as_str(), &updated["info"]),
        (Some("n1"), &json!({"v": "1b"}))
    );
    text.expect("updated n1", |l| l == "updated n1 v=1b");

    // Another service is not reported.
    etcd.put("/services/api2/x", "{}").unwrap();
    etcd.delete("/services/api/n2").unwrap();
    let removed = js.expect_event("removed");
    assert_eq!(removed["name"], "n2");
    text.expect("removed n2", |l| l == "removed n2");
    assert!(
        !js.seen
            .iter()
            .chain(&text.seen)
            .any(|l| l.contains("api2") || l.contains("\"x\"")),
        "{:?} {:?}",
        js.seen,
        text.seen
    );

    js.signal(libc::SIGINT);
    text.signal(libc::SIGTERM);
    for running in [js, text] {
        let (code, rest, stderr) = running.finish();
        assert_eq!(code, 0, "stderr: {stderr}");
        assert!(rest.is_empty(), "{rest:?}");
        assert_eq!(stderr, "");
    }
}

#[test]
fn register_stays_until_interrupted_then_the_key_is_gone() {
    let etcd = etcd();
    let mut reg = Running::start(
        &mut at(&etcd),
        &[
            "register",
            "api",
            "node-1",
            "address=10.0.0.5:8080",
            "version=2",
            "--ttl",
            "10s",
        ],
    );
    let line = reg.expect("registered", |l| l.starts_with("registered "));
    assert!(
        line.starts_with("registered /services/api/node-1 lease=") && line.ends_with(" ttl=10s"),
        "{line}"
    );
    // The lease as etcdctl prints it (and takes it: `etcdctl lease timetolive ID`).
    let lease = line
        .split(" lease=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let leases: Vec<String> = etcd
        .lease_list()
        .unwrap()
        .iter()
        .map(|l| format!("{l:016x}"))
        .collect();
    assert!(
        leases.iter().any(|l| l == lease),
        "{lease} among {leases:?}"
    );
    // What any client of the wire format reads.
    assert_eq!(
        etcd.get_prefix("/services/").unwrap(),
        vec![(
            "/services/api/node-1".to_string(),
            r#"{"address":"10.0.0.5:8080","version":"2"}"#.to_string()
        )]
    );
    assert_eq!(etcd.lease_list().unwrap().len(), 1);
    let listed = run(&mut at(&etcd), &["list", "api"]);
    assert_eq!(listed.stdout, "node-1 address=10.0.0.5:8080 version=2\n");

    reg.signal(libc::SIGINT);
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(rest, vec!["unregistered /services/api/node-1".to_string()]);
    assert!(
        etcd.get_prefix("/services/").unwrap().is_empty(),
        "key deleted"
    );
    assert!(etcd.lease_list().unwrap().is_empty(), "lease revoked");

    // The same with --json and SIGTERM.
    let mut reg = Running::start(
        &mut at(&etcd),
        &["--json", "register", "web", "n/1", "--ttl", "5"],
    );
    let registered = reg.expect_event("registered");
    assert_eq!(registered["key"], "/services/web/n-1");
    let lease_id = registered["lease_id"].as_i64().unwrap();
    assert!(lease_id > 0);
    // The same id in hex, exact where a JSON reader rounds the integer, as etcdctl prints it.
    let hex = registered["lease_id_hex"].as_str().unwrap();
    assert_eq!(hex, format!("{lease_id:016x}"));
    assert!(
        etcd.lease_list()
            .unwrap()
            .iter()
            .any(|l| format!("{l:016x}") == hex),
        "{hex} among {:?}",
        etcd.lease_list().unwrap()
    );
    assert_eq!(
        etcd.get("/services/web/n-1").unwrap().as_deref(),
        Some("{}")
    );
    reg.signal(libc::SIGTERM);
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(
        rest.iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>(),
        vec![json!({"event": "unregistered", "key": "/services/web/n-1"})]
    );
    assert_eq!(etcd.get("/services/web/n-1").unwrap(), None);

    // SIGHUP (the terminal went away, e.g. an ssh session closed) cleans up the same way.
    let mut reg = Running::start(&mut at(&etcd), &["register", "web", "n2", "--ttl", "30"]);
    reg.expect("registered", |l| {
        l.starts_with("registered /services/web/n2")
    });
    reg.signal(libc::SIGHUP);
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(rest, vec!["unregistered /services/web/n2".to_string()]);
    assert_eq!(etcd.get("/services/web/n2").unwrap(), None);
}

/// A hangup sends SIGHUP twice at once (the shell passes it on to its jobs, the kernel sends it
/// to the terminal's foreground group): the second does not cut the delete short, even while
/// etcd is slow to confirm it.
#[test]
fn a_hangup_unregisters_even_when_etcd_is_slow_to_delete() {
    let etcd = EtcdCluster::builder().proxy(true).start().unwrap();
    let mut reg = Running::start(&mut at(&etcd), &["register", "web", "n1", "--ttl", "30"]);
    reg.expect("registered", |l| {
        l.starts_with("registered /services/web/n1")
    });
    // Every byte between the tool and etcd takes 0.3 s: the delete is in flight when the
    // second SIGHUP comes.
    etcd.delay_member(0, Duration::from_millis(300)).unwrap();
    reg.signal(libc::SIGHUP);
    reg.wait_delivered(libc::SIGHUP);
    reg.signal(libc::SIGHUP);
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(rest, vec!["unregistered /services/web/n1".to_string()]);
    etcd.delay_member(0, Duration::ZERO).unwrap();
    assert_eq!(etcd.get("/services/web/n1").unwrap(), None);
}

/// Started with SIGHUP and SIGINT ignored (`nohup`, a background job of a script), `register`
/// keeps them ignored: a hangup of the session does not unregister the node. SIGTERM still
/// does.
#[test]
fn register_started_with_hangups_ignored_keeps_them_ignored() {
    use std::os::unix::process::CommandExt;
    let etcd = etcd();
    let mut command = at(&etcd);
    // SAFETY: only async-signal-safe calls (signal(2)) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut reg = Running::start(&mut command, &["register", "web", "n1", "--ttl", "30"]);
    reg.expect("registered", |l| {
        l.starts_with("registered /services/web/n1")
    });
    // The signal masks of the process, once it handles signals (it does before it registers).
    let status = std::fs::read_to_string(format!("/proc/{}/status", reg.child.id())).unwrap();
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
            .unwrap()
    };
    let bits = |signals: &[libc::c_int]| signals.iter().fold(0u64, |m, s| m | 1 << (s - 1));
    let (ignored, caught) = (mask("SigIgn:"), mask("SigCgt:"));
    assert_eq!(
        (
            ignored & bits(&[libc::SIGHUP, libc::SIGINT]),
            caught & bits(&[libc::SIGHUP, libc::SIGINT, libc::SIGTERM])
        ),
        (bits(&[libc::SIGHUP, libc::SIGINT]), bits(&[libc::SIGTERM])),
        "SIGHUP and SIGINT still ignored, SIGTERM handled"
    );
    reg.signal(libc::SIGHUP);
    reg.wait_delivered(libc::SIGHUP);
    assert!(etcd.get("/services/web/n1").unwrap().is_some());
    reg.signal(libc::SIGTERM);
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(rest, vec!["unregistered /services/web/n1".to_string()]);
}

#[test]
fn register_reports_an_etcd_restart_and_comes_back() {
    let etcd = etcd();
    let mut reg = Running::start(
        &mut at(&etcd),
        &["register", "api", "n1", "a=1", "--ttl", "3s", "--json"],
    );
    let first = reg.expect_event("registered");

    etcd.kill(0).unwrap();
    let lost = reg.expect_event("keepalive_lost");
    assert!(
        lost["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{lost}"
    );
    let retrying = reg.expect_event("retrying");
    assert!(retrying["attempt"].as_u64().unwrap() >= 1, "{retrying}");
    assert!(retrying["delay_ms"].as_u64().is_some(), "{retrying}");

    etcd.start(0).unwrap();
    let back = reg.expect_event("reregistered");
    assert_eq!(back["key"], "/services/api/n1");
    assert_eq!(
        back["lease_id_hex"].as_str(),
        Some(format!("{:016x}", back["lease_id"].as_i64().unwrap()).as_str())
    );
    assert!(
        back["lease_id"].as_i64().unwrap() > 0,
        "{back} after {first}"
    );
    assert_eq!(
        etcd.get("/services/api/n1").unwrap().as_deref(),
        Some(r#"{"a":"1"}"#)
    );

    // The human lines of the same story.
    let mut text = Running::start(&mut at(&etcd), &["register", "web", "n1", "--ttl", "3s"]);
    text.expect("registered", |l| {
        l.starts_with("registered /services/web/n1 lease=")
    });
    etcd.kill(0).unwrap();
    text.expect("keep-alive lost", |l| l.starts_with("keep-alive lost: "));
    text.expect("retrying", |l| {
        l.starts_with("retrying in ") && l.contains("(attempt ")
    });
    etcd.start(0).unwrap();
    text.expect("re-registered", |l| {
        l.starts_with("re-registered /services/web/n1 lease=")
    });

    for running in [reg, text] {
        running.signal(libc::SIGINT);
        let (code, rest, stderr) = running.finish();
        assert_eq!(code, 0, "stderr: {stderr}");
        assert!(
            rest.last().is_some_and(|l| l.contains("unregistered")),
            "{rest:?}"
        );
    }
    assert!(etcd.get_prefix("/services/").unwrap().is_empty());
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let nowhere = format!("127.0.0.1:{}", closed_port());
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage:"),
        (&["list"], "<SERVICE>"),
        (&["register", "api"], "<NODE>"),
        (&["register", "api", "n1", "address"], "is not KEY=VALUE"),
        (&["register", "api", "n1", "=x"], "empty KEY"),
        (
            &["register", "api", "n1", "--ttl", "soon"],
            "not a duration",
        ),
        (
            &["register", "api", "n1", "--ttl", "0"],
            "ttl must be greater than zero",
        ),
        (
            &["register", "api", "n1", "a=1", "a=2"],
            "\"a\" is given twice",
        ),
        (&["register", "", "n1"], "service name must not be empty"),
        (&["list", ""], "service name must not be empty"),
        (
            &["--endpoints", "no port", "list", "api"],
            "malformed endpoint",
        ),
        (
            &["--password", "p", "list", "api"],
            "password was given without a username",
        ),
        (
            &["--timeout", "0", "list", "api"],
            "timeout must be greater than zero",
        ),
        (
            &[
                "--password-file",
                "/nonexistent/pw",
                "--user",
                "u",
                "list",
                "api",
            ],
            "cannot read the password file",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, message) in cases {
        let out = run(&mut program(&nowhere), args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{args:?}: {:?}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
    }
}

#[test]
fn unreachable_etcd_exits_3_and_names_the_endpoint() {
    let nowhere = format!("127.0.0.1:{}", closed_port());
    for args in [
        &["list", "api"][..],
        &["services"],
        &["watch", "api"],
        &["--json", "list", "api"],
    ] {
        let out = run(&mut program(&nowhere), args);
        assert_eq!(out.code, 3, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("etcd-registry: "),
            "{:?}",
            out.stderr
        );
        assert!(out.stderr.contains(&nowhere), "{args:?}: {:?}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "one line: {:?}", out.stderr);
        assert_eq!(out.stdout, "");
    }

    // A server that accepts connections and never answers: the timeout, same status.
    let etcd = EtcdCluster::builder()
        .proxy(true)
        .start()
        .expect("etcd behind a proxy");
    etcd.partition().unwrap();
    let out = run(&mut at(&etcd), &["--timeout", "1s", "list", "api"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("timeout"), "{:?}", out.stderr);
}

#[test]
fn credentials_from_flags_environment_or_file_and_auth_failure_exits_4() {
    let etcd = etcd();
    etcd.enable_auth("svc", "s3cret").unwrap();
    etcd.put("/services/api/n1", "{}").unwrap();

    let env = run(
        at(&etcd)
            .env("ETCD_USERNAME", "svc")
            .env("ETCD_PASSWORD", "s3cret"),
        &["list", "api"],
    );
    assert_eq!(
        (env.code, env.stdout.as_str()),
        (0, "n1\n"),
        "{}",
        env.stderr
    );

    let file = etcd.base_dir().join("password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let from_file = run(
        &mut at(&etcd),
        &[
            "--user",
            "svc",
            "--password-file",
            file.to_str().unwrap(),
            "list",
            "api",
        ],
    );
    assert_eq!(
        (from_file.code, from_file.stdout.as_str()),
        (0, "n1\n"),
        "{}",
        from_file.stderr
    );

    let wrong = run(
        at(&etcd)
            .env("ETCD_USERNAME", "svc")
            .env("ETCD_PASSWORD", "wrong"),
        &["list", "api"],
    );
    assert_eq!(wrong.code, 4, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("authentication"),
        "{:?}",
        wrong.stderr
    );
    assert!(
        !wrong.stderr.contains("wrong"),
        "the password is not echoed: {:?}",
        wrong.stderr
    );

    // register does not retry forever on bad credentials: it says so and exits 4.
    let reg = run(
        at(&etcd)
            .env("ETCD_USERNAME", "svc")
            .env("ETCD_PASSWORD", "wrong"),
        &["register", "api", "n2"],
    );
    assert_eq!(reg.code, 4, "{}", reg.stderr);
    assert!(
        reg.stdout.starts_with("failed: authentication"),
        "{:?}",
        reg.stdout
    );
    assert!(
        reg.stdout
            .trim_end()
            .ends_with("unregistered /services/api/n2"),
        "{:?}",
        reg.stdout
    );
    assert!(
        !reg.stdout.contains("retrying"),
        "no retry is announced, as none is made: {:?}",
        reg.stdout
    );

    // No credentials at all.
    let none = run(&mut at(&etcd), &["list", "api"]);
    assert_eq!(none.code, 4, "{}", none.stderr);
}

#[test]
fn help_explains_commands_exit_statuses_and_environment() {
    let nowhere = format!("127.0.0.1:{}", closed_port());
    let help = run(&mut program(&nowhere), &["--help"]);
    assert_eq!(help.code, 0);
    for needle in [
        "list",
        "watch",
        "register",
        "services",
        "--endpoints",
        "ETCD_ENDPOINTS",
        "ETCD_REGISTRY_BASE_PATH",
        "ETCD_USERNAME",
        "--password-file",
        "--cacert",
        "--json",
        "Exit status",
        "etcd unreachable",
        "authentication failed",
    ] {
        assert!(
            help.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            help.stdout
        );
    }
    assert!(
        !help.stdout.contains("[env: ETCD_PASSWORD="),
        "password values stay hidden"
    );

    let reg = run(&mut program(&nowhere), &["register", "--help"]);
    assert_eq!(reg.code, 0);
    for needle in ["KEY=VALUE", "--ttl", "SIGINT", "re-registered"] {
        assert!(
            reg.stdout.contains(needle),
            "register --help lacks {needle:?}"
        );
    }
    let version = run(&mut program(&nowhere), &["--version"]);
    assert_eq!(version.code, 0);
    assert!(
        version.stdout.starts_with("etcd-registry "),
        "{}",
        version.stdout
    );
}

#[test]
fn watch_ends_quietly_when_its_reader_goes_away() {
    let etcd = etcd();
    etcd.put("/services/api/n1", "{}").unwrap();
    // `etcd-registry watch api | head -1`
    let mut child = at(&etcd)
        .args(["watch", "api"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "added n1\n");
    // The reader is gone; the next event cannot be written.
    etcd.put("/services/api/n2", "{}").unwrap();
    let code = wait_exit(&mut child, &["watch", "api"]);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn register_waits_for_etcd_and_says_when_it_cannot_delete_the_key() {
    let etcd = etcd();
    etcd.kill(0).unwrap();
    // etcd is down when the node is registered: the attempts fail and retry.
    let mut reg = Running::start(&mut at(&etcd), &["register", "api", "n1", "--ttl", "3s"]);
    // Each attempt waits for etcd up to the timeout, then fails naming the endpoint and cause.
    reg.expect("failed", |l| {
        l.starts_with("failed: timeout: ") && l.contains("cannot reach etcd at ")
    });
    reg.expect("retrying", |l| l.starts_with("retrying in "));
    etcd.start(0).unwrap();
    reg.expect("registered", |l| {
        l.starts_with("registered /services/api/n1 ")
    });
    assert!(etcd.get("/services/api/n1").unwrap().is_some());

    // Interrupted while etcd is down: the key cannot be deleted now, and the program says so.
    etcd.kill(0).unwrap();
    reg.expect("keep-alive lost", |l| l.starts_with("keep-alive lost: "));
    reg.signal(libc::SIGINT);
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 3, "stderr: {stderr}");
    // No line claims the key is gone while it may still be there.
    assert!(
        !rest.iter().any(|l| l.starts_with("unregistered")),
        "{rest:?}"
    );
    assert!(
        stderr.contains("the key disappears when its lease expires, within 3 s"),
        "{stderr:?}"
    );
    // And it does: nothing keeps the lease alive any more.
    etcd.start(0).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while etcd.get("/services/api/n1").unwrap().is_some() {
        assert!(Instant::now() < deadline, "the key outlived its lease");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Ctrl-C deletes the key, which waits for etcd (up to --timeout); Ctrl-C again gives up on
/// that at once, as the user asked, and says what becomes of the key.
#[test]
fn register_interrupted_twice_does_not_wait_for_a_silent_etcd() {
    let etcd = etcd();
    let mut reg = Running::start(
        &mut at(&etcd),
        &["register", "api", "n1", "--ttl", "12s", "--timeout", "300s"],
    );
    reg.expect("registered", |l| {
        l.starts_with("registered /services/api/n1 ")
    });
    // etcd stops answering: the delete waits for it (while the lease is kept alive, for up to a
    // sixth of the TTL).
    etcd.pause(0).unwrap();
    // Signals sent together may arrive as one: Ctrl-C again and again, as a user would, until
    // it exits.
    let deadline = Instant::now() + DEADLINE;
    while reg.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        reg.signal(libc::SIGINT);
        thread::sleep(Duration::from_millis(100));
    }
    let (code, rest, stderr) = reg.finish();
    etcd.resume(0).unwrap();
    assert_eq!(code, 3, "stderr: {stderr}");
    assert!(
        stderr.contains("interrupted again before etcd confirmed the key's deletion")
            && stderr.contains("within 12 s"),
        "{stderr:?}"
    );
    assert!(
        !rest.iter().any(|l| l.starts_with("unregistered")),
        "{rest:?}"
    );
    let deadline = Instant::now() + DEADLINE;
    while etcd.get("/services/api/n1").unwrap().is_some() {
        assert!(Instant::now() < deadline, "the key outlived its lease");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn watch_prints_the_difference_and_resynced_after_a_compaction_it_missed() {
    let etcd = EtcdCluster::builder()
        .proxy(true)
        .start()
        .expect("etcd behind a proxy");
    etcd.put("/services/api/stays", "{}").unwrap();
    etcd.put("/services/api/goes", "{}").unwrap();
    let mut watch = Running::start(&mut at(&etcd), &["watch", "api"]);
    watch.expect("added goes", |l| l == "added goes");
    watch.expect("added stays", |l| l == "added stays");

    // Changes the watcher cannot see, then their history compacted away.
    etcd.partition().unwrap();
    etcd.delete("/services/api/goes").unwrap();
    etcd.put("/services/api/new", r#"{"v":"x"}"#).unwrap();
    etcd.compact_to_latest().unwrap();
    etcd.heal().unwrap();

    watch.expect("resynced", |l| l == "resynced");
    let mut diff: Vec<String> = watch.seen[2..watch.seen.len() - 1].to_vec();
    diff.sort();
    assert_eq!(diff, ["added new v=x", "removed goes"]);
    watch.signal(libc::SIGINT);
    let (code, rest, stderr) = watch.finish();
    assert_eq!((code, rest.len(), stderr.as_str()), (0, 0, ""));
}

/// Over mutual TLS the program works with the CA, certificate and key given; a handshake that
/// fails (etcd's certificate not signed by the CA given) exits 5 with one line saying why, for
/// the one-shot commands and for `register`, which prints the failed attempt and retries no
/// more: the same files would fail again.
#[test]
fn tls_works_and_a_failed_handshake_exits_5() {
    let etcd = EtcdCluster::builder()
        .client_cert_auth(true)
        .start()
        .expect("start etcd with TLS");
    let f = etcd.tls().expect("TLS files").clone();
    let with = |ca: &std::path::Path| {
        let mut cmd = at(&etcd);
        cmd.env("ETCD_CACERT", ca)
            .env("ETCD_CERT", &f.client_cert)
            .env("ETCD_KEY", &f.client_key)
            .env("ETCD_TLS_SERVER_NAME", etcd_harness::tls::SERVER_NAME);
        cmd
    };
    etcd.put("/services/api/n1", r#"{"a":"1"}"#).unwrap();
    let out = run(&mut with(&f.ca), &["list", "api"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "n1 a=1\n"),
        "{}",
        out.stderr
    );

    for args in [&["list", "api"][..], &["services"], &["watch", "api"]] {
        let out = run(&mut with(&f.other_ca), args);
        assert_eq!(out.code, 5, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("etcd-registry: ") && out.stderr.contains("certificate"),
            "{args:?}: {:?}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "one line: {:?}", out.stderr);
        assert_eq!(out.stdout, "");
    }

    let out = run(&mut with(&f.other_ca), &["register", "api", "n2"]);
    assert_eq!(
        out.code, 5,
        "stdout: {:?}, stderr: {}",
        out.stdout, out.stderr
    );
    assert!(out.stderr.contains("certificate"), "{:?}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("failed: ") && l.contains("certificate")),
        "the failed attempt is printed: {:?}",
        out.stdout
    );
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("retrying")),
        "no retry is announced, as none is made: {:?}",
        out.stdout
    );
    assert_eq!(etcd.get("/services/api/n2").unwrap(), None);
}

#[test]
fn register_retries_a_failed_handshake_once_registered() {
    let etcd = EtcdCluster::builder()
        .tls(true)
        .start()
        .expect("start etcd with TLS");
    let f = etcd.tls().expect("TLS files").clone();
    // --cacert is a copy the test replaces, as an operator would on disk (by a rename, so the
    // program never reads half a file).
    let dir = etcd.base_dir().join("cli-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let replace_ca = |with: &std::path::Path| {
        let next = dir.join("ca.pem.new");
        std::fs::copy(with, &next).unwrap();
        std::fs::rename(&next, &ca).unwrap();
    };
    replace_ca(&f.ca);
    let mut reg = Running::start(
        at(&etcd).env("ETCD_TLS_SERVER_NAME", etcd_harness::tls::SERVER_NAME),
        &[
            "register",
            "api",
            "n1",
            "--ttl",
            "3s",
            "--json",
            "--cacert",
            ca.to_str().unwrap(),
        ],
    );
    reg.expect_event("registered");

    // Every new handshake fails from now on: etcd's certificate is not signed by the CA given.
    // A restart makes the program connect again.
    replace_ca(&f.other_ca);
    etcd.kill(0).unwrap();
    etcd.start(0).unwrap();
    let refused = reg.expect("a retry after a failed handshake", |line| {
        let event: Value = serde_json::from_str(line).expect("a JSON object per line");
        event["event"] == "retrying" && event["error_kind"] == "tls"
    });
    let refused: Value = serde_json::from_str(&refused).unwrap();
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("tls: ") && e.contains("certificate")),
        "{refused}"
    );
    assert!(
        !reg.seen.iter().any(|l| l.contains(r#""event":"failed""#)),
        "a failed handshake after registration is not printed as fatal: {:#?}",
        reg.seen
    );
    assert!(
        reg.child.try_wait().unwrap().is_none(),
        "register goes on after a failed handshake once registered: {:#?}",
        reg.seen
    );

    // The right CA back on disk: the next connection reads it, and the node comes back.
    replace_ca(&f.ca);
    let back = reg.expect_event("reregistered");
    assert_eq!(back["key"], "/services/api/n1");
    assert!(etcd.get("/services/api/n1").unwrap().is_some());

    reg.signal(libc::SIGINT);
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 0, "stdout: {rest:?}, stderr: {stderr}");
    assert_eq!(
        rest.last()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone()),
        Some(json!("unregistered")),
        "{rest:?}"
    );
    assert_eq!(etcd.get("/services/api/n1").unwrap(), None);
}

#[test]
fn register_exits_4_when_its_credentials_stop_working() {
    let etcd = etcd();
    etcd.enable_auth("svc", "s3cret").unwrap();
    let mut reg = Running::start(
        at(&etcd)
            .env("ETCD_USERNAME", "svc")
            .env("ETCD_PASSWORD", "s3cret"),
        &["register", "api", "n1", "--ttl", "2s"],
    );
    reg.expect("registered", |l| l.starts_with("registered "));

    // The user deleted by root while the node is registered. The lease's keep-alives go on
    // working (etcd does not check them against users), so the lease is revoked too, as if it
    // had expired during an outage: the next attempt to register is rejected.
    etcd.etcdctl(&["user", "delete", "svc"]).unwrap();
    let leases = etcd.lease_list().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    etcd.etcdctl(&["lease", "revoke", &format!("{:x}", leases[0])])
        .unwrap();
    let (code, rest, stderr) = reg.finish();
    assert_eq!(code, 4, "stdout: {rest:?}, stderr: {stderr}");
    assert!(stderr.contains("authentication"), "{stderr:?}");
    assert_eq!(
        rest.last().map(String::as_str),
        Some("unregistered /services/api/n1"),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains(": authentication")),
        "the rejected attempt is printed: {rest:?}"
    );
    assert!(
        !rest
            .iter()
            .any(|l| l.starts_with("retrying") && l.contains("authentication")),
        "no retry is announced after the rejection, as none is made: {rest:?}"
    );
    assert_eq!(etcd.get("/services/api/n1").unwrap(), None);
}

#[test]
fn watch_ends_when_its_reader_goes_away_from_a_quiet_service() {
    let etcd = etcd();
    etcd.put("/services/api/n1", "{}").unwrap();
    // `etcd-registry watch api | head -1`, and nothing changes afterwards: no write fails with
    // EPIPE, the closed pipe itself is noticed.
    let mut child = at(&etcd)
        .args(["watch", "api"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "added n1\n");
    drop(reader);
    let code = wait_exit(&mut child, &["watch", "api"]);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn register_keeps_the_node_while_stdout_is_not_read() {
    let etcd = etcd();
    let (read_end, mut child, stderr) =
        with_full_stdout(&etcd, &["register", "api", "n1", "a=1", "--ttl", "2s"]);
    let deadline = Instant::now() + DEADLINE;
    while etcd.get("/services/api/n1").unwrap().is_none() {
        assert!(Instant::now() < deadline, "never registered");
        thread::sleep(Duration::from_millis(50));
    }
    let leases = etcd.lease_list().unwrap();
    // The one wait on time itself: past twice the TTL, a lease no longer kept alive (the
    // program stuck writing `registered`) has expired and taken the key with it.
    thread::sleep(Duration::from_secs(5));
    assert_eq!(
        etcd.get("/services/api/n1").unwrap().as_deref(),
        Some(r#"{"a":"1"}"#),
        "the key is gone before 2 x TTL"
    );
    assert_eq!(etcd.lease_list().unwrap(), leases, "the same lease");

    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let code = wait_exit(&mut child, &["register"]);
    let stderr = stderr.join().unwrap();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stderr.contains("stdout was not read"),
        "the lost lines are said: {stderr:?}"
    );
    assert_eq!(etcd.get("/services/api/n1").unwrap(), None);
    drop(read_end);
}

/// `register` with its log on a stderr nobody reads (`--log debug 2>&1 | less` left on a page)
/// keeps its lease alive and stops on a signal: the log lines wait on a thread of their own,
/// not on the one that keeps the lease and handles signals.
#[test]
fn register_keeps_the_node_and_stops_on_a_signal_while_stderr_is_not_read() {
    let etcd = etcd();
    let (read_end, full) = full_pipe();
    let mut child = at(&etcd)
        .args(["--log", "debug", "register", "api", "n1", "--ttl", "6s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(full))
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = lines.recv_timeout(DEADLINE);
    if line.is_err() {
        let _ = child.kill();
    }
    let line = line.expect("registered (with its log waiting for stderr)");
    assert!(line.starts_with("registered /services/api/n1"), "{line:?}");
    // Keep-alives go on: the lease's remaining time goes back up (every TTL/3).
    let lease = etcd.lease_list().unwrap()[0];
    let ttl = || etcd.lease_ttl(lease).unwrap();
    let mut lowest = ttl();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = ttl();
        if now > lowest {
            break;
        }
        lowest = now;
        assert!(
            Instant::now() < deadline && now > 0,
            "the lease is not kept alive"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert_eq!(wait_exit(&mut child, &["register"]), 0);
    assert_eq!(
        lines.iter().collect::<Vec<_>>(),
        ["unregistered /services/api/n1"]
    );
    assert_eq!(etcd.get("/services/api/n1").unwrap(), None);
    drop(read_end);
}

/// `watch` writing to a stdout nobody reads (a stalled pipe, a terminal paused by Ctrl-S) still
/// stops on a signal: its lines wait on a thread of their own, not on the one that handles
/// signals.
#[test]
fn watch_stops_on_a_signal_while_its_reader_does_not_read() {
    let etcd = etcd();
    etcd.put("/services/api/n1", "{}").unwrap();
    let (read_end, mut child, stderr) = with_full_stdout(&etcd, &["watch", "api"]);
    // Until a thread of the program waits in its write of `added n1` to the full pipe.
    let deadline = Instant::now() + DEADLINE;
    let tasks = format!("/proc/{}/task", child.id());
    while !std::fs::read_dir(&tasks).unwrap().flatten().any(|task| {
        std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w.contains("pipe_write"))
    }) {
        assert!(Instant::now() < deadline, "never blocked writing to stdout");
        thread::sleep(Duration::from_millis(20));
    }

    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let code = wait_exit(&mut child, &["watch"]);
    let stderr = stderr.join().unwrap();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stderr.contains("stdout was not read: the last lines not written"),
        "the lost lines are said: {stderr:?}"
    );
    drop(read_end);
}

/// Starts the program with `args`, its stdout a pipe that nobody reads and that is already
/// full (every write to it blocks), its stderr read by a thread. Returns the pipe's read end
/// (to keep it open until the end), the child, and the thread giving its stderr.
fn with_full_stdout(
    etcd: &EtcdCluster,
    args: &[&str],
) -> (std::os::fd::OwnedFd, Child, thread::JoinHandle<String>) {
    let (read_end, full) = full_pipe();
    let mut child = at(etcd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    (read_end, child, stderr)
}

/// A pipe that nobody reads and that is already full (every write to it blocks): its read
/// end (to keep open until the end) and its write end.
fn full_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`; each is owned once below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), fds[1]) };
    // SAFETY: fcntl and write on the descriptor just made, from a local buffer.
    unsafe {
        assert_eq!(libc::fcntl(write_end, libc::F_SETFL, libc::O_NONBLOCK), 0);
        let chunk = [b'x'; 4096];
        while libc::write(write_end, chunk.as_ptr().cast(), chunk.len()) > 0 {}
        assert_eq!(libc::fcntl(write_end, libc::F_SETFL, 0), 0);
    }
    // SAFETY: the write end is owned here alone.
    (read_end, unsafe { OwnedFd::from_raw_fd(write_end) })
}

/// Puts `{}` under each key, 100 keys per transaction (etcd allows 128 operations in one).
fn put_many(etcd: &EtcdCluster, keys: &[String]) {
    use std::io::Write;
    for batch in keys.chunks(100) {
        let mut txn = String::from("\n");
        for key in batch {
            txn.push_str(&format!("put {key} \"{{}}\"\n"));
        }
        txn.push_str("\n\n");
        let mut child = Command::new(etcd_harness::etcdctl_binary().unwrap())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.direct_endpoints().join(",")))
            .arg("txn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(txn.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.starts_with(b"SUCCESS"),
            "etcdctl txn: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn watch_prints_every_node_of_a_service_larger_than_the_event_queue() {
    let etcd = etcd();
    // More nodes than the library's event queue holds before it starts merging (1024): the
    // watch queues one `added` per node before it returns, all 1500 unread at once before the
    // program prints any; then all are deleted in one revision. A queue that dropped events
    // (as it did before it merged) would leave nodes unprinted; merging changes nothing here,
    // since no node has two unread events. No compaction: never a `resynced` line.
    let names: Vec<String> = (0..1500).map(|i| format!("n{i:04}")).collect();
    let keys: Vec<String> = names.iter().map(|n| format!("/services/big/{n}")).collect();
    put_many(&etcd, &keys);

    let mut watch = Running::start(&mut at(&etcd), &["watch", "big"]);
    let mut missing: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    while !missing.is_empty() {
        let line = watch.expect("added for every node", |_| true);
        let name = line
            .strip_prefix("added ")
            .unwrap_or_else(|| panic!("{line:?} before every node was added"));
        assert!(missing.remove(name), "{name} added twice or unknown");
    }

    etcd.etcdctl(&["del", "--prefix", "/services/big/"])
        .unwrap();
    let mut missing: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    while !missing.is_empty() {
        let line = watch.expect("removed for every node", |_| true);
        let name = line
            .strip_prefix("removed ")
            .unwrap_or_else(|| panic!("{line:?} before every node was removed"));
        assert!(missing.remove(name), "{name} removed twice or unknown");
    }
    watch.signal(libc::SIGTERM);
    let (code, rest, stderr) = watch.finish();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(rest.is_empty(), "nothing after the removals: {rest:?}");
}

#[test]
fn a_password_on_the_command_line_wins_over_a_password_file_from_the_environment() {
    let etcd = etcd();
    etcd.enable_auth("svc", "s3cret").unwrap();
    etcd.put("/services/api/n1", "{}").unwrap();
    let right = etcd.base_dir().join("right-password");
    let wrong = etcd.base_dir().join("wrong-password");
    std::fs::write(&right, "s3cret\n").unwrap();
    std::fs::write(&wrong, "wrong\n").unwrap();
    let (right, wrong) = (right.to_str().unwrap(), wrong.to_str().unwrap());

    // (environment, command line, expected status): the command line wins over the
    // environment; given the same way, the file wins over the password.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], i32);
    let cases: &[Case] = &[
        (
            &[("ETCD_PASSWORD_FILE", wrong)],
            &["--password", "s3cret", "list", "api"],
            0,
        ),
        // A global flag after the subcommand is on the command line too.
        (
            &[("ETCD_PASSWORD_FILE", wrong)],
            &["list", "api", "--password", "s3cret"],
            0,
        ),
        (
            &[("ETCD_PASSWORD", "s3cret")],
            &["--password-file", wrong, "list", "api"],
            4,
        ),
        (
            &[("ETCD_PASSWORD", "wrong")],
            &["--password-file", right, "list", "api"],
            0,
        ),
        (
            &[("ETCD_PASSWORD", "wrong"), ("ETCD_PASSWORD_FILE", right)],
            &["list", "api"],
            0,
        ),
        (
            &[("ETCD_PASSWORD", "s3cret"), ("ETCD_PASSWORD_FILE", wrong)],
            &["list", "api"],
            4,
        ),
        (
            &[],
            &[
                "--password",
                "wrong",
                "--password-file",
                right,
                "list",
                "api",
            ],
            0,
        ),
        (
            &[],
            &[
                "--password-file",
                wrong,
                "list",
                "api",
                "--password",
                "s3cret",
            ],
            4,
        ),
    ];
    for (vars, args, code) in cases {
        let mut cmd = at(&etcd);
        cmd.env("ETCD_USERNAME", "svc").envs(vars.iter().copied());
        let out = run(&mut cmd, args);
        assert_eq!(out.code, *code, "{vars:?} {args:?}: {}", out.stderr);
        if *code == 0 {
            assert_eq!(out.stdout, "n1\n", "{vars:?} {args:?}");
        } else {
            assert!(
                out.stderr.contains("authentication"),
                "{vars:?} {args:?}: {:?}",
                out.stderr
            );
        }
    }
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let etcd = etcd();
    etcd.put("/services/api/n1", r#"{"a":"1"}"#).unwrap();
    // As a script or a compose file leaves them: `ETCD_PASSWORD=${PW}` with PW unset.
    let mut cmd = at(&etcd);
    for var in ENV.iter().filter(|var| **var != "ETCD_ENDPOINTS") {
        cmd.env(var, "");
    }
    let out = run(&mut cmd, &["list", "api"]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "n1 a=1\n", ""),
        "no credentials, no TLS, the default base path, timeout and log level"
    );

    // An empty ETCD_ENDPOINTS is the default endpoint (127.0.0.1:2379), not an empty or
    // malformed list: the same rule, checked by the unit test
    // `variables_set_empty_are_the_ones_unset` (here it would dial that fixed port).

    // A flag given empty on the command line is not an absent one: still a usage error.
    for flag in ["--cacert", "--password-file"] {
        let out = run(&mut at(&etcd), &[flag, "", "list", "api"]);
        assert_eq!(out.code, 2, "{flag}: {}", out.stderr);
    }
}
