//! Which Azure cloud and which account: the endpoints of Azure's clouds (ARM, its token audience,
//! Entra's authority host) and azure.json, the cloud provider's configuration file on each node,
//! with values given outside the file (flags, environment variables) taking precedence.

use std::path::Path;

use serde::Deserialize;

use crate::Error;
use crate::credential::CredentialConfig;

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
    pub fn for_cloud(name: &str, environment_file: Option<&str>) -> Result<Self, Error> {
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
                let fail = |reason: String| Error::EnvironmentFile {
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
            _ => return Err(Error::UnknownCloud(name.to_owned())),
        })
    }
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

impl AzureJson {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| Error::ConfigParse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Values given outside azure.json (flags, environment variables); each one set and non-empty
/// wins over the file.
#[derive(Clone, Default)]
pub struct Overrides {
    pub tenant_id: Option<String>,
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    pub vm_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `true` (any case) for a managed identity, anything else for a service principal.
    pub use_msi: Option<String>,
    pub user_assigned_msi_client_id: Option<String>,
    pub arm_endpoint: Option<String>,
    pub arm_audience: Option<String>,
    pub authority_host: Option<String>,
    /// IMDS base URL for a managed-identity credential.
    pub imds_endpoint: String,
    /// `AZURE_ENVIRONMENT_FILEPATH`: the endpoints of `AzureStackCloud`.
    pub environment_file: Option<String>,
    /// The cloud's name (`CLOUD`, as the original's no-azure.json manifest sets it), over
    /// azure.json's `cloud`.
    pub cloud: Option<String>,
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
    /// ARM and Entra of the cloud, overrides over azure.json's `cloud`.
    pub endpoints: CloudEndpoints,
}

impl CloudConfig {
    /// azure.json at `path` (if any) overridden by `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, Error> {
        let j = match path {
            Some(path) => AzureJson::read(path)?,
            None => AzureJson::default(),
        };
        Self::resolve(j, overrides)
    }

    /// `j` overridden by `o`: the endpoints of its cloud and the credential it describes.
    pub fn resolve(mut j: AzureJson, o: &Overrides) -> Result<Self, Error> {
        let set = |field: &mut String, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                *field = v.clone();
            }
        };
        set(&mut j.tenant_id, &o.tenant_id);
        set(&mut j.subscription_id, &o.subscription_id);
        set(&mut j.resource_group, &o.resource_group);
        set(&mut j.vm_type, &o.vm_type);
        set(&mut j.aad_client_id, &o.client_id);
        set(&mut j.aad_client_secret, &o.client_secret);
        set(
            &mut j.user_assigned_identity_id,
            &o.user_assigned_msi_client_id,
        );
        if let Some(m) = &o.use_msi {
            j.use_managed_identity_extension = m.eq_ignore_ascii_case("true");
        }
        let cloud = o
            .cloud
            .as_deref()
            .filter(|c| !c.is_empty())
            .unwrap_or(&j.cloud);
        let mut endpoints = CloudEndpoints::for_cloud(cloud, o.environment_file.as_deref())?;
        for (field, value) in [
            (&mut endpoints.arm, &o.arm_endpoint),
            (&mut endpoints.arm_audience, &o.arm_audience),
            (&mut endpoints.authority_host, &o.authority_host),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                *field = v.trim_end_matches('/').to_owned();
            }
        }
        let cluster_identity = Some(j.user_assigned_identity_id.clone()).filter(|c| !c.is_empty());
        let credential = if j.use_managed_identity_extension {
            CredentialConfig::ManagedIdentity {
                imds_endpoint: o.imds_endpoint.clone(),
                client_id: cluster_identity.clone(),
            }
        } else {
            if j.tenant_id.is_empty() {
                return Err(Error::ConfigMissing("tenantId"));
            }
            if j.aad_client_id.is_empty() || j.aad_client_secret.is_empty() {
                return Err(Error::ConfigMissing(
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
            return Err(Error::ConfigMissing("subscriptionId"));
        }
        Ok(Self {
            tenant_id: j.tenant_id,
            subscription_id: j.subscription_id,
            resource_group: j.resource_group,
            vm_type: j.vm_type,
            credential,
            cluster_identity,
            endpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides() -> Overrides {
        Overrides {
            imds_endpoint: "http://169.254.169.254".into(),
            ..Default::default()
        }
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
        let j: AzureJson = serde_json::from_str(
            r#"{"subscriptionId":"s","useManagedIdentityExtension":true,"userAssignedIdentityID":"k"}"#,
        )
        .unwrap();
        let c = CloudConfig::resolve(j, &overrides()).unwrap();
        assert!(matches!(
            c.credential,
            CredentialConfig::ManagedIdentity { client_id: Some(ref k), .. } if k == "k"
        ));
        let err = CloudConfig::load(None, &overrides()).unwrap_err();
        assert!(err.to_string().contains("tenantId"), "{err}");
    }
}
