//! `Registry::services`: the service names under the base path, read from real etcd keys.

mod common;

use std::time::Duration;

use common::*;
use etcd_registry::{ErrorKind, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_lists_each_service_with_a_node_once_sorted() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/services")).await.unwrap();
    assert!(registry.services().await.unwrap().is_empty(), "empty etcd");

    let mut regs = Vec::new();
    for (service, node_name) in [("web", "n1"), ("api", "n1"), ("api", "n2"), ("a/b", "x")] {
        let reg = registry
            .register(service, node(node_name, &[]), Duration::from_secs(10))
            .unwrap();
        reg.wait_registered(DEADLINE).await.unwrap();
        regs.push(reg);
    }
    // Keys written by others: a node of a service sorting between "api" nodes in key order
    // ("api-x/" < "api/"), a key below a node (a node "n1/extra", as the Go library lists it),
    // a key that is not a node, and another base path.
    etcd.put("/services/api-x/n1", "{}").unwrap();
    etcd.put("/services/deep/n1/extra", "{}").unwrap();
    etcd.put("/services/lonely", "{}").unwrap();
    etcd.put("/other/zzz/n1", "{}").unwrap();
    etcd.put("/servicesX/yyy/n1", "{}").unwrap();
    etcd.put("/rootsvc/n1", "{}").unwrap();

    assert_eq!(
        registry.services().await.unwrap(),
        vec!["a-b", "api", "api-x", "deep", "web"],
        "every service with a node, as named in its keys"
    );
    // A service is listed exactly when list() finds nodes in it.
    for service in registry.services().await.unwrap() {
        assert!(
            !registry.list(&service).await.unwrap().is_empty(),
            "{service}"
        );
    }

    regs[0].unregister().await.unwrap();
    assert_eq!(
        registry.services().await.unwrap(),
        vec!["a-b", "api", "api-x", "deep"],
        "a service without nodes is gone"
    );

    // Other base paths. Under the root, every key at least one level deep is a node
    // ("/services/lonely" is node "lonely" of service "services", "/services/api/n1" its node
    // "api/n1").
    let other = Registry::connect(config(&etcd, "/other")).await.unwrap();
    assert_eq!(other.services().await.unwrap(), vec!["zzz"]);
    let root = Registry::connect(config(&etcd, "/")).await.unwrap();
    assert_eq!(
        root.services().await.unwrap(),
        vec!["other", "rootsvc", "services", "servicesX"]
    );
    other.close().await.unwrap();
    root.close().await.unwrap();

    registry.close().await.unwrap();
    assert_eq!(
        registry.services().await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_fails_with_a_connection_error_when_etcd_is_down() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/services")).await.unwrap();
    etcd.kill(0).unwrap();
    let err = registry.services().await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
    registry.close().await.unwrap();
}
