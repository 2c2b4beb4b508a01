//! Parsing of IMDS token requests (`/metadata/identity/oauth2/token`) and legacy host token
//! requests (`/host/token`) into typed requests, with the original NMI's error statuses and bodies.

use http::HeaderMap;
use podid_crds::policy::IdentityRequest;

use crate::reply::Reply;

/// A parsed token request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `resource` (audience) asked for.
    pub resource: String,
    /// Which identity the caller names, if any.
    pub identity: IdentityRequest,
    /// `api-version`, kept for logs; like the original, it is not validated.
    pub api_version: Option<String>,
}

/// A legacy `/host/token` request: a host process asks on behalf of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTokenRequest {
    pub pod_namespace: String,
    pub pod_name: String,
    pub token: TokenRequest,
}

/// Why a request is refused before any identity is looked at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Required metadata header not specified")]
    MissingMetadataHeader,
    #[error("parameter resource cannot be empty")]
    MissingResource,
    #[error("object_id cannot be served: name the identity with client_id or msi_res_id")]
    ObjectIdUnsupported,
    #[error("missing 'podname' and 'podns' from request header")]
    MissingPodHeaders,
    #[error("request remote address is not from a host")]
    NotFromHost,
    #[error("Invalid request")]
    InvalidPath,
}

impl RequestError {
    /// The original's answer for this error.
    pub fn reply(&self) -> Reply {
        match self {
            Self::MissingMetadataHeader => {
                Reply::oauth_error(400, "invalid_request", &self.to_string())
            }
            Self::ObjectIdUnsupported => {
                Reply::oauth_error(400, "invalid_request", &self.to_string())
            }
            Self::MissingResource | Self::MissingPodHeaders | Self::InvalidPath => {
                Reply::text(400, self.to_string())
            }
            Self::NotFromHost => Reply::text(500, self.to_string()),
        }
    }
}

/// With `--metadata-header-required`, the header `Metadata` (any case) must be exactly `true`.
pub fn check_metadata_header(headers: &HeaderMap, required: bool) -> Result<(), RequestError> {
    if !required {
        return Ok(());
    }
    match headers.get("metadata") {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(RequestError::MissingMetadataHeader),
    }
}

/// The first value of `name` in a query string, empty values counting as absent (Go's
/// `Query().Get`).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Parses the query of a token request.
///
/// `msi_res_id` wins over its alias `mi_res_id`. A request naming its identity only by
/// `object_id` is refused: identities carry no principal ID, so it could be neither checked nor
/// served (the original silently ignored `object_id` and served the default identity).
pub fn parse_token_query(query: Option<&str>) -> Result<TokenRequest, RequestError> {
    let query = query.unwrap_or("");
    let resource = query_param(query, "resource").ok_or(RequestError::MissingResource)?;
    let identity = IdentityRequest {
        client_id: query_param(query, "client_id"),
        object_id: query_param(query, "object_id"),
        resource_id: query_param(query, "msi_res_id").or_else(|| query_param(query, "mi_res_id")),
    };
    if identity.object_id.is_some()
        && identity.client_id.is_none()
        && identity.resource_id.is_none()
    {
        return Err(RequestError::ObjectIdUnsupported);
    }
    Ok(TokenRequest {
        resource,
        identity,
        api_version: query_param(query, "api-version"),
    })
}

/// Parses a `/host/token` request: headers `podns` and `podname`, a caller on exactly
/// `127.0.0.1`, then the query as for a token request. No `Metadata` header is needed.
pub fn parse_host_token(
    headers: &HeaderMap,
    remote: std::net::IpAddr,
    query: Option<&str>,
) -> Result<HostTokenRequest, RequestError> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let (Some(pod_namespace), Some(pod_name)) = (header("podns"), header("podname")) else {
        return Err(RequestError::MissingPodHeaders);
    };
    if remote != std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) {
        return Err(RequestError::NotFromHost);
    }
    Ok(HostTokenRequest {
        pod_namespace,
        pod_name,
        token: parse_token_query(query)?,
    })
}

/// Why a request path is not routed as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `.`/`..` segments or repeated slashes: answered, as the original's router does, with
    /// `301 Moved Permanently` to the clean path (`location`, with the query), which is then
    /// routed and authorised like any other request.
    #[error("Moved Permanently")]
    NotClean { location: String },
    /// A path no cleaning makes safe to route: not starting with `/`, or holding anything but
    /// RFC 3986's unreserved characters and `/` (a backslash, a percent-encoded byte, a `;`
    /// parameter, …). IMDS paths never need them; a server behind the agent could read them as
    /// other paths.
    #[error("Invalid request")]
    Malformed,
}

impl PathError {
    pub fn reply(&self) -> Reply {
        match self {
            Self::NotClean { location } => Reply::moved(location.clone()),
            Self::Malformed => Reply::text(400, self.to_string()),
        }
    }
}

/// RFC 3986's unreserved characters and `/`: all IMDS paths are made of them. Anything else
/// (percent-encoding, backslashes, `;` parameters, …) is something a server might read as
/// another path.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~/".contains(c)
}

/// The path as Go's `path.Clean` (gorilla/mux's `cleanPath`) makes it: one slash between
/// segments, no `.` segments, `..` removing the segment before it (never past the root), the
/// trailing slash kept.
pub fn clean_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut clean = format!("/{}", out.join("/"));
    if path.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Checks that `path` is canonical before it is routed: the path routed is then exactly the
/// path forwarded to IMDS, byte for byte.
pub fn check_path(path: &str, query: Option<&str>) -> Result<(), PathError> {
    if !path.starts_with('/') || !path.chars().all(is_path_char) {
        return Err(PathError::Malformed);
    }
    let clean = clean_path(path);
    if clean != path {
        let location = match query {
            Some(q) => format!("{clean}?{q}"),
            None => clean,
        };
        return Err(PathError::NotClean { location });
    }
    Ok(())
}

/// Which handler a request path goes to, in the original's match order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Token,
    /// A disguised token path (CVE-2022-23551): refused with 400.
    InvalidToken,
    HostToken,
    /// `/metadata/instance…` with `--block-instance-metadata`: 403.
    BlockedInstance,
    Proxy,
}

/// Routes a canonical path (see [`check_path`]) like the original's gorilla/mux table: `metadata`
/// is case-insensitive, the rest of the token path is not, and all matches are prefixes. Unlike
/// the original, any other spelling of the token path (`/metadata/identity…oauth2…token`, in any
/// case, anywhere in the path) is refused, and `/metadata/instance` is blocked in any case: what
/// IMDS treats as equal is not ours to guess.
pub fn route(path: &str, block_instance_metadata: bool) -> Route {
    let after_metadata = path
        .strip_prefix('/')
        .filter(|p| {
            p.len() >= 8 && p.is_char_boundary(8) && p[..8].eq_ignore_ascii_case("metadata")
        })
        .map(|p| &p[8..]);
    if after_metadata.is_some_and(|rest| rest.starts_with("/identity/oauth2/token")) {
        return Route::Token;
    }
    let lower = path.to_ascii_lowercase();
    if disguised_token_path(&lower) {
        return Route::InvalidToken;
    }
    if block_instance_metadata && lower.starts_with("/metadata/instance") {
        return Route::BlockedInstance;
    }
    if path.starts_with("/host/token") {
        return Route::HostToken;
    }
    Route::Proxy
}

/// The original's `/(?i:metadata)/identity(.*?)oauth2(.*?)token`, anywhere in the (lowercased)
/// path.
fn disguised_token_path(lower: &str) -> bool {
    lower.match_indices("/metadata/identity").any(|(i, m)| {
        let r = &lower[i + m.len()..];
        r.find("oauth2")
            .is_some_and(|j| r[j + "oauth2".len()..].contains("token"))
    })
}
