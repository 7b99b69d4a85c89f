//! Proves the harness itself works against a real etcd.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_harness::EtcdCluster;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-harness");

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 keep-alive `GET /health` on an existing connection.
/// Ok(true) = healthy answer, Err = timeout / closed.
fn health_on(conn: &mut TcpStream, timeout: Duration) -> std::io::Result<bool> {
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: etcd\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if text.contains("\"health\"") && text.trim_end().ends_with('}') {
            return Ok(text.contains("\"health\":\"true\""));
        }
    }
}

/// The request got no answer at all (timed out, connection still open).
fn is_silent(r: std::io::Result<bool>) -> bool {
    matches!(r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

fn connect(ep: &str) -> TcpStream {
    TcpStream::connect_timeout(&ep.parse().unwrap(), Duration::from_secs(1)).unwrap()
}

#[test]
fn single_member_data_kill_restart_pause_leases_compact() {
    let etcd = EtcdCluster::start_single().unwrap();
    assert_eq!(etcd.len(), 1);
    assert_eq!(etcd.endpoints(), etcd.direct_endpoints());
    assert!(etcd.endpoint(0).starts_with("127.0.0.1:"));

    etcd.put("/t/a", "1").unwrap();
    etcd.put("/t/b", "two words").unwrap();
    etcd.put("/t/empty", "").unwrap();
    etcd.put("/u/x", "-dash").unwrap();
    assert_eq!(
        etcd.get_prefix("/t/").unwrap(),
        vec![
            ("/t/a".to_string(), "1".to_string()),
            ("/t/b".to_string(), "two words".to_string()),
            ("/t/empty".to_string(), String::new()),
        ]
    );
    assert_eq!(etcd.get("/u/x").unwrap().as_deref(), Some("-dash"));
    assert_eq!(etcd.get("/nope").unwrap(), None);
    assert_eq!(etcd.delete("/t/empty").unwrap(), 1);
    assert_eq!(etcd.delete("/t/empty").unwrap(), 0);

    // Leases.
    assert_eq!(etcd.lease_count().unwrap(), 0);
    let lease = etcd.lease_grant(60).unwrap();
    etcd.put_with_lease("/t/leased", "v", lease).unwrap();
    assert_eq!(etcd.lease_list().unwrap(), vec![lease]);
    etcd.lease_revoke(lease).unwrap();
    assert_eq!(etcd.lease_count().unwrap(), 0);
    assert_eq!(etcd.get("/t/leased").unwrap(), None);

    // Compaction.
    let rev = etcd.compact_to_latest().unwrap();
    assert!(rev >= 5, "revision {rev}");
    let err = etcd
        .etcdctl(&["get", "/t/a", &format!("--rev={}", rev - 1)])
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");

    // Kill + restart keeps data (same data dir and ports).
    let pid = etcd.pid(0).unwrap();
    etcd.kill(0).unwrap();
    assert!(!etcd.is_running(0));
    assert!(TcpStream::connect(etcd.endpoint(0)).is_err());
    etcd.restart(0).unwrap();
    assert_ne!(etcd.pid(0).unwrap(), pid);
    assert_eq!(etcd.get("/t/a").unwrap().as_deref(), Some("1"));

    // Pause: TCP connects, but nothing answers; resume: answers again.
    etcd.pause(0).unwrap();
    assert!(etcd.is_paused(0));
    assert!(!etcd.is_healthy(0, Duration::from_millis(300)));
    etcd.resume(0).unwrap();
    assert!(etcd.is_healthy(0, Duration::from_secs(5)));

    // Graceful stop / start.
    etcd.stop(0).unwrap();
    assert!(!etcd.is_running(0));
    etcd.start(0).unwrap();
    etcd.wait_healthy(0).unwrap();
    assert_eq!(etcd.get("/t/b").unwrap().as_deref(), Some("two words"));
    assert!(std::fs::metadata(etcd.log_path(0)).is_ok());

    // Drop removes the temp dir and the process.
    let dir = etcd.base_dir().to_path_buf();
    let pid = etcd.pid(0).unwrap();
    drop(etcd);
    assert!(!dir.exists());
    // SAFETY: signal 0 only probes for existence.
    assert_ne!(
        unsafe { libc::kill(pid as i32, 0) },
        0,
        "etcd survived drop"
    );
}

/// A member's port taken while it is down (by another process, or as a connection's local port):
/// `restart` and `start` start it again until the port is free (within the start timeout), with
/// and without TLS (where `start` asks the metrics port whether etcd serves).
#[test]
fn restart_and_start_wait_while_a_member_port_is_taken() {
    for tls in [false, true] {
        restart_and_start_wait_while_the_client_port_is_taken(tls);
    }
}

fn restart_and_start_wait_while_the_client_port_is_taken(tls: bool) {
    let etcd = EtcdCluster::builder().tls(tls).start().unwrap();
    etcd.put("/t/a", "1").unwrap();
    for use_start in [false, true] {
        etcd.kill(0).unwrap();
        let squatter = std::net::TcpListener::bind(etcd.direct_endpoint(0)).unwrap();
        let logged = std::fs::read(etcd.log_path(0)).unwrap().len();
        std::thread::scope(|s| {
            let started = s.spawn(|| {
                if use_start {
                    etcd.start(0)
                } else {
                    etcd.restart(0)
                }
            });
            wait_until(
                "etcd to find its port taken",
                Duration::from_secs(20),
                || {
                    let log = std::fs::read(etcd.log_path(0)).unwrap();
                    String::from_utf8_lossy(&log[logged..]).contains("address already in use")
                },
            );
            drop(squatter);
            started.join().unwrap().unwrap();
        });
        etcd.wait_healthy(0).unwrap();
        assert_eq!(etcd.get("/t/a").unwrap().as_deref(), Some("1"));
    }
}

#[test]
fn proxy_partition_heal_and_reset() {
    let etcd = EtcdCluster::builder().proxy(true).start().unwrap();
    assert!(etcd.has_proxy());
    let ep = etcd.endpoint(0);
    assert_ne!(ep, etcd.direct_endpoint(0));

    let mut old = connect(&ep);
    assert!(health_on(&mut old, Duration::from_secs(5)).unwrap());

    etcd.partition().unwrap();
    assert!(etcd.is_partitioned(0));
    // Existing connection: silence.
    assert!(is_silent(health_on(&mut old, Duration::from_millis(400))));
    // New connection: accepted, but silence too.
    let mut during = connect(&ep);
    assert!(is_silent(health_on(
        &mut during,
        Duration::from_millis(400)
    )));
    // The harness's own helpers bypass the proxy.
    etcd.put("/p/k", "v").unwrap();

    etcd.heal().unwrap();
    // Blackholed connections are closed at heal.
    let mut b = [0u8; 64];
    old.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    loop {
        match old.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue, // late bytes are discarded data, never forwarded
        }
    }
    during
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(matches!(during.read(&mut b), Ok(0) | Err(_)));
    // New connections work again.
    let mut fresh = connect(&ep);
    assert!(health_on(&mut fresh, Duration::from_secs(5)).unwrap());

    // reset_connections closes live connections; reconnecting works.
    etcd.reset_connections().unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(matches!(fresh.read(&mut b), Ok(0) | Err(_)));
    let mut again = connect(&ep);
    assert!(health_on(&mut again, Duration::from_secs(5)).unwrap());

    // Per-member partition.
    etcd.partition_member(0).unwrap();
    let mut c = connect(&ep);
    assert!(is_silent(health_on(&mut c, Duration::from_millis(300))));
    etcd.heal_member(0).unwrap();
    let mut c = connect(&ep);
    assert!(health_on(&mut c, Duration::from_secs(5)).unwrap());
}

#[test]
fn three_members_leader_failover_and_auth() {
    let etcd = EtcdCluster::builder().members(3).start().unwrap();
    assert_eq!(etcd.endpoints().len(), 3);
    assert!(etcd.partition().is_err(), "no proxy => partition refused");
    let leader = etcd.leader().unwrap();
    etcd.put("/c/k", "before").unwrap();

    etcd.kill(leader).unwrap();
    let new_leader = etcd.leader().unwrap();
    assert_ne!(new_leader, leader);
    etcd.put("/c/k", "after").unwrap();
    assert_eq!(etcd.get("/c/k").unwrap().as_deref(), Some("after"));

    etcd.restart(leader).unwrap();
    wait_until(
        "restarted member catches up",
        Duration::from_secs(10),
        || {
            etcd.etcdctl_as(
                None,
                &[
                    &format!("--endpoints={}", etcd.direct_endpoint(leader)),
                    "get",
                    "/c/k",
                    "--print-value-only",
                ],
            )
            .map(|s| s.trim() == "after")
            .unwrap_or(false)
        },
    );

    // Auth: unauthenticated clients fail, the named user and the harness work.
    etcd.enable_auth("alice", "s3cret").unwrap();
    let err = etcd.etcdctl_as(None, &["put", "/c/x", "y"]).unwrap_err();
    assert!(err.to_string().contains("user name is empty"), "{err}");
    etcd.etcdctl_as(Some("alice:s3cret"), &["put", "/c/x", "y"])
        .unwrap();
    assert!(etcd
        .etcdctl_as(Some("alice:wrong"), &["get", "/c/x"])
        .is_err());
    assert_eq!(etcd.get("/c/x").unwrap().as_deref(), Some("y"));
    // Health (and so restart) still works with auth on.
    etcd.restart(new_leader).unwrap();
    etcd.compact_to_latest().unwrap();

    // Every member down: start() brings one back without waiting for a quorum it cannot have
    // alone, then the next; together they have one again.
    for i in 0..3 {
        etcd.kill(i).unwrap();
    }
    etcd.start(0).unwrap();
    assert!(etcd.is_running(0));
    etcd.start(1).unwrap();
    etcd.start(2).unwrap();
    etcd.wait_all_healthy().unwrap();
    assert_eq!(etcd.get("/c/k").unwrap().as_deref(), Some("after"));
}

/// What member `i` alone holds at `key` (a serializable read: no quorum asked).
fn local_get(etcd: &EtcdCluster, i: usize, key: &str) -> Option<String> {
    etcd.etcdctl_on(i, &["get", key, "--consistency=s", "--print-value-only"])
        .ok()
        .map(|s| s.trim().to_string())
}

/// The leader member `i` knows of: 0 for none (JSON leaves a zero field out), `u64::MAX` when
/// its status could not be read.
fn leader_seen_by(etcd: &EtcdCluster, i: usize) -> u64 {
    match etcd.status(i) {
        Ok(st) => match st.get("leader") {
            None => 0,
            Some(Value::String(s)) => s.parse().unwrap_or(u64::MAX),
            Some(v) => v.as_u64().unwrap_or(u64::MAX),
        },
        Err(_) => u64::MAX,
    }
}

#[test]
fn peer_proxies_isolate_a_member_from_its_peers_and_rejoin_it() {
    let plain = EtcdCluster::builder().members(1).start().unwrap();
    assert!(
        plain.isolate(0).is_err(),
        "no peer proxies => isolate refused"
    );
    drop(plain);

    let etcd = EtcdCluster::builder()
        .members(3)
        .peer_proxies(true)
        .start()
        .unwrap();
    etcd.put("/p/k", "before").unwrap();
    let cut = etcd.leader().unwrap();
    etcd.isolate(cut).unwrap();
    // The cut-off leader steps down and finds no leader; the other two elect one among them.
    wait_until(
        "the cut-off member has no leader",
        Duration::from_secs(10),
        || leader_seen_by(&etcd, cut) == 0,
    );
    let other = (cut + 1) % 3;
    let cut_id = etcd.member_id(cut).unwrap();
    wait_until(
        "the others have a new leader",
        Duration::from_secs(10),
        || {
            let l = leader_seen_by(&etcd, other);
            l != 0 && l != u64::MAX && l != cut_id
        },
    );
    etcd.etcdctl_on(other, &["put", "/p/k", "after"]).unwrap();
    // Its clients still reach it, but it does not see the majority's write.
    assert_eq!(local_get(&etcd, cut, "/p/k").as_deref(), Some("before"));
    assert_eq!(local_get(&etcd, other, "/p/k").as_deref(), Some("after"));

    etcd.rejoin_all().unwrap();
    wait_until("the member catches up", Duration::from_secs(15), || {
        local_get(&etcd, cut, "/p/k").as_deref() == Some("after")
    });
    etcd.wait_all_healthy().unwrap();
}

fn read_json(r: &mut impl BufRead) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
}

#[test]
fn serve_binary_round_trip_and_ctl() {
    let mut child = Command::new(BIN)
        .args(["serve", "--proxy"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let hello = read_json(&mut out);
    assert_eq!(hello["ok"], true, "{hello}");
    let endpoints = hello["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let control = hello["control"].as_str().unwrap().to_string();
    let pid = hello["pids"][0].as_u64().unwrap() as i32;
    let base_dir = hello["base_dir"].as_str().unwrap().to_string();

    let mut cmd = |line: &str| -> Value {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        read_json(&mut out)
    };
    assert_eq!(cmd("put /s/a hello world"), serde_json::json!({"ok": true}));
    assert_eq!(cmd("put /s/e"), serde_json::json!({"ok": true}));
    assert_eq!(
        cmd("get-prefix /s/")["value"],
        serde_json::json!([["/s/a", "hello world"], ["/s/e", ""]])
    );
    assert_eq!(cmd("leader")["value"], 0);
    assert_eq!(cmd("lease-count")["value"], 0);
    assert_eq!(cmd("delete /s/e")["value"], 1);
    let bad = cmd("kill 7");
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("out of range"));
    assert_eq!(cmd("frobnicate")["ok"], false);

    // The same protocol over the control socket, via `ctl`.
    let ctl = |args: &[&str]| {
        let o = Command::new(BIN)
            .arg("ctl")
            .arg(&control)
            .args(args)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.success(), v)
    };
    let (ok, v) = ctl(&["kill", "0"]);
    assert!(ok, "{v}");
    // SAFETY: signal 0 only probes for existence (the harness reaped it).
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0);
    let (ok, v) = ctl(&["restart", "0"]);
    assert!(ok, "{v}");
    let (ok, v) = ctl(&["get", "/s/a"]);
    assert!(ok);
    assert_eq!(v["value"], "hello world");
    let (ok, v) = ctl(&["partition"]);
    assert!(ok, "{v}");
    let (ok, v) = ctl(&["heal"]);
    assert!(ok, "{v}");
    let (ok, v) = ctl(&["nonsense"]);
    assert!(!ok);
    assert_eq!(v["ok"], false);
    let (ok, v) = ctl(&["pids"]);
    assert!(ok);
    let new_pid = v["value"][0].as_u64().unwrap() as i32;

    // EOF on stdin => everything is shut down, exit 0.
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // SAFETY: probe only.
    assert_ne!(unsafe { libc::kill(new_pid, 0) }, 0, "etcd survived");
    assert!(!std::path::Path::new(&base_dir).exists());
}

#[test]
fn run_binary_passes_env_and_exit_code() {
    let script = r#"
        set -e
        test -n "$ETCD_ENDPOINTS"
        test -S "$ETCD_HARNESS_CONTROL"
        "$ETCD_HARNESS_BIN" ctl put /r/k v >/dev/null
        "$ETCD_HARNESS_BIN" ctl get /r/k | grep -q '"value":"v"'
        exit 7
    "#;
    let status = Command::new(BIN)
        .args(["run", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
}
