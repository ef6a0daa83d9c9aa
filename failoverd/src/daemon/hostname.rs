//! Hostname backends: a watcher per name forwards its resolved addresses to the service.

use std::net::SocketAddr;

use tokio::{sync::watch, task::JoinHandle};

use super::{inbox, service::Message};
use crate::resolve::{self, Resolver};

/// Forwards a hostname's resolved addresses of the VIP's family to its service.
pub(super) fn watch(
    resolver: Resolver,
    host: String,
    port: u16,
    vip: SocketAddr,
    config_index: usize,
    tx: inbox::Sender,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (mut addrs, watcher) = resolve::watch(resolver, host.clone(), port, stop);
        loop {
            let set = addrs.borrow_and_update().clone();
            // Before the first answer there is nothing to probe; after a failure the watcher
            // keeps the last answer.
            if set.resolved {
                // A connect is translated within its own family only: an IPv4 VIP cannot
                // send to an IPv6 address, nor the reverse.
                let usable: Vec<SocketAddr> = set
                    .addrs
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv4() == vip.is_ipv4())
                    .collect();
                if usable.is_empty() && !set.addrs.is_empty() {
                    tracing::warn!(host = %host, vip = %vip, resolved = ?set.addrs, "the name resolves only to addresses of the other family than its VIP's; none can be used");
                }
                let message = Message::Addrs {
                    config_index,
                    addrs: usable,
                };
                if tx.send(message).await.is_err() {
                    break;
                }
            }
            if addrs.changed().await.is_err() {
                break;
            }
        }
        watcher.abort();
    })
}
