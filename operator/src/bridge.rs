//! The bridge's decisions, as a pure function: from the plan of the move (one
//! [`Assessment`] per workload, the same the report shows), the cluster's OIDC issuer and what
//! ARM and the API server hold now, what to write so that every workload on pod identity also
//! has its Workload ID side: federated credentials, ServiceAccounts and their annotations, and
//! one `WorkloadMigration` per workload. `crate::bridge_run` performs it.
//!
//! Rules (each pinned by a test in `operator/tests/bridge_plan.rs`):
//! - one credential per (user-assigned identity, namespace, target ServiceAccount), named by
//!   [`credential_name`], issuer and subject compared byte for byte as Azure does;
//! - a credential podid did not create (no `podid-` prefix) is never changed or deleted, and one
//!   that already has the wanted issuer and subject satisfies the need (no duplicate is written);
//! - at most [`MAX_FEDERATED_CREDENTIALS`] per identity, counting everyone's: podid's existing
//!   ones are kept first, then new ones in (namespace, ServiceAccount) order; the rest are named
//!   as left out;
//! - a podid credential is deleted only when no workload needs it and no pod runs on Workload ID
//!   as its ServiceAccount;
//! - a ServiceAccount is created when missing and annotated with the client ID when it has none;
//!   an annotation naming another client ID is surfaced, never overwritten; a workload with
//!   several identities gets credentials for all, and an annotation only when its pod template
//!   names the default one (`podid.dev/default-identity`);
//! - service principals get nothing (ARM cannot give them credentials): surfaced;
//! - an identity that would need more than [`MAX_FEDERATED_CREDENTIALS`] credentials and is
//!   served by token exchange to some workload ([`Sharing`]) gets one credential instead, for
//!   its per-identity ServiceAccount ([`identity_service_account`]) in podid-operator's
//!   namespace, listed on every workload's record on that identity (the node agent exchanges
//!   through it); the limit still blocks the cutover, as the report says.

use std::collections::{BTreeMap, BTreeSet};

use podid_azure::FederatedCredential;
use podid_crds::DEFAULT_IDENTITY_ANNOTATION;
use podid_crds::migration::{
    IDENTITY_SERVICE_ACCOUNT_PREFIX, MAX_FEDERATED_CREDENTIALS, TOKEN_EXCHANGE_AUDIENCE,
    credential_name, identity_service_account, is_podid_credential, migration_name,
    service_account_subject,
};
use podid_crds::plan::{Assessment, Severity, Verdict};
use podid_crds::reason::ReasonCode;

/// What ARM and the API server hold now.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Federated credentials per identity (resource ID, lower case), as listed from ARM. An
    /// identity missing here could not be read: nothing is written to it this pass.
    pub credentials: BTreeMap<String, Vec<FederatedCredential>>,
    /// ServiceAccounts that exist, with their `azure.workload.identity/client-id` annotation.
    pub service_accounts: BTreeMap<(String, String), Option<String>>,
    /// (namespace, ServiceAccount) of pods that already run on Workload ID.
    pub workload_id_in_use: BTreeSet<(String, String)>,
    /// ServiceAccounts podid created (its `app.kubernetes.io/managed-by` label).
    pub managed_service_accounts: BTreeSet<(String, String)>,
}

/// What the per-identity ServiceAccount path needs to know.
#[derive(Clone, Debug, Default)]
pub struct Sharing {
    /// podid-operator's namespace, where per-identity ServiceAccounts live (`None`: the path is
    /// off).
    pub namespace: Option<String>,
    /// Identities (resource ID, lower case) served by token exchange to at least one workload
    /// (`--federated` on, and the serving of a binding that grants it exchanges).
    pub exchanged: BTreeSet<String>,
}

/// A ServiceAccount to create or annotate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceAccountWrite {
    pub namespace: String,
    pub name: String,
    /// True when it does not exist yet.
    pub create: bool,
    /// The client ID to annotate it with, if any.
    pub client_id: Option<String>,
}

/// One credential a workload needs, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeededCredential {
    /// Resource ID of the identity (lower case).
    pub identity: String,
    /// `<namespace>/<name>` of its AzureIdentity.
    pub azure_identity: String,
    pub client_id: String,
    pub credential: FederatedCredential,
    /// False when the identity's budget was spent before this one.
    pub within_budget: bool,
}

/// Something the bridge will not decide or do for a workload, with the report's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub code: ReasonCode,
    pub message: String,
}

/// The bridge's view of one workload.
#[derive(Clone, Debug)]
pub struct WorkloadBridge {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// Name of its `WorkloadMigration`.
    pub record: String,
    pub target_service_account: String,
    pub credentials: Vec<NeededCredential>,
    /// The client ID the target ServiceAccount should be annotated with: the only identity's,
    /// or, with several, the one the workload names (`podid.dev/default-identity`).
    pub annotate_with: Option<String>,
    pub conflicts: Vec<Conflict>,
    /// The plan's verdict (blocked workloads still get what can be built).
    pub verdict: Verdict,
    /// The plan's blockers, by code.
    pub blockers: Vec<Conflict>,
}

/// One pass's writes.
#[derive(Clone, Debug, Default)]
pub struct BridgePlan {
    pub workloads: Vec<WorkloadBridge>,
    /// Credentials to create, per identity (resource ID).
    pub put: Vec<(String, FederatedCredential)>,
    /// podid's credentials no one needs any more: (identity, name).
    pub delete: Vec<(String, String)>,
    pub service_accounts: Vec<ServiceAccountWrite>,
    /// Per identity, the (namespace, ServiceAccount) left without a credential by the limit.
    pub left_out: BTreeMap<String, Vec<(String, String)>>,
    /// Identities served through their per-identity ServiceAccount: (namespace, name).
    pub shared: BTreeMap<String, (String, String)>,
    /// Per-identity ServiceAccounts podid made that nothing needs any more.
    pub delete_service_accounts: Vec<(String, String)>,
}

/// How many identities the bridge writes credentials to at once. Azure takes one write at a time
/// per identity (a concurrent second one is refused with 409), but identities are independent.
pub const CREDENTIAL_WRITERS: usize = 16;

/// One identity's credential writes in a pass, in order: creations, then deletions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdentityWrites<'a> {
    pub put: Vec<&'a FederatedCredential>,
    pub delete: Vec<&'a str>,
}

impl BridgePlan {
    /// The credential writes grouped by identity (resource ID): each group must be written one
    /// call at a time; groups may be written side by side.
    pub fn writes_by_identity(&self) -> BTreeMap<&str, IdentityWrites<'_>> {
        let mut out: BTreeMap<&str, IdentityWrites<'_>> = BTreeMap::new();
        for (identity, c) in &self.put {
            out.entry(identity).or_default().put.push(c);
        }
        for (identity, name) in &self.delete {
            out.entry(identity).or_default().delete.push(name);
        }
        out
    }
}

impl BridgePlan {
    /// This plan for the workloads in `scope` only, as (namespace, kind, name): their records,
    /// the credentials and ServiceAccounts they need; no deletion (what is out of scope is not
    /// looked at, so nothing can be known unneeded).
    pub fn restrict(&self, scope: &BTreeSet<(String, String, String)>) -> BridgePlan {
        let workloads: Vec<WorkloadBridge> = self
            .workloads
            .iter()
            .filter(|w| scope.contains(&(w.namespace.clone(), w.kind.clone(), w.name.clone())))
            .cloned()
            .collect();
        let needed: BTreeSet<(&str, &str)> = workloads
            .iter()
            .flat_map(|w| &w.credentials)
            .map(|c| (c.identity.as_str(), c.credential.name.as_str()))
            .collect();
        let accounts: BTreeSet<(String, String)> = workloads
            .iter()
            .flat_map(|w| {
                let own = (w.namespace.clone(), w.target_service_account.clone());
                let shared = w
                    .credentials
                    .iter()
                    .filter_map(|c| subject_parts(&c.credential.subject))
                    .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()));
                std::iter::once(own).chain(shared)
            })
            .collect();
        BridgePlan {
            put: self
                .put
                .iter()
                .filter(|(id, c)| needed.contains(&(id.as_str(), c.name.as_str())))
                .cloned()
                .collect(),
            delete: Vec::new(),
            service_accounts: self
                .service_accounts
                .iter()
                .filter(|w| accounts.contains(&(w.namespace.clone(), w.name.clone())))
                .cloned()
                .collect(),
            left_out: self.left_out.clone(),
            shared: self.shared.clone(),
            delete_service_accounts: Vec::new(),
            workloads,
        }
    }
}

/// Decides one pass. `issuer` is the cluster's usable OIDC issuer; without one the caller
/// writes nothing to Azure (every workload is blocked by `no-oidc-issuer` in the plan).
pub fn plan(assessments: &[Assessment], issuer: &str, observed: &Observed) -> BridgePlan {
    plan_with(assessments, issuer, observed, &Sharing::default())
}

/// [`plan`], with the per-identity ServiceAccount path for identities over the limit that are
/// served by token exchange.
pub fn plan_with(
    assessments: &[Assessment],
    issuer: &str,
    observed: &Observed,
    sharing: &Sharing,
) -> BridgePlan {
    let mut out = BridgePlan::default();
    // Every (identity, namespace, SA) needed, with the client ID.
    let mut needed: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut client_ids: BTreeMap<String, String> = BTreeMap::new();
    for a in assessments.iter().filter(|a| a.uses_pod_identity) {
        let w = workload_bridge(a, issuer, observed);
        for c in &w.credentials {
            needed
                .entry(c.identity.clone())
                .or_default()
                .insert((w.namespace.clone(), w.target_service_account.clone()));
            client_ids.insert(c.identity.clone(), c.client_id.clone());
        }
        out.workloads.push(w);
    }
    // Identities over the limit and served by token exchange: one credential, for the
    // per-identity ServiceAccount, named after the Azure identity (its resource ID).
    if let Some(home) = &sharing.namespace {
        for (identity, subjects) in &mut needed {
            if subjects.len() <= MAX_FEDERATED_CREDENTIALS || !sharing.exchanged.contains(identity)
            {
                continue;
            }
            let sa = (home.clone(), identity_service_account(identity));
            *subjects = BTreeSet::from([sa.clone()]);
            out.shared.insert(identity.clone(), sa);
        }
        for w in &mut out.workloads {
            for c in &mut w.credentials {
                if let Some((ns, sa)) = out.shared.get(&c.identity) {
                    c.credential = credential(issuer, ns, sa);
                }
            }
        }
    }
    // Per identity: what exists, what fits the budget, what goes.
    let mut admitted: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for (identity, subjects) in &needed {
        let Some(existing) = observed.credentials.get(identity) else {
            continue;
        };
        let decision = budget(subjects, existing, issuer);
        out.put.extend(
            decision
                .create
                .iter()
                .map(|(ns, sa)| (identity.clone(), credential(issuer, ns, sa))),
        );
        if !decision.left_out.is_empty() {
            out.left_out
                .insert(identity.clone(), decision.left_out.clone());
        }
        admitted.insert(identity.clone(), decision.admitted);
    }
    for (identity, existing) in &observed.credentials {
        let wanted = needed.get(identity);
        for c in existing.iter().filter(|c| is_podid_credential(&c.name)) {
            let Some((ns, sa)) = subject_parts(&c.subject) else {
                continue;
            };
            let key = (ns.to_owned(), sa.to_owned());
            let still_needed = c.issuer == issuer && wanted.is_some_and(|w| w.contains(&key));
            if !still_needed && !observed.workload_id_in_use.contains(&key) {
                out.delete.push((identity.clone(), c.name.clone()));
            }
        }
    }
    // Budget outcome back onto each workload.
    for w in &mut out.workloads {
        for c in &mut w.credentials {
            let key = subject_parts(&c.credential.subject)
                .map(|(n, s)| (n.to_owned(), s.to_owned()))
                .unwrap_or_default();
            c.within_budget = admitted.get(&c.identity).is_some_and(|a| a.contains(&key));
            if !c.within_budget && observed.credentials.contains_key(&c.identity) {
                w.conflicts.push(Conflict {
                    code: ReasonCode::FederatedCredentialLimit,
                    message: format!(
                        "identity {} has no room for a credential for {}: Entra allows {MAX_FEDERATED_CREDENTIALS} per identity, counting credentials made by others; share ServiceAccounts or split the identity",
                        c.identity, c.credential.subject
                    ),
                });
            }
        }
    }
    out.service_accounts = service_account_writes(&out.workloads, observed);
    // The per-identity ServiceAccounts: created, annotated with the identity's client ID.
    for (identity, (ns, sa)) in &out.shared {
        let current = observed.service_accounts.get(&(ns.clone(), sa.clone()));
        let annotate = client_ids
            .get(identity)
            .cloned()
            .filter(|_| !matches!(current, Some(Some(_))));
        if current.is_none() || annotate.is_some() {
            out.service_accounts.push(ServiceAccountWrite {
                namespace: ns.clone(),
                name: sa.clone(),
                create: current.is_none(),
                client_id: annotate,
            });
        }
    }
    if let Some(home) = &sharing.namespace {
        let in_use: BTreeSet<&(String, String)> = out.shared.values().collect();
        out.delete_service_accounts = observed
            .managed_service_accounts
            .iter()
            .filter(|(ns, sa)| ns == home && sa.starts_with(IDENTITY_SERVICE_ACCOUNT_PREFIX))
            .filter(|k| !in_use.contains(k))
            .cloned()
            .collect();
    }
    out
}

fn credential(issuer: &str, ns: &str, sa: &str) -> FederatedCredential {
    FederatedCredential {
        name: credential_name(issuer, ns, sa),
        issuer: issuer.to_owned(),
        subject: service_account_subject(ns, sa),
        audience: TOKEN_EXCHANGE_AUDIENCE.to_owned(),
    }
}

/// `system:serviceaccount:<ns>:<sa>` split, if it is one.
fn subject_parts(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("system:serviceaccount:")?;
    rest.split_once(':')
}

/// The credentials of one workload, and what it surfaces.
fn workload_bridge(a: &Assessment, issuer: &str, observed: &Observed) -> WorkloadBridge {
    let ns = a.workload.namespace.clone();
    let sa = a.target_service_account.clone().unwrap_or_default();
    let mut conflicts = Vec::new();
    let mut credentials = Vec::new();
    for i in &a.identities {
        if i.type_ != "user-assigned-msi" || i.resource_id.is_empty() {
            conflicts.push(Conflict {
                code: ReasonCode::ServicePrincipalIdentity,
                message: format!(
                    "identity {}/{} is a {}: podid creates federated credentials on user-assigned managed identities only; add one to the app registration by hand",
                    i.namespace, i.name, i.type_
                ),
            });
            continue;
        }
        credentials.push(NeededCredential {
            identity: i.resource_id.to_ascii_lowercase(),
            azure_identity: format!("{}/{}", i.namespace, i.name),
            client_id: i.client_id.clone(),
            credential: credential(issuer, &ns, &sa),
            within_budget: false,
        });
    }
    let annotate_with = match credentials.as_slice() {
        [only] => Some(only.client_id.clone()),
        [] => None,
        several => a.workload.default_identity.as_deref().and_then(|named| {
            several
                .iter()
                .find(|c| {
                    c.client_id.eq_ignore_ascii_case(named)
                        || c.azure_identity.rsplit('/').next() == Some(named)
                })
                .map(|c| c.client_id.clone())
        }),
    };
    if let Some(want) = &annotate_with
        && let Some(Some(current)) = observed.service_accounts.get(&(ns.clone(), sa.clone()))
        && !current.eq_ignore_ascii_case(want)
    {
        conflicts.push(Conflict {
            code: ReasonCode::ServiceAccountAnnotation,
            message: format!(
                "ServiceAccount {ns}/{sa} is annotated with client ID {current}, not {want} (the workload's identity); podid leaves it as it is: fix the annotation or choose another ServiceAccount"
            ),
        });
    }
    if credentials.len() > 1 && annotate_with.is_none() {
        conflicts.push(Conflict {
            code: ReasonCode::MultipleIdentities,
            message: format!(
                "uses {} identities: each gets a federated credential, but which client ID ServiceAccount {ns}/{sa} should name is the team's call: name it with the pod-template annotation {DEFAULT_IDENTITY_ANNOTATION}",
                credentials.len()
            ),
        });
    }
    let blockers = a
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Blocker)
        .map(|f| Conflict {
            code: f.code,
            message: f.message.clone(),
        })
        .collect();
    WorkloadBridge {
        record: migration_name(&a.workload.kind, &a.workload.name),
        namespace: ns,
        kind: a.workload.kind.clone(),
        name: a.workload.name.clone(),
        target_service_account: sa,
        credentials,
        annotate_with,
        conflicts,
        verdict: a.verdict,
        blockers,
    }
}

/// How one identity's credential budget is spent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Subjects with a credential after this pass (existing or created).
    pub admitted: BTreeSet<(String, String)>,
    /// Subjects to create a credential for now.
    pub create: Vec<(String, String)>,
    /// Subjects left without one.
    pub left_out: Vec<(String, String)>,
}

/// Spends an identity's budget of [`MAX_FEDERATED_CREDENTIALS`] on the `needed` subjects, given
/// the `existing` credentials (everyone's). A need already met by any credential with the same
/// issuer and subject costs nothing; podid's credentials no one needs are counted as freed.
pub fn budget(
    needed: &BTreeSet<(String, String)>,
    existing: &[FederatedCredential],
    issuer: &str,
) -> Budget {
    let mut out = Budget::default();
    let met: BTreeSet<(String, String)> = existing
        .iter()
        .filter(|c| c.issuer == issuer)
        .filter_map(|c| subject_parts(&c.subject))
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .filter(|k| needed.contains(k))
        .collect();
    // What stays: foreign credentials, and podid's that meet a need.
    let staying = existing
        .iter()
        .filter(|c| {
            !is_podid_credential(&c.name)
                || (c.issuer == issuer
                    && subject_parts(&c.subject)
                        .is_some_and(|(n, s)| needed.contains(&(n.to_owned(), s.to_owned()))))
        })
        .count();
    let mut room = MAX_FEDERATED_CREDENTIALS.saturating_sub(staying);
    for key in needed {
        if met.contains(key) {
            out.admitted.insert(key.clone());
        } else if room > 0 {
            room -= 1;
            out.admitted.insert(key.clone());
            out.create.push(key.clone());
        } else {
            out.left_out.push(key.clone());
        }
    }
    out
}

/// ServiceAccounts to create, and annotations to add where none is set.
fn service_account_writes(
    workloads: &[WorkloadBridge],
    observed: &Observed,
) -> Vec<ServiceAccountWrite> {
    // Per ServiceAccount, the client IDs its workloads would annotate it with (lower case to
    // compare, as written to annotate); "" stands for a workload with several identities.
    let mut by_sa: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for w in workloads {
        let ids = by_sa
            .entry((w.namespace.clone(), w.target_service_account.clone()))
            .or_default();
        match &w.annotate_with {
            Some(id) => {
                ids.insert(id.to_ascii_lowercase(), id.clone());
            }
            None if !w.credentials.is_empty() => {
                ids.insert(String::new(), String::new());
            }
            None => {}
        }
    }
    let mut out = Vec::new();
    for ((ns, sa), ids) in by_sa {
        if sa.is_empty() {
            continue;
        }
        let current = observed.service_accounts.get(&(ns.clone(), sa.clone()));
        let client_id = match (ids.len(), ids.values().next()) {
            (1, Some(id)) if !id.is_empty() => Some(id.clone()),
            _ => None,
        };
        let annotate = client_id.filter(|_| !matches!(current, Some(Some(_))));
        let create = current.is_none();
        if create || annotate.is_some() {
            out.push(ServiceAccountWrite {
                namespace: ns,
                name: sa,
                create,
                client_id: annotate,
            });
        }
    }
    out
}
