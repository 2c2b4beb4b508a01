//! A fleet: the plans of several clusters counted together. One user-assigned identity is often
//! bound in several clusters, and Entra's limit of [`MAX_FEDERATED_CREDENTIALS`] per identity
//! counts every cluster's (issuer, subject) pairs together, so a per-cluster plan undercounts.
//! Identities are matched across clusters by resource ID ([`identity_key`]); a cluster reached
//! twice (two kubeconfig contexts onto one API server) has one issuer, so its pairs count once.

use std::collections::{BTreeMap, BTreeSet};

use super::{Assessment, Finding, IdentityRef, MAX_FEDERATED_CREDENTIALS, Severity, finding};
use crate::migration::service_account_subject;
use crate::reason::ReasonCode;

/// One cluster's plan (`plan` over its objects), named.
#[derive(Clone, Debug)]
pub struct ClusterAssessments {
    /// The cluster's name (snapshot header, kubeconfig context).
    pub name: String,
    /// Its OIDC issuer when known and usable.
    pub oidc_issuer: Option<String>,
    pub assessments: Vec<Assessment>,
}

/// The key of an Azure identity across clusters: its resource ID (lower case), or its client ID
/// for a service principal.
pub fn identity_key(i: &IdentityRef) -> String {
    if i.resource_id.is_empty() {
        i.client_id.to_lowercase()
    } else {
        i.resource_id.to_lowercase()
    }
}

/// The subjects one issuer asks an identity to trust, and the clusters they come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IssuerSubjects {
    pub clusters: BTreeSet<String>,
    pub subjects: BTreeSet<String>,
}

/// The federated credentials one identity needs over the fleet, per issuer (a cluster with no
/// known issuer counts as its own, `cluster:<name>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityCredentials {
    pub by_issuer: BTreeMap<String, IssuerSubjects>,
}

impl IdentityCredentials {
    /// Distinct (issuer, subject) pairs: the credentials the identity needs.
    pub fn count(&self) -> usize {
        self.by_issuer.values().map(|s| s.subjects.len()).sum()
    }

    /// The clusters the identity is used in.
    pub fn clusters(&self) -> BTreeSet<&str> {
        self.by_issuer
            .values()
            .flat_map(|s| s.clusters.iter().map(String::as_str))
            .collect()
    }

    /// `aks-a 12, aks-b 10` (clusters sharing an issuer joined by `=`).
    fn breakdown(&self) -> String {
        self.by_issuer
            .values()
            .map(|s| {
                let names: Vec<&str> = s.clusters.iter().map(String::as_str).collect();
                format!("{} {}", names.join("="), s.subjects.len())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Per identity ([`identity_key`]), the credentials it needs over all `clusters`.
pub type FleetCredentials = BTreeMap<String, IdentityCredentials>;

/// What every identity needs over the fleet: one credential per (issuer, namespace, target
/// ServiceAccount) of the workloads on pod identity that use it.
pub fn fleet_credentials(clusters: &[ClusterAssessments]) -> FleetCredentials {
    let mut out = FleetCredentials::new();
    for c in clusters {
        let issuer = c
            .oidc_issuer
            .clone()
            .unwrap_or_else(|| format!("cluster:{}", c.name));
        for a in c.assessments.iter().filter(|a| a.uses_pod_identity) {
            let Some(target) = a.target_service_account.as_deref() else {
                continue;
            };
            let subject = service_account_subject(&a.workload.namespace, target);
            for i in &a.identities {
                let per = out
                    .entry(identity_key(i))
                    .or_default()
                    .by_issuer
                    .entry(issuer.clone())
                    .or_default();
                per.clusters.insert(c.name.clone());
                per.subjects.insert(subject.clone());
            }
        }
    }
    out
}

/// `federated-credential-limit` counted over the fleet: every workload on an identity that needs
/// more than [`MAX_FEDERATED_CREDENTIALS`] in all clusters together is blocked, with a message
/// giving the count per cluster; the per-cluster findings of that code are replaced. Verdicts
/// are settled again.
pub fn apply_fleet_limit(clusters: &mut [ClusterAssessments], credentials: &FleetCredentials) {
    for c in clusters.iter_mut() {
        for a in c.assessments.iter_mut().filter(|a| a.uses_pod_identity) {
            let over: Vec<Finding> = a
                .identities
                .iter()
                .filter_map(|i| {
                    let creds = credentials.get(&identity_key(i))?;
                    let n = creds.count();
                    (n > MAX_FEDERATED_CREDENTIALS).then(|| {
                        finding(
                            ReasonCode::FederatedCredentialLimit,
                            Severity::Blocker,
                            format!(
                                "identity {}/{} would need {n} federated credentials over {} cluster(s) ({}; one per issuer, namespace and ServiceAccount); Entra allows {MAX_FEDERATED_CREDENTIALS} per identity — share ServiceAccounts or split the identity",
                                i.namespace,
                                i.name,
                                creds.clusters().len(),
                                creds.breakdown()
                            ),
                        )
                    })
                })
                .collect();
            let had = a
                .findings
                .iter()
                .any(|f| f.code == ReasonCode::FederatedCredentialLimit);
            if over.is_empty() && !had {
                continue;
            }
            a.findings
                .retain(|f| f.code != ReasonCode::FederatedCredentialLimit);
            a.findings.extend(over);
            super::settle_verdict(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BridgeState, Verdict, Workload};

    const RID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/shared";

    /// A workload in `ns` on ServiceAccount `sa` using the shared identity (as named in its
    /// cluster), ready to move as far as the cluster alone goes.
    fn on_shared(ns: &str, sa: &str, name_in_cluster: &str) -> Assessment {
        Assessment {
            workload: Workload {
                namespace: ns.into(),
                kind: "Deployment".into(),
                name: sa.into(),
                service_account: sa.into(),
                ..Default::default()
            },
            uses_pod_identity: true,
            identities: vec![IdentityRef {
                namespace: "default".into(),
                name: name_in_cluster.into(),
                type_: "user-assigned".into(),
                client_id: "c-shared".into(),
                resource_id: RID.to_uppercase(),
                binding: "b".into(),
            }],
            verdict: Verdict::Ready,
            findings: Vec::new(),
            bridge: BridgeState::default(),
            target_service_account: Some(sa.into()),
        }
    }

    fn cluster(name: &str, issuer: Option<&str>, namespaces: usize) -> ClusterAssessments {
        ClusterAssessments {
            name: name.into(),
            oidc_issuer: issuer.map(str::to_string),
            assessments: (0..namespaces)
                .map(|n| on_shared(&format!("ns-{n:02}"), "app", &format!("id-{name}")))
                .collect(),
        }
    }

    #[test]
    fn the_limit_counts_every_clusters_pairs_together() {
        let mut fleet = vec![
            cluster("aks-a", Some("https://a.example/"), 12),
            cluster("aks-b", Some("https://b.example/"), 10),
        ];
        let creds = fleet_credentials(&fleet);
        let shared = &creds[&RID.to_lowercase()];
        assert_eq!(shared.count(), 22, "same subjects, two issuers");
        assert_eq!(shared.clusters(), ["aks-a", "aks-b"].into());
        apply_fleet_limit(&mut fleet, &creds);
        for a in fleet.iter().flat_map(|c| &c.assessments) {
            assert_eq!(a.verdict, Verdict::Blocked);
            assert_eq!(a.findings.len(), 1);
            let m = &a.findings[0].message;
            assert!(
                m.contains("22 federated credentials over 2 cluster(s) (aks-a 12, aks-b 10"),
                "{m}"
            );
        }
    }

    #[test]
    fn one_cluster_reached_twice_counts_once_and_under_the_limit_nothing_changes() {
        let mut fleet = vec![
            cluster("ctx-1", Some("https://a.example/"), 12),
            cluster("ctx-2", Some("https://a.example/"), 12),
        ];
        let creds = fleet_credentials(&fleet);
        let shared = &creds[&RID.to_lowercase()];
        assert_eq!(shared.count(), 12);
        assert_eq!(shared.breakdown(), "ctx-1=ctx-2 12");
        let before: Vec<Assessment> = fleet.iter().flat_map(|c| c.assessments.clone()).collect();
        apply_fleet_limit(&mut fleet, &creds);
        let after: Vec<Assessment> = fleet.iter().flat_map(|c| c.assessments.clone()).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn clusters_of_unknown_issuer_count_apart_and_a_cluster_limit_is_replaced() {
        let mut a = cluster("aks-a", None, 21);
        for x in &mut a.assessments {
            x.findings.push(finding(
                ReasonCode::FederatedCredentialLimit,
                Severity::Blocker,
                "per cluster",
            ));
            x.verdict = Verdict::Blocked;
        }
        let mut fleet = vec![a, cluster("aks-b", None, 1)];
        let creds = fleet_credentials(&fleet);
        assert_eq!(creds[&RID.to_lowercase()].count(), 22);
        apply_fleet_limit(&mut fleet, &creds);
        let f = &fleet[0].assessments[0].findings;
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].message.contains("aks-a 21, aks-b 1"), "{f:?}");
        assert_eq!(fleet[1].assessments[0].verdict, Verdict::Blocked);
    }
}
