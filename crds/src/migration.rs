//! `podid.dev/v1alpha1` `WorkloadMigration`: where one workload that uses pod identity stands in
//! its move to Workload ID. One per workload, in the workload's namespace, named after it
//! ([`migration_name`]). podid-operator's bridge writes its status (server-side apply, field
//! manager [`BRIDGE_MANAGER`]); the cutover advances `spec.stage`; the report reads both.
//!
//! Also here: the names podid gives the Workload ID side (federated credentials,
//! [`credential_name`]) and the exact comparisons Azure makes of issuers and subjects.

// kube-derive repeats `type_ = "string"` across printcolumn(...) attributes by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The field manager of the bridge's server-side applies.
pub const BRIDGE_MANAGER: &str = "podid-bridge";

/// The field manager of `podid cutover`'s server-side applies: it owns `spec.stage` and
/// `spec.recordedTemplate`, never the status.
pub const CUTOVER_MANAGER: &str = "podid-cutover";

/// The audience of every Workload ID federated credential and of the ServiceAccount tokens
/// exchanged for it.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Prefix of the federated credentials podid creates: the mark of podid's own. A credential
/// without it was made by someone else and is never changed or deleted.
pub const CREDENTIAL_PREFIX: &str = "podid-";

/// Entra's limit of federated identity credentials on one identity.
pub const MAX_FEDERATED_CREDENTIALS: usize = 20;

/// How far a workload has moved. The bridge takes a workload to `Bridged` (or `Blocked`); the
/// cutover takes it further.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Stage {
    /// Still served by pod identity only; the bridge has not finished its side.
    #[default]
    PodIdentity,
    /// Something the bridge cannot decide or do stops the move (see the conditions).
    Blocked,
    /// The Workload ID side exists and every credential is proven by a token exchange; pods
    /// still run on pod identity.
    Bridged,
    /// The workload's pods run on Workload ID.
    Switched,
    /// `podid cutover verify` saw its pods Ready on the new template, with the webhook's
    /// environment and token, and a token exchange for its ServiceAccount succeed.
    Verified,
    /// Pod identity's objects for this workload are gone.
    Completed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodIdentity => "PodIdentity",
            Self::Blocked => "Blocked",
            Self::Bridged => "Bridged",
            Self::Switched => "Switched",
            Self::Verified => "Verified",
            Self::Completed => "Completed",
        }
    }
}

/// The workload a migration is about (in the resource's namespace).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct WorkloadRef {
    /// Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet or Pod.
    pub kind: String,
    pub name: String,
}

/// Spec of a `WorkloadMigration`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "podid.dev",
    version = "v1alpha1",
    kind = "WorkloadMigration",
    plural = "workloadmigrations",
    singular = "workloadmigration",
    shortname = "wlm",
    namespaced,
    status = "WorkloadMigrationStatus",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.workload.kind"),
    printcolumn(name = "Workload", type_ = "string", json_path = ".spec.workload.name"),
    printcolumn(
        name = "ServiceAccount",
        type_ = "string",
        json_path = ".status.targetServiceAccount"
    ),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage"),
    printcolumn(name = "Proven", type_ = "string", json_path = ".status.proven"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "WorkloadMigration records where one workload that uses pod identity stands in its move to Workload ID."
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadMigrationSpec {
    pub workload: WorkloadRef,
    /// The stage the cutover asks for; the bridge alone never moves a workload past `Bridged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The workload's pod template exactly as it was before `podid cutover switch` first changed
    /// it (raw JSON, as the API server returned it). Written once, before the first change, and
    /// never overwritten; `podid cutover rollback` restores it and then removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_template")]
    pub recorded_template: Option<serde_json::Value>,
    /// The AzureIdentityBindings and AzureIdentities this workload used that
    /// `podid cutover finalize --delete-bindings` deleted, each as it was (`apiVersion`, `kind`,
    /// name, namespace, labels, annotations, `spec`). Written before the deletion;
    /// `podid cutover rollback` re-creates the missing ones, then removes the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_objects")]
    pub removed_pod_identity: Vec<serde_json::Value>,
}

/// Objects kept verbatim.
fn preserved_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// A pod template kept verbatim (any field, any version of the API).
fn preserved_template(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// An identity the workload uses through pod identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationIdentity {
    /// `<namespace>/<name>` of the AzureIdentity.
    pub azure_identity: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(
        rename = "resourceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_id: String,
    /// The Entra tenant the identity's tokens come from (the bridge's `--tenant-id` or the
    /// cloud configuration's): the node agent exchanges in this tenant.
    #[serde(rename = "tenantID", default, skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
}

/// A federated identity credential the workload needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationCredential {
    /// The credential's name on the identity.
    pub name: String,
    /// Resource ID of the user-assigned identity that carries it.
    pub identity: String,
    pub issuer: String,
    pub subject: String,
    /// True once a token of the target ServiceAccount was exchanged for this identity.
    pub ready: bool,
}

/// Status of a `WorkloadMigration`, written by the bridge.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadMigrationStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<MigrationIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<MigrationCredential>,
    /// `<ready>/<needed>` credentials, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The name of a workload's `WorkloadMigration`: `<kind>-<name>` in lower case (a valid object
/// name, since the workload's name is one), shortened with a hash when it would pass 253
/// characters.
pub fn migration_name(kind: &str, name: &str) -> String {
    let full = format!("{}-{name}", kind.to_ascii_lowercase());
    if full.len() <= 253 {
        return full;
    }
    let hash = short_hash(&full, 10);
    format!("{}-{hash}", full[..242].trim_end_matches(['-', '.']))
}

/// The ServiceAccount (namespace, name) whose tokens a subject names, if it names one.
pub fn parse_service_account_subject(subject: &str) -> Option<(String, String)> {
    let rest = subject.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| (ns.to_owned(), name.to_owned()))
}

/// What the node agent needs to serve an identity to a workload by token exchange: the
/// ServiceAccount whose token one of the identity's proven credentials accepts, and the tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeTarget {
    pub namespace: String,
    pub service_account: String,
    pub tenant_id: String,
}

/// From a workload's migration record, the proven credential of the identity with this client
/// ID (case-insensitive) and the ServiceAccount it accepts: the workload's own target
/// ServiceAccount, or the identity's shared one (see [`identity_service_account`]). `None` while
/// no credential of that identity is proven.
pub fn exchange_target(
    status: &WorkloadMigrationStatus,
    client_id: &str,
) -> Option<ExchangeTarget> {
    let identity = status
        .identities
        .iter()
        .find(|i| i.client_id.eq_ignore_ascii_case(client_id))?;
    status
        .credentials
        .iter()
        .filter(|c| c.ready && c.identity.eq_ignore_ascii_case(&identity.resource_id))
        .find_map(|c| parse_service_account_subject(&c.subject))
        .map(|(namespace, service_account)| ExchangeTarget {
            namespace,
            service_account,
            tenant_id: identity.tenant_id.clone(),
        })
}

/// How every per-identity ServiceAccount's name starts ([`identity_service_account`]).
pub const IDENTITY_SERVICE_ACCOUNT_PREFIX: &str = "podid-identity-";

/// The ServiceAccount, in podid-operator's namespace, through which every pod bound to one
/// user-assigned identity is served by token exchange when the identity would otherwise need more
/// federated credentials than Azure allows ([`MAX_FEDERATED_CREDENTIALS`]): one credential for
/// all. Named after the Azure identity itself (its resource ID), not an AzureIdentity object, so
/// the AzureIdentities of many namespaces that name one identity share it:
/// `podid-identity-<identity name>-<hash of the resource ID>`.
pub fn identity_service_account(resource_id: &str) -> String {
    let prefix = IDENTITY_SERVICE_ACCOUNT_PREFIX;
    let rid = resource_id.trim().to_ascii_lowercase();
    let name: String = rid
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(200)
        .collect();
    let name = name.trim_matches('-');
    format!("{prefix}{name}-{}", short_hash(&rid, 10))
}

/// The subject of a ServiceAccount's tokens, as Entra matches it (exactly, case-sensitively).
pub fn service_account_subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// The name of the federated credential podid creates on an identity for an issuer and subject:
/// `podid-<namespace>-<serviceaccount>-<hash>`, where the hash is of the issuer and subject
/// (so one name per pair, the same on every run). Always matches Azure's rule
/// `^[A-Za-z0-9][A-Za-z0-9_-]{2,119}$`: dots become `-` and a long middle is cut.
pub fn credential_name(issuer: &str, namespace: &str, service_account: &str) -> String {
    let subject = service_account_subject(namespace, service_account);
    let hash = short_hash(&format!("{issuer}\n{subject}"), 10);
    let middle: String = format!("{namespace}-{service_account}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // 120 in all: prefix, middle, `-`, hash.
    let room = 120 - CREDENTIAL_PREFIX.len() - 1 - hash.len();
    let middle = &middle[..middle.len().min(room)];
    format!("{CREDENTIAL_PREFIX}{middle}-{hash}")
}

/// True when `name` is a valid federated credential name for Azure.
pub fn is_valid_credential_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=120).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// True when podid made the credential (and so may change or delete it).
pub fn is_podid_credential(name: &str) -> bool {
    name.starts_with(CREDENTIAL_PREFIX)
}

/// Issuers compare as Entra compares them: byte for byte (a trailing slash matters).
pub fn same_issuer(a: &str, b: &str) -> bool {
    a == b
}

fn short_hash(s: &str, len: usize) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..len].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_target_is_the_proven_credentials_service_account() {
        let rid = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web";
        let mut status = WorkloadMigrationStatus {
            identities: vec![MigrationIdentity {
                azure_identity: "ns/web".into(),
                client_id: "AAAA".into(),
                resource_id: rid.into(),
                tenant_id: "t".into(),
            }],
            credentials: vec![MigrationCredential {
                name: "podid-ns-web-1".into(),
                identity: rid.to_uppercase(),
                issuer: "https://issuer/".into(),
                subject: service_account_subject("ns", "web"),
                ready: false,
            }],
            ..Default::default()
        };
        assert_eq!(exchange_target(&status, "aaaa"), None, "not proven yet");
        status.credentials[0].ready = true;
        assert_eq!(
            exchange_target(&status, "aaaa"),
            Some(ExchangeTarget {
                namespace: "ns".into(),
                service_account: "web".into(),
                tenant_id: "t".into(),
            })
        );
        assert_eq!(exchange_target(&status, "bbbb"), None, "another identity");
        assert_eq!(
            parse_service_account_subject("system:serviceaccount:a"),
            None
        );
        assert_eq!(
            parse_service_account_subject("system:serviceaccount:a:b:c"),
            None
        );
        let long = format!("{}{}", &rid[..rid.len() - 3], "x".repeat(300));
        assert!(identity_service_account(&long).len() <= 253);
        let sa = identity_service_account(rid);
        assert!(sa.starts_with("podid-identity-web-"), "{sa}");
        assert_eq!(
            sa,
            identity_service_account(&rid.to_uppercase()),
            "case-blind"
        );
        assert!(crate::policy::is_dns_subdomain(&sa));
    }

    #[test]
    fn credential_names_are_valid_deterministic_and_podids() {
        let issuer = "https://oidc.example.com/tenant/cluster/";
        let a = credential_name(issuer, "shop", "cart");
        assert_eq!(a, credential_name(issuer, "shop", "cart"));
        assert!(a.starts_with("podid-shop-cart-"), "{a}");
        assert!(is_valid_credential_name(&a) && is_podid_credential(&a));
        // Another issuer (even one slash apart) or subject is another credential.
        assert_ne!(
            a,
            credential_name(issuer.trim_end_matches('/'), "shop", "cart")
        );
        assert_ne!(a, credential_name(issuer, "shop", "cart2"));
        // Dots (allowed in ServiceAccount names) and great length still give a valid name.
        let long = credential_name(issuer, &"n".repeat(63), &format!("{}.sa", "s".repeat(250)));
        assert!(is_valid_credential_name(&long), "{long}");
        assert_eq!(long.len(), 120);
        for bad in ["", "ab", "-abc", "a.bc", &"a".repeat(121)] {
            assert!(!is_valid_credential_name(bad), "{bad}");
        }
    }

    #[test]
    fn migration_names_are_object_names() {
        assert_eq!(migration_name("Deployment", "web"), "deployment-web");
        let long = migration_name("StatefulSet", &"x".repeat(253));
        assert!(long.len() <= 253 && long.starts_with("statefulset-xxx"));
        assert_ne!(long, migration_name("StatefulSet", &"x".repeat(252)));
    }
}
