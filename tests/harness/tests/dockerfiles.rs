//! deploy/images/: one Dockerfile per binary, holding the rules docs/install.md claims. No
//! Docker here, so the files are checked as text: a static binary (musl target, and no OpenSSL
//! anywhere in the dependency graph), a minimal final base (`scratch`; podid-nmi's slim Debian
//! only because it runs iptables and conntrack), a non-root USER where the component allows
//! (podid-nmi's root is stated with its reason), the binary as an exec-form ENTRYPOINT.

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The binaries users deploy, their package, and whether they run as root (with why).
const IMAGES: &[(&str, &str, Option<&str>)] = &[
    ("podid-operator", "podid-operator", None),
    (
        "podid-nmi",
        "podid-nmi",
        Some("writes iptables rules in the node's network namespace"),
    ),
    ("podid", "podid-cli", None),
];

/// The instructions of the final stage (after the last FROM), continuation lines joined.
fn stages(text: &str) -> Vec<Vec<String>> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if let Some(part) = l.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
        } else {
            cur.push_str(l);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: Vec<Vec<String>> = Vec::new();
    for ins in joined {
        if ins.starts_with("FROM ") {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("starts with FROM").push(ins);
    }
    stages
}

#[test]
fn each_binary_has_a_static_minimal_image_running_as_documented() {
    for (bin, package, root_reason) in IMAGES {
        let path = format!("{ROOT}/deploy/images/{bin}.Dockerfile");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let stages = stages(&text);
        assert!(stages.len() >= 2, "{bin}: a build stage and a final stage");
        let build = stages[..stages.len() - 1].concat().join("\n");
        let last = stages.last().unwrap();

        // Static: the musl target, the lock file as committed, this binary of this package.
        let cargo = build
            .lines()
            .find(|l| l.contains("cargo build"))
            .unwrap_or_else(|| panic!("{bin}: no cargo build"));
        for part in [
            "--release",
            "--locked",
            "--target x86_64-unknown-linux-musl",
            &format!("-p {package} "),
            &format!("--bin {bin}"),
        ] {
            assert!(
                cargo.contains(part),
                "{bin}: cargo build lacks {part:?}: {cargo}"
            );
        }

        // Minimal base.
        let from = last[0].trim_start_matches("FROM ").trim();
        match *bin {
            "podid-nmi" => {
                assert_eq!(from, "debian:bookworm-slim", "{bin}");
                let run = last.iter().find(|i| i.starts_with("RUN ")).unwrap();
                for pkg in ["iptables", "conntrack", "--no-install-recommends"] {
                    assert!(run.contains(pkg), "{bin}: {pkg} in {run}");
                }
            }
            _ => assert_eq!(from, "scratch", "{bin}: nothing but the binary"),
        }

        // The user it runs as.
        let user = last
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{bin}: the final stage names its USER"));
        let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| {
            panic!("{bin}: USER {user} is numeric (a name needs /etc/passwd, and can be root)")
        });
        match root_reason {
            None => assert_ne!(uid, 0, "{bin} runs as a non-root user"),
            Some(why) => {
                assert_eq!(uid, 0, "{bin}");
                assert!(
                    text.contains("Root, by necessity"),
                    "{bin}: root is explained in the Dockerfile ({why})"
                );
            }
        }

        // The binary itself, exec form (signals reach it, no shell in the image).
        let entry = last
            .iter()
            .find_map(|i| i.strip_prefix("ENTRYPOINT "))
            .unwrap_or_else(|| panic!("{bin}: ENTRYPOINT"));
        assert_eq!(entry, format!("[\"/{bin}\"]"), "{bin}");
        assert!(
            last.iter()
                .any(|i| i.starts_with("COPY --from=") && i.ends_with(&format!(" /{bin}"))),
            "{bin}: the binary is copied from the build stage"
        );
    }
}

/// The images are static only if nothing links a C TLS library: every HTTP and Kubernetes
/// client uses rustls.
#[test]
fn no_openssl_in_the_dependency_graph() {
    let lock = std::fs::read_to_string(format!("{ROOT}/Cargo.lock")).unwrap();
    for native in ["openssl-sys", "native-tls"] {
        assert!(
            !lock.contains(&format!("name = \"{native}\"")),
            "{native} in Cargo.lock: the musl images would need it linked"
        );
    }
}

/// The operator's image user is the one the chart runs it as when it needs no root-owned file.
#[test]
fn the_charts_non_root_user_is_the_images() {
    let chart = std::fs::read_to_string(format!(
        "{ROOT}/deploy/charts/podid/templates/operator.yaml"
    ))
    .unwrap();
    let image =
        std::fs::read_to_string(format!("{ROOT}/deploy/images/podid-operator.Dockerfile")).unwrap();
    assert!(chart.contains("runAsUser: 65532"));
    assert!(image.contains("USER 65532:65532"));
}
