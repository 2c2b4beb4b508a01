//! The node's view of the cluster, kept current by watches: pods of this node only (field
//! selector `spec.nodeName=<node>`), this node's AzureAssignedIdentities (label
//! `nodename=<node>`), bindings, identities and exceptions; Secrets of service principals are
//! watched one by one, on first use, until no identity references them.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use podid_crds::index::{IdentityIndex, IndexObjects, ObjectKey};
use podid_crds::migration::WorkloadMigration;
use podid_crds::plan::controller_of;
use podid_crds::policy::PodFacts;
use podid_crds::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
    NODENAME_LABEL,
};
use podid_telemetry::watch;
use tokio_util::sync::CancellationToken;

use crate::view::{ClusterView, PodInfo, SecretData, SecretSource};

/// How long start-up waits for the first list of every watch.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// Pod facts plus what the agent needs beyond them.
pub fn pod_info(pod: &Pod) -> PodInfo {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    PodInfo {
        facts: PodFacts::from(pod),
        replica_set: pod
            .owner_references()
            .iter()
            .find(|o| o.kind.eq_ignore_ascii_case("ReplicaSet"))
            .map(|o| o.name.clone()),
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        active: matches!(phase, "Pending" | "Running"),
        host_network: pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        controller: controller_of(&pod.metadata).map(|(k, n)| (k.to_owned(), n.to_owned())),
        template_hash: pod.labels().get("pod-template-hash").cloned(),
    }
}

/// The node's pods, each converted to a [`PodInfo`] once as its watch event arrives, and found
/// by address: every token request looks its caller up here, so a lookup is a hash probe, not a
/// walk over the node's pods.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<ObjectKey, PodInfo>,
    by_ip: HashMap<IpAddr, BTreeSet<ObjectKey>>,
}

impl PodIndex {
    /// The running or pending pods, not on the host network, at `ip` (normally one; more only
    /// while the API server holds a stale pod).
    pub fn with_ip(&self, ip: IpAddr) -> Vec<PodInfo> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
            .filter(|p| p.active && !p.host_network)
            .cloned()
            .collect()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.pods.get(&ObjectKey::new(namespace, name)).cloned()
    }

    fn unlink(&mut self, key: &ObjectKey) {
        if let Some(ip) = self.pods.get(key).and_then(|p| p.ip)
            && let Some(keys) = self.by_ip.get_mut(&ip)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }
}

impl IndexObjects<Pod> for PodIndex {
    fn apply(&mut self, pod: Pod) {
        let key = ObjectKey::of(&pod);
        let info = pod_info(&pod);
        self.unlink(&key);
        if let Some(ip) = info.ip {
            self.by_ip.entry(ip).or_default().insert(key.clone());
        }
        self.pods.insert(key, info);
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.unlink(key);
        self.pods.remove(key);
    }

    fn reset(&mut self, pods: Vec<Pod>) {
        *self = Self::default();
        for p in pods {
            self.apply(p);
        }
    }
}

/// A [`ClusterView`] backed by watches: pods in a [`PodIndex`], assignments in reflector
/// stores, bindings, identities and exceptions in an index updated in place.
#[derive(Clone)]
pub struct KubeView {
    pods: Arc<RwLock<PodIndex>>,
    assigned: Option<Store<AzureAssignedIdentity>>,
    migrations: Option<Store<WorkloadMigration>>,
    index: Arc<RwLock<IdentityIndex>>,
}

impl KubeView {
    /// Starts the watches and waits until each has listed once. With `watch_assigned`
    /// (standard mode) this node's AzureAssignedIdentities are watched too; with
    /// `watch_migrations` (federated serving) every WorkloadMigration.
    pub async fn start(
        client: Client,
        node: &str,
        watch_assigned: bool,
        watch_migrations: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        // The first list is a consistent read (served from the API server's cache once it has
        // caught up): a pod started just before the agent must be known when it first calls.
        let pods = Arc::new(RwLock::new(PodIndex::default()));
        let pods_synced = watch::index::<Pod, _>(
            Api::all(client.clone()),
            watcher::Config::default()
                .fields(&format!("spec.nodeName={node}"))
                .list_semantic(watcher::ListSemantic::MostRecent),
            "pods",
            pods.clone(),
            None,
            shutdown.clone(),
        );
        let assigned = watch_assigned.then(|| {
            watch::store(
                Api::<AzureAssignedIdentity>::all(client.clone()),
                watcher::Config::default().labels(&format!("{NODENAME_LABEL}={node}")),
                "azureassignedidentities",
                None,
                shutdown.clone(),
            )
        });
        let migrations = watch_migrations.then(|| {
            watch::store(
                Api::<WorkloadMigration>::all(client.clone()),
                watcher::Config::default(),
                "workloadmigrations",
                None,
                shutdown.clone(),
            )
        });
        let index = Arc::new(RwLock::new(IdentityIndex::default()));
        let synced = [
            watch::index::<AzureIdentityBinding, _>(
                Api::all(client.clone()),
                watcher::Config::default(),
                "azureidentitybindings",
                index.clone(),
                None,
                shutdown.clone(),
            ),
            watch::index::<AzureIdentity, _>(
                Api::all(client.clone()),
                watcher::Config::default(),
                "azureidentities",
                index.clone(),
                None,
                shutdown.clone(),
            ),
            watch::index::<AzurePodIdentityException, _>(
                Api::all(client),
                watcher::Config::default(),
                "azurepodidentityexceptions",
                index.clone(),
                None,
                shutdown.clone(),
            ),
        ];
        let view = Self {
            pods,
            assigned,
            migrations,
            index,
        };
        tokio::time::timeout(SYNC_TIMEOUT, async {
            pods_synced.wait().await;
            if let Some(a) = &view.assigned {
                a.wait_until_ready().await?;
            }
            if let Some(m) = &view.migrations {
                m.wait_until_ready().await?;
            }
            for s in &synced {
                s.wait().await;
            }
            Ok::<_, reflector::store::WriterDropped>(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("the initial list of pods and identity objects did not complete within {SYNC_TIMEOUT:?}"))??;
        Ok(view)
    }
}

impl ClusterView for KubeView {
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodInfo> {
        self.pods.read().expect("pod index lock").with_ip(ip)
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.pods
            .read()
            .expect("pod index lock")
            .get(namespace, name)
    }

    fn index(&self) -> RwLockReadGuard<'_, IdentityIndex> {
        self.index.read().expect("index lock")
    }

    fn assigned_identities(&self, namespace: &str, pod: &str) -> Vec<AzureAssignedIdentity> {
        self.assigned
            .as_ref()
            .map(|s| {
                s.state()
                    .iter()
                    .filter(|a| a.spec.pod_namespace == namespace && a.spec.pod == pod)
                    .map(|a| (**a).clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn migration(&self, namespace: &str, name: &str) -> Option<WorkloadMigration> {
        self.migrations
            .as_ref()?
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .map(|m| (*m).clone())
    }
}

/// One Secret's watch: its store, when it started, and what ends it.
struct SecretWatch {
    store: Store<Secret>,
    started: std::time::Instant,
    stop: CancellationToken,
}

/// The open Secret watches by (namespace, name).
type SecretWatches = HashMap<(String, String), SecretWatch>;

/// Service-principal Secrets, each watched by name (field selector `metadata.name`) from its
/// first use, so a request reads memory and a rotated secret is seen at once. While a watch is
/// not (yet) listing — first use, RBAC missing, API server away — a request reads the Secret
/// with one GET instead of waiting, so a permission error is answered at once and counted as
/// the original counts it (`kubernetes_api_operations_errors_count{operation_type="get_secret"}`).
/// At most `max_watches` are open; beyond that a Secret is read with a GET per fetch. A watch
/// is closed once no AzureIdentity references its Secret ([`SecretCache::close_unreferenced`]).
#[derive(Clone)]
pub struct SecretCache {
    client: Client,
    watches: Arc<Mutex<SecretWatches>>,
    shutdown: CancellationToken,
    metrics: Option<crate::metrics::Metrics>,
    watch: bool,
    max_watches: usize,
}

/// How long a request waits for a new Secret watch before reading the Secret directly.
const SECRET_WATCH_GRACE: Duration = Duration::from_secs(2);

/// Default of `--max-secret-watches`.
pub const DEFAULT_MAX_SECRET_WATCHES: usize = 100;

/// How often the agent closes the watches of Secrets no AzureIdentity references.
pub const SECRET_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl SecretCache {
    pub fn new(client: Client, shutdown: CancellationToken) -> Self {
        Self {
            client,
            watches: Arc::default(),
            shutdown,
            metrics: None,
            watch: true,
            max_watches: DEFAULT_MAX_SECRET_WATCHES,
        }
    }

    /// Reads each Secret with a GET per fetch instead of watching it (`--watch-secrets=false`).
    pub fn without_watches(mut self) -> Self {
        self.watch = false;
        self
    }

    /// Keeps at most `max` watches open (`--max-secret-watches`); 0 watches none.
    pub fn with_max_watches(mut self, max: usize) -> Self {
        self.max_watches = max;
        self
    }

    /// The Secrets watched now.
    pub fn watched(&self) -> BTreeSet<(String, String)> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SecretWatches> {
        self.watches.lock().expect("secret cache lock")
    }

    /// Closes the watches of Secrets not in `referenced` (their reflector tasks end and their
    /// API connections close); returns how many were closed.
    pub fn close_unreferenced(&self, referenced: &BTreeSet<(String, String)>) -> usize {
        let mut watches = self.lock();
        let before = watches.len();
        watches.retain(|key, w| {
            let keep = referenced.contains(key);
            if !keep {
                w.stop.cancel();
            }
            keep
        });
        before - watches.len()
    }

    /// Every `every` until shutdown, closes the watches of Secrets that no AzureIdentity in
    /// `view` references (an identity deleted or pointed at another Secret).
    pub fn close_unreferenced_every(
        &self,
        view: Arc<dyn crate::view::ClusterView>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cache.shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let referenced = crate::entra::referenced_secrets(view.index().identities());
                        let closed = cache.close_unreferenced(&referenced);
                        if closed > 0 {
                            tracing::info!(closed, open = cache.lock().len(), "closed the watches of Secrets no AzureIdentity references");
                        }
                    }
                }
            }
        })
    }

    /// Counts failed direct reads in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn get_directly(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, String> {
        match Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
        {
            Ok(secret) => Ok(secret.map(secret_data)),
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.kubernetes_error("get_secret");
                }
                Err(match e {
                    kube::Error::Api(s) => {
                        format!("reading secret {namespace}/{name}: {}", s.message)
                    }
                    e => format!("reading secret {namespace}/{name}: {e}"),
                })
            }
        }
    }
}

fn secret_data(s: Secret) -> SecretData {
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

impl SecretSource for SecretCache {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, String>> {
        Box::pin(async move {
            if !self.watch {
                return self.get_directly(namespace, name).await;
            }
            let key = (namespace.to_owned(), name.to_owned());
            let watched = {
                let mut watches = self.lock();
                if !watches.contains_key(&key) && watches.len() >= self.max_watches {
                    None
                } else {
                    let w = watches.entry(key).or_insert_with(|| {
                        let stop = self.shutdown.child_token();
                        let store = watch::store(
                            Api::<Secret>::namespaced(self.client.clone(), namespace),
                            watcher::Config::default().fields(&format!("metadata.name={name}")),
                            "secret",
                            None,
                            stop.clone(),
                        );
                        SecretWatch {
                            store,
                            started: std::time::Instant::now(),
                            stop,
                        }
                    });
                    Some((w.store.clone(), w.started))
                }
            };
            let Some((store, started)) = watched else {
                tracing::debug!(
                    max = self.max_watches,
                    "secret watches at their limit: reading the Secret directly"
                );
                return self.get_directly(namespace, name).await;
            };
            // Only the first requests wait for a new watch; once its grace is over, a watch
            // that still cannot list (e.g. RBAC grants `get` only, as the original's role does)
            // costs one GET per request, no wait.
            let grace = SECRET_WATCH_GRACE.saturating_sub(started.elapsed());
            match tokio::time::timeout(grace, store.wait_until_ready()).await {
                Ok(Ok(())) => Ok(store
                    .get(&reflector::ObjectRef::new(name).within(namespace))
                    .map(|s| secret_data((*s).clone()))),
                _ => self.get_directly(namespace, name).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str, phase: &str, host_network: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"aadpodidbinding": "web"}},
            "spec": {"hostNetwork": host_network, "containers": []},
            "status": {"phase": phase, "podIP": ip},
        }))
        .unwrap()
    }

    fn names(pods: Vec<PodInfo>) -> Vec<String> {
        pods.iter().map(PodInfo::key).collect()
    }

    #[test]
    fn pods_are_found_by_address_and_follow_their_changes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut index = PodIndex::default();
        index.reset(vec![
            pod("a", "web", "10.0.0.1", "Running", false),
            pod("a", "done", "10.0.0.2", "Succeeded", false),
            pod("kube-system", "proxy", "10.0.0.9", "Running", true),
        ]);
        assert_eq!(names(index.with_ip(ip("10.0.0.1"))), ["a/web"]);
        // A finished pod and a host-network pod prove nothing by their address.
        assert!(index.with_ip(ip("10.0.0.2")).is_empty());
        assert!(index.with_ip(ip("10.0.0.9")).is_empty());
        assert_eq!(index.get("a", "done").map(|p| p.active), Some(false));

        // The finished pod's address is reused: the new pod answers for it.
        index.apply(pod("b", "api", "10.0.0.2", "Pending", false));
        assert_eq!(names(index.with_ip(ip("10.0.0.2"))), ["b/api"]);

        // A pod given a new address is no longer found at its old one.
        index.apply(pod("a", "web", "10.0.0.3", "Running", false));
        assert!(index.with_ip(ip("10.0.0.1")).is_empty());
        assert_eq!(names(index.with_ip(ip("10.0.0.3"))), ["a/web"]);

        index.delete(&ObjectKey::new("a", "web"));
        assert!(index.with_ip(ip("10.0.0.3")).is_empty());
        assert!(index.get("a", "web").is_none());
        assert!(
            !index.by_ip.contains_key(&ip("10.0.0.1")),
            "no empty entries left"
        );

        // A relist replaces everything.
        index.reset(vec![pod("c", "new", "10.0.0.1", "Running", false)]);
        assert!(index.get("b", "api").is_none());
        assert_eq!(names(index.with_ip(ip("10.0.0.1"))), ["c/new"]);
    }
}
