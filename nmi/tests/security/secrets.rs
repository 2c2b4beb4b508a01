//! A user who may create AzureIdentities, bindings and pods in their own namespace only, against
//! the Secrets of service principals: another namespace's Secret, a server of their choosing as
//! `adEndpoint` or through `tenantID`, upstream error bodies relayed to the pod, and watches of
//! Secrets that are never closed. The agent runs in-process with the token sources its flags
//! make; Entra is the Azure emulator; "the attacker's server" is a TCP listener on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::policy::Mode;
use podid_crds::{AzureIdentity, AzureIdentityBinding};
use podid_nmi::agent::AgentBuilder;
use podid_nmi::config::Flags;
use podid_nmi::server::{self, ServerConfig};
use podid_nmi::view::{MemoryState, MemoryView, SecretData, SecretSource};
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::common::{binding, meta, pod};
use crate::live::{self, call, claims, run_pods};

const VICTIM_APP: &str = "5e1f0000-0000-0000-0000-00000000a71c";
const VICTIM_SECRET: &str = "victims-client-secret";
const OWN_APP: &str = "5e1f0000-0000-0000-0000-00000000a0a0";
const OWN_SECRET: &str = "own-client-secret";

/// A server of the attacker's choosing: counts connections and keeps what it was sent.
struct AttackerServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<String>>,
}

impl AttackerServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(String::new()));
        let (c, r) = (connections.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await
                    {
                        r.lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            received,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            self.connections.load(Ordering::SeqCst),
            0,
            "the attacker's server was contacted; it received: {}",
            self.received.lock().unwrap()
        );
    }
}

/// A [`SecretSource`] over a [`MemoryView`] that records which Secrets were read.
#[derive(Clone)]
struct RecordingSecrets {
    view: MemoryView,
    reads: Arc<Mutex<Vec<(String, String)>>>,
}

impl SecretSource for RecordingSecrets {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, String>> {
        self.reads
            .lock()
            .unwrap()
            .push((namespace.to_owned(), name.to_owned()));
        self.view.secret(namespace, name)
    }
}

/// The agent in managed mode over an in-memory cluster, its token sources as `flags` make
/// them, Entra's default authority at `authority`.
struct MemoryAgent {
    addr: SocketAddr,
    reads: Arc<Mutex<Vec<(String, String)>>>,
    shutdown: CancellationToken,
}

impl Drop for MemoryAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn memory_agent(state: MemoryState, authority: &str, flags: &[&str]) -> MemoryAgent {
    let args: Vec<String> = ["podid-nmi", "--node=node-1"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--entra-authority={authority}")])
        .chain(flags.iter().map(|f| f.to_string()))
        .collect();
    let flags = Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let view = MemoryView::new(state);
    let secrets = RecordingSecrets {
        view: view.clone(),
        reads: Arc::default(),
    };
    let reads = secrets.reads.clone();
    let shutdown = CancellationToken::new();
    let mut builder = AgentBuilder::new(&flags, shutdown.clone());
    builder.config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        pod_lookup_attempts: 1,
        ..Default::default()
    };
    let credentials = builder.credentials_with(Arc::new(secrets)).unwrap();
    let agent = Arc::new(builder.build(Arc::new(view), Arc::new(credentials)));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    tokio::spawn(server::serve(
        listener,
        server::router(agent),
        shutdown.clone(),
    ));
    MemoryAgent {
        addr,
        reads,
        shutdown,
    }
}

/// A service-principal identity `sp` in `ns` with `spec`, bound to pod `ns/app` at `ip`.
fn sp_state(ns: &str, ip: &str, spec: Value) -> MemoryState {
    let identity = AzureIdentity {
        metadata: meta(ns, "sp"),
        spec: serde_json::from_value(spec).unwrap(),
        status: None,
    };
    MemoryState {
        pods: vec![pod(ns, "app", Some("sel-sp"), ip)],
        bindings: vec![binding(ns, "bind-sp", "sp", "sel-sp")],
        identities: vec![identity],
        ..Default::default()
    }
}

fn with_secret(mut state: MemoryState, ns: &str, name: &str, value: &str) -> MemoryState {
    state.secrets.insert(
        (ns.into(), name.into()),
        [("clientsecret".to_owned(), value.as_bytes().to_vec())].into(),
    );
    state
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The attacker's identity in `attacker` names the victim's Secret in `victim` (and the
/// victim's app): the original reads it and signs in as the victim.
fn cross_namespace_state(emu: &Emulator, pod_ip: &str) -> MemoryState {
    let state = sp_state(
        "attacker",
        pod_ip,
        json!({"type": 1, "clientID": VICTIM_APP, "tenantID": emu.tenant_id(),
               "clientPassword": {"name": "sp-secret", "namespace": "victim"}}),
    );
    with_secret(state, "victim", "sp-secret", VICTIM_SECRET)
}

#[tokio::test]
async fn identity_naming_another_namespaces_secret_is_refused() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(VICTIM_APP, Some(VICTIM_SECRET), None);
    let agent = memory_agent(
        cross_namespace_state(&emu, "127.10.40.1"),
        &emu.arm_endpoint(),
        &[],
    )
    .await;

    let (status, body) = call(agent.addr, ip("127.10.40.1"), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("AzureIdentity attacker/sp: spec.clientPassword.namespace \"victim\"")
            && body.contains("--allow-cross-namespace-secrets"),
        "the refusal names the field and the fix: {body}"
    );
    assert!(
        agent.reads.lock().unwrap().is_empty(),
        "no Secret was read: {:?}",
        agent.reads.lock().unwrap()
    );
    assert_eq!(emu.call_count("POST token"), 0, "Entra was not asked");
}

#[tokio::test]
async fn another_namespaces_secret_is_used_with_allow_cross_namespace_secrets() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(VICTIM_APP, Some(VICTIM_SECRET), None);
    let agent = memory_agent(
        cross_namespace_state(&emu, "127.10.40.2"),
        &emu.arm_endpoint(),
        &["--allow-cross-namespace-secrets"],
    )
    .await;

    let (status, body) = call(agent.addr, ip("127.10.40.2"), "").await;
    assert_eq!(status, 200, "the original's behaviour, restored: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["appid"],
        VICTIM_APP
    );
    assert_eq!(
        *agent.reads.lock().unwrap(),
        [("victim".to_owned(), "sp-secret".to_owned())]
    );
}

#[tokio::test]
async fn ad_endpoint_of_attackers_server_is_not_contacted() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let attacker = AttackerServer::start().await;
    let state = with_secret(
        sp_state(
            "attacker",
            "127.10.40.3",
            json!({"type": 1, "clientID": OWN_APP, "tenantID": emu.tenant_id(),
                   "adEndpoint": format!("http://{}/", attacker.addr),
                   "clientPassword": {"name": "sp-secret", "namespace": "attacker"}}),
        ),
        "attacker",
        "sp-secret",
        OWN_SECRET,
    );
    let agent = memory_agent(state, &emu.arm_endpoint(), &[]).await;

    let (status, body) = call(agent.addr, ip("127.10.40.3"), "").await;
    attacker.assert_untouched();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&format!(
            "AzureIdentity attacker/sp: spec.adEndpoint \"http://{}/\" is not an Entra authority",
            attacker.addr
        )) && body.contains("--allowed-authority-hosts"),
        "the refusal names the field and the fix: {body}"
    );
    assert!(agent.reads.lock().unwrap().is_empty(), "no Secret was read");
}

#[tokio::test]
async fn ad_endpoint_in_allowed_authority_hosts_is_used() {
    let default = Emulator::start(Settings::default()).await.unwrap();
    let partner = Emulator::start(Settings::default()).await.unwrap();
    partner.add_app(OWN_APP, Some(OWN_SECRET), None);
    let state = with_secret(
        sp_state(
            "team",
            "127.10.40.4",
            json!({"type": 1, "clientID": OWN_APP, "tenantID": partner.tenant_id(),
                   "adEndpoint": format!("{}/", partner.arm_endpoint()),
                   "clientPassword": {"name": "sp-secret"}}),
        ),
        "team",
        "sp-secret",
        OWN_SECRET,
    );
    let refused = memory_agent(state.clone(), &default.arm_endpoint(), &[]).await;
    let (status, body) = call(refused.addr, ip("127.10.40.4"), "").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(partner.call_count("POST token"), 0);

    let allowed = format!("--allowed-authority-hosts={}", partner.arm_endpoint());
    let agent = memory_agent(state, &default.arm_endpoint(), &[&allowed]).await;
    let (status, body) = call(agent.addr, ip("127.10.40.4"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(partner.call_count("POST token"), 1);
}

#[tokio::test]
async fn tenant_id_rewriting_the_token_url_is_refused() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(OWN_APP, Some(OWN_SECRET), None);
    let attacker = AttackerServer::start().await;
    for (n, tenant) in [
        // Joined into `<authority>/<tenant>/oauth2/token`, `//host` replaces the server…
        format!("//{}/t", attacker.addr),
        // … and `..`, `?` and `#` another path of the authority (here: its IMDS route).
        "t/../../metadata/identity/oauth2/token?resource=x#".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let pod_ip = format!("127.10.40.{}", 10 + n);
        let state = with_secret(
            sp_state(
                "attacker",
                &pod_ip,
                json!({"type": 1, "clientID": OWN_APP, "tenantID": tenant,
                       "clientPassword": {"name": "sp-secret"}}),
            ),
            "attacker",
            "sp-secret",
            OWN_SECRET,
        );
        let agent = memory_agent(state, &emu.arm_endpoint(), &[]).await;
        let (status, body) = call(agent.addr, ip(&pod_ip), "").await;
        attacker.assert_untouched();
        assert_eq!(status, 403, "{tenant}: {body}");
        assert!(
            body.contains(&format!(
                "AzureIdentity attacker/sp: spec.tenantID {tenant:?} is neither a GUID nor a domain name"
            )),
            "the refusal names the field: {body}"
        );
    }
    assert!(
        emu.calls().is_empty(),
        "the authority was not asked at all: {:?}",
        emu.calls()
    );
}

/// An authority that answers tenant `T_JSON` with an OAuth error carrying more than the OAuth
/// fields, and tenant `T_HTML` with another service's HTML page, both holding a canary.
const T_JSON: &str = "0e0e0e0e-0000-0000-0000-00000000000a";
const T_HTML: &str = "0e0e0e0e-0000-0000-0000-00000000000b";
const CANARY: &str = "internal-canary-7f3a";

async fn chatty_authority() -> String {
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        use axum::response::IntoResponse;
        if req.uri().path().starts_with(&format!("/{T_JSON}/")) {
            (
                http::StatusCode::UNAUTHORIZED,
                axum::Json(json!({
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                    "internal_debug": CANARY,
                })),
            )
                .into_response()
        } else {
            (
                http::StatusCode::BAD_GATEWAY,
                [("content-type", "text/html")],
                format!("<html><body>admin console of 10.0.0.7: {CANARY}</body></html>"),
            )
                .into_response()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/")
}

#[tokio::test]
async fn upstream_error_body_is_not_echoed_to_the_pod() {
    let authority = chatty_authority().await;
    for (tenant, pod_ip) in [(T_JSON, "127.10.40.20"), (T_HTML, "127.10.40.21")] {
        let state = with_secret(
            sp_state(
                "team",
                pod_ip,
                json!({"type": 1, "clientID": OWN_APP, "tenantID": tenant,
                       "clientPassword": {"name": "sp-secret"}}),
            ),
            "team",
            "sp-secret",
            OWN_SECRET,
        );
        let agent = memory_agent(state, &authority, &[]).await;
        let (status, body) = call(agent.addr, ip(pod_ip), "").await;
        assert_eq!(status, 403, "the original's status for a refusal: {body}");
        assert!(
            !body.contains(CANARY) && !body.contains("error_codes") && !body.contains("<html"),
            "nothing of the body beyond the OAuth error reaches the pod: {body}"
        );
        assert!(
            body.starts_with("adal: Refresh request failed. Status Code = '"),
            "{body}"
        );
        if tenant == T_JSON {
            assert!(
                body.contains(r#"Response body: {"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."} Endpoint"#),
                "Entra's error code and description are passed on: {body}"
            );
        }
    }
}

// --- Secret watches, on the real API server ---------------------------------------------------

type SecretKey = (String, String);

/// Counts the agent's open watch requests per Secret (namespace, name), as the API server sees
/// them: a watch is open from its request until its response body is dropped.
#[derive(Clone, Default)]
struct OpenWatches(Arc<Mutex<BTreeMap<SecretKey, usize>>>);

impl OpenWatches {
    fn open(&self) -> BTreeSet<SecretKey> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The Secret a request watches: `GET /api/v1/namespaces/<ns>/secrets?watch=true&
    /// fieldSelector=metadata.name=<name>`.
    fn watched_secret(req: &http::Request<kube::client::Body>) -> Option<SecretKey> {
        let path: Vec<&str> = req.uri().path().split('/').collect();
        let ["", "api", "v1", "namespaces", ns, "secrets"] = path[..] else {
            return None;
        };
        let query: BTreeMap<String, String> =
            url::form_urlencoded::parse(req.uri().query()?.as_bytes())
                .into_owned()
                .collect();
        if query.get("watch").map(String::as_str) != Some("true") {
            return None;
        }
        let name = query.get("fieldSelector")?.strip_prefix("metadata.name=")?;
        Some((ns.to_owned(), name.to_owned()))
    }
}

struct Guard(OpenWatches, SecretKey);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(n) = self.0.0.lock().unwrap().get_mut(&self.1) {
            *n -= 1;
        }
    }
}

struct CountWatches<S>(S, OpenWatches);

type KubeResponse = http::Response<Box<kube::client::DynBody>>;

impl<S> tower::Service<http::Request<kube::client::Body>> for CountWatches<S>
where
    S: tower::Service<
            http::Request<kube::client::Body>,
            Response = KubeResponse,
            Error = tower::BoxError,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<axum::body::Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let guard = OpenWatches::watched_secret(&req).map(|key| {
            *self.1.0.lock().unwrap().entry(key.clone()).or_default() += 1;
            Guard(self.1.clone(), key)
        });
        let fut = self.0.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| {
                let stream = axum::body::Body::new(body)
                    .into_data_stream()
                    .map(move |chunk| {
                        let _open = &guard;
                        chunk
                    });
                axum::body::Body::from_stream(stream)
            }))
        })
    }
}

struct CountWatchesLayer(OpenWatches);

impl<S> tower::Layer<S> for CountWatchesLayer {
    type Service = CountWatches<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountWatches(inner, self.0.clone())
    }
}

/// An admin client whose watches of Secrets are counted in the returned [`OpenWatches`].
async fn counting_client(cluster: &Cluster) -> (kube::Client, OpenWatches) {
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let open = OpenWatches::default();
    let client = kube::client::ClientBuilder::try_from(cfg)
        .unwrap()
        .with_layer(&CountWatchesLayer(open.clone()))
        .build();
    (client, open)
}

/// Polls `cond` every 100 ms for at most `secs` seconds.
async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

#[tokio::test]
async fn secret_watch_closes_when_no_identity_references_it() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("sec-watch").await;
    let admin = ns.client.clone();
    let pool = NodePool::aks("secwatch", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(OWN_APP, Some(OWN_SECRET), None);
    let sp = live::sp_spec(&admin, &ns.name, &emu, OWN_APP, "sp-secret", OWN_SECRET).await;
    live::bound_identity(&admin, &ns.name, "sp", sp, "sel-sp").await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let ips = run_pods(
        &pods,
        &node,
        &[("pod-sp", json!({"aadpodidbinding": "sel-sp"}))],
    )
    .await;

    let (client, open) = counting_client(cluster).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        ..Default::default()
    };
    let (_agent, _) = live::start_agent_with_flags(
        listener,
        client,
        &node,
        config,
        &emu.arm_endpoint(),
        &["--watch-secrets"],
    )
    .await;
    let (status, body) = call(addr, ips["pod-sp"], "").await;
    assert_eq!(status, 200, "{body}");
    let secret: SecretKey = (ns.name.clone(), "sp-secret".into());
    assert!(
        eventually(30, || open.open().contains(&secret)).await,
        "the Secret is watched after its first use: {:?}",
        open.open()
    );

    // The identity goes: nothing references the Secret any more, its watch closes.
    Api::<AzureIdentityBinding>::namespaced(admin.clone(), &ns.name)
        .delete("bind-sp", &DeleteParams::default())
        .await
        .unwrap();
    Api::<AzureIdentity>::namespaced(admin.clone(), &ns.name)
        .delete("sp", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        eventually(30, || !open.open().contains(&secret)).await,
        "the watch of a Secret no identity references is closed: {:?}",
        open.open()
    );
}

#[tokio::test]
async fn secret_watches_are_bounded() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("sec-bound").await;
    let admin = ns.client.clone();
    let pool = NodePool::aks("secbound", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let mut labels = Vec::new();
    for i in 0..3 {
        let app = format!("5e1f0000-0000-0000-0000-00000000b0b{i}");
        emu.add_app(&app, Some(OWN_SECRET), None);
        let sp = live::sp_spec(
            &admin,
            &ns.name,
            &emu,
            &app,
            &format!("sp-secret-{i}"),
            OWN_SECRET,
        )
        .await;
        live::bound_identity(&admin, &ns.name, &format!("sp{i}"), sp, &format!("sel-{i}")).await;
        labels.push((
            format!("pod-{i}"),
            json!({"aadpodidbinding": format!("sel-{i}")}),
        ));
    }
    let labels: Vec<(&str, Value)> = labels
        .iter()
        .map(|(n, l)| (n.as_str(), l.clone()))
        .collect();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let ips = run_pods(&pods, &node, &labels).await;

    let (client, open) = counting_client(cluster).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        ..Default::default()
    };
    let (_agent, _) = live::start_agent_with_flags(
        listener,
        client,
        &node,
        config,
        &emu.arm_endpoint(),
        &["--watch-secrets", "--max-secret-watches=2"],
    )
    .await;
    for i in 0..3 {
        let (status, body) = call(addr, ips[&format!("pod-{i}")], "").await;
        assert_eq!(status, 200, "pod-{i}, past the bound too: {body}");
    }
    assert!(
        eventually(30, || open.open().len() == 2).await,
        "two watches open: {:?}",
        open.open()
    );
    // Still two after more requests: the third Secret is read with a GET each time.
    for i in 0..3 {
        let (status, _) = call(addr, ips[&format!("pod-{i}")], "").await;
        assert_eq!(status, 200);
        assert!(open.open().len() <= 2, "{:?}", open.open());
    }
}

// --- Nothing secret in anything the agent says ---------------------------------------------------

/// An RSA key and a self-signed certificate for it, as PEM, from the `openssl` command.
fn rsa_certificate(dir: &std::path::Path) -> Option<(String, String)> {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=podid-trace-sp", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| {
        (
            std::fs::read_to_string(key).unwrap(),
            std::fs::read_to_string(cert).unwrap(),
        )
    })
}

/// A value no one else has: `prefix` and 24 random bytes as hex.
fn fresh(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The agent's binary at trace level (every crate; HTTP/2 framing and the runtime's internals at
/// debug) serves a pod bound to a user-assigned identity, one bound to a service principal
/// signing in with a client secret, one with a certificate, and one whose client secret Entra
/// refuses; it is also asked through `/host/token`, for identities not bound, from an address
/// that is no pod's, and without the metadata header. Then neither any client secret, the
/// private key, any token it handed out, nor any JWT at all is in its log, its `/metrics`, the
/// Events of the namespace, or an answer (an answer holds its own caller's token only).
#[tokio::test]
async fn agent_output_at_trace_level_never_holds_a_secret() {
    const TEST: &str = "agent_output_at_trace_level_never_holds_a_secret";
    const NODE: &str = "secrets-trace-node";
    let dir = tempfile::tempdir().unwrap();
    let Some((key_pem, cert_pem)) = rsa_certificate(dir.path()) else {
        podid_testkit::prereq::skip(TEST, "the openssl command is not available");
        return;
    };
    let mut site = crate::site::Site::without_agent("sec-trace", NODE, &["msi"]).await;
    let mut scan = podid_testkit::secret_scan::SecretScan::default();
    scan.forbid_any_jwt();
    let (good, wrong, registered) = (
        fresh("sp-secret"),
        fresh("wrong-secret"),
        fresh("registered-secret"),
    );
    scan.plant_secret("the client secret in the Secret sp-secret", &good);
    scan.plant_secret("the client secret Entra refuses (Secret sp-wrong)", &wrong);
    scan.plant_secret("the refused app's registered secret", &registered);
    scan.plant_private_key("the certificate's private key (Secret sp-cert)", &key_pem);

    let apps = [
        ("sp", "5e1f0000-0000-0000-0000-0000000ace01"),
        ("cert", "5e1f0000-0000-0000-0000-0000000ace02"),
        ("wrong", "5e1f0000-0000-0000-0000-0000000ace03"),
    ];
    site.emu.add_app(apps[0].1, Some(&good), None);
    site.emu.add_app(apps[1].1, None, Some(&cert_pem));
    site.emu.add_app(apps[2].1, Some(&registered), None);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(site.client.clone(), &site.namespace);
    for (name, data) in [
        ("sp", json!({"clientsecret": good})),
        (
            "cert",
            json!({"certificate": format!("{key_pem}{cert_pem}")}),
        ),
        ("wrong", json!({"clientsecret": wrong})),
    ] {
        secrets
            .create(
                &Default::default(),
                &live::obj(json!({"metadata": {"name": format!("sp-{name}")}, "stringData": data})),
            )
            .await
            .unwrap();
    }
    for (name, app) in apps {
        let kind = if name == "cert" { 2 } else { 1 };
        live::bound_identity(
            &site.client,
            &site.namespace,
            name,
            json!({"type": kind, "clientID": app,
                   "tenantID": site.emu.tenant_id(),
                   "adEndpoint": format!("{}/", site.emu.arm_endpoint()),
                   "clientPassword": {"name": format!("sp-{name}"), "namespace": site.namespace}}),
            name,
        )
        .await;
        site.client_ids.insert(name.to_owned(), app.to_owned());
    }
    let pods = ["msi", "sp", "cert", "wrong"];
    let pod_ip = |pod: &str| {
        format!(
            "127.11.6.{}",
            10 + pods.iter().position(|p| *p == pod).unwrap()
        )
    };
    for pod in pods {
        site.run_pod(
            pod,
            NODE,
            json!({"aadpodidbinding": pod}),
            &pod_ip(pod),
            json!({}),
        )
        .await;
    }

    // The agent's binary, on ports no socket uses on any address (the other tests' connections
    // take many); started again, at most twice, if one was taken meanwhile.
    let free = || {
        std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let log = dir.path().join("agent.log");
    let cluster = Cluster::shared_async().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut started = None;
    for _attempt in 0..3 {
        let (port, probe, prom) = (free(), free(), free());
        let file = std::fs::File::create(&log).unwrap();
        let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_podid-nmi"))
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("RUST_LOG", "trace,h2=debug,tokio=debug,runtime=debug")
            .args([
                &format!("--node={NODE}"),
                "--operation-mode=managed",
                "--forceNamespaced",
                "--watch-secrets",
                &format!("--nmi-port={port}"),
                &format!("--http-probe-port={probe}"),
                &format!("--prometheus-port={prom}"),
                &format!("--imds-endpoint={}", site.imds_endpoint()),
                &format!("--entra-authority={}", site.emu.arm_endpoint()),
                "--manage-iptables=false",
                "--allow-network-plugin-kubenet",
                "--shutdown-delay-sec=0",
            ])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let health = format!("http://127.0.0.1:{probe}/healthz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let active = loop {
            if let Ok(r) = http.get(&health).send().await
                && r.text().await.unwrap() == "Active"
            {
                break true;
            }
            if agent.try_wait().unwrap().is_some() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(text.contains("binding"), "the agent exited: {text}");
                break false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent not Active within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if active {
            started = Some((agent, port, prom));
            break;
        }
    }
    let (mut agent, port, prom) = started.expect("the agent started within 3 attempts");
    site.agent = SocketAddr::from(([127, 0, 0, 1], port));

    // Each pod its own identity's token, twice (the second from the cache); every answer holds
    // no credential, and each token handed out is planted.
    for pod in ["msi", "sp", "cert"] {
        let (status, body) = site
            .ask_until(&pod_ip(pod), "", |s, b| {
                s == 200 && site.holder(b).as_deref() == Some(pod)
            })
            .await;
        scan.scan_credentials(&format!("the answer to pod {pod}"), &body);
        let v: Value = serde_json::from_str(&body).unwrap();
        let (again, body2) = call(site.agent, ip(&pod_ip(pod)), "").await;
        let cached: Value = serde_json::from_str(&body2).unwrap_or_default();
        assert_eq!(
            (again, &cached["access_token"]),
            (status, &v["access_token"]),
            "{pod}: the same token, from the cache"
        );
        scan.scan_credentials(&format!("the second answer to pod {pod}"), &body2);
        scan.plant_token(
            &format!("the token handed to pod {pod}"),
            v["access_token"].as_str().unwrap(),
        );
    }
    let (status, body) = crate::site::raw(
        site.agent,
        "127.0.0.1",
        &format!(
            "GET /host/token/?resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\r\nHost: 127.0.0.1\r\npodns: {}\r\npodname: sp",
            site.namespace
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    scan.scan_credentials("the /host/token answer", &body);
    let host: Value = serde_json::from_str(&body).unwrap();
    scan.plant_token(
        "the token handed out through /host/token",
        host["token"]["access_token"].as_str().unwrap(),
    );

    // Refusals: Entra refusing the secret, identities not bound, no pod, no header.
    let (status, body) = call(site.agent, ip(&pod_ip("wrong")), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("invalid_client"), "Entra's refusal: {body}");
    let mut refusals = vec![("Entra's refusal".to_owned(), body)];
    for (from, query) in [
        (pod_ip("msi"), format!("client_id={}", apps[0].1)),
        (pod_ip("sp"), format!("client_id={}", apps[1].1)),
        ("127.11.6.99".to_owned(), String::new()),
    ] {
        let (status, body) = call(site.agent, ip(&from), &query).await;
        assert_eq!(status, 403, "{from} {query}: {body}");
        refusals.push((format!("the refusal of {from} {query}"), body));
    }
    let (status, body) = crate::site::raw(
        site.agent,
        &pod_ip("sp"),
        "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=x HTTP/1.1\r\nHost: 169.254.169.254",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    refusals.push(("the refusal without the header".to_owned(), body));
    for (what, body) in &refusals {
        scan.scan(what, body);
    }

    let metrics = http
        .get(format!("http://127.0.0.1:{prom}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("aadpodidentity_nmi_operations_duration_seconds"));
    scan.scan("/metrics", &metrics);

    let pid = agent.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent exits within 30 s of SIGTERM")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let trace_lines = text.lines().filter(|l| l.contains("TRACE")).count();
    assert!(
        trace_lines > 100,
        "a trace-level log: {trace_lines} TRACE lines of {}",
        text.lines().count()
    );
    scan.scan("the agent's log", &text);

    let events =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(site.client.clone(), &site.namespace)
            .list(&Default::default())
            .await
            .unwrap();
    scan.scan(
        "the namespace's Events",
        &serde_json::to_string(&events.items).unwrap(),
    );
    assert_eq!(scan.planted(), 4 + 4, "{}", scan.summary());
    eprintln!("{TEST}: {}", scan.summary());
}
