//! Rolling back to the original: the original MIC (aad-pod-identity v1.8.17, built from the Go
//! module proxy) takes over the records, bindings and scale set that podid-operator left. It
//! keeps what pods need (records stay Assigned, the identity stays on the scale set), serves a
//! new pod as usual, and removes what podid assigned once no pod needs it. The original ignores
//! podid's Lease: podid-operator is stopped first (docs/operator.md).

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{Running, cloud_config, free_port};
use common::*;
use kube::api::Api;
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::{AssignedIdentityState, AzureAssignedIdentity};
use podid_testkit::{Cluster, NodePool};

#[tokio::test]
async fn the_original_mic_takes_over_what_podid_left() {
    let mic = podid_testkit::peer_binary("mic")
        .unwrap_or_else(|e| panic!("the rollback run needs the original MIC: {e}"));
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("rollback").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("rollback", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let web = emu.add_identity("rg", "rb-web");
    identity(&c, &ns.name, "web", 0, &web.id, &web.client_id).await;
    binding(&c, &ns.name, "web", "web", "rb-web").await;
    pod(&c, &ns.name, "a", &node, "rb-web").await;

    // podid-operator assigns, then is stopped.
    let replica = start(&c, &emu, "rb", &ns.name, Duration::from_secs(15)).await;
    let a = format!("a-{}-web", ns.name);
    wait_assigned(&c, &ns.name, std::slice::from_ref(&a), 60).await;
    wait_machine(&emu, &vmss, &[&web.id], 30).await;
    replica.stop().await;

    // The original MIC, as its Deployment runs it, on what podid left.
    let dir = tempfile::tempdir().unwrap();
    let (azure_json, env_file, ca) = cloud_config(dir.path(), &emu, &pool.resource_group, APP);
    let mut cmd = Command::new(mic);
    cmd.arg(format!("--cloudconfig={}", azure_json.display()))
        .arg("--logtostderr")
        .arg(format!("--kubeconfig={}", cluster.kubeconfig().display()))
        .arg(format!("--http-probe-port={}", free_port()))
        .arg(format!("--prometheus-port={}", free_port()))
        .env("MIC_POD_NAMESPACE", &ns.name)
        .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
        .env("SSL_CERT_FILE", &ca);
    let mut original = Running::spawn(cmd, dir.path().join("mic.log"));

    // It is at work (a new pod is served), and podid's record and assignment are kept.
    pod(&c, &ns.name, "b", &node, "rb-web").await;
    let b = format!("b-{}-web", ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let records: Api<AzureAssignedIdentity> = Api::namespaced(c.clone(), "default");
    loop {
        original.assert_alive("the original MIC");
        let mut both = true;
        for n in [&a, &b] {
            both &= records
                .get_opt(n)
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.state() == AssignedIdentityState::Assigned);
        }
        if both {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the original MIC did not serve the new pod in 90 s; its log:\n{}",
            original.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        on_machine(&emu, &vmss).contains(&web.id.to_lowercase()),
        "the identity podid assigned is still there"
    );

    // The pods go: the original removes the records and what podid assigned.
    delete_pod(&c, &ns.name, "a").await;
    delete_pod(&c, &ns.name, "b").await;
    wait_machine(&emu, &vmss, &[], 90).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = false;
        for n in [&a, &b] {
            left |= records.get_opt(n).await.ok().flatten().is_some();
        }
        if !left {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records left; the original MIC's log:\n{}",
            original.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    original.stop();
}
