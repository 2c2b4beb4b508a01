//! Prometheus metrics: the original MIC's names (prefix `aadpodidentity_`), plus
//! `podid_operator_reconcile_duration_seconds{result}` and `podid_operator_arm_calls_total{operation,result}`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use podid_telemetry::{Buckets, Labels};

const CYCLE_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0,
];
/// The original's buckets for the AzureAssignedIdentity write durations.
const RECORD_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0,
];
const RECONCILE_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// All metrics of the controller.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub cycle_duration: Histogram,
    pub cycle_count: Counter,
    pub new_leader_election_count: Counter,
    pub assigned_identity_addition_count: Counter,
    pub assigned_identity_deletion_count: Counter,
    pub assigned_identity_update_count: Counter,
    pub assigned_identity_addition_duration: Histogram,
    pub assigned_identity_deletion_duration: Histogram,
    pub assigned_identity_update_duration: Histogram,
    pub cloud_operations: Family<Labels, Histogram, Buckets>,
    pub cloud_errors: Family<Labels, Counter>,
    pub kubernetes_errors: Family<Labels, Counter>,
    pub reconcile: Family<Labels, Histogram, Buckets>,
    pub arm_calls: Family<Labels, Counter>,
    pub bridge_credentials: Family<Labels, Counter>,
    pub bridge_exchanges: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

use podid_telemetry::labels as l;

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Arc::new(Registry::default()),
            cycle_duration: Histogram::new(CYCLE_BUCKETS.iter().copied()),
            cycle_count: Counter::default(),
            new_leader_election_count: Counter::default(),
            assigned_identity_addition_count: Counter::default(),
            assigned_identity_deletion_count: Counter::default(),
            assigned_identity_update_count: Counter::default(),
            assigned_identity_addition_duration: Histogram::new(RECORD_BUCKETS.iter().copied()),
            assigned_identity_deletion_duration: Histogram::new(RECORD_BUCKETS.iter().copied()),
            assigned_identity_update_duration: Histogram::new(RECORD_BUCKETS.iter().copied()),
            cloud_operations: Family::new_with_constructor(Buckets(CYCLE_BUCKETS)),
            cloud_errors: Family::default(),
            kubernetes_errors: Family::default(),
            reconcile: Family::new_with_constructor(Buckets(RECONCILE_BUCKETS)),
            arm_calls: Family::default(),
            bridge_credentials: Family::default(),
            bridge_exchanges: Family::default(),
        };
        let original = registry.sub_registry_with_prefix("aadpodidentity");
        original.register(
            "mic_cycle_duration_seconds",
            "Duration of a controller pass that did work",
            m.cycle_duration.clone(),
        );
        original.register(
            "mic_cycle_count",
            "Controller passes that did work",
            m.cycle_count.clone(),
        );
        original.register(
            "mic_new_leader_election_count",
            "Times this replica became the leader",
            m.new_leader_election_count.clone(),
        );
        original.register(
            "assigned_identity_addition_count",
            "AzureAssignedIdentities created",
            m.assigned_identity_addition_count.clone(),
        );
        original.register(
            "assigned_identity_deletion_count",
            "AzureAssignedIdentities deleted",
            m.assigned_identity_deletion_count.clone(),
        );
        original.register(
            "assigned_identity_update_count",
            "AzureAssignedIdentities updated",
            m.assigned_identity_update_count.clone(),
        );
        original.register(
            "assigned_identity_addition_duration_seconds",
            "Duration of AzureAssignedIdentity creations",
            m.assigned_identity_addition_duration.clone(),
        );
        original.register(
            "assigned_identity_deletion_duration_seconds",
            "Duration of AzureAssignedIdentity deletions",
            m.assigned_identity_deletion_duration.clone(),
        );
        original.register(
            "assigned_identity_update_duration_seconds",
            "Duration of AzureAssignedIdentity updates",
            m.assigned_identity_update_duration.clone(),
        );
        original.register(
            "cloud_provider_operations_duration_seconds",
            "Duration of successful ARM operations",
            m.cloud_operations.clone(),
        );
        original.register(
            "cloud_provider_operations_errors_count",
            "Failed ARM operations",
            m.cloud_errors.clone(),
        );
        original.register(
            "kubernetes_api_operations_errors_count",
            "Failed Kubernetes API operations",
            m.kubernetes_errors.clone(),
        );
        registry.register(
            "podid_operator_reconcile_duration_seconds",
            "Duration of every controller pass by result",
            m.reconcile.clone(),
        );
        registry.register(
            "podid_operator_arm_calls",
            "ARM requests by operation and result",
            m.arm_calls.clone(),
        );
        registry.register(
            "podid_bridge_federated_credentials",
            "Federated credentials the bridge wrote, by result (created, deleted, failed)",
            m.bridge_credentials.clone(),
        );
        registry.register(
            "podid_bridge_token_exchanges",
            "Token exchanges that proved a credential, by result (proven, failed)",
            m.bridge_exchanges.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Records one ARM request (the `podid_azure::Arm` observer).
    pub fn observe_arm(&self, operation: &str, result: &str, took: Duration) {
        let op = l(&[("operation_type", operation)]);
        if result == "ok" {
            self.cloud_operations
                .get_or_create(&op)
                .observe(took.as_secs_f64());
        } else {
            self.cloud_errors.get_or_create(&op).inc();
        }
        self.arm_calls
            .get_or_create(&l(&[("operation", operation), ("result", result)]))
            .inc();
    }

    /// Counts one federated credential write of the bridge.
    pub fn bridge_credential(&self, result: &str) {
        self.bridge_credentials
            .get_or_create(&l(&[("result", result)]))
            .inc();
    }

    /// Counts one proof (token exchange) of the bridge.
    pub fn bridge_exchange(&self, result: &str) {
        self.bridge_exchanges
            .get_or_create(&l(&[("result", result)]))
            .inc();
    }

    pub fn kubernetes_error(&self, operation: &str) {
        self.kubernetes_errors
            .get_or_create(&l(&[("operation_type", operation)]))
            .inc();
    }

    pub fn observe_pass(&self, result: &str, took: Duration, did_work: bool) {
        self.reconcile
            .get_or_create(&l(&[("result", result)]))
            .observe(took.as_secs_f64());
        if did_work {
            self.cycle_count.inc();
            self.cycle_duration.observe(took.as_secs_f64());
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        podid_telemetry::exposition::render(&self.registry)
    }
}
