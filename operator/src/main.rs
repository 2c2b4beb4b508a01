//! podid-operator: the Managed Identity Controller binary. The logic is in the library; this wires
//! flags, cloud config, watches, leader election, the HTTP endpoints and shutdown together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use clap::Parser;
use podid_azure::{Arm, MsiCredentials, SerialCredentials};
use podid_crds::policy::Mode;
use podid_operator::bridge_run::{Bridge, BridgeAzure, BridgeSettings, production_bridge};
use podid_operator::config::Flags;
use podid_operator::controller::{Controller, LoopSettings, Stores};
use podid_operator::leader::{self, Election};
use podid_operator::managed::{ManagedOptions, ManagedPlanner};
use podid_operator::managed_run::{ManagedController, ManagedStores};
use podid_operator::metrics::Metrics;
use podid_operator::planner::{AssignmentPlanner, PlannerOptions};
use podid_telemetry::AdminRoutes;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The admin routes, on both the probe and the Prometheus port. The original answers `/healthz`
/// with 200 always; the body says whether this replica is the active one.
fn router(
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    writing: watch::Receiver<bool>,
    lease: watch::Receiver<Option<String>>,
) -> Router {
    AdminRoutes::new()
        .health(move || *writing.borrow())
        .readiness(move || {
            lease
                .borrow()
                .clone()
                .or_else(|| (!ready.load(Ordering::SeqCst)).then(|| "caches not synced".to_owned()))
        })
        .metrics(move || metrics.render())
        .into_router()
}

async fn serve(port: u16, app: Router, shutdown: CancellationToken) -> anyhow::Result<()> {
    Ok(podid_telemetry::serve(port, app, shutdown).await?)
}

/// A Warning Event `LeaseRefused` on this replica's own Pod (env `POD_NAME`, `POD_NAMESPACE`;
/// under the original MIC's manifests, which set neither, the container's `HOSTNAME` — its Pod's
/// name — and `MIC_POD_NAMESPACE`) each time the Lease becomes unusable, so `kubectl describe
/// pod` shows why nothing happens.
async fn lease_problem_events(
    client: kube::Client,
    mut problem: watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    // Like every task of the binary, this one ends only at shutdown.
    let var = |name: &str, fallback: &str| {
        std::env::var(name)
            .or_else(|_| std::env::var(fallback))
            .ok()
            .filter(|v| !v.is_empty())
    };
    let (Some(name), Some(namespace)) = (
        var("POD_NAME", "HOSTNAME"),
        var("POD_NAMESPACE", "MIC_POD_NAMESPACE"),
    ) else {
        shutdown.cancelled().await;
        return Ok(());
    };
    let pod = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        ..Default::default()
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "podid-operator".into(),
            instance: None,
        },
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = problem.changed() => if changed.is_err() {
                shutdown.cancelled().await;
                return Ok(());
            },
        }
        let Some(why) = problem.borrow_and_update().clone() else {
            continue;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "LeaseRefused".into(),
            note: Some(why.clone()),
            action: "LeaderElection".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &pod).await {
            // The original MIC's ClusterRole grants core/v1 Events only, not events.k8s.io.
            if let Err(core) = core_event(&client, &pod, "LeaseRefused", &why).await {
                tracing::warn!(error = %e, core_v1 = %core, "recording the LeaseRefused Event");
            }
        }
    }
}

/// A Warning Event through the core/v1 API, for accounts (the original MIC's) that may create
/// those and not events.k8s.io's.
async fn core_event(
    client: &kube::Client,
    on: &k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    message: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{Event, EventSource};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let namespace = on.namespace.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}.",
                on.name.as_deref().unwrap_or("podid-operator")
            )),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: on.clone(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("podid-operator".into()),
            ..Default::default()
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    kube::Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&Default::default(), &event)
        .await
        .map(|_| ())
}

/// The Kubernetes client: from `--kubeconfig` when given (and not empty, as the original's
/// manifests pass it), else the in-cluster configuration (or the default kubeconfig). Its
/// requests say `User-Agent: podid-operator/<version>` (as the API server's audit log shows).
async fn kube_client(flags: &Flags) -> anyhow::Result<kube::Client> {
    let mut config = match flags
        .kubeconfig
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await?,
    };
    config.headers.push((
        reqwest::header::USER_AGENT,
        reqwest::header::HeaderValue::from_static(concat!(
            "podid-operator/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    Ok(kube::Client::try_from(config)?)
}

/// ARM, and what the bridge's token exchange needs, from the cloud config.
struct Azure {
    cloud: podid_azure::CloudConfig,
    credential: Arc<dyn podid_azure::TokenCredential>,
    http: reqwest::Client,
}

impl Azure {
    fn from_flags(flags: &Flags) -> anyhow::Result<Self> {
        let cloud = flags.cloud_config().context("cloud config")?;
        let mut http = reqwest::Client::builder().timeout(flags.azure_request_timeout);
        if let Some(path) = &flags.extra_ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).context("parsing CA bundle")? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().context("HTTP client")?;
        let credential: Arc<dyn podid_azure::TokenCredential> = match &flags.cloud_config {
            Some(path) => {
                let f = flags.clone();
                Arc::new(
                    podid_azure::ReloadingCredential::new(
                        path.clone(),
                        move || f.cloud_config().map(|c| c.credential),
                        http.clone(),
                    )
                    .context("Azure credential")?,
                )
            }
            None => cloud
                .credential
                .build(http.clone())
                .context("Azure credential")?,
        };
        Ok(Self {
            cloud,
            credential,
            http,
        })
    }

    fn arm(&self, flags: &Flags, metrics: &Metrics) -> Arm {
        let mut arm = Arm::new(
            &self.cloud.endpoints.arm,
            self.credential.clone(),
            self.http.clone(),
        );
        arm.retry = flags.arm_retry();
        arm.audience = self.cloud.endpoints.arm_audience.clone();
        let m = metrics.clone();
        arm.observer = Some(Arc::new(move |op, result, took| {
            m.observe_arm(op, result, took)
        }));
        arm
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let serving = match flags.serving() {
        Ok(s) => s,
        Err(e) => {
            use clap::CommandFactory;
            Flags::command()
                .error(clap::error::ErrorKind::ArgumentConflict, e)
                .exit()
        }
    };
    flags.log.init();
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (may_write_tx, may_write) = watch::channel(false);
    let (lease_problem_tx, lease_problem) = watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    let http = router(
        metrics.clone(),
        ready.clone(),
        may_write.clone(),
        lease_problem.clone(),
    );
    tasks.spawn(serve(flags.http_probe_port, http.clone(), shutdown.clone()));
    if flags.prometheus_port != flags.http_probe_port {
        tasks.spawn(serve(flags.prometheus_port, http, shutdown.clone()));
    }

    let azure = match Azure::from_flags(&flags) {
        Ok(a) => a,
        Err(e) if flags.mode == Mode::Managed => {
            // Managed mode without Azure: say so and stay up (the node agent serves without it).
            tracing::error!(
                error = format!("{e:#}"),
                "managed mode keeps managed identities on the node pools and runs the bridge with Azure credentials (azure.json, or --tenant-id and a credential); running without them"
            );
            ready.store(true, Ordering::SeqCst);
            podid_telemetry::shutdown_signal().await;
            shutdown.cancel();
            while tasks.join_next().await.is_some() {}
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let client = kube_client(&flags)
        .await
        .context("building Kubernetes client")?;
    podid_telemetry::cluster::check_server_version(&client, "podid-operator").await;
    let identity = flags
        .leader_election_instance
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("podid-operator-{}", std::process::id()));
    let cloud = &azure.cloud;
    tracing::info!(
        mode = ?flags.mode,
        bridge = flags.bridge,
        federated = serving.federated,
        identity_serving = %serving.default,
        subscription = %cloud.subscription_id,
        resource_group = %cloud.resource_group,
        credential = ?cloud.credential,
        arm = %cloud.endpoints.arm,
        identity = %identity,
        "starting podid-operator"
    );
    tasks.spawn({
        let election = Election {
            namespace: flags.leader_election_namespace.clone(),
            name: flags.leader_election_name.clone(),
            identity: identity.clone(),
            duration: flags.leader_election_duration,
            original_lock: flags.original_lock(),
        };
        let shutdown = shutdown.clone();
        let client = client.clone();
        async move {
            leader::run_reporting(client, election, may_write_tx, lease_problem_tx, shutdown).await;
            Ok(())
        }
    });
    tasks.spawn(lease_problem_events(
        client.clone(),
        lease_problem,
        shutdown.clone(),
    ));
    if flags.bridge {
        let bridge = bridge(&flags, serving, &azure, &client, &metrics, &shutdown).await?;
        let (may_write, shutdown) = (may_write.clone(), shutdown.clone());
        let (debounce, interval) = (flags.debounce, flags.bridge_interval);
        tasks.spawn(async move {
            bridge
                .0
                .run(bridge.1, may_write, debounce, interval, shutdown)
                .await;
            Ok(())
        });
    }
    let result: anyhow::Result<()> = if flags.mode == Mode::Standard {
        let planner = AssignmentPlanner::new(PlannerOptions {
            force_namespaced: flags.force_namespaced,
            immutable: flags.immutable(cloud),
            fallback_scope: (!cloud.resource_group.is_empty())
                .then(|| (cloud.subscription_id.clone(), cloud.resource_group.clone())),
            serving,
        });
        let notify = Arc::new(Notify::new());
        let stores = Stores::start(&client, notify.clone(), &shutdown);
        let mut controller = Controller::new(
            client.clone(),
            azure.arm(&flags, &metrics),
            planner,
            stores,
            metrics.clone(),
            &identity,
        );
        controller.ready = ready.clone();
        controller.batch = flags.create_delete_batch.max(1) as usize;
        let settings = LoopSettings {
            debounce: flags.debounce,
            full_interval: flags.reconcile_interval.min(flags.sync_retry_duration),
            retry_base: Duration::from_secs(2),
        };
        tokio::select! {
            _ = controller.run(notify, may_write, settings, shutdown.clone()) => Ok(()),
            _ = podid_telemetry::shutdown_signal() => Ok(()),
            Some(r) = tasks.join_next() => match r {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("a task stopped unexpectedly")),
            },
        }
    } else {
        let planner = ManagedPlanner::new(ManagedOptions {
            immutable: flags.immutable(cloud),
        });
        let notify = Arc::new(Notify::new());
        let stores = ManagedStores::start(&client, notify.clone(), &shutdown);
        let mut controller = ManagedController::new(
            client.clone(),
            azure.arm(&flags, &metrics),
            planner,
            stores,
            metrics.clone(),
            &identity,
        );
        controller.ready = ready.clone();
        controller.batch = flags.create_delete_batch.max(1) as usize;
        controller.list_node_pools = flags.list_node_pools;
        controller.configured_scope = (!cloud.resource_group.is_empty())
            .then(|| (cloud.subscription_id.clone(), cloud.resource_group.clone()));
        let settings = LoopSettings {
            debounce: flags.debounce,
            full_interval: flags.reconcile_interval.min(flags.sync_retry_duration),
            retry_base: Duration::from_secs(2),
        };
        tokio::select! {
            _ = controller.run(notify, may_write, settings, shutdown.clone()) => Ok(()),
            _ = podid_telemetry::shutdown_signal() => Ok(()),
            Some(r) = tasks.join_next() => match r {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("a task stopped unexpectedly")),
            },
        }
    };
    tracing::info!("shutting down");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

/// The bridge with its watches, ARM client and prover; its notifier.
async fn bridge(
    flags: &Flags,
    serving: podid_crds::serving::ServingSettings,
    azure: &Azure,
    client: &kube::Client,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Bridge<SerialCredentials<MsiCredentials>>, Arc<Notify>)> {
    let arm = azure.arm(flags, metrics);
    let settings = BridgeSettings {
        issuer: None,
        tenant_id: None,
        match_options: flags.mode.match_options(flags.force_namespaced),
        // 2 s, 4 s, 8 s, then 16 s: about two and a half minutes in all.
        proof_attempts: 12,
        proof_interval: Duration::from_secs(2),
        serving,
        namespace: Some(
            flags
                .operator_namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| flags.leader_election_namespace.clone()),
        ),
        scope: None,
    };
    production_bridge(
        client,
        BridgeAzure {
            cloud: &azure.cloud,
            credential: azure.credential.clone(),
            http: azure.http.clone(),
            arm: &arm,
        },
        flags.oidc_issuer.as_deref(),
        flags.aks_cluster_id.as_deref(),
        settings,
        metrics,
        shutdown,
    )
    .await
    .context("ARM client for federated credentials")
}
