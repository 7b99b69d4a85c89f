//! Watching a service: ordered events, the live set, resume after disconnects, resync after
//! compaction.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_registry::{Registry, Watch, WatchEvent, WatchEventKind};

const TTL: Duration = Duration::from_secs(10);

async fn next(watch: &Watch) -> WatchEvent {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("an event in time")
        .expect("the watch is alive")
}

fn names(watch: &Watch) -> Vec<String> {
    watch.nodes().into_iter().map(|n| n.name).collect()
}

/// The watch's events up to its next `Resynced` (which has no node), without it: the
/// difference a re-listing emitted.
async fn until_resynced(watch: &Watch) -> Vec<WatchEvent> {
    let mut diff = Vec::new();
    loop {
        let event = next(watch).await;
        if event.kind == WatchEventKind::Resynced {
            assert!(event.node.is_none());
            return diff;
        }
        diff.push(event);
    }
}

/// Puts node `name` of the service `api` and checks that the watch's next event is its
/// arrival: nothing left over, nothing re-listed before it.
async fn put_and_see_added(etcd: &etcd_harness::EtcdCluster, watch: &Watch, name: &str) {
    etcd.put(&format!("/s/api/{name}"), "{}").unwrap();
    let event = next(watch).await;
    assert_eq!(
        (event.kind, event.node.map(|n| n.name)),
        (WatchEventKind::Added, Some(name.to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_added_updated_removed_in_order() {
    let etcd = etcd();
    etcd.put("/s/api/existing", r#"{"v":"0"}"#).unwrap();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    assert_eq!(names(&watch), vec!["existing"]);
    let first = next(&watch).await;
    assert_eq!(first.kind, WatchEventKind::Added);
    assert_eq!(first.node, Some(node("existing", &[("v", "0")])));

    let reg = registry
        .register("api", node("n1", &[("v", "1")]), Duration::from_secs(5))
        .unwrap();
    let added = next(&watch).await;
    assert_eq!(
        (added.kind, added.node.clone()),
        (WatchEventKind::Added, Some(node("n1", &[("v", "1")])))
    );
    assert!(added.revision > first.revision);

    etcd.put("/s/api/existing", r#"{"v":"2"}"#).unwrap();
    let updated = next(&watch).await;
    assert_eq!(
        (updated.kind, updated.node.clone()),
        (
            WatchEventKind::Updated,
            Some(node("existing", &[("v", "2")]))
        )
    );
    assert!(updated.revision > added.revision);

    reg.unregister().await.unwrap();
    let removed = next(&watch).await;
    assert_eq!(removed.kind, WatchEventKind::Removed);
    assert_eq!(removed.node.unwrap().name, "n1");
    assert_eq!(names(&watch), vec!["existing"]);
    assert_eq!(watch.revision(), removed.revision);

    // Other services are not this service's nodes; keys below a node are (named as the Go
    // library lists them).
    etcd.put("/s/api2/x", "{}").unwrap();
    etcd.put("/s/api/deeper/x", "{}").unwrap();
    etcd.put("/s/api/last", "{}").unwrap();
    let deeper = next(&watch).await;
    assert_eq!(deeper.node.unwrap().name, "deeper/x");
    let last = next(&watch).await;
    assert_eq!(last.node.unwrap().name, "last");

    watch.cancel();
    assert!(tokio::time::timeout(DEADLINE, watch.next())
        .await
        .unwrap()
        .is_none());
    record_version("watch: snapshot, added/updated/removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_restart_without_losing_or_repeating_events() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    // Beside it on the registry's Watch stream: it resumes too.
    let web = registry.watch("web").await.unwrap();
    etcd.put("/s/api/a", "{}").unwrap();
    assert_eq!(next(&watch).await.kind, WatchEventKind::Added);
    // Nodes of every kind of value, which the watch checks etcd's history against when it
    // resumes: the same history, so nothing is re-listed.
    let e = etcd.clone();
    blocking(move || {
        e.put("/s/api/info", r#"{"v":"1","w":"\u00e9"}"#).unwrap();
        e.put("/s/api/bare", "").unwrap();
        e.put("/s/api/garbled", "not json").unwrap();
        e.put("/s/api/deeper/x", "{}").unwrap();
    })
    .await;
    for _ in 0..4 {
        assert_eq!(next(&watch).await.kind, WatchEventKind::Added);
    }

    let e = etcd.clone();
    blocking(move || {
        e.kill(0).unwrap();
        e.restart(0).unwrap();
        e.put("/s/api/b", "{}").unwrap();
        e.delete("/s/api/a").unwrap();
        e.put("/s/web/w", "{}").unwrap();
    })
    .await;
    let w = next(&web).await;
    assert_eq!(
        (w.kind, w.node.unwrap().name),
        (WatchEventKind::Added, "w".to_string())
    );
    assert!(web.try_next().unwrap().is_none(), "nothing repeated");
    let b = next(&watch).await;
    assert_eq!(
        (b.kind, b.node.unwrap().name),
        (WatchEventKind::Added, "b".to_string())
    );
    let a = next(&watch).await;
    assert_eq!(
        (a.kind, a.node.unwrap().name),
        (WatchEventKind::Removed, "a".to_string())
    );
    assert_eq!(
        names(&watch),
        vec!["b", "bare", "deeper/x", "garbled", "info"]
    );
    assert!(watch.try_next().unwrap().is_none(), "nothing repeated");
    // Nor re-listed: the next event is the next change.
    put_and_see_added(&etcd, &watch, "c").await;
    record_version("watch resumes after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_after_compaction_while_disconnected() {
    let etcd = Arc::new(etcd_with_proxy());
    etcd.put("/s/api/stays", "{}").unwrap();
    etcd.put("/s/api/goes", "{}").unwrap();
    etcd.put("/s/api/changes", r#"{"v":"1"}"#).unwrap();
    etcd.put("/s/web/goes", "{}").unwrap();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    for _ in 0..3 {
        assert_eq!(next(&watch).await.kind, WatchEventKind::Added);
    }
    // Another watch on the registry's Watch stream, compacted as well: each resyncs its own.
    let web = registry.watch("web").await.unwrap();
    assert_eq!(next(&web).await.kind, WatchEventKind::Added);

    etcd.partition().unwrap();
    let e = etcd.clone();
    blocking(move || {
        // Changes the watcher cannot see, then history compacted past them.
        e.delete("/s/web/goes").unwrap();
        e.delete("/s/api/goes").unwrap();
        e.put("/s/api/changes", r#"{"v":"2"}"#).unwrap();
        e.put("/s/api/new", "{}").unwrap();
        e.put("/s/api/new", r#"{"v":"x"}"#).unwrap();
        e.compact_to_latest().unwrap();
    })
    .await;
    etcd.heal().unwrap();
    let healed = tokio::time::Instant::now();

    let mut diff: Vec<_> = until_resynced(&watch)
        .await
        .into_iter()
        .map(|e| (e.kind, e.node.unwrap()))
        .collect();
    diff.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    assert_eq!(
        diff,
        vec![
            (WatchEventKind::Updated, node("changes", &[("v", "2")])),
            (WatchEventKind::Removed, node("goes", &[])),
            (WatchEventKind::Added, node("new", &[("v", "x")])),
        ]
    );
    assert_eq!(
        watch.nodes(),
        registry.list("api").await.unwrap(),
        "live set equals a fresh listing"
    );
    let removed = next(&web).await;
    assert_eq!(
        (removed.kind, removed.node.unwrap().name),
        (WatchEventKind::Removed, "goes".to_string())
    );
    assert_eq!(next(&web).await.kind, WatchEventKind::Resynced);
    assert!(web.nodes().is_empty());
    record(
        "5. compaction while a watcher is disconnected",
        &format!(
            "resynced {} after the network came back",
            secs_since(healed)
        ),
    );

    // And it keeps following afterwards.
    put_and_see_added(&etcd, &watch, "after").await;
    record_version("compaction while disconnected: resync");
}

/// A registry's watches share one Watch stream, as etcd's Go client's do: three services
/// watched cost etcd one stream of three watchers, each watch gets its own service's events
/// only, cancelling one leaves the others following, and the stream closes with the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watches_of_a_registry_share_one_stream() {
    const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let services = ["a", "b", "c"];
    let mut watches = Vec::new();
    for service in services {
        watches.push(registry.watch(service).await.unwrap());
    }
    eventually("three watchers in etcd", || async {
        gauge(&etcd, WATCHERS) == 3
    })
    .await;
    assert_eq!(gauge(&etcd, STREAMS), 1, "watch streams open in etcd");

    for service in services {
        etcd.put(&format!("/s/{service}/n1"), "{}").unwrap();
    }
    for (watch, service) in watches.iter().zip(services) {
        let event = next(watch).await;
        assert_eq!(event.kind, WatchEventKind::Added, "{service}");
        assert_eq!(names(watch), vec!["n1"], "{service}");
        assert_eq!(watch.try_next(), Ok(None), "{service}: only its own event");
    }

    watches.remove(1).cancel();
    eventually("b's watcher gone", || async { gauge(&etcd, WATCHERS) == 2 }).await;
    etcd.put("/s/b/n2", "{}").unwrap();
    etcd.put("/s/a/n2", "{}").unwrap();
    etcd.put("/s/c/n2", "{}").unwrap();
    for watch in &watches {
        let event = next(watch).await;
        assert_eq!(event.node.unwrap().name, "n2", "{}", watch.service());
    }
    assert_eq!(gauge(&etcd, STREAMS), 1);

    drop(watches);
    eventually("the stream closed", || async { gauge(&etcd, STREAMS) == 0 }).await;
    // The next watch opens a new one.
    let watch = registry.watch("a").await.unwrap();
    assert_eq!(names(&watch), vec!["n1", "n2"]);
    etcd.put("/s/a/n3", "{}").unwrap();
    next(&watch).await;
    next(&watch).await;
    assert_eq!(next(&watch).await.node.unwrap().name, "n3");
    assert_eq!(gauge(&etcd, STREAMS), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watches_of_a_registrys_own_keys_share_the_stream_too() {
    const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    // Two TTLs: two leases, each watching its own key for deletions.
    let short = registry
        .register("api", node("n1", &[]), Duration::from_secs(10))
        .unwrap();
    let long = registry
        .register("api", node("n2", &[]), Duration::from_secs(20))
        .unwrap();
    short.wait_registered(DEADLINE).await.unwrap();
    long.wait_registered(DEADLINE).await.unwrap();
    // Registered means the key watch is in place.
    assert_eq!(gauge(&etcd, WATCHERS), 2, "watchers in etcd");
    assert_eq!(gauge(&etcd, STREAMS), 1, "watch streams open in etcd");

    let watch = registry.watch("api").await.unwrap();
    assert_eq!(names(&watch), vec!["n1", "n2"]);
    // The nodes listed come first, as added.
    for name in ["n1", "n2"] {
        assert_eq!(next(&watch).await.node.unwrap().name, name);
    }
    eventually("the service's watcher", || async {
        gauge(&etcd, WATCHERS) == 3
    })
    .await;
    assert_eq!(gauge(&etcd, STREAMS), 1);

    // Each lease's watch still works on the shared stream: a key deleted by someone else is
    // put back, and the service watch sees both.
    assert_eq!(etcd.delete("/s/api/n2").unwrap(), 1);
    let removed = next(&watch).await;
    let added = next(&watch).await;
    assert_eq!(
        [
            (removed.kind, removed.node.unwrap().name),
            (added.kind, added.node.unwrap().name)
        ],
        [
            (WatchEventKind::Removed, "n2".to_string()),
            (WatchEventKind::Added, "n2".to_string())
        ]
    );

    // The key watches keep the stream when the service watch leaves, and close it with the
    // last registration.
    drop(watch);
    eventually("the service's watcher gone", || async {
        gauge(&etcd, WATCHERS) == 2
    })
    .await;
    assert_eq!(gauge(&etcd, STREAMS), 1);
    short.unregister().await.unwrap();
    long.unregister().await.unwrap();
    eventually("the stream closed", || async { gauge(&etcd, STREAMS) == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_watch() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    registry.close().await.unwrap();
    assert!(tokio::time::timeout(DEADLINE, watch.next())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        registry.watch("api").await.unwrap_err().kind(),
        etcd_registry::ErrorKind::Closed
    );
}

/// A registry closed while a watch's first listing waits for a frozen etcd: once etcd answers,
/// the watch call ends with Closed and no watch is left. (It hung before, on the thread making
/// it: the closed path took the registry's lock a second time to forget the watch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_a_watch_is_being_made_ends_it_closed() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(DEADLINE))
        .await
        .unwrap();
    registry.list("api").await.unwrap(); // connected
    etcd.pause(0).unwrap();
    let (begun_tx, begun) = tokio::sync::oneshot::channel();
    let (made_tx, made) = tokio::sync::oneshot::channel();
    // Made on a thread of its own, so that a hang fails the test instead of stalling its runtime.
    let maker = registry.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut watch = std::pin::pin!(maker.watch("api"));
            // One poll: the registry is open, the first listing is sent (etcd does not answer).
            let first = tokio::time::timeout(Duration::ZERO, &mut watch).await;
            assert!(first.is_err(), "the watch was made while etcd is frozen");
            let _ = begun_tx.send(());
            let _ = made_tx.send(watch.await);
        });
    });
    begun.await.unwrap();
    registry.close().await.unwrap();
    etcd.resume(0).unwrap();
    let made = tokio::time::timeout(DEADLINE, made)
        .await
        .expect("the watch call returned")
        .unwrap();
    assert_eq!(made.unwrap_err().kind(), etcd_registry::ErrorKind::Closed);
}

/// A listing or watch larger than tonic's default 4 MiB message limit (a service of some 50 000
/// ordinary nodes) is read whole, as etcd's Go client reads it; here 6 nodes of 900 kB info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_watches_larger_than_4_mib_are_read() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/big")).await.unwrap();
    let blob = "x".repeat(900_000);
    let mut regs = Vec::new();
    for i in 0..6 {
        let reg = registry
            .register(
                "big",
                node(&format!("n{i}"), &[("blob", &blob)]),
                Duration::from_secs(10),
            )
            .unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        regs.push(reg);
    }
    let nodes = registry.list("big").await.unwrap();
    assert_eq!(nodes.len(), 6, "every node listed");
    assert!(nodes
        .iter()
        .all(|n| n.info.get("blob").map(String::len) == Some(900_000)));
    // A watch starts from such a listing.
    let watch = registry.watch("big").await.unwrap();
    assert_eq!(
        names(&watch).len(),
        6,
        "the watch's first listing holds every node"
    );
    registry.close().await.unwrap();
}

/// etcd rebuilt with its data lost (or restored from an older snapshot): its revision starts
/// again below the one the watch had reached. A watch that resumed from that revision would wait,
/// silent, until the new store reached it; it re-lists instead, and follows the new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_an_etcd_whose_history_went_back() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    let e = etcd.clone();
    blocking(move || {
        for i in 0..20 {
            e.put(&format!("/s/api/old{i}"), "{}").unwrap();
        }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(next(&watch).await.kind, WatchEventKind::Added);
    }

    let e = etcd.clone();
    blocking(move || {
        e.wipe(0).unwrap();
        e.put("/s/api/new", "{}").unwrap();
    })
    .await;
    let back = tokio::time::Instant::now();

    let mut diff: Vec<_> = until_resynced(&watch)
        .await
        .into_iter()
        .map(|e| (e.node.unwrap().name, e.kind))
        .collect();
    // The node put into the new store is in the listing, or comes right after it.
    if !diff.iter().any(|(name, _)| name == "new") {
        let event = next(&watch).await;
        diff.push((event.node.unwrap().name, event.kind));
    }
    diff.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected: Vec<_> = (0..20)
        .map(|i| (format!("old{i}"), WatchEventKind::Removed))
        .collect();
    expected.push(("new".to_string(), WatchEventKind::Added));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(diff, expected);
    assert_eq!(names(&watch), vec!["new"]);
    record(
        "etcd's data lost under a watch (revision back to 1)",
        &format!("re-listed {} after etcd was healthy", secs_since(back)),
    );

    // And it follows the new store from there.
    put_and_see_added(&etcd, &watch, "after").await;
    record_version("etcd's data lost: the watch re-lists");
}

/// etcd rebuilt with its data lost while the watch could not reach it, and written to past the
/// watch's revision before the watch reconnects: the new store's revision alone looks like the
/// old history going on. The watch compares the new store's listing at the revision it resumes
/// from with the set it had there, re-lists, and emits the difference: the nodes the new store
/// lacks removed, a node it holds with other info updated, its own nodes added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_notices_a_rebuilt_etcd_that_has_caught_up_with_its_revision() {
    let etcd = Arc::new(etcd_with_proxy());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    let e = etcd.clone();
    blocking(move || {
        for i in 0..5 {
            e.put(&format!("/s/api/old{i}"), r#"{"v":"1"}"#).unwrap();
        }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(next(&watch).await.kind, WatchEventKind::Added);
    }
    let reached = watch.revision();

    etcd.partition().unwrap();
    let e = etcd.clone();
    blocking(move || {
        e.wipe(0).unwrap();
        e.put("/s/api/old1", r#"{"v":"2"}"#).unwrap();
        e.put("/s/api/new", "{}").unwrap();
        // Past the watch's revision, outside the service.
        while e.revision().unwrap() <= reached + 2 {
            e.put("/elsewhere", "x").unwrap();
        }
    })
    .await;
    etcd.heal().unwrap();

    let mut diff: Vec<_> = until_resynced(&watch)
        .await
        .into_iter()
        .map(|e| (e.node.unwrap().name, e.kind))
        .collect();
    diff.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        diff,
        vec![
            ("new".to_string(), WatchEventKind::Added),
            ("old0".to_string(), WatchEventKind::Removed),
            ("old1".to_string(), WatchEventKind::Updated),
            ("old2".to_string(), WatchEventKind::Removed),
            ("old3".to_string(), WatchEventKind::Removed),
            ("old4".to_string(), WatchEventKind::Removed),
        ]
    );
    assert_eq!(names(&watch), vec!["new", "old1"]);
    let old1 = watch
        .nodes()
        .into_iter()
        .find(|n| n.name == "old1")
        .unwrap();
    assert_eq!(old1.info.get("v").map(String::as_str), Some("2"));

    // And it follows the new store from there.
    put_and_see_added(&etcd, &watch, "after").await;
    record_version("etcd rebuilt and written past the watch's revision: the watch re-lists");
}

/// A compaction just after a watch resumed (its watcher made and caught up, history compacted
/// past the revision it resumed from) is no reason to re-list: the watch checks etcd's history
/// before it makes its watcher, so such a compaction fails no check (found by a reviewer: the
/// check made after the watcher was created re-listed in vain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_just_after_a_watch_resumed_is_no_resync() {
    let etcd = Arc::new(etcd_with_proxy());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    etcd.put("/s/api/a", "{}").unwrap();
    assert_eq!(next(&watch).await.kind, WatchEventKind::Added);
    let watchers = |e: &etcd_harness::EtcdCluster| gauge(e, "etcd_debugging_mvcc_watcher_total");
    assert_eq!(watchers(&etcd), 1);

    // Every byte through the proxy late: the watch's answers come long after etcd acted.
    etcd.delay_member(0, Duration::from_millis(700)).unwrap();
    etcd.reset_connections().unwrap();
    let e = etcd.clone();
    blocking(move || {
        let deadline = std::time::Instant::now() + DEADLINE;
        let until = |what: &str, cond: &dyn Fn() -> bool| {
            while !cond() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        until("the old watcher gone", &|| watchers(&e) == 0);
        until("the new watcher made and caught up", &|| {
            watchers(&e) == 1 && gauge(&e, "etcd_debugging_mvcc_slow_watcher_total") == 0
        });
        e.put("/elsewhere", "x").unwrap();
        e.compact_to_latest().unwrap();
    })
    .await;
    etcd.delay_member(0, Duration::ZERO).unwrap();
    // The watcher was never compacted: nothing to re-list, no `Resynced` before or between.
    put_and_see_added(&etcd, &watch, "c").await;
    put_and_see_added(&etcd, &watch, "d").await;
    assert_eq!(names(&watch), vec!["a", "c", "d"]);
}

/// A watch whose reader does not read while a service larger than any event bound starts,
/// changes and shrinks loses nothing: past the bound each node's unread events are merged, so
/// when the reader reads, the nodes its events leave it with are exactly the live set, each
/// with its last info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_far_behind_ends_with_the_live_set_and_nothing_dropped() {
    const NODES: usize = 2 * etcd_registry::EVENT_QUEUE_CAPACITY + 500;
    let etcd = etcd();
    let watcher = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = watcher.watch("big").await.unwrap();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let mut regs = Vec::new();
    for i in 0..NODES {
        let reg = registry
            .register("big", node(&format!("n{i:05}"), &[("v", "1")]), TTL)
            .unwrap();
        regs.push(reg);
    }
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    // Every third node changes twice, every third leaves, and one comes and goes.
    for (i, reg) in regs.iter().enumerate() {
        if i % 3 == 1 {
            reg.update(info(&[("v", "2")])).unwrap();
            reg.update(info(&[("v", "3")])).unwrap();
        }
    }
    let passing = registry
        .register("big", node("passing", &[("v", "1")]), TTL)
        .unwrap();
    passing.wait_registered(DEADLINE).await.unwrap();
    passing.unregister().await.unwrap();
    for (i, reg) in regs.iter().enumerate() {
        if i % 3 == 2 {
            reg.unregister().await.unwrap();
        }
    }
    let expected: std::collections::BTreeMap<String, String> = (0..NODES)
        .filter(|i| i % 3 != 2)
        .map(|i| {
            let v = if i % 3 == 1 { "3" } else { "1" };
            (format!("n{i:05}"), v.to_string())
        })
        .collect();
    eventually("the watch's live set to settle", || async {
        watch.nodes().len() == expected.len()
            && watch
                .nodes()
                .iter()
                .all(|n| n.info.get("v") == expected.get(&n.name))
    })
    .await;

    // A node made last: its event is the last one queued.
    let _end = registry.register("big", node("zz-end", &[]), TTL).unwrap();

    // Only now does the reader read, applying each event as a consumer does: added and
    // updated insert or replace, removed deletes.
    let mut seen = std::collections::BTreeMap::new();
    let mut events = 0;
    loop {
        let event = next(&watch).await;
        events += 1;
        let n = event.node.expect("a node");
        if n.name == "zz-end" {
            break;
        }
        match event.kind {
            WatchEventKind::Added | WatchEventKind::Updated => {
                seen.insert(n.name.clone(), n.info["v"].clone());
            }
            WatchEventKind::Removed => {
                seen.remove(&n.name);
            }
            WatchEventKind::Resynced => panic!("no history was compacted"),
        }
    }
    assert_eq!(seen, expected);
    // Past the bound a node's events were merged: one event per node touched after that.
    let changes = NODES + NODES / 3 * 2 + NODES / 3 + 2 + 1;
    assert!(
        events <= etcd_registry::EVENT_QUEUE_CAPACITY + NODES + 2,
        "{events} events for {changes} changes"
    );
    watcher.close().await.unwrap();
    registry.close().await.unwrap();
}

/// An idle registry that watches a service and keeps a node registered: its watch stream asks
/// its member for a progress report when quiet, and keeps the stream while it is answered.
/// etcd 3.6 and later do not answer while a watcher on the stream starts at a revision etcd
/// has not reached: the lease's watch of its own keys must not, or in a cluster with no
/// writes the member would be taken for silent and given up, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_beside_a_registration_keeps_its_stream() {
    let etcd = etcd();
    // A short timeout: the stream asks for progress after 0.5 s of quiet.
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let watch = registry.watch("api").await.unwrap();
    // The first node of its TTL, then one joining its live lease.
    let mut regs = Vec::new();
    for name in ["n1", "n2"] {
        let node = etcd_registry::Node::new(name, Default::default());
        let reg = registry
            .register("api", node, Duration::from_secs(3))
            .unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        regs.push(reg);
    }
    eventually("the watch to see n1 and n2", || async {
        names(&watch) == ["n1", "n2"]
    })
    .await;
    // Nothing written from now on.
    let opened = grpc_counter(&etcd, "grpc_server_started_total", "Watch");
    keep_alives(&etcd, 4).await;
    assert_eq!(
        grpc_counter(&etcd, "grpc_server_started_total", "Watch"),
        opened,
        "the watch stream was opened again"
    );
    registry.close().await.unwrap();
    record_version("idle watch beside a registration: stream kept");
}

/// Waits for `n` more keep-alives of the registry's lease (one a second at a TTL of 3 s): four
/// span several rounds of progress requests of a stream quiet since.
async fn keep_alives(etcd: &etcd_harness::EtcdCluster, n: u64) {
    let renewed = gauge(etcd, "etcd_debugging_lease_renewed_total");
    eventually(&format!("{n} keep-alives"), || async {
        gauge(etcd, "etcd_debugging_lease_renewed_total") >= renewed + n
    })
    .await;
}

/// A service watch joins the stream of a registration's key watch after it has been quiet for
/// longer than the stream waits before asking for progress: no progress request goes right
/// behind its creation. etcd 3.4.25-3.4.30 and 3.5.8-3.5.12 defer one that comes while the new
/// watcher catches up, then ignore every later one on the stream (etcd-io/etcd#17507): the
/// member would be taken for silent and the stream opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_joining_a_quiet_stream_keeps_it() {
    let etcd = etcd();
    // A short timeout: the stream asks for progress after 0.5 s of quiet.
    let registry = Registry::connect(config(&etcd, "/s").with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let node = etcd_registry::Node::new("n1", Default::default());
    let reg = registry
        .register("db", node, Duration::from_secs(3))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    // The key watch's stream, which no write reaches, is quiet by the next keep-alive.
    keep_alives(&etcd, 1).await;
    let opened = grpc_counter(&etcd, "grpc_server_started_total", "Watch");
    let watch = registry.watch("api").await.unwrap();
    // Nothing written under the service.
    keep_alives(&etcd, 4).await;
    assert_eq!(
        grpc_counter(&etcd, "grpc_server_started_total", "Watch"),
        opened,
        "the watch stream was opened again"
    );
    assert!(names(&watch).is_empty());
    registry.close().await.unwrap();
    record_version("a watch joining a quiet stream: stream kept");
}
