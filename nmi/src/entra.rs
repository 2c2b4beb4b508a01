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
//! Pure functions over plain data; [`crate::token::AzureCredentials`] applies them.

use std::collections::BTreeSet;

use kube::ResourceExt;
use podid_crds::{AzureIdentity, IdentityType};
use serde::{Deserialize, Serialize};
use url::{Origin, Url};

/// The sign-in hosts of Entra in Azure's clouds: public, China (21Vianet), US Government.
pub const ENTRA_AUTHORITY_HOSTS: [&str; 3] = [
    "login.microsoftonline.com",
    "login.chinacloudapi.cn",
    "login.microsoftonline.us",
];

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

/// An entry of `--allowed-authority-hosts`: a host name (https on port 443) or an origin
/// (`https://host[:port]`, `http://…` for test authorities).
pub fn authority_origin(entry: &str) -> Result<Origin, String> {
    let entry = entry.trim();
    let bad = || {
        format!(
            "{entry:?} is neither a host name (e.g. login.partner.example) nor an origin (e.g. https://login.partner.example:8443)"
        )
    };
    let url = if entry.contains("://") {
        Url::parse(entry).map_err(|_| bad())?
    } else {
        Url::parse(&format!("https://{entry}")).map_err(|_| bad())?
    };
    let only_origin = url.username().is_empty()
        && url.password().is_none()
        && matches!(url.path(), "" | "/")
        && url.query().is_none()
        && url.fragment().is_none()
        && url.host_str().is_some_and(|h| !h.is_empty());
    if !only_origin || !matches!(url.scheme(), "https" | "http") {
        return Err(bad());
    }
    Ok(url.origin())
}

/// A tenant must be a GUID or a domain name (`contoso.onmicrosoft.com`, `adfs`): anything
/// else (a `/`, `?`, `#`, `%`, `..`) would rewrite the token URL it is joined into.
pub fn check_tenant(field: &str, tenant: &str) -> Result<(), String> {
    if is_guid(tenant) || is_domain_name(tenant) {
        return Ok(());
    }
    Err(format!(
        "{field} {:?} is neither a GUID nor a domain name: set it to the directory (tenant) ID, \
         e.g. 72f988bf-86f1-41af-91ab-2d7cd011db47, or the tenant's domain, e.g. contoso.onmicrosoft.com",
        clip(tenant, 200)
    ))
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Dot-separated labels of letters, digits and inner hyphens, 1–63 characters each, at most
/// 253 in all.
pub fn is_domain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

/// The part of an error answer from Entra (or IMDS) that is passed on to the pod: its OAuth
/// `error` code and `error_description`, as JSON in that order (IMDS's own error body is
/// exactly this). Nothing else of the body: not its other fields, not a body that is no OAuth
/// error (an HTML page, another service's answer).
pub fn public_error_detail(body: &str) -> String {
    #[derive(Deserialize)]
    struct In {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    #[derive(Serialize)]
    struct Out {
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        error_description: Option<String>,
    }
    match serde_json::from_str::<In>(body) {
        Ok(e) if !e.error.is_empty() => serde_json::to_string(&Out {
            error: clip(&e.error, 100),
            error_description: e.error_description.map(|d| clip(&d, 1024)),
        })
        .unwrap_or_default(),
        _ => "(not shown: the answer is no OAuth error)".into(),
    }
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
    fn tenants_are_guids_or_domain_names() {
        for ok in [
            TENANT,
            "72F988BF-86F1-41AF-91AB-2D7CD011DB47",
            "contoso.onmicrosoft.com",
            "adfs",
            "common",
            "a-b.example",
        ] {
            assert!(check_tenant("spec.tenantID", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../../evil",
            "/evil.example/x",
            "//evil.example",
            "t?x=1",
            "t#f",
            "t%2f..",
            "a..b",
            ".example",
            "-a.example",
            "a-.example",
            "under_score.example",
            "tenant id",
            &"a".repeat(64),
        ] {
            let e = check_tenant("spec.tenantID", bad).unwrap_err();
            assert!(
                e.starts_with("spec.tenantID ")
                    && e.contains("is neither a GUID nor a domain name"),
                "{bad}: {e}"
            );
        }
        assert!(is_domain_name(&["a".repeat(63), "b".into()].join(".")));
        assert!(
            !is_domain_name(&vec!["abcdefgh"; 30].join(".")),
            "over 253 characters"
        );
    }

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
        assert_eq!(
            authority_origin("login.partner.example").unwrap(),
            Url::parse("https://login.partner.example/")
                .unwrap()
                .origin()
        );
        assert_eq!(
            authority_origin(" https://login.partner.example:8443 ").unwrap(),
            Url::parse("https://login.partner.example:8443/")
                .unwrap()
                .origin()
        );
        for bad in [
            "login.partner.example/path",
            "https://u:p@login.partner.example",
            "ftp://login.partner.example",
            "https://login.partner.example/?x",
            "",
            "a b",
        ] {
            assert!(authority_origin(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn only_the_oauth_error_and_description_are_passed_on() {
        let entra = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"timestamp":"2024-01-01 00:00:00Z","trace_id":"t","correlation_id":"c","internal":"canary"}"#;
        assert_eq!(
            public_error_detail(entra),
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#
        );
        let imds = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        assert_eq!(
            public_error_detail(imds),
            imds,
            "IMDS's error body is unchanged"
        );
        assert_eq!(
            public_error_detail(r#"{"error":"server_error"}"#),
            r#"{"error":"server_error"}"#
        );
        for other in [
            "<html><body>internal admin console: canary</body></html>",
            r#"{"message":"canary"}"#,
            r#"{"error":{"code":"canary"}}"#,
            r#"{"error":""}"#,
            "",
        ] {
            let d = public_error_detail(other);
            assert!(
                !d.contains("canary") && d.starts_with("(not shown"),
                "{other}: {d}"
            );
        }
        let long = format!(
            r#"{{"error":"x","error_description":"{}"}}"#,
            "d".repeat(5000)
        );
        assert!(public_error_detail(&long).len() < 1200);
    }
}
