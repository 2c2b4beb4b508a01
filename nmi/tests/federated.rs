//! Federated serving on the real API server and the Azure emulator: podid-nmi in-process (managed
//! mode, `--federated`) for one fake AKS node, pods calling from their own 127.x addresses, the
//! Workload ID side prepared as podid-operator's bridge leaves it (credential in the emulator,
//! WorkloadMigration proven).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use podid_azure_emulator::state::Identity;
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::migration::identity_service_account;
use podid_crds::policy::Mode;
use podid_crds::{AzureIdentityBinding, SERVING_ANNOTATION};
use podid_nmi::metrics::Metrics;
use podid_nmi::server::ServerConfig;
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};

mod live;
use live::{call_resource, claims, obj, run_pods};

/// One node, one identity on its scale set, pods `pods` in namespace `ns` bound to it (binding
/// `bind-id`, annotated with `serving` when given), each pod's workload bridged on the pod's own
/// ServiceAccount, and the agent with `flags`.
struct Scene {
    client: kube::Client,
    ns: String,
    emu: Emulator,
    ident: Identity,
    ips: std::collections::BTreeMap<String, IpAddr>,
    addr: SocketAddr,
    metrics: Metrics,
    _agent: tokio_util::sync::DropGuard,
}

async fn scene(tag: &str, serving: Option<&str>, pods: &[&str]) -> Scene {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace(&format!("fed-{tag}")).await;
    let client = ns.client.clone();
    let pool = NodePool::aks(&format!("fed{tag}"), 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);

    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let ident = emu.add_identity("rg", &format!("fed-{tag}"));
    emu.preassign(&vmss, &ident.id);
    let selector = format!("fed-{tag}");
    live::bound_identity(
        &client,
        &ns.name,
        "id",
        json!({"type": 0, "resourceID": ident.id, "clientID": ident.client_id}),
        &selector,
    )
    .await;
    if let Some(s) = serving {
        set_serving(&client, &ns.name, s).await;
    }
    let labels: Vec<(&str, Value)> = pods
        .iter()
        .map(|p| (*p, json!({"aadpodidbinding": selector})))
        .collect();
    let ips = run_pods(
        &Api::<Pod>::namespaced(client.clone(), &ns.name),
        &node,
        &labels,
    )
    .await;
    for p in pods {
        live::bridged(
            &client,
            cluster,
            &emu,
            &ident,
            (&ns.name, "Pod", p),
            "default",
        )
        .await;
    }
    let imds = url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set))).unwrap();
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        imds_endpoint: imds,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let (agent, metrics) = live::start_agent_with_flags(
        listener,
        client.clone(),
        &node,
        config,
        &emu.arm_endpoint(),
        &["--federated"],
    )
    .await;
    Scene {
        client,
        ns: ns.name.clone(),
        emu,
        ident,
        ips,
        addr,
        metrics,
        _agent: agent,
    }
}

async fn set_serving(client: &kube::Client, ns: &str, serving: &str) {
    Api::<AzureIdentityBinding>::namespaced(client.clone(), ns)
        .patch(
            "bind-id",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {SERVING_ANNOTATION: serving}}})),
        )
        .await
        .unwrap();
}

fn token_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    claims(v["access_token"].as_str().unwrap())
}

/// Polls (every 100 ms, at most `secs`) until `f` holds.
async fn until(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_deleted_credential_fails_clearly_under_federated_and_falls_back_under_federated_with_fallback()
 {
    let s = scene("del", Some("federated"), &["app"]).await;
    let ip = s.ips["app"];
    let (status, body) = call_resource(s.addr, ip, "https://vault.azure.net", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live::token_client(&token_of(&body)), s.ident.client_id);
    assert_eq!(s.emu.call_count("GET imds.token"), 0, "exchanged, not IMDS");
    // IMDS's shape, naming the identity as IMDS does.
    let answer: Value = serde_json::from_str(&body).unwrap();
    for field in [
        "access_token",
        "expires_in",
        "expires_on",
        "resource",
        "token_type",
    ] {
        assert!(answer[field].is_string(), "{field}: {body}");
    }
    assert_eq!(answer["client_id"], s.ident.client_id.as_str(), "{body}");

    // Someone deletes the credential in Azure: the next exchange (a resource not cached) fails,
    // in IMDS's error shape, naming Entra's code.
    let names = s.emu.federated_credentials(&s.ident.id);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(s.emu.delete_federated_credential(&s.ident.id, &names[0]));
    let (status, body) = call_resource(s.addr, ip, "https://storage.azure.com/", "").await;
    assert_eq!(status, 403, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"], "invalid_client", "{body}");
    let description = err["error_description"].as_str().unwrap();
    assert!(description.starts_with("AADSTS70021"), "{body}");
    assert_eq!(s.emu.call_count("GET imds.token"), 0, "no silent fallback");

    // federated-with-fallback: the same failure is served through the scale set.
    set_serving(&s.client, &s.ns, "federated-with-fallback").await;
    until(10, "served through the scale set", async || {
        call_resource(s.addr, ip, "https://storage.azure.com/", "")
            .await
            .0
            == 200
    })
    .await;
    let (status, body) = call_resource(s.addr, ip, "https://storage.azure.com/", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(token_of(&body)["appid"], s.ident.client_id.as_str());
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["client_id"], s.ident.client_id.as_str(), "{body}");
    assert!(s.emu.call_count("GET imds.token") >= 1);
    let metrics = s.metrics.render();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "podid_nmi_federated_requests_duration_seconds_count{serving=\"federated-with-fallback\",result=\"fallback\"}"
        )),
        "{metrics}"
    );
    // At least the refused request above (more if the agent had not yet seen the new
    // annotation when the fallback was first asked for).
    let refused = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "podid_nmi_federated_requests_duration_seconds_count{serving=\"federated\",result=\"exchange\"} ",
            )
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n >= 1), "{metrics}");
}

#[tokio::test]
async fn switching_a_binding_between_assigned_and_federated_fails_no_request() {
    let s = scene("sw", None, &["app"]).await;
    let ip = s.ips["app"];
    // A pod asking all the time, each time for a resource not asked before (so nothing is
    // served from the cache and every answer shows the path taken).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let poller = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), s.addr);
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let resource = format!("https://r{i}.example.com");
                let (status, body) = call_resource(addr, ip, &resource, "").await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    failures.push(format!("{status} {body}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };
    let imds = || s.emu.call_count("GET imds.token");
    let exchanges = || s.emu.call_count("POST token");
    until(10, "served through the scale set", async || imds() >= 3).await;
    assert_eq!(exchanges(), 0);

    set_serving(&s.client, &s.ns, "federated").await;
    until(10, "served by exchange", async || exchanges() >= 3).await;
    // Once switched, no more IMDS calls.
    let after = imds();
    until(5, "three more exchanges", async || exchanges() >= 6).await;
    assert_eq!(imds(), after, "exchanges only, once switched");

    set_serving(&s.client, &s.ns, "assigned").await;
    let back = imds();
    until(10, "served through the scale set again", async || {
        imds() >= back + 3
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    let failures = poller.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the switches: {failures:?}",
        failed.load(Ordering::SeqCst),
        ok.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) >= 9);
}

/// An identity bound in 25 namespaces (one AzureIdentity each, managed mode), more workloads than
/// Azure allows credentials: all are served through the identity's one ServiceAccount in the
/// operator's namespace, with one credential.
#[tokio::test]
async fn twenty_five_namespaces_on_one_identity_are_served_through_one_credential() {
    const N: usize = 25;
    let cluster = Cluster::shared_async().await;
    let admin = cluster.client().await.unwrap();
    let pool = NodePool::aks("fed25", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let ident = emu.add_identity("rg", "shared-25");

    // The operator's namespace and the identity's ServiceAccount there, with its credential.
    let operator_ns = cluster.namespace("fed25-operator").await;
    let sa = identity_service_account(&ident.id);
    Api::<ServiceAccount>::namespaced(admin.clone(), &operator_ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": sa}})),
        )
        .await
        .unwrap();
    let mut namespaces = Vec::new();
    let mut ips = Vec::new();
    for i in 0..N {
        let ns = cluster.namespace(&format!("fed25-{i}")).await;
        let selector = format!("fed25-{i}");
        live::bound_identity(
            &admin,
            &ns.name,
            "id",
            json!({"type": 0, "resourceID": ident.id, "clientID": ident.client_id}),
            &selector,
        )
        .await;
        set_serving(&admin, &ns.name, "federated").await;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
        let got = run_pods(
            &pods,
            &node,
            &[("app", json!({"aadpodidbinding": selector}))],
        )
        .await;
        ips.push(got["app"]);
        namespaces.push(ns);
    }
    // The first record creates the credential; the others list the same one.
    for (i, ns) in namespaces.iter().enumerate() {
        if i == 0 {
            live::bridged_to(
                &admin,
                cluster,
                &emu,
                &ident,
                (&ns.name, "Pod", "app"),
                (&operator_ns.name, &sa),
            )
            .await;
        } else {
            live::record_only(
                &admin,
                cluster,
                &emu,
                &ident,
                (&ns.name, "Pod", "app"),
                (&operator_ns.name, &sa),
            )
            .await;
        }
    }
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        imds_endpoint: url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set)))
            .unwrap(),
        ..Default::default()
    };
    let (addr, _agent) = live::start_agent_flags(
        admin.clone(),
        &node,
        config,
        &emu.arm_endpoint(),
        &["--federated"],
    )
    .await;
    // Each pod asks for a resource of its own, so each answer is a fresh exchange.
    for (i, ip) in ips.iter().enumerate() {
        let resource = format!("https://ns{i}.example.com");
        let (status, body) = call_resource(addr, *ip, &resource, "").await;
        assert_eq!(status, 200, "namespace {i}: {body}");
        let c = token_of(&body);
        assert_eq!(live::token_client(&c), ident.client_id);
    }
    assert_eq!(emu.call_count("POST token"), N as u64, "{:?}", emu.calls());
    assert_eq!(emu.call_count("GET imds.token"), 0);
    assert_eq!(emu.federated_credentials(&ident.id).len(), 1);
}

/// Standard mode: how the operator served each pod (annotation `podid.dev/identity-serving` on
/// its AzureAssignedIdentity) wins over the binding, so the agent never asks IMDS for an identity
/// the operator left off the scale set, nor exchanges where the operator assigned.
#[tokio::test]
async fn standard_mode_follows_the_serving_the_operator_recorded() {
    use podid_crds::{AzureAssignedIdentity, AzureIdentity, EmbeddedIdentity};
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("fed-std").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("fedstd", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    // a: recorded federated, binding silent, on no scale set. b: recorded assigned, binding
    // annotated federated, on the scale set.
    let (a, b) = (
        emu.add_identity("rg", "fed-std-a"),
        emu.add_identity("rg", "fed-std-b"),
    );
    emu.preassign(&vmss, &b.id);
    let mut pods = Vec::new();
    for (name, ident) in [("a", &a), ("b", &b)] {
        let spec = json!({"type": 0, "resourceID": ident.id, "clientID": ident.client_id});
        Api::<AzureIdentity>::namespaced(client.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": name}, "spec": spec})),
            )
            .await
            .unwrap();
        let mut binding = json!({"metadata": {"name": format!("bind-{name}")},
            "spec": {"azureIdentity": name, "selector": format!("fed-std-{name}")}});
        if name == "b" {
            binding["metadata"]["annotations"] = json!({SERVING_ANNOTATION: "federated"});
        }
        Api::<AzureIdentityBinding>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &obj(binding))
            .await
            .unwrap();
        pods.push((
            format!("pod-{name}"),
            json!({"aadpodidbinding": format!("fed-std-{name}")}),
        ));
    }
    let labels: Vec<(&str, Value)> = pods.iter().map(|(n, l)| (n.as_str(), l.clone())).collect();
    let ips = run_pods(
        &Api::<Pod>::namespaced(client.clone(), &ns.name),
        &node,
        &labels,
    )
    .await;
    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    let assigned: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), &ns.name);
    for (pod, identity, ident, serving) in [
        ("pod-a", "a", &a, "federated"),
        ("pod-b", "b", &b, "assigned"),
    ] {
        let id = ids.get(identity).await.unwrap();
        let record: AzureAssignedIdentity = obj(json!({
            "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
            "metadata": {"name": format!("{pod}-{}-{identity}", ns.name),
                         "labels": {"nodename": node},
                         "annotations": {SERVING_ANNOTATION: serving}},
            "spec": {"pod": pod, "podNamespace": ns.name, "nodename": node,
                     "azureIdentityRef": serde_json::to_value(EmbeddedIdentity::from(&id)).unwrap()},
            "status": {"status": "Assigned"}
        }));
        assigned
            .create(&PostParams::default(), &record)
            .await
            .unwrap();
        live::bridged(
            &client,
            cluster,
            &emu,
            ident,
            (&ns.name, "Pod", pod),
            "default",
        )
        .await;
    }
    let config = ServerConfig {
        mode: Mode::Standard,
        imds_endpoint: url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set)))
            .unwrap(),
        ..Default::default()
    };
    let (addr, _agent) = live::start_agent_flags(
        client.clone(),
        &node,
        config,
        &emu.arm_endpoint(),
        &["--federated"],
    )
    .await;

    let (status, body) = call_resource(addr, ips["pod-a"], "https://vault.azure.net", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live::token_client(&token_of(&body)), a.client_id);
    assert_eq!(emu.call_count("POST token"), 1, "pod-a by exchange");
    assert_eq!(emu.call_count("GET imds.token"), 0);

    let (status, body) = call_resource(addr, ips["pod-b"], "https://vault.azure.net", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(token_of(&body)["appid"], b.client_id.as_str());
    assert_eq!(emu.call_count("GET imds.token"), 1, "pod-b through IMDS");
    assert_eq!(emu.call_count("POST token"), 1);
}

/// Attack: a namespace user who may write WorkloadMigrations forges its own workload's record to
/// name another identity's credential, or another workload's ServiceAccount. The record only
/// ever chooses which ServiceAccount's token is presented for an identity the pod is already
/// granted; it never chooses the identity. No forged record yields the victim's identity.
#[tokio::test]
async fn a_forged_workload_record_never_yields_another_identity() {
    use podid_crds::migration::{WorkloadMigration, migration_name, service_account_subject};
    let s = scene("forge", Some("federated"), &["evil"]).await;
    // The victim: identity V, its credential for ServiceAccount `victim` of the same namespace.
    let victim = s.emu.add_identity("rg", "fed-forge-victim");
    Api::<ServiceAccount>::namespaced(s.client.clone(), &s.ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "victim"}})),
        )
        .await
        .unwrap();
    live::bridged(
        &s.client,
        Cluster::shared_async().await,
        &s.emu,
        &victim,
        (&s.ns, "Pod", "victim"),
        "victim",
    )
    .await;
    let ip = s.ips["evil"];
    let records: Api<WorkloadMigration> = Api::namespaced(s.client.clone(), &s.ns);
    let forge = async |status: Value| {
        records
            .patch_status(
                &migration_name("Pod", "evil"),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    };
    // The agent sees a record change within a watch event: ask (for fresh resources) until the
    // answer is `want`; no answer on the way may carry a token of another identity than E.
    let settled = async |tag: &str, want: u16| {
        let mut i = 0;
        let mut last = (0, String::new());
        until(10, "the agent sees the forged record", async || {
            i += 1;
            last = call_resource(s.addr, ip, &format!("https://{tag}{i}.example.com"), "").await;
            if last.0 == 200 {
                assert_eq!(live::token_client(&token_of(&last.1)), s.ident.client_id);
            }
            last.0 == want
        })
        .await;
        last
    };
    let no_token = |(status, body): (u16, String)| {
        assert_ne!(status, 200, "{body}");
        assert!(!body.contains("access_token"), "{body}");
        (status, body)
    };

    // 1. The record lists V and V's credential: asking for V is refused before any record is
    //    read (not bound), and the pod's own identity has no proven credential in it.
    forge(json!({
        "identities": [{"azureIdentity": "x/v", "clientID": victim.client_id, "resourceID": victim.id, "tenantID": s.emu.tenant_id()}],
        "credentials": [{"name": "podid-x", "identity": victim.id, "issuer": "i",
                         "subject": service_account_subject(&s.ns, "victim"), "ready": true}],
    }))
    .await;
    let q = format!("client_id={}", victim.client_id);
    let (status, _) = no_token(call_resource(s.addr, ip, "https://vault.azure.net", &q).await);
    assert_eq!(status, 403);
    let (status, body) = no_token(settled("one", 503).await);
    assert_eq!(status, 503, "{body}");

    // 2. The record names the victim's ServiceAccount for the pod's own identity E: the agent
    //    presents that ServiceAccount's token for E, which has no credential for it: Entra
    //    refuses (AADSTS70021). Still no token, and never V's.
    forge(json!({
        "identities": [{"azureIdentity": "x/e", "clientID": s.ident.client_id, "resourceID": s.ident.id, "tenantID": s.emu.tenant_id()}],
        "credentials": [{"name": "podid-x", "identity": s.ident.id, "issuer": "i",
                         "subject": service_account_subject(&s.ns, "victim"), "ready": true}],
    }))
    .await;
    let (status, body) = no_token(settled("two", 403).await);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AADSTS70021"), "{body}");
}
