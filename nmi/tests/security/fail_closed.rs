//! Fault: the agent dies. A fatal error must not open the node: the agent exits with its
//! iptables rules in place, so a pod's connection to the metadata address is refused (nothing
//! listens where the rules lead) instead of reaching IMDS — and every identity on the node —
//! for as long as the agent crash-loops. Only SIGTERM/SIGINT, the intended stop, removes them.
//!
//! The real `podid-nmi` binary runs in a "node" network namespace (the API server bridged in),
//! with a "pod" namespace behind it and a stand-in IMDS on the node at 169.254.169.254:80 that
//! answers `imds saw <client> <path>`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::live;
use crate::live::netns::{NodeNetns, agent_rules};

const PATH: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x";
const IMDS_SAW_POD: &str = "imds saw 10.200.0.2 /metadata/identity/oauth2/token";

/// The stand-in IMDS: one answer per request, naming the caller.
const IMDS: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("imds saw " + self.client_address[0] + " " + self.path).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("169.254.169.254", 80), H)
print("ready", flush=True)
s.serve_forever()
"#;

/// A node namespace with a pod, the stand-in IMDS and the API server reachable at its own
/// address; the agent binary is started in it with [`Node::agent`].
struct Node {
    net: NodeNetns,
    apiserver: tokio::task::JoinHandle<()>,
    kubeconfig: PathBuf,
    kubelet_config: tempfile::NamedTempFile,
    _imds: tokio::process::Child,
}

impl Node {
    async fn start(test: &str, tag: &str) -> Option<Node> {
        use tokio::io::AsyncBufReadExt;
        let net = NodeNetns::create(test, tag, 1)?;
        let cluster = podid_testkit::Cluster::shared_async().await;
        live::sh(&[
            "ip",
            "netns",
            "exec",
            &net.node,
            "ip",
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ]);
        let mut imds = tokio::process::Command::new("ip")
            .args(["netns", "exec", &net.node, "python3", "-c", IMDS])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(imds.stdout.take().unwrap()).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
        // The API server listens on the test's loopback; the node namespace gets a bridge on
        // the same address, so the cluster's kubeconfig works there unchanged.
        let server: url::Url = cluster.server().parse().unwrap();
        let addr = format!("127.0.0.1:{}", server.port().unwrap());
        let apiserver = live::bridge(
            live::listen_in_netns(&net.node, &addr),
            addr.parse().unwrap(),
        );
        let kubelet_config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            kubelet_config.path(),
            "KUBELET_FLAGS=--network-plugin=cni\n",
        )
        .unwrap();
        Some(Node {
            net,
            apiserver,
            kubeconfig: cluster.kubeconfig().to_owned(),
            kubelet_config,
            _imds: imds,
        })
    }

    /// Starts `podid-nmi` in the node namespace (as the DaemonSet would, plus `args`), with
    /// `path` as its `PATH` when given (the tools the node image has).
    fn agent(&self, args: &[&str], path: Option<&Path>) -> Agent {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = tokio::process::Command::new(which("ip"));
        cmd.args([
            "netns",
            "exec",
            &self.net.node,
            env!("CARGO_BIN_EXE_podid-nmi"),
        ])
        .args([
            "--node=fail-closed-node",
            "--operation-mode=standard",
            "--shutdown-delay-sec=0",
            "--imds-endpoint=http://127.0.0.1:9/",
        ])
        .arg(format!(
            "--kubelet-config={}",
            self.kubelet_config.path().display()
        ))
        .args(args)
        .env("KUBECONFIG", &self.kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        Agent {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    /// The pod's request to the metadata address: the answer, or how the connection failed.
    async fn pod_asks(&self) -> std::io::Result<String> {
        self.net.pod_asks_metadata(0, PATH).await
    }

    async fn assert_pod_reaches_imds(&self, when: &str) {
        let answer = self.pod_asks().await;
        assert!(
            answer
                .as_deref()
                .is_ok_and(|a| a.starts_with("HTTP/1.0 200") && a.contains(IMDS_SAW_POD)),
            "{when}: the pod's request goes straight to IMDS, but got {answer:?}"
        );
    }

    async fn assert_pod_refused(&self, when: &str) {
        let answer = self.pod_asks().await;
        assert!(
            answer
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{when}: the pod's connection to the metadata address is refused (it must never reach IMDS), but got {answer:?}"
        );
    }

    /// Waits (30 s at most) until the agent answers the pod (before, the pod is refused, or
    /// reaches IMDS while no rules exist yet); returns the answer.
    async fn wait_until_the_agent_answers(&self, agent: &Agent) -> String {
        for _ in 0..60 {
            match self.pod_asks().await {
                Ok(a) if !a.contains("imds saw") => return a,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => panic!("the pod's request failed: {e}\n{}", agent.log()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the agent did not answer in 30 s:\n{}", agent.log());
    }

    /// The rules are the agent's, with exactly one jump to them.
    fn assert_rules_in_place(&self, when: &str) {
        let listing = self.net.nat_listing();
        assert_eq!(
            listing.matches("-A PREROUTING -j aad-metadata").count(),
            1,
            "{when}: one jump to the chain:\n{listing}"
        );
        for rule in agent_rules().expected_listing() {
            assert!(listing.contains(&rule), "{when}: {rule}\n{listing}");
        }
    }

    fn assert_no_rules(&self, when: &str) {
        let listing = self.net.nat_listing();
        assert!(
            !listing.contains("aad-metadata"),
            "{when}: the rules are removed:\n{listing}"
        );
    }

    /// The API server is no longer reachable from the node.
    fn cut_apiserver(&self) {
        self.apiserver.abort();
    }
}

struct Agent {
    child: tokio::process::Child,
    log: tempfile::NamedTempFile,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits (30 s at most) until the agent has logged `text`.
    async fn wait_for_log(&self, text: &str) {
        for _ in 0..150 {
            if self.log().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the agent did not log {text:?} in 30 s:\n{}", self.log());
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("the agent is running") as i32;
        // `ip netns exec` execs the agent in place: the pid is the agent's.
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    async fn exit_within(&mut self, secs: u64) -> ExitStatus {
        match tokio::time::timeout(Duration::from_secs(secs), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the agent did not exit in {secs} s:\n{}", self.log()),
        }
    }
}

/// `name` in this process's `PATH`.
fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not in PATH"))
}

/// A directory of links to these tools only, to serve as a `PATH`.
fn tools(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::os::unix::fs::symlink(which(n), dir.path().join(n)).unwrap();
    }
    dir
}

/// `--enable-conntrack-deletion` on a node image without the `conntrack` tool: fatal right after
/// the first rules, at every start. The agent exits 1 and leaves the rules: the pod is refused,
/// never served by IMDS. The next start finds the rules, keeps a single jump and serves the
/// pod; SIGTERM then removes them.
#[tokio::test]
async fn fatal_error_keeps_rules_and_refuses_pods() {
    let Some(node) = Node::start("security::fail_closed::fatal_error_keeps_rules", "fc").await
    else {
        return;
    };
    node.assert_pod_reaches_imds("before any agent").await;

    let no_conntrack = tools(&["iptables", "iptables-restore"]);
    let mut agent = node.agent(&["--enable-conntrack-deletion"], Some(no_conntrack.path()));
    let status = agent.exit_within(60).await;
    let log = agent.log();
    assert_eq!(
        status.code(),
        Some(1),
        "a fatal error exits 1: {status}\n{log}"
    );
    assert!(
        log.contains("deleting conntrack entries"),
        "the failure is the missing conntrack tool:\n{log}"
    );
    node.assert_rules_in_place("after the fatal error");
    node.assert_pod_refused("after the fatal error").await;

    let mut agent = node.agent(&[], None);
    let answer = node.wait_until_the_agent_answers(&agent).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    node.assert_rules_in_place("after the next start");

    agent.signal(libc::SIGTERM);
    let status = agent.exit_within(30).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0: {status}\n{}",
        agent.log()
    );
    node.assert_no_rules("after SIGTERM");
    node.assert_pod_reaches_imds("after SIGTERM").await;
}

/// SIGKILL (an OOM kill, a crash) cannot remove the rules: the pod is refused. The next agent,
/// still starting (here: the API server unreachable, so it waits for its first list), leaves
/// them; SIGTERM at that point is an intended stop all the same and removes them.
#[tokio::test]
async fn killed_agent_keeps_rules_and_only_a_stop_signal_removes_them() {
    let Some(node) = Node::start("security::fail_closed::killed_agent_keeps_rules", "fk").await
    else {
        return;
    };
    let mut agent = node.agent(&[], None);
    node.wait_until_the_agent_answers(&agent).await;
    node.assert_rules_in_place("while the agent runs");
    agent.signal(libc::SIGKILL);
    let status = agent.exit_within(30).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    node.assert_rules_in_place("after SIGKILL");
    node.assert_pod_refused("after SIGKILL").await;

    node.cut_apiserver();
    let mut agent = node.agent(&[], None);
    agent.wait_for_log("podid-nmi starting").await;
    node.assert_pod_refused("while the next agent starts").await;
    node.assert_rules_in_place("while the next agent starts");
    agent.signal(libc::SIGTERM);
    let status = agent.exit_within(30).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM during start-up is a clean stop: {status}\n{}",
        agent.log()
    );
    node.assert_no_rules("after SIGTERM during start-up");
    node.assert_pod_reaches_imds("after SIGTERM during start-up")
        .await;
}
