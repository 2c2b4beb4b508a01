//! Benchmark (not a test): a token request served by token exchange against one served through
//! the scale set's identity, by the same agent, in one run. `cargo bench -p podid-nmi --bench
//! federated` (needs the control plane binaries, like the tests). Results and their reading in
//! docs/federated.md.
//!
//! The real API server and the Azure emulator on loopback; podid-nmi in-process (managed mode,
//! `--federated`) for one fake node; pod `assigned` bound to an identity on the node's scale set,
//! pod `federated` bound (binding annotated `federated`) to one served by exchange, its workload
//! bridged. Rounds alternate the two paths (A B A B) so drift falls on both alike.
//! - warm: the same resource again and again (the token is in the agent's cache on both paths:
//!   what a pod sees almost always);
//! - cold: a resource not asked before each time (assigned: one IMDS call; federated: a
//!   TokenRequest at the API server, while its token is fresh reused, and an Entra exchange).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::SERVING_ANNOTATION;
use podid_crds::policy::Mode;
use podid_nmi::server::ServerConfig;
use podid_testkit::{Cluster, NodePool};
use serde_json::json;

#[path = "../tests/live/mod.rs"]
#[allow(unused_imports)]
mod live;

const WARM_ROUNDS: usize = 20;
const WARM_PER_ROUND: usize = 250;
const COLD: usize = 200;

fn client(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .no_proxy()
        .build()
        .unwrap()
}

async fn ask(http: &reqwest::Client, agent: SocketAddr, resource: &str) -> Duration {
    let started = Instant::now();
    let resp = http
        .get(format!("http://{agent}/metadata/identity/oauth2/token"))
        .query(&[("api-version", "2018-02-01"), ("resource", resource)])
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    let took = started.elapsed();
    assert!(
        status.is_success(),
        "{status} {}",
        String::from_utf8_lossy(&body)
    );
    took
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

fn row(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<22} {:>6} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
        v.len(),
        us(quantile(&v, 0.5)),
        us(quantile(&v, 0.99)),
        us(quantile(&v, 0.999)),
        us(*v.last().unwrap()),
    );
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("fedbench").await;
    let client_k = ns.client.clone();
    let pool = NodePool::aks("fedbench", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let (a, f) = (
        emu.add_identity("rg", "bench-assigned"),
        emu.add_identity("rg", "bench-federated"),
    );
    emu.preassign(&vmss, &a.id);
    for (name, ident) in [("assigned", &a), ("federated", &f)] {
        live::bound_identity(
            &client_k,
            &ns.name,
            name,
            json!({"type": 0, "resourceID": ident.id, "clientID": ident.client_id}),
            &format!("fedbench-{name}"),
        )
        .await;
    }
    Api::<podid_crds::AzureIdentityBinding>::namespaced(client_k.clone(), &ns.name)
        .patch(
            "bind-federated",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {SERVING_ANNOTATION: "federated"}}}),
            ),
        )
        .await
        .unwrap();
    let ips = live::run_pods(
        &Api::<Pod>::namespaced(client_k.clone(), &ns.name),
        &node,
        &[
            ("assigned", json!({"aadpodidbinding": "fedbench-assigned"})),
            (
                "federated",
                json!({"aadpodidbinding": "fedbench-federated"}),
            ),
        ],
    )
    .await;
    live::bridged(
        &client_k,
        cluster,
        &emu,
        &f,
        (&ns.name, "Pod", "federated"),
        "default",
    )
    .await;
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        imds_endpoint: url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set)))
            .unwrap(),
        ..Default::default()
    };
    let (agent, _guard) = live::start_agent_flags(
        client_k.clone(),
        &node,
        config,
        &emu.arm_endpoint(),
        &["--federated"],
    )
    .await;
    let (ca, cf) = (client(ips["assigned"]), client(ips["federated"]));
    let resource = "https://vault.azure.net";
    ask(&ca, agent, resource).await;
    ask(&cf, agent, resource).await;

    let (mut warm_a, mut warm_f) = (Vec::new(), Vec::new());
    for _ in 0..WARM_ROUNDS {
        for _ in 0..WARM_PER_ROUND {
            warm_a.push(ask(&ca, agent, resource).await);
        }
        for _ in 0..WARM_PER_ROUND {
            warm_f.push(ask(&cf, agent, resource).await);
        }
    }
    let (mut cold_a, mut cold_f) = (Vec::new(), Vec::new());
    for i in 0..COLD {
        cold_a.push(ask(&ca, agent, &format!("https://cold-a-{i}.example.com")).await);
        cold_f.push(ask(&cf, agent, &format!("https://cold-f-{i}.example.com")).await);
    }
    assert_eq!(
        emu.call_count("POST token") as usize,
        COLD + 1,
        "one exchange per cold federated request"
    );

    println!(
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "path (µs)", "n", "p50", "p99", "p99.9", "max"
    );
    row("warm assigned", warm_a);
    row("warm federated", warm_f);
    row("cold assigned (IMDS)", cold_a);
    row("cold federated", cold_f);
}
