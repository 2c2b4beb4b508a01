//! The agent's token sources for an AzureIdentity: IMDS for user-assigned managed identities,
//! Entra client credentials (secret or certificate, read from the identity's Secret) for service
//! principals. The sources themselves, and the token types, are podid-azure's
//! ([`podid_azure::token`]); this module turns identities and Secrets into them.

use std::sync::Arc;

use futures::future::BoxFuture;
pub use podid_azure::token::{
    AccessToken, ClientCredential, ClientCredentialsSource, ImdsTokenSource, MsiResponse,
    TokenError, TokenSource, http_client, imds_url,
};
use podid_crds::{AzureIdentity, IdentityType};

use crate::cache::Clock;
use crate::view::SecretSource;

/// The token sources for one identity (primary first, then auxiliary tenants).
pub struct IdentitySources {
    pub sources: Vec<Arc<dyn TokenSource>>,
}

/// Turns an AzureIdentity into token sources (reading Secrets for service principals).
pub trait Credentials: Send + Sync {
    /// The key the identity's tokens are cached under, decided without any I/O (so a cached
    /// token is served without reading a Secret); an identity the agent refuses to sign in is
    /// refused here, before the cache is looked at.
    fn cache_key(&self, identity: &AzureIdentity) -> Result<String, TokenError>;
    fn sources<'a>(
        &'a self,
        identity: &'a AzureIdentity,
    ) -> BoxFuture<'a, Result<IdentitySources, TokenError>>;
}

/// Production [`Credentials`]: IMDS for managed identities, Entra for service principals.
pub struct AzureCredentials {
    /// For IMDS and Entra: [`http_client`].
    pub http: reqwest::Client,
    pub imds_endpoint: url::Url,
    /// Which service principals the agent signs in, where, and with which Secrets.
    pub policy: crate::entra::EntraPolicy,
    pub secrets: Arc<dyn SecretSource>,
    pub clock: Arc<dyn Clock>,
}

/// The cache key of a user-assigned identity's tokens, whichever way they were got (IMDS or
/// token exchange): the same identity's tokens for a resource are interchangeable.
pub fn msi_cache_key(client_id: &str) -> String {
    format!("msi:{}", client_id.to_ascii_lowercase())
}

/// The client secret in a type-1 Secret: its only value, else key `clientsecret`, else the
/// first key in order (the original took a random "first" map entry).
pub fn client_secret_value(data: &crate::view::SecretData) -> Option<String> {
    let v = if data.len() == 1 {
        data.values().next()
    } else {
        data.get("clientsecret").or_else(|| data.values().next())
    }?;
    String::from_utf8(v.clone()).ok()
}

/// The certificate credential in a type-2 Secret: key `certificate` holding a PKCS#12 archive
/// (the original's format) protected by key `password`, or (podid) a PEM bundle with an RSA
/// private key and a certificate.
pub fn certificate_credential(data: &crate::view::SecretData) -> Result<ClientCredential, String> {
    let cert = data
        .get("certificate")
        .ok_or("the secret has no key 'certificate'")?;
    match std::str::from_utf8(cert) {
        Ok(text) if text.contains("-----BEGIN") => pem_credential(text),
        _ => {
            let password = data
                .get("password")
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            pkcs12_credential(cert, &password)
        }
    }
}

fn pem_body(der: &[u8], label: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pkcs12_credential(archive: &[u8], password: &str) -> Result<ClientCredential, String> {
    let store = p12_keystore::KeyStore::from_pkcs12(
        archive,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|e| format!("decoding the PKCS#12 certificate: {e}"))?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or("the PKCS#12 certificate holds no private key")?;
    let cert = chain
        .certs()
        .first()
        .ok_or("the PKCS#12 certificate holds no certificate for its key")?;
    Ok(ClientCredential::Certificate {
        key_pem: pem_body(chain.key().as_der(), "PRIVATE KEY").into_bytes(),
        cert_der: cert.as_der().to_vec(),
    })
}

fn pem_credential(text: &str) -> Result<ClientCredential, String> {
    use base64::Engine;
    let block = |label: &str| -> Option<String> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let start = text.find(&begin)?;
        let stop = text[start..].find(&end)? + start + end.len();
        Some(text[start..stop].to_owned())
    };
    let key = block("PRIVATE KEY")
        .or_else(|| block("RSA PRIVATE KEY"))
        .ok_or("no PEM private key under 'certificate'")?;
    let cert_pem = block("CERTIFICATE").ok_or("no PEM certificate under 'certificate'")?;
    let b64: String = cert_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let cert_der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("certificate PEM: {e}"))?;
    Ok(ClientCredential::Certificate {
        key_pem: key.into_bytes(),
        cert_der,
    })
}

impl Credentials for AzureCredentials {
    fn cache_key(&self, identity: &AzureIdentity) -> Result<String, TokenError> {
        let spec = &identity.spec;
        match spec.type_ {
            IdentityType::UserAssignedMsi => Ok(msi_cache_key(&spec.client_id)),
            IdentityType::ServicePrincipal | IdentityType::ServicePrincipalCertificate => {
                let sign_in = self.policy.check(identity).map_err(TokenError::Refused)?;
                Ok(format!(
                    "sp:{}:{}:{}:{}:{}/{}",
                    sign_in.authority,
                    spec.tenant_id.to_ascii_lowercase(),
                    spec.client_id.to_ascii_lowercase(),
                    spec.auxiliary_tenant_ids
                        .clone()
                        .unwrap_or_default()
                        .join(","),
                    sign_in.secret.0,
                    sign_in.secret.1,
                ))
            }
            IdentityType::Unknown(_) => {
                Err(TokenError::Unavailable("unsupported identity type".into()))
            }
        }
    }

    fn sources<'a>(
        &'a self,
        identity: &'a AzureIdentity,
    ) -> BoxFuture<'a, Result<IdentitySources, TokenError>> {
        Box::pin(async move {
            let spec = &identity.spec;
            match spec.type_ {
                IdentityType::UserAssignedMsi => Ok(IdentitySources {
                    sources: vec![Arc::new(ImdsTokenSource {
                        http: self.http.clone(),
                        endpoint: self.imds_endpoint.clone(),
                        client_id: Some(spec.client_id.clone()),
                        clock: self.clock.clone(),
                    })],
                }),
                IdentityType::ServicePrincipal | IdentityType::ServicePrincipalCertificate => {
                    // Before anything is read or sent: the Secret's namespace, the authority
                    // and the tenants (see crate::entra).
                    let sign_in = self.policy.check(identity).map_err(TokenError::Refused)?;
                    let (ns, name) = &sign_in.secret;
                    let data = self
                        .secrets
                        .secret(ns, name)
                        .await
                        .map_err(|e| {
                            TokenError::Unavailable(format!(
                                "failed to get Kubernetes secret {ns}/{name}: {e}"
                            ))
                        })?
                        .ok_or_else(|| {
                            TokenError::Unavailable(format!(
                                "failed to get Kubernetes secret {ns}/{name}: not found"
                            ))
                        })?;
                    let credential = if spec.type_ == IdentityType::ServicePrincipal {
                        ClientCredential::Secret(client_secret_value(&data).ok_or_else(|| {
                            TokenError::Unavailable(format!(
                                "secret {ns}/{name} holds no client secret"
                            ))
                        })?)
                    } else {
                        certificate_credential(&data).map_err(|e| {
                            TokenError::Unavailable(format!("secret {ns}/{name}: {e}"))
                        })?
                    };
                    let authority = sign_in.authority;
                    let sources = sign_in
                        .tenants
                        .into_iter()
                        .map(|tenant_id| {
                            Arc::new(ClientCredentialsSource {
                                http: self.http.clone(),
                                authority: authority.clone(),
                                tenant_id,
                                client_id: spec.client_id.clone(),
                                credential: credential.clone(),
                                clock: self.clock.clone(),
                            }) as Arc<dyn TokenSource>
                        })
                        .collect();
                    Ok(IdentitySources { sources })
                }
                IdentityType::Unknown(_) => {
                    Err(TokenError::Unavailable("unsupported identity type".into()))
                }
            }
        })
    }
}
