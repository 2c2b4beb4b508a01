//! `podid identity delete` when podid-operator `--mode managed` holds the AzureIdentity, on a real
//! API server and the Azure emulator (its own test binary: its node pool must not be seen by the
//! other identity tests, whose emulators do not know it).

use std::process::Command;

use kube::api::{Api, Patch, PatchParams};
use podid_crds::AzureIdentity;
use podid_testkit::{Cluster, NodePool};
use serde_json::json;

#[path = "support/identity.rs"]
mod identity_support;
use identity_support::{azure, text};

/// With podid-operator `--mode managed` holding the AzureIdentity (its finalizer), `podid identity
/// delete` leaves the node pools to the operator and revokes the role assignment only once the
/// operator has released the AzureIdentity. The operator is played by the test: it waits for the
/// deletion, checks the role assignment is still there, and drops the finalizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_the_node_pools_to_the_operator_that_holds_the_identity() {
    let cluster = Cluster::shared_async().await;
    let pool = NodePool::aks("idop", 1);
    cluster.add_nodes(&pool).await.expect("nodes");
    let az = azure().await;
    let emu = &az.emu;
    let ss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let kubelet = emu.add_identity(&pool.resource_group, "kubelet");
    let app = emu.add_identity("rg", "held-id");
    let ns = cluster.namespace("identity-held").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    let cloud = az.cloud.as_str();
    let out = az.podid(
        cluster,
        &[
            "identity",
            "add",
            "-n",
            n,
            "--name",
            "held",
            "--identity-resource-id",
            &app.id,
            "--kubelet-object-id",
            &kubelet.principal_id,
            cloud,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ids: Api<AzureIdentity> = Api::namespaced(c.clone(), n);
    let i = ids.get("held").await.unwrap();
    // The pools `identity add` assigned are recorded as podid's.
    assert!(
        i.metadata.annotations.as_ref().unwrap()["podid.dev/assigned-targets"]
            .contains(&ss.to_ascii_lowercase()),
        "{:?}",
        i.metadata.annotations
    );
    assert!(
        emu.assigned_identities(&ss)
            .contains(&app.id.to_ascii_lowercase())
    );
    // The operator takes the AzureIdentity over.
    ids.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["podid.dev/node-pool-assignment"]}})),
    )
    .await
    .unwrap();
    let patches_before = emu.call_count("PATCH vmss");
    // The operator, played by a task: once the AzureIdentity is being deleted it tells the test
    // (which checks the role assignment is still there) and drops the finalizer only when the test
    // has looked, so the check cannot miss a deletion that completed in between.
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<()>();
    let (checked_tx, checked_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = {
        let ids = ids.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let i = ids.get("held").await.unwrap();
                if i.metadata.deletion_timestamp.is_some() {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "never deleted");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            seen_tx.send(()).unwrap();
            checked_rx.await.unwrap();
            ids.patch(
                "held",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        })
    };
    let delete = {
        let args: Vec<String> = ["identity", "delete", "-n", n, "--name", "held", cloud]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let env = az.env_file.clone();
        let kubeconfig = cluster.kubeconfig().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_podid"))
                .args(&args)
                .env("KUBECONFIG", kubeconfig)
                .env("AZURE_ENVIRONMENT_FILEPATH", env)
                .env_remove("AZURE_CLIENT_SECRET")
                .env_remove("AZURE_CLOUD_CONFIG")
                .env_remove("AZURE_TENANT_ID")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            println!("$ podid {}\n{}", args.join(" "), text(&out));
            out
        })
    };
    // The role assignment is still there while the AzureIdentity is held.
    tokio::time::timeout(std::time::Duration::from_secs(90), seen_rx)
        .await
        .expect("podid identity delete never marked the AzureIdentity deleted within 90 s")
        .expect("the operator task failed");
    assert_eq!(emu.role_assignments(&app.id).len(), 1, "kept while held");
    checked_tx.send(()).unwrap();
    operator.await.unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), delete)
        .await
        .expect("podid identity delete did not end within 120 s of the release")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("by podid-operator"),
        "{}",
        text(&out)
    );
    assert_eq!(
        emu.call_count("PATCH vmss"),
        patches_before,
        "the command wrote no scale set: the operator owns them"
    );
    assert!(
        emu.role_assignments(&app.id).is_empty(),
        "revoked after release"
    );
    assert!(ids.get_opt("held").await.unwrap().is_none());
}
