//! The Debian package holds what an operator needs: `scripts/package.sh dev` packages the
//! binary cargo built for these tests, and `dpkg-deb` lists what is inside.

use std::{path::Path, process::Command};

#[test]
fn the_deb_holds_the_binary_unit_config_docs_man_page_and_completions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let has = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("cargo-deb") || !has("dpkg-deb") {
        eprintln!(
            "SKIPPED: cargo-deb or dpkg-deb is missing (scripts/install-deps.sh installs them)"
        );
        return;
    }
    let out = Command::new(root.join("scripts/package.sh"))
        .arg("dev")
        .current_dir(&root)
        .output()
        .expect("run scripts/package.sh");
    assert!(
        out.status.success(),
        "package.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| l.trim().to_string())
        .expect("cargo deb prints the package's path");
    let listing = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .expect("dpkg-deb -c");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in [
        "./usr/bin/failoverd",
        "./etc/failoverd/failoverd.yaml",
        "./lib/systemd/system/failoverd.service",
        "./usr/share/doc/failoverd/operations.md",
        "./usr/share/doc/failoverd/configuration.md",
        "./usr/share/man/man8/failoverd.8",
        "./usr/share/bash-completion/completions/failoverd",
        "./usr/share/zsh/vendor-completions/_failoverd",
        "./usr/share/fish/vendor_completions.d/failoverd.fish",
        "./usr/share/failoverd/prometheus/alerts.yml",
        "./usr/share/failoverd/grafana/failoverd.json",
    ] {
        assert!(
            listing.contains(path),
            "{path} missing from {deb}:\n{listing}"
        );
    }
    let control = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .expect("dpkg-deb -I");
    let control = String::from_utf8_lossy(&control.stdout);
    assert!(
        control.contains("conffiles"),
        "the config is a conffile:\n{control}"
    );
}
