//! Entra's rules that hold whoever signs in: which hosts are Entra's authorities, what a tenant
//! may be (so it cannot rewrite the token URL it is joined into), and what of an error answer
//! from Entra or IMDS may be passed on. Pure functions over plain data.

use serde::{Deserialize, Serialize};
use url::{Origin, Url};

/// The sign-in hosts of Entra in Azure's clouds: public, China (21Vianet), US Government.
pub const ENTRA_AUTHORITY_HOSTS: [&str; 3] = [
    "login.microsoftonline.com",
    "login.chinacloudapi.cn",
    "login.microsoftonline.us",
];

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

/// `s` cut to `n` characters, with `…` when cut (for quoting input in messages).
pub fn clip(s: &str, n: usize) -> String {
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
    // An object only: serde would also read a struct from an array (`["…", "…"]`), passing on
    // whatever its first two strings are.
    let error = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_object)
        .and_then(|v| serde_json::from_value::<In>(v).ok());
    match error {
        Some(e) if !e.error.is_empty() => serde_json::to_string(&Out {
            error: clip(&e.error, 100),
            error_description: e.error_description.map(|d| clip(&d, 1024)),
        })
        .unwrap_or_default(),
        _ => "(not shown: the answer is no OAuth error)".into(),
    }
}

/// AADSTS70021: no federated identity credential of the identity matches the presented
/// assertion's issuer, subject and audience together.
pub const AADSTS_NO_MATCHING_FEDERATED_RECORD: u32 = 70021;

/// The AADSTS codes with which Entra says no federated identity credential matches an assertion:
/// 70021 (issuer, subject and audience together), 700211 (issuer), 700212 (audience), 700213
/// (subject). Right after a credential is written this is what Entra answers until the write has
/// reached it, so a caller proving a new credential may retry on these for a while.
pub const AADSTS_NO_MATCHING_FEDERATED_RECORD_CODES: [u32; 4] =
    [AADSTS_NO_MATCHING_FEDERATED_RECORD, 700211, 700212, 700213];

/// Whether `code` is one of [`AADSTS_NO_MATCHING_FEDERATED_RECORD_CODES`].
pub fn is_no_matching_federated_record(code: u32) -> bool {
    AADSTS_NO_MATCHING_FEDERATED_RECORD_CODES.contains(&code)
}

/// The AADSTS code of an error answer from Entra: the first of its `error_codes`, else the
/// number after a leading `AADSTS` in its `error_description` (Entra starts every description
/// with it). `None` for a body that is no Entra error.
pub fn aadsts_code(body: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if let Some(code) = v
        .get("error_codes")
        .and_then(|c| c.get(0))
        .and_then(serde_json::Value::as_u64)
    {
        return u32::try_from(code).ok();
    }
    let digits: String = v
        .get("error_description")?
        .as_str()?
        .strip_prefix("AADSTS")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            // Found by fuzzing (`entra_response`): an array read as the struct's fields.
            r#"["canary","canary"]"#,
            r#"["]"]"#,
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

    #[test]
    fn aadsts_codes_are_read_from_error_codes_or_the_description() {
        assert_eq!(
            aadsts_code(
                r#"{"error":"invalid_request","error_description":"AADSTS70021: No matching federated identity record found.","error_codes":[70021]}"#
            ),
            Some(70021)
        );
        assert_eq!(
            aadsts_code(
                r#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject."}"#
            ),
            Some(700213)
        );
        for none in [
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
            r#"{"error":"invalid_request","error_description":"AADSTS: no digits"}"#,
            r#"{"error_codes":[99999999999]}"#,
            "<html>AADSTS70021</html>",
            "",
        ] {
            assert_eq!(aadsts_code(none), None, "{none}");
        }
        assert!(is_no_matching_federated_record(70021));
        assert!(is_no_matching_federated_record(700213));
        assert!(!is_no_matching_federated_record(700016));
        assert!(!is_no_matching_federated_record(7000215));
    }
}
