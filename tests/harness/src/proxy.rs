//! A fault-injecting TCP proxy on std threads.
//!
//! One accept thread per proxy, two copy threads per connection. The accept thread only
//! accepts: each connection reaches for the upstream on a thread of its own, so that an
//! upstream slow to accept (an etcd starting) never holds up the other clients' connections,
//! and the listen queue is as long as the system allows (a fleet of clients reconnecting at
//! once overflows std's 128, and a dropped SYN costs the client a second). While
//! *partitioned* (blackholed) every byte in both directions is silently
//! dropped and new connections are accepted but never reach the upstream —
//! from the client's side this looks like a real network partition (no RST,
//! no FIN, just silence). On heal the blackholed connections are closed so
//! clients reconnect, and new connections are forwarded normally.
//!
//! With a *delay* set, every byte is forwarded that much later than it arrived, in both
//! directions and on existing connections too: a member that answers slowly rather than not
//! at all.
//!
//! A *peer* proxy stands in front of a member's peer port. It reads the head of each request
//! that opens a connection for the sending member's id (etcd's `X-Server-From` header, on its
//! raft streams and pipelines) and blackholes the connections of the members it is told to
//! cut off ([`Proxy::cut_off`]): with the member's own peer proxy partitioned too, that member
//! is isolated from its peers both ways while its clients still reach it.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const COPY_STACK: usize = 128 * 1024;
const BUF: usize = 16 * 1024;

struct Conn {
    state: Arc<State>,
    client: TcpStream,
    upstream: Option<TcpStream>,
    blackholed: AtomicBool,
    closed: AtomicBool,
    finished: AtomicUsize,
    /// Peer proxies: the member id that opened the connection, 0 until its first request head
    /// is read (or when it names none).
    from: AtomicU64,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    }

    fn expected_directions(&self) -> usize {
        if self.upstream.is_some() {
            2
        } else {
            1
        }
    }

    /// One direction finished cleanly; when all have, the connection is done.
    fn direction_done(&self) {
        if self.finished.fetch_add(1, Ordering::SeqCst) + 1 >= self.expected_directions() {
            self.close();
        }
    }
}

struct State {
    upstream: SocketAddr,
    partitioned: AtomicBool,
    /// Added latency in microseconds, 0 for none.
    delay_us: AtomicU64,
    stopped: AtomicBool,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Connections accepted since the start, whatever became of them.
    accepted: AtomicU64,
    /// A peer proxy: reads who sends each connection (see the module doc).
    peer: bool,
    /// Peer proxies: the member ids whose connections are blackholed. Held while a connection
    /// learns its sender, so that a cut-off never misses one.
    cut_off: Mutex<HashSet<u64>>,
}

/// A running proxy `listen_addr -> upstream`. Stops (and closes every
/// connection) on drop.
pub(crate) struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Start a proxy on a fresh loopback port forwarding to `upstream`.
    pub(crate) fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        Self::start_as(upstream, false)
    }

    /// Start a peer proxy (see the module doc) forwarding to a member's peer port.
    pub(crate) fn start_peer(upstream: SocketAddr) -> io::Result<Proxy> {
        Self::start_as(upstream, true)
    }

    fn start_as(upstream: SocketAddr, peer: bool) -> io::Result<Proxy> {
        let listener = crate::util::bind_unreserved()?;
        // Listening again sets the queue's length (capped by net.core.somaxconn).
        {
            use std::os::fd::AsRawFd;
            // SAFETY: listen(2) on a socket this function owns; no memory is passed.
            if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            partitioned: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            peer,
            cut_off: Mutex::new(HashSet::new()),
        });
        let st = state.clone();
        let accept = thread::Builder::new()
            .name(format!("etcd-proxy-{}", addr.port()))
            .stack_size(COPY_STACK)
            .spawn(move || accept_loop(listener, st))?;
        Ok(Proxy {
            addr,
            state,
            accept: Some(accept),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blackhole: drop all traffic on existing and new connections.
    pub(crate) fn partition(&self) {
        let conns = self.state.conns.lock().unwrap();
        self.state.partitioned.store(true, Ordering::SeqCst);
        for c in conns.iter() {
            c.blackholed.store(true, Ordering::SeqCst);
        }
    }

    /// Resume forwarding for new connections; close every blackholed one.
    pub(crate) fn heal(&self) {
        let mut conns = self.state.conns.lock().unwrap();
        self.state.partitioned.store(false, Ordering::SeqCst);
        for c in conns.iter() {
            if c.blackholed.load(Ordering::SeqCst) {
                c.close();
            }
        }
        conns.retain(|c| !c.closed.load(Ordering::SeqCst));
    }

    /// Peer proxies: blackhole every connection member `id` opened or opens from now on.
    pub(crate) fn cut_off(&self, id: u64) {
        let mut cut = self.state.cut_off.lock().unwrap();
        cut.insert(id);
        for c in self.state.conns.lock().unwrap().iter() {
            if c.from.load(Ordering::SeqCst) == id {
                c.blackholed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Peer proxies: undo every [`Proxy::cut_off`]; their blackholed connections are closed, so
    /// that the members connect again.
    pub(crate) fn reconnect_all(&self) {
        self.state.cut_off.lock().unwrap().clear();
        self.heal();
    }

    /// Close every current connection (both sides).
    pub(crate) fn reset(&self) {
        let mut conns = self.state.conns.lock().unwrap();
        for c in conns.iter() {
            c.close();
        }
        conns.clear();
    }

    /// Forward every byte `delay` after it arrived (zero: at once again).
    pub(crate) fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state.delay_us.store(us, Ordering::SeqCst);
    }

    pub(crate) fn is_partitioned(&self) -> bool {
        self.state.partitioned.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start, including those closed at once because the
    /// upstream was down: a client's connection attempts.
    pub(crate) fn accepted_total(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Number of connections currently tracked (open, forwarding or blackholed).
    pub(crate) fn connection_count(&self) -> usize {
        let mut conns = self.state.conns.lock().unwrap();
        conns.retain(|c| !c.closed.load(Ordering::SeqCst));
        conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wake the accept thread.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.reset();
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = stream else { continue };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let partitioned = state.partitioned.load(Ordering::SeqCst);
        let st = state.clone();
        // Without a thread, the client is dropped: like a refused connection.
        let _ = thread::Builder::new()
            .stack_size(COPY_STACK)
            .spawn(move || serve(client, partitioned, st));
    }
}

/// Connects accepted `client` to the upstream (unless the proxy was partitioned when it came)
/// and starts copying.
fn serve(client: TcpStream, partitioned: bool, state: Arc<State>) {
    let _ = client.set_nodelay(true);
    let upstream = if partitioned {
        None
    } else {
        match TcpStream::connect_timeout(&state.upstream, Duration::from_secs(1)) {
            Ok(u) => {
                let _ = u.set_nodelay(true);
                Some(u)
            }
            // Upstream is down: drop the client, like a refused connection.
            Err(_) => return,
        }
    };
    let conn = {
        let mut conns = state.conns.lock().unwrap();
        conns.retain(|c| !c.closed.load(Ordering::SeqCst));
        let conn = Arc::new(Conn {
            state: state.clone(),
            client,
            upstream,
            blackholed: AtomicBool::new(partitioned || state.partitioned.load(Ordering::SeqCst)),
            closed: AtomicBool::new(false),
            finished: AtomicUsize::new(0),
            from: AtomicU64::new(0),
        });
        conns.push(conn.clone());
        conn
    };
    if let Err(_e) = spawn_copies(&conn) {
        conn.close();
    }
}

fn spawn_copies(conn: &Arc<Conn>) -> io::Result<()> {
    let client_r = conn.client.try_clone()?;
    match &conn.upstream {
        Some(up) => {
            let up_r = up.try_clone()?;
            let up_w = up.try_clone()?;
            let client_w = conn.client.try_clone()?;
            let c1 = conn.clone();
            thread::Builder::new()
                .stack_size(COPY_STACK)
                .spawn(move || copy(client_r, Some(up_w), &c1, true))?;
            let c2 = conn.clone();
            thread::Builder::new()
                .stack_size(COPY_STACK)
                .spawn(move || copy(up_r, Some(client_w), &c2, false))?;
        }
        None => {
            let c1 = conn.clone();
            thread::Builder::new()
                .stack_size(COPY_STACK)
                .spawn(move || copy(client_r, None, &c1, true))?;
        }
    }
    Ok(())
}

/// Writes chunks to `dst` at their due time, in order; ends when the sender is dropped or a
/// write fails.
fn delayed_writer(mut dst: TcpStream, chunks: mpsc::Receiver<(Instant, Vec<u8>)>) {
    for (due, chunk) in chunks {
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if dst.write_all(&chunk).is_err() {
            let _ = dst.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = dst.shutdown(Shutdown::Write);
}

/// Peer proxies: reads the head of the first request on a connection, notes the member that
/// sent it (`X-Server-From`, its id in hex) and forwards the head unless that member is cut off
/// (then the connection is blackholed). False when the connection ended first.
fn learn_sender(src: &mut TcpStream, dst: Option<&mut TcpStream>, conn: &Conn) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match src.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let from = String::from_utf8_lossy(&head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("x-server-from")
                .then(|| u64::from_str_radix(value.trim(), 16).ok())?
        })
        .unwrap_or(0);
    {
        let cut = conn.state.cut_off.lock().unwrap();
        conn.from.store(from, Ordering::SeqCst);
        if cut.contains(&from) {
            conn.blackholed.store(true, Ordering::SeqCst);
        }
    }
    if conn.blackholed.load(Ordering::SeqCst) {
        return true;
    }
    match dst {
        Some(d) => d.write_all(&head).is_ok(),
        None => true,
    }
}

/// Copy `src -> dst` until EOF/error, discarding data while blackholed.
fn copy(mut src: TcpStream, mut dst: Option<TcpStream>, conn: &Conn, from_client: bool) {
    let mut buf = vec![0u8; BUF];
    // Once a delay was set, this direction's bytes go through a writer thread for good, so
    // that they stay in order when the delay is lifted.
    let mut delayed: Option<mpsc::Sender<(Instant, Vec<u8>)>> = None;
    if from_client && conn.state.peer && !learn_sender(&mut src, dst.as_mut(), conn) {
        conn.close();
        return;
    }
    loop {
        match src.read(&mut buf) {
            Ok(0) => {
                if conn.blackholed.load(Ordering::SeqCst) {
                    if from_client {
                        // The client went away: nothing left to keep open.
                        conn.close();
                    }
                    // Upstream EOF while partitioned: the client must not see it.
                    return;
                }
                if delayed.take().is_none() {
                    if let Some(d) = &dst {
                        let _ = d.shutdown(Shutdown::Write);
                    }
                }
                conn.direction_done();
                return;
            }
            Ok(n) => {
                if conn.blackholed.load(Ordering::SeqCst) {
                    continue;
                }
                let delay_us = conn.state.delay_us.load(Ordering::SeqCst);
                if delayed.is_none() && delay_us > 0 {
                    if let Some(d) = dst.as_ref().and_then(|d| d.try_clone().ok()) {
                        let (tx, rx) = mpsc::channel();
                        if thread::Builder::new()
                            .stack_size(COPY_STACK)
                            .spawn(move || delayed_writer(d, rx))
                            .is_ok()
                        {
                            delayed = Some(tx);
                        }
                    }
                }
                if let Some(tx) = &delayed {
                    let due = Instant::now() + Duration::from_micros(delay_us);
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        conn.close();
                        return;
                    }
                    continue;
                }
                if let Some(d) = dst.as_mut() {
                    if d.write_all(&buf[..n]).is_err() {
                        if !conn.blackholed.load(Ordering::SeqCst) {
                            conn.close();
                        }
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                if !conn.blackholed.load(Ordering::SeqCst) || from_client {
                    conn.close();
                }
                return;
            }
        }
    }
}
