//! Who may use which identity: the pod-identity matching rules of aad-pod-identity v1.8.17 as pure
//! functions over plain data. The operator (desired assignments), the node agent (which identity
//! a pod may ask for) and the CLI (migration report) all call these, so the rules exist once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::Error;
use crate::names::{BEHAVIOR_ANNOTATION, BEHAVIOR_NAMESPACED, POD_LABEL};
use crate::types::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
    IdentityType,
};

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

/// Grants from the bindings that matched a pod (in order), looking each one's identity up.
pub(crate) fn grants_from<'a>(
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

/// True when an assignment's copy of an identity is the identity as granted now: same object,
/// same client and resource IDs (a copy made before an edit is stale).
fn is_live_copy(copy: &AzureIdentity, live: &AzureIdentity) -> bool {
    copy.namespace() == live.namespace()
        && copy.name_any() == live.name_any()
        && copy
            .spec
            .client_id
            .eq_ignore_ascii_case(&live.spec.client_id)
        && copy
            .spec
            .resource_id
            .eq_ignore_ascii_case(&live.spec.resource_id)
}

/// Standard mode: of the identity copies held by a pod's AzureAssignedIdentities (`assigned`),
/// those it may be served now: still granted by its bindings (`granted`, read now) with the same
/// IDs, and, when namespaced (by `force_namespaced` or annotation), in the pod's namespace. Each
/// identity once (a pod can be assigned one identity through several bindings), by namespace and
/// name. A record whose grant was revoked, or whose copy predates an edit of the identity, is
/// never served while its removal is pending.
pub fn servable_assigned<'a>(
    pod: &PodFacts,
    assigned: &'a [AzureIdentity],
    granted: &[AzureIdentity],
    force_namespaced: bool,
) -> Vec<&'a AzureIdentity> {
    let mut allowed: Vec<&AzureIdentity> = assigned
        .iter()
        .filter(|i| {
            !is_namespaced(i, force_namespaced) || i.namespace().as_deref() == Some(&pod.namespace)
        })
        .filter(|i| granted.iter().any(|g| is_live_copy(i, g)))
        .collect();
    allowed.sort_by_key(|i| (i.namespace(), i.name_any()));
    allowed.dedup_by_key(|i| (i.namespace(), i.name_any()));
    allowed
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

/// Name of the AzureAssignedIdentity for a pod and identity, as the original MIC names it. Two
/// owners can share it (`api` in `team-a-prod` with `kv`, `api` in `team-a` with `prod-kv`) and it
/// can be too long for an object name: [`assigned_identity_names`] picks the names podid uses.
pub fn assigned_identity_name(pod_name: &str, pod_namespace: &str, identity_name: &str) -> String {
    format!("{pod_name}-{pod_namespace}-{identity_name}")
}

/// Longest Kubernetes object name (a DNS subdomain).
pub const MAX_OBJECT_NAME_LEN: usize = 253;
/// Hex digits of the hash in a fallback record name (64 bits of SHA-256).
const NAME_HASH_HEX: usize = 16;
/// Fallback names tried per record after the original's, before giving up.
const NAME_HASH_RUNGS: u32 = 4;

/// True when `s` is a valid Kubernetes object name: a lowercase RFC 1123 DNS subdomain of at
/// most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    };
    !s.is_empty() && s.len() <= MAX_OBJECT_NAME_LEN && s.split('.').all(label_ok)
}

/// Whom an AzureAssignedIdentity serves: a pod and the name of its identity, the parts of the
/// original's record name. A pod is granted at most one identity of a name
/// ([`GrantSkip::DuplicateIdentityName`]), so no two wanted records share an owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordOwner {
    pub pod_namespace: String,
    pub pod: String,
    pub identity: String,
}

impl RecordOwner {
    pub fn new(pod_namespace: &str, pod: &str, identity: &str) -> Self {
        Self {
            pod_namespace: pod_namespace.into(),
            pod: pod.into(),
            identity: identity.into(),
        }
    }

    /// The owner a record states in its spec: `podNamespace`, `pod` and the embedded
    /// identity's name (empty without one). The name of the record plays no part.
    pub fn of_record(a: &AzureAssignedIdentity) -> Self {
        Self {
            pod_namespace: a.spec.pod_namespace.clone(),
            pod: a.spec.pod.clone(),
            identity: a
                .spec
                .azure_identity_ref
                .as_ref()
                .and_then(|i| i.metadata.name.clone())
                .unwrap_or_default(),
        }
    }

    /// The original MIC's name, `<pod>-<podns>-<identity>` (possibly not a valid object name).
    pub fn original_name(&self) -> String {
        assigned_identity_name(&self.pod, &self.pod_namespace, &self.identity)
    }

    /// The `rung`-th fallback name: the original name (lowercase letters, digits and `-` only,
    /// cut so the whole fits 253 characters), `-`, and 16 hex digits of SHA-256 over the pod
    /// namespace, pod, identity name and rung. A function of the owner alone.
    pub fn hashed_name(&self, rung: u32) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            "podid/azureassignedidentity-name/v1",
            &self.pod_namespace,
            &self.pod,
            &self.identity,
            &rung.to_string(),
        ] {
            // Object names never hold NUL, so the parts cannot run into each other.
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let digest = h.finalize();
        let hash: String = digest
            .iter()
            .take(NAME_HASH_HEX / 2)
            .map(|b| format!("{b:02x}"))
            .collect();
        let readable: String = self
            .original_name()
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '-',
            })
            .collect();
        let room = MAX_OBJECT_NAME_LEN - NAME_HASH_HEX - 1;
        let prefix = readable.trim_matches('-');
        let prefix = prefix[..prefix.len().min(room)].trim_end_matches('-');
        if prefix.is_empty() {
            hash
        } else {
            format!("{prefix}-{hash}")
        }
    }
}

/// A record the controller wants: its namespace and owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedRecord {
    pub namespace: String,
    pub owner: RecordOwner,
}

/// An AzureAssignedIdentity that exists (also one being deleted: it holds its name until gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingRecord {
    pub namespace: String,
    pub name: String,
    pub owner: RecordOwner,
}

impl From<&AzureAssignedIdentity> for ExistingRecord {
    fn from(a: &AzureAssignedIdentity) -> Self {
        Self {
            namespace: a.namespace().unwrap_or_default(),
            name: a.name_any(),
            owner: RecordOwner::of_record(a),
        }
    }
}

/// The name of each wanted record (same order as `wanted`; `None` when no name is free, which
/// needs a SHA-256 collision on 64 bits, or for a repeated owner).
///
/// Names are unique over all namespaces, never the name of an existing record of another owner,
/// and do not depend on the order of `wanted` or `existing`:
/// 1. A record that exists, in the wanted namespace, with the owner in its spec and at one of the
///    owner's names (the original, when valid, or a [fallback](RecordOwner::hashed_name)),
///    keeps its name.
/// 2. Otherwise the original's `<pod>-<podns>-<identity>` when it is a valid object name, no
///    other wanted record could take it, and no existing record of another owner has it.
/// 3. Otherwise the first fallback name (original name cut, `-`, hash of the owner) that is
///    free, owners taken in sorted order.
///
/// So the original's names are kept wherever they do not collide, a record is never taken over
/// by another pod, and once created a record keeps its name from pass to pass.
pub fn assigned_identity_names(
    wanted: &[WantedRecord],
    existing: &[ExistingRecord],
) -> Vec<Option<String>> {
    use std::collections::BTreeSet;
    let mut out = vec![None; wanted.len()];
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by(|&a, &b| {
        (&wanted[a].owner, &wanted[a].namespace).cmp(&(&wanted[b].owner, &wanted[b].namespace))
    });
    let mut owners = BTreeSet::new();
    order.retain(|&i| owners.insert(&wanted[i].owner));
    // Hashing is the cost of a pass with thousands of records: the original names are made for
    // every record, fallback names only where they can matter.
    let originals: Vec<String> = wanted.iter().map(|w| w.owner.original_name()).collect();
    let valid = |i: usize| is_dns_subdomain(&originals[i]);
    let fallbacks = |i: usize| (0..NAME_HASH_RUNGS).map(move |r| wanted[i].owner.hashed_name(r));

    let mut holders: BTreeMap<&str, BTreeSet<&RecordOwner>> = BTreeMap::new();
    let mut held: BTreeMap<(&str, &RecordOwner), BTreeSet<&str>> = BTreeMap::new();
    for e in existing {
        holders.entry(&e.name).or_default().insert(&e.owner);
        held.entry((&e.namespace, &e.owner))
            .or_default()
            .insert(&e.name);
    }
    let held_by_other = |name: &str, owner: &RecordOwner| {
        holders
            .get(name)
            .is_some_and(|hs| hs.iter().any(|h| *h != owner))
    };
    let mut taken: BTreeSet<String> = BTreeSet::new();

    // 1. An existing record keeps its name: the first candidate name at which the owner has one.
    for &i in &order {
        let w = &wanted[i];
        let Some(names) = held.get(&(w.namespace.as_str(), &w.owner)) else {
            continue;
        };
        let mine = |c: &String| names.contains(c.as_str()) && !taken.contains(c);
        let kept = if valid(i) && mine(&originals[i]) {
            Some(originals[i].clone())
        } else {
            fallbacks(i).find(|c| mine(c))
        };
        if let Some(c) = kept {
            taken.insert(c.clone());
            out[i] = Some(c);
        }
    }

    // 2. The original's name where it is unambiguous: no other open record has it among its
    //    candidates. A fallback name can equal an original name only when that name ends in
    //    `-` and 16 hex digits, so fallback names are counted only if some original does.
    let open: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| out[i].is_none())
        .collect();
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &open {
        if valid(i) {
            *claims.entry(originals[i].clone()).or_default() += 1;
        }
    }
    if open
        .iter()
        .any(|&i| valid(i) && looks_hashed(&originals[i]))
    {
        for &i in &open {
            let own: BTreeSet<String> = fallbacks(i)
                .filter(|c| !valid(i) || *c != originals[i])
                .collect();
            for c in own {
                *claims.entry(c).or_default() += 1;
            }
        }
    }
    for &i in &open {
        let original = &originals[i];
        if valid(i)
            && claims.get(original) == Some(&1)
            && !taken.contains(original)
            && !held_by_other(original, &wanted[i].owner)
        {
            taken.insert(original.clone());
            out[i] = Some(original.clone());
        }
    }

    // 3. Otherwise the first free fallback name, owners in sorted order.
    for &i in &open {
        if out[i].is_some() {
            continue;
        }
        let free = fallbacks(i)
            .filter(|c| *c != originals[i])
            .find(|c| !taken.contains(c) && !held_by_other(c, &wanted[i].owner));
        if let Some(c) = free {
            taken.insert(c.clone());
            out[i] = Some(c);
        }
    }
    out
}

/// True when `name` could be a fallback name: it ends in 16 lowercase hex digits, alone or
/// after a `-`.
fn looks_hashed(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= NAME_HASH_HEX
        && b[b.len() - NAME_HASH_HEX..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        && (b.len() == NAME_HASH_HEX || b[b.len() - NAME_HASH_HEX - 1] == b'-')
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
