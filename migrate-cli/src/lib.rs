//! podid's migration CLI as a library: read a cluster (live or from snapshot files), decide per
//! workload whether it can move from pod identity to Workload ID, and render the report.

pub mod crds;
pub mod cutover;
pub mod cutover_run;
pub mod identity;
pub mod inventory;
pub mod live;
pub mod render;
pub mod report;
pub mod selector;

/// Errors of the migration CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: document {document} ({object}): {field}: {message}")]
    Snapshot {
        file: String,
        document: usize,
        object: String,
        field: String,
        message: String,
    },
    /// A usage error (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The cutover refuses to start (the Workload ID webhook is missing or not answering).
    #[error("{0}")]
    Refused(String),
    #[error("-l/--selector: label selector {selector:?}: {message}")]
    Selector { selector: String, message: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("Azure: {0}")]
    Azure(#[from] podid_azure::Error),
}
