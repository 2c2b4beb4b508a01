//! The controller's Azure credential, rebuilt when azure.json changes. The original MIC re-reads
//! azure.json before its writes, so a service principal secret rotated on the nodes (for
//! example `az aks update-credentials`) is used without a restart; this does the same: each
//! token request checks the file's modification time and, when it changed, builds the
//! credential again from the file (flags and environment still win). A file that no longer
//! reads or parses keeps the previous credential and says why in the log.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use azure_core::auth::{AccessToken, TokenCredential};
use podid_azure::CredentialConfig;

use crate::config::ConfigError;

type Loader = Box<dyn Fn() -> Result<CredentialConfig, ConfigError> + Send + Sync>;

pub struct ReloadingCredential {
    path: PathBuf,
    load: Loader,
    http: reqwest::Client,
    current: Mutex<(Option<SystemTime>, Arc<dyn TokenCredential>)>,
}

impl std::fmt::Debug for ReloadingCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        load: impl Fn() -> Result<CredentialConfig, ConfigError> + Send + Sync + 'static,
        http: reqwest::Client,
    ) -> Result<Self, crate::config::ConfigError> {
        let stamp = modified(&path);
        let config = load()?;
        let credential = config
            .build(http.clone())
            .map_err(|e| ConfigError::Credential(e.to_string()))?;
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
            match (self.load)().and_then(|c| {
                c.build(self.http.clone())
                    .map_err(|e| ConfigError::Credential(e.to_string()))
            }) {
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

// `TokenCredential` is declared with `async_trait`; its expansion, as in podid-azure.
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
