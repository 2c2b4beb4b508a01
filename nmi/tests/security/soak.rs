//! The node agent under steady load for a while, with IMDS failing one call in twenty: memory
//! bounded, no file-descriptor growth, and no request left without an answer (each one's
//! answer comes within the client's deadline, which is longer than every timeout of the agent).
//!
//! CI runs it for `PODID_SOAK_SECS` (default 40 s); the documented soak is ten minutes:
//! `PODID_SOAK_SECS=600 cargo test -p podid-nmi --test security soak -- --nocapture`
//! (docs/reliability.md). It prints its figures on a `FIGURES` line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use podid_azure_emulator::{Emulator, Fault, Settings};
use podid_testkit::{Cluster, NodePool};
use serde_json::json;

use crate::live;
use crate::memory::{Agent, proc_status_kib};

/// Pods, each bound to its own identity.
const PODS: usize = 8;
/// Requests started per second, whatever the answers take.
const RATE: u64 = 100;
/// The most requests in flight (the rest wait for a slot, and count as late if they do).
const IN_FLIGHT: usize = 64;
/// A client gives up on an answer after this: longer than the agent's upstream timeout (60 s)
/// plus its header read timeout (10 s), so a request running into it outlived the agent's own.
const CLIENT_DEADLINE: Duration = Duration::from_secs(75);
/// How far the agent's resident memory may grow over the run, from its level once warmed up.
const RSS_GROWTH_BOUND_KIB: u64 = 16 << 10;
/// How many more descriptors the agent may hold at the end than once warmed up.
const FD_SLACK: usize = 16;

#[tokio::test]
async fn soak_steady_load_with_upstream_errors_keeps_memory_descriptors_and_deadlines() {
    let secs: u64 = std::env::var("PODID_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("nmi-soak").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("nmisoak", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let mut labels = Vec::new();
    let mut client_ids = BTreeMap::new();
    for i in 0..PODS {
        let id = emu.add_identity("rg", &format!("soak-{i}"));
        emu.preassign(&vmss, &id.id);
        live::bound_identity(
            &client,
            &ns.name,
            &format!("soak-{i}"),
            json!({"type": 0, "clientID": id.client_id, "resourceID": id.id}),
            &format!("sel-{i}"),
        )
        .await;
        labels.push((
            format!("soak-{i}"),
            json!({"aadpodidbinding": format!("sel-{i}")}),
        ));
        client_ids.insert(format!("soak-{i}"), id.client_id.clone());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let ips = live::run_pods(
        &pods,
        &node,
        &labels
            .iter()
            .map(|(n, l)| (n.as_str(), l.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    let imds = emu.imds_endpoint(&format!("{}_0", pool.scale_set));
    // The token cache off, so that every request goes to IMDS and meets its errors.
    let agent = Agent::start_with(cluster, &node, &imds, &["--token-refresh-margin-sec=0"]).await;
    // One IMDS token call in twenty fails: 500s, throttling, and answers cut off mid-body.
    for (status, drop, rate) in [
        (Some(500), false, 0.02),
        (Some(429), false, 0.02 / 0.98),
        (None, true, 0.01 / 0.96),
    ] {
        emu.inject(Fault {
            route: "GET imds.token".into(),
            status,
            retry_after: status.filter(|s| *s == 429).map(|_| 1),
            drop,
            rate: Some(rate),
            ..Default::default()
        });
    }

    let clients: Vec<(reqwest::Client, String)> = ips
        .iter()
        .map(|(pod, ip)| {
            (
                reqwest::Client::builder()
                    .local_address(*ip)
                    .no_proxy()
                    .timeout(CLIENT_DEADLINE)
                    .build()
                    .unwrap(),
                client_ids[pod].clone(),
            )
        })
        .collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let url = format!(
        "http://{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F",
        agent.addr
    );

    // Warm-up, then the baseline the bounds are measured from.
    for (http, cid) in &clients {
        let _ = http
            .get(format!("{url}&client_id={cid}"))
            .header("Metadata", "true")
            .send()
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start = agent.rss_kib();
    let fds_start = agent.open_fds();
    let started = Instant::now();
    let mut samples: Vec<(u64, u64, usize)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    let mut late = 0u64;
    let mut next_sample = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Every slot busy: the agent is not keeping up with the rate.
            late += 1;
            continue;
        };
        let (http, cid) = clients[(sent as usize) % clients.len()].clone();
        let (statuses, slowest_ms, url) = (statuses.clone(), slowest_ms.clone(), url.clone());
        sent += 1;
        tasks.spawn(async move {
            let t = Instant::now();
            let outcome = match http
                .get(format!("{url}&client_id={cid}"))
                .header("Metadata", "true")
                .send()
                .await
            {
                Ok(r) => {
                    let s = r.status().as_u16();
                    // The body too: an answer is only complete once read.
                    match r.bytes().await {
                        Ok(_) => s.to_string(),
                        Err(e) if e.is_timeout() => "client deadline".into(),
                        Err(_) => format!("{s} cut off"),
                    }
                }
                Err(e) if e.is_timeout() => "client deadline".into(),
                Err(_) => "connection error".into(),
            };
            slowest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
            *statuses.lock().unwrap().entry(outcome).or_default() += 1;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        if Instant::now() >= next_sample {
            samples.push((
                started.elapsed().as_secs(),
                agent.rss_kib(),
                agent.open_fds(),
            ));
            next_sample += Duration::from_secs(5);
        }
    }
    // Every request answered within the client's deadline (bounded: the deadline is the bound).
    while tasks.join_next().await.is_some() {}
    // Idle connections are closed after the read timeout (10 s); then count descriptors.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let fds_end = agent.open_fds();
    let rss_end = agent.rss_kib();
    let peak = proc_status_kib(agent.pid, "VmHWM:");
    let statuses = statuses.lock().unwrap().clone();
    let fired = emu.faults_fired();
    let answered: u64 = statuses.values().sum();
    println!(
        "FIGURES soak: {secs} s at {RATE} req/s from {PODS} pods (cache off): {sent} requests \
         sent, {answered} answered ({statuses:?}), {late} ticks skipped with all {IN_FLIGHT} slots \
         busy, slowest answer {} ms; IMDS faults injected {} ({fired:?}); agent RSS {} KiB warm, \
         {} KiB at the end, peak {peak} KiB (bound: warm + {} KiB); descriptors {fds_start} warm, \
         {fds_end} at the end; samples (s, RSS KiB, fds): {samples:?}",
        slowest_ms.load(Ordering::Relaxed),
        fired.values().sum::<u64>(),
        rss_start,
        rss_end,
        RSS_GROWTH_BOUND_KIB,
    );
    assert_eq!(answered, sent, "every request ended");
    assert_eq!(
        statuses.get("client deadline"),
        None,
        "a request outlived the agent's timeouts"
    );
    assert!(
        statuses.get("200").copied().unwrap_or(0) >= sent * 9 / 10,
        "most requests get their token: {statuses:?}"
    );
    assert!(
        fired.values().sum::<u64>() > 0,
        "the upstream errors were met"
    );
    // The agent relays IMDS's errors as errors (never a token of another identity): every
    // answer is a token or an error status, nothing else.
    for k in statuses.keys() {
        assert!(
            k == "200" || k.starts_with('4') || k.starts_with('5'),
            "unexpected outcome {k}: {statuses:?}"
        );
    }
    assert!(
        peak.saturating_sub(rss_start) <= RSS_GROWTH_BOUND_KIB,
        "peak RSS {peak} KiB grew more than {RSS_GROWTH_BOUND_KIB} KiB over the warm {rss_start} KiB"
    );
    assert!(
        fds_end <= fds_start + FD_SLACK,
        "descriptors grew from {fds_start} to {fds_end}"
    );
}
