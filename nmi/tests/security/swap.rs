//! Attack window: the swap from the original NMI to podid-nmi, podid-nmi's own restart (an
//! upgrade), and the rollback to the original. At no moment may a pod's request reach IMDS
//! directly, where every identity on the node's scale set is its for the asking.
//!
//! The real original NMI (v1.8.17, from `$PODID_PEERS_BIN`) and the real podid-nmi binary run in
//! one "node" network namespace (`node::Node`: the API server bridged in, a stand-in IMDS at
//! 169.254.169.254:80 that records every caller). A pod namespace asks the metadata address
//! continuously, one new connection per request, through every step:
//!
//! 1. the original runs (its chain `aad-metadata`, port 2579);
//! 2. podid-nmi starts beside it (its chain `podid-metadata` jumped to ahead of the original's,
//!    port 2580): from its first answer on, the original never answers again;
//! 3. the original is stopped with SIGTERM and removes its own chain;
//! 4. podid-nmi is restarted (SIGTERM, then a new process): in between the pod is refused;
//! 5. rollback: the original starts again (its jump lands ahead of podid's) and podid-nmi,
//!    rolled out with `PODID_NMI_REMOVE_IPTABLES_ON_EXIT=true`, is stopped and removes its own
//!    chain only.
//!
//! The pod is no pod of the cluster, so each agent answers at once with its own refusal (the
//! original 500 `pod list is empty`, podid-nmi 403): who answered is visible in every answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podid_nmi::iptables::{ORIGINAL_CHAIN, RuleSpec};

use crate::live::netns::agent_rules;
use crate::node::{Agent, Node, PATH, POD_IP};

/// What one request of the pod got.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// The original NMI answered.
    Original,
    /// podid-nmi answered.
    Podid,
    /// The connection was refused (rules in place, no agent listening).
    Refused,
    /// IMDS answered: the request went past every agent.
    Imds(String),
    /// Anything else (e.g. a connection reset by an agent that was stopping).
    Other(String),
}

fn classify(answer: std::io::Result<String>) -> Seen {
    match answer {
        Ok(a) if a.contains("imds saw") => Seen::Imds(a),
        // The original finds no pod at the address (after a few retries).
        Ok(a) if a.starts_with("HTTP/1.1 500") && a.contains("pod list is empty") => Seen::Original,
        Ok(a) if a.starts_with("HTTP/1.1 403") => Seen::Podid,
        Ok(a) => Seen::Other(a),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
        Err(e) => Seen::Other(e.to_string()),
    }
}

/// The pod's requests so far, in order, each with when it was answered.
#[derive(Clone, Default)]
struct Poll(Arc<Mutex<Vec<(Instant, Seen)>>>);

impl Poll {
    fn since(&self, t: Instant) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn all(&self) -> Vec<Seen> {
        self.since(Instant::now() - Duration::from_secs(3600))
    }

    /// Waits (60 s at most) until a request made after `t` got `want`; returns when it was seen.
    async fn wait_for(&self, t: Instant, want: Seen, step: &str, agents: &[&Agent]) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((at, _)) = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(at, s)| *at >= t && *s == want)
            {
                return *at;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
                panic!(
                    "{step}: no {want:?} answer in 60 s; the pod saw {:?}\n{}",
                    self.since(t),
                    logs.join("\n----\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// In the query of every request the poller makes, so that IMDS's record names them.
const POLL_MARK: &str = "poll=swap";

/// Pod 0 asks the metadata address in a loop, one connection per request, until `stop` (or
/// 300 s, the bound of the loop).
async fn poll_from_pod(node: &Node, poll: Poll, stop: Arc<AtomicBool>) {
    node.net
        .in_pod(0, move || async move {
            let request = format!(
                "GET {PATH}&{POLL_MARK} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n"
            );
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let exchange = async {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut s = tokio::net::TcpStream::connect("169.254.169.254:80").await?;
                    s.write_all(request.as_bytes()).await?;
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).await?;
                    Ok(String::from_utf8_lossy(&out).into_owned())
                };
                let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                poll.0
                    .lock()
                    .unwrap()
                    .push((Instant::now(), classify(answer)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
}

/// podid-nmi as the swap runs it: its own chain (the default), its own ports beside the
/// original's (deploy/manifests/podid-nmi.yaml).
const PODID_PORTS: [&str; 3] = [
    "--nmi-port=2580",
    "--http-probe-port=8086",
    "--prometheus-port=9091",
];

fn podid_rules() -> RuleSpec {
    RuleSpec {
        target_port: 2580,
        ..agent_rules()
    }
}

fn prerouting(node: &Node) -> Vec<String> {
    node.net
        .nat_listing()
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn no_request_reaches_imds_directly_during_swap_upgrade_and_rollback() {
    let original_bin = match podid_testkit::peer_binary("nmi") {
        Ok(p) => p,
        Err(e) => {
            podid_testkit::prereq::skip("security::swap", &e.to_string());
            return;
        }
    };
    let Some(node) = Node::start("security::swap", "sw").await else {
        return;
    };
    node.assert_pod_reaches_imds("before any agent").await;

    // 1. The original NMI, as installed today.
    let mut original = node.original_agent(&original_bin);
    let first = node.wait_until_the_agent_answers(&original).await;
    assert_eq!(
        classify(Ok(first.clone())),
        Seen::Original,
        "{first}\n{}",
        original.log()
    );

    let poll = Poll::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_from_pod(&node, poll.clone(), stop.clone());
    let steps = async {
        let t0 = Instant::now();
        poll.wait_for(t0, Seen::Original, "the original serves", &[&original])
            .await;

        // 2. podid-nmi beside it.
        let t1 = Instant::now();
        let mut podid = node.agent(&PODID_PORTS, None);
        let podid_first = poll
            .wait_for(
                t1,
                Seen::Podid,
                "podid-nmi takes over",
                &[&podid, &original],
            )
            .await;
        assert_eq!(
            prerouting(&node),
            [
                "-A PREROUTING -j podid-metadata",
                "-A PREROUTING -j aad-metadata"
            ],
            "podid-nmi's jump comes first, the original's stays"
        );
        // The original's periodic sync (every second here) runs over podid-nmi's rules twice
        // more: it checks its own jump exists anywhere and its own chain only, so both jumps
        // stay as they are.
        let syncs = original.syncs();
        original.wait_for_syncs(syncs + 2).await;
        assert_eq!(
            prerouting(&node),
            [
                "-A PREROUTING -j podid-metadata",
                "-A PREROUTING -j aad-metadata"
            ],
            "the original's sync moved or removed a jump"
        );
        poll.wait_for(
            Instant::now(),
            Seen::Podid,
            "podid-nmi after the original's syncs",
            &[&podid],
        )
        .await;

        // 3. The original is removed (its DaemonSet deleted): it removes its own chain.
        original.signal(libc::SIGTERM);
        let status = original.exit_within(30).await;
        assert_eq!(status.code(), Some(0), "{status}\n{}", original.log());
        assert_eq!(
            prerouting(&node),
            ["-A PREROUTING -j podid-metadata"],
            "the original removed its own jump only"
        );
        node.assert_rules_in_place(&podid_rules(), "after the original stopped");
        let t3 = Instant::now();
        poll.wait_for(
            t3,
            Seen::Podid,
            "podid-nmi after the original stopped",
            &[&podid],
        )
        .await;

        // 4. podid-nmi's own upgrade: SIGTERM, then the new version starts.
        podid.signal(libc::SIGTERM);
        let status = podid.exit_within(30).await;
        assert_eq!(status.code(), Some(0), "{status}\n{}", podid.log());
        node.assert_rules_in_place(&podid_rules(), "while podid-nmi restarts");
        let t4 = Instant::now();
        poll.wait_for(t4, Seen::Refused, "while podid-nmi restarts", &[&podid])
            .await;
        let mut podid = node.agent(&PODID_PORTS, None);
        poll.wait_for(
            Instant::now(),
            Seen::Podid,
            "podid-nmi after its restart",
            &[&podid],
        )
        .await;
        // Between the first podid-nmi answer and now the original never answered: from the
        // moment podid-nmi's jump was in, every new connection was podid-nmi's (or refused).
        let since_takeover = poll.since(podid_first);
        assert!(
            !since_takeover.contains(&Seen::Original),
            "the original answered after podid-nmi took over: {since_takeover:?}"
        );

        // 5. Rollback: the original again, then podid-nmi uninstalled.
        let t5 = Instant::now();
        let mut original = node.original_agent(&original_bin);
        let back = poll
            .wait_for(
                t5,
                Seen::Original,
                "the original takes over again",
                &[&original, &podid],
            )
            .await;
        assert_eq!(
            prerouting(&node),
            [
                "-A PREROUTING -j aad-metadata",
                "-A PREROUTING -j podid-metadata"
            ],
            "the original's jump comes first again"
        );
        podid.signal(libc::SIGTERM);
        podid.exit_within(30).await;
        // The uninstall rolls the DaemonSet out with the variable set, then deletes it.
        let mut podid = node.agent_with_env(
            &PODID_PORTS,
            None,
            &[("PODID_NMI_REMOVE_IPTABLES_ON_EXIT", "true")],
        );
        podid.wait_for_log("podid-nmi started").await;
        podid.signal(libc::SIGTERM);
        let status = podid.exit_within(30).await;
        assert_eq!(status.code(), Some(0), "{status}\n{}", podid.log());
        node.assert_no_rules(&podid_rules().chain, "after podid-nmi is uninstalled");
        assert_eq!(
            prerouting(&node),
            [format!("-A PREROUTING -j {ORIGINAL_CHAIN}")]
        );
        let t6 = Instant::now();
        poll.wait_for(
            t6,
            Seen::Original,
            "the original after the rollback",
            &[&original],
        )
        .await;
        let since_rollback = poll.since(back);
        assert!(
            since_rollback.iter().all(|s| *s == Seen::Original),
            "once the original's jump was back in, only the original answered: {since_rollback:?}"
        );

        stop.store(true, Ordering::SeqCst);
        original.signal(libc::SIGKILL);
        let _ = original.exit_within(30).await;
    };
    tokio::join!(poller, steps);

    let seen = poll.all();
    let direct: Vec<&Seen> = seen.iter().filter(|s| matches!(s, Seen::Imds(_))).collect();
    assert!(
        direct.is_empty(),
        "requests that reached IMDS directly: {direct:?}"
    );
    let polled: Vec<String> = node
        .imds_requests()
        .into_iter()
        .filter(|r| r.contains(POLL_MARK))
        .collect();
    assert!(
        polled.is_empty(),
        "IMDS received the pod's requests directly: {polled:?}"
    );
    // (The stand-in does record the pod's direct requests: those made before any agent ran.)
    assert!(
        node.imds_requests()
            .iter()
            .any(|r| r.starts_with(&format!("saw {POD_IP} ")) && !r.contains(POLL_MARK)),
        "{:?}",
        node.imds_requests()
    );
    let others: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(s, Seen::Other(_)))
        .collect();
    eprintln!(
        "the pod made {} requests: {} answered by the original, {} by podid-nmi, {} refused, others: {others:?}",
        seen.len(),
        seen.iter().filter(|s| **s == Seen::Original).count(),
        seen.iter().filter(|s| **s == Seen::Podid).count(),
        seen.iter().filter(|s| **s == Seen::Refused).count(),
    );
}
