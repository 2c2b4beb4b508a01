//! What the agent knows about its node: pods (by IP and by name), the index of identities,
//! bindings and exceptions, and assignments, read from memory. `crate::cluster` fills it from
//! watches; [`MemoryView`] is the same thing filled by hand, for tests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::future::BoxFuture;
use podid_crds::index::IdentityIndex;
use podid_crds::migration::WorkloadMigration;
use podid_crds::policy::PodFacts;
use podid_crds::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
};

/// A pod on this node, as identity matching and the built-in controller exception need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub facts: PodFacts,
    /// Name of the owning ReplicaSet, if any (for the original's built-in MIC exception).
    pub replica_set: Option<String>,
    /// `status.podIP`.
    pub ip: Option<IpAddr>,
    /// True while the pod is `Pending` or `Running`.
    pub active: bool,
    /// `spec.hostNetwork`: such a pod shares the node's IP, so its address proves nothing.
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set: the pod is going, and its IP may already be another
    /// pod's.
    pub terminating: bool,
    /// `metadata.uid` (a token for the exchange is bound to it).
    pub uid: String,
    /// `spec.serviceAccountName`, `default` when unset.
    pub service_account: String,
    /// The controlling owner (kind, name), if any: with `template_hash`, how the pod's workload
    /// record is found for federated serving.
    pub controller: Option<(String, String)>,
    /// The `pod-template-hash` label.
    pub template_hash: Option<String>,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.facts.namespace, self.facts.name)
    }
}

/// Read access to the node's view of the cluster. Every method reads memory only.
pub trait ClusterView: Send + Sync {
    /// Active pods of this node whose `status.podIP` is `ip` (terminating ones included),
    /// leaving out hostNetwork pods (any process on the node could use their address).
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodInfo>;
    /// A pod of this node by namespace and name.
    fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo>;
    /// Bindings, identities and exceptions, indexed. Read it and let go: the guard must not be
    /// held across a wait (the watches update the index in place).
    fn index(&self) -> RwLockReadGuard<'_, IdentityIndex>;
    /// AzureAssignedIdentities (of this node) for a pod.
    fn assigned_identities(&self, namespace: &str, pod: &str) -> Vec<AzureAssignedIdentity>;
    /// A WorkloadMigration by namespace and name (watched only when federated serving is on).
    fn migration(&self, namespace: &str, name: &str) -> Option<WorkloadMigration>;
}

/// The data of a Kubernetes Secret.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Reads Secrets that hold service-principal credentials.
pub trait SecretSource: Send + Sync {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, String>>;
}

/// Everything a [`ClusterView`] and [`SecretSource`] serve, held in memory and set directly.
#[derive(Clone, Debug, Default)]
pub struct MemoryState {
    pub pods: Vec<PodInfo>,
    pub exceptions: Vec<AzurePodIdentityException>,
    pub bindings: Vec<AzureIdentityBinding>,
    pub identities: Vec<AzureIdentity>,
    pub assigned: Vec<AzureAssignedIdentity>,
    pub migrations: Vec<WorkloadMigration>,
    /// Secrets by (namespace, name).
    pub secrets: BTreeMap<(String, String), SecretData>,
}

/// A [`ClusterView`] over a [`MemoryState`] that tests can change while a server runs; the
/// index is rebuilt from the state after each change.
#[derive(Clone, Debug, Default)]
pub struct MemoryView {
    state: Arc<RwLock<MemoryState>>,
    index: Arc<RwLock<IdentityIndex>>,
}

impl MemoryView {
    pub fn new(state: MemoryState) -> Self {
        let view = Self::default();
        view.update(|s| *s = state);
        view
    }

    pub fn update(&self, f: impl FnOnce(&mut MemoryState)) {
        let mut state = self.state.write().expect("memory view lock");
        f(&mut state);
        *self.index.write().expect("memory view lock") =
            IdentityIndex::from_objects(&state.bindings, &state.identities, &state.exceptions);
    }

    fn read(&self) -> RwLockReadGuard<'_, MemoryState> {
        self.state.read().expect("memory view lock")
    }
}

impl ClusterView for MemoryView {
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodInfo> {
        self.read()
            .pods
            .iter()
            .filter(|p| p.active && !p.host_network && p.ip == Some(ip))
            .cloned()
            .collect()
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.read()
            .pods
            .iter()
            .find(|p| p.facts.namespace == namespace && p.facts.name == name)
            .cloned()
    }

    fn index(&self) -> RwLockReadGuard<'_, IdentityIndex> {
        self.index.read().expect("memory view lock")
    }

    fn assigned_identities(&self, namespace: &str, pod: &str) -> Vec<AzureAssignedIdentity> {
        self.read()
            .assigned
            .iter()
            .filter(|a| a.spec.pod_namespace == namespace && a.spec.pod == pod)
            .cloned()
            .collect()
    }

    fn migration(&self, namespace: &str, name: &str) -> Option<WorkloadMigration> {
        self.read()
            .migrations
            .iter()
            .find(|m| {
                m.metadata.namespace.as_deref() == Some(namespace)
                    && m.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }
}

impl SecretSource for MemoryView {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, String>> {
        let found = self
            .read()
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// The only pod with this IP, or why there is none. An IP held by a pod being deleted names no
/// pod: the caller may be that pod or a new pod the address was given to, and serving the old
/// pod's identities to the new one would hand them to whoever got the address (the SDKs retry).
pub fn pod_for_ip(view: &dyn ClusterView, ip: IpAddr) -> Result<PodInfo, PodLookupError> {
    let mut pods = view.pods_with_ip(ip);
    if let Some(going) = pods.iter().find(|p| p.terminating) {
        return Err(PodLookupError::Terminating(ip, going.key()));
    }
    match pods.len() {
        0 => Err(PodLookupError::Unknown(ip)),
        1 => Ok(pods.remove(0)),
        _ => Err(PodLookupError::Ambiguous(
            ip,
            pods.iter().map(PodInfo::key).collect(),
        )),
    }
}

/// Why a caller's address names no single pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodLookupError {
    #[error("no pod on this node has IP {0}")]
    Unknown(IpAddr),
    #[error("failed to match pod IP {0} with {1:?}")]
    Ambiguous(IpAddr, Vec<String>),
    #[error("pod IP {0} belongs to pod {1}, which is being deleted; retry once it is gone")]
    Terminating(IpAddr, String),
}
