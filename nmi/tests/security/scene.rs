//! The agent in-process with the production token sources, in front of the Azure emulator's
//! IMDS for one scale-set instance that holds every identity the test names, with a pod index
//! the test fills (`Scene::view`). What IMDS would hand out is therefore real: an attack that
//! gets past the agent gets a real token for another identity.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use podid_azure_emulator::{Emulator, Settings};
use podid_nmi::agent::AgentBuilder;
use podid_nmi::config::Flags;
use podid_nmi::server::{self, ServerConfig};
use podid_nmi::view::MemoryView;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub struct Scene {
    pub emu: Emulator,
    pub agent: SocketAddr,
    pub view: MemoryView,
    /// Client ID of each identity, by name.
    pub client_ids: BTreeMap<String, String>,
    shutdown: CancellationToken,
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Scene {
    /// Identities `names` on the instance's scale set; the agent with `config` (its IMDS
    /// endpoint set to the emulator's) and an empty pod index.
    pub async fn start(config: ServerConfig, names: &[&str]) -> Self {
        Self::start_proxying_to(config, names, None).await
    }

    /// [`Scene::start`], with what the agent proxies (not its token requests) sent to `upstream`
    /// instead of the emulator's IMDS.
    pub async fn start_proxying_to(
        config: ServerConfig,
        names: &[&str],
        upstream: Option<url::Url>,
    ) -> Self {
        let emu = Emulator::start(Settings::default()).await.unwrap();
        let vmss = emu.add_scale_set("rg", "aks-pool-1-vmss", 1);
        let mut client_ids = BTreeMap::new();
        for name in names {
            let i = emu.add_identity("rg", name);
            emu.preassign(&vmss, &i.id);
            client_ids.insert((*name).to_owned(), i.client_id);
        }
        let imds = url::Url::parse(&emu.imds_endpoint("aks-pool-1-vmss_0")).unwrap();
        let view = MemoryView::default();
        let shutdown = CancellationToken::new();
        let flags = Flags::try_parse_from([
            "podid-nmi".to_owned(),
            "--node=node-1".to_owned(),
            format!("--imds-endpoint={imds}"),
            format!("--entra-authority={}", emu.authority_host()),
        ])
        .unwrap();
        let mut builder = AgentBuilder::new(&flags, shutdown.clone());
        builder.config = ServerConfig {
            imds_endpoint: upstream.unwrap_or_else(|| imds.clone()),
            pod_lookup_attempts: 1,
            ..config
        };
        let credentials = builder.credentials_with(Arc::new(view.clone())).unwrap();
        let agent = Arc::new(builder.build(Arc::new(view.clone()), Arc::new(credentials)));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(server::serve(l, server::router(agent), shutdown.clone()));
        Self {
            emu,
            agent: addr,
            view,
            client_ids,
            shutdown,
        }
    }

    pub fn client_id(&self, name: &str) -> &str {
        &self.client_ids[name]
    }

    /// The identity name whose token `body` holds, if any.
    pub fn token_holder(&self, body: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let token = v.get("access_token")?.as_str()?;
        let payload = token.split('.').nth(1)?;
        use base64::Engine;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()?,
        )
        .ok()?;
        let appid = claims.get("appid")?.as_str()?;
        self.client_ids
            .iter()
            .find(|(_, c)| c.as_str() == appid)
            .map(|(n, _)| n.clone())
    }
}

/// What a pod gets back: status, `Location`, body.
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

/// Sends `GET <target>` exactly as written (HTTP clients would clean the path first), with
/// `Metadata: true`, from `from`.
pub async fn raw_get(agent: SocketAddr, from: &str, target: &str) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut s = socket.connect(agent).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("the agent answers within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
        })
        .map(|(_, v)| v.trim().to_owned());
    Answer {
        status,
        location,
        body: body.to_owned(),
    }
}

/// The query of a Key Vault token request, with extra parameters (`client_id=…`).
pub fn token_query(extra: &str) -> String {
    let base = "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";
    if extra.is_empty() {
        base.to_owned()
    } else {
        format!("{base}&{extra}")
    }
}
