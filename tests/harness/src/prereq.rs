//! Test prerequisites the machine may lack (root, network namespaces, iptables, openssl, a built
//! binary). Under `CI=true` a missing one fails the test; elsewhere the test is skipped with the
//! reason, which is also appended to `$PODID_SKIP_LOG` so `tests/run.sh` can list every skip.

use std::io::Write;

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Reports that `test` cannot run because `reason`: panics under CI, otherwise prints the skip
/// and records it in `$PODID_SKIP_LOG`. Call it, then `return` from the test.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if in_ci() {
        panic!("{test}: prerequisite missing under CI=true: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    if let Some(path) = std::env::var_os("PODID_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{test}: {reason}");
    }
}

/// True when this process may create network namespaces (`ip netns add` works); otherwise
/// reports the skip for `test` (a failure under CI) and returns false.
pub fn netns_available(test: &str) -> bool {
    let probe = format!("podid-probe-{}", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &probe])
            .status();
    } else {
        skip(
            test,
            "`ip netns add` is not permitted here (needs root and iproute2)",
        );
    }
    ok
}
