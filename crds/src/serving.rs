//! How an identity reaches the pods bound to it: through the node's scale set (pod identity's
//! own path: the identity is assigned to the scale set and the node agent asks IMDS for it) or
//! by Workload ID token exchange (the node agent mints a ServiceAccount token and exchanges it at
//! Entra against a federated credential, so the identity need not sit on any scale set).
//!
//! Decided per AzureIdentityBinding by the annotation [`SERVING_ANNOTATION`], else by the
//! cluster-wide default (`--identity-serving`, the same flag on podid-operator and podid-nmi).
//! The annotation wins over the flag. Non-`assigned` serving needs `--federated` on both; without
//! it every binding is served `assigned`, whatever it says.
//!
//! podid-operator writes the serving it applied for a pod on the pod's AzureAssignedIdentity
//! (same annotation); the node agent follows the record when it carries one, so the two never
//! disagree about whether the identity is on the scale set.

use std::fmt;

use kube::ResourceExt;

use crate::names::SERVING_ANNOTATION;
use crate::policy::IdentityGrant;
use crate::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding};

/// How an identity is served to a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Serving {
    /// The scale set's identity through IMDS (pod identity's path).
    #[default]
    Assigned,
    /// Token exchange only; the identity is not assigned to any scale set for this binding.
    Federated,
    /// Token exchange; when the exchange fails, IMDS through the scale set, where the identity
    /// stays assigned.
    FederatedWithFallback,
}

impl Serving {
    /// The annotation and flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Federated => "federated",
            Self::FederatedWithFallback => "federated-with-fallback",
        }
    }

    /// The value of [`SERVING_ANNOTATION`] or `--identity-serving`, exactly as written.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "assigned" => Some(Self::Assigned),
            "federated" => Some(Self::Federated),
            "federated-with-fallback" => Some(Self::FederatedWithFallback),
            _ => None,
        }
    }

    /// The identity must be on the node's scale set: served `assigned`, or kept there as the
    /// fallback.
    pub fn needs_assignment(self) -> bool {
        self != Self::Federated
    }

    /// The node agent tries a token exchange first.
    pub fn exchanges(self) -> bool {
        self != Self::Assigned
    }

    /// Of two bindings granting one identity to one pod, the one that keeps the most: assigned
    /// over federated-with-fallback over federated (an identity some binding wants on the scale
    /// set is there anyway, and serving it from there is what that binding asked for).
    pub fn most_conservative(self, other: Self) -> Self {
        let rank = |s: Self| match s {
            Self::Assigned => 0,
            Self::FederatedWithFallback => 1,
            Self::Federated => 2,
        };
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cluster-wide switches, the same on podid-operator and podid-nmi.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServingSettings {
    /// `--federated`: token exchange may be used at all.
    pub federated: bool,
    /// `--identity-serving`: bindings without the annotation.
    pub default: Serving,
}

impl ServingSettings {
    /// Everything served `assigned` (pod identity's behaviour).
    pub fn assigned_only() -> Self {
        Self::default()
    }
}

/// Why a binding is not served as its annotation says (for logs and Events; its `Display` names
/// the binding, the annotation and the fix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServingIssue {
    /// The annotation's value is none of the three.
    UnknownValue {
        binding: String,
        value: String,
        applied: Serving,
    },
    /// The annotation asks for token exchange and `--federated` is off.
    FederatedOff { binding: String, asked: Serving },
}

impl fmt::Display for ServingIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownValue {
                binding,
                value,
                applied,
            } => write!(
                f,
                "AzureIdentityBinding {binding}: annotation {SERVING_ANNOTATION}={value:?} is not one of assigned, federated, federated-with-fallback; serving it {applied} (the default). Fix the annotation's value"
            ),
            Self::FederatedOff { binding, asked } => write!(
                f,
                "AzureIdentityBinding {binding}: annotation {SERVING_ANNOTATION}={asked} needs token exchange, which is off; serving it assigned. Start podid-operator and podid-nmi with --federated"
            ),
        }
    }
}

/// How a binding's identity is served, and why not as asked when it is not.
pub fn binding_serving(
    binding: &AzureIdentityBinding,
    settings: ServingSettings,
) -> (Serving, Option<ServingIssue>) {
    let key = format!(
        "{}/{}",
        binding.namespace().unwrap_or_default(),
        binding.name_any()
    );
    let (asked, issue) = match binding.annotations().get(SERVING_ANNOTATION) {
        None => (settings.default, None),
        Some(v) => match Serving::parse(v.trim()) {
            Some(s) => (s, None),
            None => (
                settings.default,
                Some(ServingIssue::UnknownValue {
                    binding: key.clone(),
                    value: v.clone(),
                    applied: effective(settings.default, settings),
                }),
            ),
        },
    };
    let applied = effective(asked, settings);
    if applied != asked && issue.is_none() {
        return (
            applied,
            Some(ServingIssue::FederatedOff {
                binding: key,
                asked,
            }),
        );
    }
    (applied, issue)
}

fn effective(s: Serving, settings: ServingSettings) -> Serving {
    if settings.federated {
        s
    } else {
        Serving::Assigned
    }
}

/// How `identity` is served to a pod whose bindings are `grants` (the pod's grants, any
/// identity): the most conservative of the bindings that grant this identity
/// ([`Serving::most_conservative`]); `assigned` when none does.
pub fn pod_serving(
    grants: &[IdentityGrant<'_>],
    identity: &AzureIdentity,
    settings: ServingSettings,
) -> Serving {
    grants
        .iter()
        .filter(|g| {
            g.identity.metadata.namespace == identity.metadata.namespace
                && g.identity.metadata.name == identity.metadata.name
        })
        .map(|g| binding_serving(g.binding, settings).0)
        .reduce(Serving::most_conservative)
        .unwrap_or(Serving::Assigned)
}

/// The serving podid-operator recorded on an AzureAssignedIdentity, if any (records of the
/// original MIC carry none). An unreadable value counts as `assigned`.
pub fn recorded_serving(record: &AzureAssignedIdentity) -> Option<Serving> {
    record
        .annotations()
        .get(SERVING_ANNOTATION)
        .map(|v| Serving::parse(v.trim()).unwrap_or(Serving::Assigned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AzureIdentityBindingSpec, AzureIdentitySpec};

    fn binding(name: &str, annotation: Option<&str>) -> AzureIdentityBinding {
        let mut b = AzureIdentityBinding::new(
            name,
            AzureIdentityBindingSpec {
                azure_identity: "id".into(),
                selector: "sel".into(),
                ..Default::default()
            },
        );
        b.metadata.namespace = Some("ns".into());
        if let Some(v) = annotation {
            b.metadata.annotations = Some([(SERVING_ANNOTATION.to_owned(), v.to_owned())].into());
        }
        b
    }

    fn identity(name: &str) -> AzureIdentity {
        let mut i = AzureIdentity::new(name, AzureIdentitySpec::default());
        i.metadata.namespace = Some("ns".into());
        i
    }

    const ON: ServingSettings = ServingSettings {
        federated: true,
        default: Serving::Assigned,
    };

    #[test]
    fn the_annotation_wins_over_the_default() {
        let fed_default = ServingSettings {
            default: Serving::Federated,
            ..ON
        };
        assert_eq!(
            binding_serving(&binding("b", None), fed_default).0,
            Serving::Federated
        );
        assert_eq!(
            binding_serving(&binding("b", Some("assigned")), fed_default),
            (Serving::Assigned, None)
        );
        assert_eq!(
            binding_serving(&binding("b", Some("federated-with-fallback")), ON),
            (Serving::FederatedWithFallback, None)
        );
    }

    #[test]
    fn without_the_switch_everything_is_assigned_and_the_binding_is_told_why() {
        let (s, issue) = binding_serving(
            &binding("b", Some("federated")),
            ServingSettings::assigned_only(),
        );
        assert_eq!(s, Serving::Assigned);
        let msg = issue.unwrap().to_string();
        assert!(msg.contains("ns/b") && msg.contains("--federated"), "{msg}");
    }

    #[test]
    fn an_unknown_value_names_the_annotation_and_the_values() {
        let (s, issue) = binding_serving(&binding("b", Some("Federated")), ON);
        assert_eq!(s, Serving::Assigned);
        let msg = issue.unwrap().to_string();
        assert!(
            msg.contains(SERVING_ANNOTATION) && msg.contains("federated-with-fallback"),
            "{msg}"
        );
    }

    #[test]
    fn bindings_that_disagree_give_the_most_conservative() {
        let id = identity("id");
        let other = identity("other");
        let fed = binding("a", Some("federated"));
        let fb = binding("b", Some("federated-with-fallback"));
        let asg = binding("c", Some("assigned"));
        let g = |b, i| IdentityGrant {
            binding: b,
            identity: i,
        };
        assert_eq!(pod_serving(&[g(&fed, &id)], &id, ON), Serving::Federated);
        assert_eq!(
            pod_serving(&[g(&fed, &id), g(&fb, &id)], &id, ON),
            Serving::FederatedWithFallback
        );
        assert_eq!(
            pod_serving(&[g(&fed, &id), g(&fb, &id), g(&asg, &id)], &id, ON),
            Serving::Assigned
        );
        // Another identity's binding does not count.
        assert_eq!(
            pod_serving(&[g(&fed, &id), g(&asg, &other)], &id, ON),
            Serving::Federated
        );
        assert_eq!(pod_serving(&[], &id, ON), Serving::Assigned);
    }

    #[test]
    fn values_round_trip() {
        for s in [
            Serving::Assigned,
            Serving::Federated,
            Serving::FederatedWithFallback,
        ] {
            assert_eq!(Serving::parse(s.as_str()), Some(s));
        }
        assert!(Serving::Federated.exchanges() && !Serving::Federated.needs_assignment());
        assert!(Serving::FederatedWithFallback.needs_assignment());
        assert!(!Serving::Assigned.exchanges());
    }
}
