//! Federated serving against the real API server and the Azure emulator: identities served
//! `federated` sit on no scale set while their pods' records are `Assigned` and say so; a
//! binding flipped while its pod runs moves podid's own assignment off the scale set and back,
//! never a pre-existing one; a binding asking for exchange while `--federated` is off is served
//! `assigned` and told why; an identity bound in 25 namespaces is served through one credential
//! for its per-identity ServiceAccount.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, Patch, PatchParams, PostParams};
use podid_azure::FederatedCredentials;
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::migration::{
    ExchangeTarget, WorkloadMigration, exchange_target, identity_service_account,
    service_account_subject,
};
use podid_crds::serving::{Serving, ServingSettings};
use podid_crds::{
    AzureAssignedIdentity, AzureIdentityBinding, SERVING_ANNOTATION, TARGET_ANNOTATION,
    WI_CLIENT_ID_ANNOTATION,
};
use podid_operator::planner::PlannerOptions;
use podid_testkit::{Cluster, NodePool};
use serde_json::json;

const FEDERATED_ON: ServingSettings = ServingSettings {
    federated: true,
    default: Serving::Assigned,
};

/// A controller replica with `--federated` (Lease in `lease_ns`).
async fn start_federated(c: &kube::Client, emu: &Emulator, id: &str, lease_ns: &str) -> Replica {
    start_with(
        c,
        emu,
        id,
        lease_ns,
        Duration::from_secs(15),
        None,
        PlannerOptions {
            serving: FEDERATED_ON,
            ..Default::default()
        },
    )
    .await
}

async fn emulator() -> Emulator {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    emu
}

async fn served_binding(
    c: &kube::Client,
    ns: &str,
    name: &str,
    identity: &str,
    selector: &str,
    serving: Option<&str>,
) {
    let mut meta = json!({"name": name});
    if let Some(s) = serving {
        meta["annotations"] = json!({SERVING_ANNOTATION: s});
    }
    Api::<AzureIdentityBinding>::namespaced(c.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": meta,
                "spec": {"azureIdentity": identity, "selector": selector}})),
        )
        .await
        .unwrap();
}

async fn set_serving(c: &kube::Client, ns: &str, binding: &str, serving: &str) {
    Api::<AzureIdentityBinding>::namespaced(c.clone(), ns)
        .patch(
            binding,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {SERVING_ANNOTATION: serving}}})),
        )
        .await
        .unwrap();
}

async fn record(c: &kube::Client, name: &str) -> AzureAssignedIdentity {
    Api::<AzureAssignedIdentity>::namespaced(c.clone(), "default")
        .get(name)
        .await
        .unwrap()
}

fn annotation<'a>(a: &'a AzureAssignedIdentity, key: &str) -> Option<&'a str> {
    a.metadata
        .annotations
        .as_ref()
        .and_then(|m| m.get(key))
        .map(String::as_str)
}

/// Polls the record until its serving annotation says `want`.
async fn wait_serving(c: &kube::Client, name: &str, want: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = Api::<AzureAssignedIdentity>::namespaced(c.clone(), "default")
            .get_opt(name)
            .await
            .unwrap();
        let now = r
            .as_ref()
            .and_then(|r| annotation(r, SERVING_ANNOTATION).map(str::to_owned));
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {secs}s record {name} says serving {now:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_federated_identity_is_on_no_scale_set_and_its_record_is_assigned() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fed-a").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("feda", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let web = emu.add_identity("rg", "web");
    identity(&c, &ns.name, "web", 0, &web.id, &web.client_id).await;
    // Standard mode matches bindings in every namespace: a selector of this test's own.
    served_binding(&c, &ns.name, "web", "web", "fed-a-web", Some("federated")).await;
    pod(&c, &ns.name, "p", &pool.node_name(0), "fed-a-web").await;
    let replica = start_federated(&c, &emu, "fa", &ns.name).await;
    let name = format!("p-{}-web", ns.name);
    wait_assigned(&c, &ns.name, std::slice::from_ref(&name), 60).await;
    let r = record(&c, &name).await;
    assert_eq!(annotation(&r, SERVING_ANNOTATION), Some("federated"));
    assert_eq!(annotation(&r, TARGET_ANNOTATION), None, "assigned nowhere");
    assert!(on_machine(&emu, &vmss).is_empty());
    assert_eq!(emu.call_count("PATCH vmss"), 0, "{:?}", emu.calls());
    replica.stop().await;
}

#[tokio::test]
async fn a_flip_moves_podids_own_assignment_off_the_scale_set_and_back() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fed-b").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("fedb", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let web = emu.add_identity("rg", "web");
    let kubelet = emu.add_identity(&pool.resource_group, "kubelet");
    emu.preassign(&vmss, &kubelet.id);
    identity(&c, &ns.name, "web", 0, &web.id, &web.client_id).await;
    identity(&c, &ns.name, "kubelet", 0, &kubelet.id, &kubelet.client_id).await;
    served_binding(&c, &ns.name, "web", "web", "fed-b-web", None).await;
    served_binding(&c, &ns.name, "kubelet", "kubelet", "fed-b-k", None).await;
    pod(&c, &ns.name, "p", &node, "fed-b-web").await;
    pod(&c, &ns.name, "k", &node, "fed-b-k").await;
    let replica = start_federated(&c, &emu, "fb", &ns.name).await;
    let (p, k) = (
        format!("p-{}-web", ns.name),
        format!("k-{}-kubelet", ns.name),
    );
    wait_assigned(&c, &ns.name, &[k.clone(), p.clone()], 60).await;
    wait_machine(&emu, &vmss, &[&kubelet.id, &web.id], 10).await;
    assert_eq!(
        annotation(&record(&c, &p).await, SERVING_ANNOTATION),
        Some("assigned")
    );

    // assigned -> federated while the pods run: podid's own assignment goes, the one that was
    // there before podid stays.
    set_serving(&c, &ns.name, "web", "federated").await;
    set_serving(&c, &ns.name, "kubelet", "federated").await;
    wait_serving(&c, &p, "federated", 30).await;
    wait_serving(&c, &k, "federated", 30).await;
    wait_machine(&emu, &vmss, &[&kubelet.id], 30).await;
    wait_assigned(&c, &ns.name, &[k.clone(), p.clone()], 30).await;

    // And back: the identity returns, then the record says assigned.
    set_serving(&c, &ns.name, "web", "assigned").await;
    wait_serving(&c, &p, "assigned", 30).await;
    assert!(
        on_machine(&emu, &vmss).contains(&web.id.to_lowercase()),
        "the record says assigned only once the identity is on the scale set"
    );
    wait_machine(&emu, &vmss, &[&kubelet.id, &web.id], 10).await;
    wait_assigned(&c, &ns.name, &[k.clone(), p.clone()], 30).await;

    // The pods go: podid's assignment goes, the pre-existing one stays.
    delete_pod(&c, &ns.name, "p").await;
    delete_pod(&c, &ns.name, "k").await;
    wait_machine(&emu, &vmss, &[&kubelet.id], 30).await;
    replica.stop().await;
}

/// Operator, bridge and agent together: a pod asks the agent for a token every 20 ms (each time
/// for a resource not asked before, so every answer is fetched) while its binding flips
/// assigned -> federated -> assigned. The bridge prepares and proves the pod's credential (on a
/// dedicated ServiceAccount, the pod running as `default`: the agent's tokens for it are
/// unbound); the operator moves its assignment off the scale set and back; no request fails.
#[tokio::test]
async fn a_pod_asking_throughout_a_flip_gets_every_token() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fed-e").await;
    let c = ns.client.clone();
    let admin = cluster.client().await.unwrap();
    let pool = NodePool::aks("fede", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = emulator().await;
    emu.trust_issuer_ca(cluster.ca_pem());
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let web = emu.add_identity("rg", "web");
    identity(&c, &ns.name, "web", 0, &web.id, &web.client_id).await;
    served_binding(&c, &ns.name, "web", "web", "fed-e-web", None).await;
    pod(&c, &ns.name, "p", &node, "fed-e-web").await;
    let running = podid_testkit::wait_for_running_pods(
        Api::namespaced(c.clone(), &ns.name),
        "aadpodidbinding=fed-e-web",
        1,
        120,
    )
    .await
    .expect("pod running with an IP");
    let ip: std::net::IpAddr = running[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap()
        .parse()
        .unwrap();

    let replica = start_federated(&c, &emu, "fe", &ns.name).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut bridge = common::bridge(cluster, &admin, &emu, &shutdown);
    bridge.settings.serving = FEDERATED_ON;
    let bridging = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), bridge.stores.ready()).await;
            while !shutdown.is_cancelled() {
                bridge.pass().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // The agent for the node, standard mode, --federated, as the binary wires it.
    let flags = <podid_nmi::config::Flags as clap::Parser>::try_parse_from([
        "podid-nmi".to_owned(),
        format!("--node={node}"),
        "--federated".to_owned(),
        format!("--entra-authority={}", emu.arm_endpoint()),
        format!(
            "--imds-endpoint={}",
            emu.imds_endpoint(&format!("{}_0", pool.scale_set))
        ),
        "--find-identity-retry-interval=1".to_owned(),
    ])
    .unwrap();
    let view =
        podid_nmi::cluster::KubeView::start(admin.clone(), &node, true, true, shutdown.clone())
            .await
            .unwrap();
    let builder = podid_nmi::agent::AgentBuilder::new(&flags, shutdown.clone())
        .kube_federation(admin.clone());
    let agent_metrics = builder.metrics.clone();
    let credentials = builder
        .kube_credentials(admin.clone(), Arc::new(view.clone()))
        .unwrap();
    let agent = Arc::new(builder.build(Arc::new(view), Arc::new(credentials)));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    tokio::spawn(podid_nmi::server::serve(
        listener,
        podid_nmi::server::router(agent),
        shutdown.clone(),
    ));

    // The bridge has proven the pod's credential.
    let records: Api<WorkloadMigration> = Api::namespaced(c.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let proven = records
            .get_opt("pod-p")
            .await
            .unwrap()
            .and_then(|r| r.status)
            .and_then(|s| exchange_target(&s, &web.client_id));
        if let Some(t) = proven {
            assert_eq!(
                (t.namespace.as_str(), t.service_account.as_str()),
                (ns.name.as_str(), "p")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge proved nothing in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let p = format!("p-{}-web", ns.name);
    wait_assigned(&c, &ns.name, std::slice::from_ref(&p), 60).await;
    wait_machine(&emu, &vmss, &[&web.id], 30).await;

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .local_address(ip)
                .no_proxy()
                .build()
                .unwrap();
            let (mut ok, mut failures) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let resource = format!("https://flip{i}.example.com");
                let resp = http
                    .get(format!("http://{addr}/metadata/identity/oauth2/token"))
                    .query(&[
                        ("api-version", "2018-02-01"),
                        ("resource", resource.as_str()),
                    ])
                    .header("Metadata", "true")
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                if status == 200 {
                    ok += 1;
                } else {
                    failures.push(format!("{status} {}", resp.text().await.unwrap()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures)
        })
    };
    let exchanged = || {
        agent_metrics
            .render()
            .lines()
            .find(|l| {
                l.starts_with("podid_nmi_federated_requests_duration_seconds_count{serving=\"federated\",result=\"ok\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let imds = || emu.call_count("GET imds.token");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while imds() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no IMDS tokens");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    set_serving(&c, &ns.name, "web", "federated").await;
    wait_serving(&c, &p, "federated", 30).await;
    wait_machine(&emu, &vmss, &[], 30).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while exchanged() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no exchanges");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let imds_after = imds();

    set_serving(&c, &ns.name, "web", "assigned").await;
    wait_serving(&c, &p, "assigned", 30).await;
    wait_machine(&emu, &vmss, &[&web.id], 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while imds() < imds_after + 3 {
        assert!(tokio::time::Instant::now() < deadline, "IMDS not back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = poller.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok as usize + failures.len()
    );
    assert!(ok >= 9, "{ok}");
    shutdown.cancel();
    let _ = bridging.await;
    replica.stop().await;
}

#[tokio::test]
async fn without_federated_a_federated_binding_is_assigned_and_told_why() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fed-d").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("fedd", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator().await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let web = emu.add_identity("rg", "web");
    identity(&c, &ns.name, "web", 0, &web.id, &web.client_id).await;
    served_binding(&c, &ns.name, "web", "web", "fed-d-web", Some("federated")).await;
    pod(&c, &ns.name, "p", &pool.node_name(0), "fed-d-web").await;
    let replica = start(&c, &emu, "fd", &ns.name, Duration::from_secs(15)).await;
    let name = format!("p-{}-web", ns.name);
    wait_assigned(&c, &ns.name, std::slice::from_ref(&name), 60).await;
    wait_machine(&emu, &vmss, &[&web.id], 10).await;
    assert_eq!(
        annotation(&record(&c, &name).await, SERVING_ANNOTATION),
        Some("assigned")
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let notes = loop {
        let notes: Vec<String> = events
            .list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("AzureIdentityBinding")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
                    && e.reason.as_deref() == Some("IdentityServing")
            })
            .filter_map(|e| e.note)
            .collect();
        if !notes.is_empty() || tokio::time::Instant::now() > deadline {
            break notes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("--federated") && notes[0].contains(SERVING_ANNOTATION),
        "{notes:?}"
    );
    replica.stop().await;
}

/// Bindings in `ids` for one identity, 25 workloads in 25 namespaces, served `federated`.
#[tokio::test]
async fn an_identity_bound_in_25_namespaces_is_served_through_one_credential() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let client = cluster.client().await.unwrap();
    let emu = emulator().await;
    emu.trust_issuer_ca(cluster.ca_pem());
    let shared = emu.add_identity("ids", "shared");
    let ids = cluster.namespace("fedc-ids").await;
    let home = cluster.namespace("fedc-op").await;
    identity(
        &client,
        &ids.name,
        "shared",
        0,
        &shared.id,
        &shared.client_id,
    )
    .await;
    let mut teams = Vec::new();
    for i in 0..25 {
        let team = cluster.namespace(&format!("fedc-{i:02}")).await;
        let selector = format!("{}-app", team.name);
        served_binding(
            &client,
            &ids.name,
            &format!("b-{i:02}"),
            "shared",
            &selector,
            Some("federated"),
        )
        .await;
        Api::<Deployment>::namespaced(client.clone(), &team.name)
            .create(
                &PostParams::default(),
                &obj(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "app"},
                    "spec": {"replicas": 0, "selector": {"matchLabels": {"app": selector}},
                        "template": {"metadata": {"labels": {"app": selector, "aadpodidbinding": selector}},
                            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}})),
            )
            .await
            .unwrap();
        teams.push(team);
    }

    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut bridge = common::bridge(cluster, &client, &emu, &shutdown);
    bridge.settings.serving = FEDERATED_ON;
    bridge.settings.namespace = Some(home.name.clone());
    tokio::time::timeout(Duration::from_secs(60), bridge.stores.ready())
        .await
        .expect("watches synced");
    // The watches may still be catching up with the objects just made: pass until all 25
    // records are written.
    let records: Api<WorkloadMigration> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut report;
    loop {
        report = bridge.pass().await;
        let on_it = records
            .list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|r| {
                teams
                    .iter()
                    .any(|t| Some(&t.name) == r.metadata.namespace.as_ref())
            })
            .count();
        if on_it == 25 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{on_it} records after 60s: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(report.errors, 0, "{report:?}");

    let sa = identity_service_account(&shared.id);
    let subject = service_account_subject(&home.name, &sa);
    let creds = common::arm(&emu).list(&shared.id).await.unwrap();
    let podid: Vec<_> = creds
        .iter()
        .filter(|c| c.name.starts_with("podid-"))
        .collect();
    assert_eq!(podid.len(), 1, "{creds:?}");
    assert_eq!(podid[0].subject, subject);
    let made = Api::<ServiceAccount>::namespaced(client.clone(), &home.name)
        .get(&sa)
        .await
        .unwrap();
    assert_eq!(
        made.metadata.annotations.as_ref().unwrap()[WI_CLIENT_ID_ANNOTATION],
        shared.client_id
    );
    for team in &teams {
        let status = Api::<WorkloadMigration>::namespaced(client.clone(), &team.name)
            .get("deployment-app")
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(status.credentials.len(), 1, "{status:?}");
        assert_eq!(status.credentials[0].subject, subject);
        assert!(status.credentials[0].ready, "proven: {status:?}");
        assert_eq!(
            exchange_target(&status, &shared.client_id),
            Some(ExchangeTarget {
                namespace: home.name.clone(),
                service_account: sa.clone(),
                tenant_id: emu.tenant_id(),
            })
        );
        let blocked = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Blocked")
            .unwrap();
        assert_eq!(
            (blocked.status.as_str(), blocked.reason.as_str()),
            ("True", "FederatedCredentialLimit"),
            "the limit still blocks the cutover"
        );
    }

    // Nothing needs it any more: the credential and the ServiceAccount go.
    for i in 0..25 {
        Api::<AzureIdentityBinding>::namespaced(client.clone(), &ids.name)
            .delete(&format!("b-{i:02}"), &Default::default())
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        bridge.pass().await;
        let left = common::arm(&emu).list(&shared.id).await.unwrap();
        let sa_left = Api::<ServiceAccount>::namespaced(client.clone(), &home.name)
            .get_opt(&sa)
            .await
            .unwrap();
        if left.is_empty() && sa_left.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 60s: credentials {left:?}, ServiceAccount present: {}",
            sa_left.is_some()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shutdown.cancel();
}
