//! The library's logs go to a host's sink (`etcd_registry::log`: the C log callback, Go's slog
//! on top of it, Python's logging), and a sink may call back into the library. No lock of the
//! library may be held while a message is logged, or such a call deadlocks: checked here with
//! the warning about a consumer too slow, which is logged while events are being queued.
//!
//! A file of its own: the forwarder is the process's one `tracing` subscriber.

mod common;

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use common::*;
use etcd_registry::log::{install_forwarder, set_max_level, LOG_OFF, LOG_WARN};
use etcd_registry::{EventStream, Handler, Registration, Registry, Route, EVENT_QUEUE_CAPACITY};

/// What the sink asks the library about when it is told that a consumer is too slow: each
/// question takes a lock that queueing an event takes too.
struct Probe {
    streams: Vec<EventStream>,
    handlers: Vec<Handler>,
    registry: Option<Registry>,
    registrations: Vec<Registration>,
    /// Warnings about dropped events whose questions were all answered.
    answered: usize,
}

static PROBE: Mutex<Probe> = Mutex::new(Probe {
    streams: Vec::new(),
    handlers: Vec::new(),
    registry: None,
    registrations: Vec::new(),
    answered: 0,
});

fn probe() -> std::sync::MutexGuard<'static, Probe> {
    PROBE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host's sink: on the warning about dropped events, calls into the library as a C log
/// callback may (`etcd_registry_dropped_events`, `etcd_registry_registration_state`).
fn sink(_level: u32, _target: &str, message: String) {
    if !message.contains("too slow") {
        return;
    }
    // Copied out, so that no lock of the test's is held either while the library is called.
    let (streams, handlers, registry, registrations) = {
        let p = probe();
        (
            p.streams.clone(),
            p.handlers.clone(),
            p.registry.clone(),
            p.registrations.clone(),
        )
    };
    for stream in &streams {
        let _ = stream.dropped();
    }
    for handler in &handlers {
        let _ = handler.dropped();
    }
    if let Some(registry) = &registry {
        // A new registry-wide stream: the lock every registry-wide push is made under.
        drop(registry.events());
    }
    for registration in &registrations {
        let _ = registration.state();
    }
    probe().answered += 1;
}

/// Registers `count` nodes named `<prefix><i>`, their events routed to `route`.
fn register_many(registry: &Registry, prefix: &str, count: usize, route: &Route) {
    for i in 0..count {
        let reg = registry
            .register_routed(
                "slow",
                node(&format!("{prefix}{i}"), &[]),
                Duration::from_secs(30),
                route,
            )
            .unwrap();
        probe().registrations.push(reg);
    }
}

async fn consumers_fall_behind_while_the_sink_calls_into_the_library() {
    let etcd = etcd();
    let registry = Registry::connect(config(&etcd, "/logging")).await.unwrap();
    // Three consumers that fall behind: a shared stream and the registry-wide stream nobody
    // reads, and a handler stuck in its first call until released.
    let unread = EventStream::new();
    let registry_wide = registry.events();
    let (release, stuck) = mpsc::channel::<()>();
    let stuck = Mutex::new(stuck);
    let handler = Handler::new(move |_| {
        let _ = stuck.lock().unwrap().recv_timeout(DEADLINE);
    })
    .unwrap();
    {
        let mut p = probe();
        p.streams = vec![unread.clone(), registry_wide.clone()];
        p.handlers = vec![handler.clone()];
        p.registry = Some(registry.clone());
    }
    // One more than fits in each queue (the handler holds one more, in its running call).
    let count = EVENT_QUEUE_CAPACITY + 2;
    register_many(&registry, "s", count, &Route::stream(&unread));
    register_many(&registry, "h", count, &Route::handler(&handler));

    eventually("every slow consumer dropped events", || {
        let dropped = [unread.dropped(), registry_wide.dropped(), handler.dropped()];
        async move { dropped.iter().all(|&d| d > 0) }
    })
    .await;
    eventually("the sink's calls into the library returned", || async {
        probe().answered > 0
    })
    .await;

    drop(release);
    registry.close().await.unwrap();
    set_max_level(LOG_OFF);
    *probe() = Probe {
        streams: Vec::new(),
        handlers: Vec::new(),
        registry: None,
        registrations: Vec::new(),
        answered: 0,
    };
}

#[test]
fn a_log_sink_may_call_into_the_library_while_events_are_dropped() {
    // Before `etcd()`, whose test logging would otherwise take the one subscriber slot.
    assert!(install_forwarder(Box::new(sink)));
    set_max_level(LOG_WARN);
    // On a thread of its own, so that a deadlock fails the test instead of hanging it.
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(consumers_fall_behind_while_the_sink_calls_into_the_library());
        let _ = done.send(());
    });
    match finished.recv_timeout(DEADLINE * 3) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario failed (see above)"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "deadlock: a call into the library from the log sink never returned (a lock was held while logging)"
        ),
    }
}
