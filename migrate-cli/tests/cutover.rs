//! `podid cutover` on the real API server with kube-controller-manager, so Deployments and
//! StatefulSets really roll out onto kwok nodes, with the real Azure Workload ID webhook
//! (v1.6.0, `podid_testkit::webhook`) mutating the switched pods, and the Azure emulator
//! answering the token exchanges. One binary: the tests take turns on the webhook's lock (its
//! configuration is cluster-wide).

#[path = "support/cutover.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn plan_switch_status_rerun_and_rollback() {
    let cluster = cluster().await;
    let _wh = webhook(cluster, TENANT).await;
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
    // The same plan as YAML, on stdout and written to a file: the same workloads, the same
    // decisions.
    let plan_dir = tempfile::tempdir().unwrap();
    let file = plan_dir.path().join("plan.yaml");
    let out = podid(
        cluster,
        &[
            "cutover",
            "plan",
            "-n",
            n,
            "-q",
            "-o",
            "yaml",
            "--write",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let as_json: podid_cli::cutover::CutoverPlan = serde_json::from_value(plan.clone()).unwrap();
    for doc in [stdout_of(&out), std::fs::read_to_string(&file).unwrap()] {
        let p: podid_cli::cutover::CutoverPlan = serde_yaml::from_str(&doc).unwrap();
        assert_eq!(
            (p.kind.as_str(), &p.workloads),
            ("CutoverPlan", &as_json.workloads),
            "{doc}"
        );
    }

    // --dry-run, accepted by every cutover command, changes nothing for a plan.
    let table = podid(cluster, &["cutover", "plan", "-n", n, "-q", "--dry-run"]);
    println!("{}", String::from_utf8_lossy(&table.stdout));
    assert_eq!(table.status.code(), Some(3), "{}", text(&table));
    assert!(
        stdout_of(&table).contains("deployment/web"),
        "{}",
        text(&table)
    );

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
    // The switched pods went through the real webhook: its environment and projected token.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(c.clone(), n);
    let web_pods = podid_testkit::wait_for_running_pods(
        pods,
        "app=web,azure.workload.identity/use=true",
        2,
        60,
    )
    .await
    .unwrap();
    for p in &web_pods {
        let spec = serde_json::to_value(p.spec.as_ref().unwrap()).unwrap();
        assert_eq!(
            podid_crds::cutover::injection_problems(&spec, Some(CLIENT_ID)),
            Vec::<String>::new(),
            "{spec}"
        );
        let env: std::collections::BTreeMap<String, String> = p.spec.as_ref().unwrap().containers
            [0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
        assert_eq!(env["AZURE_CLIENT_ID"], CLIENT_ID);
        assert_eq!(env["AZURE_TENANT_ID"], TENANT);
        assert_eq!(
            env["AZURE_FEDERATED_TOKEN_FILE"],
            "/var/run/secrets/azure/wi/token/azure-identity-token"
        );
    }
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
    let table = podid(cluster, &["cutover", "status", "-n", n, "-q", "--dry-run"]);
    println!("{}", stdout_of(&table));
    assert_eq!(table.status.code(), Some(3), "{}", text(&table));
    assert!(stdout_of(&table).contains("switched"), "{}", text(&table));

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
    let cluster = cluster().await;
    let _wh = webhook(cluster, TENANT).await;
    let ns = cluster.namespace("cutover-kill").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    let before = three_bridged(c, n).await;
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

    // The rerun, two rollouts at a time: the one recorded before the kill and the rest.
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
            "--max-parallel",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    switched_once_then_rolled_back(cluster, c, n, &before).await;
}

/// The API server becomes unreachable for the CLI in the middle of a switch (its connections
/// reset, new ones refused), and the CLI is then killed while it cannot reach it: whatever it
/// had written stays consistent, and a rerun once the API server answers again converges to
/// the state of an uninterrupted switch, each workload's template recorded once.
#[tokio::test]
async fn a_switch_cut_off_from_the_api_server_and_killed_converges_on_rerun() {
    let cluster = cluster().await;
    let _wh = webhook(cluster, TENANT).await;
    let ns = cluster.namespace("cutover-cut").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    let before = three_bridged(c, n).await;
    let proxy = podid_testkit::proxy::CutProxy::start(cluster.server_addr())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let through = dir.path().join("kubeconfig");
    cluster.kubeconfig_through(proxy.addr(), &through).unwrap();
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
        .env("KUBECONFIG", &through)
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
    proxy.cut();
    // Unreachable for a while (the CLI retries, or gives up), then killed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exited_alone = child.try_wait().unwrap();
    let _ = child.kill();
    child.wait().unwrap();
    println!(
        "cut off after deployment a was recorded; the CLI {}",
        match exited_alone {
            Some(s) => format!("had exited by itself ({s})"),
            None => "was still running and was SIGKILLed".into(),
        }
    );
    assert!(
        exited_alone.is_none_or(|s| !s.success()),
        "a switch that could not finish must not exit 0"
    );
    let s: Value = serde_json::from_slice(
        &podid(cluster, &["cutover", "status", "-n", n, "-q", "-o", "json"]).stdout,
    )
    .unwrap();
    assert_ne!(
        s[2]["state"], "switched",
        "cut off before the last workload: {s}"
    );
    proxy.restore();
    // The rerun, through the same (restored) path; off the test's thread, which the proxy
    // forwards on.
    let args: Vec<String> = [
        "cutover",
        "switch",
        "-n",
        n,
        "-q",
        "--yes",
        "--timeout",
        "120s",
    ]
    .map(str::to_owned)
    .to_vec();
    let rerun_through = through.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_podid"))
            .args(&args)
            .env("KUBECONFIG", &rerun_through)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    switched_once_then_rolled_back(cluster, c, n, &before).await;
}

#[tokio::test]
async fn a_rollout_that_never_becomes_ready_stops_the_switch_and_rolls_back() {
    let cluster = cluster().await;
    let _wh = webhook(cluster, TENANT).await;
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

async fn untouched(c: &kube::Client, n: &str, before: &[Value]) {
    for b in before {
        let name = b["metadata"]["name"].as_str().unwrap();
        let now = get(c, n, "Deployment", name).await;
        assert_eq!(
            now["metadata"]["generation"], b["metadata"]["generation"],
            "{name}"
        );
        assert_eq!(now["spec"]["template"], b["spec"]["template"], "{name}");
        let r = record(c, n, &format!("deployment-{name}")).await;
        assert_eq!(
            (r.spec.stage, r.spec.recorded_template),
            (None, None),
            "{name}"
        );
    }
}

#[tokio::test]
async fn switch_refuses_without_a_registered_and_answering_webhook() {
    let cluster = cluster().await;
    let ns = cluster.namespace("cutover-refuse").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    identity(c, n).await;
    let mut before = Vec::new();
    for w in ["one", "two"] {
        workload(c, n, "Deployment", w, 1, "app", None).await;
        bridged(c, n, "Deployment", w, w).await;
    }
    // Bridged, but its ServiceAccount lacks the client-id annotation: the webhook would still
    // mutate its pods, without AZURE_CLIENT_ID. Held, named.
    workload(c, n, "Deployment", "three", 1, "app", None).await;
    bridged(c, n, "Deployment", "three", "three").await;
    apply_as(
        c,
        n,
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "three", "annotations": {}}}),
        podid_crds::migration::BRIDGE_MANAGER,
    )
    .await;
    for w in ["one", "two", "three"] {
        before.push(rolled_out(c, n, "Deployment", w, 90).await);
    }
    // No webhook configuration while this lock is held.
    let lock = podid_testkit::webhook::lock().await;

    // No terminal, two workloads, no --yes: a usage error, nothing asked, nothing changed.
    let out = podid(cluster, &["cutover", "switch", "-n", n, "-q"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    untouched(c, n, &before).await;

    // No webhook registered.
    let out = podid(cluster, &["cutover", "switch", "-n", n, "-q", "--yes"]);
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("the Workload ID webhook is not registered"),
        "{}",
        text(&out)
    );
    untouched(c, n, &before).await;

    // Registered, but stopped: the configuration stays, the dry-run probe fails closed.
    drop(lock);
    let mut wh = webhook(cluster, TENANT).await;
    wh.stop().await.unwrap();
    let out = podid(cluster, &["cutover", "switch", "-n", n, "-q", "--yes"]);
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("registered but not answering"),
        "{}",
        text(&out)
    );
    untouched(c, n, &before).await;

    // Once it answers, the same command goes through; the unannotated one stays held.
    drop(wh);
    let _wh = webhook(cluster, TENANT).await;
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
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "its target ServiceAccount {n}/three has no azure.workload.identity/client-id annotation"
        )),
        "{stdout}"
    );
    untouched(c, n, &before[2..]).await;
    for w in ["one", "two"] {
        let r = record(c, n, &format!("deployment-{w}")).await;
        assert_eq!(r.spec.stage, Some(podid_crds::migration::Stage::Switched));
    }
}

/// Adds `wave: one` to a workload's pod template (the scope of the e2e test's commands).
async fn in_wave(c: &kube::Client, n: &str, kind: &str, name: &str) {
    let patch = podid_crds::cutover::at_template_path(
        kind,
        json!({"metadata": {"labels": {"wave": "one"}}}),
    )
    .unwrap();
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(c.clone(), n, &ar(kind));
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
}

fn env_of(p: &k8s_openapi::api::core::v1::Pod) -> std::collections::BTreeMap<String, String> {
    p.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

// Multi-threaded: the emulator serves from this process while a test thread waits for the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_switch_verify_finalize_end_on_workload_id_and_roll_back_exactly() {
    use podid_azure_emulator::{Emulator, FederatedCredential, Settings};
    use podid_crds::migration::{Stage, TOKEN_EXCHANGE_AUDIENCE, credential_name};
    let cluster = cluster().await;
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    let ident = emu.add_identity("rg", "cutover-app");
    let tenant = emu.tenant_id();
    let _wh = webhook(cluster, &tenant).await;
    let ns = cluster.namespace("cutover-e2e").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("emulator-ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();

    // Pod identity: one identity, two bindings (pods labelled app, pods labelled cron).
    apply(c, n, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "app-id"}, "spec": {"type": 0, "clientID": ident.client_id, "resourceID": ident.id}}))
    .await;
    for (b, sel) in [("app-binding", "app"), ("cron-binding", "cron")] {
        apply(
            c,
            n,
            json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
            "metadata": {"name": b}, "spec": {"azureIdentity": "app-id", "selector": sel}}),
        )
        .await;
    }
    apply(
        c,
        n,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "db"}}),
    )
    .await;
    workload(c, n, "Deployment", "web", 2, "app", None).await;
    workload(c, n, "StatefulSet", "db", 1, "app", Some("db")).await;
    cron_job(c, n, "report", "cron").await;
    workload(c, n, "Deployment", "broken", 1, "nomatch", None).await;
    // Not in this wave: still on pod identity through app-binding when the others finalize.
    workload(c, n, "Deployment", "keeper", 1, "app", None).await;
    let wave = [
        ("Deployment", "web", "web"),
        ("StatefulSet", "db", "db"),
        ("CronJob", "report", "report"),
    ];
    for (k, w) in [
        ("Deployment", "web"),
        ("StatefulSet", "db"),
        ("CronJob", "report"),
        ("Deployment", "broken"),
    ] {
        in_wave(c, n, k, w).await;
    }
    // What the bridge builds: a credential per target ServiceAccount in the emulator, the
    // ServiceAccounts annotated, the records; proven only later.
    let id = Ident {
        client_id: ident.client_id.clone(),
        resource_id: ident.id.clone(),
        tenant: tenant.clone(),
        issuer: cluster.issuer().to_owned(),
    };
    for (kind, name, target) in wave.iter().chain([&("Deployment", "keeper", "keeper")]) {
        let subject = format!("system:serviceaccount:{n}:{target}");
        emu.add_federated_credential(
            &ident.id,
            FederatedCredential {
                name: &credential_name(cluster.issuer(), n, target),
                issuer: cluster.issuer(),
                subject: &subject,
                audience: TOKEN_EXCHANGE_AUDIENCE,
            },
        )
        .unwrap();
        apply_as(
            c,
            n,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": target, "annotations": {
                "azure.workload.identity/client-id": id.client_id,
                "azure.workload.identity/tenant-id": tenant}}}),
            podid_crds::migration::BRIDGE_MANAGER,
        )
        .await;
        unproven_record(c, n, kind, name, target, &id).await;
    }
    prove(c, n, "Deployment", "keeper", "keeper", &id).await;
    blocked(c, n, "Deployment", "broken").await;
    let mut before = std::collections::BTreeMap::new();
    for (k, w) in [
        ("Deployment", "web"),
        ("StatefulSet", "db"),
        ("CronJob", "report"),
        ("Deployment", "broken"),
    ] {
        let o = if k == "CronJob" {
            get(c, n, k, w).await
        } else {
            rolled_out(c, n, k, w, 90).await
        };
        before.insert(w, o);
    }
    let scope = ["-n", n, "-l", "wave=one", "-q"];
    let run = |args: &[&str]| {
        let mut a: Vec<&str> = vec!["cutover"];
        a.extend_from_slice(args);
        a.extend_from_slice(&scope);
        podid(cluster, &a)
    };

    // Prepare, dry run: where each stands, no waiting; unproven ones say why.
    let out = run(&["prepare", "--dry-run"]);
    println!("prepare --dry-run:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("unproven").count(), 3, "{stdout}");
    assert!(stdout.contains("AADSTS70021"), "{stdout}");
    assert!(stdout.contains("blocked"), "{stdout}");

    // Prepare waits for the bridge's proofs.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_podid"))
        .args(["cutover", "prepare", "--timeout", "90s"])
        .args(scope)
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for (kind, name, target) in wave {
        prove(c, n, kind, name, target, &id).await;
    }
    let out = child.wait_with_output().unwrap();
    println!("prepare:\n{}", text(&out));
    assert_eq!(
        out.status.code(),
        Some(3),
        "the blocked one: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(" prepared ").count(), 3, "{stdout}");
    for (k, w) in [("Deployment", "web"), ("StatefulSet", "db")] {
        assert_eq!(
            get(c, n, k, w).await["metadata"]["generation"],
            before[w]["metadata"]["generation"],
            "prepare leaves pods alone"
        );
    }

    // Switch.
    let start = Instant::now();
    let out = run(&["switch", "--yes", "--timeout", "120s"]);
    let switch_took = start.elapsed();
    println!("switch took {switch_took:?}\n{}", text(&out));
    assert_eq!(
        out.status.code(),
        Some(3),
        "the blocked one: {}",
        text(&out)
    );

    let switched = {
        let mut m = std::collections::BTreeMap::new();
        for (kind, name, _) in wave {
            m.insert(name, get(c, n, kind, name).await);
        }
        m
    };
    // Each of the wave where a stage left it: its template as just after the switch, its stage.
    let unchanged = |stage: Stage, why: &'static str| {
        let switched = &switched;
        async move {
            for (kind, name, _) in wave {
                let now = get(c, n, kind, name).await;
                assert_eq!(
                    (tmpl(&now, kind), &now["metadata"]["generation"]),
                    (
                        tmpl(&switched[name], kind),
                        &switched[name]["metadata"]["generation"]
                    ),
                    "{name}: {why}"
                );
                let r = record(c, n, &format!("{}-{name}", kind.to_lowercase())).await;
                assert_eq!(r.spec.stage, Some(stage), "{name}: {why}");
            }
        }
    };

    // Finalize before verify: each switched workload held, named as not verified; nothing
    // changed.
    let out = run(&["finalize", "--yes", "--timeout", "120s"]);
    println!("finalize before verify:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    for (kind, name, _) in wave {
        let w = format!("{}/{name}", kind.to_lowercase());
        assert!(
            stdout_of(&out)
                .lines()
                .any(|l| l.contains(&w) && l.contains("held") && l.contains("not verified")),
            "{w}: {}",
            text(&out)
        );
    }
    unchanged(Stage::Switched, "finalize refused before verify").await;

    let verify_args = [
        "verify",
        "--timeout",
        "120s",
        "--authority",
        &emu.authority_host(),
        "--extra-ca-file",
        ca.to_str().unwrap(),
    ];
    // Verify --dry-run: verified, nothing recorded.
    let mut args = verify_args.to_vec();
    args.push("--dry-run");
    let out = run(&args);
    println!("verify --dry-run:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        stdout_of(&out)
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("dry-run"))
            .count(),
        3,
        "{}",
        text(&out)
    );
    unchanged(Stage::Switched, "verify --dry-run records nothing").await;

    // Verify: pods Ready on the new template, the webhook's injection, a real exchange.
    emu.reset_calls();
    let start = Instant::now();
    let out = run(&verify_args);
    let verify_took = start.elapsed();
    println!("verify took {verify_took:?}\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(emu.call_count("POST token"), 3, "{:?}", emu.calls());
    for (kind, name, _) in wave {
        let r = record(c, n, &format!("{}-{name}", kind.to_lowercase())).await;
        assert_eq!(r.spec.stage, Some(Stage::Verified), "{name}");
    }

    // The SDK in a switched pod's environment: its injected variables, the authority host
    // pointed at the emulator, a token minted for its ServiceAccount as the token file.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(c.clone(), n);
    let web_pod = podid_testkit::wait_for_running_pods(
        pods.clone(),
        "app=web,azure.workload.identity/use=true",
        2,
        30,
    )
    .await
    .unwrap()
    .remove(0);
    let env = env_of(&web_pod);
    assert_eq!(env["AZURE_CLIENT_ID"], ident.client_id);
    assert_eq!(env["AZURE_TENANT_ID"], tenant);
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(
        &token_file,
        podid_testkit::projected_token(c, n, "web", TOKEN_EXCHANGE_AUDIENCE)
            .await
            .unwrap(),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(podid_testkit::sdk::python());
    podid_testkit::sdk::clear_azure_env(&mut cmd);
    let out = cmd
        .arg("-c")
        .arg("from azure.identity import WorkloadIdentityCredential\nimport base64, json\nt = WorkloadIdentityCredential().get_token('https://storage.azure.com/.default').token.split('.')[1]\nprint(json.loads(base64.urlsafe_b64decode(t + '=' * (-len(t) % 4)))['xms_mirid'])")
        .env("AZURE_CLIENT_ID", &env["AZURE_CLIENT_ID"])
        .env("AZURE_TENANT_ID", &env["AZURE_TENANT_ID"])
        .env("AZURE_AUTHORITY_HOST", emu.authority_host())
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        ident.id,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Finalize --dry-run: every write a server-side dry run; templates, stages and bindings
    // stay.
    let out = run(&[
        "finalize",
        "--yes",
        "--delete-bindings",
        "--dry-run",
        "--timeout",
        "120s",
    ]);
    println!("finalize --dry-run:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    unchanged(Stage::Verified, "finalize --dry-run changes nothing").await;
    let bindings: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(c.clone(), n, &ar("AzureIdentityBinding"));
    for b in ["app-binding", "cron-binding"] {
        assert!(bindings.get_opt(b).await.unwrap().is_some(), "{b}");
    }

    // Finalize: aadpodidbinding goes; cron-binding with it (no one else matches it), while
    // app-binding and app-id stay (keeper still uses them).
    let out = run(&[
        "finalize",
        "--yes",
        "--delete-bindings",
        "--timeout",
        "120s",
    ]);
    println!("finalize:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (kind, name, target) in wave {
        let o = if kind == "CronJob" {
            get(c, n, kind, name).await
        } else {
            rolled_out(c, n, kind, name, 5).await
        };
        let t = tmpl(&o, kind);
        assert_eq!(
            t["metadata"]["labels"]["aadpodidbinding"],
            Value::Null,
            "{name}"
        );
        assert_eq!(
            t["metadata"]["labels"]["azure.workload.identity/use"],
            "true"
        );
        assert_eq!(t["spec"]["serviceAccountName"], target);
        let r = record(c, n, &format!("{}-{name}", kind.to_lowercase())).await;
        assert_eq!(r.spec.stage, Some(Stage::Completed), "{name}");
    }
    assert!(bindings.get_opt("cron-binding").await.unwrap().is_none());
    assert!(bindings.get_opt("app-binding").await.unwrap().is_some());
    let identities: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(c.clone(), n, &ar("AzureIdentity"));
    assert!(identities.get_opt("app-id").await.unwrap().is_some());
    let broken = get(c, n, "Deployment", "broken").await;
    assert_eq!(
        tmpl(&broken, "Deployment"),
        tmpl(&before["broken"], "Deployment"),
        "the blocked one is untouched"
    );
    let status = podid(cluster, &["cutover", "status", "-n", n, "-q"]);
    println!("status:\n{}", String::from_utf8_lossy(&status.stdout));

    // The report afterwards: the three no longer use pod identity, the blocked one still does.
    let out = podid(cluster, &["report", "-n", n, "-q", "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by = |name: &str| {
        report["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
    };
    for (_, name, _) in wave {
        assert!(
            by(name).is_none_or(|w| w["usesPodIdentity"] == false),
            "{name}: {report}"
        );
    }
    assert_eq!(by("broken").unwrap()["verdict"], "blocked", "{report}");
    assert_eq!(out.status.code(), Some(3));

    // The CronJob's next run, now: a Job from its jobTemplate, as `kubectl create job
    // --from=cronjob/report` makes it. Its pod, a real one, goes through the webhook: the
    // injected environment and token, on ServiceAccount report, off pod identity.
    let cj = get(c, n, "CronJob", "report").await;
    apply(
        c,
        n,
        json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "report-now",
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "report",
                    "uid": cj["metadata"]["uid"], "controller": true}]},
            "spec": cj["spec"]["jobTemplate"]["spec"]}),
    )
    .await;
    // Its pod as created (what the webhook mutates); kwok may complete it at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_pod = loop {
        let lp = kube::api::ListParams::default().labels("job-name=report-now");
        if let Some(p) = pods.list(&lp).await.unwrap().items.into_iter().next() {
            break p;
        }
        assert!(Instant::now() < deadline, "the Job made no pod in 60s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let spec = serde_json::to_value(run_pod.spec.as_ref().unwrap()).unwrap();
    assert_eq!(
        podid_crds::cutover::injection_problems(&spec, Some(&ident.client_id)),
        Vec::<String>::new(),
        "{spec}"
    );
    assert_eq!(spec["serviceAccountName"], "report");
    let labels = run_pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("azure.workload.identity/use")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(labels.get("aadpodidbinding"), None, "{labels:?}");
    let jobs: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(c.clone(), n, &ar("Job"));
    jobs.delete("report-now", &kube::api::DeleteParams::background())
        .await
        .unwrap();

    // Rollback from Completed restores each recorded template (with aadpodidbinding) exactly.
    let out = run(&["rollback", "--yes", "--timeout", "120s"]);
    println!("rollback:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (kind, name, _) in wave {
        let o = if kind == "CronJob" {
            get(c, n, kind, name).await
        } else {
            rolled_out(c, n, kind, name, 5).await
        };
        assert_eq!(tmpl(&o, kind), tmpl(&before[name], kind), "{name}");
        let r = record(c, n, &format!("{}-{name}", kind.to_lowercase())).await;
        assert_eq!(
            (
                r.spec.stage,
                r.spec.recorded_template,
                r.spec.removed_pod_identity
            ),
            (None, None, vec![])
        );
    }
    // The binding finalize deleted is back as it was, so the CronJob's next pods match it.
    let back = bindings.get("cron-binding").await.unwrap();
    assert_eq!(
        (
            back.data["spec"]["azureIdentity"].as_str(),
            back.data["spec"]["selector"].as_str()
        ),
        (Some("app-id"), Some("cron"))
    );
    assert!(
        stdout_of(&out).contains("re-created AzureIdentityBinding"),
        "{}",
        text(&out)
    );

    // And the rolled-back pods get tokens through pod identity again: the node agent (managed
    // mode, which reads the bindings directly) serves a web pod its identity from the node's
    // scale set.
    let pool = podid_testkit::NodePool::aks("cutover", 1);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    emu.preassign(&vmss, &ident.id);
    let web =
        podid_testkit::wait_for_running_pods(pods.clone(), "app=web,aadpodidbinding=app", 2, 60)
            .await
            .unwrap();
    assert!(
        web.iter()
            .all(|p| p.spec.as_ref().unwrap().service_account_name.as_deref() != Some("web"))
    );
    let ip: std::net::IpAddr = web[0]
        .status
        .as_ref()
        .unwrap()
        .pod_ip
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let flags = <podid_nmi::config::Flags as clap::Parser>::try_parse_from([
        "podid-nmi".to_owned(),
        format!("--node={}", pool.node_name(0)),
        "--operation-mode=managed".to_owned(),
        "--forceNamespaced".to_owned(),
        format!(
            "--imds-endpoint={}",
            emu.imds_endpoint(&format!("{}_0", pool.scale_set))
        ),
    ])
    .unwrap();
    let view = podid_nmi::cluster::KubeView::start(
        c.clone(),
        &pool.node_name(0),
        false,
        false,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let builder = podid_nmi::agent::AgentBuilder::new(&flags, shutdown.clone());
    let credentials = builder
        .kube_credentials(c.clone(), std::sync::Arc::new(view.clone()))
        .unwrap();
    let agent = std::sync::Arc::new(
        builder.build(std::sync::Arc::new(view), std::sync::Arc::new(credentials)),
    );
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(podid_nmi::server::serve(
        listener,
        podid_nmi::server::router(agent),
        shutdown.clone(),
    ));
    let http = reqwest::Client::builder()
        .local_address(ip)
        .no_proxy()
        .build()
        .unwrap();
    let resp = http
        .get(format!(
            "http://127.0.0.1:{port}/metadata/identity/oauth2/token"
        ))
        .query(&[
            ("api-version", "2018-02-01"),
            ("resource", "https://vault.azure.net"),
        ])
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let claims = podid_testkit::sdk::claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["xms_mirid"], ident.id, "{claims}");
    println!("figures: switch {switch_took:?}, verify {verify_took:?}");
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Each stage's command killed (SIGKILL) at its boundary — as soon as it has recorded the
/// stage, before it finished; finalize inside, between removing the label and recording its
/// stage — and run again ends with the same objects as an uninterrupted run; rollback from
/// Verified restores the template exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_killed_at_its_boundary_converges_and_rollback_from_verified_is_exact() {
    use podid_azure_emulator::{Emulator, FederatedCredential, Settings};
    use podid_crds::migration::{Stage, TOKEN_EXCHANGE_AUDIENCE, credential_name};
    let cluster = cluster().await;
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    let ident = emu.add_identity("rg", "cutover-kill");
    let tenant = emu.tenant_id();
    let _wh = webhook(cluster, &tenant).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("emulator-ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    let id = Ident {
        client_id: ident.client_id.clone(),
        resource_id: ident.id.clone(),
        tenant: tenant.clone(),
        issuer: cluster.issuer().to_owned(),
    };
    // Two namespaces alike: one run straight through, one killed at every boundary.
    let straight = cluster.namespace("cutover-straight").await;
    let killed = cluster.namespace("cutover-killed").await;
    let mut before = Vec::new();
    for ns in [&straight, &killed] {
        let (c, n) = (&ns.client, ns.name.as_str());
        apply(c, n, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
            "metadata": {"name": "app-id"}, "spec": {"type": 0, "clientID": ident.client_id, "resourceID": ident.id}}))
        .await;
        apply(c, n, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
            "metadata": {"name": "app-binding"}, "spec": {"azureIdentity": "app-id", "selector": "app"}}))
        .await;
        workload(c, n, "Deployment", "web", 1, "app", None).await;
        emu.add_federated_credential(
            &ident.id,
            FederatedCredential {
                name: &credential_name(cluster.issuer(), n, "web"),
                issuer: cluster.issuer(),
                subject: &format!("system:serviceaccount:{n}:web"),
                audience: TOKEN_EXCHANGE_AUDIENCE,
            },
        )
        .unwrap();
        bridged_as(c, n, "Deployment", "web", "web", &id).await;
        before.push(tmpl(
            &rolled_out(c, n, "Deployment", "web", 90).await,
            "Deployment",
        ));
    }
    let authority = emu.authority_host();
    let stages: [(&[&str], Stage); 3] = [
        (&["switch", "--yes", "--timeout", "120s"], Stage::Switched),
        (
            &[
                "verify",
                "--timeout",
                "120s",
                "--authority",
                &authority,
                "--extra-ca-file",
                ca.to_str().unwrap(),
            ],
            Stage::Verified,
        ),
        (
            &["finalize", "--yes", "--timeout", "120s"],
            Stage::Completed,
        ),
    ];
    let args = |cmd: &[&str], n: &str| {
        let mut a = vec!["cutover".to_owned()];
        a.extend(cmd.iter().map(|s| s.to_string()));
        a.extend(["-n".into(), n.to_owned(), "-q".into()]);
        a
    };
    let (sc, sn) = (&straight.client, straight.name.as_str());
    let (kc, kn) = (&killed.client, killed.name.as_str());
    for (i, (cmd, stage)) in stages.iter().enumerate() {
        let a = args(cmd, sn);
        let out = podid(cluster, &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));

        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_podid"))
            .args(args(cmd, kn))
            .env("KUBECONFIG", cluster.kubeconfig())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Switch and verify: killed once their stage is recorded. Finalize records its stage
        // last, so it is killed inside: once aadpodidbinding is off the template.
        let reached = || async {
            if *stage == Stage::Completed {
                let t = tmpl(&get(kc, kn, "Deployment", "web").await, "Deployment");
                t["metadata"]["labels"]["aadpodidbinding"].is_null()
            } else {
                record(kc, kn, "deployment-web").await.spec.stage == Some(*stage)
            }
        };
        while !reached().await {
            assert!(
                Instant::now() < deadline,
                "{cmd:?} never reached its kill point"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        child.wait().unwrap();
        if *stage == Stage::Completed {
            println!(
                "finalize killed with the label removed and stage {:?} recorded",
                record(kc, kn, "deployment-web").await.spec.stage
            );
        }
        let a = args(cmd, kn);
        let out = podid(cluster, &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            out.status.code(),
            Some(0),
            "rerun of {cmd:?}: {}",
            text(&out)
        );
        let s = rolled_out(sc, sn, "Deployment", "web", 60).await;
        let k = rolled_out(kc, kn, "Deployment", "web", 60).await;
        assert_eq!(
            tmpl(&k, "Deployment"),
            tmpl(&s, "Deployment"),
            "after {cmd:?}"
        );
        let (rs, rk) = (
            record(sc, sn, "deployment-web").await,
            record(kc, kn, "deployment-web").await,
        );
        assert_eq!(rk.spec, rs.spec, "after {cmd:?}");
        assert_eq!(rk.spec.stage, Some(*stage));
        assert_eq!(rk.spec.recorded_template.as_ref(), Some(&before[1]));

        // Rollback from Verified, then on again.
        if i == 1 {
            let out = podid(cluster, &["cutover", "rollback", "-n", sn, "-q", "--yes"]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            let o = rolled_out(sc, sn, "Deployment", "web", 60).await;
            assert_eq!(
                tmpl(&o, "Deployment"),
                before[0],
                "restored exactly from Verified"
            );
            for (cmd, _) in &stages[..2] {
                let a = args(cmd, sn);
                let out = podid(cluster, &a.iter().map(String::as_str).collect::<Vec<_>>());
                assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            }
        }
    }
}

/// `prepare --direct` with no podid-operator anywhere: one pass of the bridge's code, here,
/// over the scope only: the target ServiceAccount annotated, a federated credential in ARM, a
/// real token exchange proving it, the record written; a dry run first writes nothing, and a
/// rerun writes nothing new. A workload outside the scope gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_direct_builds_and_proves_without_the_operator() {
    use podid_azure_emulator::{Emulator, Settings};
    let cluster = cluster().await;
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    let ident = emu.add_identity("rg", "direct-app");
    let other = emu.add_identity("rg", "direct-other");
    let (app, secret) = ("d1rec700-0000-0000-0000-00000000a11d", "direct-s3cret");
    emu.add_app(app, Some(secret), None);
    let ns = cluster.namespace("cutover-direct").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    for (name, id, sel) in [("api-id", &ident, "api"), ("other-id", &other, "other")] {
        apply(c, n, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
            "metadata": {"name": name}, "spec": {"type": 0, "clientID": id.client_id, "resourceID": id.id}}))
        .await;
        apply(c, n, json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
            "metadata": {"name": format!("{sel}-binding")}, "spec": {"azureIdentity": name, "selector": sel}}))
        .await;
    }
    let api = workload(c, n, "Deployment", "api", 1, "api", None).await;
    workload(c, n, "Deployment", "other", 1, "other", None).await;

    // Azure as podid-operator is given it: azure.json with a service principal, the cloud's
    // endpoints pointing at the emulator.
    let dir = tempfile::tempdir().unwrap();
    let (azure_json, env_file) = emu
        .write_cloud_config(dir.path(), "rg", (app, secret))
        .unwrap();
    let prepare = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_podid"))
            .args([
                "cutover",
                "prepare",
                "-n",
                n,
                "--workload",
                "deployment/api",
                "-q",
            ])
            .args(extra)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
            .env_remove("AZURE_CLIENT_SECRET")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let cloud = format!("--cloud-config={}", azure_json.display());

    // Without the operator and without --direct: refused, naming --direct.
    let out = prepare(&["--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("--direct"), "{}", text(&out));
    // --direct without Azure: a usage error naming the flags.
    let out = prepare(&["--direct"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--cloud-config"), "{}", text(&out));

    // Two workloads to build, no terminal to confirm on and no --yes: refused (exit 2), naming
    // --yes, before anything is written.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podid"))
        .args(["cutover", "prepare", "-n", n, "-q", "--direct", &cloud])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
        .env_remove("AZURE_CLIENT_SECRET")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("prepare would change 2 workloads") && text(&out).contains("--yes"),
        "{}",
        text(&out)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out));

    // Dry run: what a pass would write; nothing written.
    let out = prepare(&["--direct", &cloud, "--dry-run"]);
    println!("prepare --direct --dry-run:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("would create it on"), "{stdout}");
    assert!(
        stdout.contains(&format!("system:serviceaccount:{n}:")),
        "{stdout}"
    );
    assert!(emu.federated_credentials(&ident.id).is_empty());
    assert!(emu.federated_credentials(&other.id).is_empty());
    let records: kube::Api<podid_crds::migration::WorkloadMigration> =
        kube::Api::namespaced(c.clone(), n);
    assert!(
        records
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The pass: built, proven by a real exchange, recorded.
    let start = Instant::now();
    let out = prepare(&["--direct", &cloud, "--timeout", "120s"]);
    let took = start.elapsed();
    println!("prepare --direct ({took:?}):\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" prepared "),
        "{}",
        text(&out)
    );
    let creds = emu.federated_credentials(&ident.id);
    assert_eq!(creds.len(), 1, "{creds:?}");
    assert!(
        emu.federated_credentials(&other.id).is_empty(),
        "out of scope: nothing"
    );
    let r = record(c, n, "deployment-api").await;
    let status = r.status.expect("the record's status");
    assert_eq!(status.proven.as_deref(), Some("1/1"), "{status:?}");
    let target = status.target_service_account.clone().unwrap();
    let sa: k8s_openapi::api::core::v1::ServiceAccount = kube::Api::namespaced(c.clone(), n)
        .get(&target)
        .await
        .unwrap();
    assert_eq!(
        sa.metadata.annotations.unwrap()["azure.workload.identity/client-id"],
        ident.client_id
    );
    assert!(records.get_opt("deployment-other").await.unwrap().is_none());
    assert_eq!(
        get(c, n, "Deployment", "api").await["metadata"]["generation"],
        api["metadata"]["generation"],
        "pods untouched"
    );

    // Again: nothing new.
    let out = prepare(&["--direct", &cloud, "--timeout", "120s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(emu.federated_credentials(&ident.id), creds);

    // Rolled back from prepare with --remove-workload-id: the dry run lists, then the
    // credential, the ServiceAccount podid created and the record go.
    let rollback = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_podid"))
            .args([
                "cutover",
                "rollback",
                "-n",
                n,
                "--workload",
                "deployment/api",
                "-q",
            ])
            .args(["--remove-workload-id", &cloud])
            .args(extra)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
            .env_remove("AZURE_CLIENT_SECRET")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = rollback(&["--dry-run"]);
    println!("rollback --remove-workload-id --dry-run:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout_of(&out).contains(&format!("would delete credential {}", creds[0])),
        "{}",
        text(&out)
    );
    assert_eq!(emu.federated_credentials(&ident.id), creds);
    let out = rollback(&[]);
    println!("rollback --remove-workload-id:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(emu.federated_credentials(&ident.id).is_empty());
    let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(c.clone(), n);
    assert!(
        sas.get_opt(&target).await.unwrap().is_none(),
        "podid created it: gone"
    );
    assert!(records.get_opt("deployment-api").await.unwrap().is_none());
    assert_eq!(
        get(c, n, "Deployment", "api").await["metadata"]["generation"],
        api["metadata"]["generation"],
        "pods untouched"
    );
    println!("figures: prepare --direct {took:?}");
}
