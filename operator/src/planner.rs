//! The Managed Identity Controller's decisions as pure functions over plain data: from the pods,
//! nodes, identities, bindings and AzureAssignedIdentities in the cluster, and the identities each
//! scale set or VM carries now, which AzureAssignedIdentities to create, update and delete and
//! which single identity delta to send to each scale set or VM.
//!
//! The I/O edge (`crate::controller`) reads, calls [`AssignmentPlanner::plan`], then applies the
//! [`Plan`]: creations, one write per target, then the actions gated on that write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus};
use kube::ResourceExt;
use kube::api::ObjectMeta;
use podid_azure::IdentityState;
use podid_crds::index::IdentityIndex;
use podid_crds::policy::{
    ExistingRecord, MatchOptions, PodFacts, RecordOwner, WantedRecord, assigned_identity_names,
    assigned_identity_namespace,
};
use podid_crds::provider::{AssignmentTarget, NodeResource};
use podid_crds::serving::{Serving, ServingSettings, pod_serving, recorded_serving};
use podid_crds::{
    ASSIGNED_IDENTITY_FINALIZER, AssignedIdentityState, AzureAssignedIdentity,
    AzureAssignedIdentitySpec, AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding,
    EmbeddedBinding, EmbeddedIdentity, IdentityType, NODENAME_LABEL, PREEXISTING_ANNOTATION,
    SERVING_ANNOTATION, TARGET_ANNOTATION,
};

/// A pod as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub facts: PodFacts,
    /// Phase `Succeeded` or `Failed`: the pod runs no more and needs no identity.
    pub terminated: bool,
}

impl From<&Pod> for PodInfo {
    fn from(pod: &Pod) -> Self {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Self {
            facts: PodFacts::from(pod),
            terminated: matches!(phase, Some("Succeeded" | "Failed")),
        }
    }
}

/// Strips a watched pod down to what [`PodInfo`] reads (name, namespace, labels, node, phase),
/// so the controller's cache of every labelled pod stays small: a pod's containers, volumes and
/// conditions are most of its size and the controller never reads them.
pub fn trim_pod(pod: &mut Pod) {
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    let phase = pod.status.as_mut().and_then(|s| s.phase.take());
    pod.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
    pod.status = Some(PodStatus {
        phase,
        ..PodStatus::default()
    });
    let meta = &mut pod.metadata;
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
}

/// A node as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `spec.providerID` (empty when the cloud provider has not set it).
    pub provider_id: String,
}

impl From<&Node> for NodeInfo {
    fn from(node: &Node) -> Self {
        Self {
            name: node.name_any(),
            provider_id: node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.clone())
                .unwrap_or_default(),
        }
    }
}

/// Everything the planner reads from the cluster.
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    pub pods: &'a [PodInfo],
    pub nodes: &'a [NodeInfo],
    /// Bindings and identities.
    pub index: &'a IdentityIndex,
    /// The records as the watch holds them (shared, not copied for a pass).
    pub assigned: &'a [Arc<AzureAssignedIdentity>],
}

/// The planner's settings.
#[derive(Clone, Debug, Default)]
pub struct PlannerOptions {
    /// `--forceNamespaced`.
    pub force_namespaced: bool,
    /// Identities never removed from a scale set or VM: client IDs (`--immutable-user-msis`, the
    /// cluster identity) or ARM ids; compared case-insensitively.
    pub immutable: BTreeSet<String>,
    /// Subscription and resource group of nodes without a usable `spec.providerID`: such a node
    /// is taken to be a VM named like the node there (the original's only behaviour).
    pub fallback_scope: Option<(String, String)>,
    /// `--federated` and `--identity-serving`: how each (pod, identity) is served. Identities
    /// served `federated` are not assigned to any scale set or VM.
    pub serving: ServingSettings,
}

/// Namespace and name of an AzureAssignedIdentity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn key_of(a: &AzureAssignedIdentity) -> ObjectKey {
    ObjectKey {
        namespace: a.namespace().unwrap_or_default(),
        name: a.name_any(),
    }
}

/// An action to take once every write to `after` has succeeded (at once when `after` is empty).
#[derive(Clone, Debug, PartialEq)]
pub struct Gated<T> {
    pub item: T,
    pub after: Vec<AssignmentTarget>,
}

/// The identity delta for one scale set or VM: at most one per target and pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetWrite {
    /// Lower-cased ARM ids to add.
    pub add: Vec<String>,
    /// Lower-cased ARM ids to remove.
    pub remove: Vec<String>,
}

/// Why something the cluster asks for is not planned this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The pod's node is not (or no longer) in the cluster.
    NodeMissing { pod: String, node: String },
    /// The node's providerID names no scale set or VM and no fallback scope is configured.
    NoTarget { node: String },
    /// The target's identities could not be read this pass; its work waits for the next.
    TargetUnread { target: AssignmentTarget },
    /// No free record name for this pod and identity: the original's name and every fallback
    /// name are taken (needs a 64-bit SHA-256 collision; see
    /// [`podid_crds::policy::assigned_identity_names`]).
    NameCollision { key: ObjectKey },
    /// The object of this name is being deleted; it is recreated once it is gone.
    Terminating { key: ObjectKey },
}

/// One pass's decisions.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// New objects, posted before any write. Status `Created` when gated (then
    /// [`Plan::mark_assigned`] holds them too), `Assigned` otherwise.
    pub create: Vec<Gated<AzureAssignedIdentity>>,
    /// Replacements of existing objects (same name; metadata kept), status `Assigned`, put once
    /// their gate succeeded.
    pub update: Vec<Gated<AzureAssignedIdentity>>,
    /// Objects whose status becomes `Assigned` once their gate succeeded.
    pub mark_assigned: Vec<Gated<ObjectKey>>,
    /// Objects to delete (finalizer removed). Gated ones had their identity removed by the
    /// write: they are first marked `Unassigned`.
    pub delete: Vec<Gated<ObjectKey>>,
    /// The one identity delta per scale set or VM.
    pub writes: BTreeMap<AssignmentTarget, TargetWrite>,
    pub skipped: Vec<Skip>,
}

/// The identity (lower-cased ARM id) a record assigns, if it assigns one.
fn record_identity(a: &AzureAssignedIdentity) -> Option<String> {
    a.spec
        .azure_identity_ref
        .as_ref()
        .filter(|i| i.spec.type_ == IdentityType::UserAssignedMsi && !i.spec.resource_id.is_empty())
        .map(|i| i.spec.resource_id.to_ascii_lowercase())
}

impl Plan {
    /// The writes to make once the new records were posted and those in `failed` were not:
    /// an identity is added to a target only while a record of that assignment exists (one
    /// posted this pass, or one from before), so an assignment that lands is always recorded
    /// as podid's. Otherwise a write that lands while its record's creation failed (the API
    /// server gone for a moment) would, on the next pass, find the identity there with no
    /// record and take it for one that was there before podid: never to be removed.
    pub fn writes_backed(
        &self,
        failed: &BTreeSet<ObjectKey>,
        existing: &[Arc<AzureAssignedIdentity>],
    ) -> BTreeMap<AssignmentTarget, TargetWrite> {
        if failed.is_empty() {
            return self.writes.clone();
        }
        let mut unbacked: BTreeSet<(&AssignmentTarget, String)> = BTreeSet::new();
        let mut backed: BTreeSet<(&AssignmentTarget, String)> = BTreeSet::new();
        for c in &self.create {
            let Some(id) = record_identity(&c.item) else {
                continue;
            };
            let set = if failed.contains(&key_of(&c.item)) {
                &mut unbacked
            } else {
                &mut backed
            };
            set.extend(c.after.iter().map(|t| (t, id.clone())));
        }
        for u in &self.update {
            if let Some(id) = record_identity(&u.item) {
                backed.extend(u.after.iter().map(|t| (t, id.clone())));
            }
        }
        // Records from before this pass back their identity on any target.
        let recorded: BTreeSet<String> = existing
            .iter()
            .filter(|e| e.metadata.deletion_timestamp.is_none())
            .filter_map(|e| record_identity(e))
            .collect();
        let mut writes = self.writes.clone();
        for (t, w) in writes.iter_mut() {
            w.add.retain(|id| {
                let pair = (t, id.clone());
                !unbacked.contains(&pair) || backed.contains(&pair) || recorded.contains(id)
            });
        }
        writes.retain(|_, w| !w.add.is_empty() || !w.remove.is_empty());
        writes
    }

    /// True when the pass has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update.is_empty()
            && self.mark_assigned.is_empty()
            && self.delete.is_empty()
            && self.writes.is_empty()
    }
}

/// A desired assignment: one (pod, identity) pair.
struct Desired<'a> {
    pod: &'a PodFacts,
    identity: &'a AzureIdentity,
    binding: &'a AzureIdentityBinding,
    /// The target and lower-cased resource ID, for user-assigned identities.
    arm: Option<(AssignmentTarget, String)>,
    /// How the identity is served to this pod ([`pod_serving`]).
    serving: Serving,
}

impl Desired<'_> {
    /// Where the identity must be assigned: its target, unless it is served `federated`.
    fn assign(&self) -> Option<&(AssignmentTarget, String)> {
        self.arm
            .as_ref()
            .filter(|_| self.serving.needs_assignment())
    }
}

/// An existing AzureAssignedIdentity and where its identity was assigned.
struct Existing<'a> {
    object: &'a AzureAssignedIdentity,
    /// The target and lower-cased resource ID it records, when known. A record served
    /// `federated` has one only while podid's own earlier assignment for it may still be on
    /// that target (kept when it flipped from `assigned`, so the removal that follows is not
    /// forgotten).
    arm: Option<(AssignmentTarget, String)>,
    preexisting: bool,
    terminating: bool,
    /// What the record says ([`recorded_serving`]; `assigned` when it says nothing).
    serving: Serving,
}

struct Analysis<'a> {
    desired: BTreeMap<ObjectKey, Desired<'a>>,
    existing: BTreeMap<ObjectKey, Existing<'a>>,
    skipped: Vec<Skip>,
}

impl Analysis<'_> {
    /// (target, lower-cased identity ARM id) of every desired assignment.
    fn needed(&self) -> BTreeSet<(&AssignmentTarget, &str)> {
        self.desired
            .values()
            .filter_map(|d| d.assign().map(|(t, id)| (t, id.as_str())))
            .collect()
    }
}

/// Decides assignments; see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct AssignmentPlanner {
    pub options: PlannerOptions,
}

impl AssignmentPlanner {
    pub fn new(options: PlannerOptions) -> Self {
        Self { options }
    }

    /// The scale sets and VMs whose identities the next [`plan`](Self::plan) needs: those with
    /// pending work, or with `full` every target any assignment lives on (the periodic pass that
    /// re-adds identities removed behind the controller's back).
    pub fn targets(&self, world: World<'_>, full: bool) -> BTreeSet<AssignmentTarget> {
        let a = self.analyse(world);
        let mut out = BTreeSet::new();
        for (key, d) in &a.desired {
            let existing = a.existing.get(key);
            let Some((t, _)) = d.assign() else {
                // Served `federated`: nothing to assign; a record that still remembers podid's
                // earlier assignment needs its target read (to remove it, then forget it).
                if let Some((t, _)) = existing.and_then(|e| e.arm.as_ref()) {
                    out.insert(t.clone());
                }
                continue;
            };
            let settled = existing.is_some_and(|e| {
                self.matches(e, d) && e.object.state() == AssignedIdentityState::Assigned
            });
            if full || !settled {
                out.insert(t.clone());
            }
        }
        let needed = a.needed();
        for (key, e) in &a.existing {
            let Some((t, id)) = &e.arm else { continue };
            let kept = a.desired.get(key).is_some_and(|d| self.matches(e, d));
            // A record that goes while another one still needs its identity on the same target
            // removes nothing there, so it needs no read (the original makes no call either).
            let removes_nothing =
                !a.desired.contains_key(key) && needed.contains(&(t, id.as_str()));
            if full || ((e.terminating || !kept) && !removes_nothing) {
                out.insert(t.clone());
            }
        }
        out
    }

    /// The pass's plan, given the identities of the targets that could be read. Work on a target
    /// missing from `current` is left for a later pass.
    pub fn plan(
        &self,
        world: World<'_>,
        current: &BTreeMap<AssignmentTarget, IdentityState>,
    ) -> Plan {
        let a = self.analyse(world);
        let mut plan = Plan {
            skipped: a.skipped.clone(),
            ..Plan::default()
        };
        let mut reads = Reads {
            current,
            unread: BTreeSet::new(),
        };
        let recorded = Recorded::collect(&a);
        plan.writes = self.target_writes(current, &needed_per_target(&a), &recorded);
        self.plan_desired(&a, &recorded, &mut reads, &mut plan);
        plan_released(&a, &mut reads, &mut plan);
        plan
    }

    /// The one delta per target read: add what its nodes need and it lacks; remove what no node
    /// needs, podid's records say podid added, and is not immutable.
    fn target_writes(
        &self,
        current: &BTreeMap<AssignmentTarget, IdentityState>,
        needed: &BTreeMap<&AssignmentTarget, BTreeSet<&str>>,
        recorded: &Recorded<'_>,
    ) -> BTreeMap<AssignmentTarget, TargetWrite> {
        let mut writes = BTreeMap::new();
        for (t, state) in current {
            let want = needed.get(t).cloned().unwrap_or_default();
            let add: Vec<String> = want
                .iter()
                .filter(|id| !state.user_assigned.contains(**id))
                .map(|id| id.to_string())
                .collect();
            let remove: Vec<String> = state
                .user_assigned
                .iter()
                .filter(|id| !want.contains(id.as_str()))
                .filter(|id| recorded.on_target.get(&(t, id.as_str())) == Some(&false))
                // A record about to say `federated` still says `assigned`: the node agent may
                // be serving it from here; it is removed once the record says `federated`.
                .filter(|id| !recorded.flipping.contains(&(t, id.as_str())))
                .filter(|id| !self.is_immutable(id, state, recorded.client_ids.get(id.as_str())))
                .cloned()
                .collect();
            if !add.is_empty() || !remove.is_empty() {
                writes.insert(t.clone(), TargetWrite { add, remove });
            }
        }
        writes
    }

    /// For each desired assignment: mark its record `Assigned`, replace a record that says
    /// something else, or create one; each gated on the writes it waits for. Needs
    /// `plan.writes` decided.
    fn plan_desired(
        &self,
        a: &Analysis<'_>,
        recorded: &Recorded<'_>,
        reads: &mut Reads<'_>,
        plan: &mut Plan,
    ) {
        for (key, d) in &a.desired {
            let existing = a.existing.get(key);
            if existing.is_some_and(|e| e.terminating) {
                plan.skipped.push(Skip::Terminating { key: key.clone() });
                continue;
            }
            if !d.serving.needs_assignment() {
                self.plan_federated(key, d, existing, reads, plan);
                continue;
            }
            if let Some((t, _)) = &d.arm
                && !reads.readable(t, plan)
            {
                continue;
            }
            let (after, preexisting) = gate_of(d, existing, reads.current, recorded);
            match existing {
                Some(e) if self.matches(e, d) => {
                    if e.object.state() != AssignedIdentityState::Assigned {
                        plan.mark_assigned.push(Gated {
                            item: key.clone(),
                            after,
                        });
                    }
                }
                Some(e) => {
                    // The old assignment's target must be written too before the record of it
                    // goes, or a failed removal there would be forgotten.
                    let mut after = after;
                    if let Some((old, _)) = &e.arm
                        && plan.writes.contains_key(old)
                        && !after.contains(old)
                    {
                        after.push(old.clone());
                    }
                    if let Some((old, _)) = &e.arm
                        && !reads.readable(old, plan)
                    {
                        continue;
                    }
                    let placed = d.arm.as_ref().map(|(t, _)| (t, preexisting));
                    let obj = self.replacement(key, d, e, placed);
                    plan.update.push(Gated { item: obj, after });
                }
                None => {
                    let status = if after.is_empty() {
                        AssignedIdentityState::Assigned
                    } else {
                        plan.mark_assigned.push(Gated {
                            item: key.clone(),
                            after: after.clone(),
                        });
                        AssignedIdentityState::Created
                    };
                    let placed = d.arm.as_ref().map(|(t, _)| (t, preexisting));
                    plan.create.push(Gated {
                        item: self.build(key, d, placed, status),
                        after,
                    });
                }
            }
        }
    }

    /// A (pod, identity) served `federated`: its record is created `Assigned` at once (nothing
    /// to assign); a record that says `assigned` is rewritten to say `federated` first, keeping
    /// podid's earlier assignment in memory, and a later pass removes that assignment (once no
    /// other record needs it there) and then forgets it.
    fn plan_federated(
        &self,
        key: &ObjectKey,
        d: &Desired<'_>,
        existing: Option<&Existing<'_>>,
        reads: &mut Reads<'_>,
        plan: &mut Plan,
    ) {
        match existing {
            Some(e) if self.matches(e, d) => {
                if let Some((t, id)) = &e.arm {
                    if !reads.readable(t, plan) {
                        return;
                    }
                    // Forget the assignment once the write removing it succeeded (or at once
                    // when this pass removes nothing: absent, still needed by another record,
                    // there before podid, or immutable, and then another record or the
                    // protection remembers it).
                    let removed = plan
                        .writes
                        .get(t)
                        .is_some_and(|w| w.remove.iter().any(|r| r == id));
                    plan.update.push(Gated {
                        item: self.replacement(key, d, e, None),
                        after: if removed { vec![t.clone()] } else { Vec::new() },
                    });
                } else if e.object.state() != AssignedIdentityState::Assigned {
                    plan.mark_assigned.push(Gated {
                        item: key.clone(),
                        after: Vec::new(),
                    });
                }
            }
            Some(e) => {
                let same_identity =
                    e.arm.as_ref().map(|(_, id)| id) == d.arm.as_ref().map(|(_, id)| id);
                if same_identity {
                    // The annotation flips first; podid's assignment is remembered.
                    let memory = e.arm.as_ref().map(|(t, _)| (t, e.preexisting));
                    plan.update.push(Gated {
                        item: self.replacement(key, d, e, memory),
                        after: Vec::new(),
                    });
                    return;
                }
                // Another identity than the record's: the old one's removal (planned this pass
                // from the old record) must be written before the record of it goes.
                let mut after = Vec::new();
                if let Some((old, _)) = &e.arm {
                    if !reads.readable(old, plan) {
                        return;
                    }
                    if plan.writes.contains_key(old) {
                        after.push(old.clone());
                    }
                }
                plan.update.push(Gated {
                    item: self.replacement(key, d, e, None),
                    after,
                });
            }
            None => plan.create.push(Gated {
                item: self.build(key, d, None, AssignedIdentityState::Assigned),
                after: Vec::new(),
            }),
        }
    }

    /// The record replacing `e` for `d`: same name, with `e`'s resource version, uid, creation
    /// time and finalizers (podid's added if missing). `placed`: the target it records and
    /// whether the identity was there before podid.
    fn replacement(
        &self,
        key: &ObjectKey,
        d: &Desired<'_>,
        e: &Existing<'_>,
        placed: Option<(&AssignmentTarget, bool)>,
    ) -> AzureAssignedIdentity {
        let mut obj = self.build(key, d, placed, AssignedIdentityState::Assigned);
        obj.metadata.resource_version = e.object.metadata.resource_version.clone();
        obj.metadata.uid = e.object.metadata.uid.clone();
        obj.metadata.creation_timestamp = e.object.metadata.creation_timestamp.clone();
        let mut finalizers = e.object.finalizers().to_vec();
        if !finalizers.iter().any(|f| f == ASSIGNED_IDENTITY_FINALIZER) {
            finalizers.push(ASSIGNED_IDENTITY_FINALIZER.into());
        }
        obj.metadata.finalizers = Some(finalizers);
        obj
    }

    /// Desired and existing assignments, keyed by object namespace and name.
    fn analyse<'a>(&self, world: World<'a>) -> Analysis<'a> {
        let nodes: BTreeMap<&str, &NodeInfo> =
            world.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut a = Analysis {
            desired: BTreeMap::new(),
            existing: BTreeMap::new(),
            skipped: Vec::new(),
        };
        // Every (pod, identity) first; their record names are chosen together, below.
        let wanted = self.wanted_assignments(world.pods, &nodes, world.index, &mut a.skipped);
        name_records(wanted, world.assigned, &mut a);
        a.existing = self.existing_records(world.assigned, &nodes);
        a
    }

    /// Every (pod, identity) the bindings grant to a running pod on a known node, with the
    /// record it wants and, for a user-assigned identity, its node's target. Pods on missing
    /// nodes and identities for nodes without a target go to `skipped`.
    fn wanted_assignments<'a>(
        &self,
        pods: &'a [PodInfo],
        nodes: &BTreeMap<&str, &NodeInfo>,
        index: &'a IdentityIndex,
        skipped: &mut Vec<Skip>,
    ) -> Vec<(WantedRecord, Desired<'a>)> {
        let opts = MatchOptions::standard(self.options.force_namespaced);
        let mut wanted: Vec<(WantedRecord, Desired<'a>)> = Vec::new();
        for pod in pods {
            let facts = &pod.facts;
            if pod.terminated || facts.node_name.is_empty() {
                continue;
            }
            let grants = index.pod_identities(facts, opts).grants;
            if grants.is_empty() {
                continue;
            }
            let Some(node) = nodes.get(facts.node_name.as_str()) else {
                skipped.push(Skip::NodeMissing {
                    pod: format!("{}/{}", facts.namespace, facts.name),
                    node: facts.node_name.clone(),
                });
                continue;
            };
            for g in &grants {
                let serving = pod_serving(&grants, g.identity, self.options.serving);
                let arm = if g.identity.spec.type_ == IdentityType::UserAssignedMsi {
                    let Some(t) = self.node_target(node) else {
                        skipped.push(Skip::NoTarget {
                            node: node.name.clone(),
                        });
                        continue;
                    };
                    Some((t, g.identity.spec.resource_id.to_ascii_lowercase()))
                } else {
                    None
                };
                wanted.push((
                    WantedRecord {
                        namespace: assigned_identity_namespace(
                            g.identity,
                            self.options.force_namespaced,
                        ),
                        owner: RecordOwner::new(
                            &facts.namespace,
                            &facts.name,
                            &g.identity.name_any(),
                        ),
                    },
                    Desired {
                        pod: facts,
                        identity: g.identity,
                        binding: g.binding,
                        arm,
                        serving,
                    },
                ));
            }
        }
        wanted
    }

    /// Every AzureAssignedIdentity with where its identity was assigned: the target it records,
    /// else its node's.
    fn existing_records<'a>(
        &self,
        assigned: &'a [Arc<AzureAssignedIdentity>],
        nodes: &BTreeMap<&str, &NodeInfo>,
    ) -> BTreeMap<ObjectKey, Existing<'a>> {
        let mut existing = BTreeMap::new();
        for obj in assigned {
            let serving = recorded_serving(obj).unwrap_or_default();
            let arm = obj
                .spec
                .azure_identity_ref
                .as_ref()
                .filter(|i| i.spec.type_ == IdentityType::UserAssignedMsi)
                .filter(|i| !i.spec.resource_id.is_empty())
                .and_then(|i| {
                    let recorded = obj
                        .annotations()
                        .get(TARGET_ANNOTATION)
                        .and_then(|t| AssignmentTarget::from_arm_id(t));
                    // A `federated` record names a target only to remember podid's assignment.
                    let target = recorded.or_else(|| {
                        nodes
                            .get(obj.spec.node_name.as_str())
                            .and_then(|n| self.node_target(n))
                            .filter(|_| serving.needs_assignment())
                    })?;
                    Some((target, i.spec.resource_id.to_ascii_lowercase()))
                });
            existing.insert(
                key_of(obj),
                Existing {
                    object: obj,
                    arm,
                    preexisting: obj
                        .annotations()
                        .get(PREEXISTING_ANNOTATION)
                        .is_some_and(|v| v == "true"),
                    terminating: obj.metadata.deletion_timestamp.is_some(),
                    serving,
                },
            );
        }
        existing
    }

    fn node_target(&self, node: &NodeInfo) -> Option<AssignmentTarget> {
        if let Some(r) = NodeResource::parse(&node.provider_id) {
            return Some(r.target());
        }
        let (subscription, resource_group) = self.options.fallback_scope.clone()?;
        Some(AssignmentTarget {
            subscription,
            resource_group,
            name: node.name.clone(),
            is_scale_set: false,
        })
    }

    /// True when the existing object already says what the desired one would: same pod, node,
    /// identity and binding (their specs; metadata-only edits do not count), serving (a record
    /// without the annotation says `assigned`) and, when assigned, target.
    fn matches(&self, e: &Existing<'_>, d: &Desired<'_>) -> bool {
        let s = &e.object.spec;
        let same_identity = s.azure_identity_ref.as_ref().is_some_and(|i| {
            i.metadata.name.as_deref() == d.identity.metadata.name.as_deref()
                && i.metadata.namespace == d.identity.metadata.namespace
                && i.spec == d.identity.spec
        });
        let same_binding = s.azure_binding_ref.as_ref().is_some_and(|b| {
            b.metadata.name.as_deref() == d.binding.metadata.name.as_deref()
                && b.metadata.namespace == d.binding.metadata.namespace
                && b.spec == d.binding.spec
        });
        s.pod == d.pod.name
            && s.pod_namespace == d.pod.namespace
            && s.node_name == d.pod.node_name
            && same_identity
            && same_binding
            && e.serving == d.serving
            && (!d.serving.needs_assignment() || e.arm == d.arm)
            && e.object.labels().get(NODENAME_LABEL) == Some(&d.pod.node_name)
    }

    fn is_immutable(
        &self,
        id: &str,
        state: &IdentityState,
        recorded_client_ids: Option<&BTreeSet<String>>,
    ) -> bool {
        let imm = &self.options.immutable;
        imm.contains(id)
            || state.client_ids.get(id).is_some_and(|c| imm.contains(c))
            || recorded_client_ids.is_some_and(|cs| cs.iter().any(|c| imm.contains(c)))
    }

    /// A record for `d`; `placed`: the target it records (where the identity is assigned, or
    /// was by podid) and whether the identity was there before podid.
    fn build(
        &self,
        key: &ObjectKey,
        d: &Desired<'_>,
        placed: Option<(&AssignmentTarget, bool)>,
        status: AssignedIdentityState,
    ) -> AzureAssignedIdentity {
        let mut annotations = BTreeMap::from([(
            SERVING_ANNOTATION.to_string(),
            d.serving.as_str().to_string(),
        )]);
        if let Some((t, preexisting)) = placed {
            annotations.insert(TARGET_ANNOTATION.to_string(), t.arm_id());
            if preexisting {
                annotations.insert(PREEXISTING_ANNOTATION.to_string(), "true".to_string());
            }
        }
        let mut identity = EmbeddedIdentity::from(d.identity);
        identity.metadata.managed_fields = None;
        let mut binding = EmbeddedBinding::from(d.binding);
        binding.metadata.managed_fields = None;
        AzureAssignedIdentity {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    NODENAME_LABEL.to_string(),
                    d.pod.node_name.clone(),
                )])),
                annotations: Some(annotations),
                finalizers: Some(vec![ASSIGNED_IDENTITY_FINALIZER.to_string()]),
                ..ObjectMeta::default()
            },
            spec: AzureAssignedIdentitySpec {
                azure_identity_ref: Some(identity),
                azure_binding_ref: Some(binding),
                pod: d.pod.name.clone(),
                pod_namespace: d.pod.namespace.clone(),
                node_name: d.pod.node_name.clone(),
                replicas: None,
                metadata: None,
            },
            status: Some(AzureAssignedIdentityStatus {
                status,
                available_replicas: Some(1),
                metadata: None,
            }),
        }
    }
}

fn embedded_client_id(a: &AzureAssignedIdentity) -> Option<String> {
    a.spec
        .azure_identity_ref
        .as_ref()
        .map(|i| i.spec.client_id.to_ascii_lowercase())
        .filter(|c| !c.is_empty())
}

/// Which targets could be read this pass; reports each one that could not, once.
struct Reads<'c> {
    current: &'c BTreeMap<AssignmentTarget, IdentityState>,
    unread: BTreeSet<AssignmentTarget>,
}

impl Reads<'_> {
    /// True when `t` was read; otherwise its work waits and `plan.skipped` says so (once).
    fn readable(&mut self, t: &AssignmentTarget, plan: &mut Plan) -> bool {
        if self.current.contains_key(t) {
            true
        } else {
            if self.unread.insert(t.clone()) {
                plan.skipped.push(Skip::TargetUnread { target: t.clone() });
            }
            false
        }
    }
}

/// Which identities podid holds records for, per target, and whether any record says the
/// identity was there before podid; and the client IDs those records embed, per identity.
struct Recorded<'a> {
    on_target: BTreeMap<(&'a AssignmentTarget, &'a str), bool>,
    client_ids: BTreeMap<&'a str, BTreeSet<String>>,
    /// Assignments whose record still says `assigned` while its pod is now served `federated`
    /// by the same identity: not removed until the record says so.
    flipping: BTreeSet<(&'a AssignmentTarget, &'a str)>,
}

impl<'a> Recorded<'a> {
    fn collect(a: &'a Analysis<'_>) -> Self {
        let mut on_target: BTreeMap<(&AssignmentTarget, &str), bool> = BTreeMap::new();
        let mut client_ids: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut flipping = BTreeSet::new();
        for (key, e) in &a.existing {
            if let Some((t, id)) = &e.arm {
                let to_federated = a.desired.get(key).is_some_and(|d| {
                    !d.serving.needs_assignment()
                        && d.arm.as_ref().map(|(_, i)| i) == Some(id)
                        && e.serving.needs_assignment()
                });
                if to_federated && !e.terminating {
                    flipping.insert((t, id.as_str()));
                }
                *on_target.entry((t, id)).or_default() |= e.preexisting;
                if let Some(c) = embedded_client_id(e.object) {
                    client_ids.entry(id).or_default().insert(c);
                }
            }
        }
        Self {
            on_target,
            client_ids,
            flipping,
        }
    }

    /// An identity on a target is podid's own when some live record of podid's says so.
    fn ours(&self, t: &AssignmentTarget, id: &str) -> bool {
        self.on_target.get(&(t, id)) == Some(&false)
    }
}

/// Which identity each target must carry, over all of its nodes.
fn needed_per_target<'a>(a: &'a Analysis<'_>) -> BTreeMap<&'a AssignmentTarget, BTreeSet<&'a str>> {
    let mut needed: BTreeMap<&AssignmentTarget, BTreeSet<&str>> = BTreeMap::new();
    for d in a.desired.values() {
        if let Some((t, id)) = d.assign() {
            needed.entry(t).or_default().insert(id);
        }
    }
    needed
}

/// The targets desired assignment `d` waits for (its own, unless the identity is there already)
/// and whether its identity counts as preexisting (there before podid).
fn gate_of(
    d: &Desired<'_>,
    existing: Option<&Existing<'_>>,
    current: &BTreeMap<AssignmentTarget, IdentityState>,
    recorded: &Recorded<'_>,
) -> (Vec<AssignmentTarget>, bool) {
    match &d.arm {
        None => (Vec::new(), false),
        Some((t, id)) => {
            let present = current.get(t).is_some_and(|s| s.user_assigned.contains(id));
            let after = if present { Vec::new() } else { vec![t.clone()] };
            let preexisting = match existing {
                // The object already records this assignment: keep what it says.
                Some(e) if e.arm.as_ref() == d.arm.as_ref() => e.preexisting,
                _ => after.is_empty() && !recorded.ours(t, id),
            };
            (after, preexisting)
        }
    }
}

/// Deletes every record no longer desired or being deleted; one whose identity the write
/// removes waits for that write (its target must have been read).
fn plan_released(a: &Analysis<'_>, reads: &mut Reads<'_>, plan: &mut Plan) {
    let still_needed = a.needed();
    for (key, e) in &a.existing {
        if a.desired.contains_key(key) && !e.terminating {
            continue;
        }
        let after = match &e.arm {
            // Its identity stays on the target for another record: nothing to wait for.
            Some((t, id))
                if !a.desired.contains_key(key) && still_needed.contains(&(t, id.as_str())) =>
            {
                Vec::new()
            }
            Some((t, id)) => {
                if !reads.readable(t, plan) {
                    continue;
                }
                let removed = plan
                    .writes
                    .get(t)
                    .is_some_and(|w| w.remove.iter().any(|r| r == id));
                if removed { vec![t.clone()] } else { Vec::new() }
            }
            None => Vec::new(),
        };
        plan.delete.push(Gated {
            item: key.clone(),
            after,
        });
    }
}

/// Gives each wanted assignment its record name (chosen together, against the existing
/// records) into `a.desired`; one without a free name goes to `a.skipped`.
///
/// Names are unique, never another owner's record, and kept from pass to pass: an existing
/// record is this assignment's only when its spec names the same pod and identity, so no pod's
/// record is ever rewritten for another pod.
fn name_records<'a>(
    wanted: Vec<(WantedRecord, Desired<'a>)>,
    assigned: &[Arc<AzureAssignedIdentity>],
    a: &mut Analysis<'a>,
) {
    let records: Vec<WantedRecord> = wanted.iter().map(|(w, _)| w.clone()).collect();
    let existing: Vec<ExistingRecord> = assigned.iter().map(|a| a.as_ref().into()).collect();
    let names = assigned_identity_names(&records, &existing);
    for ((w, d), name) in wanted.into_iter().zip(names) {
        match name {
            Some(name) => {
                let key = ObjectKey {
                    namespace: w.namespace,
                    name,
                };
                a.desired.insert(key, d);
            }
            None => a.skipped.push(Skip::NameCollision {
                key: ObjectKey {
                    namespace: w.namespace,
                    name: w.owner.original_name(),
                },
            }),
        }
    }
}
