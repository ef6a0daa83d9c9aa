//! Chaos scenarios: the real `failoverd` and real backend processes under load, with backends
//! killed, frozen, cut off the network, flapping, drained, renamed in DNS, and the daemon itself
//! killed and fed broken configs. Each scenario asserts its bounds and records what the clients
//! saw (JSON per scenario plus `summary.md`) in `target/tmp/chaos-results/`, or where
//! `FAILOVERD_CHAOS_RESULTS` says (see `record::results_dir`).
//!
//! Built as a test target of the `failoverd` package (see its `Cargo.toml`) so it can run the
//! daemon binary it was built with and share the integration tests' kit; `cargo test --workspace`
//! runs it, or alone: `cargo test -p failoverd --test chaos`. Needs root.

#[path = "../failoverd/tests/dns/mod.rs"]
mod dns;
#[path = "../failoverd/tests/support/mod.rs"]
mod support;

mod common;
/// SVG timelines (the benches' figures, shared).
#[path = "../failoverd/benches/common/figures.rs"]
#[allow(dead_code)]
mod figures;
mod record;
mod scenarios;
/// Real database servers (the role-check tests' kit).
#[path = "../failoverd/tests/roles/servers.rs"]
#[allow(dead_code)]
mod servers;
mod timeline;

use libtest_mimic::{Arguments, Trial};

fn main() {
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    let mut args = Arguments::from_args();
    // Scenarios measure time from a fault to recovery: run them one at a time so they do not
    // steal each other's CPU on a small machine, unless the caller asks otherwise.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let trials = scenarios::all()
        .into_iter()
        .map(|s| Trial::test(s.name, move || record::run(&s)))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Err(e) = record::write_summary() {
        eprintln!("chaos: writing the summary failed: {e}");
    }
    conclusion.exit();
}
