//! `podid cutover` on the real API server with kube-controller-manager, so Deployments and
//! StatefulSets really roll out onto kwok nodes. The Workload ID webhook is a stand-in
//! registered under the real name (tests/support/cutover.rs): these tests show the cutover's
//! mechanics; the injection itself must be checked again with the real webhook.

#[path = "support/cutover.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

fn tmpl(o: &Value, kind: &str) -> Value {
    podid_crds::cutover::template_of(kind, o).unwrap().clone()
}

#[tokio::test]
async fn plan_switch_status_rerun_and_rollback() {
    let cluster = cluster(true).await;
    let ns = cluster.namespace("cutover").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    identity(c, n).await;
    apply(
        c,
        n,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "db"}}),
    )
    .await;
    workload(c, n, "Deployment", "web", 2, "app", None).await;
    workload(c, n, "StatefulSet", "db", 1, "app", Some("db")).await;
    workload(c, n, "Deployment", "broken", 1, "nomatch", None).await;
    bridged(c, n, "Deployment", "web", "web").await;
    bridged(c, n, "StatefulSet", "db", "db").await;
    blocked(c, n, "Deployment", "broken").await;
    for (k, w) in [
        ("Deployment", "web"),
        ("StatefulSet", "db"),
        ("Deployment", "broken"),
    ] {
        rolled_out(c, n, k, w, 90).await;
    }
    let before: Vec<(String, Value)> = {
        let mut v = Vec::new();
        for (k, w) in [
            ("Deployment", "web"),
            ("StatefulSet", "db"),
            ("Deployment", "broken"),
        ] {
            v.push((w.to_owned(), get(c, n, k, w).await));
        }
        v
    };

    // The plan: two to switch, the blocked one held, and why.
    let out = podid(cluster, &["cutover", "plan", "-n", n, "-o", "json", "-q"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = plan["workloads"].as_array().unwrap();
    let by = |name: &str| entries.iter().find(|e| e["name"] == name).unwrap().clone();
    assert_eq!(entries.len(), 3);
    let web = by("web");
    assert_eq!(web["action"], "switch");
    assert_eq!(web["targetServiceAccount"], "web");
    assert_eq!(
        web["templateChange"],
        json!({"serviceAccountName": "web", "labels": {"azure.workload.identity/use": "true"},
               "keepsBindingLabel": "app"})
    );
    assert_eq!(web["triggersRollout"], true);
    assert_eq!(
        web["credentials"][0]["subject"],
        format!("system:serviceaccount:{n}:web")
    );
    assert_eq!(web["credentials"][0]["ready"], true);
    assert_eq!(
        web["serviceAccountAnnotations"],
        json!({"azure.workload.identity/client-id": CLIENT_ID})
    );
    let db = by("db");
    assert_eq!(db["action"], "switch");
    assert_eq!(
        db["templateChange"],
        json!({"labels": {"azure.workload.identity/use": "true"}, "keepsBindingLabel": "app"})
    );
    let broken = by("broken");
    assert_eq!(broken["action"], "hold");
    assert_eq!(broken["holds"][0]["code"], "blocked");
    assert!(
        broken["holds"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no-matching-binding"),
        "{broken}"
    );
    let table = podid(cluster, &["cutover", "plan", "-n", n, "-q"]);
    println!("{}", String::from_utf8_lossy(&table.stdout));

    // Patches to commit instead: one per switchable workload.
    let dir = tempfile::tempdir().unwrap();
    let out = podid(
        cluster,
        &[
            "cutover",
            "plan",
            "-n",
            n,
            "-q",
            "--patches",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            format!("{n}.deployment.web.yaml"),
            format!("{n}.statefulset.db.yaml")
        ]
    );
    let patch: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.path().join(&files[0])).unwrap())
            .unwrap();
    assert_eq!(
        patch,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": n},
               "spec": {"template": {"metadata": {"labels": {"azure.workload.identity/use": "true"}},
                                     "spec": {"serviceAccountName": "web"}}}})
    );

    // A dry run changes nothing.
    let out = podid(
        cluster,
        &["cutover", "switch", "-n", n, "-q", "--yes", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    for (name, b) in &before {
        let kind = b["kind"].as_str().unwrap();
        assert_eq!(
            get(c, n, kind, name).await["metadata"]["generation"],
            b["metadata"]["generation"]
        );
        assert_eq!(
            record(c, n, &format!("{}-{name}", kind.to_lowercase()))
                .await
                .spec
                .stage,
            None
        );
    }

    // The switch: the two move, the blocked one is untouched. Exit 3: one was held.
    let start = Instant::now();
    let out = podid(
        cluster,
        &[
            "cutover",
            "switch",
            "-n",
            n,
            "-q",
            "--yes",
            "--timeout",
            "120s",
        ],
    );
    println!("switch took {:?}\n{}", start.elapsed(), text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("switched") && stdout.contains("held"),
        "{stdout}"
    );
    for (kind, name, sa) in [("Deployment", "web", "web"), ("StatefulSet", "db", "db")] {
        let o = rolled_out(c, n, kind, name, 5).await;
        let t = tmpl(&o, kind);
        assert_eq!(
            t["metadata"]["labels"]["azure.workload.identity/use"],
            "true"
        );
        assert_eq!(
            t["metadata"]["labels"]["aadpodidbinding"], "app",
            "kept during the rollout"
        );
        assert_eq!(t["spec"]["serviceAccountName"], sa);
        let r = record(c, n, &format!("{}-{name}", kind.to_lowercase())).await;
        assert_eq!(r.spec.stage, Some(podid_crds::migration::Stage::Switched));
        let b = &before.iter().find(|(w, _)| w == name).unwrap().1;
        assert_eq!(
            r.spec.recorded_template.as_ref(),
            Some(&tmpl(b, kind)),
            "recorded exactly"
        );
        assert_eq!(
            r.status.as_ref().unwrap().proven.as_deref(),
            Some("1/1"),
            "the bridge's status is left alone"
        );
    }
    // The switched pods went through the (stand-in) webhook.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(c.clone(), n);
    let web_pods = podid_testkit::wait_for_running_pods(
        pods,
        "app=web,azure.workload.identity/use=true",
        2,
        60,
    )
    .await
    .unwrap();
    assert!(web_pods.iter().all(|p| {
        p.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "AZURE_FEDERATED_TOKEN_FILE")
    }));
    let b = &before.iter().find(|(w, _)| w == "broken").unwrap().1;
    let now = get(c, n, "Deployment", "broken").await;
    assert_eq!(tmpl(&now, "Deployment"), tmpl(b, "Deployment"));
    assert_eq!(now["metadata"]["generation"], b["metadata"]["generation"]);
    assert_eq!(record(c, n, "deployment-broken").await.spec.stage, None);

    // Status: where each stands.
    let out = podid(cluster, &["cutover", "status", "-n", n, "-q", "-o", "json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<(String, String)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("broken", "blocked"),
            ("web", "switched"),
            ("db", "switched")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    println!(
        "{}",
        String::from_utf8_lossy(&podid(cluster, &["cutover", "status", "-n", n, "-q"]).stdout)
    );

    // A rerun converges and never overwrites the recorded template.
    let out = podid(cluster, &["cutover", "switch", "-n", n, "-q", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let r = record(c, n, "deployment-web").await;
    let b = &before.iter().find(|(w, _)| w == "web").unwrap().1;
    assert_eq!(
        r.spec.recorded_template.as_ref(),
        Some(&tmpl(b, "Deployment"))
    );

    // Rollback restores each template exactly and clears the stage.
    let out = podid(
        cluster,
        &[
            "cutover",
            "rollback",
            "-n",
            n,
            "-q",
            "--yes",
            "--timeout",
            "120s",
        ],
    );
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (kind, name) in [("Deployment", "web"), ("StatefulSet", "db")] {
        let o = rolled_out(c, n, kind, name, 5).await;
        let b = &before.iter().find(|(w, _)| w == name).unwrap().1;
        assert_eq!(tmpl(&o, kind), tmpl(b, kind), "{name} restored exactly");
        let r = record(c, n, &format!("{}-{name}", kind.to_lowercase())).await;
        assert_eq!((r.spec.stage, r.spec.recorded_template), (None, None));
        assert!(r.status.is_some(), "the bridge's status stays");
    }
    let out = podid(cluster, &["cutover", "status", "-n", n, "-q", "-o", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] != "broken")
            .all(|e| e["state"] == "bridged"),
        "{status}"
    );
}

#[tokio::test]
async fn a_switch_killed_midway_converges_on_rerun() {
    let cluster = cluster(true).await;
    let ns = cluster.namespace("cutover-kill").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    identity(c, n).await;
    let names = ["a", "b", "c"];
    let mut before = Vec::new();
    for w in names {
        workload(c, n, "Deployment", w, 1, "app", None).await;
        bridged(c, n, "Deployment", w, w).await;
    }
    for w in names {
        before.push(tmpl(
            &rolled_out(c, n, "Deployment", w, 90).await,
            "Deployment",
        ));
    }
    // Kill the CLI (SIGKILL) as soon as the first workload's record says Switched.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_podid"))
        .args([
            "cutover",
            "switch",
            "-n",
            n,
            "-q",
            "--yes",
            "--timeout",
            "120s",
        ])
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if record(c, n, "deployment-a").await.spec.stage.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "switch never recorded deployment a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = podid(cluster, &["cutover", "status", "-n", n, "-q", "-o", "json"]);
    println!(
        "after SIGKILL:\n{}",
        String::from_utf8_lossy(&podid(cluster, &["cutover", "status", "-n", n, "-q"]).stdout)
    );
    let s: Value = serde_json::from_slice(&killed.stdout).unwrap();
    assert_ne!(
        s[2]["state"], "switched",
        "killed before the last workload: {s}"
    );

    let out = podid(
        cluster,
        &[
            "cutover",
            "switch",
            "-n",
            n,
            "-q",
            "--yes",
            "--timeout",
            "120s",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (w, b) in names.iter().zip(&before) {
        let o = rolled_out(c, n, "Deployment", w, 5).await;
        assert_eq!(tmpl(&o, "Deployment")["spec"]["serviceAccountName"], *w);
        let r = record(c, n, &format!("deployment-{w}")).await;
        assert_eq!(r.spec.stage, Some(podid_crds::migration::Stage::Switched));
        assert_eq!(
            r.spec.recorded_template.as_ref(),
            Some(b),
            "{w}: the template from before, once"
        );
    }
    let out = podid(cluster, &["cutover", "rollback", "-n", n, "-q", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (w, b) in names.iter().zip(&before) {
        assert_eq!(&tmpl(&get(c, n, "Deployment", w).await, "Deployment"), b);
    }
}

#[tokio::test]
async fn a_rollout_that_never_becomes_ready_stops_the_switch_and_rolls_back() {
    let cluster = cluster(true).await;
    // A node of its own, cordoned once the workloads run: a rolling update (maxSurge 1,
    // maxUnavailable 0) then never gets a new pod scheduled, so the rollout stalls and passes
    // its progress deadline (15 s) while the old pods keep serving.
    let pool = podid_testkit::NodePool::aks("cutstuck", 1);
    let node = pool.node_name(0);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let ns = cluster.namespace("cutover-stuck").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    identity(c, n).await;
    for w in ["a-stuck", "b-next"] {
        let pin = json!({"nodeSelector": {"kubernetes.io/hostname": node}});
        workload_with(c, n, "Deployment", w, 1, "app", None, pin).await;
        bridged(c, n, "Deployment", w, w).await;
    }
    let mut before = Vec::new();
    for w in ["a-stuck", "b-next"] {
        before.push(rolled_out(c, n, "Deployment", w, 90).await);
    }
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c.clone());
    nodes
        .patch(
            &node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();

    let out = podid(
        cluster,
        &[
            "cutover",
            "switch",
            "-n",
            n,
            "-q",
            "--yes",
            "--timeout",
            "90s",
        ],
    );
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("failed") && stdout.contains("ProgressDeadlineExceeded"),
        "{stdout}"
    );
    assert!(stdout.contains("not-started"), "{stdout}");
    let b = get(c, n, "Deployment", "b-next").await;
    assert_eq!(
        tmpl(&b, "Deployment"),
        tmpl(&before[1], "Deployment"),
        "the rest untouched"
    );
    assert_eq!(record(c, n, "deployment-b-next").await.spec.stage, None);
    let status = podid(cluster, &["cutover", "status", "-n", n, "-q"]);
    println!("{}", String::from_utf8_lossy(&status.stdout));
    assert_eq!(status.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&status.stdout).contains("failed"));

    let out = podid(
        cluster,
        &[
            "cutover",
            "rollback",
            "-n",
            n,
            "-q",
            "--yes",
            "--timeout",
            "60s",
        ],
    );
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let a = rolled_out(c, n, "Deployment", "a-stuck", 30).await;
    assert_eq!(tmpl(&a, "Deployment"), tmpl(&before[0], "Deployment"));
    let r = record(c, n, "deployment-a-stuck").await;
    assert_eq!((r.spec.stage, r.spec.recorded_template), (None, None));
}
