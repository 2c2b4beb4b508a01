//! Managed mode's I/O edge: watches of nodes and AzureIdentities, the ARM lists of node-pool
//! scale sets, and a pass: list, read the targets, plan ([`crate::managed`]), then write the
//! records, the targets (through the standard controller's write path: one delta per target,
//! ARM retries) and the releases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use podid_azure::NodePoolIdentities;
use podid_crds::managed::format_targets;
use podid_crds::provider::AssignmentTarget;
use podid_crds::{ASSIGNED_TARGETS_ANNOTATION, AzureIdentity, PREEXISTING_TARGETS_ANNOTATION};
use podid_telemetry::watch as watches;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::controller::{LoopSettings, PassReport, read_targets, run_passes, write_targets};
use crate::managed::{
    ManagedPlan, ManagedPlanner, ManagedWorld, Record, Release, fingerprint, listing_scopes,
    normalize,
};
use crate::metrics::Metrics;
use crate::planner::{NodeInfo, ObjectKey, Skip};

/// The watched objects of managed mode.
#[derive(Clone)]
pub struct ManagedStores {
    pub nodes: Store<Node>,
    pub identities: Store<AzureIdentity>,
}

impl ManagedStores {
    /// Starts the watches; every event wakes `notify`.
    pub fn start(client: &Client, notify: Arc<Notify>, shutdown: &CancellationToken) -> Self {
        Self {
            nodes: watches::store(
                Api::all(client.clone()),
                watcher::Config::default(),
                "nodes",
                Some(notify.clone()),
                shutdown.clone(),
            ),
            identities: watches::store(
                Api::all(client.clone()),
                watcher::Config::default(),
                "azureidentities",
                Some(notify),
                shutdown.clone(),
            ),
        }
    }

    /// Waits until every watch has listed once.
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.nodes.wait_until_ready(),
            self.identities.wait_until_ready()
        );
    }
}

/// Managed mode's controller.
pub struct ManagedController<A> {
    pub client: Client,
    pub arm: A,
    pub planner: ManagedPlanner,
    pub stores: ManagedStores,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub ready: Arc<AtomicBool>,
    /// List the scale sets of the node resource groups (`--list-node-pools`).
    pub list_node_pools: bool,
    /// The cloud config's (subscription, resource group): its scale sets are listed too.
    pub configured_scope: Option<(String, String)>,
    /// At most this many AzureIdentity writes in flight at once (`--createDeleteBatch`).
    pub batch: usize,
    /// The inputs of the last pass that completed without errors.
    last: Mutex<Option<String>>,
}

impl<A: NodePoolIdentities> ManagedController<A> {
    pub fn new(
        client: Client,
        arm: A,
        planner: ManagedPlanner,
        stores: ManagedStores,
        metrics: Metrics,
        reporter: &str,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "podid-operator".into(),
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
            list_node_pools: true,
            configured_scope: None,
            batch: 20,
            last: Mutex::new(None),
        }
    }

    /// Runs passes until `shutdown` (the standard controller's loop).
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

    /// One pass. Without `full`, a pass whose inputs (node pools from nodes, managed
    /// AzureIdentities' versions) equal those of the last complete pass reads nothing.
    pub async fn pass(&self, full: bool) -> PassReport {
        let started = Instant::now();
        let nodes: Vec<NodeInfo> = self
            .stores
            .nodes
            .state()
            .iter()
            .map(|n| NodeInfo::from(n.as_ref()))
            .collect();
        let identities: Vec<AzureIdentity> = self
            .stores
            .identities
            .state()
            .iter()
            .map(|i| i.as_ref().clone())
            .collect();
        let mut report = PassReport::default();
        let inputs = fingerprint(&identities, &nodes);
        if !self.planner.has_work(&identities)
            || (!full && self.last.lock().expect("lock").as_deref() == Some(inputs.as_str()))
        {
            return report;
        }
        let listed = self.list(&nodes, &mut report).await;
        let world = ManagedWorld {
            identities: &identities,
            nodes: &nodes,
            listed: &listed,
        };
        let targets = self.planner.targets(world);
        let (current, gone) = read_targets(&self.arm, targets, &mut report).await;
        let mut plan = self.planner.plan(world, &current, &gone);
        for s in &plan.skipped {
            tracing::debug!(skip = ?s, "not planned this pass");
        }
        report.did_work = !plan.is_empty();
        if report.did_work {
            tracing::info!(
                records = plan.records.len(),
                writes = plan.writes.len(),
                release = plan.release.len(),
                full,
                "applying managed plan"
            );
        }
        self.apply(&mut plan, &current, &mut report).await;
        let unread = plan
            .skipped
            .iter()
            .any(|s| matches!(s, Skip::TargetUnread { .. }));
        *self.last.lock().expect("lock") =
            (report.errors == 0 && !unread && plan.is_empty()).then_some(inputs);
        let result = if report.errors == 0 { "ok" } else { "error" };
        self.metrics
            .observe_pass(result, started.elapsed(), report.did_work);
        report
    }

    /// The scale sets ARM lists in the node resource groups. A list that fails is an error of
    /// the pass; the pools found from nodes are still kept.
    async fn list(&self, nodes: &[NodeInfo], r: &mut PassReport) -> BTreeSet<AssignmentTarget> {
        let mut out = BTreeSet::new();
        if !self.list_node_pools {
            return out;
        }
        for (sub, rg) in listing_scopes(nodes, self.configured_scope.as_ref()) {
            r.reads += 1;
            match self.arm.scale_sets(&sub, &rg).await {
                Ok(found) => out.extend(found.iter().map(normalize)),
                Err(podid_azure::Error::Arm { status: 404, .. }) => {}
                Err(e) => {
                    r.errors += 1;
                    tracing::warn!(subscription = %sub, resource_group = %rg, error = %e, "listing scale sets");
                }
            }
        }
        out
    }

    /// Records first; the adds of an identity whose records failed are dropped; one write per
    /// target; then the releases whose writes succeeded.
    async fn apply(
        &self,
        plan: &mut ManagedPlan,
        current: &BTreeMap<AssignmentTarget, podid_azure::IdentityState>,
        r: &mut PassReport,
    ) {
        let failures: Vec<String> = futures::stream::iter(
            plan.records
                .iter()
                .map(
                    |rec| async move { (!self.record(rec).await).then(|| rec.resource_id.clone()) },
                )
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.batch.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
        r.errors += failures.len();
        let failed: BTreeSet<String> = failures.into_iter().collect();
        plan.drop_adds_of(&failed);
        let writes = write_targets(&self.arm, &plan.writes, current, r).await;
        for (t, e) in &writes.failed {
            self.tell_failure(plan, t, e).await;
        }
        let released: Vec<bool> = futures::stream::iter(
            plan.release
                .iter()
                .filter(|g| writes.passed(&g.after))
                .map(|g| self.release(&g.item))
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(self.batch.max(1))
        .collect()
        .await;
        r.errors += released.iter().filter(|ok| !**ok).count();
    }

    fn api(&self, key: &ObjectKey) -> Api<AzureIdentity> {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    /// Writes one record (a merge patch, with the resource version read: a change since is
    /// refused and left for the next pass, which that change triggered).
    async fn record(&self, rec: &Record) -> bool {
        let annotation = |v: &BTreeSet<String>| {
            if v.is_empty() {
                serde_json::Value::Null
            } else {
                format_targets(v).into()
            }
        };
        let mut meta = serde_json::json!({
            "resourceVersion": rec.resource_version,
            "annotations": {
                PREEXISTING_TARGETS_ANNOTATION: annotation(&rec.preexisting),
                ASSIGNED_TARGETS_ANNOTATION: annotation(&rec.assigned),
            },
        });
        if let Some(f) = &rec.finalizers {
            meta["finalizers"] = serde_json::json!(f);
        }
        let patch = serde_json::json!({ "metadata": meta });
        match self
            .api(&rec.key)
            .patch(
                &rec.key.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                self.metrics.kubernetes_error("azure_identity_update");
                tracing::warn!(identity = %rec.key, error = %e, "recording node-pool assignment");
                false
            }
        }
    }

    /// Drops podid's finalizer; a missing object counts as done.
    async fn release(&self, rel: &Release) -> bool {
        let patch = serde_json::json!({"metadata": {
            "finalizers": rel.finalizers,
            "resourceVersion": rel.resource_version,
        }});
        match self
            .api(&rel.key)
            .patch(
                &rel.key.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(identity = %rel.key, "released: its identity is off podid's node pools");
                true
            }
            Err(kube::Error::Api(s)) if s.code == 404 => true,
            Err(e) => {
                self.metrics.kubernetes_error("azure_identity_update");
                tracing::warn!(identity = %rel.key, error = %e, "releasing finalizer");
                false
            }
        }
    }

    /// A failed write, told as a Warning Event `AssignmentFailed` on each AzureIdentity whose
    /// identity it carried.
    async fn tell_failure(&self, plan: &ManagedPlan, t: &AssignmentTarget, error: &str) {
        let Some(w) = plan.writes.get(t) else { return };
        let ids: BTreeSet<&String> = w.add.iter().chain(&w.remove).collect();
        let identities: Vec<ObjectReference> = self
            .stores
            .identities
            .state()
            .iter()
            .filter(|i| ids.contains(&i.spec.resource_id.to_ascii_lowercase()))
            .map(|i| i.object_ref(&()))
            .collect();
        for reference in identities {
            let ev = Event {
                type_: EventType::Warning,
                reason: "AssignmentFailed".into(),
                note: Some(format!("node pool {}: {error}", t.name)),
                action: "Assign".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "publishing event");
            }
        }
    }
}
