//! The real Azure Workload ID mutating webhook beside the test control plane, registered as its
//! chart registers it: what it does to pods is what `podid cutover` hands workloads over to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use podid_testkit::Cluster;
use podid_testkit::builders::obj;
use podid_testkit::webhook::{
    self, AUDIENCE, CLIENT_ID_ANNOTATION, USE_LABEL, WEBHOOK, WorkloadIdentityWebhook,
};
use serde_json::json;
use sha2::{Digest, Sha256};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "5b1f0c2e-0d8a-4c4e-9d59-1f2e3a4b5c6d";
/// Where v1.6.0 mounts the token volume, and the token file in it.
const MOUNT: &str = "/var/run/secrets/azure/wi";
const TOKEN_FILE: &str = "/var/run/secrets/azure/wi/token/azure-identity-token";
/// AZURE_AUTHORITY_HOST of the default environment (AzurePublicCloud).
const AUTHORITY: &str = "https://login.microsoftonline.com/";

fn need_binaries() {
    for name in ["webhook", "azwi"] {
        if let Err(e) = webhook::binary(name) {
            panic!("this test needs the Azure Workload ID {name}: {e}");
        }
    }
}

/// A ServiceAccount `name` in `ns` carrying the client-id annotation.
async fn annotated_sa(client: &kube::Client, ns: &str, name: &str) {
    let sa: ServiceAccount = obj(json!({"metadata": {
        "name": name, "annotations": {CLIENT_ID_ANNOTATION: CLIENT},
    }}));
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
}

fn pod(name: &str, sa: &str, labelled: bool) -> Pod {
    let labels: BTreeMap<&str, &str> = if labelled {
        [(USE_LABEL, "true")].into()
    } else {
        BTreeMap::new()
    };
    obj(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "serviceAccountName": sa,
            "containers": [
                {"name": "app", "image": "app"},
                {"name": "sidecar", "image": "sidecar", "env": [{"name": "KEEP", "value": "me"}]},
            ],
        },
    }))
}

fn env_of(c: &k8s_openapi::api::core::v1::Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

/// The webhook's volume name for a pod: a fixed prefix and the pod name's SHA-256, cut to 63.
fn volume_name(pod: &str) -> String {
    let prefix = "azure-workload-identity-reserved-";
    let hash = format!("{:x}", Sha256::digest(pod.as_bytes()));
    format!("{prefix}{}", &hash[..63 - prefix.len()])
}

#[tokio::test]
async fn labelled_pod_gets_identity_env_and_token_volume() {
    need_binaries();
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("wi-inject").await;
    annotated_sa(&ns.client, &ns.name, "workload").await;
    let _wh = WorkloadIdentityWebhook::start(cluster, TENANT)
        .await
        .expect("start the webhook");

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = pods
        .create(&PostParams::default(), &pod("app", "workload", true))
        .await
        .expect("create labelled pod");
    let spec = created.spec.expect("spec");

    let volume = volume_name("app");
    for c in &spec.containers {
        let env = env_of(c);
        assert_eq!(
            env.get("AZURE_CLIENT_ID").map(String::as_str),
            Some(CLIENT),
            "{}",
            c.name
        );
        assert_eq!(
            env.get("AZURE_TENANT_ID").map(String::as_str),
            Some(TENANT),
            "{}",
            c.name
        );
        assert_eq!(
            env.get("AZURE_FEDERATED_TOKEN_FILE").map(String::as_str),
            Some(TOKEN_FILE),
            "{}",
            c.name
        );
        assert_eq!(
            env.get("AZURE_AUTHORITY_HOST").map(String::as_str),
            Some(AUTHORITY),
            "{}",
            c.name
        );
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .unwrap_or_else(|| panic!("{}: no mount of {volume}: {:?}", c.name, c.volume_mounts));
        assert_eq!(mount.mount_path, MOUNT);
        assert_eq!(mount.read_only, Some(true));
    }
    // What the pod had stays.
    let sidecar = spec
        .containers
        .iter()
        .find(|c| c.name == "sidecar")
        .unwrap();
    assert_eq!(env_of(sidecar).get("KEEP").map(String::as_str), Some("me"));

    let vol = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .unwrap_or_else(|| panic!("no volume {volume}: {:?}", spec.volumes));
    let sources = &vol.projected.as_ref().expect("projected volume").sources;
    let sources = sources.as_ref().expect("sources");
    assert_eq!(sources.len(), 1, "{sources:?}");
    let token = sources[0]
        .service_account_token
        .as_ref()
        .expect("a ServiceAccount token projection");
    assert_eq!(token.audience.as_deref(), Some(AUDIENCE));
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(token.path, "token/azure-identity-token");
}

/// The webhook does not look for the client-id annotation before mutating: a labelled pod whose
/// ServiceAccount lacks it gets everything but AZURE_CLIENT_ID (the SDK then has no identity).
/// So a cutover annotates the ServiceAccount before it labels pods.
#[tokio::test]
async fn labelled_pod_of_unannotated_service_account_gets_no_client_id() {
    need_binaries();
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("wi-noclient").await;
    let sa: ServiceAccount = obj(json!({"metadata": {"name": "bare"}}));
    Api::<ServiceAccount>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    let _wh = WorkloadIdentityWebhook::start(cluster, TENANT)
        .await
        .expect("start the webhook");

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = pods
        .create(&PostParams::default(), &pod("bare", "bare", true))
        .await
        .expect("create labelled pod");
    let spec = created.spec.expect("spec");
    for c in &spec.containers {
        let env = env_of(c);
        assert_eq!(env.get("AZURE_CLIENT_ID"), None, "{}", c.name);
        assert_eq!(
            env.get("AZURE_TENANT_ID").map(String::as_str),
            Some(TENANT),
            "{}",
            c.name
        );
        assert_eq!(
            env.get("AZURE_FEDERATED_TOKEN_FILE").map(String::as_str),
            Some(TOKEN_FILE),
            "{}",
            c.name
        );
    }
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .any(|v| v.name == volume_name("bare")),
        "{:?}",
        spec.volumes
    );
}

#[tokio::test]
async fn unlabelled_pod_is_left_alone() {
    need_binaries();
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("wi-unlabelled").await;
    annotated_sa(&ns.client, &ns.name, "workload").await;
    let _wh = WorkloadIdentityWebhook::start(cluster, TENANT)
        .await
        .expect("start the webhook");

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let created = pods
        .create(&PostParams::default(), &pod("plain", "workload", false))
        .await
        .expect("create unlabelled pod");
    let spec = created.spec.expect("spec");
    for c in &spec.containers {
        let env = env_of(c);
        assert!(
            env.keys().all(|k| !k.starts_with("AZURE_")),
            "{}: {env:?}",
            c.name
        );
    }
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .all(|v| !v.name.starts_with("azure-workload-identity-")),
        "{:?}",
        spec.volumes
    );
}

#[tokio::test]
async fn stopped_webhook_refuses_labelled_pods_only() {
    need_binaries();
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("wi-closed").await;
    annotated_sa(&ns.client, &ns.name, "workload").await;
    let mut wh = WorkloadIdentityWebhook::start(cluster, TENANT)
        .await
        .expect("start the webhook");
    wh.stop().await.expect("stop the webhook");

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let err = pods
        .create(&PostParams::default(), &pod("refused", "workload", true))
        .await
        .expect_err("a labelled pod must be refused while the webhook is down");
    let text = err.to_string();
    assert!(text.contains(WEBHOOK), "error names the webhook: {text}");
    assert!(
        pods.get_opt("refused").await.expect("get").is_none(),
        "the refused pod must not exist"
    );

    pods.create(&PostParams::default(), &pod("allowed", "workload", false))
        .await
        .expect("an unlabelled pod is still admitted");
}

#[tokio::test]
async fn azwi_runs() {
    need_binaries();
    let out = std::process::Command::new(webhook::binary("azwi").unwrap())
        .arg("version")
        .output()
        .expect("run azwi");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("Version: {}", webhook::version());
    assert!(text.contains(&want), "want {want:?} in {text}");
}
