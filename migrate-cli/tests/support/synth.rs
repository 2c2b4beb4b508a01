//! Synthetic clusters: the bundled example snapshot (every verdict and reason code on a
//! realistic layout) and large generated clusters for the benchmark.

use podid_cli::inventory::{ClusterFacts, Inventory};
use serde_json::{Value, json};

use super::{binding, inventory, sa, uami_in};

const SUB: &str = "7f1c2a9e-5d3b-4c8a-9e61-2b4d8f0a6c13";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn uami(ns: &str, name: &str, client_id: &str) -> Value {
    uami_in(SUB, "rg-identities", ns, name, client_id)
}

fn pod_spec(sa: Option<&str>, image: &str, drop_all: bool, host_network: bool) -> Value {
    let mut c = json!({"name": "app", "image": image});
    if drop_all {
        c["securityContext"] = json!({"capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true});
    }
    let mut spec = json!({"containers": [c]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    if host_network {
        spec["hostNetwork"] = json!(true);
    }
    spec
}

fn template(labels: Value, spec: Value) -> Value {
    json!({"metadata": {"labels": labels}, "spec": spec})
}

fn deployment(ns: &str, name: &str, replicas: i32, t: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-deploy-{ns}-{name}")},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": t}})
}

/// A ReplicaSet of `deploy` and `n` Running pods on the example nodes.
fn replicas(ns: &str, deploy: &str, n: usize, t: &Value, out: &mut Vec<Value>) {
    let rs = format!("{deploy}-7d9f8b6c5");
    out.push(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": rs, "namespace": ns,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy,
                                 "uid": format!("uid-deploy-{ns}-{deploy}"), "controller": true}]},
        "spec": {"replicas": n, "selector": {"matchLabels": {"app": deploy}}, "template": t}}));
    for i in 0..n {
        out.push(pod(
            ns,
            &format!("{rs}-{}", suffix(&rs, i)),
            i,
            Some(("ReplicaSet", &rs)),
            t,
        ));
    }
}

/// A 5-character pod-name suffix like the ReplicaSet controller's, deterministic per (rs, i).
fn suffix(rs: &str, i: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 1469598103934665603;
    for b in rs.bytes().chain((i as u64).to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
    }
    (0..5)
        .map(|k| ALPHABET[((h >> (k * 8)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

fn pod(ns: &str, name: &str, i: usize, owner: Option<(&str, &str)>, t: &Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": t["metadata"]["labels"].clone()},
        "spec": t["spec"].clone(),
        "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", i % 3, 10 + i)}});
    p["spec"]["nodeName"] = json!(format!("aks-nodepool1-31415926-vmss00000{}", i % 3));
    if let Some((kind, owner)) = owner {
        let api = if kind == "Job" {
            "batch/v1"
        } else if kind == "Rollout" {
            "argoproj.io/v1alpha1"
        } else {
            "apps/v1"
        };
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": api, "kind": kind, "name": owner,
            "uid": format!("uid-{owner}"), "controller": true}]);
    }
    p
}

fn node(i: usize) -> Value {
    let name = format!("aks-nodepool1-31415926-vmss00000{i}");
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "agentpool": "nodepool1",
            "kubernetes.azure.com/network-plugin": "kubenet"}},
        "spec": {"providerID": format!("azure:///subscriptions/{SUB}/resourceGroups/MC_rg-prod_aks-prod_eastus/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-31415926-vmss/virtualMachines/{i}")}})
}

fn wi_webhook() -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "azure-wi-webhook-mutating-webhook-configuration"},
        "webhooks": [{"name": "mutation.azure-workload-identity.io", "admissionReviewVersions": ["v1", "v1beta1"],
            "sideEffects": "None", "failurePolicy": "Fail",
            "clientConfig": {"service": {"name": "azure-wi-webhook-webhook-service", "namespace": "azure-workload-identity-system", "path": "/mutate-v1-pod"}},
            "objectSelector": {"matchLabels": {"azure.workload.identity/use": "true"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]}]})
}

fn cid(n: u32) -> String {
    format!("{n:08x}-4b7e-4c2a-9f3d-{:012x}", u64::from(n) * 7919)
}

/// The bundled example: a production-like AKS cluster still on pod identity, in which every
/// verdict and every reason code the report knows occurs.
pub fn example_objects() -> Vec<Value> {
    let mut o = vec![node(0), node(1), node(2), wi_webhook()];
    let use_wi = |sel: &str, app: &str| json!({"app": app, "aadpodidbinding": sel, "azure.workload.identity/use": "true"});
    let pi = |sel: &str, app: &str| json!({"app": app, "aadpodidbinding": sel});

    // payments: one workload already moved by the bridge (ready), others with steps left.
    o.push(uami("payments", "payments-id", &cid(1)));
    o.push(binding(
        "payments",
        "payments-binding",
        "payments-id",
        "payments",
    ));
    o.push(sa("payments", "checkout", json!({"azure.workload.identity/client-id": cid(1), "podid.dev/federated-credentials": cid(1)})));
    let t = template(
        use_wi("payments", "checkout"),
        pod_spec(
            Some("checkout"),
            "acr.example.io/payments/checkout:4.2.1",
            true,
            false,
        ),
    );
    o.push(deployment("payments", "checkout", 3, t.clone()));
    replicas("payments", "checkout", 3, &t, &mut o);
    let t = template(
        pi("payments", "refunds"),
        pod_spec(None, "acr.example.io/payments/refunds:2.0.7", false, false),
    );
    o.push(deployment("payments", "refunds", 2, t.clone()));
    replicas("payments", "refunds", 2, &t, &mut o);
    o.push(sa("payments", "settlement", json!({})));
    o.push(json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "settlement-nightly", "namespace": "payments"},
        "spec": {"schedule": "30 2 * * *", "jobTemplate": {"spec": {"template":
            template(pi("payments", "settlement"), {let mut s = pod_spec(Some("settlement"), "acr.example.io/payments/settlement:1.9.0", false, false); s["restartPolicy"] = json!("OnFailure"); s})}}}}));
    let bare = template(
        pi("payments", "debug-shell"),
        pod_spec(None, "mcr.microsoft.com/azure-cli:2.61.0", false, false),
    );
    o.push(pod("payments", "debug-shell", 1, None, &bare));

    // orders: scaled to zero (no live pods) and a service-principal identity.
    o.push(uami("orders", "orders-id", &cid(2)));
    o.push(binding("orders", "orders-binding", "orders-id", "orders"));
    o.push(sa("orders", "orders-api", json!({})));
    o.push(deployment(
        "orders",
        "orders-api",
        0,
        template(
            pi("orders", "orders-api"),
            pod_spec(
                Some("orders-api"),
                "acr.example.io/orders/api:3.1.0",
                false,
                false,
            ),
        ),
    ));
    o.push(json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "legacy-sp", "namespace": "orders"},
        "spec": {"type": 1, "tenantID": TENANT, "clientID": cid(3), "clientPassword": {"name": "legacy-sp-secret", "namespace": "orders"}}}));
    o.push(binding(
        "orders",
        "legacy-sp-binding",
        "legacy-sp",
        "orders-legacy",
    ));
    o.push(sa("orders", "ledger-sync", json!({})));
    let t = template(
        pi("orders-legacy", "ledger-sync"),
        pod_spec(
            Some("ledger-sync"),
            "acr.example.io/orders/ledger-sync:0.14.2",
            false,
            false,
        ),
    );
    o.push(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "ledger-sync", "namespace": "orders"},
        "spec": {"replicas": 1, "serviceName": "ledger-sync", "selector": {"matchLabels": {"app": "ledger-sync"}}, "template": t}}));

    // analytics: one selector, two identities.
    o.push(uami("analytics", "lake-writer", &cid(4)));
    o.push(uami("analytics", "lake-reader", &cid(5)));
    o.push(binding(
        "analytics",
        "lake-writer-binding",
        "lake-writer",
        "analytics",
    ));
    o.push(binding(
        "analytics",
        "lake-reader-binding",
        "lake-reader",
        "analytics",
    ));
    o.push(sa("analytics", "ingest", json!({})));
    let t = template(
        pi("analytics", "ingest"),
        pod_spec(
            Some("ingest"),
            "acr.example.io/analytics/ingest:7.0.3",
            false,
            false,
        ),
    );
    o.push(deployment("analytics", "ingest", 2, t.clone()));
    replicas("analytics", "ingest", 2, &t, &mut o);

    // platform: a ServiceAccount shared by workloads on different identities.
    o.push(uami("platform", "metrics-id", &cid(6)));
    o.push(uami("platform", "backup-id", &cid(7)));
    o.push(binding(
        "platform",
        "metrics-binding",
        "metrics-id",
        "metrics",
    ));
    o.push(binding("platform", "backup-binding", "backup-id", "backup"));
    o.push(sa("platform", "platform-runner", json!({})));
    o.push(deployment(
        "platform",
        "exporter",
        1,
        template(
            pi("metrics", "exporter"),
            pod_spec(
                Some("platform-runner"),
                "acr.example.io/platform/exporter:1.3.0",
                false,
                false,
            ),
        ),
    ));
    o.push(deployment(
        "platform",
        "backup",
        1,
        template(
            pi("backup", "backup"),
            pod_spec(
                Some("platform-runner"),
                "acr.example.io/platform/backup:5.5.1",
                false,
                false,
            ),
        ),
    ));

    // monitoring: a host-network DaemonSet.
    o.push(uami("monitoring", "monitor-id", &cid(8)));
    o.push(binding(
        "monitoring",
        "monitor-binding",
        "monitor-id",
        "monitor",
    ));
    o.push(sa("monitoring", "node-exporter", json!({})));
    o.push(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "node-exporter", "namespace": "monitoring"},
        "spec": {"selector": {"matchLabels": {"app": "node-exporter"}},
                 "template": template(pi("monitor", "node-exporter"), pod_spec(Some("node-exporter"), "quay.io/prometheus/node-exporter:v1.8.2", true, true))}}));

    // batch: broken bindings.
    o.push(binding(
        "batch",
        "importer-binding",
        "importer-id",
        "importer",
    ));
    o.push(binding("batch", "archiver-binding", "", "archiver"));
    o.push(deployment(
        "batch",
        "importer",
        1,
        template(
            pi("importer", "importer"),
            pod_spec(None, "acr.example.io/batch/importer:2.2.0", false, false),
        ),
    ));
    o.push(deployment(
        "batch",
        "archiver",
        1,
        template(
            pi("archiver", "archiver"),
            pod_spec(None, "acr.example.io/batch/archiver:1.0.4", false, false),
        ),
    ));
    o.push(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "reindex-2024-06", "namespace": "batch"},
        "spec": {"template": template(pi("search-indexer", "reindex"), {let mut s = pod_spec(None, "acr.example.io/batch/reindex:0.9.1", false, false); s["restartPolicy"] = json!("Never"); s})}}));

    // search: the same identity name bound in two namespaces (pod identity keeps the first),
    // and an identity whose resourceID is not a managed identity's.
    o.push(uami("search", "search-id", &cid(13)));
    o.push(uami("search-staging", "search-id", &cid(14)));
    o.push(binding("search", "search-binding", "search-id", "search"));
    o.push(binding(
        "search-staging",
        "search-binding",
        "search-id",
        "search",
    ));
    o.push(sa("search", "indexer", json!({})));
    o.push(deployment(
        "search",
        "indexer",
        1,
        template(
            pi("search", "indexer"),
            pod_spec(
                Some("indexer"),
                "acr.example.io/search/indexer:2.8.0",
                false,
                false,
            ),
        ),
    ));
    let mut bad = uami("search", "crawler-id", &cid(15));
    bad["spec"]["resourceID"] = json!(format!(
        "/subscriptions/{SUB}/resourceGroups/rg-search/providers/Microsoft.Compute/virtualMachines/crawler-vm"
    ));
    o.push(bad);
    o.push(binding(
        "search",
        "crawler-binding",
        "crawler-id",
        "crawler",
    ));
    o.push(deployment(
        "search",
        "crawler",
        1,
        template(
            pi("crawler", "crawler"),
            pod_spec(None, "acr.example.io/search/crawler:0.5.0", false, false),
        ),
    ));

    // reports: a namespaced identity in another namespace.
    let mut finance = uami("identities", "finance-reader", &cid(9));
    finance["metadata"]["annotations"] = json!({"aadpodidentity.k8s.io/Behavior": "namespaced"});
    o.push(finance);
    o.push(binding(
        "identities",
        "finance-reader-binding",
        "finance-reader",
        "finance-reader",
    ));
    o.push(deployment(
        "reports",
        "monthly-close",
        1,
        template(
            pi("finance-reader", "monthly-close"),
            pod_spec(
                None,
                "acr.example.io/reports/monthly-close:3.0.0",
                false,
                false,
            ),
        ),
    ));

    // ops: excepted pods.
    o.push(uami("ops", "ops-id", &cid(10)));
    o.push(binding("ops", "ops-binding", "ops-id", "ops"));
    o.push(
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
        "metadata": {"name": "legacy-agent-exception", "namespace": "ops"},
        "spec": {"podLabels": {"app": "legacy-agent"}}}),
    );
    o.push(deployment(
        "ops",
        "legacy-agent",
        1,
        template(
            pi("ops", "legacy-agent"),
            pod_spec(None, "acr.example.io/ops/legacy-agent:0.3.0", false, false),
        ),
    ));
    o.push(
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
        "metadata": {"name": "aks-addon-exception", "namespace": "kube-system"},
        "spec": {"podLabels": {"kubernetes.azure.com/managedby": "aks"}}}),
    );
    o.push(deployment(
        "kube-system",
        "azure-policy",
        1,
        template(
            json!({"app": "azure-policy", "kubernetes.azure.com/managedby": "aks"}),
            pod_spec(
                Some("azure-policy"),
                "mcr.microsoft.com/azure-policy/policy-kubernetes-addon-prod:1.7.1",
                false,
                false,
            ),
        ),
    ));

    // web: a workload owned by a controller podid does not resolve, and one without pod identity.
    o.push(uami("web", "web-id", &cid(11)));
    o.push(binding("web", "web-binding", "web-id", "storefront"));
    o.push(sa("web", "storefront", json!({})));
    let t = template(
        pi("storefront", "storefront"),
        pod_spec(
            Some("storefront"),
            "acr.example.io/web/storefront:12.4.0",
            false,
            false,
        ),
    );
    o.push(pod(
        "web",
        "storefront-6b8c9d-q2w4e",
        0,
        Some(("Rollout", "storefront")),
        &t,
    ));
    o.push(pod(
        "web",
        "storefront-6b8c9d-r5t6y",
        1,
        Some(("Rollout", "storefront")),
        &t,
    ));
    let t = template(
        json!({"app": "frontend"}),
        pod_spec(None, "acr.example.io/web/frontend:12.4.0", true, false),
    );
    o.push(deployment("web", "frontend", 2, t.clone()));
    replicas("web", "frontend", 2, &t, &mut o);

    // tenants: one identity, bound once in `identities`, used across 21 namespaces (pod
    // identity matches bindings across namespaces) — over the 20-credential limit.
    o.push(uami("identities", "tenant-reader", &cid(12)));
    o.push(binding(
        "identities",
        "tenant-reader-binding",
        "tenant-reader",
        "tenant-reader",
    ));
    for i in 1..=21 {
        let ns = format!("tenant-{i:02}");
        o.push(deployment(
            &ns,
            "portal",
            1,
            template(
                pi("tenant-reader", "portal"),
                pod_spec(None, "acr.example.io/tenants/portal:8.1.0", false, false),
            ),
        ));
    }
    o
}

/// The second example: a cluster without an OIDC issuer and without the Workload ID webhook.
pub fn legacy_example_objects() -> Vec<Value> {
    let mut o = vec![node(0)];
    o.push(uami("default", "demo-aad1", &cid(20)));
    o.push(binding(
        "default",
        "demo-azure-id-binding",
        "demo-aad1",
        "demo",
    ));
    o.push(sa("default", "demo", json!({})));
    let t = template(
        json!({"app": "demo", "aadpodidbinding": "demo"}),
        pod_spec(
            Some("demo"),
            "mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.8.17",
            false,
            false,
        ),
    );
    o.push(deployment("default", "demo", 1, t.clone()));
    replicas("default", "demo", 1, &t, &mut o);
    o
}

/// The bundled example as an inventory.
pub fn example() -> Inventory {
    inventory(
        example_objects(),
        ClusterFacts {
            name: Some("aks-prod-eastus".into()),
            oidc_issuer: Some(format!(
                "https://eastus.oic.prod-aks.azure.com/{TENANT}/4c1e0b2a-8f3d-4a6b-9c7e-1d2f3a4b5c6d/"
            )),
            network_plugin: Some("kubenet".into()),
            captured_at: Some("2026-11-20T09:30:00Z".into()),
        },
    )
}

/// The legacy example as an inventory.
pub fn legacy_example() -> Inventory {
    inventory(
        legacy_example_objects(),
        ClusterFacts {
            name: Some("aks-legacy-westeurope".into()),
            oidc_issuer: None,
            network_plugin: Some("azure".into()),
            captured_at: Some("2026-11-20T09:30:00Z".into()),
        },
    )
}

/// A large generated cluster: `namespaces` namespaces, `pods` pods in Deployments of 5
/// replicas, one identity and binding per namespace, every tenth Deployment without pod identity.
pub fn scale_objects(namespaces: usize, pods: usize) -> Vec<Value> {
    let mut o: Vec<Value> = (0..3).map(node).collect();
    o.push(wi_webhook());
    let deployments = pods.div_ceil(5);
    for d in 0..deployments {
        let ns = format!("team-{:03}", d % namespaces);
        let selector = format!("app-{ns}");
        if d < namespaces {
            o.push(uami(&ns, "app-id", &cid(1000 + d as u32)));
            o.push(binding(&ns, "app-binding", "app-id", &selector));
        }
        let name = format!("svc-{d:05}");
        let labels = if d % 10 == 9 {
            json!({"app": name})
        } else {
            json!({"app": name, "aadpodidbinding": selector})
        };
        let t = template(
            labels,
            pod_spec(Some(&name), "acr.example.io/svc:1.0.0", d % 2 == 0, false),
        );
        o.push(sa(&ns, &name, json!({})));
        o.push(deployment(&ns, &name, 5, t.clone()));
        let n = 5.min(pods - d * 5);
        replicas(&ns, &name, n, &t, &mut o);
    }
    o
}
