//! `podid identity` and `podid exception` against a real API server and the Azure emulator: the
//! AKS add-on's flows (`az aks pod-identity ...`), their dry runs, their refusals of bad input
//! (the cluster and ARM compared before and after), and the kubenet refusal.

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use podid_azure_emulator::Emulator;
use podid_crds::{AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
use podid_testkit::{Cluster, NodePool};

use serde_json::{Value, json};

#[path = "support/identity.rs"]
mod identity_support;
use identity_support::{azure, text};

const MIO: &str = "f1a07417-d97a-45cb-824c-7a7467783830";

/// Everything the commands may change: the pod-identity objects of the namespaces (name,
/// annotations, spec), the scale sets' identities and every role assignment.
async fn state(c: &Client, namespaces: &[&str], emu: &Emulator, machines: &[&str]) -> Value {
    let mut objects = Vec::new();
    for ns in namespaces {
        let strip = |v: Value| json!({"name": v["metadata"]["name"], "annotations": v["metadata"]["annotations"], "spec": v["spec"]});
        for i in Api::<AzureIdentity>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            objects.push(strip(serde_json::to_value(i).unwrap()));
        }
        for b in Api::<AzureIdentityBinding>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            objects.push(strip(serde_json::to_value(b).unwrap()));
        }
        for e in Api::<AzurePodIdentityException>::namespaced(c.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            objects.push(strip(serde_json::to_value(e).unwrap()));
        }
    }
    let machines: Vec<Value> = machines
        .iter()
        .map(|m| json!(emu.assigned_identities(m)))
        .collect();
    json!({"objects": objects, "machines": machines, "roles": emu.all_role_assignments()})
}

async fn set_network_plugin(c: &Client, node: &str, plugin: Option<&str>) {
    Api::<Node>::all(c.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"kubernetes.azure.com/network-plugin": plugin}}}),
            ),
        )
        .await
        .unwrap();
}

/// The add-on's flows end to end: add (dry run first), two identities on one selector, one Azure
/// identity in two namespaces, list, delete keeping what another identity or someone else needs;
/// every malformed flag and a missing identity refused with nothing changed; kubenet refused
/// without --allow-kubenet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_add_list_delete_as_the_add_on() {
    let cluster = Cluster::shared_async().await;
    let (p1, p2) = (NodePool::aks("idone", 1), NodePool::aks("idtwo", 1));
    cluster.add_nodes(&p1).await.expect("nodes");
    cluster.add_nodes(&p2).await.expect("nodes");
    let az = azure().await;
    let emu = &az.emu;
    let ss1 = emu.add_scale_set(&p1.resource_group, &p1.scale_set, 1);
    let ss2 = emu.add_scale_set(&p2.resource_group, &p2.scale_set, 1);
    let kubelet = emu.add_identity(&p1.resource_group, "kubelet");
    let aks = emu.add_managed_cluster("rg", "cluster", None);
    emu.set_kubelet_identity(&aks, &kubelet);
    let app = emu.add_identity("rg", "app-id");
    let app2 = emu.add_identity("rg", "app2-id");
    emu.preassign(&ss2, &app2.id);
    let ns = cluster.namespace("identity").await;
    let ns2 = cluster.namespace("identity2").await;
    let (c, n, n2) = (&ns.client, ns.name.as_str(), ns2.name.as_str());
    let machines = [ss1.as_str(), ss2.as_str()];
    let nss = [n, n2];
    let snapshot = || state(c, &nss, emu, &machines);
    let cloud = az.cloud.as_str();
    let has = |m: &str, id: &str| {
        emu.assigned_identities(m)
            .contains(&id.to_ascii_lowercase())
    };

    // Dry run: the changes listed, none made.
    let before = snapshot().await;
    let add = |extra: &[&str]| {
        let mut a = vec![
            "identity",
            "add",
            "-n",
            n,
            "--name",
            "app",
            "--identity-resource-id",
            &app.id,
            cloud,
        ];
        a.extend_from_slice(extra);
        az.podid(cluster, &a)
    };
    let out = add(&["--kubelet-object-id", &kubelet.principal_id, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "grant (dry run)",
        "AzureIdentityBinding",
        &format!("{n}/app-binding"),
        &p1.scale_set,
        &p2.scale_set,
        "nothing was changed",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    assert_eq!(snapshot().await, before, "a dry run writes nothing");

    // Add: role assignment, AzureIdentity with the client ID from ARM, binding, both pools.
    let out = add(&["--kubelet-object-id", &kubelet.principal_id, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let changes: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["action"] == "grant"),
        "{changes}"
    );
    let ids: Api<AzureIdentity> = Api::namespaced(c.clone(), n);
    let binds: Api<AzureIdentityBinding> = Api::namespaced(c.clone(), n);
    let i = ids.get("app").await.unwrap();
    assert_eq!(i.spec.client_id, app.client_id);
    assert_eq!(i.spec.resource_id, app.id);
    let b = binds.get("app-binding").await.unwrap();
    assert_eq!(
        (b.spec.azure_identity.as_str(), b.spec.selector.as_str()),
        ("app", "app")
    );
    let roles = emu.role_assignments(&app.id);
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert!(
        roles[0].0.ends_with(MIO) && roles[0].1 == kubelet.principal_id,
        "{roles:?}"
    );
    assert!(has(&ss1, &app.id) && has(&ss2, &app.id));

    // Bad input: every flag malformed, a missing identity, a duplicate: exit 2, naming the flag,
    // nothing changed in the cluster or in ARM.
    let before = snapshot().await;
    let missing = app.id.replace("app-id", "no-such-id");
    let kid = kubelet.principal_id.as_str();
    let long = "x".repeat(56);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "-n",
                n,
                "--name",
                "Bad_Name",
                "--identity-resource-id",
                &app2.id,
                "--kubelet-object-id",
                kid,
            ],
            "--name",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                &long,
                "--identity-resource-id",
                &app2.id,
                "--kubelet-object-id",
                kid,
            ],
            "--name",
        ),
        (
            vec![
                "-n",
                "Not-A-Namespace",
                "--name",
                "ok",
                "--identity-resource-id",
                &app2.id,
                "--kubelet-object-id",
                kid,
            ],
            "--namespace",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                "ok",
                "--identity-resource-id",
                "app2-id",
                "--kubelet-object-id",
                kid,
            ],
            "--identity-resource-id",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                "ok",
                "--identity-resource-id",
                &ss1,
                "--kubelet-object-id",
                kid,
            ],
            "--identity-resource-id",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                "ok",
                "--identity-resource-id",
                &app2.id,
                "--binding-selector=-web",
                "--kubelet-object-id",
                kid,
            ],
            "--binding-selector",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                "ok",
                "--identity-resource-id",
                &app2.id,
                "--kubelet-object-id",
                "nope",
            ],
            "--kubelet-object-id",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                "ok",
                "--identity-resource-id",
                &app2.id,
                "--aks-cluster-id",
                "/subscriptions/x",
            ],
            "--aks-cluster-id",
        ),
        (
            vec!["-n", n, "--name", "ok", "--identity-resource-id", &app2.id],
            "--kubelet-object-id",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                "ok",
                "--identity-resource-id",
                &missing,
                "--kubelet-object-id",
                kid,
            ],
            "not found",
        ),
        (
            vec![
                "-n",
                n,
                "--name",
                "app",
                "--identity-resource-id",
                &app2.id,
                "--kubelet-object-id",
                kid,
            ],
            "already exists",
        ),
    ];
    for (args, want) in &cases {
        let mut a = vec!["identity", "add", cloud];
        a.extend_from_slice(args);
        let out = az.podid(cluster, &a);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?} should name {want}: {err}");
    }
    for (args, want) in [
        (
            vec!["identity", "delete", "-n", n, "--name", "nope", cloud],
            "--name",
        ),
        (
            vec!["identity", "delete", "-n", "BAD", "--name", "app", cloud],
            "--namespace",
        ),
        (vec!["identity", "list", "-n", "BAD"], "--namespace"),
        (vec!["identity", "list", "-o", "xml"], "xml"),
    ] {
        let out = az.podid(cluster, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}"
        );
    }
    assert_eq!(snapshot().await, before, "bad input changes nothing");

    // A second identity on the same selector, its kubelet identity read from the AKS cluster;
    // someone else had already put it on the second pool.
    let out = az.podid(
        cluster,
        &[
            "identity",
            "add",
            "-n",
            n,
            "--name",
            "app2",
            "--identity-resource-id",
            &app2.id,
            "--binding-selector",
            "app",
            "--aks-cluster-id",
            &aks,
            cloud,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        binds.get("app2-binding").await.unwrap().spec.selector,
        "app"
    );
    assert!(has(&ss1, &app2.id) && has(&ss2, &app2.id));
    assert_eq!(emu.role_assignments(&app2.id).len(), 1);

    // The same Azure identity in a second namespace: no second role assignment.
    let out = az.podid(
        cluster,
        &[
            "identity",
            "add",
            "-n",
            n2,
            "--name",
            "app",
            "--identity-resource-id",
            &app.id,
            "--kubelet-object-id",
            kid,
            cloud,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(emu.role_assignments(&app.id).len(), 1);

    // List: a pod bound now, the pools carrying each, as JSON and as a table.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), n);
    pods.create(
        &Default::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "web", "labels": {"aadpodidbinding": "app"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let out = az.podid(cluster, &["identity", "list", "-n", n, "-o", "json", cloud]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in rows {
        assert_eq!(r["pods"], 1, "{r}");
        assert_eq!(r["selectors"], json!(["app"]), "{r}");
        assert_eq!(r["managed"], true, "{r}");
        let mut pools: Vec<String> = serde_json::from_value(r["assigned"].clone()).unwrap();
        pools.sort();
        assert_eq!(pools, [p1.scale_set.clone(), p2.scale_set.clone()], "{r}");
    }
    assert_eq!(rows[0]["clientId"], app.client_id.as_str());
    let out = az.podid(cluster, &["identity", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("NAMESPACE") && table.contains(&app2.client_id),
        "{table}"
    );

    // Delete in the first namespace: the second still needs the Azure identity, so the pools
    // and the role assignment stay.
    let out = az.podid(
        cluster,
        &["identity", "delete", "-n", n, "--name", "app", cloud],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(ids.get_opt("app").await.unwrap().is_none());
    assert!(binds.get_opt("app-binding").await.unwrap().is_none());
    assert!(has(&ss1, &app.id) && has(&ss2, &app.id));
    assert_eq!(emu.role_assignments(&app.id).len(), 1);
    // The last one (dry run first): off both pools, the role assignment revoked.
    let before = snapshot().await;
    let out = az.podid(
        cluster,
        &[
            "identity",
            "delete",
            "-n",
            n2,
            "--name",
            "app",
            "--dry-run",
            cloud,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoke (dry run)"));
    assert_eq!(snapshot().await, before);
    let out = az.podid(
        cluster,
        &["identity", "delete", "-n", n2, "--name", "app", cloud],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!has(&ss1, &app.id) && !has(&ss2, &app.id));
    assert!(emu.role_assignments(&app.id).is_empty());
    // The pre-existing assignment stays.
    let out = az.podid(
        cluster,
        &["identity", "delete", "-n", n, "--name", "app2", cloud],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!has(&ss1, &app2.id), "podid's assignment removed");
    assert!(has(&ss2, &app2.id), "someone else's assignment stays");
    assert!(emu.role_assignments(&app2.id).is_empty());

    // Kubenet: refused (exit 3) with the mitigation, nothing changed; --allow-kubenet adds it
    // and still prints the mitigation.
    let node = p1.node_name(0);
    set_network_plugin(c, &node, Some("kubenet")).await;
    let before = snapshot().await;
    let out = add(&["--kubelet-object-id", kid]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("NET_RAW") && err.contains("--allow-kubenet"),
        "{err}"
    );
    assert_eq!(snapshot().await, before);
    let out = add(&[
        "--kubelet-object-id",
        kid,
        "--allow-kubenet",
        "--no-assign",
        "--no-role-assignment",
    ]);
    set_network_plugin(c, &node, None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NET_RAW"));
    assert!(ids.get_opt("app").await.unwrap().is_some());
    assert!(!has(&ss1, &app.id), "--no-assign");
    assert!(
        emu.role_assignments(&app.id).is_empty(),
        "--no-role-assignment"
    );

    // An AzureIdentity made by hand is not podid's to delete.
    let mut hand = podid_testkit::builders::msi(n, "hand", "00000000-0000-0000-0000-000000000001");
    hand.metadata.namespace = None;
    ids.create(&Default::default(), &hand).await.unwrap();
    let out = az.podid(
        cluster,
        &["identity", "delete", "-n", n, "--name", "hand", cloud],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(ids.get_opt("hand").await.unwrap().is_some());
}

/// `podid exception add|update|delete|list`, dry runs and refusals included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_flows() {
    let cluster = Cluster::shared_async().await;
    let az = azure().await;
    let ns = cluster.namespace("exception").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    let nss = [n];
    let snapshot = || state(c, &nss, &az.emu, &[]);
    let api: Api<AzurePodIdentityException> = Api::namespaced(c.clone(), n);

    let before = snapshot().await;
    let out = az.podid(
        cluster,
        &[
            "exception",
            "add",
            "-n",
            n,
            "--name",
            "probes",
            "--pod-labels",
            "app=probe,team=ops",
            "--dry-run",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(snapshot().await, before);
    for (args, want) in [
        (
            vec![
                "exception",
                "add",
                "-n",
                n,
                "--name",
                "probes",
                "--pod-labels",
                "app",
            ],
            "--pod-labels",
        ),
        (
            vec![
                "exception",
                "add",
                "-n",
                n,
                "--name",
                "probes",
                "--pod-labels",
                "bad key=1",
            ],
            "--pod-labels",
        ),
        (
            vec![
                "exception",
                "add",
                "-n",
                n,
                "--name",
                "probes",
                "--pod-labels=app=-x",
            ],
            "--pod-labels",
        ),
        (
            vec![
                "exception",
                "add",
                "-n",
                n,
                "--name",
                "Probes",
                "--pod-labels",
                "app=x",
            ],
            "--name",
        ),
        (
            vec!["exception", "add", "-n", n, "--name", "probes"],
            "--pod-labels",
        ),
        (
            vec![
                "exception",
                "update",
                "-n",
                n,
                "--name",
                "probes",
                "--pod-labels",
                "app=x",
            ],
            "not found",
        ),
        (
            vec!["exception", "delete", "-n", n, "--name", "probes"],
            "not found",
        ),
    ] {
        let out = az.podid(cluster, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}"
        );
    }
    assert_eq!(snapshot().await, before, "bad input changes nothing");

    let out = az.podid(
        cluster,
        &[
            "exception",
            "add",
            "-n",
            n,
            "--name",
            "probes",
            "--pod-labels",
            "app=probe,team=ops",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let e = api.get("probes").await.unwrap();
    assert_eq!(e.spec.pod_labels.len(), 2);
    let out = az.podid(
        cluster,
        &[
            "exception",
            "add",
            "-n",
            n,
            "--name",
            "probes",
            "--pod-labels",
            "app=x",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = az.podid(cluster, &["exception", "list", "-n", n, "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["podLabels"]["team"], "ops", "{rows}");

    // An update's dry run says what would change and changes nothing.
    let added = snapshot().await;
    let out = az.podid(
        cluster,
        &[
            "exception",
            "update",
            "-n",
            n,
            "--name",
            "probes",
            "--pod-labels",
            "app=probe2",
            "--dry-run",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("update (dry run)")
            && printed.contains("app=probe,team=ops -> app=probe2")
            && printed.contains("dry run: nothing was changed"),
        "{printed}"
    );
    assert_eq!(
        snapshot().await,
        added,
        "an update's dry run writes nothing"
    );

    let out = az.podid(
        cluster,
        &[
            "exception",
            "update",
            "-n",
            n,
            "--name",
            "probes",
            "--pod-labels",
            "app=probe2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let e = api.get("probes").await.unwrap();
    assert_eq!(
        e.spec.pod_labels,
        [("app".to_owned(), "probe2".to_owned())].into()
    );
    let updated = snapshot().await;

    let out = az.podid(
        cluster,
        &[
            "exception",
            "delete",
            "-n",
            n,
            "--name",
            "probes",
            "--dry-run",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("delete (dry run)") && printed.contains(&format!("{n}/probes")),
        "{printed}"
    );
    assert_eq!(
        snapshot().await,
        updated,
        "a delete's dry run writes nothing"
    );
    let out = az.podid(
        cluster,
        &["exception", "delete", "-n", n, "--name", "probes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(api.get_opt("probes").await.unwrap().is_none());
    let out = az.podid(cluster, &["exception", "list", "-n", n]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "NAMESPACE   NAME   POD LABELS"
    );
}
