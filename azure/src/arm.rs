//! [`Arm`]: [`NodePoolIdentities`] and [`FederatedCredentials`] over ARM's REST API, with an SDK
//! credential (feature `arm`).

use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::TokenCredential;
use podid_crds::provider::AssignmentTarget;
use serde_json::{Value, json};

use crate::{
    AKS_API_VERSION, AUTHORIZATION_API_VERSION, ArmObserver, COMPUTE_API_VERSION, Error,
    FederatedCredential, FederatedCredentials, IdentityState, MSI_API_VERSION, NodePoolIdentities,
    RetryPolicy, RoleAssignment, identity_patches,
};

/// ARM over REST with an `azure_identity` credential.
#[derive(Clone)]
pub struct Arm {
    endpoint: String,
    credential: Arc<dyn TokenCredential>,
    http: reqwest::Client,
    /// Delay between async-operation polls when ARM sends no `Retry-After`.
    pub poll_interval: Duration,
    /// The token audience (`https://management.azure.com` in the public cloud).
    pub audience: String,
    pub retry: RetryPolicy,
    pub observer: Option<ArmObserver>,
}

impl Arm {
    /// `endpoint` is ARM's base URL (`https://management.azure.com`, or the emulator's).
    pub fn new(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credential,
            http,
            poll_interval: Duration::from_secs(5),
            audience: "https://management.azure.com".into(),
            retry: RetryPolicy::default(),
            observer: None,
        }
    }

    async fn token(&self) -> Result<String, Error> {
        let scope = format!("{}/.default", self.audience.trim_end_matches('/'));
        self.credential
            .get_token(&[&scope])
            .await
            .map(|t| t.token.secret().to_string())
            .map_err(|e| Error::Credential(e.to_string()))
    }

    /// One ARM call with retries (see [`RetryPolicy`]), reported to the observer per attempt.
    async fn call(
        &self,
        operation: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Option<String>, Value), Error> {
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            let result = self.call_once(method.clone(), url, body).await;
            if let Some(observe) = &self.observer {
                let label = match &result {
                    Ok(_) => "ok",
                    Err(e) => e.metric_label(),
                };
                observe(operation, label, started.elapsed());
            }
            match result {
                Ok(r) => return Ok(r),
                Err(e) => match self.retry.delay(attempt, &e) {
                    Some(wait) => {
                        tracing::debug!(operation, attempt, error = %e, ?wait, "retrying ARM call");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
            }
        }
    }

    /// One ARM request; returns the status, the `Azure-AsyncOperation` URL and the JSON body.
    async fn call_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Option<String>, Value), Error> {
        let token = self.token().await?;
        let mut req = self.http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |e: reqwest::Error| Error::Transport {
            url: url.to_string(),
            message: e.to_string(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let op = resp
            .headers()
            .get("azure-asyncoperation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.map_err(transport)?;
        if status >= 400 {
            return Err(Error::from_arm_answer(status, &text, retry_after));
        }
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, op, json))
    }

    async fn wait(&self, op: &str) -> Result<(), Error> {
        loop {
            let (_, _, body) = self
                .call("operation_get", reqwest::Method::GET, op, None)
                .await?;
            match body["status"].as_str().unwrap_or("") {
                "Succeeded" => return Ok(()),
                "InProgress" | "" => tokio::time::sleep(self.poll_interval).await,
                other => {
                    return Err(Error::Operation {
                        url: op.to_string(),
                        status: other.to_string(),
                    });
                }
            }
        }
    }

    fn machine_url(&self, t: &AssignmentTarget) -> String {
        format!(
            "{}{}?api-version={COMPUTE_API_VERSION}",
            self.endpoint,
            t.arm_id()
        )
    }
}

impl Arm {
    /// The OIDC issuer of an AKS cluster (`properties.oidcIssuerProfile.issuerURL` of
    /// `GET <cluster_id>`), or `None` when the cluster has none enabled.
    pub async fn aks_oidc_issuer(&self, cluster_id: &str) -> Result<Option<String>, Error> {
        let url = format!(
            "{}{}?api-version={AKS_API_VERSION}",
            self.endpoint,
            cluster_id.trim_end_matches('/')
        );
        let (_, _, body) = self
            .call("aks_get", reqwest::Method::GET, &url, None)
            .await?;
        let profile = &body["properties"]["oidcIssuerProfile"];
        Ok(profile["issuerURL"]
            .as_str()
            .filter(|u| !u.is_empty() && profile["enabled"].as_bool() != Some(false))
            .map(str::to_owned))
    }
}

impl Arm {
    /// The object ID of an AKS cluster's kubelet identity
    /// (`properties.identityProfile.kubeletidentity.objectId` of `GET <cluster_id>`), or `None`
    /// when the cluster reports none.
    pub async fn aks_kubelet_object_id(&self, cluster_id: &str) -> Result<Option<String>, Error> {
        let url = format!(
            "{}{}?api-version={AKS_API_VERSION}",
            self.endpoint,
            cluster_id.trim_end_matches('/')
        );
        let (_, _, body) = self
            .call("aks_get", reqwest::Method::GET, &url, None)
            .await?;
        Ok(
            body["properties"]["identityProfile"]["kubeletidentity"]["objectId"]
                .as_str()
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
        )
    }

    /// The role assignments of `principal_id` that apply at `scope` (assigned there or above:
    /// ARM's `atScope() and assignedTo(...)` filter), following `nextLink`.
    pub async fn role_assignments(
        &self,
        scope: &str,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, Error> {
        let mut url = Some(format!(
            "{}{}/providers/Microsoft.Authorization/roleAssignments?api-version={AUTHORIZATION_API_VERSION}&$filter=atScope()+and+assignedTo('{principal_id}')",
            self.endpoint,
            scope.trim_end_matches('/')
        ));
        let mut out = Vec::new();
        while let Some(u) = url.take() {
            let (_, _, body) = self
                .call("role_assignment_list", reqwest::Method::GET, &u, None)
                .await?;
            for a in body["value"].as_array().into_iter().flatten() {
                let p = &a["properties"];
                out.push(RoleAssignment {
                    id: a["id"].as_str().unwrap_or_default().to_owned(),
                    scope: p["scope"].as_str().unwrap_or_default().to_owned(),
                    role_definition_id: p["roleDefinitionId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    principal_id: p["principalId"].as_str().unwrap_or_default().to_owned(),
                });
            }
            url = body["nextLink"].as_str().map(str::to_owned);
        }
        Ok(out)
    }

    /// Grants `role_definition_id` to the service principal `principal_id` at `scope`, under a
    /// new GUID name; returns the assignment.
    pub async fn create_role_assignment(
        &self,
        scope: &str,
        role_definition_id: &str,
        principal_id: &str,
    ) -> Result<RoleAssignment, Error> {
        let id = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            scope.trim_end_matches('/'),
            uuid::Uuid::new_v4()
        );
        let url = format!(
            "{}{id}?api-version={AUTHORIZATION_API_VERSION}",
            self.endpoint
        );
        let body = json!({"properties": {
            "roleDefinitionId": role_definition_id,
            "principalId": principal_id,
            "principalType": "ServicePrincipal",
        }});
        let (_, _, out) = self
            .call(
                "role_assignment_put",
                reqwest::Method::PUT,
                &url,
                Some(&body),
            )
            .await?;
        Ok(RoleAssignment {
            id: out["id"].as_str().unwrap_or(&id).to_owned(),
            scope: scope.to_owned(),
            role_definition_id: role_definition_id.to_owned(),
            principal_id: principal_id.to_owned(),
        })
    }

    /// Deletes the role assignment `id` (its ARM id); one already gone is not an error.
    pub async fn delete_role_assignment(&self, id: &str) -> Result<(), Error> {
        let url = format!(
            "{}{id}?api-version={AUTHORIZATION_API_VERSION}",
            self.endpoint
        );
        match self
            .call(
                "role_assignment_delete",
                reqwest::Method::DELETE,
                &url,
                None,
            )
            .await
        {
            Ok(_) | Err(Error::Arm { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl NodePoolIdentities for Arm {
    async fn identities(&self, target: &AssignmentTarget) -> Result<IdentityState, Error> {
        let op = if target.is_scale_set {
            "vmss_get"
        } else {
            "vm_get"
        };
        let (_, _, body) = self
            .call(op, reqwest::Method::GET, &self.machine_url(target), None)
            .await?;
        Ok(IdentityState::from_arm(body.get("identity")))
    }

    async fn scale_sets(
        &self,
        subscription: &str,
        resource_group: &str,
    ) -> Result<Vec<AssignmentTarget>, Error> {
        let mut url = Some(format!(
            "{}/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version={COMPUTE_API_VERSION}",
            self.endpoint
        ));
        let mut out = Vec::new();
        while let Some(u) = url.take() {
            let (_, _, body) = self
                .call("vmss_list", reqwest::Method::GET, &u, None)
                .await?;
            out.extend(
                body["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| AssignmentTarget::from_arm_id(v["id"].as_str()?))
                    .filter(|t| t.is_scale_set),
            );
            url = body["nextLink"].as_str().map(str::to_owned);
        }
        Ok(out)
    }

    async fn update_from(
        &self,
        target: &AssignmentTarget,
        current: &IdentityState,
        add: &[String],
        remove: &[String],
    ) -> Result<usize, Error> {
        let patches = identity_patches(current, add, remove);
        for p in &patches {
            let name = if target.is_scale_set {
                "vmss_update"
            } else {
                "vm_update"
            };
            let (_, op, _) = self
                .call(
                    name,
                    reqwest::Method::PATCH,
                    &self.machine_url(target),
                    Some(p),
                )
                .await?;
            if let Some(op) = op {
                self.wait(&op).await?;
            }
        }
        Ok(patches.len())
    }
}

impl FederatedCredentials for Arm {
    async fn list(&self, identity_id: &str) -> Result<Vec<FederatedCredential>, Error> {
        let mut url = Some(format!(
            "{}{identity_id}/federatedIdentityCredentials?api-version={MSI_API_VERSION}",
            self.endpoint
        ));
        let mut out = Vec::new();
        while let Some(u) = url.take() {
            let (_, _, body) = self
                .call("fic_list", reqwest::Method::GET, &u, None)
                .await?;
            for f in body["value"].as_array().into_iter().flatten() {
                let p = &f["properties"];
                out.push(FederatedCredential {
                    name: f["name"].as_str().unwrap_or_default().to_string(),
                    issuer: p["issuer"].as_str().unwrap_or_default().to_string(),
                    subject: p["subject"].as_str().unwrap_or_default().to_string(),
                    audience: p["audiences"][0].as_str().unwrap_or_default().to_string(),
                });
            }
            url = body["nextLink"].as_str().map(str::to_string);
        }
        Ok(out)
    }

    async fn put(&self, identity_id: &str, c: &FederatedCredential) -> Result<(), Error> {
        let url = format!(
            "{}{identity_id}/federatedIdentityCredentials/{}?api-version={MSI_API_VERSION}",
            self.endpoint, c.name
        );
        let body = json!({"properties": {"issuer": c.issuer, "subject": c.subject, "audiences": [c.audience]}});
        self.call("fic_put", reqwest::Method::PUT, &url, Some(&body))
            .await
            .map(|_| ())
    }

    async fn delete(&self, identity_id: &str, name: &str) -> Result<(), Error> {
        let url = format!(
            "{}{identity_id}/federatedIdentityCredentials/{name}?api-version={MSI_API_VERSION}",
            self.endpoint
        );
        self.call("fic_delete", reqwest::Method::DELETE, &url, None)
            .await
            .map(|_| ())
    }
}
