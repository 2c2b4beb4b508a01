//! Bad input changes nothing: every `podid` command that takes a value, given a malformed one,
//! exits with its documented input-error code, names the flag and says what a valid value looks
//! like, prints nothing on stdout, and leaves the cluster (every object of every kind podid reads
//! or writes, resourceVersions included) and ARM (the emulator's whole state and its call
//! counters) exactly as they were.
//!
//! One table: commands × flags × malformed values, run against a real API server holding pod
//! identities, bindings, an exception, Deployments, a StatefulSet, a CronJob, a bare pod, target
//! ServiceAccounts and the bridge's WorkloadMigrations, and the Azure emulator holding the
//! identities, a scale set carrying one, a role assignment and an AKS cluster.

#[path = "support/cutover.rs"]
mod support;

#[path = "support/identity.rs"]
mod identity_support;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use podid_azure_emulator::Emulator;
use podid_testkit::Cluster;
use serde_json::{Value, json};

/// Every kind podid reads or writes: (group, version, kind, plural, namespaced).
const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    (
        "aadpodidentity.k8s.io",
        "v1",
        "AzureIdentity",
        "azureidentities",
        true,
    ),
    (
        "aadpodidentity.k8s.io",
        "v1",
        "AzureIdentityBinding",
        "azureidentitybindings",
        true,
    ),
    (
        "aadpodidentity.k8s.io",
        "v1",
        "AzureAssignedIdentity",
        "azureassignedidentities",
        true,
    ),
    (
        "aadpodidentity.k8s.io",
        "v1",
        "AzurePodIdentityException",
        "azurepodidentityexceptions",
        true,
    ),
    (
        "podid.dev",
        "v1alpha1",
        "WorkloadMigration",
        "workloadmigrations",
        true,
    ),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
    ("batch", "v1", "Job", "jobs", true),
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "ServiceAccount", "serviceaccounts", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Namespace", "namespaces", false),
    ("", "v1", "Node", "nodes", false),
    (
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
];

/// The whole cluster as podid sees it: per object its uid, resourceVersion, labels,
/// annotations, finalizers, spec, status and data. Namespaces the harness made for other
/// purposes are included too: nothing anywhere may change.
async fn cluster_state(c: &Client) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (group, version, kind, plural, _) in KINDS {
        let ar = ApiResource {
            group: (*group).into(),
            version: (*version).into(),
            api_version: if group.is_empty() {
                (*version).into()
            } else {
                format!("{group}/{version}")
            },
            kind: (*kind).into(),
            plural: (*plural).into(),
        };
        let api: Api<DynamicObject> = Api::all_with(c.clone(), &ar);
        let list = api
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list {kind}: {e}"));
        for o in list.items {
            let v = serde_json::to_value(&o).unwrap();
            let m = &v["metadata"];
            let key = format!(
                "{kind} {}/{}",
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or("")
            );
            out.insert(
                key,
                json!({"uid": m["uid"], "resourceVersion": m["resourceVersion"],
                       "labels": m["labels"], "annotations": m["annotations"],
                       "finalizers": m["finalizers"], "deletion": m["deletionTimestamp"],
                       "spec": v["spec"], "status": v["status"], "data": v["data"]}),
            );
        }
    }
    out
}

/// The emulator's whole ARM state (`/_emulator/state`) and its non-admin call counters.
async fn arm_state(emu: &Emulator, http: &reqwest::Client) -> (Value, BTreeMap<String, u64>) {
    let state: Value = http
        .get(format!("{}/_emulator/state", emu.arm_endpoint()))
        .send()
        .await
        .expect("emulator state")
        .json()
        .await
        .expect("emulator state JSON");
    let calls = emu
        .calls()
        .into_iter()
        .filter(|(route, _)| !route.ends_with(" admin"))
        .collect();
    let state = json!({"state": state, "roles": emu.all_role_assignments()});
    (state, calls)
}

/// One malformed input: the command line, the exit code documented for it, the flag the error
/// must name and the words that say what a valid value looks like.
struct Row {
    args: Vec<String>,
    code: i32,
    flag: &'static str,
    hint: &'static str,
}

fn row(args: &[&str], code: i32, flag: &'static str, hint: &'static str) -> Row {
    Row {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        code,
        flag,
        hint,
    }
}

/// Usage error: clap's own and podid's (docs/cli.md, docs/cutover.md, docs/identities.md).
const USAGE: i32 = 2;
/// `report`'s unreadable input (docs/report.md: "Error (unreadable input, API error); the
/// message names the file, document and field").
const UNREADABLE: i32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_naming_the_flag_and_changes_nothing() {
    let cluster: &Cluster = Cluster::shared_async().await;
    let az = identity_support::azure().await;
    let emu = &az.emu;
    let ns = cluster.namespace("badinput").await;
    let (c, n) = (&ns.client, ns.name.as_str());

    // The cluster: pod identities on one selector, one podid created, an exception, workloads
    // of three kinds on pod identity (one bridged, one blocked), a bare pod, the records.
    support::identity(c, n).await;
    support::apply(c, n, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "managed-id", "annotations": {podid_crds::names::MANAGED_IDENTITY_ANNOTATION: "true"}},
        "spec": {"type": 0, "clientID": support::CLIENT_ID, "resourceID": support::RID}})).await;
    support::apply(c, n, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": "managed-id-binding"}, "spec": {"azureIdentity": "managed-id", "selector": "managed-id"}})).await;
    let exception: podid_crds::AzurePodIdentityException = serde_json::from_value(json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
        "metadata": {"name": "probes"}, "spec": {"podLabels": {"app": "probe"}}}))
    .unwrap();
    Api::<podid_crds::AzurePodIdentityException>::namespaced(c.clone(), n)
        .create(&Default::default(), &exception)
        .await
        .unwrap();
    support::workload(c, n, "Deployment", "web", 1, "app", None).await;
    support::workload(c, n, "StatefulSet", "db", 1, "app", None).await;
    support::workload(c, n, "Deployment", "broken", 1, "nomatch", None).await;
    support::cron_job(c, n, "nightly", "app").await;
    // No controller manager here: the namespace's default ServiceAccount is made by hand.
    support::apply(
        c,
        n,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await;
    support::apply(
        c,
        n,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare",
        "labels": {"aadpodidbinding": "app"}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}),
    )
    .await;
    support::bridged(c, n, "Deployment", "web", "web").await;
    support::bridged(c, n, "StatefulSet", "db", "db").await;
    support::blocked(c, n, "Deployment", "broken").await;

    // ARM: the identities, a scale set carrying one, the kubelet identity's role on it, an AKS
    // cluster.
    let app = emu.add_identity("rg", "app-id");
    emu.add_identity("rg", "other-id");
    let ss = emu.add_scale_set("rg", "pool", 1);
    emu.preassign(&ss, &app.id);
    let kubelet = emu.add_identity("rg", "kubelet");
    let aks = emu.add_managed_cluster("rg", "cluster", None);
    emu.set_kubelet_identity(&aks, &kubelet);
    emu.add_role_assignment(
        &app.id,
        &format!(
            "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/f1a07417-d97a-45cb-824c-7a7467783830",
            emu.subscription_id()
        ),
        &kubelet.principal_id,
    );

    // Files: missing, malformed, not PEM, a directory, a snapshot with a bad field.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let missing = path("no-such-file.yaml");
    let missing_dir_file = path("no-such-dir/out.yaml");
    let not_json = path("azure.json");
    std::fs::write(&not_json, "{ this is not json").unwrap();
    let not_pem = path("ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let bad_yaml = path("bad.yaml");
    std::fs::write(&bad_yaml, "kind: [unclosed\n").unwrap();
    let bad_field = path("bad-field.yaml");
    std::fs::write(
        &bad_field,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: prod}\nspec: {replicas: many}\n",
    )
    .unwrap();
    let a_dir = dir.path().display().to_string();
    let a_file = not_pem.clone();
    let cloud = az.cloud.clone();

    let long_label = "x".repeat(64);
    let long_identity = "x".repeat(56);
    let bad_rid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool";
    let mut rows: Vec<Row> = Vec::new();

    // The flags every reading command shares (report, snapshot, cutover *).
    let scope_rows = |cmd: &[&str]| -> Vec<Row> {
        let mut v = Vec::new();
        let with = |extra: &[&str]| -> Vec<String> {
            cmd.iter().chain(extra).map(|s| (*s).to_owned()).collect()
        };
        for (extra, flag, hint) in [
            (vec!["-n", "Bad_Namespace"], "--namespace", "RFC 1123"),
            (vec!["-n", long_label.as_str()], "--namespace", "at most 63"),
            (
                vec!["-n", n, "-l", "app in web"],
                "--selector",
                "parenthesised",
            ),
            (vec!["-n", n, "-l", "=x"], "--selector", "label selector"),
            (
                vec!["-n", n, "--oidc-issuer", "not a url"],
                "--oidc-issuer",
                "https://",
            ),
            (
                vec!["-n", n, "--oidc-issuer", "ftp://issuer.example/"],
                "--oidc-issuer",
                "https://",
            ),
            (
                vec!["-n", n, "--oidc-issuer", "=https://issuer.example/"],
                "--oidc-issuer",
                "CLUSTER=URL",
            ),
            (
                vec!["-n", n, "--context", "no-such-context"],
                "--context",
                "expected one of",
            ),
        ] {
            v.push(Row {
                args: with(&extra),
                code: USAGE,
                flag,
                hint,
            });
        }
        v
    };
    rows.extend(scope_rows(&["report"]));
    rows.extend(scope_rows(&["snapshot"]));
    for sub in [
        "plan", "status", "prepare", "verify", "finalize", "switch", "rollback",
    ] {
        rows.extend(scope_rows(&["cutover", sub]));
        for (extra, flag, hint) in [
            (vec!["--workload", "deployment"], "--workload", "kind/name"),
            (vec!["--workload", "deployment/"], "--workload", "kind/name"),
            (
                vec!["--workload", "service/web"],
                "--workload",
                "expected one of",
            ),
            (
                vec!["--workload", "deployment/Bad_Name"],
                "--workload",
                "valid object name",
            ),
            (
                vec!["--workload", "deployment/no-such-workload"],
                "--workload",
                "no such workload",
            ),
            (
                vec!["--context", "a", "--context", "b"],
                "--context",
                "at most one",
            ),
            (vec!["--all-contexts"], "--context", "at most one"),
        ] {
            let mut args = vec!["cutover", sub, "-n", n];
            args.extend(extra);
            rows.push(row(&args, USAGE, flag, hint));
        }
    }
    // Output formats.
    for cmd in [
        &["report", "-n", n][..],
        &["cutover", "plan", "-n", n],
        &["cutover", "status", "-n", n],
        &[
            "identity",
            "add",
            "-n",
            n,
            "--name",
            "x",
            "--identity-resource-id",
            &app.id,
            "--no-role-assignment",
        ],
        &["identity", "delete", "-n", n, "--name", "managed-id"],
        &["identity", "list"],
        &[
            "exception",
            "add",
            "-n",
            n,
            "--name",
            "x",
            "--pod-labels",
            "a=b",
        ],
        &[
            "exception",
            "update",
            "-n",
            n,
            "--name",
            "probes",
            "--pod-labels",
            "a=b",
        ],
        &["exception", "delete", "-n", n, "--name", "probes"],
        &["exception", "list"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-o", "xml"]);
        rows.push(row(&args, USAGE, "--output", "possible values"));
    }
    // Durations and counts.
    for sub in ["prepare", "verify", "finalize", "switch", "rollback"] {
        for bad in [
            "5h",
            "--timeout=-5",
            "0",
            "0s",
            "99999999999999999999m",
            "18446744073709551615m",
            "1.5m",
            "",
        ] {
            let t = if bad.starts_with("--") {
                bad.to_owned()
            } else {
                format!("--timeout={bad}")
            };
            rows.push(row(
                &["cutover", sub, "-n", n, &t],
                USAGE,
                "--timeout",
                "expected",
            ));
        }
    }
    for sub in ["finalize", "switch", "rollback"] {
        for bad in ["0", "-1", "many", "1.5"] {
            rows.push(row(
                &["cutover", sub, "-n", n, &format!("--max-parallel={bad}")],
                USAGE,
                "--max-parallel",
                "at least 1",
            ));
        }
    }
    // plan's files.
    rows.push(row(
        &["cutover", "plan", "-n", n, "--write", &missing_dir_file],
        USAGE,
        "--write",
        "does not exist",
    ));
    rows.push(row(
        &["cutover", "plan", "-n", n, "--write", &a_dir],
        USAGE,
        "--write",
        "is a directory",
    ));
    rows.push(row(
        &["cutover", "plan", "-n", n, "--patches", &a_file],
        USAGE,
        "--patches",
        "expected a directory",
    ));
    // verify's exchange.
    for (flag, value, hint) in [
        ("--authority", "not a url", "invalid value"),
        ("--authority", "http://login.example/", "https"),
        ("--authority", "file:///etc/passwd", "https"),
        ("--tenant-id", "../../evil", "GUID"),
        ("--tenant-id", "not a tenant", "GUID"),
        ("--resource", "not a resource", "resource URI"),
        ("--extra-ca-file", missing.as_str(), "PEM"),
        ("--extra-ca-file", not_pem.as_str(), "PEM"),
    ] {
        rows.push(row(
            &["cutover", "verify", "-n", n, flag, value],
            USAGE,
            flag,
            hint,
        ));
    }
    // Azure, as prepare --direct, rollback --remove-workload-id and the identity commands take it.
    let azure_rows = |base: &[&str]| -> Vec<Row> {
        let mut v = Vec::new();
        for (extra, flag, hint) in [
            (
                vec!["--cloud-config".to_owned(), missing.clone()],
                "--cloud-config",
                "azure.json",
            ),
            (
                vec!["--cloud-config".to_owned(), not_json.clone()],
                "--cloud-config",
                "azure.json",
            ),
            (
                vec![
                    cloud.clone(),
                    "--azure-tenant-id".into(),
                    "not-a-tenant".into(),
                ],
                "--azure-tenant-id",
                "GUID",
            ),
            (
                vec![
                    cloud.clone(),
                    "--azure-subscription-id".into(),
                    "sub".into(),
                ],
                "--azure-subscription-id",
                "GUID",
            ),
            (
                vec![cloud.clone(), "--azure-client-id".into(), "1234".into()],
                "--azure-client-id",
                "GUID",
            ),
            (
                vec![cloud.clone(), "--azure-cloud".into(), "MarsCloud".into()],
                "--azure-cloud",
                "AzurePublicCloud",
            ),
            (
                vec![
                    cloud.clone(),
                    "--azure-extra-ca-file".into(),
                    missing.clone(),
                ],
                "--azure-extra-ca-file",
                "PEM",
            ),
            (
                vec![
                    cloud.clone(),
                    "--azure-extra-ca-file".into(),
                    not_pem.clone(),
                ],
                "--azure-extra-ca-file",
                "PEM",
            ),
        ] {
            let args: Vec<String> = base.iter().map(|s| (*s).to_owned()).chain(extra).collect();
            v.push(Row {
                args,
                code: USAGE,
                flag,
                hint,
            });
        }
        v
    };
    rows.extend(azure_rows(&["cutover", "prepare", "-n", n, "--direct"]));
    rows.push(row(
        &[
            "cutover",
            "prepare",
            "-n",
            n,
            "--direct",
            &cloud,
            "--aks-cluster-id",
            "/subscriptions/s/resourceGroups/rg",
        ],
        USAGE,
        "--aks-cluster-id",
        "managedClusters",
    ));
    rows.extend(azure_rows(&[
        "cutover",
        "rollback",
        "-n",
        n,
        "--yes",
        "--remove-workload-id",
    ]));
    let add = [
        "identity",
        "add",
        "-n",
        n,
        "--name",
        "new-id",
        "--identity-resource-id",
        &app.id,
        "--kubelet-object-id",
        &kubelet.principal_id,
    ];
    rows.extend(azure_rows(&add));
    rows.extend(azure_rows(&[
        "identity",
        "delete",
        "-n",
        n,
        "--name",
        "managed-id",
    ]));
    rows.extend(azure_rows(&["identity", "list"]));
    // identity add's own flags.
    let add_with = |name: &str, rid: &str, extra: &[&str]| -> Vec<String> {
        [
            "identity",
            "add",
            "-n",
            n,
            "--name",
            name,
            "--identity-resource-id",
            rid,
            cloud.as_str(),
        ]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect()
    };
    let kid = kubelet.principal_id.as_str();
    for (args, flag, hint) in [
        (
            add_with("Bad_Name", &app.id, &["--kubelet-object-id", kid]),
            "--name",
            "RFC 1123",
        ),
        (
            add_with(&long_identity, &app.id, &["--kubelet-object-id", kid]),
            "--name",
            "at most 55",
        ),
        (
            add_with("new-id", "app-id", &["--kubelet-object-id", kid]),
            "--identity-resource-id",
            "/subscriptions/",
        ),
        (
            add_with("new-id", bad_rid, &["--kubelet-object-id", kid]),
            "--identity-resource-id",
            "userAssignedIdentities",
        ),
        (
            add_with("new-id", &app.id, &["--kubelet-object-id", "not-a-guid"]),
            "--kubelet-object-id",
            "GUID",
        ),
        (
            add_with("new-id", &app.id, &["--aks-cluster-id", bad_rid]),
            "--aks-cluster-id",
            "managedClusters",
        ),
        (
            add_with(
                "new-id",
                &app.id,
                &[
                    "--kubelet-object-id",
                    kid,
                    "--binding-selector",
                    "not a label!",
                ],
            ),
            "--binding-selector",
            "label value",
        ),
        (
            add_with(
                "new-id",
                &app.id,
                &[
                    "--kubelet-object-id",
                    kid,
                    "--binding-selector",
                    &long_label,
                ],
            ),
            "--binding-selector",
            "at most 63",
        ),
        (
            add_with("new-id", &app.id, &[]),
            "--kubelet-object-id",
            "--no-role-assignment",
        ),
        (
            add_with(
                "new-id",
                &app.id,
                &["--kubelet-object-id", kid, "--context", "no-such-context"],
            ),
            "--context",
            "expected one of",
        ),
    ] {
        rows.push(Row {
            args,
            code: USAGE,
            flag,
            hint,
        });
    }
    {
        let mut a = add_with("new-id", &app.id, &["--kubelet-object-id", kid]);
        a[3] = "Bad_Namespace".into();
        rows.push(Row {
            args: a,
            code: USAGE,
            flag: "--namespace",
            hint: "RFC 1123",
        });
    }
    // identity delete and list.
    for (args, flag, hint) in [
        (
            vec![
                "identity",
                "delete",
                "-n",
                "Bad_Namespace",
                "--name",
                "managed-id",
            ],
            "--namespace",
            "RFC 1123",
        ),
        (
            vec!["identity", "delete", "-n", n, "--name", "Managed_Id"],
            "--name",
            "RFC 1123",
        ),
        (
            vec!["identity", "delete", "-n", n, "--name", &long_label],
            "--name",
            "at most 63",
        ),
        (
            vec![
                "identity",
                "delete",
                "-n",
                n,
                "--name",
                "managed-id",
                "--context",
                "no-such-context",
            ],
            "--context",
            "expected one of",
        ),
        (
            vec!["identity", "list", "-n", "Bad_Namespace"],
            "--namespace",
            "RFC 1123",
        ),
        (
            vec!["identity", "list", "--context", "no-such-context"],
            "--context",
            "expected one of",
        ),
    ] {
        rows.push(row(&args, USAGE, flag, hint));
    }
    // exceptions.
    for verb in ["add", "update"] {
        let name = if verb == "add" {
            "new-exception"
        } else {
            "probes"
        };
        for (labels, hint) in [
            ("novalue", "name=value"),
            ("bad key!=x", "label key"),
            ("a=b,a=c", "twice"),
            ("k=bad value", "label value"),
            ("k=-x", "label value"),
            ("", "name=value"),
            (",", "name=value"),
        ] {
            rows.push(row(
                &[
                    "exception",
                    verb,
                    "-n",
                    n,
                    "--name",
                    name,
                    &format!("--pod-labels={labels}"),
                ],
                USAGE,
                "--pod-labels",
                hint,
            ));
        }
    }
    for verb in ["add", "update", "delete"] {
        let labels: &[&str] = if verb == "delete" {
            &[]
        } else {
            &["--pod-labels", "a=b"]
        };
        for (ns_, name, flag, hint) in [
            ("Bad_Namespace", "probes", "--namespace", "RFC 1123"),
            (n, "Bad_Name", "--name", "RFC 1123"),
            (n, long_label.as_str(), "--name", "at most 63"),
        ] {
            let mut a = vec!["exception", verb, "-n", ns_, "--name", name];
            a.extend(labels);
            rows.push(row(&a, USAGE, flag, hint));
        }
        let mut a = vec![
            "exception",
            verb,
            "-n",
            n,
            "--name",
            "probes",
            "--context",
            "no-such-context",
        ];
        a.extend(labels);
        rows.push(row(&a, USAGE, "--context", "expected one of"));
    }
    rows.push(row(
        &["exception", "list", "-n", "Bad_Namespace"],
        USAGE,
        "--namespace",
        "RFC 1123",
    ));
    rows.push(row(
        &["exception", "list", "--context", "no-such-context"],
        USAGE,
        "--context",
        "expected one of",
    ));
    // report's files.
    rows.push(row(
        &["report", "--from-file", &missing],
        UNREADABLE,
        "--from-file",
        "no-such-file.yaml",
    ));
    rows.push(row(
        &["report", "--from-file", &bad_yaml],
        UNREADABLE,
        "--from-file",
        "bad.yaml",
    ));
    rows.push(row(
        &["report", "--from-file", &bad_field],
        UNREADABLE,
        "--from-file",
        "replicas",
    ));
    rows.push(row(
        &["report", "--from-file", &bad_field, "--context", "x"],
        USAGE,
        "--context",
        "--from-file",
    ));
    rows.push(row(
        &["report", "-n", n, "--force-namespaced=yes"],
        USAGE,
        "--force-namespaced",
        "no more were expected",
    ));
    // snapshot's file.
    rows.push(row(
        &["snapshot", "-n", n, "-o", &missing_dir_file],
        USAGE,
        "--output",
        "does not exist",
    ));
    rows.push(row(
        &["snapshot", "-n", n, "-o", &a_dir],
        USAGE,
        "--output",
        "is a directory",
    ));
    // crds.
    for (v, hint) in [
        ("banana", "such as 1.30"),
        ("1.10", "and later"),
        ("2.0", "such as 1.30"),
        ("v1.x", "such as 1.30"),
        ("", "such as 1.30"),
    ] {
        rows.push(row(
            &["crds", "print", &format!("--kube-version={v}")],
            USAGE,
            "--kube-version",
            hint,
        ));
    }
    rows.push(row(
        &["crds", "apply", "--context", "no-such-context"],
        USAGE,
        "--context",
        "expected one of",
    ));
    rows.push(row(
        &["crds", "apply", "--dry-run=maybe"],
        USAGE,
        "--dry-run",
        "no more were expected",
    ));
    // completion, man, the global --log.
    rows.push(row(
        &["completion", "klingon"],
        USAGE,
        "<SHELL>",
        "possible values",
    ));
    rows.push(row(&["completion"], USAGE, "<SHELL>", "Usage:"));
    rows.push(row(
        &["man", "--dir", &a_file],
        USAGE,
        "--dir",
        "expected a directory",
    ));
    rows.push(row(
        &["--log", "debug[[[", "report", "-n", n],
        USAGE,
        "--log",
        "expected a filter",
    ));
    rows.push(row(
        &["--log", "podid=loud", "cutover", "status", "-n", n],
        USAGE,
        "--log",
        "expected a filter",
    ));
    // Unknown subcommands and flags.
    rows.push(row(&["cutover", "teleport"], USAGE, "teleport", "Usage:"));
    rows.push(row(
        &["identity", "add", "--identity-resource-id"],
        USAGE,
        "--identity-resource-id",
        "<ID>",
    ));

    // Before: the cluster and ARM. Every row is compared with it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut cluster_before = cluster_state(c).await;
    let mut arm_before = arm_state(emu, &http).await;
    assert!(
        cluster_before
            .keys()
            .any(|k| k.starts_with("WorkloadMigration ")),
        "the set-up wrote no records"
    );

    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    for r in &rows {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the table took longer than 15 minutes"
        );
        let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
        let out: Output = az.podid(cluster, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut wrong = Vec::new();
        if out.status.code() != Some(r.code) {
            wrong.push(format!("exit {:?}, want {}", out.status.code(), r.code));
        }
        if !stderr.contains(r.flag) {
            wrong.push(format!("error does not name {}", r.flag));
        }
        if !stderr.contains(r.hint) {
            wrong.push(format!("error does not say {:?}", r.hint));
        }
        if !stdout.trim().is_empty() {
            wrong.push("printed on stdout".into());
        }
        let cluster_after = cluster_state(c).await;
        if cluster_after != cluster_before {
            let changed: Vec<&String> = cluster_before
                .keys()
                .chain(cluster_after.keys())
                .filter(|k| cluster_before.get(*k) != cluster_after.get(*k))
                .collect();
            wrong.push(format!("cluster changed: {changed:?}"));
            cluster_before = cluster_after;
        }
        let arm_after = arm_state(emu, &http).await;
        if arm_after != arm_before {
            wrong.push(format!(
                "ARM changed: calls {:?} -> {:?}",
                arm_before.1, arm_after.1
            ));
            arm_before = arm_after;
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "podid {}: {}\n  stderr: {}",
                args.join(" "),
                wrong.join("; "),
                stderr.trim()
            ));
        }
    }
    // Commands × flags: the words before the first flag, and the flag the row is about.
    let pairs: std::collections::BTreeSet<(String, &str)> = rows
        .iter()
        .map(|r| {
            let words: Vec<&str> = r
                .args
                .iter()
                .map(String::as_str)
                .skip_while(|a| *a == "--log" || a.starts_with("debug") || a.starts_with("podid="))
                .take_while(|a| !a.starts_with('-'))
                .collect();
            (words.join(" "), r.flag)
        })
        .collect();
    println!(
        "{} rows ({} commands × flags, each with one or more malformed values), {} failed",
        rows.len(),
        pairs.len(),
        failures.len()
    );
    assert!(rows.len() >= 250, "the table lost rows: {}", rows.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
