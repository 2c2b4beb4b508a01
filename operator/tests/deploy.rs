//! deploy/manifests/podid-operator.yaml: it applies to a real API server, its arguments are flags the
//! operator accepts (as are the original MIC's manifest and chart arguments, for a swap without
//! manifest changes), and its RBAC is enough for the controller and no more: the controller runs
//! here with exactly that account's permissions (impersonated) and converges a bound pod.

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use podid_azure_emulator::{Emulator, Settings};
use podid_operator::config::Flags;
use podid_testkit::{Cluster, NodePool};
use serde::Deserialize;

mod common;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/podid-operator.yaml"
);
const ACCOUNT: &str = "system:serviceaccount:default:podid-operator";

fn deployment() -> Deployment {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .map(|v| serde_json::to_value(v).unwrap())
        .find(|d| d["kind"] == "Deployment")
        .map(|d| serde_json::from_value(d).unwrap())
        .expect("a Deployment")
}

/// The original's no-azure.json manifest names the cloud in `CLOUD` (here as its flag): read,
/// not ignored, so a China or US Government cluster does not talk to the public cloud.
#[test]
fn the_cloud_named_without_azure_json_picks_its_endpoints() {
    let flags = Flags::try_parse_from([
        "podid-operator",
        "--cloud=AzureChinaCloud",
        "--tenant-id=00000000-0000-0000-0000-0000000000aa",
        "--subscription-id=sub",
        "--resource-group=rg",
        "--client-id=app",
        "--client-secret=pw",
    ])
    .unwrap();
    let cloud = flags.cloud_config().unwrap();
    assert_eq!(cloud.endpoints.arm, "https://management.chinacloudapi.cn");
    assert_eq!(
        cloud.endpoints.authority_host,
        "https://login.chinacloudapi.cn"
    );
}

#[test]
fn the_deployment_arguments_and_the_originals_are_flags_the_operator_accepts() {
    let c = deployment().spec.unwrap().template.spec.unwrap().containers[0].clone();
    let args: Vec<String> = std::iter::once("podid-operator".to_owned())
        .chain(
            c.args
                .unwrap()
                .into_iter()
                .map(|a| a.replace("$(POD_NAMESPACE)", "default")),
        )
        .collect();
    let flags = Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(flags.leader_election_namespace, "default");
    assert_eq!(flags.http_probe_port, 8080);

    // The original's deploy/infra manifest and every flag its Helm chart can pass (v1.8.17).
    for original in [
        &["--cloudconfig=/etc/kubernetes/azure.json", "--logtostderr"][..],
        &[
            "--cloudconfig=/etc/kubernetes/azure.json",
            "--logtostderr",
            "--log-format=json",
            "-v=4",
            "--leader-election-instance=mic-0",
            "--leader-election-namespace=kube-system",
            "--leader-election-name=aad-pod-identity-mic",
            "--leader-election-duration=15s",
            "--http-probe-port=8080",
            "--createDeleteBatch=20",
            "--clientQps=5",
            "--immutable-user-msis=00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000002",
            // The original's non-RBAC deployment.yaml.
            "--kubeconfig=/var/lib/kubelet/kubeconfig",
            "--prometheus-port=8888",
            "--syncRetryDuration=3600s",
            "--update-user-msi-max-retry=4",
            "--update-user-msi-retry-interval=2s",
            "--identity-assignment-reconcile-interval=3m",
            "--custom-user-agent=aks",
            "--forceNamespaced=true",
            "--enableScaleFeatures=false",
            "--enableProfile=false",
            "--enable-type-upgrade=true",
            "--config-map-name=aad-pod-identity-config",
            "--type-upgrade-status-key=type-upgrade-status",
        ][..],
    ] {
        let args: Vec<&str> = std::iter::once("mic")
            .chain(original.iter().copied())
            .collect();
        Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    let flags = Flags::try_parse_from([
        "mic",
        "--update-user-msi-max-retry=4",
        "--update-user-msi-retry-interval=2s",
        "-v=6",
    ])
    .unwrap();
    let retry = flags.arm_retry();
    assert_eq!(
        (retry.attempts, retry.base_delay),
        (5, Duration::from_secs(2))
    );
    assert_eq!(flags.log.level(), "trace");
}

#[tokio::test]
async fn the_manifest_applies_and_its_account_is_all_the_controller_needs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("podid_operator=debug")
        .with_test_writer()
        .try_init();
    let cluster = Cluster::shared_async().await;
    let out = cluster
        .kubectl_apply(std::path::Path::new(MANIFEST), Some("default"))
        .expect("kubectl apply deploy/manifests/podid-operator.yaml");
    assert!(out.contains("deployment.apps/podid-operator"), "{out}");
    cluster.assert_cannot(
        ACCOUNT,
        &[
            ("get", "secrets"),
            ("create", "pods"),
            ("update", "nodes"),
            ("update", "azureidentities.aadpodidentity.k8s.io"),
            ("update", "endpoints"),
            // The bridge reads workloads and never changes them; it never deletes a
            // ServiceAccount.
            ("patch", "deployments.apps"),
            ("update", "cronjobs.batch"),
            ("delete", "serviceaccounts"),
        ],
    );

    // The controller as that account (Lease and the original's lock in `default`, as deployed).
    let ns = cluster.namespace("op-deploy").await;
    let admin = ns.client.clone();
    let pool = NodePool::aks("opdep", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let id = emu.add_identity("rg", "deployed");
    common::identity(&admin, &ns.name, "deployed", 0, &id.id, &id.client_id).await;
    common::binding(&admin, &ns.name, "deployed", "deployed", "deployed").await;

    // As the deployed account, with its Lease and the original's lock in `default`, as deployed.
    let client = cluster.client_as(ACCOUNT).await.unwrap();
    let replica = common::start_respecting(
        &client,
        &emu,
        "podid-operator-0",
        "default",
        Duration::from_secs(15),
        Some(("default".into(), "aad-pod-identity-mic".into())),
    )
    .await;
    common::pod(&admin, &ns.name, "app", &pool.node_name(0), "deployed").await;
    let record = format!("app-{}-deployed", ns.name);
    common::wait_assigned(&admin, &ns.name, std::slice::from_ref(&record), 60).await;
    common::wait_machine(&emu, &vmss, &[&id.id], 10).await;
    // And back: the finalizer removed, the record deleted, the identity off the scale set.
    common::delete_pod(&admin, &ns.name, "app").await;
    common::wait_assigned(&admin, &ns.name, &[], 60).await;
    common::wait_machine(&emu, &vmss, &[], 10).await;
    replica.stop().await;
}
