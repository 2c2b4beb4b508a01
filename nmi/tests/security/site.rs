//! A node of the real API server that kwok does not manage (so the pod IPs the test writes are
//! kept), the Azure emulator's IMDS for that node's scale-set instance holding every identity
//! the test names, each declared as an AzureIdentity with a binding whose selector is its name,
//! and the agent in-process for that node in managed mode. Pods are created on any node and
//! reported Running at the address the test chooses, as a kubelet would; requests are sent from
//! those 127.x addresses.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::policy::Mode;
use podid_nmi::server::ServerConfig;
use podid_testkit::Cluster;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::live::{bound_identity, claims, obj, start_agent};

pub struct Site {
    pub emu: Emulator,
    pub agent: SocketAddr,
    pub node: String,
    pub pods: Api<Pod>,
    pub client: kube::Client,
    pub namespace: String,
    /// Client ID of each identity, by name.
    pub client_ids: BTreeMap<String, String>,
    _guard: Option<tokio_util::sync::DropGuard>,
}

impl Site {
    /// Namespace `prefix-…`, identities `names` (each bound to pods labelled
    /// `aadpodidbinding: <name>`), the Node `node` and the agent for it, in-process.
    pub async fn start(prefix: &str, node: &str, names: &[&str]) -> Site {
        let mut site = Self::without_agent(prefix, node, names).await;
        let config = ServerConfig {
            mode: Mode::Managed,
            force_namespaced: true,
            imds_endpoint: url::Url::parse(&site.imds_endpoint()).unwrap(),
            pod_lookup_attempts: 1,
            ..Default::default()
        };
        let (agent, guard) = start_agent(
            site.client.clone(),
            node,
            config,
            &site.emu.authority_host(),
        )
        .await;
        site.agent = agent;
        site._guard = Some(guard);
        site
    }

    /// The IMDS of the node's scale-set instance.
    pub fn imds_endpoint(&self) -> String {
        self.emu.imds_endpoint("aks-pool-1-vmss_0")
    }

    /// [`Site::start`] without the agent (`agent` is to be set by the test).
    pub async fn without_agent(prefix: &str, node: &str, names: &[&str]) -> Site {
        let cluster = Cluster::shared_async().await;
        let ns = cluster.namespace(prefix).await;
        let client = ns.client.clone();
        let emu = Emulator::start(Settings::default()).await.unwrap();
        let vmss = emu.add_scale_set("rg", "aks-pool-1-vmss", 1);
        let mut client_ids = BTreeMap::new();
        for name in names {
            let i = emu.add_identity("rg", &format!("{prefix}-{name}"));
            emu.preassign(&vmss, &i.id);
            bound_identity(
                &client,
                &ns.name,
                name,
                json!({"type": 0, "clientID": i.client_id, "resourceID": i.id}),
                name,
            )
            .await;
            client_ids.insert((*name).to_owned(), i.client_id);
        }
        let site = Site {
            emu,
            agent: SocketAddr::from(([127, 0, 0, 1], 0)),
            node: node.to_owned(),
            pods: Api::namespaced(client.clone(), &ns.name),
            client,
            namespace: ns.name.clone(),
            client_ids,
            _guard: None,
        };
        site.add_node(node, None).await;
        // What a controller manager would provide: the namespace's default account.
        site.create_ignoring_conflict(
            Api::namespaced_with(
                site.client.clone(),
                &site.namespace,
                &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&()),
            ),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        )
        .await;
        site
    }

    /// A Node object `name` (with `ip` as its InternalIP), which kwok does not manage.
    pub async fn add_node(&self, name: &str, ip: Option<&str>) {
        let nodes = Api::<DynamicObject>::all_with(
            self.client.clone(),
            &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Node>(&()),
        );
        self.create_ignoring_conflict(
            nodes.clone(),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
        )
        .await;
        if let Some(ip) = ip {
            nodes
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
                    ),
                )
                .await
                .unwrap();
        }
    }

    async fn create_ignoring_conflict(&self, api: Api<DynamicObject>, object: Value) {
        match api.create(&PostParams::default(), &obj(object)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("{e}"),
        }
    }

    pub fn client_id(&self, name: &str) -> &str {
        &self.client_ids[name]
    }

    /// Pod `name` on `node` with `labels` (and `spec` merged in), reported Running at `ip`.
    pub async fn run_pod(&self, name: &str, node: &str, labels: Value, ip: &str, spec: Value) {
        let mut pod_spec = json!({"nodeName": node,
                                  "containers": [{"name": "c", "image": "registry.invalid/app:1"}]});
        if let (Some(base), Value::Object(extra)) = (pod_spec.as_object_mut(), spec) {
            base.extend(extra);
        }
        self.pods
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": name, "labels": labels}, "spec": pod_spec})),
            )
            .await
            .unwrap();
        self.pods
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip,
                                                "podIPs": [{"ip": ip}]}})),
            )
            .await
            .unwrap();
    }

    /// The name of the identity whose token `body` holds, if any.
    pub fn holder(&self, body: &str) -> Option<String> {
        let app = appid(body)?;
        self.client_ids
            .iter()
            .find(|(_, c)| **c == app)
            .map(|(n, _)| n.clone())
    }

    /// Asks for a token from `from` (with `query`) until `done` accepts the answer, 30 s at
    /// most (the agent's view follows its watch); returns that answer.
    pub async fn ask_until(
        &self,
        from: &str,
        query: &str,
        done: impl Fn(u16, &str) -> bool,
    ) -> (u16, String) {
        let mut last = (0, String::new());
        for _ in 0..150 {
            last = crate::live::call(self.agent, from.parse().unwrap(), query).await;
            if done(last.0, &last.1) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "no expected answer from {from} within 30 s; the last: {} {}",
            last.0, last.1
        );
    }
}

/// The client (`appid`) a token answer was issued to.
pub fn appid(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    Some(
        claims(v["access_token"].as_str()?)["appid"]
            .as_str()?
            .to_owned(),
    )
}

/// Sends `head` (a request line and headers, without the final empty line) from `from` to
/// `to`, exactly as written; returns status and body.
pub async fn raw(to: SocketAddr, from: &str, head: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut s = socket.connect(to).await.unwrap();
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the agent answers within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // Bodies are sent whole (Content-Length) by the agent.
    (status, body.to_owned())
}
