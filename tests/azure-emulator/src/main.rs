//! `podid-azure-emulator`: Azure (ARM, Entra, IMDS) on loopback, for tests and for trying podid
//! without a subscription.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use podid_azure_emulator::{Emulator, Seed, Settings};

/// Serve an Azure emulator on loopback until Ctrl-C.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Plain-HTTP listen address (the https listener takes a free port on the same IP).
    #[arg(long, default_value = "127.0.0.1:8600")]
    listen: std::net::SocketAddr,
    /// Seed file (YAML or JSON): apps, identities, scaleSets, virtualMachines.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Write the https CA certificate (PEM) here.
    #[arg(long, default_value = "podid-azure-emulator-ca.pem")]
    ca_out: PathBuf,
    /// Tenant ID the Entra endpoint serves.
    #[arg(long, default_value = "72f988bf-86f1-41af-91ab-2d7cd011db47")]
    tenant_id: String,
    /// Subscription ID of seeded resources.
    #[arg(long, default_value = "00000000-0000-0000-0000-00000000beef")]
    subscription_id: String,
    /// Trust this CA (PEM file) when fetching federated issuers' keys (repeatable).
    #[arg(long)]
    issuer_ca: Vec<PathBuf>,
    /// Serve ARM without requiring a bearer token.
    #[arg(long)]
    no_arm_auth: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen must be a loopback address (127.0.0.0/8 or ::1), got {}",
            args.listen
        );
    }
    let mut issuer_ca_pem = Vec::new();
    for f in &args.issuer_ca {
        issuer_ca_pem.push(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --issuer-ca {}", f.display()))?,
        );
    }
    let emu = Emulator::start(Settings {
        tenant_id: args.tenant_id,
        subscription_id: args.subscription_id,
        issuer_ca_pem,
        require_arm_auth: !args.no_arm_auth,
        listen: args.listen,
        ..Default::default()
    })
    .await?;
    if let Some(path) = &args.seed {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --seed {}", path.display()))?;
        let seed: Seed = serde_yaml::from_str(&text)
            .with_context(|| format!("parsing --seed {}", path.display()))?;
        emu.seed(&seed)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("applying --seed {}", path.display()))?;
    }
    std::fs::write(&args.ca_out, emu.ca_pem())
        .with_context(|| format!("writing {}", args.ca_out.display()))?;
    println!("ARM and IMDS:  {}", emu.arm_endpoint());
    println!(
        "Entra (https): {}  (CA: {})",
        emu.authority_host(),
        args.ca_out.display()
    );
    println!(
        "IMDS per instance: {}",
        emu.imds_endpoint("<scale set>_<instance id>")
    );
    println!(
        "Admin API: {}/_emulator/{{calls,faults,seed,state}}",
        emu.arm_endpoint()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
