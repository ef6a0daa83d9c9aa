//! Compiles the BPF programs in `bpf/` with clang so the binary can embed them.

use std::{env, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

/// Debian packages that provide what this script runs and includes.
const PACKAGES: &str = "clang llvm libbpf-dev linux-libc-dev";

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let bpf_dir = manifest
        .join("../bpf")
        .canonicalize()
        .context("bpf/ directory not found")?;
    let source = bpf_dir.join("failoverd.bpf.c");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("failoverd.bpf.o");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=FAILOVERD_CLANG");

    let clang = env::var("FAILOVERD_CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps asm/types.h under the multiarch directory, which clang does
    // not search when targeting bpf.
    let multiarch = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);
    let output = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-D__TARGET_ARCH_{}", target_arch()))
        .arg(format!("-I{multiarch}"))
        .arg(format!("-I{}", bpf_dir.display()))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{clang}` not found: install it with `apt-get install -y {PACKAGES}`")
        }
        Err(e) => return Err(e).with_context(|| format!("running {clang}")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("file not found") {
            format!("\nmissing headers: install them with `apt-get install -y {PACKAGES}`")
        } else {
            String::new()
        };
        bail!("compiling {} failed:\n{stderr}{hint}", source.display());
    }
    Ok(())
}

fn target_arch() -> &'static str {
    match env::consts::ARCH {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    }
}
