//! Benchmark 1 of docs/performance.md, "Node agent" (not a test): podid-nmi against the original
//! NMI (aad-pod-identity v1.8.17, built by tests/peers/build.sh), in one run, alternating.
//! `bench/agent.sh` runs it (`cargo bench -p podid-nmi --bench agent_side_by_side`).
//!
//! One fake node of the real API server carries `PODID_BENCH_PODS` (200) pods, each bound to its
//! own user-assigned identity (managed mode: AzureIdentity + binding, no records), all of them on
//! the node's scale set in the Azure emulator. The agents run as their release binaries, side by
//! side, in a network namespace standing for the node's host network (the original writes
//! iptables rules wherever it runs), where 169.254.169.254:80 leads to the emulator's IMDS:
//! - the original NMI, `--operation-mode=managed --forceNamespaced=true` (managed mode needs it);
//! - podid-nmi, the same flags (token cache on, its default);
//! - podid-nmi with `--token-refresh-margin-sec=0` (no cache: every token from IMDS, the
//!   original's path).
//!
//! The load generator runs in this process, on two threads that entered the namespace, each
//! connection bound to one pod's address (the agents find the caller by its source address):
//! every pod has its own keep-alive connection, the pods are shared out among the workers, and a
//! worker asks for its pods' tokens in turn, one request in flight at a time. Scenarios, each
//! `PODID_BENCH_SECS` (5) per sample, `PODID_BENCH_ROUNDS` (3) rounds, the agents' order rotating
//! each round:
//! - warm, 64 workers and 1 worker: the pod's own identity, the same resource (podid serves it
//!   from its cache; the original has none);
//! - cold: a resource not asked before, once per pod (the first token of each identity);
//! - not bound: a pod asks for another pod's identity (the authorisation's cost alone).
//!
//! Per sample: answers/s, latency quantiles, the agent's CPU seconds; per agent, its peak RSS.
//! Prints the table and the goals, writes `bench/results/agent.json` and `.svg`
//! (`PODID_BENCH_OUT`).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use podid_azure_emulator::{Emulator, Settings};
use podid_testkit::bench::{
    ChartRow, Panel, ProcUsage, Series, bar_chart, env_usize, median, quantile,
};
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[path = "../tests/live/mod.rs"]
#[allow(unused_imports)]
mod live;
use live::hostnet::{HostNet, Process};

const RESOURCE: &str = "https%3A%2F%2Fvault.azure.net";

/// One agent under test.
struct Agent {
    name: &'static str,
    port: u16,
    process: Process,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.process.child.id().expect("agent running")
    }
    fn usage(&self) -> ProcUsage {
        ProcUsage::of(self.pid())
            .unwrap_or_else(|| panic!("{} is gone; its log:\n{}", self.name, self.process.log()))
    }
}

/// How long a worker goes on.
#[derive(Clone, Copy)]
enum Until {
    /// Until then, round after round over its pods.
    Deadline(Instant),
    /// One request per pod.
    Once,
}

/// What a sample measured.
#[derive(Default)]
struct Outcome {
    /// Answers by status.
    statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, reset, malformed).
    errors: u64,
    /// Connections made (one per pod, more when an agent closes one).
    connects: u64,
    /// Every answer's latency, µs, sorted after [`Outcome::merge`].
    latency_us: Vec<u32>,
    elapsed: Duration,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        self.connects += other.connects;
        self.latency_us.extend(other.latency_us);
    }
    fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Sends one HTTP/1.1 request and reads its whole answer (Content-Length or chunked): the
/// status, and whether the connection stays open.
async fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> io::Result<(u16, bool)> {
    s.write_all(req).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("head"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid("status line"))?;
    let (mut len, mut chunked, mut close) = (None, false, false);
    for line in head.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim().to_ascii_lowercase();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v == "close",
            _ => {}
        }
    }
    if chunked {
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    break pos + i;
                }
                read_more(s, buf).await?;
            };
            let size = std::str::from_utf8(&buf[pos..line_end])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| invalid("chunk size"))?;
            pos = line_end + 2;
            while buf.len() < pos + size + 2 {
                read_more(s, buf).await?;
            }
            pos += size + 2;
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = len {
        while buf.len() < head_end + len {
            read_more(s, buf).await?;
        }
    } else {
        // No length: the body runs to the end of the connection.
        while read_more(s, buf).await.is_ok() {}
        close = true;
    }
    Ok((status, !close))
}

async fn connect(from: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One worker: its pods' requests in turn, one in flight.
async fn worker(target: SocketAddr, pods: Vec<(Ipv4Addr, Vec<u8>)>, until: Until) -> Outcome {
    let mut out = Outcome::default();
    let mut streams: Vec<Option<TcpStream>> = pods.iter().map(|_| None).collect();
    let mut buf = Vec::with_capacity(8 * 1024);
    for i in 0.. {
        match until {
            Until::Deadline(d) if Instant::now() >= d => break,
            Until::Once if i == pods.len() => break,
            _ => {}
        }
        let k = i % pods.len();
        let started = Instant::now();
        if streams[k].is_none() {
            match connect(pods[k].0, target).await {
                Ok(s) => {
                    out.connects += 1;
                    streams[k] = Some(s);
                }
                Err(_) => {
                    out.errors += 1;
                    continue;
                }
            }
        }
        let stream = streams[k].as_mut().expect("connected");
        match exchange(stream, &pods[k].1, &mut buf).await {
            Ok((status, keep)) => {
                out.latency_us
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                *out.statuses.entry(status).or_default() += 1;
                if !keep {
                    streams[k] = None;
                }
            }
            Err(_) => {
                out.errors += 1;
                streams[k] = None;
            }
        }
    }
    out
}

/// Runs `workers` workers against `target` from inside network namespace `netns`, on up to two
/// threads (each with its own runtime, its sockets in the namespace); `pods[i]` is pod i's
/// address and request, shared out among the workers round-robin.
fn load(
    netns: &str,
    target: SocketAddr,
    pods: &[(Ipv4Addr, Vec<u8>)],
    workers: usize,
    until: impl Fn() -> Until,
) -> Outcome {
    let threads = workers.clamp(1, 2);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let path = format!("/var/run/netns/{netns}");
            let mine: Vec<Vec<(Ipv4Addr, Vec<u8>)>> = (0..workers)
                .filter(|w| w % threads == t)
                .map(|w| {
                    pods.iter()
                        .skip(w)
                        .step_by(workers)
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .filter(|p| !p.is_empty())
                .collect();
            let until = until();
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                let f = std::fs::File::open(&path).unwrap();
                // SAFETY: setns on a valid namespace fd changes only this thread.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let tasks: Vec<_> = mine
                        .into_iter()
                        .map(|p| tokio::spawn(worker(target, p, until)))
                        .collect();
                    let mut out = Outcome::default();
                    for t in tasks {
                        out.merge(t.await.unwrap());
                    }
                    out
                })
            })
        })
        .collect();
    let mut out = Outcome::default();
    for h in handles {
        out.merge(h.join().unwrap());
    }
    out.elapsed = started.elapsed();
    out.latency_us.sort_unstable();
    out
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nUser-Agent: podid-bench\r\n\r\n")
        .into_bytes()
}

fn token_path(resource: &str, client_id: &str) -> String {
    format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}&client_id={client_id}"
    )
}

/// One sample's figures.
#[derive(Clone, Debug)]
struct Sample {
    per_sec: f64,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    cpu_secs: f64,
    requests: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

fn sample(agent: &Agent, run: impl FnOnce() -> Outcome) -> Sample {
    let before = agent.usage();
    let out = run();
    let after = agent.usage();
    Sample {
        per_sec: out.answered() as f64 / out.elapsed.as_secs_f64(),
        p50_us: quantile(&out.latency_us, 0.5),
        p99_us: quantile(&out.latency_us, 0.99),
        p999_us: quantile(&out.latency_us, 0.999),
        cpu_secs: (after.cpu - before.cpu).as_secs_f64(),
        requests: out.answered(),
        statuses: out.statuses,
        errors: out.errors,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Warm64,
    Warm1,
    Cold,
    NotBound,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Warm64 => "warm, 64 workers",
            Scenario::Warm1 => "warm, 1 worker",
            Scenario::Cold => "cold (first token per identity), 64 workers",
            Scenario::NotBound => "not bound (another pod's identity), 64 workers",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Scenario::Warm64 => "warm64",
            Scenario::Warm1 => "warm1",
            Scenario::Cold => "cold",
            Scenario::NotBound => "notBound",
        }
    }
    /// The answers that count as right: a token, or for another pod's identity a refusal
    /// (podid answers 403; the original 404, as if the identity did not exist).
    fn accepts(self, status: u16) -> bool {
        if self == Scenario::NotBound {
            status == 403 || status == 404
        } else {
            status == 200
        }
    }
}

fn summarise(samples: &[Sample]) -> Value {
    let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    json!({
        "perSec": m(&|s| s.per_sec),
        "p50Ms": m(&|s| s.p50_us as f64 / 1000.0),
        "p99Ms": m(&|s| s.p99_us as f64 / 1000.0),
        "p999Ms": m(&|s| s.p999_us as f64 / 1000.0),
        "cpuSecondsPer10kRequests": m(&|s| if s.requests == 0 { f64::NAN } else { s.cpu_secs / s.requests as f64 * 10_000.0 }),
        "samples": samples.iter().map(|s| json!({
            "perSec": s.per_sec, "p50Us": s.p50_us, "p99Us": s.p99_us, "p999Us": s.p999_us,
            "cpuSeconds": s.cpu_secs, "requests": s.requests, "errors": s.errors,
            "statuses": s.statuses,
        })).collect::<Vec<_>>(),
    })
}

fn main() {
    let pods_n = env_usize("PODID_BENCH_PODS", 200).max(2);
    let secs = env_usize("PODID_BENCH_SECS", 5).max(1) as u64;
    let rounds = env_usize("PODID_BENCH_ROUNDS", 3).max(1);
    let out_path = std::env::var("PODID_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results/agent.json")
        });
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let original = podid_testkit::peer_binary("nmi")
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            eprintln!(
                "the original NMI is not built: run tests/peers/build.sh (or set PODID_PEERS_BIN)"
            );
            std::process::exit(1)
        });

    // The scene: one node, N pods each bound to its own identity, all on the node's scale set.
    let cluster = rt.block_on(Cluster::shared_async());
    let (ns, pool, emu, ips, client_ids) = rt.block_on(async {
        let ns = cluster.namespace("agentbench").await;
        let pool = NodePool::aks("agentbench", 1);
        cluster.add_nodes(&pool).await.expect("fake node ready");
        let emu = Emulator::start(Settings::default()).await.unwrap();
        let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
        let mut client_ids = Vec::new();
        let mut labels = Vec::new();
        for i in 0..pods_n {
            let ident = emu.add_identity("rg", &format!("bench-{i}"));
            emu.preassign(&vmss, &ident.id);
            live::bound_identity(
                &ns.client,
                &ns.name,
                &format!("id-{i}"),
                json!({"type": 0, "resourceID": ident.id, "clientID": ident.client_id}),
                &format!("sel-{i}"),
            )
            .await;
            client_ids.push(ident.client_id.clone());
            labels.push((
                format!("pod-{i}"),
                json!({"aadpodidbinding": format!("sel-{i}")}),
            ));
        }
        let labels: Vec<(&str, Value)> = labels
            .iter()
            .map(|(n, l)| (n.as_str(), l.clone()))
            .collect();
        let ips = live::run_pods(
            &Api::<Pod>::namespaced(ns.client.clone(), &ns.name),
            &pool.node_name(0),
            &labels,
        )
        .await;
        (ns, pool, emu, ips, client_ids)
    });
    let node = pool.node_name(0);
    let pod_ip: Vec<Ipv4Addr> = (0..pods_n)
        .map(|i| match ips[&format!("pod-{i}")] {
            IpAddr::V4(v4) => v4,
            other => panic!("pod-{i} has {other}"),
        })
        .collect();
    println!(
        "scene: {pods_n} pods on {node}, each bound to its own identity ({:.0} s)",
        started.elapsed().as_secs_f64()
    );

    let Some(net) = HostNet::create("agent_side_by_side", "bench", cluster, &emu) else {
        eprintln!("network namespaces are needed (root, ip netns)");
        std::process::exit(1);
    };
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let podid_bin = PathBuf::from(env!("CARGO_BIN_EXE_podid-nmi"));
    let podid = |name: &'static str, port: u16, extra: &[&str]| {
        let mut args = vec![
            format!("--node={node}"),
            "--operation-mode=managed".to_owned(),
            "--forceNamespaced=true".to_owned(),
            format!("--nmi-port={port}"),
            format!("--http-probe-port={}", port + 1000),
            format!("--prometheus-port={}", port + 2000),
            "--manage-iptables=false".to_owned(),
            "--allow-network-plugin-kubenet".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Agent {
            name,
            port,
            process: net.spawn(
                &podid_bin,
                &args,
                &[
                    ("KUBECONFIG".to_owned(), kubeconfig.clone()),
                    ("NODE_NAME".to_owned(), node.clone()),
                ],
                std::env::temp_dir().join(format!("agentbench-{port}.log")),
            ),
        }
    };
    let mut agents = vec![
        Agent {
            name: "original",
            port: 2579,
            process: net.spawn(
                &original,
                &[
                    "--node",
                    &node,
                    "--operation-mode=managed",
                    "--forceNamespaced=true",
                    "--nmi-port=2579",
                    "--http-probe-port=8085",
                    "--prometheus-port=9095",
                    "--allow-network-plugin-kubenet",
                ]
                .map(str::to_owned),
                &[("KUBECONFIG".to_owned(), kubeconfig.clone())],
                std::env::temp_dir().join("agentbench-original.log"),
            ),
        },
        podid("podid", 2580, &[]),
        podid("podid, cache off", 2581, &["--token-refresh-margin-sec=0"]),
    ];

    // Every agent serves every pod its own identity before anything is measured.
    let own: Vec<(Ipv4Addr, Vec<u8>)> = (0..pods_n)
        .map(|i| (pod_ip[i], request(&token_path(RESOURCE, &client_ids[i]))))
        .collect();
    for a in &mut agents {
        let target = SocketAddr::from(([127, 0, 0, 1], a.port));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            a.process.assert_alive(a.name);
            let out = load(&net.name, target, &own, 64, || Until::Once);
            if out.statuses.get(&200) == Some(&(pods_n as u64)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not serve every pod after 120 s: {:?}, {} errors; its log:\n{}",
                a.name,
                out.statuses,
                out.errors,
                a.process.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    println!("agents serving ({:.0} s)", started.elapsed().as_secs_f64());

    let not_bound: Vec<(Ipv4Addr, Vec<u8>)> = (0..pods_n)
        .map(|i| {
            (
                pod_ip[i],
                request(&token_path(RESOURCE, &client_ids[(i + 1) % pods_n])),
            )
        })
        .collect();
    let scenarios = [
        Scenario::Warm64,
        Scenario::Warm1,
        Scenario::Cold,
        Scenario::NotBound,
    ];
    let mut results: BTreeMap<(usize, &str), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for (si, scenario) in scenarios.iter().enumerate() {
            let cold: Vec<(Ipv4Addr, Vec<u8>)> = (0..pods_n)
                .map(|i| {
                    let resource = format!("https%3A%2F%2Fcold-{round}-{si}.bench.example");
                    (pod_ip[i], request(&token_path(&resource, &client_ids[i])))
                })
                .collect();
            // A B C, then B C A, then C A B: no agent always goes first.
            for k in 0..agents.len() {
                let a = &agents[(k + round) % agents.len()];
                // Without a cache the two podid processes answer "not bound" alike: one is enough.
                if *scenario == Scenario::NotBound && a.name == "podid, cache off" {
                    continue;
                }
                let target = SocketAddr::from(([127, 0, 0, 1], a.port));
                let deadline = || Until::Deadline(Instant::now() + Duration::from_secs(secs));
                let s = sample(a, || match scenario {
                    Scenario::Warm64 => load(&net.name, target, &own, 64, deadline),
                    Scenario::Warm1 => load(&net.name, target, &own, 1, deadline),
                    Scenario::Cold => load(&net.name, target, &cold, 64, || Until::Once),
                    Scenario::NotBound => load(&net.name, target, &not_bound, 64, deadline),
                });
                let unexpected: u64 = s
                    .statuses
                    .iter()
                    .filter(|(st, _)| !scenario.accepts(**st))
                    .map(|(_, n)| n)
                    .sum();
                println!(
                    "round {} {:<48} {:<17} {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms p99.9 {:>7.2} ms cpu {:>5.2} s{}",
                    round + 1,
                    scenario.name(),
                    a.name,
                    s.per_sec,
                    s.p50_us as f64 / 1000.0,
                    s.p99_us as f64 / 1000.0,
                    s.p999_us as f64 / 1000.0,
                    s.cpu_secs,
                    if unexpected + s.errors > 0 {
                        format!(
                            "  (unexpected answers {:?}, {} errors)",
                            s.statuses, s.errors
                        )
                    } else {
                        String::new()
                    }
                );
                results.entry((si, a.name)).or_default().push(s);
            }
        }
    }
    let rss: BTreeMap<&str, f64> = agents
        .iter()
        .map(|a| (a.name, a.usage().peak_rss_kib as f64 / 1024.0))
        .collect();

    // The table, the goals, the JSON and the chart.
    let names: Vec<&str> = agents.iter().map(|a| a.name).collect();
    let get = |si: usize, agent: &str, key: &str| -> Option<f64> {
        results
            .get(&(si, agent))
            .map(|s| summarise(s)[key].as_f64().unwrap_or(f64::NAN))
    };
    println!(
        "\n{:<48} {:<17} {:>10} {:>9} {:>9} {:>9} {:>13}",
        "median of rounds", "agent", "answers/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU s/10k req"
    );
    for (si, scenario) in scenarios.iter().enumerate() {
        for name in &names {
            if let Some(s) = results.get(&(si, *name)) {
                let v = summarise(s);
                println!(
                    "{:<48} {:<17} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>13.2}",
                    scenario.name(),
                    name,
                    v["perSec"].as_f64().unwrap_or(f64::NAN),
                    v["p50Ms"].as_f64().unwrap_or(f64::NAN),
                    v["p99Ms"].as_f64().unwrap_or(f64::NAN),
                    v["p999Ms"].as_f64().unwrap_or(f64::NAN),
                    v["cpuSecondsPer10kRequests"].as_f64().unwrap_or(f64::NAN),
                );
            }
        }
    }
    for name in &names {
        println!("peak RSS {name:<17} {:>8.1} MiB", rss[name]);
    }
    let warm = |agent| get(0, agent, "perSec").unwrap_or(f64::NAN);
    let goals = [
        // (goal, value, bound, whether the value must reach the bound or stay at most at it)
        (
            "warm answers/s ≥ 10× the original's",
            warm("podid") / warm("original"),
            10.0,
            true,
        ),
        ("warm answers/s ≥ 25,000", warm("podid"), 25_000.0, true),
        (
            "warm p99 at 64 workers < 5 ms",
            get(0, "podid", "p99Ms").unwrap_or(f64::NAN),
            5.0,
            false,
        ),
        (
            "warm p99 at 1 worker < 1 ms",
            get(1, "podid", "p99Ms").unwrap_or(f64::NAN),
            1.0,
            false,
        ),
        (
            "cache off answers/s ≥ 3× the original's",
            warm("podid, cache off") / warm("original"),
            3.0,
            true,
        ),
        (
            "peak RSS ≤ ½ the original's",
            rss["podid"] / rss["original"],
            0.5,
            false,
        ),
    ];
    println!("\ngoals (podid against the original, same run):");
    let goals: Vec<Value> = goals
        .iter()
        .map(|(what, value, bound, at_least)| {
            let met = if *at_least {
                value >= bound
            } else {
                value <= bound
            };
            println!(
                "  {:<44} {:>10.2}  {}",
                what,
                value,
                if met { "met" } else { "NOT met" }
            );
            json!({"goal": what, "value": value, "bound": bound, "met": met})
        })
        .collect();
    let report = json!({
        "benchmark": "node agent: podid-nmi and the original NMI v1.8.17 side by side",
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "pods": pods_n, "secondsPerSample": secs, "rounds": rounds,
        "scenarios": scenarios.iter().enumerate().map(|(si, sc)| {
            let per_agent: serde_json::Map<String, Value> = names.iter()
                .filter_map(|n| results.get(&(si, *n)).map(|s| (n.to_string(), summarise(s))))
                .collect();
            (sc.key().to_owned(), json!({"name": sc.name(), "agents": per_agent}))
        }).collect::<serde_json::Map<String, Value>>(),
        "peakRssMiB": rss,
        "goals": goals,
        "benchmarkSeconds": started.elapsed().as_secs_f64(),
    });
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(
        &out_path,
        serde_json::to_string_pretty(&report).unwrap() + "\n",
    )
    .unwrap();
    let series: Vec<Series> = names
        .iter()
        .map(|n| match *n {
            "original" => Series {
                name: "original NMI v1.8.17".into(),
                color: "#c05621",
            },
            "podid" => Series {
                name: "podid-nmi".into(),
                color: "#2b6cb0",
            },
            _ => Series {
                name: "podid-nmi, cache off".into(),
                color: "#63b3ed",
            },
        })
        .collect();
    let panels = [
        Panel {
            title: "answers/s (median)".into(),
            decimals: 0,
        },
        Panel {
            title: "p99 latency, ms (median)".into(),
            decimals: 2,
        },
    ];
    let mut rows: Vec<ChartRow> = scenarios
        .iter()
        .enumerate()
        .map(|(si, sc)| ChartRow {
            name: sc.name().split(',').next().unwrap_or_default().to_owned()
                + if *sc == Scenario::Warm1 {
                    ", 1 worker"
                } else {
                    ""
                },
            values: names
                .iter()
                .map(|n| vec![get(si, n, "perSec"), get(si, n, "p99Ms")])
                .collect(),
        })
        .collect();
    rows.push(ChartRow {
        name: "peak RSS, MiB".into(),
        values: names.iter().map(|n| vec![None, Some(rss[n])]).collect(),
    });
    let svg = out_path.with_extension("svg");
    std::fs::write(&svg, bar_chart(&series, &panels, &rows)).unwrap();
    println!("wrote {} and {}", out_path.display(), svg.display());

    for a in agents {
        rt.block_on(a.process.stop());
    }
    drop(net);
    drop(emu);
    drop(ns);
    podid_testkit::stop();
}
