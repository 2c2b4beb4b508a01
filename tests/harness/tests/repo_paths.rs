//! Every file in the repository stands on its own: no tracked file (docs, code, scripts) sends
//! its reader to a path on the machine it was written on, which nobody who clones the
//! repository has.

use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Paths that exist only on the machine the project was developed on. Spelled in pieces so
/// this file does not match itself.
fn forbidden() -> [String; 2] {
    [format!("/{}/", "work"), format!("../{}", "shared")]
}

/// Every line of `text` holding one of the forbidden paths, as `path:line: text`.
fn offending_lines(path: &str, text: &str) -> Vec<String> {
    let needles = forbidden();
    text.lines()
        .enumerate()
        .filter(|(_, l)| needles.iter().any(|n| l.contains(n.as_str())))
        .map(|(i, l)| format!("{path}:{}: {}", i + 1, l.trim()))
        .collect()
}

#[test]
fn the_check_finds_a_forbidden_path() {
    let bad = format!("see {}steering/notes.md", forbidden()[0]);
    assert_eq!(
        offending_lines("docs/x.md", &format!("ok\n{bad}\n")),
        vec![format!("docs/x.md:2: {bad}")]
    );
    let shared = format!("cp {}/thing .", forbidden()[1]);
    assert_eq!(offending_lines("run.sh", &shared).len(), 1);
    assert!(offending_lines("a.rs", "let p = \"/workspace/x\"; // workdir").is_empty());
}

#[test]
fn no_tracked_file_refers_to_a_path_outside_the_repository() {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(ROOT)
        .output()
        .expect("running `git ls-files` (this test needs git and a git checkout)");
    assert!(
        out.status.success(),
        "`git ls-files` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "`git ls-files` listed no Cargo.toml"
    );
    let mut found = Vec::new();
    for f in &files {
        // A tracked file deleted in the working tree has nothing to check.
        let Ok(bytes) = std::fs::read(format!("{ROOT}/{f}")) else {
            continue;
        };
        // Binary files (anything with a NUL byte or not UTF-8) are not read as text.
        if bytes.contains(&0) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        found.extend(offending_lines(f, text));
    }
    assert!(
        found.is_empty(),
        "tracked files refer to paths outside the repository; say the facts in the file \
         itself instead:\n{}",
        found.join("\n")
    );
}
