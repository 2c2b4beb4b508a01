//! The federated exchange with real projected ServiceAccount tokens from a real kube-apiserver:
//! a match succeeds; a wrong subject, a wrong audience or an expired token fails with the AADSTS
//! code Entra uses.

use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::TokenCredential;
use podid_azure_emulator::{Emulator, FederatedCredential, Settings};
use podid_testkit::Cluster;

async fn projected_token(client: &kube::Client, ns: &str, sa: &str, audience: &str) -> String {
    podid_testkit::projected_token(client, ns, sa, audience)
        .await
        .expect("TokenRequest")
}

async fn exchange(emu: &Emulator, client_id: &str, assertion: &str) -> (u16, serde_json::Value) {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            emu.authority_host(),
            emu.tenant_id()
        ))
        .form(&[
            ("client_id", client_id),
            ("grant_type", "client_credentials"),
            ("scope", "https://vault.azure.net/.default"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn federated_exchange_with_real_projected_tokens() {
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    let ns = cluster.namespace("wi").await;
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.trust_issuer_ca(cluster.ca_pem());
    let identity = emu.add_identity("rg-ids", "checkout-id");
    let subject = format!("system:serviceaccount:{}:checkout", ns.name);
    emu.add_federated_credential(
        &identity.id,
        FederatedCredential {
            name: "checkout",
            issuer: cluster.issuer(),
            subject: &subject,
            audience: "api://AzureADTokenExchange",
        },
    )
    .unwrap();

    // Match: the access token belongs to the managed identity.
    let good = projected_token(
        &ns.client,
        &ns.name,
        "checkout",
        "api://AzureADTokenExchange",
    )
    .await;
    let (status, body) = exchange(&emu, &identity.client_id, &good).await;
    assert_eq!(status, 200, "{body}");
    let c = podid_testkit::sdk::claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["azp"], identity.client_id);
    assert_eq!(c["oid"], identity.principal_id);
    assert_eq!(c["xms_mirid"], identity.id);
    assert_eq!(c["aud"], "https://vault.azure.net");

    // The Rust SDK's WorkloadIdentityCredential does the same exchange.
    let http: Arc<dyn azure_core::HttpClient> = Arc::new(
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
            .build()
            .unwrap(),
    );
    let wi = azure_identity::WorkloadIdentityCredential::new(
        http,
        azure_core::Url::parse(&emu.authority_host()).unwrap(),
        emu.tenant_id(),
        identity.client_id.clone(),
        good.clone(),
    );
    let t = wi
        .get_token(&["https://storage.azure.com/.default"])
        .await
        .expect("WorkloadIdentityCredential");
    assert_eq!(
        podid_testkit::sdk::claims(t.token.secret())["xms_mirid"],
        identity.id
    );

    // Wrong subject: another ServiceAccount's token.
    let other = projected_token(
        &ns.client,
        &ns.name,
        "intruder",
        "api://AzureADTokenExchange",
    )
    .await;
    let (status, body) = exchange(&emu, &identity.client_id, &other).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(70021)),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains(&format!("system:serviceaccount:{}:intruder", ns.name))
    );

    // Wrong audience.
    let wrong_aud = projected_token(&ns.client, &ns.name, "checkout", cluster.issuer()).await;
    let (status, body) = exchange(&emu, &identity.client_id, &wrong_aud).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(70021)),
        "{body}"
    );

    // Unknown client.
    let (status, body) = exchange(&emu, "00000000-dead-beef-0000-000000000000", &good).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700016)),
        "{body}"
    );

    // A forged signature on a matching token.
    let mut forged = good.clone();
    forged.truncate(forged.rfind('.').unwrap());
    forged.push_str(".c2lnbmF0dXJl");
    let (status, body) = exchange(&emu, &identity.client_id, &forged).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(700027)),
        "{body}"
    );

    // Expired: the same good token two hours later.
    emu.advance_clock(Duration::from_secs(7200));
    let (status, body) = exchange(&emu, &identity.client_id, &good).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700024)),
        "{body}"
    );
}
