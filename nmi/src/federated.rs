//! Federated serving: a pod's IMDS token request answered by Workload ID token exchange instead
//! of through the scale set's identity. The request is authorised exactly as in the assigned path
//! (same bindings, exceptions and records); then the agent finds the pod's workload record
//! (WorkloadMigration), the ServiceAccount of the identity's proven federated credential there
//! ([`podid_crds::migration::exchange_target`]), mints a short-lived token for that
//! ServiceAccount with TokenRequest (audience `api://AzureADTokenExchange`, bound to the pod when
//! the pod runs as that ServiceAccount) and exchanges it at Entra for the identity
//! ([`podid_azure::token::WorkloadIdentitySource`]).
//!
//! Failures are answered in IMDS's OAuth error shape ([`FederatedError::reply`]), naming the
//! record, the credential or Entra's AADSTS code, so an SDK's error says what to fix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use podid_azure::token::{AssertionSource, WorkloadIdentitySource};
use podid_crds::migration::{
    ExchangeTarget, TOKEN_EXCHANGE_AUDIENCE, exchange_target, migration_name,
};
use podid_crds::plan::pod_workload_candidates;
use podid_crds::{AzureIdentity, IdentityType};

use crate::cache::Clock;
use crate::reply::Reply;
use crate::token::TokenError;
use crate::view::{ClusterView, PodInfo};

/// Lifetime asked of each ServiceAccount token: the API server's minimum.
pub const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;

/// The pod a ServiceAccount token is bound to (it stops being valid when the pod goes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
}

/// Mints ServiceAccount tokens for the exchange audience.
pub trait ServiceAccountTokens: Send + Sync {
    fn token<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        bound: Option<&'a BoundPod>,
    ) -> BoxFuture<'a, Result<String, TokenError>>;
}

/// [`ServiceAccountTokens`] through the API server's TokenRequest, each token reused until half
/// its lifetime has passed (the exchanged access tokens are cached anyway; this spares the API
/// server when many resources are asked at once).
pub struct KubeServiceAccountTokens {
    client: kube::Client,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<TokenKey, (String, u64)>>,
}

type TokenKey = (String, String, Option<BoundPod>);

/// The most ServiceAccount tokens kept (one per pod and ServiceAccount in use on the node).
const MAX_CACHED_SERVICE_ACCOUNT_TOKENS: usize = 4096;

impl KubeServiceAccountTokens {
    pub fn new(client: kube::Client, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            clock,
            cache: Mutex::default(),
        }
    }
}

impl ServiceAccountTokens for KubeServiceAccountTokens {
    fn token<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        bound: Option<&'a BoundPod>,
    ) -> BoxFuture<'a, Result<String, TokenError>> {
        Box::pin(async move {
            let key = (
                namespace.to_owned(),
                service_account.to_owned(),
                bound.cloned(),
            );
            let now = self.clock.now_unix();
            if let Some((token, refresh_at)) = self.cache.lock().expect("token lock").get(&key)
                && now < *refresh_at
            {
                return Ok(token.clone());
            }
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()],
                    expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                    bound_object_ref: bound.map(|p| BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(p.name.clone()),
                        uid: Some(p.uid.clone()),
                    }),
                },
                ..Default::default()
            };
            let answer = api
                .create_token_request(service_account, &PostParams::default(), &request)
                .await
                .map_err(|e| {
                    let hint = match &e {
                        kube::Error::Api(s) if s.code == 403 => {
                            " (podid-nmi needs `create` on serviceaccounts/token: apply deploy/manifests/podid-nmi-federated.yaml (or the chart with federated.enabled); an admission policy may also have refused it)"
                        }
                        _ => "",
                    };
                    TokenError::Unavailable(format!(
                        "TokenRequest for ServiceAccount {namespace}/{service_account}: {e}{hint}"
                    ))
                })?;
            let token = answer.status.map(|s| s.token).unwrap_or_default();
            if token.is_empty() {
                return Err(TokenError::Unavailable(format!(
                    "TokenRequest for ServiceAccount {namespace}/{service_account} returned no token"
                )));
            }
            let refresh_at = now + (SERVICE_ACCOUNT_TOKEN_SECONDS as u64) / 2;
            let mut cache = self.cache.lock().expect("token lock");
            if cache.len() >= MAX_CACHED_SERVICE_ACCOUNT_TOKENS {
                cache.retain(|_, (_, at)| now < *at);
                if cache.len() >= MAX_CACHED_SERVICE_ACCOUNT_TOKENS {
                    cache.clear();
                }
            }
            cache.insert(key, (token.clone(), refresh_at));
            Ok(token)
        })
    }
}

/// Why a request could not be served by token exchange. Rendered as IMDS renders errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedError {
    pub status: u16,
    /// The OAuth `error` code.
    pub error: &'static str,
    pub description: String,
    /// For metrics: `no_record`, `not_proven`, `no_tenant`, `token_request`, `exchange`.
    pub result: &'static str,
}

impl FederatedError {
    fn new(status: u16, error: &'static str, result: &'static str, description: String) -> Self {
        Self {
            status,
            error,
            description,
            result,
        }
    }

    /// IMDS's error shape: `{"error": …, "error_description": …}`.
    pub fn reply(&self) -> Reply {
        Reply::oauth_error(self.status, self.error, &self.description)
    }

    /// From a failed mint or exchange.
    pub fn from_token(e: &TokenError) -> Self {
        match e {
            TokenError::Exchange { aadsts, .. } => Self::new(
                e.status(),
                if e.status() == 503 {
                    "temporarily_unavailable"
                } else {
                    "invalid_client"
                },
                "exchange",
                match aadsts {
                    Some(code) => format!("AADSTS{code}: {e}"),
                    None => e.to_string(),
                },
            ),
            TokenError::Unavailable(m) if m.starts_with("TokenRequest") => {
                Self::new(503, "temporarily_unavailable", "token_request", m.clone())
            }
            _ => Self::new(e.status(), "invalid_request", "exchange", e.to_string()),
        }
    }
}

/// Everything the agent needs to exchange: who mints ServiceAccount tokens, where Entra is.
pub struct Federation {
    pub tokens: Arc<dyn ServiceAccountTokens>,
    pub http: reqwest::Client,
    /// `--entra-authority`.
    pub authority: url::Url,
    pub clock: Arc<dyn Clock>,
}

/// The ServiceAccount whose token `identity` is exchanged with for `pod`: from the pod's
/// workload record, the first of its likely workloads
/// ([`podid_crds::plan::pod_workload_candidates`]) whose record names that workload.
pub fn target_for(
    view: &dyn ClusterView,
    pod: &PodInfo,
    identity: &AzureIdentity,
) -> Result<ExchangeTarget, FederatedError> {
    let ns = &pod.facts.namespace;
    let candidates = pod_workload_candidates(
        &pod.facts.name,
        pod.controller
            .as_ref()
            .map(|(k, n)| (k.as_str(), n.as_str())),
        pod.template_hash.as_deref(),
    );
    let record = candidates.iter().find_map(|(kind, name)| {
        view.migration(ns, &migration_name(kind, name))
            .filter(|r| &r.spec.workload.kind == kind && &r.spec.workload.name == name)
    });
    let identity_name = identity.metadata.name.as_deref().unwrap_or_default();
    let Some(record) = record else {
        let (kind, name) = &candidates[0];
        return Err(FederatedError::new(
            503,
            "temporarily_unavailable",
            "no_record",
            format!(
                "identity {identity_name} is served by token exchange, but {kind} {ns}/{name} has no WorkloadMigration yet: podid-operator's bridge writes it (is the operator running with the bridge on?)"
            ),
        ));
    };
    let status = record.status.clone().unwrap_or_default();
    let mut target = exchange_target(&status, &identity.spec.client_id).ok_or_else(|| {
        FederatedError::new(
            503,
            "temporarily_unavailable",
            "not_proven",
            format!(
                "identity {identity_name} is served by token exchange, but no federated credential of it is proven for {} {ns}/{} yet (kubectl get workloadmigration -n {ns} {}): the bridge creates and proves it",
                record.spec.workload.kind,
                record.spec.workload.name,
                migration_name(&record.spec.workload.kind, &record.spec.workload.name),
            ),
        )
    })?;
    if target.tenant_id.is_empty() {
        target.tenant_id = identity.spec.tenant_id.clone();
    }
    if target.tenant_id.is_empty() {
        return Err(FederatedError::new(
            503,
            "temporarily_unavailable",
            "no_tenant",
            format!(
                "identity {identity_name} is served by token exchange, but its Entra tenant is unknown: set tenantID on the AzureIdentity, or give podid-operator its tenant (azure.json or --tenant-id)"
            ),
        ));
    }
    Ok(target)
}

impl Federation {
    /// The exchange for `identity` as `pod`, through `target`'s ServiceAccount. Only
    /// user-assigned identities carry federated credentials.
    pub fn source(
        &self,
        pod: &PodInfo,
        identity: &AzureIdentity,
        target: ExchangeTarget,
    ) -> Result<WorkloadIdentitySource, FederatedError> {
        if identity.spec.type_ != IdentityType::UserAssignedMsi {
            return Err(FederatedError::new(
                400,
                "invalid_request",
                "not_user_assigned",
                "only user-assigned identities (type 0) can be served by token exchange".into(),
            ));
        }
        // Bound to the pod when it runs as that ServiceAccount (the API server refuses to bind
        // a token to a pod of another ServiceAccount); unbound and short-lived otherwise.
        let bound = (target.namespace == pod.facts.namespace
            && target.service_account == pod.service_account
            && !pod.uid.is_empty())
        .then(|| BoundPod {
            name: pod.facts.name.clone(),
            uid: pod.uid.clone(),
        });
        let assertion = MintedAssertion {
            tokens: self.tokens.clone(),
            namespace: target.namespace,
            service_account: target.service_account,
            bound,
        };
        Ok(WorkloadIdentitySource {
            http: self.http.clone(),
            authority: self.authority.clone(),
            tenant_id: target.tenant_id,
            client_id: identity.spec.client_id.clone(),
            assertion: Arc::new(assertion),
            clock: self.clock.clone(),
        })
    }
}

struct MintedAssertion {
    tokens: Arc<dyn ServiceAccountTokens>,
    namespace: String,
    service_account: String,
    bound: Option<BoundPod>,
}

impl AssertionSource for MintedAssertion {
    fn assertion(&self) -> BoxFuture<'_, Result<String, TokenError>> {
        self.tokens
            .token(&self.namespace, &self.service_account, self.bound.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_failures_name_the_aadsts_code_in_imds_shape() {
        let e = TokenError::Exchange {
            status: 400,
            aadsts: Some(70021),
            detail: "No matching federated identity record found.".into(),
            endpoint: "https://login/tenant/oauth2/v2.0/token".into(),
        };
        let f = FederatedError::from_token(&e);
        assert_eq!((f.status, f.error), (403, "invalid_client"));
        let reply = f.reply();
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["error"], "invalid_client");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS70021"),
            "{body}"
        );
        let throttled = TokenError::Exchange {
            status: 429,
            aadsts: None,
            detail: String::new(),
            endpoint: String::new(),
        };
        assert_eq!(FederatedError::from_token(&throttled).status, 503);
    }
}
