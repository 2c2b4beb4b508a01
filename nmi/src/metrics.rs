//! Prometheus metrics: the original NMI's names (prefix `aadpodidentity_`, counters without
//! `_total`), plus podid's own under `podid_nmi_`.

use std::sync::Arc;

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

/// Resources of Azure's public and sovereign clouds, as their documentation spells them: the
/// only values of the `resource` label besides `""` (no resource asked) and [`OTHER_RESOURCE`].
pub const KNOWN_RESOURCES: &[&str] = &[
    // Resource Manager
    "https://management.azure.com/",
    "https://management.core.windows.net/",
    "https://management.usgovcloudapi.net/",
    "https://management.core.usgovcloudapi.net/",
    "https://management.chinacloudapi.cn/",
    "https://management.core.chinacloudapi.cn/",
    // Key Vault and Managed HSM
    "https://vault.azure.net",
    "https://vault.usgovcloudapi.net",
    "https://vault.azure.cn",
    "https://managedhsm.azure.net",
    "https://managedhsm.usgovcloudapi.net",
    "https://managedhsm.azure.cn",
    // Storage, Data Lake
    "https://storage.azure.com/",
    "https://datalake.azure.net/",
    // Microsoft Graph and Azure AD Graph
    "https://graph.microsoft.com/",
    "https://graph.microsoft.us/",
    "https://dod-graph.microsoft.us/",
    "https://microsoftgraph.chinacloudapi.cn/",
    "https://graph.windows.net/",
    "https://graph.chinacloudapi.cn/",
    // SQL, PostgreSQL/MySQL, Cosmos DB, Redis
    "https://database.windows.net/",
    "https://database.usgovcloudapi.net/",
    "https://database.chinacloudapi.cn/",
    "https://ossrdbms-aad.database.windows.net",
    "https://ossrdbms-aad.database.usgovcloudapi.net",
    "https://ossrdbms-aad.database.chinacloudapi.cn",
    "https://cosmos.azure.com",
    "https://redis.azure.com",
    // Event Hubs, Service Bus
    "https://eventhubs.azure.net",
    "https://servicebus.azure.net",
    "https://servicebus.usgovcloudapi.net",
    "https://servicebus.chinacloudapi.cn",
    // Monitoring
    "https://api.loganalytics.io",
    "https://api.loganalytics.us",
    "https://api.loganalytics.azure.cn",
    "https://monitor.azure.com",
    "https://monitoring.azure.com",
    "https://api.applicationinsights.io",
    // Other services
    "https://batch.core.windows.net/",
    "https://batch.core.usgovcloudapi.net/",
    "https://batch.chinacloudapi.cn/",
    "https://cognitiveservices.azure.com",
    "https://cognitiveservices.azure.us",
    "https://cognitiveservices.azure.cn",
    "https://containerregistry.azure.net",
    "https://azconfig.io",
    "https://dev.azuresynapse.net",
    "https://digitaltwins.azure.net",
    "https://purview.azure.net",
    "https://analysis.windows.net/powerbi/api",
    // Applications named by client ID: AKS's Entra server, Azure DevOps
    "6dae42f8-4368-4678-94ff-3960e28e3630",
    "499b84ac-1321-427f-aa17-267ca6975798",
];

/// The `resource` label of any resource not in [`KNOWN_RESOURCES`].
pub const OTHER_RESOURCE: &str = "other";

/// The comparable form of a resource: ASCII-lowercased, without a trailing `/.default` (a v2
/// scope) and trailing slashes.
fn comparable(resource: &str) -> String {
    let r = resource.trim().to_ascii_lowercase();
    let r = r.strip_suffix("/.default").unwrap_or(&r);
    r.trim_end_matches('/').to_owned()
}

/// The `resource` label of a requested resource: the documented spelling of a known resource
/// (whatever the case, trailing slash or `/.default` asked), `""` for none, else `other`.
/// Callers choose the resource, so the label must come from a fixed set.
pub fn resource_label(resource: &str) -> &'static str {
    if resource.is_empty() {
        return "";
    }
    // A known resource is short; a long value is never compared (nor copied) at length.
    if resource.len() > 128 {
        return OTHER_RESOURCE;
    }
    let asked = comparable(resource);
    KNOWN_RESOURCES
        .iter()
        .find(|k| comparable(k) == asked)
        .copied()
        .unwrap_or(OTHER_RESOURCE)
}

/// All metrics of the agent.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub nmi_operations: Family<Labels, Histogram, Buckets>,
    pub imds_operations: Family<Labels, Histogram, Buckets>,
    pub imds_errors: Family<Labels, Counter>,
    pub kubernetes_errors: Family<Labels, Counter>,
    pub requests: Family<Labels, Histogram, Buckets>,
    pub federated: Family<Labels, Histogram, Buckets>,
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
        let federated = Family::new_with_constructor(Buckets(REQUEST_BUCKETS));
        let imds_errors = Family::default();
        let kubernetes_errors = Family::default();
        let original = registry.sub_registry_with_prefix("aadpodidentity");
        original.register(
            "nmi_operations_duration_seconds",
            "Duration of token and host token requests",
            nmi_operations.clone(),
        );
        original.register(
            "imds_operations_duration_seconds",
            "Duration of successful token fetches from IMDS or Entra",
            imds_operations.clone(),
        );
        original.register(
            "imds_operations_errors_count",
            "Failed token fetches from IMDS or Entra",
            imds_errors.clone(),
        );
        original.register(
            "kubernetes_api_operations_errors_count",
            "Failed Kubernetes lookups",
            kubernetes_errors.clone(),
        );
        registry.register(
            "podid_nmi_request_duration_seconds",
            "Duration of requests to the agent by route and result",
            requests.clone(),
        );
        registry.register(
            "podid_nmi_federated_requests_duration_seconds",
            "Requests served by token exchange, by serving and result (ok, fallback, no_record, not_proven, no_tenant, token_request, exchange)",
            federated.clone(),
        );
        Self {
            registry: Arc::new(registry),
            federated,
            nmi_operations,
            imds_operations,
            imds_errors,
            kubernetes_errors,
            requests,
        }
    }

    /// The original's per-request observation. `operation` is the route name (the original
    /// used the raw path, which let callers create unbounded series); `namespace` must be that
    /// of a pod found on the node (or empty); `resource` is what the caller asked, labelled
    /// with [`resource_label`] so no caller can create series at will.
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
                ("resource", resource_label(resource)),
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

    /// A request whose identity is served by token exchange: `serving` is the serving's value,
    /// `result` one of a fixed set (see the metric's help).
    pub fn observe_federated(&self, serving: &str, result: &str, secs: f64) {
        self.federated
            .get_or_create(&l(&[("serving", serving), ("result", result)]))
            .observe(secs);
    }

    pub fn kubernetes_error(&self, operation: &str) {
        self.kubernetes_errors
            .get_or_create(&l(&[("operation_type", operation)]))
            .inc();
    }

    /// The text exposition, with the original's names ([`podid_telemetry::exposition`]).
    pub fn render(&self) -> String {
        podid_telemetry::exposition::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_labels_are_known_resources_or_other() {
        for (asked, label) in [
            ("https://vault.azure.net", "https://vault.azure.net"),
            ("https://vault.azure.net/", "https://vault.azure.net"),
            (
                "https://VAULT.azure.net/.default",
                "https://vault.azure.net",
            ),
            (
                "https://management.azure.com",
                "https://management.azure.com/",
            ),
            (
                "https://management.azure.com//.default",
                "https://management.azure.com/",
            ),
            ("https://storage.azure.com/", "https://storage.azure.com/"),
            ("https://graph.microsoft.us", "https://graph.microsoft.us/"),
            (
                "6DAE42F8-4368-4678-94FF-3960E28E3630",
                "6dae42f8-4368-4678-94ff-3960e28e3630",
            ),
            ("https://myaccount.blob.core.windows.net", "other"),
            ("https://vault.azure.net.evil", "other"),
            ("api://my-app", "other"),
            ("", ""),
        ] {
            assert_eq!(resource_label(asked), label, "{asked}");
        }
        assert_eq!(resource_label(&"x".repeat(1 << 20)), "other");
    }

    #[test]
    fn known_resources_are_distinct_after_normalising() {
        let mut seen = std::collections::HashSet::new();
        for k in KNOWN_RESOURCES {
            assert!(seen.insert(comparable(k)), "{k} listed twice");
            assert_eq!(resource_label(k), *k);
        }
    }

    #[test]
    fn caller_chosen_resources_make_one_series() {
        let m = Metrics::new();
        for i in 0..1000 {
            m.observe_nmi(
                "/host/token",
                404,
                "",
                &format!("https://r{i}.example"),
                0.1,
            );
        }
        let series = m
            .render()
            .lines()
            .filter(|l| l.starts_with("aadpodidentity_nmi_operations_duration_seconds_count"))
            .count();
        assert_eq!(series, 1);
    }
}
