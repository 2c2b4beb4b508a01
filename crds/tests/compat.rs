//! The CRD variants against the API of the Kubernetes minors they are for: every field of
//! `crds/crds-pre-1.31.yaml` is one the oldest supported minor's apiextensions types know, and
//! the one field `crds/crds.yaml` adds (`selectableFields`) is exactly what that minor gates off
//! by default. The facts come from `k8s.io/apiextensions-apiserver` at that minor's release,
//! fetched from the Go module proxy (cached in the Go module cache).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// The apiextensions module release of the oldest supported minor, 1.30.
const OLDEST_MODULE: &str = "k8s.io/apiextensions-apiserver@v0.30.14";

/// The module's directory, downloaded with `go mod download` when not cached.
fn module_dir(test: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("go")
        .args(["mod", "download", "-json", OLDEST_MODULE])
        .env("GOFLAGS", "-mod=mod")
        .current_dir(std::env::temp_dir())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            podid_testkit::prereq::skip(
                test,
                &format!(
                    "go mod download {OLDEST_MODULE} failed: {}",
                    String::from_utf8_lossy(&o.stdout)
                ),
            );
            return None;
        }
        Err(e) => {
            podid_testkit::prereq::skip(test, &format!("the go command is needed: {e}"));
            return None;
        }
    };
    let v: Value = serde_json::from_slice(&out.stdout).expect("go mod download -json");
    Some(PathBuf::from(v["Dir"].as_str().expect("Dir")))
}

/// Every JSON field name the module's v1 API types declare.
fn json_fields(dir: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in ["types.go", "types_jsonschema.go"] {
        let text = std::fs::read_to_string(dir.join("pkg/apis/apiextensions/v1").join(f)).unwrap();
        for part in text.split("json:\"").skip(1) {
            let name = part.split([',', '"']).next().unwrap_or_default();
            if !name.is_empty() && name != "-" {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

/// Every field name a CRD's `spec` uses, outside the maps whose keys are data (property names).
fn used_fields(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                out.insert(k.clone());
                match k.as_str() {
                    // Keys are property names; each value is a schema.
                    "properties" | "patternProperties" | "definitions" => {
                        for schema in child.as_object().into_iter().flatten().map(|(_, s)| s) {
                            used_fields(schema, out);
                        }
                    }
                    // Free-form values.
                    "default" | "example" | "enum" => {}
                    _ => used_fields(child, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| used_fields(x, out)),
        _ => {}
    }
}

fn spec_fields(yaml: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for doc in yaml
        .split("\n---\n")
        .filter(|d| d.contains("kind: CustomResourceDefinition"))
    {
        let v: Value = serde_yaml::from_str(doc).unwrap();
        used_fields(&v["spec"], &mut out);
    }
    out
}

#[test]
fn the_pre_1_31_variant_uses_only_fields_kubernetes_1_30_knows_and_honours() {
    let test = "the_pre_1_31_variant_uses_only_fields_kubernetes_1_30_knows_and_honours";
    let Some(dir) = module_dir(test) else {
        return;
    };
    let known = json_fields(&dir);
    assert!(known.contains("x-kubernetes-validations") && known.contains("openAPIV3Schema"));

    let pre = podid_crds::crds_yaml_for(podid_crds::OLDEST_KUBE_MINOR).unwrap();
    let unknown: Vec<String> = spec_fields(&pre).difference(&known).cloned().collect();
    assert!(unknown.is_empty(), "fields 1.30 does not know: {unknown:?}");

    // What the newest file adds is only selectableFields, and 1.30 has it as an alpha feature,
    // off by default: an API server drops it on write, so the variant leaves it out.
    let newest = podid_crds::crds_yaml().unwrap();
    let added: Vec<String> = spec_fields(&newest)
        .difference(&spec_fields(&pre))
        .cloned()
        .collect();
    assert_eq!(added, ["selectableFields"]);
    let gates = std::fs::read_to_string(dir.join("pkg/features/kube_features.go")).unwrap();
    let gate = gates
        .lines()
        .find(|l| l.trim_start().starts_with("CustomResourceFieldSelectors:"))
        .expect("the CustomResourceFieldSelectors gate in 1.30");
    assert!(gate.contains("Default: false"), "{gate}");
    assert_eq!(podid_crds::SELECTABLE_FIELDS_MINOR, 31);
}

#[test]
fn the_committed_files_are_what_the_types_generate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(podid_crds::crds_file_for(37), "crds.yaml");
    for minor in [
        podid_crds::SELECTABLE_FIELDS_MINOR,
        podid_crds::OLDEST_KUBE_MINOR,
    ] {
        let file = podid_crds::crds_file_for(minor);
        let committed = std::fs::read_to_string(root.join(file)).unwrap();
        assert_eq!(
            committed,
            podid_crds::crds_yaml_for(minor).unwrap(),
            "{file}"
        );
    }
}
