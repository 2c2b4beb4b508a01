//! [`MsiCredentials`]: a user-assigned identity's federated identity credentials through the
//! Azure SDK's `azure_mgmt_msi` client (feature `arm`). This is what the bridge writes with;
//! [`crate::Arm`]'s REST implementation of the same trait remains for callers without it.

use std::sync::Arc;
use std::time::Instant;

use azure_core::auth::TokenCredential;
use azure_mgmt_msi::package_2023_01_31::Client;
use azure_mgmt_msi::package_2023_01_31::models::{
    FederatedIdentityCredential, FederatedIdentityCredentialProperties,
};
use futures::StreamExt;

use crate::{ArmObserver, Error, FederatedCredential, FederatedCredentials};

/// Federated credentials through `azure_mgmt_msi`, with its pipeline's retries (429 with
/// `Retry-After`, 5xx) and each call reported to `observer` as `fic_list`, `fic_put` or
/// `fic_delete`, labelled as [`crate::Arm`]'s calls are.
#[derive(Clone)]
pub struct MsiCredentials {
    client: Client,
    pub observer: Option<ArmObserver>,
}

impl MsiCredentials {
    /// `endpoint` is ARM's base URL; `audience` its token audience
    /// (`https://management.azure.com` in the public cloud). The SDK's requests go through
    /// `http`, the caller's client: its extra CA certificates (Azure Stack, an emulator) and its
    /// request timeout apply to them as to every other ARM call.
    pub fn new(
        endpoint: &str,
        audience: &str,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Result<Self, Error> {
        let url = azure_core::Url::parse(endpoint)
            .map_err(|e| Error::Credential(format!("ARM endpoint {endpoint}: {e}")))?;
        let scope = format!("{}/.default", audience.trim_end_matches('/'));
        let client = Client::builder(credential)
            .transport(azure_core::TransportOptions::new(Arc::new(http)))
            .endpoint(url)
            .scopes(&[scope.as_str()])
            .build()
            .map_err(|e| Error::Credential(format!("ARM client: {e}")))?;
        Ok(Self {
            client,
            observer: None,
        })
    }

    fn observe<T>(&self, operation: &'static str, started: Instant, r: &Result<T, Error>) {
        if let Some(o) = &self.observer {
            let label = match r {
                Ok(_) => "ok",
                Err(e) => e.metric_label(),
            };
            o(operation, label, started.elapsed());
        }
    }
}

/// (subscription, resource group, name) of a user-assigned identity's ARM ID.
fn parts(identity_id: &str) -> Result<(String, String, String), Error> {
    let segs: Vec<&str> = identity_id.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        [s, sub, r, rg, p, ns, t, name]
            if s.eq_ignore_ascii_case("subscriptions")
                && r.eq_ignore_ascii_case("resourcegroups")
                && p.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("Microsoft.ManagedIdentity")
                && t.eq_ignore_ascii_case("userAssignedIdentities") =>
        {
            Ok((sub.to_string(), rg.to_string(), name.to_string()))
        }
        _ => Err(Error::Arm {
            status: 400,
            code: "InvalidResourceId".into(),
            message: format!("{identity_id} is not the ARM ID of a user-assigned identity"),
            retry_after: None,
        }),
    }
}

/// The SDK's error as ARM's: the HTTP status and error code when there was an answer.
fn arm_error(e: azure_core::Error) -> Error {
    match e.kind() {
        azure_core::error::ErrorKind::HttpResponse { status, error_code } => Error::Arm {
            status: u16::from(*status),
            code: error_code.clone().unwrap_or_default(),
            message: e.to_string(),
            retry_after: None,
        },
        _ => Error::Arm {
            status: 0,
            code: "Transport".into(),
            message: e.to_string(),
            retry_after: None,
        },
    }
}

impl MsiCredentials {
    /// The user-assigned identity `identity_id` (`GET` through `azure_mgmt_msi`, reported as
    /// `identity_get`): its ARM id as ARM spells it, client ID and principal ID. An ID that is
    /// not a user-assigned identity's is refused without a call (400 `InvalidResourceId`); one
    /// that does not exist is ARM's 404.
    pub async fn user_assigned_identity(
        &self,
        identity_id: &str,
    ) -> Result<crate::UserAssignedIdentity, Error> {
        let started = Instant::now();
        let r = async {
            let (sub, rg, name) = parts(identity_id)?;
            let i = self
                .client
                .user_assigned_identities_client()
                .get(sub, rg, name)
                .await
                .map_err(arm_error)?;
            let p = i.properties.unwrap_or_default();
            let missing = |what: &str| Error::Arm {
                status: 200,
                code: "InvalidResponse".into(),
                message: format!("{identity_id}: ARM returned no {what}"),
                retry_after: None,
            };
            Ok(crate::UserAssignedIdentity {
                id: i
                    .tracked_resource
                    .resource
                    .id
                    .unwrap_or_else(|| identity_id.to_owned()),
                client_id: p.client_id.ok_or_else(|| missing("clientId"))?,
                principal_id: p.principal_id.ok_or_else(|| missing("principalId"))?,
            })
        }
        .await;
        self.observe("identity_get", started, &r);
        r
    }
}

impl FederatedCredentials for MsiCredentials {
    async fn list(&self, identity_id: &str) -> Result<Vec<FederatedCredential>, Error> {
        let started = Instant::now();
        let r = async {
            let (sub, rg, name) = parts(identity_id)?;
            let mut pages = self
                .client
                .federated_identity_credentials_client()
                .list(sub, rg, name)
                .into_stream();
            let mut out = Vec::new();
            while let Some(page) = pages.next().await {
                for f in page.map_err(arm_error)?.value {
                    let p = f.properties.unwrap_or_else(|| {
                        FederatedIdentityCredentialProperties::new(
                            String::new(),
                            String::new(),
                            Vec::new(),
                        )
                    });
                    out.push(FederatedCredential {
                        name: f.proxy_resource.resource.name.unwrap_or_default(),
                        issuer: p.issuer,
                        subject: p.subject,
                        audience: p.audiences.into_iter().next().unwrap_or_default(),
                    });
                }
            }
            Ok(out)
        }
        .await;
        self.observe("fic_list", started, &r);
        r
    }

    async fn put(&self, identity_id: &str, c: &FederatedCredential) -> Result<(), Error> {
        let started = Instant::now();
        let r = async {
            let (sub, rg, name) = parts(identity_id)?;
            let body = FederatedIdentityCredential {
                properties: Some(FederatedIdentityCredentialProperties::new(
                    c.issuer.clone(),
                    c.subject.clone(),
                    vec![c.audience.clone()],
                )),
                ..Default::default()
            };
            self.client
                .federated_identity_credentials_client()
                .create_or_update(sub, rg, name, c.name.clone(), body)
                .await
                .map(|_| ())
                .map_err(arm_error)
        }
        .await;
        self.observe("fic_put", started, &r);
        r
    }

    async fn delete(&self, identity_id: &str, credential: &str) -> Result<(), Error> {
        let started = Instant::now();
        let r = async {
            let (sub, rg, name) = parts(identity_id)?;
            self.client
                .federated_identity_credentials_client()
                .delete(sub, rg, name, credential)
                .send()
                .await
                .map(|_| ())
                .map_err(arm_error)
        }
        .await;
        self.observe("fic_delete", started, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::parts;

    #[test]
    fn identity_ids_split_into_their_parts() {
        assert_eq!(
            parts("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id").unwrap(),
            ("s".into(), "rg".into(), "id".into())
        );
        assert!(parts("/subscriptions/s/resourceGroups/rg").is_err());
        assert!(
            parts(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
            )
            .is_err()
        );
    }
}
