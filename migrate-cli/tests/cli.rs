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

fn plain_list(items: Vec<serde_json::Value>) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
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
    // The legacy cluster's objects as plain `kubectl get -o json` output: no header, so its
    // issuer is unknown (`oidc-issuer-unknown`).
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, plain_list(support::synth::legacy_example_objects())).unwrap();
    for f in [
        example("cluster-snapshot.yaml"),
        example("legacy-cluster-snapshot.yaml"),
        plain.display().to_string(),
    ] {
        let out = podid(&["report", "--from-file", &f, "-o", "json"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for w in r["workloads"].as_array().unwrap() {
            verdicts.insert(w["verdict"].as_str().unwrap().to_string());
            for f in w["findings"].as_array().unwrap() {
                codes.insert(f["code"].as_str().unwrap().to_string());
            }
        }
        for f in r["cluster"]["findings"].as_array().into_iter().flatten() {
            codes.insert(f["code"].as_str().unwrap().to_string());
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
    assert_eq!(
        codes.len(),
        podid_crds::reason::ReasonCode::ALL.len(),
        "{codes:?}"
    );
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

#[test]
fn a_cluster_wide_fact_is_said_once_above_the_table() {
    // The legacy cluster records that it has no issuer and lacks the webhook: said once, for the
    // cluster; the workload's own verdict stays about the workload; the cluster blocks: exit 3.
    let legacy = example("legacy-cluster-snapshot.yaml");
    let out = podid(&["report", "--from-file", &legacy]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.starts_with(
            "cluster: no-oidc-issuer (blocker): the cluster has no public OIDC issuer"
        ),
        "{table}"
    );
    assert_eq!(table.matches("no-oidc-issuer").count(), 1, "{table}");
    assert_eq!(table.matches("webhook-not-installed").count(), 1, "{table}");
    assert!(
        table.contains("The cluster itself blocks the move"),
        "{table}"
    );
    let out = podid(&["report", "--from-file", &legacy, "-o", "yaml"]);
    let v: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = v["cluster"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["no-oidc-issuer", "webhook-not-installed"]);
    assert_eq!(v["cluster"]["findings"][0]["severity"], "blocker");
    let demo = &v["workloads"].as_array().unwrap()[0];
    assert_eq!(demo["verdict"], "needs-changes", "{demo}");
    assert!(
        !demo.to_string().contains("no-oidc-issuer"),
        "not repeated per workload: {demo}"
    );

    // The same objects as a plain kubectl export: the issuer is unknown, not absent.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, plain_list(support::synth::legacy_example_objects())).unwrap();
    let out = podid(&["report", "--from-file", plain.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.starts_with("cluster: oidc-issuer-unknown (step): the input does not record the cluster's OIDC issuer"),
        "{table}"
    );
    assert!(table.contains("pass --oidc-issuer URL"), "{table}");
    assert!(!table.contains("no-oidc-issuer"), "{table}");
    assert!(table.contains("default     deployment/demo"), "{table}");
    // Supplying it says no more about it.
    let out = podid(&[
        "report",
        "--from-file",
        plain.to_str().unwrap(),
        "--oidc-issuer",
        "https://westeurope.oic.prod-aks.azure.com/t/c/",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cluster"]["findings"][0]["code"], "webhook-not-installed");
    assert_eq!(v["cluster"]["findings"].as_array().unwrap().len(), 1);
}

/// `n` namespaces, each with a Deployment on the identity `shared` (one resource ID in every
/// cluster, under a cluster-specific AzureIdentity name) and its own ServiceAccount.
fn shared_identity_cluster(identity_name: &str, n: usize) -> Vec<serde_json::Value> {
    let mut o = vec![
        support::uami_in("s", "rg", "default", identity_name, "c-shared"),
        support::binding("default", "shared-binding", identity_name, "shared"),
    ];
    // The resource ID names the one Azure identity, whatever the AzureIdentity is called.
    o[0]["spec"]["resourceID"] = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/shared".into();
    for i in 0..n {
        let ns = format!("team-{i:02}");
        o.push(support::sa(&ns, "app", serde_json::json!({})));
        o.push(serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "app"}},
                     "template": {"metadata": {"labels": {"app": "app", "aadpodidbinding": "shared"}},
                                  "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "app:1"}]}}}}));
    }
    o
}

fn snapshot_of(name: &str, issuer: &str, objects: Vec<serde_json::Value>) -> String {
    support::inventory(
        objects,
        podid_cli::inventory::ClusterFacts {
            name: Some(name.into()),
            oidc_issuer: Some(issuer.into()),
            ..Default::default()
        },
    )
    .to_snapshot_yaml()
    .unwrap()
}

#[test]
fn a_fleet_of_snapshots_is_one_report_with_the_credential_limit_counted_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("aks-a.yaml");
    let b = dir.path().join("aks-b.yaml");
    std::fs::write(
        &a,
        snapshot_of(
            "aks-a",
            "https://eastus.oic.prod-aks.azure.com/t/a/",
            shared_identity_cluster("shared-id", 12),
        ),
    )
    .unwrap();
    std::fs::write(
        &b,
        snapshot_of(
            "aks-b",
            "https://westeurope.oic.prod-aks.azure.com/t/b/",
            shared_identity_cluster("payments-id", 10),
        ),
    )
    .unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    // Each cluster alone is under the limit.
    for f in [a, b] {
        let out = podid(&["report", "--from-file", f, "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(!stdout(&out).contains("federated-credential-limit"));
    }

    // Together: 12 + 10 credentials on one identity.
    let out = podid(&["report", "--from-file", a, "--from-file", b, "-o", "json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("cluster").is_none(), "{v}");
    let clusters = v["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["aks-a", "aks-b"]);
    assert_eq!(clusters[0]["summary"]["verdicts"]["blocked"], 12);
    assert_eq!(clusters[1]["summary"]["verdicts"]["blocked"], 10);
    let ids = v["summary"]["identities"].as_array().unwrap();
    assert_eq!(
        ids.len(),
        1,
        "matched across clusters by resource ID: {ids:?}"
    );
    assert_eq!(ids[0]["federatedCredentials"], 22);
    assert_eq!(ids[0]["workloads"], 22);
    assert_eq!(ids[0]["clusters"], serde_json::json!(["aks-a", "aks-b"]));
    let w = &v["workloads"][0];
    assert_eq!(w["cluster"], "aks-a");
    let limit = w["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "federated-credential-limit")
        .expect("limit counted over the fleet");
    let m = limit["message"].as_str().unwrap();
    assert!(
        m.contains("22 federated credentials over 2 cluster(s) (aks-a 12, aks-b 10"),
        "{m}"
    );
    assert!(v["summary"]["namespaces"].get("aks-b/team-03").is_some());

    let table = stdout(&podid(&["report", "--from-file", a, "--from-file", b]));
    assert!(
        table.starts_with("cluster aks-a: webhook-not-installed (step)"),
        "{table}"
    );
    assert!(table.contains("\n\nCLUSTER   NAMESPACE"), "{table}");
    assert!(table.contains("aks-b     team-09"), "{table}");
    assert!(table.contains("CLUSTER FINDINGS"), "{table}");
    assert!(table.contains("22/20"), "{table}");

    // One file holding both (`podid snapshot --all-contexts` writes that) reads the same.
    let both = dir.path().join("fleet.yaml");
    std::fs::write(
        &both,
        std::fs::read_to_string(a).unwrap() + &std::fs::read_to_string(b).unwrap(),
    )
    .unwrap();
    let one = podid(&[
        "report",
        "--from-file",
        both.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&one.stdout).unwrap(),
        v
    );

    // A bare --oidc-issuer cannot say which cluster; CLUSTER=URL can.
    let bare = podid(&[
        "report",
        "--from-file",
        a,
        "--from-file",
        b,
        "--oidc-issuer",
        "https://x.example/",
    ]);
    assert_eq!(bare.status.code(), Some(2), "{}", stderr(&bare));
    let named = podid(&[
        "report",
        "--from-file",
        a,
        "--from-file",
        b,
        "--oidc-issuer",
        "aks-b=",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&named.stdout).unwrap();
    assert_eq!(v["clusters"][1]["findings"][0]["code"], "no-oidc-issuer");

    // An export without a header among several named clusters: which cluster is it?
    let loose = dir.path().join("loose.json");
    std::fs::write(&loose, plain_list(shared_identity_cluster("x", 1))).unwrap();
    let out = podid(&[
        "report",
        "--from-file",
        a,
        "--from-file",
        b,
        "--from-file",
        loose.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("loose.json") && stderr(&out).contains("aks-a, aks-b"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_cutover_works_on_one_context() {
    let out = podid(&["cutover", "plan", "--context", "one", "--context", "two"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("one cluster at a time"),
        "{}",
        stderr(&out)
    );
}

/// docs/cli.md is what the clap definitions generate: a flag added or changed without the
/// reference fails here.
#[test]
fn cli_reference_is_current() {
    let out = podid(&["reference"]);
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == generated,
        "docs/cli.md is out of date: regenerate with `cargo run -q -p podid-cli --bin podid -- reference > docs/cli.md`"
    );
    for command in [
        "podid cutover prepare",
        "podid identity add",
        "podid crds apply",
    ] {
        assert!(generated.contains(&format!("`{command}`")), "{command}");
    }
}

/// Each `podid identity` and `podid exception` command's `--help` ends with an example of
/// itself, and docs/cli.md carries the same examples.
#[test]
fn identity_and_exception_help_shows_examples() {
    let reference = String::from_utf8(podid(&["reference"]).stdout).unwrap();
    for command in [
        "identity add",
        "identity delete",
        "identity list",
        "exception add",
        "exception update",
        "exception delete",
        "exception list",
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let out = podid(&args);
        assert_eq!(out.status.code(), Some(0), "{command}: {}", stderr(&out));
        let help = stdout(&out);
        let (_, examples) = help
            .split_once("\nExample")
            .unwrap_or_else(|| panic!("`podid {command} --help` shows no example:\n{help}"));
        let invocation = format!("\n  podid {command} ");
        assert!(
            examples.contains(&invocation),
            "`podid {command} --help` has no example running it:\n{help}"
        );
        let section = reference
            .split(&format!("# `podid {command}`\n"))
            .nth(1)
            .and_then(|s| s.split("\n#").next())
            .unwrap_or_default();
        assert!(
            section.contains(&invocation),
            "docs/cli.md has no example of `podid {command}`"
        );
    }
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = podid(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("cutover") && script.contains("remove-workload-id"),
            "{shell}"
        );
    }
    let out = podid(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let out = podid(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "podid.1",
        "podid-cutover.1",
        "podid-cutover-prepare.1",
        "podid-report.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page}");
    }
}

/// `.krew.yaml`, with its release-time template calls filled in as krew-release-bot fills them,
/// is a krew plugin manifest for `kubectl podid`: named `podid`, one platform per supported
/// os/arch, each installing the `kubectl-podid` binary and the licence.
#[test]
fn krew_template_is_a_plugin_manifest() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let template = std::fs::read_to_string(root.join(".krew.yaml")).unwrap();
    let mut filled = String::new();
    for line in template.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("{{addURIAndSha \"") {
            let url = rest
                .split('"')
                .next()
                .unwrap()
                .replace("{{ .TagName }}", "v1.2.3");
            let indent = &line[..line.len() - t.len()];
            filled.push_str(&format!(
                "{indent}uri: {url}\n{indent}sha256: {}\n",
                "0".repeat(64)
            ));
        } else {
            filled.push_str(&line.replace("{{ .TagName }}", "v1.2.3"));
            filled.push('\n');
        }
    }
    let m: serde_yaml::Value = serde_yaml::from_str(&filled).unwrap();
    assert_eq!(m["kind"], "Plugin");
    assert_eq!(m["metadata"]["name"], "podid");
    assert_eq!(m["spec"]["version"], "v1.2.3");
    let platforms = m["spec"]["platforms"].as_sequence().unwrap();
    let mut seen = BTreeSet::new();
    for p in platforms {
        let labels = &p["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap(),
        );
        seen.insert(format!("{os}/{arch}"));
        assert_eq!(p["bin"], "kubectl-podid");
        let uri = p["uri"].as_str().unwrap();
        assert!(
            uri.ends_with(&format!("kubectl-podid-{os}-{arch}.tar.gz")),
            "{uri}"
        );
        assert!(
            root.join(p["files"][1]["from"].as_str().unwrap()).is_file(),
            "the licence ships"
        );
    }
    assert_eq!(seen.len(), 4);
}
