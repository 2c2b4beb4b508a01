//! `tests/cluster/up`: starts podid's test control plane by hand and keeps it running until
//! Ctrl-C, printing a kubeconfig path so kubectl (and podid) can use it.

use anyhow::Context;
use clap::Parser;

/// Start a local Kubernetes control plane (etcd + kube-apiserver, podid's CRDs installed).
#[derive(Parser)]
struct Args {
    /// Also start kube-controller-manager, kube-scheduler and kwok with this many fake
    /// AKS-like VMSS nodes (pods on them get 127.10.x.x addresses).
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// Name of the fake node pool (scale set `aks-<pool>-12345678-vmss`).
    #[arg(long, default_value = "nodepool1")]
    pool: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = tokio::task::spawn_blocking(podid_testkit::Cluster::shared).await?;
    if args.nodes > 0 {
        cluster
            .add_nodes(&podid_testkit::NodePool::aks(&args.pool, args.nodes))
            .await
            .context("starting fake nodes")?;
    }
    println!("kube-apiserver: {}", cluster.server());
    println!("issuer:         {}", cluster.issuer());
    println!("logs:           {}", cluster.dir().display());
    println!("export KUBECONFIG={}", cluster.kubeconfig().display());
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    podid_testkit::stop();
    Ok(())
}
