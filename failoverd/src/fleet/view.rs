//! Each host's view (`hosts/<host>`) and the fleet matrix made from all of them.
//!
//! A host publishes the verdict it holds for every backend and the priority each service
//! sends to. Put side by side, they tell "backend down" (every host sees it down) from
//! "three hosts cut off from it" (only they do).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::{
    FleetBackendRow, FleetHostRow, FleetReport, FleetServiceRow, HostState, StatusReport,
};

/// What one host publishes under `hosts/<host>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// The host's name (`fleet.host`).
    pub host: String,
    /// failoverd's version on it.
    pub version: String,
    /// The fleet revision it last applied.
    pub revision: i64,
    /// When anything below last changed, in seconds since the Unix epoch.
    pub last_change_unix: u64,
    /// Service → what it sees.
    pub services: BTreeMap<String, ServiceView>,
}

/// One service as a host sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// The priority taking new connections, if any.
    pub active_priority: Option<u8>,
    /// Backend → its state (`healthy`, `unhealthy`, `drained`…).
    pub backends: BTreeMap<String, String>,
}

/// The state word that counts as "up" in the matrix.
pub const UP: &str = "healthy";

impl HostView {
    /// The view of a daemon whose status is `status`; `last_change_unix` is left 0 (the
    /// agent sets it when the view differs from the last one it published).
    pub fn from_status(host: &str, revision: i64, status: &StatusReport) -> HostView {
        HostView {
            host: host.to_owned(),
            version: status.version.clone(),
            revision,
            last_change_unix: 0,
            services: status
                .services
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        ServiceView {
                            active_priority: s.active_priority,
                            backends: s
                                .backends
                                .iter()
                                .map(|b| (b.name.clone(), b.state.clone()))
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Whether `other` says the same, whatever the time of the change.
    pub fn same_as(&self, other: &HostView) -> bool {
        self.version == other.version
            && self.revision == other.revision
            && self.services == other.services
    }
}

/// The matrix itself, as the control API returns it.
pub type FleetMatrix = FleetReport;

/// Puts every host's view side by side: per service and backend, how many of the hosts
/// running the service see it up, and which do not (with what they see).
pub fn matrix(views: &[HostView]) -> FleetReport {
    let mut services: BTreeMap<&str, BTreeMap<&str, (usize, Vec<HostState>)>> = BTreeMap::new();
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for v in views {
        for (name, s) in &v.services {
            *running.entry(name).or_default() += 1;
            let backends = services.entry(name).or_default();
            for (backend, state) in &s.backends {
                let (up, not_up) = backends.entry(backend).or_default();
                if state == UP {
                    *up += 1;
                } else {
                    not_up.push(HostState {
                        host: v.host.clone(),
                        state: state.clone(),
                    });
                }
            }
        }
    }
    FleetReport {
        hosts: views
            .iter()
            .map(|v| FleetHostRow {
                host: v.host.clone(),
                version: v.version.clone(),
                revision: v.revision,
                services: v.services.len(),
                last_change_unix: v.last_change_unix,
            })
            .collect(),
        services: services
            .into_iter()
            .map(|(name, backends)| FleetServiceRow {
                name: name.to_owned(),
                hosts: running[name],
                backends: backends
                    .into_iter()
                    .map(|(backend, (up, not_up))| FleetBackendRow {
                        name: backend.to_owned(),
                        up,
                        of: running[name],
                        not_up,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(host: &str, states: &[(&str, &str)]) -> HostView {
        HostView {
            host: host.into(),
            version: "0.1.0".into(),
            revision: 3,
            last_change_unix: 0,
            services: BTreeMap::from([(
                "db".to_string(),
                ServiceView {
                    active_priority: Some(0),
                    backends: states
                        .iter()
                        .map(|(b, s)| (b.to_string(), s.to_string()))
                        .collect(),
                },
            )]),
        }
    }

    #[test]
    fn a_backend_down_from_some_hosts_names_them() {
        let views = [
            view("h1", &[("a", "healthy"), ("b", "unhealthy")]),
            view("h2", &[("a", "healthy"), ("b", "healthy")]),
            view("h3", &[("a", "healthy"), ("b", "unhealthy")]),
        ];
        let m = matrix(&views);
        assert_eq!(m.hosts.len(), 3);
        let db = &m.services[0];
        assert_eq!((db.name.as_str(), db.hosts), ("db", 3));
        assert_eq!((db.backends[0].up, db.backends[0].of), (3, 3));
        let b = &db.backends[1];
        assert_eq!((b.up, b.of), (1, 3));
        let names: Vec<&str> = b.not_up.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["h1", "h3"]);
    }

    #[test]
    fn the_change_time_does_not_make_a_view_different() {
        let mut a = view("h1", &[("a", "healthy")]);
        let b = a.clone();
        a.last_change_unix = 99;
        assert!(a.same_as(&b));
    }
}
