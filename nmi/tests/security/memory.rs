//! A pod exhausting the agent's memory: caller-chosen metric labels, buffered uploads, slow
//! headers, connection floods and the token cache. Each attack runs against the real
//! `podid-nmi` binary (on the test API server, for a node of its own) and asserts that the
//! agent's peak resident memory (`VmHWM` in /proc/<pid>/status) stays within its resident
//! memory before the attack (`VmRSS`, ≈ 30 MiB) plus [`BOUND_MIB`]; the figures are printed.
//!
//! Measured growth of the agent's peak memory (debug build), without the limits → with them:
//!
//! | attack | without | with |
//! |---|---|---|
//! | 4,000 refused token requests with 12 KiB resources, then one scrape of `/metrics` | 1,054 MiB (4,000 series, a 1 GB exposition) | 0.6 MiB (one series) |
//! | 300 uploads stalled before their end (1 MiB declared or chunked, 60 KiB declared) | 212 MiB, none ever cut off | 9.5 MiB, all cut off (413, 408) |
//! | 300 request heads of 390 KiB and 300 that never end | 122 MiB, none ever closed | 4.5 MiB, all closed (431, timeout) |
//! | 400 idle connections from one address, then 1,500 from 15 | 398 and 1,497 held (4 MiB) | 126 and 1,021 held (13 MiB) |
//! | 3,000 tokens granted for 12 KiB resources | 176 MiB | 22 MiB (cache ≤ 16 MiB) |

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use podid_azure_emulator::{Emulator, Settings};
use podid_testkit::{Cluster, NodePool};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::live;

/// How much the agent's peak resident memory may exceed its resident memory before an attack:
/// a quarter of the 256 Mi limit of deploy/manifests/podid-nmi.yaml.
const BOUND_MIB: u64 = 64;

/// The agent binary, started for `node` on free ports; killed when dropped.
pub(crate) struct Agent {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    prom: u16,
    /// Resident KiB once started and warmed up.
    pub(crate) baseline_kib: u64,
}

/// A port no socket uses on any address (the attacks' own connections take many).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stand-in for IMDS: 200 with a small JSON body for anything.
async fn fake_imds() -> String {
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"compute": {}})) });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/")
}

pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

impl Agent {
    /// Starts the agent in managed mode (no waiting for assignments) for `node`, with `imds`
    /// as upstream, and waits until it is `Active`.
    async fn start(cluster: &Cluster, node: &str, imds: &str) -> Agent {
        Self::start_with(cluster, node, imds, &[]).await
    }

    /// [`Agent::start`] with more flags.
    pub(crate) async fn start_with(
        cluster: &Cluster,
        node: &str,
        imds: &str,
        extra: &[&str],
    ) -> Agent {
        let (port, probe, prom) = (free_port(), free_port(), free_port());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podid-nmi"))
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("NODE_NAME", node)
            .env("RUST_LOG", "warn")
            .args([
                "--operation-mode=managed",
                "--forceNamespaced",
                &format!("--nmi-port={port}"),
                &format!("--http-probe-port={probe}"),
                &format!("--prometheus-port={prom}"),
                &format!("--imds-endpoint={imds}"),
                "--manage-iptables=false",
                "--allow-network-plugin-kubenet",
                "--shutdown-delay-sec=0",
            ])
            .args(extra)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut agent = Agent {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            prom,
            baseline_kib: 0,
        };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let health = format!("http://127.0.0.1:{probe}/healthz");
        for attempt in 0.. {
            if let Ok(r) = http.get(&health).send().await
                && r.text().await.unwrap() == "Active"
            {
                break;
            }
            assert!(attempt < 600, "agent not Active within 60 s");
            assert!(
                agent.child.try_wait().unwrap().is_none(),
                "agent exited early"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Warm up: a few ordinary requests, then the baseline.
        for _ in 0..20 {
            let _ = http
                .get(format!("http://{}/metadata/instance", agent.addr))
                .header("Metadata", "true")
                .send()
                .await;
        }
        agent.metrics().await;
        agent.baseline_kib = agent.rss_kib();
        agent
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid, "VmRSS:")
    }

    /// The growth of the agent's peak resident memory over its baseline, in KiB; printed.
    fn peak_growth_kib(&self, attack: &str) -> u64 {
        let peak = proc_status_kib(self.pid, "VmHWM:");
        let growth = peak.saturating_sub(self.baseline_kib);
        eprintln!(
            "{attack}: agent RSS before {} KiB, peak {peak} KiB, growth {growth} KiB (bound {} KiB)",
            self.baseline_kib,
            BOUND_MIB << 10
        );
        growth
    }

    /// Sockets and files the agent has open.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    async fn metrics(&self) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/metrics", self.prom))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn assert_within_bound(growth_kib: u64) {
    assert!(
        growth_kib <= BOUND_MIB << 10,
        "the agent's peak memory grew by {growth_kib} KiB, more than {BOUND_MIB} MiB"
    );
}

/// A connection to `to` from the local address `from` (any 127.x address is a distinct caller).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// How a connection ended, seen by the caller.
#[derive(Debug, PartialEq)]
enum End {
    /// The agent answered with this status, then closed.
    Answered(u16),
    /// Closed (or reset) without an answer that could be read.
    Closed,
    /// Still open after the wait.
    Open,
}

/// Reads from `s` until the agent closes it, for at most `wait`.
async fn end_of(mut s: TcpStream, wait: Duration) -> End {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n.min(4096)]),
            }
        }
    };
    if tokio::time::timeout(wait, read_all).await.is_err() {
        return End::Open;
    }
    let head = String::from_utf8_lossy(&got);
    match head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
    {
        Some(status) => End::Answered(status),
        None => End::Closed,
    }
}

/// `count` callers' addresses 127.`net`.0.1, 127.`net`.0.2, …
fn callers(net: u8, count: u8) -> Vec<IpAddr> {
    (1..=count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, net, 0, i)))
        .collect()
}

/// A pod asks for tokens with ever new `resource` values; the agent refuses them (no such pod
/// for `/host/token`) but recorded each as a label value of `nmi_operations_duration_seconds`:
/// 4,000 requests with 12 KiB values made ≈ 50 MiB of series the agent never frees.
#[tokio::test]
async fn unbounded_resource_values_do_not_grow_metrics() {
    let cluster = Cluster::shared_async().await;
    let agent = Agent::start(cluster, "memory-metrics", &fake_imds().await).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let pad = "x".repeat(12 << 10);
    let statuses: Vec<u16> = futures::stream::iter(0..4_000)
        .map(|i| {
            let req = http
                .get(format!("http://{}/host/token", agent.addr))
                .query(&[
                    ("api-version", "2018-02-01"),
                    ("resource", &format!("https://r{i}.example/{pad}")),
                ])
                .header("podns", "ns")
                .header("podname", format!("nope-{i}"));
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 404),
        "every request refused as no such pod: {:?}",
        statuses.iter().collect::<BTreeSet<_>>()
    );
    let metrics = agent.metrics().await;
    let resources: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("aadpodidentity_nmi_operations_duration_seconds_count"))
        .filter_map(|l| l.split("resource=\"").nth(1)?.split('"').next())
        .collect();
    eprintln!(
        "metrics exposition {} bytes, {} resource label values",
        metrics.len(),
        resources.len()
    );
    let growth = agent.peak_growth_kib("4,000 refused requests with 12 KiB resources");
    assert!(
        resources.len() == 1 && resources.contains("other"),
        "caller-chosen resources share one label value `other`: {} values",
        resources.len()
    );
    assert_within_bound(growth);
}

/// Pods start uploads to IMDS paths the agent passes through and never finish them: the agent
/// buffered each body up to 1 MiB, with no time limit, so a few hundred stalled uploads held
/// hundreds of MiB for ever. Now a body larger than 64 KiB is refused (413) and one not sent
/// within the read timeout is cut off (408).
#[tokio::test]
async fn stalled_uploads_are_cut_off() {
    let cluster = Cluster::shared_async().await;
    let agent = Agent::start(cluster, "memory-uploads", &fake_imds().await).await;
    let head = |framing: &str| {
        format!(
            "POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n{framing}\r\n\r\n"
        )
    };
    let mib = vec![b'a'; 1 << 20];
    // 100 of each, from 10 addresses: a declared 1 MiB body sent but its last byte; a chunked
    // 1 MiB chunk sent but its last byte; a declared 60 KiB body of which 32 KiB are sent.
    let kinds: [(String, usize); 3] = [
        (head("Content-Length: 1048576"), (1 << 20) - 1),
        (head("Transfer-Encoding: chunked"), (1 << 20) - 1),
        (head("Content-Length: 61440"), 32 << 10),
    ];
    let mut conns = Vec::new();
    for (k, (head, body_len)) in kinds.iter().enumerate() {
        for from in callers(2, 10).into_iter().cycle().take(100) {
            let mut s = connect_from(from, agent.addr).await;
            let mut bytes = head.clone().into_bytes();
            if k == 1 {
                bytes.extend_from_slice(b"100000\r\n");
            }
            bytes.extend_from_slice(&mib[..*body_len]);
            conns.push((
                k,
                tokio::spawn(async move {
                    // The agent may stop reading or close: the write then fails or stalls.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), s.write_all(&bytes)).await;
                    s
                }),
            ));
        }
    }
    let mut ends = Vec::new();
    for (k, c) in conns {
        ends.push((
            k,
            tokio::spawn(end_of(c.await.unwrap(), Duration::from_secs(90))),
        ));
    }
    let mut got = Vec::new();
    for (k, e) in ends {
        got.push((k, e.await.unwrap()));
    }
    let growth = agent.peak_growth_kib("300 stalled uploads");
    let open = got.iter().filter(|(_, e)| *e == End::Open).count();
    assert_eq!(open, 0, "uploads the agent never cut off (of 300)");
    for (k, end) in got {
        match (k, end) {
            (2, e) => assert_eq!(e, End::Answered(408), "a stalled small upload"),
            (_, End::Answered(s)) => assert_eq!(s, 413, "an oversized upload"),
            _ => {}
        }
    }
    assert_within_bound(growth);
}

/// Pods open connections and send request headers slowly or without end (slowloris): the
/// agent waited for ever and buffered up to ≈ 400 KiB of headers per connection. Now a head
/// larger than 16 KiB is refused (431) and one not complete within the read timeout is closed.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let cluster = Cluster::shared_async().await;
    let agent = Agent::start(cluster, "memory-headers", &fake_imds().await).await;
    let mut big = b"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nX-Pad: ".to_vec();
    big.resize(big.len() + (390 << 10), b'a');
    let slow =
        b"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: 169.254.169.254\r\n";
    let mut conns = Vec::new();
    for (k, net) in [(0, 3u8), (1, 4u8)] {
        for from in callers(net, 3).into_iter().cycle().take(300) {
            let mut s = connect_from(from, agent.addr).await;
            let bytes = if k == 0 { big.clone() } else { slow.to_vec() };
            conns.push((
                k,
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), s.write_all(&bytes)).await;
                    s
                }),
            ));
        }
    }
    let mut ends = Vec::new();
    for (k, c) in conns {
        ends.push((
            k,
            tokio::spawn(end_of(c.await.unwrap(), Duration::from_secs(90))),
        ));
    }
    let mut got = Vec::new();
    for (k, e) in ends {
        got.push((k, e.await.unwrap()));
    }
    let growth = agent.peak_growth_kib("300 oversized and 300 slow request heads");
    let mut open = [0, 0];
    for (k, end) in got {
        match end {
            End::Open => open[k] += 1,
            End::Answered(s) if k == 0 => assert_eq!(s, 431, "an oversized head"),
            End::Answered(s) => panic!("an incomplete head answered {s}"),
            End::Closed => {}
        }
    }
    assert_eq!(
        open,
        [0, 0],
        "connections the agent never closed (of 300 with 390 KiB heads, 300 slow ones)"
    );
    assert_within_bound(growth);
}

/// Pods open connections and send nothing: the agent accepted every one and kept it for ever.
/// Now it serves at most 1,024 connections at once, at most 128 per source address, and
/// another pod is still answered while one floods.
#[tokio::test]
async fn connection_floods_are_capped() {
    let cluster = Cluster::shared_async().await;
    let agent = Agent::start(cluster, "memory-flood", &fake_imds().await).await;
    let base_fds = agent.open_fds();

    // One address, 400 connections: at most 128 held.
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(connect_from(IpAddr::V4(Ipv4Addr::new(127, 5, 0, 1)), agent.addr).await);
    }
    // Another pod is still answered.
    let other = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 5, 0, 2)))
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/metadata/instance", agent.addr))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // Held connections are the ones the agent has not closed: those it refused read EOF at
    // once; wait (bounded) until it has handled all 400.
    let held_one = held_connections(&agent, flood, base_fds).await;

    // 1,500 connections from 15 addresses (100 each): at most 1,024 held.
    let mut flood = Vec::new();
    for from in callers(6, 15) {
        for _ in 0..100 {
            flood.push(connect_from(from, agent.addr).await);
        }
    }
    let held_all = held_connections(&agent, flood, base_fds).await;
    let growth = agent.peak_growth_kib("400 + 1,500 idle connections");
    assert!(
        held_one <= 128 + 8,
        "the agent held {held_one} connections of one address (cap 128)"
    );
    assert!(
        held_all <= 1024 + 8,
        "the agent held {held_all} connections (cap 1,024)"
    );
    assert_within_bound(growth);
}

/// The most connections beyond `base_fds` the agent held while taking in the `flood` (its open
/// descriptors, sampled until they stop changing for a second, within 30 s); the flood is
/// then dropped.
async fn held_connections(agent: &Agent, flood: Vec<TcpStream>, base_fds: usize) -> usize {
    let (mut last, mut most, mut stable) = (usize::MAX, 0, 0);
    for _ in 0..300 {
        let now = agent.open_fds();
        most = most.max(now);
        if now == last {
            stable += 1;
            if stable >= 10 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = most.saturating_sub(base_fds);
    eprintln!(
        "{} connections opened, the agent held at most {held}",
        flood.len()
    );
    drop(flood);
    held
}

/// A pod with an identity asks for tokens for ever new resources, each granted: the agent
/// kept every token (with its resource, twice, and the JWT naming it) for ever. Now the cache
/// keeps at most 4,096 entries and 16 MiB, dropping expired tokens first, then the least
/// recently used.
#[tokio::test]
async fn token_cache_does_not_grow_without_bound() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("nmi-memory").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("nmimem", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let a = emu.add_identity("rg", "mem-a");
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
    let ips = live::run_pods(
        &pods,
        &node,
        &[("pod-a", json!({"aadpodidbinding": "sel-a"}))],
    )
    .await;
    let imds = emu.imds_endpoint(&format!("{}_0", pool.scale_set));
    let agent = Agent::start(cluster, &node, &imds).await;
    let http = reqwest::Client::builder()
        .local_address(ips["pod-a"])
        .no_proxy()
        .build()
        .unwrap();
    let pad = "x".repeat(12 << 10);
    let statuses: Vec<u16> = futures::stream::iter(0..3_000)
        .map(|i| {
            let req = http
                .get(format!(
                    "http://{}/metadata/identity/oauth2/token",
                    agent.addr
                ))
                .query(&[
                    ("api-version", "2018-02-01"),
                    ("resource", &format!("https://r{i}.example/{pad}")),
                ])
                .header("Metadata", "true");
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every token granted: {:?}",
        statuses.iter().collect::<BTreeSet<_>>()
    );
    assert_within_bound(agent.peak_growth_kib("3,000 tokens for 12 KiB resources"));
}
