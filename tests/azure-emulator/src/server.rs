//! HTTP routes of the emulator: ARM (Microsoft.Compute, Microsoft.ManagedIdentity), Entra token
//! endpoints, IMDS, and the `/_emulator` admin API (seed, faults, call counters).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::keys::Keys;
use crate::state::{App, ArmError, Identity, IdentityBlock, Machine, key, put_fic, validate_fic};

/// ARM resource for which access tokens are accepted.
pub const ARM_AUDIENCES: [&str; 3] = [
    "https://management.azure.com",
    "https://management.azure.com/",
    "https://management.core.windows.net/",
];

/// One injected fault.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Route name (`PATCH vmss`, `POST token`, `GET imds.token`, …); a trailing `*` matches a prefix.
    pub route: String,
    /// Answer with this status (429 and 5xx are the usual ones).
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` seconds sent with the status.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Delay before answering (or before the injected status).
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Drop the connection instead of answering.
    #[serde(default)]
    pub drop: bool,
    /// Apply to the next N matching calls only.
    #[serde(default)]
    pub count: Option<u32>,
    /// Apply to this fraction of matching calls (0.0–1.0); default every call.
    #[serde(default)]
    pub rate: Option<f64>,
}

impl Fault {
    /// The next `count` calls to `route` are refused with 429 and `Retry-After: retry_after`.
    pub fn throttle(route: &str, retry_after: u64, count: u32) -> Self {
        Self {
            route: route.into(),
            status: Some(429),
            retry_after: Some(retry_after),
            count: Some(count),
            ..Default::default()
        }
    }
}

/// Everything mutable.
#[derive(Default)]
pub struct World {
    pub apps: HashMap<String, App>,
    pub identities: HashMap<String, Identity>,
    pub machines: HashMap<String, Machine>,
    pub operations: HashMap<String, (u32, String)>,
    pub faults: Vec<Fault>,
    pub calls: BTreeMap<String, u64>,
    /// Faults injected so far, by route and kind (`PATCH vmss 429`, `POST token drop`, …).
    pub faults_fired: BTreeMap<String, u64>,
    pub fic_writes: HashSet<String>,
    /// Identity ids the caller may not assign (LinkedAuthorizationFailed).
    pub deny_assign: HashSet<String>,
    /// Scale set / VM ids the caller may not write (AuthorizationFailed).
    pub deny_write: HashSet<String>,
    /// AKS managed clusters by lower-cased ARM id: what a GET returns.
    pub managed_clusters: HashMap<String, Value>,
    /// Role assignments by lower-cased ARM id.
    pub role_assignments: BTreeMap<String, RoleAssignment>,
}

/// A role assignment (`Microsoft.Authorization/roleAssignments`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleAssignment {
    pub id: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
}

impl RoleAssignment {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.id.rsplit('/').next().unwrap_or_default(),
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "roleDefinitionId": self.role_definition_id,
                "principalId": self.principal_id,
                "principalType": self.principal_type,
                "scope": self.scope,
            }
        })
    }
}

pub struct Shared {
    pub world: Mutex<World>,
    pub keys: Keys,
    pub settings: Mutex<crate::Settings>,
}

pub type Ctx = Arc<Shared>;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn arm_error(e: &ArmError) -> Response {
    (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(json!({"error": {"code": e.code, "message": e.message}})),
    )
        .into_response()
}

fn arm_json(status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        "x-ms-ratelimit-remaining-subscription-reads",
        "11999".parse().expect("header"),
    );
    h.insert(
        "x-ms-ratelimit-remaining-subscription-writes",
        "1199".parse().expect("header"),
    );
    h.insert(
        "x-ms-request-id",
        uuid::Uuid::new_v4().to_string().parse().expect("header"),
    );
    r
}

/// The route name used for counters and faults.
pub fn route_name(method: &Method, path: &str) -> String {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let name = match s.as_slice() {
        ["_emulator", ..] => "admin",
        [
            "subscriptions",
            _,
            "providers",
            "microsoft.compute",
            "locations",
            _,
            "operations",
            _,
        ] => "operation",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.compute",
            "virtualmachinescalesets",
        ] => "vmss.list",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.compute",
            "virtualmachinescalesets",
            _,
        ] => "vmss",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.compute",
            "virtualmachinescalesets",
            _,
            "virtualmachines",
        ] => "vmss.instances",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.compute",
            "virtualmachines",
            _,
        ] => "vm",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.managedidentity",
            "userassignedidentities",
        ] => "identities",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.managedidentity",
            "userassignedidentities",
            _,
        ] => "identity",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.managedidentity",
            "userassignedidentities",
            _,
            "federatedidentitycredentials",
        ] => "fics",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.managedidentity",
            "userassignedidentities",
            _,
            "federatedidentitycredentials",
            _,
        ] => "fic",
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.containerservice",
            "managedclusters",
            _,
        ] => "managedcluster",
        [
            "subscriptions",
            ..,
            "providers",
            "microsoft.authorization",
            "roleassignments",
        ] => "roleassignments",
        [
            "subscriptions",
            ..,
            "providers",
            "microsoft.authorization",
            "roleassignments",
            _,
        ] => "roleassignment",
        ["subscriptions", ..] => "arm",
        [.., "metadata", "identity", "oauth2", "token"] => "imds.token",
        [.., "oauth2", "token"] | [.., "oauth2", "v2.0", "token"] => "token",
        _ if segs.iter().any(|x| x == "metadata") && segs.iter().any(|x| x == "instance") => {
            "imds.instance"
        }
        _ => "discovery",
    };
    format!("{method} {name}")
}

async fn faults_and_counters(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let route = route_name(req.method(), req.uri().path());
    let fault = {
        let mut w = ctx.world.lock().expect("world");
        if !route.ends_with(" admin") {
            *w.calls.entry(route.clone()).or_default() += 1;
        }
        let mut hit = None;
        for f in w.faults.iter_mut() {
            let matches = match f.route.strip_suffix('*') {
                Some(prefix) => route.starts_with(prefix),
                None => f.route == route,
            };
            if !matches || f.count == Some(0) {
                continue;
            }
            if let Some(rate) = f.rate
                && rand::random::<f64>() >= rate
            {
                continue;
            }
            if let Some(c) = f.count.as_mut() {
                *c -= 1;
            }
            hit = Some(f.clone());
            break;
        }
        if let Some(f) = &hit {
            let kind = match (f.drop, f.status, f.latency_ms) {
                (true, _, _) => "drop".to_string(),
                (false, Some(s), _) => s.to_string(),
                (false, None, Some(_)) => "latency".to_string(),
                _ => "pass".to_string(),
            };
            *w.faults_fired.entry(format!("{route} {kind}")).or_default() += 1;
        }
        w.faults.retain(|f| f.count != Some(0));
        hit
    };
    let Some(f) = fault else {
        return next.run(req).await;
    };
    tracing::debug!(route, ?f, "injecting fault");
    if let Some(ms) = f.latency_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if f.drop {
        // Headers go out, then the body stream fails: the client sees the connection break.
        let stream = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "dropped by fault injection",
            ))
        });
        return Response::builder()
            .status(200)
            .header(header::CONTENT_LENGTH, "100")
            .body(Body::from_stream(stream))
            .expect("response");
    }
    let Some(status) = f.status else {
        return next.run(req).await;
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if route.contains("imds") {
        json!({"error": if status.as_u16() == 429 {"too_many_requests"} else {"server_error"}, "error_description": "injected fault"})
    } else if route.ends_with(" token") {
        json!({"error": "temporarily_unavailable", "error_description": "AADSTS50196: injected fault", "error_codes": [50196]})
    } else if status.as_u16() == 429 {
        json!({"error": {"code": "TooManyRequests", "message": "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:05:00. For more information, see - https://aka.ms/srpthrottlinglimits"}})
    } else {
        json!({"error": {"code": "InternalServerError", "message": "An internal server error occurred (injected fault)."}})
    };
    let mut r = (status, axum::Json(body)).into_response();
    if let Some(s) = f.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, s.to_string().parse().expect("header"));
    }
    r
}

/// Builds the router.
pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route(
            "/_emulator/calls",
            get(admin_calls).delete(admin_reset_calls),
        )
        .route(
            "/_emulator/faults",
            post(admin_add_fault).delete(admin_clear_faults),
        )
        .route("/_emulator/seed", post(admin_seed))
        .route("/_emulator/state", get(admin_state))
        .route("/common/discovery/instance", get(instance_discovery))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(tenant_discovery),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/oauth2/v2.0/token", post(crate::entra::token_v2))
        .route("/{tenant}/oauth2/token", post(crate::entra::token_v1))
        .route(
            "/metadata/identity/oauth2/token",
            get(crate::imds::token_default),
        )
        .route("/metadata/instance", get(crate::imds::instance_default))
        .route(
            "/instances/{instance}/metadata/identity/oauth2/token",
            get(crate::imds::token_for),
        )
        .route(
            "/instances/{instance}/metadata/instance",
            get(crate::imds::instance_for),
        )
        .fallback(arm)
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            faults_and_counters,
        ))
        .with_state(ctx)
}

async fn admin_calls(State(ctx): State<Ctx>) -> impl IntoResponse {
    axum::Json(ctx.world.lock().expect("world").calls.clone())
}

async fn admin_reset_calls(State(ctx): State<Ctx>) -> StatusCode {
    ctx.world.lock().expect("world").calls.clear();
    StatusCode::NO_CONTENT
}

async fn admin_add_fault(State(ctx): State<Ctx>, axum::Json(f): axum::Json<Fault>) -> StatusCode {
    ctx.world.lock().expect("world").faults.push(f);
    StatusCode::CREATED
}

async fn admin_clear_faults(State(ctx): State<Ctx>) -> StatusCode {
    ctx.world.lock().expect("world").faults.clear();
    StatusCode::NO_CONTENT
}

async fn admin_seed(State(ctx): State<Ctx>, axum::Json(seed): axum::Json<crate::Seed>) -> Response {
    match crate::apply_seed(&ctx, &seed) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn admin_state(State(ctx): State<Ctx>) -> impl IntoResponse {
    let w = ctx.world.lock().expect("world");
    let machines: Vec<Value> = w
        .machines
        .values()
        .map(|m| m.to_json(&w.identities, "Succeeded"))
        .collect();
    let identities: Vec<Value> = w
        .identities
        .values()
        .map(|i| {
            let mut v = i.to_json();
            v["federatedIdentityCredentials"] = json!(
                i.federated_credentials
                    .values()
                    .map(|f| f.to_json(&i.id))
                    .collect::<Vec<_>>()
            );
            v
        })
        .collect();
    axum::Json(json!({"machines": machines, "identities": identities}))
}

/// `http(s)://<host>` as the client addressed this request (https when it came through the TLS
/// listener, which marks requests with `x-podid-emulator-tls`).
pub fn request_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let scheme = if headers.contains_key("x-podid-emulator-tls") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

async fn instance_discovery(headers: HeaderMap) -> impl IntoResponse {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let base = request_base(&headers);
    axum::Json(json!({
        "tenant_discovery_endpoint": format!("{base}/common/v2.0/.well-known/openid-configuration"),
        "api-version": "1.1",
        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]
    }))
}

async fn tenant_discovery(Path(tenant): Path<String>, headers: HeaderMap) -> impl IntoResponse {
    let base = request_base(&headers);
    axum::Json(json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "issuer": format!("{base}/{tenant}/v2.0"),
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": "podid-emulator"
    }))
}

async fn jwks(State(ctx): State<Ctx>) -> impl IntoResponse {
    axum::Json(json!({"keys": [ctx.keys.jwk.clone()]}))
}

/// Checks the ARM bearer token: 401 in ARM's shape when missing or invalid.
fn arm_auth(ctx: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if !ctx.settings.lock().expect("settings").require_arm_auth {
        return Ok(());
    }
    let unauthorized = |code: &str, msg: &str| {
        let mut r = arm_json(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": code, "message": msg}}),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer authorization_uri=\"https://login.microsoftonline.com/\", error=\"invalid_token\"".parse().expect("header"));
        Box::new(r)
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
    else {
        return Err(unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ));
    };
    // Besides the public cloud's audiences, the emulator's own base URL (as the request
    // addressed it): clients configured for a custom cloud (the original MIC with
    // `AzureStackCloud`) ask for a token whose resource is the ARM endpoint itself.
    let own = request_base(headers);
    let accepted = |a: &str| ARM_AUDIENCES.contains(&a) || a.trim_end_matches('/') == own;
    match ctx.keys.verify(token) {
        Ok(claims)
            if claims
                .get("aud")
                .and_then(Value::as_str)
                .is_some_and(accepted) =>
        {
            Ok(())
        }
        Ok(_) => Err(unauthorized(
            "InvalidAuthenticationToken",
            "The access token has an invalid audience: it is not valid for https://management.azure.com/.",
        )),
        Err(e) if e.contains("Expired") => Err(unauthorized(
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.",
        )),
        Err(_) => Err(unauthorized(
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )),
    }
}

#[derive(Deserialize)]
struct ArmQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
    #[serde(rename = "$top")]
    top: Option<usize>,
    #[serde(rename = "$skiptoken")]
    skiptoken: Option<usize>,
    #[serde(rename = "$filter")]
    filter: Option<String>,
}

/// Every `/subscriptions/...` request.
async fn arm(
    State(ctx): State<Ctx>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<ArmQuery>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if !path.to_ascii_lowercase().starts_with("/subscriptions/") {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"error": {"code": "NotFound", "message": format!("No route for {path}")}}),
            ),
        )
            .into_response();
    }
    if let Err(r) = arm_auth(&ctx, &headers) {
        return *r;
    }
    if q.api_version.is_none() {
        return arm_error(&ArmError::new(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return arm_error(&ArmError::new(
                    400,
                    "InvalidRequestContent",
                    format!(
                        "The request content was invalid and could not be deserialized: '{e}'."
                    ),
                ));
            }
        }
    };
    let route = route_name(&method, &path);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let base = request_base(&headers);
    match route.split_once(' ').map(|x| x.1).unwrap_or("") {
        "vmss" | "vm" => {
            machine(
                &ctx,
                &method,
                &path,
                &segs,
                &base,
                q.api_version.as_deref().unwrap_or(""),
                body,
            )
            .await
        }
        "vmss.list" if method == Method::GET => {
            // The resource group's scale sets, two per page (so clients follow `nextLink`).
            let w = ctx.world.lock().expect("world");
            let prefix = format!("{}/", key(&format!("/{}", segs[..7].join("/"))));
            let mut all: Vec<Value> = w
                .machines
                .iter()
                .filter(|(k, m)| m.is_scale_set && k.starts_with(&prefix))
                .map(|(_, m)| m.to_json(&w.identities, "Succeeded"))
                .collect();
            all.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_string());
            let skip = q.skiptoken.unwrap_or(0);
            let top = q.top.unwrap_or(2).max(1);
            let page: Vec<Value> = all.iter().skip(skip).take(top).cloned().collect();
            let mut out = json!({"value": page});
            if skip + top < all.len() {
                out["nextLink"] = json!(format!(
                    "{base}{path}?api-version={}&$top={top}&$skiptoken={}",
                    q.api_version.unwrap_or_default(),
                    skip + top
                ));
            }
            arm_json(StatusCode::OK, out)
        }
        "vmss.instances" => {
            let w = ctx.world.lock().expect("world");
            let id = segs[..8].join("/");
            match w.machines.get(&key(&format!("/{id}"))) {
                Some(m) => {
                    let value: Vec<Value> = m.instances.iter().map(|i| json!({
                        "id": format!("{}/virtualMachines/{i}", m.id), "name": format!("{}_{i}", m.name), "instanceId": i,
                        "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines", "location": m.location,
                        "properties": {"provisioningState": "Succeeded", "osProfile": {"computerName": format!("{}{:06}", m.name, i.parse::<u64>().unwrap_or(0))}}
                    })).collect();
                    arm_json(StatusCode::OK, json!({"value": value}))
                }
                None => not_found(&path, "Microsoft.Compute/virtualMachineScaleSets"),
            }
        }
        "operation" => {
            let op = segs[7].to_string();
            let mut w = ctx.world.lock().expect("world");
            let Some((left, machine)) = w.operations.get(&op).cloned() else {
                return arm_error(&ArmError::new(
                    404,
                    "NotFound",
                    format!("Operation {op} was not found."),
                ));
            };
            if left > 0 {
                w.operations.insert(op.clone(), (left - 1, machine));
                return arm_json(
                    StatusCode::OK,
                    json!({"startTime": "2026-01-01T00:00:00Z", "status": "InProgress", "name": op}),
                );
            }
            if let Some(m) = w.machines.get_mut(&machine) {
                m.identity.complete();
            }
            arm_json(
                StatusCode::OK,
                json!({"startTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:05Z", "status": "Succeeded", "name": op}),
            )
        }
        "identities" => {
            let w = ctx.world.lock().expect("world");
            let prefix = key(&format!("/{}", segs[..4].join("/")));
            let mut value: Vec<Value> = w
                .identities
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, i)| i.to_json())
                .collect();
            value.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_string());
            arm_json(StatusCode::OK, json!({"value": value}))
        }
        "identity" => identity(&ctx, &method, &path, &segs, body),
        "fics" => {
            let w = ctx.world.lock().expect("world");
            let id = key(&format!("/{}", segs[..8].join("/")));
            let Some(i) = w.identities.get(&id) else {
                return arm_error(&ArmError::new(
                    404,
                    "ParentResourceNotFound",
                    "The parent user-assigned identity doesn't exist.",
                ));
            };
            let all: Vec<Value> = i
                .federated_credentials
                .values()
                .map(|f| f.to_json(&i.id))
                .collect();
            let skip = q.skiptoken.unwrap_or(0);
            let top = q.top.unwrap_or(all.len().max(1));
            let page: Vec<Value> = all.iter().skip(skip).take(top).cloned().collect();
            let mut out = json!({"value": page});
            if skip + top < all.len() {
                out["nextLink"] = json!(format!(
                    "{base}{path}?api-version={}&$top={top}&$skiptoken={}",
                    q.api_version.unwrap_or_default(),
                    skip + top
                ));
            }
            arm_json(StatusCode::OK, out)
        }
        "fic" => fic(&ctx, &method, &path, &segs, body).await,
        "roleassignments" if method == Method::GET => {
            role_assignment_list(&ctx, &segs, q.filter.as_deref())
        }
        "roleassignment" => role_assignment(&ctx, &method, &segs, body),
        "managedcluster" if method == Method::GET => {
            let w = ctx.world.lock().expect("world");
            match w.managed_clusters.get(&key(&path)) {
                Some(c) => arm_json(StatusCode::OK, c.clone()),
                None => not_found(&path, "Microsoft.ContainerService/managedClusters"),
            }
        }
        _ => arm_error(&ArmError::new(
            404,
            "NoRegisteredProviderFound",
            format!("No registered resource provider found for path '{path}'."),
        )),
    }
}

fn not_found(path: &str, ty: &str) -> Response {
    let name = path.rsplit('/').next().unwrap_or_default();
    arm_error(&ArmError::new(
        404,
        "ResourceNotFound",
        format!(
            "The Resource '{ty}/{name}' under resource group was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    ))
}

async fn machine(
    ctx: &Shared,
    method: &Method,
    path: &str,
    segs: &[&str],
    base: &str,
    api_version: &str,
    body: Value,
) -> Response {
    let id = format!("/{}", segs.join("/"));
    let k = key(&id);
    let is_scale_set = segs[6].eq_ignore_ascii_case("virtualMachineScaleSets");
    let ty = if is_scale_set {
        "Microsoft.Compute/virtualMachineScaleSets"
    } else {
        "Microsoft.Compute/virtualMachines"
    };
    let (lro_polls, sub) = {
        let s = ctx.settings.lock().expect("settings");
        (s.lro_polls, segs[1].to_string())
    };
    let mut w = ctx.world.lock().expect("world");
    match *method {
        Method::GET => match w.machines.get(&k) {
            Some(m) => arm_json(StatusCode::OK, m.to_json(&w.identities, "Succeeded")),
            None => not_found(path, ty),
        },
        Method::PATCH | Method::PUT => {
            let replace = *method == Method::PUT;
            let exists = w.machines.contains_key(&k);
            if !exists && !replace {
                return not_found(path, ty);
            }
            if w.deny_write.contains(&k) {
                return arm_error(&ArmError::new(
                    403,
                    "AuthorizationFailed",
                    format!(
                        "The client 'podid' with object id 'podid' does not have authorization to perform action '{ty}/write' over scope '{id}' or the scope is invalid. If access was recently granted, please refresh your credentials."
                    ),
                ));
            }
            let ids = body
                .get("identity")
                .and_then(|i| i.get("userAssignedIdentities"))
                .and_then(Value::as_object);
            let denied: Vec<String> = ids
                .into_iter()
                .flatten()
                .filter(|(i, v)| !v.is_null() && w.deny_assign.contains(&key(i)))
                .map(|(i, _)| i.clone())
                .collect();
            if !denied.is_empty() {
                return arm_error(&ArmError::new(
                    403,
                    "LinkedAuthorizationFailed",
                    format!(
                        "The client 'podid' with object id 'podid' has permission to perform action '{ty}/write' on scope '{id}'; however, it does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '{}' or the linked scope(s) are invalid.",
                        denied.join(",")
                    ),
                ));
            }
            let identities = w.identities.clone();
            let created = !exists;
            let m = w.machines.entry(k.clone()).or_insert_with(|| Machine {
                id: id.clone(),
                name: segs[7].to_string(),
                location: body
                    .get("location")
                    .and_then(Value::as_str)
                    .unwrap_or("eastus")
                    .to_string(),
                is_scale_set,
                instances: Vec::new(),
                principal_id: uuid::Uuid::new_v4().to_string(),
                tenant_id: String::new(),
                identity: IdentityBlock::default(),
                etag: 0,
                extra: json!({}),
            });
            let before = m.identity.clone();
            if let Some(identity) = body.get("identity") {
                if let Err(e) = m.identity.apply(identity, replace, &identities) {
                    m.identity = before;
                    if created {
                        w.machines.remove(&k);
                    }
                    return arm_error(&e);
                }
            } else if replace {
                m.identity = IdentityBlock::default();
            }
            for field in ["properties", "sku", "tags", "zones", "plan"] {
                if let Some(v) = body.get(field) {
                    m.extra[field] = v.clone();
                }
            }
            m.etag += 1;
            let location = m.location.clone();
            let op = uuid::Uuid::new_v4().to_string();
            let state = if lro_polls > 0 {
                "Updating"
            } else {
                "Succeeded"
            };
            if lro_polls == 0 {
                m.identity.complete();
            }
            let out = m.to_json(&identities, state);
            w.operations.insert(op.clone(), (lro_polls, k));
            let mut r = arm_json(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                out,
            );
            let h = r.headers_mut();
            h.insert("Azure-AsyncOperation", format!("{base}/subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}/operations/{op}?api-version={api_version}").parse().expect("header"));
            h.insert(
                "Azure-AsyncNotification",
                "Enabled".parse().expect("header"),
            );
            h.insert("x-ms-ratelimit-remaining-resource", "Microsoft.Compute/VMScaleSetActionsSubscriptionMaximum;1499,Microsoft.Compute/VMScaleSetActionsResource;11".parse().expect("header"));
            r
        }
        _ => arm_error(&ArmError::new(
            405,
            "MethodNotAllowed",
            format!("The requested resource does not support http method '{method}'."),
        )),
    }
}

fn identity(ctx: &Shared, method: &Method, path: &str, segs: &[&str], body: Value) -> Response {
    let id = format!("/{}", segs.join("/"));
    let k = key(&id);
    let tenant = ctx.settings.lock().expect("settings").tenant_id.clone();
    let mut w = ctx.world.lock().expect("world");
    match *method {
        Method::GET => match w.identities.get(&k) {
            Some(i) => arm_json(StatusCode::OK, i.to_json()),
            None => not_found(path, "Microsoft.ManagedIdentity/userAssignedIdentities"),
        },
        Method::PUT | Method::PATCH => {
            let created = !w.identities.contains_key(&k);
            if created && *method == Method::PATCH {
                return not_found(path, "Microsoft.ManagedIdentity/userAssignedIdentities");
            }
            let i = w.identities.entry(k).or_insert_with(|| Identity {
                id: id.clone(),
                name: segs[7].to_string(),
                location: body
                    .get("location")
                    .and_then(Value::as_str)
                    .unwrap_or("eastus")
                    .to_string(),
                client_id: uuid::Uuid::new_v4().to_string(),
                principal_id: uuid::Uuid::new_v4().to_string(),
                tenant_id: tenant,
                tags: BTreeMap::new(),
                federated_credentials: BTreeMap::new(),
            });
            if let Some(tags) = body
                .get("tags")
                .and_then(|t| serde_json::from_value(t.clone()).ok())
            {
                i.tags = tags;
            }
            let out = i.to_json();
            arm_json(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                out,
            )
        }
        Method::DELETE => match w.identities.remove(&k) {
            Some(_) => arm_json(StatusCode::OK, Value::Null),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        _ => arm_error(&ArmError::new(
            405,
            "MethodNotAllowed",
            "Method not allowed.",
        )),
    }
}

async fn fic(ctx: &Shared, method: &Method, path: &str, segs: &[&str], body: Value) -> Response {
    let parent = key(&format!("/{}", segs[..8].join("/")));
    let name = segs[9].to_string();
    let latency = ctx.settings.lock().expect("settings").fic_write_latency;
    if *method == Method::GET {
        let w = ctx.world.lock().expect("world");
        let Some(i) = w.identities.get(&parent) else {
            return arm_error(&ArmError::new(
                404,
                "ParentResourceNotFound",
                "The parent user-assigned identity doesn't exist.",
            ));
        };
        return match i.federated_credentials.get(&name) {
            Some(f) => arm_json(StatusCode::OK, f.to_json(&i.id)),
            None => not_found(
                path,
                "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            ),
        };
    }
    if *method != Method::PUT && *method != Method::DELETE {
        return arm_error(&ArmError::new(
            405,
            "MethodNotAllowed",
            "Method not allowed.",
        ));
    }
    // A write holds the identity for `latency`; an overlapping write to the same identity is refused.
    {
        let mut w = ctx.world.lock().expect("world");
        if !w.identities.contains_key(&parent) {
            return arm_error(&ArmError::new(
                404,
                "ParentResourceNotFound",
                "The parent user-assigned identity doesn't exist.",
            ));
        }
        if !w.fic_writes.insert(parent.clone()) {
            return arm_error(&ArmError::new(
                409,
                "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
                format!(
                    "Too many Federated Identity Credentials are written concurrently for the managed identity '{parent}'. Concurrent Federated Identity Credentials writes under the same managed identity are not supported."
                ),
            ));
        }
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut w = ctx.world.lock().expect("world");
    w.fic_writes.remove(&parent);
    let Some(i) = w.identities.get_mut(&parent) else {
        return arm_error(&ArmError::new(
            404,
            "ParentResourceNotFound",
            "The parent user-assigned identity doesn't exist.",
        ));
    };
    if *method == Method::DELETE {
        return match i.federated_credentials.remove(&name) {
            Some(_) => arm_json(StatusCode::OK, Value::Null),
            None => StatusCode::NO_CONTENT.into_response(),
        };
    }
    let mut fic = match validate_fic(&name, &body) {
        Ok(f) => f,
        Err(e) => return arm_error(&e),
    };
    let propagation = ctx.settings.lock().expect("settings").fic_propagation;
    if !propagation.is_zero() && !i.federated_credentials.contains_key(&name) {
        fic.visible_from = Some(std::time::Instant::now() + propagation);
    }
    match put_fic(i, fic.clone()) {
        Ok(created) => {
            let out = fic.to_json(&i.id);
            let mut r = arm_json(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                out,
            );
            if created {
                r.headers_mut()
                    .insert(header::LOCATION, path.parse().expect("header"));
            }
            r
        }
        Err(e) => arm_error(&e),
    }
}

/// `GET {scope}/providers/Microsoft.Authorization/roleAssignments`: with `$filter=atScope()`,
/// the assignments at the scope or above it; `assignedTo('{id}')` keeps one principal's. Without
/// a filter, those at, above and below the scope (as ARM lists them).
fn role_assignment_list(ctx: &Shared, segs: &[&str], filter: Option<&str>) -> Response {
    let scope = key(&format!("/{}", segs[..segs.len() - 3].join("/")));
    let filter = filter.unwrap_or_default().to_ascii_lowercase();
    let at_scope = filter.contains("atscope()");
    let principal = filter
        .split_once("assignedto('")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(p, _)| p.to_owned());
    let w = ctx.world.lock().expect("world");
    let value: Vec<Value> = w
        .role_assignments
        .values()
        .filter(|a| {
            let s = key(&a.scope);
            let above = scope == s || scope.starts_with(&format!("{s}/"));
            let below = s.starts_with(&format!("{scope}/"));
            above || (!at_scope && below)
        })
        .filter(|a| {
            principal
                .as_deref()
                .is_none_or(|p| a.principal_id.eq_ignore_ascii_case(p))
        })
        .map(RoleAssignment::to_json)
        .collect();
    arm_json(StatusCode::OK, json!({"value": value}))
}

/// `PUT`, `GET` and `DELETE` of `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`,
/// as ARM answers them: the name must be a GUID; the same role for the same principal at the same
/// scope under another name is 409 `RoleAssignmentExists`; an assignment is immutable (a PUT
/// with other properties is 409 too); a scope that names a missing user-assigned identity is 404.
fn role_assignment(ctx: &Shared, method: &Method, segs: &[&str], body: Value) -> Response {
    let id = format!("/{}", segs.join("/"));
    let k = key(&id);
    let name = segs[segs.len() - 1];
    let scope = format!("/{}", segs[..segs.len() - 4].join("/"));
    let mut w = ctx.world.lock().expect("world");
    match *method {
        Method::GET => match w.role_assignments.get(&k) {
            Some(a) => arm_json(StatusCode::OK, a.to_json()),
            None => arm_error(&ArmError::new(
                404,
                "RoleAssignmentNotFound",
                format!("The role assignment '{name}' is not found."),
            )),
        },
        Method::DELETE => match w.role_assignments.remove(&k) {
            Some(a) => arm_json(StatusCode::OK, a.to_json()),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        Method::PUT => {
            if uuid::Uuid::parse_str(name).is_err() {
                return arm_error(&ArmError::new(
                    400,
                    "InvalidRoleAssignmentId",
                    format!(
                        "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
                    ),
                ));
            }
            let p = &body["properties"];
            let (Some(role), Some(principal)) =
                (p["roleDefinitionId"].as_str(), p["principalId"].as_str())
            else {
                return arm_error(&ArmError::new(
                    400,
                    "InvalidRoleAssignmentRequest",
                    "The request must name properties.roleDefinitionId and properties.principalId.",
                ));
            };
            let ks = key(&scope);
            let identity_scope =
                ks.contains("/providers/microsoft.managedidentity/userassignedidentities/");
            if identity_scope && !w.identities.contains_key(&ks) {
                return not_found(&scope, "Microsoft.ManagedIdentity/userAssignedIdentities");
            }
            let new = RoleAssignment {
                id: id.clone(),
                scope: scope.clone(),
                role_definition_id: role.to_owned(),
                principal_id: principal.to_owned(),
                principal_type: p["principalType"]
                    .as_str()
                    .unwrap_or("ServicePrincipal")
                    .to_owned(),
            };
            let same = |a: &RoleAssignment| {
                key(&a.scope) == ks
                    && a.principal_id.eq_ignore_ascii_case(principal)
                    && key(&a.role_definition_id) == key(role)
            };
            if let Some(existing) = w.role_assignments.get(&k) {
                return if same(existing) {
                    arm_json(StatusCode::OK, existing.to_json())
                } else {
                    arm_error(&ArmError::new(
                        409,
                        "RoleAssignmentUpdateNotPermitted",
                        "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
                    ))
                };
            }
            if w.role_assignments.values().any(same) {
                return arm_error(&ArmError::new(
                    409,
                    "RoleAssignmentExists",
                    "The role assignment already exists.",
                ));
            }
            let out = new.to_json();
            w.role_assignments.insert(k, new);
            arm_json(StatusCode::CREATED, out)
        }
        _ => arm_error(&ArmError::new(
            405,
            "MethodNotAllowed",
            format!("The requested resource does not support http method '{method}'."),
        )),
    }
}
