//! Choosing the etcd version: the harness reports the etcd it started, and refuses a binary that
//! is not the `ETCD_VERSION` asked for or a version it does not know. Each case runs the
//! `etcd-harness` binary, since the choice is made once per process.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-harness");

/// `etcd-harness serve` with stdin closed: prints its JSON line, then shuts down at EOF.
fn serve(env: &[(&str, &str)], remove: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").stdin(Stdio::null());
    for var in remove {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run etcd-harness serve")
}

#[test]
fn serve_reports_the_etcd_version_it_started() {
    let version = etcd_harness::etcd_version().unwrap();
    let out = serve(&[], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line: Value = serde_json::from_str(stdout.lines().next().unwrap_or("")).unwrap();
    assert_eq!(line["ok"], true);
    assert_eq!(line["etcd_version"], version.as_str(), "{line}");
    assert!(
        stderr.contains(&format!("etcd-harness: etcd {version} (")),
        "{stderr}"
    );
}

#[test]
fn a_binary_of_another_version_than_etcd_version_is_refused() {
    let version = etcd_harness::etcd_version().unwrap();
    let path = etcd_harness::etcd_binary().unwrap();
    let other = if version.starts_with("3.4.") {
        "3.6"
    } else {
        "3.4"
    };
    let out = serve(
        &[
            ("ETCD_BIN", path.to_str().unwrap()),
            ("ETCD_VERSION", other),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(r#"{"error":"#),
        "no cluster reported: {stdout}"
    );
    assert!(
        stderr.contains(&format!("ETCD_VERSION={other} but")) && stderr.contains(&version),
        "{stderr}"
    );
}

#[test]
fn an_unknown_etcd_version_is_a_clear_error() {
    let out = serve(&[("ETCD_VERSION", "2.9")], &["ETCD_BIN"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(r#"{"error":"#),
        "no cluster reported: {stdout}"
    );
    assert!(
        stderr.contains("ETCD_VERSION=2.9 is not one of 3.4|3.5|3.5.12|3.5.36|3.6|3.7"),
        "{stderr}"
    );
}
