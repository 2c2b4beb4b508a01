//! The security matrix on a real API server (kwok pods with 127.x IPs) and the Azure emulator
//! (IMDS + Entra): podid-nmi in-process, watching the cluster for one fake AKS node, answering
//! pods that call from their own addresses.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::policy::Mode;
use podid_crds::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec,
    AzureIdentitySpec, AzurePodIdentityException, AzurePodIdentityExceptionSpec, EmbeddedIdentity,
    IdentityType,
};
use podid_nmi::metrics::Metrics;
use podid_nmi::server::ServerConfig;
use podid_nmi::wait::RetryPolicy;
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};

mod live;
use live::{call, claims, obj, run_pods, start_agent, start_agent_flags};

/// Python azure-identity's ManagedIdentityCredential, run as the pod at `from` (its requests
/// leave from that address) against the agent at `agent`: `TOKEN <jwt>` or `ERROR <type>`.
async fn python_sdk(agent: SocketAddr, from: IpAddr, client_id: Option<&str>) -> String {
    let py = podid_testkit::sdk::python();
    const SCRIPT: &str = r#"
import sys, requests
from requests_toolbelt.adapters.source import SourceAddressAdapter
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ManagedIdentityCredential
s = requests.Session()
s.mount("http://", SourceAddressAdapter(sys.argv[1]))
kw = {"client_id": sys.argv[2]} if len(sys.argv) > 2 else {}
cred = ManagedIdentityCredential(transport=RequestsTransport(session=s, session_owner=False), **kw)
try:
    print("TOKEN", cred.get_token("https://vault.azure.net/.default").token)
except Exception as e:
    print("ERROR", type(e).__name__)
"#;
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg("-c").arg(SCRIPT).arg(from.to_string());
    if let Some(c) = client_id {
        cmd.arg(c);
    }
    podid_testkit::sdk::clear_azure_env(&mut cmd);
    cmd.env(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://{agent}"),
    );
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn managed_mode_security_matrix_on_a_real_apiserver_and_the_emulator() {
    managed_mode_matrix(false).await;
}

/// The same matrix with every identity served by token exchange (`--federated
/// --identity-serving=federated`): the same pods get the same identities and the same refusals;
/// the tokens come from exchanges for the pods' ServiceAccounts, never from IMDS.
#[tokio::test]
async fn federated_serving_keeps_the_managed_mode_security_matrix() {
    managed_mode_matrix(true).await;
}

async fn managed_mode_matrix(federated: bool) {
    let cluster = Cluster::shared_async().await;
    let ns = cluster
        .namespace(if federated { "nmi-fed" } else { "nmi" })
        .await;
    let client = ns.client.clone();
    let pool = NodePool::aks("nmi", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);

    // Azure: identities a and b are on the node's scale set, c is not; app sp has a secret.
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let (a, b, c) = (
        emu.add_identity("rg", "id-a"),
        emu.add_identity("rg", "id-b"),
        emu.add_identity("rg", "id-c"),
    );
    emu.preassign(&vmss, &a.id);
    emu.preassign(&vmss, &b.id);
    let sp_client = "5e1f0000-0000-0000-0000-00000000c0de";
    emu.add_app(sp_client, Some("s3cret"), None);

    // Kubernetes: identities, bindings, an exception, a Secret and five pods on the node.
    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    for (name, ident) in [("a", &a), ("b", &b), ("c", &c)] {
        let spec = AzureIdentitySpec {
            type_: IdentityType::UserAssignedMsi,
            client_id: ident.client_id.clone(),
            resource_id: ident.id.clone(),
            ..Default::default()
        };
        ids.create(&PostParams::default(), &AzureIdentity::new(name, spec))
            .await
            .unwrap();
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "sp-secret"}, "stringData": {"clientsecret": "s3cret"}})),
        )
        .await
        .unwrap();
    let sp = AzureIdentitySpec {
        type_: IdentityType::ServicePrincipal,
        client_id: sp_client.into(),
        tenant_id: emu.tenant_id(),
        ad_endpoint: format!("{}/", emu.arm_endpoint()),
        client_password: Some(obj(json!({"name": "sp-secret", "namespace": ns.name}))),
        ..Default::default()
    };
    ids.create(&PostParams::default(), &AzureIdentity::new("sp", sp))
        .await
        .unwrap();
    let bindings: Api<AzureIdentityBinding> = Api::namespaced(client.clone(), &ns.name);
    for (identity, selector) in [
        ("a", "sel-a"),
        ("b", "sel-b"),
        ("c", "sel-c"),
        ("sp", "sel-sp"),
    ] {
        let spec = AzureIdentityBindingSpec {
            azure_identity: identity.into(),
            selector: selector.into(),
            ..Default::default()
        };
        bindings
            .create(
                &PostParams::default(),
                &AzureIdentityBinding::new(&format!("bind-{identity}"), spec),
            )
            .await
            .unwrap();
    }
    Api::<AzurePodIdentityException>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &AzurePodIdentityException::new(
                "agents",
                AzurePodIdentityExceptionSpec {
                    pod_labels: [("app".to_owned(), "agent".to_owned())].into(),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let labels = [
        ("pod-a", json!({"aadpodidbinding": "sel-a"})),
        ("pod-b", json!({"aadpodidbinding": "sel-b"})),
        ("pod-c", json!({"aadpodidbinding": "sel-c"})),
        ("pod-sp", json!({"aadpodidbinding": "sel-sp"})),
        ("pod-none", json!({})),
        ("pod-agent", json!({"app": "agent"})),
    ];
    let ips = run_pods(&pods, &node, &labels).await;
    if federated {
        // The bridge's work for pod-a and pod-b, on the ServiceAccount they run as.
        emu.trust_issuer_ca(cluster.ca_pem());
        live::bridged(
            &client,
            cluster,
            &emu,
            &a,
            (&ns.name, "Pod", "pod-a"),
            "default",
        )
        .await;
        live::bridged(
            &client,
            cluster,
            &emu,
            &b,
            (&ns.name, "Pod", "pod-b"),
            "default",
        )
        .await;
    }

    // The agent for this node, in managed mode.
    let imds = url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set))).unwrap();
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        imds_endpoint: imds,
        ..Default::default()
    };
    let flags: &[&str] = if federated {
        &["--federated", "--identity-serving=federated"]
    } else {
        &[]
    };
    let (addr, _agent) =
        start_agent_flags(client.clone(), &node, config, &emu.arm_endpoint(), flags).await;

    // A pod gets a token for its own identity (from IMDS, or by exchange).
    let (status, body) = call(addr, ips["pod-a"], "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let token = claims(v["access_token"].as_str().unwrap());
    assert_eq!(live::token_client(&token), a.client_id);
    assert_eq!(token["aud"], "https://vault.azure.net");
    let (status, body) = call(
        addr,
        ips["pod-b"],
        &format!("client_id={}", b.client_id.to_uppercase()),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    if federated {
        // pod-a's and pod-b's tokens were exchanges, not IMDS calls.
        assert_eq!(emu.call_count("POST token"), 2, "{:?}", emu.calls());
        assert_eq!(emu.call_count("GET imds.token"), 0, "{:?}", emu.calls());
    }

    // Another pod's identity, even one that is on the node: 403, and IMDS is not asked.
    emu.reset_calls();
    let (status, body) = call(addr, ips["pod-a"], &format!("client_id={}", b.client_id)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = call(addr, ips["pod-a"], &format!("msi_res_id={}", b.id)).await;
    assert_eq!(status, 403);
    // No identity: 404 at once. An address that is no pod: 403.
    let (status, body) = call(addr, ips["pod-none"], "").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = call(addr, "127.10.255.254".parse().unwrap(), "").await;
    assert_eq!(status, 403);
    assert!(
        emu.calls()
            .keys()
            .all(|k| !k.contains("imds") && k != "POST token"),
        "refused requests never reach IMDS or Entra: {:?}",
        emu.calls()
    );

    let (status, body) = call(addr, ips["pod-c"], "").await;
    if federated {
        // Bound, but nothing proven for it: 503 in IMDS's error shape, naming the record.
        assert_eq!(status, 503, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "temporarily_unavailable", "{body}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains("has no WorkloadMigration"),
            "{body}"
        );
    } else {
        // Bound but not on the node: IMDS refuses, the pod sees 403.
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("Identity not found"), "{body}");
    }

    // A service principal with a secret, via Entra.
    let (status, body) = call(addr, ips["pod-sp"], "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["appid"],
        sp_client
    );

    // A real SDK client in the pod: Python azure-identity's ManagedIdentityCredential.
    let out = python_sdk(addr, ips["pod-a"], None).await;
    let token = out
        .strip_prefix("TOKEN ")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(live::token_client(&claims(token)), a.client_id);
    let out = python_sdk(addr, ips["pod-a"], Some(&b.client_id)).await;
    assert!(
        out.starts_with("ERROR"),
        "another pod's identity through the SDK: {out}"
    );

    if federated {
        assert_eq!(emu.call_count("GET imds.token"), 0, "{:?}", emu.calls());
    }

    // An excepted pod talks to IMDS itself: whatever it asks for is IMDS's answer.
    let (status, body) = call(
        addr,
        ips["pod-agent"],
        &format!("client_id={}", b.client_id),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["appid"],
        b.client_id.as_str()
    );
}

#[tokio::test]
async fn standard_mode_serves_once_the_controller_marks_the_assignment_assigned() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("nmi-std").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("nmistd", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);

    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let (a, b) = (
        emu.add_identity("rg", "std-a"),
        emu.add_identity("rg", "std-b"),
    );
    emu.preassign(&vmss, &a.id);
    emu.preassign(&vmss, &b.id);

    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    let bindings: Api<AzureIdentityBinding> = Api::namespaced(client.clone(), &ns.name);
    let mut objs = Vec::new();
    for (name, ident) in [("a", &a), ("b", &b)] {
        let spec = AzureIdentitySpec {
            client_id: ident.client_id.clone(),
            resource_id: ident.id.clone(),
            ..Default::default()
        };
        objs.push(
            ids.create(&PostParams::default(), &AzureIdentity::new(name, spec))
                .await
                .unwrap(),
        );
        let spec = AzureIdentityBindingSpec {
            azure_identity: name.into(),
            // Standard mode matches bindings of every namespace: selectors no other test uses.
            selector: format!("std-sel-{name}"),
            ..Default::default()
        };
        bindings
            .create(
                &PostParams::default(),
                &AzureIdentityBinding::new(&format!("bind-{name}"), spec),
            )
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let ips = run_pods(
        &pods,
        &node,
        &[
            ("pod-a", json!({"aadpodidbinding": "std-sel-a"})),
            ("pod-b", json!({"aadpodidbinding": "std-sel-b"})),
        ],
    )
    .await;

    // What the controller writes: pod-a's assignment is done, pod-b's is still Created.
    let assigned: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), &ns.name);
    for (pod, identity, state) in [
        ("pod-a", &objs[0], "Assigned"),
        ("pod-b", &objs[1], "Created"),
    ] {
        let aai: AzureAssignedIdentity = obj(json!({
            "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
            "metadata": {"name": format!("{pod}-{}-{}", ns.name, identity.metadata.name.as_deref().unwrap()),
                         "labels": {"nodename": node}},
            "spec": {"pod": pod, "podNamespace": ns.name, "nodename": node,
                     "azureIdentityRef": serde_json::to_value(EmbeddedIdentity::from(identity)).unwrap()},
            "status": {"status": state}
        }));
        assigned.create(&PostParams::default(), &aai).await.unwrap();
    }

    let imds = url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set))).unwrap();
    let config = ServerConfig {
        mode: Mode::Standard,
        imds_endpoint: imds,
        retry: RetryPolicy {
            created_attempts: 600,
            assigned_attempts: 10,
            interval: Duration::from_millis(100),
        },
        ..Default::default()
    };
    let (addr, _agent) = start_agent(client.clone(), &node, config, &emu.arm_endpoint()).await;

    let (status, body) = call(addr, ips["pod-a"], "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["appid"],
        a.client_id.as_str()
    );
    let (status, _) = call(addr, ips["pod-a"], &format!("client_id={}", b.client_id)).await;
    assert_eq!(status, 403, "another pod's identity");

    // pod-b's request waits for the controller; marking the assignment Assigned releases it.
    let waiting = tokio::spawn(call(addr, ips["pod-b"], ""));
    let name = format!("pod-b-{}-b", ns.name);
    assigned
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"status": "Assigned"}})),
        )
        .await
        .unwrap();
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["appid"],
        b.client_id.as_str()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_binary_serves_reports_health_and_shuts_down_cleanly() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("nmi-bin").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("nmibin", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let a = emu.add_identity("rg", "bin-a");
    emu.preassign(&vmss, &a.id);
    live::bound_identity(
        &client,
        &ns.name,
        "a",
        json!({"type": 0, "clientID": a.client_id, "resourceID": a.id}),
        "sel-a",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let ips = run_pods(
        &pods,
        &node,
        &[("pod-a", json!({"aadpodidbinding": "sel-a"}))],
    )
    .await;

    let (port, probe, prom) = (free_port(), free_port(), free_port());
    let imds = emu.imds_endpoint(&format!("{}_0", pool.scale_set));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podid-nmi"))
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("NODE_NAME", &node)
        .args([
            "--operation-mode=MANAGED",
            "--forceNamespaced",
            &format!("--nmi-port={port}"),
            &format!("--http-probe-port={probe}"),
            &format!("--prometheus-port={prom}"),
            &format!("--imds-endpoint={imds}"),
            "--manage-iptables=false",
            "--allow-network-plugin-kubenet",
            "--shutdown-delay-sec=0",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = format!("http://127.0.0.1:{probe}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(&health).send().await
            && r.text().await.unwrap() == "Active"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent not Active within 60s"
        );
        assert!(child.try_wait().unwrap().is_none(), "agent exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = call(addr, ips["pod-a"], "").await;
    assert_eq!(status, 200, "{body}");
    let metrics = http
        .get(format!("http://127.0.0.1:{prom}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("aadpodidentity_nmi_operations_duration_seconds_count{operation_type=\"/metadata/identity/oauth2/token\",status_code=\"200\""), "{metrics}");

    // SIGTERM: finishes and exits 0.
    let pid = child.id().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("agent exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn managed_mode_without_force_namespaced_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podid-nmi"))
        .args(["--node=n1", "--operation-mode=managed"])
        .env_remove("FORCENAMESPACED")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("managed mode not intialized in force namespaced mode"),
        "{stderr}"
    );
}

/// An agent whose account may not read Secrets answers a service-principal pod at once with
/// the API server's refusal (503) and counts it as the original does, instead of stalling on a
/// Secret watch that can never list.
#[tokio::test]
async fn a_secret_the_agent_may_not_read_is_refused_at_once_and_counted() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("nmi-rbac").await;
    let admin = ns.client.clone();
    let pool = NodePool::aks("nmirbac", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let sp_client = "5e1f0000-0000-0000-0000-00000000bac0";
    emu.add_app(sp_client, Some("s3cret"), None);

    // The agent's own account: everything it reads, but no Secrets.
    let user = format!("{}-agent", ns.name);
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": user},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": ["aadpodidentity.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]}
                ]
            })),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
            })),
        )
        .await
        .unwrap();
    let agent_client = cluster.client_as(&user).await.unwrap();

    let sp = live::sp_spec(&admin, &ns.name, &emu, sp_client, "sp-secret", "s3cret").await;
    live::bound_identity(&admin, &ns.name, "sp", sp, "sel-sp").await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let ips = run_pods(
        &pods,
        &node,
        &[("pod-sp", json!({"aadpodidbinding": "sel-sp"}))],
    )
    .await;

    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        ..Default::default()
    };
    let (_agent, metrics) =
        live::start_agent_with_metrics(listener, agent_client, &node, config, &emu.arm_endpoint())
            .await;
    let (status, body) = call(addr, ips["pod-sp"], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("reading secret {}/sp-secret", ns.name))
            && body.contains("forbidden")
            && body.contains(&user),
        "the refusal names the Secret and the account: {body}"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains(
            r#"aadpodidentity_kubernetes_api_operations_errors_count{operation_type="get_secret"} 1"#
        ),
        "{rendered}"
    );

    // Granted `get` on Secrets, as the original's ClusterRole does (no list/watch, so no
    // watch), the same pod gets its token.
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            &user,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{
                    "op": "add", "path": "/rules/-",
                    "value": {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
                }]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    // (RBAC changes reach the authorizer within moments, not at once.)
    let mut answer = (0, String::new());
    for _ in 0..40 {
        answer = call(addr, ips["pod-sp"], "").await;
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);

    // A cached token costs no Secret read: with `get` revoked again, a resource not fetched yet
    // is refused, and the token already fetched is still served, with no read attempted.
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            &user,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/rules/2"}])).unwrap(),
            ),
        )
        .await
        .unwrap();
    let mut refused = false;
    for i in 0..40 {
        let fresh = format!("https://fresh{i}.example.com");
        if live::call_resource(addr, ips["pod-sp"], &fresh, "").await.0 == 503 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(refused, "the revocation never reached the authorizer");
    let failed_reads = |m: &Metrics| {
        m.render()
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"aadpodidentity_kubernetes_api_operations_errors_count{operation_type="get_secret"}"#,
                )
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = failed_reads(&metrics);
    let (status, body) = call(addr, ips["pod-sp"], "").await;
    assert_eq!(status, 200, "the cached token: {body}");
    assert_eq!(
        failed_reads(&metrics),
        before,
        "no Secret read for a cached token"
    );
}
