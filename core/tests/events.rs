//! The one event mechanism (`etcd_registry::events`) against a real etcd: the registry-wide
//! stream, routes to a shared stream and to a handler, the end rule, and the bounded policy.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use etcd_client::{Txn, TxnOp};
use etcd_registry::events::Next;
use etcd_registry::{
    Event, EventStream, Handler, Node, Registration, Registry, Route, StatusEvent, Watch,
    EVENT_QUEUE_CAPACITY,
};
use tokio::task::JoinHandle;

fn status_kinds(events: &[Event]) -> Vec<(String, &'static str)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Status { node, .. } => Some((node.to_string(), e.kind_str())),
            Event::Watch { .. } => None,
        })
        .collect()
}

async fn next(stream: &EventStream) -> Event {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream has not ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_wide_stream_sees_every_event_and_ends_after_close() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/ev")).await.unwrap();
    let events = registry.events();
    let a = registry
        .register("api", node("a", &[]), Duration::from_secs(5))
        .unwrap();
    let first = next(&events).await;
    assert_eq!(first.id(), a.id());
    assert_eq!(status_kinds(&[first]), [("a".into(), "registered")]);
    let watch = registry.watch("api").await.unwrap();
    let added = next(&events).await;
    assert!(
        matches!(&added, Event::Watch { watch_id, .. } if *watch_id == watch.id()),
        "{added:?}"
    );
    a.unregister().await.unwrap();
    // Queued before unregister returned: no waiting.
    let removed_or_unregistered = [events.try_next(), events.try_next()];
    assert!(
        removed_or_unregistered.iter().any(|n| matches!(
            n,
            Next::Event(Event::Status {
                event: StatusEvent::Unregistered,
                ..
            })
        )),
        "{removed_or_unregistered:?}"
    );
    registry
        .register("api", node("b", &[]), Duration::from_secs(5))
        .unwrap();
    registry.close().await.unwrap();
    let mut rest = Vec::new();
    while let Some(event) = tokio::time::timeout(DEADLINE, events.next()).await.unwrap() {
        rest.push(event);
    }
    let rest = status_kinds(&rest);
    assert_eq!(
        rest.last(),
        Some(&("b".to_string(), "unregistered")),
        "close delivers b's last event, then the stream ends: {rest:?}"
    );
    assert_eq!(events.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_has_seen_unregistered_when_unregister_and_close_return() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/ev")).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    let handler = Handler::new(move |e: &Event| {
        let Event::Status { node, .. } = e else {
            return;
        };
        into.lock()
            .unwrap()
            .push(format!("{node} {}", e.kind_str()));
    })
    .unwrap();
    let route = Route::handler(&handler);
    let a = registry
        .register_routed("api", node("a", &[]), Duration::from_secs(5), &route)
        .unwrap();
    a.wait_registered(DEADLINE).await.unwrap();
    a.unregister().await.unwrap();
    assert_eq!(
        seen.lock().unwrap().last().map(String::as_str),
        Some("a unregistered"),
        "delivered before unregister returned"
    );
    let b = registry
        .register_routed("api", node("b", &[]), Duration::from_secs(5), &route)
        .unwrap();
    b.wait_registered(DEADLINE).await.unwrap();
    registry.close().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "a registered",
            "a unregistered",
            "b registered",
            "b unregistered"
        ],
        "delivered before close returned"
    );
    assert_eq!(handler.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_stream_keeps_the_newest_events_and_every_unregistered() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/ev")).await.unwrap();
    let unread = EventStream::new();
    let route = Route::stream(&unread);
    let count = EVENT_QUEUE_CAPACITY + 76;
    let mut regs = Vec::new();
    for i in 0..count {
        let name = format!("n{i}");
        regs.push(
            registry
                .register_routed("many", node(&name, &[]), Duration::from_secs(30), &route)
                .unwrap(),
        );
    }
    for reg in &regs {
        reg.wait_registered(DEADLINE).await.unwrap();
    }
    assert_eq!(unread.len(), EVENT_QUEUE_CAPACITY, "bounded");
    assert_eq!(
        unread.dropped(),
        76,
        "the oldest registered events were dropped"
    );
    registry.close().await.unwrap();
    // Every Unregistered is kept, the Registered events make room for them.
    let mut unregistered = 0;
    while let Next::Event(event) = unread.try_next() {
        assert!(event.is_final(), "{event:?}");
        unregistered += 1;
    }
    assert_eq!(unregistered, count);
    assert_eq!(unread.dropped(), count as u64);
}

/// Holds up the one handler thread (every handler's calls) from the returned registration's
/// `Registered` until the returned flag is set, and 200 ms more: long enough for a call that
/// does not wait for a handler to return first. Keep the handler and registration alive.
async fn hold_the_handler_thread(registry: &Registry) -> (Arc<AtomicBool>, Registration, Handler) {
    let release = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicBool::new(false));
    let (flag, running) = (release.clone(), busy.clone());
    let slow = Handler::new(move |e| {
        if e.kind_str() != "registered" {
            return;
        }
        running.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + DEADLINE;
        while !flag.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
    })
    .unwrap();
    let blocker = registry
        .register_routed(
            "api",
            node("slow", &[]),
            Duration::from_secs(5),
            &Route::handler(&slow),
        )
        .unwrap();
    blocker.wait_registered(DEADLINE).await.unwrap();
    eventually("the handler thread to be held up", || {
        let busy = busy.load(Ordering::SeqCst);
        async move { busy }
    })
    .await;
    (release, blocker, slow)
}

/// A registration of node `a` whose events a handler records, replaced by a newer one of the
/// same node: returns the recorded kinds, the old registration and the new one.
async fn a_replaced_registration(
    registry: &Registry,
) -> (
    Arc<Mutex<Vec<&'static str>>>,
    Handler,
    Registration,
    Registration,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    let handler = Handler::new(move |e| into.lock().unwrap().push(e.kind_str())).unwrap();
    let old = registry
        .register_routed(
            "api",
            node("a", &[]),
            Duration::from_secs(5),
            &Route::handler(&handler),
        )
        .unwrap();
    let new = registry
        .register("api", node("a", &[]), Duration::from_secs(5))
        .unwrap();
    (seen, handler, old, new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_a_replaced_registration_waits_until_its_handler_has_seen_unregistered() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/ev")).await.unwrap();
    // The replaced registration's Unregistered is still undelivered when unregister is called.
    let (release, _blocker, _slow) = hold_the_handler_thread(&registry).await;
    let (seen, _handler, old, new) = a_replaced_registration(&registry).await;
    release.store(true, Ordering::SeqCst);
    old.unregister().await.unwrap();
    // Delivered before unregister returned, as for a current registration: the handler's data
    // may be freed now.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last().copied(), Some("unregistered"), "{seen:?}");
    assert_eq!(old.state(), etcd_registry::RegistrationState::Unregistered);
    // The key is the newer registration's: left alone.
    new.wait_registered(DEADLINE).await.unwrap();
    assert_eq!(registry.list("api").await.unwrap().len(), 2);
    registry.close().await.unwrap();
}

/// The same for a close, after the replaced registration has ended (its `Unregistered`
/// emitted, not delivered yet): the close returns once its handler has seen it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_until_the_handler_of_a_replaced_registration_has_seen_unregistered() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/ev")).await.unwrap();
    // Held from another registry, whose handlers this close does not wait for.
    let other = Registry::connect(config(&etcd, "/ev-other")).await.unwrap();
    let (release, _blocker, _slow) = hold_the_handler_thread(&other).await;
    let (seen, _handler, old, new) = a_replaced_registration(&registry).await;
    new.wait_registered(DEADLINE).await.unwrap();
    eventually("the replaced registration to end", || {
        let ended = old.state() == etcd_registry::RegistrationState::Unregistered;
        async move { ended }
    })
    .await;
    release.store(true, Ordering::SeqCst);
    registry.close().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last().copied(), Some("unregistered"), "{seen:?}");
    other.close().await.unwrap();
}

/// Puts keys under `/cw/api/` from `client`, 100 in a transaction (each comes as one watch
/// response of 100 events), until `stop` is set.
fn write_until(
    client: &etcd_client::Client,
    round: usize,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (mut kv, stop) = (client.kv_client(), stop.clone());
    tokio::spawn(async move {
        let mut batch = 0;
        while !stop.load(Ordering::SeqCst) {
            let puts = (0..100)
                .map(|i| TxnOp::put(format!("/cw/api/r{round}-{batch}-{i}"), "{}", None))
                .collect::<Vec<_>>();
            kv.txn(Txn::new().and_then(puts)).await.unwrap();
            batch += 1;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_watch_delivers_nothing_more_while_events_flow() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/cw")).await.unwrap();
    let shared = EventStream::new();
    let route = Route::stream(&shared);
    // A watch of another service on the same Watch stream to etcd: its event of a key put
    // after a cancel returned comes after anything that stream's task was still pushing for the
    // cancelled watch.
    let control = registry.watch_routed("marks", &route).await.unwrap();
    let client = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    // The other route: a handler, which must not be called for the watch once cancel returned.
    let cancelled = Arc::new(AtomicBool::new(false));
    let late = Arc::new(AtomicUsize::new(0));
    let (first_tx, mut first) = tokio::sync::mpsc::unbounded_channel();
    let (is_cancelled, late_calls) = (cancelled.clone(), late.clone());
    let handler = Handler::new(move |e| {
        if is_cancelled.load(Ordering::SeqCst) {
            late_calls.fetch_add(1, Ordering::SeqCst);
        }
        let _ = first_tx.send(e.id());
    })
    .unwrap();

    for round in 0..40 {
        let to_handler = round % 2 == 1;
        let watch = if to_handler {
            cancelled.store(false, Ordering::SeqCst);
            while first.try_recv().is_ok() {}
            registry
                .watch_routed("api", &Route::handler(&handler))
                .await
                .unwrap()
        } else {
            registry.watch_routed("api", &route).await.unwrap()
        };
        // Cancelled as soon as its first event is delivered, while the shared Watch stream's
        // task is still applying the rest of that response, and more keep coming.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = write_until(&client, round, &stop);
        let first_id = if to_handler {
            tokio::time::timeout(DEADLINE, first.recv()).await.unwrap()
        } else {
            Some(next(&shared).await.id())
        };
        assert_eq!(first_id, Some(watch.id()));
        watch.cancel();
        cancelled.store(true, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        writer.await.unwrap();

        let mark = format!("m{round}");
        client
            .kv_client()
            .put(format!("/cw/marks/{mark}"), "{}", None)
            .await
            .unwrap();
        let mut after_cancel = 0;
        loop {
            let event = next(&shared).await;
            if event.id() == watch.id() {
                after_cancel += 1;
            }
            let is_mark = matches!(&event, Event::Watch { watch_id, event, .. }
                if *watch_id == control.id()
                    && event.node.as_ref().is_some_and(|n| n.name == mark));
            if is_mark {
                break;
            }
        }
        // Whatever was pushed to the handler is delivered by now.
        handler.finish();
        assert_eq!(
            (after_cancel, late.load(Ordering::SeqCst)),
            (0, 0),
            "round {round}: events of watch {} (to a handler: {to_handler}) delivered after its \
             cancel returned",
            watch.id()
        );
    }
    registry.close().await.unwrap();
}

/// A watch of service "api" (one node) routed to a handler that, called with the node, makes
/// a blocking list on the runtime the registry runs on: the handler is running it when this
/// returns, and the list's result comes on the receiver once the runtime's thread runs it.
async fn watch_with_handler_waiting_on_the_runtime(
    registry: &Registry,
) -> (
    Watch,
    Handler,
    tokio::sync::mpsc::UnboundedReceiver<etcd_registry::Result<Vec<Node>>>,
) {
    let (running_tx, running) = std::sync::mpsc::channel();
    let (listed_tx, listed) = tokio::sync::mpsc::unbounded_channel();
    let (runtime, lister) = (tokio::runtime::Handle::current(), registry.clone());
    let handler = Handler::new(move |e: &Event| {
        if !matches!(e, Event::Watch { .. }) {
            return;
        }
        let _ = running_tx.send(());
        // Answered only while the runtime's one thread runs it.
        let _ = listed_tx.send(runtime.block_on(lister.list("api")));
    })
    .unwrap();
    let watch = registry
        .watch_routed("api", &Route::handler(&handler))
        .await
        .unwrap();
    running
        .recv_timeout(DEADLINE)
        .expect("the handler called with the first node");
    (watch, handler, listed)
}

async fn registry_with_a_node(etcd: &etcd_harness::EtcdCluster) -> Registry {
    let registry = Registry::connect(config(etcd, "/dw")).await.unwrap();
    let a = registry
        .register("api", node("a", &[]), Duration::from_secs(5))
        .unwrap();
    a.wait_registered(DEADLINE).await.unwrap();
    registry
}

/// A handler may make blocking library calls; one waits on the runtime the registry runs on
/// (one thread) when its watch is dropped there, in async code. The drop must not wait for
/// that call, which waits for the very thread the drop would block.
#[tokio::test(flavor = "current_thread")]
async fn a_watch_dropped_in_async_code_does_not_wait_for_its_handler_waiting_on_the_runtime() {
    let etcd = etcd();
    let registry = registry_with_a_node(&etcd).await;
    let (watch, handler, mut listed) = watch_with_handler_waiting_on_the_runtime(&registry).await;

    // A hang here would block the test harness, not fail it: a watchdog ends the process.
    let (dropped_tx, dropped) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if dropped.recv_timeout(DEADLINE).is_err() {
            eprintln!("the watch's drop waits for its handler, which waits for the drop");
            std::process::exit(1);
        }
    });
    drop(watch);
    dropped_tx.send(()).unwrap();
    watchdog.join().unwrap();

    let nodes = tokio::time::timeout(DEADLINE, listed.recv())
        .await
        .expect("the handler's call answered")
        .expect("a list")
        .expect("the list succeeds");
    assert_eq!(nodes.len(), 1);
    handler.finish();
    registry.close().await.unwrap();
}

/// `cancel_async` waits for the handler's running call without blocking the runtime's thread,
/// which that call needs: once it returns, the call has returned.
#[tokio::test(flavor = "current_thread")]
async fn cancel_async_returns_once_the_handler_waiting_on_the_runtime_has_returned() {
    let etcd = etcd();
    let registry = registry_with_a_node(&etcd).await;
    let (watch, _handler, mut listed) = watch_with_handler_waiting_on_the_runtime(&registry).await;
    tokio::time::timeout(DEADLINE, watch.cancel_async())
        .await
        .expect("cancel_async returns");
    let nodes = listed
        .try_recv()
        .expect("the handler's call returned before cancel_async did")
        .expect("the list succeeds");
    assert_eq!(nodes.len(), 1);
    assert!(watch.is_finished());
    registry.close().await.unwrap();
}
