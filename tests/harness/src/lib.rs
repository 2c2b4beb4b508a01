//! A real Kubernetes control plane for podid's tests: etcd + kube-apiserver on loopback with
//! generated PKI, and on demand kube-controller-manager + kube-scheduler + kwok with fake AKS-like
//! nodes whose pods get 127.x addresses. One control plane per test binary, started lazily,
//! stopped (apiserver first) when the binary exits.
//!
//! ```no_run
//! # async fn t() {
//! let cluster = podid_testkit::Cluster::shared();
//! let ns = cluster.namespace("report").await;      // a fresh namespace for this test
//! let client = ns.client.clone();
//! # }
//! ```

pub mod bench;
pub mod builders;
pub mod exposition;
mod pki;
pub mod prereq;
mod process;
pub mod proxy;
pub mod sdk;
pub mod secret_scan;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

pub use process::{Component, dump_logs};

/// Errors while building or starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "control-plane binary {0} not found; run tests/cluster/build.sh (or tests/run.sh) first, or set PODID_K8S_BIN to its bin directory"
    )]
    MissingBinary(String),
    #[error(
        "original aad-pod-identity binary {0} not found; run tests/peers/build.sh (or tests/run.sh) first, or set PODID_PEERS_BIN to its bin directory"
    )]
    MissingPeer(String),
    #[error(
        "Azure Workload ID binary {0} not found; run tests/peers/build-workload-identity.sh (or tests/run.sh) first, or set PODID_WI_BIN to its bin directory"
    )]
    MissingWorkloadIdentity(String),
    #[error("generating test PKI: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{component} did not become ready in {secs}s; its log: {log}")]
    NotReady {
        component: String,
        secs: u64,
        log: PathBuf,
    },
    #[error("{component} exited at start ({status}); its log: {log}")]
    Exited {
        component: String,
        status: String,
        log: PathBuf,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("waiting: {0}")]
    Wait(String),
    #[error("kubectl apply -f {path} failed: {output}")]
    Kubectl { path: PathBuf, output: String },
}

/// Where the control-plane binaries are: `$PODID_K8S_BIN`, or the newest build of
/// `tests/cluster/build.sh` under `$PODID_CACHE_DIR` (default `~/.cache/podid`).
pub fn bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("PODID_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let cache = cache_dir();
    let mut builds: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("kube-apiserver").is_file())
                .collect()
        })
        .unwrap_or_default();
    builds.sort();
    builds
        .pop()
        .ok_or_else(|| Error::MissingBinary("kube-apiserver".into()))
}

/// A binary of the original aad-pod-identity (`mic`, `nmi`, `demo`) built by
/// `tests/peers/build.sh`: from `$PODID_PEERS_BIN`, or that script's cache under
/// `$PODID_CACHE_DIR` (default `~/.cache/podid`).
pub fn peer_binary(name: &str) -> Result<PathBuf, Error> {
    let dir = match std::env::var_os("PODID_PEERS_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let version = include_str!("../../peers/aad-pod-identity/go.mod")
                .lines()
                .find_map(|l| l.strip_prefix("require github.com/Azure/aad-pod-identity "))
                .unwrap_or_default()
                .trim()
                .to_string();
            cache_dir().join(format!("aad-pod-identity-{version}/bin"))
        }
    };
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::MissingPeer(p.display().to_string()))
    }
}

/// `helm`, built by `tests/cluster/build.sh --helm` for the chart tests: `$PODID_HELM`, or that
/// script's cache under `$PODID_CACHE_DIR` (default `~/.cache/podid`).
pub fn helm_binary() -> Result<PathBuf, Error> {
    let p = match std::env::var_os("PODID_HELM") {
        Some(p) => PathBuf::from(p),
        None => {
            let version = include_str!("../../cluster/helm/go.mod")
                .lines()
                .find_map(|l| l.strip_prefix("require helm.sh/helm/v3 "))
                .unwrap_or_default()
                .trim()
                .to_string();
            cache_dir().join(format!("helm-{version}/bin/helm"))
        }
    };
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::MissingBinary(p.display().to_string()))
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("PODID_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/podid")
        })
}

/// `$PODID_K8S_AUDIT_LOG`: when set, the API server writes an audit log there (JSON lines, one
/// event per request at Metadata level; [`bench::AuditCounts`] reads it), as the benchmarks count
/// the requests a controller makes.
pub const AUDIT_LOG_ENV: &str = "PODID_K8S_AUDIT_LOG";

/// `$PODID_K8S_APISERVER`: another kube-apiserver (the oldest supported Kubernetes, built by
/// tests/cluster/build.sh), with the kube-controller-manager and kube-scheduler of its release
/// from the same directory (the control plane's version-skew rule: none newer than the API
/// server) and the same etcd and kwok; `tests/run.sh` runs the compatibility selection with it
/// (docs/compatibility.md).
pub const APISERVER_ENV: &str = "PODID_K8S_APISERVER";

fn binary(name: &str) -> Result<PathBuf, Error> {
    if matches!(
        name,
        "kube-apiserver" | "kube-controller-manager" | "kube-scheduler"
    ) && let Some(apiserver) = std::env::var_os(APISERVER_ENV).filter(|p| !p.is_empty())
    {
        let p = PathBuf::from(apiserver).with_file_name(name);
        return match p.is_file() {
            true => Ok(p),
            false => Err(Error::MissingBinary(p.display().to_string())),
        };
    }
    let p = bin_dir()?.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::MissingBinary(p.display().to_string()))
    }
}

/// Fake AKS-like nodes for the second tier.
#[derive(Clone, Debug)]
pub struct NodePool {
    pub subscription: String,
    pub resource_group: String,
    /// The scale set's name; for an availability-set pool, the prefix of its VMs' names.
    pub scale_set: String,
    pub count: usize,
    /// Standalone VMs (an availability set, AKS's `vmType: standard`) instead of a scale set.
    pub standalone_vms: bool,
}

impl NodePool {
    /// `aks-<name>-12345678-vmss` in `MC_podid_test_eastus` of subscription `sub-podid-test`.
    pub fn aks(name: &str, count: usize) -> Self {
        Self {
            subscription: "00000000-0000-0000-0000-00000000beef".into(),
            resource_group: "MC_podid_test_eastus".into(),
            scale_set: format!("aks-{name}-12345678-vmss"),
            count,
            standalone_vms: false,
        }
    }

    /// `aks-<name>-12345678-<i>`: standalone VMs of an availability set, as AKS named the nodes
    /// of `vmType: standard` clusters, in the same resource group.
    pub fn availability_set(name: &str, count: usize) -> Self {
        Self {
            scale_set: format!("aks-{name}-12345678"),
            standalone_vms: true,
            ..Self::aks(name, count)
        }
    }

    /// Node name of instance `i`, as AKS names VMSS nodes (or standalone VMs).
    pub fn node_name(&self, i: usize) -> String {
        if self.standalone_vms {
            format!("{}-{i}", self.scale_set)
        } else {
            format!("{}{i:06}", self.scale_set)
        }
    }

    /// `spec.providerID` of instance `i`.
    pub fn provider_id(&self, i: usize) -> String {
        if self.standalone_vms {
            return format!(
                "azure:///subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
                self.subscription,
                self.resource_group,
                self.node_name(i)
            );
        }
        format!(
            "azure:///subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines/{i}",
            self.subscription, self.resource_group, self.scale_set
        )
    }

    /// The ARM id of the machine instance `i` runs on: its VM, or the scale set.
    pub fn machine_id(&self, i: usize) -> String {
        let kind = if self.standalone_vms {
            format!("virtualMachines/{}", self.node_name(i))
        } else {
            format!("virtualMachineScaleSets/{}", self.scale_set)
        };
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{kind}",
            self.subscription, self.resource_group
        )
    }
}

/// A running control plane.
pub struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    etcd: String,
    server: String,
    issuer: String,
    ca_pem: String,
    workloads: Mutex<bool>,
}

/// Waits (60 s at most) until etcd at `url` (`http://127.0.0.1:<port>`) answers its health check.
async fn wait_etcd(url: &str) -> Result<(), Error> {
    let http = reqwest::Client::new();
    let url = format!("{url}/health");
    process::wait_ready("etcd", 60, || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

/// Waits (120 s at most) until the kube-apiserver at `server`, whose serving certificate
/// `ca_pem` signed, is ready (`/readyz`, anonymously).
async fn wait_apiserver(server: &str, ca_pem: &str) -> Result<(), Error> {
    let anon = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem.as_bytes())
                .map_err(|e| Error::Kubeconfig(e.to_string()))?,
        )
        .build()
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let url = format!("{server}/readyz");
    process::wait_ready("kube-apiserver", 120, || {
        let (anon, url) = (anon.clone(), url.clone());
        async move {
            anon.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// The range kwok gives pod IPs from; a test can bind these addresses on loopback.
pub const POD_CIDR: &str = "127.10.0.0/16";

impl Cluster {
    /// The control plane of this test binary (etcd + kube-apiserver, podid's CRDs installed),
    /// started on first use. Panics with the reason (and the logs) if it cannot start.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| match Self::start_blocking() {
            Ok(c) => c,
            Err(e) => {
                process::dump_logs();
                panic!("starting the test control plane: {e}");
            }
        })
    }

    /// [`Cluster::shared`] for async tests: starts the control plane (if needed) without
    /// blocking the test's runtime.
    pub async fn shared_async() -> &'static Cluster {
        match tokio::task::spawn_blocking(Self::shared).await {
            Ok(c) => c,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn start_blocking() -> Result<Cluster, Error> {
        // Processes are spawned from a thread that lives as long as the test binary, because
        // PR_SET_PDEATHSIG fires when the *thread* that spawned a child exits.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("podid-testkit-keeper".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                let jobs = process::become_keeper();
                let result = rt.block_on(Self::start());
                let _ = tx.send(result);
                process::keeper_loop(&rt, jobs);
            })?;
        rx.recv()
            .unwrap_or_else(|_| Err(Error::Wait("control-plane thread died".into())))
    }

    /// Starts a new control plane (normally through [`Cluster::shared`]).
    async fn start() -> Result<Cluster, Error> {
        process::install_exit_hook();
        process::arm_watchdog();
        process::remove_stale_dirs(&std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix("podid-cluster-")
            .tempdir()?
            .keep();
        process::remove_at_exit(&dir)?;
        let pki = pki::Pki::generate(&dir)?;

        let etcd_client = process::free_port()?;
        let etcd_peer = process::free_port()?;
        process::spawn(
            "etcd",
            &binary("etcd")?,
            &[
                "--data-dir".into(),
                dir.join("etcd").display().to_string(),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &dir,
            process::Order::Last,
        )?;
        wait_etcd(&format!("http://127.0.0.1:{etcd_client}")).await?;

        let port = process::free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let issuer = server.clone();
        let p = |f: &str| dir.join(f).display().to_string();
        let mut audit = Vec::new();
        if let Some(log) = std::env::var_os(AUDIT_LOG_ENV).filter(|v| !v.is_empty()) {
            std::fs::write(dir.join("audit-policy.yaml"), bench::AUDIT_POLICY)?;
            audit = vec![
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", Path::new(&log).display()),
                "--audit-log-format=json".into(),
                "--audit-log-maxsize=0".into(),
            ];
        }
        process::spawn(
            "kube-apiserver",
            &binary("kube-apiserver")?,
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--endpoint-reconciler-type=none".into(),
                format!("--tls-cert-file={}", p("serving.crt")),
                format!("--tls-private-key-file={}", p("serving.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                "--authorization-mode=Node,RBAC".into(),
                format!("--service-account-issuer={issuer}"),
                format!("--service-account-key-file={}", p("sa.key")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                // The API server's own audience only, as a cluster's: a token for the exchange
                // audience (api://AzureADTokenExchange) must not authenticate to it
                // (tests/federated_rbac.rs).
                format!("--api-audiences={issuer}"),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--storage-media-type=application/json".into(),
                "--v=1".into(),
            ]
            .into_iter()
            .chain(audit)
            .collect::<Vec<String>>(),
            &dir,
            process::Order::First,
        )?;
        wait_apiserver(&server, &pki.ca_pem).await?;

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, pki.kubeconfig(&server))?;
        let cluster = Cluster {
            dir,
            kubeconfig,
            etcd: format!("http://127.0.0.1:{etcd_client}"),
            server,
            issuer,
            ca_pem: pki.ca_pem.clone(),
            workloads: Mutex::new(false),
        };
        let client = cluster.client().await?;
        open_oidc_discovery(&client).await?;
        install_crds(&client).await?;
        Ok(cluster)
    }

    /// A new client for the admin user (system:masters). Create one per test runtime: a
    /// kube client is tied to the tokio runtime that made it.
    pub async fn client(&self) -> Result<Client, Error> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let cfg = Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        Ok(Client::try_from(cfg)?)
    }

    /// A client acting as `user` (admin impersonation), to run code with exactly the
    /// permissions RBAC gives that user. A ServiceAccount (`system:serviceaccount:<ns>:<name>`)
    /// also gets the groups the API server would give it.
    pub async fn client_as(&self, user: &str) -> Result<Client, Error> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let mut cfg = Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        cfg.auth_info.impersonate = Some(user.to_owned());
        if let Some(sa) = user.strip_prefix("system:serviceaccount:") {
            let ns = sa.split(':').next().unwrap_or_default();
            cfg.auth_info.impersonate_groups = Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]);
        }
        Ok(Client::try_from(cfg)?)
    }

    /// Path of an admin kubeconfig (for kubectl and for podid binaries under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// An admin kubeconfig like [`Cluster::kubeconfig`] whose server is `via` (a
    /// [`proxy::CutProxy`] in front of the API server), written to `path`. The API server's
    /// certificate names 127.0.0.1, so any loopback port serves.
    pub fn kubeconfig_through(&self, via: std::net::SocketAddr, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        std::fs::write(path, text.replace(&self.server, &format!("https://{via}")))?;
        Ok(())
    }

    /// The API server's address.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        self.server
            .trim_start_matches("https://")
            .parse()
            .expect("the API server's address")
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd
    }

    /// Kills the kube-apiserver (SIGKILL), leaves it down for `down`, starts it again (same
    /// flags, same etcd) and waits until it is ready. Its clients' connections and watches break;
    /// its watch cache starts empty, so a watch resumed from a resourceVersion that etcd has
    /// compacted away gets 410 Gone ([`Cluster::compact_etcd`]). Every test of the binary sees
    /// it: keep such tests in a binary of their own.
    pub async fn restart_apiserver(&self, down: Duration) -> Result<(), Error> {
        process::restart("kube-apiserver", down).await?;
        wait_apiserver(&self.server, &self.ca_pem).await
    }

    /// Kills etcd (SIGKILL), leaves it down for `down`, starts it again on the same data and
    /// waits until it answers. The kube-apiserver stays up and fails its requests meanwhile.
    pub async fn restart_etcd(&self, down: Duration) -> Result<(), Error> {
        process::restart("etcd", down).await?;
        wait_etcd(&self.etcd).await?;
        // And the API server reaches it again.
        let client = self.client().await?;
        process::wait_ready("kube-apiserver", 60, || {
            let client = client.clone();
            async move {
                Api::<Namespace>::all(client)
                    .list(&kube::api::ListParams::default().limit(1))
                    .await
                    .is_ok()
            }
        })
        .await
    }

    /// Compacts etcd's history up to its current revision (etcd's v3 JSON gateway), as its
    /// periodic compaction does: afterwards a watch from an older resourceVersion that the API
    /// server's watch cache cannot serve gets 410 Gone. Returns the revision compacted at.
    pub async fn compact_etcd(&self) -> Result<i64, Error> {
        let http = reqwest::Client::new();
        let wait = |e: reqwest::Error| Error::Wait(format!("etcd: {e}"));
        // The revision: from a range read's header (key "\0", base64 "AA==").
        let head: serde_json::Value = http
            .post(format!("{}/v3/kv/range", self.etcd))
            .json(&serde_json::json!({"key": "AA==", "limit": 1}))
            .send()
            .await
            .map_err(wait)?
            .json()
            .await
            .map_err(wait)?;
        let revision: i64 = head["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| Error::Wait(format!("etcd range answer without a revision: {head}")))?;
        let r = http
            .post(format!("{}/v3/kv/compaction", self.etcd))
            .json(&serde_json::json!({"revision": revision.to_string(), "physical": true}))
            .send()
            .await
            .map_err(wait)?;
        if !r.status().is_success() {
            return Err(Error::Wait(format!(
                "etcd compaction at {revision}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )));
        }
        Ok(revision)
    }

    /// The control-plane processes running now (name, pid, log file).
    pub fn components(&self) -> Vec<Component> {
        process::components()
    }

    /// `https://127.0.0.1:<port>` of the apiserver.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The ServiceAccount token issuer (the apiserver itself; discovery is anonymous).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of that CA's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Directory holding PKI, kubeconfig and component logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `kubectl` against this cluster.
    pub fn kubectl(&self) -> Result<std::process::Command, Error> {
        let mut cmd = std::process::Command::new(binary("kubectl")?);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        Ok(cmd)
    }

    /// Asserts that `account` (a user name, e.g. `system:serviceaccount:default:podid-nmi`) may
    /// do none of the (verb, resource) pairs in any namespace, as `kubectl auth can-i` answers.
    pub fn assert_cannot(&self, account: &str, denied: &[(&str, &str)]) {
        for (verb, resource) in denied {
            let out = self
                .kubectl()
                .expect("kubectl")
                .args(["auth", "can-i", verb, resource, "-A", "--as", account])
                .output()
                .expect("kubectl auth can-i runs");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "no",
                "{account} may not {verb} {resource}"
            );
        }
    }

    /// `kubectl apply -f <path>` (a file or directory), into `namespace` when given. Fails with
    /// kubectl's output when it exits non-zero.
    pub fn kubectl_apply(&self, path: &Path, namespace: Option<&str>) -> Result<String, Error> {
        let mut cmd = self.kubectl()?;
        cmd.arg("apply").arg("-f").arg(path);
        if let Some(ns) = namespace {
            cmd.args(["-n", ns]);
        }
        let out = cmd.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(Error::Kubectl {
                path: path.to_path_buf(),
                output: text,
            })
        }
    }

    /// A fresh namespace `<prefix>-<random>`, with a client to use in this test. When the
    /// test panics, dropping it prints the control plane's logs.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let client = self.client().await.expect("kube client");
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("podid.dev/test".to_string(), prefix.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        // With the controllers running, pods need the namespace's default ServiceAccount (the
        // ServiceAccount admission plugin): wait for kube-controller-manager to make it.
        if *self.workloads.lock().expect("lock") {
            let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(client.clone(), &name);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while sas.get_opt("default").await.ok().flatten().is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no default ServiceAccount in {name} after 60 s: is kube-controller-manager running?"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        TestNamespace { name, client }
    }

    /// Restarts the second tier's processes (kube-controller-manager, kube-scheduler, kwok),
    /// as after control-plane faults a real cluster's would be: their watches start afresh.
    pub async fn restart_controllers(&self) -> Result<(), Error> {
        if !*self.workloads.lock().expect("lock") {
            return Ok(());
        }
        for name in ["kube-controller-manager", "kube-scheduler", "kwok"] {
            process::restart(name, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Starts the second tier once (kube-controller-manager, kube-scheduler, kwok), so
    /// Deployments roll out and pods on fake nodes become Running with 127.x IPs.
    pub async fn ensure_workloads(&self) -> Result<(), Error> {
        // Serialize starters; the flag is only set once everything runs.
        let started = *self.workloads.lock().expect("lock");
        if started {
            return Ok(());
        }
        let this: &'static Cluster = SHARED.get().expect("workloads need Cluster::shared()");
        let (tx, rx) = tokio::sync::oneshot::channel();
        process::on_keeper(Box::new(move |rt| {
            let r = rt.block_on(this.start_workloads());
            let _ = tx.send(r);
        }));
        rx.await
            .map_err(|_| Error::Wait("keeper thread gone".into()))?
    }

    async fn start_workloads(&self) -> Result<(), Error> {
        if *self.workloads.lock().expect("lock") {
            return Ok(());
        }
        let kc = self.kubeconfig.display().to_string();
        let p = |f: &str| self.dir.join(f).display().to_string();
        let kcm_port = process::free_port()?;
        process::spawn(
            "kube-controller-manager",
            &binary("kube-controller-manager")?,
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                "--leader-elect=false".into(),
                format!("--root-ca-file={}", p("ca.crt")),
                format!("--service-account-private-key-file={}", p("sa.key")),
                "--controllers=*".into(),
                "--v=1".into(),
            ],
            &self.dir,
            process::Order::Middle,
        )?;
        let sched_port = process::free_port()?;
        process::spawn(
            "kube-scheduler",
            &binary("kube-scheduler")?,
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={sched_port}"),
                "--leader-elect=false".into(),
                "--v=1".into(),
            ],
            &self.dir,
            process::Order::Middle,
        )?;
        let kwok_port = process::free_port()?;
        process::spawn(
            "kwok",
            &binary("kwok")?,
            &[
                format!("--kubeconfig={kc}"),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!("--cidr={POD_CIDR}"),
                "--node-ip=127.9.0.1".into(),
                format!("--server-address=127.0.0.1:{kwok_port}"),
            ],
            &self.dir,
            process::Order::Middle,
        )?;
        // The ServiceAccount controller creating `default` in kube-system shows the
        // controller-manager is working.
        let client = self.client().await?;
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client, "kube-system");
        let cond = await_condition(sas, "default", conditions::is_created());
        let died = process::watch_exits(&["kube-controller-manager", "kube-scheduler", "kwok"]);
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(120), cond) => {
                r.map_err(|_| Error::NotReady {
                    component: "kube-controller-manager".into(),
                    secs: 120,
                    log: self.dir.join("kube-controller-manager.log"),
                })?
                .map_err(|e| Error::Wait(e.to_string()))?;
            }
            e = died => return Err(e),
        }
        *self.workloads.lock().expect("lock") = true;
        Ok(())
    }

    /// Creates the pool's fake nodes (idempotent) and waits until kwok reports them Ready.
    pub async fn add_nodes(&self, pool: &NodePool) -> Result<Vec<Node>, Error> {
        self.ensure_workloads().await?;
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client);
        let mut out = Vec::new();
        for i in 0..pool.count {
            let name = pool.node_name(i);
            let node: Node = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/role": "agent",
                        "type": "kwok",
                        "kubernetes.azure.com/agentpool": pool.scale_set,
                    }
                },
                "spec": {"providerID": pool.provider_id(i)}
            }))
            .expect("node json");
            nodes
                .patch(
                    &name,
                    &PatchParams::apply("podid-testkit").force(),
                    &Patch::Apply(&node),
                )
                .await?;
            let ready = await_condition(nodes.clone(), &name, |n: Option<&Node>| {
                n.and_then(|n| n.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            let node = tokio::time::timeout(Duration::from_secs(60), ready)
                .await
                .map_err(|_| Error::NotReady {
                    component: format!("kwok node {name}"),
                    secs: 60,
                    log: self.dir.join("kwok.log"),
                })?
                .map_err(|e| Error::Wait(e.to_string()))?;
            out.extend(node);
        }
        if let Some(first) = out.first() {
            warm_kwok_ip_pool(&self.client().await?, first).await?;
        }
        Ok(out)
    }
}

/// A token of ServiceAccount `ns/sa` for `audience` (TokenRequest, one hour), as the kubelet
/// projects one into a pod; the ServiceAccount is created if missing.
pub async fn projected_token(
    client: &Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> Result<String, kube::Error> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).expect("json");
    match sas.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let tr: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": 3600}
    }))
    .expect("json");
    let tr: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &tr)
        .await?;
    Ok(tr.status.map(|s| s.token).unwrap_or_default())
}

/// kwok creates its pod-IP pool on first use without a lock: two pods handled at once on a
/// fresh kwok can each create a pool and both get the first address. One pod, started alone
/// before any test's pods, creates the pool; it keeps running (in kube-system, unlabelled), so
/// its address is never handed out again.
async fn warm_kwok_ip_pool(client: &Client, node: &Node) -> Result<(), Error> {
    static WARM: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    WARM.get_or_try_init(|| async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kwok-ip-pool-warmup", "labels": {"podid-testkit": "kwok-warmup"}},
            "spec": {
                "nodeName": node.metadata.name,
                "containers": [{"name": "pause", "image": "registry.invalid/pause:1"}]
            }
        }))
        .expect("pod json");
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        wait_for_running_pods(pods, "podid-testkit=kwok-warmup", 1, 60).await?;
        Ok::<_, Error>(())
    })
    .await
    .map(|_| ())
}

/// One test's namespace. Dropping it while the test panics prints the control-plane logs.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test in namespace {} failed; control-plane logs:",
                self.name
            );
            process::dump_logs();
        }
    }
}

/// Lets anyone fetch the ServiceAccount issuer's discovery document and JWKS, as an outside
/// party (Entra) must.
async fn open_oidc_discovery(client: &Client) -> Result<(), Error> {
    let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "podid-testkit:oidc-discovery-anonymous"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:service-account-issuer-discovery"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": "system:unauthenticated"}]
    }))
    .expect("crb json");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            crb.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::apply("podid-testkit").force(),
            &Patch::Apply(&crb),
        )
        .await?;
    Ok(())
}

/// Installs podid's CRDs, the variant for the server's minor ([`podid_crds::crds_for`]), and
/// waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let version = client.apiserver_version().await?;
    let minor =
        podid_crds::kube_minor(&version.minor).unwrap_or(podid_crds::SELECTABLE_FIELDS_MINOR);
    for crd in podid_crds::crds_for(minor) {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("podid-testkit").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| Error::Wait(format!("CRD {name} not Established after 30s")))?
            .map_err(|e| Error::Wait(e.to_string()))?;
    }
    Ok(())
}

/// Waits (with a watch) until `cond` holds for object `name`, failing after `secs` seconds.
pub async fn wait_for<K, C>(api: Api<K>, name: &str, secs: u64, cond: C) -> Result<Option<K>, Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    C: kube::runtime::wait::Condition<K>,
{
    tokio::time::timeout(Duration::from_secs(secs), await_condition(api, name, cond))
        .await
        .map_err(|_| Error::Wait(format!("{name}: condition not met after {secs}s")))?
        .map_err(|e| Error::Wait(e.to_string()))
}

/// Whether a pod is Running with an IP from [`POD_CIDR`] (what kwok gives pods on fake nodes).
pub fn is_running_on_fake_node(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| ip.starts_with("127.10."))
}

/// Waits (with a watch) until `count` pods matching `labels` are Running with 127.10.x.x IPs,
/// failing after `secs` seconds; returns those pods. kwok can write a pod's status twice in
/// quick succession (its ready stage may run again before it sees its own first write), each
/// time with a new IP: so the pods are returned only once no change to them has arrived for
/// [`SETTLE`], and the IPs returned are the ones that stay.
pub async fn wait_for_running_pods(
    pods: Api<Pod>,
    labels: &str,
    count: usize,
    secs: u64,
) -> Result<Vec<Pod>, Error> {
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let mut seen = std::collections::BTreeMap::new();
    let stream = watcher(pods, watcher::Config::default().labels(labels)).touched_objects();
    let wait = async {
        futures::pin_mut!(stream);
        let mut ready: Option<Vec<Pod>> = None;
        loop {
            let next = match &ready {
                // Conditions met: only a quiet period is missing.
                Some(_) => match tokio::time::timeout(SETTLE, stream.try_next()).await {
                    Ok(next) => next,
                    Err(_) => return Ok(ready.take().unwrap_or_default()),
                },
                None => stream.try_next().await,
            };
            let Some(pod) = next.map_err(|e| Error::Wait(e.to_string()))? else {
                return Err(Error::Wait("pod watch ended".into()));
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                seen.remove(&name);
            } else {
                seen.insert(name, pod);
            }
            let running: Vec<Pod> = seen
                .values()
                .filter(|p| is_running_on_fake_node(p))
                .cloned()
                .collect();
            ready = (running.len() >= count).then_some(running);
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), wait)
        .await
        .map_err(|_| {
            Error::Wait(format!(
                "{count} pods `{labels}` not Running with 127.10.x.x IPs after {secs}s"
            ))
        })?
}

/// How long pods' status must stay unchanged before [`wait_for_running_pods`] trusts it.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Stops every control-plane process now (also done automatically at exit).
pub fn stop() {
    process::stop_all();
}
