//! `failoverd fleet publish` and `fleet diff`: a services file against what etcd holds.
//!
//! Publish writes every changed service, deletes every service the file no longer lists
//! and records who published, in one transaction guarded by the previous publish's
//! revision: a daemon sees the whole change at one revision or none of it, and two
//! publishes racing cannot interleave.

use std::{collections::BTreeMap, time::SystemTime};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{
    connect::{bounded, REQUEST_TIMEOUT},
    keys::Keys,
    FleetError,
};

/// What a publish changes (or changed), by service name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDiff {
    /// In the file, not in etcd.
    pub added: Vec<String>,
    /// In etcd, not in the file.
    pub removed: Vec<String>,
    /// In both, different.
    pub changed: Vec<String>,
    /// In both, the same.
    pub unchanged: Vec<String>,
}

impl FleetDiff {
    /// Whether publishing would write anything.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The record under `desired/published`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Who ran the publish (`user@host`).
    pub by: String,
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    /// The file published.
    pub file: String,
    /// How many services the fleet has after it.
    pub services: usize,
}

/// What etcd holds now: service documents by name, and the revision of the last publish
/// record (0 if none).
pub struct Current {
    services: BTreeMap<String, String>,
    published_revision: i64,
    /// The store's revision when read.
    pub revision: i64,
}

/// Reads the published services.
pub async fn current(client: &mut Client, keys: &Keys) -> Result<Current, FleetError> {
    let options = GetOptions::new().with_prefix();
    let resp = bounded(
        "reading the fleet's services",
        REQUEST_TIMEOUT,
        client.get(keys.desired(), Some(options)),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut services = BTreeMap::new();
    let mut published_revision = 0;
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if key == keys.published() {
            published_revision = kv.mod_revision();
        } else if let super::keys::Desired::Service(name) = keys.classify(&key) {
            services.insert(
                name.to_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            );
        }
    }
    Ok(Current {
        services,
        published_revision,
        revision,
    })
}

/// What publishing `documents` (name, JSON text) over `current` would change.
pub fn diff(current: &Current, documents: &[(String, String)]) -> FleetDiff {
    let mut d = FleetDiff::default();
    for (name, text) in documents {
        match current.services.get(name) {
            None => d.added.push(name.clone()),
            Some(old) if old == text => d.unchanged.push(name.clone()),
            Some(_) => d.changed.push(name.clone()),
        }
    }
    for name in current.services.keys() {
        if !documents.iter().any(|(n, _)| n == name) {
            d.removed.push(name.clone());
        }
    }
    d
}

/// Writes `documents` as the fleet's services in one transaction; returns what changed
/// and the revision the change has (the current one if nothing changed).
pub async fn publish(
    client: &mut Client,
    keys: &Keys,
    documents: &[(String, String)],
    record: &Published,
) -> Result<(FleetDiff, i64), FleetError> {
    let now = current(client, keys).await?;
    let d = diff(&now, documents);
    if d.is_empty() {
        return Ok((d, now.revision));
    }
    let mut ops: Vec<TxnOp> = Vec::new();
    for (name, text) in documents {
        if d.added.contains(name) || d.changed.contains(name) {
            ops.push(TxnOp::put(keys.service(name), text.as_bytes(), None));
        }
    }
    for name in &d.removed {
        ops.push(TxnOp::delete(keys.service(name), None));
    }
    let record = serde_json::to_vec(record).expect("a publish record serializes");
    ops.push(TxnOp::put(keys.published(), record, None));
    let txn = Txn::new()
        .when([Compare::mod_revision(
            keys.published(),
            CompareOp::Equal,
            now.published_revision,
        )])
        .and_then(ops);
    let resp = bounded("publishing", REQUEST_TIMEOUT, client.txn(txn)).await?;
    if !resp.succeeded() {
        return Err(FleetError::Raced {
            revision: resp.header().map_or(0, |h| h.revision()),
        });
    }
    Ok((d, resp.header().map_or(0, |h| h.revision())))
}

/// Seconds since the Unix epoch (0 before it).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_sorts_services_into_added_removed_changed_unchanged() {
        let current = Current {
            services: BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string()),
                ("c".to_string(), "3".to_string()),
            ]),
            published_revision: 4,
            revision: 9,
        };
        let docs = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2x".to_string()),
            ("d".to_string(), "4".to_string()),
        ];
        let d = diff(&current, &docs);
        assert_eq!(d.added, ["d"]);
        assert_eq!(d.removed, ["c"]);
        assert_eq!(d.changed, ["b"]);
        assert_eq!(d.unchanged, ["a"]);
        assert!(!d.is_empty());
    }
}
