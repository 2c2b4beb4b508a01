//! The report document: every assessed workload plus totals, in a stable, versioned schema
//! (`apiVersion: podid.dev/v1alpha1`, `kind: Report`; see docs/report.md). What a cluster lacks
//! is said once for the cluster; per workload the report says what concerns the workload. Several
//! clusters make one report (a fleet), with the federated-credential limit counted over all.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use podid_crds::index::IdentityIndex;
use podid_crds::plan::{
    Assessment, ClusterAssessments, ClusterContext, Finding, PlanInput, Severity, Verdict,
    apply_fleet_limit, cluster_findings, fleet_credentials, identity_key, plan, workloads,
};
use podid_crds::reason::ReasonCode;
use serde::{Deserialize, Serialize};

use crate::inventory::{ClusterFacts, Inventory};
use crate::selector::LabelSelector;

pub const REPORT_API_VERSION: &str = "podid.dev/v1alpha1";
pub const REPORT_KIND: &str = "Report";

/// Counts by verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub ready: usize,
    pub needs_changes: usize,
    pub blocked: usize,
    pub not_using: usize,
}

impl Counts {
    fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Ready => self.ready += 1,
            Verdict::NeedsChanges => self.needs_changes += 1,
            Verdict::Blocked => self.blocked += 1,
            Verdict::NotUsing => self.not_using += 1,
        }
    }

    /// Workloads that use pod identity.
    pub fn using(&self) -> usize {
        self.ready + self.needs_changes + self.blocked
    }
}

/// One identity and the workloads that depend on it (identities are matched across clusters by
/// resource ID).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityUsage {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(
        rename = "resourceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_id: String,
    pub workloads: usize,
    pub counts: Counts,
    /// Federated credentials it needs: distinct (issuer, subject) pairs over every cluster read
    /// (Entra allows 20).
    #[serde(default)]
    pub federated_credentials: usize,
    /// The clusters it is used in (several clusters only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
}

/// Totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub workloads: usize,
    pub verdicts: Counts,
    /// Per namespace (`<cluster>/<namespace>` with several clusters).
    pub namespaces: BTreeMap<String, Counts>,
    /// Identities ranked by how many workloads depend on them (most first).
    pub identities: Vec<IdentityUsage>,
    /// Reason code → workloads it applies to.
    pub reasons: BTreeMap<ReasonCode, usize>,
}

/// One cluster's totals in a report of several.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    pub workloads: usize,
    pub verdicts: Counts,
    pub reasons: BTreeMap<ReasonCode, usize>,
}

/// A cluster: what it records, and what it lacks (said once, not per workload).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    #[serde(flatten)]
    pub facts: ClusterFacts,
    /// Cluster-wide findings: `no-oidc-issuer`, `oidc-issuer-unknown`, `webhook-not-installed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Its totals (several clusters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ClusterSummary>,
}

impl ClusterReport {
    /// True when the cluster itself stops every workload on pod identity from moving.
    pub fn has_blocker(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Blocker)
    }
}

/// One workload of the report: its assessment as it concerns the workload, and (several
/// clusters only) the cluster it runs in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportWorkload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(flatten)]
    pub assessment: Assessment,
}

impl std::ops::Deref for ReportWorkload {
    type Target = Assessment;
    fn deref(&self) -> &Assessment {
        &self.assessment
    }
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: String,
    pub kind: String,
    /// The cluster (one cluster read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
    /// The clusters (several read), each with its totals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterReport>,
    pub summary: Summary,
    pub workloads: Vec<ReportWorkload>,
    /// Input kinds that were skipped (`apiVersion/kind` → count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_kinds: BTreeMap<String, usize>,
}

/// The plan for every workload of the inventory (`podid_crds::plan::plan`, as the bridge decides).
pub fn assess(inv: &Inventory, ctx: &ClusterContext) -> Vec<Assessment> {
    let index = IdentityIndex::from_objects(&inv.bindings, &inv.identities, &inv.exceptions);
    let workloads = workloads(&inv.workload_objects());
    let service_accounts: Vec<&ServiceAccount> = inv.service_accounts.iter().collect();
    plan(&PlanInput {
        workloads: &workloads,
        index: &index,
        service_accounts: &service_accounts,
        context: ctx,
    })
}

/// The name a cluster goes by in a report of several.
fn cluster_name(inv: &Inventory, i: usize) -> String {
    inv.cluster
        .name
        .clone()
        .unwrap_or_else(|| format!("cluster-{}", i + 1))
}

fn count_reasons(reasons: &mut BTreeMap<ReasonCode, usize>, a: &Assessment) {
    let mut codes: Vec<ReasonCode> = a.findings.iter().map(|f| f.code).collect();
    codes.sort();
    codes.dedup();
    for c in codes {
        *reasons.entry(c).or_default() += 1;
    }
}

impl Report {
    /// Builds the report. `namespaces` restricts the workloads listed (empty: all); bindings
    /// and identities are always read cluster-wide, as pod identity matches across namespaces.
    pub fn build(inv: &Inventory, ctx: &ClusterContext, namespaces: &[String]) -> Report {
        Self::build_selected(inv, ctx, namespaces, None)
    }

    /// [`Report::build`], listing only workloads whose pod-template labels (a bare pod's own
    /// labels) match `selector`. Every workload is still assessed, so the cross-workload rules
    /// (shared ServiceAccounts, the credential limit) see the whole input.
    pub fn build_selected(
        inv: &Inventory,
        ctx: &ClusterContext,
        namespaces: &[String],
        selector: Option<&LabelSelector>,
    ) -> Report {
        Self::build_fleet(&[(inv, ctx)], namespaces, selector)
    }

    /// The report of one cluster or several (a fleet): per cluster its plan, its cluster-wide
    /// findings said once, and (several) its totals; identities matched across clusters by
    /// resource ID, and `federated-credential-limit` counted over all of them. `namespaces` and
    /// `selector` narrow the listing in every cluster.
    pub fn build_fleet(
        clusters: &[(&Inventory, &ClusterContext)],
        namespaces: &[String],
        selector: Option<&LabelSelector>,
    ) -> Report {
        let fleet = clusters.len() > 1;
        let mut plans: Vec<ClusterAssessments> = clusters
            .iter()
            .enumerate()
            .map(|(i, (inv, ctx))| ClusterAssessments {
                name: cluster_name(inv, i),
                oidc_issuer: ctx.oidc_issuer.clone(),
                assessments: assess(inv, ctx),
            })
            .collect();
        let credentials = fleet_credentials(&plans);
        if fleet {
            apply_fleet_limit(&mut plans, &credentials);
        }
        let mut summary = Summary::default();
        let mut cluster_reports = Vec::new();
        let mut listed = Vec::new();
        let mut ids: BTreeMap<String, (IdentityUsage, std::collections::BTreeSet<String>)> =
            BTreeMap::new();
        for ((inv, ctx), p) in clusters.iter().zip(plans) {
            let mut cs = ClusterSummary::default();
            for a in p.assessments {
                if !namespaces.is_empty() && !namespaces.contains(&a.workload.namespace) {
                    continue;
                }
                if selector.is_some_and(|sel| !sel.matches(&a.workload.labels)) {
                    continue;
                }
                let a = a.about_the_workload();
                cs.workloads += 1;
                cs.verdicts.add(a.verdict);
                count_reasons(&mut cs.reasons, &a);
                summary.verdicts.add(a.verdict);
                count_reasons(&mut summary.reasons, &a);
                let ns_key = if fleet {
                    format!("{}/{}", p.name, a.workload.namespace)
                } else {
                    a.workload.namespace.clone()
                };
                summary.namespaces.entry(ns_key).or_default().add(a.verdict);
                for i in &a.identities {
                    let key = identity_key(i);
                    let (u, seen_in) = ids.entry(key.clone()).or_insert_with(|| {
                        (
                            IdentityUsage {
                                namespace: i.namespace.clone(),
                                name: i.name.clone(),
                                type_: i.type_.clone(),
                                client_id: i.client_id.clone(),
                                resource_id: i.resource_id.clone(),
                                workloads: 0,
                                counts: Counts::default(),
                                federated_credentials: credentials
                                    .get(&key)
                                    .map_or(0, |c| c.count()),
                                clusters: Vec::new(),
                            },
                            Default::default(),
                        )
                    });
                    u.workloads += 1;
                    u.counts.add(a.verdict);
                    seen_in.insert(p.name.clone());
                }
                listed.push(ReportWorkload {
                    cluster: fleet.then(|| p.name.clone()),
                    assessment: a,
                });
            }
            let mut facts = inv.cluster.clone();
            if fleet {
                facts.name = Some(p.name.clone());
            }
            cluster_reports.push(ClusterReport {
                facts,
                findings: cluster_findings(ctx),
                summary: fleet.then_some(cs),
            });
        }
        summary.workloads = listed.len();
        let mut ranked: Vec<IdentityUsage> = ids
            .into_values()
            .map(|(mut u, seen_in)| {
                if fleet {
                    u.clusters = seen_in.into_iter().collect();
                }
                u
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.workloads
                .cmp(&a.workloads)
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        });
        summary.identities = ranked;
        let mut skipped_kinds = BTreeMap::new();
        for (inv, _) in clusters {
            for (k, n) in &inv.skipped_kinds {
                *skipped_kinds.entry(k.clone()).or_default() += n;
            }
        }
        let (cluster, clusters) = if fleet {
            (None, cluster_reports)
        } else {
            (cluster_reports.pop(), Vec::new())
        };
        Report {
            api_version: REPORT_API_VERSION.into(),
            kind: REPORT_KIND.into(),
            cluster,
            clusters,
            summary,
            workloads: listed,
            skipped_kinds,
        }
    }

    /// Every cluster of the report.
    pub fn all_clusters(&self) -> impl Iterator<Item = &ClusterReport> {
        self.cluster.iter().chain(&self.clusters)
    }

    /// True when a workload listed is blocked, by itself or by its cluster (a cluster-wide
    /// blocker such as `no-oidc-issuer` stops every workload of it that uses pod identity).
    pub fn has_blocked(&self) -> bool {
        if self.summary.verdicts.blocked > 0 {
            return true;
        }
        match &self.cluster {
            Some(c) => c.has_blocker() && self.summary.verdicts.using() > 0,
            None => self.clusters.iter().any(|c| {
                c.has_blocker() && c.summary.as_ref().is_some_and(|s| s.verdicts.using() > 0)
            }),
        }
    }
}
