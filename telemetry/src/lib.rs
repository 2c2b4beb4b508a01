//! What podid's long-running binaries share about running as a service: the logging flags
//! (with klog's `-v` and `--logtostderr`, which the original components' manifests pass) and
//! their set-up, small Prometheus helpers, the shutdown signal, the admin HTTP surface
//! (`/healthz`, `/readyz`, `/metrics`) with the listener that serves it ([`admin`]), and the
//! watches that keep a service's stores and index current ([`watch`]).

pub mod admin;
pub mod cluster;
pub mod exposition;
pub mod reference;
pub mod watch;

pub use admin::{AdminRoutes, serve, serve_on};
pub use exposition::{ORIGINAL_PREFIX, PROMETHEUS_CONTENT_TYPE};

use clap::{ArgAction, Args, ValueEnum};
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::histogram::Histogram;

/// What can go wrong in this crate: serving an admin listener.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding port {port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server")]
    Serve(#[source] std::io::Error),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The logging flags of a podid binary.
#[derive(Clone, Debug, Args)]
pub struct LogFlags {
    /// `text` or `json` (one object per line).
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// klog's verbosity, as the original's chart passes it (`-v=N`): 0–3 info, 4–5 debug, 6+
    /// trace. `RUST_LOG`, when set, wins.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
    /// Accepted for compatibility (the original's manifests pass it); logs go to stderr.
    #[arg(long = "logtostderr", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub logtostderr: bool,
}

impl LogFlags {
    /// The level `-v` selects.
    pub fn level(&self) -> &'static str {
        match self.verbosity {
            0..=3 => "info",
            4..=5 => "debug",
            _ => "trace",
        }
    }

    /// Installs the global subscriber: `RUST_LOG` if set, else [`Self::level`], in the format
    /// asked for, to stderr.
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(self.level()));
        // Colours only on a terminal: a container's log (kubectl logs, a log shipper) gets
        // plain text, as the original's klog lines are.
        let fmt = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Json => fmt.json().init(),
            LogFormat::Text => fmt.init(),
        }
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Label pairs of a metric family.
pub type Labels = Vec<(String, String)>;

/// `[("k", "v"), …]` as [`Labels`].
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Histograms of a family with these bucket bounds.
#[derive(Clone)]
pub struct Buckets(pub &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogFlags,
    }

    #[test]
    fn klog_style_flags() {
        for (args, level) in [
            (&["x"][..], "info"),
            (&["x", "-v=4"][..], "debug"),
            (&["x", "--v=2", "--logtostderr"][..], "info"),
            (&["x", "-v", "9", "--logtostderr=false"][..], "trace"),
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.log.level(), level, "{args:?}");
        }
        let cli = Cli::try_parse_from(["x", "--log-format=json"]).unwrap();
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["x", "--log-format=xml"]).is_err());
    }
}
