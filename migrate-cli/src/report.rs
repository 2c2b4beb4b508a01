//! The report document: every assessed workload plus totals, in a stable, versioned schema
//! (`apiVersion: podid.dev/v1alpha1`, `kind: Report`; see docs/report.md).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use podid_crds::index::IdentityIndex;
use podid_crds::plan::{Assessment, ClusterContext, PlanInput, Verdict, plan, workloads};
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

/// One identity and the workloads that depend on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityUsage {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub workloads: usize,
    pub counts: Counts,
}

/// Totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub workloads: usize,
    pub verdicts: Counts,
    pub namespaces: BTreeMap<String, Counts>,
    /// Identities ranked by how many workloads depend on them (most first).
    pub identities: Vec<IdentityUsage>,
    /// Reason code → workloads it applies to.
    pub reasons: BTreeMap<ReasonCode, usize>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: String,
    pub kind: String,
    pub cluster: ClusterFacts,
    pub summary: Summary,
    pub workloads: Vec<Assessment>,
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
        let mut workloads = assess(inv, ctx);
        if !namespaces.is_empty() {
            workloads.retain(|a| namespaces.contains(&a.workload.namespace));
        }
        if let Some(sel) = selector {
            workloads.retain(|a| sel.matches(&a.workload.labels));
        }
        let mut summary = Summary {
            workloads: workloads.len(),
            ..Default::default()
        };
        let mut ids: BTreeMap<(String, String), IdentityUsage> = BTreeMap::new();
        for a in &workloads {
            summary.verdicts.add(a.verdict);
            summary
                .namespaces
                .entry(a.workload.namespace.clone())
                .or_default()
                .add(a.verdict);
            let mut codes: Vec<ReasonCode> = a.findings.iter().map(|f| f.code).collect();
            codes.dedup();
            for c in codes {
                *summary.reasons.entry(c).or_default() += 1;
            }
            for i in &a.identities {
                let u = ids
                    .entry((i.namespace.clone(), i.name.clone()))
                    .or_insert_with(|| IdentityUsage {
                        namespace: i.namespace.clone(),
                        name: i.name.clone(),
                        type_: i.type_.clone(),
                        client_id: i.client_id.clone(),
                        workloads: 0,
                        counts: Counts::default(),
                    });
                u.workloads += 1;
                u.counts.add(a.verdict);
            }
        }
        let mut ranked: Vec<IdentityUsage> = ids.into_values().collect();
        ranked.sort_by(|a, b| {
            b.workloads
                .cmp(&a.workloads)
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        });
        summary.identities = ranked;
        Report {
            api_version: REPORT_API_VERSION.into(),
            kind: REPORT_KIND.into(),
            cluster: inv.cluster.clone(),
            summary,
            workloads,
            skipped_kinds: inv.skipped_kinds.clone(),
        }
    }

    /// True when at least one workload is blocked.
    pub fn has_blocked(&self) -> bool {
        self.summary.verdicts.blocked > 0
    }
}
