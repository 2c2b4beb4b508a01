//! The Azure emulator and `podid` configured for it, for the identity commands' tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use podid_azure_emulator::{Emulator, Settings};
use podid_testkit::Cluster;

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The emulator, and `podid` configured for it (azure.json with a service principal, the
/// cloud's endpoints at the emulator).
pub struct Azure {
    pub emu: Emulator,
    _dir: tempfile::TempDir,
    pub env_file: PathBuf,
    pub cloud: String,
}

pub async fn azure() -> Azure {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let (app, secret) = ("1d000000-0000-0000-0000-00000000c11a", "identity-s3cret");
    emu.add_app(app, Some(secret), None);
    let dir = tempfile::tempdir().unwrap();
    let (azure_json, env_file) = emu
        .write_cloud_config(dir.path(), "rg", (app, secret))
        .unwrap();
    Azure {
        emu,
        env_file,
        cloud: format!("--cloud-config={}", azure_json.display()),
        _dir: dir,
    }
}

impl Azure {
    pub fn podid(&self, cluster: &Cluster, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_podid"))
            .args(args)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("AZURE_ENVIRONMENT_FILEPATH", &self.env_file)
            .env_remove("AZURE_CLIENT_SECRET")
            .env_remove("AZURE_CLOUD_CONFIG")
            .env_remove("AZURE_TENANT_ID")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        println!("$ podid {}\n{}", args.join(" "), text(&out));
        out
    }
}
