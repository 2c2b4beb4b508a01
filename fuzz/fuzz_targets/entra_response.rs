//! Answers from Entra and IMDS, as the node agent and the controller read them: token responses
//! (v1 and v2, numbers as strings or numbers) and error bodies. Any body is read without
//! panicking; a token read from it carries the body's access token and an expiry that is not
//! in the past for a lifetime counted from now, and its IMDS-shaped answer for the pod reads
//! back equal. Of an error body only the OAuth `error` (cut to 100 characters) and
//! `error_description` (cut to 1024) are passed on, as JSON, never anything else; an AADSTS
//! code is one the body carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podid_azure::entra::{aadsts_code, public_error_detail};
use podid_azure::token::{AccessToken, MsiResponse};
use serde_json::Value;

const NOW: u64 = 1_767_225_600;

fn check_error_detail(body: &str) {
    let detail = public_error_detail(body);
    if detail.starts_with("(not shown") {
        return;
    }
    let out: serde_json::Map<String, Value> =
        serde_json::from_str(&detail).expect("the detail is a JSON object");
    let input: Value = serde_json::from_str(body).expect("only an OAuth error body is passed on");
    let error = out["error"].as_str().expect("error is a string");
    assert!(!error.is_empty());
    assert!(error.chars().count() <= 101, "error cut to 100 characters");
    let original = input["error"].as_str().expect("the body's error");
    assert!(original.starts_with(error.trim_end_matches('…')));
    for key in out.keys() {
        assert!(
            key == "error" || key == "error_description",
            "{key} passed on"
        );
    }
    if let Some(d) = out.get("error_description") {
        let d = d.as_str().expect("description is a string");
        assert!(
            d.chars().count() <= 1025,
            "description cut to 1024 characters"
        );
        let original = input["error_description"]
            .as_str()
            .expect("the body's description");
        assert!(original.starts_with(d.trim_end_matches('…')));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    check_error_detail(body);
    if let Some(code) = aadsts_code(body) {
        assert!(
            body.contains(&code.to_string()),
            "{code} is not in the body"
        );
    }
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let Ok(token) = AccessToken::from_response(&v, "https://vault.azure.net", NOW) else {
        return;
    };
    assert_eq!(
        Some(token.access_token.as_str()),
        v["access_token"].as_str()
    );
    let stated = |k: &str| match &v[k] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    if stated("expires_on").is_none() {
        assert!(token.expires_on >= NOW, "a lifetime counts from now");
    }
    // The token never reaches a log: Debug does not depend on it.
    let mut other = token.clone();
    other.access_token.push('x');
    assert_eq!(format!("{token:?}"), format!("{other:?}"));
    let answer = token.to_msi_response(NOW);
    assert_eq!(
        answer.expires_in.parse::<u64>().ok(),
        Some(token.expires_on.saturating_sub(NOW))
    );
    assert_eq!(answer.expires_on, token.expires_on.to_string());
    let json = serde_json::to_string(&answer).expect("the answer writes as JSON");
    let back: MsiResponse = serde_json::from_str(&json).expect("the answer reads back");
    assert_eq!(back, answer);
    let again = AccessToken::from_response(
        &serde_json::from_str(&json).expect("JSON"),
        "https://vault.azure.net",
        NOW,
    )
    .expect("the pod's answer reads as a token");
    assert_eq!(again.access_token, token.access_token);
    assert_eq!(again.expires_on, token.expires_on);
    assert_eq!(again.resource, token.resource);
});
