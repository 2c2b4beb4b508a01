//! ARM behaviours a controller depends on, over plain HTTP: auth, merge PATCH, the async
//! operation, the 150-identity limit, authorization errors, federated-credential concurrency,
//! throttling and dropped connections.

use std::time::Duration;

use podid_azure_emulator::{Emulator, Fault, Settings};
use serde_json::{Value, json};

async fn send(
    emu: &Emulator,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    auth: bool,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if auth {
        r = r.bearer_auth(emu.arm_token("mic"));
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let (s, h) = (resp.status().as_u16(), resp.headers().clone());
    let text = resp.text().await.unwrap_or_default();
    (s, h, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn vmss_url(emu: &Emulator, vmss: &str) -> String {
    format!("{}{vmss}?api-version=2019-12-01", emu.arm_endpoint())
}

#[tokio::test]
async fn arm_requires_a_token_from_the_emulator() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("MC_rg", "vmss", 1);
    let (s, h, b) = send(
        &emu,
        reqwest::Method::GET,
        &vmss_url(&emu, &vmss),
        None,
        false,
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(b["error"]["code"], "AuthenticationFailed");
    assert!(h.contains_key("www-authenticate"));
    let (s, _, b) = send(
        &emu,
        reqwest::Method::GET,
        &vmss_url(&emu, &vmss),
        None,
        true,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = send(
        &emu,
        reqwest::Method::GET,
        &vmss_url(&emu, &vmss.replace("/vmss", "/missing")),
        None,
        true,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("ResourceNotFound"))
    );
}

#[tokio::test]
async fn patch_merges_and_completes_through_the_async_operation() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("MC_rg", "vmss", 2);
    let a = emu.add_identity("rg", "a");
    let b = emu.add_identity("rg", "b");
    emu.preassign(&vmss, &a.id);
    // MIC sends lower-cased ids; ARM matches case-insensitively.
    let body = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {b.id.to_lowercase(): {}}}});
    let (s, h, resp) = send(
        &emu,
        reqwest::Method::PATCH,
        &vmss_url(&emu, &vmss),
        Some(body),
        true,
    )
    .await;
    assert_eq!(s, 200, "{resp}");
    assert_eq!(resp["properties"]["provisioningState"], "Updating");
    assert_eq!(
        resp["identity"]["userAssignedIdentities"][b.id.to_lowercase()],
        json!({}),
        "new entry is empty until done"
    );
    assert_eq!(
        resp["identity"]["userAssignedIdentities"][&a.id]["clientId"], a.client_id,
        "unmentioned entry kept"
    );
    assert!(h.contains_key("x-ms-ratelimit-remaining-subscription-writes"));
    let op = h["azure-asyncoperation"].to_str().unwrap().to_string();
    let (_, _, st) = send(&emu, reqwest::Method::GET, &op, None, true).await;
    assert_eq!(st["status"], "InProgress");
    let (_, _, st) = send(&emu, reqwest::Method::GET, &op, None, true).await;
    assert_eq!(st["status"], "Succeeded");
    let (_, _, got) = send(
        &emu,
        reqwest::Method::GET,
        &vmss_url(&emu, &vmss),
        None,
        true,
    )
    .await;
    assert_eq!(
        got["identity"]["userAssignedIdentities"][b.id.to_lowercase()]["clientId"],
        b.client_id
    );

    // null removes one; the last goes by changing type.
    let body = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {a.id.clone(): null}}});
    assert_eq!(
        send(
            &emu,
            reqwest::Method::PATCH,
            &vmss_url(&emu, &vmss),
            Some(body),
            true
        )
        .await
        .0,
        200
    );
    assert_eq!(emu.assigned_identities(&vmss), [b.id.to_lowercase()]);
    let body = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {b.id.clone(): null}}});
    let (s, _, e) = send(
        &emu,
        reqwest::Method::PATCH,
        &vmss_url(&emu, &vmss),
        Some(body),
        true,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    let (s, _, resp) = send(
        &emu,
        reqwest::Method::PATCH,
        &vmss_url(&emu, &vmss),
        Some(json!({"identity": {"type": "None"}})),
        true,
    )
    .await;
    assert_eq!((s, resp["identity"]["type"].as_str()), (200, Some("None")));
    assert_eq!(emu.call_count("PATCH vmss"), 4);
    assert_eq!(emu.call_count("GET operation"), 2);
}

#[tokio::test]
async fn identity_limits_and_authorization_errors() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("MC_rg", "vmss", 1);
    let ids: serde_json::Map<String, Value> = (0..151)
        .map(|i| (emu.add_identity("rg", &format!("id{i}")).id, json!({})))
        .collect();
    let (s, _, e) = send(
        &emu,
        reqwest::Method::PATCH,
        &vmss_url(&emu, &vmss),
        Some(json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": ids}})),
        true,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("FailedIdentityOperation"))
    );
    assert!(
        emu.assigned_identities(&vmss).is_empty(),
        "nothing half-applied"
    );

    let x = emu.add_identity("rg", "locked");
    emu.deny_assign(&x.id);
    let (s, _, e) = send(&emu, reqwest::Method::PATCH, &vmss_url(&emu, &vmss), Some(json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {x.id.clone(): {}}}})), true).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("LinkedAuthorizationFailed"))
    );
    assert!(e["error"]["message"].as_str().unwrap().contains(&x.id));
    emu.deny_write(&vmss);
    let (s, _, e) = send(
        &emu,
        reqwest::Method::PATCH,
        &vmss_url(&emu, &vmss),
        Some(json!({"identity": {"type": "None"}})),
        true,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed"))
    );
}

#[tokio::test]
async fn overlapping_federated_credential_writes_conflict() {
    let emu = Emulator::start(Settings {
        fic_write_latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let id = emu.add_identity("rg", "shared");
    let url = |n: &str| {
        format!(
            "{}{}/federatedIdentityCredentials/{n}?api-version=2023-01-31",
            emu.arm_endpoint(),
            id.id
        )
    };
    let body = |s: &str| json!({"properties": {"issuer": "https://issuer.example/", "subject": s, "audiences": ["api://AzureADTokenExchange"]}});
    let (u1, u2) = (url("one"), url("two"));
    let (first, second) = tokio::join!(
        send(
            &emu,
            reqwest::Method::PUT,
            &u1,
            Some(body("system:serviceaccount:a:one")),
            true
        ),
        send(
            &emu,
            reqwest::Method::PUT,
            &u2,
            Some(body("system:serviceaccount:a:two")),
            true
        ),
    );
    // Both writes overlap inside the 300 ms write window: exactly one lands.
    let mut outcomes = [
        (first.0, first.2["error"]["code"].clone()),
        (second.0, second.2["error"]["code"].clone()),
    ];
    outcomes.sort_by_key(|o| o.0);
    assert_eq!(outcomes[0], (201, Value::Null));
    assert_eq!(
        outcomes[1],
        (
            409,
            json!("ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity")
        )
    );
    let refused = if first.0 == 201 { "two" } else { "one" };
    let (s, _, _) = send(
        &emu,
        reqwest::Method::PUT,
        &url(refused),
        Some(body(&format!("system:serviceaccount:a:{refused}"))),
        true,
    )
    .await;
    assert_eq!(s, 201, "the refused write succeeds when retried alone");
    // Serial writes succeed, up to 20.
    for i in 3..=20 {
        let (s, _, b) = send(
            &emu,
            reqwest::Method::PUT,
            &url(&format!("fic-{i}")),
            Some(body(&format!("system:serviceaccount:a:{i}"))),
            true,
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, _, b) = send(
        &emu,
        reqwest::Method::PUT,
        &url("fic-21"),
        Some(body("system:serviceaccount:a:21")),
        true,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, _, b) = send(
        &emu,
        reqwest::Method::PUT,
        &url("x"),
        Some(body("system:serviceaccount:a:x")),
        true,
    )
    .await;
    assert_eq!(s, 400, "name too short: {b}");
}

#[tokio::test]
async fn throttling_latency_and_dropped_connections_are_injectable() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("MC_rg", "vmss", 1);
    emu.inject(Fault::throttle("GET vmss", 7, 1));
    let (s, h, b) = send(
        &emu,
        reqwest::Method::GET,
        &vmss_url(&emu, &vmss),
        None,
        true,
    )
    .await;
    assert_eq!(
        (
            s,
            h["retry-after"].to_str().unwrap(),
            b["error"]["code"].as_str()
        ),
        (429, "7", Some("TooManyRequests"))
    );
    assert_eq!(
        send(
            &emu,
            reqwest::Method::GET,
            &vmss_url(&emu, &vmss),
            None,
            true
        )
        .await
        .0,
        200,
        "count exhausted"
    );

    emu.inject(Fault {
        route: "GET vmss".into(),
        drop: true,
        count: Some(1),
        ..Default::default()
    });
    let r = reqwest::Client::new()
        .get(vmss_url(&emu, &vmss))
        .bearer_auth(emu.arm_token("x"))
        .send()
        .await;
    let broken = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(broken, "the connection broke");

    emu.inject(Fault {
        route: "PATCH *".into(),
        status: Some(503),
        rate: Some(0.0),
        ..Default::default()
    });
    let (s, _, _) = send(
        &emu,
        reqwest::Method::PATCH,
        &vmss_url(&emu, &vmss),
        Some(json!({"identity": {"type": "None"}})),
        true,
    )
    .await;
    assert_eq!(s, 200, "rate 0 never fires");
    emu.clear_faults();
    assert_eq!(emu.call_count("GET vmss"), 3);
    assert_eq!(emu.call_count("PATCH vmss"), 1);
}
