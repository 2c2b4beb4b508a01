//! Set-up for the cutover tests on the real API server: workloads on pod identity, the records
//! podid-operator's bridge would write for them, and a stand-in for the Workload ID webhook.
//!
//! The stand-in is a real mutating admission webhook served over TLS and registered under the
//! real webhook's name (`mutation.azure-workload-identity.io`), so `podid cutover switch` runs
//! its production check unchanged; it injects only `AZURE_FEDERATED_TOKEN_FILE` (no token
//! volume). Tests that need the real webhook's injection must run against it instead.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use podid_crds::migration::{BRIDGE_MANAGER, WorkloadMigration};
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "11111111-0000-0000-0000-000000000001";
pub const RID: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-id";

pub fn ar(kind: &str) -> ApiResource {
    let (group, version) = match kind {
        "Deployment" | "StatefulSet" => ("apps", "v1"),
        "AzureIdentity" | "AzureIdentityBinding" => ("aadpodidentity.k8s.io", "v1"),
        "WorkloadMigration" => ("podid.dev", "v1alpha1"),
        _ => ("", "v1"),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: match kind {
            "AzureIdentity" => "azureidentities".into(),
            "ResourceQuota" => "resourcequotas".into(),
            k => format!("{}s", k.to_lowercase()),
        },
    }
}

/// Server-side apply of `obj` in `ns` as `manager`.
pub async fn apply_as(client: &Client, ns: &str, obj: Value, manager: &str) -> Value {
    let kind = obj["kind"].as_str().unwrap().to_owned();
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar(&kind));
    let o: DynamicObject = serde_json::from_value(obj).unwrap();
    let out = api
        .patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&o),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    serde_json::to_value(out).unwrap()
}

pub async fn apply(client: &Client, ns: &str, obj: Value) -> Value {
    apply_as(client, ns, obj, "test").await
}

/// A workload as JSON.
pub async fn get(client: &Client, ns: &str, kind: &str, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar(kind));
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

pub async fn record(client: &Client, ns: &str, name: &str) -> WorkloadMigration {
    Api::<WorkloadMigration>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

/// The identity and the binding every test workload labelled `aadpodidbinding=app` uses.
pub async fn identity(client: &Client, ns: &str) {
    apply(client, ns, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "app-id"}, "spec": {"type": 0, "clientID": CLIENT_ID, "resourceID": RID}}))
    .await;
    apply(client, ns, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": "app-binding"}, "spec": {"azureIdentity": "app-id", "selector": "app"}}))
    .await;
}

/// A Deployment or StatefulSet on pod identity (`aadpodidbinding: <binding>`).
pub async fn workload(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    replicas: i32,
    binding: &str,
    service_account: Option<&str>,
) -> Value {
    workload_with(
        client,
        ns,
        kind,
        name,
        replicas,
        binding,
        service_account,
        json!({}),
    )
    .await
}

/// [`workload`] with more fields in the pod spec (`extra`).
#[allow(clippy::too_many_arguments)]
pub async fn workload_with(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    replicas: i32,
    binding: &str,
    service_account: Option<&str>,
    extra: Value,
) -> Value {
    let mut spec = json!({
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        "terminationGracePeriodSeconds": 0,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    if let Some(sa) = service_account {
        spec["serviceAccountName"] = sa.into();
    }
    let mut obj = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name, "aadpodidbinding": binding}},
                              "spec": spec}}});
    if kind == "StatefulSet" {
        obj["spec"]["serviceName"] = name.into();
        obj["spec"]["podManagementPolicy"] = "Parallel".into();
    } else {
        obj["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        obj["spec"]["progressDeadlineSeconds"] = 15.into();
    }
    apply(client, ns, obj).await
}

/// What the bridge leaves for a workload it has proven: the target ServiceAccount annotated
/// with the identity, and the record (spec by server-side apply, then status, both as
/// `podid-bridge`) saying `Bridged` with a ready credential.
pub async fn bridged(client: &Client, ns: &str, kind: &str, name: &str, target: &str) {
    apply_as(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": target, "annotations": {
            "azure.workload.identity/client-id": CLIENT_ID,
            "podid.dev/federated-credentials": CLIENT_ID}}}),
        BRIDGE_MANAGER,
    )
    .await;
    let subject = format!("system:serviceaccount:{ns}:{target}");
    bridge_record(client, ns, kind, name, json!({
        "identities": [{"azureIdentity": format!("{ns}/app-id"), "clientID": CLIENT_ID, "resourceID": RID}],
        "targetServiceAccount": target,
        "credentials": [{"name": format!("podid-{ns}-{target}-0123456789"), "identity": RID,
                         "issuer": "https://issuer.example/", "subject": subject, "ready": true}],
        "proven": "1/1", "stage": "Bridged"}))
    .await;
}

/// The record the bridge writes for a workload it will not bridge.
pub async fn blocked(client: &Client, ns: &str, kind: &str, name: &str) {
    bridge_record(
        client,
        ns,
        kind,
        name,
        json!({"targetServiceAccount": name, "proven": "0/0", "stage": "Blocked",
               "conditions": [{"type": "Blocked", "status": "True", "reason": "no-matching-binding",
                               "message": "label matches no binding", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    )
    .await;
}

async fn bridge_record(client: &Client, ns: &str, kind: &str, name: &str, status: Value) {
    let rec = podid_crds::migration::migration_name(kind, name);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ar("WorkloadMigration"));
    let pp = PatchParams::apply(BRIDGE_MANAGER).force();
    let body = json!({"apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
        "metadata": {"name": rec, "labels": {"app.kubernetes.io/managed-by": "podid-operator"}},
        "spec": {"workload": {"kind": kind, "name": name}}});
    let o: DynamicObject = serde_json::from_value(body).unwrap();
    api.patch(&rec, &pp, &Patch::Apply(&o)).await.unwrap();
    let body = json!({"apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
        "status": status});
    api.patch_status(&rec, &pp, &Patch::Apply(&body))
        .await
        .unwrap();
}

/// Waits until `kind/name`'s rollout is done (bounded).
pub async fn rolled_out(client: &Client, ns: &str, kind: &str, name: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let o = get(client, ns, kind, name).await;
        if podid_crds::cutover::rollout(kind, &o) == podid_crds::cutover::Rollout::Done
            && o["status"]["observedGeneration"] == o["metadata"]["generation"]
        {
            return o;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind} {ns}/{name} not rolled out after {secs}s: {}",
            o["status"]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The cluster with controllers, a fake node and (when `webhook`) the stand-in webhook.
pub async fn cluster(webhook: bool) -> &'static Cluster {
    let cluster = Cluster::shared_async().await;
    cluster
        .add_nodes(&NodePool::aks("cutover", 1))
        .await
        .expect("fake node ready");
    if webhook {
        register_stand_in(&cluster.client().await.unwrap()).await;
    }
    cluster
}

pub fn podid(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podid"))
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stand-in's port and CA, served from a thread of its own for the whole test binary.
fn stand_in() -> &'static (u16, String) {
    static SERVER: OnceLock<(u16, String)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (ca, acceptor) = tls();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send((listener.local_addr().unwrap().port(), ca))
                    .unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(
                            |req: hyper::Request<hyper::body::Incoming>| async move {
                                let body = axum::body::to_bytes(
                                    axum::body::Body::new(req.into_body()),
                                    1 << 22,
                                )
                                .await
                                .unwrap_or_default();
                                let review: Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let out = serde_json::to_vec(&mutate(&review)).unwrap();
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(axum::body::Body::from(out))
                                        .unwrap(),
                                )
                            },
                        );
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                    });
                }
            });
        });
        rx.recv().unwrap()
    })
}

/// The stand-in's answer: `AZURE_FEDERATED_TOKEN_FILE` added to every container.
fn mutate(review: &Value) -> Value {
    let req = &review["request"];
    let containers = req["object"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = json!({"name": "AZURE_FEDERATED_TOKEN_FILE",
                     "value": "/var/run/secrets/azure/tokens/azure-identity-token"});
    let ops: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c["env"].is_array() {
                json!({"op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": var})
            } else {
                json!({"op": "add", "path": format!("/spec/containers/{i}/env"), "value": [var]})
            }
        })
        .collect();
    let patch = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&ops).unwrap());
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "response": {"uid": req["uid"], "allowed": true, "patchType": "JSONPatch", "patch": patch}})
}

fn tls() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let chain = vec![leaf.der().clone(), ca_cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (
        ca_cert.pem(),
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

/// Registers the stand-in as the chart registers the real webhook: labelled pods, CREATE,
/// fails closed, no side effects (so dry runs reach it). Only test namespaces.
pub async fn register_stand_in(client: &Client) {
    let (port, ca) = stand_in();
    register(
        client,
        &format!("https://127.0.0.1:{port}/mutate-v1-pod"),
        ca,
    )
    .await;
}

/// Registers a webhook under the real name at `url` (a dead `url` makes a broken webhook).
pub async fn register(client: &Client, url: &str, ca_pem: &str) {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let cfg = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "azure-wi-webhook-mutating-webhook-configuration"},
        "webhooks": [{"name": "mutation.azure-workload-identity.io",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "timeoutSeconds": 5, "matchPolicy": "Equivalent",
            "clientConfig": {"url": url, "caBundle": bundle},
            "namespaceSelector": {"matchExpressions": [{"key": "podid.dev/test", "operator": "Exists"}]},
            "objectSelector": {"matchLabels": {"azure.workload.identity/use": "true"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "*"}]}]});
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: "MutatingWebhookConfiguration".into(),
            plural: "mutatingwebhookconfigurations".into(),
        },
    );
    let o: DynamicObject = serde_json::from_value(cfg).unwrap();
    api.patch(
        o.metadata.name.as_deref().unwrap(),
        &PatchParams::apply("test").force(),
        &Patch::Apply(&o),
    )
    .await
    .unwrap();
}

/// The CA of the stand-in (to register a broken webhook with a valid bundle).
pub fn stand_in_ca() -> String {
    stand_in().1.clone()
}
