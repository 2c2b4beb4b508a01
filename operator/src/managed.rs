//! Managed mode's decisions (`--mode managed`: the AKS pod-identity add-on's control-plane job)
//! as pure functions over plain data: every AzureIdentity that `podid identity add` manages stays
//! assigned to every node pool of the cluster, and is taken off again when its last AzureIdentity
//! goes. No AzureAssignedIdentity is written (the node agent's managed mode reads bindings).
//!
//! The node pools are the scale sets (and availability-set VMs) named by the nodes' provider IDs,
//! plus the scale sets ARM lists in the resource groups those live in and in the cloud config's
//! resource group (AKS's node resource group holds only node pools): a pool scaled to zero, or
//! added with no node yet, is found there. Every target podid gave an identity is remembered on
//! the AzureIdentity ([`podid_crds::ASSIGNED_TARGETS_ANNOTATION`], written before the assignment), as is
//! every target that already carried it when podid first looked
//! ([`podid_crds::PREEXISTING_TARGETS_ANNOTATION`], never taken off); podid's finalizer holds the
//! AzureIdentity until the removals succeeded.
//!
//! Identities are grouped by Azure identity (ARM id, case-insensitively): pod identities of one
//! Azure identity in several namespaces share one assignment, kept while any of them lives.
//!
//! The I/O edge (`crate::managed_run`) reads, calls [`ManagedPlanner::plan`], then applies the
//! [`ManagedPlan`]: the records first, then one write per target (adds only for identities whose
//! records were written), then the releases gated on the writes.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use podid_azure::IdentityState;
use podid_crds::managed::{assigned_targets, has_finalizer, is_managed, preexisting_targets};
use podid_crds::provider::{AssignmentTarget, NodeResource};
use podid_crds::{AzureIdentity, IdentityType, MANAGED_IDENTITY_FINALIZER};

use crate::planner::{Gated, NodeInfo, ObjectKey, Skip, TargetWrite};

/// Everything managed mode reads from the cluster and ARM's lists.
#[derive(Clone, Copy, Debug)]
pub struct ManagedWorld<'a> {
    /// Every AzureIdentity (the managed ones are picked here).
    pub identities: &'a [AzureIdentity],
    pub nodes: &'a [NodeInfo],
    /// The scale sets ARM lists in [`listing_scopes`] (empty when not listed).
    pub listed: &'a BTreeSet<AssignmentTarget>,
}

/// Managed mode's settings.
#[derive(Clone, Debug, Default)]
pub struct ManagedOptions {
    /// Identities never removed: client IDs or ARM ids (`--immutable-user-msis`, the cluster
    /// identity); compared case-insensitively.
    pub immutable: BTreeSet<String>,
}

/// A target with every part lower-cased: ARM compares ids case-insensitively, and the nodes'
/// provider IDs and ARM's lists spell resource groups differently.
pub fn normalize(t: &AssignmentTarget) -> AssignmentTarget {
    AssignmentTarget {
        subscription: t.subscription.to_ascii_lowercase(),
        resource_group: t.resource_group.to_ascii_lowercase(),
        name: t.name.to_ascii_lowercase(),
        is_scale_set: t.is_scale_set,
    }
}

fn target_id(t: &AssignmentTarget) -> String {
    t.arm_id().to_ascii_lowercase()
}

fn node_targets(nodes: &[NodeInfo]) -> impl Iterator<Item = AssignmentTarget> + '_ {
    nodes
        .iter()
        .filter_map(|n| NodeResource::parse(&n.provider_id))
        .map(|r| normalize(&r.target()))
}

/// The (subscription, resource group) pairs whose scale sets ARM is asked for: those of the
/// nodes' scale sets and VMs, and `configured` (the cloud config's, AKS's node resource group),
/// lower-cased.
pub fn listing_scopes(
    nodes: &[NodeInfo],
    configured: Option<&(String, String)>,
) -> BTreeSet<(String, String)> {
    node_targets(nodes)
        .map(|t| (t.subscription, t.resource_group))
        .chain(
            configured
                .filter(|(s, g)| !s.is_empty() && !g.is_empty())
                .map(|(s, g)| (s.to_ascii_lowercase(), g.to_ascii_lowercase())),
        )
        .collect()
}

/// The node pools: the scale sets and availability-set VMs of the nodes, and the scale sets
/// listed; normalized.
pub fn node_pools(
    nodes: &[NodeInfo],
    listed: &BTreeSet<AssignmentTarget>,
) -> BTreeSet<AssignmentTarget> {
    node_targets(nodes)
        .chain(listed.iter().map(normalize))
        .collect()
}

/// The managed AzureIdentities of one Azure identity.
#[derive(Debug)]
struct Group<'a> {
    client_ids: BTreeSet<String>,
    /// Not being deleted.
    live: Vec<&'a AzureIdentity>,
    /// Being deleted, held by podid's finalizer.
    leaving: Vec<&'a AzureIdentity>,
    /// The union of what the members record.
    preexisting: BTreeSet<String>,
    assigned: BTreeSet<String>,
}

/// The managed AzureIdentities by lower-cased identity ARM id. A member is a user-assigned
/// identity with the managed annotation or podid's finalizer; one being deleted without the
/// finalizer is past podid's care.
fn groups(identities: &[AzureIdentity]) -> BTreeMap<String, Group<'_>> {
    let mut out: BTreeMap<String, Group<'_>> = BTreeMap::new();
    for i in identities {
        let held = has_finalizer(i);
        if !(is_managed(i) || held)
            || i.spec.type_ != IdentityType::UserAssignedMsi
            || i.spec.resource_id.is_empty()
        {
            continue;
        }
        let deleting = i.metadata.deletion_timestamp.is_some();
        if deleting && !held {
            continue;
        }
        let g = out
            .entry(i.spec.resource_id.to_ascii_lowercase())
            .or_insert_with(|| Group {
                client_ids: BTreeSet::new(),
                live: Vec::new(),
                leaving: Vec::new(),
                preexisting: BTreeSet::new(),
                assigned: BTreeSet::new(),
            });
        if !i.spec.client_id.is_empty() {
            g.client_ids.insert(i.spec.client_id.to_ascii_lowercase());
        }
        g.preexisting.extend(preexisting_targets(i));
        g.assigned.extend(assigned_targets(i));
        if deleting {
            g.leaving.push(i);
        } else {
            g.live.push(i);
        }
    }
    out
}

fn key_of(i: &AzureIdentity) -> ObjectKey {
    ObjectKey {
        namespace: i.namespace().unwrap_or_default(),
        name: i.name_any(),
    }
}

/// What podid records on one managed AzureIdentity, written before any assignment it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: ObjectKey,
    /// Lower-cased ARM id of its Azure identity.
    pub resource_id: String,
    /// The resource version read: the write fails if the object changed since.
    pub resource_version: Option<String>,
    /// Its finalizers with podid's added (None: already there).
    pub finalizers: Option<Vec<String>>,
    /// The new value of [`podid_crds::PREEXISTING_TARGETS_ANNOTATION`] (lower-cased ARM ids).
    pub preexisting: BTreeSet<String>,
    /// The new value of [`podid_crds::ASSIGNED_TARGETS_ANNOTATION`].
    pub assigned: BTreeSet<String>,
}

/// The release of a deleted AzureIdentity: podid's finalizer dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub key: ObjectKey,
    pub resource_version: Option<String>,
    /// Its finalizers without podid's.
    pub finalizers: Vec<String>,
}

/// One pass's decisions.
#[derive(Clone, Debug, Default)]
pub struct ManagedPlan {
    /// Records to write first.
    pub records: Vec<Record>,
    /// The one identity delta per target; an identity's adds may be sent only once every record
    /// of its group was written ([`ManagedPlan::drop_adds_of`]).
    pub writes: BTreeMap<AssignmentTarget, TargetWrite>,
    /// Finalizers to drop once every write in `after` succeeded.
    pub release: Vec<Gated<Release>>,
    pub skipped: Vec<Skip>,
}

impl ManagedPlan {
    /// True when the pass has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.writes.is_empty() && self.release.is_empty()
    }

    /// Takes the adds of these identities (lower-cased ARM ids) out of the writes: their
    /// records could not be written, so podid would not remember assigning them.
    pub fn drop_adds_of(&mut self, resource_ids: &BTreeSet<String>) {
        for w in self.writes.values_mut() {
            w.add.retain(|id| !resource_ids.contains(id));
        }
        self.writes
            .retain(|_, w| !w.add.is_empty() || !w.remove.is_empty());
    }
}

/// Decides managed mode's assignments; see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct ManagedPlanner {
    pub options: ManagedOptions,
}

impl ManagedPlanner {
    pub fn new(options: ManagedOptions) -> Self {
        Self { options }
    }

    /// True when some AzureIdentity is managed (else there is nothing to list or read).
    pub fn has_work(&self, identities: &[AzureIdentity]) -> bool {
        !groups(identities).is_empty()
    }

    /// The targets whose identities the next [`plan`](Self::plan) needs: every node pool and
    /// every target podid recorded assigning, while a managed identity lives; the recorded ones
    /// of identities being deleted.
    pub fn targets(&self, world: ManagedWorld<'_>) -> BTreeSet<AssignmentTarget> {
        let groups = groups(world.identities);
        let pools = node_pools(world.nodes, world.listed);
        let mut out = BTreeSet::new();
        for g in groups.values() {
            if !g.live.is_empty() {
                out.extend(pools.iter().cloned());
            }
            out.extend(recorded(&g.assigned));
        }
        out
    }

    /// The pass's plan, given the identities of the targets read (`current`) and the targets ARM
    /// says are gone (`gone`: they carry nothing and are forgotten). Work on a target in neither
    /// waits for a later pass.
    pub fn plan(
        &self,
        world: ManagedWorld<'_>,
        current: &BTreeMap<AssignmentTarget, IdentityState>,
        gone: &BTreeSet<AssignmentTarget>,
    ) -> ManagedPlan {
        let pools = node_pools(world.nodes, world.listed);
        let mut plan = ManagedPlan::default();
        let mut unread = BTreeSet::new();
        let gone_ids: BTreeSet<String> = gone.iter().map(target_id).collect();
        for (rid, g) in &groups(world.identities) {
            if g.live.is_empty() {
                self.plan_removal(rid, g, current, &gone_ids, &mut unread, &mut plan);
            } else {
                plan_kept(rid, g, &pools, current, &gone_ids, &mut unread, &mut plan);
            }
        }
        plan.skipped.extend(
            unread
                .into_iter()
                .map(|target| Skip::TargetUnread { target }),
        );
        plan
    }

    /// The last AzureIdentities of `rid` are being deleted: take it off every target podid
    /// recorded giving it (not those recorded as pre-existing, not an immutable identity), then
    /// release them.
    fn plan_removal(
        &self,
        rid: &str,
        g: &Group<'_>,
        current: &BTreeMap<AssignmentTarget, IdentityState>,
        gone_ids: &BTreeSet<String>,
        unread: &mut BTreeSet<AssignmentTarget>,
        plan: &mut ManagedPlan,
    ) {
        let mut after = Vec::new();
        let mut blocked = false;
        for t in recorded(&g.assigned) {
            let id = target_id(&t);
            if gone_ids.contains(&id) || g.preexisting.contains(&id) {
                continue;
            }
            let Some(state) = current.get(&t) else {
                unread.insert(t);
                blocked = true;
                continue;
            };
            if !state.user_assigned.contains(rid) || self.is_immutable(rid, g, state) {
                continue;
            }
            plan.writes
                .entry(t.clone())
                .or_default()
                .remove
                .push(rid.to_owned());
            after.push(t);
        }
        if blocked {
            return;
        }
        for i in &g.leaving {
            plan.release.push(Gated {
                item: release(i),
                after: after.clone(),
            });
        }
    }

    fn is_immutable(&self, rid: &str, g: &Group<'_>, state: &IdentityState) -> bool {
        let imm = &self.options.immutable;
        imm.contains(rid)
            || g.client_ids.iter().any(|c| imm.contains(c))
            || state.client_ids.get(rid).is_some_and(|c| imm.contains(c))
    }
}

/// A managed identity lives: every node pool and every target podid gave it must carry it. A
/// target met for the first time that carries it already is recorded as pre-existing; one that
/// does not is recorded as podid's and given it. A pre-existing assignment that disappeared
/// becomes podid's. The members record the group's union; a member being deleted is released
/// once the live ones hold everything it recorded.
fn plan_kept(
    rid: &str,
    g: &Group<'_>,
    pools: &BTreeSet<AssignmentTarget>,
    current: &BTreeMap<AssignmentTarget, IdentityState>,
    gone_ids: &BTreeSet<String>,
    unread: &mut BTreeSet<AssignmentTarget>,
    plan: &mut ManagedPlan,
) {
    let mut preexisting: BTreeSet<String> = g.preexisting.difference(gone_ids).cloned().collect();
    let mut assigned: BTreeSet<String> = g.assigned.difference(gone_ids).cloned().collect();
    let wanted: BTreeSet<AssignmentTarget> = pools
        .iter()
        .cloned()
        .chain(recorded(&assigned))
        .filter(|t| !gone_ids.contains(&target_id(t)))
        .collect();
    for t in wanted {
        let Some(state) = current.get(&t) else {
            unread.insert(t);
            continue;
        };
        let id = target_id(&t);
        if state.user_assigned.contains(rid) {
            if !preexisting.contains(&id) && !assigned.contains(&id) {
                preexisting.insert(id);
            }
        } else {
            preexisting.remove(&id);
            assigned.insert(id);
            plan.writes.entry(t).or_default().add.push(rid.to_owned());
        }
    }
    let mut recorded_all = true;
    for i in &g.live {
        let finalizers = (!has_finalizer(i)).then(|| {
            let mut f = i.finalizers().to_vec();
            f.push(MANAGED_IDENTITY_FINALIZER.to_owned());
            f
        });
        if finalizers.is_none()
            && preexisting_targets(i) == preexisting
            && assigned_targets(i) == assigned
        {
            continue;
        }
        recorded_all = false;
        plan.records.push(Record {
            key: key_of(i),
            resource_id: rid.to_owned(),
            resource_version: i.resource_version(),
            finalizers,
            preexisting: preexisting.clone(),
            assigned: assigned.clone(),
        });
    }
    if recorded_all {
        for i in &g.leaving {
            plan.release.push(Gated {
                item: release(i),
                after: Vec::new(),
            });
        }
    }
}

/// The recorded target ids that parse, normalized.
fn recorded(ids: &BTreeSet<String>) -> impl Iterator<Item = AssignmentTarget> + '_ {
    ids.iter()
        .filter_map(|id| AssignmentTarget::from_arm_id(id))
        .map(|t| normalize(&t))
}

fn release(i: &AzureIdentity) -> Release {
    Release {
        key: key_of(i),
        resource_version: i.resource_version(),
        finalizers: i
            .finalizers()
            .iter()
            .filter(|f| *f != MANAGED_IDENTITY_FINALIZER)
            .cloned()
            .collect(),
    }
}

/// What the pass's decisions depend on from the cluster: the node pools found from nodes and
/// each managed AzureIdentity's version. A pass whose inputs did not change since the last
/// complete one reads nothing (the periodic full pass always does).
pub fn fingerprint(identities: &[AzureIdentity], nodes: &[NodeInfo]) -> String {
    let groups = groups(identities);
    let mut out: Vec<String> = groups
        .values()
        .flat_map(|g| g.live.iter().chain(&g.leaving))
        .map(|i| {
            format!(
                "{}/{}@{}",
                i.namespace().unwrap_or_default(),
                i.name_any(),
                i.resource_version().unwrap_or_default()
            )
        })
        .collect();
    out.sort();
    let pools: BTreeSet<String> = node_targets(nodes).map(|t| target_id(&t)).collect();
    out.extend(pools);
    out.join("\n")
}
