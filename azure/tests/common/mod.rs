//! Shared by the tests against the emulator.

use std::sync::Arc;
use std::time::Duration;

use podid_azure::Arm;
use podid_azure_emulator::{Emulator, Settings};

/// An emulator and an [`Arm`] signed in to it as the app `operator`.
pub async fn setup() -> (Emulator, Arm) {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("operator", Some("pw"), None);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let credential = Arc::new(azure_identity::ClientSecretCredential::new(
        Arc::new(http.clone()),
        azure_core::Url::parse(&emu.authority_host()).unwrap(),
        emu.tenant_id(),
        "operator".into(),
        "pw".into(),
    ));
    let mut arm = Arm::new(&emu.arm_endpoint(), credential, http);
    arm.poll_interval = Duration::from_millis(10);
    (emu, arm)
}
