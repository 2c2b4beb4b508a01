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
    // The committed YAML for this server's version (not only the in-memory CRDs the harness
    // installed) applies cleanly under strict field validation: crds.yaml from 1.31 on,
    // crds-pre-1.31.yaml before.
    let client = cluster.client().await.unwrap();
    let minor = podid_crds::kube_minor(&client.apiserver_version().await.unwrap().minor).unwrap();
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join(podid_crds::crds_file_for(minor));
    let out = kubectl(
        cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--validate=strict",
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

/// A valid object of each CRD with every field of its schema set, status included: the base
/// the table below breaks one field of at a time.
fn full_objects() -> Vec<serde_json::Value> {
    use serde_json::json;
    const RID: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id";
    vec![
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
            "spec": {"type": 0, "resourceID": RID, "clientID": "c", "tenantID": "t", "adEndpoint": "e",
                     "adResourceID": "r", "auxiliaryTenantIDs": ["a"],
                     "clientPassword": {"name": "s", "namespace": "ns"}, "metadata": {}, "replicas": 1},
            "status": {"availableReplicas": 1, "metadata": {}}}),
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
            "spec": {"azureIdentity": "id", "selector": "sel", "weight": 1, "metadata": {}},
            "status": {"availableReplicas": 1, "metadata": {}}}),
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
            "spec": {"azureIdentityRef": {}, "azureBindingRef": {}, "metadata": {}, "nodename": "n",
                     "pod": "p", "podNamespace": "ns", "replicas": 1},
            "status": {"availableReplicas": 1, "metadata": {}, "status": "Assigned"}}),
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
            "spec": {"podLabels": {"k": "v"}, "metadata": {}},
            "status": {"metadata": {}, "status": "s"}}),
        json!({"apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
            "spec": {"workload": {"kind": "Deployment", "name": "web"}, "stage": "Switched",
                     "recordedTemplate": {}, "removedPodIdentity": [{}]},
            "status": {"conditions": [{"type": "Proven", "status": "True", "reason": "Exchanged",
                                       "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z",
                                       "observedGeneration": 1}],
                       "credentials": [{"identity": RID, "issuer": "https://i/", "name": "n",
                                        "ready": true, "subject": "system:serviceaccount:ns:web"}],
                       "identities": [{"azureIdentity": "ns/id", "clientID": "c", "resourceID": RID,
                                       "tenantID": "t"}],
                       "observedGeneration": 1, "proven": "1/1", "stage": "Bridged",
                       "targetServiceAccount": "web"}}),
    ]
}

/// One malformed object: the field path the server must name, what was done to it, the object.
struct Malformed {
    path: String,
    what: String,
    object: serde_json::Value,
}

/// The JSON pointer of a schema path such as `.status.conditions[0].reason`.
fn pointer(path: &str) -> String {
    path.replace("[0]", ".0").replace('.', "/")
}

/// Every field of `schema` that carries a constraint, broken one at a time in `base`: the
/// wrong type, a value outside `enum`, one character over `maxLength` or under `minLength`, a
/// malformed `date-time`, an `int32` overflow, a `required` field removed. Returns also the
/// constrained paths `base` does not hold (the table would miss them).
fn malformed(
    schema: &serde_json::Value,
    path: &str,
    base: &serde_json::Value,
    out: &mut Vec<Malformed>,
    missing: &mut Vec<String>,
) {
    use serde_json::{Value, json};
    let Some(present) = base.pointer(&pointer(path)) else {
        missing.push(path.to_owned());
        return;
    };
    let field = path.trim_start_matches('.');
    let mut with = |what: String, value: Value| {
        let mut object = base.clone();
        *object.pointer_mut(&pointer(path)).unwrap() = value;
        out.push(Malformed {
            path: field.to_owned(),
            what,
            object,
        });
    };
    if !field.is_empty() {
        let wrong = match schema["type"].as_str() {
            Some("integer") => Some(json!("x")),
            Some("string") => Some(json!(5)),
            Some("boolean") => Some(json!("yes")),
            Some("array") | Some("object") => Some(json!("x")),
            _ => None,
        };
        if let Some(w) = wrong {
            with(format!("wrong type {w}"), w);
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        let bad = if present.is_string() {
            json!("NotAValue")
        } else {
            json!(7)
        };
        assert!(!values.contains(&bad));
        with(format!("outside enum {bad}"), bad);
    }
    if let Some(n) = schema["maxLength"].as_u64() {
        with(
            format!("{} characters", n + 1),
            json!("a".repeat(n as usize + 1)),
        );
    }
    if let Some(n) = schema["minLength"].as_u64().filter(|n| *n > 0) {
        with(
            format!("{} characters", n - 1),
            json!("a".repeat(n as usize - 1)),
        );
    }
    match schema["format"].as_str() {
        Some("date-time") => with("not a date-time".into(), json!("yesterday")),
        Some("int32") => with("int32 overflow".into(), json!(2_147_483_648_i64)),
        _ => {}
    }
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap();
        let child = format!("{path}.{key}");
        if base.pointer(&pointer(&child)).is_some() {
            let mut object = base.clone();
            object
                .pointer_mut(&pointer(path))
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            out.push(Malformed {
                path: child.trim_start_matches('.').to_owned(),
                what: "required, removed".into(),
                object,
            });
        } else {
            missing.push(child);
        }
    }
    for (key, child) in schema["properties"].as_object().into_iter().flatten() {
        malformed(child, &format!("{path}.{key}"), base, out, missing);
    }
    if schema["items"].is_object() {
        malformed(&schema["items"], &format!("{path}[0]"), base, out, missing);
    }
    if schema["additionalProperties"].is_object() {
        let key = base
            .pointer(&pointer(path))
            .and_then(Value::as_object)
            .and_then(|m| m.keys().next().cloned())
            .unwrap_or_default();
        malformed(
            &schema["additionalProperties"],
            &format!("{path}.{key}"),
            base,
            out,
            missing,
        );
    }
}

/// Every field of every CRD (pod identity's and podid's) that has a constraint in the Rust
/// types, given a malformed value on the real API server: refused, the message naming the
/// field's path, nothing stored (no object; for a status through its subresource, the object's
/// resourceVersion unchanged). The rules (`x-kubernetes-validations`) are broken by hand below.
#[tokio::test]
async fn every_constrained_crd_field_is_enforced_naming_its_path() {
    use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
    use kube::discovery::ApiResource;
    use serde_json::json;

    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let ns = cluster.namespace("crdtable").await;
    let mut rows = 0;
    let mut failures = Vec::new();
    let mut unenforced = Vec::new();
    let mut partly_named: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    for crd in podid_crds::all_crds() {
        let kind = crd.spec.names.kind.clone();
        let version = crd.spec.versions.iter().find(|v| v.storage).unwrap();
        let status_subresource = version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some());
        let ar = ApiResource {
            group: crd.spec.group.clone(),
            version: version.name.clone(),
            api_version: format!("{}/{}", crd.spec.group, version.name),
            kind: kind.clone(),
            plural: crd.spec.names.plural.clone(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let base = full_objects()
            .into_iter()
            .find(|o| o["kind"] == kind.as_str())
            .unwrap_or_else(|| panic!("no full object of {kind}"));
        let mut table = Vec::new();
        let mut missing = Vec::new();
        malformed(&schema, "", &base, &mut table, &mut missing);
        assert!(
            missing.is_empty(),
            "{kind}: the full object lacks {missing:?}"
        );
        // The rules: what the structural schema cannot say.
        if kind == "AzureIdentity" {
            for (what, spec) in [
                (
                    "resourceID not an ARM id",
                    json!({"type": 0, "resourceID": "not-an-arm-id", "clientID": "c"}),
                ),
                (
                    "resourceID of a VM scale set",
                    json!({"type": 0, "clientID": "c",
                    "resourceID": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool"}),
                ),
                ("type omitted, no resourceID", json!({"clientID": "c"})),
            ] {
                let mut object = base.clone();
                object["spec"] = spec;
                table.push(Malformed {
                    path: "spec.resourceID".into(),
                    what: what.into(),
                    object,
                });
            }
        }
        // The full object itself is valid: the table breaks one thing at a time.
        let mut full = base.clone();
        full["metadata"] = json!({"name": "full"});
        let created = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(full).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind}: the full object is refused: {e}"));
        if status_subresource {
            let mut o = serde_json::to_value(&created).unwrap();
            o["status"] = base["status"].clone();
            api.replace_status(
                "full",
                &PostParams::default(),
                &serde_json::from_value(o).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind}: the full status is refused: {e}"));
        }
        api.delete("full", &DeleteParams::default()).await.unwrap();

        for (i, m) in table.into_iter().enumerate() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(600),
                "the table took longer than 10 minutes"
            );
            rows += 1;
            let name = format!("bad-{}-{i}", kind.to_ascii_lowercase());
            let through_status = status_subresource && m.path.starts_with("status");
            let mut object = m.object.clone();
            object["metadata"] = json!({"name": name});
            let label = format!("{kind} {} ({})", m.path, m.what);
            let (result, stored_rv) = if through_status {
                // The object without status first, then the malformed status.
                let mut plain = base.clone();
                plain["metadata"] = json!({"name": name});
                plain.as_object_mut().unwrap().remove("status");
                let o = api
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(plain).unwrap(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{label}: create: {e}"));
                let rv = o.metadata.resource_version.clone();
                object["metadata"]["resourceVersion"] = json!(rv);
                let r = api
                    .replace_status(
                        &name,
                        &PostParams::default(),
                        &serde_json::from_value(object).unwrap(),
                    )
                    .await;
                (r, rv)
            } else {
                let r = match serde_json::from_value::<DynamicObject>(object.clone()) {
                    Ok(o) => api.create(&PostParams::default(), &o).await,
                    Err(e) => panic!("{label}: {e}"),
                };
                (r, None)
            };
            match result {
                Ok(_) => unenforced.push(label.clone()),
                Err(kube::Error::Api(e)) => {
                    let leaf = m.path.rsplit('.').next().unwrap_or_default();
                    let top = m.path.split('.').next().unwrap_or_default();
                    if e.message.contains(&m.path) {
                        // Named by its path.
                    } else if e.message.contains(&format!("{top}:")) && e.message.contains(leaf) {
                        // The API server names the top-level field and the leaf, not the path.
                        partly_named.push(label.clone());
                    } else {
                        failures.push(format!(
                            "{label}: message does not name {}: {}",
                            m.path, e.message
                        ));
                    }
                }
                Err(e) => failures.push(format!("{label}: {e}")),
            }
            // Nothing stored: no object, or the status unchanged.
            let now = api.get_opt(&name).await.unwrap();
            match (&now, through_status) {
                (None, false) => {}
                (Some(o), true)
                    if o.metadata.resource_version == stored_rv
                        && o.data.get("status").is_none_or(|s| s.is_null()) => {}
                _ if unenforced.last() == Some(&label) => {}
                _ => failures.push(format!("{label}: stored: {now:?}")),
            }
            if now.is_some() {
                api.delete(&name, &DeleteParams::default()).await.unwrap();
            }
        }
    }
    println!(
        "{rows} malformed CRD fields tried; not enforced: {unenforced:?}; named by top-level field and leaf only: {partly_named:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(unenforced.is_empty(), "accepted malformed: {unenforced:#?}");
    // The API server's int32 check of a field under `status`, written through the status
    // subresource, says "status: ... in availableReplicas": the field, not its path.
    assert_eq!(
        partly_named,
        [
            "AzureIdentity status.availableReplicas (int32 overflow)",
            "AzureIdentityBinding status.availableReplicas (int32 overflow)"
        ],
        "messages naming the field without its path"
    );
    assert!(rows >= 60, "the table lost rows: {rows}");
}
