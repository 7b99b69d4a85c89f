//! Updating a registration's info in place: one put on the same lease, one `Updated` for
//! watchers, updates during an outage applied when etcd returns, concurrent updates ending with
//! the last one, and bad input.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_registry::keys::encode_info;
use etcd_registry::{
    ErrorKind, Info, InfoBytes, Node, RegistrationState, Registry, StatusEvent, Watch, WatchEvent,
    WatchEventKind, MAX_REQUEST_BYTES,
};

const TTL: Duration = Duration::from_secs(10);

async fn next(watch: &Watch) -> WatchEvent {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("a watch event in time")
        .expect("the watch is alive")
}

/// Registers a marker node on the same lease group and returns the watch events that came
/// before its `Added`. The group handles its commands in order, so every put asked for before
/// the marker lands before it: this is "every event the earlier calls caused", with no sleep.
async fn events_until_marker(registry: &Registry, watch: &Watch, marker: &str) -> Vec<WatchEvent> {
    registry
        .register("api", node(marker, &[]), TTL)
        .expect("register the marker");
    let mut before = Vec::new();
    loop {
        let event = next(watch).await;
        if event.kind == WatchEventKind::Added
            && event.node.as_ref().is_some_and(|n| n.name == marker)
        {
            return before;
        }
        before.push(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_puts_the_new_info_on_the_same_lease_and_watchers_see_one_updated() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("v", "1")]), TTL)
        .unwrap();
    let mut events = reg.subscribe();
    reg.wait_registered(DEADLINE).await.unwrap();
    let lease = reg.lease_id().unwrap();
    let watch = registry.watch("api").await.unwrap();
    assert_eq!(next(&watch).await.kind, WatchEventKind::Added);

    reg.update(info(&[("v", "2"), ("zone", "b")])).unwrap();
    let (updated, before) = wait_event(&mut events, "updated", |e| {
        matches!(e, StatusEvent::Updated { .. })
    })
    .await;
    assert_eq!(updated, StatusEvent::Updated { lease_id: lease });
    assert_eq!(before, vec![StatusEvent::Registered { lease_id: lease }]);
    assert_eq!(
        etcd.get("/s/api/n1").unwrap().as_deref(),
        Some(r#"{"v":"2","zone":"b"}"#)
    );
    assert_eq!(etcd.lease_list().unwrap(), vec![lease], "the same lease");
    assert_eq!(reg.lease_id(), Some(lease));
    assert_eq!(reg.state(), RegistrationState::Registered);
    assert_eq!(reg.node(), node("n1", &[("v", "2"), ("zone", "b")]));

    let seen = events_until_marker(&registry, &watch, "marker").await;
    assert_eq!(seen.len(), 1, "exactly one event for one update: {seen:?}");
    assert_eq!(seen[0].kind, WatchEventKind::Updated);
    assert_eq!(seen[0].node, Some(node("n1", &[("v", "2"), ("zone", "b")])));
    assert!(registry
        .list("api")
        .await
        .unwrap()
        .contains(&node("n1", &[("v", "2"), ("zone", "b")])));
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_while_etcd_is_down_land_when_it_returns_the_last_one_winning() {
    let etcd = Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("v", "1")]), TTL)
        .unwrap();
    let mut events = reg.subscribe();
    reg.wait_registered(DEADLINE).await.unwrap();
    let watcher = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = watcher.watch("api").await.unwrap();
    assert_eq!(next(&watch).await.kind, WatchEventKind::Added);

    let e = etcd.clone();
    blocking(move || e.stop(0).unwrap()).await;
    wait_event(&mut events, "keep-alive lost", |e| {
        matches!(e, StatusEvent::KeepAliveLost { .. })
    })
    .await;
    reg.update(info(&[("v", "2")])).unwrap();
    reg.update(info(&[("v", "3")])).unwrap();
    assert_eq!(reg.node(), node("n1", &[("v", "3")]), "kept while down");

    let e = etcd.clone();
    blocking(move || e.start(0).unwrap()).await;
    let (back, _) = wait_event(&mut events, "re-registered", |e| {
        matches!(e, StatusEvent::Reregistered { .. })
    })
    .await;
    let StatusEvent::Reregistered { lease_id } = back else {
        unreachable!()
    };
    // The put that brought the key back (or the first one after) carried the newest info.
    let (updated, between) = wait_event(&mut events, "updated", |e| {
        matches!(e, StatusEvent::Updated { .. })
    })
    .await;
    assert_eq!(updated, StatusEvent::Updated { lease_id });
    assert!(between.is_empty(), "{between:?}");
    assert_eq!(
        etcd.get("/s/api/n1").unwrap().as_deref(),
        Some(r#"{"v":"3"}"#)
    );

    // The watcher (resumed after the outage) ends with the last update, and never saw v=2
    // after v=3.
    let seen = events_until_marker(&registry, &watch, "marker").await;
    let last = seen
        .iter()
        .rev()
        .find(|e| e.node.as_ref().is_some_and(|n| n.name == "n1"))
        .expect("an event for n1 after the outage");
    assert_eq!(last.node, Some(node("n1", &[("v", "3")])), "{seen:?}");
    assert!(
        seen.iter().all(
            |e| e.node.as_ref().map(|n| n.info.get("v").map(String::as_str)) != Some(Some("2"))
        ),
        "the intermediate update is skipped, never put after the last: {seen:?}"
    );
    assert!(
        seen.iter()
            .filter(|e| e.kind == WatchEventKind::Updated)
            .count()
            <= 1,
        "one put after the outage: {seen:?}"
    );
    registry.close().await.unwrap();
    watcher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_before_the_first_registration_is_what_gets_registered() {
    let etcd = Arc::new(etcd());
    etcd.stop(0).unwrap();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("v", "1")]), TTL)
        .unwrap();
    let mut events = reg.subscribe();
    reg.update(info(&[("v", "2")])).unwrap();
    let e = etcd.clone();
    blocking(move || e.start(0).unwrap()).await;
    let (registered, _) = wait_event(&mut events, "registered", |e| {
        matches!(e, StatusEvent::Registered { .. })
    })
    .await;
    let StatusEvent::Registered { lease_id } = registered else {
        unreachable!()
    };
    assert_eq!(
        events.recv().await,
        Some(StatusEvent::Updated { lease_id }),
        "the update is told as landed, right after the registration"
    );
    assert_eq!(
        etcd.get("/s/api/n1").unwrap().as_deref(),
        Some(r#"{"v":"2"}"#)
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_end_with_the_last_one_in_order_per_writer() {
    const WRITERS: usize = 6;
    const EACH: usize = 25;
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("w", "-")]), TTL)
        .unwrap();
    let mut events = reg.subscribe();
    reg.wait_registered(DEADLINE).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    assert_eq!(next(&watch).await.kind, WatchEventKind::Added);

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let reg = reg.clone();
            std::thread::spawn(move || {
                for seq in 0..EACH {
                    reg.update(info(&[
                        ("w", &w.to_string()),
                        ("seq", &format!("{seq:03}")),
                    ]))
                    .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let last: Info = reg.node().info;
    assert_eq!(
        last["seq"],
        format!("{:03}", EACH - 1),
        "a writer's last update"
    );

    let seen = events_until_marker(&registry, &watch, "marker").await;
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|e| e.kind == WatchEventKind::Updated));
    assert_eq!(
        seen.last().unwrap().node,
        Some(Node::new("n1", last.clone())),
        "the watcher's last event is the final value"
    );
    // Never reordered: each writer's updates appear in the order it made them.
    for w in 0..WRITERS {
        let seqs: Vec<&str> = seen
            .iter()
            .filter_map(|e| e.node.as_ref())
            .filter(|n| n.info["w"] == w.to_string())
            .map(|n| n.info["seq"].as_str())
            .collect();
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "writer {w}: {seqs:?}");
    }
    assert_eq!(
        etcd.get("/s/api/n1").unwrap(),
        Some(encode_info(&last)),
        "etcd holds the last update"
    );
    // The status events end with an Updated for it (one per landed put at most).
    let mut updated = 0;
    while let Ok(event) = events.try_recv() {
        assert!(
            matches!(
                event,
                StatusEvent::Registered { .. } | StatusEvent::Updated { .. }
            ),
            "{event:?}"
        );
        updated += usize::from(matches!(event, StatusEvent::Updated { .. }));
    }
    assert_eq!(
        updated,
        seen.len(),
        "one Updated per put that changed the value"
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_change_nothing() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[("v", "1")]), TTL)
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();

    let err = reg.update(info(&[("", "x")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let huge = "x".repeat(MAX_REQUEST_BYTES);
    let err = reg.update(info(&[("big", &huge)])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("too large"), "{err}");
    assert_eq!(reg.node(), node("n1", &[("v", "1")]));
    assert_eq!(
        etcd.get("/s/api/n1").unwrap().as_deref(),
        Some(r#"{"v":"1"}"#)
    );

    // Replaced by a newer registration of the same node: the old handle no longer updates.
    let newer = registry
        .register("api", node("n1", &[("v", "new")]), TTL)
        .unwrap();
    let err = reg.update(info(&[("v", "old")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    newer.unregister().await.unwrap();
    let err = newer.update(info(&[("v", "2")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(etcd.get("/s/api/n1").unwrap(), None, "not put back");

    let other = registry.register("api", node("n2", &[]), TTL).unwrap();
    registry.close().await.unwrap();
    let err = other.update(info(&[("v", "2")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

/// Info given as bytes, as C and Go hand it over, is stored exactly as Go's `json.Marshal` writes
/// the same `map[string]string` (NUL escaped, each invalid UTF-8 byte as `\ufffd`) and read back
/// as Go reads it; `None` is no info object (an empty value); update_bytes likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_bytes_are_stored_as_go_writes_them() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let mut given = InfoBytes::new();
    given.insert(b"z\xff", b"a\0b\xe2\x80");
    given.insert(b"a", b"<\xc0\x80>");
    let reg = registry
        .register_bytes("api", "n1", Some(&given), TTL, None)
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    // Expected bytes from Go's json.Marshal (go1.26) of the same map.
    assert_eq!(
        etcd.get("/s/api/n1").unwrap().as_deref(),
        Some(r#"{"a":"\u003c\ufffd\ufffd\u003e","z\ufffd":"a\u0000b\ufffd\ufffd"}"#)
    );
    let listed = registry.list("api").await.unwrap();
    assert_eq!(listed[0].info, given.to_info());
    assert_eq!(listed[0].info["a"], "<\u{FFFD}\u{FFFD}>");

    let bare = registry
        .register_bytes("api", "n2", None, TTL, None)
        .unwrap();
    bare.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(etcd.get("/s/api/n2").unwrap().as_deref(), Some(""));

    let mut next = InfoBytes::new();
    next.insert(b"v\0", b"\xfe");
    reg.update_bytes(&next).unwrap();
    eventually("the update to land", || async {
        etcd.get("/s/api/n1").unwrap().as_deref() == Some(r#"{"v\u0000":"\ufffd"}"#)
    })
    .await;
    let mut empty_key = InfoBytes::new();
    empty_key.insert(b"", b"v");
    let err = reg.update_bytes(&empty_key).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = registry
        .register_bytes("api", "n3", Some(&empty_key), TTL, None)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

/// `Registration::node()` gives back exactly the info given, whether the registration keeps it
/// as its encoded value only (the usual case) or beside it (info that does not decode back to
/// itself): escaped characters, empty info, no info, and bytes that are not UTF-8 (as bytes
/// to `register_bytes`/`update_bytes`, where the node's info is `InfoBytes::to_info`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_gives_back_the_info_as_given() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let escaped = node(
        "n1",
        &[("a<b>&", "\"q\" \\ \u{2028} é \u{1}"), ("plain", "x")],
    );
    let reg = registry.register("api", escaped.clone(), TTL).unwrap();
    assert_eq!(reg.node(), escaped);
    let empty = node("n2", &[]);
    let reg2 = registry.register("api", empty.clone(), TTL).unwrap();
    assert_eq!(reg2.node(), empty);
    let reg3 = registry
        .register("api", Node::without_info("n3"), TTL)
        .unwrap();
    assert_eq!(reg3.node(), Node::without_info("n3"));

    let mut bytes = InfoBytes::new();
    bytes.insert(b"k\xff\xfe", b"v\xc3\x28x");
    bytes.insert(b"ok", b"fine");
    let reg4 = registry
        .register_bytes("api", "n4", Some(&bytes), TTL, None)
        .unwrap();
    assert_eq!(reg4.node(), Node::new("n4", bytes.to_info()));

    reg.wait_registered(DEADLINE).await.unwrap();
    reg.update_bytes(&bytes).unwrap();
    assert_eq!(reg.node(), Node::new("n1", bytes.to_info()));
    reg.update(info(&[("v", "2")])).unwrap();
    assert_eq!(reg.node(), node("n1", &[("v", "2")]));
}
