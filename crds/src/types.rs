//! Wire types of the `aadpodidentity.k8s.io/v1` custom resources, field for field compatible with
//! aad-pod-identity v1.8.17, so objects written by the original MIC/NMI and by podid read the same.
//!
//! Every field is optional on read (`serde(default)`): a cluster may hold objects written before
//! our schema validation existed, and one odd object must never break a watch of all of them.

// kube-derive repeats `type_ = "string"` across printcolumn(...) attributes by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::SecretReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::{GROUP, VERSION};

/// `AzureIdentity.spec.type`: which kind of Azure identity this is.
///
/// Serialized as the original's integer. Unknown integers survive a read so that a single bad
/// object cannot break a watch; the API server rejects them on write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IdentityType {
    /// `0`: a user-assigned managed identity, assigned to the node's VM or scale set.
    #[default]
    UserAssignedMsi,
    /// `1`: a service principal with a client secret kept in a Kubernetes Secret.
    ServicePrincipal,
    /// `2`: a service principal with a PKCS#12 certificate kept in a Kubernetes Secret.
    ServicePrincipalCertificate,
    /// Any other integer (the original NMI answers "unsupported identity type").
    Unknown(i64),
}

impl IdentityType {
    /// The integer written on the wire.
    pub fn as_i64(self) -> i64 {
        match self {
            Self::UserAssignedMsi => 0,
            Self::ServicePrincipal => 1,
            Self::ServicePrincipalCertificate => 2,
            Self::Unknown(v) => v,
        }
    }

    /// Builds the type from its wire integer.
    pub fn from_i64(v: i64) -> Self {
        match v {
            0 => Self::UserAssignedMsi,
            1 => Self::ServicePrincipal,
            2 => Self::ServicePrincipalCertificate,
            other => Self::Unknown(other),
        }
    }

    /// A short stable name for reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::UserAssignedMsi => "user-assigned-msi",
            Self::ServicePrincipal => "service-principal",
            Self::ServicePrincipalCertificate => "service-principal-certificate",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Service principals (types 1 and 2) need no assignment to a VM or scale set.
    pub fn is_service_principal(self) -> bool {
        matches!(
            self,
            Self::ServicePrincipal | Self::ServicePrincipalCertificate
        )
    }
}

impl Serialize for IdentityType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.as_i64())
    }
}

impl<'de> Deserialize<'de> for IdentityType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Pre-1.6 objects and hand-written manifests sometimes carry the number as a string.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(v) => Self::from_i64(v),
            Raw::Str(s) => Self::from_i64(s.trim().parse().unwrap_or(-1)),
        })
    }
}

impl JsonSchema for IdentityType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdentityType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "enum": [0, 1, 2],
            "description": "0: user-assigned managed identity (needs resourceID and clientID); 1: service principal with a client secret (needs tenantID, clientID, clientPassword); 2: service principal with a certificate (needs tenantID, clientID, clientPassword). Omitted means 0."
        })
    }
}

/// An object kept verbatim (the original's unused embedded `metadata` in spec and status).
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// An embedded full Kubernetes object (AzureAssignedIdentity's copies of identity and binding).
/// Kept verbatim and not marked `x-kubernetes-embedded-resource`: that marker makes the API
/// server require `apiVersion` and `kind` in the copy, which writers of these objects do not
/// always set.
fn embedded_resource(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Spec of an `AzureIdentity`: an Azure identity that pods may be bound to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentity",
    plural = "azureidentities",
    singular = "azureidentity",
    namespaced,
    status = "AzureIdentityStatus",
    annotation("api-approved.kubernetes.io", "unapproved"),
    printcolumn(name = "Type", type_ = "integer", json_path = ".spec.type"),
    printcolumn(name = "ClientID", type_ = "string", json_path = ".spec.clientID"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "AzureIdentity is an Azure identity (user-assigned managed identity or service principal) that pods can be bound to with an AzureIdentityBinding."
)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": format!(
            "(has(self.type) && self.type != 0) || (has(self.resourceID) && self.resourceID.matches('{}'))",
            crate::policy::resource_id_regex()
        ),
        "message": "resourceID must be the ARM ID of a user-assigned identity, /subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>, when type is 0 (or omitted)",
        "fieldPath": ".resourceID",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct AzureIdentitySpec {
    /// 0 user-assigned MSI, 1 service principal, 2 service principal certificate.
    #[serde(rename = "type", default)]
    pub type_: IdentityType,
    /// ARM resource ID of the user-assigned identity (type 0).
    #[serde(
        rename = "resourceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    #[schemars(length(max = 1024))]
    pub resource_id: String,
    /// Client (application) ID of the identity.
    #[serde(rename = "clientID", default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Secret holding the service principal's secret (type 1) or certificate (type 2).
    #[serde(
        rename = "clientPassword",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_password: Option<SecretReference>,
    /// Tenant of the service principal (types 1 and 2).
    #[serde(rename = "tenantID", default, skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
    /// Extra tenants for a multi-tenant service principal token (type 1).
    #[serde(
        rename = "auxiliaryTenantIDs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub auxiliary_tenant_ids: Option<Vec<String>>,
    /// Declared by the original and never read.
    #[serde(
        rename = "adResourceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ad_resource_id: String,
    /// Entra authority for service principals; default `https://login.microsoftonline.com/`.
    #[serde(
        rename = "adEndpoint",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ad_endpoint: String,
    /// Declared by the original and never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Unused embedded metadata kept for compatibility with the original's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
}

/// Status of an AzureIdentity or AzureIdentityBinding (unused by the original; kept for schema parity).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AzureIdentityStatus {
    #[serde(
        rename = "availableReplicas",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub available_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
}

/// Spec of an `AzureIdentityBinding`: pods whose `aadpodidbinding` label equals `selector` may
/// use the AzureIdentity named `azureIdentity` in the binding's namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentityBinding",
    plural = "azureidentitybindings",
    singular = "azureidentitybinding",
    namespaced,
    status = "AzureIdentityBindingStatus",
    annotation("api-approved.kubernetes.io", "unapproved"),
    printcolumn(
        name = "AzureIdentity",
        type_ = "string",
        json_path = ".spec.azureIdentity"
    ),
    printcolumn(name = "Selector", type_ = "string", json_path = ".spec.selector"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "AzureIdentityBinding lets pods labelled aadpodidbinding=<selector> use the named AzureIdentity."
)]
pub struct AzureIdentityBindingSpec {
    /// Name of an AzureIdentity in this binding's namespace.
    #[serde(
        rename = "azureIdentity",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub azure_identity: String,
    /// Exact value of the pod label `aadpodidbinding` this binding applies to.
    #[serde(default)]
    pub selector: String,
    /// Declared by the original and never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Unused embedded metadata kept for compatibility with the original's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
}

/// Status of an AzureIdentityBinding (unused, kept for schema parity).
pub type AzureIdentityBindingStatus = AzureIdentityStatus;

/// A full copy of an object (spec and status) embedded in an AzureAssignedIdentity, as the MIC
/// saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Embedded<Spec> {
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AzureIdentityStatus>,
}

/// An AzureIdentity as embedded in an AzureAssignedIdentity.
pub type EmbeddedIdentity = Embedded<AzureIdentitySpec>;
/// An AzureIdentityBinding as embedded in an AzureAssignedIdentity.
pub type EmbeddedBinding = Embedded<AzureIdentityBindingSpec>;

impl From<&AzureIdentity> for EmbeddedIdentity {
    fn from(id: &AzureIdentity) -> Self {
        Self {
            api_version: Some(format!("{GROUP}/{VERSION}")),
            kind: Some("AzureIdentity".into()),
            metadata: id.metadata.clone(),
            spec: id.spec.clone(),
            status: id.status.clone(),
        }
    }
}

impl From<&AzureIdentityBinding> for EmbeddedBinding {
    fn from(b: &AzureIdentityBinding) -> Self {
        Self {
            api_version: Some(format!("{GROUP}/{VERSION}")),
            kind: Some("AzureIdentityBinding".into()),
            metadata: b.metadata.clone(),
            spec: b.spec.clone(),
            status: b.status.clone(),
        }
    }
}

impl From<&EmbeddedIdentity> for AzureIdentity {
    fn from(e: &EmbeddedIdentity) -> Self {
        Self {
            metadata: e.metadata.clone(),
            spec: e.spec.clone(),
            status: e.status.clone(),
        }
    }
}

impl From<&EmbeddedBinding> for AzureIdentityBinding {
    fn from(e: &EmbeddedBinding) -> Self {
        Self {
            metadata: e.metadata.clone(),
            spec: e.spec.clone(),
            status: e.status.clone(),
        }
    }
}

/// Spec of an `AzureAssignedIdentity`: written by the MIC, one per (pod, identity) on a node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureAssignedIdentity",
    plural = "azureassignedidentities",
    singular = "azureassignedidentity",
    namespaced,
    status = "AzureAssignedIdentityStatus",
    annotation("api-approved.kubernetes.io", "unapproved"),
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.pod"),
    printcolumn(
        name = "PodNamespace",
        type_ = "string",
        json_path = ".spec.podNamespace"
    ),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodename"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.nodename",
    selectable = ".spec.podNamespace",
    doc = "AzureAssignedIdentity records that a pod on a node has been given an AzureIdentity (written by the Managed Identity Controller)."
)]
pub struct AzureAssignedIdentitySpec {
    /// Copy of the AzureIdentity as the controller saw it.
    #[serde(
        rename = "azureIdentityRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "embedded_resource")]
    pub azure_identity_ref: Option<EmbeddedIdentity>,
    /// Copy of the AzureIdentityBinding as the controller saw it.
    #[serde(
        rename = "azureBindingRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "embedded_resource")]
    pub azure_binding_ref: Option<EmbeddedBinding>,
    /// Pod name.
    #[serde(default)]
    pub pod: String,
    /// Pod namespace.
    #[serde(rename = "podNamespace", default)]
    pub pod_namespace: String,
    /// Node name (lowercase `nodename`, as in the original).
    #[serde(rename = "nodename", default)]
    pub node_name: String,
    /// Declared by the original and never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Unused embedded metadata kept for compatibility with the original's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
}

/// Assignment state of an AzureAssignedIdentity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AssignedIdentityState {
    /// The object exists; the identity is not yet on the node (ARM write pending).
    Created,
    /// The identity is on the node; the node agent may serve it.
    Assigned,
    /// The identity was removed from the node; the object is about to go.
    Unassigned,
    /// Written by pre-1.5 MICs (an empty string) or any value we do not know.
    #[default]
    #[serde(rename = "", other)]
    Legacy,
}

impl AssignedIdentityState {
    /// The string written on the wire (empty for [`Self::Legacy`]).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Assigned => "Assigned",
            Self::Unassigned => "Unassigned",
            Self::Legacy => "",
        }
    }
}

impl std::fmt::Display for AssignedIdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AzureAssignedIdentity {
    /// The assignment state; an object without a status counts as legacy.
    pub fn state(&self) -> AssignedIdentityState {
        self.status
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_default()
    }

    /// The copy of the AzureIdentity this assignment holds.
    pub fn identity(&self) -> Option<AzureIdentity> {
        self.spec
            .azure_identity_ref
            .as_ref()
            .map(AzureIdentity::from)
    }
}

/// Status of an AzureAssignedIdentity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AzureAssignedIdentityStatus {
    /// `Created`, `Assigned` or `Unassigned` (empty on objects of pre-1.5 controllers).
    #[serde(default)]
    #[schemars(schema_with = "assigned_state_schema")]
    pub status: AssignedIdentityState,
    #[serde(
        rename = "availableReplicas",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub available_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
}

/// The status string is free-form in the original's schema; keep it so (old objects hold "").
fn assigned_state_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "description": "Created, Assigned or Unassigned."
    })
}

/// Spec of an `AzurePodIdentityException`: pods in this namespace carrying any of these labels
/// bypass the node agent and reach the instance metadata service directly.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzurePodIdentityException",
    plural = "azurepodidentityexceptions",
    singular = "azurepodidentityexception",
    namespaced,
    status = "AzurePodIdentityExceptionStatus",
    annotation("api-approved.kubernetes.io", "unapproved"),
    doc = "AzurePodIdentityException lets pods with any of the given labels call the instance metadata service directly."
)]
pub struct AzurePodIdentityExceptionSpec {
    /// A pod matching any one (key, value) pair is excepted; values compare case-insensitively.
    #[serde(rename = "podLabels", default)]
    pub pod_labels: BTreeMap<String, String>,
    /// Unused embedded metadata kept for compatibility with the original's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
}

/// Status of an AzurePodIdentityException (unused, kept for schema parity).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AzurePodIdentityExceptionStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub metadata: Option<serde_json::Value>,
}
