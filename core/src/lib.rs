//! Service registration and discovery on etcd, written to survive whatever etcd and the network
//! do.
//!
//! - [`Registry::register`] puts `<base_path>/<service>/<node>` with a JSON object of the node's
//!   info, on a lease shared by every key of the same TTL, keeps the lease alive (every TTL/3),
//!   and after any loss — etcd restarted, partitioned, paused, the lease expired or revoked, the
//!   key deleted — re-registers with exponential backoff (1 s doubling to 30 s, with jitter)
//!   without ever giving up.
//! - [`Registry::list`] lists a service; [`Registry::watch`] follows it, resuming after
//!   disconnects and re-listing after compaction.
//! - The wire format is the one of go.lumeweb.com/etcd-registry, so both can share keys.
//!
//! ```no_run
//! # async fn demo() -> etcd_registry::Result<()> {
//! use std::time::Duration;
//! use etcd_registry::{Config, Node, Registry};
//!
//! let registry = Registry::connect(Config::new(["127.0.0.1:2379"], "/services")).await?;
//! let info = [("address".to_string(), "10.0.0.5:8080".to_string())].into();
//! let registration = registry.register("api", Node::new("node-1", info), Duration::from_secs(10))?;
//! registration.wait_registered(Duration::from_secs(5)).await?;
//! for node in registry.list("api").await? {
//!     println!("{} {:?}", node.name, node.info);
//! }
//! registry.close().await?;
//! # Ok(()) }
//! ```
//!
//! The library never prints; it logs through `tracing`.

mod backoff;
mod config;
mod conn;
mod error;
pub mod events;
mod group;
mod health;
pub mod keys;
mod listing;
pub mod log;
mod mux;
mod registration;
mod registry;
pub mod runtime;
mod tls;
mod watch;

pub use config::{Config, PemSource, TlsConfig};
pub use error::{Error, ErrorKind, Result};
pub use events::{Event, EventStream, Handler, ReadyHook, Route, EVENT_QUEUE_CAPACITY};
/// For bindings that parse info JSON themselves (see the function's doc).
#[doc(hidden)]
pub use keys::replace_lone_surrogates;
pub use keys::{Info, InfoBytes};
pub use registration::{Node, Registration, RegistrationState, StatusEvent, StatusEvents};
pub use registry::{Registry, MAX_KEY_BYTES, MAX_REQUEST_BYTES, MAX_TTL_SECS};
pub use watch::{Watch, WatchEvent, WatchEventKind};

/// The version of this library.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use config::{
    check_backoff, check_endpoint, check_timeout, DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN,
    DEFAULT_BASE_PATH, DEFAULT_TIMEOUT, DEFAULT_TTL,
};
