//! The migration plan: per workload, the identities it uses, the ServiceAccount it would run as
//! under Workload ID, what is already in place and what blocks it, each with a stable reason
//! code (documented in docs/report.md).
//!
//! This is the one place that decision is made. `podid report` renders it, the operator's bridge
//! acts on it, and the cutover follows it, so the three cannot disagree. It is pure: callers fill
//! a [`PlanInput`] from what they hold (the CLI from its inventory, the operator from its
//! watches) and call [`plan`].
//!
//! [`plan`] runs in phases: [`assess_one`] decides what each workload alone decides (its
//! bindings, identities, pod spec and the cluster), then the cross-workload rules (shared
//! ServiceAccounts, the federated-credential limit), what is in place, the steps left, and the
//! verdict.

mod context;
mod fleet;
mod workload;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::index::IdentityIndex;
use crate::names::DEFAULT_IDENTITY_ANNOTATION;
use crate::policy::{GrantSkip, PodFacts, PodIdentities};
use crate::reason::ReasonCode;
use crate::{
    AzureIdentity, AzureIdentityBinding, BRIDGE_CREDENTIALS_ANNOTATION, IdentityType, POD_LABEL,
    WI_CLIENT_ID_ANNOTATION, WI_USE_LABEL,
};

pub use context::{ClusterContext, issuer_problem};
pub use fleet::{
    ClusterAssessments, FleetCredentials, apply_fleet_limit, fleet_credentials, identity_key,
};
pub use workload::{
    ControllerKey, Workload, WorkloadObjects, controller_of, pod_workload_candidates, workloads,
};

pub use crate::migration::MAX_FEDERATED_CREDENTIALS;

/// The outcome for one workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Can move as is: nothing left to do.
    Ready,
    /// Can move after the listed steps.
    NeedsChanges,
    /// Cannot move until the listed reasons are resolved.
    Blocked,
    /// Does not use pod identity.
    NotUsing,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::NeedsChanges => "needs-changes",
            Self::Blocked => "blocked",
            Self::NotUsing => "not-using",
        }
    }
}

/// How a finding weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Stops the move.
    Blocker,
    /// Something to do before the move.
    Step,
    /// Worth knowing; changes nothing.
    Note,
}

/// One reason or step, with a stable code.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    pub code: ReasonCode,
    pub severity: Severity,
    pub message: String,
}

fn finding(code: ReasonCode, severity: Severity, message: impl Into<String>) -> Finding {
    Finding {
        code,
        severity,
        message: message.into(),
    }
}

/// An identity a workload uses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRef {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The ARM resource ID of a user-assigned identity (empty for a service principal).
    #[serde(
        rename = "resourceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_id: String,
    pub binding: String,
}

/// What is already in place for Workload ID (by hand or by the podid bridge).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeState {
    /// The ServiceAccount carries `azure.workload.identity/client-id` with the identity's client ID.
    pub annotation_present: bool,
    /// The bridge recorded a federated credential for (identity, ServiceAccount).
    pub credential_ready: bool,
    /// The pod template carries `azure.workload.identity/use: "true"`.
    pub label_present: bool,
}

/// The assessment of one workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assessment {
    #[serde(flatten)]
    pub workload: Workload,
    pub uses_pod_identity: bool,
    pub identities: Vec<IdentityRef>,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    pub bridge: BridgeState,
    /// ServiceAccount the workload would run as under Workload ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_service_account: Option<String>,
}

fn identity_ref(id: &AzureIdentity, binding: &str) -> IdentityRef {
    IdentityRef {
        namespace: id.namespace().unwrap_or_default(),
        name: id.name_any(),
        type_: id.spec.type_.name().into(),
        client_id: id.spec.client_id.clone(),
        resource_id: id.spec.resource_id.clone(),
        binding: binding.into(),
    }
}

/// First pass: what one workload uses and what it alone decides (no cross-workload rules).
pub fn assess_one(w: &Workload, index: &IdentityIndex, ctx: &ClusterContext) -> Assessment {
    let pod = PodFacts {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        labels: w.labels.clone(),
        node_name: String::new(),
    };
    let label = pod
        .binding_label()
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    let excepted = index.is_pod_excepted(&pod);
    let mut findings = Vec::new();
    let mut identities = Vec::new();

    if let Some(label) = &label {
        let matched = index.pod_identities(&pod, ctx.match_options);
        let mut ids: Vec<&AzureIdentity> = Vec::new();
        for g in &matched.grants {
            identities.push(identity_ref(g.identity, &g.binding.name_any()));
            ids.push(g.identity);
        }
        findings.extend(binding_findings(w, label, &matched));
        findings.extend(identity_findings(&ids));
        findings.extend(pod_identity_findings(w, excepted, ctx));
    } else if excepted {
        findings.push(finding(
            ReasonCode::ExceptionPod,
            Severity::Note,
            "an AzurePodIdentityException matches this workload: it calls the instance metadata service directly and is not affected by pod identity",
        ));
    }

    Assessment {
        workload: w.clone(),
        uses_pod_identity: label.is_some(),
        identities,
        verdict: Verdict::NotUsing,
        findings,
        bridge: BridgeState::default(),
        target_service_account: None,
    }
}

/// What the pod-identity label resolved to: a blocker when it grants nothing, and one finding per
/// binding it matched but could not use (a blocker when no binding granted an identity, a note
/// otherwise).
fn binding_findings(w: &Workload, label: &str, matched: &PodIdentities<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let sev = if matched.grants.is_empty() {
        Severity::Blocker
    } else {
        Severity::Note
    };
    if matched.grants.is_empty() && matched.skipped.is_empty() {
        findings.push(finding(
            ReasonCode::NoMatchingBinding,
            Severity::Blocker,
            format!("label {POD_LABEL}={label} matches no AzureIdentityBinding, so the workload gets no identity today; fix or remove the label"),
        ));
    }
    // Same-named identities: one finding per name, listing the bindings (a label matched by 25
    // copies of a binding says so once, not 24 times).
    let mut duplicates: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (b, skip) in &matched.skipped {
        match skip {
            GrantSkip::DuplicateIdentityName { identity } => duplicates
                .entry(identity.as_str())
                .or_default()
                .push(format!(
                    "{}/{}",
                    b.namespace().unwrap_or_default(),
                    b.name_any()
                )),
            _ => findings.push(grant_skip_finding(w, b, skip, sev)),
        }
    }
    for (identity, mut bindings) in duplicates {
        bindings.sort();
        bindings.dedup();
        let kept = matched
            .grants
            .iter()
            .find(|g| g.identity.name_any() == identity)
            .map(|g| {
                format!(
                    " (binding {}/{})",
                    g.binding.namespace().unwrap_or_default(),
                    g.binding.name_any()
                )
            })
            .unwrap_or_default();
        let what = if bindings.len() == 1 {
            format!("binding {} grants a second identity", bindings[0])
        } else {
            format!(
                "{} bindings ({}) grant further identities",
                bindings.len(),
                bindings.join(", ")
            )
        };
        findings.push(finding(
            ReasonCode::DuplicateIdentityName,
            sev,
            format!("{what} named {identity}; pod identity keeps only the first{kept}"),
        ));
    }
    findings
}

/// Why binding `b` granted the workload no identity.
fn grant_skip_finding(
    w: &Workload,
    b: &AzureIdentityBinding,
    skip: &GrantSkip,
    sev: Severity,
) -> Finding {
    let bname = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
    match skip {
        GrantSkip::NoIdentityNamed => finding(
            ReasonCode::BindingWithoutIdentity,
            sev,
            format!("binding {bname} names no AzureIdentity (spec.azureIdentity is empty)"),
        ),
        GrantSkip::IdentityMissing { identity } => finding(
            ReasonCode::IdentityMissing,
            sev,
            format!(
                "binding {bname} names AzureIdentity {identity}, which does not exist in {}",
                b.namespace().unwrap_or_default()
            ),
        ),
        GrantSkip::NamespaceMismatch { identity } => finding(
            ReasonCode::NamespaceMismatch,
            sev,
            format!(
                "identity {identity} of binding {bname} is namespaced and cannot serve namespace {}",
                w.namespace
            ),
        ),
        GrantSkip::DuplicateIdentityName { identity } => finding(
            ReasonCode::DuplicateIdentityName,
            sev,
            format!(
                "binding {bname} grants a second identity named {identity}; pod identity keeps only the first"
            ),
        ),
        GrantSkip::InvalidResourceId { identity } => finding(
            ReasonCode::InvalidResourceId,
            sev,
            format!(
                "identity {identity} of binding {bname} has no valid user-assigned identity resourceID"
            ),
        ),
    }
}

/// Blockers from the identities granted: ones that are not managed identities, and more than one.
fn identity_findings(ids: &[&AzureIdentity]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for id in ids {
        if id.spec.type_.is_service_principal() || matches!(id.spec.type_, IdentityType::Unknown(_))
        {
            findings.push(finding(
                ReasonCode::ServicePrincipalIdentity,
                Severity::Blocker,
                format!("identity {} is a {} (type {}); podid creates federated credentials on user-assigned managed identities only — add a federated credential to the app registration by hand, or move the workload to a managed identity", id.name_any(), id.spec.type_.name(), id.spec.type_.as_i64()),
            ));
        }
    }
    if ids.len() > 1 {
        findings.push(finding(
            ReasonCode::MultipleIdentities,
            Severity::Step,
            format!("bound to {} identities ({}); each gets its own federated credential, and a ServiceAccount names one default identity — confirm the application passes client_id for the others, and name the default with the pod-template annotation {DEFAULT_IDENTITY_ANNOTATION}", ids.len(), ids.iter().map(|i| i.name_any()).collect::<Vec<_>>().join(", ")),
        ));
    }
    findings
}

/// What the workload's pod spec and the cluster decide for a workload that uses pod identity: an
/// exception, no usable OIDC issuer, host network, NET_RAW on kubenet, an owner podid cannot
/// resolve.
fn pod_identity_findings(w: &Workload, excepted: bool, ctx: &ClusterContext) -> Vec<Finding> {
    let mut findings = Vec::new();
    if excepted {
        findings.push(finding(
            ReasonCode::ExceptionPod,
            Severity::Blocker,
            "an AzurePodIdentityException matches this workload, so its token requests bypass pod identity and use the node's identities; decide which identity it really needs",
        ));
    }
    if ctx.oidc_issuer.is_none() {
        findings.push(no_issuer_finding(ctx));
    }
    if w.host_network {
        findings.push(finding(
            ReasonCode::HostNetwork,
            Severity::Note,
            "host-network pod: pod identity never intercepted its token requests (they went straight to the node's instance metadata service), and the Workload ID migration sidecar cannot be injected, so the application itself must use a Workload ID-capable Azure SDK",
        ));
    }
    if ctx.kubenet && !w.drops_net_raw {
        findings.push(finding(
            ReasonCode::KubenetNetRaw,
            Severity::Note,
            "kubenet cluster and containers keep NET_RAW: under pod identity such pods can spoof other pods' traffic to the identity endpoint; Workload ID removes that exposure. Until then drop NET_RAW (or ALL) in every container; podid's ValidatingAdmissionPolicy podid-drop-net-raw (chart value netRawPolicy.enabled, deploy/manifests/podid-net-raw-policy.yaml) rejects pods that keep it",
        ));
    }
    if w.unsupported_owner {
        findings.push(finding(
            ReasonCode::UnsupportedOwner,
            Severity::Note,
            format!("owned by a {} that podid does not resolve; its pod template must be changed where that controller keeps it", w.kind),
        ));
    }
    findings
}

/// The workload-level `no-oidc-issuer` blocker: without an issuer Entra can reach (or one known
/// to the caller) nothing moves.
fn no_issuer_finding(ctx: &ClusterContext) -> Finding {
    let message = if ctx.issuer_unknown {
        "no OIDC issuer is known for the cluster (the input does not say; pass --oidc-issuer), and Entra needs one to verify ServiceAccount tokens".to_string()
    } else {
        format!(
            "the cluster has no public OIDC issuer{}; enable it (az aks update --enable-oidc-issuer; self-managed: --service-account-issuer with public discovery) so Entra can verify ServiceAccount tokens",
            ctx.issuer_problem
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        )
    };
    finding(ReasonCode::NoOidcIssuer, Severity::Blocker, message)
}

/// What the cluster itself lacks, said once for all its workloads (the plan also gives each
/// workload the codes, so the bridge and the cutover hold every workload back): no OIDC issuer
/// Entra can reach (a blocker), an issuer the input does not record (a step: supply it with
/// `--oidc-issuer`), no Workload ID webhook (a step).
pub fn cluster_findings(ctx: &ClusterContext) -> Vec<Finding> {
    let mut findings = Vec::new();
    if ctx.oidc_issuer.is_none() {
        if ctx.issuer_unknown {
            findings.push(finding(
                ReasonCode::OidcIssuerUnknown,
                Severity::Step,
                "the input does not record the cluster's OIDC issuer (a plain kubectl export has no snapshot header): pass --oidc-issuer URL (AKS: az aks show --query oidcIssuerProfile.issuerUrl -o tsv), or report from `podid snapshot` or the live cluster; the verdicts assume the cluster has a public issuer",
            ));
        } else {
            let mut f = no_issuer_finding(ctx);
            f.message.push_str(
                "; every workload on pod identity waits on it (if the cluster has a public issuer that was not discovered, pass --oidc-issuer)",
            );
            findings.push(f);
        }
    }
    if !ctx.webhook_installed {
        findings.push(webhook_finding());
    }
    findings
}

fn webhook_finding() -> Finding {
    finding(
        ReasonCode::WebhookNotInstalled,
        Severity::Step,
        "install the Workload ID mutating webhook (az aks update --enable-workload-identity, or the azure-workload-identity Helm chart)",
    )
}

impl Assessment {
    /// The assessment as it concerns the workload itself: without the cluster-wide findings
    /// ([`ReasonCode::is_cluster_wide`], said once by [`cluster_findings`]), the verdict settled
    /// again from what is left. What the report lists per workload; the bridge and the cutover
    /// keep the whole assessment.
    pub fn about_the_workload(&self) -> Assessment {
        let mut a = self.clone();
        a.findings.retain(|f| !f.code.is_cluster_wide());
        if a.uses_pod_identity {
            settle_verdict(&mut a);
        }
        a
    }
}

/// (namespace, ServiceAccount).
type SaKey = (String, String);

/// What [`plan`] decides from, borrowed from wherever the caller keeps it.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// Every workload of the cluster (see [`workloads`]), not only those to be shown: the
    /// cross-workload rules need them all.
    pub workloads: &'a [Workload],
    /// Bindings, identities and exceptions.
    pub index: &'a IdentityIndex,
    /// The cluster's ServiceAccounts (their annotations say what is already in place).
    pub service_accounts: &'a [&'a ServiceAccount],
    pub context: &'a ClusterContext,
}

/// Assesses every workload, applying the cross-workload rules (shared ServiceAccounts, the
/// 20-credential limit) and the per-workload steps. One [`Assessment`] per workload, in the
/// order of `input.workloads`.
pub fn plan(input: &PlanInput<'_>) -> Vec<Assessment> {
    let ctx = input.context;
    let mut all: Vec<Assessment> = input
        .workloads
        .iter()
        .map(|w| assess_one(w, input.index, ctx))
        .collect();

    let sa_users = service_account_users(&all);
    choose_service_accounts(&mut all, &sa_users);
    let subjects = credential_subjects(&all);
    let service_accounts: BTreeMap<SaKey, &ServiceAccount> = input
        .service_accounts
        .iter()
        .copied()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
        .collect();

    for a in all.iter_mut() {
        if !a.uses_pod_identity {
            a.verdict = Verdict::NotUsing;
            continue;
        }
        let blockers = cross_workload_findings(a, &sa_users, &subjects);
        a.findings.extend(blockers);
        // Steps, unless already in place.
        let target = a.target_service_account.clone().unwrap_or_default();
        let annotations = service_accounts
            .get(&(a.workload.namespace.clone(), target))
            .map(|s| s.annotations().clone())
            .unwrap_or_default();
        a.bridge = bridge_state(a, &annotations);
        let steps = step_findings(a, &annotations, ctx);
        a.findings.extend(steps);
        settle_verdict(a);
    }
    all
}

/// Target ServiceAccount of each workload that uses pod identity: its own, or a dedicated one
/// named after the workload when it runs as `default` or on a ServiceAccount shared with
/// workloads on other identities (`sa_users`), since a ServiceAccount names one identity.
fn choose_service_accounts(
    all: &mut [Assessment],
    sa_users: &BTreeMap<SaKey, BTreeSet<Vec<String>>>,
) {
    for a in all.iter_mut().filter(|a| a.uses_pod_identity) {
        let own = &a.workload.service_account;
        let shared = sa_users
            .get(&(a.workload.namespace.clone(), own.clone()))
            .is_some_and(|u| u.len() > 1);
        let sa = if own == "default" || shared {
            a.workload.name.clone()
        } else {
            own.clone()
        };
        a.target_service_account = Some(sa);
    }
}

/// The identity sets (lower-cased client IDs) of the workloads on each non-default
/// ServiceAccount: more than one means workloads on different identities share it.
fn service_account_users(all: &[Assessment]) -> BTreeMap<SaKey, BTreeSet<Vec<String>>> {
    let mut sa_users: BTreeMap<SaKey, BTreeSet<Vec<String>>> = BTreeMap::new();
    for a in all
        .iter()
        .filter(|a| a.uses_pod_identity && a.workload.service_account != "default")
    {
        let ids: Vec<String> = a
            .identities
            .iter()
            .map(|i| i.client_id.to_lowercase())
            .collect();
        sa_users
            .entry((
                a.workload.namespace.clone(),
                a.workload.service_account.clone(),
            ))
            .or_default()
            .insert(ids);
    }
    sa_users
}

/// Federated credentials each identity (lower-cased client ID) needs: one per (namespace, target
/// ServiceAccount).
fn credential_subjects(all: &[Assessment]) -> BTreeMap<String, BTreeSet<SaKey>> {
    let mut subjects: BTreeMap<String, BTreeSet<SaKey>> = BTreeMap::new();
    for a in all.iter().filter(|a| a.uses_pod_identity) {
        for i in &a.identities {
            subjects
                .entry(i.client_id.to_lowercase())
                .or_default()
                .insert((
                    a.workload.namespace.clone(),
                    a.target_service_account.clone().unwrap_or_default(),
                ));
        }
    }
    subjects
}

/// Blockers that come from other workloads: a ServiceAccount shared across identities, an
/// identity over the federated-credential limit.
fn cross_workload_findings(
    a: &Assessment,
    sa_users: &BTreeMap<SaKey, BTreeSet<Vec<String>>>,
    subjects: &BTreeMap<String, BTreeSet<SaKey>>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let ns = &a.workload.namespace;
    let sa_name = &a.workload.service_account;
    if let Some(users) = sa_users.get(&(ns.clone(), sa_name.clone()))
        && users.len() > 1
    {
        let target = a.target_service_account.as_deref().unwrap_or_default();
        findings.push(finding(
            ReasonCode::SharedServiceAccount,
            Severity::Step,
            format!("ServiceAccount {ns}/{sa_name} is shared by workloads bound to different identities, and a ServiceAccount names one; create ServiceAccount {ns}/{target} for this workload and set spec.serviceAccountName"),
        ));
    }
    for i in &a.identities {
        let n = subjects
            .get(&i.client_id.to_lowercase())
            .map_or(0, |s| s.len());
        if n > MAX_FEDERATED_CREDENTIALS {
            findings.push(finding(
                ReasonCode::FederatedCredentialLimit,
                Severity::Blocker,
                format!("identity {}/{} would need {n} federated credentials (one per namespace and ServiceAccount); Entra allows {MAX_FEDERATED_CREDENTIALS} — share ServiceAccounts or split the identity", i.namespace, i.name),
            ));
        }
    }
    findings
}

/// What is already in place, from the target ServiceAccount's `annotations` and the workload's
/// labels.
fn bridge_state(a: &Assessment, annotations: &BTreeMap<String, String>) -> BridgeState {
    let annotation_present = a.identities.first().is_some_and(|i| {
        annotations
            .get(WI_CLIENT_ID_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case(&i.client_id))
    });
    let recorded: BTreeSet<String> = annotations
        .get(BRIDGE_CREDENTIALS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let credential_ready = !a.identities.is_empty()
        && a.identities
            .iter()
            .all(|i| recorded.contains(&i.client_id.to_lowercase()));
    let label_present = a
        .workload
        .labels
        .get(WI_USE_LABEL)
        .is_some_and(|v| v == "true");
    BridgeState {
        annotation_present,
        credential_ready,
        label_present,
    }
}

/// The steps still to take (per `a.bridge`): a dedicated ServiceAccount, the federated
/// credentials, the ServiceAccount annotation, the pod label, the webhook.
fn step_findings(
    a: &Assessment,
    annotations: &BTreeMap<String, String>,
    ctx: &ClusterContext,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let ns = &a.workload.namespace;
    let target = a.target_service_account.clone().unwrap_or_default();
    if a.workload.service_account == "default" {
        findings.push(finding(
            ReasonCode::DefaultServiceAccount,
            Severity::Step,
            format!("runs as the namespace's default ServiceAccount; create ServiceAccount {ns}/{target} for it and set spec.serviceAccountName"),
        ));
    }
    if !a.bridge.credential_ready {
        for i in &a.identities {
            findings.push(finding(
                ReasonCode::FederatedCredential,
                Severity::Step,
                format!("create a federated credential on identity {} for subject system:serviceaccount:{ns}:{target}, audience api://AzureADTokenExchange", i.name),
            ));
        }
    }
    if !a.bridge.annotation_present
        && let Some(i) = a.identities.first()
    {
        let now = match annotations.get(WI_CLIENT_ID_ANNOTATION) {
            Some(v) => format!(" (it now names {v}, a different identity)"),
            None => String::new(),
        };
        findings.push(finding(
            ReasonCode::ServiceAccountAnnotation,
            Severity::Step,
            format!(
                "annotate ServiceAccount {ns}/{target} with {WI_CLIENT_ID_ANNOTATION}: {}{now}",
                i.client_id
            ),
        ));
    }
    if !a.bridge.label_present {
        findings.push(finding(
            ReasonCode::PodLabel,
            Severity::Step,
            format!(
                "label the pod template {WI_USE_LABEL}: \"true\" and roll the {} out",
                a.workload.kind
            ),
        ));
    }
    if !ctx.webhook_installed {
        findings.push(webhook_finding());
    }
    findings
}

/// Orders the findings (blockers first), drops repeats, says each code once (its messages
/// joined), and sets the verdict from the worst.
fn settle_verdict(a: &mut Assessment) {
    a.findings
        .sort_by(|x, y| x.severity.cmp(&y.severity).then(x.code.cmp(&y.code)));
    a.findings.dedup();
    // One finding per code: the same reason for several bindings or identities is said once.
    let mut merged: Vec<Finding> = Vec::with_capacity(a.findings.len());
    for f in a.findings.drain(..) {
        match merged.last_mut() {
            Some(last) if last.code == f.code && last.severity == f.severity => {
                last.message.push_str("; ");
                last.message.push_str(&f.message);
            }
            _ => merged.push(f),
        }
    }
    a.findings = merged;
    a.verdict = if a.findings.iter().any(|f| f.severity == Severity::Blocker) {
        Verdict::Blocked
    } else if a.findings.iter().any(|f| f.severity == Severity::Step) {
        Verdict::NeedsChanges
    } else {
        Verdict::Ready
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(issuer: Option<&str>, unknown: bool, webhook: bool) -> ClusterContext {
        let mut c = ClusterContext::new(
            issuer,
            None,
            std::iter::empty(),
            std::iter::empty(),
            Default::default(),
        );
        c.issuer_unknown = unknown;
        c.webhook_installed = webhook;
        c
    }

    fn codes(f: &[Finding]) -> Vec<(&str, Severity)> {
        f.iter().map(|f| (f.code.as_str(), f.severity)).collect()
    }

    #[test]
    fn the_cluster_says_once_what_it_lacks() {
        let issuer = "https://eastus.oic.prod-aks.azure.com/t/c/";
        assert!(cluster_findings(&ctx(Some(issuer), false, true)).is_empty());
        let unknown = cluster_findings(&ctx(None, true, true));
        assert_eq!(codes(&unknown), [("oidc-issuer-unknown", Severity::Step)]);
        assert!(unknown[0].message.contains("--oidc-issuer"));
        let absent = cluster_findings(&ctx(None, false, false));
        assert_eq!(
            codes(&absent),
            [
                ("no-oidc-issuer", Severity::Blocker),
                ("webhook-not-installed", Severity::Step)
            ]
        );
        let in_cluster =
            cluster_findings(&ctx(Some("https://kubernetes.default.svc"), false, true));
        assert!(
            in_cluster[0]
                .message
                .contains("https://kubernetes.default.svc is the in-cluster default"),
            "{:?}",
            in_cluster
        );
    }

    #[test]
    fn a_workload_keeps_its_own_verdict_and_the_plan_still_blocks_it() {
        let w = Workload {
            namespace: "apps".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            service_account: "web".into(),
            ..Default::default()
        };
        let mut a = Assessment {
            workload: w,
            uses_pod_identity: true,
            identities: Vec::new(),
            verdict: Verdict::NotUsing,
            findings: vec![
                no_issuer_finding(&ctx(None, true, true)),
                webhook_finding(),
                finding(ReasonCode::PodLabel, Severity::Step, "label it"),
            ],
            bridge: BridgeState::default(),
            target_service_account: Some("web".into()),
        };
        settle_verdict(&mut a);
        assert_eq!(
            a.verdict,
            Verdict::Blocked,
            "the bridge and cutover hold it"
        );
        let own = a.about_the_workload();
        assert_eq!(own.verdict, Verdict::NeedsChanges);
        assert_eq!(codes(&own.findings), [("pod-label", Severity::Step)]);
    }
}
