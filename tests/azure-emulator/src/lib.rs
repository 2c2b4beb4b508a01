//! podid-azure-emulator: Azure on loopback for tests and demos — ARM (scale sets and VMs with
//! their identities, user-assigned identities with federated credentials), the Entra token
//! endpoints and IMDS — held to the real REST contracts, with fault injection and call counters.
//!
//! ```no_run
//! # async fn t() -> Result<(), podid_azure_emulator::Error> {
//! use podid_azure_emulator::{Emulator, Settings};
//! let emu = Emulator::start(Settings::default()).await?;
//! let id = emu.add_identity("rg", "payments-id");
//! let vmss = emu.add_scale_set("MC_rg", "aks-nodepool1-12345678-vmss", 2);
//! println!("ARM at {}, Entra at {}", emu.arm_endpoint(), emu.authority_host());
//! # Ok(()) }
//! ```

mod entra;
mod imds;
mod keys;
pub mod server;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;

pub use server::Fault;
use server::{Shared, World};
use state::{App, Identity, IdentityBlock, Machine, key};

/// Errors of the emulator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("signing key: {0}")]
    Key(String),
}

/// Emulator settings (all have test-friendly defaults).
#[derive(Clone, Debug)]
pub struct Settings {
    pub tenant_id: String,
    pub subscription_id: String,
    /// `InProgress` answers of a compute operation before `Succeeded` (0: done at once).
    pub lro_polls: u32,
    /// How long a federated-credential write holds its identity.
    pub fic_write_latency: Duration,
    /// How long a newly created federated credential stays invisible to token exchanges (Entra
    /// answers AADSTS70021 meanwhile, as it does while a new credential propagates).
    pub fic_propagation: Duration,
    /// PEM roots trusted when fetching a federated issuer's discovery document and JWKS.
    pub issuer_ca_pem: Vec<String>,
    /// Require a valid bearer token for ARM.
    pub require_arm_auth: bool,
    /// Listen address (port 0: any free port); the https listener takes another free port.
    pub listen: SocketAddr,
    /// Seconds added to the clock when checking assertion lifetimes (tests of expiry).
    pub clock_offset_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            subscription_id: "00000000-0000-0000-0000-00000000beef".into(),
            lro_polls: 1,
            fic_write_latency: Duration::ZERO,
            fic_propagation: Duration::ZERO,
            issuer_ca_pem: Vec::new(),
            require_arm_auth: true,
            listen: "127.0.0.1:0".parse().expect("addr"),
            clock_offset_secs: 0,
        }
    }
}

/// A seed file (`--seed`) or `POST /_emulator/seed` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seed {
    #[serde(default)]
    pub apps: Vec<App>,
    #[serde(default)]
    pub identities: Vec<IdentitySeed>,
    #[serde(default)]
    pub scale_sets: Vec<MachineSeed>,
    #[serde(default)]
    pub virtual_machines: Vec<MachineSeed>,
}

/// A user-assigned identity to create.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySeed {
    pub resource_group: String,
    pub name: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub principal_id: Option<String>,
}

/// A scale set (with `instances`) or VM to create.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineSeed {
    pub resource_group: String,
    pub name: String,
    #[serde(default)]
    pub instances: u32,
    #[serde(default)]
    pub system_assigned: bool,
    /// ARM ids of user-assigned identities already on it.
    #[serde(default)]
    pub identities: Vec<String>,
}

pub(crate) fn apply_seed(ctx: &Shared, seed: &Seed) -> Result<(), String> {
    let sub = ctx
        .settings
        .lock()
        .expect("settings")
        .subscription_id
        .clone();
    let tenant = ctx.settings.lock().expect("settings").tenant_id.clone();
    let mut w = ctx.world.lock().expect("world");
    for a in &seed.apps {
        let mut a = a.clone();
        if a.object_id.is_empty() {
            a.object_id = uuid::Uuid::new_v4().to_string();
        }
        a.tenant_id = tenant.clone();
        w.apps.insert(a.client_id.clone(), a);
    }
    for i in &seed.identities {
        let id = format!(
            "/subscriptions/{sub}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            i.resource_group, i.name
        );
        w.identities.insert(
            key(&id),
            Identity {
                id,
                name: i.name.clone(),
                location: "eastus".into(),
                client_id: i
                    .client_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                principal_id: i
                    .principal_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                tenant_id: tenant.clone(),
                tags: Default::default(),
                federated_credentials: Default::default(),
            },
        );
    }
    for (list, is_scale_set) in [(&seed.scale_sets, true), (&seed.virtual_machines, false)] {
        for m in list {
            let kind = if is_scale_set {
                "virtualMachineScaleSets"
            } else {
                "virtualMachines"
            };
            let id = format!(
                "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Compute/{kind}/{}",
                m.resource_group, m.name
            );
            let mut identity = IdentityBlock {
                system_assigned: m.system_assigned,
                ..Default::default()
            };
            for i in &m.identities {
                if !w.identities.contains_key(&key(i)) {
                    return Err(format!("{kind} {}: identity {i} is not seeded", m.name));
                }
                identity.user_assigned.insert(key(i), (i.clone(), true));
            }
            w.machines.insert(
                key(&id),
                Machine {
                    id,
                    name: m.name.clone(),
                    location: "eastus".into(),
                    is_scale_set,
                    instances: (0..m.instances).map(|i| i.to_string()).collect(),
                    principal_id: uuid::Uuid::new_v4().to_string(),
                    tenant_id: tenant.clone(),
                    identity,
                    etag: 1,
                    extra: serde_json::json!({}),
                },
            );
        }
    }
    Ok(())
}

/// A running emulator. Dropping it stops the listeners.
pub struct Emulator {
    ctx: Arc<Shared>,
    http: SocketAddr,
    https: SocketAddr,
    ca_pem: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A federated credential's fields.
#[derive(Clone, Debug)]
pub struct FederatedCredential<'a> {
    pub name: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub audience: &'a str,
}

impl Emulator {
    /// Starts the emulator on loopback: plain HTTP on `settings.listen`, HTTPS on a free port.
    pub async fn start(settings: Settings) -> Result<Self, Error> {
        let keys = keys::Keys::generate()?;
        let ctx = Arc::new(Shared {
            world: Mutex::new(World::default()),
            keys,
            settings: Mutex::new(settings.clone()),
        });
        let app = server::router(ctx.clone());
        let http_listener = TcpListener::bind(settings.listen).await?;
        let https_listener = TcpListener::bind((settings.listen.ip(), 0)).await?;
        let http = http_listener.local_addr()?;
        let https = https_listener.local_addr()?;
        let (ca_pem, acceptor) = tls::acceptor()?;
        let plain = app.clone();
        let t1 = tokio::spawn(async move {
            let _ = axum::serve(http_listener, plain).await;
        });
        let t2 = tokio::spawn(tls::serve(https_listener, acceptor, app));
        Ok(Self {
            ctx,
            http,
            https,
            ca_pem,
            tasks: vec![t1, t2],
        })
    }

    /// `http://127.0.0.1:<port>`: ARM, IMDS and (over plain HTTP) Entra.
    pub fn arm_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `https://127.0.0.1:<port>`: the same routes over TLS (Entra clients insist on https).
    pub fn https_endpoint(&self) -> String {
        format!("https://{}", self.https)
    }

    /// The Entra authority host (https).
    pub fn authority_host(&self) -> String {
        self.https_endpoint()
    }

    /// IMDS base URL for one instance (`<scale set>_<instance id>` or a VM name); the token API
    /// is `<this>/metadata/identity/oauth2/token`.
    pub fn imds_endpoint(&self, instance: &str) -> String {
        format!("http://{}/instances/{instance}", self.http)
    }

    /// PEM of the CA that signed the https certificate (for `REQUESTS_CA_BUNDLE` and friends).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes, into `dir`, the cloud configuration a podid program (or the original MIC) takes
    /// to work against this emulator: `azure.json` naming `AzureStackCloud`, this tenant and
    /// subscription, `resource_group` and the service principal `app` (client ID, secret), and
    /// the `AzureStackCloud` environment file (set `AZURE_ENVIRONMENT_FILEPATH` to it) whose ARM
    /// and Entra endpoints are this emulator's plain-HTTP address. Returns (azure.json, the
    /// environment file).
    pub fn write_cloud_config(
        &self,
        dir: &std::path::Path,
        resource_group: &str,
        app: (&str, &str),
    ) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let arm = format!("{}/", self.arm_endpoint());
        let environment = dir.join("environment.json");
        std::fs::write(
            &environment,
            serde_json::json!({"name": "AzureStackCloud", "resourceManagerEndpoint": arm,
                "activeDirectoryEndpoint": arm, "tokenAudience": "https://management.azure.com/",
                "resourceIdentifiers": {}})
            .to_string(),
        )?;
        let azure_json = dir.join("azure.json");
        std::fs::write(
            &azure_json,
            serde_json::json!({"cloud": "AzureStackCloud", "tenantId": self.tenant_id(),
                "subscriptionId": self.subscription_id(), "resourceGroup": resource_group,
                "vmType": "vmss", "aadClientId": app.0, "aadClientSecret": app.1})
            .to_string(),
        )?;
        Ok((azure_json, environment))
    }

    pub fn tenant_id(&self) -> String {
        self.ctx
            .settings
            .lock()
            .expect("settings")
            .tenant_id
            .clone()
    }

    pub fn subscription_id(&self) -> String {
        self.ctx
            .settings
            .lock()
            .expect("settings")
            .subscription_id
            .clone()
    }

    /// Seeds apps, identities, scale sets and VMs.
    pub fn seed(&self, seed: &Seed) -> Result<(), String> {
        apply_seed(&self.ctx, seed)
    }

    /// Creates a user-assigned identity; returns it.
    pub fn add_identity(&self, resource_group: &str, name: &str) -> Identity {
        self.seed(&Seed {
            identities: vec![IdentitySeed {
                resource_group: resource_group.into(),
                name: name.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("seed identity");
        self.identity(&format!("/subscriptions/{}/resourcegroups/{resource_group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}", self.subscription_id()))
            .expect("seeded identity")
    }

    /// A user-assigned identity by ARM id.
    pub fn identity(&self, id: &str) -> Option<Identity> {
        self.ctx
            .world
            .lock()
            .expect("world")
            .identities
            .get(&key(id))
            .cloned()
    }

    /// Creates a scale set with `instances` instances; returns its ARM id.
    pub fn add_scale_set(&self, resource_group: &str, name: &str, instances: u32) -> String {
        self.seed(&Seed {
            scale_sets: vec![MachineSeed {
                resource_group: resource_group.into(),
                name: name.into(),
                instances,
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("seed scale set");
        format!(
            "/subscriptions/{}/resourceGroups/{resource_group}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}",
            self.subscription_id()
        )
    }

    /// Registers an app (service principal) with a client secret.
    pub fn add_app(&self, client_id: &str, secret: Option<&str>, certificate_pem: Option<&str>) {
        self.seed(&Seed {
            apps: vec![App {
                client_id: client_id.into(),
                secret: secret.map(str::to_string),
                certificate_pem: certificate_pem.map(str::to_string),
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("seed app");
    }

    /// Puts an identity on a scale set or VM as if someone else had (pre-existing assignment).
    pub fn preassign(&self, machine_id: &str, identity_id: &str) {
        let mut w = self.ctx.world.lock().expect("world");
        let m = w
            .machines
            .get_mut(&key(machine_id))
            .expect("machine exists");
        m.identity
            .user_assigned
            .insert(key(identity_id), (identity_id.to_string(), true));
    }

    /// Lower-cased ARM ids of the user-assigned identities on a scale set or VM.
    pub fn assigned_identities(&self, machine_id: &str) -> Vec<String> {
        let w = self.ctx.world.lock().expect("world");
        w.machines
            .get(&key(machine_id))
            .map(|m| m.identity.user_assigned.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The machine's `identity` block as ARM would return it.
    pub fn identity_block(&self, machine_id: &str) -> Option<Value> {
        let w = self.ctx.world.lock().expect("world");
        w.machines
            .get(&key(machine_id))
            .map(|m| m.to_json(&w.identities, "Succeeded")["identity"].clone())
    }

    /// Adds a federated credential directly (as if created earlier).
    pub fn add_federated_credential(
        &self,
        identity_id: &str,
        fic: FederatedCredential<'_>,
    ) -> Result<(), String> {
        let mut w = self.ctx.world.lock().expect("world");
        let i = w
            .identities
            .get_mut(&key(identity_id))
            .ok_or("no such identity")?;
        let f = state::validate_fic(fic.name, &serde_json::json!({"properties": {"issuer": fic.issuer, "subject": fic.subject, "audiences": [fic.audience]}})).map_err(|e| e.message)?;
        state::put_fic(i, f).map(|_| ()).map_err(|e| e.message)
    }

    /// Deletes a federated credential directly (as if someone removed it in the portal); true
    /// when it existed.
    pub fn delete_federated_credential(&self, identity_id: &str, name: &str) -> bool {
        let mut w = self.ctx.world.lock().expect("world");
        w.identities
            .get_mut(&key(identity_id))
            .is_some_and(|i| i.federated_credentials.remove(name).is_some())
    }

    /// The names of an identity's federated credentials.
    pub fn federated_credentials(&self, identity_id: &str) -> Vec<String> {
        let w = self.ctx.world.lock().expect("world");
        w.identities
            .get(&key(identity_id))
            .map(|i| i.federated_credentials.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The subjects of an identity's federated credentials, one entry per credential.
    pub fn federated_credential_subjects(&self, identity_id: &str) -> Vec<String> {
        let w = self.ctx.world.lock().expect("world");
        w.identities
            .get(&key(identity_id))
            .map(|i| {
                i.federated_credentials
                    .values()
                    .map(|f| f.subject.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Calls so far per route (`PATCH vmss`, `GET vmss`, `POST token`, `GET imds.token`, …).
    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.ctx.world.lock().expect("world").calls.clone()
    }

    /// Calls so far of one route.
    pub fn call_count(&self, route: &str) -> u64 {
        self.calls().get(route).copied().unwrap_or(0)
    }

    pub fn reset_calls(&self) {
        self.ctx.world.lock().expect("world").calls.clear();
    }

    /// Faults injected so far, by route and kind (`PATCH vmss 429`, `POST token drop`,
    /// `GET vmss latency`).
    pub fn faults_fired(&self) -> std::collections::BTreeMap<String, u64> {
        self.ctx.world.lock().expect("world").faults_fired.clone()
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        self.ctx.world.lock().expect("world").faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.ctx.world.lock().expect("world").faults.clear();
    }

    /// The caller may not assign this identity (LinkedAuthorizationFailed).
    pub fn deny_assign(&self, identity_id: &str) {
        self.ctx
            .world
            .lock()
            .expect("world")
            .deny_assign
            .insert(key(identity_id));
    }

    /// The caller may not write this scale set or VM (AuthorizationFailed).
    pub fn deny_write(&self, machine_id: &str) {
        self.ctx
            .world
            .lock()
            .expect("world")
            .deny_write
            .insert(key(machine_id));
    }

    /// Trusts a CA when fetching federated issuers' discovery documents (e.g. the test apiserver's).
    pub fn trust_issuer_ca(&self, pem: &str) {
        self.ctx
            .settings
            .lock()
            .expect("settings")
            .issuer_ca_pem
            .push(pem.to_string());
    }

    /// Moves the emulator's clock for assertion lifetimes forward (to test expired tokens).
    pub fn advance_clock(&self, by: Duration) {
        self.ctx
            .settings
            .lock()
            .expect("settings")
            .clock_offset_secs += by.as_secs();
    }

    pub fn set_lro_polls(&self, polls: u32) {
        self.ctx.settings.lock().expect("settings").lro_polls = polls;
    }

    pub fn set_fic_write_latency(&self, latency: Duration) {
        self.ctx
            .settings
            .lock()
            .expect("settings")
            .fic_write_latency = latency;
    }

    /// Creates an AKS managed cluster (what `GET …/managedClusters/{name}` returns: its OIDC
    /// issuer when `oidc_issuer` is set, `oidcIssuerProfile.enabled: false` otherwise); returns
    /// its ARM id.
    pub fn add_managed_cluster(
        &self,
        resource_group: &str,
        name: &str,
        oidc_issuer: Option<&str>,
    ) -> String {
        let id = format!(
            "/subscriptions/{}/resourcegroups/{resource_group}/providers/Microsoft.ContainerService/managedClusters/{name}",
            self.subscription_id()
        );
        let profile = match oidc_issuer {
            Some(url) => serde_json::json!({"enabled": true, "issuerURL": url}),
            None => serde_json::json!({"enabled": false}),
        };
        let body = serde_json::json!({
            "id": id, "name": name, "type": "Microsoft.ContainerService/ManagedClusters",
            "location": "eastus",
            "properties": {
                "provisioningState": "Succeeded",
                "nodeResourceGroup": format!("MC_{resource_group}_{name}_eastus"),
                "oidcIssuerProfile": profile,
            }
        });
        self.ctx
            .world
            .lock()
            .expect("world")
            .managed_clusters
            .insert(key(&id), body);
        id
    }

    /// Gives an AKS managed cluster (from [`Emulator::add_managed_cluster`]) a kubelet identity
    /// (`properties.identityProfile.kubeletidentity`), as AKS reports it.
    pub fn set_kubelet_identity(&self, cluster_id: &str, identity: &Identity) {
        let mut w = self.ctx.world.lock().expect("world");
        let c = w
            .managed_clusters
            .get_mut(&key(cluster_id))
            .expect("managed cluster exists");
        c["properties"]["identityProfile"] = serde_json::json!({"kubeletidentity": {
            "resourceId": identity.id, "clientId": identity.client_id, "objectId": identity.principal_id,
        }});
    }

    /// Role assignments at `scope` exactly, as (role definition id, principal id).
    pub fn role_assignments(&self, scope: &str) -> Vec<(String, String)> {
        let w = self.ctx.world.lock().expect("world");
        w.role_assignments
            .values()
            .filter(|a| key(&a.scope) == key(scope))
            .map(|a| (a.role_definition_id.clone(), a.principal_id.clone()))
            .collect()
    }

    /// Every role assignment, as (ARM id, role definition id, principal id), sorted by id.
    pub fn all_role_assignments(&self) -> Vec<(String, String, String)> {
        let w = self.ctx.world.lock().expect("world");
        w.role_assignments
            .values()
            .map(|a| {
                (
                    key(&a.id),
                    a.role_definition_id.clone(),
                    a.principal_id.clone(),
                )
            })
            .collect()
    }

    /// Adds a role assignment directly (as if someone had granted it); returns its ARM id.
    pub fn add_role_assignment(
        &self,
        scope: &str,
        role_definition_id: &str,
        principal_id: &str,
    ) -> String {
        let id = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            scope.trim_end_matches('/'),
            uuid::Uuid::new_v4()
        );
        self.ctx
            .world
            .lock()
            .expect("world")
            .role_assignments
            .insert(
                key(&id),
                server::RoleAssignment {
                    id: id.clone(),
                    scope: scope.to_owned(),
                    role_definition_id: role_definition_id.to_owned(),
                    principal_id: principal_id.to_owned(),
                    principal_type: "ServicePrincipal".into(),
                },
            );
        id
    }

    /// New federated credentials become visible to token exchanges only `delay` after they are
    /// created.
    pub fn set_fic_propagation(&self, delay: Duration) {
        self.ctx.settings.lock().expect("settings").fic_propagation = delay;
    }

    /// A valid ARM access token for an app (what the Entra endpoint would issue).
    pub fn arm_token(&self, client_id: &str) -> String {
        let now = server::unix_now();
        let tenant = self.tenant_id();
        self.ctx.keys.sign(&serde_json::json!({
            "aud": "https://management.azure.com/", "iss": format!("https://sts.windows.net/{tenant}/"),
            "tid": tenant, "appid": client_id, "oid": client_id, "sub": client_id, "iat": now, "nbf": now, "exp": now + 3599
        }))
    }

    /// Signs arbitrary claims with the emulator's key: a stand-in external issuer for tests
    /// (the emulator serves the matching discovery document and JWKS under its tenant).
    pub fn sign_for_tests(&self, claims: &Value) -> String {
        self.ctx.keys.sign(claims)
    }

    /// The emulator's JWKS (tokens it issues verify against it).
    pub fn jwks(&self) -> Value {
        serde_json::json!({"keys": [self.ctx.keys.jwk.clone()]})
    }
}

mod tls {
    //! The https listener: a self-signed CA and a certificate for 127.0.0.1 and localhost.

    use std::sync::Arc;

    use axum::Router;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tower::ServiceExt;

    use crate::Error;

    pub fn acceptor() -> Result<(String, TlsAcceptor), Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "podid-azure-emulator CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "podid-azure-emulator");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
            .map_err(|e| Error::Key(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok((ca_cert.pem(), TlsAcceptor::from(Arc::new(config))))
    }

    pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, app: Router) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.headers_mut()
                            .insert("x-podid-emulator-tls", http::HeaderValue::from_static("1"));
                        app.clone().oneshot(req.map(axum::body::Body::new))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    }
}
