//! End-to-end scenarios of the controller on the real API server (fake AKS nodes) and the Azure
//! emulator, as broad as the original project's e2e suite: what a user sees is asserted — the
//! AzureAssignedIdentities and their status, the scale sets' identities, ARM call counts, Events.

mod common;

use std::time::Duration;

use common::*;
use kube::api::{Api, DeleteParams, ListParams};
use podid_azure_emulator::{Emulator, Fault, Settings};
use podid_testkit::{Cluster, NodePool};

fn names(ns: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(pod, id)| format!("{pod}-{ns}-{id}"))
        .collect()
}

async fn emulator() -> Emulator {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    emu
}

/// Several pods and one identity; one pod with several identities through one selector; a
/// service principal; a pod, a binding and an identity deleted while pods run; identities on
/// the scale set before podid (the kubelet's, another tool's) are never removed, even when a
/// pod bound to one comes and goes.
#[tokio::test]
async fn pods_bindings_and_identities_come_and_go() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("sc-life").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("sclife", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let kubelet = emu.add_identity(&pool.resource_group, "kubelet");
    let foreign = emu.add_identity("rg", "other-tool");
    emu.preassign(&vmss, &kubelet.id);
    emu.preassign(&vmss, &foreign.id);
    let (one, two) = (emu.add_identity("rg", "one"), emu.add_identity("rg", "two"));
    identity(&c, &ns.name, "one", 0, &one.id, &one.client_id).await;
    identity(&c, &ns.name, "two", 0, &two.id, &two.client_id).await;
    identity(
        &c,
        &ns.name,
        "sp",
        1,
        "",
        "5e1f0000-0000-0000-0000-00000000abcd",
    )
    .await;
    binding(&c, &ns.name, "one", "one", "one").await;
    binding(&c, &ns.name, "multi-one", "one", "multi").await;
    binding(&c, &ns.name, "multi-two", "two", "multi").await;
    binding(&c, &ns.name, "sp", "sp", "sp").await;
    // A pod is also bound to the identity another tool put on the scale set.
    identity(&c, &ns.name, "other", 0, &foreign.id, &foreign.client_id).await;
    binding(&c, &ns.name, "other", "other", "other").await;
    for (p, sel) in [
        ("a", "one"),
        ("b", "one"),
        ("m", "multi"),
        ("s", "sp"),
        ("f", "other"),
    ] {
        pod(&c, &ns.name, p, &node, sel).await;
    }
    let replica = start(&c, &emu, "r1", &ns.name, Duration::from_secs(15)).await;

    let pre = [kubelet.id.as_str(), foreign.id.as_str()];
    wait_assigned(
        &c,
        &ns.name,
        &names(
            &ns.name,
            &[
                ("a", "one"),
                ("b", "one"),
                ("m", "one"),
                ("m", "two"),
                ("s", "sp"),
                ("f", "other"),
            ],
        ),
        60,
    )
    .await;
    wait_machine(&emu, &vmss, &[pre[0], pre[1], &one.id, &two.id], 10).await;
    let f = Api::<podid_crds::AzureAssignedIdentity>::namespaced(c.clone(), "default")
        .get(&format!("f-{}-other", ns.name))
        .await
        .unwrap();
    assert_eq!(
        f.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("podid.dev/preexisting-assignment"))
            .map(String::as_str),
        Some("true"),
        "the record says the identity was there before podid"
    );
    assert!(
        emu.call_count("PATCH vmss") <= 2,
        "one write for all that was there at start: {:?}",
        emu.calls()
    );
    let sp = Api::<podid_crds::AzureAssignedIdentity>::namespaced(c.clone(), "default")
        .get(&format!("s-{}-sp", ns.name))
        .await
        .unwrap();
    assert!(
        sp.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("podid.dev/assignment-target")),
        "a service principal is assigned nothing on Azure"
    );

    // One of the pods of `one` goes: `one` stays for the others. The pod bound to the other
    // tool's identity goes: that identity stays, it was not podid's to remove.
    let patches = emu.call_count("PATCH vmss");
    delete_pod(&c, &ns.name, "a").await;
    delete_pod(&c, &ns.name, "f").await;
    wait_assigned(
        &c,
        &ns.name,
        &names(
            &ns.name,
            &[("b", "one"), ("m", "one"), ("m", "two"), ("s", "sp")],
        ),
        60,
    )
    .await;
    assert_eq!(on_machine(&emu, &vmss).len(), 4);
    assert_eq!(emu.call_count("PATCH vmss"), patches, "nothing to write");

    // The binding that gives `m` identity `two` goes: its record and `two` on Azure go.
    Api::<podid_crds::AzureIdentityBinding>::namespaced(c.clone(), &ns.name)
        .delete("multi-two", &DeleteParams::default())
        .await
        .unwrap();
    wait_assigned(
        &c,
        &ns.name,
        &names(&ns.name, &[("b", "one"), ("m", "one"), ("s", "sp")]),
        60,
    )
    .await;
    wait_machine(&emu, &vmss, &[pre[0], pre[1], &one.id], 30).await;

    // The AzureIdentity `one` goes: every record of it and `one` on Azure go.
    Api::<podid_crds::AzureIdentity>::namespaced(c.clone(), &ns.name)
        .delete("one", &DeleteParams::default())
        .await
        .unwrap();
    wait_assigned(&c, &ns.name, &names(&ns.name, &[("s", "sp")]), 60).await;
    wait_machine(&emu, &vmss, &pre, 30).await;
    replica.stop().await;
}

/// Two identities with the same name in two namespaces go to their own pods; a pod that moves
/// to a node of another scale set takes its identity along; a deleted node's records go and
/// its scale set loses what no other node of it needs.
#[tokio::test]
async fn same_names_in_two_namespaces_pods_that_move_and_nodes_that_go() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let (n1, n2) = (
        cluster.namespace("sc-move-a").await,
        cluster.namespace("sc-move-b").await,
    );
    let c = n1.client.clone();
    let (pa, pb) = (NodePool::aks("scmovea", 1), NodePool::aks("scmoveb", 2));
    cluster.add_nodes(&pa).await.expect("fake nodes ready");
    let nodes_b = cluster.add_nodes(&pb).await.expect("fake nodes ready");
    let emu = emulator().await;
    let va = emu.add_scale_set(&pa.resource_group, &pa.scale_set, 1);
    let vb = emu.add_scale_set(&pb.resource_group, &pb.scale_set, 2);
    let (ia, ib) = (
        emu.add_identity("rg", "shared-a"),
        emu.add_identity("rg", "shared-b"),
    );
    // Same identity and binding names; each namespace's binding selects its own pods (without
    // --forceNamespaced a binding selects pods of every namespace, as in the original).
    for (ns, id, sel) in [(&n1.name, &ia, "app-a"), (&n2.name, &ib, "app-b")] {
        identity(&c, ns, "shared", 0, &id.id, &id.client_id).await;
        binding(&c, ns, "shared", "shared", sel).await;
    }
    pod(&c, &n1.name, "web", &pa.node_name(0), "app-a").await;
    pod(&c, &n2.name, "web", &pb.node_name(0), "app-b").await;
    let replica = start(&c, &emu, "r1", &n1.name, Duration::from_secs(15)).await;
    wait_assigned(&c, &n1.name, &names(&n1.name, &[("web", "shared")]), 60).await;
    wait_assigned(&c, &n2.name, &names(&n2.name, &[("web", "shared")]), 60).await;
    wait_machine(&emu, &va, &[&ia.id], 10).await;
    wait_machine(&emu, &vb, &[&ib.id], 10).await;

    // n1/web moves to scale set B.
    delete_pod(&c, &n1.name, "web").await;
    wait_assigned(&c, &n1.name, &[], 60).await;
    pod(&c, &n1.name, "web", &pb.node_name(1), "app-a").await;
    wait_assigned(&c, &n1.name, &names(&n1.name, &[("web", "shared")]), 60).await;
    wait_machine(&emu, &va, &[], 30).await;
    wait_machine(&emu, &vb, &[&ia.id, &ib.id], 30).await;

    // Node B0 goes (its pod n2/web with it, as far as identities go); B1 still needs `ia`.
    Api::<k8s_openapi::api::core::v1::Node>::all(c.clone())
        .delete(
            nodes_b[0].metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    wait_assigned(&c, &n2.name, &[], 60).await;
    wait_machine(&emu, &vb, &[&ia.id], 30).await;
    wait_assigned(&c, &n1.name, &names(&n1.name, &[("web", "shared")]), 10).await;
    replica.stop().await;
}

/// From 0 to 30 pods on two nodes in one burst: few ARM writes; back to 0 and up again with
/// 20 % of ARM calls failing (429 with Retry-After, 500, dropped connections): everything
/// converges, nothing is left behind, identities podid did not add stay (the kubelet's, and
/// another tool's that a third of the pods are bound to).
#[tokio::test]
async fn scale_up_and_down_with_a_fifth_of_arm_calls_failing() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("sc-scale").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("scscale", 2);
    cluster.add_nodes(&pool).await.expect("fake nodes ready");
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 2);
    let kubelet = emu.add_identity(&pool.resource_group, "kubelet");
    emu.preassign(&vmss, &kubelet.id);
    // Put there by another tool; one of the bound identities below uses it too.
    let foreign = emu.add_identity("rg", "other-tool");
    emu.preassign(&vmss, &foreign.id);
    let ids: Vec<_> = (0..2)
        .map(|i| emu.add_identity("rg", &format!("s{i}")))
        .chain([foreign.clone()])
        .collect();
    for (i, id) in ids.iter().enumerate() {
        identity(&c, &ns.name, &format!("s{i}"), 0, &id.id, &id.client_id).await;
        binding(
            &c,
            &ns.name,
            &format!("s{i}"),
            &format!("s{i}"),
            &format!("s{i}"),
        )
        .await;
    }
    let replica = start(&c, &emu, "r1", &ns.name, Duration::from_secs(15)).await;

    // Pods are created (and deleted) all at once, as a rollout's burst.
    let up = async |n: usize, prefix: &str| -> Vec<String> {
        let (names, sels): (Vec<String>, Vec<String>) = (0..n)
            .map(|i| (format!("{prefix}{i}"), format!("s{}", i % 3)))
            .unzip();
        let nodes: Vec<String> = (0..n).map(|i| pool.node_name(i % 2)).collect();
        futures::future::join_all(
            (0..n).map(|i| pod(&c, &ns.name, &names[i], &nodes[i], &sels[i])),
        )
        .await;
        (0..n)
            .map(|i| format!("{}-{}-{}", names[i], ns.name, sels[i]))
            .collect()
    };
    let down = async |n: usize, prefix: &str| {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        futures::future::join_all(names.iter().map(|p| delete_pod(&c, &ns.name, p))).await;
    };
    let all: Vec<&str> = std::iter::once(kubelet.id.as_str())
        .chain(ids.iter().map(|i| i.id.as_str()))
        .collect();
    let kept = [kubelet.id.as_str(), foreign.id.as_str()];

    let want = up(30, "p").await;
    wait_assigned(&c, &ns.name, &want, 90).await;
    wait_machine(&emu, &vmss, &all, 10).await;
    let patches = emu.call_count("PATCH vmss");
    assert!(
        patches <= 3,
        "30 pods at once, 3 identities, one scale set: {patches} PATCHes (one per pass)"
    );

    for (status, retry_after, drop) in [
        (Some(429), Some(1), false),
        (Some(500), None, false),
        (None, None, true),
    ] {
        for route in ["PATCH vmss", "GET vmss"] {
            emu.inject(Fault {
                route: route.into(),
                status,
                retry_after,
                drop,
                rate: Some(0.2 / 3.0),
                ..Default::default()
            });
        }
    }
    down(30, "p").await;
    wait_assigned(&c, &ns.name, &[], 120).await;
    wait_machine(&emu, &vmss, &kept, 60).await;
    let want = up(15, "q").await;
    wait_assigned(&c, &ns.name, &want, 120).await;
    wait_machine(&emu, &vmss, &all, 60).await;
    down(15, "q").await;
    wait_assigned(&c, &ns.name, &[], 120).await;
    wait_machine(&emu, &vmss, &kept, 60).await;
    emu.clear_faults();
    replica.stop().await;
}

/// The controller dies in the middle of a write (the PATCH hangs, the process goes) — twice:
/// once the write turns out to have reached Azure, once not. The next replica finishes both:
/// each identity on the scale set once, each record `Assigned`, nothing written twice; and the
/// identities leave with their pods (a landed write is podid's, not "pre-existing").
#[tokio::test]
async fn a_restart_in_the_middle_of_a_write_loses_and_leaks_nothing() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("sc-restart").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("screstart", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let (landed, lost) = (
        emu.add_identity("rg", "landed"),
        emu.add_identity("rg", "lost"),
    );
    for (name, id) in [("landed", &landed), ("lost", &lost)] {
        identity(&c, &ns.name, name, 0, &id.id, &id.client_id).await;
        binding(&c, &ns.name, name, name, name).await;
    }
    let hang = || Fault {
        route: "PATCH vmss".into(),
        latency_ms: Some(60_000),
        count: Some(1),
        ..Default::default()
    };
    let in_flight = async |n: u64| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while emu.call_count("PATCH vmss") < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no PATCH within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // Dies while adding `landed`; the write reached Azure after all.
    emu.inject(hang());
    let r1 = start(&c, &emu, "r1", &ns.name, Duration::from_secs(3)).await;
    pod(&c, &ns.name, "a", &pool.node_name(0), "landed").await;
    in_flight(1).await;
    r1.kill();
    emu.preassign(&vmss, &landed.id);
    let r2 = start(&c, &emu, "r2", &ns.name, Duration::from_secs(3)).await;
    wait_assigned(&c, &ns.name, &names(&ns.name, &[("a", "landed")]), 60).await;
    assert_eq!(emu.call_count("PATCH vmss"), 1, "nothing left to write");

    // Dies while adding `lost`; that write never reached Azure.
    emu.inject(hang());
    pod(&c, &ns.name, "b", &pool.node_name(0), "lost").await;
    in_flight(2).await;
    r2.kill();
    wait_machine(&emu, &vmss, &[&landed.id], 5).await;
    let r3 = start(&c, &emu, "r3", &ns.name, Duration::from_secs(3)).await;
    wait_assigned(
        &c,
        &ns.name,
        &names(&ns.name, &[("a", "landed"), ("b", "lost")]),
        60,
    )
    .await;
    wait_machine(&emu, &vmss, &[&landed.id, &lost.id], 10).await;

    delete_pod(&c, &ns.name, "a").await;
    delete_pod(&c, &ns.name, "b").await;
    wait_assigned(&c, &ns.name, &[], 60).await;
    wait_machine(&emu, &vmss, &[], 30).await;
    r3.stop().await;
}

/// Two replicas: one holds the Lease and writes, the other writes nothing; when the leader
/// dies the other takes over within the Lease's duration and converges what changed meanwhile.
#[tokio::test]
async fn two_replicas_one_writes_and_the_other_takes_over() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("sc-ha").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("scha", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let (i1, i2) = (
        emu.add_identity("rg", "ha-1"),
        emu.add_identity("rg", "ha-2"),
    );
    identity(&c, &ns.name, "ha-1", 0, &i1.id, &i1.client_id).await;
    identity(&c, &ns.name, "ha-2", 0, &i2.id, &i2.client_id).await;
    binding(&c, &ns.name, "ha-1", "ha-1", "ha-1").await;
    binding(&c, &ns.name, "ha-2", "ha-2", "ha-2").await;
    let lease = Duration::from_secs(4);
    let a = start(&c, &emu, "replica-a", &ns.name, lease).await;
    let b = start(&c, &emu, "replica-b", &ns.name, lease).await;
    pod(&c, &ns.name, "one", &pool.node_name(0), "ha-1").await;
    wait_assigned(&c, &ns.name, &names(&ns.name, &[("one", "ha-1")]), 60).await;
    wait_machine(&emu, &vmss, &[&i1.id], 10).await;

    let holder = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c.clone(), &ns.name)
        .get("podid-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder");
    let (leader, follower) = if holder == a.identity { (a, b) } else { (b, a) };
    let arm_calls = |r: &Replica| {
        r.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("podid_operator_arm_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(arm_calls(&leader) >= 2.0, "the leader read and wrote");
    assert_eq!(arm_calls(&follower), 0.0, "the follower called ARM");

    leader.kill();
    pod(&c, &ns.name, "two", &pool.node_name(0), "ha-2").await;
    wait_assigned(
        &c,
        &ns.name,
        &names(&ns.name, &[("one", "ha-1"), ("two", "ha-2")]),
        60,
    )
    .await;
    wait_machine(&emu, &vmss, &[&i1.id, &i2.id], 10).await;
    assert!(arm_calls(&follower) >= 1.0, "the new leader wrote");
    follower.stop().await;
}

/// A write Azure refuses (the controller may not assign this identity) leaves the record
/// `Created` and says why on the binding (as the original), the pod and the record.
#[tokio::test]
async fn a_refused_assignment_is_explained_in_events() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("sc-events").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("scevents", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator().await;
    emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let id = emu.add_identity("rg", "denied");
    emu.deny_assign(&id.id);
    identity(&c, &ns.name, "denied", 0, &id.id, &id.client_id).await;
    binding(&c, &ns.name, "denied", "denied", "denied").await;
    pod(&c, &ns.name, "app", &pool.node_name(0), "denied").await;
    let replica = start(&c, &emu, "r1", &ns.name, Duration::from_secs(15)).await;

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(c.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let found = loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        let about = |kind: &str, name: &str| {
            list.items.iter().find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                    })
            })
        };
        let record = format!("app-{}-denied", ns.name);
        if let (Some(b), Some(p), Some(r)) = (
            about("AzureIdentityBinding", "denied"),
            about("Pod", "app"),
            about("AzureAssignedIdentity", &record),
        ) {
            break [b.clone(), p.clone(), r.clone()];
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Warning events on the binding, pod and record within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(found[0].reason.as_deref(), Some("binding apply error"));
    for e in &found[1..] {
        assert_eq!(e.reason.as_deref(), Some("AssignmentFailed"));
    }
    for e in &found {
        let note = e.note.as_deref().unwrap_or_default();
        assert!(
            note.contains("LinkedAuthorizationFailed") || note.contains("403"),
            "the note says what Azure answered: {note}"
        );
    }
    let record = Api::<podid_crds::AzureAssignedIdentity>::namespaced(c.clone(), "default")
        .get(&format!("app-{}-denied", ns.name))
        .await
        .unwrap();
    assert_eq!(
        record.status.map(|s| s.status),
        Some(podid_crds::AssignedIdentityState::Created),
        "not Assigned while Azure refuses"
    );
    replica.stop().await;
}

/// While the original MIC holds its leader lock (the Endpoints `aad-pod-identity-mic` with a
/// fresh `control-plane.alpha.kubernetes.io/leader` record), podid-operator takes its own Lease
/// but writes nothing — no record, no ARM call; once the original is gone it converges.
#[tokio::test]
async fn nothing_is_written_while_the_original_mic_holds_its_lock() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("sc-lock").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("sclock", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let id = emu.add_identity("rg", "locked");
    identity(&c, &ns.name, "locked", 0, &id.id, &id.client_id).await;
    binding(&c, &ns.name, "locked", "locked", "locked").await;
    pod(&c, &ns.name, "app", &pool.node_name(0), "locked").await;

    // The original MIC, as it keeps its lock: renewed now, for 15 s.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let record = serde_json::json!({
        "holderIdentity": "mic-7d9f8c6b5-x2x7q", "leaseDurationSeconds": 15,
        "acquireTime": now, "renewTime": now, "leaderTransitions": 3
    });
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(c.clone(), &ns.name);
    endpoints
        .create(
            &kube::api::PostParams::default(),
            &obj(
                serde_json::json!({"metadata": {"name": "aad-pod-identity-mic", "annotations": {
                "control-plane.alpha.kubernetes.io/leader": record.to_string()}}}),
            ),
        )
        .await
        .unwrap();
    let replica = start_respecting(
        &c,
        &emu,
        "r1",
        &ns.name,
        Duration::from_secs(15),
        Some((ns.name.clone(), "aad-pod-identity-mic".into())),
    )
    .await;
    // It leads its own Lease...
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.clone(), &ns.name);
    podid_testkit::wait_for(
        leases,
        "podid-operator",
        30,
        |l: Option<&k8s_openapi::api::coordination::v1::Lease>| {
            l.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref()) == Some("r1")
        },
    )
    .await
    .expect("its Lease taken");
    // ...and over the next seconds writes nothing.
    let records: Api<podid_crds::AzureAssignedIdentity> = Api::namespaced(c.clone(), "default");
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            records
                .get_opt(&format!("app-{}-locked", ns.name))
                .await
                .unwrap()
                .is_none(),
            "a record was written while the original MIC leads"
        );
        assert!(
            emu.calls()
                .keys()
                .all(|k| k.starts_with("POST token") || !k.contains("vmss")),
            "ARM was called: {:?}",
            emu.calls()
        );
    }

    // The original MIC is scaled away (its lock goes): podid takes over.
    endpoints
        .delete("aad-pod-identity-mic", &DeleteParams::default())
        .await
        .unwrap();
    wait_assigned(&c, &ns.name, &names(&ns.name, &[("app", "locked")]), 60).await;
    wait_machine(&emu, &vmss, &[&id.id], 10).await;
    delete_pod(&c, &ns.name, "app").await;
    wait_assigned(&c, &ns.name, &[], 60).await;
    replica.stop().await;
}
