//! Which identity a pod's token request gets, in both modes, as pure functions over a snapshot
//! (the waiting itself is `crate::wait`). The matching rules are `podid_crds::policy`'s.

use podid_crds::index::IdentityIndex;
use podid_crds::policy::{
    IdentityRequest, Mode, is_pod_excepted, select_identity, servable_assigned,
};
use podid_crds::{AzureIdentity, AzurePodIdentityException};

use crate::reply::Reply;
use crate::view::PodInfo;
use crate::wait::WaitError;

/// Why a request gets no token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the requested identity is not bound to pod {pod}")]
    NotBound { pod: String },
    #[error("no azure identity found for pod {pod}")]
    NoIdentity { pod: String },
    #[error(
        "Multiple user assigned identities exist for pod {pod} ({}), please specify the clientId / resourceId of the identity in the token request (or start podid-nmi with --multiple-identities=first to serve the first by binding, as aad-pod-identity did)",
        names.join(", ")
    )]
    Ambiguous { pod: String, names: Vec<String> },
    #[error(transparent)]
    Wait(#[from] WaitError),
}

impl ResolveError {
    /// 403 for an identity not bound to the pod; 404 when the pod has none (503 with
    /// `Retry-After: 20` when `retry_after` and the wait timed out, like the original); 400 in
    /// IMDS's own shape when several are bound and none is named.
    pub fn reply(&self, retry_after: bool) -> Reply {
        match self {
            Self::NotBound { .. } => Reply::text(403, self.to_string()),
            Self::Ambiguous { .. } => Reply::oauth_error(400, "invalid_request", &self.to_string()),
            Self::Wait(WaitError::NotCreated { .. } | WaitError::NotAssigned { .. })
                if retry_after =>
            {
                Reply {
                    retry_after: Some(20),
                    ..Reply::text(503, self.to_string())
                }
            }
            Self::NoIdentity { .. } | Self::Wait(_) => Reply::text(404, self.to_string()),
        }
    }

    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotBound { .. } => "not_bound",
            Self::NoIdentity { .. } => "no_identity",
            Self::Ambiguous { .. } => "ambiguous",
            Self::Wait(WaitError::Cancelled) => "cancelled",
            Self::Wait(_) => "not_assigned",
        }
    }
}

/// True when the pod bypasses the agent: an AzurePodIdentityException in its namespace matches
/// it, or it is the original's built-in MIC exception (namespace `mic_namespace`, any case, and
/// an owning ReplicaSet whose name starts with `mic`).
pub fn is_exempt<'a>(
    pod: &PodInfo,
    exceptions: impl IntoIterator<Item = &'a AzurePodIdentityException>,
    mic_namespace: &str,
) -> bool {
    let is_mic = pod.facts.namespace.eq_ignore_ascii_case(mic_namespace)
        && pod
            .replica_set
            .as_deref()
            .is_some_and(|rs| rs.starts_with("mic"));
    is_mic || is_pod_excepted(&pod.facts, exceptions)
}

/// What a request that names no identity gets when the pod may use several
/// (`--multiple-identities`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MultipleIdentities {
    /// IMDS's own answer: 400, naming the identities.
    #[default]
    Refuse,
    /// The first by binding namespace and name (aad-pod-identity served one of them).
    First,
}

fn map_select(
    pod: &PodInfo,
    request: &IdentityRequest,
    allowed: &[&AzureIdentity],
    multiple: MultipleIdentities,
) -> Result<AzureIdentity, ResolveError> {
    let key = pod.key();
    if multiple == MultipleIdentities::First
        && request.is_unspecified()
        && let Some(first) = allowed.first()
    {
        return Ok((*first).clone());
    }
    match select_identity(request, allowed) {
        Ok(i) => Ok(i.clone()),
        Err(podid_crds::Error::IdentityNotBound) => Err(ResolveError::NotBound { pod: key }),
        Err(podid_crds::Error::AmbiguousIdentity { names, .. }) => {
            Err(ResolveError::Ambiguous { pod: key, names })
        }
        Err(_) => Err(ResolveError::NoIdentity { pod: key }),
    }
}

/// The identities the pod's bindings grant it now, in standard mode (copies of those only).
pub fn standard_grants(
    pod: &PodInfo,
    index: &IdentityIndex,
    force_namespaced: bool,
) -> Vec<AzureIdentity> {
    index
        .pod_identities(&pod.facts, Mode::Standard.match_options(force_namespaced))
        .grants
        .iter()
        .map(|g| g.identity.clone())
        .collect()
}

/// Standard mode, before waiting: a request naming an identity the pod's bindings do not grant
/// (`granted`, from [`standard_grants`]) is refused at once (403), and a pod granted nothing is
/// answered at once (404) unless `wait_for_unbound` restores the original's full wait.
pub fn standard_preflight(
    pod: &PodInfo,
    request: &IdentityRequest,
    granted: &[AzureIdentity],
    wait_for_unbound: bool,
) -> Result<(), ResolveError> {
    if granted.is_empty() {
        return if wait_for_unbound {
            Ok(())
        } else if request.is_unspecified() {
            Err(ResolveError::NoIdentity { pod: pod.key() })
        } else {
            Err(ResolveError::NotBound { pod: pod.key() })
        };
    }
    if !request.is_unspecified() && !granted.iter().any(|g| request.names(g, None)) {
        return Err(ResolveError::NotBound { pod: pod.key() });
    }
    Ok(())
}

/// Standard mode, after the wait: choose among the identities assigned to the pod that its
/// bindings still grant (`granted`, read after the wait): a record whose grant was revoked, or
/// whose copy predates an edit of the identity, is never served while its removal is pending.
/// Namespaced identities (by `--forceNamespaced` or annotation) count only in the pod's
/// namespace.
pub fn select_assigned(
    pod: &PodInfo,
    request: &IdentityRequest,
    assigned: &[AzureIdentity],
    granted: &[AzureIdentity],
    force_namespaced: bool,
    multiple: MultipleIdentities,
) -> Result<AzureIdentity, ResolveError> {
    let mut allowed = servable_assigned(&pod.facts, assigned, granted, force_namespaced);
    // In the order of the grants, i.e. of the bindings (namespace, name).
    let rank = |i: &AzureIdentity| {
        granted
            .iter()
            .position(|g| {
                g.metadata.namespace == i.metadata.namespace && g.metadata.name == i.metadata.name
            })
            .unwrap_or(usize::MAX)
    };
    allowed.sort_by_key(|i| rank(i));
    map_select(pod, request, &allowed, multiple)
}

/// Managed mode: bindings and identities in the pod's namespace decide; no waiting.
pub fn select_managed(
    pod: &PodInfo,
    request: &IdentityRequest,
    index: &IdentityIndex,
    multiple: MultipleIdentities,
) -> Result<AzureIdentity, ResolveError> {
    let grants = index
        .pod_identities(&pod.facts, Mode::Managed.match_options(true))
        .grants;
    // Grants come in binding order (namespace, name).
    let allowed: Vec<&AzureIdentity> = grants.iter().map(|g| g.identity).collect();
    map_select(pod, request, &allowed, multiple)
}
