//! The agent's HTTP server: IMDS's token endpoint answered with the calling pod's identity,
//! the legacy `/host/token`, everything else proxied to the real IMDS; plus `/healthz` and
//! `/metrics` on their own ports.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use podid_crds::AzureIdentity;
use podid_crds::policy::Mode;
use podid_crds::serving::{Serving, ServingSettings, pod_serving, recorded_serving};
use podid_telemetry::AdminRoutes;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::cache::{CacheKey, Clock, TokenCache};
use crate::federated::{FederatedError, Federation};
use crate::metrics::Metrics;
use crate::reply::Reply;
use crate::request::{self, Route, TokenRequest};
use crate::resolve::{self, ResolveError};
use crate::token::{AccessToken, Credentials, TokenError};
use crate::view::{ClusterView, PodInfo, PodLookupError, pod_for_ip};
use crate::wait::{RetryPolicy, wait_for_assignment};

/// Behaviour switches of the server (from the command line).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub mode: Mode,
    pub force_namespaced: bool,
    pub metadata_header_required: bool,
    pub block_instance_metadata: bool,
    pub set_retry_after_header: bool,
    pub retry: RetryPolicy,
    /// podid: restore the original's full wait for pods no binding grants an identity.
    pub wait_for_unbound_pods: bool,
    /// `--multiple-identities`.
    pub multiple_identities: resolve::MultipleIdentities,
    pub mic_namespace: String,
    /// The real IMDS, e.g. `http://169.254.169.254:80/`.
    pub imds_endpoint: url::Url,
    /// Scans of the pod index for a caller's IP before giving up (the original: 5, 300 ms apart).
    pub pod_lookup_attempts: u32,
    pub pod_lookup_interval: Duration,
    /// Largest request body passed through to IMDS (413 beyond).
    pub max_body_bytes: usize,
    /// Time a caller has to send a proxied request's body (408 after).
    pub body_read_timeout: Duration,
    /// `--federated`, `--identity-serving`.
    pub serving: ServingSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Standard,
            force_namespaced: false,
            metadata_header_required: true,
            block_instance_metadata: false,
            set_retry_after_header: false,
            retry: RetryPolicy::default(),
            wait_for_unbound_pods: false,
            multiple_identities: resolve::MultipleIdentities::Refuse,
            mic_namespace: "default".into(),
            imds_endpoint: url::Url::parse("http://169.254.169.254:80/").expect("static URL"),
            pod_lookup_attempts: 5,
            pod_lookup_interval: Duration::from_millis(300),
            max_body_bytes: MAX_BODY_BYTES,
            body_read_timeout: READ_TIMEOUT,
            serving: ServingSettings::assigned_only(),
        }
    }
}

/// Everything the handlers share.
pub struct Agent {
    pub config: ServerConfig,
    pub view: Arc<dyn ClusterView>,
    pub credentials: Arc<dyn Credentials>,
    /// Token exchange, when `--federated`.
    pub federation: Option<Federation>,
    pub cache: TokenCache,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Client for the IMDS proxy.
    pub http: reqwest::Client,
    /// Set after the first iptables reconcile (`/healthz` says `Active`).
    pub initialized: AtomicBool,
    pub shutdown: CancellationToken,
}

/// What became of one request, for metrics and the log line.
struct Outcome {
    reply: Response,
    status: u16,
    result: &'static str,
    namespace: String,
    resource: String,
}

impl Outcome {
    fn new(reply: Reply, result: &'static str) -> Self {
        Self {
            status: reply.status,
            reply: reply.into_response(),
            result,
            namespace: String::new(),
            resource: String::new(),
        }
    }

    fn raw(resp: Response, result: &'static str) -> Self {
        Self {
            status: resp.status().as_u16(),
            reply: resp,
            result,
            namespace: String::new(),
            resource: String::new(),
        }
    }

    fn pod(mut self, pod: &PodInfo) -> Self {
        self.namespace = pod.facts.namespace.clone();
        self
    }

    fn resource(mut self, r: &TokenRequest) -> Self {
        self.resource = r.resource.clone();
        self
    }
}

/// The IMDS-facing router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new().fallback(dispatch).with_state(agent)
}

/// `/healthz` (always 200: `Active` once iptables is in place, else `Not Active`).
pub fn probe_router(agent: Arc<Agent>) -> Router {
    AdminRoutes::new()
        .health(move || agent.initialized.load(Ordering::SeqCst))
        .into_router()
}

/// `/metrics` in the OpenMetrics text format.
pub fn metrics_router(agent: Arc<Agent>) -> Router {
    AdminRoutes::new()
        .metrics(move || agent.metrics.render())
        .into_router()
}

fn caller_ip(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

async fn dispatch(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    // The path is checked before it is routed, so the path routed is the path forwarded.
    let route = request::check_path(req.uri().path(), req.uri().query())
        .map(|()| request::route(req.uri().path(), agent.config.block_instance_metadata));
    let ip = caller_ip(addr);
    let span = info_span!(
        "request",
        method = %req.method(),
        path = req.uri().path(),
        remote = %ip,
        pod.namespace = tracing::field::Empty,
        pod.name = tracing::field::Empty,
    );
    let (name, outcome) = async {
        match &route {
            Err(e) => (
                "non_canonical_path",
                Outcome::new(
                    e.reply(),
                    if e.reply().status == 301 {
                        "redirected"
                    } else {
                        "bad_request"
                    },
                ),
            ),
            Ok(Route::Token) => ("token", token(&agent, ip, req).await),
            Ok(Route::HostToken) => ("host_token", host_token(&agent, ip, req).await),
            Ok(Route::InvalidToken) => (
                "invalid_token_path",
                Outcome::new(request::RequestError::InvalidPath.reply(), "bad_request"),
            ),
            Ok(Route::BlockedInstance) => (
                "instance",
                Outcome::new(
                    Reply::text(403, "Request blocked by AAD Pod Identity NMI"),
                    "blocked",
                ),
            ),
            Ok(Route::Proxy) => ("proxy", proxy_checked(&agent, req).await),
        }
    }
    .instrument(span.clone())
    .await;
    let secs = started.elapsed().as_secs_f64();
    if let Ok(route @ (Route::Token | Route::HostToken)) = route {
        let op = if route == Route::Token {
            "/metadata/identity/oauth2/token"
        } else {
            "/host/token"
        };
        agent.metrics.observe_nmi(
            op,
            outcome.status,
            &outcome.namespace,
            &outcome.resource,
            secs,
        );
    }
    agent.metrics.observe_request(name, outcome.result, secs);
    span.in_scope(|| {
        tracing::info!(
            status = outcome.status,
            result = outcome.result,
            elapsed_ms = (secs * 1000.0) as u64,
            "request served"
        )
    });
    outcome.reply
}

/// Finds the caller's pod, scanning again a few times: a new pod's IP can reach the agent
/// before its watch event does.
async fn find_pod(agent: &Agent, ip: IpAddr) -> Result<PodInfo, PodLookupError> {
    let mut attempt = 1;
    loop {
        match pod_for_ip(agent.view.as_ref(), ip) {
            Ok(p) => return Ok(p),
            Err(e) => {
                agent.metrics.kubernetes_error("get_pod_list");
                if attempt >= agent.config.pod_lookup_attempts.max(1) {
                    return Err(e);
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(agent.config.pod_lookup_interval).await;
    }
}

fn record_pod(pod: &PodInfo) {
    let span = tracing::Span::current();
    span.record("pod.namespace", pod.facts.namespace.as_str());
    span.record("pod.name", pod.facts.name.as_str());
}

async fn token(agent: &Agent, ip: IpAddr, req: Request) -> Outcome {
    if let Err(e) =
        request::check_metadata_header(req.headers(), agent.config.metadata_header_required)
    {
        return Outcome::new(e.reply(), "bad_request");
    }
    let parsed = match request::parse_token_query(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return Outcome::new(e.reply(), "bad_request"),
    };
    let pod = match find_pod(agent, ip).await {
        Ok(p) => p,
        Err(e @ PodLookupError::Unknown(_)) => {
            tracing::warn!(error = %e, "token request from an address that is no pod of this node");
            return Outcome::new(Reply::text(403, e.to_string()), "unknown_pod").resource(&parsed);
        }
        Err(e @ PodLookupError::Terminating(..)) => {
            tracing::warn!(error = %e, "token request from the address of a pod being deleted");
            let reply = Reply {
                retry_after: Some(5),
                ..Reply::text(503, e.to_string())
            };
            return Outcome::new(reply, "terminating_pod").resource(&parsed);
        }
        Err(e) => {
            return Outcome::new(Reply::text(500, e.to_string()), "ambiguous_pod")
                .resource(&parsed);
        }
    };
    record_pod(&pod);
    let exempt = resolve::is_exempt(
        &pod,
        agent.view.index().exceptions_in(&pod.facts.namespace),
        &agent.config.mic_namespace,
    );
    if exempt {
        tracing::info!("pod is excepted: passing the request through to IMDS");
        return proxy(agent, req).await.pod(&pod).resource(&parsed);
    }
    let out = serve_pod(agent, &pod, Caller::Address(ip), &parsed, |tokens, _| {
        if let [one] = tokens {
            serde_json::to_string(one)
        } else {
            serde_json::to_string(tokens)
        }
    })
    .await;
    out.pod(&pod).resource(&parsed)
}

async fn host_token(agent: &Agent, ip: IpAddr, req: Request) -> Outcome {
    let parsed = match request::parse_host_token(req.headers(), ip, req.uri().query()) {
        Ok(p) => p,
        Err(e) => return Outcome::new(e.reply(), "bad_request"),
    };
    let Some(pod) = agent.view.pod(&parsed.pod_namespace, &parsed.pod_name) else {
        return Outcome::new(
            Reply::text(
                404,
                format!(
                    "no azure identity found for pod {}/{}: no such pod on this node",
                    parsed.pod_namespace, parsed.pod_name
                ),
            ),
            "no_identity",
        )
        .resource(&parsed.token);
    };
    record_pod(&pod);
    serve_pod(
        agent,
        &pod,
        Caller::Named,
        &parsed.token,
        |tokens, identity| {
            serde_json::to_string(&serde_json::json!({
                "token": tokens.first(),
                "clientid": identity.spec.client_id,
            }))
        },
    )
    .await
    .pod(&pod)
    .resource(&parsed.token)
}

/// How a request found its pod: by the caller's address (the token path), or by the name in its
/// headers (`/host/token`, from the node itself).
#[derive(Clone, Copy, Debug)]
enum Caller {
    Address(IpAddr),
    Named,
}

/// Resolves the pod's identity for the request, gets (or reuses) its tokens and renders them.
async fn serve_pod(
    agent: &Agent,
    pod: &PodInfo,
    caller: Caller,
    req: &TokenRequest,
    render: impl FnOnce(&[crate::token::MsiResponse], &AzureIdentity) -> serde_json::Result<String>,
) -> Outcome {
    let identity = match resolve_identity(agent, pod, req).await {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(error = %e, "no identity for this request");
            return Outcome::new(e.reply(agent.config.set_retry_after_header), e.label());
        }
    };
    tracing::debug!(
        identity.namespace = identity.metadata.namespace.as_deref().unwrap_or(""),
        identity.name = identity.metadata.name.as_deref().unwrap_or(""),
        "identity selected"
    );
    let serving = serving_for(agent, pod, &identity);
    let tokens = match tokens_served(agent, pod, &identity, &req.resource, serving).await {
        Ok(t) => t,
        Err(TokenFailure::Federated(f)) => {
            tracing::warn!(
                serving = %serving,
                error = %f.description,
                "token exchange failed for pod: {}",
                pod.key()
            );
            let mut reply = f.reply();
            if f.status == 503 && agent.config.set_retry_after_header {
                reply.retry_after = Some(5);
            }
            return Outcome::new(reply, "exchange_failed");
        }
        Err(TokenFailure::Token(e)) => {
            tracing::warn!(
                error = %e,
                "failed to get service principal token for pod: {}",
                pod.key()
            );
            // The original answers with the token error's own text.
            let msg = e.to_string();
            let result = if e.status() == 403 {
                "token_rejected"
            } else {
                "token_unavailable"
            };
            return Outcome::new(Reply::text(e.status(), msg), result);
        }
    };
    // Getting the tokens can take seconds (Entra, IMDS, the wait for assignment before): the
    // pod may have been relabelled, deleted or unbound meanwhile. They go out only if the view
    // says now what it said when the identity was chosen.
    if let Err(changed) = still_serves(agent, pod, caller, &identity) {
        tracing::warn!(error = %changed, "not serving a token the pod is no longer granted");
        let reply = Reply {
            retry_after: Some(5),
            ..Reply::text(503, changed)
        };
        return Outcome::new(reply, "pod_changed");
    }
    let now = agent.clock.now_unix();
    let msi: Vec<_> = tokens
        .iter()
        .map(|t| crate::token::MsiResponse {
            // An identity served by exchange is answered as IMDS answers, naming the identity
            // (whichever source the token came from, cache and fallback included).
            client_id: serving.exchanges().then(|| identity.spec.client_id.clone()),
            ..t.to_msi_response(now)
        })
        .collect();
    match render(&msi, &identity) {
        Ok(body) => Outcome::new(Reply::json(body), "ok"),
        Err(e) => Outcome::new(Reply::text(500, e.to_string()), "internal"),
    }
}

/// `Ok` when the caller is still `served` (the same pod, by UID, found the same way) and its
/// bindings, as the view has them now, still grant `identity` with the same IDs; else why not.
fn still_serves(
    agent: &Agent,
    served: &PodInfo,
    caller: Caller,
    identity: &AzureIdentity,
) -> Result<(), String> {
    let now = match caller {
        Caller::Address(ip) => pod_for_ip(agent.view.as_ref(), ip).ok(),
        Caller::Named => agent.view.pod(&served.facts.namespace, &served.facts.name),
    };
    let changed = || {
        format!(
            "pod {} changed while its token was fetched (deleted, relabelled, or its binding or identity changed); retry",
            served.key()
        )
    };
    let Some(now) = now.filter(|p| p.uid == served.uid) else {
        return Err(changed());
    };
    let cfg = &agent.config;
    // Managed mode matches in the pod's namespace only, as `select_managed` does.
    let namespaced = cfg.mode == Mode::Managed || cfg.force_namespaced;
    let granted: Vec<AzureIdentity> = agent
        .view
        .index()
        .pod_identities(&now.facts, cfg.mode.match_options(namespaced))
        .grants
        .iter()
        .map(|g| g.identity.clone())
        .collect();
    let still = podid_crds::policy::servable_assigned(
        &now.facts,
        std::slice::from_ref(identity),
        &granted,
        namespaced,
    );
    if still.is_empty() {
        Err(changed())
    } else {
        Ok(())
    }
}

async fn resolve_identity(
    agent: &Agent,
    pod: &PodInfo,
    req: &TokenRequest,
) -> Result<AzureIdentity, ResolveError> {
    let cfg = &agent.config;
    match cfg.mode {
        Mode::Managed => resolve::select_managed(
            pod,
            &req.identity,
            &agent.view.index(),
            cfg.multiple_identities,
        ),
        Mode::Standard => {
            let granted = resolve::standard_grants(pod, &agent.view.index(), cfg.force_namespaced);
            resolve::standard_preflight(pod, &req.identity, &granted, cfg.wait_for_unbound_pods)?;
            let assigned = wait_for_assignment(
                &req.identity,
                &cfg.retry,
                &pod.key(),
                || {
                    agent
                        .view
                        .assigned_identities(&pod.facts.namespace, &pod.facts.name)
                },
                &agent.shutdown,
            )
            .await?;
            // Grants are read again: the wait can last minutes, and a binding removed meanwhile
            // must not be served from a record whose deletion is still pending.
            let granted = resolve::standard_grants(pod, &agent.view.index(), cfg.force_namespaced);
            resolve::select_assigned(
                pod,
                &req.identity,
                &assigned,
                &granted,
                cfg.force_namespaced,
                cfg.multiple_identities,
            )
        }
    }
}

/// How `identity` is served to `pod`: `assigned` unless token exchange is on and the identity
/// is user-assigned; in standard mode as podid-operator recorded it on the pod's
/// AzureAssignedIdentity (so the agent never exchanges where the operator assigned, or the
/// reverse), else from the pod's bindings ([`pod_serving`]).
fn serving_for(agent: &Agent, pod: &PodInfo, identity: &AzureIdentity) -> Serving {
    let settings = agent.config.serving;
    if !settings.federated
        || agent.federation.is_none()
        || identity.spec.type_ != podid_crds::IdentityType::UserAssignedMsi
    {
        return Serving::Assigned;
    }
    if agent.config.mode == Mode::Standard {
        let same = |i: &AzureIdentity| {
            i.metadata.namespace == identity.metadata.namespace
                && i.metadata.name == identity.metadata.name
        };
        let recorded = agent
            .view
            .assigned_identities(&pod.facts.namespace, &pod.facts.name)
            .iter()
            .filter(|r| r.identity().is_some_and(|i| same(&i)))
            .find_map(recorded_serving);
        if let Some(s) = recorded {
            return s;
        }
    }
    let index = agent.view.index();
    let grants = index
        .pod_identities(
            &pod.facts,
            agent
                .config
                .mode
                .match_options(agent.config.force_namespaced),
        )
        .grants;
    pod_serving(&grants, identity, settings)
}

enum TokenFailure {
    Token(TokenError),
    Federated(FederatedError),
}

/// The tokens for the request: by exchange where the serving asks for it (falling back to the
/// scale set's identity for `federated-with-fallback`), else from the identity's own sources.
async fn tokens_served(
    agent: &Agent,
    pod: &PodInfo,
    identity: &AzureIdentity,
    resource: &str,
    serving: Serving,
) -> Result<Vec<AccessToken>, TokenFailure> {
    if let Some(federation) = agent.federation.as_ref().filter(|_| serving.exchanges()) {
        let started = Instant::now();
        let result = exchanged(agent, federation, pod, identity, resource).await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(t) => {
                agent
                    .metrics
                    .observe_federated(serving.as_str(), "ok", secs);
                return Ok(t);
            }
            Err(f) if serving == Serving::FederatedWithFallback => {
                agent
                    .metrics
                    .observe_federated(serving.as_str(), "fallback", secs);
                tracing::warn!(
                    error = %f.description,
                    "token exchange failed: serving through the scale set's identity (federated-with-fallback)"
                );
            }
            Err(f) => {
                agent
                    .metrics
                    .observe_federated(serving.as_str(), f.result, secs);
                return Err(TokenFailure::Federated(f));
            }
        }
    }
    tokens_for(agent, identity, resource)
        .await
        .map_err(TokenFailure::Token)
}

/// One exchanged token for `identity` and `resource`, cached under the identity's key like the
/// scale set's tokens (both are the same identity's).
async fn exchanged(
    agent: &Agent,
    federation: &Federation,
    pod: &PodInfo,
    identity: &AzureIdentity,
    resource: &str,
) -> Result<Vec<AccessToken>, FederatedError> {
    let key = CacheKey {
        identity: crate::token::msi_cache_key(&identity.spec.client_id),
        resource: resource.to_owned(),
    };
    if let Some(t) = agent.cache.get(&key) {
        tracing::debug!("token served from cache");
        return Ok(t);
    }
    let target = crate::federated::target_for(agent.view.as_ref(), pod, identity)?;
    tracing::debug!(
        service_account.namespace = %target.namespace,
        service_account.name = %target.service_account,
        "exchanging a ServiceAccount token"
    );
    let source = federation.source(pod, identity, target)?;
    let started = Instant::now();
    let r = crate::token::TokenSource::fetch(&source, resource).await;
    agent.metrics.observe_fetch(
        crate::token::TokenSource::operation(&source),
        r.is_ok(),
        started.elapsed().as_secs_f64(),
    );
    let token = r.map_err(|e| FederatedError::from_token(&e))?;
    let tokens = vec![token];
    agent.cache.put(key, tokens.clone());
    Ok(tokens)
}

async fn tokens_for(
    agent: &Agent,
    identity: &AzureIdentity,
    resource: &str,
) -> Result<Vec<AccessToken>, TokenError> {
    // The key first: a cached token costs no Secret read.
    let key = CacheKey {
        identity: agent.credentials.cache_key(identity)?,
        resource: resource.to_owned(),
    };
    if let Some(t) = agent.cache.get(&key) {
        tracing::debug!("token served from cache");
        return Ok(t);
    }
    let sources = agent.credentials.sources(identity).await?;
    let mut tokens = Vec::with_capacity(sources.sources.len());
    for source in &sources.sources {
        let started = Instant::now();
        let r = source.fetch(resource).await;
        agent.metrics.observe_fetch(
            source.operation(),
            r.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        tokens.push(r?);
    }
    agent.cache.put(key, tokens.clone());
    Ok(tokens)
}

async fn proxy_checked(agent: &Agent, req: Request) -> Outcome {
    if let Err(e) =
        request::check_metadata_header(req.headers(), agent.config.metadata_header_required)
    {
        return Outcome::new(e.reply(), "bad_request");
    }
    proxy(agent, req).await
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "content-length",
];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Forwards the request unchanged (method, path, query, headers, body) to the real IMDS and
/// relays its answer.
async fn proxy(agent: &Agent, req: Request) -> Outcome {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let Some(url) = crate::token::imds_url(&agent.config.imds_endpoint, &path_and_query) else {
        return Outcome::new(request::PathError::Malformed.reply(), "bad_request");
    };
    let (parts, body) = req.into_parts();
    let body = match read_body(body, &agent.config).await {
        Ok(b) => b,
        Err(reply) => return Outcome::new(reply, "bad_request"),
    };
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    let upstream = agent
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(r) => r,
        Err(e) => return Outcome::new(Reply::text(500, e.to_string()), "proxy_error"),
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp_headers = HeaderMap::new();
    copy_headers(upstream.headers(), &mut resp_headers);
    let bytes = match upstream.bytes().await {
        Ok(b) => b,
        Err(e) => return Outcome::new(Reply::text(500, e.to_string()), "proxy_error"),
    };
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    *resp.headers_mut() = resp_headers;
    Outcome::raw(resp, "proxied")
}

/// A proxied request's body, read within `max_body_bytes` and `body_read_timeout`: a caller
/// cannot make the agent hold more, or for longer.
async fn read_body(body: Body, config: &ServerConfig) -> Result<Vec<u8>, Reply> {
    use axum::body::HttpBody;
    use futures::StreamExt;
    let limit = config.max_body_bytes;
    let too_large = || Reply::text(413, format!("request body larger than {limit} bytes"));
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| Reply::text(400, format!("reading request body: {e}")))?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    tokio::time::timeout(config.body_read_timeout, read)
        .await
        .unwrap_or_else(|_| {
            let secs = config.body_read_timeout.as_secs();
            Err(Reply::text(
                408,
                format!("request body not received within {secs} s"),
            ))
        })
}

/// Default time a caller has to send a request's head or a proxied body, and the most a
/// kept-alive connection stays idle.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) read; 431 beyond.
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// Default largest request body proxied to IMDS.
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// Headers in a request head at most (431 beyond).
const MAX_HEADERS: usize = 100;
/// A connection's read buffer at most: a full head, or body chunks on their way to the handler.
const READ_BUFFER_BYTES: usize = MAX_HEADER_BYTES + 4096;
/// How long shutdown waits for connections still open.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What callers can make a listener hold: every connection costs at most a read buffer of
/// 20 KiB plus, while it is proxied, its body (64 KiB), so memory is bounded by
/// `max_connections` (≈ 90 MiB at the default 1024).
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections one source address may hold; further ones are closed at once, so one pod
    /// cannot take every slot.
    pub max_connections_per_ip: usize,
    /// Time to send a request's head; also the most a kept-alive connection stays idle.
    pub header_read_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_ip: 128,
            header_read_timeout: READ_TIMEOUT,
        }
    }
}

/// One connection of a source address, counted until dropped.
struct IpSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut c = counts.lock().expect("connection counts lock");
        let n = c.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("connection counts lock");
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` with the default [`ListenerLimits`] until `shutdown` fires,
/// finishing requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, ListenerLimits::default(), shutdown).await
}

/// Serves `router` on `listener` (HTTP/1.1, as the original) within `limits` until `shutdown`
/// fires, then finishes requests in flight (for at most 30 s). Handlers see the caller's
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let max = limits
        .max_connections
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let per_ip = Arc::default();
    let per_ip_max = limits.max_connections_per_ip.max(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .max_buf_size(READ_BUFFER_BYTES);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, typically: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let ip = caller_ip(addr);
        let Some(ip_slot) = IpSlot::take(&per_ip, ip, per_ip_max) else {
            tracing::debug!(remote = %ip, "too many connections from this address: closed");
            continue;
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                router.clone().oneshot(req.map(Body::new))
            });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop((slot, ip_slot));
        });
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all)).await;
    Ok(())
}
