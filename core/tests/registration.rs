//! Registering, listing and unregistering against a real etcd: the wire format, validation,
//! leases shared per TTL, authentication and timeouts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_harness::EtcdCluster;
use etcd_registry::{
    Config, ErrorKind, Node, Registration, RegistrationState, Registry, StatusEvent,
    WatchEventKind, MAX_KEY_BYTES, MAX_REQUEST_BYTES,
};

/// Some requests carry a key twice (the delete made only while the key is on its lease, a
/// range with its end): a key longer than [`MAX_KEY_BYTES`] is refused when registering,
/// listing or watching, and the longest accepted is registered, listed, watched and
/// unregistered, its key deleted while its lease lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_key_accepted_is_registered_listed_watched_and_unregistered() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/k")).await.unwrap();
    let ttl = Duration::from_secs(60);
    // It keeps the lease alive: the long key must be deleted, not left to expire.
    let other = registry.register("s", node("other", &[]), ttl).unwrap();
    other.wait_registered(DEADLINE).await.unwrap();

    let longest = "n".repeat(MAX_KEY_BYTES - "/k/s/".len());
    let err = registry
        .register("s", node(&format!("{longest}n"), &[]), ttl)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("key"), "{err}");
    assert!(err.message().contains("too long"), "{err}");

    let reg = registry
        .register("s", node(&longest, &[("a", "1")]), ttl)
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(reg.lease_id(), other.lease_id(), "one lease per TTL");
    let watch = registry.watch("s").await.unwrap();
    assert_eq!(watch.nodes().len(), 2);
    let names: Vec<usize> = registry
        .list("s")
        .await
        .unwrap()
        .iter()
        .map(|n| n.name.len())
        .collect();
    assert!(names.contains(&longest.len()), "{names:?}");
    reg.unregister().await.unwrap();
    // After the listing's `Added` events.
    let gone = loop {
        let event = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .unwrap()
            .unwrap();
        if event.kind != WatchEventKind::Added {
            break event;
        }
    };
    assert_eq!(gone.kind, WatchEventKind::Removed);
    assert_eq!(gone.node.map(|n| n.name.len()), Some(longest.len()));
    let left: Vec<String> = etcd
        .get_prefix("/k/s/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, ["/k/s/other"]);
    assert_eq!(registry.list("s").await.unwrap().len(), 1);

    let service = "s".repeat(MAX_KEY_BYTES - "/k/".len() - 1);
    assert!(registry.list(&service).await.unwrap().is_empty());
    registry.watch(&service).await.unwrap().cancel();
    for too_long in [format!("{service}s")] {
        let err = registry.list(&too_long).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let err = registry.watch(&too_long).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_lists_and_unregisters_in_the_go_wire_format() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/services")).await.unwrap();
    let reg = registry
        .register(
            "api",
            node(
                "node-1",
                &[("version", "1.0.0"), ("address", "10.0.0.5:8080")],
            ),
            Duration::from_secs(10),
        )
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(reg.state(), RegistrationState::Registered);

    // What another service (the Go library, etcdctl) reads.
    let stored = etcd.get_prefix("/services/").unwrap();
    assert_eq!(
        stored,
        vec![(
            "/services/api/node-1".to_string(),
            r#"{"address":"10.0.0.5:8080","version":"1.0.0"}"#.to_string()
        )]
    );
    let lease = reg.lease_id().expect("a lease while registered");
    assert_eq!(etcd.lease_list().unwrap(), vec![lease]);

    let nodes = registry.list("api").await.unwrap();
    assert_eq!(
        nodes,
        vec![node(
            "node-1",
            &[("version", "1.0.0"), ("address", "10.0.0.5:8080")]
        )]
    );
    assert!(registry.list("unknown").await.unwrap().is_empty());

    reg.unregister().await.unwrap();
    assert!(
        etcd.get_prefix("/services/").unwrap().is_empty(),
        "key deleted at once"
    );
    assert!(
        etcd.lease_list().unwrap().is_empty(),
        "lease revoked with its last key"
    );
    assert_eq!(reg.state(), RegistrationState::Unregistered);
    reg.unregister().await.unwrap();
    registry.close().await.unwrap();
    record_version("register, list, unregister (wire format)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_and_end_with_unregistered() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    let mut events = reg.subscribe();
    let (first, before) = wait_event(&mut events, "registered", |e| {
        matches!(e, StatusEvent::Registered { .. })
    })
    .await;
    assert!(before.is_empty(), "nothing before registered: {before:?}");
    assert_eq!(
        first,
        StatusEvent::Registered {
            lease_id: reg.lease_id().unwrap()
        }
    );
    reg.unregister().await.unwrap();
    assert_eq!(events.recv().await, Some(StatusEvent::Unregistered));
    assert_eq!(events.recv().await, None, "no event after unregistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_joined_like_go_path_join() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "//services//"))
        .await
        .unwrap();
    let reg = registry
        .register("a/b", node("10.0.0.1/x", &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(reg.key(), "/services/a-b/10.0.0.1-x");
    assert_eq!(
        etcd.get_prefix("/services/").unwrap(),
        vec![("/services/a-b/10.0.0.1-x".to_string(), "{}".to_string())]
    );
    let listed = registry.list("a/b").await.unwrap();
    assert_eq!(listed, vec![node("10.0.0.1-x", &[])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_what_the_go_library_wrote_and_survives_garbage() {
    let etcd = etcd();
    etcd.put("/services/api/go-node", r#"{"version":"1.0.0"}"#)
        .unwrap();
    etcd.put("/services/api/empty", "").unwrap();
    etcd.put("/services/api/garbage", "not json {").unwrap();
    etcd.put("/services/api/array", "[1,2]").unwrap();
    etcd.put("/services/api/deeper/child", "{}").unwrap();
    etcd.put("/services/api2/other", "{}").unwrap();
    let registry = Registry::connect(config(&etcd, "/services")).await.unwrap();
    let mut nodes = registry.list("api").await.unwrap();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        nodes,
        vec![
            Node::without_info("array"),
            node("deeper/child", &[]),
            Node::without_info("empty"),
            Node::without_info("garbage"),
            node("go-node", &[("version", "1.0.0")]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_info_is_stored_as_an_empty_value() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/services")).await.unwrap();
    let ttl = Duration::from_secs(30);
    for node in [Node::without_info("none"), node("empty", &[])] {
        let reg = registry.register("api", node, ttl).unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    // As the Go library writes a nil map, and an empty one.
    assert_eq!(
        etcd.get_prefix("/services/api/").unwrap(),
        vec![
            ("/services/api/empty".to_string(), "{}".to_string()),
            ("/services/api/none".to_string(), String::new()),
        ]
    );
    let listed = registry.list("api").await.unwrap();
    assert_eq!(listed, vec![node("empty", &[]), Node::without_info("none")]);
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_reads_every_value_as_list_does() {
    let etcd = etcd();
    for (name, value) in [
        ("plain", r#"{"b":"2","a":"1"}"#),
        ("escaped", r#"{"k":"v\"q\u0000","\u00e9":"x"}"#),
        ("utf8", r#"{"é":"☃"}"#),
        ("number", r#"{"port":8080}"#),
        ("duplicate", r#"{"k":"1","k":"2"}"#),
        ("spaces", r#" { "a" : "b" } "#),
        ("empty", ""),
        ("garbage", "not json {"),
        ("array", "[1,2]"),
    ] {
        etcd.put(&format!("/services/api/{name}"), value).unwrap();
    }
    etcd.put("/services/api/deeper/child", "{}").unwrap();
    let registry = Registry::connect(config(&etcd, "/services")).await.unwrap();
    let mut want = registry.list("api").await.unwrap();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    // Every key below the service is a node, as the Go library lists it: "deeper/child" too.
    assert_eq!(want.len(), 10);
    assert!(want.iter().any(|n| n.name == "deeper/child"));
    // Values that are empty or not JSON objects are nodes without an info object.
    let absent: Vec<&str> = want
        .iter()
        .filter(|n| n.info_absent)
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(absent, ["array", "empty", "garbage"]);
    let mut got = registry
        .list_with("api", |name, info, info_absent| {
            assert!(
                info.windows(2).all(|w| w[0].0 < w[1].0),
                "info sorted by key"
            );
            let info = info.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            Node {
                info_absent,
                ..Node::new(name, info.collect())
            }
        })
        .await
        .unwrap();
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got, want);
    let escaped = got.iter().find(|n| n.name == "escaped").unwrap();
    assert_eq!(escaped.info["k"], "v\"q\0");
    assert_eq!(escaped.info["é"], "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_rejected_at_once() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let ttl = Duration::from_secs(5);
    let kind = |r: etcd_registry::Result<_>| r.map(|_| ()).unwrap_err().kind();
    assert_eq!(
        kind(registry.register("", node("n", &[]), ttl)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(registry.register("api", node("", &[]), ttl)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(registry.register("api", node("n", &[]), Duration::ZERO)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(registry.register("api", node("n", &[]), Duration::from_secs(u64::MAX))),
        ErrorKind::InvalidArgument
    );
    let huge = "x".repeat(MAX_REQUEST_BYTES);
    let err = registry
        .register("api", node("n", &[("blob", &huge)]), ttl)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("too large"), "{err}");
    assert_eq!(
        registry.list("").await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        registry.watch("").await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );

    // A wait longer than the clock can count waits without a deadline, never a panic.
    let reg = registry.register("api", node("n", &[]), ttl).unwrap();
    reg.wait_registered(Duration::MAX).await.unwrap();
    reg.unregister().await.unwrap();
    let err = Registry::connect(config(&etcd, "/s").with_timeout(Duration::MAX))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    for endpoints in [
        vec![],
        vec!["no-port".to_string()],
        vec!["h:notaport".to_string()],
    ] {
        let err = Registry::connect(Config::new(endpoints.clone(), "/s"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{endpoints:?}");
    }
    assert!(
        etcd.get_prefix("/s/").unwrap().is_empty(),
        "nothing is left"
    );
}

/// A registration says registered once all of it is in place: its key in etcd, its lease kept
/// alive and the watch of its key open. A caller waiting for it starts its next work after the
/// registration's, not beside its last step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_means_key_keep_alive_and_key_watch_in_place() {
    let etcd = etcd_with_proxy();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    // Every round trip of the registry takes 0.2 s: a step still in flight when it says
    // registered would still be in flight when etcd's counters are read (not through the proxy).
    etcd.delay_member(0, Duration::from_millis(100)).unwrap();
    let gauge = |name: &str| gauge(&etcd, name);
    // Each the first of its TTL: a lease, a keep-alive stream and a key watch of its own.
    for (i, ttl) in [10, 11, 12].into_iter().enumerate() {
        let reg = registry
            .register("api", node(&format!("n{i}"), &[]), Duration::from_secs(ttl))
            .unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        assert!(etcd.get(&format!("/s/api/n{i}")).unwrap().is_some());
        let keep_alives = etcd
            .grpc_received(0)
            .unwrap()
            .get("LeaseKeepAlive")
            .copied();
        assert!(
            keep_alives >= Some(i as u64 + 1),
            "keep-alives: {keep_alives:?}"
        );
        assert_eq!(
            gauge("etcd_debugging_mvcc_watcher_total"),
            i as u64 + 1,
            "etcd's watchers when registration {i} said registered"
        );
    }
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_per_ttl_and_close_removes_everything() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let mut regs = Vec::new();
    for (i, ttl) in [5, 5, 5, 7, 7].into_iter().enumerate() {
        regs.push(
            registry
                .register("api", node(&format!("n{i}"), &[]), Duration::from_secs(ttl))
                .unwrap(),
        );
    }
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    assert_eq!(etcd.get_prefix("/s/api/").unwrap().len(), 5);
    assert_eq!(etcd.lease_count().unwrap(), 2, "one lease per distinct TTL");
    assert_eq!(registry.lease_ids().len(), 2);

    // Unregistering one of three keys keeps the shared lease for the other two.
    regs[0].unregister().await.unwrap();
    assert_eq!(etcd.get_prefix("/s/api/").unwrap().len(), 4);
    assert_eq!(etcd.lease_count().unwrap(), 2);

    let mut events = regs[1].subscribe();
    registry.close().await.unwrap();
    assert!(
        etcd.get_prefix("/s/").unwrap().is_empty(),
        "every key gone at close"
    );
    assert_eq!(
        etcd.lease_count().unwrap(),
        0,
        "every lease revoked at close"
    );
    let (_, _) = wait_event(&mut events, "unregistered", |e| {
        *e == StatusEvent::Unregistered
    })
    .await;
    for reg in &regs {
        assert_eq!(reg.state(), RegistrationState::Unregistered);
    }

    registry.close().await.unwrap();
    let err = registry
        .register("api", node("late", &[]), Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert_eq!(
        registry.list("api").await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    record_version("one shared lease per TTL; close revokes");
}

/// A registry that registers with one TTL after another (a TTL per deployment, per tenant…)
/// keeps no task per TTL it no longer uses, and a TTL used again gets its lease again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_no_longer_used_leaves_no_task_behind() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    // One registration first, so that what lives as long as the registry (its connection's
    // and shared watch stream's tasks) is counted in the baseline.
    let first = registry
        .register("api", node("first", &[]), Duration::from_secs(5))
        .unwrap();
    first.wait_registered(DEADLINE).await.unwrap();
    first.unregister().await.unwrap();
    let baseline = tasks();

    const TTLS: u64 = 40;
    let regs: Vec<Registration> = (0..TTLS)
        .map(|i| {
            registry
                .register(
                    "api",
                    node(&format!("n{i}"), &[]),
                    Duration::from_secs(10 + i),
                )
                .unwrap()
        })
        .collect();
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    assert_eq!(registry.lease_ids().len(), TTLS as usize);
    assert!(tasks() >= baseline + TTLS as usize, "a task per TTL in use");
    for reg in &regs {
        reg.unregister().await.unwrap();
    }
    assert_eq!(etcd.lease_count().unwrap(), 0, "every lease revoked");
    eventually("the tasks of the TTLs no longer used to end", || async {
        tasks() <= baseline + 2
    })
    .await;
    assert!(registry.lease_ids().is_empty());

    // A TTL used again starts over: a lease, kept alive, and the key guarded as before.
    let again = registry
        .register("api", node("again", &[]), Duration::from_secs(10))
        .unwrap();
    again.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(registry.lease_ids(), vec![again.lease_id().unwrap()]);
    etcd.delete("/s/api/again").unwrap();
    eventually("the deleted key to be put back", || async {
        etcd.get_prefix("/s/api/").unwrap().len() == 1
    })
    .await;
    registry.close().await.unwrap();
    assert_eq!(etcd.lease_count().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_the_same_node_again_replaces_the_old_registration() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let old = registry
        .register("api", node("n1", &[("v", "1")]), Duration::from_secs(5))
        .unwrap();
    old.wait_registered(DEADLINE).await.unwrap();
    let watch = registry.watch("api").await.unwrap();
    let new = registry
        .register("api", node("n1", &[("v", "2")]), Duration::from_secs(9))
        .unwrap();
    // Ended from now on, as `update` says below.
    assert_eq!(old.state(), RegistrationState::Unregistered);
    assert_eq!(old.lease_id(), None);
    new.wait_registered(DEADLINE).await.unwrap();
    let expected = vec![("/s/api/n1".to_string(), r#"{"v":"2"}"#.to_string())];
    eventually("only the new value and lease", || async {
        etcd.get_prefix("/s/").unwrap() == expected && etcd.lease_count().unwrap() == 1
    })
    .await;
    // The key moved to the new lease without leaving etcd: watchers saw the new info, never
    // the node removed.
    etcd.put("/s/api/marker", "{}").unwrap();
    assert_eq!(
        until_marker(&watch).await,
        [
            (WatchEventKind::Added, node("n1", &[("v", "1")])),
            (WatchEventKind::Updated, node("n1", &[("v", "2")])),
        ]
    );
    etcd.delete("/s/api/marker").unwrap();
    assert_eq!(registry.registration_count(), 1);
    // The replaced handle no longer speaks for the node: updating it fails, unregistering it
    // leaves the newer registration and its key alone.
    let err = old.update(info(&[("v", "3")])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    old.unregister().await.unwrap();
    assert_eq!(new.state(), RegistrationState::Registered);
    assert_eq!(registry.registration_count(), 1);
    assert_eq!(etcd.get_prefix("/s/").unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_node_again_on_the_same_lease_replaces_and_is_still_guarded() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let ttl = Duration::from_secs(5);
    let old = registry
        .register("api", node("n1", &[("v", "1")]), ttl)
        .unwrap();
    old.wait_registered(DEADLINE).await.unwrap();
    let lease = old.lease_id();
    let watch = registry.watch("api").await.unwrap();
    let new = registry
        .register("api", node("n1", &[("v", "2")]), ttl)
        .unwrap();
    new.wait_registered(DEADLINE).await.unwrap();
    eventually("the old registration to end", || async {
        old.state() == RegistrationState::Unregistered
    })
    .await;
    drop(old);
    let expected = vec![("/s/api/n1".to_string(), r#"{"v":"2"}"#.to_string())];
    eventually("only the new value", || async {
        etcd.get_prefix("/s/").unwrap() == expected
    })
    .await;
    // One put of the new info on the lease already there: no removal, no new lease.
    assert_eq!(new.lease_id(), lease);
    etcd.put("/s/api/marker", "{}").unwrap();
    assert_eq!(
        until_marker(&watch).await,
        [
            (WatchEventKind::Added, node("n1", &[("v", "1")])),
            (WatchEventKind::Updated, node("n1", &[("v", "2")])),
        ]
    );
    etcd.delete("/s/api/marker").unwrap();
    // The key is still the registry's after the older holder left: deleted by someone else,
    // it is put back.
    assert_eq!(etcd.delete("/s/api/n1").unwrap(), 1);
    eventually("the key put back", || async {
        etcd.get_prefix("/s/").unwrap() == expected
    })
    .await;
    assert_eq!(new.state(), RegistrationState::Registered);
    assert_eq!(etcd.lease_count().unwrap(), 1);
    assert_eq!(registry.registration_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_registrations_from_16_tasks_share_one_lease() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let mut regs = Vec::new();
            for i in 0..(1000 / 16 + 1) {
                let n = t * 63 + i;
                if n >= 1000 {
                    break;
                }
                regs.push(
                    registry
                        .register(
                            "bulk",
                            node(&format!("n{n:04}"), &[("i", &n.to_string())]),
                            Duration::from_secs(10),
                        )
                        .unwrap(),
                );
            }
            for reg in &regs {
                reg.wait_registered(DEADLINE).await.unwrap();
            }
            regs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(all.len(), 1000);
    let nodes = registry.list("bulk").await.unwrap();
    assert_eq!(nodes.len(), 1000);
    assert_eq!(
        etcd.lease_count().unwrap(),
        1,
        "1000 keys of one TTL hold one lease"
    );
    registry.close().await.unwrap();
    assert!(etcd.get_prefix("/s/").unwrap().is_empty());
}

/// What the library logged to a subscriber of one thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Credentials given to an etcd without authentication: the registry proceeds without them and
/// logs a warning, once (README). The test runs on a runtime of its own thread, whose logs it
/// captures (the other tests of this file, beside it, log to the process's subscriber).
#[test]
fn credentials_against_a_server_without_auth_still_register_with_one_warning() {
    use tracing_subscriber::util::SubscriberInitExt;
    let etcd = etcd();
    let logged = Captured::default();
    let sink = logged.clone();
    let _logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("etcd_registry=warn"))
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish()
        .set_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let registry = Registry::connect(config(&etcd, "/s").with_credentials("user", "secret"))
            .await
            .unwrap();
        let reg = registry
            .register("api", node("n1", &[]), Duration::from_secs(5))
            .unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        assert_eq!(registry.list("api").await.unwrap().len(), 1);
        let watch = registry.watch("api").await.unwrap();
        assert_eq!(watch.nodes().len(), 1);
        registry.close().await.unwrap();
    });
    let logged = String::from_utf8_lossy(&logged.0.lock().unwrap()).into_owned();
    assert_eq!(
        logged
            .matches("credentials were given but etcd has authentication disabled")
            .count(),
        1,
        "logged:\n{logged}"
    );
    assert!(logged.contains("WARN"), "a warning: {logged}");
}

/// Credentials given while etcd's authentication is off, and etcd then turns it on: the registry
/// connects again with them (its connections made without them are refused from then on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_once_etcd_turns_authentication_on() {
    let etcd = std::sync::Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s").with_credentials("user", "secret"))
        .await
        .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let e = etcd.clone();
    blocking(move || e.enable_auth("user", "secret").unwrap()).await;
    // The first call after, made without the user and refused, is made again with it.
    assert_eq!(registry.list("api").await.unwrap().len(), 1);
    registry.close().await.unwrap();
}

/// The same, with a write as the first call after: it is made again with the credentials, and
/// the node is registered at its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_etcd_turns_authentication_on_is_made_again_with_the_credentials() {
    let etcd = std::sync::Arc::new(etcd());
    let registry = Registry::connect(config(&etcd, "/s").with_credentials("user", "secret"))
        .await
        .unwrap();
    assert!(registry.list("api").await.unwrap().is_empty());
    let e = etcd.clone();
    blocking(move || e.enable_auth("user", "secret").unwrap()).await;
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    // Fails at once with the first attempt's error if that attempt failed.
    reg.wait_registered(DEADLINE).await.unwrap();
    registry.close().await.unwrap();
}

/// Watches `service` anew, registers `name` there and waits for the watch to see it; returns
/// the registration.
async fn a_new_watch_sees_a_new_node(
    registry: &Registry,
    service: &str,
    name: &str,
) -> Registration {
    let watch = registry.watch(service).await.unwrap();
    let reg = registry
        .register(service, node(name, &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    eventually(
        &format!("a watch of {service} made now to see {name}"),
        || async { watch.nodes().iter().any(|n| n.name == name) },
    )
    .await;
    reg
}

/// etcd's JWT tokens carry the revision of its auth store: after any change to its users or
/// roles, a call with a token handed out before is refused ("revision of auth store is old")
/// until the client authenticates again, which clients are expected to do at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_etcds_users_does_not_lock_out_a_registry_with_jwt_tokens() {
    init_logs();
    let etcd = Arc::new(EtcdCluster::builder().jwt_tokens(true).start().unwrap());
    etcd.enable_auth("svc", "right").unwrap();
    let registry = Registry::connect(config(&etcd, "/s").with_credentials("svc", "right"))
        .await
        .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let lease = reg.lease_id().unwrap();
    let watch = registry.watch("api").await.unwrap();
    assert_eq!(registry.list("api").await.unwrap().len(), 1);

    // An operator adds a user: every token handed out so far is now old.
    let e = etcd.clone();
    blocking(move || {
        e.etcdctl(&["user", "add", "another", "--new-user-password=x"])
            .unwrap()
    })
    .await;

    // A node joining the live lease, a list, and a watch made on the stream opened before.
    let reg2 = registry
        .register("api", node("n2", &[]), Duration::from_secs(5))
        .unwrap();
    reg2.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(registry.list("api").await.unwrap().len(), 2);
    // Not taken for a failure of etcd: the nodes stay on their lease.
    assert_eq!(reg.lease_id(), Some(lease));
    assert_eq!(reg2.lease_id(), Some(lease));
    eventually("the watch made before to see n2", || async {
        watch.nodes().iter().any(|n| n.name == "n2")
    })
    .await;
    let e = etcd.clone();
    blocking(move || {
        e.etcdctl(&["role", "add", "another-role"]).unwrap();
    })
    .await;
    // Calls refused together authenticate once (each authentication is a write in etcd).
    let authentications = || grpc_counter(&etcd, "grpc_server_handled_total", "Authenticate");
    let before = authentications();
    let mut lists = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let registry = registry.clone();
        lists.spawn(async move { registry.list("api").await.map(|nodes| nodes.len()) });
    }
    while let Some(listed) = lists.join_next().await {
        assert_eq!(listed.unwrap().unwrap(), 2);
    }
    let authenticated = authentications() - before;
    assert!(
        (1..=2).contains(&authenticated),
        "{authenticated} authentications for 20 lists refused together"
    );
    // A watch made now joins the registry's watch stream, opened with the old token.
    let _reg3 = a_new_watch_sees_a_new_node(&registry, "late", "n3").await;
    // Two keep-alives later, the nodes are still on their lease: the refusals were not taken
    // for writes that may land late, which would have moved them to a new one.
    let renewed = gauge(&etcd, "etcd_debugging_lease_renewed_total");
    eventually("two more keep-alives", || async {
        gauge(&etcd, "etcd_debugging_lease_renewed_total") >= renewed + 2
    })
    .await;
    assert_eq!(reg.lease_id(), Some(lease));
    assert_eq!(reg2.lease_id(), Some(lease));
    registry.close().await.unwrap();
    record_version("auth: JWT tokens, a user added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_works_and_a_wrong_password_is_a_clear_auth_error() {
    init_logs();
    let etcd = Arc::new(EtcdCluster::builder().auth_token_ttl(2).start().unwrap());
    etcd.enable_auth("svc", "right").unwrap();

    let good = Registry::connect(config(&etcd, "/s").with_credentials("svc", "right"))
        .await
        .unwrap();
    let reg = good
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let watch = good.watch("api").await.unwrap();

    // Idle past the token TTL: the token expires and must be renewed transparently.
    let idle_until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut events = reg.subscribe();
    // The first subscriber gets the history so far.
    assert!(matches!(
        events.try_recv(),
        Ok(StatusEvent::Registered { .. })
    ));
    tokio::time::sleep_until(idle_until).await;
    assert_eq!(
        good.list("api").await.unwrap().len(),
        1,
        "list after the token expired"
    );
    // A watch made now joins the registry's watch stream, opened before with the expired
    // token, which etcd checks for each watcher it creates.
    let _reg3 = a_new_watch_sees_a_new_node(&good, "late", "n3").await;
    let reg2 = good
        .register("api", node("n2", &[]), Duration::from_secs(5))
        .unwrap();
    reg2.wait_registered(DEADLINE).await.unwrap();
    eventually("the watch to see n2 after token expiry", || async {
        watch.nodes().iter().any(|n| n.name == "n2")
    })
    .await;
    let during_idle = events.try_recv();
    assert!(
        during_idle.is_err(),
        "no loss of n1 while idle: {during_idle:?}"
    );

    let anonymous = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let err = anonymous.list("api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");

    let bad = Registry::connect(config(&etcd, "/s").with_credentials("svc", "wrong"))
        .await
        .unwrap();
    let reg = bad
        .register("api", node("intruder", &[]), Duration::from_secs(5))
        .unwrap();
    let err = reg.wait_registered(DEADLINE).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains("authentication"), "{err}");
    let err = bad.list("api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    // Retries are paced by the backoff: a handful of attempts, not a flood.
    let mut events = reg.subscribe();
    let (retry, _) = wait_event(&mut events, "a retry", |e| {
        matches!(e, StatusEvent::Retrying { .. })
    })
    .await;
    if let StatusEvent::Retrying { delay, error, .. } = retry {
        assert!(delay >= Duration::from_millis(160), "{delay:?}");
        assert_eq!(error.kind(), ErrorKind::Auth);
    }
    let keys = etcd
        .etcdctl_as(
            Some("root:right"),
            &["get", "/s/", "--prefix", "--keys-only"],
        )
        .unwrap();
    assert!(!keys.contains("intruder"), "{keys}");
    bad.close().await.unwrap();
    good.close().await.unwrap();
    record(
        "7. auth: token TTL 2s idled past; wrong password",
        "register, list, watch (also one made after expiry) work; wrong password: auth error, backoff-paced retries",
    );
    record_version("auth: token expiry, wrong password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_gives_a_timeout_and_keeps_retrying() {
    init_logs();
    // A listener that never answers: connections hang like a black-holed host.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = silent.local_addr().unwrap().to_string();
    let registry = Registry::connect(
        Config::new([endpoint], "/s")
            .with_timeout(Duration::from_secs(1))
            .with_backoff(Duration::from_millis(100), Duration::from_millis(400)),
    )
    .await
    .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    let mut events = reg.subscribe();
    let err = reg.wait_registered(DEADLINE).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The failed attempt's error, not the wait's own deadline.
    assert!(!err.is_wait_timeout(), "{err}");
    assert!(err.to_string().contains("did not finish within"), "{err}");
    let (failed, _) = wait_event(&mut events, "failed", |e| {
        matches!(e, StatusEvent::Failed { .. })
    })
    .await;
    assert!(matches!(failed, StatusEvent::Failed { error } if error.kind() == ErrorKind::Timeout));
    // Retries continue in the background.
    wait_event(&mut events, "second retry", |e| {
        matches!(e, StatusEvent::Retrying { attempt: 2, .. })
    })
    .await;
    assert_eq!(reg.state(), RegistrationState::Registering);
    let err = registry.list("api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_registered_times_out_while_etcd_is_down() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    // Registered once: waiting again succeeds at once, whatever happens later.
    etcd.kill(0).unwrap();
    reg.wait_registered(Duration::from_millis(1)).await.unwrap();
    let node = Node::new("n2", Default::default());
    let reg2 = registry
        .register("api", node, Duration::from_secs(5))
        .unwrap();
    let err = reg2
        .wait_registered(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connection),
        "{err}"
    );
}

/// Enables authentication on `etcd` (root's password `rootpw`) with a user `svc` (password `pw`)
/// who may read and write only under `prefix`; returns etcdctl run as root.
fn with_limited_user<'a>(etcd: &'a EtcdCluster, prefix: &str) -> impl Fn(&[&str]) -> String + 'a {
    etcd.enable_auth("root", "rootpw").unwrap();
    let ctl = |args: &[&str]| etcd.etcdctl_as(Some("root:rootpw"), args).unwrap();
    ctl(&["role", "add", "limited"]);
    ctl(&[
        "role",
        "grant-permission",
        "limited",
        "readwrite",
        prefix,
        "--prefix",
    ]);
    ctl(&["user", "add", "svc:pw"]);
    ctl(&["user", "grant-role", "svc", "limited"]);
    ctl
}

/// The events of `watch` up to the first one of a node named `marker`. Watch events come in
/// revision order: whatever was written before the marker was registered is among them.
async fn until_marker(watch: &etcd_registry::Watch) -> Vec<(WatchEventKind, etcd_registry::Node)> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("a watch event")
            .expect("the watch goes on");
        let node = event.node.expect("a node");
        if node.name == "marker" {
            return seen;
        }
        seen.push((event.kind, node));
    }
}

/// A close whose revoke etcd refuses deletes the registry's keys one by one instead, but only
/// those still on its lease. Here the revoke is refused because an administrator attached a key
/// the registry's user may not write to its lease (etcd checks a revoke against every key on
/// the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_whose_revoke_is_refused_deletes_only_the_keys_still_on_its_lease() {
    init_logs();
    let etcd = EtcdCluster::start_single().unwrap();
    let ctl = with_limited_user(&etcd, "/s/");
    let limited = || config(&etcd, "/s").with_credentials("svc", "pw");
    let old = Registry::connect(limited()).await.unwrap();
    let new = Registry::connect(limited()).await.unwrap();
    let watcher = Registry::connect(limited()).await.unwrap();
    let watch = watcher.watch("t").await.unwrap();
    // A long TTL: a key left on the old lease would stay for the rest of the test.
    let ttl = Duration::from_secs(60);
    let shared = old
        .register("t", node("n1", &[("who", "old")]), ttl)
        .unwrap();
    let own = old
        .register("t", node("n2", &[("who", "old")]), ttl)
        .unwrap();
    shared.wait_registered(DEADLINE).await.unwrap();
    own.wait_registered(DEADLINE).await.unwrap();
    let lease = format!("{:x}", shared.lease_id().unwrap());
    ctl(&["put", "/admin/pinned", "x", &format!("--lease={lease}")]);
    let after = new
        .register("t", node("n1", &[("who", "new")]), ttl)
        .unwrap();
    after.wait_registered(DEADLINE).await.unwrap();

    old.close().await.unwrap();
    assert_eq!(own.state(), RegistrationState::Unregistered);
    // The revoke was refused: the lease and the administrator's key are still there.
    assert!(
        ctl(&["lease", "timetolive", &lease]).contains("remaining"),
        "the revoke was not refused"
    );
    let keys = ctl(&["get", "/", "--prefix"]);
    assert!(keys.contains("/admin/pinned"), "{keys}");
    // The old registry's own key is gone; the key the new one took over stays, with its value.
    assert!(!keys.contains("/s/t/n2"), "{keys}");
    assert!(keys.contains("/s/t/n1\n{\"who\":\"new\"}"), "{keys}");
    // Never deleted meanwhile (the new registry would have put it back at once): watch events
    // come in revision order, so a deletion made by the close comes before the marker.
    let marker = new.register("t", node("marker", &[]), ttl).unwrap();
    let seen: Vec<_> = until_marker(&watch)
        .await
        .into_iter()
        .map(|(kind, node)| (kind, node.name))
        .collect();
    use WatchEventKind::*;
    let expected = [
        (Added, "n1"),
        (Added, "n2"),
        (Updated, "n1"),
        (Removed, "n2"),
    ];
    assert_eq!(seen, expected.map(|(kind, name)| (kind, name.to_string())));
    assert_eq!(after.state(), RegistrationState::Registered);
    marker.unregister().await.unwrap();
    new.close().await.unwrap();
    watcher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refused_by_etcd_does_not_hold_back_the_others_on_its_lease() {
    init_logs();
    let etcd = EtcdCluster::start_single().unwrap();
    let ctl = with_limited_user(&etcd, "/s/ok/");

    let registry = Registry::connect(config(&etcd, "/s").with_credentials("svc", "pw"))
        .await
        .unwrap();
    let forbidden = registry
        .register("forbidden", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    let allowed = registry
        .register("ok", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    allowed.wait_registered(DEADLINE).await.unwrap();
    let err = forbidden.wait_registered(DEADLINE).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(forbidden.state(), RegistrationState::Registering);
    assert_eq!(allowed.state(), RegistrationState::Registered);
    let keys = ctl(&["get", "/s/", "--prefix", "--keys-only"]);
    assert!(
        keys.contains("/s/ok/n1") && !keys.contains("forbidden"),
        "{keys}"
    );
    registry.close().await.unwrap();
}

/// A delete etcd refuses at an unregister (here a permission taken away, as "too many
/// requests" would) is returned to the caller, and the registration ends all the same; but the
/// key, on the lease the other registration keeps alive, is not left there: the delete is tried
/// again with the next keep-alive, once etcd accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_refused_at_unregister_is_tried_again_with_the_next_keep_alive() {
    init_logs();
    let etcd = EtcdCluster::start_single().unwrap();
    let ctl = with_limited_user(&etcd, "/s/");
    let registry = Registry::connect(config(&etcd, "/s").with_credentials("svc", "pw"))
        .await
        .unwrap();
    // Root's watch: not affected by the permissions taken away from the registry's user.
    let watcher = Registry::connect(config(&etcd, "/s").with_credentials("root", "rootpw"))
        .await
        .unwrap();
    let watch = watcher.watch("t").await.unwrap();
    // Keep-alives every 10 s: the retry comes with the first one after the unregister.
    let ttl = Duration::from_secs(30);
    let a = registry.register("t", node("a", &[]), ttl).unwrap();
    let b = registry.register("t", node("b", &[]), ttl).unwrap();
    a.wait_registered(DEADLINE).await.unwrap();
    b.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(a.lease_id(), b.lease_id());

    // The user may still write b's key, no longer a's.
    ctl(&["role", "revoke-permission", "limited", "/s/", "--prefix"]);
    ctl(&["role", "grant-permission", "limited", "readwrite", "/s/t/b"]);
    let err = a.unregister().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert_eq!(a.state(), RegistrationState::Unregistered);
    a.unregister().await.unwrap();
    let keys = ctl(&["get", "/s/", "--prefix", "--keys-only"]);
    assert!(keys.contains("/s/t/a") && keys.contains("/s/t/b"), "{keys}");

    ctl(&[
        "role",
        "grant-permission",
        "limited",
        "readwrite",
        "/s/",
        "--prefix",
    ]);
    let deadline = tokio::time::Instant::now() + ttl / 3 + Duration::from_secs(5);
    loop {
        let event = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("a's key deleted by the next keep-alive")
            .expect("the watch goes on");
        let node = event.node.expect("a node");
        assert!(
            event.kind != WatchEventKind::Removed || node.name == "a",
            "{node:?} removed"
        );
        if event.kind == WatchEventKind::Removed {
            break;
        }
    }
    let keys = ctl(&["get", "/s/", "--prefix", "--keys-only"]);
    assert!(
        !keys.contains("/s/t/a") && keys.contains("/s/t/b"),
        "{keys}"
    );
    assert_eq!(b.state(), RegistrationState::Registered);
    registry.close().await.unwrap();
    watcher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_wait_for_an_attempt_stuck_on_a_silent_etcd() {
    init_logs();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = silent.local_addr().unwrap().to_string();
    // Each call may wait 60 s for this etcd; close must not.
    let registry =
        Registry::connect(Config::new([endpoint], "/s").with_timeout(Duration::from_secs(60)))
            .await
            .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    let mut events = reg.subscribe();
    tokio::time::timeout(Duration::from_secs(30), registry.close())
        .await
        .expect("close returned while the attempt was still waiting for etcd")
        .unwrap();
    assert_eq!(reg.state(), RegistrationState::Unregistered);
    wait_event(&mut events, "unregistered", |e| {
        *e == StatusEvent::Unregistered
    })
    .await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registration_counts_its_own_attempts_from_one() {
    init_logs();
    // A port nobody listens on: every attempt fails at once with "connection refused".
    let endpoint = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let registry = Registry::connect(
        Config::new([endpoint], "/s")
            .with_timeout(Duration::from_secs(1))
            .with_backoff(Duration::from_millis(100), Duration::from_millis(400)),
    )
    .await
    .unwrap();
    let first = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    let mut first_events = first.subscribe();
    wait_event(&mut first_events, "second retry of n1", |e| {
        matches!(e, StatusEvent::Retrying { attempt: 2, .. })
    })
    .await;
    // The others join the same lease group while it is backing off after its second failure.
    for name in ["n2", "n3"] {
        let reg = registry
            .register("api", node(name, &[]), Duration::from_secs(5))
            .unwrap();
        let mut events = reg.subscribe();
        let mut attempts = Vec::new();
        while attempts.len() < 2 {
            let (event, _) = wait_event(&mut events, "a retry", |e| {
                matches!(e, StatusEvent::Retrying { .. })
            })
            .await;
            if let StatusEvent::Retrying { attempt, .. } = event {
                attempts.push(attempt);
            }
        }
        assert_eq!(attempts, [1, 2], "retry attempts of {name}");
    }
    // etcd was never there: closing can only give up on deleting, which is not this test's subject.
    let _ = registry.close().await;
}

/// Nodes joining a live lease at once go in transactions, and so do all of a lease's keys when
/// they are put again on a new lease. With large infos, 100 nodes of 100 kB are 10 MB: every
/// transaction must stay within what etcd takes in one request (1.5 MiB by default), or etcd
/// refuses it every time and the nodes never land. On a server configured with a lower limit,
/// the keys of a transaction it refuses as too large are put one by one. (A current-thread
/// runtime: the 100 registrations queue before the lease's task runs, so they join as one.)
#[tokio::test(flavor = "current_thread")]
async fn large_nodes_joining_at_once_land_within_etcds_request_limit() {
    init_logs();
    let big = "x".repeat(100_000);
    for limit in [None, Some("--max-request-bytes=262144")] {
        let etcd = match limit {
            None => EtcdCluster::start_single(),
            Some(arg) => EtcdCluster::builder().arg(arg).start(),
        }
        .expect("start etcd");
        let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
        let ttl = Duration::from_secs(10);
        let first = registry.register("big", node("first", &[]), ttl).unwrap();
        first.wait_registered(DEADLINE).await.unwrap();
        let regs: Vec<Registration> = (0..100)
            .map(|i| {
                let name = format!("n{i:03}");
                let info = [("blob", big.as_str()), ("name", name.as_str())];
                registry.register("big", node(&name, &info), ttl).unwrap()
            })
            .collect();
        for reg in &regs {
            reg.wait_registered(DEADLINE)
                .await
                .unwrap_or_else(|e| panic!("{limit:?}: {}: {e}", reg.key()));
        }
        let lease = first.lease_id().unwrap();
        assert!(
            regs.iter().all(|r| r.lease_id() == Some(lease)),
            "{limit:?}"
        );
        let nodes = registry.list("big").await.unwrap();
        assert_eq!(nodes.len(), 101, "{limit:?}");
        for n in nodes.iter().filter(|n| n.name != "first") {
            assert_eq!(n.info.get("name"), Some(&n.name), "{limit:?}");
            assert_eq!(
                n.info.get("blob").map(String::len),
                Some(big.len()),
                "{limit:?}"
            );
        }

        // The lease revoked by someone else: all 101 keys go again, on a new lease.
        etcd.lease_revoke(lease).unwrap();
        eventually("every key back on a new lease", || {
            let back = regs.iter().chain([&first]).all(|r| {
                r.state() == RegistrationState::Registered
                    && r.lease_id().is_some_and(|l| l != lease)
            });
            async move { back }
        })
        .await;
        assert_eq!(etcd.get_prefix("/s/big/").unwrap().len(), 101, "{limit:?}");
        assert_eq!(etcd.lease_count().unwrap(), 1, "{limit:?}");
        registry.close().await.unwrap();
        assert!(etcd.get_prefix("/s/").unwrap().is_empty(), "{limit:?}");
    }
}

/// A server with a lower limit of operations per transaction (`--max-txn-ops`) than etcd's
/// default (128) refuses the library's transactions as having too many: the keys then go in
/// smaller ones, not in a write each. (A current-thread runtime, as above: the nodes join as
/// one.)
#[tokio::test(flavor = "current_thread")]
async fn nodes_joining_at_once_fit_a_lower_limit_of_operations_per_transaction() {
    init_logs();
    let etcd = EtcdCluster::builder()
        .arg("--max-txn-ops=10")
        .start()
        .unwrap();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let ttl = Duration::from_secs(10);
    let first = registry.register("t", node("first", &[]), ttl).unwrap();
    first.wait_registered(DEADLINE).await.unwrap();
    let writes = || gauge(&etcd, "etcd_server_proposals_committed_total");
    let before = writes();
    let regs: Vec<Registration> = (0..100)
        .map(|i| {
            let name = format!("n{i:03}");
            registry.register("t", node(&name, &[]), ttl).unwrap()
        })
        .collect();
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    assert_eq!(registry.list("t").await.unwrap().len(), 101);
    let lease = first.lease_id().unwrap();
    assert!(regs.iter().all(|r| r.lease_id() == Some(lease)));
    // 100 keys in transactions of at most 10: about a dozen writes, not a hundred.
    let written = writes() - before;
    assert!(written <= 30, "{written} writes for 100 keys");

    // Once learnt, the size holds for the next transactions: all 101 keys again, on a new
    // lease, after someone revoked it.
    let before = writes();
    etcd.lease_revoke(lease).unwrap();
    eventually("every key back on a new lease", || {
        let back = regs.iter().chain([&first]).all(|r| {
            r.state() == RegistrationState::Registered && r.lease_id().is_some_and(|l| l != lease)
        });
        async move { back }
    })
    .await;
    assert_eq!(etcd.get_prefix("/s/t/").unwrap().len(), 101);
    let written = writes() - before;
    assert!(written <= 30, "{written} writes for 101 keys");
    registry.close().await.unwrap();
}

/// The longest TTL etcd grants (`MAX_TTL_SECS`, 285 years) works like any other: registered,
/// its key guarded (put back on the same lease when deleted), removed by close. Its keep-alive
/// period and deadlines are far beyond any timer's range, and must not overflow one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_ttl_etcd_grants_registers_and_is_guarded() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let reg = registry
        .register(
            "t",
            node("n1", &[]),
            Duration::from_secs(etcd_registry::MAX_TTL_SECS),
        )
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let lease = reg.lease_id().unwrap();
    assert_eq!(etcd.delete("/s/t/n1").unwrap(), 1);
    eventually("the key put back", || async {
        etcd.get("/s/t/n1").unwrap().is_some()
    })
    .await;
    assert_eq!(reg.lease_id(), Some(lease));
    assert_eq!(etcd.lease_list().unwrap(), vec![lease]);
    registry.close().await.unwrap();
    assert!(etcd.get_prefix("/s/").unwrap().is_empty());
    assert_eq!(etcd.lease_count().unwrap(), 0);
}

/// The same node registered by two processes (a new instance started before the old one
/// stopped): the second put takes the key over, on its own lease. When the old one unregisters,
/// the key stays the new one's: its watchers see it updated once and never removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_leaves_the_key_another_process_registered_since() {
    let etcd = etcd();
    let old = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let new = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watcher = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let watch = watcher.watch("t").await.unwrap();
    let ttl = Duration::from_secs(5);
    let before = old
        .register("t", node("n1", &[("who", "old")]), ttl)
        .unwrap();
    before.wait_registered(DEADLINE).await.unwrap();
    let after = new
        .register("t", node("n1", &[("who", "new")]), ttl)
        .unwrap();
    after.wait_registered(DEADLINE).await.unwrap();
    before.unregister().await.unwrap();
    // Watch events come in revision order: once the marker is seen, a delete made by the
    // unregister would have been seen before it.
    let marker = new.register("t", node("marker", &[]), ttl).unwrap();
    let seen: Vec<_> = until_marker(&watch)
        .await
        .into_iter()
        .map(|(kind, node)| (kind, node.info.get("who").cloned()))
        .collect();
    assert_eq!(
        seen,
        [
            (WatchEventKind::Added, Some("old".to_string())),
            (WatchEventKind::Updated, Some("new".to_string())),
        ]
    );
    assert_eq!(
        etcd.get("/s/t/n1").unwrap().as_deref(),
        Some(r#"{"who":"new"}"#)
    );
    assert_eq!(after.state(), RegistrationState::Registered);
    // The usual case is unchanged: a key on the registry's own lease is deleted.
    after.unregister().await.unwrap();
    marker.unregister().await.unwrap();
    assert!(etcd.get_prefix("/s/").unwrap().is_empty());
    for registry in [old, new, watcher] {
        registry.close().await.unwrap();
    }
}

/// A node registered twice at once, before the first registration's put: the first one never
/// says it is registered (its key was never put; the second's put carries the node), it only
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_replaced_before_its_put_never_says_registered() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    let ttl = Duration::from_secs(5);
    let first = registry
        .register("api", node("n1", &[("v", "1")]), ttl)
        .unwrap();
    let mut events = first.subscribe();
    let second = registry
        .register("api", node("n1", &[("v", "2")]), ttl)
        .unwrap();
    second.wait_registered(DEADLINE).await.unwrap();
    let (_, before) = wait_event(&mut events, "Unregistered", |e| {
        matches!(e, StatusEvent::Unregistered)
    })
    .await;
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, StatusEvent::Registered { .. })),
        "{before:?}"
    );
    assert_eq!(
        etcd.get_prefix("/s/").unwrap(),
        [("/s/api/n1".to_string(), r#"{"v":"2"}"#.to_string())]
    );
    registry.close().await.unwrap();
}

/// So many nodes of a short TTL that putting them all takes longer than the TTL: their lease is
/// renewed while they are put, instead of expiring before the last of them (and every attempt
/// starting again with a new lease, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_nodes_than_one_ttl_can_put_all_register() {
    const NODES: usize = 150_000;
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/s")).await.unwrap();
    // etcd's shortest TTL (it grants 2 s for anything shorter).
    let ttl = Duration::from_secs(2);
    let regs: Vec<Registration> = (0..NODES)
        .map(|i| {
            registry
                .register("api", node(&format!("n{i}"), &[]), ttl)
                .unwrap()
        })
        .collect();
    // Attempts may fail on the way (the nodes joining a live lease are put within what is left
    // of the TTL): the registrations end up registered all the same.
    eventually("every node registered", || async {
        regs.iter()
            .all(|r| r.state() == RegistrationState::Registered)
    })
    .await;
    let mut client = etcd_client::Client::connect(etcd.direct_endpoints(), None)
        .await
        .unwrap();
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let count = client.get("/s/api/", Some(options)).await.unwrap().count();
    assert_eq!(count, NODES as i64);
    registry.close().await.unwrap();
}

/// etcd grants no lease shorter than its minimum (1.5 election timeouts, rounded up to whole
/// seconds: 5 s here), whatever TTL is asked for. A registration of a TTL of 1 s keeps its
/// lease through a stall of etcd longer than 1 s and shorter than the granted TTL: the lease
/// lives, and the node is neither counted lost nor registered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shorter_than_the_granted_ttl_loses_nothing_below_etcds_minimum_ttl() {
    init_logs();
    let etcd = Arc::new(
        EtcdCluster::builder()
            .timing(100, 3000)
            .start()
            .expect("start etcd"),
    );
    // The timeout outlasts the stall: a keep-alive moved to "another" member waits for it.
    let registry = Registry::connect(config(&etcd, "/min").with_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    let reg = registry
        .register("s", node("n", &[]), Duration::from_secs(1))
        .unwrap();
    let mut events = reg.subscribe();
    reg.wait_registered(DEADLINE).await.unwrap();
    let lease = reg.lease_id().unwrap();
    let granted = etcd.lease_ttl(lease).unwrap();
    assert!(granted > 2, "etcd granted {granted} s");

    let e = etcd.clone();
    blocking(move || e.pause(0).expect("pause")).await;
    // Longer than the TTL asked for, well within the one granted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = etcd.clone();
    blocking(move || e.resume(0).expect("resume")).await;

    // A node joining the lease after the stall goes through the same task, after anything it
    // did about the stall.
    let other = registry
        .register("s", node("m", &[]), Duration::from_secs(1))
        .unwrap();
    other.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(other.lease_id(), Some(lease), "the same lease");
    assert_eq!(reg.lease_id(), Some(lease));
    reg.unregister().await.unwrap();
    let (_, before) = wait_event(&mut events, "unregistered", |e| {
        matches!(e, StatusEvent::Unregistered)
    })
    .await;
    assert!(
        matches!(before.as_slice(), [StatusEvent::Registered { .. }]),
        "nothing but registered before unregistered: {before:?}"
    );
    registry.close().await.unwrap();
}

/// A member's client renews its auth token only when a call of its own is refused: one that
/// carried nothing since the registry connected (or only keep-alives, which etcd does not
/// check) holds an expired token. The keep-alive moved there from a paused member, the watch
/// of the keys opened there is refused for that token at once: it is taken for the stale token
/// it is (not for a lack of permission, which would leave the keys unwatched and read with
/// every keep-alive for as long as the lease lives), and made again with a renewed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_watch_opened_with_an_expired_token_on_another_member_is_made_there() {
    init_logs();
    let etcd = Arc::new(
        EtcdCluster::builder()
            .members(3)
            .auth_token_ttl(2)
            .start()
            .unwrap(),
    );
    etcd.enable_auth("svc", "right").unwrap();
    let registry = Registry::connect(config(&etcd, "/t").with_credentials("svc", "right"))
        .await
        .unwrap();
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(6))
        .unwrap();
    reg.wait_registered(DEADLINE).await.unwrap();
    let paused = member_in_use(&etcd, &registry);
    // Idle past the token TTL: the other members' tokens, from connecting, expire.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = etcd.clone();
    blocking(move || e.pause(paused).expect("pause")).await;
    eventually("the keep-alive to leave the paused member", || async {
        member_in_use(&etcd, &registry) != paused
    })
    .await;
    let now = member_in_use(&etcd, &registry);
    eventually(
        "the watch of the keys made on the member in use",
        || async { gauge_of(&etcd, now, "etcd_debugging_mvcc_watcher_total") >= 1 },
    )
    .await;
    let e = etcd.clone();
    blocking(move || e.resume(paused).expect("resume")).await;
    assert_eq!(reg.state(), RegistrationState::Registered);
    registry.close().await.unwrap();
}
