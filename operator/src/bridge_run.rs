//! The bridge at work: watches the workloads, ServiceAccounts and pod-identity objects, and on
//! each change (debounced) or interval makes one pass: the plan of the move
//! ([`podid_crds::plan::plan`]), ARM's credentials of the identities involved, the bridge's
//! decisions ([`crate::bridge::plan`]), then the writes: ServiceAccounts, federated credentials,
//! a proof of each by a real token exchange, and the `WorkloadMigration` records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use podid_azure::FederatedCredentials;
use podid_azure::token::{SystemClock, TokenSource, WorkloadIdentitySource};
use podid_crds::index::IdentityIndex;
use podid_crds::migration::{
    BRIDGE_MANAGER, MigrationCredential, MigrationIdentity, Stage, TOKEN_EXCHANGE_AUDIENCE,
    WorkloadMigration, WorkloadMigrationSpec, WorkloadMigrationStatus, WorkloadRef,
    parse_service_account_subject,
};
use podid_crds::plan::{ClusterContext, PlanInput, WorkloadObjects, issuer_problem, workloads};
use podid_crds::policy::MatchOptions;
use podid_crds::serving::{Serving, ServingSettings, binding_serving};
use podid_crds::{
    AzureIdentity, AzureIdentityBinding, AzurePodIdentityException, BRIDGE_CREDENTIALS_ANNOTATION,
    POD_LABEL, WI_CLIENT_ID_ANNOTATION, WI_TENANT_ID_ANNOTATION, WI_USE_LABEL,
};
use podid_telemetry::watch as watches;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bridge::{
    self, BridgePlan, CREDENTIAL_WRITERS, IdentityWrites, Observed, Sharing, WorkloadBridge,
};
use crate::metrics::Metrics;

/// Label podid puts on the records it writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "podid-operator";

/// Proves that a ServiceAccount's tokens are exchanged for an identity.
pub trait Prover: Send + Sync {
    /// Ok when a token of `namespace/service_account` was exchanged at Entra for `client_id`.
    fn prove<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The bridge's settings.
#[derive(Clone, Debug)]
pub struct BridgeSettings {
    /// `--oidc-issuer`, else the API server's own issuer.
    pub issuer: Option<String>,
    pub tenant_id: Option<String>,
    pub match_options: MatchOptions,
    /// Attempts of the proof of a new credential (Entra takes a while to see one).
    pub proof_attempts: u32,
    /// First wait between attempts; doubled per attempt up to eight times this.
    pub proof_interval: Duration,
    /// `--federated` and `--identity-serving`: which identities the node agent serves by token
    /// exchange (for the per-identity ServiceAccount path).
    pub serving: ServingSettings,
    /// podid-operator's own namespace, where per-identity ServiceAccounts are made (`None`: not
    /// made).
    pub namespace: Option<String>,
    /// Only these workloads, as (namespace, kind, name): a pass then writes what they need and
    /// removes nothing (`podid cutover prepare --direct`). `None`: every workload.
    pub scope: Option<BTreeSet<(String, String, String)>>,
}

/// The watched objects the bridge decides from.
#[derive(Clone)]
pub struct BridgeStores {
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
    pub replica_sets: Store<ReplicaSet>,
    /// Pods with the pod-identity label.
    pub pods: Store<Pod>,
    /// Pods already on Workload ID.
    pub workload_id_pods: Store<Pod>,
    pub service_accounts: Store<ServiceAccount>,
    pub index: Arc<RwLock<IdentityIndex>>,
    synced: [watches::Synced; 3],
}

impl BridgeStores {
    pub fn start(client: &Client, notify: Arc<Notify>, shutdown: &CancellationToken) -> Self {
        let n = || Some(notify.clone());
        let all = watcher::Config::default;
        let index = Arc::new(RwLock::new(IdentityIndex::default()));
        let synced = [
            watches::index::<AzureIdentity, _>(
                Api::all(client.clone()),
                all(),
                "azureidentities",
                index.clone(),
                n(),
                shutdown.clone(),
            ),
            watches::index::<AzureIdentityBinding, _>(
                Api::all(client.clone()),
                all(),
                "azureidentitybindings",
                index.clone(),
                n(),
                shutdown.clone(),
            ),
            watches::index::<AzurePodIdentityException, _>(
                Api::all(client.clone()),
                all(),
                "azurepodidentityexceptions",
                index.clone(),
                n(),
                shutdown.clone(),
            ),
        ];
        let s = || shutdown.clone();
        Self {
            deployments: watches::store(Api::all(client.clone()), all(), "deployments", n(), s()),
            stateful_sets: watches::store(
                Api::all(client.clone()),
                all(),
                "statefulsets",
                n(),
                s(),
            ),
            daemon_sets: watches::store(Api::all(client.clone()), all(), "daemonsets", n(), s()),
            jobs: watches::store(Api::all(client.clone()), all(), "jobs", n(), s()),
            cron_jobs: watches::store(Api::all(client.clone()), all(), "cronjobs", n(), s()),
            replica_sets: watches::store(Api::all(client.clone()), all(), "replicasets", n(), s()),
            // The plan reads a pod's metadata and spec, never its status.
            pods: watches::store_trimmed(
                Api::all(client.clone()),
                all().labels(POD_LABEL),
                "pods",
                n(),
                s(),
                |p: &mut Pod| p.status = None,
            ),
            // Only which ServiceAccounts pods on Workload ID run as.
            workload_id_pods: watches::store_trimmed(
                Api::all(client.clone()),
                all().labels(&format!("{WI_USE_LABEL}=true")),
                "workload-id-pods",
                n(),
                s(),
                |p: &mut Pod| {
                    let service_account_name =
                        p.spec.as_mut().and_then(|s| s.service_account_name.take());
                    p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                        service_account_name,
                        ..Default::default()
                    });
                    p.status = None;
                    p.metadata.annotations = None;
                },
            ),
            service_accounts: watches::store(
                Api::all(client.clone()),
                all(),
                "serviceaccounts",
                n(),
                s(),
            ),
            index,
            synced,
        }
    }

    /// Waits until every watch has listed once.
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.deployments.wait_until_ready(),
            self.stateful_sets.wait_until_ready(),
            self.daemon_sets.wait_until_ready(),
            self.jobs.wait_until_ready(),
            self.cron_jobs.wait_until_ready(),
            self.replica_sets.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.workload_id_pods.wait_until_ready(),
            self.service_accounts.wait_until_ready(),
            self.synced[0].wait(),
            self.synced[1].wait(),
            self.synced[2].wait(),
        );
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeReport {
    pub workloads: usize,
    pub credentials_created: usize,
    pub credentials_deleted: usize,
    pub service_accounts_written: usize,
    pub proven: usize,
    pub errors: usize,
}

/// The bridge: decides with [`crate::bridge::plan`] and writes through Kubernetes and ARM.
pub struct Bridge<F> {
    pub client: Client,
    pub arm: F,
    pub prover: Arc<dyn Prover>,
    pub stores: BridgeStores,
    pub settings: BridgeSettings,
    pub metrics: Metrics,
    /// (identity, issuer, subject) proven since start: not proven again.
    proven: Mutex<BTreeSet<(String, String, String)>>,
    recorder: Recorder,
}

impl<F: FederatedCredentials> Bridge<F> {
    pub fn new(
        client: Client,
        arm: F,
        prover: Arc<dyn Prover>,
        stores: BridgeStores,
        settings: BridgeSettings,
        metrics: Metrics,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "podid.dev/bridge".into(),
                instance: None,
            },
        );
        Self {
            client,
            arm,
            prover,
            stores,
            settings,
            metrics,
            proven: Mutex::default(),
            recorder,
        }
    }

    /// Passes on every change (debounced by `debounce`) and every `interval` while this replica
    /// leads (`may_write`), until shutdown.
    pub async fn run(
        &self,
        notify: Arc<Notify>,
        mut may_write: tokio::sync::watch::Receiver<bool>,
        debounce: Duration,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        tokio::select! {
            _ = self.stores.ready() => {}
            _ = shutdown.cancelled() => return,
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tick.tick() => {}
                r = may_write.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            loop {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(debounce) => break,
                    _ = shutdown.cancelled() => return,
                }
            }
            if !*may_write.borrow() {
                continue;
            }
            let report = self.pass().await;
            tracing::info!(?report, "bridge pass");
        }
    }

    /// One pass over the current cache contents.
    pub async fn pass(&self) -> BridgeReport {
        let (issuer, plan, mut report) = self.decide().await;
        let Ok(issuer) = issuer else {
            // No usable issuer: nothing goes to Azure; the records say why.
            self.write_records(&plan.workloads, &BTreeSet::new(), &mut report)
                .await;
            if self.settings.scope.is_none() {
                self.remove_stale_records(&record_keys(&plan.workloads), &mut report)
                    .await;
            }
            return report;
        };
        self.write_service_accounts(&plan, &mut report).await;
        self.write_credentials(&plan, &mut report).await;
        self.delete_service_accounts(&plan, &mut report).await;
        let ready = self.prove(&plan, &issuer, &mut report).await;
        self.write_proven_annotations(&plan, &ready, &mut report)
            .await;
        self.write_records(&plan.workloads, &ready, &mut report)
            .await;
        if self.settings.scope.is_none() {
            self.remove_stale_records(&record_keys(&plan.workloads), &mut report)
                .await;
        }
        report
    }

    /// What a pass would write, from the caches and ARM's lists of credentials (read only): the
    /// issuer (or why there is none), the bridge's plan (restricted to the scope, if any), and
    /// the reads' errors.
    pub async fn decide(&self) -> (Result<String, String>, BridgePlan, BridgeReport) {
        let mut report = BridgeReport::default();
        let issuer = self.issuer();
        let assessments = self.assess(&issuer);
        let mut plan = match &issuer {
            Err(_) => bridge::plan(&assessments, "", &Observed::default()),
            Ok(issuer) => {
                let mut observed = self.observe_kubernetes();
                self.observe_arm(&assessments, &mut observed, &mut report)
                    .await;
                let sharing = Sharing {
                    namespace: self.settings.namespace.clone(),
                    exchanged: self.exchanged(&assessments),
                };
                bridge::plan_with(&assessments, issuer, &observed, &sharing)
            }
        };
        if let Some(scope) = &self.settings.scope {
            plan = plan.restrict(scope);
        }
        report.workloads = plan.workloads.len();
        (issuer, plan, report)
    }

    /// The issuer to use, or why there is none.
    fn issuer(&self) -> Result<String, String> {
        let Some(i) = self.settings.issuer.clone().filter(|i| !i.is_empty()) else {
            return Err("no OIDC issuer is known: set --oidc-issuer".into());
        };
        match issuer_problem(&i) {
            Some(p) => Err(format!("the OIDC issuer {i} {p}")),
            None => Ok(i),
        }
    }

    /// The plan of the move over the watched objects.
    fn assess(&self, issuer: &Result<String, String>) -> Vec<podid_crds::plan::Assessment> {
        let (d, s, ds, j, cj, rs, p) = (
            self.stores.deployments.state(),
            self.stores.stateful_sets.state(),
            self.stores.daemon_sets.state(),
            self.stores.jobs.state(),
            self.stores.cron_jobs.state(),
            self.stores.replica_sets.state(),
            self.stores.pods.state(),
        );
        let objects = WorkloadObjects {
            pods: p.iter().map(|o| o.as_ref()).collect(),
            deployments: d.iter().map(|o| o.as_ref()).collect(),
            stateful_sets: s.iter().map(|o| o.as_ref()).collect(),
            daemon_sets: ds.iter().map(|o| o.as_ref()).collect(),
            jobs: j.iter().map(|o| o.as_ref()).collect(),
            cron_jobs: cj.iter().map(|o| o.as_ref()).collect(),
            replica_sets: rs.iter().map(|o| o.as_ref()).collect(),
            // The watches keep every object whole.
            ..Default::default()
        };
        let all = workloads(&objects);
        let sas = self.stores.service_accounts.state();
        let sa_refs: Vec<&ServiceAccount> = sas.iter().map(|s| s.as_ref()).collect();
        let context = ClusterContext {
            oidc_issuer: issuer.as_ref().ok().cloned(),
            issuer_problem: issuer.as_ref().err().cloned(),
            issuer_unknown: false,
            webhook_installed: true,
            kubenet: false,
            match_options: self.settings.match_options,
        };
        let index = self.stores.index.read().expect("index lock");
        podid_crds::plan::plan(&PlanInput {
            workloads: &all,
            index: &index,
            service_accounts: &sa_refs,
            context: &context,
        })
    }

    /// Identities (resource ID, lower case) the node agent serves to some workload by token
    /// exchange: per workload and identity, the most conservative serving of the bindings that
    /// grant it ([`podid_crds::serving::pod_serving`]'s rule). None without `--federated`.
    fn exchanged(&self, assessments: &[podid_crds::plan::Assessment]) -> BTreeSet<String> {
        let settings = self.settings.serving;
        if !settings.federated {
            return BTreeSet::new();
        }
        let index = self.stores.index.read().expect("index lock");
        let mut out = BTreeSet::new();
        for a in assessments.iter().filter(|a| a.uses_pod_identity) {
            let mut per_identity: BTreeMap<(&str, &str), (Serving, &str)> = BTreeMap::new();
            for i in a.identities.iter().filter(|i| !i.resource_id.is_empty()) {
                let key = podid_crds::index::ObjectKey::new(&i.namespace, &i.binding);
                let Some(b) = index.binding(&key) else {
                    continue;
                };
                let s = binding_serving(b, settings).0;
                per_identity
                    .entry((&i.namespace, &i.name))
                    .and_modify(|(old, _)| *old = old.most_conservative(s))
                    .or_insert((s, &i.resource_id));
            }
            out.extend(
                per_identity
                    .into_values()
                    .filter(|(s, _)| s.exchanges())
                    .map(|(_, id)| id.to_ascii_lowercase()),
            );
        }
        out
    }

    fn observe_kubernetes(&self) -> Observed {
        let mut o = Observed::default();
        for sa in self.stores.service_accounts.state() {
            if sa.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY) {
                o.managed_service_accounts
                    .insert((sa.namespace().unwrap_or_default(), sa.name_any()));
            }
            o.service_accounts.insert(
                (sa.namespace().unwrap_or_default(), sa.name_any()),
                sa.annotations().get(WI_CLIENT_ID_ANNOTATION).cloned(),
            );
        }
        for p in self.stores.workload_id_pods.state() {
            let sa = p
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            o.workload_id_in_use
                .insert((p.namespace().unwrap_or_default(), sa));
        }
        o
    }

    /// Lists the credentials of every user-assigned identity the workloads use, and of those
    /// that still carry a podid credential from earlier passes.
    async fn observe_arm(
        &self,
        assessments: &[podid_crds::plan::Assessment],
        observed: &mut Observed,
        report: &mut BridgeReport,
    ) {
        let mut ids: BTreeSet<String> = assessments
            .iter()
            .flat_map(|a| &a.identities)
            .filter(|i| !i.resource_id.is_empty() && i.type_ == "user-assigned-msi")
            .map(|i| i.resource_id.to_ascii_lowercase())
            .collect();
        // Read in place (no copy of the index), and let go before the ARM calls.
        ids.extend(
            self.stores
                .index
                .read()
                .expect("index lock")
                .identities()
                .filter(|i| !i.spec.resource_id.is_empty())
                .map(|i| i.spec.resource_id.to_ascii_lowercase()),
        );
        // Reads go side by side (Azure paces writes per identity, not reads).
        let reads: Vec<_> = ids
            .into_iter()
            .map(|id| self.list_credentials(id))
            .collect();
        let listed: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(CREDENTIAL_WRITERS)
            .collect()
            .await;
        for (id, result) in listed {
            match result {
                Ok(c) => {
                    observed.credentials.insert(id, c);
                }
                // The identity is gone from Azure: it needs nothing and holds nothing.
                Err(podid_azure::Error::Arm { status: 404, .. }) => {
                    tracing::debug!(identity = %id, "identity not found in ARM");
                }
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(identity = %id, error = %e, "listing federated credentials");
                }
            }
        }
    }

    async fn list_credentials(
        &self,
        id: String,
    ) -> (
        String,
        Result<Vec<podid_azure::FederatedCredential>, podid_azure::Error>,
    ) {
        let result = self.arm.list(&id).await;
        (id, result)
    }

    async fn write_service_accounts(&self, plan: &BridgePlan, report: &mut BridgeReport) {
        for w in &plan.service_accounts {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &w.namespace);
            let mut annotations = BTreeMap::new();
            if let Some(id) = &w.client_id {
                annotations.insert(WI_CLIENT_ID_ANNOTATION.to_owned(), id.clone());
                if let Some(t) = &self.settings.tenant_id {
                    annotations.insert(WI_TENANT_ID_ANNOTATION.to_owned(), t.clone());
                }
            }
            let result = if w.create {
                let sa = ServiceAccount {
                    metadata: kube::api::ObjectMeta {
                        name: Some(w.name.clone()),
                        namespace: Some(w.namespace.clone()),
                        annotations: Some(annotations),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY_LABEL.to_owned(),
                            MANAGED_BY.to_owned(),
                        )])),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                api.create(&PostParams::default(), &sa).await.map(|_| ())
            } else {
                // A merge patch adds the annotation and leaves every other field alone.
                let patch = serde_json::json!({"metadata": {"annotations": annotations}});
                api.patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => report.service_accounts_written += 1,
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(namespace = %w.namespace, name = %w.name, error = %e, "writing ServiceAccount");
                }
            }
        }
    }

    /// Removes the per-identity ServiceAccounts nothing needs any more (podid's only).
    async fn delete_service_accounts(&self, plan: &BridgePlan, report: &mut BridgeReport) {
        for (ns, name) in &plan.delete_service_accounts {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, name = %name, "per-identity ServiceAccount no longer needed: deleted")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(namespace = %ns, name = %name, error = %e, "deleting ServiceAccount");
                }
            }
        }
    }

    async fn write_credentials(&self, plan: &BridgePlan, report: &mut BridgeReport) {
        // One write at a time per identity (Azure answers 409 to concurrent writes on one
        // identity); up to CREDENTIAL_WRITERS identities side by side.
        let writes: Vec<_> = plan
            .writes_by_identity()
            .into_iter()
            .map(|(identity, writes)| self.write_identity(identity, writes))
            .collect();
        let outcomes: Vec<(usize, usize, usize)> = futures::stream::iter(writes)
            .buffer_unordered(CREDENTIAL_WRITERS)
            .collect()
            .await;
        for (created, deleted, errors) in outcomes {
            report.credentials_created += created;
            report.credentials_deleted += deleted;
            report.errors += errors;
        }
    }

    /// One identity's credential writes, one call at a time: (created, deleted, errors).
    async fn write_identity(
        &self,
        identity: &str,
        writes: IdentityWrites<'_>,
    ) -> (usize, usize, usize) {
        let (mut created, mut deleted, mut errors) = (0, 0, 0);
        for c in writes.put {
            match self.arm.put(identity, c).await {
                Ok(()) => {
                    created += 1;
                    self.metrics.bridge_credential("created");
                    tracing::info!(identity = %identity, name = %c.name, subject = %c.subject, "federated credential created");
                }
                Err(e) => {
                    errors += 1;
                    self.metrics.bridge_credential("failed");
                    tracing::warn!(identity = %identity, name = %c.name, error = %e, "creating federated credential");
                }
            }
        }
        for name in writes.delete {
            match self.arm.delete(identity, name).await {
                Ok(()) => {
                    deleted += 1;
                    self.metrics.bridge_credential("deleted");
                    tracing::info!(identity = %identity, name = %name, "federated credential no longer needed: deleted");
                }
                Err(e) => {
                    errors += 1;
                    tracing::warn!(identity = %identity, name = %name, error = %e, "deleting federated credential");
                }
            }
        }
        (created, deleted, errors)
    }

    /// Proves each credential within budget once; returns the (identity, subject) pairs proven.
    async fn prove(
        &self,
        plan: &BridgePlan,
        issuer: &str,
        report: &mut BridgeReport,
    ) -> BTreeSet<(String, String)> {
        let mut ready = BTreeSet::new();
        let mut tried = BTreeSet::new();
        let mut proofs = Vec::new();
        for w in &plan.workloads {
            for c in w.credentials.iter().filter(|c| c.within_budget) {
                let key = (
                    c.identity.clone(),
                    issuer.to_owned(),
                    c.credential.subject.clone(),
                );
                if self.proven.lock().expect("proven lock").contains(&key) {
                    ready.insert((c.identity.clone(), c.credential.subject.clone()));
                    continue;
                }
                if !tried.insert(key.clone()) {
                    continue;
                }
                // The credential's own ServiceAccount: the workload's, or the identity's.
                let Some((ns, sa)) = parse_service_account_subject(&c.credential.subject) else {
                    continue;
                };
                proofs.push(self.prove_one(key, ns, sa, &c.client_id));
            }
        }
        // Exchanges go side by side: each is a ServiceAccount token and one call to Entra.
        let outcomes: Vec<_> = futures::stream::iter(proofs)
            .buffer_unordered(CREDENTIAL_WRITERS)
            .collect()
            .await;
        for (key, result) in outcomes {
            let (identity, _, subject) = &key;
            match result {
                Ok(()) => {
                    report.proven += 1;
                    self.metrics.bridge_exchange("proven");
                    ready.insert((identity.clone(), subject.clone()));
                    self.proven.lock().expect("proven lock").insert(key);
                }
                Err(e) => {
                    report.errors += 1;
                    self.metrics.bridge_exchange("failed");
                    tracing::warn!(identity = %identity, subject = %subject, error = %e, "token exchange failed");
                }
            }
        }
        ready
    }

    /// One credential's proof, with its key (identity, issuer, subject).
    async fn prove_one(
        &self,
        key: (String, String, String),
        ns: String,
        sa: String,
        client_id: &str,
    ) -> ((String, String, String), Result<(), String>) {
        let result = self.prove_with_retry(&ns, &sa, client_id).await;
        (key, result)
    }

    async fn prove_with_retry(&self, ns: &str, sa: &str, client_id: &str) -> Result<(), String> {
        let mut last = String::new();
        let mut wait = self.settings.proof_interval;
        for attempt in 0..self.settings.proof_attempts.max(1) {
            if attempt > 0 {
                // Backoff: doubling from `proof_interval`, at most eight times it.
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(self.settings.proof_interval * 8);
            }
            match self.prover.prove(ns, sa, client_id).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Records proven client IDs on each target ServiceAccount (what the report reads).
    async fn write_proven_annotations(
        &self,
        plan: &BridgePlan,
        ready: &BTreeSet<(String, String)>,
        report: &mut BridgeReport,
    ) {
        let mut by_sa: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for w in &plan.workloads {
            let own = podid_crds::migration::service_account_subject(
                &w.namespace,
                &w.target_service_account,
            );
            // Only credentials for the workload's own ServiceAccount (not the per-identity one)
            // make it ready for the cutover.
            for c in w.credentials.iter().filter(|c| c.credential.subject == own) {
                if ready.contains(&(c.identity.clone(), c.credential.subject.clone())) {
                    by_sa
                        .entry((w.namespace.clone(), w.target_service_account.clone()))
                        .or_default()
                        .insert(c.client_id.to_ascii_lowercase());
                }
            }
        }
        let current: BTreeMap<(String, String), String> = self
            .stores
            .service_accounts
            .state()
            .iter()
            .filter_map(|sa| {
                let v = sa.annotations().get(BRIDGE_CREDENTIALS_ANNOTATION)?;
                Some(((sa.namespace()?, sa.name_any()), v.clone()))
            })
            .collect();
        for ((ns, sa), ids) in by_sa {
            let value = ids.into_iter().collect::<Vec<_>>().join(",");
            if current.get(&(ns.clone(), sa.clone())) == Some(&value) {
                continue;
            }
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
            let patch = serde_json::json!({"metadata": {"annotations": {BRIDGE_CREDENTIALS_ANNOTATION: value}}});
            if let Err(e) = api
                .patch(&sa, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                report.errors += 1;
                tracing::warn!(namespace = %ns, name = %sa, error = %e, "recording proven credentials");
            }
        }
    }

    /// One `WorkloadMigration` per workload, spec and status by server-side apply.
    async fn write_records(
        &self,
        workloads: &[WorkloadBridge],
        ready: &BTreeSet<(String, String)>,
        report: &mut BridgeReport,
    ) {
        for w in workloads {
            let api: Api<WorkloadMigration> = Api::namespaced(self.client.clone(), &w.namespace);
            let mut record = WorkloadMigration::new(
                &w.record,
                WorkloadMigrationSpec {
                    workload: WorkloadRef {
                        kind: w.kind.clone(),
                        name: w.name.clone(),
                    },
                    stage: None,
                    recorded_template: None,
                    removed_pod_identity: Vec::new(),
                },
            );
            record.metadata.labels = Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY.to_owned(),
            )]));
            let pp = PatchParams::apply(BRIDGE_MANAGER).force();
            let mut status = record_status(w, ready, self.settings.tenant_id.as_deref());
            let applied = api.patch(&w.record, &pp, &Patch::Apply(&record)).await;
            let applied = match applied {
                Ok(a) => a,
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(namespace = %w.namespace, record = %w.record, error = %e, "writing WorkloadMigration");
                    continue;
                }
            };
            status.observed_generation = applied.metadata.generation;
            keep_transition_times(&mut status, applied.status.as_ref());
            self.announce(&applied, applied.status.as_ref(), &status)
                .await;
            let body = serde_json::json!({
                "apiVersion": "podid.dev/v1alpha1",
                "kind": "WorkloadMigration",
                "status": status,
            });
            if let Err(e) = api.patch_status(&w.record, &pp, &Patch::Apply(&body)).await {
                report.errors += 1;
                tracing::warn!(namespace = %w.namespace, record = %w.record, error = %e, "writing WorkloadMigration status");
            }
        }
    }
}

impl<F: FederatedCredentials> Bridge<F> {
    /// An Event on the record when it becomes blocked (or its reason changes) and when it
    /// becomes bridged: once per change, not once per pass.
    async fn announce(
        &self,
        record: &WorkloadMigration,
        old: Option<&WorkloadMigrationStatus>,
        new: &WorkloadMigrationStatus,
    ) {
        let blocked = |s: &WorkloadMigrationStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Blocked" && c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone()))
        };
        let was = old.and_then(blocked);
        let (type_, reason, note) = match (blocked(new), new.stage) {
            (Some(now), _) if was.as_ref() != Some(&now) => (EventType::Warning, now.0, now.1),
            (None, Some(Stage::Bridged)) if old.and_then(|o| o.stage) != Some(Stage::Bridged) => (
                EventType::Normal,
                "Bridged".to_owned(),
                format!(
                    "every federated credential is proven by a token exchange; ServiceAccount {} is ready for Workload ID",
                    new.target_service_account.as_deref().unwrap_or_default()
                ),
            ),
            _ => return,
        };
        let ev = Event {
            type_,
            reason,
            note: Some(note),
            action: "Bridge".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &record.object_ref(&())).await {
            tracing::debug!(error = %e, "publishing event");
        }
    }

    /// Deletes the records of workloads that no longer use pod identity, unless the cutover has
    /// taken them past the bridge (their record is its history).
    async fn remove_stale_records(
        &self,
        current: &BTreeSet<(String, String)>,
        report: &mut BridgeReport,
    ) {
        let api: Api<WorkloadMigration> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let Ok(list) = api.list(&lp).await else {
            report.errors += 1;
            return;
        };
        for r in list {
            let ns = r.namespace().unwrap_or_default();
            let moved = r.spec.stage.is_some()
                || r.status
                    .as_ref()
                    .and_then(|s| s.stage)
                    .is_some_and(|s| s >= Stage::Switched);
            if moved || current.contains(&(ns.clone(), r.name_any())) {
                continue;
            }
            let api: Api<WorkloadMigration> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, record = %r.name_any(), "workload no longer uses pod identity: record removed")
                }
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(namespace = %ns, record = %r.name_any(), error = %e, "removing record");
                }
            }
        }
    }
}

/// The status of a workload's record, from the bridge's decisions and the proofs.
pub fn record_status(
    w: &WorkloadBridge,
    ready: &BTreeSet<(String, String)>,
    tenant_id: Option<&str>,
) -> WorkloadMigrationStatus {
    let credentials: Vec<MigrationCredential> = w
        .credentials
        .iter()
        .map(|c| MigrationCredential {
            name: c.credential.name.clone(),
            identity: c.identity.clone(),
            issuer: c.credential.issuer.clone(),
            subject: c.credential.subject.clone(),
            ready: ready.contains(&(c.identity.clone(), c.credential.subject.clone())),
        })
        .collect();
    let proven = credentials.iter().filter(|c| c.ready).count();
    let mut conditions = Vec::new();
    let problems: Vec<_> = w.blockers.iter().chain(&w.conflicts).collect();
    let all_ready = !credentials.is_empty() && proven == credentials.len();
    let stage = if !problems.is_empty() {
        Stage::Blocked
    } else if all_ready {
        Stage::Bridged
    } else {
        Stage::PodIdentity
    };
    conditions.push(condition(
        "CredentialsReady",
        all_ready,
        if all_ready { "Proven" } else { "NotProven" },
        &format!(
            "{proven} of {} federated credentials proven by a token exchange",
            credentials.len()
        ),
    ));
    if tenant_id.is_none_or(str::is_empty) && !credentials.is_empty() {
        conditions.push(condition(
            "TenantKnown",
            false,
            "NoTenant",
            "the bridge knows no Entra tenant (--tenant-id or azure.json's tenantId): the node agent cannot exchange tokens for this workload's identities",
        ));
    }
    match problems.first() {
        Some(p) => conditions.push(condition(
            "Blocked",
            true,
            &reason(p.code),
            &problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
        None => conditions.push(condition(
            "Blocked",
            false,
            "NoConflict",
            "nothing stops the move",
        )),
    }
    WorkloadMigrationStatus {
        identities: w
            .credentials
            .iter()
            .map(|c| MigrationIdentity {
                azure_identity: c.azure_identity.clone(),
                client_id: c.client_id.clone(),
                resource_id: c.identity.clone(),
                tenant_id: tenant_id.unwrap_or_default().to_owned(),
            })
            .collect(),
        target_service_account: Some(w.target_service_account.clone()),
        proven: Some(format!("{proven}/{}", credentials.len())),
        credentials,
        stage: Some(stage),
        conditions,
        observed_generation: None,
    }
}

/// A condition reason from a report code: `federated-credential-limit` → `FederatedCredentialLimit`.
fn reason(code: podid_crds::reason::ReasonCode) -> String {
    code.as_str()
        .split('-')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn record_keys(workloads: &[WorkloadBridge]) -> BTreeSet<(String, String)> {
    workloads
        .iter()
        .map(|w| (w.namespace.clone(), w.record.clone()))
        .collect()
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    }
}

/// A condition whose status did not change keeps its transition time.
fn keep_transition_times(new: &mut WorkloadMigrationStatus, old: Option<&WorkloadMigrationStatus>) {
    let Some(old) = old else { return };
    for c in &mut new.conditions {
        if let Some(o) = old
            .conditions
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

/// The production prover: a TokenRequest for the ServiceAccount (audience
/// `api://AzureADTokenExchange`, 10 minutes), exchanged at Entra for the identity
/// ([`podid_azure::token::WorkloadIdentitySource`]) and a token for `resource`.
pub struct ExchangeProver {
    client: Client,
    http: reqwest::Client,
    authority: String,
    tenant_id: String,
    resource: String,
}

impl ExchangeProver {
    pub fn new(
        client: Client,
        http: reqwest::Client,
        authority: &str,
        tenant_id: &str,
        resource: &str,
    ) -> Self {
        Self {
            client,
            http,
            authority: authority.to_owned(),
            tenant_id: tenant_id.to_owned(),
            resource: resource.to_owned(),
        }
    }

    async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String, String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let tr: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [TOKEN_EXCHANGE_AUDIENCE], "expirationSeconds": 600}
        }))
        .map_err(|e| e.to_string())?;
        let tr = api
            .create_subresource::<TokenRequest, TokenRequest>(
                "token",
                name,
                &PostParams::default(),
                &tr,
            )
            .await
            .map_err(|e| format!("TokenRequest for {namespace}/{name}: {e}"))?;
        tr.status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("TokenRequest for {namespace}/{name} returned no token"))
    }
}

impl Prover for ExchangeProver {
    fn prove<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let token = self
                .service_account_token(namespace, service_account)
                .await?;
            let authority = url::Url::parse(&self.authority)
                .map_err(|e| format!("authority {}: {e}", self.authority))?;
            let source = WorkloadIdentitySource {
                http: self.http.clone(),
                authority,
                tenant_id: self.tenant_id.clone(),
                client_id: client_id.to_owned(),
                assertion: Arc::new(move || {
                    let token = token.clone();
                    async move { Ok(token) }
                }),
                clock: Arc::new(SystemClock),
            };
            source
                .fetch(&self.resource)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// What the production bridge needs from Azure.
pub struct BridgeAzure<'a> {
    pub cloud: &'a podid_azure::CloudConfig,
    pub credential: Arc<dyn podid_azure::TokenCredential>,
    /// For the token exchange (trusting any extra CA the caller was given).
    pub http: reqwest::Client,
    /// For `--aks-cluster-id`'s issuer lookup.
    pub arm: &'a podid_azure::Arm,
}

/// The bridge as podid-operator runs it (and `podid cutover prepare --direct` for one pass):
/// watches started, federated credentials through azure_mgmt_msi one write at a time per
/// identity (a 409 from another writer retried), each proven by a real token exchange. The
/// issuer is `issuer_flag`, else the AKS cluster's, else the API server's; the tenant the
/// cloud configuration's. Returns the bridge and the notifier its watches wake.
pub async fn production_bridge(
    client: &Client,
    azure: BridgeAzure<'_>,
    issuer_flag: Option<&str>,
    aks_cluster_id: Option<&str>,
    mut settings: BridgeSettings,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<
    (
        Bridge<podid_azure::SerialCredentials<podid_azure::MsiCredentials>>,
        Arc<Notify>,
    ),
    podid_azure::Error,
> {
    let endpoints = &azure.cloud.endpoints;
    settings.issuer =
        resolve_issuer(issuer_flag, aks_cluster_id.map(|c| (azure.arm, c)), client).await;
    tracing::info!(issuer = ?settings.issuer, "bridge: OIDC issuer");
    settings.tenant_id = Some(azure.cloud.tenant_id.clone()).filter(|t| !t.is_empty());
    let notify = Arc::new(Notify::new());
    let stores = BridgeStores::start(client, notify.clone(), shutdown);
    let prover = ExchangeProver::new(
        client.clone(),
        azure.http.clone(),
        &endpoints.authority_host,
        &azure.cloud.tenant_id,
        &endpoints.arm_audience,
    );
    let mut msi = podid_azure::MsiCredentials::new(
        &endpoints.arm,
        &endpoints.arm_audience,
        azure.credential.clone(),
        azure.http.clone(),
    )?;
    let m = metrics.clone();
    msi.observer = Some(Arc::new(move |op, result, took| {
        m.observe_arm(op, result, took)
    }));
    let bridge = Bridge::new(
        client.clone(),
        podid_azure::SerialCredentials::new(msi),
        Arc::new(prover),
        stores,
        settings,
        metrics.clone(),
    );
    Ok((bridge, notify))
}

/// The OIDC issuer the bridge puts in credentials: `flag` (`--oidc-issuer`) when set; else the
/// AKS cluster's `oidcIssuerProfile.issuerURL` when `aks` (`--aks-cluster-id`) names one; else
/// the issuer the API server announces. `None` when none is known (the records then say so).
pub async fn resolve_issuer(
    flag: Option<&str>,
    aks: Option<(&podid_azure::Arm, &str)>,
    client: &Client,
) -> Option<String> {
    if let Some(i) = flag.filter(|i| !i.is_empty()) {
        return Some(i.to_owned());
    }
    if let Some((arm, cluster)) = aks {
        match arm.aks_oidc_issuer(cluster).await {
            Ok(Some(i)) => return Some(i),
            Ok(None) => tracing::warn!(
                cluster,
                "the AKS cluster has no OIDC issuer enabled (az aks update --enable-oidc-issuer)"
            ),
            Err(e) => tracing::warn!(cluster, error = %e, "reading the AKS cluster's OIDC issuer"),
        }
    }
    podid_telemetry::cluster::oidc_issuer(client).await
}
