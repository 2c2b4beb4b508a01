//! Where tokens come from, behind one trait: the node's IMDS for managed identities, Entra
//! client credentials (secret or certificate) for service principals, and Entra's workload
//! identity exchange of a Kubernetes ServiceAccount token for a user-assigned identity's token
//! ([`WorkloadIdentitySource`]). Plain HTTP, no SDK: the node agent uses these, and the
//! controller's managed-identity credential is built on [`ImdsTokenSource`]. Tokens, secrets and
//! assertions never reach logs or errors: [`AccessToken`]'s `Debug` redacts them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Seconds since the Unix epoch; injected so expiry can be tested without waiting.
pub trait Clock: Send + Sync {
    fn now_unix(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// An access token and when it stops being valid.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub access_token: String,
    /// Unix seconds.
    pub expires_on: u64,
    /// Unix seconds, when known.
    pub not_before: Option<u64>,
    pub resource: String,
    pub token_type: String,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .field("resource", &self.resource)
            .finish()
    }
}

/// The original's `msiResponse`: every field a string, in this order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MsiResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: String,
    pub expires_on: String,
    pub not_before: String,
    pub resource: String,
    pub token_type: String,
    /// The identity's client ID, as IMDS itself answers; set only on answers the node agent
    /// got by token exchange (the original's answers have no such field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl AccessToken {
    /// The IMDS-shaped answer at `now` (`expires_in` counts down while a token is cached).
    pub fn to_msi_response(&self, now: u64) -> MsiResponse {
        MsiResponse {
            client_id: None,
            access_token: self.access_token.clone(),
            refresh_token: String::new(),
            expires_in: self.expires_on.saturating_sub(now).to_string(),
            expires_on: self.expires_on.to_string(),
            not_before: self.not_before.unwrap_or(now).to_string(),
            resource: self.resource.clone(),
            token_type: self.token_type.clone(),
        }
    }

    /// Reads an IMDS or Entra (v1 or v2) token response; numbers may be strings or numbers.
    pub fn from_response(body: &Value, resource: &str, now: u64) -> Result<Self, String> {
        let num = |k: &str| -> Option<u64> {
            match body.get(k)? {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
        };
        let access_token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or("token response has no access_token")?
            .to_owned();
        let expires_on = match num("expires_on") {
            Some(on) => on,
            None => {
                let lifetime = num("expires_in")
                    .ok_or("token response has neither expires_on nor expires_in")?;
                now.checked_add(lifetime)
                    .ok_or("token response's expires_in is out of range")?
            }
        };
        Ok(Self {
            access_token,
            expires_on,
            not_before: num("not_before"),
            resource: body
                .get("resource")
                .and_then(Value::as_str)
                .unwrap_or(resource)
                .to_owned(),
            token_type: body
                .get("token_type")
                .and_then(Value::as_str)
                .unwrap_or("Bearer")
                .to_owned(),
        })
    }
}

/// Why no token was obtained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// IMDS or Entra answered with an error (the original's ADAL `TokenRefreshError`): 403.
    /// Worded as ADAL words it, since the original hands that text to the pod.
    #[error(
        "adal: Refresh request failed. Status Code = '{status}'. Response body: {detail} Endpoint {endpoint}"
    )]
    Rejected {
        source_kind: &'static str,
        status: u16,
        /// What of the answer's body the pod may see: [`crate::entra::public_error_detail`].
        detail: String,
        /// The URL asked (with its query; never a secret: those travel in the POST body). Its
        /// authority and tenant are checked ([`crate::entra`]), so it carries no one's choice
        /// of server.
        endpoint: String,
    },
    /// The agent will not act for this identity as it is written (a Secret of another
    /// namespace, an authority that is not Entra's, a tenant that is no GUID or domain): 403.
    /// Nothing was read or asked.
    #[error("{0}")]
    Refused(String),
    /// Could not ask (network, bad configuration, unreadable secret): 503.
    #[error("{0}")]
    Unavailable(String),
    /// Entra answered a workload identity exchange ([`WorkloadIdentitySource`]) with an error:
    /// 503 for 429 and 5xx (may pass), 403 otherwise. [`TokenError::aadsts`] reads the code.
    #[error(
        "Entra answered the workload identity exchange with status {status}: {detail} Endpoint {endpoint}"
    )]
    Exchange {
        /// Entra's HTTP status.
        status: u16,
        /// Entra's AADSTS code ([`crate::entra::aadsts_code`]), when the answer carried one:
        /// e.g. 70021, no federated credential matches (see
        /// [`crate::entra::is_no_matching_federated_record`]).
        aadsts: Option<u32>,
        /// What of the answer's body may be shown: [`crate::entra::public_error_detail`].
        detail: String,
        /// The token URL asked (checked as [`ClientCredentialsSource`]'s is; no secret).
        endpoint: String,
    },
}

impl TokenError {
    /// The original's statuses: 403 for a refusal, 503 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Self::Rejected { .. } | Self::Refused(_) => 403,
            Self::Unavailable(_) => 503,
            Self::Exchange { status, .. } if *status == 429 || *status >= 500 => 503,
            Self::Exchange { .. } => 403,
        }
    }

    /// Entra's AADSTS code, for an [`TokenError::Exchange`] that carried one.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            Self::Exchange { aadsts, .. } => *aadsts,
            _ => None,
        }
    }

    /// Entra found no federated credential of the identity matching the assertion (AADSTS
    /// 70021, 700211, 700212, 700213): none was written, or a new one has not reached Entra yet.
    pub fn is_no_matching_federated_record(&self) -> bool {
        self.aadsts()
            .is_some_and(crate::entra::is_no_matching_federated_record)
    }
}

/// Something that can get an access token for a resource.
pub trait TokenSource: Send + Sync {
    fn fetch<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>>;
    /// The original's metric `operation_type` (`adal_token_msi_userassignedid`, `adal_token`).
    fn operation(&self) -> &'static str;
}

/// The HTTP client for IMDS and Entra: never through a proxy (IMDS must be reached
/// directly), and never following a redirect, so a request goes to exactly the URL that was
/// checked — the node agent's proxied path to the path it routed, a client secret or assertion
/// to the checked authority — and a redirect is the caller's to follow.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("building HTTP client")
}

async fn read_token(
    kind: &'static str,
    resp: Result<reqwest::Response, reqwest::Error>,
    resource: &str,
    clock: &dyn Clock,
) -> Result<AccessToken, TokenError> {
    let (status, endpoint, body) = read_answer(kind, resp).await?;
    if !status.is_success() {
        return Err(TokenError::Rejected {
            source_kind: kind,
            status: status.as_u16(),
            detail: crate::entra::public_error_detail(&body),
            endpoint,
        });
    }
    parse_token(kind, &body, resource, clock)
}

/// The status, URL and body of an answer.
async fn read_answer(
    kind: &'static str,
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<(reqwest::StatusCode, String, String), TokenError> {
    let resp = resp.map_err(|e| TokenError::Unavailable(format!("{kind}: {e}")))?;
    let status = resp.status();
    let endpoint = resp.url().to_string();
    let body = resp
        .text()
        .await
        .map_err(|e| TokenError::Unavailable(format!("{kind}: reading response: {e}")))?;
    Ok((status, endpoint, body))
}

fn parse_token(
    kind: &'static str,
    body: &str,
    resource: &str,
    clock: &dyn Clock,
) -> Result<AccessToken, TokenError> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| TokenError::Unavailable(format!("{kind}: malformed token response: {e}")))?;
    AccessToken::from_response(&v, resource, clock.now_unix())
        .map_err(|e| TokenError::Unavailable(format!("{kind}: {e}")))
}

/// `path` under an IMDS base URL, keeping any path prefix of the base (an emulator may serve
/// IMDS under `/instances/<name>`). `None` unless the URL's path is exactly the prefix followed
/// by `path`, byte for byte: a path the URL parser would rewrite (dot segments, backslashes,
/// characters it encodes) is never sent, since IMDS would then be asked for another path than
/// the one the agent routed.
pub fn imds_url(base: &url::Url, path_and_query: &str) -> Option<url::Url> {
    let mut url = base.clone();
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let expected = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&expected);
    url.set_query(query);
    (url.path() == expected).then_some(url)
}

/// A user-assigned managed identity through the node's IMDS (type 0).
pub struct ImdsTokenSource {
    pub http: reqwest::Client,
    /// Base URL, e.g. `http://169.254.169.254:80`.
    pub endpoint: url::Url,
    /// The identity's client ID; `None` asks for the node's system-assigned identity.
    pub client_id: Option<String>,
    pub clock: Arc<dyn Clock>,
}

impl TokenSource for ImdsTokenSource {
    fn fetch<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        Box::pin(async move {
            let mut url =
                imds_url(&self.endpoint, "/metadata/identity/oauth2/token").ok_or_else(|| {
                    TokenError::Unavailable(format!(
                        "IMDS endpoint {} cannot hold the token path",
                        self.endpoint
                    ))
                })?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("api-version", "2018-02-01");
                if let Some(id) = &self.client_id {
                    q.append_pair("client_id", id);
                }
                q.append_pair("resource", resource);
            }
            let resp = self.http.get(url).header("Metadata", "true").send().await;
            read_token("IMDS", resp, resource, self.clock.as_ref()).await
        })
    }

    fn operation(&self) -> &'static str {
        if self.client_id.is_some() {
            "adal_token_msi_userassignedid"
        } else {
            "adal_token_msi"
        }
    }
}

/// `<authority>/<tenant>/<path>`, on the authority's own origin: a tenant that is no GUID or
/// domain name could rewrite the path, or (`//host/…`) the server itself.
fn entra_token_url(
    authority: &url::Url,
    tenant_id: &str,
    path: &str,
) -> Result<url::Url, TokenError> {
    crate::entra::check_tenant("tenant", tenant_id).map_err(TokenError::Refused)?;
    let mut base = authority.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let url = base
        .join(&format!("{tenant_id}/{path}"))
        .map_err(|e| TokenError::Unavailable(format!("Entra authority: {e}")))?;
    if url.origin() != base.origin() {
        return Err(TokenError::Refused(format!(
            "tenant {tenant_id:?} leaves the authority {base}"
        )));
    }
    Ok(url)
}

/// A service principal's credential.
#[derive(Clone)]
pub enum ClientCredential {
    Secret(String),
    /// An RSA private key (PEM, PKCS#1 or PKCS#8) and its certificate (DER).
    Certificate {
        key_pem: Vec<u8>,
        cert_der: Vec<u8>,
    },
}

/// A service principal through Entra's client-credentials grant, v1 endpoint
/// `<authority>/<tenant>/oauth2/token` (types 1 and 2), as the original's ADAL did.
pub struct ClientCredentialsSource {
    pub http: reqwest::Client,
    /// E.g. `https://login.microsoftonline.com/`.
    pub authority: url::Url,
    pub tenant_id: String,
    pub client_id: String,
    pub credential: ClientCredential,
    pub clock: Arc<dyn Clock>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl ClientCredentialsSource {
    /// `<authority>/<tenant>/oauth2/token` ([`entra_token_url`]).
    fn token_url(&self) -> Result<url::Url, TokenError> {
        entra_token_url(&self.authority, &self.tenant_id, "oauth2/token")
    }

    fn assertion(&self, aud: &str, key_pem: &[u8], cert_der: &[u8]) -> Result<String, TokenError> {
        use base64::Engine;
        use sha2::Digest;
        let now = self.clock.now_unix();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t_s256 = Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert_der)),
        );
        let claims = AssertionClaims {
            aud,
            iss: &self.client_id,
            sub: &self.client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + 600,
        };
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem)
            .map_err(|e| TokenError::Unavailable(format!("certificate private key: {e}")))?;
        jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|e| TokenError::Unavailable(format!("signing client assertion: {e}")))
    }
}

impl TokenSource for ClientCredentialsSource {
    fn fetch<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        Box::pin(async move {
            let url = self.token_url()?;
            let mut form: Vec<(&str, String)> = vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", self.client_id.clone()),
                ("resource", resource.to_owned()),
            ];
            match &self.credential {
                ClientCredential::Secret(s) => form.push(("client_secret", s.clone())),
                ClientCredential::Certificate { key_pem, cert_der } => {
                    form.push((
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                    ));
                    form.push((
                        "client_assertion",
                        self.assertion(url.as_str(), key_pem, cert_der)?,
                    ));
                }
            }
            let resp = self.http.post(url).form(&form).send().await;
            read_token("Entra", resp, resource, self.clock.as_ref()).await
        })
    }

    fn operation(&self) -> &'static str {
        "adal_token"
    }
}

/// Gives a current assertion for [`WorkloadIdentitySource`]: a Kubernetes ServiceAccount token
/// for the audience [`podid_crds::migration::TOKEN_EXCHANGE_AUDIENCE`] (the caller gets one with
/// TokenRequest, or reads a projected one). Asked once per exchange, so it should answer from
/// a cache while its token is fresh. A closure `Fn() -> impl Future<Output = Result<String,
/// TokenError>>` is one.
pub trait AssertionSource: Send + Sync {
    /// The token to present. An error here ends the exchange before Entra is asked.
    fn assertion(&self) -> BoxFuture<'_, Result<String, TokenError>>;
}

impl<F, Fut> AssertionSource for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<String, TokenError>> + Send + 'static,
{
    fn assertion(&self) -> BoxFuture<'_, Result<String, TokenError>> {
        Box::pin(self())
    }
}

/// The v2 scope of a v1 resource, as the workload identity webhook's proxy and the Azure SDKs
/// form it: `<resource>/.default`, the resource unchanged (Entra takes everything before the
/// last `/` as the resource, so `https://database.windows.net/` becomes
/// `https://database.windows.net//.default` and the token's audience keeps its trailing slash);
/// a resource that already ends in `/.default` is a scope already.
pub fn resource_to_scope(resource: &str) -> String {
    if resource.ends_with("/.default") {
        resource.to_owned()
    } else {
        format!("{resource}/.default")
    }
}

/// A user-assigned identity through Entra's workload identity federation: the client-credentials
/// grant of the v2 endpoint `<authority>/<tenant>/oauth2/v2.0/token`, authenticated by a
/// Kubernetes ServiceAccount token ([`AssertionSource`]) that one of the identity's federated
/// credentials matches (issuer, subject and audience). The tenant and authority are checked as
/// for [`ClientCredentialsSource`]. Errors are [`TokenError::Exchange`], carrying Entra's AADSTS
/// code; neither the assertion nor a token is ever put in an error or a log.
pub struct WorkloadIdentitySource {
    pub http: reqwest::Client,
    /// E.g. `https://login.microsoftonline.com/`.
    pub authority: url::Url,
    pub tenant_id: String,
    /// The user-assigned identity's client ID.
    pub client_id: String,
    pub assertion: Arc<dyn AssertionSource>,
    pub clock: Arc<dyn Clock>,
}

impl WorkloadIdentitySource {
    /// `<authority>/<tenant>/oauth2/v2.0/token`, checked as [`ClientCredentialsSource`]'s is.
    pub fn token_url(&self) -> Result<url::Url, TokenError> {
        entra_token_url(&self.authority, &self.tenant_id, "oauth2/v2.0/token")
    }
}

impl TokenSource for WorkloadIdentitySource {
    fn fetch<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        Box::pin(async move {
            const KIND: &str = "Entra workload identity";
            let url = self.token_url()?;
            let assertion = self.assertion.assertion().await?;
            if assertion.is_empty() {
                return Err(TokenError::Unavailable(format!(
                    "{KIND}: the ServiceAccount token is empty"
                )));
            }
            let form: [(&str, &str); 5] = [
                ("grant_type", "client_credentials"),
                ("client_id", &self.client_id),
                ("scope", &resource_to_scope(resource)),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
            ];
            let resp = self.http.post(url).form(&form).send().await;
            let (status, endpoint, body) = read_answer(KIND, resp).await?;
            if !status.is_success() {
                return Err(TokenError::Exchange {
                    status: status.as_u16(),
                    aadsts: crate::entra::aadsts_code(&body),
                    detail: crate::entra::public_error_detail(&body),
                    endpoint,
                });
            }
            let token = parse_token(KIND, &body, resource, self.clock.as_ref())?;
            // A v2 answer names no resource: the token is for the one asked.
            Ok(AccessToken {
                resource: resource.to_owned(),
                ..token
            })
        })
    }

    fn operation(&self) -> &'static str {
        "workload_identity_token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_past_the_end_of_time_is_refused_not_wrapped() {
        // Found by fuzzing (`entra_response`): `now + expires_in` overflowed (a panic in debug
        // builds; in release a token that had "expired" in 1970).
        let body = serde_json::json!({"access_token": "t", "expires_in": u64::MAX});
        assert_eq!(
            AccessToken::from_response(&body, "r", 1_767_225_600),
            Err("token response's expires_in is out of range".to_string())
        );
        let body = serde_json::json!({"access_token": "t", "expires_in": "3599"});
        let t = AccessToken::from_response(&body, "r", 1_767_225_600).unwrap();
        assert_eq!(t.expires_on, 1_767_229_199);
    }

    #[test]
    fn resources_become_default_scopes_keeping_a_trailing_slash() {
        assert_eq!(
            resource_to_scope("https://vault.azure.net"),
            "https://vault.azure.net/.default"
        );
        assert_eq!(
            resource_to_scope("https://database.windows.net/"),
            "https://database.windows.net//.default"
        );
        assert_eq!(
            resource_to_scope("https://graph.microsoft.com/.default"),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(resource_to_scope("api://app-id"), "api://app-id/.default");
    }

    fn source(authority: &str, tenant: &str) -> WorkloadIdentitySource {
        WorkloadIdentitySource {
            http: http_client(),
            authority: url::Url::parse(authority).unwrap(),
            tenant_id: tenant.into(),
            client_id: "c".into(),
            assertion: Arc::new(|| async { Ok::<_, TokenError>("sa-token".to_string()) }),
            clock: Arc::new(SystemClock),
        }
    }

    #[test]
    fn the_v2_token_url_stays_on_the_authority() {
        const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        assert_eq!(
            source("https://login.microsoftonline.com", TENANT)
                .token_url()
                .unwrap()
                .as_str(),
            format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
        );
        assert_eq!(
            source(
                "https://login.partner.example/prefix/",
                "contoso.onmicrosoft.com"
            )
            .token_url()
            .unwrap()
            .as_str(),
            "https://login.partner.example/prefix/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        for bad in ["//evil.example", "../x", "t?x=1", "t#f", ""] {
            let e = source("https://login.microsoftonline.com/", bad)
                .token_url()
                .unwrap_err();
            assert!(matches!(e, TokenError::Refused(_)), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_refused_tenant_or_an_empty_assertion_asks_no_one() {
        // The authority is unreachable: an answer would be Unavailable.
        let mut s = source("http://127.0.0.1:9/", "../x");
        let e = s.fetch("https://vault.azure.net").await.unwrap_err();
        assert!(matches!(e, TokenError::Refused(_)), "{e}");
        s.tenant_id = "contoso.onmicrosoft.com".into();
        s.assertion = Arc::new(|| async { Ok::<_, TokenError>(String::new()) });
        let e = s.fetch("https://vault.azure.net").await.unwrap_err();
        assert!(
            e.to_string().contains("ServiceAccount token is empty"),
            "{e}"
        );
        s.assertion = Arc::new(|| async {
            Err::<String, _>(TokenError::Unavailable("TokenRequest: forbidden".into()))
        });
        let e = s.fetch("https://vault.azure.net").await.unwrap_err();
        assert_eq!(e, TokenError::Unavailable("TokenRequest: forbidden".into()));
    }

    #[test]
    fn exchange_errors_carry_the_aadsts_code_and_map_to_statuses() {
        let e = |status, aadsts| TokenError::Exchange {
            status,
            aadsts,
            detail: "d".into(),
            endpoint: "https://login.example/t/oauth2/v2.0/token".into(),
        };
        assert_eq!(e(400, Some(70021)).aadsts(), Some(70021));
        assert!(e(400, Some(70021)).is_no_matching_federated_record());
        assert!(e(401, Some(700213)).is_no_matching_federated_record());
        assert!(!e(400, Some(700016)).is_no_matching_federated_record());
        assert!(!e(400, None).is_no_matching_federated_record());
        assert_eq!(e(400, Some(70021)).status(), 403);
        assert_eq!(e(429, None).status(), 503);
        assert_eq!(e(503, Some(50196)).status(), 503);
        assert_eq!(TokenError::Unavailable("x".into()).aadsts(), None);
    }
}
