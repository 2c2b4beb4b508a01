//! The bridge when Azure misbehaves: credentials that take a while to propagate, one call in
//! five failing, and the operator killed mid-pass. The end state must equal a clean run's, with
//! no duplicate and no orphaned credential.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use podid_azure::FederatedCredentials;
use podid_azure_emulator::{Emulator, Fault, Settings};
use podid_crds::migration::{Stage, WorkloadMigration};
use podid_crds::{AzureIdentity, AzureIdentityBinding};
use podid_testkit::Cluster;
use podid_testkit::builders::obj;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// `n` Deployments in `ns` on ServiceAccounts `sa-0…`, bound to `id` through `selector`.
async fn workloads(
    client: &kube::Client,
    ns: &str,
    id: &podid_azure_emulator::state::Identity,
    selector: &str,
    n: usize,
) {
    Api::<AzureIdentity>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj(json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
            "metadata": {"name": selector}, "spec": {"type": 0, "clientID": id.client_id, "resourceID": id.id}})))
        .await
        .unwrap();
    Api::<AzureIdentityBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj(json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
            "metadata": {"name": selector}, "spec": {"azureIdentity": selector, "selector": selector}})))
        .await
        .unwrap();
    for i in 0..n {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &obj(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("app-{i}")},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": format!("app-{i}")}},
                  "template": {"metadata": {"labels": {"app": format!("app-{i}"), "aadpodidbinding": selector}},
                    "spec": {"serviceAccountName": format!("sa-{i}"), "containers": [{"name": "c", "image": "app:1"}]}}}})))
            .await
            .unwrap();
    }
}

/// (podid's?, subject) of every credential on `id`.
async fn credentials(emu: &Emulator, id: &str) -> Vec<(bool, String)> {
    let mut v: Vec<_> = common::arm(emu)
        .list(id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name.starts_with("podid-"), c.subject))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_credential_is_proven_once_entra_sees_it() {
    let _one = common::one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    let client = cluster.client().await.unwrap();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    emu.trust_issuer_ca(cluster.ca_pem());
    emu.set_fic_propagation(Duration::from_secs(2));
    let id = emu.add_identity("ids", "slow");
    let ns = cluster.namespace("bridge-slow").await;
    workloads(&client, &ns.name, &id, "slow", 1).await;

    let shutdown = CancellationToken::new();
    let b = common::bridge(cluster, &client, &emu, &shutdown);
    b.stores.ready().await;
    emu.reset_calls();
    let report = b.pass().await;
    assert_eq!(
        (report.credentials_created, report.proven, report.errors),
        (1, 1, 0),
        "{report:?}"
    );
    // Entra refused the first exchanges (not propagated yet); the bridge waited, then proved.
    assert!(emu.call_count("POST token") > 1, "{:?}", emu.calls());
    let r: WorkloadMigration = Api::namespaced(client.clone(), &ns.name)
        .get("deployment-app-0")
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().stage, Some(Stage::Bridged));
    shutdown.cancel();
}

#[tokio::test]
async fn failing_calls_and_killed_operators_end_where_a_clean_run_ends() {
    let _one = common::one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    let client = cluster.client().await.unwrap();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    emu.trust_issuer_ca(cluster.ca_pem());
    let one = emu.add_identity("ids", "one");
    let two = emu.add_identity("ids", "two");
    let ns1 = cluster.namespace("bridge-f1").await;
    let ns2 = cluster.namespace("bridge-f2").await;
    workloads(&client, &ns1.name, &one, "f-one", 4).await;
    workloads(&client, &ns2.name, &two, "f-two", 3).await;

    // The first writes and lists fail for certain (so the faults are met whatever the dice
    // say), then one call in five: throttled, a server error, or a concurrent-write conflict.
    for (route, status, retry_after) in [
        ("PUT fic", 500, None),
        ("PUT fic", 409, None),
        ("GET fics", 429, Some(1)),
    ] {
        emu.inject(Fault {
            route: route.into(),
            status: Some(status),
            retry_after,
            count: Some(2),
            ..Default::default()
        });
    }
    for (route, status, retry_after) in [
        ("PUT fic", 500, None),
        ("PUT fic", 409, None),
        ("GET fics", 429, Some(1)),
        ("POST token", 500, None),
    ] {
        emu.inject(Fault {
            route: route.into(),
            status: Some(status),
            retry_after,
            rate: Some(0.2),
            ..Default::default()
        });
    }
    // Operators killed part-way through a pass, five times, each a fresh process.
    for kill_after_ms in [30u64, 80, 150, 300, 600] {
        let shutdown = CancellationToken::new();
        let b = common::bridge(cluster, &client, &emu, &shutdown);
        b.stores.ready().await;
        let _ = tokio::time::timeout(Duration::from_millis(kill_after_ms), b.pass()).await;
        shutdown.cancel();
    }
    // Then one keeps going until a pass has nothing left to do (bounded).
    let shutdown = CancellationToken::new();
    let b = common::bridge(cluster, &client, &emu, &shutdown);
    b.stores.ready().await;
    let mut settled = false;
    for _ in 0..30 {
        let r = b.pass().await;
        if r.errors == 0 && r.credentials_created == 0 && r.credentials_deleted == 0 {
            settled = true;
            break;
        }
    }
    assert!(settled, "the bridge did not settle under faults");
    // The faults were met: more credential writes were sent than credentials exist.
    assert!(emu.call_count("PUT fic") > 7, "{:?}", emu.calls());
    emu.clear_faults();
    // A clean pass now finds nothing to do: the end state is a clean run's.
    let clean = b.pass().await;
    assert_eq!(
        (
            clean.credentials_created,
            clean.credentials_deleted,
            clean.service_accounts_written,
            clean.errors
        ),
        (0, 0, 0, 0),
        "{clean:?}"
    );
    let want = |ns: &str, n: usize| -> Vec<(bool, String)> {
        let mut v: Vec<_> = (0..n)
            .map(|i| (true, format!("system:serviceaccount:{ns}:sa-{i}")))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        credentials(&emu, &one.id).await,
        want(&ns1.name, 4),
        "no duplicate, no orphan"
    );
    assert_eq!(credentials(&emu, &two.id).await, want(&ns2.name, 3));
    for (ns, n) in [(&ns1.name, 4), (&ns2.name, 3)] {
        let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), ns);
        let stages: BTreeSet<_> = records
            .list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.metadata.name.unwrap(), r.status.and_then(|s| s.stage)))
            .collect();
        let expected: BTreeSet<_> = (0..n)
            .map(|i| (format!("deployment-app-{i}"), Some(Stage::Bridged)))
            .collect();
        assert_eq!(stages, expected);
    }
    shutdown.cancel();
}

#[tokio::test]
async fn without_a_usable_issuer_nothing_goes_to_azure_and_the_record_says_why() {
    let _one = common::one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    let client = cluster.client().await.unwrap();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    let id = emu.add_identity("ids", "no-issuer");
    let ns = cluster.namespace("bridge-noiss").await;
    workloads(&client, &ns.name, &id, "noiss", 1).await;

    let shutdown = CancellationToken::new();
    let mut b = common::bridge(cluster, &client, &emu, &shutdown);
    // The in-cluster default issuer: Entra cannot fetch its keys.
    b.settings.issuer = Some("https://kubernetes.default.svc.cluster.local".into());
    b.stores.ready().await;
    emu.reset_calls();
    let report = b.pass().await;
    assert_eq!(report.credentials_created, 0, "{report:?}");
    let calls = emu.calls();
    assert!(
        !calls.keys().any(|k| k.contains("fic")),
        "no federated-credential call without an issuer: {calls:?}"
    );
    let r: WorkloadMigration = Api::namespaced(client.clone(), &ns.name)
        .get("deployment-app-0")
        .await
        .unwrap();
    let status = r.status.unwrap();
    assert_eq!(status.stage, Some(Stage::Blocked));
    let blocked = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Blocked")
        .unwrap();
    assert_eq!(blocked.reason, "NoOidcIssuer");
    assert!(
        blocked.message.contains("in-cluster") && blocked.message.contains("--enable-oidc-issuer"),
        "{}",
        blocked.message
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_issuer_comes_from_the_flag_then_the_aks_cluster_then_the_api_server() {
    use podid_operator::bridge_run::resolve_issuer;
    let cluster = Cluster::shared_async().await;
    let client = cluster.client().await.unwrap();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    let aks = emu.add_managed_cluster(
        "rg",
        "prod",
        Some("https://eastus.oic.prod-aks.azure.com/tenant/cluster/"),
    );
    let without = emu.add_managed_cluster("rg", "old", None);
    let arm = common::arm(&emu);
    assert_eq!(
        resolve_issuer(Some("https://flag.example/"), Some((&arm, &aks)), &client)
            .await
            .as_deref(),
        Some("https://flag.example/")
    );
    assert_eq!(
        resolve_issuer(None, Some((&arm, &aks)), &client)
            .await
            .as_deref(),
        Some("https://eastus.oic.prod-aks.azure.com/tenant/cluster/")
    );
    // No issuer on the cluster, or no cluster named: the API server's own.
    assert_eq!(
        resolve_issuer(None, Some((&arm, &without)), &client)
            .await
            .as_deref(),
        Some(cluster.issuer())
    );
    assert_eq!(
        resolve_issuer(None, None, &client).await.as_deref(),
        Some(cluster.issuer())
    );
}
