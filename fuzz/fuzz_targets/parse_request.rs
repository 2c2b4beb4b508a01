//! Request parsing and routing never panic, and what they accept is consistent: for any input,
//! the path IMDS would receive is never a token or (when blocked) instance path unless the
//! route was Token, and it is the path that was routed, byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podid_nmi::request::{
    PathError, Route, check_path, parse_host_token, parse_token_query, route,
};
use podid_nmi::token::imds_url;

#[path = "../../nmi/tests/security/lenient.rs"]
mod lenient;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let block = data.first().is_some_and(|b| b & 1 == 1);
    match check_path(path, Some(query)) {
        Ok(()) => {
            let r = route(path, block);
            if r == Route::Token {
                assert!(path.len() >= 9 && path[1..9].eq_ignore_ascii_case("metadata"));
            }
            let base = url::Url::parse("http://169.254.169.254:80/").unwrap();
            let sent = imds_url(&base, path).expect("a canonical path is forwarded");
            assert_eq!(sent.path(), path);
            if r == Route::Proxy {
                let seen = lenient::lenient_reading(sent.path());
                assert!(
                    !seen.starts_with("/metadata/identity/oauth2/token"),
                    "{path}"
                );
                assert!(!(block && seen.starts_with("/metadata/instance")), "{path}");
            }
        }
        Err(PathError::NotClean { location }) => {
            let (clean, _) = location.split_once('?').unwrap_or((&location, ""));
            assert_eq!(check_path(clean, None), Ok(()), "{path} -> {location}");
        }
        Err(PathError::Malformed) => {}
    }
    match parse_token_query(Some(query)) {
        Ok(req) => {
            assert!(!req.resource.is_empty());
            if req.identity.object_id.is_some() {
                assert!(req.identity.client_id.is_some() || req.identity.resource_id.is_some());
            }
        }
        Err(e) => {
            let reply = e.reply();
            assert!(reply.status == 400 || reply.status == 500);
            assert!(reply.body.ends_with('\n'));
        }
    }
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(path) {
        headers.insert("podns", v.clone());
        headers.insert("podname", v);
    }
    let _ = parse_host_token(&headers, std::net::Ipv4Addr::LOCALHOST.into(), Some(query));
});
