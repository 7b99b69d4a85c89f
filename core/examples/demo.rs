//! Registers three nodes of a service, discovers them by listing and watching, then unregisters
//! one and closes. Reads the etcd endpoints from `ETCD_ENDPOINTS` (comma-separated), as set by
//! `etcd-harness run` in `scripts/demo.sh`.

use std::time::Duration;

use etcd_registry::{Config, Node, Registry, StatusEvent};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    println!("etcd at {endpoints}");
    let registry = Registry::connect(Config::new(endpoints.split(','), "/services")).await?;

    let watch = registry.watch("api").await?;
    let mut registrations = Vec::new();
    for i in 1..=3 {
        let info = [
            ("address".to_string(), format!("10.0.0.{i}:8080")),
            ("version".to_string(), "1.0.0".to_string()),
        ]
        .into();
        let reg = registry.register(
            "api",
            Node::new(format!("node-{i}"), info),
            Duration::from_secs(10),
        )?;
        let mut events = reg.subscribe();
        reg.wait_registered(Duration::from_secs(10)).await?;
        if let Some(StatusEvent::Registered { lease_id }) = events.recv().await {
            println!("registered {} (lease {lease_id:x})", reg.key());
        }
        registrations.push(reg);
    }

    println!("list api:");
    for node in registry.list("api").await? {
        println!("  {} {:?}", node.name, node.info);
    }

    registrations[0].unregister().await?;
    println!("unregistered node-1");

    println!("watch api saw:");
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(event)) => println!(
                "  {} {} at revision {}",
                event.kind.as_str(),
                event.node.map(|n| n.name).unwrap_or_default(),
                event.revision
            ),
            _ => break,
        }
    }
    println!(
        "live set: {:?}",
        watch
            .nodes()
            .into_iter()
            .map(|n| n.name)
            .collect::<Vec<_>>()
    );
    println!("leases held: {} (one per TTL)", registry.lease_ids().len());

    registry.close().await?;
    println!("closed: every key removed");
    Ok(())
}
