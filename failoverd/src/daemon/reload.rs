//! Reload: apply a new config to a running daemon, touching only what changed.

use std::{collections::BTreeMap, sync::Arc};

use super::{stop_service, DaemonError, DaemonHandle};
use crate::{config::Config, datapath::VipTable, reconcile::WriterCommand};

/// What a successful reload changed, by service name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Services that were added.
    pub added: Vec<String>,
    /// Services that were removed (their VIPs left the datapath).
    pub removed: Vec<String>,
    /// Services whose config changed (restarted with fresh health state, drains kept).
    pub changed: Vec<String>,
    /// Services left exactly as they were.
    pub unchanged: Vec<String>,
}

impl DaemonHandle {
    /// Applies a new config: unchanged services keep their state and table, removed VIPs
    /// leave the datapath, changed and new services start as on a fresh start (a changed
    /// one adopts its current table, so neither a blip nor a failover that did not happen).
    /// Returns once the kernel holds the result: a removed VIP is no longer translated.
    pub async fn reload(&self, new: Config) -> Result<ReloadReport, DaemonError> {
        let _one_at_a_time = self.inner.changes.lock().await;
        {
            let old = super::lock(&self.inner.config);
            let sections = [
                ("datapath", old.datapath != new.datapath),
                ("control", old.control != new.control),
                ("metrics", old.metrics != new.metrics),
                ("resolver", old.resolver != new.resolver),
                ("fleet", old.fleet != new.fleet),
            ];
            if let Some((section, _)) = sections.into_iter().find(|(_, changed)| *changed) {
                return Err(DaemonError::NeedsRestart { section });
            }
        }
        let mut report = ReloadReport::default();
        let mut services = self.inner.services.write().await;
        let names: Vec<String> = services.keys().cloned().collect();
        let mut adopt: BTreeMap<String, Arc<VipTable>> = BTreeMap::new();
        for name in names {
            let keep = new.services.iter().find(|s| s.name == name);
            if keep.map(|k| &**k) == Some(&*services[&name].config) {
                report.unchanged.push(name);
                continue;
            }
            let handle = services.remove(&name).expect("listed");
            let last = stop_service(handle).await;
            // Its task has stopped recording: its series go (a changed service's new task
            // registers its own, so a backend dropped from its config leaves no stale series).
            crate::metrics::forget_service(&name);
            match (keep, last) {
                (Some(next), Some(table)) if table.vip == next.vip() => {
                    adopt.insert(name.clone(), table);
                    report.changed.push(name);
                }
                (keep, last) => {
                    if let Some(table) = last {
                        self.inner
                            .shared
                            .writer
                            .send(WriterCommand::Remove(table.vip).into())
                            .await
                            .map_err(|_| DaemonError::Stopped)?;
                    }
                    if keep.is_some() {
                        report.changed.push(name);
                    } else {
                        report.removed.push(name);
                    }
                }
            }
        }
        for service in &new.services {
            if services.contains_key(&service.name) {
                continue;
            }
            let adopted = adopt.remove(&service.name);
            if adopted.is_none() && !report.changed.contains(&service.name) {
                report.added.push(service.name.clone());
            }
            let started = self.start_service(service, adopted)?;
            services.insert(service.name.clone(), started);
        }
        drop(services);
        *super::lock(&self.inner.config) = super::sections(&new);
        if !self.barrier().await? {
            tracing::warn!("reload applied; some datapath writes failed and are being retried");
        }
        tracing::info!(
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            unchanged = report.unchanged.len(),
            "config reloaded"
        );
        Ok(report)
    }
}
