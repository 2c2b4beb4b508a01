//! podid-nmi: the node agent binary. All logic is in the library; this wires flags, watches,
//! iptables, the servers and shutdown together. No exit removes the iptables rules unless
//! `--remove-iptables-on-exit` is set and the exit is SIGTERM/SIGINT: while the agent is down
//! (crashed, restarting, being upgraded) pods are refused rather than reaching IMDS
//! (docs/nmi.md, "Exits").

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use podid_crds::policy::Mode;
use podid_nmi::agent::AgentBuilder;
use podid_nmi::cluster::KubeView;
use podid_nmi::config::Flags;
use podid_nmi::iptables::{self, Iptables};
use podid_nmi::server::{self, Agent};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    flags.log.init();
    flags.validate().map_err(anyhow::Error::msg)?;
    let stop = stop_signal().await;
    tracing::info!(node = %flags.node, version = env!("CARGO_PKG_VERSION"), "podid-nmi starting");
    let shutdown = CancellationToken::new();
    let ipt = Iptables::default();
    let mut tasks = JoinSet::new();
    let result = run(&flags, &ipt, &stop, shutdown.clone(), &mut tasks).await;
    shutdown.cancel();
    if let Err(e) = result {
        // Fail closed: the rules stay, so pods' connections to the metadata address are refused
        // (nothing listens where they lead) until the agent is back, instead of reaching IMDS
        // with the node's identities for as long as the agent crash-loops.
        tracing::error!(
            error = format!("{e:#}"),
            "fatal error: exiting and leaving the iptables rules in place"
        );
        return Err(e);
    }
    // Only an intended stop, and only when asked (uninstalling), removes the rules; a restart
    // or an upgrade leaves them, so pods are refused until the next agent serves.
    let mut cleanup_failed = false;
    if flags.manage_iptables && flags.remove_iptables_on_exit {
        tracing::info!(chain = %flags.iptables_chain, "stop signal: removing the iptables rules and shutting down");
        if let Err(e) = ipt.cleanup(&flags.iptables_chain).await {
            tracing::error!(error = %e, "removing iptables rules");
            cleanup_failed = true;
        }
    } else {
        tracing::info!(chain = %flags.iptables_chain, "stop signal: shutting down, leaving the iptables rules in place");
    }
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(flags.shutdown_delay_sec)).await;
    if cleanup_failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Cancelled on SIGTERM or SIGINT. The handlers are installed before this returns, so a stop
/// during start-up is an intended stop too, not the signal's default (an exit that would keep
/// the rules).
async fn stop_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let mut signal = Box::pin(podid_telemetry::shutdown_signal());
    if futures::poll!(signal.as_mut()).is_pending() {
        let stop = stop.clone();
        tokio::spawn(async move {
            signal.await;
            stop.cancel();
        });
    } else {
        stop.cancel();
    }
    stop
}

/// Runs the agent until the stop signal (`Ok`) or a fatal error (`Err`).
async fn run(
    flags: &Flags,
    ipt: &Iptables,
    stop: &CancellationToken,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<std::io::Result<()>>,
) -> anyhow::Result<()> {
    let agent = tokio::select! {
        agent = start(flags, shutdown, tasks) => agent?,
        _ = stop.cancelled() => return Ok(()),
    };
    let spec = flags.rule_spec();
    let mut ticker =
        tokio::time::interval(Duration::from_secs(flags.ipt_update_interval_sec.max(1)));
    let mut conntrack_cleared = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if flags.manage_iptables {
                    // Like the original, an iptables failure ends the agent, leaving the rules (it is
                    // restarted).
                    if ipt.ensure(&spec).await.context("ensuring iptables rules")? {
                        tracing::info!(chain = %spec.chain, "iptables rules written");
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
            _ = stop.cancelled() => return Ok(()),
            Some(r) = tasks.join_next() => {
                r.context("server task")?.context("server")?;
                anyhow::bail!("a server stopped unexpectedly");
            }
        }
    }
}

/// Everything before the first rules: the kubenet check, the watches, the listeners and their
/// servers (spawned into `tasks`).
async fn start(
    flags: &Flags,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<std::io::Result<()>>,
) -> anyhow::Result<Arc<Agent>> {
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
    let client = kube::Client::try_default()
        .await
        .context("building Kubernetes client")?;
    podid_telemetry::cluster::check_server_version(&client, "podid-nmi").await;
    let view = KubeView::start(
        client.clone(),
        &flags.node,
        flags.operation_mode == Mode::Standard,
        flags.federated,
        shutdown.clone(),
    )
    .await?;
    let builder = AgentBuilder::new(flags, shutdown.clone()).kube_federation(client.clone());
    let credentials = builder
        .kube_credentials(client, Arc::new(view.clone()))
        .map_err(anyhow::Error::msg)?;
    let agent = Arc::new(builder.build(Arc::new(view), Arc::new(credentials)));

    let bind = |port: u16, addr: std::net::IpAddr| async move {
        tokio::net::TcpListener::bind(SocketAddr::new(addr, port))
            .await
            .with_context(|| format!("binding {addr}:{port}"))
    };
    let any = std::net::IpAddr::from([0, 0, 0, 0]);
    let main_listener = bind(flags.port, flags.listen_address.into()).await?;
    let probe_listener = bind(flags.http_probe_port, any).await?;
    let metrics_listener = bind(flags.prometheus_port, any).await?;
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
    Ok(agent)
}
