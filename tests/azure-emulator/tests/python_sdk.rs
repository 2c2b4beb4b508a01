//! Python's azure-identity (installed from PyPI by setup-python.sh) against the emulator:
//! ManagedIdentityCredential on IMDS, ClientSecretCredential and WorkloadIdentityCredential on
//! the https Entra endpoint.

use std::process::Stdio;

use podid_azure_emulator::{Emulator, FederatedCredential, Settings};

/// Runs a Python snippet with a clean Azure environment plus `env`; returns stdout.
async fn run(script: &str, env: &[(&str, String)]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(podid_testkit::sdk::python());
    cmd.arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    podid_testkit::sdk::clear_azure_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

const PRINT_CLAIMS: &str = r#"
import base64, json
def claims(t):
    p = t.split('.')[1]
    return json.loads(base64.urlsafe_b64decode(p + '=' * (-len(p) % 4)))
"#;

#[tokio::test]
async fn managed_identity_credential_on_imds() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let mine = emu.add_identity("rg", "mine");
    let other = emu.add_identity("rg", "other");
    let vmss = emu.add_scale_set("MC_rg", "aks-nodepool1-12345678-vmss", 2);
    emu.preassign(&vmss, &mine.id);
    let script = format!(
        "{PRINT_CLAIMS}\nimport sys\nfrom azure.identity import ManagedIdentityCredential\nt = ManagedIdentityCredential(client_id=sys.argv[1] if len(sys.argv) > 1 else None).get_token('https://vault.azure.net/.default')\nprint(json.dumps(claims(t.token)))"
    );
    let env = [(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        emu.imds_endpoint("aks-nodepool1-12345678-vmss_1"),
    )];
    let script_for = |cid: &str| {
        script.replace(
            "sys.argv[1] if len(sys.argv) > 1 else None",
            &format!("'{cid}'"),
        )
    };
    let out = run(&script_for(&mine.client_id), &env)
        .await
        .expect("token for an assigned identity");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["appid"], mine.client_id);
    assert_eq!(c["xms_mirid"], mine.id);
    assert_eq!(c["aud"], "https://vault.azure.net");

    let err = run(&script_for(&other.client_id), &env).await.unwrap_err();
    assert!(
        err.contains("CredentialUnavailableError") || err.contains("not been assigned"),
        "{err}"
    );
    assert!(emu.call_count("GET imds.token") >= 2);
}

#[tokio::test]
async fn client_secret_and_workload_identity_credentials_on_https_entra() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("22222222-2222-2222-2222-222222222222", Some("s3cret"), None);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    let base_env = vec![
        ("AZURE_AUTHORITY_HOST", emu.authority_host()),
        ("REQUESTS_CA_BUNDLE", ca.display().to_string()),
        ("AZURE_TENANT_ID", emu.tenant_id()),
    ];

    let script = format!(
        "{PRINT_CLAIMS}\nimport os\nfrom azure.identity import ClientSecretCredential\nc = ClientSecretCredential(os.environ['AZURE_TENANT_ID'], '22222222-2222-2222-2222-222222222222', os.environ['SECRET'], authority=os.environ['AZURE_AUTHORITY_HOST'], disable_instance_discovery=True)\nprint(json.dumps(claims(c.get_token('https://management.azure.com/.default').token)))"
    );
    let mut env = base_env.clone();
    env.push(("SECRET", "s3cret".into()));
    let c: serde_json::Value =
        serde_json::from_str(&run(&script, &env).await.expect("ClientSecretCredential")).unwrap();
    assert_eq!(c["azp"], "22222222-2222-2222-2222-222222222222");
    let mut env = base_env.clone();
    env.push(("SECRET", "nope".into()));
    let err = run(&script, &env).await.unwrap_err();
    assert!(err.contains("AADSTS7000215"), "{err}");

    // WorkloadIdentityCredential with a token file, as the Workload ID webhook sets it up. The
    // issuer here is a stand-in whose JWKS the emulator itself serves (its own signing key).
    let identity = emu.add_identity("rg", "wi");
    let issuer = format!("{}/{}/v2.0", emu.authority_host(), emu.tenant_id());
    emu.trust_issuer_ca(emu.ca_pem());
    emu.add_federated_credential(
        &identity.id,
        FederatedCredential {
            name: "wi-demo",
            issuer: &issuer,
            subject: "system:serviceaccount:demo:app",
            audience: "api://AzureADTokenExchange",
        },
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, emu.sign_for_tests(&serde_json::json!({
        "iss": issuer, "sub": "system:serviceaccount:demo:app", "aud": ["api://AzureADTokenExchange"],
        "iat": now, "nbf": now, "exp": now + 600
    })))
    .unwrap();
    let mut env = base_env.clone();
    env.push(("AZURE_CLIENT_ID", identity.client_id.clone()));
    env.push((
        "AZURE_FEDERATED_TOKEN_FILE",
        token_file.display().to_string(),
    ));
    let script = format!(
        "{PRINT_CLAIMS}\nfrom azure.identity import WorkloadIdentityCredential\nprint(json.dumps(claims(WorkloadIdentityCredential().get_token('https://storage.azure.com/.default').token)))"
    );
    let c: serde_json::Value = serde_json::from_str(
        &run(&script, &env)
            .await
            .expect("WorkloadIdentityCredential"),
    )
    .unwrap();
    assert_eq!(c["xms_mirid"], identity.id);
}
