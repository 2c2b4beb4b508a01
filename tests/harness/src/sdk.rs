//! Running Azure SDK programs (Python's azure-identity, the original's demo) from tests: where
//! the Python venv is, an environment that holds only what the test sets, and reading the
//! tokens they get.

use std::path::PathBuf;

/// The Python venv with azure-identity that tests/azure-emulator/setup-python.sh builds
/// (`$PODID_PY_VENV`, else its cache directory); panics with the fix when it is missing.
pub fn python_venv() -> PathBuf {
    let venv = std::env::var_os("PODID_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("PODID_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/podid")
                })
                .join("venv-azure-identity-1.27.0")
        });
    assert!(
        venv.join("bin/python").is_file(),
        "{} missing: run tests/azure-emulator/setup-python.sh (tests/run.sh does)",
        venv.display()
    );
    venv
}

/// The venv's Python interpreter (see [`python_venv`]).
pub fn python() -> PathBuf {
    python_venv().join("bin/python")
}

/// Whether the SDKs read `name` to find a credential or a token endpoint: `AZURE_*`, `MSI_*`,
/// `IDENTITY_*` and `IMDS_ENDPOINT`.
pub fn is_azure_env(name: &str) -> bool {
    name.starts_with("AZURE_")
        || name.starts_with("MSI_")
        || name.starts_with("IDENTITY_")
        || name == "IMDS_ENDPOINT"
}

/// Removes from `cmd`'s environment every variable of the test's own that an Azure SDK would
/// read ([`is_azure_env`]), so the program sees only what the test then sets.
pub fn clear_azure_env(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(is_azure_env) {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The claims of a JWT, unverified; panics when `token` is not one.
pub fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url JWT payload"),
    )
    .expect("JSON JWT claims")
}
