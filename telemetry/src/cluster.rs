//! What a podid program asks the API server about the cluster itself.

use kube::Client;

/// The ServiceAccount token issuer the API server announces in its OIDC discovery document
/// (`/.well-known/openid-configuration`), if it serves one.
pub async fn oidc_issuer(client: &Client) -> Option<String> {
    let req = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .ok()?;
    let doc: serde_json::Value = client.request(req).await.ok()?;
    doc.get("issuer")?.as_str().map(str::to_string)
}
