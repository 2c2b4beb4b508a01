//! The real Rust SDK crates (azure_identity, azure_mgmt_compute, azure_mgmt_msi 0.21) against the
//! emulator, unchanged but for the endpoint and authority URLs.

use std::sync::Arc;

use azure_core::auth::TokenCredential;
use azure_identity::ClientSecretCredential;
use podid_azure_emulator::{Emulator, Fault, Settings};

const ARM_SCOPE: &str = "https://management.azure.com/.default";

fn http_client(emu: &Emulator) -> Arc<dyn azure_core::HttpClient> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    Arc::new(client)
}

fn credential(emu: &Emulator, client_id: &str, secret: &str) -> Arc<ClientSecretCredential> {
    Arc::new(ClientSecretCredential::new(
        http_client(emu),
        azure_core::Url::parse(&emu.authority_host()).unwrap(),
        emu.tenant_id(),
        client_id.into(),
        secret.into(),
    ))
}

#[tokio::test]
async fn client_secret_credential_gets_an_arm_token_and_a_wrong_secret_fails() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("11111111-1111-1111-1111-111111111111", Some("s3cret"), None);
    let token = credential(&emu, "11111111-1111-1111-1111-111111111111", "s3cret")
        .get_token(&[ARM_SCOPE])
        .await
        .expect("token");
    let c = podid_testkit::sdk::claims(token.token.secret());
    assert_eq!(c["aud"], "https://management.azure.com");
    assert_eq!(c["azp"], "11111111-1111-1111-1111-111111111111");
    assert_eq!(c["tid"], emu.tenant_id());

    let err = credential(&emu, "11111111-1111-1111-1111-111111111111", "wrong")
        .get_token(&[ARM_SCOPE])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("7000215"), "{err:?}");
    let err = credential(&emu, "99999999-0000-0000-0000-000000000000", "x")
        .get_token(&[ARM_SCOPE])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("700016"), "{err:?}");
}

#[tokio::test]
async fn compute_sdk_reads_and_updates_a_scale_set() {
    let emu = Emulator::start(Settings {
        lro_polls: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    emu.add_app("app", Some("pw"), None);
    let id = emu.add_identity("rg-ids", "payments-id");
    let vmss = emu.add_scale_set("MC_rg", "aks-nodepool1-12345678-vmss", 2);
    emu.preassign(&vmss, &id.id);
    let client =
        azure_mgmt_compute::package_2024_07_01::Client::builder(credential(&emu, "app", "pw"))
            .endpoint(azure_core::Url::parse(&emu.arm_endpoint()).unwrap())
            .scopes(&[ARM_SCOPE])
            .build()
            .unwrap();
    let sets = client.virtual_machine_scale_sets_client();
    let got = sets
        .get(
            "MC_rg",
            "aks-nodepool1-12345678-vmss",
            emu.subscription_id(),
        )
        .await
        .expect("GET scale set through the SDK");
    assert_eq!(
        got.resource.name.as_deref(),
        Some("aks-nodepool1-12345678-vmss")
    );
    use azure_mgmt_compute::package_2024_07_01::models::virtual_machine_scale_set_identity::Type;
    assert_eq!(
        got.identity.as_ref().unwrap().type_,
        Some(Type::UserAssigned)
    );

    // The typed model of this SDK line cannot carry userAssignedIdentities entries (its
    // `UserAssignedIdentities` is an empty struct), so podid sends identity deltas as raw JSON
    // through the same pipeline; the typed update still changes `type`.
    let update = azure_mgmt_compute::package_2024_07_01::models::VirtualMachineScaleSetUpdate {
        identity: Some(
            azure_mgmt_compute::package_2024_07_01::models::VirtualMachineScaleSetIdentity {
                type_: Some(Type::None),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let updated = sets
        .update(
            "MC_rg",
            "aks-nodepool1-12345678-vmss",
            update,
            emu.subscription_id(),
        )
        .await
        .expect("PATCH scale set through the SDK");
    assert_eq!(updated.identity.unwrap().type_, Some(Type::None));
    assert!(emu.assigned_identities(&vmss).is_empty());
    assert_eq!(emu.call_count("PATCH vmss"), 1);
}

#[tokio::test]
async fn msi_sdk_manages_identities_and_federated_credentials() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("app", Some("pw"), None);
    let id = emu.add_identity("rg-ids", "payments-id");
    let client = azure_mgmt_msi::package_2023_01_31::Client::builder(credential(&emu, "app", "pw"))
        .endpoint(azure_core::Url::parse(&emu.arm_endpoint()).unwrap())
        .scopes(&[ARM_SCOPE])
        .build()
        .unwrap();
    let sub = emu.subscription_id();
    let got = client
        .user_assigned_identities_client()
        .get(&sub, "rg-ids", "payments-id")
        .await
        .expect("GET identity");
    assert_eq!(
        got.properties.unwrap().client_id.as_deref(),
        Some(id.client_id.as_str())
    );

    let fics = client.federated_identity_credentials_client();
    let body = azure_mgmt_msi::package_2023_01_31::models::FederatedIdentityCredential {
        properties: Some(
            azure_mgmt_msi::package_2023_01_31::models::FederatedIdentityCredentialProperties::new(
                "https://oidc.example/issuer/".into(),
                "system:serviceaccount:payments:checkout".into(),
                vec!["api://AzureADTokenExchange".into()],
            ),
        ),
        ..Default::default()
    };
    let created = fics
        .create_or_update(
            &sub,
            "rg-ids",
            "payments-id",
            "payments-checkout",
            body.clone(),
        )
        .await
        .expect("PUT federated credential");
    assert_eq!(
        created.properties.unwrap().subject,
        "system:serviceaccount:payments:checkout"
    );
    let listed = fics.list(&sub, "rg-ids", "payments-id").into_stream();
    use futures::StreamExt;
    let pages: Vec<_> = listed.collect().await;
    let names: Vec<String> = pages
        .into_iter()
        .flat_map(|p| p.unwrap().value)
        .filter_map(|f| f.proxy_resource.resource.name)
        .collect();
    assert_eq!(names, ["payments-checkout"]);

    // The same issuer + subject under another name is refused, as Azure does.
    let err = fics
        .create_or_update(&sub, "rg-ids", "payments-id", "payments-dup", body)
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("combination already exists"),
        "{err:?}"
    );

    fics.delete(&sub, "rg-ids", "payments-id", "payments-checkout")
        .send()
        .await
        .expect("DELETE");
    assert!(
        emu.identity(&id.id)
            .unwrap()
            .federated_credentials
            .is_empty()
    );
}

#[tokio::test]
async fn injected_faults_surface_as_the_sdks_retryable_errors() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("app", Some("pw"), None);
    emu.add_scale_set("MC_rg", "vmss", 1);
    let client =
        azure_mgmt_compute::package_2024_07_01::Client::builder(credential(&emu, "app", "pw"))
            .endpoint(azure_core::Url::parse(&emu.arm_endpoint()).unwrap())
            .scopes(&[ARM_SCOPE])
            .build()
            .unwrap();
    let sets = client.virtual_machine_scale_sets_client();

    // One 429 with Retry-After: the SDK's retry policy waits and the call succeeds.
    emu.inject(Fault::throttle("GET vmss", 1, 1));
    sets.get("MC_rg", "vmss", emu.subscription_id())
        .await
        .expect("succeeds after one retry");
    assert_eq!(emu.call_count("GET vmss"), 2, "the 429 was retried");

    // A 503 is retried too.
    emu.inject(Fault {
        route: "GET vmss".into(),
        status: Some(503),
        count: Some(1),
        ..Default::default()
    });
    sets.get("MC_rg", "vmss", emu.subscription_id())
        .await
        .expect("succeeds after a 503");
    assert_eq!(emu.call_count("GET vmss"), 4);

    // A refusal is not retried: it comes back at once as an HTTP error with its status.
    emu.inject(Fault {
        route: "GET vmss".into(),
        status: Some(400),
        count: Some(1),
        ..Default::default()
    });
    let err = sets
        .get("MC_rg", "vmss", emu.subscription_id())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            azure_core::error::ErrorKind::HttpResponse {
                status: azure_core::StatusCode::BadRequest,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(emu.call_count("GET vmss"), 5, "not retried");
}
