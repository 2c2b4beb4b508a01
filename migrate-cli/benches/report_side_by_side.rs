//! Benchmark (not a test; CI builds it, never runs it): `podid report` side by side with
//! `azwi podidentity detect` on one live cluster, and `podid report --from-file` on a large
//! snapshot. Run it with `bench/report.sh` (see docs/performance.md).
//!
//! 1. A local control plane (etcd + kube-apiserver, no nodes running pods) holding
//!    `PODID_BENCH_LIVE_PODS` pods (5,000) in `PODID_BENCH_LIVE_NAMESPACES` namespaces (50):
//!    Deployments of 5 replicas with their ReplicaSets and ServiceAccounts, one AzureIdentity
//!    and AzureIdentityBinding per namespace, pods labelled `aadpodidbinding`. `podid report`
//!    reads the whole cluster in one run; `azwi podidentity detect` reads one namespace per run,
//!    so one azwi sample is the SUM of its runs over every namespace (wall time summed, peak
//!    RSS the largest of them). azwi waits on its client-side rate limit (5 requests/s), so its
//!    per-namespace runs are started side by side and each timed alone; their sum is what a user
//!    running it namespace after namespace waits. Alternating podid, azwi, podid, azwi … for `PODID_BENCH_ROUNDS`
//!    rounds (3).
//! 2. A snapshot of `PODID_BENCH_SNAPSHOT_PODS` pods (50,000) in 500 namespaces, written as
//!    multi-document YAML and as one `kubectl get -o json`-style List: `podid report
//!    --from-file` on each, alternating, wall time and peak RSS.
//!
//! Prints a table, writes `PODID_BENCH_OUT` (JSON, default `bench/results/report.json`) and an
//! SVG chart next to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use podid_testkit::bench::{ChartRow, Panel, Series, bar_chart, env_usize, median};
use serde_json::{Value, json};

#[path = "../tests/support/mod.rs"]
mod support;

/// One run of a process: wall time and peak resident set size.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    rss_kib: u64,
}

/// Runs `cmd` (stdout discarded) under `/usr/bin/time`, whose report is the peak RSS of the
/// measured process alone (not of this, larger, process it was started from); wall time from
/// here.
fn measure(cmd: &mut Command, ok_codes: &[i32], rss_file: &Path) -> anyhow::Result<Sample> {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let t0 = Instant::now();
    let out = timed
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {cmd:?} under /usr/bin/time"))?;
    let wall = t0.elapsed();
    let code = out.status.code().unwrap_or(-1);
    if !ok_codes.contains(&code) {
        bail!(
            "{cmd:?} exited {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rss = std::fs::read_to_string(rss_file)?;
    let rss_kib = rss
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .with_context(|| format!("/usr/bin/time wrote {rss:?}"))?;
    Ok(Sample { wall, rss_kib })
}

/// Median wall seconds and median peak RSS in MiB of some samples.
fn summary(s: &[Sample]) -> (f64, f64) {
    (
        median(s.iter().map(|x| x.wall.as_secs_f64()).collect()),
        median(s.iter().map(|x| x.rss_kib as f64 / 1024.0).collect()),
    )
}

fn samples_json(s: &[Sample]) -> Value {
    json!(
        s.iter()
            .map(|x| json!({"wallSeconds": x.wall.as_secs_f64(), "peakRssMiB": x.rss_kib as f64 / 1024.0}))
            .collect::<Vec<_>>()
    )
}

fn azwi_binary() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("PODID_WI_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("PODID_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/podid")))
                .context("HOME unset")?;
            let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        n.to_string_lossy().starts_with("azure-workload-identity-")
                    })
                })
                .collect();
            found.sort();
            found
                .pop()
                .context("azwi not built: run tests/peers/build-workload-identity.sh")?
                .join("bin")
        }
    };
    let p = dir.join("azwi");
    if !p.is_file() {
        bail!(
            "{} not found: run tests/peers/build-workload-identity.sh",
            p.display()
        );
    }
    Ok(p)
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: match kind {
            "AzureIdentity" => "azureidentities".into(),
            k => format!("{}s", k.to_lowercase()),
        },
    }
}

/// Creates the objects (namespaces first, the webhook configuration last), 32 at a time.
async fn populate(client: &kube::Client, objects: Vec<Value>) -> anyhow::Result<()> {
    let mut namespaces: Vec<String> = objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_string))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        ns_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
            )
            .await
            .with_context(|| format!("namespace {ns}"))?;
    }
    // Pods after their ServiceAccounts (admission checks them), the webhook configuration last.
    let (webhooks, rest): (Vec<Value>, Vec<Value>) = objects
        .into_iter()
        .partition(|o| o["kind"] == "MutatingWebhookConfiguration");
    let (pods, rest): (Vec<Value>, Vec<Value>) = rest.into_iter().partition(|o| o["kind"] == "Pod");
    for batch in [rest, pods, webhooks] {
        futures::stream::iter(batch.into_iter().map(|mut o| {
            let client = client.clone();
            async move {
                let ar = resource(
                    o["apiVersion"].as_str().unwrap_or_default(),
                    o["kind"].as_str().unwrap_or_default(),
                );
                // Status is the kubelet's to write; uid the API server's.
                if let Some(m) = o.as_object_mut() {
                    m.remove("status");
                }
                if let Some(m) = o["metadata"].as_object_mut() {
                    m.remove("uid");
                }
                let obj: DynamicObject = serde_json::from_value(o)?;
                let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
                    Some(ns) => Api::namespaced_with(client, ns, &ar),
                    None => Api::all_with(client, &ar),
                };
                api.create(&PostParams::default(), &obj)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("create {} {:?}: {e:?}", ar.kind, obj.metadata.name)
                    })?;
                anyhow::Ok(())
            }
        }))
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    }
    Ok(())
}

struct Row {
    name: String,
    podid: (f64, f64),
    other: Option<(String, f64, f64)>,
}

fn main() -> anyhow::Result<()> {
    let rounds = env_usize("PODID_BENCH_ROUNDS", 3).max(1);
    let live_pods = env_usize("PODID_BENCH_LIVE_PODS", 5_000);
    let live_ns = env_usize("PODID_BENCH_LIVE_NAMESPACES", 50);
    let snap_pods = env_usize("PODID_BENCH_SNAPSHOT_PODS", 50_000);
    let snap_ns = env_usize("PODID_BENCH_SNAPSHOT_NAMESPACES", 500);
    let out = PathBuf::from(std::env::var("PODID_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results/report.json").into()
    }));
    let podid = PathBuf::from(env!("CARGO_BIN_EXE_podid"));
    let azwi = azwi_binary()?;
    let work = tempfile::tempdir()?;
    let started = Instant::now();
    let rss_file = work.path().join("rss");

    // 2. The snapshot: multi-document YAML and a JSON List of the same objects.
    let objects = support::synth::scale_objects(snap_ns, snap_pods);
    let yaml_file = work.path().join("snapshot.yaml");
    let json_file = work.path().join("snapshot.json");
    {
        let mut text = String::new();
        for o in &objects {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(o)?);
        }
        std::fs::write(&yaml_file, text)?;
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": objects});
        std::fs::write(&json_file, serde_json::to_vec_pretty(&list)?)?;
    }
    drop(objects);
    let yaml_mib = std::fs::metadata(&yaml_file)?.len() as f64 / 1048576.0;
    let json_mib = std::fs::metadata(&json_file)?.len() as f64 / 1048576.0;
    eprintln!(
        "snapshot: {snap_pods} pods in {snap_ns} namespaces: YAML {yaml_mib:.1} MiB, JSON List {json_mib:.1} MiB"
    );
    let (mut snap_yaml, mut snap_json) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (file, into) in [(&yaml_file, &mut snap_yaml), (&json_file, &mut snap_json)] {
            let s = measure(
                Command::new(&podid)
                    .arg("report")
                    .arg("--from-file")
                    .arg(file),
                &[0, 3],
                &rss_file,
            )?;
            eprintln!(
                "  round {round}: {} {:.2} s, {:.0} MiB",
                file.display(),
                s.wall.as_secs_f64(),
                s.rss_kib as f64 / 1024.0
            );
            into.push(s);
        }
    }

    // 1. The live cluster.
    eprintln!("starting the control plane and creating {live_pods} pods in {live_ns} namespaces …");
    let cluster = podid_testkit::Cluster::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let t0 = Instant::now();
    rt.block_on(async {
        let client = cluster.client().await?;
        let objects: Vec<Value> = support::synth::scale_objects(live_ns, live_pods);
        populate(&client, objects).await
    })?;
    eprintln!("  populated in {:.0} s", t0.elapsed().as_secs_f64());
    let namespaces: Vec<String> = (0..live_ns).map(|i| format!("team-{i:03}")).collect();
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let (mut live_podid, mut live_azwi) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let s = measure(
            Command::new(&podid)
                .args(["report", "--quiet"])
                .env("KUBECONFIG", &kubeconfig),
            &[0, 3],
            &rss_file,
        )?;
        eprintln!(
            "  round {round}: podid report {:.2} s, {:.0} MiB",
            s.wall.as_secs_f64(),
            s.rss_kib as f64 / 1024.0
        );
        live_podid.push(s);
        // azwi is rate-limited on the client side (client-go's 5 requests/s: about half a
        // minute per namespace of 100 pods here, half an hour for 50 in a row), so the
        // namespaces run side by side, each run timed on its own; the sample is their sum,
        // what a user running it namespace after namespace waits.
        let runs: Vec<anyhow::Result<Sample>> = std::thread::scope(|scope| {
            let handles: Vec<_> = namespaces
                .iter()
                .map(|ns| {
                    let (azwi, kubeconfig, work) = (&azwi, &kubeconfig, work.path());
                    scope.spawn(move || {
                        let dir = work.join(format!("azwi-{round}-{ns}"));
                        std::fs::create_dir_all(&dir)?;
                        measure(
                            Command::new(azwi)
                                .args(["podidentity", "detect", "--namespace", ns, "--output-dir"])
                                .arg(&dir)
                                .env("KUBECONFIG", kubeconfig),
                            &[0],
                            &work.join(format!("rss-{round}-{ns}")),
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("azwi run panicked")))
                })
                .collect()
        });
        let mut sum = Sample {
            wall: Duration::ZERO,
            rss_kib: 0,
        };
        for s in runs {
            let s = s?;
            sum.wall += s.wall;
            sum.rss_kib = sum.rss_kib.max(s.rss_kib);
        }
        // azwi must have found the pod-identity workloads (or it measured nothing).
        let written =
            std::fs::read_dir(work.path().join(format!("azwi-{round}-{}", namespaces[0])))?.count();
        if written == 0 {
            bail!(
                "azwi podidentity detect wrote nothing for {}",
                namespaces[0]
            );
        }
        eprintln!(
            "  round {round}: azwi podidentity detect × {live_ns} namespaces {:.2} s, {:.0} MiB",
            sum.wall.as_secs_f64(),
            sum.rss_kib as f64 / 1024.0
        );
        live_azwi.push(sum);
    }
    podid_testkit::stop();

    let rows = [
        Row {
            name: format!("live: {live_pods} pods, {live_ns} ns"),
            podid: summary(&live_podid),
            other: Some((
                "azwi (sum of namespaces)".into(),
                summary(&live_azwi).0,
                summary(&live_azwi).1,
            )),
        },
        Row {
            name: format!("--from-file YAML {yaml_mib:.1} MiB"),
            podid: summary(&snap_yaml),
            other: None,
        },
        Row {
            name: format!("--from-file JSON List {json_mib:.1} MiB"),
            podid: summary(&snap_json),
            other: None,
        },
    ];
    println!();
    println!(
        "{:<34} {:>10} {:>11} {:>10} {:>11} {:>8} {:>8}",
        "report (median of rounds)",
        "podid s",
        "podid MiB",
        "azwi s",
        "azwi MiB",
        "speed×",
        "RSS ÷"
    );
    for r in &rows {
        match &r.other {
            Some((_, s, m)) => println!(
                "{:<34} {:>10.3} {:>11.1} {:>10.3} {:>11.1} {:>8.1} {:>8.2}",
                r.name,
                r.podid.0,
                r.podid.1,
                s,
                m,
                s / r.podid.0,
                r.podid.1 / m
            ),
            None => println!(
                "{:<34} {:>10.3} {:>11.1} {:>10} {:>11} {:>8} {:>8}",
                r.name, r.podid.0, r.podid.1, "-", "-", "-", "-"
            ),
        }
    }
    let (lp, la) = (summary(&live_podid), summary(&live_azwi));
    let goals = json!({
        "liveAtLeast10xFasterThanAzwi": la.0 / lp.0 >= 10.0,
        "yamlUnder2s": summary(&snap_yaml).0 < 2.0,
        "yamlRssUnder4xFile": summary(&snap_yaml).1 < 4.0 * yaml_mib,
        "jsonUnder2s": summary(&snap_json).0 < 2.0,
        "jsonRssUnder4xFile": summary(&snap_json).1 < 4.0 * json_mib,
    });
    println!("goals: {goals}");
    let report = json!({
        "benchmark": "report",
        "rounds": rounds,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "live": {
            "pods": live_pods, "namespaces": live_ns,
            "podid": {"command": "podid report --quiet", "medianWallSeconds": lp.0, "medianPeakRssMiB": lp.1, "samples": samples_json(&live_podid)},
            "azwi": {"command": "azwi podidentity detect --namespace <ns> --output-dir <dir>, once per namespace; a sample is the sum of the runs' wall times and the largest peak RSS",
                     "medianWallSeconds": la.0, "medianPeakRssMiB": la.1, "samples": samples_json(&live_azwi)},
            "speedup": la.0 / lp.0, "rssRatio": lp.1 / la.1,
        },
        "snapshot": {
            "pods": snap_pods, "namespaces": snap_ns,
            "yaml": {"fileMiB": yaml_mib, "medianWallSeconds": summary(&snap_yaml).0, "medianPeakRssMiB": summary(&snap_yaml).1, "samples": samples_json(&snap_yaml)},
            "jsonList": {"fileMiB": json_mib, "medianWallSeconds": summary(&snap_json).0, "medianPeakRssMiB": summary(&snap_json).1, "samples": samples_json(&snap_json)},
        },
        "goals": goals,
        "benchmarkSeconds": started.elapsed().as_secs_f64(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    let svg = out.with_extension("svg");
    std::fs::write(&svg, chart(&rows))?;
    println!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

/// A bar chart of the medians: wall time (left) and peak RSS (right) per row, podid and azwi.
fn chart(rows: &[Row]) -> String {
    let series = [
        Series {
            name: "podid".into(),
            color: "#2b6cb0",
        },
        Series {
            name: "azwi podidentity detect".into(),
            color: "#c05621",
        },
    ];
    let panels = [
        Panel {
            title: "wall time, s (median)".into(),
            decimals: 2,
        },
        Panel {
            title: "peak RSS, MiB (median)".into(),
            decimals: 0,
        },
    ];
    let rows: Vec<ChartRow> = rows
        .iter()
        .map(|r| ChartRow {
            name: r.name.clone(),
            values: vec![
                vec![Some(r.podid.0), Some(r.podid.1)],
                vec![r.other.as_ref().map(|o| o.1), r.other.as_ref().map(|o| o.2)],
            ],
        })
        .collect();
    bar_chart(&series, &panels, &rows)
}
