//! Teardown: a test binary that starts the control plane leaves nothing behind — no processes,
//! no listening ports, no directory — whether its tests pass, panic, or the binary is killed.
//! Each case runs this binary again as a child (`child_cluster` with an env var set), so the
//! parent process never starts a control plane itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podid_testkit::{Cluster, NodePool};

const CHILD_ENV: &str = "PODID_TESTKIT_TEARDOWN_CHILD";
const REPORT: &str = "PODID-TEARDOWN ";

/// What the child saw: its components, ports and directory.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Report {
    pids: Vec<(String, u32)>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

/// Runs only as the child: starts the control plane (with one fake node, so every component
/// runs), reports, then ends as `$PODID_TESTKIT_TEARDOWN_CHILD` says: `pass`, `panic`, or
/// `hang` (the parent kills it).
#[tokio::test]
async fn child_cluster() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cluster = Cluster::shared_async().await;
    cluster
        .add_nodes(&NodePool::aks("teardown", 1))
        .await
        .expect("fake node");
    let ns = cluster.namespace("teardown").await;
    let port = |url: &str| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let report = Report {
        pids: cluster
            .components()
            .into_iter()
            .map(|c| (c.name, c.pid))
            .collect(),
        ports: vec![port(cluster.server()), port(cluster.etcd_url())],
        dir: cluster.dir().to_path_buf(),
    };
    println!("{REPORT}{}", serde_json::to_string(&report).unwrap());
    match mode.as_str() {
        "pass" => {}
        "panic" => panic!("deliberate failure in namespace {}", ns.name),
        "hang" => std::future::pending::<()>().await,
        other => panic!("unknown mode {other}"),
    }
}

struct ChildRun {
    report: Report,
    success: bool,
    stderr: String,
}

/// One child control plane at a time: three at once would crowd two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_child(mode: &str) -> ChildRun {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_cluster",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env_remove("PODID_KEEP_CLUSTER_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run child test binary");
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut report = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest may have printed `test child_cluster ... ` on the same line.
        if let Some((_, json)) = line.split_once(REPORT) {
            report = Some(serde_json::from_str::<Report>(json).unwrap());
            if mode == "hang" {
                child.kill().unwrap();
            }
            // Keep reading until the child closes stdout, so it never blocks on a full pipe.
        }
    }
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    let report = report.unwrap_or_else(|| panic!("child ({mode}) reported nothing: {stderr}"));
    ChildRun {
        report,
        success: status.success(),
        stderr,
    }
}

/// Waits until `done` holds, polling: the processes here are not ours to wait on, so there
/// is nothing to watch.
fn eventually(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what} after {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn assert_nothing_left(run: &ChildRun, dir_removed: bool) {
    let r = &run.report;
    let names: Vec<&str> = r.pids.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ] {
        assert!(names.contains(&want), "{want} not among {names:?}");
    }
    for (name, pid) in &r.pids {
        eventually(&format!("{name} (pid {pid}) still running"), 15, || {
            !alive(*pid)
        });
    }
    for port in &r.ports {
        eventually(&format!("port {port} still taken"), 15, || {
            std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok()
        });
    }
    if dir_removed {
        assert!(!r.dir.exists(), "{} left behind", r.dir.display());
    }
}

#[test]
fn runs_twice_in_a_row_and_leaves_nothing_behind() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let first = run_child("pass");
    assert!(first.success, "first run failed: {}", first.stderr);
    assert_nothing_left(&first, true);
    let second = run_child("pass");
    assert!(second.success, "second run failed: {}", second.stderr);
    assert_nothing_left(&second, true);
    assert_ne!(first.report.ports, second.report.ports);
}

#[test]
fn a_failing_test_prints_logs_and_still_stops_everything() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_child("panic");
    assert!(!run.success, "the child was meant to fail");
    assert!(
        run.stderr.contains("----- kube-apiserver"),
        "component logs not printed on failure: {}",
        run.stderr
    );
    assert_nothing_left(&run, true);
}

#[test]
fn a_killed_test_binary_takes_its_control_plane_with_it() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_child("hang");
    assert!(!run.success, "the child was meant to be killed");
    // SIGKILL skips the exit hook; PR_SET_PDEATHSIG ends the components.
    assert_nothing_left(&run, false);
    // The next control plane removes the directory the killed one left (unless another test
    // binary starting meanwhile already did).
    let next = run_child("pass");
    assert!(next.success, "{}", next.stderr);
    assert!(
        !run.report.dir.exists(),
        "stale {} not removed",
        run.report.dir.display()
    );
}
