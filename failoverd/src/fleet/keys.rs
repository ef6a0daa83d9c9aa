//! The key layout under `fleet.etcd.prefix` (default `/failoverd/`).
//!
//! ```text
//! <prefix>desired/services/<service>            one published service (JSON config document)
//! <prefix>desired/drains/<service>/<backend>    one fleet drain (JSON: who, host, when, why)
//! <prefix>desired/published                     the last publish: who, when, how many
//! <prefix>hosts/<host>                          one host's view, under its lease
//! ```
//! Daemons watch `desired/` only, so a host's view changing wakes nobody up.

/// Keys of one fleet, from its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under `prefix` (which ends with `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Everything a daemon watches: `<prefix>desired/`.
    pub fn desired(&self) -> String {
        format!("{}desired/", self.prefix)
    }

    /// Every published service: `<prefix>desired/services/`.
    pub fn services(&self) -> String {
        format!("{}desired/services/", self.prefix)
    }

    /// One published service.
    pub fn service(&self, name: &str) -> String {
        format!("{}{name}", self.services())
    }

    /// Every fleet drain: `<prefix>desired/drains/`.
    pub fn drains(&self) -> String {
        format!("{}desired/drains/", self.prefix)
    }

    /// One fleet drain.
    pub fn drain(&self, service: &str, backend: &str) -> String {
        format!("{}{service}/{backend}", self.drains())
    }

    /// The record of the last publish.
    pub fn published(&self) -> String {
        format!("{}desired/published", self.prefix)
    }

    /// Every host's view: `<prefix>hosts/`.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }

    /// One host's view.
    pub fn host(&self, host: &str) -> String {
        format!("{}{host}", self.hosts())
    }

    /// What a desired key is: a service, a drain, or something else (ignored).
    pub fn classify<'k>(&self, key: &'k str) -> Desired<'k> {
        if let Some(name) = key.strip_prefix(self.services().as_str()) {
            if !name.is_empty() && !name.contains('/') {
                return Desired::Service(name);
            }
        } else if let Some(rest) = key.strip_prefix(self.drains().as_str()) {
            // Service names hold no `/` (config rule); a backend name may (`name@ip:port`
            // holds none either, but the split is on the first `/` to stay exact).
            if let Some((service, backend)) = rest.split_once('/') {
                if !service.is_empty() && !backend.is_empty() {
                    return Desired::Drain { service, backend };
                }
            }
        }
        Desired::Other
    }
}

/// A key under `desired/`.
#[derive(Debug, PartialEq, Eq)]
pub enum Desired<'k> {
    /// `desired/services/<name>`.
    Service(&'k str),
    /// `desired/drains/<service>/<backend>`.
    Drain {
        /// The service.
        service: &'k str,
        /// The backend.
        backend: &'k str,
    },
    /// Anything else (the publish record, a key of a later version).
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_services_and_drains_and_ignores_the_rest() {
        let k = Keys::new("/failoverd/");
        assert_eq!(
            k.classify("/failoverd/desired/services/db"),
            Desired::Service("db")
        );
        assert_eq!(
            k.classify("/failoverd/desired/drains/db/a@10.0.0.1:5432"),
            Desired::Drain {
                service: "db",
                backend: "a@10.0.0.1:5432"
            }
        );
        assert_eq!(k.classify("/failoverd/desired/published"), Desired::Other);
        assert_eq!(k.classify("/failoverd/desired/services/"), Desired::Other);
        assert_eq!(k.classify("/failoverd/desired/drains/db"), Desired::Other);
        assert_eq!(k.host("h1"), "/failoverd/hosts/h1");
    }
}
