//! The podid-operator binary as deployed, its endpoints requested over HTTP: `/healthz`,
//! `/readyz` and `/metrics`; and, under a role without Lease rights (the original MIC's
//! ClusterRole has none), it says loudly why it never writes: not ready with the reason and the
//! fix, an error in its log, a Warning Event on its own Pod. Granted the Lease, it leads.
//! The same with the original's own manifests (tests/fixtures/original-deployment-args.yaml):
//! podid-operator started with exactly the arguments and environment of each of the original's
//! MIC containers, as the original's account, then with the Lease rule added.
//! And `--mode managed` as deployed: a managed identity kept on the node pool, then taken off.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use podid_azure_emulator::{Emulator, Settings};
use podid_testkit::{Cluster, NodePool};
use serde_json::json;

mod common;
// Only its network namespaces are used here.
#[path = "../../nmi/tests/live/mod.rs"]
#[allow(unused_imports)]
mod live;
use common::obj;
use common::process::{Running, cloud_config, free_port};
use live::hostnet::HostNet;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/podid-operator.yaml"
);
const MANAGED_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/podid-managed.yaml"
);

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

/// A kubeconfig (written into `dir`) of the cluster's admin acting as `account`.
fn kubeconfig_as(cluster: &Cluster, account: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cluster.kubeconfig()).unwrap()).unwrap();
    for user in kc["users"].as_sequence_mut().unwrap() {
        user["user"]["as"] = serde_yaml::Value::String(account.to_owned());
    }
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();
    kubeconfig
}

#[tokio::test]
async fn without_lease_rights_it_is_not_ready_and_says_why_then_leads_once_granted() {
    // Once granted, it leads and would act on the other test's pods.
    let _serial = common::one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    cluster
        .kubectl_apply(std::path::Path::new(MANIFEST), Some("default"))
        .expect("kubectl apply deploy/manifests/podid-operator.yaml");
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
    let kubeconfig = kubeconfig_as(cluster, &account, dir.path());
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
        // Every crate at trace (the wire-level internals of HTTP/2 and the runtime at debug): the
        // secret-leak check below reads all of it.
        .env("RUST_LOG", "trace,h2=debug,tokio=debug,runtime=debug");
    let log = dir.path().join("operator.log");
    let mut operator = Running::spawn(cmd, log.clone());

    // Not ready, and the reason names the Lease and the fix.
    let readyz = format!("http://127.0.0.1:{probe}/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while reqwest::get(&readyz).await.is_err() {
        operator.assert_alive("podid-operator");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{readyz} not answering after 120 s; its log:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    // A bound pod: it fetches a token with its service principal's secret and assigns on ARM.
    // Then neither the client secret nor any token (a JWT begins `eyJ`) is in its trace-level
    // log, its metrics or its Events.
    let ident = emu.add_identity(&pool.resource_group, "op-bin-id");
    common::identity(&admin, &ns.name, "id", 0, &ident.id, &ident.client_id).await;
    common::binding(&admin, &ns.name, "bind", "id", "op-bin").await;
    common::pod(&admin, &ns.name, "bound", &pool.node_name(0), "op-bin").await;
    common::wait_assigned(&admin, &ns.name, &[format!("bound-{}-id", ns.name)], 60).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while emu.call_count("POST token") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no token fetched in 60 s: {:?}",
            emu.calls()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, _, metrics) = get(&format!("http://127.0.0.1:{prom}/metrics")).await;
    operator.stop();
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 100,
        "a trace-level log: {} lines",
        text.lines().count()
    );
    let mut scan = podid_testkit::secret_scan::SecretScan::default();
    scan.plant_secret("the operator's client secret", app.1);
    scan.forbid_any_jwt();
    for (what, output) in [
        ("its log", &text),
        ("its metrics", &metrics),
        ("its Events", &events),
    ] {
        scan.scan(what, output);
    }
    eprintln!("podid-operator at trace: {}", scan.summary());
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&format!("{}-operator", ns.name), &Default::default())
        .await
        .unwrap();
}

const ORIGINAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/original-deployment-args.yaml"
);

/// Polls `url` inside `net` (every 300 ms, at most `secs`) until `f` holds for its answer; the
/// last body.
async fn until_in(
    net: &HostNet,
    operator: &mut live::hostnet::Process,
    url: &str,
    secs: u64,
    what: &str,
    f: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        operator.assert_alive(what);
        let (status, body) = net.get(url).await;
        if f(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {status} {body:?} after {secs} s; the log:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn with_the_originals_manifests_it_names_the_missing_lease_rule_then_writes_once_added() {
    let facts: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(ORIGINAL).unwrap()).unwrap();
    let mic = &facts["mic"];
    let containers = mic["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 4, "the original's four MIC manifests");
    for c in containers {
        let args: Vec<&str> = std::iter::once("mic")
            .chain(
                c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap()),
            )
            .collect();
        <podid_operator::config::Flags as clap::Parser>::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{}: {args:?}: {e}", c["manifest"]));
    }
    // Its liveness probe asks the port podid-operator serves /healthz on by default.
    assert_eq!(
        mic["livenessProbe"],
        json!({"path": "/healthz", "port": 8080})
    );

    let _serial = common::one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    common::clean_slate(cluster).await;
    let admin = cluster.client().await.unwrap();
    // The original's account and ClusterRole, in namespace default as its manifests make them.
    let sa = mic["serviceAccount"].as_str().unwrap();
    let account = format!("system:serviceaccount:default:{sa}");
    Api::<ServiceAccount>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": sa}})),
        )
        .await
        .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "aad-pod-id-mic-role"}, "rules": mic["rules"]})),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "aad-pod-id-mic-binding"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "aad-pod-id-mic-role"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}]})),
        )
        .await
        .unwrap();
    // The Deployment's Pod (not run: the Event's object); its name is the container's HOSTNAME.
    let pod_name = "mic-5d8f7c9b6-x2x9q";
    Api::<Pod>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": pod_name},
                "spec": {"serviceAccountName": sa, "automountServiceAccountToken": false,
                         "containers": [{"name": "mic", "image": "podid-operator:dev"}]}})),
        )
        .await
        .unwrap();

    let ns = cluster.namespace("orig-mf").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("origmf", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let id = emu.add_identity("rg", "orig-mf");
    common::identity(&client, &ns.name, "web", 0, &id.id, &id.client_id).await;
    common::binding(&client, &ns.name, "web", "web", "orig-mf").await;

    // podid-operator's fixed ports (8080, 8888) are its own in a namespace standing for the
    // pod's network; the API server and the emulator are bridged in.
    let Some(net) = HostNet::create(
        "binary::with_the_originals_manifests_it_names_the_missing_lease_rule_then_writes_once_added",
        "omf",
        cluster,
        &emu,
    ) else {
        return;
    };
    // The host files the manifests mount, and the admin Secret's values, for this cluster and
    // the emulator.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_as(cluster, &account, dir.path());
    let (azure_json, env_file, ca) =
        cloud_config(dir.path(), &emu, &pool.resource_group, common::APP);
    let host_file = |path: &str| match path {
        "/etc/kubernetes/azure.json" => azure_json.display().to_string(),
        "/var/lib/kubelet/kubeconfig" => kubeconfig.display().to_string(),
        other => panic!("no stand-in for host file {other}"),
    };
    let secret = |key: &str| match key {
        "Cloud" => "AzureStackCloud".to_owned(),
        "SubscriptionID" => emu.subscription_id(),
        "ResourceGroup" => pool.resource_group.clone(),
        "VMType" => "vmss".to_owned(),
        "TenantID" => emu.tenant_id(),
        "ClientID" => common::APP.0.to_owned(),
        "ClientSecret" => common::APP.1.to_owned(),
        other => panic!("no value for the Secret's key {other}"),
    };
    let start = |c: &serde_json::Value| {
        let mut args = Vec::new();
        for a in c["args"].as_array().unwrap() {
            let mut a = a.as_str().unwrap().to_owned();
            for f in c["hostFiles"].as_array().unwrap() {
                let f = f.as_str().unwrap();
                a = a.replace(f, &host_file(f));
            }
            args.push(a);
        }
        let mut env: Vec<(String, String)> = c["env"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let value = match (v["fieldRef"].as_str(), v["secretKey"].as_str()) {
                    (Some("metadata.namespace"), _) => "default".to_owned(),
                    (_, Some(key)) => secret(key),
                    _ => panic!("{k}: {v}"),
                };
                (k.clone(), value)
            })
            .collect();
        // What the container gets from where it runs, not from the manifest: its hostname (the
        // Pod's name), the in-cluster account when no --kubeconfig is given (here a kubeconfig
        // acting as it), and the emulator's cloud and CA.
        env.push(("HOSTNAME".into(), pod_name.into()));
        if !args.iter().any(|a| a.starts_with("--kubeconfig")) {
            env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        }
        env.push((
            "AZURE_ENVIRONMENT_FILEPATH".into(),
            env_file.display().to_string(),
        ));
        env.push(("PODID_EXTRA_CA_FILE".into(), ca.display().to_string()));
        net.spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_podid-operator")),
            &args,
            &env,
            dir.path().join(format!(
                "{}.log",
                c["manifest"].as_str().unwrap().replace('/', "-")
            )),
        )
    };

    // Under the original's role: each starts, stays live (its liveness probe passes), and is
    // not ready, naming the missing rule; an error in its log, a Warning Event on its Pod.
    for c in containers {
        let what = format!("{} under the original's role", c["manifest"]);
        let mut operator = start(c);
        let why = until_in(
            &net,
            &mut operator,
            "http://127.0.0.1:8080/readyz",
            60,
            &what,
            |s, b| s == 503 && b.contains("Lease"),
        )
        .await;
        assert!(
            why.contains("leases (coordination.k8s.io) in namespace default")
                && why.contains("never leads"),
            "{what}: {why}"
        );
        assert_eq!(
            net.get("http://127.0.0.1:8080/healthz").await,
            (200, "Not Active".to_owned()),
            "{what}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !operator
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("never leads"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: no error logged:\n{}",
                operator.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        operator.stop().await;
    }
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !events
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod_name}")))
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.reason.as_deref() == Some("LeaseRefused")
                && e.type_.as_deref() == Some("Warning")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("never leads"))
        })
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no LeaseRefused Event on the Pod named by HOSTNAME in MIC_POD_NAMESPACE"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The fix it names, added to the original's account: each writes (a new pod per manifest is
    // assigned its identity), with the original's arguments unchanged.
    Api::<Role>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "aad-pod-id-mic-lease"},
                "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                           "verbs": ["get", "create", "update"]}]})),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "aad-pod-id-mic-lease"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aad-pod-id-mic-lease"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}]})),
        )
        .await
        .unwrap();
    let mut records = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let what = format!("{} with the Lease rule", c["manifest"]);
        let pod = format!("app-{i}");
        common::pod(&client, &ns.name, &pod, &node, "orig-mf").await;
        records.push(format!("{pod}-{}-web", ns.name));
        let mut operator = start(c);
        until_in(
            &net,
            &mut operator,
            "http://127.0.0.1:8080/readyz",
            60,
            &what,
            |s, b| s == 200 && b == "ok",
        )
        .await;
        common::wait_assigned(&admin, &ns.name, &records, 60).await;
        common::wait_machine(&emu, &vmss, &[&id.id], 10).await;
        operator.assert_alive(&what);
        operator.stop().await;
    }
}

/// `--mode managed` as deployed: the binary, under the shipped ClusterRole and the Lease, keeps an
/// identity `podid identity add` manages on the node pool's scale set, and takes it off when the
/// AzureIdentity is deleted (which it holds until then).
#[tokio::test]
async fn managed_mode_under_the_shipped_role_keeps_a_managed_identity_on_the_node_pool() {
    let _serial = common::one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    cluster
        .kubectl_apply(std::path::Path::new(MANIFEST), Some("default"))
        .expect("kubectl apply deploy/manifests/podid-operator.yaml");
    // The managed profile's own ClusterRole podid-operator (deploy/manifests/podid-managed.yaml),
    // over the standard one of the same name; the Lease's Role stays the standard file's.
    let managed = std::fs::read_to_string(MANAGED_MANIFEST).unwrap();
    let role: String = managed
        .split("\n---\n")
        .filter(|d| {
            (d.contains("\nkind: ClusterRole\n") || d.contains("\nkind: ClusterRoleBinding\n"))
                && d.contains("\n  name: podid-operator\n")
        })
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(role.contains("kind: ClusterRoleBinding"), "{managed}");
    let role_file =
        std::env::temp_dir().join(format!("podid-managed-role-{}.yaml", std::process::id()));
    std::fs::write(&role_file, role).unwrap();
    cluster
        .kubectl_apply(&role_file, None)
        .expect("kubectl apply the managed profile's ClusterRole");
    let ns = cluster.namespace("op-managed").await;
    let admin = ns.client.clone();
    let pool = NodePool::aks("opmanaged", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let app = ("op-managed-app", "op-managed-secret");
    emu.add_app(app.0, Some(app.1), None);
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let ident = emu.add_identity("ids", "op-managed");

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
    Api::<Role>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "lease"},
                "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                           "verbs": ["get", "create", "update"]}]})),
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
    let identities: Api<podid_crds::AzureIdentity> = Api::namespaced(admin.clone(), &ns.name);
    identities
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
                "metadata": {"name": "op-managed", "annotations": {"podid.dev/managed-identity": "true"}},
                "spec": {"type": 0, "resourceID": ident.id, "clientID": ident.client_id}
            })),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_as(cluster, &account, dir.path());
    let (azure_json, env_file, ca) = cloud_config(dir.path(), &emu, &pool.resource_group, app);
    let probe = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_podid-operator"));
    cmd.arg("--mode=managed")
        .arg(format!("--cloudconfig={}", azure_json.display()))
        .arg(format!("--extra-ca-file={}", ca.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--bridge=false")
        .arg(format!("--leader-election-namespace={}", ns.name))
        .arg("--original-mic-lock=")
        .arg(format!("--http-probe-port={probe}"))
        .arg(format!("--prometheus-port={probe}"))
        .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
        .env("RUST_LOG", "podid_operator=info");
    let mut operator = Running::spawn(cmd, dir.path().join("operator.log"));

    let carries = || {
        emu.assigned_identities(&vmss)
            .contains(&ident.id.to_ascii_lowercase())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !carries() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the managed identity never reached the node pool; its log:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = identities.get("op-managed").await.unwrap();
    assert!(
        held.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "podid.dev/node-pool-assignment"),
        "{:?}",
        held.metadata
    );
    identities
        .delete("op-managed", &Default::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while carries() || identities.get_opt("op-managed").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not taken off and released; its log:\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    operator.assert_alive("podid-operator");
    operator.stop();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&format!("{}-operator", ns.name), &Default::default())
        .await
        .unwrap();
}
