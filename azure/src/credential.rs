//! The controller's own Azure credential, from configuration: a service principal secret
//! (`azure_identity::ClientSecretCredential`, against a configurable authority host) or a managed
//! identity from IMDS. azure_identity 0.21 cannot ask IMDS for a user-assigned identity by client
//! ID nor use another IMDS address, so [`ImdsCredential`] asks IMDS through the node agent's
//! [`crate::token::ImdsTokenSource`]. [`ReloadingCredential`] rebuilds the credential when
//! azure.json changes. The credentials need feature `arm`; [`CredentialConfig`] does not.

#[cfg(feature = "arm")]
pub use sdk::{ImdsCredential, ReloadingCredential};
use std::fmt;

/// Where the controller's token for ARM comes from.
#[derive(Clone)]
pub enum CredentialConfig {
    /// A service principal with a client secret.
    ClientSecret {
        authority_host: String,
        tenant_id: String,
        client_id: String,
        secret: String,
    },
    /// A managed identity from IMDS: system-assigned, or the user-assigned one with `client_id`.
    ManagedIdentity {
        imds_endpoint: String,
        client_id: Option<String>,
    },
}

impl fmt::Debug for CredentialConfig {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientSecret {
                authority_host,
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("authority_host", authority_host)
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            Self::ManagedIdentity {
                imds_endpoint,
                client_id,
            } => f
                .debug_struct("ManagedIdentity")
                .field("imds_endpoint", imds_endpoint)
                .field("client_id", client_id)
                .finish(),
        }
    }
}

#[cfg(feature = "arm")]
mod sdk {
    use std::fmt;
    use std::future::Future;
    use std::path::PathBuf;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use azure_core::auth::{AccessToken, Secret, TokenCredential};

    use super::CredentialConfig;
    use crate::token::{ImdsTokenSource, SystemClock, TokenSource};

    impl CredentialConfig {
        /// The credential, using `http` for its requests.
        pub fn build(
            &self,
            http: reqwest::Client,
        ) -> Result<Arc<dyn TokenCredential>, crate::Error> {
            Ok(match self {
                Self::ClientSecret {
                    authority_host,
                    tenant_id,
                    client_id,
                    secret,
                } => Arc::new(azure_identity::ClientSecretCredential::new(
                    Arc::new(http),
                    azure_core::Url::parse(authority_host).map_err(|e| {
                        crate::Error::Credential(format!("authority host {authority_host}: {e}"))
                    })?,
                    tenant_id.clone(),
                    client_id.clone(),
                    secret.clone(),
                )),
                Self::ManagedIdentity {
                    imds_endpoint,
                    client_id,
                } => Arc::new(ImdsCredential {
                    source: ImdsTokenSource {
                        http,
                        endpoint: url::Url::parse(imds_endpoint).map_err(|e| {
                            crate::Error::Credential(format!("IMDS endpoint {imds_endpoint}: {e}"))
                        })?,
                        client_id: client_id.clone(),
                        clock: Arc::new(SystemClock),
                    },
                    cache: Mutex::new(None),
                }),
            })
        }
    }

    /// A managed-identity token from IMDS (`GET /metadata/identity/oauth2/token`), asked by the
    /// same [`ImdsTokenSource`] the node agent uses, cached until five minutes before it expires.
    pub struct ImdsCredential {
        source: ImdsTokenSource,
        cache: Mutex<Option<(String, AccessToken)>>,
    }

    impl fmt::Debug for ImdsCredential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ImdsCredential")
                .field("endpoint", &self.source.endpoint.as_str())
                .field("client_id", &self.source.client_id)
                .finish_non_exhaustive()
        }
    }

    const REFRESH_MARGIN: Duration = Duration::from_secs(300);

    impl ImdsCredential {
        async fn fetch(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
            let err =
                |m: String| azure_core::Error::message(azure_core::error::ErrorKind::Credential, m);
            let resource = scopes
                .first()
                .map(|s| s.trim_end_matches("/.default").to_string())
                .ok_or_else(|| err("no scope".into()))?;
            if let Some((r, t)) = self.cache.lock().expect("lock").as_ref()
                && *r == resource
                && t.expires_on - time::OffsetDateTime::now_utc() > REFRESH_MARGIN
            {
                return Ok(t.clone());
            }
            let token = self
                .source
                .fetch(&resource)
                .await
                .map_err(|e| err(format!("IMDS: {e}")))?;
            let expires_on = i64::try_from(token.expires_on)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or_else(|| {
                    err(format!(
                        "IMDS: expires_on {} out of range",
                        token.expires_on
                    ))
                })?;
            let t = AccessToken::new(Secret::new(token.access_token), expires_on);
            *self.cache.lock().expect("lock") = Some((resource, t.clone()));
            Ok(t)
        }
    }

    // `TokenCredential` is declared with `async_trait`; this is its expansion, written out so the
    // crate needs no macro dependency.
    impl TokenCredential for ImdsCredential {
        fn get_token<'a, 'b, 'c, 'f>(
            &'a self,
            scopes: &'b [&'c str],
        ) -> Pin<Box<dyn Future<Output = azure_core::Result<AccessToken>> + Send + 'f>>
        where
            'a: 'f,
            'b: 'f,
            'c: 'f,
            Self: 'f,
        {
            Box::pin(self.fetch(scopes))
        }

        fn clear_cache<'a, 'f>(
            &'a self,
        ) -> Pin<Box<dyn Future<Output = azure_core::Result<()>> + Send + 'f>>
        where
            'a: 'f,
            Self: 'f,
        {
            *self.cache.lock().expect("lock") = None;
            Box::pin(async { Ok(()) })
        }
    }

    /// The controller's Azure credential, rebuilt when azure.json changes. The original MIC re-reads
    /// azure.json before its writes, so a service principal secret rotated on the nodes (for
    /// example `az aks update-credentials`) is used without a restart; this does the same: each
    /// token request checks the file's modification time and, when it changed, builds the
    /// credential again from the file (flags and environment still win). A file that no longer
    /// reads or parses keeps the previous credential and says why in the log.
    pub struct ReloadingCredential {
        path: PathBuf,
        load: Loader,
        http: reqwest::Client,
        current: Mutex<(Option<SystemTime>, Arc<dyn TokenCredential>)>,
    }

    type Loader = Box<dyn Fn() -> Result<CredentialConfig, crate::Error> + Send + Sync>;

    impl fmt::Debug for ReloadingCredential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ReloadingCredential")
                .field("path", &self.path)
                .finish_non_exhaustive()
        }
    }

    fn modified(path: &PathBuf) -> Option<SystemTime> {
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    impl ReloadingCredential {
        /// `load` resolves the credential configuration from `path` (and flags/environment).
        pub fn new(
            path: PathBuf,
            load: impl Fn() -> Result<CredentialConfig, crate::Error> + Send + Sync + 'static,
            http: reqwest::Client,
        ) -> Result<Self, crate::Error> {
            let stamp = modified(&path);
            let credential = load()?.build(http.clone())?;
            Ok(Self {
                path,
                load: Box::new(load),
                http,
                current: Mutex::new((stamp, credential)),
            })
        }

        /// The credential to use now, rebuilt first if the file changed since it was built.
        fn credential(&self) -> Arc<dyn TokenCredential> {
            let stamp = modified(&self.path);
            let mut current = self.current.lock().expect("credential lock");
            if stamp.is_some() && stamp != current.0 {
                match (self.load)().and_then(|c| c.build(self.http.clone())) {
                    Ok(fresh) => {
                        tracing::info!(path = %self.path.display(), "cloud config changed; Azure credential rebuilt");
                        *current = (stamp, fresh);
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "cloud config changed but cannot be used; keeping the previous credential");
                        current.0 = stamp;
                    }
                }
            }
            current.1.clone()
        }
    }

    // `TokenCredential` is declared with `async_trait`; its expansion, as for [`ImdsCredential`].
    impl TokenCredential for ReloadingCredential {
        fn get_token<'a, 'b, 'c, 'f>(
            &'a self,
            scopes: &'b [&'c str],
        ) -> Pin<Box<dyn Future<Output = azure_core::Result<AccessToken>> + Send + 'f>>
        where
            'a: 'f,
            'b: 'f,
            'c: 'f,
            Self: 'f,
        {
            let credential = self.credential();
            Box::pin(async move { credential.get_token(scopes).await })
        }

        fn clear_cache<'a, 'f>(
            &'a self,
        ) -> Pin<Box<dyn Future<Output = azure_core::Result<()>> + Send + 'f>>
        where
            'a: 'f,
            Self: 'f,
        {
            let credential = self.credential();
            Box::pin(async move { credential.clear_cache().await })
        }
    }
}
