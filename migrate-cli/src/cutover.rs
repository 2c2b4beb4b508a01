//! `podid cutover`: the plan of the move and where every workload stands, from the same plan the
//! report and the bridge use (`podid_crds::plan::plan`) and the `WorkloadMigration` records.
//! The decisions are `podid_crds::cutover`'s; this module puts them together per workload and
//! renders them. The live steps (switch, rollback) are in [`crate::cutover_run`].

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podid_crds::cutover::{
    Hold, HoldCode, ManagedBy, Rollout, TemplateChange, TemplateKind, api_version, holds,
    managed_by, rollout, template_kind, template_of,
};
use podid_crds::migration::{
    Stage, WorkloadMigration, credential_name, migration_name, service_account_subject,
};
use podid_crds::plan::{Assessment, ClusterContext, Finding, IdentityRef, Verdict};
use podid_crds::{WI_CLIENT_ID_ANNOTATION, WI_TENANT_ID_ANNOTATION};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;
use crate::inventory::{ClusterFacts, Inventory};
use crate::render::columns;
use crate::report::assess;
use crate::selector::LabelSelector;

/// Which workloads a cutover command acts on.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Namespaces (empty: all).
    pub namespaces: Vec<String>,
    pub selector: Option<LabelSelector>,
    /// `kind/name` pairs (kind case-insensitive); empty: every workload.
    pub workloads: Vec<(String, String)>,
}

impl Scope {
    /// Parses `--workload kind/name`.
    pub fn parse_workload(s: &str) -> Result<(String, String), Error> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) if !k.is_empty() && !n.is_empty() && !n.contains('/') => {
                (k.to_ascii_lowercase(), n.to_owned())
            }
            _ => {
                return Err(Error::Usage(format!(
                    "--workload {s:?}: expected kind/name, for example deployment/web"
                )));
            }
        };
        if !WORKLOAD_KINDS.iter().any(|k| k.eq_ignore_ascii_case(&kind)) {
            return Err(Error::Usage(format!(
                "--workload {s:?}: unknown kind {kind:?}; expected one of {} (for example deployment/web)",
                WORKLOAD_KINDS.join(", ").to_ascii_lowercase()
            )));
        }
        if !podid_crds::policy::is_dns_subdomain(&name) {
            return Err(Error::Usage(format!(
                "--workload {s:?}: {name:?} is not a valid object name (lower case alphanumeric characters, '-' or '.', starting and ending alphanumeric, at most 253 characters)"
            )));
        }
        Ok((kind, name))
    }

    /// Refuses a `--workload` that names no workload of the cluster in the namespaces in scope
    /// (a typo would otherwise leave the command with nothing to do, and say so as success).
    pub fn check_workloads_exist(
        &self,
        inv: &Inventory,
        ctx: &ClusterContext,
    ) -> Result<(), Error> {
        let all = assess(inv, ctx);
        for (kind, name) in &self.workloads {
            let found = all.iter().any(|a| {
                let w = &a.workload;
                w.kind.eq_ignore_ascii_case(kind)
                    && w.name == *name
                    && (self.namespaces.is_empty() || self.namespaces.contains(&w.namespace))
            });
            if !found {
                let r#where = match self.namespaces.as_slice() {
                    [] => "in any namespace".to_owned(),
                    ns => format!("in namespace {}", ns.join(", ")),
                };
                return Err(Error::Usage(format!(
                    "--workload {kind}/{name}: no such workload {where}; give an existing workload as kind/name (for example deployment/web), with -n NAMESPACE"
                )));
            }
        }
        Ok(())
    }

    fn contains(&self, a: &Assessment) -> bool {
        let w = &a.workload;
        (self.namespaces.is_empty() || self.namespaces.contains(&w.namespace))
            && self.selector.as_ref().is_none_or(|s| s.matches(&w.labels))
            && (self.workloads.is_empty()
                || self
                    .workloads
                    .iter()
                    .any(|(k, n)| *k == w.kind.to_ascii_lowercase() && *n == w.name))
    }
}

/// The kinds a workload of the cutover has (`--workload KIND/NAME`, case-insensitive).
pub const WORKLOAD_KINDS: [&str; 7] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "CronJob",
    "Job",
    "ReplicaSet",
    "Pod",
];

/// What the cutover will do with a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `switch` changes its template and waits for the rollout.
    Switch,
    /// Already switched (its record's `spec.stage` is `Switched`, `Verified` or `Completed`);
    /// `switch` only makes sure of a `Switched` one.
    Switched,
    /// Held back (see `holds`).
    Hold,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Switch => "switch",
            Self::Switched => "switched",
            Self::Hold => "hold",
        }
    }
}

/// A federated credential the workload needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedCredential {
    /// `<namespace>/<name>` of the AzureIdentity, or the identity's resource ID (from the
    /// bridge's record).
    pub identity: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Proven by a token exchange (the bridge's record says so).
    pub ready: bool,
}

/// The plan for one workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanEntry {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// Its `WorkloadMigration`.
    pub record: String,
    pub verdict: Verdict,
    pub service_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_service_account: Option<String>,
    pub identities: Vec<IdentityRef>,
    pub credentials: Vec<PlannedCredential>,
    /// Workload ID's annotations on the target ServiceAccount as they are now.
    pub service_account_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_change: Option<TemplateChange>,
    pub template_kind: TemplateKind,
    /// True when applying the change restarts the workload's pods.
    pub triggers_rollout: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<ManagedBy>,
    /// The bridge's stage (`status.stage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_stage: Option<Stage>,
    /// The cutover's stage (`spec.stage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The record holds the template from before the switch (`spec.recordedTemplate`).
    pub recorded: bool,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<Hold>,
    /// The plan's findings (docs/report.md).
    pub findings: Vec<Finding>,
}

impl PlanEntry {
    /// `kind/name` as kubectl writes it.
    pub fn workload(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }

    /// True when only GitOps/Helm management holds it (a patch to commit is the way).
    pub fn patchable(&self) -> bool {
        self.template_change.as_ref().is_some_and(|c| !c.is_empty())
            && self.template_kind != TemplateKind::NotInPlace
            && self.holds.iter().all(|h| h.code == HoldCode::Managed)
    }

    /// True when its Workload ID side is not ready yet (no record, credentials not all proven,
    /// or the target ServiceAccount without its client ID): what `prepare` builds.
    pub fn unprepared(&self) -> bool {
        self.holds.iter().any(|h| h.code == HoldCode::NotBridged)
    }
}

/// `podid cutover plan`'s document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CutoverPlan {
    pub api_version: String,
    pub kind: String,
    pub cluster: ClusterFacts,
    pub workloads: Vec<PlanEntry>,
}

impl CutoverPlan {
    pub fn has_held(&self) -> bool {
        self.workloads.iter().any(|e| e.action == Action::Hold)
    }
}

/// A workload of the inventory as JSON (what the cutover's pure decisions read).
pub fn object_json(inv: &Inventory, kind: &str, ns: &str, name: &str) -> Option<Value> {
    fn find<T: kube::Resource + Serialize>(items: &[T], ns: &str, name: &str) -> Option<Value> {
        items
            .iter()
            .find(|o| {
                o.meta().namespace.as_deref() == Some(ns) && o.meta().name.as_deref() == Some(name)
            })
            .and_then(|o| serde_json::to_value(o).ok())
    }
    match kind {
        "Deployment" => find(&inv.deployments, ns, name),
        "StatefulSet" => find(&inv.stateful_sets, ns, name),
        "DaemonSet" => find(&inv.daemon_sets, ns, name),
        "CronJob" => find(&inv.cron_jobs, ns, name),
        "Job" => find(&inv.jobs, ns, name),
        "ReplicaSet" => find(&inv.replica_sets, ns, name),
        "Pod" => find(&inv.pods, ns, name),
        _ => None,
    }
}

fn meta_of(obj: Option<&Value>) -> ObjectMeta {
    obj.and_then(|o| o.get("metadata"))
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default()
}

/// The records by (namespace, name).
pub fn records_by_key(
    records: &[WorkloadMigration],
) -> BTreeMap<(String, String), &WorkloadMigration> {
    records
        .iter()
        .map(|r| {
            (
                (
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                ),
                r,
            )
        })
        .collect()
}

/// The cutover plan of every workload in `scope` that uses pod identity.
pub fn build_plan(
    inv: &Inventory,
    ctx: &ClusterContext,
    records: &[WorkloadMigration],
    scope: &Scope,
    allow_managed: bool,
) -> CutoverPlan {
    let by_key = records_by_key(records);
    let mut out = Vec::new();
    for a in assess(inv, ctx) {
        let w = &a.workload;
        let record_name = migration_name(&w.kind, &w.name);
        let record = by_key
            .get(&(w.namespace.clone(), record_name.clone()))
            .copied();
        // A finalized workload no longer uses pod identity, but stays the cutover's (rollback).
        let cutover_owned =
            record.is_some_and(|r| r.spec.stage.is_some() || r.spec.recorded_template.is_some());
        if !(a.uses_pod_identity || cutover_owned) || !scope.contains(&a) {
            continue;
        }
        let obj = object_json(inv, &w.kind, &w.namespace, &w.name);
        let meta = meta_of(obj.as_ref());
        let managed = managed_by(
            &meta.labels.clone().unwrap_or_default(),
            &meta.annotations.clone().unwrap_or_default(),
        );
        let target = a.target_service_account.clone();
        let mut hold = holds(&a, record, managed.as_ref(), allow_managed);
        if let (Some(t), Some(rt)) = (
            &target,
            record
                .and_then(|r| r.status.as_ref())
                .and_then(|s| s.target_service_account.as_ref()),
        ) && t != rt
        {
            hold.push(Hold {
                code: HoldCode::NotBridged,
                message: format!("the bridge's record names ServiceAccount {rt}, the plan {t}: wait for the bridge's next pass"),
            });
        }
        let change = TemplateChange::for_assessment(&a);
        let sa_annotations = target
            .as_ref()
            .and_then(|t| {
                inv.service_accounts.iter().find(|s| {
                    s.metadata.namespace.as_deref() == Some(&w.namespace)
                        && s.metadata.name.as_deref() == Some(t)
                })
            })
            .and_then(|s| s.metadata.annotations.clone())
            .unwrap_or_default();
        // The webhook does not look at the ServiceAccount before it mutates: without the
        // client-id annotation the pods would get no AZURE_CLIENT_ID.
        if let Some(t) = &target
            && hold.iter().all(|h| h.code != HoldCode::NotBridged)
            && sa_annotations
                .get(WI_CLIENT_ID_ANNOTATION)
                .is_none_or(|v| v.is_empty())
        {
            hold.push(Hold {
                code: HoldCode::NotBridged,
                message: format!(
                    "its target ServiceAccount {}/{t} has no {WI_CLIENT_ID_ANNOTATION} annotation (the bridge writes it; see `podid cutover prepare`): the webhook would inject no AZURE_CLIENT_ID",
                    w.namespace
                ),
            });
        }
        let credentials = match record.and_then(|r| r.status.as_ref()) {
            Some(s) if !s.credentials.is_empty() => s
                .credentials
                .iter()
                .map(|c| PlannedCredential {
                    identity: c.identity.clone(),
                    subject: c.subject.clone(),
                    name: c.name.clone(),
                    ready: c.ready,
                })
                .collect(),
            _ => {
                let t = target.clone().unwrap_or_default();
                a.identities
                    .iter()
                    .map(|i| PlannedCredential {
                        identity: format!("{}/{}", i.namespace, i.name),
                        subject: service_account_subject(&w.namespace, &t),
                        name: ctx
                            .oidc_issuer
                            .as_deref()
                            .map(|iss| credential_name(iss, &w.namespace, &t))
                            .unwrap_or_default(),
                        ready: false,
                    })
                    .collect()
            }
        };
        let service_account_annotations = sa_annotations
            .into_iter()
            .filter(|(k, _)| k == WI_CLIENT_ID_ANNOTATION || k == WI_TENANT_ID_ANNOTATION)
            .collect();
        let kind = template_kind(&w.kind);
        let stage = record.and_then(|r| r.spec.stage);
        let action = if stage.is_some_and(|s| s >= Stage::Switched) {
            Action::Switched
        } else if !hold.is_empty() {
            Action::Hold
        } else {
            Action::Switch
        };
        out.push(PlanEntry {
            namespace: w.namespace.clone(),
            kind: w.kind.clone(),
            name: w.name.clone(),
            record: record_name,
            verdict: a.verdict,
            service_account: w.service_account.clone(),
            target_service_account: target,
            identities: a.identities.clone(),
            credentials,
            service_account_annotations,
            triggers_rollout: kind == TemplateKind::Rollout
                && change.as_ref().is_some_and(|c| !c.is_empty()),
            template_change: change,
            template_kind: kind,
            managed_by: managed,
            bridge_stage: record.and_then(|r| r.status.as_ref()).and_then(|s| s.stage),
            stage,
            recorded: record.is_some_and(|r| r.spec.recorded_template.is_some()),
            action,
            holds: hold,
            findings: a.findings.clone(),
        });
    }
    CutoverPlan {
        api_version: crate::report::REPORT_API_VERSION.into(),
        kind: "CutoverPlan".into(),
        cluster: inv.cluster.clone(),
        workloads: out,
    }
}

fn change_text(e: &PlanEntry) -> String {
    let Some(c) = &e.template_change else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if let Some(sa) = &c.service_account_name {
        parts.push(format!("serviceAccountName {}->{sa}", e.service_account));
    }
    for (k, v) in &c.labels {
        parts.push(format!("+{k}={v}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The plan as a table: one line per workload, then why each held one is held.
pub fn plan_table(p: &CutoverPlan) -> String {
    if p.workloads.is_empty() {
        return "No workload in scope uses pod identity.\n".into();
    }
    let mut rows = vec![
        [
            "NAMESPACE",
            "WORKLOAD",
            "TARGET-SA",
            "CHANGE",
            "ROLLOUT",
            "MANAGED-BY",
            "ACTION",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &p.workloads {
        rows.push(vec![
            e.namespace.clone(),
            e.workload(),
            e.target_service_account.clone().unwrap_or("-".into()),
            change_text(e),
            match (e.template_kind, e.triggers_rollout) {
                (TemplateKind::Rollout, true) => "yes".into(),
                (TemplateKind::NextRun, _) => "next run".into(),
                (TemplateKind::NotInPlace, _) => "re-create".into(),
                _ => "no".into(),
            },
            e.managed_by
                .as_ref()
                .map_or("-".into(), |m| format!("{}:{}", m.tool, m.name)),
            e.action.as_str().into(),
        ]);
    }
    let mut out = columns(&rows);
    let held: Vec<&PlanEntry> = p.workloads.iter().filter(|e| !e.holds.is_empty()).collect();
    if !held.is_empty() {
        out.push('\n');
        for e in held {
            for h in &e.holds {
                let code = serde_json::to_value(h.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{}/{}: {code}: {}",
                    e.namespace,
                    e.workload(),
                    h.message
                );
            }
        }
    }
    let n = |a: Action| p.workloads.iter().filter(|e| e.action == a).count();
    let _ = writeln!(
        out,
        "\n{} to switch, {} switched, {} held.",
        n(Action::Switch),
        n(Action::Switched),
        n(Action::Hold)
    );
    out
}

/// Where one workload stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub record: String,
    /// The bridge's stage and proofs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven: Option<String>,
    /// The cutover's stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The record holds the template from before the switch.
    pub recorded: bool,
    /// The live template carries the cutover's change.
    pub template_switched: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// One word: `no-record`, `pod-identity`, `blocked`, `bridged`, `switching`, `rolling-out`,
    /// `switched`, `verified`, `finalizing`, `completed`, `failed`, `recorded`.
    pub state: String,
}

/// Where every workload in scope stands, from the records and the live workloads.
pub fn build_status(
    inv: &Inventory,
    ctx: &ClusterContext,
    records: &[WorkloadMigration],
    scope: &Scope,
) -> Vec<StatusEntry> {
    let by_key = records_by_key(records);
    let mut out = Vec::new();
    for a in assess(inv, ctx) {
        let w = &a.workload;
        let record_name = migration_name(&w.kind, &w.name);
        let record = by_key
            .get(&(w.namespace.clone(), record_name.clone()))
            .copied();
        if !(a.uses_pod_identity || record.is_some()) || !scope.contains(&a) {
            continue;
        }
        let obj = object_json(inv, &w.kind, &w.namespace, &w.name);
        let status = record.and_then(|r| r.status.as_ref());
        let stage = record.and_then(|r| r.spec.stage);
        let recorded = record.is_some_and(|r| r.spec.recorded_template.is_some());
        let target = status
            .and_then(|s| s.target_service_account.clone())
            .or(a.target_service_account.clone())
            .unwrap_or_default();
        let template_switched = obj
            .as_ref()
            .and_then(|o| template_of(&w.kind, o))
            .is_some_and(|t| TemplateChange::for_template(t, &target).is_empty());
        let roll = (stage.is_some() || recorded)
            .then(|| obj.as_ref().map(|o| rollout(&w.kind, o)))
            .flatten();
        let state = match (record, stage) {
            (None, _) => "no-record",
            (Some(_), Some(Stage::Switched)) if !template_switched => "switching",
            (Some(_), Some(Stage::Switched)) => match &roll {
                Some(Rollout::Failed(_)) => "failed",
                Some(Rollout::Progressing(_)) => "rolling-out",
                _ => "switched",
            },
            (Some(_), Some(s @ (Stage::Verified | Stage::Completed))) => {
                let binding_label = obj
                    .as_ref()
                    .and_then(|o| template_of(&w.kind, o))
                    .and_then(|t| t.pointer("/metadata/labels"))
                    .and_then(|l| l.get(podid_crds::POD_LABEL))
                    .is_some();
                match (&roll, s) {
                    (Some(Rollout::Failed(_)), _) => "failed",
                    (Some(Rollout::Progressing(_)), _) => "rolling-out",
                    (_, Stage::Completed) if binding_label => "finalizing",
                    (_, Stage::Completed) => "completed",
                    _ => "verified",
                }
            }
            (Some(_), _) if recorded => "recorded",
            (Some(_), _) => match status.and_then(|s| s.stage) {
                Some(Stage::Blocked) => "blocked",
                Some(Stage::Bridged) => "bridged",
                _ => "pod-identity",
            },
        };
        out.push(StatusEntry {
            namespace: w.namespace.clone(),
            kind: w.kind.clone(),
            name: w.name.clone(),
            record: record_name,
            bridge_stage: status.and_then(|s| s.stage),
            proven: status.and_then(|s| s.proven.clone()),
            stage,
            recorded,
            template_switched,
            rollout: roll,
            state: state.into(),
        });
    }
    out
}

/// The status as a table.
pub fn status_table(entries: &[StatusEntry]) -> String {
    if entries.is_empty() {
        return "No workload in scope uses pod identity.\n".into();
    }
    let mut rows = vec![
        [
            "NAMESPACE",
            "WORKLOAD",
            "BRIDGE",
            "PROVEN",
            "STAGE",
            "TEMPLATE",
            "STATE",
            "ROLLOUT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in entries {
        rows.push(vec![
            e.namespace.clone(),
            format!("{}/{}", e.kind.to_ascii_lowercase(), e.name),
            e.bridge_stage.map_or("-", Stage::as_str).into(),
            e.proven.clone().unwrap_or("-".into()),
            e.stage.map_or("-", Stage::as_str).into(),
            if e.template_switched {
                "workload-id"
            } else {
                "pod-identity"
            }
            .into(),
            e.state.clone(),
            match &e.rollout {
                None => "-".into(),
                Some(Rollout::Done) => "done".into(),
                Some(Rollout::Progressing(m)) => m.clone(),
                Some(Rollout::Failed(m)) => m.clone(),
            },
        ]);
    }
    columns(&rows)
}

/// True when a status entry is blocked or failed (exit code 3).
pub fn status_troubled(e: &StatusEntry) -> bool {
    matches!(e.state.as_str(), "blocked" | "failed")
}

/// A file name for a workload's patch: `<namespace>.<kind>.<name>.yaml`.
pub fn patch_file_name(e: &PlanEntry) -> String {
    format!(
        "{}.{}.{}.yaml",
        e.namespace,
        e.kind.to_ascii_lowercase(),
        e.name
    )
}

/// The kustomize patch of a plan entry (see [`PlanEntry::patchable`]).
pub fn kustomize_patch(e: &PlanEntry) -> Option<Value> {
    e.template_change.as_ref()?.kustomize_patch(
        api_version(&e.kind),
        &e.kind,
        &e.namespace,
        &e.name,
    )
}

/// What a `switch` or `rollback` did, one line per workload, then (with the plan) the ones held.
pub fn outcome_table(
    outcomes: &[crate::cutover_run::Outcome],
    plan: Option<&CutoverPlan>,
) -> String {
    let mut rows = vec![
        ["NAMESPACE", "WORKLOAD", "RESULT", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for o in outcomes {
        rows.push(vec![
            o.namespace.clone(),
            o.workload.clone(),
            o.result.clone(),
            o.message.clone(),
        ]);
    }
    for e in plan
        .iter()
        .flat_map(|p| &p.workloads)
        .filter(|e| e.action == Action::Hold)
    {
        let why: Vec<&str> = e.holds.iter().map(|h| h.message.as_str()).collect();
        rows.push(vec![
            e.namespace.clone(),
            e.workload(),
            "held".into(),
            why.join("; "),
        ]);
    }
    columns(&rows)
}

/// What `finalize --delete-bindings` deletes and keeps: `(namespace, name, why)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unused {
    pub bindings: Vec<(String, String, String)>,
    pub identities: Vec<(String, String, String)>,
    /// `(namespace, name, kind, why)` of what another workload still needs.
    pub kept: Vec<(String, String, String, String)>,
}

/// The AzureIdentityBindings (and AzureIdentities) the `finalized` workloads used (from the plan
/// made before finalize) that no workload still on pod identity in the cluster needs, from a
/// fresh view of the cluster (`inv`, `ctx`): a binding stays while any workload's template (or a
/// bare pod) still matches it; an identity stays while any binding not deleted names it.
pub fn unused_bindings(finalized: &[&PlanEntry], inv: &Inventory, ctx: &ClusterContext) -> Unused {
    use std::collections::BTreeSet;
    let mut needed: BTreeMap<(String, String), String> = BTreeMap::new();
    for a in assess(inv, ctx).iter().filter(|a| a.uses_pod_identity) {
        for i in &a.identities {
            needed
                .entry((i.namespace.clone(), i.binding.clone()))
                .or_insert_with(|| {
                    format!(
                        "still matched by {}/{}/{}",
                        a.workload.namespace,
                        a.workload.kind.to_ascii_lowercase(),
                        a.workload.name
                    )
                });
        }
    }
    let exists = |ns: &str, name: &str| {
        inv.bindings.iter().any(|b| {
            b.metadata.namespace.as_deref() == Some(ns) && b.metadata.name.as_deref() == Some(name)
        })
    };
    let mut out = Unused::default();
    let mut gone: BTreeSet<(String, String)> = BTreeSet::new();
    let mut identities: BTreeSet<(String, String)> = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for i in finalized.iter().flat_map(|e| &e.identities) {
        let key = (i.namespace.clone(), i.binding.clone());
        if i.binding.is_empty() || !seen.insert(key.clone()) || !exists(&key.0, &key.1) {
            continue;
        }
        identities.insert((i.namespace.clone(), i.name.clone()));
        match needed.get(&key) {
            Some(why) => out
                .kept
                .push((key.0, key.1, "AzureIdentityBinding".into(), why.clone())),
            None => {
                out.bindings.push((
                    key.0.clone(),
                    key.1.clone(),
                    "no workload on pod identity matches it any more".into(),
                ));
                gone.insert(key);
            }
        }
    }
    for (ns, name) in identities {
        let users: Vec<String> = inv
            .bindings
            .iter()
            .filter(|b| {
                b.metadata.namespace.as_deref() == Some(&ns)
                    && b.spec.azure_identity == name
                    && !gone.contains(&(ns.clone(), b.metadata.name.clone().unwrap_or_default()))
            })
            .map(|b| b.metadata.name.clone().unwrap_or_default())
            .collect();
        if users.is_empty() {
            out.identities
                .push((ns, name, "no AzureIdentityBinding names it any more".into()));
        } else {
            out.kept.push((
                ns,
                name,
                "AzureIdentity".into(),
                format!("still named by AzureIdentityBinding {}", users.join(", ")),
            ));
        }
    }
    out
}

impl Unused {
    /// What of this deletion `e` used: `(kind, namespace, name)` of its bindings, then of its
    /// identities, the order rollback re-creates them in reverse.
    pub fn used_by(&self, e: &PlanEntry) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        for (ns, name, _) in &self.bindings {
            if e.identities
                .iter()
                .any(|i| &i.namespace == ns && &i.binding == name)
            {
                out.push(("AzureIdentityBinding", ns.clone(), name.clone()));
            }
        }
        for (ns, name, _) in &self.identities {
            if e.identities
                .iter()
                .any(|i| &i.namespace == ns && &i.name == name)
            {
                out.push(("AzureIdentity", ns.clone(), name.clone()));
            }
        }
        out
    }
}

/// A pod-identity object as rollback re-creates it: `apiVersion`, `kind`, name, namespace,
/// labels, annotations and `spec` of `object` (its status and server fields left out).
pub fn removed_manifest(kind: &str, object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut metadata = serde_json::json!({"name": meta["name"], "namespace": meta["namespace"]});
    for field in ["labels", "annotations"] {
        if let Some(v) = meta.get(field).filter(|v| !v.is_null()) {
            metadata[field] = v.clone();
        }
    }
    serde_json::json!({
        "apiVersion": format!("{}/{}", podid_crds::GROUP, podid_crds::VERSION),
        "kind": kind,
        "metadata": metadata,
        "spec": object.get("spec").cloned().unwrap_or(Value::Null),
    })
}

/// `(kind, namespace, name)` of a manifest made by [`removed_manifest`].
pub fn manifest_key(m: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&m["kind"]),
        s(&m["metadata"]["namespace"]),
        s(&m["metadata"]["name"]),
    )
}

/// `existing` with `added` appended where not already present (by kind, namespace and name):
/// a rerun of finalize records nothing twice, and the first copy (from before any deletion)
/// wins.
pub fn merge_removed(existing: &[Value], added: Vec<Value>) -> Vec<Value> {
    let mut out = existing.to_vec();
    for m in added {
        if !out.iter().any(|o| manifest_key(o) == manifest_key(&m)) {
            out.push(m);
        }
    }
    out
}

/// The order rollback re-creates removed objects in: identities before the bindings that
/// name them.
pub fn recreate_order(removed: &[Value]) -> Vec<&Value> {
    let mut out: Vec<&Value> = removed.iter().collect();
    out.sort_by_key(|m| m["kind"] != "AzureIdentity");
    out
}

/// A workload's `spec.selector` (matchLabels and matchExpressions) as the API server's
/// label-selector query, so its pods are listed exactly as its controller selects them.
pub fn selector_query(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for x in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = x["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = x["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match x["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.to_owned(),
        });
    }
    parts.join(",")
}

/// What `rollback --remove-workload-id` removes for one rolled-back workload, and what it keeps
/// and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadIdRemoval {
    /// (identity resource ID, credential name) of podid's credentials for its ServiceAccount.
    pub credentials: Vec<(String, String)>,
    /// Its target ServiceAccount, when podid created it and nothing else needs it.
    pub service_account: Option<String>,
    /// What stays: (what, why).
    pub kept: Vec<(String, String)>,
}

/// The cluster around a rolled-back workload, as [`workload_id_removal`] needs it.
pub struct RemovalView<'a> {
    /// Every WorkloadMigration of the workload's namespace, its own included.
    pub records: &'a [podid_crds::migration::WorkloadMigration],
    /// ServiceAccounts that pods on Workload ID (the webhook's label) run as now.
    pub on_workload_id: &'a std::collections::BTreeSet<String>,
    /// ServiceAccounts any pod of the namespace runs as now.
    pub running_as: &'a std::collections::BTreeSet<String>,
    /// True when the target ServiceAccount carries podid-operator's managed-by label.
    pub created_by_podid: bool,
}

/// Decides [`WorkloadIdRemoval`] for record `record` (namespace `namespace`): nothing while
/// another workload's record targets the same ServiceAccount (whatever its stage: moved,
/// moving, or on pod identity with its Workload ID side built) or pods run on Workload ID as it;
/// else podid's credentials for that ServiceAccount (never one podid did not name), and the
/// ServiceAccount itself only when podid created it and no pod runs as it.
pub fn workload_id_removal(namespace: &str, record: &str, view: &RemovalView) -> WorkloadIdRemoval {
    let mut out = WorkloadIdRemoval::default();
    let Some(own) = view
        .records
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(record))
    else {
        return out;
    };
    let Some(status) = own.status.as_ref() else {
        return out;
    };
    let Some(target) = status.target_service_account.clone() else {
        return out;
    };
    let subject = podid_crds::migration::service_account_subject(namespace, &target);
    let sharing: Vec<String> = view
        .records
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(record))
        .filter(|r| {
            r.status
                .as_ref()
                .and_then(|s| s.target_service_account.as_deref())
                == Some(target.as_str())
        })
        .map(|r| {
            format!(
                "{}/{}",
                r.spec.workload.kind.to_ascii_lowercase(),
                r.spec.workload.name
            )
        })
        .collect();
    let why_shared = if !sharing.is_empty() {
        Some(format!(
            "{} also moves to ServiceAccount {target}",
            sharing.join(", ")
        ))
    } else if view.on_workload_id.contains(&target) {
        Some(format!(
            "pods run on Workload ID as ServiceAccount {target}"
        ))
    } else {
        None
    };
    if let Some(why) = why_shared {
        for c in status.credentials.iter().filter(|c| c.subject == subject) {
            out.kept
                .push((format!("credential {}", c.name), why.clone()));
        }
        out.kept.push((format!("serviceaccount/{target}"), why));
        return out;
    }
    for c in status.credentials.iter().filter(|c| c.subject == subject) {
        if podid_crds::migration::is_podid_credential(&c.name) {
            out.credentials.push((c.identity.clone(), c.name.clone()));
        } else {
            out.kept.push((
                format!("credential {}", c.name),
                "podid did not create it".into(),
            ));
        }
    }
    let sa = format!("serviceaccount/{target}");
    if !view.created_by_podid {
        out.kept.push((sa, "podid did not create it".into()));
    } else if view.running_as.contains(&target) {
        out.kept.push((sa, "pods run as it".into()));
    } else {
        out.service_account = Some(target);
    }
    out
}

#[cfg(test)]
mod removed_tests {
    use super::*;
    use serde_json::json;

    fn binding() -> Value {
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
            "metadata": {"name": "b", "namespace": "n", "uid": "u", "resourceVersion": "7",
                         "labels": {"team": "a"}, "managedFields": []},
            "spec": {"azureIdentity": "id", "selector": "sel"}, "status": {"x": 1}})
    }

    #[test]
    fn a_removed_object_keeps_what_recreates_it_and_drops_server_fields() {
        let m = removed_manifest("AzureIdentityBinding", &binding());
        assert_eq!(
            m,
            json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                "metadata": {"name": "b", "namespace": "n", "labels": {"team": "a"}},
                "spec": {"azureIdentity": "id", "selector": "sel"}})
        );
    }

    #[test]
    fn merging_records_each_object_once_and_keeps_the_first_copy() {
        let first = removed_manifest("AzureIdentityBinding", &binding());
        let mut changed = binding();
        changed["spec"]["selector"] = "other".into();
        let again = removed_manifest("AzureIdentityBinding", &changed);
        let id = json!({"kind": "AzureIdentity", "metadata": {"name": "id", "namespace": "n"}});
        let merged = merge_removed(std::slice::from_ref(&first), vec![again, id.clone()]);
        assert_eq!(merged, vec![first.clone(), id.clone()]);
        let order: Vec<&Value> = recreate_order(&merged);
        assert_eq!(order, vec![&id, &first], "identities first");
    }

    fn rec(
        name: &str,
        kind: &str,
        target: &str,
        creds: &[(&str, &str)],
    ) -> podid_crds::migration::WorkloadMigration {
        serde_json::from_value(json!({
            "apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"workload": {"kind": kind, "name": name}},
            "status": {"targetServiceAccount": target, "credentials": creds.iter().map(|(n, sa)| json!({
                "name": n, "identity": "/sub/id", "issuer": "https://i",
                "subject": format!("system:serviceaccount:shop:{sa}"), "ready": true})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    #[test]
    fn removal_takes_podids_credentials_and_service_account_only_when_nothing_shares_them() {
        use std::collections::BTreeSet;
        let none = BTreeSet::new();
        let web = rec(
            "web",
            "Deployment",
            "web",
            &[("podid-shop-web-1", "web"), ("by-hand", "web")],
        );
        let view = RemovalView {
            records: std::slice::from_ref(&web),
            on_workload_id: &none,
            running_as: &none,
            created_by_podid: true,
        };
        let r = workload_id_removal("shop", "web", &view);
        assert_eq!(
            r.credentials,
            [("/sub/id".to_owned(), "podid-shop-web-1".to_owned())]
        );
        assert_eq!(r.service_account.as_deref(), Some("web"));
        assert_eq!(
            r.kept,
            [(
                "credential by-hand".to_owned(),
                "podid did not create it".to_owned()
            )]
        );

        // Another workload targets the same ServiceAccount: everything stays, said why.
        let api = rec("api", "Deployment", "web", &[("podid-shop-web-1", "web")]);
        let both = [web.clone(), api];
        let view = RemovalView {
            records: &both,
            ..view
        };
        let r = workload_id_removal("shop", "web", &view);
        assert!(r.credentials.is_empty() && r.service_account.is_none());
        assert!(
            r.kept
                .iter()
                .all(|(_, why)| why.contains("deployment/api also moves")),
            "{:?}",
            r.kept
        );

        // Pods on Workload ID as it; a ServiceAccount podid did not create; pods running as it.
        let wi = BTreeSet::from(["web".to_owned()]);
        let one = [web.clone()];
        let r = workload_id_removal(
            "shop",
            "web",
            &RemovalView {
                records: &one,
                on_workload_id: &wi,
                running_as: &none,
                created_by_podid: true,
            },
        );
        assert!(r.credentials.is_empty() && r.service_account.is_none());
        let r = workload_id_removal(
            "shop",
            "web",
            &RemovalView {
                records: &one,
                on_workload_id: &none,
                running_as: &none,
                created_by_podid: false,
            },
        );
        assert_eq!((r.credentials.len(), r.service_account), (1, None));
        let r = workload_id_removal(
            "shop",
            "web",
            &RemovalView {
                records: &one,
                on_workload_id: &none,
                running_as: &wi,
                created_by_podid: true,
            },
        );
        assert_eq!((r.credentials.len(), r.service_account), (1, None));
    }

    #[test]
    fn a_selector_with_expressions_lists_what_its_controller_selects() {
        let s = json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["x"]},
            {"key": "owner", "operator": "Exists"}]});
        assert_eq!(
            selector_query(&s),
            "app=web,tier in (a,b),!canary,zone notin (x),owner"
        );
        assert_eq!(selector_query(&json!({})), "");
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::inventory::ContextFromInventory;
    use podid_crds::policy::MatchOptions;
    use serde_json::json;

    /// A Deployment on pod identity that Argo CD manages, its Workload ID side ready (the
    /// bridge's record Bridged, its target ServiceAccount annotated).
    fn managed_and_bridged() -> (Inventory, ClusterContext, Vec<WorkloadMigration>) {
        let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
             "metadata": {"name": "azure-wi-webhook-mutating-webhook-configuration"},
             "webhooks": [{"name": "mutation.azure-workload-identity.io", "admissionReviewVersions": ["v1"],
                           "sideEffects": "None", "clientConfig": {"url": "https://127.0.0.1/mutate"}}]},
            {"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
             "metadata": {"name": "app-id", "namespace": "shop"},
             "spec": {"type": 0, "clientID": "c1",
                      "resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-id"}},
            {"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
             "metadata": {"name": "app-binding", "namespace": "shop"},
             "spec": {"azureIdentity": "app-id", "selector": "app"}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "web", "namespace": "shop",
                          "annotations": {"azure.workload.identity/client-id": "c1"}}},
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "web", "namespace": "shop",
                          "labels": {"argocd.argoproj.io/instance": "shop-apps"}},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                      "template": {"metadata": {"labels": {"app": "web", "aadpodidbinding": "app"}},
                                   "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}
        ]});
        let mut inv = Inventory::default();
        inv.add_text(&objects.to_string(), "<test>").unwrap();
        inv.cluster.oidc_issuer = Some("https://issuer.example/".into());
        inv.facts_recorded = true;
        let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
        let record: WorkloadMigration = serde_json::from_value(json!({
            "apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
            "metadata": {"name": "deployment-web", "namespace": "shop"},
            "spec": {"workload": {"kind": "Deployment", "name": "web"}},
            "status": {"stage": "Bridged", "targetServiceAccount": "web", "proven": "1/1",
                "credentials": [{"name": "podid-shop-web-1", "identity": "/sub/app-id",
                    "issuer": "https://issuer.example/",
                    "subject": "system:serviceaccount:shop:web", "ready": true}]}
        }))
        .unwrap();
        (inv, ctx, vec![record])
    }

    #[test]
    fn a_managed_workload_is_held_unless_allowed_and_gets_its_patch_either_way() {
        let (inv, ctx, records) = managed_and_bridged();
        let plan = build_plan(&inv, &ctx, &records, &Scope::default(), false);
        let [web] = plan.workloads.as_slice() else {
            panic!("one workload: {plan:?}")
        };
        assert_eq!(
            web.managed_by,
            Some(ManagedBy {
                tool: "argocd".into(),
                name: "shop-apps".into()
            })
        );
        assert_eq!(web.action, Action::Hold);
        let codes: Vec<HoldCode> = web.holds.iter().map(|h| h.code).collect();
        assert_eq!(codes, [HoldCode::Managed], "{:?}", web.holds);
        assert!(
            web.holds[0].message.contains("--patches")
                && web.holds[0].message.contains("--allow-managed"),
            "{:?}",
            web.holds
        );
        assert!(plan.has_held());
        let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": {"metadata": {"labels": {"azure.workload.identity/use": "true"}},
                                  "spec": {"serviceAccountName": "web"}}}});
        assert!(
            web.patchable(),
            "held only for being managed: --patches writes it"
        );
        assert_eq!(kustomize_patch(web), Some(patch.clone()));
        assert_eq!(patch_file_name(web), "shop.deployment.web.yaml");

        // --allow-managed: the same workload switches live, still marked, its patch the same.
        let plan = build_plan(&inv, &ctx, &records, &Scope::default(), true);
        let web = &plan.workloads[0];
        assert_eq!(
            (web.action, web.holds.as_slice()),
            (Action::Switch, &[][..])
        );
        assert_eq!(
            web.managed_by.as_ref().map(|m| m.tool.as_str()),
            Some("argocd")
        );
        assert!(!plan.has_held());
        assert!(web.patchable());
        assert_eq!(kustomize_patch(web), Some(patch));
    }
}
