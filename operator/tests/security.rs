//! Attacks on the controller, one test each, named after the attack.
//!
//! AzureAssignedIdentity names: the original names a record `<pod>-<podns>-<identity>`, so pod
//! `api` in `team-a-prod` with identity `kv` and pod `api` in `team-a` with identity `prod-kv`
//! want the same record. The original keeps one of them in hash-map order: the other pod loses
//! its identity, and the winner can change between passes. podid gives colliding records
//! distinct names, recognises an existing record by the pod and identity in its spec, and never
//! rewrites one pod's record for another.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::ObjectMeta;
use podid_azure::IdentityState;
use podid_crds::policy::{PodFacts, is_dns_subdomain};
use podid_crds::provider::{AssignmentTarget, NodeResource};
use podid_crds::*;
use podid_operator::planner::*;
use pretty_assertions::assert_eq;

const SUB: &str = "sub";

fn rid(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        resource_version: Some("1".into()),
        ..Default::default()
    }
}

/// A pod, its own user-assigned identity (named `identity`, in the pod's namespace, with its
/// own Azure resource) and the binding that grants it to the pod alone.
struct Tenant {
    pod: PodInfo,
    identity: AzureIdentity,
    binding: AzureIdentityBinding,
}

fn tenant(ns: &str, pod: &str, identity: &str, node: &str) -> Tenant {
    let selector = format!("{ns}.{pod}.{identity}");
    Tenant {
        pod: PodInfo {
            facts: PodFacts {
                namespace: ns.into(),
                name: pod.into(),
                labels: [(POD_LABEL.to_string(), selector.clone())].into(),
                node_name: node.into(),
            },
            terminated: false,
        },
        identity: AzureIdentity {
            metadata: meta(ns, identity),
            spec: AzureIdentitySpec {
                resource_id: rid(&format!("{ns}--{identity}")),
                client_id: format!("client-{ns}--{identity}"),
                ..Default::default()
            },
            status: None,
        },
        binding: AzureIdentityBinding {
            metadata: meta(ns, identity),
            spec: AzureIdentityBindingSpec {
                azure_identity: identity.into(),
                selector,
                ..Default::default()
            },
            status: None,
        },
    }
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "aks-np-12345678-vmss000000".into(),
        provider_id: format!(
            "azure:///subscriptions/{SUB}/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-np-12345678-vmss/virtualMachines/0"
        ),
    }
}

/// Four pods whose records the original names `api-team-a-prod-kv`.
fn colliding() -> Vec<Tenant> {
    let n = node().name;
    vec![
        tenant("team-a-prod", "api", "kv", &n),
        tenant("team-a", "api", "prod-kv", &n),
        tenant("a-prod", "api-team", "kv", &n),
        tenant("team", "api", "a-prod-kv", &n),
    ]
}

/// The cluster and ARM in memory; a pass plans and applies every step as the controller's
/// I/O edge does (all writes succeed).
#[derive(Default)]
struct Sim {
    tenants: Vec<Tenant>,
    records: BTreeMap<(String, String), AzureAssignedIdentity>,
    arm: BTreeMap<AssignmentTarget, IdentityState>,
}

impl Sim {
    fn new(tenants: Vec<Tenant>) -> Self {
        let mut arm = BTreeMap::new();
        arm.insert(
            NodeResource::parse(&node().provider_id).unwrap().target(),
            IdentityState::default(),
        );
        Self {
            tenants,
            records: BTreeMap::new(),
            arm,
        }
    }

    /// One pass, every input list given to the planner in the order `order` makes of it.
    fn pass(&mut self, order: &mut impl FnMut(usize) -> Vec<usize>) -> Plan {
        let pick = |v: Vec<usize>, n: usize| {
            assert_eq!(v.len(), n);
            v
        };
        let t = self.tenants.len();
        let pods: Vec<PodInfo> = pick(order(t), t)
            .into_iter()
            .map(|i| self.tenants[i].pod.clone())
            .collect();
        let identities: Vec<AzureIdentity> = pick(order(t), t)
            .into_iter()
            .map(|i| self.tenants[i].identity.clone())
            .collect();
        let bindings: Vec<AzureIdentityBinding> = pick(order(t), t)
            .into_iter()
            .map(|i| self.tenants[i].binding.clone())
            .collect();
        let all: Vec<AzureAssignedIdentity> = self.records.values().cloned().collect();
        let assigned: Vec<Arc<AzureAssignedIdentity>> = pick(order(all.len()), all.len())
            .into_iter()
            .map(|i| Arc::new(all[i].clone()))
            .collect();
        let nodes = [node()];
        let index = podid_crds::index::IdentityIndex::from_objects(&bindings, &identities, []);
        let world = World {
            pods: &pods,
            nodes: &nodes,
            index: &index,
            assigned: &assigned,
        };
        let planner = AssignmentPlanner::new(PlannerOptions::default());
        let current: BTreeMap<_, _> = planner
            .targets(world, false)
            .into_iter()
            .map(|t| {
                let s = self.arm.get(&t).cloned().unwrap_or_default();
                (t, s)
            })
            .collect();
        let plan = planner.plan(world, &current);
        self.apply(&plan);
        plan
    }

    fn apply(&mut self, plan: &Plan) {
        let key = |a: &AzureAssignedIdentity| (a.namespace().unwrap(), a.name_any());
        for c in &plan.create {
            let k = key(&c.item);
            assert!(!self.records.contains_key(&k), "create of existing {k:?}");
            self.records.insert(k, c.item.clone());
        }
        for (t, w) in &plan.writes {
            let state = self.arm.entry(t.clone()).or_default();
            state.user_assigned.extend(w.add.iter().cloned());
            for r in &w.remove {
                state.user_assigned.remove(r);
            }
        }
        for m in &plan.mark_assigned {
            let a = self
                .records
                .get_mut(&(m.item.namespace.clone(), m.item.name.clone()))
                .expect("mark of a missing record");
            a.status.get_or_insert_with(Default::default).status = AssignedIdentityState::Assigned;
        }
        for u in &plan.update {
            let k = key(&u.item);
            assert!(self.records.contains_key(&k), "update of missing {k:?}");
            self.records.insert(k, u.item.clone());
        }
        for d in &plan.delete {
            self.records
                .remove(&(d.item.namespace.clone(), d.item.name.clone()))
                .expect("delete of a missing record");
        }
    }

    /// Passes until one plans nothing (at most 5).
    fn settle(&mut self, order: &mut impl FnMut(usize) -> Vec<usize>) {
        for _ in 0..5 {
            if self.pass(order).is_empty() {
                return;
            }
        }
        panic!("no quiet pass after 5: {:?}", self.records.keys());
    }

    /// What the node agent finds for a tenant's pod: the records whose spec names the pod, as
    /// both the original NMI and podid-nmi look them up. Checks they hold only identities bound
    /// to this pod, exactly one of them the tenant's, `Assigned`; returns that record's name.
    fn served(&self, t: &Tenant) -> String {
        let facts = &t.pod.facts;
        let bound: BTreeSet<&str> = self
            .tenants
            .iter()
            .filter(|o| o.pod.facts.namespace == facts.namespace && o.pod.facts.name == facts.name)
            .map(|o| o.identity.spec.resource_id.as_str())
            .collect();
        let of_pod: Vec<_> = self
            .records
            .values()
            .filter(|a| a.spec.pod_namespace == facts.namespace && a.spec.pod == facts.name)
            .collect();
        let id = |a: &AzureAssignedIdentity| {
            a.spec
                .azure_identity_ref
                .as_ref()
                .map(|i| i.spec.resource_id.clone())
                .unwrap_or_default()
        };
        for a in &of_pod {
            assert!(
                bound.contains(id(a).as_str()),
                "{}/{} is served {} through {}",
                facts.namespace,
                facts.name,
                id(a),
                a.name_any()
            );
        }
        let found: Vec<_> = of_pod
            .iter()
            .filter(|a| id(a) == t.identity.spec.resource_id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}/{} has exactly one record of {}; records: {:?}",
            facts.namespace,
            facts.name,
            t.identity.name_any(),
            self.records.keys()
        );
        assert_eq!(found[0].state(), AssignedIdentityState::Assigned);
        found[0].name_any()
    }
}

/// Records compared as the API server stores them.
fn json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// A deterministic shuffle per call (xorshift), standing in for the watch caches' hash-map order.
fn shuffler(seed: u64) -> impl FnMut(usize) -> Vec<usize> {
    let mut x = seed | 1;
    move |n| {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        v
    }
}

#[test]
fn colliding_record_names_do_not_take_another_pods_identity() {
    let mut first: Option<Vec<String>> = None;
    for perm in podid_testkit::builders::permutations(&[0usize, 1, 2, 3]) {
        // The pods come in this order; the other lists as they are.
        let mut order = |n: usize| {
            if n == perm.len() {
                perm.clone()
            } else {
                (0..n).collect()
            }
        };
        let mut sim = Sim::new(colliding());
        sim.settle(&mut order);
        let names: Vec<String> = sim.tenants.iter().map(|t| sim.served(t)).collect();
        assert_eq!(
            names.iter().collect::<BTreeSet<_>>().len(),
            4,
            "every pod its own record: {names:?}"
        );
        for n in &names {
            assert!(is_dns_subdomain(n), "{n} is a valid object name");
        }
        let target = NodeResource::parse(&node().provider_id).unwrap().target();
        assert_eq!(
            sim.arm[&target].user_assigned.len(),
            4,
            "the scale set carries the four identities"
        );
        match &first {
            None => first = Some(names.clone()),
            Some(f) => assert_eq!(&names, f, "the same names whatever the order of the pods"),
        }

        // Many more passes, every list in another order each time: nothing changes.
        let before = json(&sim.records.values().collect::<Vec<_>>());
        let mut shuffled = shuffler(perm.iter().fold(7, |h, i| h * 31 + *i as u64));
        for pass in 0..30 {
            let plan = sim.pass(&mut shuffled);
            assert!(
                plan.is_empty(),
                "pass {pass} of order {perm:?} changes something: {:?} {:?} {:?}",
                plan.create
                    .iter()
                    .map(|c| c.item.name_any())
                    .collect::<Vec<_>>(),
                plan.update
                    .iter()
                    .map(|c| c.item.name_any())
                    .collect::<Vec<_>>(),
                plan.delete
            );
        }
        assert_eq!(json(&sim.records.values().collect::<Vec<_>>()), before);
    }
}

#[test]
fn a_pod_with_a_colliding_name_does_not_take_over_an_existing_record() {
    let mut tenants = colliding();
    let late = tenants.split_off(1);
    let mut sim = Sim::new(tenants);
    let mut natural = |n: usize| (0..n).collect::<Vec<_>>();
    sim.settle(&mut natural);
    // Alone, the pod's record has the original's name: the original's components read it.
    assert_eq!(sim.served(&sim.tenants[0]), "api-team-a-prod-kv");
    let held = sim.records.clone();

    // The colliding pods arrive, listed before the holder.
    sim.tenants.splice(0..0, late);
    let mut holder_last = |n: usize| (0..n).collect::<Vec<_>>();
    for pass in 0..5 {
        let plan = sim.pass(&mut holder_last);
        let key = ("default".to_string(), "api-team-a-prod-kv".to_string());
        assert_eq!(
            json(&sim.records.get(&key)),
            json(&held.get(&key)),
            "pass {pass}: the existing record is left to its pod"
        );
        if plan.is_empty() {
            break;
        }
    }
    let names: BTreeSet<String> = sim.tenants.iter().map(|t| sim.served(t)).collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn a_record_of_a_gone_pod_is_not_rewritten_for_a_colliding_pod() {
    let mut tenants = colliding();
    tenants.truncate(2);
    let newcomer = tenants.pop().unwrap();
    let mut sim = Sim::new(tenants);
    let mut natural = |n: usize| (0..n).collect::<Vec<_>>();
    sim.settle(&mut natural);
    assert_eq!(sim.served(&sim.tenants[0]), "api-team-a-prod-kv");

    // The holder goes and the colliding pod comes in the same pass: the old record is deleted,
    // not rewritten to name the other pod (a node agent would serve it for the new pod while the
    // old record's identity is being removed).
    sim.tenants = vec![newcomer];
    let plan = sim.pass(&mut natural);
    assert!(
        plan.update.is_empty(),
        "no record changes hands: {:?}",
        plan.update
            .iter()
            .map(|u| u.item.name_any())
            .collect::<Vec<_>>()
    );
    sim.settle(&mut natural);
    let name = sim.served(&sim.tenants[0]);
    assert_ne!(name, "api-team-a-prod-kv");
    assert_eq!(sim.records.len(), 1);
}

#[test]
fn overlong_record_names_still_get_a_valid_record() {
    // The original's name would exceed 253 characters: the API server refuses it and the
    // original never serves such a pod.
    let pod = format!("batch-{}", "x".repeat(244));
    assert!(format!("{pod}-team-a-kv").len() > 253);
    let n = node().name;
    let mut sim = Sim::new(vec![
        tenant("team-a", &pod, "kv", &n),
        tenant("team-a", &pod, "storage", &n),
    ]);
    let mut natural = |k: usize| (0..k).collect::<Vec<_>>();
    sim.settle(&mut natural);
    let names: BTreeSet<String> = sim.tenants.iter().map(|t| sim.served(t)).collect();
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(
            is_dns_subdomain(name),
            "{name} ({} chars) is a valid object name",
            name.len()
        );
    }
}

/// On the real API server with the Azure emulator: two pods whose original record names
/// collide, and one whose original name is too long, each get a record; the node agent's own
/// lookup (by `spec.pod`/`spec.podNamespace`, on its node's records) finds each pod's own
/// identity; a later pass leaves the records as they are.
#[tokio::test]
async fn colliding_record_names_on_the_api_server_serve_each_pod_its_own_identity() {
    use common::*;
    use kube::api::{Api, ListParams};
    use podid_azure_emulator::{Emulator, Settings};
    use podid_nmi::view::ClusterView;
    use podid_testkit::{Cluster, NodePool};

    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    // `<a>` and `<a>-<hex>`: pod `api` of `<a>` with identity `<hex>-kv` and pod `api` of
    // `<a>-<hex>` with identity `kv` both have the original name `api-<a>-<hex>-kv`.
    let a = cluster.namespace("sec-names").await;
    let b = cluster.namespace(&a.name).await;
    let hex = b.name.strip_prefix(&format!("{}-", a.name)).unwrap();
    let c = a.client.clone();
    let pool = NodePool::aks("secnames", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let long_pod = format!("batch-{}", "x".repeat(240));
    let tenants = [
        (a.name.clone(), "api".to_string(), format!("{hex}-kv")),
        (b.name.clone(), "api".to_string(), "kv".to_string()),
        (a.name.clone(), long_pod.clone(), "long".to_string()),
    ];
    let mut ids = Vec::new();
    for (i, (ns, pod_name, id_name)) in tenants.iter().enumerate() {
        let azure = emu.add_identity("rg", &format!("sec-names-{i}"));
        identity(&c, ns, id_name, 0, &azure.id, &azure.client_id).await;
        let selector = format!("sec-names-{i}");
        binding(&c, ns, id_name, id_name, &selector).await;
        pod(&c, ns, pod_name, &node, &selector).await;
        ids.push(azure.id);
    }
    assert_eq!(
        format!("{}-{}-{}", tenants[0].1, tenants[0].0, tenants[0].2),
        format!("{}-{}-{}", tenants[1].1, tenants[1].0, tenants[1].2),
        "the original names collide"
    );
    let replica = start(&c, &emu, "r1", &a.name, Duration::from_secs(15)).await;

    // The node agent's view of the node, as podid-nmi builds it.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent =
        podid_nmi::cluster::KubeView::start(c.clone(), &node, true, false, shutdown.clone())
            .await
            .expect("agent view");
    let served = |ns: &str, pod_name: &str| -> Vec<(String, String, bool)> {
        agent
            .assigned_identities(ns, pod_name)
            .iter()
            .map(|r| {
                (
                    r.name_any(),
                    r.spec
                        .azure_identity_ref
                        .as_ref()
                        .map(|i| i.spec.resource_id.to_ascii_lowercase())
                        .unwrap_or_default(),
                    r.state() == AssignedIdentityState::Assigned,
                )
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let names: Vec<String> = loop {
        let now: Vec<_> = tenants
            .iter()
            .map(|(ns, pod_name, _)| served(ns, pod_name))
            .collect();
        let ok = now.iter().zip(&ids).all(|(found, id)| {
            found.len() == 1 && found[0].1 == id.to_ascii_lowercase() && found[0].2
        });
        if ok {
            break now.iter().map(|f| f[0].0.clone()).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 60s the agent finds {now:?} for the pods, wanted one Assigned record each \
             with its own identity {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 3, "{names:?}");
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_machine(&emu, &vmss, &want, 30).await;

    // Another pass (a new pod and its record) leaves the three records untouched.
    let records: Api<AzureAssignedIdentity> = Api::all(c.clone());
    let versions = |list: Vec<AzureAssignedIdentity>| -> BTreeMap<String, Option<String>> {
        list.into_iter()
            .filter(|r| names.contains(&r.name_any()))
            .map(|r| (r.name_any(), r.metadata.resource_version.clone()))
            .collect()
    };
    let before = versions(records.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(before.len(), 3);
    let extra = emu.add_identity("rg", "sec-names-extra");
    identity(&c, &a.name, "extra", 0, &extra.id, &extra.client_id).await;
    binding(&c, &a.name, "extra", "extra", "sec-names-extra").await;
    pod(&c, &a.name, "extra", &node, "sec-names-extra").await;
    // The records of `<a>`'s pods: its colliding pod, the long-named one and the new one.
    let of_a = [
        names[0].clone(),
        names[2].clone(),
        format!("extra-{}-extra", a.name),
    ];
    wait_assigned(&c, &a.name, &of_a, 60).await;
    let after = versions(records.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(
        after, before,
        "the colliding pods' records were not rewritten"
    );

    shutdown.cancel();
    replica.stop().await;
}
