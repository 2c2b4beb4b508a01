//! The `podid` binary as a user runs it: exit codes, output formats, snapshot errors.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

mod support;

fn podid(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podid"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run podid")
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_readme_command_works_and_exits_3_when_something_is_blocked() {
    let out = podid(&["report", "--from-file", &example("cluster-snapshot.yaml")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        table.contains("payments     deployment/checkout"),
        "{table}"
    );
    assert!(table.contains("workloads use pod identity"), "{table}");
}

#[test]
fn exit_0_when_nothing_is_blocked() {
    let out = podid(&[
        "report",
        "--from-file",
        &example("cluster-snapshot.yaml"),
        "-n",
        "payments",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn the_examples_cover_every_reason_code_and_verdict() {
    let mut codes = BTreeSet::new();
    let mut verdicts = BTreeSet::new();
    for f in ["cluster-snapshot.yaml", "legacy-cluster-snapshot.yaml"] {
        let out = podid(&["report", "--from-file", &example(f), "-o", "json"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for w in r["workloads"].as_array().unwrap() {
            verdicts.insert(w["verdict"].as_str().unwrap().to_string());
            for f in w["findings"].as_array().unwrap() {
                codes.insert(f["code"].as_str().unwrap().to_string());
            }
        }
    }
    let documented = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/report.md"),
    )
    .unwrap();
    for code in &codes {
        assert!(
            documented.contains(&format!("`{code}`")),
            "reason code {code} is not documented in docs/report.md"
        );
    }
    assert_eq!(codes.len(), 20, "{codes:?}");
    assert_eq!(
        verdicts,
        ["blocked", "needs-changes", "not-using", "ready"]
            .map(String::from)
            .into()
    );
}

#[test]
fn json_and_yaml_carry_the_versioned_schema() {
    let j = podid(&[
        "report",
        "--from-file",
        &example("cluster-snapshot.yaml"),
        "-o",
        "json",
    ]);
    let y = podid(&[
        "report",
        "--from-file",
        &example("cluster-snapshot.yaml"),
        "-o",
        "yaml",
    ]);
    let jv: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    let yv: serde_json::Value = serde_yaml::from_slice(&y.stdout).unwrap();
    assert_eq!(jv, yv);
    assert_eq!(jv["apiVersion"], "podid.dev/v1alpha1");
    assert_eq!(jv["kind"], "Report");
    assert_eq!(
        jv["summary"]["identities"][0]["name"], "tenant-reader",
        "ranked by dependents"
    );
    assert_eq!(jv["summary"]["identities"][0]["workloads"], 21);
    let report: podid_cli::report::Report =
        serde_json::from_value(jv).expect("parses back into the schema");
    assert_eq!(report.summary.verdicts.ready, 1);
}

#[test]
fn html_is_one_file_with_a_chart_and_sortable_tables() {
    let out = podid(&[
        "report",
        "--from-file",
        &example("cluster-snapshot.yaml"),
        "-o",
        "html",
    ]);
    let html = stdout(&out);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains(r#"<svg id="summary-chart""#));
    assert!(html.contains(r#"data-verdict="blocked""#));
    assert_eq!(html.matches(r#"<table class="sortable">"#).count(), 3);
    assert!(
        !html.contains("<link") && !html.contains("src=\"http"),
        "self-contained"
    );
}

#[test]
fn markdown_lists_every_finding() {
    let out = podid(&[
        "report",
        "--from-file",
        &example("legacy-cluster-snapshot.yaml"),
        "-o",
        "markdown",
    ]);
    let md = stdout(&out);
    assert!(md.contains("| default | Deployment/demo | demo |"), "{md}");
    assert!(md.contains("`no-oidc-issuer`") && md.contains("`webhook-not-installed`"));
}

#[test]
fn malformed_snapshot_names_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  containers: oops\n").unwrap();
    let out = podid(&["report", "--from-file", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("broken.yaml: document 2 (Pod shop/web): spec.containers:"),
        "{err}"
    );

    std::fs::write(&f, "kind: Pod\nmetadata: {name: x}\n---\n").unwrap();
    let err = stderr(&podid(&["report", "--from-file", f.to_str().unwrap()]));
    assert!(
        err.contains("document 1") && err.contains("apiVersion"),
        "{err}"
    );

    std::fs::write(&f, "apiVersion: v1\nkind: Pod\n  bad: [indent\n").unwrap();
    let err = stderr(&podid(&["report", "--from-file", f.to_str().unwrap()]));
    assert!(err.contains("broken.yaml: document 1"), "{err}");

    let err = stderr(&podid(&["report", "--from-file", "/nonexistent/snap.yaml"]));
    assert!(err.contains("/nonexistent/snap.yaml"), "{err}");
}

#[test]
fn unknown_kinds_and_secrets_are_skipped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mixed.json");
    std::fs::write(&f, serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}, "data": {}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "x"}, "data": {"k": "c2VjcmV0"}}
    ]}).to_string()).unwrap();
    let out = podid(&["report", "--from-file", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("skipped 1 object(s) of kind v1/ConfigMap"),
        "{err}"
    );
    assert!(err.contains("v1/Secret"), "{err}");
    assert!(!stdout(&out).contains("c2VjcmV0"));
}

#[test]
fn no_kubeconfig_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_podid"))
        .args(["report"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no usable kubeconfig"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_kubectl_plugin_binary_is_the_same_program() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-podid"))
        .args([
            "report",
            "--from-file",
            &example("legacy-cluster-snapshot.yaml"),
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "Report");
}

#[test]
fn selector_applies_to_snapshots_and_a_bad_one_is_a_usage_error() {
    let file = example("cluster-snapshot.yaml");
    let out = podid(&[
        "report",
        "--from-file",
        &file,
        "-o",
        "json",
        "-l",
        "app=checkout",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = v["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checkout"]);

    let bad = podid(&["report", "--from-file", &file, "-l", "app in checkout"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("label selector"), "{}", stderr(&bad));
}

#[test]
fn oidc_issuer_flag_overrides_the_snapshot() {
    let file = example("legacy-cluster-snapshot.yaml");
    let before = podid(&["report", "--from-file", &file, "-o", "json"]);
    assert!(stdout(&before).contains("no-oidc-issuer"));
    let after = podid(&[
        "report",
        "--from-file",
        &file,
        "-o",
        "json",
        "--oidc-issuer",
        "https://westeurope.oic.prod-aks.azure.com/t/c/",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&after)).unwrap();
    assert_eq!(
        v["cluster"]["oidcIssuer"],
        "https://westeurope.oic.prod-aks.azure.com/t/c/"
    );
    assert!(
        v["summary"]["reasons"].get("no-oidc-issuer").is_none(),
        "{v}"
    );
}

/// The bundled snapshots are what `cargo run -p podid-cli --example write-example-snapshots`
/// writes from `tests/support/synth.rs`: an edit of one without the other fails here.
#[test]
fn the_bundled_examples_are_what_the_generator_writes() {
    for (file, inventory) in [
        ("cluster-snapshot.yaml", support::synth::example()),
        (
            "legacy-cluster-snapshot.yaml",
            support::synth::legacy_example(),
        ),
    ] {
        let bundled = std::fs::read_to_string(example(file)).unwrap();
        assert!(
            bundled == inventory.to_snapshot_yaml().unwrap(),
            "examples/{file} differs from what the generator writes: run `cargo run -p podid-cli --example write-example-snapshots`"
        );
    }
}
