//! The real Azure Workload ID mutating webhook (the version `tests/peers/azure-workload-identity`
//! names, built by `tests/peers/build-workload-identity.sh`) running beside the test control
//! plane, registered as its Helm chart registers it — with a `url` on loopback and a test CA in
//! place of the chart's in-cluster Service.
//!
//! ```no_run
//! # async fn t() -> Result<(), podid_testkit::Error> {
//! use podid_testkit::{Cluster, webhook::WorkloadIdentityWebhook};
//! let cluster = Cluster::shared_async().await;
//! let mut wh = WorkloadIdentityWebhook::start(cluster, "tenant-id").await?;
//! // pods labelled azure.workload.identity/use=true are mutated now
//! wh.stop().await?; // the configuration stays: labelled pods are refused (fail closed)
//! drop(wh); // the configuration is deleted
//! # Ok(()) }
//! ```
//!
//! The webhook listens on [`PORT`] on every interface (v1.6.0 has no flag to move it), and only
//! one configuration named [`CONFIGURATION`] exists per cluster: an instance holds [`lock`] (one
//! webhook per test binary at a time) and a file lock on the port (one per machine), so
//! concurrent users wait for each other.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::builders::obj;
use crate::{Cluster, Error, process};

/// Name of the MutatingWebhookConfiguration, as the chart names it (the webhook's own cert
/// rotator looks it up by this name).
pub const CONFIGURATION: &str = "azure-wi-webhook-mutating-webhook-configuration";
/// Name of the webhook in that configuration; the API server names it in its errors.
pub const WEBHOOK: &str = "mutation.azure-workload-identity.io";
/// Path the webhook serves pod mutation on.
pub const PATH: &str = "/mutate-v1-pod";
/// Pod label the configuration's objectSelector matches (value `"true"`).
pub const USE_LABEL: &str = "azure.workload.identity/use";
/// ServiceAccount annotation carrying the client id injected as `AZURE_CLIENT_ID`.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// ServiceAccount annotation overriding the webhook's tenant for its pods.
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Audience of the projected ServiceAccount token the webhook adds.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
/// The webhook server's port: controller-runtime's default, on all interfaces; the webhook has
/// no flag to change it.
pub const PORT: u16 = 9443;

/// Namespace and ServiceAccount of the dry-run pod that proves an instance mutates.
const PROBE: &str = "podid-wi-webhook-probe";

static LOCK: LazyLock<Arc<Mutex<()>>> = LazyLock::new(|| Arc::new(Mutex::new(())));
static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// The process-wide lock every [`WorkloadIdentityWebhook`] holds while it lives. A test that
/// must run while no webhook configuration is registered in this binary can hold it too (and
/// must not start a webhook while holding it).
pub async fn lock() -> OwnedMutexGuard<()> {
    LOCK.clone().lock_owned().await
}

/// The Azure Workload ID version the wrapper module requires (e.g. `v1.6.0`).
pub fn version() -> &'static str {
    include_str!("../../peers/azure-workload-identity/go.mod")
        .lines()
        .find_map(|l| l.strip_prefix("require github.com/Azure/azure-workload-identity "))
        .unwrap_or_default()
        .trim()
}

/// A binary (`webhook`, `azwi`) of Azure Workload ID built by
/// `tests/peers/build-workload-identity.sh`: from `$PODID_WI_BIN`, or that script's cache under
/// `$PODID_CACHE_DIR` (default `~/.cache/podid`).
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let dir = match std::env::var_os("PODID_WI_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => crate::cache_dir().join(format!("azure-workload-identity-{}/bin", version())),
    };
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::MissingWorkloadIdentity(p.display().to_string()))
    }
}

/// A running webhook process and its registration. Dropping it deletes the configuration and
/// kills the process.
pub struct WorkloadIdentityWebhook {
    child: Option<Child>,
    name: String,
    log: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    _port: PortLock,
    _guard: OwnedMutexGuard<()>,
}

impl WorkloadIdentityWebhook {
    /// Writes a serving certificate for 127.0.0.1, starts the webhook with `AZURE_TENANT_ID`
    /// `tenant_id` and the cluster's admin kubeconfig, registers [`CONFIGURATION`] as the chart
    /// does (CREATE of v1 pods labelled [`USE_LABEL`]`=true`, failurePolicy Fail,
    /// reinvocationPolicy IfNeeded, sideEffects None, admissionReviewVersions v1 and v1beta1)
    /// pointing at `https://127.0.0.1:9443/mutate-v1-pod`, and returns once the webhook is ready
    /// and a dry-run pod comes back mutated.
    pub async fn start(cluster: &Cluster, tenant_id: &str) -> Result<Self, Error> {
        let bin = binary("webhook")?;
        let kubectl = crate::binary("kubectl")?;
        let guard = lock().await;
        let port = PortLock::acquire(Duration::from_secs(300)).await?;

        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let name = format!("wi-webhook-{n}");
        let certs = cluster.dir().join(&name);
        std::fs::create_dir_all(&certs)?;
        let (ca, cert, key) =
            crate::pki::serving_pair("azure-wi-webhook", &["127.0.0.1", "localhost"])?;
        std::fs::write(certs.join("tls.crt"), cert)?;
        std::fs::write(certs.join("tls.key"), key)?;

        let health = process::free_port()?;
        let log = cluster.dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("AZURE_TENANT_ID", tenant_id)
            .arg(format!("--webhook-cert-dir={}", certs.display()))
            .arg("--disable-cert-rotation")
            .arg(format!("--health-addr=127.0.0.1:{health}"))
            // "0" turns controller-runtime's metrics server off.
            .arg("--metrics-addr=0")
            .arg("--log-level=debug")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        // SAFETY: prctl and getppid are async-signal-safe and touch only the child. The webhook
        // dies with the thread that started it, so a killed test leaves nothing on the port.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        tracing::debug!(pid = child.id(), log = %log.display(), "started the Workload ID webhook");
        let mut wh = WorkloadIdentityWebhook {
            child: Some(child),
            name,
            log,
            kubectl,
            kubeconfig: cluster.kubeconfig().to_path_buf(),
            _port: port,
            _guard: guard,
        };

        let http = reqwest::Client::new();
        let readyz = format!("http://127.0.0.1:{health}/readyz");
        wh.poll(60, "readyz", || {
            let http = http.clone();
            let url = readyz.clone();
            async move {
                match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("readyz answered {}", r.status())),
                    Err(e) => Err(format!("readyz: {e}")),
                }
            }
        })
        .await?;

        let client = cluster.client().await?;
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(
                CONFIGURATION,
                &PatchParams::apply("podid-testkit").force(),
                &Patch::Apply(configuration(&ca)),
            )
            .await?;

        let pods = probe_pods(&client).await?;
        let tenant = tenant_id.to_string();
        wh.poll(60, "a dry-run pod to come back mutated", || {
            let pods = pods.clone();
            let tenant = tenant.clone();
            async move {
                let pod = pods
                    .create(
                        &PostParams {
                            dry_run: true,
                            ..Default::default()
                        },
                        &probe_pod(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let env = pod
                    .spec
                    .and_then(|s| s.containers.into_iter().next())
                    .and_then(|c| c.env)
                    .unwrap_or_default();
                if env
                    .iter()
                    .any(|e| e.name == "AZURE_TENANT_ID" && e.value.as_deref() == Some(&tenant))
                {
                    Ok(())
                } else {
                    Err(format!("dry-run pod not mutated; its env: {env:?}"))
                }
            }
        })
        .await?;
        Ok(wh)
    }

    /// Stops the webhook process (and waits for it), leaving the configuration registered: the
    /// API server then refuses labelled pods, as the chart's failurePolicy Fail says.
    pub async fn stop(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// The webhook's log (JSON lines).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Polls `check` with backoff for up to `secs`, failing fast if the webhook exits.
    async fn poll<F, Fut>(&mut self, secs: u64, what: &str, check: F) -> Result<(), Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut delay = Duration::from_millis(50);
        loop {
            let last = match check().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(Error::Exited {
                    component: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Wait(format!(
                    "{}: no {what} after {secs}s (last: {last}); its log: {}",
                    self.name,
                    self.log.display()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

impl Drop for WorkloadIdentityWebhook {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} ({}) -----", self.name, self.log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
        let deleted = std::process::Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                CONFIGURATION,
                "--ignore-not-found",
            ])
            .output();
        match deleted {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "deleting {CONFIGURATION}: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("deleting {CONFIGURATION}: {e}"),
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap it before the port lock goes, so the next instance can bind the port.
            for _ in 0..250 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The chart's MutatingWebhookConfiguration, with a loopback `url` and `ca` in place of its
/// in-cluster Service.
fn configuration(ca: &str) -> MutatingWebhookConfiguration {
    use base64::Engine as _;
    obj(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": CONFIGURATION,
            "labels": {"azure-workload-identity.io/system": "true"},
        },
        "webhooks": [{
            "name": WEBHOOK,
            "admissionReviewVersions": ["v1", "v1beta1"],
            "clientConfig": {
                "url": format!("https://127.0.0.1:{PORT}{PATH}"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
            },
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "namespaceSelector": {},
            "objectSelector": {"matchLabels": {USE_LABEL: "true"}},
            "reinvocationPolicy": "IfNeeded",
            "rules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
            }],
            "sideEffects": "None",
        }],
    }))
}

/// The probe namespace's pods, after making sure it and its annotated ServiceAccount exist.
async fn probe_pods(client: &kube::Client) -> Result<Api<Pod>, Error> {
    let ns: Namespace = obj(json!({"metadata": {"name": PROBE}}));
    let sa: ServiceAccount = obj(json!({"metadata": {
        "name": PROBE,
        "namespace": PROBE,
        "annotations": {CLIENT_ID_ANNOTATION: "00000000-0000-0000-0000-000000000000"},
    }}));
    let apply = PatchParams::apply("podid-testkit").force();
    Api::<Namespace>::all(client.clone())
        .patch(PROBE, &apply, &Patch::Apply(&ns))
        .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), PROBE)
        .patch(PROBE, &apply, &Patch::Apply(&sa))
        .await?;
    Ok(Api::namespaced(client.clone(), PROBE))
}

fn probe_pod() -> Pod {
    obj(json!({
        "metadata": {"name": PROBE, "labels": {USE_LABEL: "true"}},
        "spec": {
            "serviceAccountName": PROBE,
            "containers": [{"name": "probe", "image": "probe"}],
        },
    }))
}

/// An exclusive lock on [`PORT`] among processes on this machine (a `flock` on a file in the
/// temporary directory), released when dropped.
struct PortLock {
    _file: std::fs::File,
}

impl PortLock {
    async fn acquire(wait: Duration) -> Result<Self, Error> {
        let path = std::env::temp_dir().join(format!("podid-wi-webhook-port-{PORT}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            use std::os::fd::AsRawFd as _;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(PortLock { _file: file });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Wait(format!(
                    "port {PORT} still locked by another test process after {}s ({})",
                    wait.as_secs(),
                    path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
