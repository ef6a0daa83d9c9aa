//! The scenarios, in the order they were specified. Each is a function that sets up its own cgroup, pins,
//! backends and daemon, drives load and a fault, asserts its bounds and fills its `Record`.

use libtest_mimic::Failed;

use crate::record::Record;

mod all_down;
mod daemon_kill;
mod demotion;
mod drain;
mod flapping;
mod freeze;
mod hostname;
mod kill_primary;
mod network;
mod passive;
mod reload;
mod scale;
mod terminate;

/// A named scenario.
pub struct Scenario {
    /// Trial name and result file name.
    pub name: &'static str,
    /// One line for the summary.
    pub title: &'static str,
    /// Runs it, filling the record; an `Err` is a failed assertion.
    pub run: fn(&mut Record) -> Result<(), Failed>,
}

/// Every scenario.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "s01_kill_primary",
            title: "kill -9 the primary under load, then bring it back",
            run: kill_primary::run,
        },
        Scenario {
            name: "s02_freeze_primary",
            title: "SIGSTOP the primary (probes time out), then SIGCONT",
            run: freeze::run,
        },
        Scenario {
            name: "s03_network_faults",
            title: "backends behind veth: link down, nftables black hole, restore",
            run: network::run,
        },
        Scenario {
            name: "s04_flapping",
            title: "primary flaps every 200-500 ms for 20 s: the breaker holds it out",
            run: flapping::run,
        },
        Scenario {
            name: "s05_daemon_sigkill",
            title: "SIGKILL the daemon under load and restart it",
            run: daemon_kill::run,
        },
        Scenario {
            name: "s06_reload",
            title: "broken reload under load changes nothing; good reload adds and removes VIPs",
            run: reload::run,
        },
        Scenario {
            name: "s07_all_down",
            title: "all backends down: fast ECONNREFUSED; traffic resumes when one returns",
            run: all_down::run,
        },
        Scenario {
            name: "s08_hostname_change",
            title: "the address behind a hostname backend changes under load",
            run: hostname::run,
        },
        Scenario {
            name: "s09_drain",
            title: "drain the primary under load",
            run: drain::run,
        },
        Scenario {
            name: "s10_scale",
            title: "200 VIPs x 4 backends, random kills and restarts for 60 s",
            run: scale::run,
        },
        Scenario {
            name: "s11_passive_failover",
            title: "kill -9 the primary with 1 s probes: the kernel's refused connects fail over",
            run: passive::run,
        },
        Scenario {
            name: "s12_frozen_terminate",
            title: "freeze the primary with long-lived connections open: terminate.on_down aborts them",
            run: terminate::frozen,
        },
        Scenario {
            name: "s13_drain_terminate",
            title: "drain keeps held connections, drain_after aborts them after the grace, drain --terminate at once",
            run: terminate::drain,
        },
        Scenario {
            name: "s14_redis_demotion",
            title: "Redis failover with the old primary demoted while running: none left on it",
            run: demotion::run,
        },
    ]
}
