//! The operator as a child process, as the parity run and the binary tests start it: a process
//! killed on drop, free ports, and an azure.json for the Azure emulator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podid_azure_emulator::Emulator;
use serde_json::json;

/// A child process that is killed when dropped (so a failing test leaves nothing running).
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Running {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Running { child, log }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (as Kubernetes stops a pod), then wait; SIGKILL after 10 s.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, as a crash or an OOM kill: nothing cleaned up, a Lease not released.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn assert_alive(&mut self, who: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{who} exited ({status}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// azure.json (service principal `app`, `resource_group`) for a custom cloud whose endpoints
/// (an environment file, as on Azure Stack) are the emulator's, and the emulator's CA, written
/// into `dir`: (azure.json, environment file, CA file). Start the operator with
/// `--cloudconfig=<azure.json>`, `--extra-ca-file=<CA>` and env
/// `AZURE_ENVIRONMENT_FILEPATH=<environment file>`.
pub fn cloud_config(
    dir: &Path,
    emu: &Emulator,
    resource_group: &str,
    app: (&str, &str),
) -> (PathBuf, PathBuf, PathBuf) {
    let azure_json = dir.join("azure.json");
    let env_file = dir.join("environment.json");
    let ca = dir.join("emulator-ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    let https = emu.https_endpoint();
    std::fs::write(
        &env_file,
        json!({
            "name": "AzureStackCloud",
            "resourceManagerEndpoint": format!("{https}/"),
            "activeDirectoryEndpoint": format!("{https}/"),
            "tokenAudience": format!("{https}/"),
            "resourceIdentifiers": {}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        &azure_json,
        json!({
            "cloud": "AzureStackCloud",
            "tenantId": emu.tenant_id(),
            "subscriptionId": emu.subscription_id(),
            "resourceGroup": resource_group,
            "location": "eastus",
            "vmType": "vmss",
            "aadClientId": app.0,
            "aadClientSecret": app.1,
            "useManagedIdentityExtension": false,
            "userAssignedIdentityID": ""
        })
        .to_string(),
    )
    .unwrap();
    (azure_json, env_file, ca)
}

/// podid-nmi's binary, which `cargo test --workspace` builds beside the test binaries
/// (`target/<profile>/podid-nmi`); an error naming how to build it when it is not there.
pub fn podid_nmi_binary() -> Result<PathBuf, String> {
    let bin = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .join("podid-nmi");
    match bin.is_file() {
        true => Ok(bin),
        false => Err(format!(
            "{} is not built: run the workspace's tests (tests/run.sh) or cargo build -p podid-nmi",
            bin.display()
        )),
    }
}
