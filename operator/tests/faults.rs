//! The fault suite: podid-operator, the real binary, on the real control plane and the Azure
//! emulator, while things break — a fifth of ARM and Entra calls failing in every way Azure
//! fails (429 with Retry-After, 500, an answer that stops mid-body, a call that outlives its
//! timeout) during controller churn and bridge work; the API server and etcd restarted and
//! watches expired (410 Gone); the operator SIGKILLed at 20 random moments; the leader of two
//! replicas killed. After each: convergence, nothing lost (every pod's identity on its scale
//! set, every workload's record `Bridged`), nothing leaked (no identity left on a scale set that
//! no pod needs, no duplicate credential) and nothing foreign touched (identities and
//! credentials another tool made stay). Each test prints its figures on a `FIGURES` line
//! (docs/reliability.md).
//!
//! Its own test binary: it restarts the control plane, which every test of a binary shares.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use podid_azure_emulator::{Emulator, Fault, FederatedCredential, Settings};
use podid_crds::AzureAssignedIdentity;
use podid_crds::migration::{Stage, WorkloadMigration};
use podid_testkit::builders::obj;
use podid_testkit::{Cluster, NodePool};
use rand::{Rng, SeedableRng};
use serde_json::json;

use common::process::{Running, cloud_config, free_port, podid_nmi_binary};
use common::{
    APP, binding, clean_slate, delete_pod, identity, on_machine, one_controller_at_a_time, pod,
    wait_assigned,
};

/// The request timeout the operator runs with here, so that a call the emulator holds longer
/// (`SLOW_MS`) times out within the test's time.
const REQUEST_TIMEOUT: &str = "2s";
const SLOW_MS: u64 = 3_000;

async fn emulator(cluster: &Cluster) -> Emulator {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    emu.trust_issuer_ca(cluster.ca_pem());
    emu
}

/// `n` user-assigned identities `<prefix>0…` in ARM, each with its AzureIdentity and its
/// binding in `ns`, named alike, selecting pods labelled with the same name.
async fn bound_identities(
    emu: &Emulator,
    c: &kube::Client,
    ns: &str,
    prefix: &str,
    n: usize,
) -> Vec<podid_azure_emulator::state::Identity> {
    let mut ids = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let id = emu.add_identity("rg", &name);
        identity(c, ns, &name, 0, &id.id, &id.client_id).await;
        binding(c, ns, &name, &name, &name).await;
        ids.push(id);
    }
    ids
}

/// One podid-operator process: standard mode, bridge on, Lease in `ns`, ARM and Entra from
/// the emulator.
fn operator(
    cluster: &Cluster,
    emu: &Emulator,
    dir: &Path,
    ns: &str,
    name: &str,
    resource_group: &str,
    lease: &str,
) -> Running {
    operator_probed(cluster, emu, dir, ns, name, resource_group, lease).0
}

/// [`operator`], and the port of its `/readyz`.
fn operator_probed(
    cluster: &Cluster,
    emu: &Emulator,
    dir: &Path,
    ns: &str,
    name: &str,
    resource_group: &str,
    lease: &str,
) -> (Running, u16) {
    let probe = free_port();
    let (azure_json, env_file, ca) = cloud_config(dir, emu, resource_group, APP);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_podid-operator"));
    cmd.arg(format!("--cloudconfig={}", azure_json.display()))
        .arg(format!("--extra-ca-file={}", ca.display()))
        .arg(format!("--leader-election-namespace={ns}"))
        .arg(format!("--leader-election-instance={name}"))
        .arg(format!("--leader-election-duration={lease}"))
        .arg(format!("--azure-request-timeout={REQUEST_TIMEOUT}"))
        .arg("--debounce=200ms")
        .arg(format!("--http-probe-port={probe}"))
        .arg(format!("--prometheus-port={}", free_port()))
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", ns)
        .env(
            "RUST_LOG",
            std::env::var("PODID_TEST_OPERATOR_LOG")
                .unwrap_or_else(|_| "podid_operator=debug,info".into()),
        );
    (Running::spawn(cmd, dir.join(format!("{name}.log"))), probe)
}

/// A fifth of the calls of every ARM and Entra route the operator uses fail, a twentieth each
/// way: throttled (429, Retry-After 1 s), a server error (500), an answer cut off mid-body, and
/// one held past the operator's request timeout.
fn a_fifth_failing(emu: &Emulator) {
    // Faults are tried in order, each at its rate: these rates give each kind 5 % of all calls.
    let throttled = Fault {
        status: Some(429),
        retry_after: Some(1),
        rate: Some(0.05),
        ..Default::default()
    };
    let server_error = Fault {
        status: Some(500),
        rate: Some(0.05 / 0.95),
        ..Default::default()
    };
    let cut_off = Fault {
        drop: true,
        rate: Some(0.05 / 0.90),
        ..Default::default()
    };
    let too_slow = Fault {
        latency_ms: Some(SLOW_MS),
        rate: Some(0.05 / 0.85),
        ..Default::default()
    };
    let kinds = [throttled, server_error, cut_off, too_slow];
    for route in [
        "GET vmss",
        "PATCH vmss",
        "GET vm",
        "PATCH vm",
        "GET fics",
        "PUT fic",
        "DELETE fic",
        "GET identity",
        "POST token",
    ] {
        for kind in &kinds {
            emu.inject(Fault {
                route: route.into(),
                ..kind.clone()
            });
        }
    }
}

/// `n` Deployments `app-0…` in `ns` on ServiceAccounts `sa-0…`, their pods bound through
/// `selector` (no pods run: the bridge works on the template).
async fn deployments(client: &kube::Client, ns: &str, selector: &str, n: usize) {
    for i in 0..n {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": format!("app-{i}")}, "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": format!("app-{i}")}},
                    "template": {"metadata": {"labels": {"app": format!("app-{i}"), "aadpodidbinding": selector}},
                        "spec": {"serviceAccountName": format!("sa-{i}"),
                            "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}}}})),
            )
            .await
            .unwrap();
    }
}

/// Waits until every WorkloadMigration in `ns` named in `want` is `Bridged`; panics with the
/// stages and the operator's log after `secs`.
async fn wait_bridged(
    client: &kube::Client,
    ns: &str,
    want: &[String],
    secs: u64,
    op: &Running,
) -> Duration {
    let started = Instant::now();
    let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), ns);
    loop {
        let stages: BTreeMap<String, Option<Stage>> = records
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.into_iter()
                    .map(|r| (r.metadata.name.unwrap(), r.status.and_then(|s| s.stage)))
                    .collect()
            })
            .unwrap_or_default();
        if want
            .iter()
            .all(|w| stages.get(w) == Some(&Some(Stage::Bridged)))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "records not all Bridged after {secs} s: {stages:?}\nthe operator's log (tail):\n{}",
            op.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `machine` holds exactly `want` (ARM ids, any case).
async fn wait_exactly(emu: &Emulator, machine: &str, want: &[&str], secs: u64, op: &Running) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_ascii_lowercase()).collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let on: BTreeSet<String> = on_machine(emu, machine).into_iter().collect();
        if on == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{machine} holds {on:?}, want {want:?} after {secs} s\nthe operator's log (tail):\n{}",
            op.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The subjects of `identity`'s federated credentials, with how often each occurs.
fn subjects(emu: &Emulator, identity_id: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in emu.federated_credential_subjects(identity_id) {
        *out.entry(s).or_default() += 1;
    }
    out
}

/// podid-nmi, the binary `cargo test --workspace` builds beside this test, in standard mode
/// for `node` with the emulator's IMDS for the scale set's first instance (no iptables: pods
/// call it directly). Returns the process and its address.
fn agent(cluster: &Cluster, dir: &Path, node: &str, imds: &str) -> (Running, String) {
    let bin = podid_nmi_binary().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(format!("--node={node}"))
        .arg(format!("--nmi-port={port}"))
        .arg(format!("--http-probe-port={}", free_port()))
        .arg(format!("--prometheus-port={}", free_port()))
        .arg(format!("--imds-endpoint={imds}"))
        .arg("--manage-iptables=false")
        .arg("--allow-network-plugin-kubenet")
        .arg("--token-refresh-margin-sec=0")
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("NODE_NAME", node)
        .env("RUST_LOG", "podid_nmi=debug,info");
    (
        Running::spawn(cmd, dir.join("podid-nmi.log")),
        format!("127.0.0.1:{port}"),
    )
}

/// Waits until pod `name` runs with an address, then asks the agent for a token from that
/// address until it is granted (bounded): the status of the last answer and how long it took.
async fn token_for_pod(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    agent: &str,
    client_id: &str,
    secs: u64,
    log: &Running,
) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let ip: std::net::IpAddr = loop {
        if let Ok(p) = pods.get(name).await
            && let Some(ip) = p.status.and_then(|s| s.pod_ip)
        {
            break ip.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "pod {name} has no address");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let http = reqwest::Client::builder()
        .local_address(ip)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    loop {
        let last = match http
            .get(format!("http://{agent}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id={client_id}"))
            .header("Metadata", "true")
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return started.elapsed(),
            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "pod {name} got no token within {secs} s: {last}\nthe agent's log (tail):\n{}",
            log.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

/// A fifth of ARM and Entra calls failing (each of 429 + Retry-After, 500, cut off mid-answer,
/// timed out) from the first call on, while pods come and go, bindings change and the bridge
/// builds credentials: everything converges, no identity is left on the scale set that no pod
/// needs, the identities and the credential another tool put there stay, no credential is
/// written twice, and no record is stuck.
#[tokio::test]
async fn a_fifth_of_azure_calls_failing_during_churn_and_bridge_work() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fault-azure").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("faultaz", 2);
    cluster.add_nodes(&pool).await.expect("fake nodes ready");
    let emu = emulator(cluster).await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 2);
    let kubelet = emu.add_identity(&pool.resource_group, "kubelet");
    emu.preassign(&vmss, &kubelet.id);
    let foreign = emu.add_identity("rg", "other-tool");
    emu.preassign(&vmss, &foreign.id);
    let ids = bound_identities(&emu, &c, &ns.name, "az", 4).await;
    // A credential someone made by hand on a bound identity: never the bridge's to remove.
    emu.add_federated_credential(
        &ids[0].id,
        FederatedCredential {
            name: "made-by-hand",
            issuer: "https://issuer.example.com",
            subject: "system:serviceaccount:elsewhere:app",
            audience: "api://AzureADTokenExchange",
        },
    )
    .unwrap();
    deployments(&c, &ns.name, "az0", 3).await;
    a_fifth_failing(&emu);
    let dir = tempfile::tempdir().unwrap();
    let op = operator(
        cluster,
        &emu,
        dir.path(),
        &ns.name,
        "faults-0",
        &pool.resource_group,
        "15s",
    );
    let started = Instant::now();

    let up = async |names: &[String], sels: &[String]| {
        futures::future::join_all(names.iter().zip(sels).enumerate().map(|(i, (n, s))| {
            let node = pool.node_name(i % 2);
            let c = c.clone();
            let ns = ns.name.clone();
            async move { pod(&c, &ns, n, &node, s).await }
        }))
        .await;
    };
    let record = |p: &str, s: &str| format!("{p}-{}-{s}", ns.name);
    // Round 1: 20 pods over identities az0..az2 (az3 bound by nobody yet).
    let names: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let sels: Vec<String> = (0..20).map(|i| format!("az{}", i % 3)).collect();
    up(&names, &sels).await;
    let mut want: Vec<String> = names.iter().zip(&sels).map(|(n, s)| record(n, s)).collect();
    wait_assigned(&c, &ns.name, &want, 180).await;
    let kept = [kubelet.id.as_str(), foreign.id.as_str()];
    let mut needed: Vec<&str> = kept.to_vec();
    needed.extend(ids[..3].iter().map(|i| i.id.as_str()));
    wait_exactly(&emu, &vmss, &needed, 120, &op).await;

    // Round 2: half the pods go, a binding moves to another identity (az2's pods now get az3),
    // ten new pods come.
    futures::future::join_all(names[..10].iter().map(|p| delete_pod(&c, &ns.name, p))).await;
    Api::<podid_crds::AzureIdentityBinding>::namespaced(c.clone(), &ns.name)
        .patch(
            "az2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"azureIdentity": "az3"}})),
        )
        .await
        .unwrap();
    let names2: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
    let sels2: Vec<String> = (0..10).map(|i| format!("az{}", i % 2)).collect();
    up(&names2, &sels2).await;
    // Records name the identity; az2's selector now gives az3.
    let rec = |n: &String, s: &String| {
        let identity = if s == "az2" { "az3" } else { s.as_str() };
        record(n, identity)
    };
    want = names[10..]
        .iter()
        .zip(&sels[10..])
        .chain(names2.iter().zip(&sels2))
        .map(|(n, s)| rec(n, s))
        .collect();
    wait_assigned(&c, &ns.name, &want, 240).await;
    let needed: Vec<&str> = kept
        .iter()
        .copied()
        .chain([ids[0].id.as_str(), ids[1].id.as_str(), ids[3].id.as_str()])
        .collect();
    wait_exactly(&emu, &vmss, &needed, 180, &op).await;
    let bridged = wait_bridged(
        &c,
        &ns.name,
        &(0..3)
            .map(|i| format!("deployment-app-{i}"))
            .collect::<Vec<_>>(),
        240,
        &op,
    )
    .await;

    // Round 3: every pod goes; only what others put there stays.
    futures::future::join_all(
        names[10..]
            .iter()
            .chain(&names2)
            .map(|p| delete_pod(&c, &ns.name, p)),
    )
    .await;
    wait_assigned(&c, &ns.name, &[], 240).await;
    wait_exactly(&emu, &vmss, &kept, 180, &op).await;
    let converged = started.elapsed();

    // Nothing foreign removed, nothing written twice.
    let on_id0 = subjects(&emu, &ids[0].id);
    assert_eq!(
        on_id0.get("system:serviceaccount:elsewhere:app"),
        Some(&1),
        "the hand-made credential stays: {on_id0:?}"
    );
    for i in 0..3 {
        let sa = format!("system:serviceaccount:{}:sa-{i}", ns.name);
        assert_eq!(
            on_id0.get(&sa),
            Some(&1),
            "one credential for {sa}: {on_id0:?}"
        );
    }
    for id in &ids {
        let s = subjects(&emu, &id.id);
        assert!(s.values().all(|n| *n == 1), "a duplicate credential: {s:?}");
    }
    let fired = emu.faults_fired();
    let calls = emu.calls();
    let azure_calls: u64 = calls
        .iter()
        .filter(|(r, _)| !r.contains("imds") && !r.contains("discovery"))
        .map(|(_, n)| n)
        .sum();
    for kind in ["429", "500", "drop", "latency"] {
        assert!(
            fired.keys().any(|k| k.ends_with(kind)),
            "no {kind} fault was met: {fired:?}"
        );
    }
    println!(
        "FIGURES azure-faults: {} faults injected in {azure_calls} ARM and Entra calls ({:.0} %), \
         30 pods and 3 workloads converged in {:.1} s (bridge {:.1} s); identities left unneeded: 0, \
         foreign identities or credentials removed: 0, duplicate credentials: 0, records stuck: 0; \
         faults by kind: {fired:?}",
        total(&fired),
        100.0 * total(&fired) as f64 / azure_calls.max(1) as f64,
        converged.as_secs_f64(),
        bridged.as_secs_f64(),
    );
    drop(op);
}

/// The API server restarted in the middle of a pass, etcd restarted, and etcd compacted
/// while the API server is down, so that the operator's watches resume from a
/// resourceVersion that is gone (410 Gone): the same operator process (no restart) picks up
/// every change made around each fault and converges.
#[tokio::test]
async fn api_server_and_etcd_restarts_and_expired_watches_are_recovered_in_process() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fault-kube").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("faultkube", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator(cluster).await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let ids = bound_identities(&emu, &c, &ns.name, "k", 4).await;
    // Writes take a while, so that a restart lands in the middle of a pass.
    emu.inject(Fault {
        route: "PATCH vmss".into(),
        latency_ms: Some(700),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut op = operator(
        cluster,
        &emu,
        dir.path(),
        &ns.name,
        "kube-0",
        &pool.resource_group,
        "15s",
    );
    let node = pool.node_name(0);
    let (mut nmi, nmi_addr) = agent(
        cluster,
        dir.path(),
        &node,
        &emu.imds_endpoint(&format!("{}_0", pool.scale_set)),
    );
    let record = |p: &str, s: &str| format!("{p}-{}-{s}", ns.name);
    let mut outages = Vec::new();
    let mut served = Vec::new();

    // 1. The API server killed while the pass for a new pod writes to ARM; down 3 s.
    pod(&c, &ns.name, "a", &node, "k0").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    cluster
        .restart_apiserver(Duration::from_secs(3))
        .await
        .unwrap();
    outages.push(("API server", t.elapsed()));
    let c = cluster.client().await.unwrap();
    pod(&c, &ns.name, "b", &node, "k1").await;
    wait_assigned(&c, &ns.name, &[record("a", "k0"), record("b", "k1")], 120).await;
    wait_exactly(&emu, &vmss, &[&ids[0].id, &ids[1].id], 60, &op).await;
    op.assert_alive("podid-operator after the API server's restart");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), &ns.name);
    served.push(token_for_pod(&pods, "b", &nmi_addr, &ids[1].client_id, 60, &nmi).await);
    nmi.assert_alive("podid-nmi after the API server's restart");

    // 2. etcd killed and down 3 s, a pod deleted right before.
    delete_pod(&c, &ns.name, "a").await;
    let t = Instant::now();
    cluster.restart_etcd(Duration::from_secs(3)).await.unwrap();
    outages.push(("etcd", t.elapsed()));
    pod(&c, &ns.name, "c", &node, "k2").await;
    wait_assigned(&c, &ns.name, &[record("b", "k1"), record("c", "k2")], 120).await;
    wait_exactly(&emu, &vmss, &[&ids[1].id, &ids[2].id], 60, &op).await;
    op.assert_alive("podid-operator after etcd's restart");
    served.push(token_for_pod(&pods, "c", &nmi_addr, &ids[2].client_id, 60, &nmi).await);
    nmi.assert_alive("podid-nmi after etcd's restart");

    // 3. Watches expire: history compacted past what the operator has seen, with changes made
    // in between, while the API server is down (its watch cache is rebuilt from etcd's
    // present). A watch from the old resourceVersion gets 410 Gone — shown here with a watch
    // of our own — and the operator must relist.
    let seen = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    delete_pod(&c, &ns.name, "b").await;
    pod(&c, &ns.name, "d", &node, "k3").await;
    let compacted = cluster.compact_etcd().await.unwrap();
    let t = Instant::now();
    cluster
        .restart_apiserver(Duration::from_secs(2))
        .await
        .unwrap();
    outages.push(("API server, history compacted", t.elapsed()));
    let c = cluster.client().await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), &ns.name);
    let gone = {
        use futures::StreamExt;
        let mut w = pods
            .watch(&WatchParams::default().timeout(5), &seen)
            .await
            .unwrap()
            .boxed();
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(WatchEvent::Error(e)))) => e.code,
            other => panic!("a watch from {seen} after compaction at {compacted}: {other:?}"),
        }
    };
    assert_eq!(
        gone, 410,
        "the resourceVersion the operator had seen has expired"
    );
    wait_assigned(&c, &ns.name, &[record("c", "k2"), record("d", "k3")], 120).await;
    wait_exactly(&emu, &vmss, &[&ids[2].id, &ids[3].id], 60, &op).await;
    op.assert_alive("podid-operator after its watches expired");
    served.push(token_for_pod(&pods, "d", &nmi_addr, &ids[3].client_id, 60, &nmi).await);
    nmi.assert_alive("podid-nmi after its watches expired");
    let records: Vec<String> = Api::<AzureAssignedIdentity>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .filter(|n| n.contains(&ns.name))
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    println!(
        "FIGURES kube-faults: 3 control-plane outages ({}), one watch expiry (410 Gone, history \
         compacted at revision {compacted}); operator and agent restarts: 0; changes made around \
         them converged: 6 of 6; a new pod's token served by the agent {} after each",
        outages
            .iter()
            .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        served
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    emu.clear_faults();
    drop(op);
    drop(nmi);
    // The tests after this one need the controllers' watches (ServiceAccounts of new
    // namespaces, pods run by kwok): start them afresh.
    cluster.restart_controllers().await.unwrap();
}

/// The operator SIGKILLed at 20 random moments during churn (pods and bindings changing, ARM
/// writes slow enough that kills land in the middle of them), a fresh process started after
/// each: at the end, every needed identity is on the scale set exactly once, every record is
/// `Assigned` exactly once, and nothing is left that no pod needs.
#[tokio::test]
async fn killed_at_twenty_random_moments_during_churn_it_converges_consistently() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fault-kill").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("faultkill", 2);
    cluster.add_nodes(&pool).await.expect("fake nodes ready");
    let emu = emulator(cluster).await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 2);
    let kubelet = emu.add_identity(&pool.resource_group, "kubelet");
    emu.preassign(&vmss, &kubelet.id);
    let ids = bound_identities(&emu, &c, &ns.name, "x", 5).await;
    emu.inject(Fault {
        route: "PATCH vmss".into(),
        latency_ms: Some(400),
        ..Default::default()
    });
    let seed: u64 = std::env::var("PODID_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill moments from seed {seed} (PODID_FAULT_SEED={seed} repeats them)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let mut kills = Vec::new();
    let mut next = 0usize;
    let mut wrote_before_kill = 0;
    for _ in 0..20 {
        // The same replica each time, as a container the kubelet restarts in its pod: it takes
        // its own Lease back at once.
        let writes_before = emu.call_count("PATCH vmss");
        let (mut op, probe) = operator_probed(
            cluster,
            &emu,
            dir.path(),
            &ns.name,
            "kill",
            &pool.resource_group,
            "15s",
        );
        // Killed only once it leads and has synced (ready): the kills land in its work, not
        // in its start-up.
        let readyz = format!("http://127.0.0.1:{probe}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&readyz)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            op.assert_alive("podid-operator starting");
            assert!(
                Instant::now() < deadline,
                "not ready within 60 s: {}",
                op.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Churn: two pods come, one goes, sometimes a pod moves to another identity.
        for _ in 0..2 {
            let name = format!("k{next}");
            next += 1;
            let sel = format!("x{}", rng.random_range(0..5));
            pod(&c, &ns.name, &name, &pool.node_name(next % 2), &sel).await;
            live.insert(name, sel);
        }
        if live.len() > 4 {
            let victim = live
                .keys()
                .nth(rng.random_range(0..live.len()))
                .cloned()
                .unwrap();
            delete_pod(&c, &ns.name, &victim).await;
            live.remove(&victim);
        }
        let at = Duration::from_millis(rng.random_range(0..2_000));
        tokio::time::sleep(at).await;
        op.assert_alive("podid-operator before its kill");
        op.kill();
        kills.push(at);
        if emu.call_count("PATCH vmss") > writes_before {
            wrote_before_kill += 1;
        }
    }
    assert!(
        wrote_before_kill > 0,
        "no process wrote to ARM before its kill: the churn gave them nothing to do"
    );
    // A last process, left running: it must finish what twenty dead ones started.
    let op = operator(
        cluster,
        &emu,
        dir.path(),
        &ns.name,
        "kill",
        &pool.resource_group,
        "15s",
    );
    let t = Instant::now();
    let want: Vec<String> = live
        .iter()
        .map(|(p, s)| format!("{p}-{}-{s}", ns.name))
        .collect();
    wait_assigned(&c, &ns.name, &want, 240).await;
    let needed: BTreeSet<&str> = live
        .values()
        .map(|s| ids[s[1..].parse::<usize>().unwrap()].id.as_str())
        .chain([kubelet.id.as_str()])
        .collect();
    wait_exactly(
        &emu,
        &vmss,
        &needed.iter().copied().collect::<Vec<_>>(),
        120,
        &op,
    )
    .await;
    // Each identity once in the scale set's list (ARM would refuse a duplicate; the emulator's
    // list is what was written).
    let on = on_machine(&emu, &vmss);
    let unique: BTreeSet<_> = on.iter().collect();
    assert_eq!(on.len(), unique.len(), "an identity written twice: {on:?}");
    let records: Vec<String> = Api::<AzureAssignedIdentity>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .filter(|n| n.contains(&ns.name))
        .collect();
    assert_eq!(records.len(), live.len(), "one record per pod: {records:?}");
    let patches = emu.call_count("PATCH vmss");
    println!(
        "FIGURES kill: 20 SIGKILLs {:.1}–{:.1} s after the process was ready (seed {seed}), \
         {wrote_before_kill} of them after the process had written to ARM, {} pods created and \
         {} deleted around them, {patches} scale-set writes; after the last start \
         converged in {:.1} s: records {} of {} Assigned, identities on the scale set exactly the \
         {} needed, duplicates 0",
        kills.iter().min().unwrap().as_secs_f64(),
        kills.iter().max().unwrap().as_secs_f64(),
        next,
        next - live.len(),
        t.elapsed().as_secs_f64(),
        records.len(),
        live.len(),
        needed.len(),
    );
    emu.clear_faults();
    drop(op);
}

/// Two replicas; the leader SIGKILLed (its Lease not released): the other holds the Lease within
/// the Lease's duration (plus one retry period) of the kill and converges what changed meanwhile.
#[tokio::test]
async fn the_leader_killed_the_other_replica_leads_within_the_lease() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("fault-leader").await;
    let c = ns.client.clone();
    let pool = NodePool::aks("faultlead", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let emu = emulator(cluster).await;
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let (i1, i2) = (
        emu.add_identity("rg", "lead-1"),
        emu.add_identity("rg", "lead-2"),
    );
    identity(&c, &ns.name, "lead-1", 0, &i1.id, &i1.client_id).await;
    identity(&c, &ns.name, "lead-2", 0, &i2.id, &i2.client_id).await;
    binding(&c, &ns.name, "lead-1", "lead-1", "lead-1").await;
    binding(&c, &ns.name, "lead-2", "lead-2", "lead-2").await;
    let lease_secs = 6u64;
    let lease = format!("{lease_secs}s");
    let dir = tempfile::tempdir().unwrap();
    let mut a = Some(operator(
        cluster,
        &emu,
        dir.path(),
        &ns.name,
        "replica-a",
        &pool.resource_group,
        &lease,
    ));
    let mut b = Some(operator(
        cluster,
        &emu,
        dir.path(),
        &ns.name,
        "replica-b",
        &pool.resource_group,
        &lease,
    ));
    let node = pool.node_name(0);
    pod(&c, &ns.name, "one", &node, "lead-1").await;
    let record = |p: &str, s: &str| format!("{p}-{}-{s}", ns.name);
    wait_assigned(&c, &ns.name, &[record("one", "lead-1")], 90).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), &ns.name);
    let holder = || async {
        leases
            .get("podid-operator")
            .await
            .ok()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let first = holder().await.expect("a holder");
    let (leader, follower) = if first == "replica-a" {
        (a.take().unwrap(), b.take().unwrap())
    } else {
        (b.take().unwrap(), a.take().unwrap())
    };
    let killed = Instant::now();
    leader.kill();
    pod(&c, &ns.name, "two", &node, "lead-2").await;
    let took = loop {
        if let Some(h) = holder().await
            && h != first
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(lease_secs * 3),
            "no new leader {} s after the kill; the follower's log:\n{}",
            lease_secs * 3,
            follower.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The Lease expires `lease` after the dead leader's last renewal; the follower retries
    // every lease/3 (at most): it leads within lease + lease/3 of the kill.
    assert!(
        took <= Duration::from_secs(lease_secs) + Duration::from_secs(lease_secs) / 3,
        "a new leader only {:.1} s after the kill (Lease {lease_secs} s)",
        took.as_secs_f64()
    );
    wait_assigned(
        &c,
        &ns.name,
        &[record("one", "lead-1"), record("two", "lead-2")],
        90,
    )
    .await;
    wait_exactly(&emu, &vmss, &[&i1.id, &i2.id], 30, &follower).await;
    println!(
        "FIGURES leader: Lease {lease_secs} s, new leader {:.1} s after the leader's SIGKILL, \
         the change made meanwhile converged {:.1} s after the kill",
        took.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    drop(follower);
}
