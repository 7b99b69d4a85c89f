//! The registry: one etcd connection, the lease groups, the registrations and the watches.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::config::Config;
use crate::conn::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::events::{EventStream, Hub, Route, Subscriber};
use crate::group::{GroupCmd, GroupHandle, LeaseGroup, Retire};
use crate::keys::{
    base_prefix, encode_info, node_key, service_name_of, service_prefix, Info, InfoBytes,
};
use crate::listing;
use crate::mux::WatchMux;
use crate::registration::{KeyOf, Node, RegShared, Registration, RegistrationState, StatusEvent};
use crate::watch::{self, Watch, WatchRoute, WatchSetup};

/// The value of a node given as a [`Node`]: an empty one for a node without info (Go's nil
/// map, stored empty as the Go library does), else its info encoded.
fn encode_node(key: &str, node: &Node) -> Result<String> {
    if node.info_absent && node.info.is_empty() {
        Ok(String::new())
    } else {
        encode_checked(key, &node.info)
    }
}

/// etcd's default `--max-request-bytes` (1.5 MiB); a put of a key and value larger than this
/// (less some room for the request's other fields) is refused.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
const REQUEST_OVERHEAD: usize = 512;
/// The longest key (base path, service and node) this library writes or reads: some of its
/// requests carry a key twice (a delete made only while the key is on its lease, a range with
/// its end), and etcd refuses a request larger than [`MAX_REQUEST_BYTES`].
pub const MAX_KEY_BYTES: usize = (MAX_REQUEST_BYTES - REQUEST_OVERHEAD) / 2;
/// etcd's largest lease TTL, in seconds.
pub const MAX_TTL_SECS: u64 = 9_000_000_000;

/// Ids of registrations and watches, unique within the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Registers service nodes in etcd and discovers them. Cheap to clone: clones share one etcd
/// connection, one lease per TTL and every registration.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("endpoints", &self.inner.config.endpoints)
            .field("base_path", &self.inner.config.base_path)
            .field("closed", &self.is_closed())
            .finish()
    }
}

struct Inner {
    config: Config,
    conn: Arc<Connection>,
    /// The Watch stream its service watches share.
    mux: Arc<WatchMux>,
    handle: Handle,
    pid: u32,
    closed: AtomicBool,
    closing: tokio::sync::watch::Sender<bool>,
    /// Set once the first close has finished (or was dropped unfinished): later closes wait
    /// for it.
    closed_done: tokio::sync::watch::Sender<bool>,
    /// Shared with the lease groups, which ask under it whether they may end (see `Retire`).
    state: Arc<Mutex<State>>,
    /// The registry-wide event streams.
    hub: Arc<Hub>,
}

/// How [`Registry::try_unregister_reg`] ends a registration.
enum Ending {
    /// No put of its key was ever sent: it ends at once.
    Unput,
    /// Its lease's task deletes the key and answers; so does each task whose lease may still
    /// hold the key (see `RegShared::stale_groups`).
    Deleting(Vec<oneshot::Receiver<Result<()>>>),
    /// Replaced or ended by another call: its lease's task (if any) emits `Unregistered`.
    Elsewhere(Option<mpsc::UnboundedSender<GroupCmd>>),
}

#[derive(Default)]
struct State {
    groups: HashMap<i64, GroupHandle>,
    /// The registrations, by key: at most one per node (a newer registration of the node
    /// replaces the older one). Each entry is the registration itself (8 bytes).
    registrations: HashSet<KeyOf>,
    /// Registrations replaced by a newer one of their node whose group may not have ended
    /// them yet (its `Remove` queued behind others): `close` ends them too when it stops
    /// waiting for the groups. Those ended are dropped at each replacement.
    replaced: Vec<Arc<RegShared>>,
    watches: HashMap<u64, (AbortHandle, Arc<WatchRoute>)>,
}

impl Registry {
    /// Creates a registry on the current tokio runtime. Checks the configuration but does not
    /// dial: etcd may be down now; every operation connects when it needs to, and registrations
    /// retry until it is up.
    pub async fn connect(config: Config) -> Result<Registry> {
        Registry::new_in(config, Handle::current())
    }

    /// Like [`Registry::connect`], on the runtime of `handle` (bindings pass the global one).
    pub fn new_in(config: Config, handle: Handle) -> Result<Registry> {
        let endpoints = config.validate()?;
        let tls = config
            .uses_tls()
            .then(|| crate::tls::client_options(&config.tls, &endpoints, config.timeout))
            .transpose()?;
        let conn = Connection::new(endpoints, config.credentials(), config.timeout, tls);
        // Dial every member in the background, so the first operation finds warm connections
        // and silent members already ejected; it stops when the registry closes.
        let warm = conn.clone();
        let closing = tokio::sync::watch::channel(false).0;
        let mut closed = closing.subscribe();
        handle.spawn(async move {
            tokio::select! {
                _ = warm.warm_up() => {}
                _ = closed.wait_for(|closed| *closed) => {}
            }
        });
        Ok(Registry {
            inner: Arc::new(Inner {
                config,
                mux: WatchMux::new(conn.clone(), handle.clone()),
                conn,
                handle,
                pid: std::process::id(),
                closed: AtomicBool::new(false),
                closing,
                closed_done: tokio::sync::watch::Sender::new(false),
                state: Arc::default(),
                hub: Arc::default(),
            }),
        })
    }

    /// The configuration this registry was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Registry::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Whether this registry was created in this process, i.e. not before a `fork()` of which
    /// this is the child. The check every entry point makes, written once here: bindings ask it
    /// instead of remembering the process themselves.
    pub fn in_this_process(&self) -> bool {
        self.inner.pid == std::process::id()
    }

    /// Objects made before `fork()` belong to the parent's runtime, whose threads the child
    /// does not have: using them would hang, so they refuse (`Closed`). [`Registry::close`] in
    /// the child does nothing and succeeds.
    pub fn check_same_process(&self) -> Result<()> {
        if !self.in_this_process() {
            return Err(Error::new(
                ErrorKind::Closed,
                "this registry was created before fork(); create a new one in the child process",
            ));
        }
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        self.check_same_process()?;
        if self.is_closed() {
            return Err(Error::closed());
        }
        Ok(())
    }

    /// The key a node is registered under: `<base_path>/<service>/<node>`.
    pub fn node_key(&self, service: &str, node: &str) -> String {
        node_key(&self.inner.config.base_path, service, node)
    }

    /// Registers `node` under `service` with a lease of `ttl`, and returns at once: the
    /// registration proceeds in the background and retries with backoff until it succeeds, then
    /// keeps the lease alive and re-registers after any loss, until unregistered.
    ///
    /// All registrations of one TTL share one lease. The TTL is rounded up to whole seconds, and
    /// etcd raises a TTL below its minimum (about 2 s with default settings) to that minimum.
    /// Registering a node that this registry already holds replaces the older registration
    /// (which ends with `Unregistered`; the key stays). [`Registration::unregister`] of the
    /// older one waits for that end.
    pub fn register(&self, service: &str, node: Node, ttl: Duration) -> Result<Registration> {
        self.register_inner(service, node, ttl, None, encode_node)
    }

    /// Like [`Registry::register`], with the registration's status events going to `route` (a
    /// shared [`EventStream`] or a [`Handler`](crate::events::Handler)) from the very first:
    /// what the bindings use (see [`crate::events`]). [`Registration::subscribe`] still works
    /// but gets no history.
    pub fn register_routed(
        &self,
        service: &str,
        node: Node,
        ttl: Duration,
        route: &Route,
    ) -> Result<Registration> {
        self.register_inner(service, node, ttl, Some(route.subscriber()), encode_node)
    }

    /// [`Registry::register`] with the info as bytes, the form bindings receive it in (see
    /// [`InfoBytes`]): the value stored is what Go's `json.Marshal` writes for the same map, also
    /// when the bytes are not UTF-8. `None` is no info object (stored as an empty value, as the
    /// Go library stores a nil map); the node's info as events and `info` show it is
    /// [`InfoBytes::to_info`]. Events go to `route` when given, as with
    /// [`Registry::register_routed`].
    pub fn register_bytes(
        &self,
        service: &str,
        name: &str,
        info: Option<&InfoBytes>,
        ttl: Duration,
        route: Option<&Route>,
    ) -> Result<Registration> {
        let node = match info {
            Some(info) => Node::new(name, info.to_info()),
            None => Node::without_info(name),
        };
        self.register_inner(
            service,
            node,
            ttl,
            route.map(Route::subscriber),
            |key, _| encode_bytes(key, info),
        )
    }

    /// Checks the arguments of [`Registry::register_bytes`] as it checks them, with the same
    /// errors, and registers nothing: for a binding that must refuse bad arguments where it
    /// registers nothing, e.g. Go's `Register` with a context that has already ended.
    pub fn check_register_bytes(
        &self,
        service: &str,
        name: &str,
        info: Option<&InfoBytes>,
        ttl: Duration,
    ) -> Result<()> {
        let (key, _) = self.checked(service, name, ttl)?;
        encode_bytes(&key, info).map(drop)
    }

    /// The checks every registration begins with: the registry open, the names and the TTL.
    /// Gives the node's key and the TTL in whole seconds.
    fn checked(&self, service: &str, name: &str, ttl: Duration) -> Result<(String, i64)> {
        self.check_open()?;
        validate_name("service", service)?;
        validate_name("node", name)?;
        let ttl_secs = validate_ttl(ttl)?;
        let key = self.node_key(service, name);
        check_key_len("the node's key (base path, service and node name)", &key)?;
        Ok((key, ttl_secs))
    }

    /// Every event of every registration and watch of this registry from now on, in one
    /// bounded stream (see [`crate::events`]); it ends once [`Registry::close`] has emitted
    /// the last `Unregistered`. Subscribe before registering to see every event.
    pub fn events(&self) -> EventStream {
        self.inner.hub.subscribe()
    }

    /// Registers `node` with the value `encode` makes for its key, its events going to `route`.
    fn register_inner(
        &self,
        service: &str,
        node: Node,
        ttl: Duration,
        route: Option<Subscriber>,
        encode: impl FnOnce(&str, &Node) -> Result<String>,
    ) -> Result<Registration> {
        let (key, ttl_secs) = self.checked(service, &node.name, ttl)?;
        let value = encode(&key, &node)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let reg = Arc::new(RegShared::new(
            id,
            service,
            node,
            key,
            value,
            ttl_secs,
            route,
            self.inner.hub.clone(),
        ));
        let mut state = self.state();
        // Checked again under the lock, so that close() cannot miss this registration.
        self.check_open()?;
        let old = state.registrations.replace(KeyOf(reg.clone()));
        // The key is the node's, not the registration's: when the older registration may have
        // put it, this one deletes it at its end even if it never puts it itself. One that never
        // did is not put any more.
        if let Some(KeyOf(old)) = &old {
            old.mark_replaced();
            if !old.leave() {
                reg.inherit_put();
                // Of another TTL, the key stays on the older lease until this one puts it.
                let old_group = state.groups.get(&old.ttl_secs);
                reg.inherit_stale_groups(old, old_group.map(|g| (old.ttl_secs, g.generation)));
            }
        }
        let conn = self.inner.conn.clone();
        let (min, max) = (self.inner.config.backoff_min, self.inner.config.backoff_max);
        let handle = &self.inner.handle;
        let closing = self.inner.closing.subscribe();
        let add = GroupCmd::Add(reg.clone());
        match state.groups.entry(ttl_secs) {
            Entry::Occupied(group) => group.get().tx.send(add).map_err(|_| Error::closed())?,
            // The first of its TTL: the new task finds it when it first runs (one wake-up).
            Entry::Vacant(slot) => {
                let mux = self.inner.mux.clone();
                let generation = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let retire = retire_group(&self.inner.state, ttl_secs, generation);
                slot.insert(LeaseGroup::spawn(
                    handle, ttl_secs, conn, mux, min, max, closing, add, generation, retire,
                ));
            }
        }
        // The older registration of the same node, if any, ends; its key stays for this one.
        // Told after the new one joined: of the same TTL, the lease then never lacks a member
        // (revoked, it would take the key with it), and the key is put once, with the new info.
        if let Some(KeyOf(old)) = old {
            if let Some(group) = state.groups.get(&old.ttl_secs) {
                let _ = group.tx.send(GroupCmd::Remove {
                    id: old.id,
                    successor: Some(reg.clone()),
                    done: None,
                    deadline: tokio::time::Instant::now() + self.inner.config.timeout,
                });
            }
            state
                .replaced
                .retain(|r| r.state() != RegistrationState::Unregistered);
            state.replaced.push(old);
        }
        Ok(Registration {
            shared: reg,
            registry: self.clone(),
        })
    }

    /// [`Registration::update`]: checks and records the new info, then asks the lease's task to
    /// put it. Under the state lock, so that it is ordered with `unregister` and `close`: a
    /// registration still listed here has not been sent its `Remove` yet.
    pub(crate) fn update_reg(&self, reg: &Arc<RegShared>, info: Info) -> Result<()> {
        let value = encode_checked(&reg.key, &info)?;
        self.update_reg_valued(reg, info, value)
    }

    /// [`Registration::update_bytes`]: as `update_reg`, with the info as bytes.
    pub(crate) fn update_reg_bytes(&self, reg: &Arc<RegShared>, info: &InfoBytes) -> Result<()> {
        let value = check_value(&reg.key, info.has_empty_key(), info.encode())?;
        self.update_reg_valued(reg, info.to_info(), value)
    }

    fn update_reg_valued(&self, reg: &Arc<RegShared>, info: Info, value: String) -> Result<()> {
        self.check_open()?;
        let state = self.state();
        self.check_open()?;
        let current = state.registrations.get(reg.key.as_bytes());
        let Some(group) = current
            .filter(|r| Arc::ptr_eq(&r.0, reg))
            .and_then(|_| state.groups.get(&reg.ttl_secs))
        else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "the registration has ended (unregistered, or replaced by a newer registration of the same node)",
            ));
        };
        reg.set_info(info, value);
        group
            .tx
            .send(GroupCmd::Update { id: reg.id })
            .map_err(|_| Error::closed())
    }

    /// [`Registration::unregister`]: the shutdown rule over [`Registry::try_unregister_id`].
    pub(crate) async fn unregister_reg(&self, reg: &Arc<RegShared>) -> Result<()> {
        match self.try_unregister_reg(reg).await {
            // The shutdown rule (see `Registration::unregister`): stopped locally all the same.
            Err(e) if matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout) => {
                tracing::warn!(
                    error = %e,
                    "unregistered, but etcd could not be reached to delete the key; it expires with its lease"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Ends the registration and returns what deleting its key gave.
    pub(crate) async fn try_unregister_reg(&self, reg: &Arc<RegShared>) -> Result<()> {
        self.check_same_process()?;
        let id = reg.id;
        let ending = {
            let mut state = self.state();
            // Only while it is the registration of its node (not ended, not replaced).
            if !state
                .registrations
                .get(reg.key.as_bytes())
                .is_some_and(|r| Arc::ptr_eq(&r.0, reg))
            {
                Ending::Elsewhere(state.groups.get(&reg.ttl_secs).map(|g| g.tx.clone()))
            } else {
                state.registrations.remove(reg.key.as_bytes());
                let Some(group) = state.groups.get(&reg.ttl_secs) else {
                    return Ok(());
                };
                if reg.leave() {
                    // No put of its key was sent yet (its lease still being granted, or etcd
                    // unreachable since it was registered), and none will be: nothing to
                    // delete, nothing to wait for. Its lease's task forgets it when it gets to
                    // this, and revokes the lease if it was the last member.
                    let _ = group.tx.send(GroupCmd::Remove {
                        id,
                        successor: None,
                        done: None,
                        deadline: tokio::time::Instant::now() + self.inner.config.timeout,
                    });
                    Ending::Unput
                } else {
                    let (done_tx, done_rx) = oneshot::channel();
                    let _ = group.tx.send(GroupCmd::Remove {
                        id,
                        successor: None,
                        done: Some(done_tx),
                        deadline: tokio::time::Instant::now() + self.inner.config.timeout,
                    });
                    let mut answers = vec![done_rx];
                    // A group of another generation is a later one: the lease of the one named
                    // ended with it, and so did the key.
                    for (ttl, generation) in reg.stale_groups() {
                        let Some(stale) = state.groups.get(&ttl) else {
                            continue;
                        };
                        if stale.generation == generation {
                            let (done_tx, done_rx) = oneshot::channel();
                            let key = reg.key.clone();
                            let _ = stale.tx.send(GroupCmd::DeleteStale { key, done: done_tx });
                            answers.push(done_rx);
                        }
                    }
                    Ending::Deleting(answers)
                }
            }
        };
        let result = match ending {
            Ending::Unput => {
                // Nothing of its own in etcd; leases handed over to it may hold its key still
                // (it was to move the key to its lease with its first put).
                let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
                crate::group::revoke_handed_over(&self.inner.conn, reg, deadline).await;
                reg.emit(StatusEvent::Unregistered);
                Ok(())
            }
            // The group answers after the key is deleted (or the delete failed within the
            // timeout), and after `Unregistered` has been emitted. It may be busy before that
            // (etcd slow or unreachable, other unregisters queued first): past the timeout the
            // registration ends now, and the group deletes its key when it gets to it (or the
            // key expires with its lease).
            Ending::Deleting(answers) => {
                let timeout = self.inner.config.timeout;
                let deadline = tokio::time::Instant::now() + timeout;
                let mut result = Ok(());
                for answer in answers {
                    match tokio::time::timeout_at(deadline, answer).await {
                        Ok(answer) => {
                            if let (Ok(()), Ok(Err(e))) = (&result, answer) {
                                result = Err(e);
                            }
                        }
                        Err(_) => {
                            reg.emit(StatusEvent::Unregistered);
                            result = Err(Error::timeout("deleting the key", timeout));
                            break;
                        }
                    }
                }
                result
            }
            // Replaced by a newer registration of its node (which owns the key now), or ended
            // by another unregister or by close: its task emits (or has emitted)
            // `Unregistered`, unless that task is gone (it emits it to every member first).
            // That task may be busy (its `Remove` queued behind others while etcd is slow):
            // past the timeout the registration ends now. Its key is not its own any more (or
            // its unregister already saw to it), so nothing is left undone.
            Ending::Elsewhere(group) => {
                let ended = async {
                    let ended = reg.wait_unregistered();
                    match group {
                        Some(group) => tokio::select! {
                            _ = ended => {}
                            _ = group.closed() => {}
                        },
                        None => ended.await,
                    }
                };
                if tokio::time::timeout(self.inner.config.timeout, ended)
                    .await
                    .is_err()
                {
                    reg.emit(StatusEvent::Unregistered);
                }
                Ok(())
            }
        };
        // Either way, as the caller is promised: `Unregistered` has been delivered to the
        // registration's handler when this returns, so the handler's data may be freed.
        finish_routes(std::slice::from_ref(reg), &[]).await;
        result
    }

    /// The current registration of `node` of `service` in this registry: the one that
    /// registering the same node again would replace (what the C library looks up to forget a
    /// replaced registration's id once it has ended). `None` when there is none: never
    /// registered, unregistered, or after close.
    pub fn registration_of(&self, service: &str, node: &str) -> Option<Registration> {
        let key = self.node_key(service, node);
        let state = self.state();
        state
            .registrations
            .get(key.as_bytes())
            .map(|r| Registration {
                shared: r.0.clone(),
                registry: self.clone(),
            })
    }

    /// Lists a service's nodes in one range request. An unknown service gives an empty list.
    /// A value that is not a JSON object keeps its node, with empty info (and is logged).
    pub async fn list(&self, service: &str) -> Result<Vec<Node>> {
        self.check_open()?;
        validate_name("service", service)?;
        let prefix = service_prefix(&self.inner.config.base_path, service);
        check_key_len(
            "the service's key prefix (base path and service name)",
            &prefix,
        )?;
        let resp = listing::fetch_raw(&self.inner.conn, &prefix).await?;
        // Sized at once: collected from a filter, the vector would grow by doubling, and a
        // large one would be copied into fresh pages a dozen times.
        let mut nodes = Vec::with_capacity(resp.kvs().len());
        nodes.extend(listing::nodes(&resp, &prefix).map(|(n, _)| n));
        Ok(nodes)
    }

    /// Lists a service like [`Registry::list`], handing each node to `f` as borrowed text — its
    /// name, its info as (key, value) pairs sorted by key, and whether it has no info object
    /// ([`Node::info_absent`]) — instead of building [`Node`]s: for bindings that copy the nodes
    /// into their own form anyway.
    pub async fn list_with<T>(
        &self,
        service: &str,
        f: impl FnMut(&str, &[(&str, &str)], bool) -> T,
    ) -> Result<Vec<T>> {
        self.check_open()?;
        validate_name("service", service)?;
        let prefix = service_prefix(&self.inner.config.base_path, service);
        check_key_len(
            "the service's key prefix (base path and service name)",
            &prefix,
        )?;
        let resp = listing::fetch_raw(&self.inner.conn, &prefix).await?;
        Ok(listing::each_node(&resp, &prefix, f))
    }

    /// The names of the services under the base path that have at least one node (the names
    /// as they appear in keys, so a '/' given at registration reads as '-'), sorted and without
    /// duplicates. One range request for keys only: no values are transferred.
    pub async fn services(&self) -> Result<Vec<String>> {
        self.check_open()?;
        let prefix = base_prefix(&self.inner.config.base_path);
        let key = prefix.clone();
        let resp = self
            .inner
            .conn
            .call_read("listing services", |c| {
                let (mut kv, key) = (crate::listing::unlimited_kv(c), key.clone());
                async move {
                    let options = etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only();
                    kv.get(key, Some(options)).await
                }
            })
            .await?;
        let mut names: Vec<String> = Vec::new();
        for kv in resp.kvs() {
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                continue;
            };
            // Keys come sorted, so the nodes of one service are adjacent.
            if let Some(name) = service_name_of(&prefix, key) {
                if names.last().map(String::as_str) != Some(name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Watches a service: lists it (failing if etcd cannot be reached now), then follows every
    /// change. See [`Watch`].
    pub async fn watch(&self, service: &str) -> Result<Watch> {
        self.watch_inner(service, None).await
    }

    /// Like [`Registry::watch`], with the watch's events going to `route` from the very first
    /// (the `Added` events of the listing included); [`Watch::next`] then returns `None`.
    pub async fn watch_routed(&self, service: &str, route: &Route) -> Result<Watch> {
        self.watch_inner(service, Some(route.subscriber())).await
    }

    async fn watch_inner(&self, service: &str, route: Option<Subscriber>) -> Result<Watch> {
        self.check_open()?;
        validate_name("service", service)?;
        let prefix = service_prefix(&self.inner.config.base_path, service);
        check_key_len(
            "the service's key prefix (base path and service name)",
            &prefix,
        )?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let setup = WatchSetup {
            id,
            service: service.to_string(),
            prefix,
            conn: self.inner.conn.clone(),
            mux: self.inner.mux.clone(),
            backoff: (self.inner.config.backoff_min, self.inner.config.backoff_max),
            registry: self.clone(),
            route,
            hub: self.inner.hub.clone(),
        };
        let watch = watch::start(setup, &self.inner.handle).await?;
        let mut state = self.state();
        if self.is_closed() {
            // Not in the state, and not while its lock is held: its task stops, and its route
            // ends without blocking a runtime thread (a handler of it may be running).
            drop(state);
            watch.abort_handle().abort();
            watch.route().end_async().await;
            return Err(Error::closed());
        }
        state
            .watches
            .insert(id, (watch.task_handle(), watch.route()));
        Ok(watch)
    }

    pub(crate) fn forget_watch(&self, id: u64) {
        self.state().watches.remove(&id);
    }

    /// The leases held now, one per distinct TTL in use.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.state()
            .groups
            .values()
            .map(|g| g.lease.load(Ordering::SeqCst))
            .filter(|l| *l != 0)
            .collect()
    }

    /// The etcd endpoint (as a URL) that calls and keep-alives go to now. Changes when that
    /// member fails or stops answering and another one takes over.
    pub fn active_endpoint(&self) -> String {
        self.inner.conn.active_endpoint().to_string()
    }

    /// How many registrations are active.
    pub fn registration_count(&self) -> usize {
        self.state().registrations.len()
    }

    /// Unregisters everything (revoking the leases, which deletes every key at once), stops the
    /// watches, and returns when done. Idempotent: a close made while another runs returns once
    /// that one has finished (except inside an event handler, where it returns at once, the
    /// first close waiting for the handler); every later call of another method fails with
    /// `Closed`. Its registrations' handlers have been called with `Unregistered` when it
    /// returns, except for a close made from inside a handler (on the dispatcher thread,
    /// through a runtime's `block_on`): it returns without delivering, and a close waiting
    /// for it on another thread may return before that delivery too. Call
    /// [`Handler::finish`](crate::Handler::finish) of those handlers then, once out of the
    /// runtime (the C library does); otherwise they get their events after the running
    /// handler returns.
    ///
    /// Shutdown rule, as for [`Registration::unregister`]: it never fails because etcd is
    /// unreachable. The revoke is tried within the configured timeout; when etcd cannot be
    /// reached a warning is logged, and the keys disappear when their leases expire. When etcd
    /// refuses the revoke, the keys still on the lease are deleted one by one (a key another
    /// process took over since stays).
    ///
    /// In a child process after `fork()`, it does nothing and returns `Ok`: the registrations
    /// belong to the parent, which keeps them (and whose runtime threads the child lacks).
    pub async fn close(&self) -> Result<()> {
        if self.check_same_process().is_err() {
            self.inner.closed.store(true, Ordering::SeqCst);
            return Ok(());
        }
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            if !crate::events::Handler::on_dispatcher_thread() {
                let mut done = self.inner.closed_done.subscribe();
                let _ = done.wait_for(|done| *done).await;
            }
            return Ok(());
        }
        // What is left to do once the groups are told; done here, or, when this close is
        // dropped before (a caller's timeout), on the runtime: every stream still ends, and a
        // close waiting for this one is told when it has.
        let mut rest = CloseRest {
            inner: Some(self.inner.clone()),
            registrations: Vec::new(),
            routes: Vec::new(),
        };
        self.inner.closing.send_replace(true);
        let (groups, watches) = {
            let mut state = self.state();
            rest.registrations = state.registrations.drain().map(|r| r.0).collect::<Vec<_>>();
            // Replaced ones: theirs is the same promise, also for one that has ended (its
            // `Unregistered` emitted) but whose handler has not been called with it yet.
            rest.registrations.append(&mut state.replaced);
            (
                state.groups.drain().map(|(_, g)| g).collect::<Vec<_>>(),
                state.watches.drain().map(|(_, w)| w).collect::<Vec<_>>(),
            )
        };
        for (task, route) in watches {
            task.abort();
            rest.routes.push(route);
        }
        let mut pending = Vec::new();
        for group in groups {
            let (done_tx, done_rx) = oneshot::channel();
            if group.tx.send(GroupCmd::Close { done: done_tx }).is_ok() {
                pending.push(done_rx);
            }
        }
        // Groups still busy at the timeout (etcd slow or unreachable) finish in the background;
        // their registrations end now.
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        for done in pending {
            let _ = tokio::time::timeout_at(deadline, done).await;
        }
        rest.finish().await;
        Ok(())
    }
}

impl Watch {
    fn task_handle(&self) -> AbortHandle {
        self.abort_handle()
    }
}

/// The answer to a lease group of `ttl_secs` left idle (see [`Retire`]): yes when nothing is
/// queued for it, and then it is forgotten (unless a later group of the TTL took its place,
/// e.g. after `close`). The state is reached weakly: a registry dropped meanwhile drops every
/// sender, and the group then ends on its own.
fn retire_group(state: &Arc<Mutex<State>>, ttl_secs: i64, generation: u64) -> Retire {
    let state = Arc::downgrade(state);
    Box::new(move |rx| {
        let Some(state) = state.upgrade() else {
            return false;
        };
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if !rx.is_empty() {
            return false;
        }
        if state
            .groups
            .get(&ttl_secs)
            .is_some_and(|g| g.generation == generation)
        {
            state.groups.remove(&ttl_secs);
        }
        true
    })
}

/// The end of a [`Registry::close`]: its registrations and watch routes, to be finished by
/// [`finish_close`]. Dropped unfinished (the close's future dropped on the way: a caller's
/// timeout), it finishes them on the registry's runtime; each step is idempotent, so one done
/// already is only done again.
struct CloseRest {
    /// `None` once finished.
    inner: Option<Arc<Inner>>,
    registrations: Vec<Arc<RegShared>>,
    routes: Vec<Arc<WatchRoute>>,
}

impl CloseRest {
    async fn finish(&mut self) {
        if let Some(inner) = &self.inner {
            finish_close(inner, &self.registrations, &self.routes).await;
        }
        self.inner = None;
    }
}

impl Drop for CloseRest {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let registrations = std::mem::take(&mut self.registrations);
        let routes = std::mem::take(&mut self.routes);
        inner.handle.clone().spawn(async move {
            finish_close(&inner, &registrations, &routes).await;
        });
    }
}

/// Ends a closed registry's registrations (`Unregistered`), delivers what their handlers
/// still have queued, ends its watches and registry-wide streams, drops its connections, and
/// tells the closes waiting for it.
async fn finish_close(inner: &Inner, registrations: &[Arc<RegShared>], routes: &[Arc<WatchRoute>]) {
    for reg in registrations {
        reg.emit(StatusEvent::Unregistered);
    }
    // Every registration has emitted `Unregistered`: deliver it to the handlers, stop the
    // watches' handlers, and end the registry-wide streams after it.
    finish_routes(registrations, routes).await;
    inner.hub.close();
    inner.conn.reset();
    inner.closed_done.send_replace(true);
}

/// Delivers what the registrations' handlers still have queued (their `Unregistered` last) and
/// ends the watches' routes; returns once no handler call of theirs runs. Waits without blocking
/// a runtime thread; on the dispatcher thread itself (called from inside a handler) nothing is
/// delivered here: see `Handler::finish`.
async fn finish_routes(registrations: &[Arc<RegShared>], watches: &[Arc<WatchRoute>]) {
    for reg in registrations {
        reg.finish_route().await;
    }
    for route in watches {
        route.end_async().await;
    }
}

/// Refuses a key longer than [`MAX_KEY_BYTES`]; `what` names it.
fn check_key_len(what: &str, key: &str) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "{what} is too long: {} bytes, at most {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid(format!("{what} name must not be empty")));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid(format!("{what} name must not be {name:?}")));
    }
    if name.contains('\0') {
        return Err(Error::invalid(format!("{what} name must not contain NUL")));
    }
    Ok(())
}

/// The value of a node's info, checked as `register` and `update` take it.
fn encode_checked(key: &str, info: &Info) -> Result<String> {
    check_value(key, info.keys().any(String::is_empty), encode_info(info))
}

/// The value of info given as bytes (`None`: no info object, an empty value), checked as
/// `register_bytes` takes it.
fn encode_bytes(key: &str, info: Option<&InfoBytes>) -> Result<String> {
    match info {
        Some(info) => check_value(key, info.has_empty_key(), info.encode()),
        None => Ok(String::new()),
    }
}

/// Checks an encoded value (and whether its info had an empty key) for `key`.
fn check_value(key: &str, empty_key: bool, value: String) -> Result<String> {
    if empty_key {
        return Err(Error::invalid("info keys must not be empty"));
    }
    if key.len() + value.len() + REQUEST_OVERHEAD > MAX_REQUEST_BYTES {
        return Err(Error::invalid(format!(
            "node info is too large: {} bytes with its key, etcd accepts at most about {} per request",
            key.len() + value.len(),
            MAX_REQUEST_BYTES - REQUEST_OVERHEAD
        )));
    }
    Ok(value)
}

fn validate_ttl(ttl: Duration) -> Result<i64> {
    if ttl.is_zero() {
        return Err(Error::invalid("ttl must be greater than zero"));
    }
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    if secs > MAX_TTL_SECS {
        return Err(Error::invalid(format!(
            "ttl {ttl:?} is larger than etcd's maximum of {MAX_TTL_SECS} s"
        )));
    }
    Ok(secs as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_and_is_bounded() {
        assert!(validate_ttl(Duration::ZERO).is_err());
        assert_eq!(validate_ttl(Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(validate_ttl(Duration::from_millis(2500)).unwrap(), 3);
        assert_eq!(validate_ttl(Duration::from_secs(30)).unwrap(), 30);
        assert!(validate_ttl(Duration::from_secs(MAX_TTL_SECS + 1)).is_err());
        assert!(validate_ttl(Duration::MAX).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("service", "").is_err());
        assert!(validate_name("service", "  ").is_err());
        assert!(validate_name("service", "..").is_err());
        assert!(validate_name("service", "a\0b").is_err());
        assert!(validate_name("service", "api/v1").is_ok());
    }
}
