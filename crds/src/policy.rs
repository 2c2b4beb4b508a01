//! Who may use which identity: the pod-identity matching rules of aad-pod-identity v1.8.17 as pure
//! functions over plain data. The operator (desired assignments), the node agent (which identity
//! a pod may ask for) and the CLI (migration report) all call these, so the rules exist once.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::Error;
use crate::names::{BEHAVIOR_ANNOTATION, BEHAVIOR_NAMESPACED, POD_LABEL};
use crate::types::{AzureIdentity, AzureIdentityBinding, AzurePodIdentityException, IdentityType};

/// The facts about a pod that identity matching needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`; empty while the pod is unscheduled.
    pub node_name: String,
}

impl PodFacts {
    /// The value of the `aadpodidbinding` label, if the pod has one.
    pub fn binding_label(&self) -> Option<&str> {
        self.labels.get(POD_LABEL).map(String::as_str)
    }
}

impl From<&Pod> for PodFacts {
    fn from(pod: &Pod) -> Self {
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            labels: pod.labels().clone(),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
        }
    }
}

/// Where bindings for a pod are looked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchOptions {
    /// The original's `--forceNamespaced` / `FORCENAMESPACED`: identity, binding and pod must
    /// share a namespace.
    pub force_namespaced: bool,
    /// Managed mode: only bindings and identities in the pod's own namespace are considered
    /// (the original NMI in managed mode, which also requires `force_namespaced`).
    pub pod_namespace_only: bool,
}

impl MatchOptions {
    /// The rules of standard mode with the given `--forceNamespaced`.
    pub fn standard(force_namespaced: bool) -> Self {
        Self {
            force_namespaced,
            pod_namespace_only: false,
        }
    }

    /// The rules of managed mode (always namespaced).
    pub fn managed() -> Self {
        Self {
            force_namespaced: true,
            pod_namespace_only: true,
        }
    }
}

/// How identities reach nodes (the operator's `--mode`, the node agent's `--operation-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Mode {
    /// A controller assigns identities to nodes and records AzureAssignedIdentities.
    #[default]
    Standard,
    /// Identities are assigned by hand; bindings in the pod's namespace decide.
    Managed,
}

impl Mode {
    /// The matching rules this mode implies, with `--forceNamespaced` (managed mode is always
    /// namespaced).
    pub fn match_options(self, force_namespaced: bool) -> MatchOptions {
        match self {
            Self::Standard => MatchOptions::standard(force_namespaced),
            Self::Managed => MatchOptions::managed(),
        }
    }
}

/// True when the identity is namespaced: by the global option or its own annotation.
pub fn is_namespaced(identity: &AzureIdentity, force_namespaced: bool) -> bool {
    force_namespaced
        || identity
            .annotations()
            .get(BEHAVIOR_ANNOTATION)
            .is_some_and(|v| v == BEHAVIOR_NAMESPACED)
}

/// Bindings whose `selector` equals the pod's `aadpodidbinding` label, sorted by (namespace,
/// name) as the original MIC does. A pod without the label (or with an empty value) matches none.
pub fn matching_bindings<'a>(
    pod: &PodFacts,
    bindings: impl IntoIterator<Item = &'a AzureIdentityBinding>,
    opts: MatchOptions,
) -> Vec<&'a AzureIdentityBinding> {
    let Some(label) = pod.binding_label().filter(|v| !v.is_empty()) else {
        return Vec::new();
    };
    let mut found: Vec<_> = bindings
        .into_iter()
        .filter(|b| b.spec.selector == label)
        .filter(|b| !opts.pod_namespace_only || b.namespace().as_deref() == Some(&pod.namespace))
        .collect();
    found.sort_by_key(|b| (b.namespace(), b.name_any()));
    found
}

/// The AzureIdentity a binding names: `<binding namespace>/<spec.azureIdentity>`.
pub fn identity_for_binding<'a>(
    binding: &AzureIdentityBinding,
    identities: impl IntoIterator<Item = &'a AzureIdentity>,
) -> Option<&'a AzureIdentity> {
    let ns = binding.namespace();
    identities
        .into_iter()
        .find(|i| i.name_any() == binding.spec.azure_identity && i.namespace() == ns)
}

/// One identity a pod may use, and the binding that grants it.
#[derive(Clone, Debug)]
pub struct IdentityGrant<'a> {
    pub binding: &'a AzureIdentityBinding,
    pub identity: &'a AzureIdentity,
}

/// Why a binding that matched a pod's label grants nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantSkip {
    /// The binding's `azureIdentity` is empty.
    NoIdentityNamed,
    /// The named AzureIdentity does not exist in the binding's namespace.
    IdentityMissing { identity: String },
    /// Namespaced rules: identity, binding and pod are not all in one namespace.
    NamespaceMismatch { identity: String },
    /// An identity of this name was already granted through an earlier binding (the original
    /// keys assignments by `<pod>-<podns>-<identity name>`, so the second is dropped).
    DuplicateIdentityName { identity: String },
    /// A type-0 identity whose resourceID is not a user-assigned identity ARM ID.
    InvalidResourceId { identity: String },
}

/// The outcome of matching one pod against all bindings and identities.
#[derive(Clone, Debug, Default)]
pub struct PodIdentities<'a> {
    pub grants: Vec<IdentityGrant<'a>>,
    pub skipped: Vec<(&'a AzureIdentityBinding, GrantSkip)>,
}

/// The identities a pod may use, with the reason for every matching binding that grants none.
///
/// Standard mode: bindings in any namespace match; the identity is looked up in the binding's
/// namespace; namespaced identities need identity, binding and pod in one namespace.
pub fn pod_identities<'a>(
    pod: &PodFacts,
    bindings: &'a [AzureIdentityBinding],
    identities: &'a [AzureIdentity],
    opts: MatchOptions,
) -> PodIdentities<'a> {
    grants_from(
        pod,
        matching_bindings(pod, bindings, opts),
        |b| identity_for_binding(b, identities),
        opts,
    )
}

/// Bindings by selector and identities by namespace and name, for matching many pods against
/// the same objects (the operator's pass, the CLI's report) without rescanning them per pod.
pub struct IdentityIndex<'a> {
    by_selector: HashMap<&'a str, Vec<&'a AzureIdentityBinding>>,
    identities: HashMap<(String, &'a str), &'a AzureIdentity>,
}

impl<'a> IdentityIndex<'a> {
    pub fn new(bindings: &'a [AzureIdentityBinding], identities: &'a [AzureIdentity]) -> Self {
        let mut by_selector: HashMap<&'a str, Vec<&'a AzureIdentityBinding>> = HashMap::new();
        for b in bindings {
            by_selector
                .entry(b.spec.selector.as_str())
                .or_default()
                .push(b);
        }
        for list in by_selector.values_mut() {
            list.sort_by_key(|b| (b.namespace(), b.name_any()));
        }
        let identities = identities
            .iter()
            .filter_map(|i| {
                let name = i.metadata.name.as_deref()?;
                Some(((i.namespace().unwrap_or_default(), name), i))
            })
            .collect();
        Self {
            by_selector,
            identities,
        }
    }

    /// [`pod_identities`] over the index: the same result, without scanning every object.
    pub fn pod_identities(&self, pod: &PodFacts, opts: MatchOptions) -> PodIdentities<'a> {
        let matching: Vec<&'a AzureIdentityBinding> = pod
            .binding_label()
            .filter(|v| !v.is_empty())
            .and_then(|l| self.by_selector.get(l))
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|b| {
                        !opts.pod_namespace_only || b.namespace().as_deref() == Some(&pod.namespace)
                    })
                    .collect()
            })
            .unwrap_or_default();
        grants_from(
            pod,
            matching,
            |b| {
                self.identities
                    .get(&(
                        b.namespace().unwrap_or_default(),
                        b.spec.azure_identity.as_str(),
                    ))
                    .copied()
            },
            opts,
        )
    }
}

fn grants_from<'a>(
    pod: &PodFacts,
    matching: Vec<&'a AzureIdentityBinding>,
    lookup: impl Fn(&AzureIdentityBinding) -> Option<&'a AzureIdentity>,
    opts: MatchOptions,
) -> PodIdentities<'a> {
    let mut out = PodIdentities::default();
    for binding in matching {
        if binding.spec.azure_identity.is_empty() {
            out.skipped.push((binding, GrantSkip::NoIdentityNamed));
            continue;
        }
        let name = binding.spec.azure_identity.clone();
        let Some(identity) = lookup(binding) else {
            out.skipped
                .push((binding, GrantSkip::IdentityMissing { identity: name }));
            continue;
        };
        if identity.spec.type_ == IdentityType::UserAssignedMsi
            && !is_valid_resource_id(&identity.spec.resource_id)
        {
            out.skipped
                .push((binding, GrantSkip::InvalidResourceId { identity: name }));
            continue;
        }
        if is_namespaced(identity, opts.force_namespaced)
            && (identity.namespace().as_deref() != Some(&pod.namespace)
                || binding.namespace().as_deref() != Some(&pod.namespace))
        {
            out.skipped
                .push((binding, GrantSkip::NamespaceMismatch { identity: name }));
            continue;
        }
        if out.grants.iter().any(|g| g.identity.name_any() == name) {
            out.skipped
                .push((binding, GrantSkip::DuplicateIdentityName { identity: name }));
            continue;
        }
        out.grants.push(IdentityGrant { binding, identity });
    }
    out
}

/// True when the pod is excepted by an AzurePodIdentityException in its own namespace: any one
/// (key, value) of any exception is on the pod; the value compares case-insensitively.
pub fn is_pod_excepted<'a>(
    pod: &PodFacts,
    exceptions: impl IntoIterator<Item = &'a AzurePodIdentityException>,
) -> bool {
    exceptions
        .into_iter()
        .filter(|e| e.namespace().as_deref() == Some(&pod.namespace))
        .flat_map(|e| e.spec.pod_labels.iter())
        .any(|(k, v)| {
            pod.labels
                .get(k)
                .is_some_and(|pv| pv.eq_ignore_ascii_case(v))
        })
}

/// Name of the AzureAssignedIdentity for a pod and identity, as the original MIC names it.
pub fn assigned_identity_name(pod_name: &str, pod_namespace: &str, identity_name: &str) -> String {
    format!("{pod_name}-{pod_namespace}-{identity_name}")
}

/// Namespace of the AzureAssignedIdentity: the identity's when namespaced, else `default`.
pub fn assigned_identity_namespace(identity: &AzureIdentity, force_namespaced: bool) -> String {
    if is_namespaced(identity, force_namespaced) {
        identity.namespace().unwrap_or_else(|| "default".into())
    } else {
        "default".into()
    }
}

/// The path of a user-assigned identity's ARM resource ID after its leading `/`, segment by
/// segment: a fixed word (compared case-insensitively) or `None` for a name (any non-empty
/// segment). The one definition behind [`is_valid_resource_id`] and the CRD's CEL rule
/// ([`resource_id_regex`]), the same check the original MIC applies to type-0 identities.
const RESOURCE_ID_SEGMENTS: [Option<&str>; 8] = [
    Some("subscriptions"),
    None,
    Some("resourcegroups"),
    None,
    Some("providers"),
    Some("microsoft.managedidentity"),
    Some("userassignedidentities"),
    None,
];

/// True when `id` has the shape `/subscriptions/<s>/resourcegroups/<rg>/providers/
/// Microsoft.ManagedIdentity/userAssignedIdentities/<name>` (case-insensitive).
pub fn is_valid_resource_id(id: &str) -> bool {
    let Some(path) = id.strip_prefix('/') else {
        return false;
    };
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() == RESOURCE_ID_SEGMENTS.len()
        && parts
            .iter()
            .zip(RESOURCE_ID_SEGMENTS)
            .all(|(part, segment)| match segment {
                Some(word) => part.eq_ignore_ascii_case(word),
                None => !part.is_empty(),
            })
}

/// [`is_valid_resource_id`] as a case-insensitive regular expression (RE2 syntax, as the API
/// server's CEL `matches` takes it), for the AzureIdentity CRD's validation rule.
pub fn resource_id_regex() -> String {
    let mut re = String::from("(?i)^");
    for segment in RESOURCE_ID_SEGMENTS {
        re.push('/');
        match segment {
            Some(word) => re.push_str(&word.replace('.', "[.]")),
            None => re.push_str("[^/]+"),
        }
    }
    re.push('$');
    re
}

/// What a token request names, if anything (IMDS `client_id`, `object_id`, `msi_res_id`/`mi_res_id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityRequest {
    pub client_id: Option<String>,
    pub object_id: Option<String>,
    pub resource_id: Option<String>,
}

impl IdentityRequest {
    /// True when the request names no identity.
    pub fn is_unspecified(&self) -> bool {
        self.client_id.is_none() && self.object_id.is_none() && self.resource_id.is_none()
    }

    /// True when `identity` is the one requested. Client and resource IDs compare
    /// case-insensitively (Azure IDs are case-insensitive). An `object_id` is matched against
    /// `principal_id` when the caller knows it; AzureIdentity has no principal ID field.
    pub fn names(&self, identity: &AzureIdentity, principal_id: Option<&str>) -> bool {
        let eq = |a: &Option<String>, b: &str| {
            a.as_deref()
                .is_some_and(|a| !b.is_empty() && a.eq_ignore_ascii_case(b))
        };
        eq(&self.client_id, &identity.spec.client_id)
            || eq(&self.resource_id, &identity.spec.resource_id)
            || principal_id.is_some_and(|p| eq(&self.object_id, p))
    }
}

/// The identity to serve for a request among those the pod may use.
///
/// A named identity must be one of `allowed` ([`Error::IdentityNotBound`] otherwise); an
/// unnamed request takes the pod's only identity and fails when it has none or several.
pub fn select_identity<'a>(
    request: &IdentityRequest,
    allowed: &[&'a AzureIdentity],
) -> Result<&'a AzureIdentity, Error> {
    if request.is_unspecified() {
        return match allowed {
            [] => Err(Error::NoIdentity),
            [only] => Ok(only),
            many => Err(Error::AmbiguousIdentity {
                count: many.len(),
                names: many.iter().map(|i| i.name_any()).collect(),
            }),
        };
    }
    allowed
        .iter()
        .copied()
        .find(|i| request.names(i, None))
        .ok_or(Error::IdentityNotBound)
}
