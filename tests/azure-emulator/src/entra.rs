//! The Entra token endpoints (v1 and v2): client credentials with a secret, a certificate
//! assertion, or a federated assertion checked against federated identity credentials and the
//! issuer's own discovery document and JWKS. Errors carry the real AADSTS codes.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use crate::server::{Ctx, request_base, unix_now};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An Entra error: HTTP status, OAuth error, AADSTS code and text.
#[derive(Debug)]
pub struct EntraError {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub text: String,
}

fn err(status: u16, error: &'static str, code: u32, text: impl Into<String>) -> EntraError {
    EntraError {
        status,
        error,
        code,
        text: text.into(),
    }
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let trace = uuid::Uuid::new_v4();
        let corr = uuid::Uuid::new_v4();
        let ts = "2026-01-01 00:00:00Z";
        let body = json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}", self.code, self.text),
            "error_codes": [self.code],
            "timestamp": ts,
            "trace_id": trace.to_string(),
            "correlation_id": corr.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST),
            axum::Json(body),
        )
            .into_response()
    }
}

/// Who the token is for.
struct Principal {
    client_id: String,
    object_id: String,
    mi_resource_id: Option<String>,
}

fn unverified_claims(token: &str) -> Option<(jsonwebtoken::Header, Value)> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    Some((header, serde_json::from_slice(&bytes).ok()?))
}

fn check_time(ctx: &Ctx, claims: &Value) -> Result<(), EntraError> {
    let now = unix_now() + ctx.settings.lock().expect("settings").clock_offset_secs;
    let nbf = claims.get("nbf").and_then(Value::as_u64).unwrap_or(0);
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if now < nbf || now >= exp {
        return Err(err(
            400,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials ."
            ),
        ));
    }
    Ok(())
}

/// Fetches the issuer's JWKS through its discovery document.
async fn issuer_keys(ctx: &Ctx, issuer: &str) -> Result<jsonwebtoken::jwk::JwkSet, EntraError> {
    let roots = ctx.settings.lock().expect("settings").issuer_ca_pem.clone();
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
    for pem in &roots {
        if let Ok(c) = reqwest::Certificate::from_pem(pem.as_bytes()) {
            b = b.add_root_certificate(c);
        }
    }
    let unreachable = |what: &str, e: String| {
        err(
            400,
            "invalid_request",
            90061,
            format!("Request to External OIDC endpoint failed. ({what}: {e})"),
        )
    };
    let http = b
        .build()
        .map_err(|e| unreachable("client", e.to_string()))?;
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc: Value = http
        .get(&discovery_url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unreachable(&discovery_url, e.to_string()))?
        .json()
        .await
        .map_err(|e| unreachable(&discovery_url, e.to_string()))?;
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    http.get(&jwks_uri)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unreachable(&jwks_uri, e.to_string()))?
        .json()
        .await
        .map_err(|e| unreachable(&jwks_uri, e.to_string()))
}

fn verify_signature(
    token: &str,
    header: &jsonwebtoken::Header,
    key: &DecodingKey,
) -> Result<(), EntraError> {
    let mut v = Validation::new(header.alg);
    v.validate_aud = false;
    v.validate_exp = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, key, &v)
        .map(|_| ())
        .map_err(|e| {
            err(
                401,
                "invalid_client",
                700027,
                format!(
                    "Client assertion failed signature validation. ({:?})",
                    e.kind()
                ),
            )
        })
}

async fn authenticate(
    ctx: &Ctx,
    tenant: &str,
    form: &HashMap<String, String>,
    headers: &HeaderMap,
    token_url: &str,
) -> Result<Principal, EntraError> {
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant.is_empty() {
        return Err(err(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        ));
    }
    if grant != "client_credentials" {
        return Err(err(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let configured = ctx.settings.lock().expect("settings").tenant_id.clone();
    if !tenant.eq_ignore_ascii_case(&configured) {
        return Err(err(
            400,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    }
    // client_secret_basic
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        });
    let client_id = form
        .get("client_id")
        .cloned()
        .or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let Some(client_id) = client_id else {
        return Err(err(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    };
    let secret = form
        .get("client_secret")
        .cloned()
        .or_else(|| basic.map(|b| b.1));
    let (app, identity) = {
        let w = ctx.world.lock().expect("world");
        (
            w.apps.get(&client_id).cloned(),
            w.identities
                .values()
                .find(|i| i.client_id.eq_ignore_ascii_case(&client_id))
                .cloned(),
        )
    };
    let not_found = || {
        err(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    };

    if let Some(secret) = secret {
        let app = app.ok_or_else(not_found)?;
        if app.secret.as_deref() != Some(secret.as_str()) {
            return Err(err(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '".to_string() + &client_id + "'."));
        }
        return Ok(Principal {
            client_id,
            object_id: app.object_id,
            mi_resource_id: None,
        });
    }
    let Some(assertion) = form.get("client_assertion") else {
        return Err(err(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
        return Err(err(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_assertion_type'.",
        ));
    }
    let Some((jwt_header, claims)) = unverified_claims(assertion) else {
        return Err(err(
            400,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();

    // Certificate assertion: signed by the app's own registered certificate.
    if let Some(app) = &app
        && let Some(pem) = &app.certificate_pem
        && iss == client_id
    {
        check_time(ctx, &claims)?;
        let aud_ok = claims
            .get("aud")
            .and_then(Value::as_str)
            .is_some_and(|a| a.trim_end_matches('/') == token_url.trim_end_matches('/'));
        if !aud_ok {
            return Err(err(
                401,
                "invalid_client",
                700212,
                format!(
                    "No matching federated identity record found for presented assertion audience '{}'.",
                    claims.get("aud").unwrap_or(&Value::Null)
                ),
            ));
        }
        let key = DecodingKey::from_ec_pem(pem.as_bytes())
            .or_else(|_| DecodingKey::from_rsa_pem(pem.as_bytes()))
            .map_err(|_| {
                err(
                    401,
                    "invalid_client",
                    700027,
                    "Client assertion failed signature validation (no usable key registered).",
                )
            })?;
        verify_signature(assertion, &jwt_header, &key)?;
        return Ok(Principal {
            client_id,
            object_id: app.object_id.clone(),
            mi_resource_id: None,
        });
    }

    // Federated assertion: an external token matched against the identity's credentials.
    let Some(identity) = identity else {
        return Err(not_found());
    };
    check_time(ctx, &claims)?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let auds: Vec<String> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    let now = std::time::Instant::now();
    let matched = identity.federated_credentials.values().any(|f| {
        f.visible_from.is_none_or(|t| t <= now)
            && f.issuer == iss
            && f.subject == sub
            && auds.iter().any(|a| f.audiences.contains(a))
    });
    if !matched {
        return Err(err(
            400,
            "invalid_request",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. https://docs.microsoft.com/azure/active-directory/develop/workload-identity-federation",
                auds.join(",")
            ),
        ));
    }
    let jwks = issuer_keys(ctx, &iss).await?;
    let jwk = match jwt_header.kid.as_deref() {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| err(401, "invalid_client", 700027, "Client assertion failed signature validation: the signing key is not in the issuer's JWKS."))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| {
        err(
            401,
            "invalid_client",
            700027,
            format!("Client assertion failed signature validation. ({e})"),
        )
    })?;
    verify_signature(assertion, &jwt_header, &key)?;
    Ok(Principal {
        client_id: identity.client_id,
        object_id: identity.principal_id,
        mi_resource_id: Some(identity.id),
    })
}

fn access_token(
    ctx: &Ctx,
    tenant: &str,
    resource: &str,
    p: &Principal,
    v2: bool,
    base: &str,
) -> (String, u64) {
    let now = unix_now();
    let exp = now + 3599;
    let mut claims = json!({
        "aud": resource, "tid": tenant, "oid": p.object_id, "sub": p.object_id, "idtyp": "app",
        "iat": now, "nbf": now, "exp": exp,
    });
    if v2 {
        claims["iss"] = json!(format!("{base}/{tenant}/v2.0"));
        claims["azp"] = json!(p.client_id);
        claims["azpacr"] = json!("1");
        claims["ver"] = json!("2.0");
    } else {
        claims["iss"] = json!(format!("https://sts.windows.net/{tenant}/"));
        claims["appid"] = json!(p.client_id);
        claims["appidacr"] = json!("1");
        claims["ver"] = json!("1.0");
    }
    if let Some(id) = &p.mi_resource_id {
        claims["xms_mirid"] = json!(id);
    }
    (ctx.keys.sign(&claims), exp)
}

/// `POST /{tenant}/oauth2/v2.0/token`
pub async fn token_v2(
    State(ctx): State<Ctx>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let base = request_base(&headers);
    let token_url = format!("{base}/{tenant}/oauth2/v2.0/token");
    let Some(scope) = form.get("scope").cloned() else {
        return err(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        )
        .into_response();
    };
    let Some(resource) = scope
        .split_whitespace()
        .next()
        .and_then(|s| s.strip_suffix("/.default"))
        .map(str::to_string)
    else {
        return err(400, "invalid_scope", 1002012, format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).")).into_response();
    };
    match authenticate(&ctx, &tenant, &form, &headers, &token_url).await {
        Ok(p) => {
            let (token, _) = access_token(&ctx, &tenant, &resource, &p, true, &base);
            axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /{tenant}/oauth2/token` (v1: `resource`, string-typed response)
pub async fn token_v1(
    State(ctx): State<Ctx>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let base = request_base(&headers);
    let token_url = format!("{base}/{tenant}/oauth2/token");
    let Some(resource) = form.get("resource").cloned() else {
        return err(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'resource'.",
        )
        .into_response();
    };
    match authenticate(&ctx, &tenant, &form, &headers, &token_url).await {
        Ok(p) => {
            let (token, exp) = access_token(&ctx, &tenant, &resource, &p, false, &base);
            let now = unix_now();
            axum::Json(json!({
                "token_type": "Bearer", "expires_in": "3599", "ext_expires_in": "3599",
                "expires_on": exp.to_string(), "not_before": now.to_string(), "resource": resource, "access_token": token
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}
