//! The controller in-process against the real API server and the Azure emulator, as the
//! end-to-end tests run it.
#![allow(dead_code)]

pub mod process;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use podid_azure::Arm;
use podid_azure_emulator::Emulator;
use podid_crds::{AssignedIdentityState, AzureAssignedIdentity};
use podid_operator::controller::{Controller, LoopSettings, Stores};
use podid_operator::leader::{self, Election};
use podid_operator::metrics::Metrics;
use podid_operator::planner::{AssignmentPlanner, PlannerOptions};
pub use podid_testkit::builders::obj;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// A controller watches the whole cluster, as in production: two tests' controllers in one
/// test binary (one cluster) would act on each other's pods. Each test holds this while its
/// controllers run.
pub async fn one_controller_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Removes what earlier tests of this binary left (their pods, bindings and assignment records
/// — a failed test leaves them), so the next controller starts from a cluster that has only
/// its own test's objects. Call with [`one_controller_at_a_time`] held.
pub async fn clean_slate(cluster: &podid_testkit::Cluster) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
    use podid_crds::{AzureIdentity, AzureIdentityBinding};
    let client = cluster.client().await.unwrap();
    let pods: Api<Pod> = Api::all(client.clone());
    for p in pods
        .list(&ListParams::default().labels("aadpodidbinding"))
        .await
        .unwrap()
    {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let _ = Api::<Pod>::namespaced(client.clone(), &ns)
            .delete(
                &p.metadata.name.unwrap_or_default(),
                &DeleteParams::default().grace_period(0),
            )
            .await;
    }
    for b in Api::<AzureIdentityBinding>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let ns = b.metadata.namespace.clone().unwrap_or_default();
        let _ = Api::<AzureIdentityBinding>::namespaced(client.clone(), &ns)
            .delete(
                &b.metadata.name.unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await;
    }
    for i in Api::<AzureIdentity>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let ns = i.metadata.namespace.clone().unwrap_or_default();
        let _ = Api::<AzureIdentity>::namespaced(client.clone(), &ns)
            .delete(
                &i.metadata.name.unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await;
    }
    let records: Api<AzureAssignedIdentity> = Api::all(client.clone());
    for a in records.list(&ListParams::default()).await.unwrap() {
        let ns = a.metadata.namespace.clone().unwrap_or_default();
        let api: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), &ns);
        let name = a.metadata.name.unwrap_or_default();
        let _ = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
            )
            .await;
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
}

/// The app registration the controller signs in with (add it to each emulator).
pub const APP: (&str, &str) = ("operator", "pw");

/// One running controller replica; stops (and waits) on [`Replica::stop`] or drop.
pub struct Replica {
    pub identity: String,
    pub metrics: Metrics,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Replica {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// Ends the replica at once, as a crash would (nothing awaited, the Lease not released).
    pub fn kill(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a replica named `identity` with its Lease `podid-operator` in `lease_ns` (so tests
/// in other namespaces do not share it).
pub async fn start(
    client: &kube::Client,
    emu: &Emulator,
    identity: &str,
    lease_ns: &str,
    lease: Duration,
) -> Replica {
    start_respecting(client, emu, identity, lease_ns, lease, None).await
}

/// [`start`], also standing back while the original MIC's Endpoints lock `original_lock`
/// (namespace, name) is held.
pub async fn start_respecting(
    client: &kube::Client,
    emu: &Emulator,
    identity: &str,
    lease_ns: &str,
    lease: Duration,
    original_lock: Option<(String, String)>,
) -> Replica {
    start_with(
        client,
        emu,
        identity,
        lease_ns,
        lease,
        original_lock,
        PlannerOptions::default(),
    )
    .await
}

/// [`start_respecting`] with the planner's options (`--federated`, `--identity-serving`, …).
pub async fn start_with(
    client: &kube::Client,
    emu: &Emulator,
    identity: &str,
    lease_ns: &str,
    lease: Duration,
    original_lock: Option<(String, String)>,
    options: PlannerOptions,
) -> Replica {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "podid_operator=info".into()))
        .with_test_writer()
        .try_init();
    let mut arm = arm(emu);
    let metrics = Metrics::new();
    let m = metrics.clone();
    arm.observer = Some(Arc::new(move |op, result, took| {
        m.observe_arm(op, result, took)
    }));
    let shutdown = CancellationToken::new();
    let notify = Arc::new(Notify::new());
    let stores = Stores::start(client, notify.clone(), &shutdown);
    let controller = Controller::new(
        client.clone(),
        arm,
        AssignmentPlanner::new(options),
        stores,
        metrics.clone(),
        identity,
    );
    let (may_write_tx, may_write) = watch::channel(false);
    let election = tokio::spawn(leader::run(
        client.clone(),
        Election {
            namespace: lease_ns.into(),
            name: "podid-operator".into(),
            identity: identity.into(),
            duration: lease,
            original_lock,
        },
        may_write_tx,
        shutdown.clone(),
    ));
    let settings = LoopSettings {
        debounce: Duration::from_millis(200),
        full_interval: Duration::from_secs(180),
        retry_base: Duration::from_millis(300),
    };
    let run = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { controller.run(notify, may_write, settings, shutdown).await })
    };
    Replica {
        identity: identity.into(),
        metrics,
        shutdown,
        tasks: vec![run, election],
    }
}

/// Waits (watching) until the AzureAssignedIdentities in `default` whose name ends with
/// `-{suffix}` are exactly `want` (names) and all `Assigned`; panics with what is there after
/// `secs`.
pub async fn wait_assigned(client: &kube::Client, suffix_ns: &str, want: &[String], secs: u64) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let api: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .applied_objects()
        .default_backoff();
    // The watch feeds the local store in the background; the checks below read the store.
    let feed = tokio::spawn(stream.for_each(|_| std::future::ready(())));
    let mut want: Vec<String> = want.to_vec();
    want.sort();
    let view = |r: &reflector::Store<AzureAssignedIdentity>| {
        let mut v: Vec<(String, String)> = r
            .state()
            .iter()
            .filter(|a| a.spec.pod_namespace == suffix_ns)
            .map(|a| {
                (
                    kube::ResourceExt::name_any(a.as_ref()),
                    a.status
                        .as_ref()
                        .map(|s| format!("{:?}", s.status))
                        .unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let done = |r: &reflector::Store<AzureAssignedIdentity>| {
        let v = view(r);
        v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>() == want
            && r.state()
                .iter()
                .filter(|a| a.spec.pod_namespace == suffix_ns)
                .all(|a| {
                    a.status.as_ref().map(|s| &s.status) == Some(&AssignedIdentityState::Assigned)
                        && a.metadata.deletion_timestamp.is_none()
                })
    };
    let result = tokio::time::timeout(Duration::from_secs(secs), async {
        reader.wait_until_ready().await.unwrap();
        while !done(&reader) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    feed.abort();
    assert!(
        result.is_ok(),
        "after {secs}s the assignments of {suffix_ns} are {:?}, wanted {want:?} all Assigned",
        view(&reader)
    );
}

/// The identities on `machine` (lowercase ARM ids), sorted.
pub fn on_machine(emu: &Emulator, machine: &str) -> Vec<String> {
    let mut v = emu.assigned_identities(machine);
    v.sort();
    v
}

/// Waits (polling the emulator, which has no watch) until `machine` carries exactly `want`.
pub async fn wait_machine(emu: &Emulator, machine: &str, want: &[&str], secs: u64) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_lowercase()).collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = on_machine(emu, machine);
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {secs}s {machine} carries {now:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates an AzureIdentity (type 0 = user-assigned, 1 = service principal).
pub async fn identity(client: &kube::Client, ns: &str, name: &str, type_: u8, id: &str, cid: &str) {
    Api::<podid_crds::AzureIdentity>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"type": type_, "resourceID": id, "clientID": cid,
                         "tenantID": "72f988bf-86f1-41af-91ab-2d7cd011db47"}
            })),
        )
        .await
        .unwrap();
}

pub async fn binding(client: &kube::Client, ns: &str, name: &str, identity: &str, selector: &str) {
    Api::<podid_crds::AzureIdentityBinding>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"azureIdentity": identity, "selector": selector}
            })),
        )
        .await
        .unwrap();
}

pub async fn pod(client: &kube::Client, ns: &str, name: &str, node: &str, selector: &str) {
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({
                "metadata": {"name": name, "labels": {"aadpodidbinding": selector}},
                "spec": {"nodeName": node, "automountServiceAccountToken": false,
                         "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
            })),
        )
        .await
        .unwrap();
}

pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str) {
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .delete(name, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// The controller's credential in `emu` (the app registration [`APP`]).
pub fn credential(emu: &Emulator) -> Arc<dyn podid_azure::TokenCredential> {
    podid_azure::CredentialConfig::ClientSecret {
        authority_host: emu.arm_endpoint(),
        tenant_id: emu.tenant_id(),
        client_id: APP.0.into(),
        secret: APP.1.into(),
    }
    .build(reqwest::Client::new())
    .unwrap()
}

/// ARM over REST in `emu`, with test-sized polls and retries (the controller's client, and an
/// independent reader and writer for the bridge tests' own checks).
pub fn arm(emu: &Emulator) -> Arm {
    let mut arm = Arm::new(&emu.arm_endpoint(), credential(emu), reqwest::Client::new());
    arm.poll_interval = Duration::from_millis(20);
    arm.retry.base_delay = Duration::from_millis(50);
    arm.retry.max_delay = Duration::from_millis(500);
    arm
}

/// What the bridge writes federated credentials with: azure_mgmt_msi, one write at a time per
/// identity.
pub fn msi(emu: &Emulator) -> podid_azure::SerialCredentials<podid_azure::MsiCredentials> {
    let mut serial = podid_azure::SerialCredentials::new(
        podid_azure::MsiCredentials::new(
            &emu.arm_endpoint(),
            "https://management.azure.com",
            credential(emu),
            reqwest::Client::new(),
        )
        .unwrap(),
    );
    serial.conflict_retry.base_delay = Duration::from_millis(50);
    serial
}

/// A fresh bridge (new watches, nothing remembered from an earlier one) against `cluster`'s
/// issuer and `emu`, proving with test-sized waits.
pub fn bridge(
    cluster: &podid_testkit::Cluster,
    client: &kube::Client,
    emu: &Emulator,
    shutdown: &CancellationToken,
) -> podid_operator::bridge_run::Bridge<podid_azure::SerialCredentials<podid_azure::MsiCredentials>>
{
    use podid_operator::bridge_run::{Bridge, BridgeSettings, BridgeStores, ExchangeProver};
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    Bridge::new(
        client.clone(),
        msi(emu),
        Arc::new(ExchangeProver::new(
            client.clone(),
            http,
            &emu.authority_host(),
            &emu.tenant_id(),
            "https://management.azure.com/",
        )),
        BridgeStores::start(client, Arc::new(Notify::new()), shutdown),
        BridgeSettings {
            issuer: Some(cluster.issuer().to_owned()),
            tenant_id: Some(emu.tenant_id()),
            match_options: podid_crds::policy::MatchOptions::standard(false),
            proof_attempts: 20,
            proof_interval: Duration::from_millis(250),
            serving: Default::default(),
            namespace: None,
            scope: None,
        },
        Metrics::new(),
    )
}
