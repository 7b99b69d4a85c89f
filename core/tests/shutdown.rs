//! The shutdown rule: `unregister` and `close` stop locally and never fail because etcd is
//! unreachable; the delete is tried within the timeout, a warning is logged, and the keys expire
//! with their leases.

mod common;

use std::time::Duration;

use common::*;
use etcd_registry::{Registration, RegistrationState, Registry, StatusEvent, StatusEvents};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Resumes the paused etcd, then waits until no key is left under `prefix`.
async fn resume_then_no_key_left(
    etcd: &std::sync::Arc<etcd_harness::EtcdCluster>,
    prefix: &'static str,
) {
    let e = etcd.clone();
    blocking(move || e.resume(0).unwrap()).await;
    eventually("every key gone", || async {
        let e = etcd.clone();
        blocking(move || e.get_prefix(prefix).unwrap().is_empty()).await
    })
    .await;
}

/// Unregisters each of `regs` in a task of its own.
fn spawn_unregisters(regs: &[Registration]) -> Vec<JoinHandle<etcd_registry::Result<()>>> {
    regs.iter()
        .map(|reg| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.unregister().await })
        })
        .collect()
}

/// Waits for each of `unregisters`, then closes `registry`: every one returns by `deadline`,
/// and none fails (etcd not answering is no failure).
async fn unregisters_then_close_within(
    deadline: Instant,
    unregisters: Vec<JoinHandle<etcd_registry::Result<()>>>,
    registry: &Registry,
) {
    for unregister in unregisters {
        tokio::time::timeout_at(deadline, unregister)
            .await
            .expect("unregister returns within the deadline")
            .unwrap()
            .expect("unregister fails only when etcd refuses");
    }
    tokio::time::timeout_at(deadline, registry.close())
        .await
        .expect("close returns within the deadline")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_and_close_succeed_while_etcd_is_unreachable() {
    let etcd = etcd_with_proxy();
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let ttl = Duration::from_secs(2);
    let first = registry.register("api", node("n1", &[]), ttl).unwrap();
    let second = registry.register("api", node("n2", &[]), ttl).unwrap();
    first.wait_registered(DEADLINE).await.unwrap();
    second.wait_registered(DEADLINE).await.unwrap();
    assert!(etcd.get("/s/api/n1").unwrap().is_some());

    // Black-holed: connections hang, nothing answers.
    etcd.partition().unwrap();
    first
        .unregister()
        .await
        .expect("unregister fails only when etcd refuses");
    assert_eq!(first.state(), RegistrationState::Unregistered);
    // Idempotent, and still no error.
    first.unregister().await.unwrap();
    registry
        .close()
        .await
        .expect("close never fails for etcd's reasons");
    assert_eq!(second.state(), RegistrationState::Unregistered);
    assert!(registry.is_closed());

    // Nothing keeps the lease alive any more: both keys expire with it.
    etcd.heal().unwrap();
    eventually("the keys to expire with their lease", || async {
        etcd.get_prefix("/s/api/").is_ok_and(|kvs| kvs.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_succeeds_while_etcd_is_down() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(2))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    etcd.kill(0).unwrap();
    reg.unregister().await.unwrap();
    assert_eq!(reg.state(), RegistrationState::Unregistered);
    registry.close().await.unwrap();
    etcd.start(0).unwrap();
    etcd.wait_healthy(0).unwrap();
    eventually("the key to expire with its lease", || async {
        etcd.get("/s/api/n1").is_ok_and(|v| v.is_none())
    })
    .await;
}

/// A close made while another runs returns once that one has finished: a signal handler and
/// the end of `main` both closing, the process may exit as soon as either returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_close_returns_once_the_first_has_finished() {
    let etcd = etcd_with_proxy();
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();

    // Black-holed: the first close waits for its revoke until the timeout.
    etcd.partition().unwrap();
    let first = tokio::spawn({
        let registry = registry.clone();
        async move { registry.close().await }
    });
    eventually("the first close to begin", || async {
        registry.is_closed()
    })
    .await;
    registry.close().await.unwrap();
    assert_eq!(
        reg.state(),
        RegistrationState::Unregistered,
        "the second close returned before the first had unregistered"
    );
    first.await.unwrap().unwrap();
    etcd.heal().unwrap();
}

/// A node unregistered while etcd cannot be reached, beside another node on the same lease:
/// that lease is kept alive, so its key would never expire. It is deleted once etcd answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_unregistered_while_etcd_is_unreachable_leaves_no_key_on_the_shared_lease() {
    let etcd = etcd_with_proxy();
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let ttl = Duration::from_secs(6);
    let gone = registry.register("api", node("n1", &[]), ttl).unwrap();
    let stays = registry.register("api", node("n2", &[]), ttl).unwrap();
    gone.wait_registered(DEADLINE).await.unwrap();
    stays.wait_registered(DEADLINE).await.unwrap();

    etcd.partition().unwrap();
    gone.unregister().await.unwrap();
    etcd.heal().unwrap();
    eventually("the key of the node unregistered to be deleted", || async {
        etcd.get("/s/api/n1").is_ok_and(|v| v.is_none())
    })
    .await;
    // The other node stays registered. (Its lease may have been replaced: the delete given up
    // during the partition may still land, and only a new lease keeps it from removing a
    // later registration of n1; see late.rs.)
    assert!(etcd.get("/s/api/n2").unwrap().is_some());
    assert_eq!(stays.state(), RegistrationState::Registered);
    registry.close().await.unwrap();
}

/// Many nodes unregistered at once while etcd does not answer (paused): each unregister waits
/// for etcd within the timeout of its own call, not behind every unregister queued before it;
/// a close made meanwhile does not wait behind them either. Every registration has ended when
/// they return, and the keys go once etcd answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregisters_and_close_queued_on_a_silent_etcd_each_wait_one_timeout() {
    let etcd = std::sync::Arc::new(etcd());
    let timeout = Duration::from_secs(1);
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(timeout))
        .await
        .unwrap();
    // Without the bound, 60 deletes one after another, each waiting for etcd, would take
    // minutes: far past the deadline below.
    let n = 120;
    let regs: Vec<_> = (0..n)
        .map(|i| {
            registry
                .register("api", node(&format!("n{i}"), &[]), Duration::from_secs(4))
                .unwrap()
        })
        .collect();
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    let e = etcd.clone();
    blocking(move || e.pause(0).unwrap()).await;
    let started = tokio::time::Instant::now();
    let unregisters = spawn_unregisters(&regs[..n / 2]);
    unregisters_then_close_within(started + DEADLINE, unregisters, &registry).await;
    for reg in &regs {
        assert_eq!(reg.state(), RegistrationState::Unregistered);
    }
    resume_then_no_key_left(&etcd, "/s/").await;
}

/// A registration replaced by a newer one of its node is ended by its lease's task, which may
/// be busy behind unregisters queued while etcd does not answer. Its `unregister()` still
/// returns within one timeout, as any unregister does, and `close()` ends such a registration
/// too: when it returns, every registration has ended, replaced ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_registration_ends_within_one_timeout_while_its_lease_task_is_busy() {
    let etcd = std::sync::Arc::new(etcd());
    let timeout = Duration::from_secs(1);
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(timeout))
        .await
        .unwrap();
    let ttl = Duration::from_secs(4);
    let x1 = registry
        .register("api", node("x", &[("v", "1")]), ttl)
        .unwrap();
    let y1 = registry
        .register("api", node("y", &[("v", "1")]), ttl)
        .unwrap();
    // Each queued delete waits for the silent etcd about a timeout: 60 of them take a minute,
    // twice the deadline below.
    let n = 60;
    let others: Vec<_> = (0..n)
        .map(|i| {
            registry
                .register("api", node(&format!("o{i}"), &[]), ttl)
                .unwrap()
        })
        .collect();
    for reg in others.iter().chain([&x1, &y1]) {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    let mut y1_events = y1.subscribe();
    let e = etcd.clone();
    blocking(move || e.pause(0).unwrap()).await;
    let started = tokio::time::Instant::now();
    let unregisters = spawn_unregisters(&others);
    // Every delete is queued once its registration is no longer the node's.
    eventually("every unregister queued", || async {
        (0..n).all(|i| registry.registration_of("api", &format!("o{i}")).is_none())
    })
    .await;
    // x and y again: the older ones are replaced, their end queued behind the deletes.
    let _x2 = registry
        .register("api", node("x", &[("v", "2")]), ttl)
        .unwrap();
    let _y2 = registry
        .register("api", node("y", &[("v", "2")]), ttl)
        .unwrap();
    tokio::time::timeout_at(started + DEADLINE, x1.unregister())
        .await
        .expect("the replaced registration's unregister returns within the deadline")
        .unwrap();
    assert_eq!(x1.state(), RegistrationState::Unregistered);
    unregisters_then_close_within(started + DEADLINE, unregisters, &registry).await;
    assert_eq!(y1.state(), RegistrationState::Unregistered);
    wait_event(&mut y1_events, "unregistered", |e| {
        *e == etcd_registry::StatusEvent::Unregistered
    })
    .await;
    resume_then_no_key_left(&etcd, "/s/").await;
}

/// A registry dropped without `close()`, with no registration handle left: nothing can
/// unregister its nodes any more, and nothing keeps them alive. They end as at `close()`: the
/// subscriber gets `unregistered` (a binding's callback its last call, which frees it), and the
/// keys go at once with the lease rather than at its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_dropped_without_close_ends_its_registrations() {
    let etcd = std::sync::Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(60))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let mut events = reg.subscribe();
    drop(reg);
    drop(registry);
    wait_event(&mut events, "unregistered", |e| {
        *e == etcd_registry::StatusEvent::Unregistered
    })
    .await;
    eventually("the key deleted, long before its TTL of 60 s", || async {
        let e = etcd.clone();
        blocking(move || e.get("/s/api/n1").unwrap().is_none() && e.lease_count().unwrap() == 0)
            .await
    })
    .await;
}

/// A registration unregistered before any put of its key was sent (etcd silent since it was
/// registered, its lease's grant in flight) ends at once, however long the timeout: nothing of
/// it is in etcd to delete. No put of it follows when etcd answers again, and the lease granted
/// for it meanwhile is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_never_reached_etcd_ends_at_once_when_unregistered() {
    let etcd = std::sync::Arc::new(etcd());
    // Far past the deadline: an unregister waiting for the grant in flight would miss it.
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(600)))
        .await
        .unwrap();
    let ttl = Duration::from_secs(4);
    let e = etcd.clone();
    blocking(move || e.pause(0).unwrap()).await;
    let reg = registry.register("api", node("n1", &[]), ttl).unwrap();
    tokio::time::timeout(DEADLINE, reg.unregister())
        .await
        .expect("the unregister returns without waiting for etcd")
        .unwrap();
    assert_eq!(reg.state(), RegistrationState::Unregistered);

    let e = etcd.clone();
    blocking(move || e.resume(0).unwrap()).await;
    // A node of the same TTL registered afterwards: its lease's task has dealt with n1 first.
    let other = registry.register("api", node("n2", &[]), ttl).unwrap();
    other.wait_registered(DEADLINE).await.unwrap();
    let e = etcd.clone();
    let keys = blocking(move || e.get_prefix("/s/").unwrap()).await;
    let keys: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["/s/api/n2"]);
    let e = etcd.clone();
    let leases = blocking(move || e.lease_list().unwrap()).await;
    assert_eq!(
        leases,
        [other.lease_id().unwrap()],
        "only n2's lease is left"
    );
    registry.close().await.unwrap();
}

/// A registry whose lease task for [`TTL`] holds `nodes`, registered, and is retrying now:
/// etcd is paused, and each next attempt starts as soon as the last has failed (a third of the
/// 3 s timeout later). With the events of the first node from then on.
async fn retrying_group(
    etcd: &std::sync::Arc<etcd_harness::EtcdCluster>,
    nodes: &[&str],
) -> (Registry, Vec<Registration>, StatusEvents) {
    let nodes: Vec<(&str, Duration)> = nodes.iter().map(|name| (*name, TTL)).collect();
    retrying_groups(etcd, &nodes).await
}

/// As [`retrying_group`], with each node of its own TTL.
async fn retrying_groups(
    etcd: &std::sync::Arc<etcd_harness::EtcdCluster>,
    nodes: &[(&str, Duration)],
) -> (Registry, Vec<Registration>, StatusEvents) {
    let config = config(etcd, "/s")
        .with_timeout(Duration::from_secs(3))
        .with_backoff(Duration::from_millis(1), Duration::from_millis(1));
    let registry = Registry::connect(config).await.unwrap();
    let mut regs = Vec::new();
    for (name, ttl) in nodes {
        let reg = registry.register("api", node(name, &[]), *ttl).unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        regs.push(reg);
    }
    let mut events = regs[0].subscribe();
    let e = etcd.clone();
    blocking(move || e.pause(0).unwrap()).await;
    wait_event(&mut events, "retrying", retrying).await;
    (registry, regs, events)
}

/// Long enough for the lease to outlive the pauses below: the last renewal, the keep-alive
/// found lost (a third of the TTL, then the timeout), then a test's unregisters.
const TTL: Duration = Duration::from_secs(30);

fn reregistered(e: &StatusEvent) -> bool {
    matches!(e, StatusEvent::Reregistered { .. })
}

fn retrying(e: &StatusEvent) -> bool {
    matches!(e, StatusEvent::Retrying { .. })
}

/// The keys under /s/ now.
async fn keys(etcd: &std::sync::Arc<etcd_harness::EtcdCluster>) -> Vec<String> {
    let e = etcd.clone();
    let kvs = blocking(move || e.get_prefix("/s/").unwrap()).await;
    kvs.into_iter().map(|(k, _)| k).collect()
}

/// A node that joined its lease's task while etcd was silent, and is unregistered while the
/// task's next attempt is in flight, is not put by that attempt once etcd answers: its
/// unregister has returned, and nothing will delete a key put after it. The attempt puts the
/// other members as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_unregistered_before_its_first_put_is_not_put_by_the_attempt_in_flight() {
    let etcd = std::sync::Arc::new(etcd());
    let (registry, _, _) = retrying_group(&etcd, &["n0"]).await;
    // n1 joins between two attempts, and is never put while etcd is silent.
    let n1 = registry.register("api", node("n1", &[]), TTL).unwrap();
    let mut n1_events = n1.subscribe();
    // n1 took part in a failed attempt: the next one, with n1, starts at once and waits for
    // the silent etcd a third of the timeout. The unregister goes in the middle of it (no
    // condition tells that the attempt is in flight; one made outside it would still pass).
    wait_event(&mut n1_events, "n1 retrying", retrying).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    n1.unregister().await.unwrap();
    assert_eq!(n1.state(), RegistrationState::Unregistered);

    let e = etcd.clone();
    blocking(move || e.resume(0).unwrap()).await;
    // A node of the same TTL registered afterwards: its lease's task has dealt with n1 first.
    let n2 = registry.register("api", node("n2", &[]), TTL).unwrap();
    n2.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(keys(&etcd).await, ["/s/api/n0", "/s/api/n2"]);
    registry.close().await.unwrap();
}

/// The same node registered again while the attempt that is to put its first registration is
/// in flight, and the newer registration unregistered: no registration of the node is left, so
/// neither is its key once etcd answers again (the older one is not put any more, as the newer
/// one never was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registered_again_before_any_put_and_unregistered_leaves_no_key() {
    let etcd = std::sync::Arc::new(etcd());
    let (registry, _, mut n0_events) = retrying_group(&etcd, &["n0"]).await;
    let first = registry.register("api", node("n1", &[]), TTL).unwrap();
    let mut events = first.subscribe();
    // In the middle of the next attempt, as above.
    wait_event(&mut events, "n1 retrying", retrying).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = registry
        .register("api", node("n1", &[("v", "2")]), TTL)
        .unwrap();
    second.unregister().await.unwrap();

    let e = etcd.clone();
    blocking(move || e.resume(0).unwrap()).await;
    // Registered again: the attempt that was in flight is over.
    wait_event(&mut n0_events, "n0 reregistered", reregistered).await;
    assert_eq!(keys(&etcd).await, ["/s/api/n0"]);
    registry.close().await.unwrap();
}

/// A node whose key is in etcd, registered again while etcd is silent and unregistered before
/// the newer registration was put: the key is the node's, and is deleted once etcd answers,
/// though another node keeps the lease it is on alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_put_then_registered_again_and_unregistered_offline_leaves_no_key() {
    let etcd = std::sync::Arc::new(etcd());
    let (registry, _, mut n0_events) = retrying_group(&etcd, &["n0", "n1"]).await;
    let again = registry
        .register("api", node("n1", &[("v", "2")]), TTL)
        .unwrap();
    again.unregister().await.unwrap();
    assert_eq!(again.state(), RegistrationState::Unregistered);

    let e = etcd.clone();
    blocking(move || e.resume(0).unwrap()).await;
    wait_event(&mut n0_events, "n0 reregistered", reregistered).await;
    eventually("n1's key deleted", || async {
        keys(&etcd).await == ["/s/api/n0"]
    })
    .await;
    registry.close().await.unwrap();
}

/// As above, with the newer registration of another TTL: the key stays on the older
/// registration's lease, which another node keeps alive, until the newer one puts it on its
/// own. Unregistered before that, the newer one deletes the key from the older lease once etcd
/// answers, though its own lease, which m0 keeps alive, never held the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_put_then_registered_again_with_another_ttl_and_unregistered_offline_leaves_no_key()
{
    let etcd = std::sync::Arc::new(etcd());
    let nodes = [("n0", TTL), ("n1", TTL), ("m0", TTL / 2)];
    let (registry, _, mut n0_events) = retrying_groups(&etcd, &nodes).await;
    let again = registry
        .register("api", node("n1", &[("v", "2")]), TTL / 2)
        .unwrap();
    again.unregister().await.unwrap();
    assert_eq!(again.state(), RegistrationState::Unregistered);

    let e = etcd.clone();
    blocking(move || e.resume(0).unwrap()).await;
    wait_event(&mut n0_events, "n0 reregistered", reregistered).await;
    eventually("n1's key deleted", || async {
        keys(&etcd).await == ["/s/api/m0", "/s/api/n0"]
    })
    .await;
    registry.close().await.unwrap();
}

/// Closing while a connection to a silent etcd is being made (with credentials, the connect
/// authenticates, which etcd does not answer): close does not wait for that connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_wait_for_a_connect_in_flight() {
    let etcd = std::sync::Arc::new(etcd_with_proxy());
    let e = etcd.clone();
    blocking(move || e.enable_auth("user", "secret").unwrap()).await;
    let e = etcd.clone();
    blocking(move || e.pause(0).unwrap()).await;
    let config = config(&etcd, "/s")
        .with_credentials("user", "secret")
        .with_timeout(Duration::from_secs(600));
    let registry = Registry::connect(config).await.unwrap();
    let listing = tokio::spawn({
        let registry = registry.clone();
        async move { registry.list("api").await }
    });
    // The registry's connection reached the proxy: the connect is in flight.
    eventually("a connection made", || async {
        etcd.proxy_connection_count(0) > 0
    })
    .await;
    // The connect ends when its HTTP/2 pings go unanswered (after 10 s), and its connection
    // with it; close returns without waiting for that: the connection is still open then.
    tokio::time::timeout(DEADLINE, registry.close())
        .await
        .expect("close returns")
        .unwrap();
    assert!(
        etcd.proxy_connection_count(0) > 0,
        "close returned only once the connect in flight had ended"
    );
    listing.abort();
    let e = etcd.clone();
    blocking(move || e.resume(0).unwrap()).await;
}

/// A close whose future is dropped on the way (a caller's timeout around it, etcd not
/// answering the revoke) still ends everything: the registry's event stream and its watches
/// end, and a later close returns once they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_dropped_on_the_way_still_ends_every_stream() {
    let etcd = std::sync::Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let events = registry.events();
    let watch = registry.watch("api").await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    etcd.pause(0).unwrap();
    // The close waits for the revoke, which etcd does not answer: dropped meanwhile.
    let dropped = tokio::time::timeout(Duration::from_millis(100), registry.close()).await;
    assert!(dropped.is_err(), "the close did not wait for etcd");
    registry.close().await.unwrap();
    assert_eq!(reg.state(), RegistrationState::Unregistered);
    let end = async {
        while events.next().await.is_some() {}
        while watch.next().await.is_some() {}
    };
    tokio::time::timeout(DEADLINE, end)
        .await
        .expect("the registry's event stream and its watch end");
    resume_then_no_key_left(&etcd, "/s/").await;
}

/// A close that comes while the first registration of a TTL waits for its lease grant (etcd
/// has granted the lease, its answer is on its way) has that lease revoked once the answer
/// comes, instead of leaving it in etcd until it expires a TTL later. (The revoke is not waited
/// for: a close returns at once when etcd is silent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_while_a_lease_is_being_granted_leaves_no_lease() {
    let etcd = std::sync::Arc::new(etcd_with_proxy());
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    // Every byte through the proxy 2 s late, both ways: etcd holds the lease two seconds
    // before the library hears of it.
    etcd.delay_member(0, Duration::from_secs(2)).unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(60))
        .unwrap();
    eventually("etcd to grant the lease", || async {
        let e = etcd.clone();
        blocking(move || e.lease_count().unwrap() == 1).await
    })
    .await;
    assert_ne!(reg.state(), RegistrationState::Registered);
    assert!(
        registry.lease_ids().is_empty(),
        "the grant's answer came before the close (the test closes while it is on its way)"
    );
    tokio::time::timeout(DEADLINE, registry.close())
        .await
        .expect("close returns")
        .unwrap();
    // Within the deadline, well short of the lease's 60 s TTL.
    eventually(
        "the lease granted as the registry closed to be revoked",
        || async {
            let e = etcd.clone();
            blocking(move || e.lease_count().unwrap() == 0).await
        },
    )
    .await;
    etcd.delay_member(0, Duration::ZERO).unwrap();
}
