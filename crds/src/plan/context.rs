//! Cluster-wide facts that shape every verdict.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use crate::policy::MatchOptions;
use crate::{AKS_NETWORK_PLUGIN_LABEL, WI_WEBHOOK_NAME};

/// Why an issuer URL cannot serve Workload ID, if it cannot: Entra fetches the issuer's discovery
/// document and keys from the internet, so it must be an `https` URL outside the cluster. A
/// cluster without `--enable-oidc-issuer` still announces an in-cluster issuer such as
/// `https://kubernetes.default.svc.cluster.local`, which Entra cannot reach (AADSTS90061).
pub fn issuer_problem(issuer: &str) -> Option<&'static str> {
    let Some(rest) = issuer.strip_prefix("https://") else {
        return Some("is not an https URL");
    };
    let host = rest
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if host.is_empty() {
        return Some("has no host");
    }
    if host == "kubernetes"
        || host.starts_with("kubernetes.default")
        || host.ends_with(".svc")
        || host.ends_with(".cluster.local")
    {
        return Some("is the in-cluster default, which Entra cannot reach");
    }
    None
}

/// Cluster-wide facts that shape every verdict.
#[derive(Clone, Debug, Default)]
pub struct ClusterContext {
    /// The issuer Entra can use; `None` when the cluster has none or only an in-cluster one.
    pub oidc_issuer: Option<String>,
    /// Why the recorded issuer was not usable (shown in `no-oidc-issuer`).
    pub issuer_problem: Option<String>,
    /// The input does not say whether the cluster has an issuer (a plain `kubectl get` export
    /// without a snapshot header): `oidc_issuer` is `None` for want of the fact, which the
    /// report asks for once (`oidc-issuer-unknown`) instead of blocking every workload.
    pub issuer_unknown: bool,
    pub webhook_installed: bool,
    pub kubenet: bool,
    pub match_options: MatchOptions,
}

impl ClusterContext {
    /// The context of a cluster from what it records: the issuer it announces (if any), its
    /// network plugin (if known; otherwise the AKS label on its `nodes` tells), and its mutating
    /// webhook configurations (the Workload ID webhook installed or not).
    pub fn new<'a>(
        oidc_issuer: Option<&str>,
        network_plugin: Option<&str>,
        webhooks: impl IntoIterator<Item = &'a MutatingWebhookConfiguration>,
        nodes: impl IntoIterator<Item = &'a Node>,
        match_options: MatchOptions,
    ) -> Self {
        let webhook_installed = webhooks.into_iter().any(|w| {
            w.webhooks
                .iter()
                .flatten()
                .any(|h| h.name == WI_WEBHOOK_NAME)
        });
        let kubenet = network_plugin
            .map(|p| p.eq_ignore_ascii_case("kubenet"))
            .unwrap_or_else(|| {
                nodes.into_iter().any(|n| {
                    n.labels()
                        .get(AKS_NETWORK_PLUGIN_LABEL)
                        .is_some_and(|p| p == "kubenet")
                })
            });
        let recorded = oidc_issuer.filter(|s| !s.is_empty()).map(str::to_string);
        let issuer_problem = recorded
            .as_deref()
            .and_then(|i| issuer_problem(i).map(|p| format!("the recorded issuer {i} {p}")));
        Self {
            oidc_issuer: recorded.filter(|_| issuer_problem.is_none()),
            issuer_problem,
            issuer_unknown: false,
            webhook_installed,
            kubenet,
            match_options,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::issuer_problem;

    #[test]
    fn only_public_https_issuers_serve_workload_id() {
        for ok in [
            "https://eastus.oic.prod-aks.azure.com/tenant/uuid/",
            "https://oidc.prod-aks.azure.com/uuid/",
            "https://127.0.0.1:6443",
        ] {
            assert_eq!(issuer_problem(ok), None, "{ok}");
        }
        for bad in [
            "https://kubernetes.default.svc.cluster.local",
            "https://kubernetes.default.svc",
            "https://api.kube-system.svc",
            "https://kubernetes",
            "http://oidc.example.com/",
            "https://",
        ] {
            assert!(issuer_problem(bad).is_some(), "{bad}");
        }
    }
}
