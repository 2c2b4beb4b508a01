//! What the agent checks before it signs a service principal in on a pod's behalf, and what of
//! an error answer it passes on. A user who may create AzureIdentities in their own namespace
//! controls `spec.clientPassword`, `spec.adEndpoint` and `spec.tenantID`; unchecked, they could
//! make the agent read another namespace's Secret and POST it to a server of their choosing.
//! So, before any Secret is read:
//! - the Secret must be in the identity's own namespace (unless the operator allows more);
//! - `adEndpoint` must be an Entra authority: one of the clouds' sign-in hosts, the configured
//!   default authority, or a host the operator lists;
//! - each tenant must be a GUID or a domain name, so it cannot rewrite the token URL.
//!
//! Pure functions over plain data; [`crate::token::AzureCredentials`] applies them. Entra's own
//! rules (its authority hosts, tenant names, error answers) are in [`podid_azure::entra`].

use std::collections::BTreeSet;

use kube::ResourceExt;
use podid_azure::entra::{ENTRA_AUTHORITY_HOSTS, authority_origin, check_tenant, clip};
use podid_crds::{AzureIdentity, IdentityType};
use url::{Origin, Url};

/// Which service-principal identities the agent acts for (from the command line).
#[derive(Clone, Debug)]
pub struct EntraPolicy {
    /// Used when an identity has no `adEndpoint` (`--entra-authority`).
    pub default_authority: Url,
    /// Origins `adEndpoint` may name: [`ENTRA_AUTHORITY_HOSTS`] over https, the default
    /// authority's and `--allowed-authority-hosts`.
    pub authorities: Vec<Origin>,
    /// `--allow-cross-namespace-secrets`: the original's reading of `clientPassword.namespace`.
    pub allow_cross_namespace_secrets: bool,
}

impl EntraPolicy {
    /// The policy for `default_authority`, the extra `allowed_hosts` (host names or origins)
    /// and whether Secrets of other namespaces may be read.
    pub fn new(
        default_authority: Url,
        allowed_hosts: &[String],
        allow_cross_namespace_secrets: bool,
    ) -> Result<Self, String> {
        let mut authorities: Vec<Origin> = ENTRA_AUTHORITY_HOSTS
            .iter()
            .map(|h| authority_origin(h).expect("known hosts are host names"))
            .collect();
        authorities.push(default_authority.origin());
        for entry in allowed_hosts.iter().filter(|e| !e.trim().is_empty()) {
            authorities.push(
                authority_origin(entry).map_err(|e| format!("--allowed-authority-hosts: {e}"))?,
            );
        }
        Ok(Self {
            default_authority,
            authorities,
            allow_cross_namespace_secrets,
        })
    }

    /// Checks a service-principal identity (types 1 and 2) before its Secret is read: where it
    /// signs in, as which tenants, with which Secret. Errors name the identity, the field and
    /// the fix.
    pub fn check(&self, identity: &AzureIdentity) -> Result<SignIn, String> {
        let at = || {
            format!(
                "AzureIdentity {}/{}",
                identity.namespace().unwrap_or_default(),
                identity.name_any()
            )
        };
        let spec = &identity.spec;
        let secret = secret_ref(identity).ok_or_else(|| {
            format!(
                "{}: spec.clientPassword is missing: name the Secret that holds the service principal's {}",
                at(),
                credential_kind(&spec.type_)
            )
        })?;
        check_secret_namespace(
            identity.namespace().as_deref().unwrap_or_default(),
            &secret,
            self.allow_cross_namespace_secrets,
        )
        .map_err(|e| format!("{}: {e}", at()))?;
        let authority =
            check_ad_endpoint(&spec.ad_endpoint, self).map_err(|e| format!("{}: {e}", at()))?;
        check_tenant("spec.tenantID", &spec.tenant_id).map_err(|e| format!("{}: {e}", at()))?;
        let auxiliary = spec.auxiliary_tenant_ids.clone().unwrap_or_default();
        for (i, t) in auxiliary.iter().enumerate() {
            check_tenant(&format!("spec.auxiliaryTenantIDs[{i}]"), t)
                .map_err(|e| format!("{}: {e}", at()))?;
        }
        Ok(SignIn {
            authority,
            tenants: std::iter::once(spec.tenant_id.clone())
                .chain(auxiliary)
                .collect(),
            secret,
        })
    }
}

/// A checked service-principal sign-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignIn {
    /// The authority (an allowed origin), ending in `/`.
    pub authority: Url,
    /// The primary tenant, then the auxiliary tenants; each a GUID or a domain name.
    pub tenants: Vec<String>,
    /// The Secret (namespace, name) holding the credential.
    pub secret: SecretRef,
}

/// A Secret by (namespace, name).
pub type SecretRef = (String, String);

fn credential_kind(t: &IdentityType) -> &'static str {
    if *t == IdentityType::ServicePrincipalCertificate {
        "certificate"
    } else {
        "client secret"
    }
}

/// The Secret an identity's `clientPassword` names: its namespace defaults to the identity's.
pub fn secret_ref(identity: &AzureIdentity) -> Option<SecretRef> {
    let r = identity.spec.client_password.as_ref()?;
    let ns = r
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| identity.namespace().unwrap_or_default());
    Some((ns, r.name.clone().unwrap_or_default()))
}

/// The Secrets that the service-principal identities among `identities` reference.
pub fn referenced_secrets<'a>(
    identities: impl IntoIterator<Item = &'a AzureIdentity>,
) -> BTreeSet<SecretRef> {
    identities
        .into_iter()
        .filter(|i| {
            matches!(
                i.spec.type_,
                IdentityType::ServicePrincipal | IdentityType::ServicePrincipalCertificate
            )
        })
        .filter_map(secret_ref)
        .collect()
}

/// The Secret must be in the identity's namespace, unless `allow_cross_namespace` (the
/// original's behaviour) is set.
pub fn check_secret_namespace(
    identity_namespace: &str,
    secret: &SecretRef,
    allow_cross_namespace: bool,
) -> Result<(), String> {
    let (ns, name) = secret;
    if name.is_empty() {
        return Err(
            "spec.clientPassword.name is empty: name the Secret that holds the credential".into(),
        );
    }
    if allow_cross_namespace || ns == identity_namespace {
        return Ok(());
    }
    Err(format!(
        "spec.clientPassword.namespace {ns:?} is not the identity's namespace {identity_namespace:?}: \
         the agent reads a service principal's Secret only from its identity's namespace; \
         move the Secret to {identity_namespace:?} (or run the agent with --allow-cross-namespace-secrets)"
    ))
}

/// The authority an `adEndpoint` names (empty: the default), if its origin is allowed.
pub fn check_ad_endpoint(ad_endpoint: &str, policy: &EntraPolicy) -> Result<Url, String> {
    let mut url = if ad_endpoint.trim().is_empty() {
        policy.default_authority.clone()
    } else {
        Url::parse(ad_endpoint.trim()).map_err(|e| {
            format!(
                "spec.adEndpoint {:?} is not a URL ({e}): leave it empty for {} or name the cloud's authority, e.g. https://login.microsoftonline.us/",
                clip(ad_endpoint, 200),
                policy.default_authority
            )
        })?
    };
    if !policy.authorities.contains(&url.origin()) {
        let known: Vec<String> = policy
            .authorities
            .iter()
            .map(|o| o.ascii_serialization())
            .collect();
        return Err(format!(
            "spec.adEndpoint {:?} is not an Entra authority the agent signs in at ({}): \
             leave it empty for {}, or have the cluster operator add its host to --allowed-authority-hosts",
            clip(ad_endpoint, 200),
            known.join(", "),
            policy.default_authority
        ));
    }
    // The token URL is `<authority>/<tenant>/oauth2/token`: nothing after the path counts.
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podid_crds::AzureIdentitySpec;

    fn policy(extra: &[&str], cross: bool) -> EntraPolicy {
        EntraPolicy::new(
            Url::parse("https://login.microsoftonline.com/").unwrap(),
            &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            cross,
        )
        .unwrap()
    }

    fn sp(ns: &str, spec: serde_json::Value) -> AzureIdentity {
        let mut spec: AzureIdentitySpec = serde_json::from_value(spec).unwrap();
        if spec.client_password.is_none() {
            spec.client_password = serde_json::from_value(serde_json::json!({"name": "sp"})).ok();
        }
        let mut id = AzureIdentity::new("x", spec);
        id.metadata.namespace = Some(ns.into());
        id
    }

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    #[test]
    fn ad_endpoint_must_be_an_entra_authority_or_allowed() {
        let p = policy(&[], false);
        for ok in [
            "",
            "https://login.microsoftonline.com/",
            "https://login.microsoftonline.com",
            "https://LOGIN.microsoftonline.com:443/",
            "https://login.chinacloudapi.cn/",
            "https://login.microsoftonline.us/",
        ] {
            let url = check_ad_endpoint(ok, &p).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(url.path().ends_with('/'), "{url}");
        }
        for bad in [
            "http://login.microsoftonline.com/",
            "https://login.microsoftonline.com:8443/",
            "https://login.microsoftonline.com.evil.example/",
            "https://login.microsoftonline.com@evil.example/",
            "https://evil.example/",
            "http://169.254.169.254/",
            "http://127.0.0.1:8080/",
            "file:///etc/passwd",
        ] {
            let e = check_ad_endpoint(bad, &p).unwrap_err();
            assert!(
                e.starts_with("spec.adEndpoint ") && e.contains("--allowed-authority-hosts"),
                "{bad}: {e}"
            );
        }
        assert!(
            check_ad_endpoint("not a url", &p)
                .unwrap_err()
                .contains("is not a URL")
        );
        // Query and fragment are dropped: they cannot reach the token URL.
        let u = check_ad_endpoint("https://login.microsoftonline.us/adfs?x=1#f", &p).unwrap();
        assert_eq!(u.as_str(), "https://login.microsoftonline.us/adfs/");

        let p = policy(&["adfs.contoso.example", "http://127.0.0.1:8080"], false);
        assert!(check_ad_endpoint("https://adfs.contoso.example/adfs/", &p).is_ok());
        assert!(check_ad_endpoint("http://127.0.0.1:8080/", &p).is_ok());
        assert!(check_ad_endpoint("http://127.0.0.1:8081/", &p).is_err());
        assert!(check_ad_endpoint("http://adfs.contoso.example/", &p).is_err());
    }

    #[test]
    fn the_configured_default_authority_is_allowed() {
        let p = EntraPolicy::new(Url::parse("http://127.0.0.1:9999").unwrap(), &[], false).unwrap();
        assert!(check_ad_endpoint("http://127.0.0.1:9999/", &p).is_ok());
        assert_eq!(
            check_ad_endpoint("", &p).unwrap().as_str(),
            "http://127.0.0.1:9999/"
        );
    }

    #[test]
    fn allowed_authority_hosts_entries_are_hosts_or_origins() {
        // The entries themselves: podid_azure::entra::authority_origin.
        let e = EntraPolicy::new(
            Url::parse("https://login.microsoftonline.com/").unwrap(),
            &["x/y".into()],
            false,
        )
        .unwrap_err();
        assert!(e.starts_with("--allowed-authority-hosts: \"x/y\""), "{e}");
    }

    #[test]
    fn secrets_come_from_the_identitys_namespace_unless_allowed() {
        let own = ("team-a".to_owned(), "sp".to_owned());
        let other = ("kube-system".to_owned(), "sp".to_owned());
        assert!(check_secret_namespace("team-a", &own, false).is_ok());
        let e = check_secret_namespace("team-a", &other, false).unwrap_err();
        assert!(
            e.contains("spec.clientPassword.namespace \"kube-system\"")
                && e.contains("--allow-cross-namespace-secrets"),
            "{e}"
        );
        assert!(check_secret_namespace("team-a", &other, true).is_ok());
        assert!(
            check_secret_namespace("team-a", &("team-a".into(), String::new()), true)
                .unwrap_err()
                .contains("spec.clientPassword.name is empty")
        );
    }

    #[test]
    fn check_names_the_identity_and_orders_tenants() {
        let p = policy(&[], false);
        let id = sp(
            "team-a",
            serde_json::json!({"type": 1, "clientID": "c", "tenantID": TENANT,
                               "auxiliaryTenantIDs": ["contoso.onmicrosoft.com"],
                               "clientPassword": {"name": "sp", "namespace": "team-a"}}),
        );
        let s = p.check(&id).unwrap();
        assert_eq!(s.tenants, [TENANT, "contoso.onmicrosoft.com"]);
        assert_eq!(s.secret, ("team-a".to_owned(), "sp".to_owned()));
        assert_eq!(s.authority.as_str(), "https://login.microsoftonline.com/");

        let bad_tenant = sp(
            "default",
            serde_json::json!({"type": 1, "tenantID": "x/../../y"}),
        );
        assert_eq!(
            p.check(&bad_tenant).unwrap_err().split(':').next().unwrap(),
            "AzureIdentity default/x"
        );
        assert!(
            p.check(&bad_tenant)
                .unwrap_err()
                .starts_with("AzureIdentity default/x: spec.tenantID \"x/../../y\" is neither a GUID nor a domain name")
        );
        let bad_aux = sp(
            "default",
            serde_json::json!({"type": 1, "tenantID": TENANT, "auxiliaryTenantIDs": [TENANT, "?"]}),
        );
        assert!(
            p.check(&bad_aux)
                .unwrap_err()
                .contains("spec.auxiliaryTenantIDs[1] \"?\"")
        );
        let no_secret = {
            let mut i = sp(
                "default",
                serde_json::json!({"type": 2, "tenantID": TENANT}),
            );
            i.spec.client_password = None;
            i
        };
        assert!(
            p.check(&no_secret)
                .unwrap_err()
                .contains("spec.clientPassword is missing: name the Secret that holds the service principal's certificate")
        );
    }

    #[test]
    fn referenced_secrets_are_those_of_service_principals() {
        let mut msi = sp("a", serde_json::json!({"type": 0}));
        msi.spec.client_password =
            serde_json::from_value(serde_json::json!({"name": "ignored"})).ok();
        let ids = [
            sp(
                "a",
                serde_json::json!({"type": 1, "clientPassword": {"name": "s1"}}),
            ),
            sp(
                "a",
                serde_json::json!({"type": 2, "clientPassword": {"name": "s2", "namespace": "b"}}),
            ),
            msi,
        ];
        let r: Vec<SecretRef> = referenced_secrets(&ids).into_iter().collect();
        assert_eq!(
            r,
            [
                ("a".to_owned(), "s1".to_owned()),
                ("b".to_owned(), "s2".to_owned())
            ]
        );
    }
}
