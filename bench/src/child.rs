//! A layer's driver process, spoken to through the driver protocol (bench/README.md).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A layer under test: its name, how to start its driver, and its target ratio to the floor.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub label: String,
    pub command: Vec<String>,
    /// Target for list and register latency, as a ratio of the p50 of the layer's reference:
    /// the raw floor (Rust, C) or the best native peer of the layer's language (Go, Python).
    pub target_ratio: Option<f64>,
    /// The layer's language ("rust", "c", "go", "python").
    pub language: &'static str,
    /// A native client of the language (etcd's own Go client, etcd3, aetcd), not a layer of
    /// etcd-registry: the yardstick of the layers of its language.
    pub peer: bool,
}

pub struct Driver {
    pub layer: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: PathBuf,
}

pub type Res<T> = Result<T, String>;

impl Driver {
    /// Starts the driver with `ENDPOINTS BASE` appended to its command and waits for `ready`.
    pub fn spawn(layer: &Layer, endpoints: &[String], base: &str, log_dir: &Path) -> Res<Driver> {
        let _ = fs::create_dir_all(log_dir);
        let log = log_dir.join(format!("{}.log", layer.name));
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let (program, args) = layer
            .command
            .split_first()
            .ok_or_else(|| format!("{}: empty driver command", layer.name))?;
        let mut child = Command::new(program)
            .args(args)
            .arg(endpoints.join(","))
            .arg(base)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("{}: starting {program}: {e}", layer.name))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut driver = Driver {
            layer: layer.name.clone(),
            child,
            stdin,
            lines: rx,
            log,
        };
        driver.recv(Duration::from_secs(60))?;
        Ok(driver)
    }

    /// How the driver ended, if it has.
    pub fn exit_status(&mut self) -> Option<String> {
        // Give a process that is being killed a moment to be reaped.
        for _ in 0..10 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send(&mut self, cmd: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .map_err(|e| self.failure(&format!("sending {cmd:?}: {e}")))
    }

    /// The next JSON reply; `{"error": ...}` becomes an error.
    pub fn recv(&mut self, timeout: Duration) -> Res<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim();
                    if !line.starts_with('{') {
                        // Not protocol: a stray print of the binding; keep it for the log reader.
                        eprintln!("  [{}] stdout: {line}", self.layer);
                        continue;
                    }
                    let v: Value = serde_json::from_str(line)
                        .map_err(|e| format!("{}: bad reply {line:?}: {e}", self.layer))?;
                    if let Some(err) = v.get("error") {
                        return Err(format!("{}: {}", self.layer, err.as_str().unwrap_or("?")));
                    }
                    return Ok(v);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failure(&format!("no reply within {timeout:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failure("driver exited"));
                }
            }
        }
    }

    pub fn call(&mut self, cmd: &str, timeout: Duration) -> Res<Value> {
        self.send(cmd)?;
        self.recv(timeout)
    }

    fn failure(&mut self, what: &str) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!(" ({s})"),
            _ => String::new(),
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}: {what}{status}; log {}:\n    {}",
            self.layer,
            self.log.display(),
            tail.join("\n    ")
        )
    }

    /// Sends `quit` and waits up to `grace` for the driver to exit, then kills it.
    pub fn quit(mut self, grace: Duration) {
        self.shutdown(grace);
    }

    fn shutdown(&mut self, grace: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(10));
    }
}

/// A number field of a reply.
pub fn num(v: &Value, field: &str) -> Res<f64> {
    v.get(field)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("reply without {field}: {v}"))
}

/// The `us` array of a reply.
pub fn samples(v: &Value) -> Res<Vec<f64>> {
    let arr = v
        .get("us")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("reply without us: {v}"))?;
    Ok(arr.iter().filter_map(Value::as_f64).collect())
}
