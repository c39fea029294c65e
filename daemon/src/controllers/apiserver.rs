//! The `kubernetes` Service's endpoints: the address of every control-plane replica that runs
//! (each holds a key in the store while it does), or this replica's alone on the embedded store;
//! followed as replicas come and go, so pods reach a live API server through the Service, as
//! kube-apiserver's endpoint reconciler keeps them.

use std::net::Ipv4Addr;
use std::time::Duration;

use capstan_store::REPLICAS_PREFIX;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::endpoints::upsert;
use crate::context::{Context, kind};
use crate::objects::ObjectError;

/// The addresses to publish, from the replicas' keys (`REPLICAS_PREFIX` + `https://IP:PORT`):
/// those on `own`'s port (the Service's target port), sorted; `own` alone when none is known.
pub fn addresses(keys: &[String], own: (Ipv4Addr, u16)) -> Vec<Ipv4Addr> {
    let mut found: Vec<Ipv4Addr> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(REPLICAS_PREFIX)?.strip_prefix("https://"))
        .filter_map(|hostport| hostport.parse::<std::net::SocketAddrV4>().ok())
        .filter(|a| a.port() == own.1)
        .map(|a| *a.ip())
        .collect();
    found.sort();
    found.dedup();
    if found.is_empty() {
        found.push(own.0);
    }
    found
}

/// Writes the Endpoints and the EndpointSlice the proxies read (the Endpoints are not mirrored).
pub async fn publish(ctx: &Context, ips: &[Ipv4Addr]) -> Result<(), ObjectError> {
    let port = ctx.settings.api_endpoint.1;
    let addresses: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    let endpoints = json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    upsert(ctx, kind("endpoints"), "default", "kubernetes", endpoints, |cur, new| {
        cur["subsets"] == new["subsets"] && cur["metadata"]["labels"] == new["metadata"]["labels"]
    })
    .await?;
    let ready: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    let slice = json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": ready,
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
    upsert(ctx, kind("endpointslices"), "default", "kubernetes", slice, |cur, new| {
        cur["endpoints"] == new["endpoints"] && cur["ports"] == new["ports"]
    })
    .await
}

/// Publishes the replicas' addresses, and again whenever one comes or goes, until `stop`.
pub async fn run(ctx: Context, stop: CancellationToken) {
    let store = ctx.objects.store().clone();
    loop {
        let revision = store.revision();
        let keys = store
            .range(REPLICAS_PREFIX, None, 0)
            .map(|r| r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>())
            .unwrap_or_default();
        if let Err(e) = publish(&ctx, &addresses(&keys, ctx.settings.api_endpoint)).await {
            // The namespace `default` may not exist yet, the first moment of a cluster.
            tracing::debug!(error = %e, "cannot publish the API server's endpoints yet");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        }
        let mut changes = match store.watch(REPLICAS_PREFIX, revision) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "cannot follow the replicas; looking again soon");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_on_the_services_port_is_an_endpoint() {
        let own = (Ipv4Addr::new(10, 0, 0, 1), 6443);
        let keys = [
            format!("{REPLICAS_PREFIX}https://10.0.0.3:6443"),
            format!("{REPLICAS_PREFIX}https://10.0.0.1:6443"),
            format!("{REPLICAS_PREFIX}https://10.0.0.9:7443"),
            format!("{REPLICAS_PREFIX}not-a-url"),
        ];
        assert_eq!(addresses(&keys, own), [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(addresses(&[], own), [own.0], "the embedded store: this replica alone");
    }
}
