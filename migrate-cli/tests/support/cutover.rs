//! Set-up for the cutover tests on the real API server: workloads on pod identity and the
//! records podid-operator's bridge would write for them. The Workload ID webhook is the real
//! one (`podid_testkit::webhook`), one per test at a time (its lock).

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use podid_crds::migration::{BRIDGE_MANAGER, WorkloadMigration};
use podid_testkit::webhook::WorkloadIdentityWebhook;
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "11111111-0000-0000-0000-000000000001";
pub const RID: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-id";

pub fn ar(kind: &str) -> ApiResource {
    let (group, version) = match kind {
        "Deployment" | "StatefulSet" => ("apps", "v1"),
        "CronJob" | "Job" => ("batch", "v1"),
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

/// A workload's pod template (`kind` as the API names it).
pub fn tmpl(o: &Value, kind: &str) -> Value {
    podid_crds::cutover::template_of(kind, o).unwrap().clone()
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
    let id = Ident {
        client_id: CLIENT_ID.into(),
        resource_id: RID.into(),
        tenant: String::new(),
        issuer: "https://issuer.example/".into(),
    };
    bridged_as(client, ns, kind, name, target, &id).await;
}

/// An identity as the bridge's records name it.
#[derive(Clone, Debug)]
pub struct Ident {
    pub client_id: String,
    pub resource_id: String,
    /// Empty: none recorded.
    pub tenant: String,
    pub issuer: String,
}

/// [`bridged`] for identity `id`.
pub async fn bridged_as(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    target: &str,
    id: &Ident,
) {
    let mut annotations = json!({"azure.workload.identity/client-id": id.client_id,
                                 "podid.dev/federated-credentials": id.client_id});
    if !id.tenant.is_empty() {
        annotations["azure.workload.identity/tenant-id"] = id.tenant.clone().into();
    }
    apply_as(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": target, "annotations": annotations}}),
        BRIDGE_MANAGER,
    )
    .await;
    unproven_record(client, ns, kind, name, target, id).await;
    prove(client, ns, kind, name, target, id).await;
}

/// A record whose credential is not proven yet (the bridge still retrying the exchange).
pub async fn unproven_record(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    target: &str,
    id: &Ident,
) {
    bridge_record(client, ns, kind, name, record_status(ns, target, id, false)).await;
}

/// The bridge's record once the credential is proven.
pub async fn prove(client: &Client, ns: &str, kind: &str, name: &str, target: &str, id: &Ident) {
    bridge_record(client, ns, kind, name, record_status(ns, target, id, true)).await;
}

fn record_status(ns: &str, target: &str, id: &Ident, ready: bool) -> Value {
    let subject = format!("system:serviceaccount:{ns}:{target}");
    let mut identity = json!({"azureIdentity": format!("{ns}/app-id"), "clientID": id.client_id,
                              "resourceID": id.resource_id});
    if !id.tenant.is_empty() {
        identity["tenantID"] = id.tenant.clone().into();
    }
    let mut status = json!({
        "identities": [identity],
        "targetServiceAccount": target,
        "credentials": [{"name": podid_crds::migration::credential_name(&id.issuer, ns, target),
                         "identity": id.resource_id, "issuer": id.issuer, "subject": subject,
                         "ready": ready}],
        "proven": if ready { "1/1" } else { "0/1" },
        "stage": if ready { "Bridged" } else { "PodIdentity" }});
    if !ready {
        status["conditions"] = json!([{"type": "Proven", "status": "False", "reason": "ExchangeFailed",
            "message": "AADSTS70021: no matching federated identity record found",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    }
    status
}

/// A CronJob on pod identity (`aadpodidbinding: <binding>`) that never runs during a test.
pub async fn cron_job(client: &Client, ns: &str, name: &str, binding: &str) -> Value {
    apply(
        client,
        ns,
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
        "spec": {"schedule": "0 0 1 1 *", "suspend": false, "jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {"app": name, "aadpodidbinding": binding}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}}}}),
    )
    .await
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

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// The cluster with controllers and a fake node.
pub async fn cluster() -> &'static Cluster {
    let cluster = Cluster::shared_async().await;
    cluster
        .add_nodes(&NodePool::aks("cutover", 1))
        .await
        .expect("fake node ready");
    cluster
}

/// The real Workload ID webhook, registered and mutating (waits for the other tests' turn).
pub async fn webhook(cluster: &Cluster, tenant: &str) -> WorkloadIdentityWebhook {
    WorkloadIdentityWebhook::start(cluster, tenant)
        .await
        .expect("start the Workload ID webhook (tests/peers/build-workload-identity.sh)")
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

/// The Deployments `a`, `b` and `c` of the interruption tests: on pod identity (`app-binding`),
/// bridged, rolled out. Their templates, in that order.
pub async fn three_bridged(client: &Client, ns: &str) -> Vec<Value> {
    identity(client, ns).await;
    for w in ["a", "b", "c"] {
        workload(client, ns, "Deployment", w, 1, "app", None).await;
        bridged(client, ns, "Deployment", w, w).await;
    }
    let mut before = Vec::new();
    for w in ["a", "b", "c"] {
        before.push(tmpl(
            &rolled_out(client, ns, "Deployment", w, 90).await,
            "Deployment",
        ));
    }
    before
}

/// After an interrupted switch was run again: each of [`three_bridged`]'s Deployments rolled
/// out on its own ServiceAccount, its record `Switched` holding its template from `before`
/// (recorded once, never overwritten); then a rollback restores each template exactly.
pub async fn switched_once_then_rolled_back(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    before: &[Value],
) {
    for (w, b) in ["a", "b", "c"].iter().zip(before) {
        let o = rolled_out(client, ns, "Deployment", w, 5).await;
        assert_eq!(tmpl(&o, "Deployment")["spec"]["serviceAccountName"], *w);
        let r = record(client, ns, &format!("deployment-{w}")).await;
        assert_eq!(r.spec.stage, Some(podid_crds::migration::Stage::Switched));
        assert_eq!(
            r.spec.recorded_template.as_ref(),
            Some(b),
            "{w}: the template from before, once"
        );
    }
    let out = podid(cluster, &["cutover", "rollback", "-n", ns, "-q", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (w, b) in ["a", "b", "c"].iter().zip(before) {
        assert_eq!(
            &tmpl(&get(client, ns, "Deployment", w).await, "Deployment"),
            b
        );
    }
}
