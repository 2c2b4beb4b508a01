//! A live cluster and a snapshot of it give the same report.

use std::process::Command;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use podid_testkit::Cluster;

async fn apply(client: &kube::Client, ns: &str, obj: serde_json::Value) {
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    let tm = obj.types.clone().unwrap();
    let (group, version) = tm
        .api_version
        .split_once('/')
        .unwrap_or(("", &tm.api_version));
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: tm.api_version.clone(),
        kind: tm.kind.clone(),
        plural: match tm.kind.as_str() {
            "AzureIdentity" => "azureidentities".into(),
            k => format!("{}s", k.to_lowercase()),
        },
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch(
        obj.metadata.name.as_deref().unwrap(),
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {}: {e}", tm.kind));
}

fn podid(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podid"))
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig())
        .output()
        .unwrap()
}

#[tokio::test]
async fn live_report_equals_report_of_its_snapshot() {
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let ns = cluster.namespace("report").await;
    let c = &ns.client;
    let n = ns.name.as_str();
    apply(c, n, serde_json::json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "app-id"}, "spec": {"type": 0, "clientID": "11111111-0000-0000-0000-000000000001",
        "resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-id"}})).await;
    apply(c, n, serde_json::json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": "app-binding"}, "spec": {"azureIdentity": "app-id", "selector": "app"}})).await;
    apply(c, n, serde_json::json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": "broken"}, "spec": {"azureIdentity": "missing", "selector": "broken"}})).await;
    apply(c, n, serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}})).await;
    for (name, selector, sa) in [
        ("web", "app", Some("web")),
        ("api", "app", None),
        ("cron", "broken", None),
    ] {
        let mut spec =
            serde_json::json!({"containers": [{"name": "c", "image": "registry.invalid/x:1"}]});
        if let Some(sa) = sa {
            spec["serviceAccountName"] = sa.into();
        }
        apply(c, n, serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, "aadpodidbinding": selector}}, "spec": spec}}})).await;
    }

    let live = podid(cluster, &["report", "-n", n, "-o", "json", "--quiet"]);
    assert_eq!(
        live.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.yaml");
    let out = podid(
        cluster,
        &["snapshot", "-n", n, "-o", snap.to_str().unwrap(), "--quiet"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&snap).unwrap();
    assert!(!text.contains("kind: Secret"));
    let offline = podid(
        cluster,
        &[
            "report",
            "--from-file",
            snap.to_str().unwrap(),
            "-n",
            n,
            "-o",
            "json",
        ],
    );
    assert_eq!(offline.status.code(), Some(3));

    let parse = |o: &std::process::Output| {
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["cluster"].as_object_mut().unwrap().remove("capturedAt");
        v
    };
    let a = parse(&live);
    assert_eq!(a, parse(&offline));

    // A label selector narrows both the same way.
    let snap_path = snap.to_str().unwrap();
    let live_sel = podid(
        cluster,
        &["report", "-n", n, "-l", "app=web", "-o", "json", "-q"],
    );
    let file_sel = podid(
        cluster,
        &[
            "report",
            "--from-file",
            snap_path,
            "-n",
            n,
            "-l",
            "app=web",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        live_sel.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&live_sel.stderr)
    );
    assert_eq!(parse(&live_sel), parse(&file_sel));
    assert_eq!(parse(&live_sel)["workloads"].as_array().unwrap().len(), 1);
    assert_eq!(
        a["cluster"]["oidcIssuer"],
        cluster.issuer(),
        "issuer discovered from the live cluster"
    );
    let verdicts: Vec<(String, String)> = a["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_string(),
                w["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("api", "needs-changes"),
            ("cron", "blocked"),
            ("web", "needs-changes")
        ]
        .map(|(x, y)| (x.to_string(), y.to_string()))
    );
}
