//! Helpers for tests that run the agent in-process against the real API server and the Azure
//! emulator.
#![allow(dead_code)]

pub mod hostnet;
pub mod netns;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use podid_crds::policy::Mode;
use podid_nmi::agent::AgentBuilder;
use podid_nmi::cluster::KubeView;
use podid_nmi::config::Flags;
use podid_nmi::metrics::Metrics;
use podid_nmi::server::{self, ServerConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use podid_testkit::builders::obj;
pub use podid_testkit::sdk::claims;

/// Starts the agent for `node` in-process on `listener`; it stops when the returned guard drops.
pub async fn start_agent_on(
    listener: tokio::net::TcpListener,
    client: kube::Client,
    node: &str,
    config: ServerConfig,
    authority: &str,
) -> tokio_util::sync::DropGuard {
    start_agent_with_metrics(listener, client, node, config, authority)
        .await
        .0
}

/// [`start_agent_on`], also returning the agent's metrics.
pub async fn start_agent_with_metrics(
    listener: tokio::net::TcpListener,
    client: kube::Client,
    node: &str,
    config: ServerConfig,
    authority: &str,
) -> (tokio_util::sync::DropGuard, Metrics) {
    start_agent_with_flags(listener, client, node, config, authority, &[]).await
}

/// [`start_agent_with_metrics`] with more of the agent's command-line `flags` (those that
/// shape its token sources, e.g. `--allow-cross-namespace-secrets`, `--watch-secrets=false`),
/// wired as the binary wires them; unreferenced Secret watches close within a second.
pub async fn start_agent_with_flags(
    listener: tokio::net::TcpListener,
    client: kube::Client,
    node: &str,
    config: ServerConfig,
    authority: &str,
    flags: &[&str],
) -> (tokio_util::sync::DropGuard, Metrics) {
    let args: Vec<String> = ["podid-nmi".to_owned(), format!("--node={node}")]
        .into_iter()
        .chain([format!("--entra-authority={authority}")])
        .chain([format!("--imds-endpoint={}", config.imds_endpoint)])
        .chain(flags.iter().map(|f| f.to_string()))
        .collect();
    let flags = Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let shutdown = CancellationToken::new();
    let view = KubeView::start(
        client.clone(),
        node,
        config.mode == Mode::Standard,
        flags.federated,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut builder = AgentBuilder::new(&flags, shutdown.clone()).kube_federation(client.clone());
    // `--federated` and `--identity-serving` come from `flags`.
    builder.config = ServerConfig {
        serving: flags.serving(),
        ..config
    };
    builder.secret_sweep = Duration::from_secs(1);
    let metrics = builder.metrics.clone();
    let credentials = builder
        .kube_credentials(client, Arc::new(view.clone()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let agent = Arc::new(builder.build(Arc::new(view), Arc::new(credentials)));
    tokio::spawn(server::serve(
        listener,
        server::router(agent),
        shutdown.clone(),
    ));
    (shutdown.drop_guard(), metrics)
}

/// Starts the agent for `node` in-process on a free port of every address (pods call it from
/// their 127.x addresses); returns its 127.0.0.1 address.
pub async fn start_agent(
    client: kube::Client,
    node: &str,
    config: ServerConfig,
    authority: &str,
) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let guard = start_agent_on(listener, client, node, config, authority).await;
    (addr, guard)
}

/// A TCP listener on `addr` inside the network namespace `ns` (`ip netns` name), bound from a
/// short-lived thread that entered it: the socket stays in `ns`, the test stays in its own.
pub fn listen_in_netns(ns: &str, addr: &str) -> std::net::TcpListener {
    let path = format!("/var/run/netns/{ns}");
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd changes only this thread, which ends here.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let l = std::net::TcpListener::bind(&addr)
            .unwrap_or_else(|e| panic!("bind {addr} in {path}: {e}"));
        l.set_nonblocking(true).unwrap();
        l
    })
    .join()
    .unwrap()
}

/// Forwards every connection accepted on `listener` (e.g. one inside a namespace) to `target`
/// in the test's own namespace, byte for byte, until the returned task is aborted.
pub fn bridge(listener: std::net::TcpListener, target: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A token request to the agent at `agent` from the pod address `from`: (status, body).
pub async fn call(agent: SocketAddr, from: IpAddr, query: &str) -> (u16, String) {
    let resp = reqwest::Client::builder()
        .local_address(from)
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "http://{agent}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&{query}"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Creates pods on `node` with the given labels and waits until all run with 127.x IPs.
pub async fn run_pods(
    pods: &Api<Pod>,
    node: &str,
    labels: &[(&str, Value)],
) -> std::collections::BTreeMap<String, IpAddr> {
    for (name, l) in labels {
        pods.create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": name, "labels": l},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
            })),
        )
        .await
        .unwrap();
    }
    podid_testkit::wait_for_running_pods(pods.clone(), "", labels.len(), 120)
        .await
        .expect("pods Running with IPs")
        .into_iter()
        .map(|p| {
            let ip = p.status.and_then(|s| s.pod_ip).unwrap_or_default();
            (p.metadata.name.unwrap_or_default(), ip.parse().unwrap())
        })
        .collect()
}

/// Creates AzureIdentity `name` with `spec` and the binding `bind-<name>` selecting `selector`.
pub async fn bound_identity(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: Value,
    selector: &str,
) {
    Api::<podid_crds::AzureIdentity>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name}, "spec": spec})),
        )
        .await
        .unwrap();
    Api::<podid_crds::AzureIdentityBinding>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": format!("bind-{name}")},
                        "spec": {"azureIdentity": name, "selector": selector}})),
        )
        .await
        .unwrap();
}

/// The spec of a service principal whose secret is `<secret name>` in `ns` (created here with
/// `value` under `clientsecret`), signing in at the emulator's Entra.
pub async fn sp_spec(
    client: &kube::Client,
    ns: &str,
    emu: &podid_azure_emulator::Emulator,
    client_id: &str,
    secret: &str,
    value: &str,
) -> Value {
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": secret}, "stringData": {"clientsecret": value}})),
        )
        .await
        .unwrap();
    json!({"type": 1, "clientID": client_id, "tenantID": emu.tenant_id(),
           "adEndpoint": format!("{}/", emu.arm_endpoint()),
           "clientPassword": {"name": secret, "namespace": ns}})
}

/// Network namespaces (`ip netns` names) deleted when this drops.
pub struct Netns(pub Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// Runs a command; panics with its stderr when it fails.
pub fn sh(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Workload ID side of one workload as podid-operator's bridge leaves it once proven: a
/// federated credential on `ident` (in the emulator) for ServiceAccount `ns/sa` and the cluster's
/// issuer, and the workload's WorkloadMigration listing it ready. The emulator must trust the
/// cluster's issuer (`emu.trust_issuer_ca(cluster.ca_pem())`). Returns the credential's name.
pub async fn bridged(
    client: &kube::Client,
    cluster: &podid_testkit::Cluster,
    emu: &podid_azure_emulator::Emulator,
    ident: &podid_azure_emulator::state::Identity,
    (ns, kind, workload): (&str, &str, &str),
    sa: &str,
) -> String {
    bridged_to(client, cluster, emu, ident, (ns, kind, workload), (ns, sa)).await
}

/// [`bridged`] with the credential for ServiceAccount `sa_ns/sa` (e.g. the identity's own
/// ServiceAccount in the operator's namespace).
pub async fn bridged_to(
    client: &kube::Client,
    cluster: &podid_testkit::Cluster,
    emu: &podid_azure_emulator::Emulator,
    ident: &podid_azure_emulator::state::Identity,
    workload: (&str, &str, &str),
    (sa_ns, sa): (&str, &str),
) -> String {
    use podid_crds::migration::{TOKEN_EXCHANGE_AUDIENCE, service_account_subject};
    let subject = service_account_subject(sa_ns, sa);
    let name = podid_crds::migration::credential_name(cluster.issuer(), sa_ns, sa);
    emu.add_federated_credential(
        &ident.id,
        podid_azure_emulator::FederatedCredential {
            name: &name,
            issuer: cluster.issuer(),
            subject: &subject,
            audience: TOKEN_EXCHANGE_AUDIENCE,
        },
    )
    .unwrap();
    record_only(client, cluster, emu, ident, workload, (sa_ns, sa)).await
}

/// Only the workload's WorkloadMigration, listing the (existing) credential for `sa_ns/sa` as
/// proven. Returns the credential's name.
pub async fn record_only(
    client: &kube::Client,
    cluster: &podid_testkit::Cluster,
    emu: &podid_azure_emulator::Emulator,
    ident: &podid_azure_emulator::state::Identity,
    (ns, kind, workload): (&str, &str, &str),
    (sa_ns, sa): (&str, &str),
) -> String {
    use podid_crds::migration::{
        WorkloadMigration, credential_name, migration_name, service_account_subject,
    };
    let subject = service_account_subject(sa_ns, sa);
    let name = credential_name(cluster.issuer(), sa_ns, sa);
    let api: Api<WorkloadMigration> = Api::namespaced(client.clone(), ns);
    let record = migration_name(kind, workload);
    api.create(
        &PostParams::default(),
        &obj(
            json!({"apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
            "metadata": {"name": record},
            "spec": {"workload": {"kind": kind, "name": workload}}}),
        ),
    )
    .await
    .unwrap();
    api.patch_status(
        &record,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {
            "identities": [{"azureIdentity": format!("{ns}/{workload}"), "clientID": ident.client_id,
                            "resourceID": ident.id, "tenantID": emu.tenant_id()}],
            "targetServiceAccount": sa,
            "credentials": [{"name": name, "identity": ident.id, "issuer": cluster.issuer(),
                             "subject": subject, "ready": true}],
        }})),
    )
    .await
    .unwrap();
    name
}

/// A token request from `from` for `resource` (plus `query`): status and body.
pub async fn call_resource(
    agent: SocketAddr,
    from: IpAddr,
    resource: &str,
    query: &str,
) -> (u16, String) {
    let resp = reqwest::Client::builder()
        .local_address(from)
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{agent}/metadata/identity/oauth2/token"))
        .query(&[("api-version", "2018-02-01"), ("resource", resource)])
        .query(
            &url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect::<Vec<_>>(),
        )
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The client a token was issued to: `appid` (v1.0 tokens, IMDS's) or `azp` (v2.0 tokens, what
/// the emulator's v2 endpoint issues for an exchange).
pub fn token_client(claims: &Value) -> String {
    claims["appid"]
        .as_str()
        .or(claims["azp"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// [`start_agent`] with more of the agent's command-line `flags` (e.g. `--federated`).
pub async fn start_agent_flags(
    client: kube::Client,
    node: &str,
    config: ServerConfig,
    authority: &str,
    flags: &[&str],
) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let (guard, _) = start_agent_with_flags(listener, client, node, config, authority, flags).await;
    (addr, guard)
}
