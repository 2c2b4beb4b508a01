//! The controller's decisions on the original e2e scenarios, without a cluster: a small simulator
//! applies each plan to an in-memory cluster and ARM, the way the controller's I/O edge does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::ObjectMeta;
use podid_azure::IdentityState;
use podid_crds::policy::PodFacts;
use podid_crds::provider::{AssignmentTarget, NodeResource};
use podid_crds::*;
use podid_operator::planner::*;
use podid_testkit::builders;
use pretty_assertions::assert_eq;

const SUB: &str = "sub";
const RG: &str = "MC_rg";

fn rid(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn lrid(name: &str) -> String {
    rid(name).to_ascii_lowercase()
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        resource_version: Some("1".into()),
        ..builders::meta(ns, name)
    }
}

fn msi(ns: &str, name: &str) -> AzureIdentity {
    AzureIdentity {
        metadata: meta(ns, name),
        spec: AzureIdentitySpec {
            resource_id: rid(name),
            client_id: format!("client-{name}"),
            ..Default::default()
        },
        status: None,
    }
}

fn sp(ns: &str, name: &str) -> AzureIdentity {
    AzureIdentity {
        metadata: meta(ns, name),
        spec: AzureIdentitySpec {
            type_: IdentityType::ServicePrincipal,
            client_id: format!("client-{name}"),
            tenant_id: "tenant".into(),
            ..Default::default()
        },
        status: None,
    }
}

fn binding(ns: &str, name: &str, identity: &str, selector: &str) -> AzureIdentityBinding {
    AzureIdentityBinding {
        metadata: meta(ns, name),
        ..builders::binding(ns, name, identity, selector)
    }
}

fn pod(ns: &str, name: &str, selector: &str, node: &str) -> PodInfo {
    PodInfo {
        facts: PodFacts {
            namespace: ns.into(),
            name: name.into(),
            labels: [(POD_LABEL.to_string(), selector.to_string())].into(),
            node_name: node.into(),
        },
        terminated: false,
    }
}

/// Node `i` of scale set `pool`, named as AKS names them.
fn vmss_node(pool: &str, i: usize) -> NodeInfo {
    NodeInfo {
        name: format!("{pool}{i:06}"),
        provider_id: format!(
            "azure:///subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{pool}/virtualMachines/{i}"
        ),
    }
}

fn vm_node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        provider_id: format!(
            "azure:///subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}"
        ),
    }
}

fn target_of(node: &NodeInfo) -> AssignmentTarget {
    NodeResource::parse(&node.provider_id).unwrap().target()
}

/// A cluster and ARM in memory; `pass` plans and applies like the controller.
#[derive(Default)]
struct Sim {
    pods: Vec<PodInfo>,
    nodes: Vec<NodeInfo>,
    identities: Vec<AzureIdentity>,
    bindings: Vec<AzureIdentityBinding>,
    aais: BTreeMap<(String, String), AzureAssignedIdentity>,
    arm: BTreeMap<AssignmentTarget, IdentityState>,
    options: PlannerOptions,
    /// Targets whose next writes fail (after applying `partial` additions).
    failing: BTreeSet<AssignmentTarget>,
    /// With a failing write, how many of its additions still land (a split PATCH that failed half way).
    partial: usize,
    /// Every record the next passes post fails (the API server gone for a moment).
    failing_creates: bool,
    /// Counters of the last pass.
    reads: usize,
    writes: usize,
}

impl Sim {
    fn add_node(&mut self, n: NodeInfo) {
        self.arm.entry(target_of(&n)).or_default();
        self.nodes.push(n);
    }

    fn pass(&mut self) -> Plan {
        self.pass_with(false)
    }

    fn pass_with(&mut self, full: bool) -> Plan {
        let assigned: Vec<_> = self.aais.values().cloned().map(Arc::new).collect();
        let index =
            podid_crds::index::IdentityIndex::from_objects(&self.bindings, &self.identities, []);
        let world = World {
            pods: &self.pods,
            nodes: &self.nodes,
            index: &index,
            assigned: &assigned,
        };
        let planner = AssignmentPlanner::new(self.options.clone());
        let targets = planner.targets(world, full);
        let current: BTreeMap<_, _> = targets
            .iter()
            .map(|t| (t.clone(), self.arm.get(t).cloned().unwrap_or_default()))
            .collect();
        self.reads = current.len();
        let plan = planner.plan(world, &current);
        self.apply(&plan);
        plan
    }

    fn apply(&mut self, plan: &Plan) {
        let before: Vec<Arc<AzureAssignedIdentity>> =
            self.aais.values().cloned().map(Arc::new).collect();
        let mut failed = BTreeSet::new();
        for c in &plan.create {
            let key = (c.item.namespace().unwrap(), c.item.name_any());
            assert!(!self.aais.contains_key(&key), "create of existing {key:?}");
            if self.failing_creates {
                failed.insert(ObjectKey {
                    namespace: key.0,
                    name: key.1,
                });
                continue;
            }
            self.aais.insert(key, c.item.clone());
        }
        self.writes = 0;
        let mut ok = BTreeSet::new();
        // As the controller: only writes whose records exist.
        for (t, w) in &plan.writes_backed(&failed, &before) {
            self.writes += 1;
            let state = self.arm.entry(t.clone()).or_default();
            if self.failing.contains(t) {
                for a in w.add.iter().take(self.partial) {
                    state.user_assigned.insert(a.clone());
                }
                continue;
            }
            for a in &w.add {
                state.user_assigned.insert(a.clone());
            }
            for r in &w.remove {
                state.user_assigned.remove(r);
            }
            ok.insert(t.clone());
        }
        let passed = |after: &[AssignmentTarget]| after.iter().all(|t| ok.contains(t));
        for m in &plan.mark_assigned {
            if passed(&m.after) {
                let a = self
                    .aais
                    .get_mut(&(m.item.namespace.clone(), m.item.name.clone()))
                    .expect("mark of a missing object");
                a.status.get_or_insert_with(Default::default).status =
                    AssignedIdentityState::Assigned;
            }
        }
        for u in &plan.update {
            if passed(&u.after) {
                let key = (u.item.namespace().unwrap(), u.item.name_any());
                assert!(self.aais.contains_key(&key), "update of missing {key:?}");
                self.aais.insert(key, u.item.clone());
            }
        }
        for d in &plan.delete {
            if passed(&d.after) {
                self.aais
                    .remove(&(d.item.namespace.clone(), d.item.name.clone()))
                    .expect("delete of a missing object");
            }
        }
    }

    fn on(&self, t: &AssignmentTarget) -> Vec<String> {
        self.arm[t].user_assigned.iter().cloned().collect()
    }

    fn states(&self) -> Vec<(String, AssignedIdentityState)> {
        self.aais
            .iter()
            .map(|((ns, n), a)| (format!("{ns}/{n}"), a.state()))
            .collect()
    }

    fn aai(&self, ns: &str, name: &str) -> &AzureAssignedIdentity {
        &self.aais[&(ns.to_string(), name.to_string())]
    }
}

use kube::ResourceExt;

fn assigned(keys: &[&str]) -> Vec<(String, AssignedIdentityState)> {
    keys.iter()
        .map(|k| (k.to_string(), AssignedIdentityState::Assigned))
        .collect()
}

fn one_pool(nodes: usize) -> (Sim, AssignmentTarget) {
    let mut sim = Sim::default();
    for i in 0..nodes {
        sim.add_node(vmss_node("aks-np-vmss", i));
    }
    let t = target_of(&sim.nodes[0]);
    (sim, t)
}

#[test]
fn single_pod_single_identity_is_created_then_assigned_after_one_write() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "web", "sel", "aks-np-vmss000000"));

    let plan = sim.pass();
    assert_eq!(plan.create.len(), 1);
    let created = &plan.create[0].item;
    assert_eq!(created.name_any(), "web-app-id1");
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert_eq!(
        created.state(),
        AssignedIdentityState::Created,
        "posted before the write"
    );
    assert_eq!(created.finalizers(), [ASSIGNED_IDENTITY_FINALIZER]);
    assert_eq!(created.labels()[NODENAME_LABEL], "aks-np-vmss000000");
    assert_eq!(created.spec.pod, "web");
    assert_eq!(created.spec.pod_namespace, "app");
    assert_eq!(created.spec.node_name, "aks-np-vmss000000");
    assert_eq!(
        created
            .spec
            .azure_identity_ref
            .as_ref()
            .unwrap()
            .spec
            .client_id,
        "client-id1"
    );
    assert_eq!(
        created
            .spec
            .azure_binding_ref
            .as_ref()
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("b1")
    );
    assert_eq!(created.status.as_ref().unwrap().available_replicas, Some(1));
    assert_eq!(created.annotations()[TARGET_ANNOTATION], t.arm_id());
    assert!(!created.annotations().contains_key(PREEXISTING_ANNOTATION));
    assert_eq!(
        plan.writes[&t],
        TargetWrite {
            add: vec![lrid("id1")],
            remove: vec![]
        }
    );
    assert_eq!(sim.writes, 1);
    assert_eq!(sim.states(), assigned(&["default/web-app-id1"]));
    assert_eq!(sim.on(&t), [lrid("id1")]);

    // Settled: the next event-driven pass reads and writes nothing.
    let plan = sim.pass();
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!((sim.reads, sim.writes), (0, 0));
}

#[test]
fn several_pods_one_identity_one_delta_per_scale_set() {
    let (mut sim, t) = one_pool(3);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    for i in 0..3 {
        sim.pods.push(pod(
            "app",
            &format!("web-{i}"),
            "sel",
            &format!("aks-np-vmss{i:06}"),
        ));
    }
    let plan = sim.pass();
    assert_eq!(plan.create.len(), 3);
    assert_eq!(plan.writes.len(), 1, "one delta for the whole scale set");
    assert_eq!(plan.writes[&t].add, [lrid("id1")], "added once");
    assert_eq!(sim.states().len(), 3);
    assert!(
        sim.states()
            .iter()
            .all(|(_, s)| *s == AssignedIdentityState::Assigned)
    );

    // One pod goes: its record goes, the identity stays (others on the scale set need it),
    // without reading the scale set (the original makes no ARM call either).
    sim.pods.remove(0);
    let plan = sim.pass();
    assert!(plan.writes.is_empty());
    assert_eq!(plan.delete.len(), 1);
    assert!(plan.delete[0].after.is_empty());
    assert_eq!((sim.reads, sim.writes), (0, 0));
    assert_eq!(sim.aais.len(), 2);
    assert_eq!(sim.on(&t), [lrid("id1")]);
}

#[test]
fn one_pod_several_identities_through_one_selector() {
    let (mut sim, t) = one_pool(1);
    sim.identities
        .extend([msi("app", "id1"), msi("app", "id2")]);
    sim.bindings.extend([
        binding("app", "b1", "id1", "sel"),
        binding("app", "b2", "id2", "sel"),
    ]);
    sim.pods.push(pod("app", "web", "sel", "aks-np-vmss000000"));
    let plan = sim.pass();
    assert_eq!(plan.writes[&t].add, [lrid("id1"), lrid("id2")]);
    assert_eq!(
        sim.states(),
        assigned(&["default/web-app-id1", "default/web-app-id2"])
    );
}

#[test]
fn deleting_the_binding_or_the_identity_unassigns() {
    for delete_binding in [true, false] {
        let (mut sim, t) = one_pool(1);
        sim.identities.push(msi("app", "id1"));
        sim.bindings.push(binding("app", "b1", "id1", "sel"));
        sim.pods.push(pod("app", "web", "sel", "aks-np-vmss000000"));
        sim.pass();
        if delete_binding {
            sim.bindings.clear();
        } else {
            sim.identities.clear();
        }
        let plan = sim.pass();
        assert_eq!(plan.writes[&t].remove, [lrid("id1")]);
        assert_eq!(
            plan.delete,
            vec![Gated {
                item: ObjectKey {
                    namespace: "default".into(),
                    name: "web-app-id1".into()
                },
                after: vec![t.clone()],
            }],
            "marked Unassigned and deleted after the removal"
        );
        assert!(sim.aais.is_empty());
        assert!(sim.on(&t).is_empty());
    }
}

#[test]
fn pod_deleted_removes_its_record_and_the_identity() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "web", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.pods.clear();
    sim.pass();
    assert!(sim.aais.is_empty());
    assert!(sim.on(&t).is_empty());
    assert_eq!(sim.writes, 1);
}

#[test]
fn finished_pods_release_their_identity() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "job", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.pods[0].terminated = true;
    sim.pass();
    assert!(sim.aais.is_empty());
    assert!(sim.on(&t).is_empty());
}

#[test]
fn pod_moved_to_another_scale_set_is_updated_and_the_old_one_cleaned() {
    let mut sim = Sim::default();
    sim.add_node(vmss_node("pool-a", 0));
    sim.add_node(vmss_node("pool-b", 0));
    let (a, b) = (target_of(&sim.nodes[0]), target_of(&sim.nodes[1]));
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "db-0", "sel", "pool-a000000"));
    sim.pass();
    let before = sim.aai("default", "db-0-app-id1").clone();

    // The StatefulSet pod comes back under the same name on another pool.
    sim.pods[0].facts.node_name = "pool-b000000".into();
    let plan = sim.pass();
    assert_eq!(plan.writes[&a].remove, [lrid("id1")]);
    assert_eq!(plan.writes[&b].add, [lrid("id1")]);
    assert_eq!(plan.update.len(), 1);
    assert_eq!(plan.update[0].after, [b.clone(), a.clone()]);
    let after = sim.aai("default", "db-0-app-id1");
    assert_eq!(after.spec.node_name, "pool-b000000");
    assert_eq!(after.labels()[NODENAME_LABEL], "pool-b000000");
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.state(), AssignedIdentityState::Assigned);
    assert!(sim.on(&a).is_empty());
    assert_eq!(sim.on(&b), [lrid("id1")]);
}

#[test]
fn pod_moved_within_a_scale_set_needs_no_write() {
    let (mut sim, t) = one_pool(2);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods
        .push(pod("app", "db-0", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.pods[0].facts.node_name = "aks-np-vmss000001".into();
    let plan = sim.pass();
    assert!(plan.writes.is_empty());
    assert_eq!(plan.update.len(), 1);
    assert!(plan.update[0].after.is_empty());
    assert_eq!(
        sim.aai("default", "db-0-app-id1").spec.node_name,
        "aks-np-vmss000001"
    );
    assert_eq!(sim.on(&t), [lrid("id1")]);
}

#[test]
fn node_deleted_records_go_and_the_identity_leaves_the_scale_set() {
    let (mut sim, t) = one_pool(2);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pods.push(pod("app", "b", "sel", "aks-np-vmss000001"));
    sim.pass();

    // Node 1 disappears; its pod object lingers until garbage-collected.
    sim.nodes.remove(1);
    let plan = sim.pass();
    assert!(plan.skipped.contains(&Skip::NodeMissing {
        pod: "app/b".into(),
        node: "aks-np-vmss000001".into()
    }));
    assert!(plan.writes.is_empty(), "node 0 still needs it");
    assert_eq!(sim.aais.len(), 1);

    // The last node goes too: the record remembers the scale set, so the identity is removed.
    sim.nodes.clear();
    sim.pass();
    assert!(sim.aais.is_empty());
    assert!(sim.on(&t).is_empty());
}

#[test]
fn records_of_the_original_mic_on_a_deleted_node_are_deleted_without_arm() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    // Written by the original MIC: no target annotation.
    for a in sim.aais.values_mut() {
        a.metadata.annotations = None;
    }
    sim.nodes.clear();
    let plan = sim.pass();
    assert!(plan.writes.is_empty());
    assert_eq!(plan.delete.len(), 1);
    assert!(sim.aais.is_empty());
    assert_eq!(sim.on(&t), [lrid("id1")], "unknown target: left alone");
}

#[test]
fn preassigned_identity_is_used_but_never_removed() {
    let (mut sim, t) = one_pool(1);
    sim.arm
        .get_mut(&t)
        .unwrap()
        .user_assigned
        .insert(lrid("kubelet"));
    sim.identities.push(msi("app", "kubelet"));
    sim.bindings.push(binding("app", "b1", "kubelet", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    let plan = sim.pass();
    assert!(plan.writes.is_empty(), "already there");
    assert_eq!(plan.create[0].item.state(), AssignedIdentityState::Assigned);
    assert_eq!(
        plan.create[0].item.annotations()[PREEXISTING_ANNOTATION],
        "true"
    );
    // A second pod arriving later inherits the mark.
    sim.pods.push(pod("app", "b", "sel", "aks-np-vmss000000"));
    sim.pass();
    assert_eq!(
        sim.aai("default", "b-app-kubelet").annotations()[PREEXISTING_ANNOTATION],
        "true"
    );
    sim.pods.clear();
    sim.pass();
    assert!(sim.aais.is_empty());
    assert_eq!(sim.on(&t), [lrid("kubelet")]);
}

#[test]
fn foreign_identities_and_the_system_assigned_one_are_untouched() {
    let (mut sim, t) = one_pool(1);
    {
        let s = sim.arm.get_mut(&t).unwrap();
        s.system_assigned = true;
        s.user_assigned.insert(lrid("cluster-identity"));
    }
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.pods.clear();
    let plan = sim.pass();
    assert_eq!(plan.writes[&t].remove, [lrid("id1")]);
    assert_eq!(sim.on(&t), [lrid("cluster-identity")]);
    assert!(sim.arm[&t].system_assigned);
}

#[test]
fn immutable_identities_are_added_but_never_removed() {
    for by_client_id in [true, false] {
        let (mut sim, t) = one_pool(1);
        sim.options.immutable = [if by_client_id {
            "CLIENT-ID1".to_ascii_lowercase()
        } else {
            lrid("id1")
        }]
        .into();
        sim.identities.push(msi("app", "id1"));
        sim.bindings.push(binding("app", "b1", "id1", "sel"));
        sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
        sim.pass();
        assert_eq!(sim.on(&t), [lrid("id1")]);
        sim.pods.clear();
        let plan = sim.pass();
        assert!(plan.writes.is_empty());
        assert!(sim.aais.is_empty());
        assert_eq!(sim.on(&t), [lrid("id1")]);
    }
}

#[test]
fn service_principals_get_records_and_no_arm_change() {
    let (mut sim, _) = one_pool(1);
    sim.identities.push(sp("app", "sp1"));
    sim.bindings.push(binding("app", "b1", "sp1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    let plan = sim.pass();
    assert!(plan.writes.is_empty());
    assert_eq!(sim.reads, 0, "no ARM read either");
    assert_eq!(sim.states(), assigned(&["default/a-app-sp1"]));
    assert!(
        !sim.aai("default", "a-app-sp1")
            .annotations()
            .contains_key(TARGET_ANNOTATION)
    );
    sim.pods.clear();
    let plan = sim.pass();
    assert!(plan.writes.is_empty());
    assert!(sim.aais.is_empty());
}

#[test]
fn same_identity_name_in_two_namespaces() {
    let (mut sim, t) = one_pool(1);
    sim.identities.extend([msi("ns1", "id"), msi("ns2", "id")]);
    // Resource IDs must differ for the test to say something.
    sim.identities[1].spec.resource_id = rid("id-ns2");
    sim.bindings.extend([
        binding("ns1", "b", "id", "sel1"),
        binding("ns2", "b", "id", "sel2"),
    ]);
    sim.pods.push(pod("ns1", "a", "sel1", "aks-np-vmss000000"));
    sim.pods.push(pod("ns2", "a", "sel2", "aks-np-vmss000000"));
    sim.pass();
    assert_eq!(
        sim.states(),
        assigned(&["default/a-ns1-id", "default/a-ns2-id"])
    );
    let ref_ns = |n: &str| {
        sim.aai("default", n)
            .spec
            .azure_identity_ref
            .as_ref()
            .unwrap()
            .metadata
            .namespace
            .clone()
    };
    assert_eq!(ref_ns("a-ns1-id").as_deref(), Some("ns1"));
    assert_eq!(ref_ns("a-ns2-id").as_deref(), Some("ns2"));
    assert_eq!(sim.on(&t), [lrid("id"), lrid("id-ns2")]);
}

#[test]
fn namespaced_identities_put_records_in_their_namespace() {
    let (mut sim, _) = one_pool(1);
    sim.options.force_namespaced = true;
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pods.push(pod("other", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    assert_eq!(sim.states(), assigned(&["app/a-app-id1"]));
}

#[test]
fn scale_zero_to_many_to_zero() {
    let (mut sim, t) = one_pool(3);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    assert!(sim.pass().is_empty());
    for i in 0..40 {
        sim.pods.push(pod(
            "app",
            &format!("web-{i}"),
            "sel",
            &format!("aks-np-vmss{:06}", i % 3),
        ));
    }
    let plan = sim.pass();
    assert_eq!(plan.create.len(), 40);
    assert_eq!((sim.reads, sim.writes), (1, 1));
    assert_eq!(sim.aais.len(), 40);
    sim.pods.truncate(1);
    let plan = sim.pass();
    assert_eq!(plan.delete.len(), 39);
    assert!(plan.writes.is_empty());
    sim.pods.clear();
    sim.pass();
    assert_eq!(sim.writes, 1);
    assert!(sim.aais.is_empty());
    assert!(sim.on(&t).is_empty());
}

#[test]
fn a_failed_write_leaves_records_created_and_the_next_pass_repairs() {
    let (mut sim, t) = one_pool(1);
    for n in ["id1", "id2"] {
        sim.identities.push(msi("app", n));
        sim.bindings
            .push(binding("app", &format!("b-{n}"), n, "sel"));
    }
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    // The write fails after the first identity landed (a split PATCH failing half way).
    sim.failing.insert(t.clone());
    sim.partial = 1;
    sim.pass();
    assert_eq!(
        sim.states(),
        vec![
            ("default/a-app-id1".into(), AssignedIdentityState::Created),
            ("default/a-app-id2".into(), AssignedIdentityState::Created),
        ]
    );
    assert_eq!(sim.on(&t), [lrid("id1")]);

    sim.failing.clear();
    let plan = sim.pass();
    assert_eq!(plan.writes[&t].add, [lrid("id2")], "only what is missing");
    assert!(plan.create.is_empty(), "no second create");
    assert_eq!(
        sim.states(),
        assigned(&["default/a-app-id1", "default/a-app-id2"])
    );
}

#[test]
fn a_failed_removal_keeps_the_record_for_a_retry() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.pods.clear();
    sim.failing.insert(t.clone());
    sim.pass();
    assert_eq!(
        sim.aais.len(),
        1,
        "kept: it is the only record of the assignment"
    );
    sim.failing.clear();
    sim.pass();
    assert!(sim.aais.is_empty());
    assert!(sim.on(&t).is_empty());
}

#[test]
fn a_created_record_whose_pod_left_still_undoes_its_identity() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    // The write landed but the controller never marked the record (it died).
    sim.failing.insert(t.clone());
    sim.partial = 1;
    sim.pass();
    sim.failing.clear();
    sim.pods.clear();
    let plan = sim.pass();
    assert_eq!(plan.writes[&t].remove, [lrid("id1")]);
    assert!(sim.on(&t).is_empty());
}

#[test]
fn a_write_whose_record_could_not_be_posted_is_not_made() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    // The record's POST fails: the identity is not added without it (had it been, the next
    // pass would find it there with no record and count it as there before podid).
    sim.failing_creates = true;
    let plan = sim.pass();
    assert_eq!(plan.writes[&t].add, [lrid("id1")], "planned");
    assert!(sim.on(&t).is_empty(), "not written without its record");
    sim.failing_creates = false;
    sim.pass();
    assert_eq!(sim.on(&t), [lrid("id1")]);
    // podid's own: it leaves with its pod.
    sim.pods.clear();
    sim.pass();
    assert!(sim.on(&t).is_empty(), "{:?}", sim.on(&t));
    assert!(sim.aais.is_empty());
}

#[test]
fn unreadable_targets_wait_for_the_next_pass() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    let assigned: Vec<Arc<AzureAssignedIdentity>> = Vec::new();
    let index = podid_crds::index::IdentityIndex::from_objects(&sim.bindings, &sim.identities, []);
    let world = World {
        pods: &sim.pods,
        nodes: &sim.nodes,
        index: &index,
        assigned: &assigned,
    };
    let plan = AssignmentPlanner::default().plan(world, &BTreeMap::new());
    assert!(plan.is_empty());
    assert_eq!(plan.skipped, [Skip::TargetUnread { target: t }]);
}

#[test]
fn identities_removed_behind_our_back_are_readded_by_the_full_pass() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.arm.get_mut(&t).unwrap().user_assigned.clear();
    assert!(
        sim.pass().is_empty(),
        "an event pass does not read settled targets"
    );
    let plan = sim.pass_with(true);
    assert_eq!(plan.writes[&t].add, [lrid("id1")]);
    assert!(plan.mark_assigned.is_empty(), "the record stays Assigned");
    assert_eq!(sim.on(&t), [lrid("id1")]);
}

#[test]
fn editing_the_identity_updates_records_and_swaps_the_arm_assignment() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.identities[0].spec.resource_id = rid("id1-new");
    sim.identities[0].spec.client_id = "client-new".into();
    let plan = sim.pass();
    assert_eq!(
        plan.writes[&t],
        TargetWrite {
            add: vec![lrid("id1-new")],
            remove: vec![lrid("id1")]
        }
    );
    let a = sim.aai("default", "a-app-id1");
    assert_eq!(
        a.spec.azure_identity_ref.as_ref().unwrap().spec.client_id,
        "client-new"
    );
    assert_eq!(a.state(), AssignedIdentityState::Assigned);
    assert_eq!(sim.on(&t), [lrid("id1-new")]);
}

#[test]
fn metadata_only_edits_rewrite_nothing() {
    let (mut sim, _) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.identities[0].metadata.resource_version = Some("2".into());
    sim.identities[0].metadata.labels = Some([("team".to_string(), "x".to_string())].into());
    sim.bindings[0].metadata.resource_version = Some("7".into());
    assert!(sim.pass().is_empty());
}

#[test]
fn availability_set_vms_are_assigned_per_vm() {
    let mut sim = Sim::default();
    sim.add_node(vm_node("aks-agent-0"));
    sim.add_node(vm_node("aks-agent-1"));
    let (v0, v1) = (target_of(&sim.nodes[0]), target_of(&sim.nodes[1]));
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-agent-0"));
    sim.pods.push(pod("app", "b", "sel", "aks-agent-1"));
    let plan = sim.pass();
    assert_eq!(plan.writes.len(), 2);
    sim.pods.remove(0);
    sim.pass();
    assert!(sim.on(&v0).is_empty());
    assert_eq!(sim.on(&v1), [lrid("id1")]);
}

#[test]
fn nodes_without_provider_id_use_the_fallback_scope_or_are_skipped() {
    let mut sim = Sim::default();
    sim.nodes.push(NodeInfo {
        name: "agent-0".into(),
        provider_id: String::new(),
    });
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "agent-0"));
    let plan = sim.pass();
    assert!(plan.is_empty());
    assert_eq!(
        plan.skipped,
        [Skip::NoTarget {
            node: "agent-0".into()
        }]
    );

    sim.options.fallback_scope = Some(("sub".into(), "rg".into()));
    let plan = sim.pass();
    let t = plan.writes.keys().next().unwrap().clone();
    assert_eq!(
        t.arm_id(),
        "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/agent-0"
    );
}

#[test]
fn a_record_deleted_by_hand_is_released_and_recreated() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "a", "sel", "aks-np-vmss000000"));
    sim.pass();
    sim.aais
        .values_mut()
        .next()
        .unwrap()
        .metadata
        .deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let plan = sim.pass();
    assert!(
        plan.writes.is_empty(),
        "still needed: stays on the scale set"
    );
    assert_eq!(plan.delete.len(), 1, "finalizer released");
    assert!(sim.aais.is_empty());
    sim.pass();
    assert_eq!(sim.states(), assigned(&["default/a-app-id1"]));
    assert_eq!(sim.on(&t), [lrid("id1")]);
}

#[test]
fn removal_waits_until_no_node_of_the_scale_set_needs_it() {
    let (mut sim, t) = one_pool(2);
    sim.identities
        .extend([msi("app", "id1"), msi("app", "id2")]);
    sim.bindings.extend([
        binding("app", "b1", "id1", "one"),
        binding("app", "b2", "id2", "two"),
    ]);
    sim.pods.push(pod("app", "a", "one", "aks-np-vmss000000"));
    sim.pods.push(pod("app", "b", "one", "aks-np-vmss000001"));
    sim.pods.push(pod("app", "c", "two", "aks-np-vmss000001"));
    sim.pass();
    sim.pods.retain(|p| p.facts.name == "a");
    let plan = sim.pass();
    assert_eq!(plan.writes[&t].remove, [lrid("id2")]);
    assert_eq!(sim.on(&t), [lrid("id1")]);
}

fn serve(b: &mut AzureIdentityBinding, serving: &str) {
    b.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SERVING_ANNOTATION.into(), serving.into());
}

fn federated_on() -> PlannerOptions {
    PlannerOptions {
        serving: podid_crds::serving::ServingSettings {
            federated: true,
            default: podid_crds::serving::Serving::Assigned,
        },
        ..Default::default()
    }
}

fn serving_of(a: &AzureAssignedIdentity) -> &str {
    &a.annotations()[SERVING_ANNOTATION]
}

#[test]
fn a_federated_identity_is_recorded_assigned_without_any_arm_call() {
    let (mut sim, t) = one_pool(1);
    sim.options = federated_on();
    sim.identities.push(msi("app", "id1"));
    let mut b = binding("app", "b1", "id1", "sel");
    serve(&mut b, "federated");
    sim.bindings.push(b);
    sim.pods.push(pod("app", "web", "sel", "aks-np-vmss000000"));
    let plan = sim.pass();
    assert_eq!((sim.reads, sim.writes), (0, 0), "{plan:?}");
    assert_eq!(sim.states(), assigned(&["default/web-app-id1"]));
    let rec = sim.aai("default", "web-app-id1");
    assert_eq!(serving_of(rec), "federated");
    assert!(!rec.annotations().contains_key(TARGET_ANNOTATION));
    assert!(sim.on(&t).is_empty());
    assert!(sim.pass().is_empty());
    // The pod goes: its record goes, still without ARM.
    sim.pods.clear();
    sim.pass();
    assert!(sim.aais.is_empty());
    assert_eq!((sim.reads, sim.writes), (0, 0));
}

#[test]
fn without_the_switch_a_federated_binding_is_assigned() {
    let (mut sim, t) = one_pool(1);
    sim.identities.push(msi("app", "id1"));
    let mut b = binding("app", "b1", "id1", "sel");
    serve(&mut b, "federated");
    sim.bindings.push(b);
    sim.pods.push(pod("app", "web", "sel", "aks-np-vmss000000"));
    sim.pass();
    assert_eq!(sim.on(&t), [lrid("id1")]);
    assert_eq!(serving_of(sim.aai("default", "web-app-id1")), "assigned");
}

#[test]
fn flips_between_assigned_and_federated_in_the_safe_order() {
    let (mut sim, t) = one_pool(1);
    sim.options = federated_on();
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "b1", "id1", "sel"));
    sim.pods.push(pod("app", "web", "sel", "aks-np-vmss000000"));
    sim.pass();
    assert_eq!(sim.on(&t), [lrid("id1")]);
    let key = "web-app-id1";
    assert_eq!(serving_of(sim.aai("default", key)), "assigned");

    // assigned -> federated: the record says so first, the identity stays this pass ...
    serve(&mut sim.bindings[0], "federated");
    let plan = sim.pass();
    assert!(plan.writes.is_empty(), "{plan:?}");
    assert_eq!(serving_of(sim.aai("default", key)), "federated");
    assert_eq!(sim.on(&t), [lrid("id1")]);
    // ... and goes on the next, after which the record forgets it.
    let plan = sim.pass();
    assert_eq!(plan.writes[&t].remove, [lrid("id1")]);
    assert!(sim.on(&t).is_empty());
    assert!(
        !sim.aai("default", key)
            .annotations()
            .contains_key(TARGET_ANNOTATION)
    );
    assert!(sim.pass().is_empty());
    assert_eq!(sim.states(), assigned(&["default/web-app-id1"]));

    // federated -> assigned: the record says `assigned` only once the write succeeded.
    serve(&mut sim.bindings[0], "assigned");
    sim.failing.insert(t.clone());
    sim.pass();
    assert_eq!(serving_of(sim.aai("default", key)), "federated");
    sim.failing.clear();
    sim.pass();
    assert_eq!(sim.on(&t), [lrid("id1")]);
    assert_eq!(serving_of(sim.aai("default", key)), "assigned");
    assert_eq!(
        sim.aai("default", key).annotations()[TARGET_ANNOTATION],
        t.arm_id()
    );
    assert!(sim.pass().is_empty());
}

#[test]
fn a_flip_keeps_what_another_pod_needs_and_never_removes_a_preexisting_assignment() {
    let (mut sim, t) = one_pool(2);
    sim.options = federated_on();
    sim.arm
        .get_mut(&t)
        .unwrap()
        .user_assigned
        .insert(lrid("kubelet"));
    sim.identities.push(msi("app", "kubelet"));
    sim.identities.push(msi("app", "id1"));
    sim.bindings.push(binding("app", "bk", "kubelet", "k"));
    sim.bindings.push(binding("app", "b1", "id1", "a"));
    sim.bindings.push(binding("other", "b2", "id1", "b"));
    sim.identities.push(msi("other", "id1"));
    sim.pods.push(pod("app", "k", "k", "aks-np-vmss000000"));
    sim.pods.push(pod("app", "a", "a", "aks-np-vmss000000"));
    sim.pods.push(pod("app", "b", "b", "aks-np-vmss000001"));
    sim.pass();
    assert_eq!(sim.on(&t), [lrid("id1"), lrid("kubelet")]);
    // The pre-existing one flips: never removed.
    serve(&mut sim.bindings[0], "federated");
    // One of two pods on id1 flips: pod b still needs it on the scale set.
    serve(&mut sim.bindings[1], "federated");
    for _ in 0..3 {
        sim.pass();
    }
    assert_eq!(sim.on(&t), [lrid("id1"), lrid("kubelet")]);
    assert_eq!(serving_of(sim.aai("default", "a-app-id1")), "federated");
    // The other flips too: podid's own assignment goes; the pre-existing one stays.
    serve(&mut sim.bindings[2], "federated");
    for _ in 0..3 {
        sim.pass();
    }
    assert_eq!(sim.on(&t), [lrid("kubelet")]);
    assert!(sim.pass().is_empty());
    sim.pods.clear();
    sim.pass();
    assert!(sim.aais.is_empty());
    assert_eq!(sim.on(&t), [lrid("kubelet")]);
}

#[test]
fn a_trimmed_pod_reads_as_the_same_pod_to_the_planner_and_keeps_nothing_else() {
    use k8s_openapi::api::core::v1::Pod;
    for phase in ["Running", "Succeeded", "Failed"] {
        let full: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                "labels": {POD_LABEL: "web", "app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4096)},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "s1", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "nodeName": "aks-np-vmss000003",
                "serviceAccountName": "web",
                "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "b"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {
                "phase": phase, "podIP": "10.0.0.5",
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap();
        let mut trimmed = full.clone();
        trim_pod(&mut trimmed);
        assert_eq!(PodInfo::from(&trimmed), PodInfo::from(&full), "{phase}");
        assert_eq!(PodInfo::from(&trimmed).terminated, phase != "Running");
        let spec = trimmed.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty() && spec.volumes.is_none());
        assert!(trimmed.metadata.annotations.is_none());
        assert!(trimmed.metadata.managed_fields.is_none());
        assert!(trimmed.status.as_ref().unwrap().conditions.is_none());
        let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
        assert!(
            size(&trimmed) * 10 < size(&full),
            "{} of {} bytes kept",
            size(&trimmed),
            size(&full)
        );
    }
}
