//! `podid` (also `kubectl podid`): report which workloads can move from pod identity to
//! Workload ID, and write cluster snapshots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use podid_cli::inventory::{ContextFromInventory, Inventory};
use podid_cli::live::{Scope, scan};
use podid_cli::render::{Format, render};
use podid_cli::report::Report;
use podid_cli::selector::LabelSelector;
use podid_crds::plan::ClusterContext;
use podid_crds::policy::MatchOptions;

/// Exit code when the report lists at least one blocked workload.
const EXIT_BLOCKED: u8 = 3;
/// Exit code for usage errors (clap uses the same).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "podid",
    version,
    about = "Move workloads from Azure pod identity to Workload ID"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (e.g. debug); logs go to stderr.
    #[arg(long, global = true, env = "PODID_LOG", default_value = "warn")]
    log: String,
}

#[derive(clap::Args)]
struct Source {
    /// kubeconfig context to use (default: the current one).
    #[arg(long)]
    context: Option<String>,
    /// Namespace to report on (repeatable). Bindings and identities are still read cluster-wide.
    #[arg(short = 'n', long = "namespace")]
    namespaces: Vec<String>,
    /// All namespaces (the default when no -n is given).
    #[arg(short = 'A', long, conflicts_with = "namespaces")]
    all_namespaces: bool,
    /// Label selector (`kubectl -l` syntax): list only workloads whose pod template (a bare
    /// pod's own labels) matches. Ignored by `snapshot`, which records everything in scope.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// The cluster's OIDC issuer URL (AKS: `az aks show --query oidcIssuerProfile.issuerUrl`),
    /// overriding what the API server announces or the snapshot records.
    #[arg(long, value_name = "URL")]
    oidc_issuer: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Report, per workload, whether it can move to Workload ID and what stands in the way.
    /// Exit code 0: nothing blocked; 3: something is blocked; 1: error.
    Report {
        #[command(flatten)]
        source: Source,
        /// Read snapshot files (kubectl get -o yaml|json output, or `podid snapshot`) instead of
        /// a live cluster (repeatable).
        #[arg(long = "from-file", value_name = "FILE")]
        from_file: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// Match as the original with --forceNamespaced: identity, binding and pod must share a namespace.
        #[arg(long)]
        force_namespaced: bool,
    },
    /// Write a snapshot of everything the report reads (never Secrets) to a file.
    Snapshot {
        #[command(flatten)]
        source: Source,
        /// File to write ("-" for stdout).
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
    },
}

async fn client(context: Option<&String>) -> anyhow::Result<kube::Client> {
    let opts = kube::config::KubeConfigOptions {
        context: context.cloned(),
        ..Default::default()
    };
    let cfg = kube::Config::from_kubeconfig(&opts)
        .await
        .or_else(|_| kube::Config::incluster())
        .context(
            "no usable kubeconfig (set KUBECONFIG or --context), and not running in a cluster",
        )?;
    Ok(kube::Client::try_from(cfg)?)
}

async fn live(source: &Source) -> anyhow::Result<Inventory> {
    let c = client(source.context.as_ref()).await?;
    let scope = Scope {
        namespaces: source.namespaces.clone(),
    };
    let mut inv = scan(&c, &scope, source.context.clone(), source.quiet).await?;
    override_issuer(&mut inv, source);
    Ok(inv)
}

fn override_issuer(inv: &mut Inventory, source: &Source) {
    if let Some(issuer) = &source.oidc_issuer {
        inv.cluster.oidc_issuer = Some(issuer.clone()).filter(|i| !i.is_empty());
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Report {
            source,
            from_file,
            output,
            force_namespaced,
        } => {
            let selector = source
                .selector
                .as_deref()
                .map(LabelSelector::parse)
                .transpose()?;
            let inv = if from_file.is_empty() {
                live(&source).await?
            } else {
                let mut inv = Inventory::from_files(&from_file)?;
                override_issuer(&mut inv, &source);
                inv
            };
            for (kind, n) in &inv.skipped_kinds {
                eprintln!("note: skipped {n} object(s) of kind {kind} (not used by the report)");
            }
            let ctx =
                ClusterContext::from_inventory(&inv, MatchOptions::standard(force_namespaced));
            let report = Report::build_selected(&inv, &ctx, &source.namespaces, selector.as_ref());
            print!("{}", render(&report, output)?);
            Ok(if report.has_blocked() {
                ExitCode::from(EXIT_BLOCKED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Snapshot { source, output } => {
            let inv = live(&source).await?;
            let yaml = inv.to_snapshot_yaml()?;
            if output.as_os_str() == "-" {
                print!("{yaml}");
            } else {
                std::fs::write(&output, yaml)
                    .with_context(|| format!("writing {}", output.display()))?;
                eprintln!("wrote {}", output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main]
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A malformed -l is a usage error, like clap's own.
            if matches!(
                e.downcast_ref::<podid_cli::Error>(),
                Some(podid_cli::Error::Selector { .. })
            ) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
