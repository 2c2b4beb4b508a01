//! `Arm` against the Azure emulator: identity deltas in as few PATCHes as ARM allows, waited for;
//! federated credentials; errors that say whether a retry may help.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::setup;
use podid_azure::{Arm, FederatedCredential, FederatedCredentials, NodePoolIdentities};
use podid_azure_emulator::{Emulator, Fault, Settings};
use podid_crds::provider::NodeResource;

#[tokio::test]
async fn identity_deltas_are_one_patch_per_150_and_wait_for_the_operation() {
    let (emu, arm) = setup().await;
    let vmss = emu.add_scale_set("MC_rg", "aks-nodepool1-12345678-vmss", 2);
    let target = NodeResource::parse(&format!("azure://{vmss}/virtualMachines/0"))
        .unwrap()
        .target();
    let keep = emu.add_identity("rg", "kubelet");
    emu.preassign(&vmss, &keep.id);
    let ids: Vec<String> = (0..160)
        .map(|i| emu.add_identity("rg", &format!("id{i}")).id)
        .collect();

    assert_eq!(
        arm.update(&target, &ids, &[]).await.unwrap(),
        2,
        "160 additions: two PATCHes"
    );
    assert_eq!(emu.call_count("PATCH vmss"), 2);
    assert!(
        emu.call_count("GET operation") >= 2,
        "each PATCH waited for"
    );
    let state = arm.identities(&target).await.unwrap();
    assert_eq!(state.user_assigned.len(), 161);
    // The entries carry client IDs: the operations completed.
    let block = emu.identity_block(&vmss).unwrap();
    assert!(
        block["userAssignedIdentities"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.get("clientId").is_some())
    );

    // Removing what we added leaves the pre-existing identity alone.
    emu.reset_calls();
    assert_eq!(arm.update(&target, &[], &ids).await.unwrap(), 2);
    assert_eq!(emu.assigned_identities(&vmss), [keep.id.to_lowercase()]);
    // Nothing to do: a read and no write.
    emu.reset_calls();
    assert_eq!(
        arm.update(&target, std::slice::from_ref(&keep.id), &[])
            .await
            .unwrap(),
        0
    );
    assert_eq!(emu.call_count("PATCH vmss"), 0);
    assert_eq!(emu.call_count("GET vmss"), 1);
    // The last one goes by type.
    arm.update(&target, &[], std::slice::from_ref(&keep.id))
        .await
        .unwrap();
    assert_eq!(emu.identity_block(&vmss).unwrap()["type"], "None");
}

#[tokio::test]
async fn errors_say_whether_to_retry() {
    let (emu, mut arm) = setup().await;
    arm.retry.attempts = 1;
    let vmss = emu.add_scale_set("MC_rg", "vmss", 1);
    let target = NodeResource::parse(&format!("azure://{vmss}/virtualMachines/0"))
        .unwrap()
        .target();
    emu.inject(Fault::throttle("GET vmss", 12, 1));
    let err = arm.identities(&target).await.unwrap_err();
    assert!(err.is_retryable());
    assert!(
        matches!(
            err,
            podid_azure::Error::Arm {
                status: 429,
                retry_after: Some(12),
                ..
            }
        ),
        "{err}"
    );
    let id = emu.add_identity("rg", "locked");
    emu.deny_assign(&id.id);
    let err = arm
        .update(&target, std::slice::from_ref(&id.id), &[])
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("LinkedAuthorizationFailed"),
        "{err}"
    );
}

#[tokio::test]
async fn federated_credentials_round_trip() {
    let (emu, arm) = setup().await;
    let id = emu.add_identity("rg", "payments-id");
    let c = FederatedCredential {
        name: "payments-checkout".into(),
        issuer: "https://oidc.example/".into(),
        subject: "system:serviceaccount:payments:checkout".into(),
        audience: "api://AzureADTokenExchange".into(),
    };
    arm.put(&id.id, &c).await.unwrap();
    assert_eq!(arm.list(&id.id).await.unwrap(), vec![c.clone()]);
    arm.delete(&id.id, &c.name).await.unwrap();
    assert!(arm.list(&id.id).await.unwrap().is_empty());
}

#[tokio::test]
async fn throttled_and_failing_calls_are_retried_honouring_retry_after() {
    let (emu, mut arm) = setup().await;
    arm.retry.base_delay = Duration::from_millis(10);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    arm.observer = Some(Arc::new(move |op, result, _| {
        log.lock().unwrap().push(format!("{op} {result}"))
    }));
    let vmss = emu.add_scale_set("MC_rg", "vmss", 1);
    let target = NodeResource::parse(&format!("azure://{vmss}/virtualMachines/0"))
        .unwrap()
        .target();
    emu.inject(Fault::throttle("GET vmss", 1, 1));
    emu.inject(Fault {
        route: "PATCH vmss".into(),
        status: Some(503),
        count: Some(1),
        ..Default::default()
    });
    let id = emu.add_identity("rg", "id1");
    assert_eq!(
        arm.update(&target, std::slice::from_ref(&id.id), &[])
            .await
            .unwrap(),
        1
    );
    assert_eq!(emu.assigned_identities(&vmss), [id.id.to_lowercase()]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|s| !s.starts_with("operation_get"))
            .collect::<Vec<_>>(),
        [
            "vmss_get throttled",
            "vmss_get ok",
            "vmss_update server_error",
            "vmss_update ok"
        ]
    );
}

#[tokio::test]
async fn a_managed_identity_from_imds_authenticates_to_arm() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("MC_rg", "vmss", 1);
    let cluster = emu.add_identity("MC_rg", "cluster-identity");
    emu.preassign(&vmss, &cluster.id);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let credential = podid_azure::CredentialConfig::ManagedIdentity {
        imds_endpoint: emu.imds_endpoint("vmss_0"),
        client_id: Some(cluster.client_id.clone()),
    }
    .build(http.clone())
    .unwrap();
    let arm = Arm::new(&emu.arm_endpoint(), credential, http);
    let target = NodeResource::parse(&format!("azure://{vmss}/virtualMachines/0"))
        .unwrap()
        .target();
    let state = arm.identities(&target).await.unwrap();
    assert_eq!(
        state.client_ids[&cluster.id.to_lowercase()],
        cluster.client_id.to_lowercase()
    );
}
