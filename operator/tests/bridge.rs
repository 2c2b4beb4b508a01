//! The bridge against a real API server (TokenRequest, its published JWKS) and the Azure
//! emulator (which verifies the ServiceAccount tokens' signatures against that JWKS): workloads
//! on pod identity get their credentials, ServiceAccounts and records, each credential proven
//! by a real exchange; what people made by hand is left alone.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use podid_azure::{FederatedCredential, FederatedCredentials};
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::migration::{Stage, WorkloadMigration};
use podid_crds::policy::MatchOptions;
use podid_crds::{AzureIdentity, AzureIdentityBinding, WI_CLIENT_ID_ANNOTATION};
use podid_testkit::Cluster;
use podid_testkit::builders::obj;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn create<K>(client: &kube::Client, ns: &str, v: serde_json::Value)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj::<K>(v))
        .await
        .expect("create");
}

async fn bound_identity(
    client: &kube::Client,
    ns: &str,
    id: &podid_azure_emulator::state::Identity,
    selector: &str,
) {
    let name = format!("id-{selector}");
    create::<AzureIdentity>(
        client,
        ns,
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
               "metadata": {"name": name},
               "spec": {"type": 0, "clientID": id.client_id, "resourceID": id.id}}),
    )
    .await;
    create::<AzureIdentityBinding>(
        client,
        ns,
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
               "metadata": {"name": format!("b-{selector}")},
               "spec": {"azureIdentity": name, "selector": selector}}),
    )
    .await;
}

fn template(selector: &str, sa: Option<&str>) -> serde_json::Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "app:1"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    json!({"metadata": {"labels": {"app": selector, "aadpodidbinding": selector}}, "spec": spec})
}

#[tokio::test]
async fn workloads_on_pod_identity_get_proven_credentials_service_accounts_and_records() {
    let cluster = Cluster::shared_async().await;
    let client = cluster.client().await.unwrap();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    emu.trust_issuer_ca(cluster.ca_pem());
    let orders = emu.add_identity("ids", "orders");
    let pay = emu.add_identity("ids", "pay");

    let a = cluster.namespace("bridge-a").await;
    let b = cluster.namespace("bridge-b").await;
    let c = cluster.namespace("bridge-c").await;
    // a: a Deployment scaled to zero on `default` → a dedicated ServiceAccount `web`.
    // (Standard mode matches bindings in every namespace: each namespace has its own selector.)
    bound_identity(&client, &a.name, &orders, "orders-a").await;
    create::<Deployment>(&client, &a.name, json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "orders-a"}}, "template": template("orders-a", None)}})).await;
    // b: an idle CronJob on its own ServiceAccount.
    bound_identity(&client, &b.name, &pay, "pay").await;
    create::<ServiceAccount>(&client, &b.name, json!({"metadata": {"name": "reporter"}})).await;
    create::<CronJob>(
        &client,
        &b.name,
        json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "report"},
        "spec": {"schedule": "0 3 * * *", "suspend": true, "jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {"aadpodidbinding": "pay"}},
            "spec": {"restartPolicy": "Never", "serviceAccountName": "reporter",
                     "containers": [{"name": "app", "image": "app:1"}]}}}}}}),
    )
    .await;
    // c: its ServiceAccount already names another client ID (set by hand): left alone.
    bound_identity(&client, &c.name, &orders, "orders-c").await;
    create::<ServiceAccount>(
        &client,
        &c.name,
        json!({"metadata": {"name": "shared",
        "annotations": {WI_CLIENT_ID_ANNOTATION: "11111111-2222-3333-4444-555555555555"}}}),
    )
    .await;
    create::<Deployment>(&client, &c.name, json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "orders-c"}}, "template": template("orders-c", Some("shared"))}})).await;
    // A credential made by hand on `orders`.
    let hand = FederatedCredential {
        name: "made-by-hand".into(),
        issuer: "https://elsewhere.example.com/".into(),
        subject: "system:serviceaccount:ops:tool".into(),
        audience: "api://AzureADTokenExchange".into(),
    };
    common::arm(&emu).put(&orders.id, &hand).await.unwrap();

    let shutdown = CancellationToken::new();
    let bridge = common::bridge(cluster, &client, &emu, &shutdown);
    tokio::time::timeout(Duration::from_secs(60), bridge.stores.ready())
        .await
        .expect("watches synced");
    let report = bridge.pass().await;
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.credentials_created, 3, "{report:?}");
    assert_eq!(report.proven, 3, "{report:?}");

    // Azure: one credential per (identity, namespace, ServiceAccount); the hand-made one kept.
    let subjects = |creds: Vec<FederatedCredential>| {
        let mut s: Vec<String> = creds
            .into_iter()
            .map(|c| format!("{} {}", c.name.starts_with("podid-"), c.subject))
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        subjects(common::arm(&emu).list(&orders.id).await.unwrap()),
        [
            "false system:serviceaccount:ops:tool".to_owned(),
            format!("true system:serviceaccount:{}:web", a.name),
            format!("true system:serviceaccount:{}:shared", c.name),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(
        subjects(common::arm(&emu).list(&pay.id).await.unwrap()),
        [format!("true system:serviceaccount:{}:reporter", b.name)]
    );

    // ServiceAccounts: created and annotated, annotated, or left alone.
    let sa = |ns: &str, name: &str| {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let name = name.to_owned();
        async move { api.get(&name).await.unwrap() }
    };
    let web = sa(&a.name, "web").await;
    assert_eq!(
        web.metadata.annotations.unwrap()[WI_CLIENT_ID_ANNOTATION],
        orders.client_id
    );
    let reporter = sa(&b.name, "reporter").await;
    assert_eq!(
        reporter.metadata.annotations.unwrap()[WI_CLIENT_ID_ANNOTATION],
        pay.client_id
    );
    let shared = sa(&c.name, "shared").await;
    assert_eq!(
        shared.metadata.annotations.unwrap()[WI_CLIENT_ID_ANNOTATION],
        "11111111-2222-3333-4444-555555555555"
    );

    // Records: where each stands, at a glance.
    let record = |ns: &str, name: &str| {
        let api: Api<WorkloadMigration> = Api::namespaced(client.clone(), ns);
        let name = name.to_owned();
        async move { api.get(&name).await.unwrap().status.unwrap() }
    };
    let web = record(&a.name, "deployment-web").await;
    assert_eq!(web.stage, Some(Stage::Bridged), "{web:?}");
    assert_eq!(web.proven.as_deref(), Some("1/1"));
    assert_eq!(web.target_service_account.as_deref(), Some("web"));
    let report_job = record(&b.name, "cronjob-report").await;
    assert_eq!(report_job.stage, Some(Stage::Bridged), "{report_job:?}");
    let api = record(&c.name, "deployment-api").await;
    assert_eq!(api.stage, Some(Stage::Blocked), "{api:?}");
    let blocked = api
        .conditions
        .iter()
        .find(|c| c.type_ == "Blocked")
        .unwrap();
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("True", "ServiceAccountAnnotation")
    );
    assert!(
        blocked
            .message
            .contains("11111111-2222-3333-4444-555555555555")
    );

    // The report, run live on the same cluster, agrees with the records workload by workload:
    // same target ServiceAccount, same identities, and what it calls proven is what is ready.
    let scope = podid_cli::live::Scope {
        namespaces: vec![a.name.clone(), b.name.clone(), c.name.clone()],
    };
    let mut inv = podid_cli::live::scan(&client, &scope, None, true)
        .await
        .unwrap();
    inv.cluster.oidc_issuer = Some(cluster.issuer().to_owned());
    let ctx = <podid_crds::plan::ClusterContext as podid_cli::inventory::ContextFromInventory>::from_inventory(
        &inv,
        MatchOptions::standard(false),
    );
    let report = podid_cli::report::Report::build(&inv, &ctx, &[]);
    let mut compared = 0;
    for w in report.workloads.iter().filter(|w| w.uses_pod_identity) {
        let name = podid_crds::migration::migration_name(&w.workload.kind, &w.workload.name);
        let status = record(&w.workload.namespace, &name).await;
        assert_eq!(
            status.target_service_account, w.target_service_account,
            "{name}"
        );
        let ids =
            |v: Vec<String>| -> std::collections::BTreeSet<String> { v.into_iter().collect() };
        assert_eq!(
            ids(status
                .identities
                .iter()
                .map(|i| i.client_id.clone())
                .collect()),
            ids(w.identities.iter().map(|i| i.client_id.clone()).collect()),
            "{name}"
        );
        assert_eq!(
            w.bridge.credential_ready,
            status.credentials.iter().all(|c| c.ready),
            "{name}"
        );
        compared += 1;
    }
    assert_eq!(compared, 3);

    // `kubectl get` shows where each stands.
    let out = cluster
        .kubectl()
        .unwrap()
        .args(["get", "workloadmigrations", "-n", &a.name])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("SERVICEACCOUNT")
            && table.contains("deployment-web")
            && table.contains("Bridged")
            && table.contains("1/1"),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The conflict is an Event on the record, with the report's code as its reason.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &c.name);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("deployment-api"))
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons, ["ServiceAccountAnnotation"]);

    // The SDK a workload will run after cutover: Python azure-identity's
    // WorkloadIdentityCredential with a projected token of the bridged ServiceAccount and the
    // annotated client ID gets the identity's token; with a ServiceAccount nobody bridged,
    // Entra's AADSTS70021.
    create::<ServiceAccount>(&client, &a.name, json!({"metadata": {"name": "stranger"}})).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    for (sa, expect_ok) in [("web", true), ("stranger", false)] {
        let token_file = dir.path().join(sa);
        std::fs::write(
            &token_file,
            podid_testkit::projected_token(&client, &a.name, sa, "api://AzureADTokenExchange")
                .await
                .unwrap(),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(podid_testkit::sdk::python());
        podid_testkit::sdk::clear_azure_env(&mut cmd);
        let out = cmd
            .arg("-c")
            .arg("from azure.identity import WorkloadIdentityCredential\nimport base64, json\nt = WorkloadIdentityCredential().get_token('https://storage.azure.com/.default').token.split('.')[1]\nprint(json.loads(base64.urlsafe_b64decode(t + '=' * (-len(t) % 4)))['xms_mirid'])")
            .env("AZURE_AUTHORITY_HOST", emu.authority_host())
            .env("REQUESTS_CA_BUNDLE", &ca)
            .env("AZURE_TENANT_ID", emu.tenant_id())
            .env("AZURE_CLIENT_ID", &orders.client_id)
            .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
            .output()
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if expect_ok {
            assert_eq!(stdout.trim(), orders.id, "{stderr}");
        } else {
            assert!(
                !out.status.success() && stderr.contains("AADSTS70021"),
                "{stdout}{stderr}"
            );
        }
    }

    // A second pass changes nothing.
    let again = bridge.pass().await;
    assert_eq!(
        (
            again.credentials_created,
            again.credentials_deleted,
            again.service_accounts_written,
            again.errors
        ),
        (0, 0, 0, 0),
        "{again:?}"
    );

    // The binding of `a` goes: its credential goes with it; the hand-made one stays.
    Api::<AzureIdentityBinding>::namespaced(client.clone(), &a.name)
        .delete("b-orders-a", &Default::default())
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = bridge.pass().await;
        if r.credentials_deleted == 1 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the credential for {}:web was not removed", a.name);
    let left = subjects(common::arm(&emu).list(&orders.id).await.unwrap());
    assert!(
        left.contains(&"false system:serviceaccount:ops:tool".to_owned()),
        "{left:?}"
    );
    assert!(
        !left.iter().any(|s| s.ends_with(&format!("{}:web", a.name))),
        "{left:?}"
    );
    shutdown.cancel();
}
