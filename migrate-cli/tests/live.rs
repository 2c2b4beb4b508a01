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

/// A kubeconfig with two contexts, `one` and `two`, onto the same cluster.
fn two_contexts(cluster: &Cluster, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let first = kc["contexts"][0].clone();
    let mut contexts = Vec::new();
    for name in ["one", "two"] {
        let mut c = first.clone();
        c["name"] = name.into();
        contexts.push(c);
    }
    kc["contexts"] = serde_yaml::Value::Sequence(contexts);
    kc["current-context"] = "one".into();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn a_fleet_of_contexts_is_one_report_and_one_cluster_reached_twice_counts_once() {
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let ns = cluster.namespace("fleet").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    apply(c, n, serde_json::json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "app-id"}, "spec": {"type": 0, "clientID": "11111111-0000-0000-0000-0000000000f1",
        "resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fleet-app-id"}})).await;
    apply(c, n, serde_json::json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": "app-binding"}, "spec": {"azureIdentity": "app-id", "selector": "fleet-app"}})).await;
    for name in ["web", "api"] {
        apply(c, n, serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})).await;
        apply(c, n, serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, "aadpodidbinding": "fleet-app"}},
                                  "spec": {"serviceAccountName": name, "containers": [{"name": "c", "image": "registry.invalid/x:1"}]}}}})).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = two_contexts(cluster, dir.path());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_podid"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    };
    let parse = |o: &std::process::Output| {
        assert!(
            o.status.code() == Some(0) || o.status.code() == Some(3),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for c in v["clusters"].as_array_mut().into_iter().flatten() {
            c.as_object_mut().unwrap().remove("capturedAt");
        }
        v
    };

    let fleet = parse(&run(&[
        "report",
        "--context",
        "one",
        "--context",
        "two",
        "-n",
        n,
        "-o",
        "json",
        "-q",
    ]));
    let names: Vec<&str> = fleet["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    for c in fleet["clusters"].as_array().unwrap() {
        assert_eq!(c["oidcIssuer"], cluster.issuer());
        assert_eq!(c["summary"]["workloads"], 2, "{c}");
    }
    let listed: Vec<(&str, &str)> = fleet["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["cluster"].as_str().unwrap(), w["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("one", "api"),
            ("one", "web"),
            ("two", "api"),
            ("two", "web")
        ]
    );
    let ids = fleet["summary"]["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(ids[0]["workloads"], 4);
    assert_eq!(
        ids[0]["federatedCredentials"], 2,
        "one issuer: the same cluster's subjects count once"
    );
    assert_eq!(ids[0]["clusters"], serde_json::json!(["one", "two"]));

    // --all-contexts reads the same two; a snapshot of them reads back the same.
    assert_eq!(
        parse(&run(&[
            "report",
            "--all-contexts",
            "-n",
            n,
            "-o",
            "json",
            "-q"
        ])),
        fleet
    );
    let snap = dir.path().join("fleet.yaml");
    let out = run(&[
        "snapshot",
        "--all-contexts",
        "-n",
        n,
        "-o",
        snap.to_str().unwrap(),
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline = parse(&run(&[
        "report",
        "--from-file",
        snap.to_str().unwrap(),
        "-n",
        n,
        "-o",
        "json",
    ]));
    assert_eq!(offline, fleet);

    // The table: a CLUSTER column and the clusters' summaries.
    let table = String::from_utf8(
        run(&[
            "report",
            "--context",
            "one",
            "--context",
            "two",
            "-n",
            n,
            "-q",
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        table.lines().any(|l| l.starts_with("CLUSTER   NAMESPACE")),
        "{table}"
    );
    assert!(table.contains(&format!("two       {n}")), "{table}");
    assert!(table.contains("CLUSTER FINDINGS"), "{table}");
}

/// `podid crds apply` reads the server's version and applies the CRDs made for it: on a server
/// before 1.31 the variant without `selectableFields` (a 1.30 server would drop the field, or
/// refuse it under strict validation), from 1.31 on the full one; each is Established after.
#[tokio::test]
async fn crds_apply_picks_the_variant_for_the_server_and_each_is_established() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let client = cluster.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    let minor = podid_crds::kube_minor(&version.minor).expect("a known minor");

    let dry = podid(cluster, &["crds", "apply", "--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
    let out = podid(cluster, &["crds", "apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ours = podid_crds::crds_for(minor);
    assert!(ours.len() >= 4, "{ours:?}");
    let mut any_sent = false;
    for crd in &ours {
        let name = crd.metadata.name.as_deref().unwrap();
        assert!(
            dry.contains(&format!(
                "{name} would be applied (for {})",
                version.git_version
            )),
            "{dry}"
        );
        assert!(
            out.contains(&format!("{name} applied (for {})", version.git_version)),
            "{out}"
        );
        let live = crds.get(name).await.unwrap();
        let established = live
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        assert!(established, "{name} is not Established");
        // What the server kept of `selectableFields` is what was sent for its version.
        let kept = live
            .spec
            .versions
            .iter()
            .any(|v| v.selectable_fields.as_ref().is_some_and(|f| !f.is_empty()));
        let sent = crd
            .spec
            .versions
            .iter()
            .any(|v| v.selectable_fields.as_ref().is_some_and(|f| !f.is_empty()));
        // Before the minor that knows them, no CRD carries them.
        assert!(
            !sent || minor >= podid_crds::SELECTABLE_FIELDS_MINOR,
            "{name}: the variant for 1.{minor}"
        );
        any_sent |= sent;
        assert_eq!(kept, sent, "{name} on {}", version.git_version);
    }
    // From that minor on, the CRDs that declare them (AzureAssignedIdentity's node) keep them.
    assert_eq!(
        any_sent,
        minor >= podid_crds::SELECTABLE_FIELDS_MINOR,
        "selectableFields in the variant for 1.{minor}"
    );
}
