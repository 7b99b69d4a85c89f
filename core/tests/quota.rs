//! etcd out of space: its database reached `--quota-backend-bytes`, the NOSPACE alarm is raised
//! and etcd refuses every write ("mvcc: database space exceeded") until an operator frees space,
//! defragments and disarms the alarm. Keep-alives still work. Throughout, what is registered
//! stays registered; what could not be written (a node joining the live lease, a node of a new
//! TTL, an update) is retried with backoff and lands once the operator has fixed etcd, without
//! anything restarted.

mod common;

use std::time::Duration;

use common::*;
use etcd_harness::EtcdCluster;
use etcd_registry::{ErrorKind, Registration, RegistrationState, Registry, StatusEvent};
use tokio::time::Instant;

const SERVICE: &str = "svc";
const TTL: Duration = Duration::from_secs(4);

/// An etcd with a 16 MiB quota.
async fn small_etcd() -> EtcdCluster {
    blocking(|| {
        EtcdCluster::builder()
            .arg("--quota-backend-bytes=16777216")
            .start()
            .expect("start etcd with a 16 MiB quota")
    })
    .await
}

/// Fills etcd until it refuses writes; returns the client that filled it.
async fn fill(etcd: &EtcdCluster) -> etcd_client::Client {
    let mut client = etcd_client::Client::connect(etcd.direct_endpoints(), None)
        .await
        .unwrap();
    let big = "x".repeat(1_000_000);
    let mut filled = 0;
    let refusal = loop {
        match client
            .put(format!("/fill/{filled}"), big.clone(), None)
            .await
        {
            Ok(_) => filled += 1,
            Err(e) => break e.to_string(),
        }
        assert!(filled < 100, "etcd took 100 MB with a 16 MiB quota");
    };
    assert!(
        refusal.contains("database space exceeded"),
        "etcd refused the fill with {refusal}"
    );
    client
}

/// The operator's fix: free the space, compact, defragment, disarm the alarm.
async fn fix(etcd: EtcdCluster, client: &mut etcd_client::Client) -> EtcdCluster {
    client
        .delete(
            "/fill/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    blocking(move || {
        etcd.compact_to_latest().expect("compact");
        etcd.etcdctl(&["defrag"]).expect("defrag");
        etcd.etcdctl(&["alarm", "disarm"]).expect("disarm");
        etcd
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_refused_for_lack_of_space_land_once_etcd_is_fixed() {
    init_logs();
    let etcd = small_etcd().await;
    let registry = Registry::connect(config(&etcd, "/quota")).await.unwrap();
    let a = registry
        .register(SERVICE, node("a", &[("v", "1")]), TTL)
        .unwrap();
    a.wait_registered(DEADLINE).await.unwrap();
    let mut a_events = a.subscribe();

    let mut client = fill(&etcd).await;

    // A node joining the live lease, a node of a new TTL (a lease grant), an update.
    let b = registry
        .register(SERVICE, node("b", &[("v", "1")]), TTL)
        .unwrap();
    let d = registry
        .register(SERVICE, node("d", &[("v", "1")]), TTL * 2)
        .unwrap();
    let mut b_events = b.subscribe();
    let mut d_events = d.subscribe();
    a.update(info(&[("v", "2")])).unwrap();
    for (name, events) in [("b", &mut b_events), ("d", &mut d_events)] {
        let (failed, _) = wait_event(events, &format!("{name} failing"), |e| {
            matches!(e, StatusEvent::Failed { .. })
        })
        .await;
        let StatusEvent::Failed { error } = failed else {
            unreachable!()
        };
        assert!(
            error.message().contains("database space exceeded"),
            "{name}: the error says why: {error}"
        );
        assert_eq!(
            error.kind(),
            ErrorKind::ResourceExhausted,
            "{name}: {error}"
        );
        // As after any failed attempt: when the next one comes, and why.
        let (retrying, _) = wait_event(events, &format!("{name} retrying"), |e| {
            matches!(e, StatusEvent::Retrying { .. })
        })
        .await;
        let StatusEvent::Retrying { attempt, error, .. } = retrying else {
            unreachable!()
        };
        assert_eq!(attempt, 1, "{name}");
        assert_eq!(
            error.kind(),
            ErrorKind::ResourceExhausted,
            "{name}: {error}"
        );
    }
    let (lost, _) = wait_event(&mut a_events, "a's update refused", |e| {
        matches!(e, StatusEvent::KeepAliveLost { .. })
    })
    .await;
    let StatusEvent::KeepAliveLost { error } = lost else {
        unreachable!()
    };
    assert!(
        error.message().contains("database space exceeded"),
        "a: the error says why: {error}"
    );
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted, "a: {error}");
    wait_event(&mut a_events, "a retrying", |e| {
        matches!(e, StatusEvent::Retrying { error, .. } if error.kind() == ErrorKind::ResourceExhausted)
    })
    .await;
    // While etcd stays full the refused writes stay refused, retry after retry, and nothing
    // registered is lost.
    for (name, events) in [("b", &mut b_events), ("d", &mut d_events)] {
        let (retrying, _) = wait_event(
            events,
            &format!("{name} retrying again"),
            |e| matches!(e, StatusEvent::Retrying { attempt, .. } if *attempt >= 2),
        )
        .await;
        let StatusEvent::Retrying { error, .. } = retrying else {
            unreachable!()
        };
        assert_eq!(
            error.kind(),
            ErrorKind::ResourceExhausted,
            "{name}: {error}"
        );
    }
    assert_eq!(b.state(), RegistrationState::Registering);
    assert_eq!(d.state(), RegistrationState::Registering);
    let names: Vec<String> = registry
        .list(SERVICE)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["a"], "while etcd is full");

    let fixed = Instant::now();
    let etcd = fix(etcd, &mut client).await;

    let registry = &registry;
    eventually(
        "every node registered and listed with its newest info",
        || async move {
            let nodes = registry.list(SERVICE).await.unwrap_or_default();
            let got: Vec<(String, Option<String>)> = nodes
                .into_iter()
                .map(|n| (n.name, n.info.get("v").cloned()))
                .collect();
            got == [
                ("a".to_string(), Some("2".to_string())),
                ("b".to_string(), Some("1".to_string())),
                ("d".to_string(), Some("1".to_string())),
            ]
        },
    )
    .await;
    let back = secs_since(fixed);
    // Listed can come a moment before registered: a registration says so once its lease's
    // keep-alive and key watch are in place too.
    for reg in [&a, &b, &d] {
        eventually("every registration says registered", || async {
            reg.state() == RegistrationState::Registered
        })
        .await;
    }
    wait_event(&mut b_events, "b registered", |e| {
        matches!(e, StatusEvent::Registered { .. })
    })
    .await;
    wait_event(&mut a_events, "a's update landed", |e| {
        matches!(e, StatusEvent::Updated { .. })
    })
    .await;
    assert_eq!(a.lease_id(), b.lease_id(), "b joined a's lease");
    record_version("out of space (NOSPACE): refused, lands after fix");
    record(
        "etcd out of space (NOSPACE alarm): a node joining, a new TTL and an update refused",
        &format!("retried with backoff; all landed {back} after the operator's fix, nothing lost"),
    );
    registry.close().await.unwrap();
    drop(etcd);
}

/// etcd's writes (puts and transactions) received so far.
fn writes(etcd: &EtcdCluster) -> u64 {
    let received = tokio::task::block_in_place(|| etcd.grpc_received(0)).expect("etcd metrics");
    ["Put", "Txn"].iter().filter_map(|m| received.get(*m)).sum()
}

/// Waits for a `Retrying` event of each registration, and checks its error.
async fn each_retrying(regs: &[Registration], what: &str) {
    for reg in regs {
        let mut events = reg.subscribe();
        let (retrying, _) = wait_event(&mut events, what, |e| {
            matches!(e, StatusEvent::Retrying { .. })
        })
        .await;
        let StatusEvent::Retrying { error, .. } = retrying else {
            unreachable!()
        };
        assert_eq!(error.kind(), ErrorKind::ResourceExhausted, "{error}");
    }
}

/// A full etcd refuses every key alike: nodes joining a live lease while it is full are refused
/// with the transaction that carried them, and keys deleted by someone else meanwhile are
/// refused with the first put back; all are tried again together, not with a request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_etcd_gets_one_write_per_attempt_not_one_per_node() {
    const NODES: usize = 50;
    const DELETED: usize = 20;
    init_logs();
    let etcd = small_etcd().await;
    let registry = Registry::connect(config(&etcd, "/herd")).await.unwrap();
    let a = registry.register(SERVICE, node("a", &[]), TTL).unwrap();
    let landed: Vec<Registration> = (0..DELETED)
        .map(|i| {
            registry
                .register(SERVICE, node(&format!("m{i}"), &[]), TTL)
                .unwrap()
        })
        .collect();
    for reg in landed.iter().chain([&a]) {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    let mut client = fill(&etcd).await;

    let before = writes(&etcd);
    let joining: Vec<_> = (0..NODES)
        .map(|i| {
            registry
                .register(SERVICE, node(&format!("n{i}"), &[]), TTL)
                .unwrap()
        })
        .collect();
    each_retrying(&joining, "a joining node retrying").await;
    let sent = writes(&etcd) - before;
    // One write per batch of joining nodes and per retry; a write per node would be over 50.
    assert!(
        sent < NODES as u64 / 2,
        "{sent} writes sent to a full etcd for {NODES} joining nodes"
    );

    // Deleting is allowed while etcd is full: someone deletes keys of the live lease.
    let before = writes(&etcd);
    client
        .delete(
            "/herd/svc/m",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    each_retrying(&landed, "a deleted node retrying").await;
    let sent = writes(&etcd) - before;
    assert!(
        sent < DELETED as u64 / 2,
        "{sent} writes sent to a full etcd for {DELETED} deleted keys"
    );

    let etcd = fix(etcd, &mut client).await;
    for reg in joining.iter().chain(&landed) {
        eventually("every node registered once etcd is fixed", || async {
            reg.state() == RegistrationState::Registered
        })
        .await;
    }
    assert_eq!(
        registry.list(SERVICE).await.unwrap().len(),
        NODES + DELETED + 1
    );
    registry.close().await.unwrap();
    drop(etcd);
}

/// Nodes refused when they joined the live lease (etcd full), then unregistered, leave the
/// watch of the other nodes' keys alone: a key of theirs deleted by someone else once etcd is
/// fixed is put back. (b and c are watched through their directory, as every key of a lease
/// but its first: the refused nodes' keys were never added to it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_refused_then_unregistered_leave_the_watch_of_the_others_keys() {
    init_logs();
    let etcd = small_etcd().await;
    let registry = Registry::connect(config(&etcd, "/quota")).await.unwrap();
    let mut regs = Vec::new();
    for name in ["a", "b", "c"] {
        let reg = registry.register(SERVICE, node(name, &[]), TTL).unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        regs.push(reg);
    }
    let mut client = fill(&etcd).await;
    let refused: Vec<Registration> = ["e", "f"]
        .iter()
        .map(|name| registry.register(SERVICE, node(name, &[]), TTL).unwrap())
        .collect();
    each_retrying(&refused, "a refused node retrying").await;
    for reg in &refused {
        // etcd refuses the delete (a transaction) while full; they end all the same.
        let _ = reg.unregister().await;
        assert_eq!(reg.state(), RegistrationState::Unregistered);
    }
    let etcd = fix(etcd, &mut client).await;

    etcd.delete("/quota/svc/b").unwrap();
    eventually("b's key put back", || async {
        etcd.get_prefix("/quota/").unwrap().len() == 3
    })
    .await;
    for reg in &regs {
        assert_eq!(reg.state(), RegistrationState::Registered);
    }
    registry.close().await.unwrap();
}

/// An old instance whose lease is gone, and who cannot get a new one (etcd is full), stops while
/// a new instance of the same node holds the key: the old one's unregister leaves the new one's
/// key alone (it has no lease, so no key of its own in etcd), as it does with a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_a_lease_leaves_the_key_of_the_one_that_replaced_it() {
    init_logs();
    let etcd = small_etcd().await;
    let old = Registry::connect(config(&etcd, "/quota")).await.unwrap();
    let stopping = old
        .register(SERVICE, node("a", &[("v", "old")]), TTL)
        .unwrap();
    stopping.wait_registered(DEADLINE).await.unwrap();
    let old_lease = stopping.lease_id().unwrap();
    let new = Registry::connect(config(&etcd, "/quota")).await.unwrap();
    let started = new
        .register(SERVICE, node("a", &[("v", "new")]), TTL)
        .unwrap();
    started.wait_registered(DEADLINE).await.unwrap();
    let mut events = stopping.subscribe();

    let mut client = fill(&etcd).await;
    // The old instance's lease ends (revoked here; expired after a partition alike): it has no
    // key on it any more, and cannot get a new lease while etcd is full.
    client.lease_revoke(old_lease).await.unwrap();
    wait_event(&mut events, "the old instance retrying without a lease", |e| {
        matches!(e, StatusEvent::Retrying { error, .. } if error.kind() == ErrorKind::ResourceExhausted)
    })
    .await;
    assert_eq!(stopping.lease_id(), None);
    stopping.unregister().await.unwrap();

    let nodes = new.list(SERVICE).await.unwrap();
    let got: Vec<(String, Option<String>)> = nodes
        .into_iter()
        .map(|n| (n.name, n.info.get("v").cloned()))
        .collect();
    assert_eq!(got, [("a".to_string(), Some("new".to_string()))]);
    assert_eq!(started.state(), RegistrationState::Registered);
    old.close().await.unwrap();
    new.close().await.unwrap();
}

/// A request beyond etcd's `--max-request-bytes` by more than gRPC's allowance (512 KiB) is
/// refused by etcd's gRPC layer with `ResourceExhausted` ("received message larger than max"),
/// as a full etcd refuses; it is a size problem that no waiting fixes, reported as
/// `InvalidArgument` like etcd's own "request is too large". A node of ordinary size on the
/// same lease lands all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_larger_than_the_server_takes_is_an_invalid_argument() {
    init_logs();
    let etcd = blocking(|| {
        EtcdCluster::builder()
            .arg("--max-request-bytes=262144")
            .start()
            .expect("start etcd with a 256 KiB request limit")
    })
    .await;
    let registry = Registry::connect(config(&etcd, "/large")).await.unwrap();
    // Below the library's own limit, above etcd's 256 KiB + 512 KiB.
    let blob = "x".repeat(900_000);
    assert!(blob.len() < etcd_registry::MAX_REQUEST_BYTES - 64 * 1024);
    let big = registry
        .register(SERVICE, node("big", &[("blob", &blob)]), TTL)
        .unwrap();
    let mut events = big.subscribe();
    let small = registry.register(SERVICE, node("small", &[]), TTL).unwrap();
    let (failed, _) = wait_event(&mut events, "big failing", |e| {
        matches!(e, StatusEvent::Failed { .. })
    })
    .await;
    let StatusEvent::Failed { error } = failed else {
        unreachable!()
    };
    assert!(
        error.message().contains("larger than max"),
        "the error says why: {error}"
    );
    assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    let (retrying, _) = wait_event(&mut events, "big retrying", |e| {
        matches!(e, StatusEvent::Retrying { .. })
    })
    .await;
    let StatusEvent::Retrying { error, .. } = retrying else {
        unreachable!()
    };
    assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    // The error of the first attempt, at once.
    let err = big.wait_registered(DEADLINE).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    small.wait_registered(DEADLINE).await.unwrap();
    let names: Vec<String> = registry
        .list(SERVICE)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["small"]);
    registry.close().await.unwrap();
    drop(etcd);
}

/// A node registered again with another TTL while etcd refuses writes: the new registration's
/// first attempts fail (no lease can be granted), and the key stays in etcd on the old lease
/// meanwhile, as it does when etcd accepts the move (it was revoked, and the key deleted, at
/// the new registration's first failure), also for a registration replacing that one in
/// turn. Ended by an unregister, the key is gone when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moving_to_another_ttl_while_etcd_is_full_keeps_its_key_until_unregistered() {
    node_moving_while_etcd_is_full(End::Unregister).await;
}

/// The same, ended by the registry's close: the key is gone when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moving_to_another_ttl_while_etcd_is_full_keeps_its_key_until_closed() {
    node_moving_while_etcd_is_full(End::Close).await;
}

/// The same, until etcd is fixed: the last registration lands, and the old lease, which held
/// the key until then, is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moving_to_another_ttl_while_etcd_is_full_lands_once_fixed() {
    node_moving_while_etcd_is_full(End::Fix).await;
}

enum End {
    Unregister,
    Close,
    Fix,
}

async fn node_moving_while_etcd_is_full(end: End) {
    init_logs();
    let etcd = small_etcd().await;
    let registry = Registry::connect(config(&etcd, "/quota")).await.unwrap();
    let old = registry
        .register(SERVICE, node("a", &[]), Duration::from_secs(10))
        .unwrap();
    old.wait_registered(DEADLINE).await.unwrap();
    let key = old.key().to_string();
    let old_lease = old.lease_id().unwrap();
    let mut client = fill(&etcd).await;

    let moved = registry
        .register(SERVICE, node("a", &[]), Duration::from_secs(20))
        .unwrap();
    let mut events = moved.subscribe();
    wait_event(&mut events, "the first attempt failing", |e| {
        matches!(e, StatusEvent::Failed { .. })
    })
    .await;
    // Another attempt later (the backoff's first step): the old lease, given 10 s when its
    // keep-alives stopped, holds the key still.
    wait_event(&mut events, "a second attempt failing", |e| {
        matches!(e, StatusEvent::Retrying { attempt: 2, .. })
    })
    .await;
    assert!(
        etcd.get(&key).unwrap().is_some(),
        "{key} still in etcd while the move waits"
    );
    // Registered once more, with a third TTL: the old lease holds the key for that one now
    // (it was revoked when the second one, replaced, ended).
    let again = registry
        .register(SERVICE, node("a", &[]), Duration::from_secs(30))
        .unwrap();
    let mut events = again.subscribe();
    wait_event(&mut events, "a second attempt of the third failing", |e| {
        matches!(e, StatusEvent::Retrying { attempt: 2, .. })
    })
    .await;
    assert!(
        etcd.get(&key).unwrap().is_some(),
        "{key} still in etcd while the third registration waits"
    );
    match end {
        End::Close => registry.close().await.unwrap(),
        End::Unregister => again.unregister().await.unwrap(),
        End::Fix => {
            let etcd = fix(etcd, &mut client).await;
            wait_event(&mut events, "the last registration landing", |e| {
                matches!(e, StatusEvent::Registered { .. })
            })
            .await;
            let lease = again.lease_id().unwrap();
            assert!(etcd.get(&key).unwrap().is_some(), "{key} still there");
            eventually("the old lease revoked", || async {
                !etcd.lease_list().unwrap().contains(&old_lease)
            })
            .await;
            assert_eq!(etcd.lease_list().unwrap(), vec![lease]);
            registry.close().await.unwrap();
            return;
        }
    }
    assert_eq!(etcd.get(&key).unwrap(), None, "{key} deleted by then");
    registry.close().await.unwrap();
}
