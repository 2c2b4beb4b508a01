//! Flags (the original MIC's where they make sense, plus podid's) and the cloud configuration
//! from azure.json, with flags and environment variables taking precedence over the file.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use podid_azure::CredentialConfig;
use podid_crds::policy::Mode;
use serde::Deserialize;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading cloud config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing cloud config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cloud config is missing {0}")]
    Missing(&'static str),
    #[error("Azure credential: {0}")]
    Credential(String),
    #[error(
        "cloud config: unknown cloud {0:?}; use AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud, AzureGermanCloud or AzureStackCloud (with AZURE_ENVIRONMENT_FILEPATH), or set --arm-endpoint, --arm-audience and --authority-host"
    )]
    UnknownCloud(String),
    #[error(
        "cloud AzureStackCloud: reading the environment file {path} (AZURE_ENVIRONMENT_FILEPATH): {reason}"
    )]
    EnvironmentFile { path: String, reason: String },
}

/// ARM and Entra endpoints of one Azure cloud (no trailing slashes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEndpoints {
    pub arm: String,
    pub arm_audience: String,
    pub authority_host: String,
}

impl CloudEndpoints {
    fn new(arm: &str, audience: &str, authority: &str) -> Self {
        let t = |s: &str| s.trim_end_matches('/').to_owned();
        Self {
            arm: t(arm),
            arm_audience: t(audience),
            authority_host: t(authority),
        }
    }

    /// The endpoints of azure.json's `cloud`, as the original resolves it (go-autorest's
    /// `EnvironmentFromName`): a known name, case-insensitively, or `AzureStackCloud` read from
    /// the JSON file named by `AZURE_ENVIRONMENT_FILEPATH`. Empty means the public cloud.
    pub fn for_cloud(name: &str, environment_file: Option<&str>) -> Result<Self, ConfigError> {
        Ok(match name.to_ascii_uppercase().as_str() {
            "" | "AZUREPUBLICCLOUD" => Self::new(
                "https://management.azure.com/",
                "https://management.azure.com/",
                "https://login.microsoftonline.com/",
            ),
            "AZURECHINACLOUD" => Self::new(
                "https://management.chinacloudapi.cn/",
                "https://management.chinacloudapi.cn/",
                "https://login.chinacloudapi.cn/",
            ),
            "AZUREUSGOVERNMENTCLOUD" => Self::new(
                "https://management.usgovcloudapi.net/",
                "https://management.usgovcloudapi.net/",
                "https://login.microsoftonline.us/",
            ),
            "AZUREGERMANCLOUD" => Self::new(
                "https://management.microsoftazure.de/",
                "https://management.microsoftazure.de/",
                "https://login.microsoftonline.de/",
            ),
            "AZURESTACKCLOUD" => {
                let path = environment_file.unwrap_or_default().to_owned();
                let fail = |reason: String| ConfigError::EnvironmentFile {
                    path: path.clone(),
                    reason,
                };
                if path.is_empty() {
                    return Err(fail("the variable is not set".into()));
                }
                #[derive(Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Env {
                    resource_manager_endpoint: String,
                    active_directory_endpoint: String,
                    #[serde(default)]
                    token_audience: String,
                }
                let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
                let env: Env = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
                let audience = if env.token_audience.is_empty() {
                    &env.resource_manager_endpoint
                } else {
                    &env.token_audience
                };
                Self::new(
                    &env.resource_manager_endpoint,
                    audience,
                    &env.active_directory_endpoint,
                )
            }
            _ => return Err(ConfigError::UnknownCloud(name.to_owned())),
        })
    }
}

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
    /// Full resynchronisation interval (also re-reads every scale set and VM).
    #[arg(long = "syncRetryDuration", default_value = "3600s", value_parser = parse_duration)]
    pub sync_retry_duration: Duration,
    /// How often identities removed from a scale set or VM behind the controller's back are re-added.
    #[arg(long = "identity-assignment-reconcile-interval", default_value = "3m", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// Quiet time after an event before a pass runs: a burst of events makes one pass.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Identity of this replica in the Lease (default: the host name).
    #[arg(long = "leader-election-instance", env = "HOSTNAME")]
    pub leader_election_instance: Option<String>,
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

/// azure.json, as the AKS cloud provider writes it (keys are case-sensitive).
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AzureJson {
    #[serde(default)]
    pub cloud: String,
    #[serde(default)]
    pub tenant_id: String,
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default)]
    pub resource_group: String,
    #[serde(default)]
    pub vm_type: String,
    #[serde(default)]
    pub aad_client_id: String,
    #[serde(default)]
    pub aad_client_secret: String,
    #[serde(default)]
    pub use_managed_identity_extension: bool,
    #[serde(rename = "userAssignedIdentityID", default)]
    pub user_assigned_identity_id: String,
}

/// The resolved cloud configuration.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    pub tenant_id: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub vm_type: String,
    pub credential: CredentialConfig,
    /// The cluster identity's client ID (never removed), when configured.
    pub cluster_identity: Option<String>,
    /// ARM and Entra of the cloud, flags over azure.json's `cloud`.
    pub endpoints: CloudEndpoints,
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

    /// azure.json (if any) overridden by flags and environment variables.
    pub fn cloud_config(&self) -> Result<CloudConfig, ConfigError> {
        let mut j = match &self.cloud_config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_str::<AzureJson>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => AzureJson::default(),
        };
        let set = |field: &mut String, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                *field = v.clone();
            }
        };
        set(&mut j.tenant_id, &self.tenant_id);
        set(&mut j.subscription_id, &self.subscription_id);
        set(&mut j.resource_group, &self.resource_group);
        set(&mut j.vm_type, &self.vm_type);
        set(&mut j.aad_client_id, &self.client_id);
        set(&mut j.aad_client_secret, &self.client_secret);
        set(
            &mut j.user_assigned_identity_id,
            &self.user_assigned_msi_client_id,
        );
        if let Some(m) = &self.use_msi {
            j.use_managed_identity_extension = m.eq_ignore_ascii_case("true");
        }
        let mut endpoints = CloudEndpoints::for_cloud(
            &j.cloud,
            std::env::var("AZURE_ENVIRONMENT_FILEPATH").ok().as_deref(),
        )?;
        for (field, flag) in [
            (&mut endpoints.arm, &self.arm_endpoint),
            (&mut endpoints.arm_audience, &self.arm_audience),
            (&mut endpoints.authority_host, &self.authority_host),
        ] {
            if let Some(v) = flag.as_ref().filter(|v| !v.is_empty()) {
                *field = v.trim_end_matches('/').to_owned();
            }
        }
        let cluster_identity = Some(j.user_assigned_identity_id.clone()).filter(|c| !c.is_empty());
        let credential = if j.use_managed_identity_extension {
            CredentialConfig::ManagedIdentity {
                imds_endpoint: self.imds_endpoint.clone(),
                client_id: cluster_identity.clone(),
            }
        } else {
            if j.tenant_id.is_empty() {
                return Err(ConfigError::Missing("tenantId"));
            }
            if j.aad_client_id.is_empty() || j.aad_client_secret.is_empty() {
                return Err(ConfigError::Missing(
                    "aadClientId/aadClientSecret (or useManagedIdentityExtension)",
                ));
            }
            CredentialConfig::ClientSecret {
                authority_host: endpoints.authority_host.clone(),
                tenant_id: j.tenant_id.clone(),
                client_id: j.aad_client_id.clone(),
                secret: j.aad_client_secret.clone(),
            }
        };
        if j.subscription_id.is_empty() {
            return Err(ConfigError::Missing("subscriptionId"));
        }
        Ok(CloudConfig {
            tenant_id: j.tenant_id,
            subscription_id: j.subscription_id,
            resource_group: j.resource_group,
            vm_type: j.vm_type,
            credential,
            cluster_identity,
            endpoints,
        })
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
    fn azure_stack_reads_the_environment_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("env.json");
        std::fs::write(
            &env,
            r#"{"name":"AzureStackCloud","resourceManagerEndpoint":"https://127.0.0.1:8443/",
                "activeDirectoryEndpoint":"https://127.0.0.1:8443/","tokenAudience":""}"#,
        )
        .unwrap();
        let e = CloudEndpoints::for_cloud("AzureStackCloud", Some(env.to_str().unwrap())).unwrap();
        assert_eq!(e.arm, "https://127.0.0.1:8443");
        assert_eq!(
            e.arm_audience, "https://127.0.0.1:8443",
            "audience defaults to ARM"
        );
        let err = CloudEndpoints::for_cloud("AzureStackCloud", None).unwrap_err();
        assert!(
            err.to_string().contains("AZURE_ENVIRONMENT_FILEPATH"),
            "{err}"
        );
        let err = CloudEndpoints::for_cloud("AzureStackCloud", Some("/nonexistent/env.json"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/env.json"), "{err}");
    }

    #[test]
    fn managed_identity_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure.json");
        std::fs::write(
            &path,
            r#"{"subscriptionId":"s","useManagedIdentityExtension":true,"userAssignedIdentityID":"k"}"#,
        )
        .unwrap();
        let c = flags(&["--cloudconfig", path.to_str().unwrap()])
            .cloud_config()
            .unwrap();
        assert!(matches!(
            c.credential,
            CredentialConfig::ManagedIdentity { client_id: Some(ref k), .. } if k == "k"
        ));
        let err = flags(&[]).cloud_config().unwrap_err();
        assert!(err.to_string().contains("tenantId"), "{err}");
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
