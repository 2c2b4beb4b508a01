//! The sandbox of the README's quickstart (`tests/cluster/up --with-podid`) comes up, the three
//! commands it prints succeed against it (the report, the cutover plan, a token request from the
//! sample pod's address through podid-nmi), and SIGTERM stops everything it started.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The directory of the workspace's binaries: this test's own executable sits in its `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

/// The sandbox process, stopped (SIGTERM, then killed) when the test ends however it ends, so
/// a failed run leaves nothing behind (its webhook holds a fixed port).
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_sandbox_comes_up_answers_the_quickstart_and_goes_down() {
    let dir = bin_dir();
    for b in ["podid-operator", "podid-nmi", "podid"] {
        if !dir.join(b).is_file() {
            podid_testkit::prereq::skip(
                "sandbox::up",
                &format!(
                    "{b} is not built in {} (cargo build --workspace)",
                    dir.display()
                ),
            );
            return;
        }
    }
    if let Err(e) = podid_testkit::webhook::binary("webhook") {
        podid_testkit::prereq::skip(
            "sandbox::up",
            &format!("{e} (tests/peers/build-workload-identity.sh builds it)"),
        );
        return;
    }
    let mut sandbox = Stopped(
        Command::new(env!("CARGO_BIN_EXE_podid-sandbox"))
            .arg(format!("--bin-dir={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = sandbox.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut kubeconfig, mut curl) = (None, None);
    let mut printed = Vec::new();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(wait)
            .expect("the sandbox printed its commands");
        println!("sandbox: {line}");
        if line.starts_with("Press Ctrl-C") {
            break;
        }
        printed.push(line.clone());
        if let Some(k) = line.strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(k.to_owned());
        }
        if line.trim_start().starts_with("curl ") {
            curl = Some(line.trim().to_owned());
        }
    }
    let (kubeconfig, curl) = (kubeconfig.unwrap(), curl.unwrap());

    let commands: [&[&str]; 2] = [
        &["report", "-n", "demo", "-q"],
        &["cutover", "plan", "-n", "demo", "-q"],
    ];
    for cmd in commands {
        let out = Command::new(dir.join("podid"))
            .args(cmd)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("podid {cmd:?}:\n{stdout}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{cmd:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("deployment/sample"), "{cmd:?}: {stdout}");
    }

    // The printed curl: --interface <pod IP> … '<url>'.
    let ip: std::net::IpAddr = curl.split_whitespace().nth(3).unwrap().parse().unwrap();
    let url = curl.rsplit('\'').nth(1).unwrap().to_owned();
    let http = reqwest::Client::builder()
        .local_address(ip)
        .no_proxy()
        .build()
        .unwrap();
    let resp = http
        .get(&url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{body}"
    );

    // Then the cutover the sandbox prints, as printed: the sample ends on Workload ID, verified
    // by a real exchange, then rolled back (its pods are replaced: after the token request).
    let cutover: Vec<String> = printed
        .iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| l.starts_with("podid cutover ") && !l.starts_with("podid cutover plan"))
        .collect();
    assert_eq!(cutover.len(), 5, "{printed:?}");
    for line in &cutover {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let out = Command::new(dir.join("podid"))
            .args(&args)
            .arg("-q")
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{line}:\n{stdout}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{line}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // SIGTERM: it stops what it started (the agent's port closes) and exits.
    let port = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let _ = Command::new("kill")
        .args(["-TERM", &sandbox.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = sandbox.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox did not stop in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
        "podid-nmi stopped with it"
    );
}
