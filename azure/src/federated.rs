//! Writing a user-assigned identity's federated credentials the way Azure accepts them. Azure
//! refuses a write that overlaps another write to the same identity (409
//! `ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`), so
//! [`SerialCredentials`] (feature `arm`) makes one write at a time per identity and retries a
//! 409 with backoff; and Azure refuses a second credential with an issuer and subject another
//! one of the identity already has, which [`conflicting_credential`] finds before writing.

use crate::FederatedCredential;

#[cfg(feature = "arm")]
pub use serial::SerialCredentials;

/// The credential among `existing` (an identity's credentials, as listed) that `candidate`
/// would duplicate: another credential (a different name; ARM names compare case-insensitively)
/// with the same issuer and subject, compared byte for byte (`https://issuer.example` and
/// `https://issuer.example/` differ, as they do for Azure). Azure refuses such a write with 400
/// "Issuer and subject combination already exists". `None` when the write may go ahead,
/// including when `candidate` replaces its own namesake.
pub fn conflicting_credential<'a>(
    existing: &'a [FederatedCredential],
    candidate: &FederatedCredential,
) -> Option<&'a FederatedCredential> {
    existing.iter().find(|c| {
        !c.name.eq_ignore_ascii_case(&candidate.name)
            && c.issuer == candidate.issuer
            && c.subject == candidate.subject
    })
}

#[cfg(feature = "arm")]
mod serial {
    use std::collections::HashMap;
    use std::future::Future;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::{Error, FederatedCredential, FederatedCredentials, RetryPolicy};

    /// A [`FederatedCredentials`] whose writes (put, delete) to one identity go one at a time:
    /// a write waits for the one before it on the same identity (an async mutex per identity,
    /// ARM ids compared case-insensitively); writes to different identities and all reads
    /// proceed in parallel. A write still refused with 409 (another writer outside this process
    /// holds the identity) is retried per [`SerialCredentials::conflict_retry`], holding the
    /// identity's turn meanwhile. Throttling (429 with `Retry-After`) and 5xx are the inner
    /// implementation's to retry, as [`crate::Arm`] does with its [`RetryPolicy`].
    pub struct SerialCredentials<F> {
        inner: F,
        locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
        /// How a 409 is retried: `attempts` in all, backoff from `base_delay` doubling up to
        /// `max_delay`, or the answer's `Retry-After` when it is at most `max_retry_after`.
        pub conflict_retry: RetryPolicy,
    }

    impl<F: FederatedCredentials> SerialCredentials<F> {
        /// Wraps `inner`; 409s are retried up to 6 attempts in all, from 2 s doubling to 30 s.
        pub fn new(inner: F) -> Self {
            Self {
                inner,
                locks: Mutex::new(HashMap::new()),
                conflict_retry: RetryPolicy {
                    attempts: 6,
                    base_delay: Duration::from_secs(2),
                    max_delay: Duration::from_secs(30),
                    max_retry_after: Duration::from_secs(60),
                },
            }
        }

        /// The wrapped implementation.
        pub fn inner(&self) -> &F {
            &self.inner
        }

        /// The wait before attempt `attempt + 1` after `err`, or `None` to give up: only a 409
        /// is retried here.
        fn conflict_delay(&self, attempt: u32, err: &Error) -> Option<Duration> {
            let p = &self.conflict_retry;
            match err {
                Error::Arm {
                    status: 409,
                    retry_after,
                    ..
                } if attempt + 1 < p.attempts => Some(
                    retry_after
                        .map(Duration::from_secs)
                        .filter(|d| *d <= p.max_retry_after)
                        .unwrap_or_else(|| p.backoff(attempt)),
                ),
                _ => None,
            }
        }

        /// Runs `write` in `identity_id`'s turn, retrying 409s.
        async fn serialised<Fut>(
            &self,
            operation: &'static str,
            identity_id: &str,
            write: impl Fn() -> Fut,
        ) -> Result<(), Error>
        where
            Fut: Future<Output = Result<(), Error>>,
        {
            let key = identity_id.to_ascii_lowercase();
            let lock = self
                .locks
                .lock()
                .expect("federated credential locks")
                .entry(key.clone())
                .or_default()
                .clone();
            let result = {
                let _turn = lock.lock().await;
                let mut attempt = 0;
                loop {
                    match write().await {
                        Err(e) => match self.conflict_delay(attempt, &e) {
                            Some(wait) => {
                                tracing::debug!(
                                    operation,
                                    identity = identity_id,
                                    attempt,
                                    ?wait,
                                    "federated credential write refused as concurrent; retrying"
                                );
                                tokio::time::sleep(wait).await;
                                attempt += 1;
                            }
                            None => break Err(e),
                        },
                        ok => break ok,
                    }
                }
            };
            // Forget the identity's lock when no one else holds or waits for it (clones are
            // only taken under the map's lock, so none can appear meanwhile).
            let mut locks = self.locks.lock().expect("federated credential locks");
            if Arc::strong_count(&lock) == 2 {
                locks.remove(&key);
            }
            result
        }

        /// Identities with a write in progress or waiting (for tests).
        #[cfg(test)]
        fn tracked(&self) -> usize {
            self.locks.lock().expect("federated credential locks").len()
        }
    }

    impl<F: FederatedCredentials> FederatedCredentials for SerialCredentials<F> {
        async fn list(&self, identity_id: &str) -> Result<Vec<FederatedCredential>, Error> {
            self.inner.list(identity_id).await
        }

        async fn put(
            &self,
            identity_id: &str,
            credential: &FederatedCredential,
        ) -> Result<(), Error> {
            self.serialised("fic_put", identity_id, || {
                self.inner.put(identity_id, credential)
            })
            .await
        }

        async fn delete(&self, identity_id: &str, name: &str) -> Result<(), Error> {
            self.serialised("fic_delete", identity_id, || {
                self.inner.delete(identity_id, name)
            })
            .await
        }
    }

    #[cfg(test)]
    mod tests {
        use std::sync::atomic::{AtomicU32, Ordering};

        use super::*;

        /// Records how many writes overlap, per identity and in all; refuses the first
        /// `conflicts` writes with 409 (and `status` thereafter when set).
        #[derive(Default)]
        struct Fake {
            active: Mutex<HashMap<String, usize>>,
            max_per_identity: AtomicU32,
            max_total: AtomicU32,
            conflicts: AtomicU32,
            status: Option<u16>,
            writes: AtomicU32,
        }

        fn arm_error(status: u16, retry_after: Option<u64>) -> Error {
            Error::Arm {
                status,
                code: "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity".into(),
                message: "m".into(),
                retry_after,
            }
        }

        impl Fake {
            async fn write(&self, identity_id: &str) -> Result<(), Error> {
                self.writes.fetch_add(1, Ordering::SeqCst);
                {
                    let mut a = self.active.lock().unwrap();
                    *a.entry(identity_id.to_string()).or_default() += 1;
                    let per = a.values().copied().max().unwrap_or(0) as u32;
                    let total = a.values().sum::<usize>() as u32;
                    self.max_per_identity.fetch_max(per, Ordering::SeqCst);
                    self.max_total.fetch_max(total, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                *self
                    .active
                    .lock()
                    .unwrap()
                    .get_mut(identity_id)
                    .expect("active") -= 1;
                if self
                    .conflicts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                    .is_ok()
                {
                    return Err(arm_error(409, None));
                }
                match self.status {
                    Some(s) => Err(arm_error(s, None)),
                    None => Ok(()),
                }
            }
        }

        impl FederatedCredentials for Fake {
            async fn list(&self, _: &str) -> Result<Vec<FederatedCredential>, Error> {
                Ok(Vec::new())
            }
            async fn put(&self, identity_id: &str, _: &FederatedCredential) -> Result<(), Error> {
                self.write(identity_id).await
            }
            async fn delete(&self, identity_id: &str, _: &str) -> Result<(), Error> {
                self.write(identity_id).await
            }
        }

        fn fic(name: &str) -> FederatedCredential {
            FederatedCredential {
                name: name.into(),
                issuer: "https://issuer.example".into(),
                subject: format!("system:serviceaccount:ns:{name}"),
                audience: "api://AzureADTokenExchange".into(),
            }
        }

        fn fast(fake: Fake) -> SerialCredentials<Fake> {
            let mut s = SerialCredentials::new(fake);
            s.conflict_retry.base_delay = Duration::from_millis(1);
            s.conflict_retry.max_delay = Duration::from_millis(5);
            s
        }

        #[tokio::test]
        async fn writes_to_one_identity_take_turns_and_other_identities_run_alongside() {
            let s = fast(Fake::default());
            let creds: Vec<FederatedCredential> = (0..4).map(|i| fic(&format!("c{i}"))).collect();
            let writes = creds.iter().enumerate().map(|(i, c)| {
                let s = &s;
                async move {
                    // "ID-A" and "id-a" are one identity.
                    let id = ["/ids/ID-A", "/ids/id-a", "/ids/b", "/ids/c"][i];
                    if i % 2 == 0 {
                        s.put(id, c).await
                    } else {
                        s.delete(id, &c.name).await
                    }
                }
            });
            for r in futures::future::join_all(writes).await {
                r.unwrap();
            }
            let fake = s.inner();
            assert_eq!(fake.writes.load(Ordering::SeqCst), 4);
            assert_eq!(
                fake.max_total.load(Ordering::SeqCst),
                3,
                "three identities in parallel"
            );
            assert_eq!(s.tracked(), 0, "no lock outlives its writes");
            // One identity's writes never overlapped (case-insensitive ids).
            let s = fast(Fake::default());
            let writes = creds.iter().map(|c| s.put("/ids/a", c));
            for r in futures::future::join_all(writes).await {
                r.unwrap();
            }
            assert_eq!(s.inner().max_per_identity.load(Ordering::SeqCst), 1);
            assert_eq!(s.inner().writes.load(Ordering::SeqCst), 4);
        }

        #[tokio::test]
        async fn conflicts_are_retried_a_bounded_number_of_times() {
            let s = fast(Fake {
                conflicts: AtomicU32::new(3),
                ..Default::default()
            });
            s.put("/ids/a", &fic("c")).await.unwrap();
            assert_eq!(s.inner().writes.load(Ordering::SeqCst), 4);

            let s = fast(Fake {
                conflicts: AtomicU32::new(100),
                ..Default::default()
            });
            let err = s.delete("/ids/a", "c").await.unwrap_err();
            assert!(matches!(err, Error::Arm { status: 409, .. }), "{err}");
            assert_eq!(
                s.inner().writes.load(Ordering::SeqCst),
                6,
                "attempts in all"
            );

            let s = fast(Fake {
                status: Some(400),
                ..Default::default()
            });
            let err = s.put("/ids/a", &fic("c")).await.unwrap_err();
            assert!(matches!(err, Error::Arm { status: 400, .. }), "{err}");
            assert_eq!(s.inner().writes.load(Ordering::SeqCst), 1, "400: no retry");
        }

        #[test]
        fn a_conflict_waits_for_retry_after_when_sent() {
            let s = SerialCredentials::new(Fake::default());
            assert_eq!(
                s.conflict_delay(0, &arm_error(409, Some(7))),
                Some(Duration::from_secs(7))
            );
            assert_eq!(
                s.conflict_delay(0, &arm_error(409, Some(3600))),
                Some(Duration::from_secs(2)),
                "too long a Retry-After: our own backoff"
            );
            assert_eq!(
                s.conflict_delay(2, &arm_error(409, None)),
                Some(Duration::from_secs(8))
            );
            assert_eq!(s.conflict_delay(5, &arm_error(409, None)), None);
            assert_eq!(s.conflict_delay(0, &arm_error(429, Some(1))), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fic(name: &str, issuer: &str, subject: &str) -> FederatedCredential {
        FederatedCredential {
            name: name.into(),
            issuer: issuer.into(),
            subject: subject.into(),
            audience: "api://AzureADTokenExchange".into(),
        }
    }

    const ISS: &str = "https://oidc.example/cluster";
    const SUB: &str = "system:serviceaccount:payments:checkout";

    #[test]
    fn another_credential_with_the_same_issuer_and_subject_conflicts() {
        let existing = [
            fic("payments-checkout", ISS, SUB),
            fic("other", ISS, "system:serviceaccount:payments:other"),
        ];
        assert_eq!(
            conflicting_credential(&existing, &fic("podid-checkout", ISS, SUB)),
            Some(&existing[0])
        );
        assert_eq!(conflicting_credential(&[], &fic("a", ISS, SUB)), None);
    }

    #[test]
    fn rewriting_the_same_credential_is_no_conflict() {
        let existing = [fic("payments-checkout", ISS, SUB)];
        for name in ["payments-checkout", "Payments-Checkout"] {
            assert_eq!(
                conflicting_credential(&existing, &fic(name, ISS, SUB)),
                None,
                "{name}"
            );
        }
    }

    #[test]
    fn issuer_and_subject_compare_byte_for_byte() {
        let existing = [fic("a", ISS, SUB)];
        for (issuer, subject) in [
            (format!("{ISS}/"), SUB.to_string()),
            (ISS.to_uppercase(), SUB.to_string()),
            (ISS.to_string(), SUB.to_uppercase()),
            (ISS.to_string(), format!("{SUB} ")),
        ] {
            assert_eq!(
                conflicting_credential(&existing, &fic("b", &issuer, &subject)),
                None,
                "{issuer} {subject}"
            );
        }
        // The trailing slash matters both ways.
        let existing = [fic("a", &format!("{ISS}/"), SUB)];
        assert_eq!(conflicting_credential(&existing, &fic("b", ISS, SUB)), None);
        assert!(conflicting_credential(&existing, &fic("b", &format!("{ISS}/"), SUB)).is_some());
    }
}
