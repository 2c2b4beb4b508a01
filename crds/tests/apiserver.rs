//! The generated CRDs on a real kube-apiserver: the original project's documented manifests
//! apply unchanged with kubectl, and malformed objects are rejected naming the field.

use std::path::{Path, PathBuf};
use std::process::Output;

use podid_testkit::Cluster;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> Output {
    cluster
        .kubectl()
        .expect("kubectl")
        .args(args)
        .output()
        .expect("run kubectl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn generated_crd_yaml_applies_and_fixtures_apply_unchanged() {
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    // The committed YAML (not only the in-memory CRDs the harness installed) applies cleanly.
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds.yaml");
    let out = kubectl(
        cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    let ns = cluster.namespace("fixtures").await;
    for f in [
        "azureidentity-msi.yaml",
        "azureidentity-sp.yaml",
        "azureidentity-sp-cert.yaml",
        "azureidentity-namespaced.yaml",
        "azureidentitybinding.yaml",
        "mic-exception.yaml",
    ] {
        let path = fixtures().join(f);
        // mic-exception.yaml names namespace default itself; the others go to the test namespace.
        let ns_args: Vec<&str> = if f == "mic-exception.yaml" {
            vec![]
        } else {
            vec!["-n", &ns.name]
        };
        let mut args = vec!["apply", "-f", path.to_str().unwrap()];
        args.extend(ns_args);
        let out = kubectl(cluster, &args);
        assert!(out.status.success(), "{f}: {}", text(&out));
    }
    let kube_system = fixtures().join("aks-addon-exception.yaml");
    let out = kubectl(cluster, &["apply", "-f", kube_system.to_str().unwrap()]);
    assert!(out.status.success(), "aks-addon-exception: {}", text(&out));

    // What was applied reads back with its fields intact (nothing pruned by the schema).
    let out = kubectl(
        cluster,
        &[
            "get",
            "azureidentity",
            "demo-aad1-sp",
            "-n",
            &ns.name,
            "-o",
            "json",
        ],
    );
    let id: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(id["spec"]["type"], 1);
    assert_eq!(id["spec"]["clientPassword"]["name"], "demo-aad1-sp");
    assert_eq!(
        id["spec"]["tenantID"],
        "72f988bf-86f1-41af-91ab-2d7cd011db47"
    );
    let out = kubectl(cluster, &["get", "azureidentitybindings", "-n", &ns.name]);
    let table = text(&out);
    assert!(
        table.contains("AZUREIDENTITY") && table.contains("demo-aad1") && table.contains("demo"),
        "{table}"
    );
}

#[tokio::test]
async fn malformed_objects_are_rejected_naming_the_field() {
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let ns = cluster.namespace("invalid").await;
    let dir = fixtures().join("invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read_to_string(&path).unwrap();
        let field = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!("{}: first line must be `# expect: <field>`", path.display())
            });
        let out = kubectl(
            cluster,
            &["apply", "-n", &ns.name, "-f", path.to_str().unwrap()],
        );
        assert!(!out.status.success(), "{} was accepted", path.display());
        let msg = text(&out);
        assert!(
            msg.contains(field),
            "{}: message does not name {field}: {msg}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 3);
}

#[tokio::test]
async fn objects_written_by_the_original_schema_stay_readable() {
    // An object as the original MIC writes it: embedded copies with metadata, legacy empty status.
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let ns = cluster.namespace("legacy").await;
    let api: kube::Api<podid_crds::AzureAssignedIdentity> =
        kube::Api::namespaced(ns.client.clone(), &ns.name);
    let obj: podid_crds::AzureAssignedIdentity = serde_json::from_value(serde_json::json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
        "metadata": {"name": "demo-default-demo-aad1", "labels": {"nodename": "node-0"},
                     "finalizers": ["azureassignedidentity.finalizers.aadpodidentity.k8s.io"]},
        "spec": {
            "azureIdentityRef": {"metadata": {"name": "demo-aad1", "namespace": "default", "resourceVersion": "12"},
                                 "spec": {"type": 0, "resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo-aad1", "clientID": "c"}},
            "azureBindingRef": {"metadata": {"name": "b", "namespace": "default"}, "spec": {"azureIdentity": "demo-aad1", "selector": "demo"}},
            "pod": "demo", "podNamespace": "default", "nodename": "node-0", "metadata": {}
        },
        "status": {"status": "Created", "availableReplicas": 1}
    }))
    .unwrap();
    api.create(&Default::default(), &obj)
        .await
        .expect("create as the original MIC would");
    // The original MIC writes status through the main resource: that must take effect.
    let patch =
        serde_json::json!([{"op": "replace", "path": "/status/status", "value": "Assigned"}]);
    let patched = api
        .patch(
            "demo-default-demo-aad1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::<()>::Json(serde_json::from_value(patch).unwrap()),
        )
        .await
        .expect("JSON-patch status on the main resource");
    assert_eq!(
        patched.status.unwrap().status,
        podid_crds::AssignedIdentityState::Assigned
    );
    let back = api.get("demo-default-demo-aad1").await.unwrap();
    assert_eq!(
        back.spec
            .azure_identity_ref
            .unwrap()
            .metadata
            .resource_version
            .as_deref(),
        Some("12")
    );
    // Clean up the finalizer so the namespace can go.
    let clear = serde_json::json!({"metadata": {"finalizers": null}});
    api.patch(
        "demo-default-demo-aad1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(clear),
    )
    .await
    .unwrap();
}
