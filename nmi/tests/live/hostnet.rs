//! A network namespace standing for a node's host network, in which a real binary runs as a
//! process (the original NMI or MIC, podid-nmi or podid-operator), with its fixed ports and its
//! iptables rules kept to itself. The API server and the Azure emulator are bridged in at their
//! own addresses (the cluster's kubeconfig and the emulator's URLs work there unchanged), and
//! 169.254.169.254:80, the IMDS address the original NMI has built in, leads to the emulator.
//! Requests are sent from inside it, from the pods' 127.x addresses (kwok's pod range is on the
//! namespace's loopback), by a small client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Netns, bridge, listen_in_netns, sh};

/// Sends the requests of a JSON plan and prints one JSON answer per request. With `probe`,
/// first waits until that `/healthz` reports `Active` (the original's iptables are in place).
const CLIENT: &str = r#"
import concurrent.futures, http.client, json, sys, time
plan = json.load(open(sys.argv[1]))
if plan.get("probe"):
    deadline = time.time() + 60
    while True:
        try:
            c = http.client.HTTPConnection(plan["probe"], timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().read().decode().strip() == "Active":
                break
        except Exception:
            pass
        if time.time() > deadline:
            sys.exit("agent not Active after 60 s")
        time.sleep(0.2)
host, port = plan["target"].rsplit(":", 1)
def one(r):
    try:
        c = http.client.HTTPConnection(host, int(port), timeout=120, source_address=(r["from"], 0))
        c.request("GET", r["path"], headers=r["headers"])
        resp = c.getresponse()
        return {"status": resp.status, "body": resp.read().decode(),
                "content_type": resp.getheader("Content-Type") or ""}
    except Exception as e:
        return {"status": 0, "body": repr(e), "content_type": ""}
# Concurrently, as pods call: the waits of one request do not hold up the next.
with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
    out = list(pool.map(one, plan["requests"]))
print(json.dumps(out))
"#;

/// One request of a pod: from its address, a path and headers.
#[derive(Clone, Debug)]
pub struct Request {
    pub label: String,
    pub from: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

impl Request {
    /// A GET of `path` from `from` with header `Metadata: true`.
    pub fn metadata(label: &str, from: &str, path: &str) -> Self {
        Request {
            label: label.into(),
            from: from.into(),
            path: path.into(),
            headers: [("Metadata".to_owned(), "true".to_owned())].into(),
        }
    }
}

/// Runs the client with `reqs` to `target` (`host:port`), inside namespace `ns` when given,
/// after waiting for `probe`'s `/healthz` to say `Active` when given; one JSON answer
/// (`status`, `body`, `content_type`) per request, in order.
pub async fn send(
    ns: Option<&str>,
    target: &str,
    probe: Option<&str>,
    reqs: &[Request],
) -> Vec<Value> {
    let plan = json!({
        "target": target,
        "probe": probe,
        "requests": reqs.iter().map(|r| json!({"from": r.from, "path": r.path, "headers": r.headers})).collect::<Vec<_>>(),
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), plan.to_string()).unwrap();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => tokio::process::Command::new("python3"),
    };
    let out = cmd
        .arg("-c")
        .arg(CLIENT)
        .arg(file.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "request client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `host:port` of a URL.
pub fn addr_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        u.host_str().unwrap(),
        u.port_or_known_default().unwrap()
    )
    .parse()
    .unwrap()
}

/// The namespace, its bridges, and the processes started in it (killed when it drops).
pub struct HostNet {
    pub name: String,
    bridges: Vec<tokio::task::JoinHandle<()>>,
    _netns: Netns,
}

/// A process started in a [`HostNet`], killed on drop; its output in a log file.
pub struct Process {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Process {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_alive(&mut self, who: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{who} exited ({status}); its log:\n{}", self.log());
        }
    }

    /// SIGTERM (as Kubernetes stops a pod), then waits; SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // `ip netns exec` execs the program in place: the pid is the program's.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl HostNet {
    /// A namespace (its loopback up, 169.254.169.254 on it) with the API server of `cluster`
    /// and the emulator `emu` (its HTTP and HTTPS endpoints, and its IMDS at
    /// 169.254.169.254:80) bridged in. `None` (through `podid_testkit::prereq`, which fails
    /// under CI) where network namespaces cannot be made. `tag` keeps concurrent tests apart.
    pub fn create(
        test: &str,
        tag: &str,
        cluster: &podid_testkit::Cluster,
        emu: &podid_azure_emulator::Emulator,
    ) -> Option<Self> {
        if !podid_testkit::prereq::netns_available(test) {
            return None;
        }
        let name = format!("podid-{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let netns = Netns(vec![name.clone()]);
        sh(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ]);
        let mut net = HostNet {
            name,
            bridges: Vec::new(),
            _netns: netns,
        };
        for url in [
            cluster.server().to_owned(),
            emu.arm_endpoint(),
            emu.https_endpoint(),
        ] {
            let at = addr_of(&url);
            net.bridge_at(&at.to_string(), at);
        }
        net.bridge_at("169.254.169.254:80", addr_of(&emu.arm_endpoint()));
        Some(net)
    }

    /// Connections to `inside` (an address in the namespace) reach `target` outside.
    pub fn bridge_at(&mut self, inside: &str, target: SocketAddr) {
        self.bridges
            .push(bridge(listen_in_netns(&self.name, inside), target));
    }

    /// Starts `program` in the namespace with `args` and only `env` (and `PATH`), its output
    /// to `log`.
    pub fn spawn(
        &self,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Process { child, log }
    }

    /// The original NMI (`binary`) for `node`, as its DaemonSet runs it (token port 2579,
    /// `/healthz` on 8085, the cluster's kubeconfig as its in-cluster account), metrics on
    /// 9095, with test-sized waits for a record (3 tries for `Created`, 2 for `Assigned`, 1 s
    /// apart); its log is named after `tag`.
    pub fn original_nmi(
        &self,
        binary: &Path,
        cluster: &podid_testkit::Cluster,
        node: &str,
        tag: &str,
    ) -> Process {
        let args = [
            "--node",
            node,
            "--nmi-port",
            "2579",
            "--http-probe-port",
            "8085",
            "--prometheus-port",
            "9095",
            "--allow-network-plugin-kubenet",
            "--retry-attempts-for-created",
            "3",
            "--retry-attempts-for-assigned",
            "2",
            "--find-identity-retry-interval",
            "1",
        ];
        self.spawn(
            binary,
            &args.map(str::to_owned),
            &[(
                "KUBECONFIG".to_owned(),
                cluster.kubeconfig().display().to_string(),
            )],
            std::env::temp_dir().join(format!("{tag}-original-nmi.log")),
        )
    }

    /// [`send`] from inside this namespace.
    pub async fn send(&self, target: &str, probe: Option<&str>, reqs: &[Request]) -> Vec<Value> {
        send(Some(&self.name), target, probe, reqs).await
    }

    /// A plain GET of `url` (an address in the namespace) from inside it: (status, body);
    /// status 0 when nothing answers.
    pub async fn get(&self, url: &str) -> (u16, String) {
        let u = url::Url::parse(url).unwrap();
        let target = format!(
            "{}:{}",
            u.host_str().unwrap(),
            u.port_or_known_default().unwrap()
        );
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        let answer = &self
            .send(
                &target,
                None,
                &[Request {
                    label: "get".into(),
                    from: "127.0.0.1".into(),
                    path,
                    headers: BTreeMap::new(),
                }],
            )
            .await[0];
        (
            answer["status"].as_u64().unwrap_or_default() as u16,
            answer["body"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

impl Drop for HostNet {
    fn drop(&mut self) {
        for b in &self.bridges {
            b.abort();
        }
    }
}
