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
    record_skip(
        test,
        reason,
        in_ci(),
        std::env::var_os("PODID_SKIP_LOG").as_deref(),
    );
}

/// [`skip`] with its environment passed in: `ci` (a missing prerequisite fails) and the skip log.
#[track_caller]
fn record_skip(test: &str, reason: &str, ci: bool, log: Option<&std::ffi::OsStr>) {
    if ci {
        panic!("{test}: prerequisite missing under CI=true: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    if let Some(path) = log
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
    // One name per call: tests of one binary probe concurrently.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("podid-probe-{}-{n}", std::process::id());
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

#[cfg(test)]
mod tests {
    use super::record_skip;

    #[test]
    #[should_panic(expected = "conntrack_test: prerequisite missing under CI=true: no conntrack")]
    fn under_ci_a_missing_prerequisite_fails_the_test_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record_skip(
            "conntrack_test",
            "no conntrack",
            true,
            Some(log.as_os_str()),
        );
    }

    #[test]
    fn outside_ci_each_skip_is_appended_to_the_skip_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        std::fs::write(&log, "earlier: kept\n").unwrap();
        record_skip("a", "needs root", false, Some(log.as_os_str()));
        record_skip("b", "no openssl", false, Some(log.as_os_str()));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "earlier: kept\na: needs root\nb: no openssl\n"
        );
        // Without a log the skip is only printed.
        record_skip("c", "needs root", false, None);
    }
}
