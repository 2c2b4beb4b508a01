//! Managed mode's decisions without a cluster: a small simulator applies each plan to in-memory
//! AzureIdentities and ARM the way the I/O edge does (records, then writes, then releases), and
//! the tests check where identities end up.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use podid_azure::IdentityState;
use podid_crds::managed::{assigned_targets, format_targets, has_finalizer, preexisting_targets};
use podid_crds::provider::AssignmentTarget;
use podid_crds::*;
use podid_operator::managed::*;
use podid_operator::planner::{NodeInfo, Skip, TargetWrite};
use pretty_assertions::assert_eq;

const SUB: &str = "sub";
const RG: &str = "MC_rg";

fn rid(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn lrid(name: &str) -> String {
    rid(name).to_ascii_lowercase()
}

fn pool(name: &str) -> AssignmentTarget {
    normalize(&AssignmentTarget {
        subscription: SUB.into(),
        resource_group: RG.into(),
        name: format!("aks-{name}-vmss"),
        is_scale_set: true,
    })
}

fn node(pool_name: &str, i: usize) -> NodeInfo {
    NodeInfo {
        name: format!("aks-{pool_name}-vmss{i:06}"),
        provider_id: format!(
            "azure:///subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/aks-{pool_name}-vmss/virtualMachines/{i}"
        ),
    }
}

fn managed(ns: &str, name: &str, identity: &str) -> AzureIdentity {
    AzureIdentity {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            resource_version: Some("1".into()),
            annotations: Some(BTreeMap::from([(
                MANAGED_IDENTITY_ANNOTATION.to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        },
        spec: AzureIdentitySpec {
            resource_id: rid(identity),
            client_id: format!("client-{identity}"),
            ..Default::default()
        },
        status: None,
    }
}

fn unmanaged(ns: &str, name: &str, identity: &str) -> AzureIdentity {
    let mut i = managed(ns, name, identity);
    i.metadata.annotations = None;
    i
}

/// The cluster's AzureIdentities, its nodes, and ARM: the identities on each target and the
/// scale sets ARM lists.
#[derive(Default)]
struct Sim {
    identities: Vec<AzureIdentity>,
    nodes: Vec<NodeInfo>,
    arm: BTreeMap<AssignmentTarget, BTreeSet<String>>,
    listed: BTreeSet<AssignmentTarget>,
    /// Targets whose writes fail.
    failing: BTreeSet<AssignmentTarget>,
    /// Targets that cannot be read.
    unreadable: BTreeSet<AssignmentTarget>,
    /// AzureIdentities whose record writes fail.
    record_fails: BTreeSet<String>,
    options: ManagedOptions,
}

impl Sim {
    fn planner(&self) -> ManagedPlanner {
        ManagedPlanner::new(self.options.clone())
    }

    fn plan(&self) -> ManagedPlan {
        let world = ManagedWorld {
            identities: &self.identities,
            nodes: &self.nodes,
            listed: &self.listed,
        };
        let planner = self.planner();
        let mut current = BTreeMap::new();
        let mut gone = BTreeSet::new();
        for t in planner.targets(world) {
            if self.unreadable.contains(&t) {
                continue;
            }
            match self.arm.get(&t) {
                Some(ids) => {
                    current.insert(
                        t,
                        IdentityState {
                            user_assigned: ids.clone(),
                            ..Default::default()
                        },
                    );
                }
                None => {
                    current.insert(t.clone(), IdentityState::default());
                    gone.insert(t);
                }
            }
        }
        planner.plan(world, &current, &gone)
    }

    /// One pass, applied as the I/O edge applies it; returns the plan.
    fn pass(&mut self) -> ManagedPlan {
        let mut plan = self.plan();
        let mut failed = BTreeSet::new();
        for r in &plan.records {
            if self.record_fails.contains(&r.key.name) {
                failed.insert(r.resource_id.clone());
                continue;
            }
            let i = self.find(&r.key.namespace, &r.key.name);
            let a = i.metadata.annotations.get_or_insert_default();
            for (k, v) in [
                (PREEXISTING_TARGETS_ANNOTATION, &r.preexisting),
                (ASSIGNED_TARGETS_ANNOTATION, &r.assigned),
            ] {
                if v.is_empty() {
                    a.remove(k);
                } else {
                    a.insert(k.to_owned(), format_targets(v));
                }
            }
            if let Some(f) = &r.finalizers {
                i.metadata.finalizers = Some(f.clone());
            }
        }
        let applied = plan.clone();
        plan.drop_adds_of(&failed);
        let mut ok = BTreeSet::new();
        for (t, w) in &plan.writes {
            if self.failing.contains(t) {
                continue;
            }
            let ids = self.arm.get_mut(t).expect("write to an existing target");
            ids.extend(w.add.iter().cloned());
            for r in &w.remove {
                ids.remove(r);
            }
            ok.insert(t.clone());
        }
        for g in &plan.release {
            if g.after.iter().all(|t| ok.contains(t)) {
                let i = self.find(&g.item.key.namespace, &g.item.key.name);
                i.metadata.finalizers = Some(g.item.finalizers.clone());
            }
        }
        // The API server removes a deleted object once its finalizers are gone.
        self.identities
            .retain(|i| i.metadata.deletion_timestamp.is_none() || !i.finalizers().is_empty());
        applied
    }

    /// Passes until one has nothing to do (at most 5).
    fn settle(&mut self) {
        for _ in 0..5 {
            if self.pass().is_empty() {
                return;
            }
        }
        panic!("no fixed point: {:?}", self.plan());
    }

    fn find(&mut self, ns: &str, name: &str) -> &mut AzureIdentity {
        self.identities
            .iter_mut()
            .find(|i| {
                i.metadata.namespace.as_deref() == Some(ns)
                    && i.metadata.name.as_deref() == Some(name)
            })
            .expect("identity exists")
    }

    fn delete(&mut self, ns: &str, name: &str) {
        let i = self.find(ns, name);
        if i.finalizers().is_empty() {
            self.identities.retain(|i| {
                i.metadata.namespace.as_deref() != Some(ns)
                    || i.metadata.name.as_deref() != Some(name)
            });
        } else {
            i.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
    }

    fn carries(&self, t: &AssignmentTarget, identity: &str) -> bool {
        self.arm
            .get(t)
            .is_some_and(|ids| ids.contains(&lrid(identity)))
    }

    fn exists(&self, ns: &str, name: &str) -> bool {
        self.identities.iter().any(|i| {
            i.metadata.namespace.as_deref() == Some(ns) && i.metadata.name.as_deref() == Some(name)
        })
    }
}

use kube::ResourceExt;

/// Two node pools with a node each, both in ARM.
fn two_pools() -> Sim {
    let mut sim = Sim {
        nodes: vec![node("one", 0), node("two", 0)],
        ..Default::default()
    };
    sim.arm.insert(pool("one"), BTreeSet::new());
    sim.arm.insert(pool("two"), BTreeSet::new());
    sim
}

#[test]
fn a_managed_identity_goes_on_every_node_pool_once_recorded_and_held() {
    let mut sim = two_pools();
    sim.identities.push(managed("a", "payments", "payments"));
    let plan = sim.plan();
    // The record (finalizer and both pools) is written before the one write per pool.
    assert_eq!(plan.records.len(), 1);
    assert_eq!(
        plan.records[0].assigned,
        BTreeSet::from([
            pool("one").arm_id().to_ascii_lowercase(),
            pool("two").arm_id().to_ascii_lowercase()
        ])
    );
    assert_eq!(
        plan.writes,
        BTreeMap::from([
            (
                pool("one"),
                TargetWrite {
                    add: vec![lrid("payments")],
                    remove: vec![]
                }
            ),
            (
                pool("two"),
                TargetWrite {
                    add: vec![lrid("payments")],
                    remove: vec![]
                }
            ),
        ])
    );
    sim.settle();
    assert!(sim.carries(&pool("one"), "payments") && sim.carries(&pool("two"), "payments"));
    let i = sim.find("a", "payments").clone();
    assert!(has_finalizer(&i));
    assert_eq!(assigned_targets(&i).len(), 2);
    assert!(preexisting_targets(&i).is_empty());
    // Steady state: nothing to do.
    assert!(sim.plan().is_empty());
    // An identity `podid identity add` did not create is left alone.
    sim.identities.push(unmanaged("a", "other", "other"));
    assert!(sim.plan().is_empty());
}

#[test]
fn node_pools_added_later_listed_at_zero_or_spelled_otherwise_get_it() {
    let mut sim = two_pools();
    sim.identities.push(managed("a", "payments", "payments"));
    sim.settle();
    // A third pool with a node.
    sim.arm.insert(pool("three"), BTreeSet::new());
    sim.nodes.push(node("three", 0));
    sim.settle();
    assert!(sim.carries(&pool("three"), "payments"));
    // A fourth pool with no node, only in ARM's list (added at zero); listed with ARM's case.
    sim.arm.insert(pool("four"), BTreeSet::new());
    sim.listed.insert(AssignmentTarget {
        subscription: SUB.into(),
        resource_group: "MC_RG".into(),
        name: "AKS-four-VMSS".into(),
        is_scale_set: true,
    });
    sim.settle();
    assert!(sim.carries(&pool("four"), "payments"));
    assert_eq!(
        sim.arm.len(),
        4,
        "one target per pool, whatever the spelling"
    );
    // Pool three scales to zero and is no longer listed (listing off): what podid gave it is
    // remembered, so it is re-added if removed and taken off at deletion.
    sim.nodes.retain(|n| !n.name.contains("three"));
    sim.arm.get_mut(&pool("three")).unwrap().clear();
    sim.settle();
    assert!(sim.carries(&pool("three"), "payments"), "re-added");
    sim.delete("a", "payments");
    sim.settle();
    assert!(!sim.exists("a", "payments"));
    for p in ["one", "two", "three", "four"] {
        assert!(!sim.carries(&pool(p), "payments"), "{p} still carries it");
    }
}

#[test]
fn deletion_keeps_what_someone_else_put_there_and_immutable_identities() {
    let mut sim = two_pools();
    // Someone else put `payments` on pool two before podid looked.
    sim.arm
        .get_mut(&pool("two"))
        .unwrap()
        .insert(lrid("payments"));
    sim.identities.push(managed("a", "payments", "payments"));
    sim.identities.push(managed("a", "fixed", "fixed"));
    sim.options.immutable.insert("client-fixed".into());
    sim.settle();
    let i = sim.find("a", "payments").clone();
    assert_eq!(
        preexisting_targets(&i),
        BTreeSet::from([pool("two").arm_id().to_ascii_lowercase()])
    );
    assert_eq!(
        assigned_targets(&i),
        BTreeSet::from([pool("one").arm_id().to_ascii_lowercase()])
    );
    // A pool added later that already carries it: someone else's too.
    sim.arm
        .insert(pool("three"), BTreeSet::from([lrid("payments")]));
    sim.nodes.push(node("three", 0));
    sim.settle();
    assert_eq!(preexisting_targets(sim.find("a", "payments")).len(), 2);

    sim.delete("a", "payments");
    sim.delete("a", "fixed");
    sim.settle();
    assert!(!sim.exists("a", "payments") && !sim.exists("a", "fixed"));
    assert!(!sim.carries(&pool("one"), "payments"), "podid's own goes");
    assert!(
        sim.carries(&pool("two"), "payments"),
        "someone else's stays"
    );
    assert!(
        sim.carries(&pool("three"), "payments"),
        "someone else's stays"
    );
    assert!(
        sim.carries(&pool("one"), "fixed") && sim.carries(&pool("two"), "fixed"),
        "an immutable identity is never removed"
    );
}

#[test]
fn a_pre_existing_assignment_that_disappears_becomes_podids() {
    let mut sim = two_pools();
    sim.arm
        .get_mut(&pool("two"))
        .unwrap()
        .insert(lrid("payments"));
    sim.identities.push(managed("a", "payments", "payments"));
    sim.settle();
    sim.arm.get_mut(&pool("two")).unwrap().clear();
    sim.settle();
    assert!(sim.carries(&pool("two"), "payments"));
    let i = sim.find("a", "payments").clone();
    assert!(preexisting_targets(&i).is_empty());
    sim.delete("a", "payments");
    sim.settle();
    assert!(!sim.carries(&pool("two"), "payments"));
}

#[test]
fn one_azure_identity_in_two_namespaces_stays_until_the_last_goes() {
    let mut sim = two_pools();
    sim.identities.push(managed("a", "payments", "payments"));
    sim.identities.push(managed("b", "payments", "payments"));
    sim.settle();
    assert!(has_finalizer(sim.find("b", "payments")));
    sim.delete("a", "payments");
    sim.settle();
    assert!(!sim.exists("a", "payments"), "released at once");
    assert!(sim.carries(&pool("one"), "payments") && sim.carries(&pool("two"), "payments"));
    sim.delete("b", "payments");
    sim.settle();
    assert!(!sim.exists("b", "payments"));
    assert!(!sim.carries(&pool("one"), "payments") && !sim.carries(&pool("two"), "payments"));
}

#[test]
fn nothing_is_assigned_before_it_is_recorded_and_nothing_released_before_it_is_removed() {
    let mut sim = two_pools();
    sim.identities.push(managed("a", "payments", "payments"));
    sim.record_fails.insert("payments".into());
    sim.pass();
    assert!(
        !sim.carries(&pool("one"), "payments"),
        "its record failed: no write"
    );
    sim.record_fails.clear();
    sim.settle();
    assert!(sim.carries(&pool("one"), "payments"));

    // Deletion while pool one cannot be written, then cannot be read: held.
    sim.delete("a", "payments");
    sim.failing.insert(pool("one"));
    sim.pass();
    assert!(sim.exists("a", "payments"), "held while a removal failed");
    assert!(sim.carries(&pool("one"), "payments") && !sim.carries(&pool("two"), "payments"));
    sim.failing.clear();
    sim.unreadable.insert(pool("one"));
    let plan = sim.pass();
    assert!(plan.skipped.contains(&Skip::TargetUnread {
        target: pool("one")
    }));
    assert!(
        sim.exists("a", "payments"),
        "not released while a target is unread"
    );
    sim.unreadable.clear();
    sim.settle();
    assert!(!sim.exists("a", "payments"));
    assert!(!sim.carries(&pool("one"), "payments"));
}

#[test]
fn a_deleted_pool_is_forgotten() {
    let mut sim = two_pools();
    sim.identities.push(managed("a", "payments", "payments"));
    sim.settle();
    sim.nodes.retain(|n| !n.name.contains("two"));
    sim.arm.remove(&pool("two"));
    sim.settle();
    assert_eq!(
        assigned_targets(sim.find("a", "payments")),
        BTreeSet::from([pool("one").arm_id().to_ascii_lowercase()])
    );
    sim.delete("a", "payments");
    sim.settle();
    assert!(!sim.exists("a", "payments"));
}

#[test]
fn listing_scopes_and_fingerprint() {
    let nodes = vec![node("one", 0), node("one", 1), node("two", 0)];
    assert_eq!(
        listing_scopes(&nodes, Some(&("SUB".into(), "Other".into()))),
        BTreeSet::from([
            ("sub".to_owned(), "mc_rg".to_owned()),
            ("sub".to_owned(), "other".to_owned())
        ])
    );
    let ids = vec![managed("a", "payments", "payments")];
    let f = fingerprint(&ids, &nodes);
    assert_eq!(
        f,
        fingerprint(
            &ids,
            &nodes[..1]
                .iter()
                .chain(&nodes[2..])
                .cloned()
                .collect::<Vec<_>>()
        ),
        "a second node of a known pool changes nothing"
    );
    assert_ne!(f, fingerprint(&ids, &nodes[..2]), "a pool gone changes it");
    let mut changed = ids.clone();
    changed[0].metadata.resource_version = Some("2".into());
    assert_ne!(f, fingerprint(&changed, &nodes));
}
