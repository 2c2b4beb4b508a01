//! Request parsing and routing never panic, and what they accept is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podid_nmi::request::{Route, parse_host_token, parse_token_query, route};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let r = route(path, data.first().is_some_and(|b| b & 1 == 1));
    if r == Route::Token {
        assert!(path.len() >= 9 && path[1..9].eq_ignore_ascii_case("metadata"));
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
