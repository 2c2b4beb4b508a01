//! The controller on a real API server (fake AKS nodes) against the Azure emulator: a pod with a
//! binding gets an Assigned AzureAssignedIdentity and its identity on the node's scale set with
//! exactly one PATCH; deleting the pod takes both away again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::conditions;
use podid_azure::Arm;
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::{
    AssignedIdentityState, AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding,
};
use podid_operator::controller::{Controller, LoopSettings, Stores};
use podid_operator::leader::{self, Election};
use podid_operator::metrics::Metrics;
use podid_operator::planner::{AssignmentPlanner, PlannerOptions};
use podid_testkit::builders::obj;
use podid_testkit::{Cluster, NodePool, wait_for};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_bound_pod_gets_its_identity_on_the_scale_set_with_one_patch() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("podid_operator=debug")
        .with_test_writer()
        .try_init();
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("operator").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("op", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");

    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("operator", Some("pw"), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let kubelet = emu.add_identity(&pool.resource_group, "kubelet");
    emu.preassign(&vmss, &kubelet.id);
    let id = emu.add_identity("rg", "payments");

    let identities: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    identities
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
                "metadata": {"name": "payments"},
                "spec": {"type": 0, "resourceID": id.id, "clientID": id.client_id}
            })),
        )
        .await
        .unwrap();
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
    let shutdown = CancellationToken::new();
    let notify = Arc::new(Notify::new());
    let stores = Stores::start(&client, notify.clone(), &shutdown);
    let controller = Controller::new(
        client.clone(),
        arm,
        AssignmentPlanner::new(PlannerOptions::default()),
        stores,
        Metrics::new(),
        "test",
    );
    let (may_write_tx, may_write) = watch::channel(false);
    let election = tokio::spawn(leader::run(
        client.clone(),
        Election {
            namespace: ns.name.clone(),
            name: "podid-operator".into(),
            identity: "test".into(),
            duration: Duration::from_secs(15),
            original_lock: Some((ns.name.clone(), "aad-pod-identity-mic".into())),
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

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": "checkout", "labels": {"aadpodidbinding": "payments"}},
            "spec": {"nodeName": pool.node_name(0), "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
        })),
    )
    .await
    .unwrap();

    let assigned: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), "default");
    let name = format!("checkout-{}-payments", ns.name);
    let aai = wait_for(
        assigned.clone(),
        &name,
        60,
        |a: Option<&AzureAssignedIdentity>| {
            a.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.status == AssignedIdentityState::Assigned)
        },
    )
    .await
    .expect("AzureAssignedIdentity Assigned")
    .unwrap();
    assert_eq!(aai.spec.node_name, pool.node_name(0));
    assert_eq!(aai.spec.pod_namespace, ns.name);
    assert_eq!(
        aai.metadata.labels.as_ref().unwrap()["nodename"],
        pool.node_name(0)
    );
    assert_eq!(
        aai.metadata.finalizers.as_deref(),
        Some(&["azureassignedidentity.finalizers.aadpodidentity.k8s.io".to_string()][..])
    );
    let mut on_vmss = emu.assigned_identities(&vmss);
    on_vmss.sort();
    let mut expected = vec![id.id.to_lowercase(), kubelet.id.to_lowercase()];
    expected.sort();
    assert_eq!(on_vmss, expected);
    assert_eq!(emu.call_count("PATCH vmss"), 1, "exactly one write");

    // The pod goes: the record goes and the identity leaves; the kubelet's stays.
    pods.delete("checkout", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for(
        assigned.clone(),
        &name,
        60,
        conditions::is_deleted(aai.metadata.uid.as_deref().unwrap()),
    )
    .await
    .expect("AzureAssignedIdentity deleted");
    assert_eq!(emu.assigned_identities(&vmss), [kubelet.id.to_lowercase()]);
    assert_eq!(emu.call_count("PATCH vmss"), 2);

    shutdown.cancel();
    run.await.unwrap();
    election.await.unwrap();
}
