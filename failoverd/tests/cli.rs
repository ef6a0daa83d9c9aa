//! The command line as scripts see it: exit codes, `-o json`, and the environment variables
//! that stand in for flags. No root, no daemon: every case here is decided before one is
//! needed (the daemon-side JSON is checked in tests/operations.rs).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// A temporary directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!(
            "fo-cli-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Dir(path)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn failoverd(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_failoverd"));
    cmd.args(args)
        .env_remove("FAILOVERD_SOCKET")
        .env_remove("FAILOVERD_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run failoverd")
}

const VALID: &str = "services:\n  - name: web\n    vip: 127.66.9.1:80\n    backends:\n      - { name: a, address: '127.0.0.1:7001' }\n";

#[test]
fn check_json_summarises_a_valid_file_and_exits_0() {
    let dir = Dir::new("json");
    let path = dir.file("ok.yaml", VALID);
    let out = failoverd(
        &["check", "-o", "json", "--config", path.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["services"][0]["name"], "web");
    assert_eq!(json["services"][0]["vip"], "127.66.9.1:80");
    assert_eq!(json["services"][0]["backends"], 1);
    assert!(json["services"][0]["detection_bound_ms"].as_u64().unwrap() > 0);
}

#[test]
fn an_invalid_config_exits_4_with_its_location() {
    let dir = Dir::new("bad");
    let path = dir.file("bad.yaml", "services:\n  - name: web\n    vip: nope\n");
    let out = failoverd(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:3:"), "{stderr}");
}

#[test]
fn failoverd_config_stands_in_for_the_flag() {
    let dir = Dir::new("env");
    let path = dir.file("ok.yaml", VALID);
    let out = failoverd(&["check"], &[("FAILOVERD_CONFIG", &path)]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok.yaml: ok"));
}

#[test]
fn an_unreachable_daemon_exits_3_naming_the_socket_from_the_environment() {
    let dir = Dir::new("sock");
    let socket = dir.0.join("nobody.sock");
    let out = failoverd(&["status"], &[("FAILOVERD_SOCKET", &socket)]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nobody.sock"),
        "{out:?}"
    );
}

#[test]
fn a_usage_error_exits_2() {
    let out = failoverd(&["status", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
