//! The one assembly of the agent: what the binary wires from its flags (clock, metrics, token
//! cache, HTTP client, server config, token sources), with the parts tests replace — the cluster
//! view, the token sources, the server config — passed in or overridden.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::{Clock, DEFAULT_MAX_BYTES, SystemClock, TokenCache};
use crate::cluster::{SECRET_SWEEP_INTERVAL, SecretCache};
use crate::config::Flags;
use crate::federated::{Federation, KubeServiceAccountTokens, ServiceAccountTokens};
use crate::metrics::Metrics;
use crate::server::{Agent, ServerConfig};
use crate::token::{AzureCredentials, Credentials, http_client};
use crate::view::{ClusterView, SecretSource};

/// Builds an [`Agent`] from the command-line flags as the binary does.
pub struct AgentBuilder {
    flags: Flags,
    /// The server's switches: `flags.server_config()` unless replaced.
    pub config: ServerConfig,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// How soon a Secret watch closes once no identity references its Secret.
    pub secret_sweep: Duration,
    /// Who mints ServiceAccount tokens for token exchange (`--federated`).
    pub service_account_tokens: Option<Arc<dyn ServiceAccountTokens>>,
}

impl AgentBuilder {
    pub fn new(flags: &Flags, shutdown: CancellationToken) -> Self {
        Self {
            config: flags.server_config(),
            flags: flags.clone(),
            clock: Arc::new(SystemClock),
            metrics: Metrics::new(),
            shutdown,
            secret_sweep: SECRET_SWEEP_INTERVAL,
            service_account_tokens: None,
        }
    }

    /// With `--federated`: ServiceAccount tokens minted through the API server's TokenRequest.
    pub fn kube_federation(mut self, client: ::kube::Client) -> Self {
        if self.flags.federated {
            self.service_account_tokens = Some(Arc::new(KubeServiceAccountTokens::new(
                client,
                self.clock.clone(),
            )));
        }
        self
    }

    /// The production token sources: IMDS, and Entra with Secrets read through `client`
    /// (watched unless `--watch-secrets=false`; a watch closes within [`Self::secret_sweep`] of
    /// its Secret no longer being referenced by any identity in `view`).
    pub fn kube_credentials(
        &self,
        client: ::kube::Client,
        view: Arc<dyn ClusterView>,
    ) -> Result<AzureCredentials, String> {
        let secrets = SecretCache::new(client, self.shutdown.clone())
            .with_metrics(self.metrics.clone())
            .with_max_watches(self.flags.max_secret_watches);
        let secrets = if self.flags.watch_secrets {
            secrets.close_unreferenced_every(view, self.secret_sweep);
            secrets
        } else {
            secrets.without_watches()
        };
        self.credentials_with(Arc::new(secrets))
    }

    /// The production token sources with Secrets read from `secrets`.
    pub fn credentials_with(
        &self,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<AzureCredentials, String> {
        Ok(AzureCredentials {
            http: http_client(),
            imds_endpoint: self.flags.imds_endpoint(),
            policy: self.flags.entra_policy()?,
            secrets,
            clock: self.clock.clone(),
        })
    }

    /// The agent over `view`, its tokens from `credentials`; `/healthz` says `Not Active` until
    /// [`Agent::initialized`] is set.
    pub fn build(self, view: Arc<dyn ClusterView>, credentials: Arc<dyn Credentials>) -> Agent {
        let flags = &self.flags;
        let cache = if flags.token_refresh_margin_sec == 0 {
            TokenCache::disabled()
        } else {
            TokenCache::new(
                self.clock.clone(),
                Duration::from_secs(flags.token_refresh_margin_sec),
            )
            .with_bounds(flags.token_cache_max_entries, DEFAULT_MAX_BYTES)
        };
        let federation = self
            .service_account_tokens
            .filter(|_| self.config.serving.federated)
            .map(|tokens| Federation {
                tokens,
                http: http_client(),
                authority: flags.entra_authority.clone(),
                clock: self.clock.clone(),
            });
        Agent {
            config: self.config,
            view,
            credentials,
            federation,
            cache,
            metrics: self.metrics,
            clock: self.clock,
            http: http_client(),
            initialized: AtomicBool::new(false),
            shutdown: self.shutdown,
        }
    }
}
