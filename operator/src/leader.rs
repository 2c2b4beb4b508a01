//! Who may write: leader election on a coordination.k8s.io Lease, and a hands-off rule while the
//! original MIC holds its Endpoints lock (the two must never assign side by side).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Annotation of client-go's Endpoints/ConfigMap resource lock.
pub const LEGACY_LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// What to do with the Lease now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it (or the holder's lease expired): take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a fresh lease.
    Follow { holder: String },
}

/// Pure: the decision for `me` given the Lease as read at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return LeaseDecision::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let fresh =
        !holder.is_empty() && renewed.is_some_and(|r| r.as_second() + duration > now.as_second());
    if fresh {
        LeaseDecision::Follow { holder }
    } else {
        LeaseDecision::Acquire
    }
}

/// Pure: the holder of the original MIC's Endpoints lock when it is held and not expired at
/// `now` (its annotation is client-go's `LeaderElectionRecord` JSON).
pub fn legacy_holder(annotation: Option<&str>, now: Timestamp) -> Option<String> {
    let record: serde_json::Value = serde_json::from_str(annotation?).ok()?;
    let holder = record["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())?;
    let duration = record["leaseDurationSeconds"].as_i64().unwrap_or(0);
    let renewed: Timestamp = record["renewTime"].as_str()?.parse().ok()?;
    (renewed.as_second() + duration > now.as_second()).then(|| holder.to_string())
}

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// The original MIC's Endpoints lock to respect, if any.
    pub original_lock: Option<(String, String)>,
}

/// Runs the election until `shutdown`, publishing whether this replica may write now: it
/// holds the Lease and the original MIC's lock is not held. A renewal that fails for longer than
/// half the lease duration counts as lost.
pub async fn run(
    client: kube::Client,
    election: Election,
    may_write: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    run_reporting(
        client,
        election,
        may_write,
        watch::Sender::new(None),
        shutdown,
    )
    .await
}

/// Why this replica can never lead, when the API server refuses it its Lease: every replica
/// under that role stands by forever and nothing is ever written, so this is said loudly (an
/// error in the log, not ready, an Event), with the fix.
pub fn lease_refused(election: &Election, status: &kube::core::Status) -> String {
    format!(
        "podid-operator may not use its Lease {}/{} (the API server answered {}: {}), so it never leads and writes nothing. Grant its ServiceAccount get, create and update on leases (coordination.k8s.io) in namespace {}: deploy/manifests/podid-operator.yaml's Role podid-operator does (the Helm chart's too); the original MIC's ClusterRole has no such rule",
        election.namespace, election.name, status.code, status.message, election.namespace
    )
}

/// [`run`], also publishing in `problem` why this replica cannot lead (see
/// [`lease_refused`]), or `None`.
pub async fn run_reporting(
    client: kube::Client,
    election: Election,
    may_write: watch::Sender<bool>,
    problem: watch::Sender<Option<String>>,
    shutdown: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
    let retry = (election.duration / 4).max(Duration::from_millis(100));
    let renew_deadline = election.duration / 2;
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let mut legacy_logged: Option<String> = None;
    loop {
        let result = step(&leases, &election).await;
        let refused = match &result {
            Err(kube::Error::Api(s)) if s.code == 403 => Some(lease_refused(&election, s)),
            _ => None,
        };
        problem.send_if_modified(|p| {
            let changed = *p != refused;
            if changed {
                match &refused {
                    Some(why) => tracing::error!("{why}"),
                    None if p.is_some() => tracing::info!("the Lease is usable again"),
                    None => {}
                }
            }
            *p = refused.clone();
            changed
        });
        let leading = match result {
            Ok(true) => {
                last_renewal = Some(tokio::time::Instant::now());
                true
            }
            Ok(false) => {
                last_renewal = None;
                false
            }
            Err(e) => {
                if refused.is_none() {
                    tracing::warn!(error = %e, lease = %election.name, "lease renewal failed");
                }
                last_renewal.is_some_and(|t| t.elapsed() < renew_deadline)
            }
        };
        let legacy = match &election.original_lock {
            Some((ns, name)) => legacy_lock(&client, ns, name).await,
            None => None,
        };
        if legacy != legacy_logged {
            match &legacy {
                Some(holder) => tracing::warn!(
                    holder,
                    "the original aad-pod-identity MIC holds its leader lock; not writing until it is released or expires"
                ),
                None => tracing::info!("the original MIC's leader lock is free"),
            }
            legacy_logged = legacy.clone();
        }
        let allowed = leading && legacy.is_none();
        may_write.send_if_modified(|v| {
            let changed = *v != allowed;
            if changed {
                tracing::info!(leading, writing = allowed, identity = %election.identity, "leadership changed");
            }
            *v = allowed;
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    may_write.send_replace(false);
    // Hand over at once: clear our holder so the next replica need not wait for expiry.
    if let Ok(Some(mut lease)) = leases.get_opt(&election.name).await
        && lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(&election.identity)
    {
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        let _ = leases
            .replace(&election.name, &PostParams::default(), &lease)
            .await;
    }
}

/// One attempt: `Ok(true)` when we hold the Lease afterwards.
async fn step(leases: &Api<Lease>, e: &Election) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = leases.get_opt(&e.name).await?;
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &e.identity,
        now,
    );
    let ours = |prev: Option<&LeaseSpec>, acquire: bool| LeaseSpec {
        holder_identity: Some(e.identity.clone()),
        lease_duration_seconds: Some(e.duration.as_secs().max(1) as i32),
        acquire_time: if acquire {
            Some(MicroTime(now))
        } else {
            prev.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: prev
            .and_then(|p| p.lease_transitions)
            .map(|t| t + i32::from(acquire))
            .or(Some(0)),
        ..LeaseSpec::default()
    };
    match (decision, current) {
        (LeaseDecision::Follow { .. }, _) => Ok(false),
        (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(e.name.clone()),
                    namespace: Some(e.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(ours(None, true)),
            };
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
        (d, Some(mut lease)) => {
            // resourceVersion is kept: a concurrent taker makes this a 409, not a double leader.
            lease.spec = Some(ours(lease.spec.as_ref(), d == LeaseDecision::Acquire));
            match leases
                .replace(&e.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
    }
}

async fn legacy_lock(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(ep) => legacy_holder(
            ep.as_ref()
                .and_then(|e| e.metadata.annotations.as_ref())
                .and_then(|a| a.get(LEGACY_LEADER_ANNOTATION))
                .map(String::as_str),
            Timestamp::now(),
        ),
        Err(e) => {
            // Cannot tell: stay safe and do not write.
            tracing::warn!(error = %e, "reading the original MIC's leader lock");
            Some("unknown (lock unreadable)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(holder: &str, renewed: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(ts(renewed))),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_decisions() {
        let now = ts("2026-01-01T00:00:10Z");
        assert_eq!(decide(None, "me", now), LeaseDecision::Acquire);
        assert_eq!(
            decide(Some(&spec("me", "2025-01-01T00:00:00Z", 15)), "me", now),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&spec("other", "2026-01-01T00:00:00Z", 15)), "me", now),
            LeaseDecision::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&spec("other", "2026-01-01T00:00:00Z", 5)), "me", now),
            LeaseDecision::Acquire,
            "expired"
        );
        assert_eq!(
            decide(Some(&spec("", "2026-01-01T00:00:09Z", 15)), "me", now),
            LeaseDecision::Acquire,
            "released"
        );
    }

    #[test]
    fn the_original_mics_lock() {
        let now = ts("2026-01-01T00:00:10Z");
        let record = |holder: &str, renewed: &str| {
            format!(
                r#"{{"holderIdentity":"{holder}","leaseDurationSeconds":15,"acquireTime":"2026-01-01T00:00:00Z","renewTime":"{renewed}","leaderTransitions":3}}"#
            )
        };
        assert_eq!(
            legacy_holder(Some(&record("mic-1", "2026-01-01T00:00:05Z")), now),
            Some("mic-1".into())
        );
        assert_eq!(
            legacy_holder(Some(&record("mic-1", "2025-12-31T23:59:00Z")), now),
            None,
            "stale"
        );
        assert_eq!(
            legacy_holder(Some(&record("", "2026-01-01T00:00:05Z")), now),
            None
        );
        assert_eq!(legacy_holder(None, now), None);
        assert_eq!(legacy_holder(Some("not json"), now), None);
    }
}
