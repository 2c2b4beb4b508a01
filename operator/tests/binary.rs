//! The podid-operator binary as deployed, its endpoints requested over HTTP: `/healthz`,
//! `/readyz` and `/metrics`; and, under a role without Lease rights (the original MIC's
//! ClusterRole has none), it says loudly why it never writes: not ready with the reason and the
//! fix, an error in its log, a Warning Event on its own Pod. Granted the Lease, it leads.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use podid_azure_emulator::{Emulator, Settings};
use podid_testkit::{Cluster, NodePool};
use serde_json::json;

mod common;
use common::obj;
use common::process::{Running, cloud_config, free_port};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/podid-operator.yaml");

async fn get(url: &str) -> (u16, Option<String>, String) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, ct, resp.text().await.unwrap())
}

/// Polls `url` (every 200 ms, at most `secs`) until `f` holds for its answer; the last answer.
async fn until(url: &str, secs: u64, what: &str, f: impl Fn(u16, &str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(resp) = reqwest::get(url).await {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if f(status, &body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: still {status} {body:?} after {secs} s"
            );
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {url} not answering after {secs} s"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn without_lease_rights_it_is_not_ready_and_says_why_then_leads_once_granted() {
    let cluster = Cluster::shared_async().await;
    cluster
        .kubectl_apply(std::path::Path::new(MANIFEST), Some("default"))
        .expect("kubectl apply deploy/podid-operator.yaml");
    let ns = cluster.namespace("op-bin").await;
    let admin = ns.client.clone();
    let pool = NodePool::aks("opbin", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let app = ("op-bin-app", "op-bin-secret");
    emu.add_app(app.0, Some(app.1), None);
    emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);

    // An account with the shipped ClusterRole only: everything but the Lease, as under the
    // original MIC's role.
    let account = format!("system:serviceaccount:{}:operator", ns.name);
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "operator"}})),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": format!("{}-operator", ns.name)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "podid-operator"},
                "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns.name}]})),
        )
        .await
        .unwrap();
    // Its Pod (not run: only the Event's object).
    Api::<Pod>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "podid-operator-0"},
                "spec": {"containers": [{"name": "c", "image": "podid-operator:dev"}]}})),
        )
        .await
        .unwrap();

    // A kubeconfig acting as that account.
    let dir = tempfile::tempdir().unwrap();
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cluster.kubeconfig()).unwrap()).unwrap();
    for user in kc["users"].as_sequence_mut().unwrap() {
        user["user"]["as"] = serde_yaml::Value::String(account.clone());
    }
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let (azure_json, env_file, ca) = cloud_config(dir.path(), &emu, &pool.resource_group, app);
    let (probe, prom) = (free_port(), free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_podid-operator"));
    cmd.arg(format!("--cloudconfig={}", azure_json.display()))
        .arg(format!("--extra-ca-file={}", ca.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--bridge=false")
        .arg(format!("--leader-election-namespace={}", ns.name))
        .arg(format!(
            "--original-mic-lock={}/aad-pod-identity-mic",
            ns.name
        ))
        .arg(format!("--http-probe-port={probe}"))
        .arg(format!("--prometheus-port={prom}"))
        .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
        .env("POD_NAME", "podid-operator-0")
        .env("POD_NAMESPACE", &ns.name)
        .env("RUST_LOG", "podid_operator=info");
    let log = dir.path().join("operator.log");
    let mut operator = Running::spawn(cmd, log.clone());

    // Not ready, and the reason names the Lease and the fix.
    let readyz = format!("http://127.0.0.1:{probe}/readyz");
    let why = until(&readyz, 60, "not ready because of the Lease", |s, b| {
        s == 503 && b.contains("Lease")
    })
    .await;
    assert!(
        why.contains(&format!(
            "leases (coordination.k8s.io) in namespace {}",
            ns.name
        )) && why.contains("never leads"),
        "{why}"
    );
    operator.assert_alive("podid-operator");
    let (status, _, body) = get(&format!("http://127.0.0.1:{probe}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "Not Active"));
    let (status, ct, body) = get(&format!("http://127.0.0.1:{prom}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        ct.as_deref()
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{ct:?}"
    );
    assert!(
        body.lines()
            .any(|l| l == "# TYPE aadpodidentity_mic_cycle_count counter"),
        "{body}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("ERROR") && l.contains("never leads")),
        "{text}"
    );
    // A Warning Event on its Pod says the same.
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = events
            .list(&ListParams::default().fields("involvedObject.name=podid-operator-0"))
            .await
            .unwrap()
            .items
            .into_iter()
            .any(|e| {
                e.reason.as_deref() == Some("LeaseRefused")
                    && e.type_.as_deref() == Some("Warning")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("never leads"))
            });
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no LeaseRefused Event on the operator's Pod"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Granted what the shipped Role grants (the Lease, the original's lock): ready, and it leads.
    Api::<Role>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "lease"},
                "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                           "verbs": ["get", "create", "update"]},
                          {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]}]})),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "lease"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
                "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns.name}]})),
        )
        .await
        .unwrap();
    until(&readyz, 60, "ready once granted", |s, b| {
        s == 200 && b == "ok"
    })
    .await;
    let healthz = format!("http://127.0.0.1:{probe}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while get(&healthz).await.2 != "Active" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not leading 60 s after the grant; its log:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    operator.stop();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&format!("{}-operator", ns.name), &Default::default())
        .await
        .unwrap();
}
