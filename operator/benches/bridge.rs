//! Benchmark 4 of docs/performance.md, "Bridge" (not a test; CI builds it, never runs it): how
//! long podid's bridge takes from `PODID_BENCH_BINDINGS` (200) new bindings to every federated
//! credential proven, and the ARM calls it makes, against Azure's per-identity pacing. No peer
//! does this; the yardstick is the lower bound that pacing sets. `bench/bridge.sh` runs it
//! (`cargo bench -p podid-operator --bench bridge`).
//!
//! The bridge runs in this process, as the end-to-end tests run it (tests/bridge.rs), against
//! the real API server (its ServiceAccount tokens, its published keys) and the Azure emulator
//! (which checks each token exchange against those keys). One namespace holds, per binding, a
//! ServiceAccount, a Deployment (no replicas) on it whose pods the binding selects, and the
//! binding; the bindings name `PODID_BENCH_IDENTITIES` (200: each its own) user-assigned
//! identities in turn. Azure holds an identity's credential writes one at a time (a second
//! concurrent write is refused); each write takes `PODID_BENCH_FIC_MS` (1,500 ms) and every
//! other ARM call `PODID_BENCH_ARM_MS` (100 ms). So with k credentials per identity the work
//! cannot finish before k × the write time: that is the lower bound reported.
//!
//! Passes run back to back from the moment the caches are synced until every credential is
//! proven (a real token exchange) or `PODID_BENCH_TIMEOUT_SECS` (300). `PODID_BENCH_ROUNDS` (1)
//! rounds, each on a fresh namespace and emulator. Prints the table, writes
//! `bench/results/bridge.json` and `.svg` (`PODID_BENCH_OUT`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use podid_azure_emulator::{Emulator, Fault, Settings};
use podid_crds::{AzureIdentity, AzureIdentityBinding};
use podid_testkit::Cluster;
use podid_testkit::bench::{ChartRow, Panel, Series, bar_chart, env_usize, median};
use podid_testkit::builders::obj;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

/// One round's figures.
struct Round {
    seconds: f64,
    proven: usize,
    passes: usize,
    errors: usize,
    arm: std::collections::BTreeMap<String, u64>,
}

impl Round {
    fn arm_calls(&self) -> u64 {
        self.arm
            .iter()
            .filter(|(route, _)| !route.ends_with(" token"))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn round(
    cluster: &'static Cluster,
    bindings: usize,
    identities: usize,
    fic_ms: u64,
    arm_ms: u64,
    timeout: Duration,
) -> anyhow::Result<Round> {
    let client = cluster.client().await?;
    let emu = Emulator::start(Settings {
        fic_write_latency: Duration::from_millis(fic_ms),
        ..Default::default()
    })
    .await?;
    emu.add_app(common::APP.0, Some(common::APP.1), None);
    emu.trust_issuer_ca(cluster.ca_pem());
    for route in ["GET *", "DELETE *"] {
        emu.inject(Fault {
            route: route.into(),
            latency_ms: Some(arm_ms),
            ..Default::default()
        });
    }
    let ids: Vec<_> = (0..identities)
        .map(|i| emu.add_identity("rg-identities", &format!("id-{i:03}")))
        .collect();
    let ns = cluster.namespace("bridge-bench").await;
    let pp = PostParams::default();
    futures::stream::iter((0..identities).map(|i| {
        let api: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
        let (id, pp) = (&ids[i], &pp);
        async move {
            api.create(
                pp,
                &obj(
                    json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
                    "metadata": {"name": format!("id-{i:03}")},
                    "spec": {"type": 0, "clientID": id.client_id, "resourceID": id.id}}),
                ),
            )
            .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    futures::stream::iter((0..bindings).map(|b| {
        let client = client.clone();
        let (ns, pp) = (&ns.name, &pp);
        async move {
            let sel = format!("app-{b:03}");
            Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .create(pp, &obj(json!({"metadata": {"name": sel}})))
                .await?;
            Api::<Deployment>::namespaced(client.clone(), ns)
                .create(pp, &obj(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": sel},
                    "spec": {"replicas": 0, "selector": {"matchLabels": {"app": sel}},
                             "template": {"metadata": {"labels": {"app": sel, "aadpodidbinding": sel}},
                                          "spec": {"serviceAccountName": sel,
                                                   "containers": [{"name": "app", "image": "app:1"}]}}}})))
                .await?;
            Api::<AzureIdentityBinding>::namespaced(client, ns)
                .create(pp, &obj(json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                    "metadata": {"name": format!("b-{b:03}")},
                    "spec": {"azureIdentity": format!("id-{:03}", b % identities), "selector": sel}})))
                .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;

    let shutdown = CancellationToken::new();
    let bridge = common::bridge(cluster, &client, &emu, &shutdown);
    tokio::time::timeout(Duration::from_secs(60), bridge.stores.ready()).await?;
    emu.reset_calls();
    let t0 = Instant::now();
    let (mut proven, mut passes, mut errors) = (0, 0, 0);
    while proven < bindings && t0.elapsed() < timeout {
        let report = bridge.pass().await;
        passes += 1;
        proven += report.proven;
        errors += report.errors;
    }
    let seconds = t0.elapsed().as_secs_f64();
    shutdown.cancel();
    Ok(Round {
        seconds,
        proven,
        passes,
        errors,
        arm: emu.calls(),
    })
}

fn main() -> anyhow::Result<()> {
    let bindings = env_usize("PODID_BENCH_BINDINGS", 200).max(1);
    let identities = env_usize("PODID_BENCH_IDENTITIES", 200).clamp(1, bindings);
    let fic_ms = env_usize("PODID_BENCH_FIC_MS", 1_500) as u64;
    let arm_ms = env_usize("PODID_BENCH_ARM_MS", 100) as u64;
    let rounds = env_usize("PODID_BENCH_ROUNDS", 1).max(1);
    let timeout = Duration::from_secs(env_usize("PODID_BENCH_TIMEOUT_SECS", 300) as u64);
    let out = PathBuf::from(std::env::var("PODID_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results/bridge.json").into()
    }));
    let started = Instant::now();
    let cluster = Cluster::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for r in 1..=rounds {
        let res = rt.block_on(round(
            cluster, bindings, identities, fic_ms, arm_ms, timeout,
        ))?;
        eprintln!(
            "round {r}: {} of {bindings} proven in {:.1} s, {} passes, {} errors, ARM calls {:?}",
            res.proven, res.seconds, res.passes, res.errors, res.arm
        );
        results.push(res);
    }
    drop(rt);
    podid_testkit::stop();

    let per_identity = bindings.div_ceil(identities);
    let bound = per_identity as f64 * fic_ms as f64 / 1000.0;
    let secs = median(results.iter().map(|r| r.seconds).collect());
    let calls = median(results.iter().map(|r| r.arm_calls() as f64).collect());
    let all_proven = results.iter().all(|r| r.proven >= bindings);
    println!();
    println!(
        "bridge: {bindings} new bindings over {identities} identities ({per_identity} credential(s) per identity), a credential write {fic_ms} ms (median of {rounds} round(s))"
    );
    println!(
        "{:<44} {:>10}",
        "time to every credential proven, s",
        if all_proven {
            format!("{secs:.1}")
        } else {
            format!(">{secs:.0}")
        }
    );
    println!(
        "{:<44} {:>10.1}",
        "lower bound (per-identity pacing), s", bound
    );
    println!("{:<44} {:>10.2}", "time ÷ lower bound", secs / bound);
    println!("{:<44} {:>10.0}", "ARM calls (token requests apart)", calls);
    println!(
        "{:<44} {:>10.2}",
        "ARM calls per credential",
        calls / bindings as f64
    );
    let report = json!({
        "benchmark": "bridge",
        "rounds": rounds,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "scene": {"bindings": bindings, "identities": identities, "credentialsPerIdentity": per_identity,
                  "credentialWriteMs": fic_ms, "otherArmCallMs": arm_ms},
        "medianSeconds": secs,
        "allProven": all_proven,
        "lowerBoundSeconds": bound,
        "medianArmCalls": calls,
        "armCallsPerCredential": calls / bindings as f64,
        "samples": results.iter().map(|r| json!({
            "seconds": r.seconds, "proven": r.proven, "passes": r.passes, "errors": r.errors,
            "armCalls": r.arm,
        })).collect::<Vec<Value>>(),
        "benchmarkSeconds": started.elapsed().as_secs_f64(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    let svg = out.with_extension("svg");
    std::fs::write(
        &svg,
        bar_chart(
            &[
                Series {
                    name: "podid bridge".into(),
                    color: "#2b6cb0",
                },
                Series {
                    name: "per-identity pacing (lower bound)".into(),
                    color: "#a0aec0",
                },
            ],
            &[Panel {
                title: "seconds to every credential proven".into(),
                decimals: 1,
            }],
            &[ChartRow {
                name: format!("{bindings} bindings, {identities} identities"),
                values: vec![vec![Some(secs)], vec![Some(bound)]],
            }],
        ),
    )?;
    println!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}
