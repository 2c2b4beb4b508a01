//! Prometheus metrics: the original NMI's names, plus `podid_nmi_request_duration_seconds` by
//! route and result.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use podid_telemetry::{Buckets, Labels};

const NMI_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0,
    100.0,
];
const IMDS_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0,
];

/// All metrics of the agent.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub nmi_operations: Family<Labels, Histogram, Buckets>,
    pub imds_operations: Family<Labels, Histogram, Buckets>,
    pub imds_errors: Family<Labels, Counter>,
    pub kubernetes_errors: Family<Labels, Counter>,
    pub requests: Family<Labels, Histogram, Buckets>,
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
        let nmi_operations = Family::new_with_constructor(Buckets(NMI_BUCKETS));
        let imds_operations = Family::new_with_constructor(Buckets(IMDS_BUCKETS));
        let requests = Family::new_with_constructor(Buckets(REQUEST_BUCKETS));
        let imds_errors = Family::default();
        let kubernetes_errors = Family::default();
        registry.register(
            "nmi_operations_duration_seconds",
            "Duration of token and host token requests",
            nmi_operations.clone(),
        );
        registry.register(
            "imds_operations_duration_seconds",
            "Duration of successful token fetches from IMDS or Entra",
            imds_operations.clone(),
        );
        registry.register(
            "imds_operations_errors_count",
            "Failed token fetches from IMDS or Entra",
            imds_errors.clone(),
        );
        registry.register(
            "kubernetes_api_operations_errors_count",
            "Failed Kubernetes lookups",
            kubernetes_errors.clone(),
        );
        registry.register(
            "podid_nmi_request_duration_seconds",
            "Duration of requests to the agent by route and result",
            requests.clone(),
        );
        Self {
            registry: Arc::new(registry),
            nmi_operations,
            imds_operations,
            imds_errors,
            kubernetes_errors,
            requests,
        }
    }

    /// The original's per-request observation. `operation` is the route name (the original
    /// used the raw path, which let callers create unbounded series).
    pub fn observe_nmi(
        &self,
        operation: &str,
        status: u16,
        namespace: &str,
        resource: &str,
        secs: f64,
    ) {
        self.nmi_operations
            .get_or_create(&l(&[
                ("operation_type", operation),
                ("status_code", &status.to_string()),
                ("namespace", namespace),
                ("resource", resource),
            ]))
            .observe(secs);
    }

    pub fn observe_request(&self, route: &str, result: &str, secs: f64) {
        self.requests
            .get_or_create(&l(&[("route", route), ("result", result)]))
            .observe(secs);
    }

    pub fn observe_fetch(&self, operation: &str, ok: bool, secs: f64) {
        let labels = l(&[("operation_type", operation)]);
        if ok {
            self.imds_operations.get_or_create(&labels).observe(secs);
        } else {
            self.imds_errors.get_or_create(&labels).inc();
        }
    }

    pub fn kubernetes_error(&self, operation: &str) {
        self.kubernetes_errors
            .get_or_create(&l(&[("operation_type", operation)]))
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
