//! `--mode managed` on a real API server (fake AKS nodes in two node pools) against the Azure
//! emulator: the identities `podid identity add` manages appear on both pools' scale sets and on
//! a pool with no node that ARM lists (scaled to zero); a third pool added later gets them;
//! deleting an AzureIdentity takes its identity off every pool, except where someone else had
//! put it, and the AzureIdentity goes only then. No AzureAssignedIdentity is written for a bound
//! pod.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::conditions;
use podid_azure::Arm;
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::managed::{assigned_targets, has_finalizer, preexisting_targets};
use podid_crds::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding};
use podid_operator::controller::LoopSettings;
use podid_operator::leader::{self, Election};
use podid_operator::managed::{ManagedOptions, ManagedPlanner};
use podid_operator::managed_run::{ManagedController, ManagedStores};
use podid_operator::metrics::Metrics;
use podid_testkit::builders::obj;
use podid_testkit::{Cluster, NodePool, wait_for};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Polls `check` every 200 ms for up to `secs`; panics with `what` if it never holds.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn managed_identity(name: &str, resource_id: &str, client_id: &str) -> AzureIdentity {
    obj(json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": name, "annotations": {"podid.dev/managed-identity": "true"}},
        "spec": {"type": 0, "resourceID": resource_id, "clientID": client_id}
    }))
}

#[tokio::test]
async fn managed_identities_follow_the_node_pools() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("podid_operator=debug")
        .with_test_writer()
        .try_init();
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("managed").await;
    let client = ns.client.clone();
    let (one, two, three) = (
        NodePool::aks("mgone", 1),
        NodePool::aks("mgtwo", 2),
        NodePool::aks("mgthree", 1),
    );
    cluster.add_nodes(&one).await.expect("fake nodes ready");
    cluster.add_nodes(&two).await.expect("fake nodes ready");

    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("operator", Some("pw"), None);
    let rg = &one.resource_group;
    let vmss_one = emu.add_scale_set(rg, &one.scale_set, 1);
    let vmss_two = emu.add_scale_set(rg, &two.scale_set, 2);
    // A pool scaled to zero: in ARM, no node.
    let vmss_zero = emu.add_scale_set(rg, "aks-mgzero-12345678-vmss", 0);
    let kubelet = emu.add_identity(rg, "kubelet");
    for v in [&vmss_one, &vmss_two, &vmss_zero] {
        emu.preassign(v, &kubelet.id);
    }
    let payments = emu.add_identity("ids", "payments");
    let orders = emu.add_identity("ids", "orders");
    // Someone else put `orders` on pool two.
    emu.preassign(&vmss_two, &orders.id);
    let unmanaged = emu.add_identity("ids", "unmanaged");

    let identities: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    for (name, i) in [("payments", &payments), ("orders", &orders)] {
        identities
            .create(
                &PostParams::default(),
                &managed_identity(name, &i.id, &i.client_id),
            )
            .await
            .unwrap();
    }
    // An AzureIdentity `podid identity add` did not create: never assigned by managed mode.
    identities
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
                "metadata": {"name": "unmanaged"},
                "spec": {"type": 0, "resourceID": unmanaged.id, "clientID": unmanaged.client_id}
            })),
        )
        .await
        .unwrap();

    // A pod bound to `payments`, on pool one: standard mode would write its
    // AzureAssignedIdentity; managed mode writes none (the node agent reads the bindings).
    Api::<AzureIdentityBinding>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                "metadata": {"name": "payments-binding"},
                "spec": {"azureIdentity": "payments", "selector": "payments"}
            })),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "checkout", "labels": {"aadpodidbinding": "payments"}},
                "spec": {"nodeName": one.node_name(0), "automountServiceAccountToken": false,
                         "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
            })),
        )
        .await
        .unwrap();

    // The controller, in-process, with its own Lease in the test namespace.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let credential = podid_azure::CredentialConfig::ClientSecret {
        authority_host: emu.authority_host(),
        tenant_id: emu.tenant_id(),
        client_id: "operator".into(),
        secret: "pw".into(),
    }
    .build(http.clone())
    .unwrap();
    let mut arm = Arm::new(&emu.arm_endpoint(), credential, http);
    arm.poll_interval = Duration::from_millis(20);
    let metrics = Metrics::new();
    {
        let m = metrics.clone();
        arm.observer = Some(Arc::new(move |op, result, took| {
            m.observe_arm(op, result, took)
        }));
    }
    let shutdown = CancellationToken::new();
    let notify = Arc::new(Notify::new());
    let stores = ManagedStores::start(&client, notify.clone(), &shutdown);
    let mut controller = ManagedController::new(
        client.clone(),
        arm,
        ManagedPlanner::new(ManagedOptions::default()),
        stores,
        metrics.clone(),
        "test",
    );
    controller.configured_scope = Some((emu.subscription_id(), rg.clone()));
    let (may_write_tx, may_write) = watch::channel(false);
    let election = tokio::spawn(leader::run(
        client.clone(),
        Election {
            namespace: ns.name.clone(),
            name: "podid-operator".into(),
            identity: "test".into(),
            duration: Duration::from_secs(15),
            original_lock: None,
        },
        may_write_tx,
        shutdown.clone(),
    ));
    let settings = LoopSettings {
        debounce: Duration::from_millis(200),
        full_interval: Duration::from_secs(180),
        retry_base: Duration::from_millis(500),
    };
    let run = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { controller.run(notify, may_write, settings, shutdown).await })
    };

    let carries = |vmss: &str, id: &str| {
        emu.assigned_identities(vmss)
            .contains(&id.to_ascii_lowercase())
    };
    // Both managed identities on both pools and on the pool at zero.
    eventually(60, "managed identities on every pool", || {
        [&vmss_one, &vmss_two, &vmss_zero]
            .iter()
            .all(|v| carries(v, &payments.id) && carries(v, &orders.id))
    })
    .await;
    for v in [&vmss_one, &vmss_two, &vmss_zero] {
        assert!(
            !carries(v, &unmanaged.id),
            "an unmanaged identity stays off"
        );
        assert!(carries(v, &kubelet.id));
    }
    // What podid recorded: its finalizer, its own assignments, the one someone else made.
    let lower = |s: &str| s.to_ascii_lowercase();
    let o = identities.get("orders").await.unwrap();
    assert!(has_finalizer(&o));
    assert_eq!(
        preexisting_targets(&o),
        [lower(&vmss_two)].into_iter().collect()
    );
    assert_eq!(
        assigned_targets(&o),
        [lower(&vmss_one), lower(&vmss_zero)].into_iter().collect()
    );
    assert!(!has_finalizer(&identities.get("unmanaged").await.unwrap()));
    // No AzureAssignedIdentity for the bound pod, in any namespace.
    let records: Vec<AzureAssignedIdentity> = Api::<AzureAssignedIdentity>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|a| {
            a.spec.pod_namespace == ns.name || a.metadata.namespace == Some(ns.name.clone())
        })
        .collect();
    assert!(
        records.is_empty(),
        "managed mode writes no AzureAssignedIdentity: {records:?}"
    );

    // A third pool, added later with a node: it gets them.
    let vmss_three = emu.add_scale_set(rg, &three.scale_set, 1);
    emu.preassign(&vmss_three, &kubelet.id);
    cluster.add_nodes(&three).await.expect("fake node ready");
    eventually(60, "managed identities on the new pool", || {
        carries(&vmss_three, &payments.id) && carries(&vmss_three, &orders.id)
    })
    .await;

    // Deleting: the identity leaves every pool before the AzureIdentity goes.
    for name in ["payments", "orders"] {
        let uid = identities.get(name).await.unwrap().metadata.uid.unwrap();
        identities
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_for(identities.clone(), name, 60, conditions::is_deleted(&uid))
            .await
            .expect("AzureIdentity released and gone");
    }
    for v in [&vmss_one, &vmss_two, &vmss_three, &vmss_zero] {
        assert!(!carries(v, &payments.id), "payments left {v}");
        assert!(carries(v, &kubelet.id), "the kubelet identity stays on {v}");
    }
    for v in [&vmss_one, &vmss_three, &vmss_zero] {
        assert!(!carries(v, &orders.id), "orders left {v}");
    }
    assert!(
        carries(&vmss_two, &orders.id),
        "an identity put there by someone else stays"
    );
    // The standard metrics, ARM's list among the calls.
    let text = metrics.render();
    assert!(
        text.contains("operation=\"vmss_list\"") && text.contains("operation=\"vmss_update\""),
        "{text}"
    );
    assert!(text.contains("aadpodidentity_mic_cycle_count"), "{text}");

    shutdown.cancel();
    run.await.unwrap();
    election.await.unwrap();
}
