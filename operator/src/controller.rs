//! The controller's I/O edge: watches (reflectors) of pods, nodes, identities, bindings and
//! AzureAssignedIdentities; a debounced loop that turns a burst of events into one pass; and the
//! pass itself: read the targets that have work, plan, then apply the plan with at most one ARM
//! write per scale set or VM.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use podid_azure::{IdentityState, NodePoolIdentities};
use podid_crds::index::IdentityIndex;
use podid_crds::provider::AssignmentTarget;
use podid_crds::{
    ASSIGNED_IDENTITY_FINALIZER, AssignedIdentityState, AzureAssignedIdentity, AzureIdentity,
    AzureIdentityBinding, POD_LABEL,
};
use podid_telemetry::watch as watches;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::planner::{
    AssignmentPlanner, NodeInfo, ObjectKey, Plan, PodInfo, Skip, TargetWrite, World, trim_pod,
};

/// The watched objects: pods, nodes and assignments in reflector stores, bindings and
/// identities in an index updated in place.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub index: Arc<RwLock<IdentityIndex>>,
    pub assigned: Store<AzureAssignedIdentity>,
    indexed: [watches::Synced; 2],
}

impl Stores {
    /// Starts the watches; every event wakes `notify`.
    pub fn start(client: &Client, notify: Arc<Notify>, shutdown: &CancellationToken) -> Self {
        let index = Arc::new(RwLock::new(IdentityIndex::default()));
        let indexed = [
            watches::index::<AzureIdentity, _>(
                Api::all(client.clone()),
                watcher::Config::default(),
                "azureidentities",
                index.clone(),
                Some(notify.clone()),
                shutdown.clone(),
            ),
            watches::index::<AzureIdentityBinding, _>(
                Api::all(client.clone()),
                watcher::Config::default(),
                "azureidentitybindings",
                index.clone(),
                Some(notify.clone()),
                shutdown.clone(),
            ),
        ];
        Self {
            // Only pods carrying the label can be bound (the original lists the same set).
            pods: watches::store_trimmed(
                Api::all(client.clone()),
                watcher::Config::default().labels(POD_LABEL),
                "pods",
                Some(notify.clone()),
                shutdown.clone(),
                trim_pod,
            ),
            nodes: watches::store(
                Api::all(client.clone()),
                watcher::Config::default(),
                "nodes",
                Some(notify.clone()),
                shutdown.clone(),
            ),
            index,
            assigned: watches::store(
                Api::all(client.clone()),
                watcher::Config::default(),
                "azureassignedidentities",
                Some(notify),
                shutdown.clone(),
            ),
            indexed,
        }
    }

    /// Waits until every watch has listed once.
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.pods.wait_until_ready(),
            self.nodes.wait_until_ready(),
            self.indexed[0].wait(),
            self.indexed[1].wait(),
            self.assigned.wait_until_ready(),
        );
    }

    fn index(&self) -> RwLockReadGuard<'_, IdentityIndex> {
        self.index.read().expect("index lock")
    }
}

/// Loop settings.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// Quiet time after an event before a pass.
    pub debounce: Duration,
    /// Full passes (re-read every target) at this interval.
    pub full_interval: Duration,
    /// First retry delay after a failed pass (doubled up to five minutes).
    pub retry_base: Duration,
}

/// One controller: plans with the stores' contents and applies through Kubernetes and ARM.
pub struct Controller<A> {
    pub client: Client,
    pub arm: A,
    pub planner: AssignmentPlanner,
    pub stores: Stores,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// True once the caches synced and a pass may run (for `/readyz`).
    pub ready: Arc<AtomicBool>,
    /// At most this many AzureAssignedIdentity writes in flight at once (`--createDeleteBatch`).
    pub batch: usize,
    /// Per binding (`namespace/name`), the serving issue last told (logged and as an Event):
    /// each is told when it appears or changes, not on every pass.
    serving_issues: Mutex<BTreeMap<String, String>>,
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub reads: usize,
    pub writes: usize,
    pub errors: usize,
    pub did_work: bool,
}

impl<A: NodePoolIdentities> Controller<A> {
    pub fn new(
        client: Client,
        arm: A,
        planner: AssignmentPlanner,
        stores: Stores,
        metrics: Metrics,
        reporter: &str,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "aadpodidentity.k8s.io".into(),
                instance: Some(reporter.to_string()),
            },
        );
        Self {
            client,
            arm,
            planner,
            stores,
            metrics,
            recorder,
            ready: Arc::new(AtomicBool::new(false)),
            batch: 20,
            serving_issues: Mutex::default(),
        }
    }

    /// Runs passes until `shutdown` ([`run_passes`]).
    pub async fn run(
        &self,
        notify: Arc<Notify>,
        may_write: watch::Receiver<bool>,
        settings: LoopSettings,
        shutdown: CancellationToken,
    ) {
        run_passes(
            self.stores.ready(),
            &self.ready,
            &self.metrics,
            notify,
            may_write,
            settings,
            shutdown,
            |full| self.pass(full),
        )
        .await
    }

    /// One pass over the current cache contents.
    pub async fn pass(&self, full: bool) -> PassReport {
        let started = Instant::now();
        let pods: Vec<PodInfo> = self
            .stores
            .pods
            .state()
            .iter()
            .map(|p| PodInfo::from(p.as_ref()))
            .collect();
        let nodes: Vec<NodeInfo> = self
            .stores
            .nodes
            .state()
            .iter()
            .map(|n| NodeInfo::from(n.as_ref()))
            .collect();
        let assigned = self.stores.assigned.state();
        // The index is read in place, never across a wait: targets under one read, the ARM
        // reads without it, the plan under another (an object changed meanwhile whose target
        // was not read is left for the next pass, which its event triggers).
        let targets = self.planner.targets(
            World {
                pods: &pods,
                nodes: &nodes,
                index: &self.stores.index(),
                assigned: &assigned,
            },
            full,
        );
        let mut report = PassReport::default();
        let current = read_targets(&self.arm, targets, &mut report).await.0;
        let plan = self.planner.plan(
            World {
                pods: &pods,
                nodes: &nodes,
                index: &self.stores.index(),
                assigned: &assigned,
            },
            &current,
        );
        log_plan(&plan, full);
        self.tell_serving_issues().await;
        report.did_work = !plan.is_empty();
        self.apply(&plan, &assigned, &current, &mut report).await;
        let result = if report.errors == 0 { "ok" } else { "error" };
        self.metrics
            .observe_pass(result, started.elapsed(), report.did_work);
        report
    }

    /// Applies the plan in its order: create the records, write each target once, then the
    /// actions gated on those writes (mark records assigned, replace changed ones, remove
    /// released ones). Failures are counted in `r`.
    async fn apply(
        &self,
        plan: &Plan,
        existing: &[Arc<AzureAssignedIdentity>],
        current: &BTreeMap<AssignmentTarget, IdentityState>,
        r: &mut PassReport,
    ) {
        let by_key: BTreeMap<ObjectKey, &AzureAssignedIdentity> =
            existing.iter().map(|a| (key(a), a.as_ref())).collect();
        let created = self.create_records(plan, r).await;
        let failed: std::collections::BTreeSet<ObjectKey> = plan
            .create
            .iter()
            .map(|c| key(&c.item))
            .filter(|k| !created.contains_key(k))
            .collect();
        let backed = plan.writes_backed(&failed, existing);
        let writes = write_targets(&self.arm, &backed, current, r).await;
        self.mark_assigned(plan, &created, &by_key, &writes, r)
            .await;
        self.update_records(plan, &writes, r).await;
        self.remove_released(plan, &by_key, &writes, r).await;
    }

    /// Posts the new records, `batch` at a time; returns those created, by key.
    async fn create_records(
        &self,
        plan: &Plan,
        r: &mut PassReport,
    ) -> BTreeMap<ObjectKey, AzureAssignedIdentity> {
        // The report is summed afterwards.
        let created: BTreeMap<ObjectKey, AzureAssignedIdentity> = futures::stream::iter(
            plan.create
                .iter()
                .map(|c| async move {
                    let obj = &c.item;
                    let started = std::time::Instant::now();
                    match self.api(obj).create(&PostParams::default(), obj).await {
                        Ok(o) => {
                            self.metrics
                                .assigned_identity_addition_duration
                                .observe(started.elapsed().as_secs_f64());
                            self.metrics.assigned_identity_addition_count.inc();
                            if c.after.is_empty() {
                                self.applied_event(obj).await;
                            }
                            Some((key(obj), o))
                        }
                        Err(e) => {
                            self.metrics.kubernetes_error("assigned_identity_addition");
                            self.assignment_failed(
                                obj,
                                &format!(
                                    "failed to create AzureAssignedIdentity {}: {e}",
                                    key(obj)
                                ),
                            )
                            .await;
                            None
                        }
                    }
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.batch.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
        r.errors += plan.create.len() - created.len();
        created
    }

    /// Sets status `Assigned` on each record whose writes succeeded (`batch` at a time); one
    /// whose write failed gets the failure told instead.
    async fn mark_assigned(
        &self,
        plan: &Plan,
        created: &BTreeMap<ObjectKey, AzureAssignedIdentity>,
        by_key: &BTreeMap<ObjectKey, &AzureAssignedIdentity>,
        writes: &Writes<'_>,
        r: &mut PassReport,
    ) {
        let marks: Vec<bool> = futures::stream::iter(
            plan.mark_assigned
                .iter()
                .map(|m| async move {
                    let obj = created
                        .get(&m.item)
                        .or_else(|| by_key.get(&m.item).copied());
                    let Some(obj) = obj else { return true };
                    if !writes.passed(&m.after) {
                        if let Some(e) = writes.failure(&m.after) {
                            self.assignment_failed(
                                obj,
                                &format!("identity not assigned for {}: {e}", m.item),
                            )
                            .await;
                        }
                        return true;
                    }
                    let ok = self
                        .set_status(&m.item, AssignedIdentityState::Assigned)
                        .await;
                    if ok {
                        self.applied_event(obj).await;
                    }
                    ok
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.batch.max(1))
        .collect()
        .await;
        r.errors += marks.iter().filter(|ok| !**ok).count();
    }

    /// Replaces each changed record whose writes succeeded, one after the other; one whose write
    /// failed gets the failure told instead.
    async fn update_records(&self, plan: &Plan, writes: &Writes<'_>, r: &mut PassReport) {
        for u in &plan.update {
            if !writes.passed(&u.after) {
                if let Some(e) = writes.failure(&u.after) {
                    self.assignment_failed(
                        &u.item,
                        &format!("identity not assigned for {}: {e}", key(&u.item)),
                    )
                    .await;
                }
                continue;
            }
            let started = std::time::Instant::now();
            match self
                .api(&u.item)
                .replace(&u.item.name_any(), &PostParams::default(), &u.item)
                .await
            {
                Ok(_) => {
                    self.metrics
                        .assigned_identity_update_duration
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.assigned_identity_update_count.inc();
                    self.applied_event(&u.item).await;
                }
                Err(e) => {
                    r.errors += 1;
                    self.metrics.kubernetes_error("assigned_identity_update");
                    self.binding_event(
                        &u.item,
                        EventType::Warning,
                        "binding apply error",
                        &format!(
                            "failed to update AzureAssignedIdentity {}: {e}",
                            key(&u.item)
                        ),
                    )
                    .await;
                }
            }
        }
    }

    /// Deletes the released records whose writes succeeded (`batch` at a time); one whose
    /// identity a write removed is first marked `Unassigned`.
    async fn remove_released(
        &self,
        plan: &Plan,
        by_key: &BTreeMap<ObjectKey, &AzureAssignedIdentity>,
        writes: &Writes<'_>,
        r: &mut PassReport,
    ) {
        let deletions: Vec<bool> = futures::stream::iter(
            plan.delete
                .iter()
                .map(|d| async move {
                    if !writes.passed(&d.after) {
                        return true;
                    }
                    let Some(obj) = by_key.get(&d.item) else {
                        return true;
                    };
                    if !d.after.is_empty()
                        && !self
                            .set_status(&d.item, AssignedIdentityState::Unassigned)
                            .await
                    {
                        return false;
                    }
                    let started = std::time::Instant::now();
                    if self.remove(obj).await {
                        self.metrics
                            .assigned_identity_deletion_duration
                            .observe(started.elapsed().as_secs_f64());
                        self.metrics.assigned_identity_deletion_count.inc();
                        true
                    } else {
                        self.metrics.kubernetes_error("assigned_identity_deletion");
                        false
                    }
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.batch.max(1))
        .collect()
        .await;
        r.errors += deletions.iter().filter(|ok| !**ok).count();
    }

    /// Logs, and tells on the binding with an Event (reason `IdentityServing`), each binding
    /// not served as its `podid.dev/identity-serving` annotation asks (an unknown value, or
    /// token exchange while `--federated` is off), once per new or changed issue.
    async fn tell_serving_issues(&self) {
        let settings = self.planner.options.serving;
        // Collected under the read lock, told without it.
        let issues: BTreeMap<String, (ObjectReference, String)> = self
            .stores
            .index()
            .bindings()
            .filter_map(|b| {
                let issue = podid_crds::serving::binding_serving(b, settings).1?;
                let key = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
                Some((key, (b.object_ref(&()), issue.to_string())))
            })
            .collect();
        let new: Vec<(ObjectReference, String)> = {
            let mut told = self.serving_issues.lock().expect("serving issues lock");
            told.retain(|k, _| issues.contains_key(k));
            issues
                .into_iter()
                .filter_map(|(k, (reference, note))| {
                    (told.get(&k) != Some(&note)).then(|| {
                        told.insert(k, note.clone());
                        (reference, note)
                    })
                })
                .collect()
        };
        for (reference, note) in new {
            tracing::warn!(issue = %note, "identity serving");
            self.event(&reference, EventType::Warning, "IdentityServing", &note)
                .await;
        }
    }

    fn api(&self, obj: &AzureAssignedIdentity) -> Api<AzureAssignedIdentity> {
        Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default())
    }

    /// Writes `status.status` through the main resource (the CRD has no status subresource).
    async fn set_status(&self, k: &ObjectKey, value: AssignedIdentityState) -> bool {
        let api: Api<AzureAssignedIdentity> = Api::namespaced(self.client.clone(), &k.namespace);
        let patch = serde_json::json!({"status": {"status": value}});
        match api
            .patch(&k.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(o) => {
                tracing::debug!(object = %k, status = ?o.state(), "status written");
                true
            }
            Err(e) => {
                self.metrics
                    .kubernetes_error("update_azure_assigned_identity_status");
                tracing::warn!(object = %k, error = %e, "writing status");
                // (No read back: the role has no `get`; the reference needs no uid.)
                let reference = ObjectReference {
                    api_version: Some(AzureAssignedIdentity::api_version(&()).into()),
                    kind: Some("AzureAssignedIdentity".into()),
                    name: Some(k.name.clone()),
                    namespace: Some(k.namespace.clone()),
                    ..ObjectReference::default()
                };
                self.event(
                    &reference,
                    EventType::Warning,
                    "status update error",
                    &format!("failed to set status {value}: {e}"),
                )
                .await;
                false
            }
        }
    }

    /// Deletes the object and releases podid's finalizer; a missing object counts as done.
    async fn remove(&self, obj: &AzureAssignedIdentity) -> bool {
        let api = self.api(obj);
        let name = obj.name_any();
        // The delete answers with the object while finalizers hold it (no extra read, so no
        // `get` permission needed), or with a Status once it is gone.
        let current = match api.delete(&name, &DeleteParams::default()).await {
            Ok(either::Either::Left(current)) => current,
            Ok(either::Either::Right(_)) => return true,
            Err(kube::Error::Api(s)) if s.code == 404 => return true,
            Err(e) => {
                tracing::warn!(object = %key(obj), error = %e, "deleting");
                return false;
            }
        };
        if !current
            .finalizers()
            .iter()
            .any(|f| f == ASSIGNED_IDENTITY_FINALIZER)
        {
            return true;
        }
        let rest: Vec<&String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != ASSIGNED_IDENTITY_FINALIZER)
            .collect();
        let patch = serde_json::json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": current.metadata.resource_version,
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 => true,
            Err(e) => {
                tracing::warn!(object = %key(obj), error = %e, "releasing finalizer");
                false
            }
        }
    }

    async fn applied_event(&self, obj: &AzureAssignedIdentity) {
        let binding = obj
            .spec
            .azure_binding_ref
            .as_ref()
            .and_then(|b| b.metadata.name.clone())
            .unwrap_or_default();
        let note = format!(
            "Binding {binding} applied on node {} for pod {}",
            obj.spec.node_name,
            obj.name_any()
        );
        self.binding_event(obj, EventType::Normal, "binding applied", &note)
            .await;
    }

    /// A failed assignment, told where users look: the binding (reason `binding apply error`,
    /// as the original), and — podid — the pod and the AzureAssignedIdentity (reason
    /// `AssignmentFailed`), so `kubectl describe pod` says why its identity is missing.
    async fn assignment_failed(&self, obj: &AzureAssignedIdentity, note: &str) {
        self.binding_event(obj, EventType::Warning, "binding apply error", note)
            .await;
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(obj.spec.pod.clone()),
            namespace: Some(obj.spec.pod_namespace.clone()),
            ..ObjectReference::default()
        };
        self.event(&pod, EventType::Warning, "AssignmentFailed", note)
            .await;
        if obj.metadata.uid.is_some() {
            self.event(
                &obj.object_ref(&()),
                EventType::Warning,
                "AssignmentFailed",
                note,
            )
            .await;
        }
    }

    async fn binding_event(
        &self,
        obj: &AzureAssignedIdentity,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let reference = obj
            .spec
            .azure_binding_ref
            .as_ref()
            .map(|b| ObjectReference {
                api_version: Some(AzureIdentityBinding::api_version(&()).into()),
                kind: Some("AzureIdentityBinding".into()),
                name: b.metadata.name.clone(),
                namespace: b.metadata.namespace.clone(),
                uid: b.metadata.uid.clone(),
                ..ObjectReference::default()
            })
            .unwrap_or_else(|| obj.object_ref(&()));
        self.event(&reference, type_, reason, note).await;
    }

    async fn event(&self, reference: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Assign".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::debug!(error = %e, "publishing event");
        }
    }
}

/// Runs passes until `shutdown`, once `ready` resolved (then `ready_flag` is set, for
/// `/readyz`): after a debounced burst of events on `notify`, every `full_interval` (full), and
/// after a failure with backoff. Passes run only while `may_write` is true; the first one after
/// it becomes true is full and counted as a new leader election.
#[allow(clippy::too_many_arguments)]
pub async fn run_passes<F, Fut>(
    ready: impl std::future::Future,
    ready_flag: &AtomicBool,
    metrics: &Metrics,
    notify: Arc<Notify>,
    mut may_write: watch::Receiver<bool>,
    settings: LoopSettings,
    shutdown: CancellationToken,
    pass: F,
) where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = PassReport>,
{
    tokio::select! {
        _ = ready => {}
        _ = shutdown.cancelled() => return,
    }
    ready_flag.store(true, Ordering::SeqCst);
    tracing::info!("caches synced");
    let mut full_tick = tokio::time::interval(settings.full_interval);
    full_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut backoff = settings.retry_base;
    let mut was_writing = false;
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(86400);
        let mut full = tokio::select! {
            _ = notify.notified() => false,
            _ = full_tick.tick() => true,
            _ = tokio::time::sleep_until(retry_at.unwrap_or(far)) => true,
            r = may_write.changed() => {
                if r.is_err() { return; }
                true
            }
            _ = shutdown.cancelled() => return,
        };
        // Debounce: wait until events stop for `debounce`.
        loop {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(settings.debounce) => break,
                _ = shutdown.cancelled() => return,
            }
        }
        let writing = *may_write.borrow();
        if !writing {
            was_writing = false;
            continue;
        }
        if !was_writing {
            metrics.new_leader_election_count.inc();
            full = true;
            was_writing = true;
        }
        let report = pass(full).await;
        if report.errors > 0 {
            retry_at = Some(tokio::time::Instant::now() + backoff);
            tracing::info!(errors = report.errors, retry_in = ?backoff, "pass had failures; retrying");
            backoff = (backoff * 2).min(Duration::from_secs(300));
        } else {
            retry_at = None;
            backoff = settings.retry_base;
        }
    }
}

/// Reads the identities of each target, one GET each; a target that is gone (404) carries
/// nothing and is also returned in the second set; one that cannot be read is left out (and
/// counted as an error).
pub async fn read_targets<A: NodePoolIdentities>(
    arm: &A,
    targets: BTreeSet<AssignmentTarget>,
    r: &mut PassReport,
) -> (
    BTreeMap<AssignmentTarget, IdentityState>,
    BTreeSet<AssignmentTarget>,
) {
    let mut current = BTreeMap::new();
    let mut gone = BTreeSet::new();
    for t in targets {
        r.reads += 1;
        match arm.identities(&t).await {
            Ok(s) => {
                current.insert(t, s);
            }
            // The scale set or VM is gone: it carries nothing.
            Err(podid_azure::Error::Arm { status: 404, .. }) => {
                current.insert(t.clone(), Default::default());
                gone.insert(t);
            }
            Err(e) => {
                r.errors += 1;
                tracing::warn!(target = %t, error = %e, "reading identities");
            }
        }
    }
    (current, gone)
}

/// Sends the one identity delta per scale set or VM, one after the other (ARM retries as
/// `--update-user-msi-max-retry` sets them); returns which succeeded and why the others failed.
pub async fn write_targets<'p, A: NodePoolIdentities>(
    arm: &A,
    writes: &'p BTreeMap<AssignmentTarget, TargetWrite>,
    current: &BTreeMap<AssignmentTarget, IdentityState>,
    r: &mut PassReport,
) -> Writes<'p> {
    let mut out = Writes::default();
    for (t, w) in writes {
        r.writes += 1;
        tracing::info!(target = %t, add = ?w.add, remove = ?w.remove, "updating identities");
        // The identities read at the start of this pass: one GET per target and pass.
        let written = match current.get(t) {
            Some(now) => arm.update_from(t, now, &w.add, &w.remove).await,
            None => arm.update(t, &w.add, &w.remove).await,
        };
        match written {
            Ok(_) => {
                out.ok.insert(t);
            }
            Err(e) => {
                r.errors += 1;
                tracing::warn!(target = %t, error = %e, "updating identities");
                out.failed.insert(t, e.to_string());
            }
        }
    }
    out
}

fn key(obj: &AzureAssignedIdentity) -> ObjectKey {
    ObjectKey {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

/// Logs what the plan skipped and, when it has work, what it will do.
fn log_plan(plan: &Plan, full: bool) {
    for s in &plan.skipped {
        if let Skip::NameCollision { key } = s {
            // A pod goes without this identity: every name it could have is taken.
            tracing::warn!(record = %key, "no free AzureAssignedIdentity name, not assigned");
        } else {
            tracing::debug!(skip = ?s, "not planned this pass");
        }
    }
    if !plan.is_empty() {
        tracing::info!(
            create = plan.create.len(),
            update = plan.update.len(),
            assign = plan.mark_assigned.len(),
            delete = plan.delete.len(),
            writes = plan.writes.len(),
            full,
            "applying plan"
        );
    }
}

/// Which target writes of a pass succeeded, and why the others failed.
#[derive(Default)]
pub struct Writes<'p> {
    pub ok: BTreeSet<&'p AssignmentTarget>,
    pub failed: BTreeMap<&'p AssignmentTarget, String>,
}

impl Writes<'_> {
    /// True when every write in `after` succeeded.
    pub fn passed(&self, after: &[AssignmentTarget]) -> bool {
        after.iter().all(|t| self.ok.contains(t))
    }

    /// The first failed write in `after`, as `target: error`.
    pub fn failure(&self, after: &[AssignmentTarget]) -> Option<String> {
        after
            .iter()
            .find_map(|t| self.failed.get(t).map(|e| format!("{t}: {e}")))
    }
}
