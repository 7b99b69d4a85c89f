//! Faults injected for real: etcd down at start, killed and restarted, partitioned past the TTL,
//! paused, leases revoked and keys deleted behind the library's back, a process that dies.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_registry::{ErrorKind, RegistrationState, Registry, StatusEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_at_connect_and_register_then_it_starts() {
    let etcd = Arc::new(etcd());
    etcd.stop(0).unwrap();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("a", "1")]), Duration::from_secs(5))
        .unwrap();
    let mut events = reg.subscribe();
    let (failed, _) = wait_event(&mut events, "failed", |e| {
        matches!(e, StatusEvent::Failed { .. })
    })
    .await;
    let StatusEvent::Failed { error } = failed else {
        unreachable!()
    };
    assert!(
        matches!(error.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{error}"
    );
    wait_event(&mut events, "a retry", |e| {
        matches!(e, StatusEvent::Retrying { .. })
    })
    .await;
    assert_eq!(reg.state(), RegistrationState::Registering);

    let e = etcd.clone();
    blocking(move || e.start(0).unwrap()).await;
    wait_event(&mut events, "registered", |e| {
        matches!(e, StatusEvent::Registered { .. })
    })
    .await;
    assert_eq!(etcd.get_prefix("/s/").unwrap().len(), 1);
    assert_eq!(
        registry.list("api").await.unwrap(),
        vec![node("n1", &[("a", "1")])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_doubles_with_jitter_while_etcd_is_down() {
    let etcd = etcd();
    etcd.stop(0).unwrap();
    let registry = Registry::connect(
        config(&etcd, "/s").with_backoff(Duration::from_millis(100), Duration::from_millis(800)),
    )
    .await
    .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    let mut events = reg.subscribe();
    let mut delays = Vec::new();
    while delays.len() < 6 {
        let (event, _) = wait_event(&mut events, "retrying", |e| {
            matches!(e, StatusEvent::Retrying { .. })
        })
        .await;
        if let StatusEvent::Retrying { attempt, delay, .. } = event {
            assert_eq!(attempt as usize, delays.len() + 1);
            delays.push(delay);
        }
    }
    for (i, delay) in delays.iter().enumerate() {
        let base = Duration::from_millis(100 * (1 << i)).min(Duration::from_millis(800));
        assert!(
            *delay <= base && *delay >= base.mul_f64(0.8),
            "attempt {}: {delay:?}",
            i + 1
        );
    }
    assert_eq!(
        reg.state(),
        RegistrationState::Registering,
        "never gives up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_within_the_ttl_keeps_the_lease() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(10))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let lease = reg.lease_id().unwrap();
    let mut events = reg.subscribe();

    let e = etcd.clone();
    blocking(move || {
        e.kill(0).unwrap();
        e.restart(0).unwrap();
    })
    .await;
    let (lost, _) = wait_event(&mut events, "keep-alive lost", |e| {
        matches!(e, StatusEvent::KeepAliveLost { .. })
    })
    .await;
    let StatusEvent::KeepAliveLost { error } = lost else {
        unreachable!()
    };
    assert!(
        matches!(error.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "lost because etcd went away: {:?}: {error}",
        error.kind()
    );
    let (back, between) = wait_event(&mut events, "re-registered", |e| {
        matches!(e, StatusEvent::Reregistered { .. })
    })
    .await;
    assert!(
        between
            .iter()
            .all(|e| matches!(e, StatusEvent::Retrying { .. })),
        "{between:?}"
    );
    assert_eq!(
        back,
        StatusEvent::Reregistered { lease_id: lease },
        "the old lease survived the restart"
    );
    assert_eq!(
        etcd.get_prefix("/s/").unwrap().len(),
        1,
        "no duplicate keys"
    );
    assert_eq!(etcd.lease_list().unwrap(), vec![lease]);
    assert_eq!(reg.state(), RegistrationState::Registered);
    record(
        "2a. etcd killed (SIGKILL) and restarted within the TTL",
        "re-registered on the same lease (leases survive restarts), one key",
    );
    record_version("kill -9 + restart: same lease kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_ttl_gets_a_new_lease_and_every_key_back() {
    let etcd = Arc::new(etcd_with_proxy());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let regs: Vec<_> = (0..3)
        .map(|i| {
            registry
                .register("api", node(&format!("n{i}"), &[]), Duration::from_secs(2))
                .unwrap()
        })
        .collect();
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    let old_lease = regs[0].lease_id().unwrap();
    let mut events = regs[0].subscribe();

    etcd.partition().unwrap();
    wait_event(&mut events, "keep-alive lost", |e| {
        matches!(e, StatusEvent::KeepAliveLost { .. })
    })
    .await;
    // The lease expires on the server while the client cannot reach it.
    eventually("the lease to expire in etcd", || {
        let e = etcd.clone();
        async move { blocking(move || e.lease_count().unwrap() == 0).await }
    })
    .await;
    etcd.heal().unwrap();

    let (back, _) = wait_event(&mut events, "re-registered", |e| {
        matches!(e, StatusEvent::Reregistered { .. })
    })
    .await;
    let StatusEvent::Reregistered { lease_id } = back else {
        unreachable!()
    };
    assert_ne!(lease_id, old_lease, "a new lease after the old one expired");
    eventually("all three keys back on one lease", || {
        let e = etcd.clone();
        async move {
            blocking(move || {
                e.get_prefix("/s/").unwrap().len() == 3 && e.lease_count().unwrap() == 1
            })
            .await
        }
    })
    .await;
    for reg in &regs {
        assert_eq!(reg.state(), RegistrationState::Registered);
        assert_eq!(reg.lease_id(), Some(lease_id));
    }
    record_version("partition past the TTL: new lease, keys back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_is_detected_and_the_node_recovers() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(2))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let mut events = reg.subscribe();
    etcd.pause(0).unwrap();
    // No hang: the unanswered keep-alive is noticed while the server is frozen.
    wait_event(&mut events, "keep-alive lost", |e| {
        matches!(e, StatusEvent::KeepAliveLost { .. })
    })
    .await;
    etcd.resume(0).unwrap();
    let resumed = tokio::time::Instant::now();
    wait_event(&mut events, "re-registered", |e| {
        matches!(e, StatusEvent::Reregistered { .. })
    })
    .await;
    eventually("the key back", || {
        let e = etcd.clone();
        async move { blocking(move || e.get_prefix("/s/").unwrap().len() == 1).await }
    })
    .await;
    record(
        "4. etcd paused (SIGSTOP) past the TTL, then resumed",
        &format!("key back {} after SIGCONT", secs_since(resumed)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_by_someone_else_is_put_back() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("v", "1")]), Duration::from_secs(3))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(etcd.delete("/s/api/n1").unwrap(), 1);
    let deleted = tokio::time::Instant::now();
    eventually("the key to be put back", || {
        let e = etcd.clone();
        async move {
            blocking(move || e.get("/s/api/n1").unwrap().as_deref() == Some(r#"{"v":"1"}"#)).await
        }
    })
    .await;
    assert_eq!(reg.state(), RegistrationState::Registered);
    record(
        "6a. key deleted by someone else (TTL 3s)",
        &format!("put back after {}", secs_since(deleted)),
    );
}

/// etcd gives a lease's remaining TTL in whole seconds, rounded down: with a TTL of 1 s, a live
/// lease nearly always answers 0 (a lease it does not hold answers -1). The check made when a
/// key is deleted must not take that for an expired lease: the key goes back on the same lease,
/// and no loss is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_a_one_second_lease_deleted_by_someone_else_goes_back_on_the_same_lease() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(1))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let lease = reg.lease_id().unwrap();
    let mut events = reg.subscribe();
    for round in 1..=2 {
        let e = etcd.clone();
        assert_eq!(blocking(move || e.delete("/s/api/n1").unwrap()).await, 1);
        eventually("the key to be put back", || {
            let e = etcd.clone();
            async move { blocking(move || e.get("/s/api/n1").unwrap().is_some()).await }
        })
        .await;
        let e = etcd.clone();
        let keys = blocking(move || {
            e.etcdctl(&["lease", "timetolive", &format!("{lease:x}"), "--keys"])
                .unwrap()
        })
        .await;
        assert!(keys.contains("/s/api/n1"), "round {round}: {keys}");
        assert_eq!(reg.lease_id(), Some(lease), "round {round}");
    }
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(
                event,
                StatusEvent::KeepAliveLost { .. }
                    | StatusEvent::Retrying { .. }
                    | StatusEvent::Reregistered { .. }
            ),
            "{event:?}"
        );
    }
    registry.close().await.unwrap();
}

/// etcd rebuilt with its data lost (its revision starts again at 1): the registration comes back
/// into the new store, and its key is still guarded there: deleted by someone else, it is put
/// back through the watch of the keys (the keep-alive's own check is a third of the 120 s TTL
/// away, after the deadline), which must not wait for the old store's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_comes_back_into_an_etcd_whose_data_was_lost() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("v", "1")]), Duration::from_secs(120))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let e = etcd.clone();
    blocking(move || {
        for i in 0..30 {
            e.put(&format!("/other/k{i}"), "x").unwrap();
        }
        e.wipe(0).unwrap();
    })
    .await;
    let back = tokio::time::Instant::now();
    let key_is_there = || {
        let e = etcd.clone();
        async move {
            blocking(move || e.get("/s/api/n1").unwrap().as_deref() == Some(r#"{"v":"1"}"#)).await
        }
    };
    eventually("the node in the new store", key_is_there).await;
    let registered = secs_since(back);
    eventually("the registration to say registered", || {
        let state = reg.state();
        async move { state == RegistrationState::Registered }
    })
    .await;
    assert_eq!(etcd.delete("/s/api/n1").unwrap(), 1);
    let deleted = tokio::time::Instant::now();
    eventually("the key to be put back", key_is_there).await;
    record(
        "etcd's data lost under a registration (revision back to 1)",
        &format!(
            "registered again {registered} after etcd was healthy; a key deleted then put back after {}",
            secs_since(deleted)
        ),
    );
}

/// etcd restored from a snapshot taken after a node was registered and before a second one
/// joined the same lease: the lease and the first key are in the restored store, the second key
/// is not, and the store's revision went back. The registry keeps its lease, puts the missing
/// key back, and still guards its keys (a key deleted then is put back through the watch of the
/// keys, long before the keep-alive's own check a third of the 120 s TTL away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_comes_back_into_an_etcd_restored_from_an_older_snapshot() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let ttl = Duration::from_secs(120);
    let first = registry.register("api", node("n1", &[]), ttl).unwrap();
    first.wait_registered(DEADLINE).await.unwrap();
    let snapshot = etcd.base_dir().join("snapshot.db");
    let path = snapshot.display().to_string();
    etcd.etcdctl(&["snapshot", "save", &path]).unwrap();
    let second = registry.register("api", node("n2", &[]), ttl).unwrap();
    second.wait_registered(DEADLINE).await.unwrap();
    let e = etcd.clone();
    blocking(move || {
        for i in 0..30 {
            e.put(&format!("/other/k{i}"), "x").unwrap();
        }
        // The member's own flags, for the restored membership.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", e.pid(0).unwrap())).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let flag = |name: &str| {
            let at = args.iter().position(|a| a == name).unwrap();
            args[at + 1].clone()
        };
        e.kill(0).unwrap();
        let data_dir = e.data_dir(0).to_path_buf();
        std::fs::remove_dir_all(&data_dir).unwrap();
        // etcdutl from 3.5 on; etcdctl restores too (3.4 has no etcdutl).
        let etcdctl = etcd_harness::etcdctl_binary().unwrap();
        let etcdutl = etcdctl.with_file_name("etcdutl");
        let restore = if etcdutl.exists() { etcdutl } else { etcdctl };
        let out = std::process::Command::new(restore)
            .args(["snapshot", "restore", &path, "--data-dir"])
            .arg(&data_dir)
            .args(["--name", &flag("--name")])
            .args(["--initial-cluster", &flag("--initial-cluster")])
            .args(["--initial-cluster-token", &flag("--initial-cluster-token")])
            .args([
                "--initial-advertise-peer-urls",
                &flag("--initial-advertise-peer-urls"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        e.start(0).unwrap();
        e.wait_healthy(0).unwrap();
    })
    .await;
    let restored = tokio::time::Instant::now();
    let both_there = || {
        let e = etcd.clone();
        async move { blocking(move || e.get_prefix("/s/api/").unwrap().len() == 2).await }
    };
    eventually("both nodes in the restored store", both_there).await;
    let back = secs_since(restored);
    assert_eq!(etcd.lease_count().unwrap(), 1, "the lease restored is kept");
    assert_eq!(etcd.delete("/s/api/n1").unwrap(), 1);
    let deleted = tokio::time::Instant::now();
    eventually("the key to be put back", both_there).await;
    record(
        "etcd restored from an older snapshot under a lease",
        &format!(
            "the key missing from it put back {back} after etcd was healthy; a key deleted then put back after {}",
            secs_since(deleted)
        ),
    );
}

/// A long TTL, so that a key comes back only through the watch of the keys (the keep-alive's own
/// check would come after the deadline): the first key of a lease is watched by itself, the
/// others by their service's directory, and every one of them is put back, also after others
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_a_large_lease_deleted_by_someone_else_is_put_back() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let ttl = Duration::from_secs(120);
    let mut regs = Vec::new();
    for i in 0..40 {
        let service = if i % 10 == 9 { "web" } else { "api" };
        let reg = registry
            .register(service, node(&format!("n{i}"), &[]), ttl)
            .unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        regs.push((service, format!("n{i}"), reg));
    }
    let put_back = |keys: Vec<String>| {
        let etcd = etcd.clone();
        async move {
            for key in &keys {
                assert_eq!(etcd.delete(key).unwrap(), 1, "{key}");
            }
            eventually("the deleted keys to be put back", || {
                let (e, keys) = (etcd.clone(), keys.clone());
                async move {
                    blocking(move || keys.iter().all(|k| e.get(k).unwrap().is_some())).await
                }
            })
            .await;
        }
    };
    // The first registered (watched by itself) and others (by directory), in both services.
    put_back(vec![
        "/s/api/n0".into(),
        "/s/web/n9".into(),
        "/s/api/n38".into(),
        "/s/web/n39".into(),
    ])
    .await;
    // Once the key watched by itself has left, the others are still watched.
    for (_, _, reg) in regs.drain(..20) {
        reg.unregister().await.unwrap();
    }
    put_back(vec![
        "/s/api/n20".into(),
        "/s/web/n29".into(),
        "/s/api/n38".into(),
    ])
    .await;
    assert_eq!(etcd.get_prefix("/s/").unwrap().len(), 20);
    assert_eq!(etcd.lease_count().unwrap(), 1);
    for (_, _, reg) in &regs {
        assert_eq!(reg.state(), RegistrationState::Registered);
    }
}

/// A whole directory deleted at once tells the watch of the keys in one response larger than a
/// gRPC client takes by default (4 MiB): the watch reads it, and every key comes back before the
/// keep-alive's own check (a third of the long TTL away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_deleted_in_one_large_event_is_put_back() {
    let etcd = Arc::new(etcd());
    let registry = Arc::new(Registry::connect(config(&etcd, "/s")).await.unwrap());
    let ttl = Duration::from_secs(120);
    let count = 20_000;
    let name = |i: usize| format!("{i:0>256}");
    let regs: Vec<_> = (0..count)
        .map(|i| registry.register("api", node(&name(i), &[]), ttl).unwrap())
        .collect();
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    assert_eq!(registry.list("api").await.unwrap().len(), count);
    assert_eq!(etcd.delete_prefix("/s/api/").unwrap(), count as u64);
    eventually("every key of the directory to be put back", || {
        let registry = registry.clone();
        async move { registry.list("api").await.unwrap().len() == count }
    })
    .await;
    assert!(regs
        .iter()
        .all(|r| r.state() == RegistrationState::Registered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_by_someone_else_is_replaced() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(3))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let old = reg.lease_id().unwrap();
    let mut events = reg.subscribe();
    let checks_before = grpc_counter(&etcd, "grpc_server_handled_total", "LeaseTimeToLive");
    etcd.lease_revoke(old).unwrap();
    let revoked = tokio::time::Instant::now();
    let (back, _) = wait_event(&mut events, "re-registered", |e| {
        matches!(e, StatusEvent::Reregistered { .. })
    })
    .await;
    assert!(matches!(back, StatusEvent::Reregistered { lease_id } if lease_id != old));
    eventually("the key back on a new lease", || {
        let e = etcd.clone();
        async move {
            blocking(move || {
                e.get_prefix("/s/").unwrap().len() == 1 && e.lease_count().unwrap() == 1
            })
            .await
        }
    })
    .await;
    // One check of the lease's keys for the loss, none for the revocation seen again by the
    // watch of the keys on the new lease: two keep-alives later, still one.
    let renewed = gauge(&etcd, "etcd_debugging_lease_renewed_total");
    eventually("two more keep-alives", || async {
        gauge(&etcd, "etcd_debugging_lease_renewed_total") >= renewed + 2
    })
    .await;
    assert_eq!(
        grpc_counter(&etcd, "grpc_server_handled_total", "LeaseTimeToLive") - checks_before,
        1
    );
    record(
        "6b. lease revoked by someone else (TTL 3s)",
        &format!("new lease, key back after {}", secs_since(revoked)),
    );
    record_version("lease revoked by someone else: replaced");
}

/// Runs only as the child of `a_process_that_dies_without_close_loses_its_keys_when_its_lease_expires`.
#[test]
fn child_process_registers_and_waits_to_be_killed() {
    let Ok(endpoints) = std::env::var("ETCD_REGISTRY_TEST_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = etcd_registry::Config::new(endpoints.split(','), "/s");
        let registry = Registry::connect(config).await.unwrap();
        let reg = registry
            .register("api", node("doomed", &[]), Duration::from_secs(2))
            .unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        println!("REGISTERED");
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_dies_without_close_loses_its_keys_when_its_lease_expires() {
    use std::io::{BufRead, BufReader};
    let etcd = Arc::new(etcd());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_registers_and_waits_to_be_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ETCD_REGISTRY_TEST_CHILD", etcd.endpoints().join(","))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let registered = blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("REGISTERED"))
    })
    .await;
    assert!(registered, "the child registered");
    assert_eq!(etcd.get_prefix("/s/").unwrap().len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    eventually("the dead process's key to expire", || {
        let e = etcd.clone();
        async move { blocking(move || e.get_prefix("/s/").unwrap().is_empty()).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_noticed_while_it_lasts_even_with_a_long_call_timeout() {
    let etcd = Arc::new(etcd_with_proxy());
    // Calls may wait a minute for etcd; the lease lives 2 s without an answer. The loss must be
    // reported while the partition lasts, not after a stuck call gives up.
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(2))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let mut events = reg.subscribe();
    etcd.partition().unwrap();
    let lost = tokio::time::timeout(
        Duration::from_secs(30),
        wait_event(&mut events, "keep-alive lost", |e| {
            matches!(e, StatusEvent::KeepAliveLost { .. })
        }),
    )
    .await;
    assert!(
        lost.is_ok(),
        "the loss was not reported during a 30 s partition"
    );
    assert_eq!(reg.state(), RegistrationState::Retrying);
    etcd.heal().unwrap();
    wait_event(&mut events, "re-registered", |e| {
        matches!(e, StatusEvent::Reregistered { .. })
    })
    .await;
}
