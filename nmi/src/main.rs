//! podid-nmi: the node agent binary. All logic is in the library; this wires flags, watches,
//! iptables, the servers and shutdown together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use podid_nmi::cache::{Clock, DEFAULT_MAX_BYTES, SystemClock, TokenCache};
use podid_nmi::config::Flags;
use podid_nmi::iptables::{self, Iptables};
use podid_nmi::kube::{KubeView, SecretCache};
use podid_nmi::metrics::Metrics;
use podid_nmi::resolve::Mode;
use podid_nmi::server::{self, Agent};
use podid_nmi::token::{AzureCredentials, http_client};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    flags.log.init();
    flags.validate().map_err(anyhow::Error::msg)?;
    if !flags.allow_network_plugin_kubenet {
        let cfg = std::fs::read_to_string(&flags.kubelet_config).with_context(|| {
            format!("reading kubelet config {}", flags.kubelet_config.display())
        })?;
        if iptables::is_kubenet(&cfg) {
            anyhow::bail!(
                "AAD Pod Identity is not supported for Kubenet. Review https://azure.github.io/aad-pod-identity/docs/configure/aad_pod_identity_on_kubenet/ for more information."
            );
        }
    }
    let shutdown = CancellationToken::new();
    let client = kube::Client::try_default()
        .await
        .context("building Kubernetes client")?;
    let view = KubeView::start(
        client.clone(),
        &flags.node,
        flags.operation_mode == Mode::Standard,
        shutdown.clone(),
    )
    .await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let http = http_client();
    let metrics = Metrics::new();
    let credentials = AzureCredentials {
        http: http.clone(),
        imds_endpoint: flags.imds_endpoint(),
        default_authority: flags.entra_authority.clone(),
        secrets: Arc::new({
            let secrets = SecretCache::new(client, shutdown.clone()).with_metrics(metrics.clone());
            if flags.watch_secrets {
                secrets
            } else {
                secrets.without_watches()
            }
        }),
        clock: clock.clone(),
    };
    let cache = if flags.token_refresh_margin_sec == 0 {
        TokenCache::disabled()
    } else {
        TokenCache::new(
            clock.clone(),
            Duration::from_secs(flags.token_refresh_margin_sec),
        )
        .with_bounds(flags.token_cache_max_entries, DEFAULT_MAX_BYTES)
    };
    let agent = Arc::new(Agent {
        config: flags.server_config(),
        view: Arc::new(view),
        credentials: Arc::new(credentials),
        cache,
        metrics,
        clock,
        http,
        initialized: AtomicBool::new(false),
        shutdown: shutdown.clone(),
    });

    let bind = |port: u16, addr: std::net::IpAddr| async move {
        tokio::net::TcpListener::bind(SocketAddr::new(addr, port))
            .await
            .with_context(|| format!("binding {addr}:{port}"))
    };
    let any = std::net::IpAddr::from([0, 0, 0, 0]);
    let main_listener = bind(flags.port, flags.listen_address.into()).await?;
    let probe_listener = bind(flags.http_probe_port, any).await?;
    let metrics_listener = bind(flags.prometheus_port, any).await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::serve_with(
        main_listener,
        server::router(agent.clone()),
        flags.listener_limits(),
        shutdown.clone(),
    ));
    tasks.spawn(server::serve_with(
        probe_listener,
        server::probe_router(agent.clone()),
        flags.listener_limits(),
        shutdown.clone(),
    ));
    tasks.spawn(server::serve_with(
        metrics_listener,
        server::metrics_router(agent.clone()),
        flags.listener_limits(),
        shutdown.clone(),
    ));
    tracing::info!(node = %flags.node, mode = ?flags.operation_mode, port = flags.port, "podid-nmi started");

    let ipt = Iptables::default();
    let spec = flags.rule_spec();
    let interval = Duration::from_secs(flags.ipt_update_interval_sec.max(1));
    let result: anyhow::Result<()> = async {
        let mut ticker = tokio::time::interval(interval);
        let mut conntrack_cleared = false;
        let stop = podid_telemetry::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if flags.manage_iptables {
                        // Like the original, an iptables failure ends the agent (it is restarted).
                        if ipt.ensure(&spec).await.context("ensuring iptables rules")? {
                            tracing::info!(chain = iptables::CHAIN, "iptables rules written");
                        }
                        // Once, after the first rules: connections pods opened to IMDS before
                        // them would otherwise keep bypassing the agent (fatal, as the original).
                        if flags.enable_conntrack_deletion && !conntrack_cleared {
                            let n = ipt
                                .delete_conntrack_entries(spec.metadata_ip, spec.metadata_port)
                                .await
                                .context("deleting conntrack entries for the metadata endpoint")?;
                            tracing::info!(deleted = n, "conntrack entries to the metadata endpoint deleted");
                            conntrack_cleared = true;
                        }
                    }
                    agent.initialized.store(true, Ordering::SeqCst);
                }
                _ = &mut stop => return Ok(()),
                Some(r) = tasks.join_next() => {
                    r.context("server task")?.context("server")?;
                    anyhow::bail!("a server stopped unexpectedly");
                }
            }
        }
    }
    .await;
    tracing::info!("shutting down");
    shutdown.cancel();
    let mut cleanup_failed = false;
    if flags.manage_iptables
        && let Err(e) = ipt.cleanup().await
    {
        tracing::error!(error = %e, "removing iptables rules");
        cleanup_failed = true;
    }
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(flags.shutdown_delay_sec)).await;
    result?;
    if cleanup_failed {
        std::process::exit(1);
    }
    Ok(())
}
