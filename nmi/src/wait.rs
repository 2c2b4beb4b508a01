//! Standard mode's wait for the controller: a pod's AzureAssignedIdentities go from `Created`
//! (ARM write pending) to `Assigned` (the identity is on the node). The decision per attempt is a
//! pure function, so the original's retry schedule (16 attempts for Created, 4 more for Assigned,
//! 5 s apart) is tested without clocks.

use std::time::Duration;

use podid_crds::policy::IdentityRequest;
use podid_crds::{AssignedIdentityState, AzureAssignedIdentity, AzureIdentity};

/// The retry schedule (`--retry-attempts-for-created`, `--retry-attempts-for-assigned`,
/// `--find-identity-retry-interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub created_attempts: u32,
    pub assigned_attempts: u32,
    pub interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            created_attempts: 16,
            assigned_attempts: 4,
            interval: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    pub fn total_attempts(&self) -> u32 {
        self.created_attempts + self.assigned_attempts
    }
}

/// What to do after one read of the pod's AzureAssignedIdentities.
#[derive(Clone, Debug)]
pub enum WaitStep {
    /// Serve from these identities (copies held by the assignments).
    Serve(Vec<AzureIdentity>),
    /// Sleep one interval and read again.
    Retry,
    /// Give up.
    Fail(WaitError),
}

/// Why the wait ended without an identity; the texts are the original's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error(
        "getting assigned identities for pod {pod} in CREATED state failed after {attempts} attempts, retry duration [{interval_secs}]s, error: <nil>. Check MIC pod logs for identity assignment errors"
    )]
    NotCreated {
        pod: String,
        attempts: u32,
        interval_secs: u64,
    },
    #[error(
        "getting assigned identities for pod {pod} in ASSIGNED state failed after {attempts} attempts, retry duration [{interval_secs}]s, error: <nil>. Check MIC pod logs for identity assignment errors"
    )]
    NotAssigned {
        pod: String,
        attempts: u32,
        interval_secs: u64,
    },
    /// The caller went away while we waited.
    #[error("context canceled")]
    Cancelled,
}

/// One step of the original's `listPodIDsWithRetry`. `attempt` counts from 0; `pod` is
/// `<namespace>/<name>` for messages; `assigned` are this pod's assignments.
pub fn wait_step(
    request: &IdentityRequest,
    assigned: &[AzureAssignedIdentity],
    attempt: u32,
    policy: &RetryPolicy,
    pod: &str,
) -> WaitStep {
    let group = |s: AssignedIdentityState| -> Vec<(&AzureAssignedIdentity, AzureIdentity)> {
        assigned
            .iter()
            .filter(|a| a.state() == s)
            .filter_map(|a| a.identity().map(|i| (a, i)))
            .collect()
    };
    let legacy = group(AssignedIdentityState::Legacy);
    let ready = group(AssignedIdentityState::Assigned);
    let created = group(AssignedIdentityState::Created);
    let serve = |g: Vec<(&AzureAssignedIdentity, AzureIdentity)>| {
        WaitStep::Serve(g.into_iter().map(|(_, i)| i).collect())
    };
    let created_timeout = WaitStep::Fail(WaitError::NotCreated {
        pod: pod.to_owned(),
        attempts: policy.created_attempts,
        interval_secs: policy.interval.as_secs(),
    });
    if request.is_unspecified() {
        if !legacy.is_empty() {
            return serve(legacy);
        }
        if !ready.is_empty() {
            return serve(ready);
        }
        if created.is_empty() && attempt >= policy.created_attempts {
            return created_timeout;
        }
    } else {
        let requested = |g: &[(&AzureAssignedIdentity, AzureIdentity)]| {
            g.iter().any(|(_, i)| request.names(i, None))
        };
        if requested(&legacy) {
            return serve(legacy);
        }
        if requested(&ready) {
            return serve(ready);
        }
        if !requested(&created) && attempt >= policy.created_attempts {
            return created_timeout;
        }
    }
    if attempt + 1 >= policy.total_attempts() {
        return WaitStep::Fail(WaitError::NotAssigned {
            pod: pod.to_owned(),
            attempts: policy.total_attempts(),
            interval_secs: policy.interval.as_secs(),
        });
    }
    WaitStep::Retry
}

/// Runs [`wait_step`] over fresh reads until it serves or fails, sleeping the interval between
/// reads; ends early with [`WaitError::Cancelled`] when `cancel` fires.
pub async fn wait_for_assignment(
    request: &IdentityRequest,
    policy: &RetryPolicy,
    pod: &str,
    mut read: impl FnMut() -> Vec<AzureAssignedIdentity>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<AzureIdentity>, WaitError> {
    let mut attempt = 0;
    loop {
        match wait_step(request, &read(), attempt, policy, pod) {
            WaitStep::Serve(ids) => return Ok(ids),
            WaitStep::Fail(e) => return Err(e),
            WaitStep::Retry => {}
        }
        attempt += 1;
        tokio::select! {
            _ = cancel.cancelled() => return Err(WaitError::Cancelled),
            _ = tokio::time::sleep(policy.interval) => {}
        }
    }
}
