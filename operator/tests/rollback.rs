//! Rolling back to the original (aad-pod-identity v1.8.17, built from the Go module proxy) on
//! the records, bindings and scale set that podid-operator left. The original MIC takes them
//! over: it keeps what pods need (records stay Assigned, the identity stays on the scale set),
//! serves a new pod as usual, and removes what podid assigned once no pod needs it. The original
//! NMI serves pods from them: each pod gets its own identity's token and not another pod's, and
//! nothing is changed. The original ignores podid's Lease: podid-operator is stopped first
//! (docs/operator.md).

mod common;
#[path = "../../nmi/tests/live/mod.rs"]
mod live;

use std::process::Command;
use std::time::Duration;

use common::process::{Running, cloud_config, free_port, podid_nmi_binary};
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use live::hostnet::{HostNet, Request};
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::{AssignedIdentityState, AzureAssignedIdentity};
use podid_testkit::{Cluster, NodePool};

#[tokio::test]
async fn the_original_mic_takes_over_what_podid_left() {
    let mic = podid_testkit::peer_binary("mic")
        .unwrap_or_else(|e| panic!("the rollback run needs the original MIC: {e}"));
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("rollback").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("rollback", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let web = emu.add_identity("rg", "rb-web");
    identity(&c, &ns.name, "web", 0, &web.id, &web.client_id).await;
    binding(&c, &ns.name, "web", "web", "rb-web").await;
    pod(&c, &ns.name, "a", &node, "rb-web").await;

    // podid-operator assigns, then is stopped.
    let replica = start(&c, &emu, "rb", &ns.name, Duration::from_secs(15)).await;
    let a = format!("a-{}-web", ns.name);
    wait_assigned(&c, &ns.name, std::slice::from_ref(&a), 60).await;
    wait_machine(&emu, &vmss, &[&web.id], 30).await;
    replica.stop().await;

    // The original MIC, as its Deployment runs it, on what podid left.
    let dir = tempfile::tempdir().unwrap();
    let (azure_json, env_file, ca) = cloud_config(dir.path(), &emu, &pool.resource_group, APP);
    let mut cmd = Command::new(mic);
    cmd.arg(format!("--cloudconfig={}", azure_json.display()))
        .arg("--logtostderr")
        .arg(format!("--kubeconfig={}", cluster.kubeconfig().display()))
        .arg(format!("--http-probe-port={}", free_port()))
        .arg(format!("--prometheus-port={}", free_port()))
        .env("MIC_POD_NAMESPACE", &ns.name)
        .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
        .env("SSL_CERT_FILE", &ca);
    let mut original = Running::spawn(cmd, dir.path().join("mic.log"));

    // It is at work (a new pod is served), and podid's record and assignment are kept.
    pod(&c, &ns.name, "b", &node, "rb-web").await;
    let b = format!("b-{}-web", ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let records: Api<AzureAssignedIdentity> = Api::namespaced(c.clone(), "default");
    loop {
        original.assert_alive("the original MIC");
        let mut both = true;
        for n in [&a, &b] {
            both &= records
                .get_opt(n)
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.state() == AssignedIdentityState::Assigned);
        }
        if both {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the original MIC did not serve the new pod in 90 s; its log:\n{}",
            original.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        on_machine(&emu, &vmss).contains(&web.id.to_lowercase()),
        "the identity podid assigned is still there"
    );

    // The pods go: the original removes the records and what podid assigned.
    delete_pod(&c, &ns.name, "a").await;
    delete_pod(&c, &ns.name, "b").await;
    wait_machine(&emu, &vmss, &[], 90).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = false;
        for n in [&a, &b] {
            left |= records.get_opt(n).await.ok().flatten().is_some();
        }
        if !left {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records left; the original MIC's log:\n{}",
            original.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    original.stop();
}

#[tokio::test]
async fn the_original_nmi_serves_pods_from_what_podid_left() {
    let nmi = podid_testkit::peer_binary("nmi")
        .unwrap_or_else(|e| panic!("the rollback run needs the original NMI: {e}"));
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("rb-nmi").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("rbnmi", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    // One instance: the original asks IMDS without naming one.
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let web = emu.add_identity("rg", "rbn-web");
    let db = emu.add_identity("rg", "rbn-db");
    for (name, ident) in [("web", &web), ("db", &db)] {
        identity(&c, &ns.name, name, 0, &ident.id, &ident.client_id).await;
        binding(&c, &ns.name, name, name, &format!("rbn-{name}")).await;
    }
    pod(&c, &ns.name, "a", &node, "rbn-web").await;
    pod(&c, &ns.name, "b", &node, "rbn-db").await;

    // podid-operator assigns both identities to the scale set and writes the records, then is
    // stopped.
    let replica = start(&c, &emu, "rbn", &ns.name, Duration::from_secs(15)).await;
    let left = [format!("a-{}-web", ns.name), format!("b-{}-db", ns.name)];
    wait_assigned(&c, &ns.name, &left, 60).await;
    wait_machine(&emu, &vmss, &[&web.id, &db.id], 30).await;
    replica.stop().await;
    let records: Api<AzureAssignedIdentity> = Api::namespaced(c.clone(), "default");
    let mut before = Vec::new();
    for n in &left {
        let r = records.get(n).await.unwrap();
        before.push((n.clone(), r.uid(), r.resource_version()));
    }
    let ip: std::collections::BTreeMap<String, String> = podid_testkit::wait_for_running_pods(
        Api::<Pod>::namespaced(c.clone(), &ns.name),
        "aadpodidbinding",
        2,
        120,
    )
    .await
    .expect("pods Running")
    .into_iter()
    .map(|p| (p.name_any(), p.status.unwrap().pod_ip.unwrap()))
    .collect();

    // The original NMI on that node, in a namespace of its own (it writes iptables rules).
    let Some(net) = HostNet::create(
        "rollback::the_original_nmi_serves_pods_from_what_podid_left",
        "rbn",
        cluster,
        &emu,
    ) else {
        return;
    };
    let token = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
    let (a, b) = (&ip["a"], &ip["b"]);
    let asks = [
        (
            a,
            format!("{token}&client_id={}", web.client_id),
            Some(&web),
        ),
        (a, token.to_owned(), Some(&web)),
        (b, format!("{token}&client_id={}", db.client_id), Some(&db)),
        (b, format!("{token}&msi_res_id={}", db.id), Some(&db)),
        // Another pod's identity, on the same scale set: refused.
        (a, format!("{token}&client_id={}", db.client_id), None),
        (a, format!("{token}&msi_res_id={}", db.id), None),
        (b, format!("{token}&client_id={}", web.client_id), None),
    ];
    let reqs: Vec<Request> = asks
        .iter()
        .map(|(from, path, _)| Request::metadata(path, from, path))
        .collect();

    // The original NMI; then podid-nmi's binary exactly as the original's DaemonSet runs its
    // image (tests/fixtures/original-deployment-args.yaml: its arguments and environment, the
    // kubelet's /etc/default/kubelet mounted, here in a mount namespace of its own).
    let podid_nmi = podid_nmi_binary();
    for who in [
        "the original NMI",
        "podid-nmi with the original's DaemonSet arguments",
    ] {
        let mut agent = if who == "the original NMI" {
            net.original_nmi(&nmi, cluster, &node, &ns.name)
        } else {
            let podid_nmi = match &podid_nmi {
                Ok(bin) => bin,
                Err(e) => {
                    podid_testkit::prereq::skip(
                        "rollback::the_original_nmi_serves_pods_from_what_podid_left",
                        e,
                    );
                    break;
                }
            };
            let script = "mount -t tmpfs tmpfs /etc/default && echo 'KUBELET_FLAGS=--network-plugin=azure' > /etc/default/kubelet && exec \"$0\" \"$@\"";
            let mut args: Vec<String> = ["-m", "sh", "-c", script].map(str::to_owned).to_vec();
            args.push(podid_nmi.display().to_string());
            args.extend([
                format!("--node={node}"),
                "--http-probe-port=8085".into(),
                "--enableScaleFeatures=true".into(),
                "--metadata-header-required=true".into(),
            ]);
            net.spawn(
                std::path::Path::new("unshare"),
                &args,
                &[
                    ("HOST_IP".into(), "127.0.0.1".into()),
                    ("NODE_NAME".into(), node.clone()),
                    (
                        "KUBECONFIG".into(),
                        cluster.kubeconfig().display().to_string(),
                    ),
                ],
                std::env::temp_dir().join(format!("{}-podid-nmi.log", ns.name)),
            )
        };
        let answers = net
            .send("127.0.0.1:2579", Some("127.0.0.1:8085"), &reqs)
            .await;
        agent.assert_alive(who);
        for ((from, path, want), answer) in asks.iter().zip(&answers) {
            let status = answer["status"].as_u64().unwrap_or_default();
            let body = answer["body"].as_str().unwrap_or_default();
            match want {
                Some(ident) => {
                    assert_eq!(
                        status,
                        200,
                        "{who}: {from} {path}: {body}\nits log:\n{}",
                        agent.log()
                    );
                    let t: serde_json::Value = serde_json::from_str(body).unwrap();
                    assert_eq!(
                        live::claims(t["access_token"].as_str().unwrap())["appid"],
                        ident.client_id.as_str(),
                        "{who}: {from} {path}: the token is its identity's"
                    );
                }
                None => assert!(
                    (400..500).contains(&status) && !body.contains("access_token"),
                    "{who}: {from} {path}: another pod's identity is refused, got {status} {body}"
                ),
            }
        }
        agent.stop().await;
    }

    // Nothing podid-operator left was changed or removed.
    for (n, uid, version) in &before {
        let r = records
            .get_opt(n)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("record {n} was deleted"));
        assert_eq!((&r.uid(), &r.resource_version()), (uid, version), "{n}");
        assert_eq!(r.state(), AssignedIdentityState::Assigned, "{n}");
    }
    assert_eq!(
        on_machine(&emu, &vmss),
        {
            let mut v = vec![web.id.to_lowercase(), db.id.to_lowercase()];
            v.sort();
            v
        },
        "the identities podid assigned are still on the scale set"
    );
}
