//! Control-plane child processes: spawned from one long-lived keeper thread so they die with the
//! test binary (PR_SET_PDEATHSIG), logged to files, and stopped at exit — apiserver first.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use crate::Error;

/// Stop order at exit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Stopped first (the apiserver, so its clients see it go and nothing writes to etcd).
    First,
    /// Stopped next (the apiserver's clients: controller-manager, scheduler, kwok).
    Middle,
    /// Stopped last (etcd, once nothing talks to it).
    Last,
}

/// A running control-plane process, as tests can see it.
#[derive(Clone, Debug)]
pub struct Component {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
}

struct Proc {
    name: String,
    log: PathBuf,
    order: Order,
    child: Child,
    /// How it was started, so that [`restart`] starts it again the same way.
    bin: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
}

static PROCS: Mutex<Vec<Proc>> = Mutex::new(Vec::new());

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime) + Send>;
static KEEPER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Makes the calling thread the keeper: the thread every component is spawned from.
pub fn become_keeper() -> Receiver<Job> {
    let (tx, rx): (Sender<Job>, Receiver<Job>) = channel();
    *KEEPER.lock().expect("keeper lock") = Some(tx);
    rx
}

/// Runs on the keeper thread for the life of the test binary, executing jobs sent to it.
pub fn keeper_loop(rt: &tokio::runtime::Runtime, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        job(rt);
    }
}

/// Runs `job` on the keeper thread (so processes it spawns outlive the calling test).
pub fn on_keeper(job: Job) {
    let guard = KEEPER.lock().expect("keeper lock");
    guard
        .as_ref()
        .expect("keeper thread not running")
        .send(job)
        .expect("keeper thread gone");
}

/// Starts `bin` with `args`, output to `<dir>/<name>.log`.
pub fn spawn(
    name: &str,
    bin: &Path,
    args: &[String],
    dir: &Path,
    order: Order,
) -> Result<(), Error> {
    let log = dir.join(format!("{name}.log"));
    let child = start_child(bin, args, dir, std::fs::File::create(&log)?)?;
    tracing::debug!(component = name, pid = child.id(), "started");
    PROCS.lock().expect("procs lock").push(Proc {
        name: name.into(),
        log,
        order,
        child,
        bin: bin.to_path_buf(),
        args: args.to_vec(),
        dir: dir.to_path_buf(),
    });
    Ok(())
}

/// Stops component `name` (SIGKILL to its process group, as a crash or a node loss would),
/// leaves it down for `down`, then starts it again with the same arguments and data, its output
/// appended to the same log. Runs the start on the keeper thread. The caller waits for it to be
/// ready again.
pub async fn restart(name: &str, down: Duration) -> Result<(), Error> {
    let (bin, args, dir, log) = {
        let mut procs = PROCS.lock().expect("procs lock");
        let p = procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Wait(format!("no component {name}")))?;
        // SAFETY: signalling the child's own process group.
        unsafe { libc::kill(-(p.child.id() as i32), libc::SIGKILL) };
        let _ = p.child.wait();
        (p.bin.clone(), p.args.clone(), p.dir.clone(), p.log.clone())
    };
    tokio::time::sleep(down).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name_owned = name.to_string();
    on_keeper(Box::new(move |_rt| {
        let result = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(Error::from)
            .and_then(|out| start_child(&bin, &args, &dir, out))
            .map(|child| {
                tracing::debug!(component = name_owned, pid = child.id(), "restarted");
                let mut procs = PROCS.lock().expect("procs lock");
                if let Some(p) = procs.iter_mut().find(|p| p.name == name_owned) {
                    p.child = child;
                }
            });
        let _ = tx.send(result);
    }));
    rx.await
        .map_err(|_| Error::Wait("keeper thread gone".into()))?
}

/// The child process of a component, output to `out`, in its own process group, killed when
/// the keeper thread goes.
fn start_child(
    bin: &Path,
    args: &[String],
    dir: &Path,
    out: std::fs::File,
) -> Result<Child, Error> {
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir(dir);
    // SAFETY: getpid is called here, in the parent. In the child, prctl, getppid, setpgid and
    // _exit are async-signal-safe and touch only the child.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before prctl took effect; then no signal would come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

/// Polls `ready` with backoff until it holds, failing fast if the component exits.
pub async fn wait_ready<F, Fut>(name: &str, secs: u64, ready: F) -> Result<(), Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut delay = Duration::from_millis(50);
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some((status, log)) = exited(name) {
            return Err(Error::Exited {
                component: name.into(),
                status,
                log,
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::NotReady {
                component: name.into(),
                secs,
                log: log_of(name).unwrap_or_default(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Resolves with [`Error::Exited`] as soon as one of `names` exits.
pub async fn watch_exits(names: &[&str]) -> Error {
    let mut delay = Duration::from_millis(50);
    loop {
        for name in names {
            if let Some((status, log)) = exited(name) {
                return Error::Exited {
                    component: (*name).into(),
                    status,
                    log,
                };
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

fn exited(name: &str) -> Option<(String, PathBuf)> {
    let mut procs = PROCS.lock().expect("procs lock");
    let p = procs.iter_mut().find(|p| p.name == name)?;
    match p.child.try_wait() {
        Ok(Some(status)) => Some((status.to_string(), p.log.clone())),
        _ => None,
    }
}

fn log_of(name: &str) -> Option<PathBuf> {
    PROCS
        .lock()
        .ok()?
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.log.clone())
}

/// Prints the last lines of every component's log to stderr.
pub fn dump_logs() {
    let Ok(procs) = PROCS.lock() else { return };
    for p in procs.iter() {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        eprintln!(
            "----- {} ({}; last {} lines) -----",
            p.name,
            p.log.display(),
            tail.len()
        );
        for l in tail {
            eprintln!("{l}");
        }
    }
}

/// The control-plane processes started so far (and not yet stopped).
pub fn components() -> Vec<Component> {
    let Ok(procs) = PROCS.lock() else {
        return Vec::new();
    };
    procs
        .iter()
        .map(|p| Component {
            name: p.name.clone(),
            pid: p.child.id(),
            log: p.log.clone(),
        })
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Stops every component in [`Order`]: SIGTERM to its process group, SIGKILL after 5 s.
pub fn stop_all() {
    let Ok(mut procs) = PROCS.lock() else { return };
    for order in [Order::First, Order::Middle, Order::Last] {
        let group: Vec<&mut Proc> = procs.iter_mut().filter(|p| p.order == order).collect();
        for p in &group {
            // SAFETY: signalling the child's own process group.
            unsafe { libc::kill(-(p.child.id() as i32), libc::SIGTERM) };
        }
        for p in group {
            let mut waited = Duration::ZERO;
            while matches!(p.child.try_wait(), Ok(None)) && waited < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
                waited += Duration::from_millis(20);
            }
            if matches!(p.child.try_wait(), Ok(None)) {
                // SAFETY: as above.
                unsafe { libc::kill(-(p.child.id() as i32), libc::SIGKILL) };
                let _ = p.child.wait();
            }
        }
    }
    procs.clear();
}

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// File in a cluster directory naming the process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// Removes `dir` at exit, after the processes stopped, unless `PODID_KEEP_CLUSTER_DIR` is set.
/// Records this process as the owner, so a later run can remove the directory if this one was
/// killed before its exit hook ran.
pub fn remove_at_exit(dir: &Path) -> Result<(), Error> {
    if std::env::var_os("PODID_KEEP_CLUSTER_DIR").is_some() {
        return Ok(());
    }
    std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
    DIRS.lock().expect("dirs lock").push(dir.to_path_buf());
    Ok(())
}

/// Removes `podid-cluster-*` directories under `tmp` left by test binaries that were killed
/// (their owner process is gone). Kept directories (`PODID_KEEP_CLUSTER_DIR`) have no owner file
/// and are left alone.
pub fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        if !e
            .file_name()
            .to_string_lossy()
            .starts_with("podid-cluster-")
        {
            continue;
        }
        let dir = e.path();
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if owner.is_some_and(|pid| !process_alive(pid)) {
            tracing::debug!(dir = %dir.display(), "removing stale cluster directory");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Whether `pid` names a live (not zombie) process.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

extern "C" fn at_exit() {
    stop_all();
    if let Ok(dirs) = DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Bounds the test binary's whole run: after `PODID_TEST_BINARY_TIMEOUT_SECS` (default 1200 s,
/// four times the longest binary measured) it prints which binary overran, the components' logs,
/// stops them and exits with 101, so a test that hangs fails this binary instead of stalling CI.
pub fn arm_watchdog() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let secs = std::env::var("PODID_TEST_BINARY_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1200);
        let _ = std::thread::Builder::new()
            .name("podid-testkit-watchdog".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                let exe = std::env::current_exe().unwrap_or_default();
                eprintln!(
                    "\npodid testkit: {} still running after {secs} s \
                     (PODID_TEST_BINARY_TIMEOUT_SECS): a test hangs; stopping it",
                    exe.display()
                );
                dump_logs();
                stop_all();
                std::process::exit(101);
            });
    });
}

/// Registers the exit hook (once).
pub fn install_exit_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a plain extern "C" function.
    ONCE.call_once(|| unsafe {
        libc::atexit(at_exit);
    });
}
