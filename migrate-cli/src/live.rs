//! Reads an [`Inventory`] from a live cluster with paginated lists, showing progress on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::inventory::{ClusterFacts, Inventory};

/// Objects per list page.
const PAGE: u32 = 500;

/// What to read.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Namespaces to read pods and workloads from; empty means all. (A label selector is
    /// applied to the report, not to the scan: see [`crate::report::Report::build_selected`].)
    pub namespaces: Vec<String>,
}

async fn list_all<K>(
    client: &Client,
    namespaces: &[String],
    bar: &ProgressBar,
) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let apis: Vec<Api<K>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let kind = K::kind(&Default::default()).to_string();
    let mut out = Vec::new();
    for api in apis {
        let mut lp = ListParams::default().limit(PAGE);
        loop {
            let page = match api.list(&lp).await {
                Ok(p) => p,
                // A CRD that is not installed, or a kind we may not list: nothing to read.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
                    tracing::warn!(kind, code = e.code, "cannot list; treated as none");
                    break;
                }
                Err(e) => return Err(Error::Kube(e)),
            };
            bar.inc(page.items.len() as u64);
            bar.set_message(format!("{kind} ({})", out.len() + page.items.len()));
            out.extend(page.items);
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp.continue_token = Some(c),
                _ => break,
            }
        }
    }
    Ok(out)
}

async fn list_cluster<K>(client: &Client, bar: &ProgressBar) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let mut lp = ListParams::default().limit(PAGE);
    let mut out = Vec::new();
    loop {
        let page = match api.list(&lp).await {
            Ok(p) => p,
            Err(kube::Error::Api(e)) if e.code == 403 => break,
            Err(e) => return Err(Error::Kube(e)),
        };
        bar.inc(page.items.len() as u64);
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp.continue_token = Some(c),
            _ => break,
        }
    }
    Ok(out)
}

/// Reads everything the report needs. AzureIdentities, bindings and exceptions are always
/// read from all namespaces (pod identity matches across namespaces).
pub async fn scan(
    client: &Client,
    scope: &Scope,
    context: Option<String>,
    quiet: bool,
) -> Result<Inventory, Error> {
    let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} scanning {msg} · {pos} objects · {elapsed}")
                .expect("progress template"),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    };
    let ns = &scope.namespaces;
    let all: &[String] = &[];
    let mut inv = Inventory {
        pods: list_all(client, ns, &bar).await?,
        service_accounts: list_all(client, ns, &bar).await?,
        deployments: list_all(client, ns, &bar).await?,
        replica_sets: list_all(client, ns, &bar).await?,
        stateful_sets: list_all(client, ns, &bar).await?,
        daemon_sets: list_all(client, ns, &bar).await?,
        jobs: list_all(client, ns, &bar).await?,
        cron_jobs: list_all(client, ns, &bar).await?,
        identities: list_all(client, all, &bar).await?,
        bindings: list_all(client, all, &bar).await?,
        assigned: list_all(client, all, &bar).await?,
        exceptions: list_all(client, all, &bar).await?,
        webhooks: list_cluster(client, &bar).await?,
        nodes: list_cluster(client, &bar).await?,
        ..Default::default()
    };
    let oidc_issuer = match podid_telemetry::cluster::oidc_issuer_lookup(client).await {
        Ok(i) => i,
        Err(e) => {
            bar.suspend(|| {
                eprintln!(
                    "warning: could not read the API server's issuer discovery document ({e}): the OIDC issuer is unknown; pass --oidc-issuer"
                )
            });
            inv.issuer_lookup_failed = true;
            None
        }
    };
    inv.cluster = ClusterFacts {
        name: context,
        oidc_issuer,
        network_plugin: None,
        captured_at: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    };
    inv.facts_recorded = true;
    bar.finish_and_clear();
    Ok(inv)
}
