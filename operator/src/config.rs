//! Flags (the original MIC's where they make sense, plus podid's). The cloud configuration is
//! azure.json read by [`podid_azure::CloudConfig`], with these flags and environment variables
//! taking precedence over the file.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use podid_azure::{CloudConfig, Overrides};
use podid_crds::policy::Mode;
use podid_crds::serving::{Serving, ServingSettings};

/// A duration written as `500ms`, `15s`, `3m` or `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration {s:?} (use ms, s, m or h)")),
    })
}

/// podid-operator flags.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "podid-operator",
    version,
    about = "podid Managed Identity Controller"
)]
pub struct Flags {
    /// Path to azure.json; values from flags and environment variables take precedence.
    #[arg(long = "cloudconfig", env = "CLOUD_CONFIG")]
    pub cloud_config: Option<PathBuf>,
    /// Identity, binding and pod must share a namespace.
    #[arg(long = "forceNamespaced", env = "FORCENAMESPACED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub force_namespaced: bool,
    #[arg(long, value_enum, default_value = "standard")]
    pub mode: Mode,
    /// Managed mode: also list the scale sets of the node resource groups (those of the nodes'
    /// provider IDs and azure.json's `resourceGroup`), so node pools with no node yet (added at
    /// zero, scaled to zero) carry the managed identities too. `false`: node pools are found
    /// from nodes only.
    #[arg(long = "list-node-pools", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub list_node_pools: bool,
    /// Full resynchronisation interval (also re-reads every scale set and VM).
    #[arg(long = "syncRetryDuration", default_value = "3600s", value_parser = parse_duration)]
    pub sync_retry_duration: Duration,
    /// How often identities removed from a scale set or VM behind the controller's back are re-added.
    #[arg(long = "identity-assignment-reconcile-interval", default_value = "3m", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// Build the Workload ID side of every workload on pod identity: federated credentials,
    /// ServiceAccounts and their annotations, each proven by a token exchange, and one
    /// WorkloadMigration per workload (docs/bridge.md). `--bridge=false` turns it off.
    #[arg(long = "bridge", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub bridge: bool,
    /// Let identities be served by token exchange (the node agent exchanges a ServiceAccount
    /// token at Entra) where a binding asks for it with `podid.dev/identity-serving` or
    /// `--identity-serving` says so; `federated` identities are then not assigned to scale sets
    /// (docs/operator.md). Off: every identity is served `assigned`. Give podid-nmi the same.
    #[arg(long = "federated", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub federated: bool,
    /// How identities of bindings without the `podid.dev/identity-serving` annotation are
    /// served (the annotation wins). Anything but `assigned` needs `--federated`.
    #[arg(long = "identity-serving", value_enum, default_value = "assigned")]
    pub identity_serving: Serving,
    /// The Azure cloud's name (`AzurePublicCloud`, `AzureChinaCloud`, …), over azure.json's
    /// `cloud`; the original's no-azure.json manifest sets it as `CLOUD`.
    #[arg(long = "cloud", env = "CLOUD")]
    pub cloud: Option<String>,
    /// Path to a kubeconfig; empty or absent: the in-cluster configuration (the original's
    /// manifests pass `--kubeconfig=/var/lib/kubelet/kubeconfig`).
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's OIDC issuer URL, as Entra must see it in ServiceAccount tokens (on AKS:
    /// `az aks show --query oidcIssuerProfile.issuerUrl`). Default: the issuer the API server
    /// announces in its discovery document.
    #[arg(long = "oidc-issuer", env = "OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// ARM id of the AKS cluster (`/subscriptions/…/resourceGroups/…/providers/
    /// Microsoft.ContainerService/managedClusters/…`): without `--oidc-issuer`, its
    /// `oidcIssuerProfile.issuerURL` is the issuer.
    #[arg(long = "aks-cluster-id", env = "AKS_CLUSTER_ID")]
    pub aks_cluster_id: Option<String>,
    /// How often the bridge makes a full pass when nothing changes.
    #[arg(long = "bridge-interval", default_value = "5m", value_parser = parse_duration)]
    pub bridge_interval: Duration,
    /// Quiet time after an event before a pass runs: a burst of events makes one pass.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Identity of this replica in the Lease (default: the host name).
    #[arg(long = "leader-election-instance", env = "HOSTNAME")]
    pub leader_election_instance: Option<String>,
    /// podid-operator's own namespace: per-identity ServiceAccounts of the bridge are made here
    /// (docs/bridge.md). Default: `--leader-election-namespace`.
    #[arg(long = "operator-namespace", env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,
    #[arg(long = "leader-election-namespace", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of this controller's coordination.k8s.io Lease.
    #[arg(long = "leader-election-name", default_value = "podid-operator")]
    pub leader_election_name: String,
    #[arg(long = "leader-election-duration", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_duration: Duration,
    /// The original MIC's Endpoints lock (`namespace/name`); while it is held and fresh this
    /// controller writes nothing. Empty disables the check.
    #[arg(
        long = "original-mic-lock",
        default_value = "default/aad-pod-identity-mic"
    )]
    pub original_mic_lock: String,
    #[arg(long = "http-probe-port", default_value_t = 8080)]
    pub http_probe_port: u16,
    #[arg(long = "prometheus-port", default_value_t = 8888)]
    pub prometheus_port: u16,
    /// Comma-separated client IDs (or ARM ids) never removed from a scale set or VM.
    #[arg(long = "immutable-user-msis", default_value = "")]
    pub immutable_user_msis: String,
    #[command(flatten)]
    pub log: podid_telemetry::LogFlags,
    /// Accepted for compatibility: deprecated in the original too.
    #[arg(long = "enableScaleFeatures", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_scale_features: bool,
    /// Accepted for compatibility: there is no profiler.
    #[arg(long = "enableProfile", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_profile: bool,
    /// Accepted for compatibility: the one-time upgrade of pre-1.6 objects is not performed
    /// (docs/parity.md).
    #[arg(long = "enable-type-upgrade", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_type_upgrade: bool,
    #[arg(
        long = "config-map-name",
        default_value = "aad-pod-identity-config",
        hide = true
    )]
    pub config_map_name: String,
    #[arg(
        long = "type-upgrade-status-key",
        default_value = "type-upgrade-status",
        hide = true
    )]
    pub type_upgrade_status_key: String,
    /// ARM base URL (default: that of azure.json's `cloud`, else the public cloud's).
    #[arg(long = "arm-endpoint", env = "ARM_ENDPOINT")]
    pub arm_endpoint: Option<String>,
    /// Token audience for ARM (default: that of azure.json's `cloud`).
    #[arg(long = "arm-audience", env = "ARM_AUDIENCE")]
    pub arm_audience: Option<String>,
    /// Entra authority host for a service-principal credential (default: that of azure.json's
    /// `cloud`).
    #[arg(long = "authority-host", env = "AZURE_AUTHORITY_HOST")]
    pub authority_host: Option<String>,
    /// IMDS base URL for a managed-identity credential.
    #[arg(
        long = "imds-endpoint",
        env = "IMDS_ENDPOINT",
        default_value = "http://169.254.169.254"
    )]
    pub imds_endpoint: String,
    /// A PEM file of extra CA certificates to trust for ARM and Entra (Azure Stack, emulators).
    #[arg(long = "extra-ca-file", env = "PODID_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<PathBuf>,
    /// podid: the longest one ARM or Entra request may take, connection to last byte; a request
    /// that overruns it fails and is retried as any failed call.
    #[arg(long = "azure-request-timeout", env = "PODID_AZURE_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub azure_request_timeout: Duration,
    #[arg(long = "tenant-id", env = "TENANT_ID")]
    pub tenant_id: Option<String>,
    #[arg(long = "subscription-id", env = "SUBSCRIPTION_ID")]
    pub subscription_id: Option<String>,
    #[arg(long = "resource-group", env = "RESOURCE_GROUP")]
    pub resource_group: Option<String>,
    #[arg(long = "vm-type", env = "VM_TYPE")]
    pub vm_type: Option<String>,
    #[arg(long = "client-id", env = "CLIENT_ID")]
    pub client_id: Option<String>,
    /// Prefer the environment variable: a flag value is visible in the process list.
    #[arg(long = "client-secret", env = "CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    #[arg(long = "use-msi", env = "USE_MSI")]
    pub use_msi: Option<String>,
    #[arg(
        long = "user-assigned-msi-client-id",
        env = "USER_ASSIGNED_MSI_CLIENT_ID"
    )]
    pub user_assigned_msi_client_id: Option<String>,
    /// Retries of a failed scale-set/VM identity update within a pass (the original's flag;
    /// 429 and 5xx only, Retry-After honoured).
    #[arg(long = "update-user-msi-max-retry", default_value_t = 2)]
    pub update_user_msi_max_retry: u32,
    /// First wait between those retries (doubled each time, up to 30 s).
    #[arg(long = "update-user-msi-retry-interval", default_value = "1s", value_parser = parse_duration)]
    pub update_user_msi_retry_interval: Duration,
    /// At most this many AzureAssignedIdentity creates, status writes or deletes in flight at
    /// once within a pass (the original's flag).
    #[arg(long = "createDeleteBatch", default_value_t = 20)]
    pub create_delete_batch: u32,
    /// Accepted for compatibility: there is no client-side rate limit on API server calls
    /// (a pass makes only the writes its plan needs).
    #[arg(long = "clientQps", default_value_t = 5)]
    pub client_qps: u32,
    /// Accepted for compatibility.
    #[arg(long = "custom-user-agent", default_value = "")]
    pub custom_user_agent: String,
}

impl Flags {
    /// ARM retries within a pass, from `--update-user-msi-max-retry` and `-retry-interval`.
    pub fn arm_retry(&self) -> podid_azure::RetryPolicy {
        podid_azure::RetryPolicy {
            attempts: self.update_user_msi_max_retry + 1,
            base_delay: self.update_user_msi_retry_interval,
            ..Default::default()
        }
    }

    /// `--federated` and `--identity-serving`; a default other than `assigned` without
    /// `--federated` is a usage error naming both flags.
    pub fn serving(&self) -> Result<ServingSettings, String> {
        if self.identity_serving != Serving::Assigned && !self.federated {
            return Err(format!(
                "--identity-serving={} needs --federated (token exchange is off without it)",
                self.identity_serving
            ));
        }
        Ok(ServingSettings {
            federated: self.federated,
            default: self.identity_serving,
        })
    }

    /// azure.json (if any) overridden by flags and environment variables.
    pub fn cloud_config(&self) -> Result<CloudConfig, podid_azure::Error> {
        CloudConfig::load(self.cloud_config.as_deref(), &self.cloud_overrides())
    }

    /// The values of flags and environment variables that win over azure.json.
    pub fn cloud_overrides(&self) -> Overrides {
        Overrides {
            tenant_id: self.tenant_id.clone(),
            subscription_id: self.subscription_id.clone(),
            resource_group: self.resource_group.clone(),
            vm_type: self.vm_type.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            use_msi: self.use_msi.clone(),
            user_assigned_msi_client_id: self.user_assigned_msi_client_id.clone(),
            arm_endpoint: self.arm_endpoint.clone(),
            arm_audience: self.arm_audience.clone(),
            authority_host: self.authority_host.clone(),
            imds_endpoint: self.imds_endpoint.clone(),
            environment_file: std::env::var("AZURE_ENVIRONMENT_FILEPATH").ok(),
            cloud: self.cloud.clone(),
        }
    }

    /// Client IDs and ARM ids never removed: `--immutable-user-msis` plus the cluster identity.
    pub fn immutable(&self, cloud: &CloudConfig) -> BTreeSet<String> {
        self.immutable_user_msis
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .chain(cloud.cluster_identity.as_deref())
            .map(str::to_ascii_lowercase)
            .collect()
    }

    /// `(namespace, name)` of the original MIC's Endpoints lock, if checked.
    pub fn original_lock(&self) -> Option<(String, String)> {
        let (ns, name) = self.original_mic_lock.split_once('/')?;
        Some((ns.to_string(), name.to_string())).filter(|(n, m)| !n.is_empty() && !m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podid_azure::CredentialConfig;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("podid-operator").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("3600s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn azure_json_with_flag_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure.json");
        std::fs::write(
            &path,
            r#"{"cloud":"AzurePublicCloud","tenantId":"t","subscriptionId":"s","resourceGroup":"rg",
                "vmType":"vmss","aadClientId":"c","aadClientSecret":"very-secret",
                "userAssignedIdentityID":"Cluster-ID"}"#,
        )
        .unwrap();
        let f = flags(&[
            "--cloudconfig",
            path.to_str().unwrap(),
            "--resource-group",
            "other",
            "--immutable-user-msis",
            "A, b",
        ]);
        let c = f.cloud_config().unwrap();
        assert_eq!(c.resource_group, "other");
        assert_eq!(c.subscription_id, "s");
        assert!(
            matches!(c.credential, CredentialConfig::ClientSecret { ref client_id, .. } if client_id == "c")
        );
        assert!(
            !format!("{c:?}").contains("very-secret"),
            "secrets stay out of logs"
        );
        assert_eq!(
            f.immutable(&c),
            ["a", "b", "cluster-id"].map(String::from).into()
        );
    }

    #[test]
    fn the_cloud_of_azure_json_picks_the_endpoints_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure.json");
        let write = |cloud: &str| {
            std::fs::write(
                &path,
                format!(
                    r#"{{"cloud":"{cloud}","tenantId":"t","subscriptionId":"s","aadClientId":"c","aadClientSecret":"x"}}"#
                ),
            )
            .unwrap()
        };
        let p = path.to_str().unwrap();
        write("AzureChinaCloud");
        let c = flags(&["--cloudconfig", p]).cloud_config().unwrap();
        assert_eq!(c.endpoints.arm, "https://management.chinacloudapi.cn");
        assert_eq!(c.endpoints.authority_host, "https://login.chinacloudapi.cn");
        assert!(
            matches!(c.credential, CredentialConfig::ClientSecret { ref authority_host, .. } if authority_host == "https://login.chinacloudapi.cn")
        );
        write("azureusgovernmentcloud");
        let c = flags(&["--cloudconfig", p, "--arm-endpoint", "https://arm.example/"])
            .cloud_config()
            .unwrap();
        assert_eq!(c.endpoints.arm, "https://arm.example", "a flag wins");
        assert_eq!(
            c.endpoints.arm_audience,
            "https://management.usgovcloudapi.net"
        );
        assert_eq!(
            c.endpoints.authority_host,
            "https://login.microsoftonline.us"
        );
        write("");
        let c = flags(&["--cloudconfig", p]).cloud_config().unwrap();
        assert_eq!(c.endpoints.arm, "https://management.azure.com");
        write("MarsCloud");
        let e = flags(&["--cloudconfig", p]).cloud_config().unwrap_err();
        assert!(e.to_string().contains("unknown cloud \"MarsCloud\""), "{e}");
        assert!(
            e.to_string().contains("--arm-endpoint"),
            "names the fix: {e}"
        );
    }

    #[test]
    fn serving_flags() {
        assert_eq!(flags(&[]).serving(), Ok(ServingSettings::assigned_only()));
        assert_eq!(
            flags(&[
                "--federated",
                "--identity-serving",
                "federated-with-fallback"
            ])
            .serving(),
            Ok(ServingSettings {
                federated: true,
                default: Serving::FederatedWithFallback
            })
        );
        let e = flags(&["--identity-serving=federated"])
            .serving()
            .unwrap_err();
        assert!(
            e.contains("--identity-serving") && e.contains("--federated"),
            "{e}"
        );
        assert!(
            Flags::try_parse_from(["podid-operator", "--identity-serving", "Federated"]).is_err()
        );
    }

    #[test]
    fn original_lock() {
        assert_eq!(
            flags(&[]).original_lock(),
            Some(("default".into(), "aad-pod-identity-mic".into()))
        );
        assert_eq!(flags(&["--original-mic-lock", ""]).original_lock(), None);
    }
}
