//! The stable reason codes of the migration report's findings (docs/report.md documents each).
//! Their string forms are part of the report's schema and never change.

use serde::{Deserialize, Serialize};

/// Why a workload cannot move to Workload ID as is, or what to do first.
///
/// Ordered by string form, so findings and summaries sort as the report always sorted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonCode {
    ServicePrincipalIdentity,
    MultipleIdentities,
    SharedServiceAccount,
    FederatedCredentialLimit,
    NoOidcIssuer,
    OidcIssuerUnknown,
    NoMatchingBinding,
    BindingWithoutIdentity,
    IdentityMissing,
    NamespaceMismatch,
    InvalidResourceId,
    DuplicateIdentityName,
    ExceptionPod,
    DefaultServiceAccount,
    FederatedCredential,
    ServiceAccountAnnotation,
    PodLabel,
    WebhookNotInstalled,
    HostNetwork,
    KubenetNetRaw,
    UnsupportedOwner,
}

impl ReasonCode {
    /// Every code, in the order docs/report.md lists them.
    pub const ALL: [Self; 21] = [
        Self::ServicePrincipalIdentity,
        Self::MultipleIdentities,
        Self::SharedServiceAccount,
        Self::FederatedCredentialLimit,
        Self::NoOidcIssuer,
        Self::OidcIssuerUnknown,
        Self::NoMatchingBinding,
        Self::BindingWithoutIdentity,
        Self::IdentityMissing,
        Self::NamespaceMismatch,
        Self::InvalidResourceId,
        Self::DuplicateIdentityName,
        Self::ExceptionPod,
        Self::DefaultServiceAccount,
        Self::FederatedCredential,
        Self::ServiceAccountAnnotation,
        Self::PodLabel,
        Self::WebhookNotInstalled,
        Self::HostNetwork,
        Self::KubenetNetRaw,
        Self::UnsupportedOwner,
    ];

    /// The code as the report writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServicePrincipalIdentity => "service-principal-identity",
            Self::MultipleIdentities => "multiple-identities",
            Self::SharedServiceAccount => "shared-service-account",
            Self::FederatedCredentialLimit => "federated-credential-limit",
            Self::NoOidcIssuer => "no-oidc-issuer",
            Self::OidcIssuerUnknown => "oidc-issuer-unknown",
            Self::NoMatchingBinding => "no-matching-binding",
            Self::BindingWithoutIdentity => "binding-without-identity",
            Self::IdentityMissing => "identity-missing",
            Self::NamespaceMismatch => "namespace-mismatch",
            Self::InvalidResourceId => "invalid-resource-id",
            Self::DuplicateIdentityName => "duplicate-identity-name",
            Self::ExceptionPod => "exception-pod",
            Self::DefaultServiceAccount => "default-service-account",
            Self::FederatedCredential => "federated-credential",
            Self::ServiceAccountAnnotation => "service-account-annotation",
            Self::PodLabel => "pod-label",
            Self::WebhookNotInstalled => "webhook-not-installed",
            Self::HostNetwork => "host-network",
            Self::KubenetNetRaw => "kubenet-net-raw",
            Self::UnsupportedOwner => "unsupported-owner",
        }
    }
}

impl ReasonCode {
    /// True for a fact of the cluster rather than of a workload (its OIDC issuer, the Workload
    /// ID webhook): the plan gives it to every workload it concerns, the report says it once.
    pub fn is_cluster_wide(self) -> bool {
        matches!(
            self,
            Self::NoOidcIssuer | Self::OidcIssuerUnknown | Self::WebhookNotInstalled
        )
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialOrd for ReasonCode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ReasonCode {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for ReasonCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ReasonCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::ReasonCode;

    #[test]
    fn serde_form_is_the_documented_string() {
        for code in ReasonCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str(), "{code:?}");
            let back: ReasonCode = serde_json::from_value(json).unwrap();
            assert_eq!(back, code);
        }
    }
}
