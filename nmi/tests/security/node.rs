//! A "node" network namespace for the agent binary, as on a real node: the API server bridged
//! in at its own address, a "pod" namespace behind it, and a stand-in IMDS on the node at
//! 169.254.169.254:80 that answers `imds saw <client> <path>` and records every caller. Agents
//! (podid-nmi, or the original NMI) are started in it as processes.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podid_nmi::iptables::RuleSpec;

use crate::live;
use crate::live::netns::NodeNetns;

pub const PATH: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x";
/// What the pod reads when its request reached IMDS directly, past every agent.
pub const IMDS_SAW_POD: &str = "imds saw 10.200.0.2 /metadata/identity/oauth2/token";
/// The pod's address, as IMDS sees a request that reached it directly.
pub const POD_IP: &str = "10.200.0.2";
/// The node the agents serve (no such node in the cluster: the pod is no pod of the cluster).
pub const NODE_NAME: &str = "fail-closed-node";

/// The stand-in IMDS: one answer per request, naming the caller; each caller is also printed.
const IMDS: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("saw " + self.client_address[0] + " " + self.path, flush=True)
        body = ("imds saw " + self.client_address[0] + " " + self.path).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("169.254.169.254", 80), H)
print("ready", flush=True)
s.serve_forever()
"#;

/// A node namespace with a pod, the stand-in IMDS and the API server reachable at its own
/// address; agents are started in it with [`Node::agent`] and [`Node::original_agent`].
pub struct Node {
    pub net: NodeNetns,
    apiserver: tokio::task::JoinHandle<()>,
    kubeconfig: PathBuf,
    kubelet_config: tempfile::NamedTempFile,
    imds_callers: Arc<Mutex<Vec<String>>>,
    _imds: tokio::process::Child,
}

impl Node {
    pub async fn start(test: &str, tag: &str) -> Option<Node> {
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
        let imds_callers = Arc::new(Mutex::new(Vec::new()));
        let callers = imds_callers.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                callers.lock().unwrap().push(line);
            }
        });
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
            imds_callers,
            _imds: imds,
        })
    }

    /// Every request the stand-in IMDS received so far, as `saw <client> <path>`.
    pub fn imds_requests(&self) -> Vec<String> {
        self.imds_callers.lock().unwrap().clone()
    }

    /// Starts `podid-nmi` in the node namespace (as the DaemonSet would, plus `args`), with
    /// `path` as its `PATH` when given (the tools the node image has).
    pub fn agent(&self, args: &[&str], path: Option<&Path>) -> Agent {
        self.agent_with_env(args, path, &[])
    }

    /// [`Node::agent`] with more environment variables.
    pub fn agent_with_env(
        &self,
        args: &[&str],
        path: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Agent {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = tokio::process::Command::new(which("ip"));
        cmd.args([
            "netns",
            "exec",
            &self.net.node,
            env!("CARGO_BIN_EXE_podid-nmi"),
        ])
        .arg(format!("--node={NODE_NAME}"))
        .args([
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
        .envs(env.iter().copied())
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

    /// Starts the original NMI (`binary`, v1.8.17) in the node namespace as its own manifest
    /// does (token port 2579, `/healthz` on 8085, metrics on 9090), for the same node, with its
    /// iptables sync every second and logged (`-v=5`, see [`Agent::syncs`]).
    pub fn original_agent(&self, binary: &Path) -> Agent {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = tokio::process::Command::new(which("ip"));
        cmd.args(["netns", "exec", &self.net.node])
            .arg(binary)
            .arg(format!("--node={NODE_NAME}"))
            .args([
                "--http-probe-port=8085",
                "--operation-mode=standard",
                "--enableScaleFeatures=true",
                "--metadata-header-required=true",
                "--ipt-update-interval-sec=1",
                "-v=5",
            ])
            .arg(format!(
                "--kubelet-config={}",
                self.kubelet_config.path().display()
            ))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true);
        Agent {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    /// The pod's request to the metadata address: the answer, or how the connection failed.
    pub async fn pod_asks(&self) -> std::io::Result<String> {
        self.net.pod_asks_metadata(0, PATH).await
    }

    pub async fn assert_pod_reaches_imds(&self, when: &str) {
        let answer = self.pod_asks().await;
        assert!(
            answer
                .as_deref()
                .is_ok_and(|a| a.starts_with("HTTP/1.0 200") && a.contains(IMDS_SAW_POD)),
            "{when}: the pod's request goes straight to IMDS, but got {answer:?}"
        );
    }

    pub async fn assert_pod_refused(&self, when: &str) {
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
    pub async fn wait_until_the_agent_answers(&self, agent: &Agent) -> String {
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

    /// The rules of `spec` are in place, with exactly one jump to them.
    pub fn assert_rules_in_place(&self, spec: &RuleSpec, when: &str) {
        let listing = self.net.nat_listing();
        assert_eq!(
            listing.matches(&format!("{}\n", spec.jump_rule())).count(),
            1,
            "{when}: one jump to the chain:\n{listing}"
        );
        for rule in spec.expected_listing() {
            assert!(listing.contains(&rule), "{when}: {rule}\n{listing}");
        }
    }

    /// Neither chain `chain` nor a jump to it exists.
    pub fn assert_no_rules(&self, chain: &str, when: &str) {
        let listing = self.net.nat_listing();
        assert!(
            !listing.contains(chain),
            "{when}: the rules are removed:\n{listing}"
        );
    }

    /// The API server is no longer reachable from the node.
    pub fn cut_apiserver(&self) {
        self.apiserver.abort();
    }
}

pub struct Agent {
    child: tokio::process::Child,
    log: tempfile::NamedTempFile,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits (30 s at most) until the agent has logged `text`.
    pub async fn wait_for_log(&self, text: &str) {
        for _ in 0..150 {
            if self.log().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the agent did not log {text:?} in 30 s:\n{}", self.log());
    }

    /// How many iptables syncs the original NMI has logged (at `-v=5`).
    pub fn syncs(&self) -> usize {
        self.log()
            .matches("rules for table(nat) chain(aad-metadata)")
            .count()
    }

    /// Waits (30 s at most) until the original NMI has logged `n` iptables syncs.
    pub async fn wait_for_syncs(&self, n: usize) {
        for _ in 0..150 {
            if self.syncs() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the original did not sync {n} times in 30 s:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("the agent is running") as i32;
        // `ip netns exec` execs the agent in place: the pid is the agent's.
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub async fn exit_within(&mut self, secs: u64) -> ExitStatus {
        match tokio::time::timeout(Duration::from_secs(secs), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the agent did not exit in {secs} s:\n{}", self.log()),
        }
    }
}

/// `name` in this process's `PATH`.
pub fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not in PATH"))
}

/// A directory of links to these tools only, to serve as a `PATH`.
pub fn tools(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::os::unix::fs::symlink(which(n), dir.path().join(n)).unwrap();
    }
    dir
}
