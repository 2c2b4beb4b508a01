//! The agent's HTTP server in-process on loopback, with an in-memory pod index, a fake token
//! source and a fake upstream IMDS. Clients bind 127.x source addresses to act as pods.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use common::*;
use futures::future::BoxFuture;
use podid_crds::AssignedIdentityState::{Assigned, Created};
use podid_crds::AzureIdentity;
use podid_crds::policy::Mode;
use podid_nmi::agent::AgentBuilder;
use podid_nmi::cache::{Clock, SystemClock};
use podid_nmi::config::Flags;
use podid_nmi::server::{self, ServerConfig};
use podid_nmi::token::{AccessToken, Credentials, IdentitySources, TokenError, TokenSource};
use podid_nmi::view::{MemoryState, MemoryView};
use podid_nmi::wait::RetryPolicy;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Hands out `token-for-<clientID>-<resource>` and counts fetches.
#[derive(Default)]
struct FakeCredentials {
    fetches: Arc<AtomicUsize>,
}

struct FakeSource {
    client_id: String,
    fetches: Arc<AtomicUsize>,
}

impl TokenSource for FakeSource {
    fn fetch<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.client_id == "client-refused" {
                return Err(TokenError::Rejected {
                    source_kind: "IMDS",
                    status: 400,
                    detail: "Identity not found".into(),
                    endpoint: "http://169.254.169.254/metadata/identity/oauth2/token".into(),
                });
            }
            Ok(AccessToken {
                access_token: format!("token-for-{}-{resource}", self.client_id),
                expires_on: SystemClock.now_unix() + 3600,
                not_before: None,
                resource: resource.into(),
                token_type: "Bearer".into(),
            })
        })
    }
    fn operation(&self) -> &'static str {
        "adal_token_msi_userassignedid"
    }
}

impl Credentials for FakeCredentials {
    fn cache_key(&self, identity: &AzureIdentity) -> Result<String, TokenError> {
        Ok(format!("msi:{}", identity.spec.client_id))
    }
    fn sources<'a>(
        &'a self,
        identity: &'a AzureIdentity,
    ) -> BoxFuture<'a, Result<IdentitySources, TokenError>> {
        let client_id = identity.spec.client_id.clone();
        let fetches = self.fetches.clone();
        Box::pin(async move {
            Ok(IdentitySources {
                sources: vec![Arc::new(FakeSource { client_id, fetches })],
            })
        })
    }
}

/// A stand-in for the real IMDS that echoes what it received.
async fn fake_imds() -> (url::Url, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen2.clone();
        async move {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            seen.lock().unwrap().push(pq.clone());
            let metadata = req
                .headers()
                .get("metadata")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (
                [("x-fake-imds", "yes")],
                axum::Json(serde_json::json!({"upstream": pq, "metadata": metadata})),
            )
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url::Url::parse(&format!("http://{addr}/")).unwrap(), seen)
}

struct Harness {
    addr: SocketAddr,
    view: MemoryView,
    fetches: Arc<AtomicUsize>,
    imds_seen: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Pods: ns/app-a (127.10.0.5, bound to identity a), ns/app-b (127.10.0.6, bound to b),
/// ns/agent (127.10.0.7, excepted), ns/plain (127.10.0.8, no identity).
fn cluster(mode: Mode) -> MemoryState {
    let a = msi("ns", "a", "client-a");
    let b = msi("ns", "b", "client-b");
    let pa = pod("ns", "app-a", Some("sel-a"), "127.10.0.5");
    let pb = pod("ns", "app-b", Some("sel-b"), "127.10.0.6");
    let mut agent = pod("ns", "agent", None, "127.10.0.7");
    agent.facts.labels.insert("app".into(), "agent".into());
    let plain = pod("ns", "plain", None, "127.10.0.8");
    let mut host = pod("ns", "host", Some("sel-a"), "127.10.0.9");
    host.host_network = true;
    let assigned = if mode == Mode::Standard {
        vec![assigned(&pa, &a, Assigned), assigned(&pb, &b, Assigned)]
    } else {
        vec![]
    };
    MemoryState {
        pods: vec![pa, pb, agent, plain, host],
        exceptions: vec![exception("ns", "ex", "app", "agent")],
        bindings: vec![
            binding("ns", "ba", "a", "sel-a"),
            binding("ns", "bb", "b", "sel-b"),
        ],
        identities: vec![a, b],
        assigned,
        ..Default::default()
    }
}

async fn start(config: ServerConfig, state: MemoryState) -> Harness {
    let (imds, imds_seen) = fake_imds().await;
    let view = MemoryView::new(state);
    let creds = FakeCredentials::default();
    let fetches = creds.fetches.clone();
    let shutdown = CancellationToken::new();
    let flags = Flags::try_parse_from(["podid-nmi", "--node=node-1"]).unwrap();
    let mut builder = AgentBuilder::new(&flags, shutdown.clone());
    builder.config = ServerConfig {
        imds_endpoint: imds,
        pod_lookup_attempts: 1,
        ..config
    };
    let agent = Arc::new(builder.build(Arc::new(view.clone()), Arc::new(creds)));
    let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let router = server::router(agent.clone()).merge(server::metrics_router(agent));
    tokio::spawn(server::serve(l, router, shutdown.clone()));
    Harness {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        view,
        fetches,
        imds_seen,
        shutdown,
    }
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

impl Harness {
    async fn get(&self, from: &str, path_and_query: &str, metadata: bool) -> (u16, String) {
        let mut req = client_from(from).get(format!("http://{}{path_and_query}", self.addr));
        if metadata {
            req = req.header("Metadata", "true");
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn token(&self, from: &str, query: &str) -> (u16, String) {
        self.get(
            from,
            &format!("/metadata/identity/oauth2/token?api-version=2018-02-01&{query}"),
            true,
        )
        .await
    }
}

fn access_token(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["access_token"].as_str().unwrap().to_owned()
}

const VAULT: &str = "resource=https%3A%2F%2Fvault.azure.net";

#[tokio::test]
async fn pods_get_their_own_identity_and_403_for_anothers() {
    for mode in [Mode::Standard, Mode::Managed] {
        let h = start(
            ServerConfig {
                mode,
                force_namespaced: mode == Mode::Managed,
                ..Default::default()
            },
            cluster(mode),
        )
        .await;

        let (status, body) = h.token("127.10.0.5", VAULT).await;
        assert_eq!(status, 200, "{mode:?}: {body}");
        assert_eq!(
            access_token(&body),
            "token-for-client-a-https://vault.azure.net"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        for field in [
            "refresh_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
        ] {
            assert!(v[field].is_string(), "{field} must be a string: {body}");
        }

        let (status, body) = h
            .token("127.10.0.5", &format!("{VAULT}&client_id=CLIENT-A"))
            .await;
        assert_eq!(status, 200, "client_id compares case-insensitively: {body}");

        let (status, body) = h.token("127.10.0.6", VAULT).await;
        assert_eq!(
            (status, access_token(&body)),
            (200, "token-for-client-b-https://vault.azure.net".into())
        );

        let (status, body) = h
            .token("127.10.0.5", &format!("{VAULT}&client_id=client-b"))
            .await;
        assert_eq!(
            (status, body.as_str()),
            (403, "the requested identity is not bound to pod ns/app-a\n"),
            "{mode:?}"
        );
        let (status, _) = h
            .token("127.10.0.5", &format!("{VAULT}&msi_res_id={}", rid("b")))
            .await;
        assert_eq!(status, 403, "{mode:?}");

        let (status, body) = h.token("127.10.0.8", VAULT).await;
        assert_eq!(
            (status, body.as_str()),
            (404, "no azure identity found for pod ns/plain\n"),
            "{mode:?}: answered at once"
        );
    }
}

#[tokio::test]
async fn unknown_source_addresses_get_403() {
    let h = start(ServerConfig::default(), cluster(Mode::Standard)).await;
    let (status, body) = h.token("127.10.0.99", VAULT).await;
    assert_eq!(
        (status, body.as_str()),
        (403, "no pod on this node has IP 127.10.0.99\n")
    );
    assert_eq!(h.fetches.load(Ordering::SeqCst), 0);
    // A hostNetwork pod's address is the node's: any node process could use it.
    let (status, _) = h.token("127.10.0.9", VAULT).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn excepted_pods_are_passed_through_to_imds() {
    let h = start(ServerConfig::default(), cluster(Mode::Standard)).await;
    let q = format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&{VAULT}&client_id=whatever"
    );
    let (status, body) = h.get("127.10.0.7", &q, true).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["upstream"], q.as_str(), "forwarded unchanged");
    assert_eq!(v["metadata"], "true", "headers are forwarded");
    assert_eq!(
        h.fetches.load(Ordering::SeqCst),
        0,
        "the agent fetched nothing itself"
    );
}

#[tokio::test]
async fn request_errors_have_the_originals_bodies() {
    let h = start(ServerConfig::default(), cluster(Mode::Standard)).await;
    let (status, body) = h
        .get(
            "127.10.0.5",
            &format!("/metadata/identity/oauth2/token?{VAULT}"),
            false,
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n"
        )
    );
    let (status, body) = h.token("127.10.0.5", "").await;
    assert_eq!(
        (status, body.as_str()),
        (400, "parameter resource cannot be empty\n")
    );
    let (status, body) = h
        .get("127.10.0.5", "/metadata/identity%5Coauth2%5Ctoken", true)
        .await;
    assert_eq!(
        (status, body.as_str()),
        (400, "Invalid request\n"),
        "disguised token path"
    );
}

#[tokio::test]
async fn other_paths_are_proxied_or_blocked() {
    let h = start(ServerConfig::default(), cluster(Mode::Standard)).await;
    let (status, body) = h
        .get(
            "127.10.0.5",
            "/metadata/instance?api-version=2021-02-01",
            true,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("/metadata/instance?api-version=2021-02-01"),
        "{body}"
    );
    let (status, _) = h.get("127.10.0.5", "/metadata/instance", false).await;
    assert_eq!(
        status, 400,
        "the Metadata header is checked before proxying"
    );

    let blocked = start(
        ServerConfig {
            block_instance_metadata: true,
            ..Default::default()
        },
        cluster(Mode::Standard),
    )
    .await;
    let (status, body) = blocked.get("127.10.0.5", "/metadata/instance", true).await;
    assert_eq!(
        (status, body.as_str()),
        (403, "Request blocked by AAD Pod Identity NMI\n")
    );
    assert!(blocked.imds_seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn tokens_are_cached_per_identity_and_resource() {
    let h = start(ServerConfig::default(), cluster(Mode::Standard)).await;
    for _ in 0..3 {
        assert_eq!(h.token("127.10.0.5", VAULT).await.0, 200);
    }
    assert_eq!(h.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.token(
            "127.10.0.5",
            "resource=https%3A%2F%2Fmanagement.azure.com%2F"
        )
        .await
        .0,
        200
    );
    assert_eq!(h.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refused_tokens_are_403() {
    let mut state = cluster(Mode::Managed);
    state.identities[0].spec.client_id = "client-refused".into();
    let h = start(
        ServerConfig {
            mode: Mode::Managed,
            force_namespaced: true,
            ..Default::default()
        },
        state,
    )
    .await;
    let (status, body) = h.token("127.10.0.5", VAULT).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Identity not found"), "{body}");
}

#[tokio::test]
async fn standard_mode_waits_until_the_identity_is_assigned() {
    let mut state = cluster(Mode::Standard);
    let (pa, a) = (state.pods[0].clone(), state.identities[0].clone());
    state.assigned = vec![assigned(&pa, &a, Created)];
    let h = start(
        ServerConfig {
            retry: RetryPolicy {
                created_attempts: 1000,
                assigned_attempts: 10,
                interval: Duration::from_millis(20),
            },
            ..Default::default()
        },
        state,
    )
    .await;
    let waiting = {
        let addr = h.addr;
        tokio::spawn(async move {
            let resp = client_from("127.10.0.5")
                .get(format!(
                    "http://{addr}/metadata/identity/oauth2/token?{VAULT}"
                ))
                .header("Metadata", "true")
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    tokio::task::yield_now().await;
    h.view
        .update(|s| s.assigned = vec![assigned(&pa, &a, Assigned)]);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(
        (status, access_token(&body)),
        (200, "token-for-client-a-https://vault.azure.net".into())
    );
}

#[tokio::test]
async fn assignment_that_never_comes_is_404() {
    let mut state = cluster(Mode::Standard);
    state.assigned.clear();
    let h = start(
        ServerConfig {
            retry: RetryPolicy {
                created_attempts: 2,
                assigned_attempts: 1,
                interval: Duration::from_millis(1),
            },
            ..Default::default()
        },
        state,
    )
    .await;
    let (status, body) = h.token("127.10.0.5", VAULT).await;
    assert_eq!(status, 404);
    assert!(
        body.starts_with(
            "getting assigned identities for pod ns/app-a in CREATED state failed after 2 attempts"
        ),
        "{body}"
    );
}

#[tokio::test]
async fn host_token_serves_a_named_pod_to_host_processes() {
    let h = start(ServerConfig::default(), cluster(Mode::Standard)).await;
    let resp = client_from("127.0.0.1")
        .get(format!("http://{}/host/token?{VAULT}", h.addr))
        .header("podns", "ns")
        .header("podname", "app-b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["clientid"], "client-b");
    assert_eq!(
        v["token"]["access_token"],
        "token-for-client-b-https://vault.azure.net"
    );

    let resp = client_from("127.10.0.5")
        .get(format!("http://{}/host/token?{VAULT}", h.addr))
        .header("podns", "ns")
        .header("podname", "app-b")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        500,
        "only 127.0.0.1 may use /host/token"
    );
}

#[tokio::test]
async fn metrics_use_the_original_names() {
    let h = start(ServerConfig::default(), cluster(Mode::Standard)).await;
    h.token("127.10.0.5", VAULT).await;
    h.token("127.10.0.99", VAULT).await;
    let (status, body) = h.get("127.0.0.1", "/metrics", false).await;
    assert_eq!(status, 200);
    for needle in [
        "aadpodidentity_nmi_operations_duration_seconds_count{operation_type=\"/metadata/identity/oauth2/token\",status_code=\"200\",namespace=\"ns\",resource=\"https://vault.azure.net\"} 1",
        "aadpodidentity_imds_operations_duration_seconds_count{operation_type=\"adal_token_msi_userassignedid\"} 1",
        "podid_nmi_request_duration_seconds_count{route=\"token\",result=\"unknown_pod\"} 1",
        "aadpodidentity_kubernetes_api_operations_errors_count{operation_type=\"get_pod_list\"} 1",
    ] {
        assert!(body.contains(needle), "missing {needle} in\n{body}");
    }
}
