//! Azure access for podid; the only crate that talks to Azure. Behind small project-owned traits
//! so the rest of the code never touches an SDK type: which identities a scale set or VM carries
//! and how to change them ([`NodePoolIdentities`]), and a managed identity's federated
//! credentials ([`FederatedCredentials`]). [`Arm`] implements both over ARM's REST API,
//! authenticated with an `azure_identity` credential ([`credential`]); moving to another SDK
//! line touches this crate only. Also here: the clouds' endpoints and azure.json ([`cloud`]),
//! the IMDS, Entra and workload identity token sources ([`token`]), Entra's rules ([`entra`]),
//! and how federated credentials are written as Azure accepts them ([`federated`]).
//!
//! Feature `arm` (default) holds everything that links the SDK: [`Arm`] and the controller's
//! credentials. Without it (the node agent) the crate is plain HTTP.
//!
//! The typed models of `azure_mgmt_compute` 0.21 cannot carry `userAssignedIdentities` entries
//! (the generated map type is an empty struct), so identity changes are sent as the JSON ARM
//! documents, built by the pure [`identity_patches`].

#[cfg(feature = "arm")]
mod arm;
pub mod cloud;
pub mod credential;
pub mod entra;
pub mod federated;
#[cfg(feature = "arm")]
mod msi;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "arm")]
pub use arm::Arm;
/// The SDK's credential trait, which [`Arm`] takes; re-exported so callers need not depend on
/// the SDK themselves.
#[cfg(feature = "arm")]
pub use azure_core::auth::TokenCredential;
pub use cloud::{AzureJson, CloudConfig, CloudEndpoints, Overrides};
pub use credential::CredentialConfig;
#[cfg(feature = "arm")]
pub use credential::ReloadingCredential;
#[cfg(feature = "arm")]
pub use federated::SerialCredentials;
pub use federated::conflicting_credential;
#[cfg(feature = "arm")]
pub use msi::MsiCredentials;
use podid_crds::provider::AssignmentTarget;
use serde_json::{Value, json};

/// At most this many user-assigned identities may be named in one ARM request.
pub const MAX_IDENTITIES_PER_PATCH: usize = 150;
/// ARM api-version for scale sets and VMs.
pub const COMPUTE_API_VERSION: &str = "2024-07-01";
/// ARM api-version for managed identities and federated credentials.
pub const MSI_API_VERSION: &str = "2023-01-31";
/// ARM api-version for AKS managed clusters.
pub const AKS_API_VERSION: &str = "2024-05-01";

/// ARM api-version for role assignments (`Microsoft.Authorization/roleAssignments`).
pub const AUTHORIZATION_API_VERSION: &str = "2022-04-01";
/// The built-in role "Managed Identity Operator" (read and assign user-assigned identities),
/// which the cluster's kubelet identity needs on every identity pod identity assigns.
pub const MANAGED_IDENTITY_OPERATOR_ROLE: &str = "f1a07417-d97a-45cb-824c-7a7467783830";

/// The ARM id of a built-in role definition in `subscription`.
pub fn role_definition_id(subscription: &str, role: &str) -> String {
    format!(
        "/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{role}"
    )
}

/// A user-assigned identity as ARM describes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAssignedIdentity {
    pub id: String,
    pub client_id: String,
    pub principal_id: String,
}

/// A role assignment (`Microsoft.Authorization/roleAssignments`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    /// Its ARM id (`<scope>/providers/Microsoft.Authorization/roleAssignments/<guid>`).
    pub id: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
}

impl RoleAssignment {
    /// Whether it grants `role` (a role definition's GUID) to `principal` (case-insensitive).
    pub fn grants(&self, role: &str, principal: &str) -> bool {
        self.principal_id.eq_ignore_ascii_case(principal)
            && self
                .role_definition_id
                .rsplit('/')
                .next()
                .is_some_and(|r| r.eq_ignore_ascii_case(role))
    }
}

/// Errors talking to Azure or reading how to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading cloud config {path}: {source}")]
    ConfigRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("parsing cloud config {path}: {source}")]
    ConfigParse {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("cloud config is missing {0}")]
    ConfigMissing(&'static str),
    #[error(
        "cloud config: unknown cloud {0:?}; use AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud, AzureGermanCloud or AzureStackCloud (with AZURE_ENVIRONMENT_FILEPATH), or set --arm-endpoint, --arm-audience and --authority-host"
    )]
    UnknownCloud(String),
    #[error(
        "cloud AzureStackCloud: reading the environment file {path} (AZURE_ENVIRONMENT_FILEPATH): {reason}"
    )]
    EnvironmentFile { path: String, reason: String },
    /// ARM answered with an error (`{"error":{"code","message"}}`).
    #[error("ARM {status} {code}: {message}")]
    Arm {
        status: u16,
        code: String,
        message: String,
        /// Seconds from `Retry-After`, when ARM sent one (429, some 5xx).
        retry_after: Option<u64>,
    },
    /// No token for ARM.
    #[error("getting an ARM token: {0}")]
    Credential(String),
    /// The request did not complete.
    #[error("ARM request to {url}: {message}")]
    Transport { url: String, message: String },
    /// The async operation ended other than `Succeeded`.
    #[error("ARM operation {url} ended {status}")]
    Operation { url: String, status: String },
}

impl Error {
    /// ARM's error answer with `status` (400 and above): the `code` and `message` of its
    /// `{"error":{"code","message"}}` body; a body without them (an HTML page, a proxy's answer)
    /// gives code `Unknown` and the body as the message.
    pub fn from_arm_answer(status: u16, body: &str, retry_after: Option<u64>) -> Self {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        Self::Arm {
            status,
            code: json["error"]["code"]
                .as_str()
                .unwrap_or("Unknown")
                .to_string(),
            message: json["error"]["message"]
                .as_str()
                .unwrap_or(body)
                .to_string(),
            retry_after,
        }
    }

    /// 429 and 5xx (and transport failures) may succeed when retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Arm { status, .. } => *status == 429 || *status >= 500,
            Self::Transport { .. } => true,
            _ => false,
        }
    }

    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Arm { status: 429, .. } => "throttled",
            Self::Arm { status, .. } if *status >= 500 => "server_error",
            Self::Arm { .. } => "rejected",
            Self::Credential(_) => "credential",
            Self::Transport { .. } => "transport",
            Self::Operation { .. } => "operation_failed",
            Self::ConfigRead { .. }
            | Self::ConfigParse { .. }
            | Self::ConfigMissing(_)
            | Self::UnknownCloud(_)
            | Self::EnvironmentFile { .. } => "config",
        }
    }
}

/// The identities on a scale set or VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityState {
    pub system_assigned: bool,
    /// Lower-cased ARM ids of the user-assigned identities.
    pub user_assigned: BTreeSet<String>,
    /// Lower-cased client IDs of those identities, by lower-cased ARM id, where ARM reported one.
    pub client_ids: BTreeMap<String, String>,
}

impl IdentityState {
    /// Reads ARM's `identity` object.
    pub fn from_arm(identity: Option<&Value>) -> Self {
        let Some(i) = identity else {
            return Self::default();
        };
        let ty = i.get("type").and_then(Value::as_str).unwrap_or("None");
        let entries = i.get("userAssignedIdentities").and_then(Value::as_object);
        Self {
            system_assigned: ty.to_ascii_lowercase().contains("systemassigned"),
            user_assigned: entries
                .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect())
                .unwrap_or_default(),
            client_ids: entries
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let c = v.get("clientId")?.as_str()?;
                    Some((k.to_ascii_lowercase(), c.to_ascii_lowercase()))
                })
                .collect(),
        }
    }
}

/// The PATCH bodies that take `current` to `current + add - remove`: identity deltas only
/// (entries to add as `{}`, to remove as `null`), at most [`MAX_IDENTITIES_PER_PATCH`] entries
/// each; when nothing would remain, the last request changes `type` instead of naming entries.
/// Ids compare case-insensitively; adding what is there or removing what is not is a no-op.
pub fn identity_patches(current: &IdentityState, add: &[String], remove: &[String]) -> Vec<Value> {
    let add: BTreeSet<String> = add
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .filter(|a| !current.user_assigned.contains(a))
        .collect();
    let remove: BTreeSet<String> = remove
        .iter()
        .map(|r| r.to_ascii_lowercase())
        .filter(|r| current.user_assigned.contains(r) && !add.contains(r))
        .collect();
    if add.is_empty() && remove.is_empty() {
        return Vec::new();
    }
    let remaining = current.user_assigned.len() + add.len() - remove.len();
    let with_users = if current.system_assigned {
        "SystemAssigned, UserAssigned"
    } else {
        "UserAssigned"
    };
    let mut entries: Vec<(String, Value)> = add.into_iter().map(|a| (a, json!({}))).collect();
    let mut removals: Vec<String> = remove.into_iter().collect();
    if remaining == 0 {
        // Everything goes: one request changing the type (ARM's way to drop the last one).
        let ty = if current.system_assigned {
            "SystemAssigned"
        } else {
            "None"
        };
        return vec![json!({"identity": {"type": ty}})];
    }
    entries.extend(removals.drain(..).map(|r| (r, Value::Null)));
    // Additions first, so no intermediate request leaves the resource with none.
    entries
        .chunks(MAX_IDENTITIES_PER_PATCH)
        .map(|chunk| {
            let map: serde_json::Map<String, Value> = chunk.iter().cloned().collect();
            json!({"identity": {"type": with_users, "userAssignedIdentities": map}})
        })
        .collect()
}

/// Reads and changes the identities of a scale set or VM.
#[allow(async_fn_in_trait)]
pub trait NodePoolIdentities {
    /// The identities on `target` now.
    async fn identities(&self, target: &AssignmentTarget) -> Result<IdentityState, Error>;
    /// Adds and removes user-assigned identities (ARM ids) with as few writes as ARM allows,
    /// waiting for each to finish, given `current`, the identities just read from `target` (the
    /// write's identity type depends on them). Returns the number of PATCH requests sent.
    async fn update_from(
        &self,
        target: &AssignmentTarget,
        current: &IdentityState,
        add: &[String],
        remove: &[String],
    ) -> Result<usize, Error>;
    /// The scale sets in one resource group (ARM's list, every page), as targets.
    async fn scale_sets(
        &self,
        subscription: &str,
        resource_group: &str,
    ) -> Result<Vec<AssignmentTarget>, Error>;
    /// [`NodePoolIdentities::update_from`] after reading the identities on `target`.
    async fn update(
        &self,
        target: &AssignmentTarget,
        add: &[String],
        remove: &[String],
    ) -> Result<usize, Error> {
        let current = self.identities(target).await?;
        self.update_from(target, &current, add, remove).await
    }
}

/// A federated identity credential of a user-assigned identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedCredential {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

/// Manages a user-assigned identity's federated credentials (the bridge's Azure side). Azure
/// refuses overlapping writes to one identity with 409: write through [`SerialCredentials`].
#[allow(async_fn_in_trait)]
pub trait FederatedCredentials {
    async fn list(&self, identity_id: &str) -> Result<Vec<FederatedCredential>, Error>;
    async fn put(&self, identity_id: &str, credential: &FederatedCredential) -> Result<(), Error>;
    async fn delete(&self, identity_id: &str, name: &str) -> Result<(), Error>;
}

/// How [`Arm`] retries calls that may succeed later (429, 5xx, transport failures).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// First backoff; doubled per attempt, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one ends the retries (the next pass retries).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` after `err`, or `None` to give up.
    pub fn delay(&self, attempt: u32, err: &Error) -> Option<Duration> {
        if attempt + 1 >= self.attempts || !err.is_retryable() {
            return None;
        }
        if let Error::Arm {
            retry_after: Some(s),
            ..
        } = err
        {
            let d = Duration::from_secs(*s);
            return (d <= self.max_retry_after).then_some(d);
        }
        Some(self.backoff(attempt))
    }

    /// The backoff after attempt `attempt` (0 for the first): `base_delay` doubled per attempt,
    /// at most `max_delay`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay)
    }
}

/// Told about every ARM call: operation (`vmss_get`, `vmss_update`, `vm_get`, `vm_update`,
/// `operation_get`, `fic_list`, `fic_put`, `fic_delete`), result (`ok` or an
/// [`Error::metric_label`]) and duration.
pub type ArmObserver = Arc<dyn Fn(&'static str, &'static str, Duration) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> String {
        format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id{n}"
        )
    }

    fn state(system: bool, ids: &[usize]) -> IdentityState {
        IdentityState {
            system_assigned: system,
            user_assigned: ids.iter().map(|n| id(*n).to_ascii_lowercase()).collect(),
            client_ids: BTreeMap::new(),
        }
    }

    #[test]
    fn nothing_to_do_sends_nothing() {
        assert!(
            identity_patches(&state(false, &[1]), &[id(1).to_uppercase()], &[id(2)]).is_empty()
        );
    }

    #[test]
    fn one_delta_with_adds_and_removes() {
        let p = identity_patches(&state(false, &[1, 2]), &[id(3)], &[id(1)]);
        assert_eq!(p.len(), 1);
        let m = p[0]["identity"]["userAssignedIdentities"]
            .as_object()
            .unwrap();
        assert_eq!(m[&id(3).to_ascii_lowercase()], json!({}));
        assert_eq!(m[&id(1).to_ascii_lowercase()], Value::Null);
        assert!(
            !m.contains_key(&id(2).to_ascii_lowercase()),
            "untouched entries are not sent"
        );
        assert_eq!(p[0]["identity"]["type"], "UserAssigned");
    }

    #[test]
    fn keeps_system_assigned_in_the_type() {
        let p = identity_patches(&state(true, &[]), &[id(1)], &[]);
        assert_eq!(p[0]["identity"]["type"], "SystemAssigned, UserAssigned");
    }

    #[test]
    fn the_last_identity_goes_by_type() {
        assert_eq!(
            identity_patches(&state(true, &[1]), &[], &[id(1)]),
            vec![json!({"identity": {"type": "SystemAssigned"}})]
        );
        assert_eq!(
            identity_patches(&state(false, &[1, 2]), &[], &[id(1), id(2)]),
            vec![json!({"identity": {"type": "None"}})]
        );
    }

    #[test]
    fn more_than_150_entries_split_into_several_patches() {
        let add: Vec<String> = (0..320).map(id).collect();
        let p = identity_patches(&state(false, &[]), &add, &[]);
        let sizes: Vec<usize> = p
            .iter()
            .map(|x| {
                x["identity"]["userAssignedIdentities"]
                    .as_object()
                    .unwrap()
                    .len()
            })
            .collect();
        assert_eq!(sizes, [150, 150, 20]);
    }

    #[test]
    fn reads_arm_identity_blocks() {
        let s = IdentityState::from_arm(Some(
            &json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {id(1): {"clientId": "c"}}}),
        ));
        let mut expected = state(true, &[1]);
        expected
            .client_ids
            .insert(id(1).to_ascii_lowercase(), "c".into());
        assert_eq!(s, expected);
        assert_eq!(IdentityState::from_arm(None), IdentityState::default());
    }

    #[test]
    fn retries_back_off_and_honour_retry_after() {
        let p = RetryPolicy::default();
        let arm = |status, retry_after| Error::Arm {
            status,
            code: "x".into(),
            message: "m".into(),
            retry_after,
        };
        assert_eq!(p.delay(0, &arm(503, None)), Some(Duration::from_secs(1)));
        assert_eq!(p.delay(2, &arm(500, None)), Some(Duration::from_secs(4)));
        assert_eq!(
            p.delay(0, &arm(429, Some(20))),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            p.delay(0, &arm(429, Some(3600))),
            None,
            "too long: next pass"
        );
        assert_eq!(p.delay(3, &arm(503, None)), None, "attempts used up");
        assert_eq!(p.delay(0, &arm(400, None)), None, "not retryable");
    }

    #[test]
    fn retryable_errors() {
        let e = |status| Error::Arm {
            status,
            code: "x".into(),
            message: "m".into(),
            retry_after: None,
        };
        assert!(e(429).is_retryable() && e(503).is_retryable());
        assert!(!e(403).is_retryable());
        assert_eq!(e(429).metric_label(), "throttled");
    }
}
