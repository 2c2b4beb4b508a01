//! The controller's credential follows azure.json: a service principal secret rotated on the
//! node (as `az aks update-credentials` does) is used without a restart, and a file that stops
//! parsing keeps the previous credential.

use std::time::{Duration, SystemTime};

use clap::Parser;
use podid_azure::{ReloadingCredential, TokenCredential};
use podid_azure_emulator::{Emulator, Settings};
use podid_operator::config::Flags;

const SCOPE: &str = "https://management.azure.com/.default";

/// Writes azure.json and moves its modification time forward by `tick` seconds (a rewrite within
/// the file system's timestamp granularity must still count as a change).
fn write(path: &std::path::Path, tenant: &str, secret: &str, tick: u64) {
    std::fs::write(
        path,
        format!(
            r#"{{"cloud":"AzurePublicCloud","tenantId":"{tenant}","subscriptionId":"s",
                "aadClientId":"operator","aadClientSecret":"{secret}"}}"#
        ),
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(tick))
        .unwrap();
}

#[tokio::test]
async fn a_rotated_secret_in_azure_json_is_used_without_a_restart() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("operator", Some("first"), None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("azure.json");
    write(&path, &emu.tenant_id(), "first", 0);
    let flags = Flags::try_parse_from([
        "podid-operator",
        "--cloudconfig",
        path.to_str().unwrap(),
        "--authority-host",
        &emu.arm_endpoint(),
    ])
    .unwrap();
    let credential = ReloadingCredential::new(
        path.clone(),
        move || flags.cloud_config().map(|c| c.credential),
        reqwest::Client::new(),
    )
    .unwrap();
    credential
        .get_token(&[SCOPE])
        .await
        .expect("the first secret works");

    // The secret is rotated in Entra: the credential built from the old file stops working.
    emu.add_app("operator", Some("second"), None);
    credential.clear_cache().await.unwrap();
    let err = format!("{:?}", credential.get_token(&[SCOPE]).await.unwrap_err());
    assert!(
        err.contains("7000215"),
        "Entra refuses the old secret: {err}"
    );

    // The node's azure.json gets the new secret: the next token request uses it.
    write(&path, &emu.tenant_id(), "second", 10);
    credential
        .get_token(&[SCOPE])
        .await
        .expect("the rotated secret is picked up");

    // A half-written file is not used: the previous credential goes on working.
    std::fs::write(&path, "{").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(20))
        .unwrap();
    credential.clear_cache().await.unwrap();
    credential
        .get_token(&[SCOPE])
        .await
        .expect("the previous credential is kept");
}
