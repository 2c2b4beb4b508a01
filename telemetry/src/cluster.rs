//! What a podid program asks the API server about the cluster itself.

use kube::Client;

/// The ServiceAccount token issuer the API server announces in its OIDC discovery document
/// (`/.well-known/openid-configuration`), if it serves one.
pub async fn oidc_issuer(client: &Client) -> Option<String> {
    oidc_issuer_lookup(client).await.ok().flatten()
}

/// [`oidc_issuer`], telling "the server serves no discovery document" (`Ok(None)`: a 404)
/// from "it could not be read" (`Err`: forbidden, unreachable, not JSON).
pub async fn oidc_issuer_lookup(client: &Client) -> Result<Option<String>, String> {
    let req = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request::<serde_json::Value>(req).await {
        Ok(doc) => Ok(doc
            .get("issuer")
            .and_then(|i| i.as_str())
            .map(str::to_string)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Logs, once at start, when the API server is older than podid supports
/// (docs/compatibility.md) or its version cannot be read: what follows may fail on an API the
/// server lacks, and the log says why first.
pub async fn check_server_version(client: &Client, component: &str) {
    match client.apiserver_version().await {
        Ok(v) => match podid_crds::kube_minor(&v.minor) {
            Some(m) if m >= podid_crds::OLDEST_KUBE_MINOR => {
                tracing::info!(version = %v.git_version, "API server")
            }
            _ => tracing::error!(
                version = %v.git_version,
                "{component} supports Kubernetes 1.{} and later (docs/compatibility.md); this API server may lack APIs it uses",
                podid_crds::OLDEST_KUBE_MINOR
            ),
        },
        Err(e) => tracing::warn!(error = %e, "reading the API server's version"),
    }
}
