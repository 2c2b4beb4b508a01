//! azure.json (the cloud provider's file on each node, which podid-operator reads) and, after a
//! NUL byte, the AzureStackCloud environment file (`AZURE_ENVIRONMENT_FILEPATH`): any bytes are
//! read without panicking. A rejected file's error names what is wrong (the file, the missing
//! field, the unknown cloud); an accepted one resolves to what the file says, with endpoints
//! without trailing slashes, and the secret never shows in the configuration's `Debug`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use podid_azure::{AzureJson, CloudConfig, CredentialConfig, Error, Overrides};

fn scratch() -> &'static (PathBuf, PathBuf) {
    static DIR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        // In memory where there is /dev/shm: rewriting a file on disk waits for the disk.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("podid-fuzz-azure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        (dir.join("azure.json"), dir.join("environment.json"))
    })
}

fn overrides(env_file: Option<&PathBuf>) -> Overrides {
    Overrides {
        imds_endpoint: "http://169.254.169.254".into(),
        environment_file: env_file.map(|p| p.display().to_string()),
        ..Default::default()
    }
}

fn field_empty(j: &AzureJson, field: &str) -> bool {
    match field {
        "tenantId" => j.tenant_id.is_empty(),
        "subscriptionId" => j.subscription_id.is_empty(),
        f if f.starts_with("aadClientId/aadClientSecret") => {
            j.aad_client_id.is_empty() || j.aad_client_secret.is_empty()
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let (azure_json, env) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let (json_path, env_path) = scratch();
    std::fs::write(json_path, azure_json).expect("writing azure.json");
    if let Some(env) = env {
        std::fs::write(env_path, env).expect("writing the environment file");
    }
    let o = overrides(env.map(|_| env_path));
    let parsed = std::str::from_utf8(azure_json)
        .ok()
        .and_then(|t| serde_json::from_str::<AzureJson>(t).ok());
    match CloudConfig::load(Some(json_path), &o) {
        Err(Error::ConfigRead { .. }) => {
            assert!(
                std::str::from_utf8(azure_json).is_err(),
                "only non-UTF-8 fails to read"
            );
        }
        Err(e @ Error::ConfigParse { .. }) => {
            assert!(parsed.is_none());
            assert!(
                e.to_string().contains(&json_path.display().to_string()),
                "{e}"
            );
        }
        Err(Error::ConfigMissing(field)) => {
            let j = parsed.expect("parsed");
            assert!(field_empty(&j, field), "{field} reported missing but set");
        }
        Err(Error::UnknownCloud(name)) => {
            let j = parsed.expect("parsed");
            assert_eq!(name, j.cloud);
        }
        Err(Error::EnvironmentFile { path, reason }) => {
            let j = parsed.expect("parsed");
            assert!(
                j.cloud.eq_ignore_ascii_case("AzureStackCloud"),
                "{}",
                j.cloud
            );
            assert!(!reason.is_empty());
            match env {
                Some(_) => assert_eq!(path, env_path.display().to_string()),
                None => assert!(path.is_empty()),
            }
        }
        Err(e) => panic!("reading azure.json gave {e}"),
        Ok(c) => {
            let j = parsed.expect("an accepted file parses");
            assert!(!c.subscription_id.is_empty());
            assert_eq!(c.subscription_id, j.subscription_id);
            assert_eq!(c.resource_group, j.resource_group);
            for e in [
                &c.endpoints.arm,
                &c.endpoints.arm_audience,
                &c.endpoints.authority_host,
            ] {
                assert!(!e.ends_with('/'), "{e}");
            }
            assert_eq!(
                c.cluster_identity.as_deref(),
                Some(j.user_assigned_identity_id.as_str()).filter(|s| !s.is_empty())
            );
            match &c.credential {
                CredentialConfig::ManagedIdentity { client_id, .. } => {
                    assert!(j.use_managed_identity_extension);
                    assert_eq!(client_id, &c.cluster_identity);
                }
                CredentialConfig::ClientSecret {
                    authority_host,
                    tenant_id,
                    client_id,
                    secret,
                } => {
                    assert!(!j.use_managed_identity_extension);
                    assert_eq!(authority_host, &c.endpoints.authority_host);
                    assert!(!tenant_id.is_empty() && !client_id.is_empty());
                    assert_eq!(secret, &j.aad_client_secret);
                    // The secret never reaches a log: Debug does not depend on it.
                    let mut other = c.clone();
                    if let CredentialConfig::ClientSecret { secret, .. } = &mut other.credential {
                        *secret = format!("{secret}x");
                    }
                    assert_eq!(format!("{c:?}"), format!("{other:?}"));
                }
            }
        }
    }
});
