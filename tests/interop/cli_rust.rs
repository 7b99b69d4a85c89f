//! The Rust interop program (see tests/interop/README.md).

use std::io::{BufRead, Read};
use std::time::Duration;

use etcd_registry::{Config, Info, Node, Registry};

fn print_nodes(mut nodes: Vec<Node>) {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let json: Vec<serde_json::Value> = nodes
        .into_iter()
        .map(|n| serde_json::json!({"name": n.name, "info": n.info}))
        .collect();
    println!("{}", serde_json::Value::Array(json));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = std::env::var("ETCD_ENDPOINTS")?;
    let base = std::env::var("ETCD_BASE_PATH").unwrap_or_else(|_| "/services".into());
    let registry = Registry::connect(
        Config::new(endpoints.split(','), base).with_timeout(Duration::from_secs(5)),
    )
    .await?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["register", service, node, info, ttl] => {
            let info: Info = serde_json::from_str(info)?;
            let ttl = Duration::from_secs(ttl.parse()?);
            let reg = registry.register(service, Node::new(*node, info), ttl)?;
            reg.wait_registered(Duration::from_secs(30)).await?;
            println!("registered");
            // Commands on stdin: "register NAME INFO_JSON" (same service and TTL) and
            // "unregister NAME", each answered once done; the registry stays open until EOF.
            let mut held = std::collections::HashMap::from([(node.to_string(), reg)]);
            let mut lines = std::io::stdin().lock().lines();
            let mut command = move || lines.next().transpose();
            while let Some(line) = tokio::task::block_in_place(&mut command)? {
                let mut words = line.trim().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("register"), Some(name), Some(info)) => {
                        let info: Info = serde_json::from_str(info)?;
                        let other = registry.register(service, Node::new(name, info), ttl)?;
                        other.wait_registered(Duration::from_secs(30)).await?;
                        held.insert(name.to_string(), other);
                        println!("registered {name}");
                    }
                    (Some("unregister"), Some(name), None) => {
                        held.remove(name).ok_or("not held")?.unregister().await?;
                        println!("unregistered {name}");
                    }
                    _ => return Err(format!("unknown command {line:?}").into()),
                }
            }
            if let Some(reg) = held.remove(*node) {
                reg.unregister().await?;
            }
        }
        ["list", service] => print_nodes(registry.list(service).await?),
        ["watch", service, count] => {
            let count: usize = count.parse()?;
            let watch = registry.watch(service).await?;
            while watch.nodes().len() < count {
                tokio::time::timeout(Duration::from_secs(30), watch.next())
                    .await?
                    .ok_or("watch ended")?;
            }
            print_nodes(watch.nodes());
        }
        ["follow", service] => {
            let watch = registry.watch(service).await?;
            print_nodes(watch.nodes());
            let mut eof =
                tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new()));
            loop {
                tokio::select! {
                    event = watch.next() => {
                        event.ok_or("watch ended")?;
                        print_nodes(watch.nodes());
                    }
                    read = &mut eof => {
                        read??;
                        break;
                    }
                }
            }
        }
        ["events", service, ttl] => {
            // The registry-wide stream, subscribed before registering: every event of both
            // registrations, printed as "<node> <kind>" (see test_events.py).
            let events = registry.events();
            let printer = tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    if let etcd_registry::Event::Status { node, .. } = &event {
                        println!("{node} {}", event.kind_str());
                    }
                }
            });
            let ttl = Duration::from_secs(ttl.parse()?);
            let a = registry.register(service, Node::new("a", Info::new()), ttl)?;
            let mut lines = std::io::stdin().lock().lines();
            let mut command = move || lines.next().transpose();
            while let Some(line) = tokio::task::block_in_place(&mut command)? {
                match line.trim() {
                    "unregister" => {
                        a.unregister().await?;
                        registry.register(service, Node::new("b", Info::new()), ttl)?;
                    }
                    "close" => break,
                    other => return Err(format!("unknown command {other:?}").into()),
                }
            }
            registry.close().await?;
            printer.await?;
            println!("end");
            return Ok(());
        }
        _ => return Err("usage: cli register|list|watch|follow|events ...".into()),
    }
    registry.close().await?;
    Ok(())
}
