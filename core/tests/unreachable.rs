//! Wait-for-ready: a call that cannot reach etcd keeps trying until its timeout, then fails with
//! a timeout that says which endpoint and why.

mod common;

use std::time::Duration;

use common::*;
use etcd_registry::{Config, ErrorKind, Registry, StatusEvent};
use tokio::time::Instant;

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_closed_port_waits_for_its_timeout_and_names_endpoint_and_cause() {
    init_logs();
    let port = dead_port();
    let timeout = Duration::from_millis(1500);
    let registry =
        Registry::connect(Config::new([format!("127.0.0.1:{port}")], "/s").with_timeout(timeout))
            .await
            .unwrap();
    let started = Instant::now();
    let err = registry.list("api").await.unwrap_err();
    assert!(
        started.elapsed() >= timeout,
        "returned before its timeout: {err}"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let text = err.to_string();
    assert!(text.contains("did not finish within"), "{text}");
    // No language's idiom in the core's text: Go adds "context deadline exceeded" itself.
    assert!(!text.contains("deadline exceeded"), "{text}");
    assert!(
        !err.is_wait_timeout(),
        "an attempt timed out, not a wait: {text}"
    );
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    assert!(text.contains("connection refused"), "{text}");

    // A registration's failed attempt says the same.
    let reg = registry
        .register("api", node("n1", &[]), Duration::from_secs(5))
        .unwrap();
    let mut events = reg.subscribe();
    // A wait shorter than an attempt runs out first: a wait timeout, told apart by a flag.
    let err = reg
        .wait_registered(Duration::from_millis(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_wait_timeout(), "{err}");
    let (failed, _) = wait_event(&mut events, "failed", |e| {
        matches!(e, StatusEvent::Failed { .. })
    })
    .await;
    let StatusEvent::Failed { error } = failed else {
        unreachable!()
    };
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(error.message().contains("connection refused"), "{error}");
    assert!(
        error.message().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_etcd_is_down_succeeds_when_etcd_comes_up_within_the_timeout() {
    // Behind a proxy that takes and closes at once each connection while etcd is down: its
    // count shows the call trying.
    let etcd = std::sync::Arc::new(etcd_with_proxy());
    etcd.stop(0).unwrap();
    let registry = Registry::connect(Config::new(etcd.endpoints(), "/s").with_timeout(DEADLINE))
        .await
        .unwrap();
    let before = etcd.proxy_accepted_total(0);
    let list = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.list("api").await })
    };
    // The call tried, failed to reach etcd, and tried again: it is waiting, not failed.
    eventually("the call to try etcd twice", || async {
        etcd.proxy_accepted_total(0) >= before + 2
    })
    .await;
    assert!(!list.is_finished(), "the call gave up while etcd was down");
    let e = etcd.clone();
    tokio::task::spawn_blocking(move || e.start(0).unwrap())
        .await
        .unwrap();
    let nodes = list.await.unwrap().unwrap();
    assert!(nodes.is_empty());
    registry.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_endpoints_the_message_names_them_all() {
    init_logs();
    // Two distinct ports, both closed once the listeners are dropped.
    let (a, b) = {
        let la = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let lb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (
            la.local_addr().unwrap().port(),
            lb.local_addr().unwrap().port(),
        )
    };
    let registry = Registry::connect(
        Config::new(
            [format!("127.0.0.1:{a}"), format!("http://127.0.0.1:{b}")],
            "/s",
        )
        .with_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let err = registry.list("api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let text = err.to_string();
    for want in [
        format!("http://127.0.0.1:{a}"),
        format!("http://127.0.0.1:{b}"),
        "connection refused".to_string(),
    ] {
        assert!(text.contains(&want), "{text} does not say {want}");
    }
}
