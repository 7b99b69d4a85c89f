//! Writes that reach etcd late. A write sent to a member that does not answer in time (slow,
//! paused) is given up and made through another member; the member first asked may still carry
//! it out later, after newer writes. The library then moves its keys to a new lease and revokes
//! the old one, which every such write carries: a late one is refused from then on, and one that
//! landed before is undone. Each test slows the member in use through its proxy (every byte 2 s
//! late, more than a member's share of the timeout) while a write is made, and checks what a
//! user would see once the old lease is gone: etcd holds what was last written, nothing more.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_harness::EtcdCluster;
use etcd_registry::{Config, Registration, Registry, WatchEventKind};

const BASE: &str = "/late";
const TTL: Duration = Duration::from_secs(6);
/// More than a member's share of the timeout (3 s / 3).
const DELAY: Duration = Duration::from_secs(2);

fn cluster() -> Arc<EtcdCluster> {
    init_logs();
    Arc::new(
        EtcdCluster::builder()
            .members(3)
            .proxy(true)
            .start()
            .expect("start a 3-member cluster"),
    )
}

fn cfg(etcd: &EtcdCluster) -> Config {
    Config::new(etcd.endpoints(), BASE)
        .with_timeout(Duration::from_secs(3))
        .with_backoff(Duration::from_millis(200), Duration::from_secs(2))
}

async fn get(etcd: &Arc<EtcdCluster>, key: &str) -> Option<String> {
    let (e, key) = (etcd.clone(), key.to_string());
    blocking(move || e.get(&key).expect("get")).await
}

/// Registers node `name` of "svc" (info v=`v`) and waits until it is registered.
async fn registered(registry: &Registry, name: &str, v: &str) -> Registration {
    let reg = registry
        .register("svc", node(name, &[("v", v)]), TTL)
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    reg
}

/// Waits until `reg` is on another lease than `old` and etcd no longer holds `old`: from then
/// on no write carrying `old` can land.
async fn old_lease_gone(etcd: &Arc<EtcdCluster>, reg: &Registration, old: i64) {
    eventually(
        "the keys on a new lease and the old one revoked",
        || async {
            let e = etcd.clone();
            let leases = blocking(move || e.lease_list().expect("lease list")).await;
            reg.lease_id().is_some_and(|l| l != old) && !leases.contains(&old)
        },
    )
    .await;
}

/// update(v1) is given up on the slow member and made through another; update(v2) follows.
/// The slow member's copy of v1 must not end up in etcd after v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_given_up_on_a_slow_member_does_not_undo_a_newer_one() {
    let etcd = cluster();
    let registry = Registry::connect(cfg(&etcd)).await.unwrap();
    let reg = registered(&registry, "n1", "0").await;
    let old = reg.lease_id().unwrap();
    let mut events = reg.subscribe();
    let slow = member_in_use(&etcd, &registry);
    etcd.delay_member(slow, DELAY).unwrap();
    for v in ["1", "2"] {
        reg.update(info(&[("v", v)])).unwrap();
        wait_event(&mut events, "updated", |e| {
            matches!(e, etcd_registry::StatusEvent::Updated { .. })
        })
        .await;
    }
    old_lease_gone(&etcd, &reg, old).await;
    etcd.delay_member(slow, Duration::ZERO).unwrap();
    eventually("etcd to hold the last update", || async {
        get(&etcd, "/late/svc/n1").await.as_deref() == Some(r#"{"v":"2"}"#)
    })
    .await;
    assert_eq!(
        registry.list("svc").await.unwrap(),
        vec![node("n1", &[("v", "2")])]
    );
    registry.close().await.unwrap();
}

/// x joins while the member in use is slow (its put is given up there and made through
/// another member), then leaves. The slow member's copy of the put must not bring x back on the
/// lease y keeps alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_given_up_on_a_slow_member_does_not_bring_back_a_node_unregistered_since() {
    let etcd = cluster();
    let registry = Registry::connect(cfg(&etcd)).await.unwrap();
    let y = registered(&registry, "y", "y").await;
    let old = y.lease_id().unwrap();
    let slow = member_in_use(&etcd, &registry);
    etcd.delay_member(slow, DELAY).unwrap();
    let x = registered(&registry, "x", "x").await;
    x.unregister().await.unwrap();
    old_lease_gone(&etcd, &y, old).await;
    etcd.delay_member(slow, Duration::ZERO).unwrap();
    eventually("x gone and y there", || async {
        get(&etcd, "/late/svc/x").await.is_none() && get(&etcd, "/late/svc/y").await.is_some()
    })
    .await;
    assert_eq!(
        registry.list("svc").await.unwrap(),
        vec![node("y", &[("v", "y")])]
    );
    registry.close().await.unwrap();
}

/// x leaves while the member in use is slow (its delete, "if still on our lease", is given up
/// there and made through another member), then registers again. The slow member's copy of the
/// delete must not remove the new registration: a watcher never sees x removed while it is
/// registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_given_up_on_a_slow_member_does_not_remove_the_node_registered_again() {
    let etcd = cluster();
    let registry = Registry::connect(cfg(&etcd)).await.unwrap();
    let watcher = Registry::connect(cfg(&etcd)).await.unwrap();
    let y = registered(&registry, "y", "y").await;
    let x = registered(&registry, "x", "x").await;
    let old = y.lease_id().unwrap();
    let watch = watcher.watch("svc").await.unwrap();
    let slow = member_in_use(&etcd, &registry);
    etcd.delay_member(slow, DELAY).unwrap();
    x.unregister().await.unwrap();
    let _again = registered(&registry, "x", "again").await;
    old_lease_gone(&etcd, &y, old).await;
    etcd.delay_member(slow, Duration::ZERO).unwrap();
    // Whatever the old lease's writes did happened before it was revoked, so before this put:
    // the events up to it are the whole story.
    let e = etcd.clone();
    blocking(move || e.put("/late/svc/marker", "{}").unwrap()).await;
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("the marker in time")
            .expect("the watch goes on");
        let Some(node) = event.node else { continue };
        if node.name == "marker" {
            break;
        }
        seen.push((event.kind, node.name, node.info.get("v").cloned()));
    }
    assert!(
        !seen
            .iter()
            .any(|(kind, name, v)| *kind == WatchEventKind::Removed
                && name == "x"
                && v.as_deref() == Some("again")),
        "x removed while registered again: {seen:?}"
    );
    assert_eq!(
        get(&etcd, "/late/svc/x").await.as_deref(),
        Some(r#"{"v":"again"}"#)
    );
    registry.close().await.unwrap();
    watcher.close().await.unwrap();
}

/// unregister() while the member in use does not answer in time: the key is deleted through
/// another member before unregister returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_deletes_through_another_member_when_the_one_in_use_is_slow() {
    let etcd = cluster();
    let registry = Registry::connect(cfg(&etcd)).await.unwrap();
    let _y = registered(&registry, "y", "y").await;
    let x = registered(&registry, "x", "x").await;
    let slow = member_in_use(&etcd, &registry);
    etcd.delay_member(slow, Duration::from_secs(10)).unwrap();
    x.unregister().await.unwrap();
    assert_eq!(get(&etcd, "/late/svc/x").await, None);
    etcd.delay_member(slow, Duration::ZERO).unwrap();
    registry.close().await.unwrap();
}
