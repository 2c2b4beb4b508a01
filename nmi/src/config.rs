//! Command-line flags: the original NMI's (same names and defaults; boolean flags also accept
//! `--flag=true|false` as Go's did) plus podid's own.

use std::net::Ipv4Addr;
use std::time::Duration;

use clap::{ArgAction, Parser};
use podid_crds::policy::Mode;
use podid_crds::serving::{Serving, ServingSettings};

use crate::cluster::DEFAULT_MAX_SECRET_WATCHES;
use crate::entra::EntraPolicy;
use crate::server::ServerConfig;
use crate::wait::RetryPolicy;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "podid-nmi",
    version,
    about = "podid node agent (aad-pod-identity NMI replacement)"
)]
pub struct Flags {
    /// This node's name (the pod watch is limited to it).
    #[arg(long = "node", env = "NODE_NAME")]
    pub node: String,
    /// The node's IP (accepted for compatibility; the redirect goes to the listen address).
    #[arg(long = "host-ip", env = "HOST_IP")]
    pub host_ip: Option<String>,
    #[arg(long = "nmi-listen-address", default_value = "127.0.0.1")]
    pub listen_address: Ipv4Addr,
    #[arg(long = "nmi-port", default_value_t = 2579)]
    pub port: u16,
    #[arg(long = "metadata-ip", default_value = "169.254.169.254")]
    pub metadata_ip: Ipv4Addr,
    #[arg(long = "metadata-port", default_value_t = 80)]
    pub metadata_port: u16,
    /// podid: where IMDS really is, overriding metadata-ip/port for outgoing calls (tests point
    /// it at an emulator). The iptables rules still use metadata-ip/port.
    #[arg(long = "imds-endpoint")]
    pub imds_endpoint: Option<url::Url>,
    /// podid: the Entra authority used for service principals without `adEndpoint` (its
    /// origin is also one `adEndpoint` may name).
    #[arg(
        long = "entra-authority",
        env = "AZURE_AUTHORITY_HOST",
        default_value = "https://login.microsoftonline.com/"
    )]
    pub entra_authority: url::Url,
    /// podid: more authorities an AzureIdentity's `adEndpoint` may name besides Entra's sign-in
    /// hosts (login.microsoftonline.com, login.chinacloudapi.cn, login.microsoftonline.us) and
    /// `--entra-authority`'s: comma-separated host names (https) or origins
    /// (`https://host:port`). The service principal's secret is sent there.
    #[arg(long = "allowed-authority-hosts", value_delimiter = ',')]
    pub allowed_authority_hosts: Vec<String>,
    /// podid: read a service principal's Secret from the namespace `clientPassword.namespace`
    /// names even when it is not the AzureIdentity's, as the original does. Risk: whoever may
    /// create AzureIdentities in one namespace can then use any Secret of the cluster.
    #[arg(long = "allow-cross-namespace-secrets", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_cross_namespace_secrets: bool,
    #[arg(long = "ipt-update-interval-sec", default_value_t = 60)]
    pub ipt_update_interval_sec: u64,
    /// podid: set to false to leave iptables alone (another component redirects IMDS traffic).
    #[arg(long = "manage-iptables", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub manage_iptables: bool,
    /// podid: the `nat` chain the agent's rules live in. Its own by default, so that it can run
    /// beside the original NMI (chain `aad-metadata`, removed when the original stops) with its
    /// jump ahead of the original's: the swap has no fail-open window (docs/security.md).
    #[arg(long = "iptables-chain", default_value = crate::iptables::DEFAULT_CHAIN)]
    pub iptables_chain: String,
    /// podid: remove the rules when stopped by SIGTERM/SIGINT. Off (the default), a stopped
    /// agent leaves them, so that during a restart or an upgrade pods are refused instead of
    /// reaching IMDS; set it (e.g. with the environment variable, then roll the DaemonSet out)
    /// before uninstalling, so that each agent removes its rules as it is deleted.
    #[arg(long = "remove-iptables-on-exit", env = "PODID_NMI_REMOVE_IPTABLES_ON_EXIT", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub remove_iptables_on_exit: bool,
    #[arg(long = "forceNamespaced", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub force_namespaced: bool,
    #[arg(long = "MICNamespace", default_value = "default")]
    pub mic_namespace: String,
    #[arg(long = "http-probe-port", default_value_t = 8080)]
    pub http_probe_port: u16,
    #[arg(long = "prometheus-port", default_value_t = 9090)]
    pub prometheus_port: u16,
    #[arg(long = "retry-attempts-for-created", default_value_t = 16)]
    pub retry_attempts_for_created: u32,
    #[arg(long = "retry-attempts-for-assigned", default_value_t = 4)]
    pub retry_attempts_for_assigned: u32,
    /// Seconds between reads of a pod's AzureAssignedIdentities.
    #[arg(long = "find-identity-retry-interval", default_value_t = 5)]
    pub find_identity_retry_interval: u64,
    /// podid: make pods that no binding grants an identity wait the full retry schedule
    /// (the original's ~80 s) instead of answering 404 at once.
    #[arg(long = "wait-for-unbound-pods", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wait_for_unbound_pods: bool,
    /// podid: what a request that names no identity gets when the pod may use several:
    /// `refuse` (IMDS's 400, naming them) or `first` (the first by binding namespace and name,
    /// for applications that relied on aad-pod-identity serving one).
    #[arg(long = "multiple-identities", value_enum, default_value = "refuse")]
    pub multiple_identities: crate::resolve::MultipleIdentities,
    /// podid: reuse a token until this many seconds before it expires (0 disables the cache).
    #[arg(long = "token-refresh-margin-sec", default_value_t = 300)]
    pub token_refresh_margin_sec: u64,
    /// podid: the most tokens kept in the cache (also bounded to 16 MiB); when full, expired
    /// tokens are dropped first, then the least recently used.
    #[arg(long = "token-cache-max-entries", default_value_t = crate::cache::DEFAULT_MAX_ENTRIES)]
    pub token_cache_max_entries: usize,
    /// podid: connections served at once on each port; further ones wait to be accepted.
    #[arg(long = "max-connections", default_value_t = 1024)]
    pub max_connections: usize,
    /// podid: connections one source address (pod) may hold at once; further ones are closed.
    #[arg(long = "max-connections-per-ip", default_value_t = 128)]
    pub max_connections_per_ip: usize,
    /// podid: seconds a caller has to send a request's headers, and a proxied request's body;
    /// also the most a kept-alive connection stays idle.
    #[arg(long = "read-timeout-sec", default_value_t = 10)]
    pub read_timeout_sec: u64,
    /// podid: watch each referenced Secret by name (needs list/watch on Secrets) so a token
    /// fetch reads memory; off (the default, as the original), the Secret is read with one GET
    /// per token fetch (needs only get). A cached token needs no Secret read either way.
    #[arg(long = "watch-secrets", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch_secrets: bool,
    /// podid: at most this many Secrets are watched at once (each watch is a connection to the
    /// API server); beyond it a Secret is read with one GET per fetch.
    #[arg(long = "max-secret-watches", default_value_t = DEFAULT_MAX_SECRET_WATCHES)]
    pub max_secret_watches: usize,
    #[arg(long = "block-instance-metadata", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub block_instance_metadata: bool,
    #[arg(long = "metadata-header-required", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metadata_header_required: bool,
    #[arg(
        long = "operation-mode",
        value_enum,
        ignore_case = true,
        default_value = "standard"
    )]
    pub operation_mode: Mode,
    #[arg(long = "allow-network-plugin-kubenet", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_network_plugin_kubenet: bool,
    #[arg(long = "kubelet-config", default_value = "/etc/default/kubelet")]
    pub kubelet_config: std::path::PathBuf,
    #[arg(long = "set-retry-after-header", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub set_retry_after_header: bool,
    /// After the first rules are written, delete the tracked TCP connections to the metadata
    /// address (needs the `conntrack` tool and NET_ADMIN), so connections pods opened before the
    /// rules cannot keep bypassing the agent.
    #[arg(long = "enable-conntrack-deletion", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_conntrack_deletion: bool,
    /// Accepted for compatibility; the AzureAssignedIdentity watch is always limited to this node.
    #[arg(long = "enableScaleFeatures", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_scale_features: bool,
    /// Accepted for compatibility; there is no profiler.
    #[arg(long = "enableProfile", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_profile: bool,
    /// podid: serve identities by Workload ID token exchange where a binding (annotation
    /// `podid.dev/identity-serving`) or `--identity-serving` asks for it. Needs `create` on
    /// serviceaccounts/token and a watch of WorkloadMigrations (deploy/manifests/podid-nmi-federated.yaml).
    /// Give podid-operator the same value.
    #[arg(long = "federated", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub federated: bool,
    /// podid: how identities of bindings without the annotation `podid.dev/identity-serving`
    /// are served: assigned (the scale set's identity through IMDS), federated (token
    /// exchange), federated-with-fallback (exchange, else IMDS). Non-assigned values need
    /// `--federated`. Give podid-operator the same value.
    #[arg(long = "identity-serving", value_enum, default_value = "assigned")]
    pub identity_serving: Serving,
    #[command(flatten)]
    pub log: podid_telemetry::LogFlags,
    /// Accepted for compatibility.
    #[arg(long = "custom-user-agent", default_value = "")]
    pub custom_user_agent: String,
    /// podid: seconds to wait on SIGTERM/SIGINT, after serving stopped (and the rules were
    /// removed, with `--remove-iptables-on-exit`), before exiting (the original: 10).
    #[arg(long = "shutdown-delay-sec", default_value_t = 10)]
    pub shutdown_delay_sec: u64,
}

impl Flags {
    /// `--forceNamespaced`, or env `FORCENAMESPACED=true` as in the original.
    pub fn force_namespaced(&self) -> bool {
        self.force_namespaced || std::env::var("FORCENAMESPACED").is_ok_and(|v| v == "true")
    }

    /// Where outgoing IMDS calls go.
    pub fn imds_endpoint(&self) -> url::Url {
        self.imds_endpoint.clone().unwrap_or_else(|| {
            url::Url::parse(&format!(
                "http://{}:{}/",
                self.metadata_ip, self.metadata_port
            ))
            .expect("IP and port form a URL")
        })
    }

    /// Checks the combinations the original refused at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.node.is_empty() {
            return Err("--node (or NODE_NAME) must be set".into());
        }
        for (flag, v) in [
            ("--max-connections", self.max_connections as u64),
            (
                "--max-connections-per-ip",
                self.max_connections_per_ip as u64,
            ),
            ("--read-timeout-sec", self.read_timeout_sec),
            (
                "--token-cache-max-entries",
                self.token_cache_max_entries as u64,
            ),
        ] {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.operation_mode == Mode::Managed && !self.force_namespaced() {
            return Err("managed mode not intialized in force namespaced mode".into());
        }
        self.entra_policy()?;
        crate::iptables::check_chain_name(&self.iptables_chain)?;
        if self.identity_serving != Serving::Assigned && !self.federated {
            return Err(format!(
                "--identity-serving={} needs --federated (token exchange is off)",
                self.identity_serving
            ));
        }
        Ok(())
    }

    /// `--federated` and `--identity-serving`.
    pub fn serving(&self) -> ServingSettings {
        ServingSettings {
            federated: self.federated,
            default: self.identity_serving,
        }
    }

    /// Which service principals the agent signs in, where, with which Secrets.
    pub fn entra_policy(&self) -> Result<EntraPolicy, String> {
        EntraPolicy::new(
            self.entra_authority.clone(),
            &self.allowed_authority_hosts,
            self.allow_cross_namespace_secrets,
        )
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            mode: self.operation_mode,
            force_namespaced: self.force_namespaced(),
            metadata_header_required: self.metadata_header_required,
            block_instance_metadata: self.block_instance_metadata,
            set_retry_after_header: self.set_retry_after_header,
            retry: RetryPolicy {
                created_attempts: self.retry_attempts_for_created,
                assigned_attempts: self.retry_attempts_for_assigned,
                interval: Duration::from_secs(self.find_identity_retry_interval),
            },
            wait_for_unbound_pods: self.wait_for_unbound_pods,
            multiple_identities: self.multiple_identities,
            mic_namespace: self.mic_namespace.clone(),
            imds_endpoint: self.imds_endpoint(),
            body_read_timeout: Duration::from_secs(self.read_timeout_sec),
            serving: self.serving(),
            ..ServerConfig::default()
        }
    }

    /// The bounds of every listener (token, probe and metrics ports).
    pub fn listener_limits(&self) -> crate::server::ListenerLimits {
        crate::server::ListenerLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_read_timeout: Duration::from_secs(self.read_timeout_sec),
        }
    }

    pub fn rule_spec(&self) -> crate::iptables::RuleSpec {
        crate::iptables::RuleSpec {
            chain: self.iptables_chain.clone(),
            metadata_ip: self.metadata_ip,
            metadata_port: self.metadata_port,
            target_ip: self.listen_address,
            target_port: self.port,
        }
    }
}
