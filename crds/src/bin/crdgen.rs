//! Prints podid's CustomResourceDefinitions as YAML; `--check FILE` fails when FILE differs.
//! `--kube-minor N` gives the variant for Kubernetes 1.N (`crds/crds-pre-1.31.yaml` below 31).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut minor = podid_crds::SELECTABLE_FIELDS_MINOR;
    if let Some(i) = args.iter().position(|a| a == "--kube-minor") {
        match args.get(i + 1).and_then(|m| m.parse::<u32>().ok()) {
            Some(m) if m >= podid_crds::OLDEST_KUBE_MINOR => minor = m,
            _ => {
                eprintln!(
                    "crdgen: --kube-minor takes a Kubernetes minor, {} or later (e.g. 30)",
                    podid_crds::OLDEST_KUBE_MINOR
                );
                return ExitCode::from(2);
            }
        }
        args.drain(i..i + 2);
    }
    let yaml = match podid_crds::crds_yaml_for(minor) {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.as_slice() {
        [] => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        [flag, path] if flag == "--check" => match std::fs::read_to_string(path) {
            Ok(current) if current == yaml => ExitCode::SUCCESS,
            Ok(_) => {
                let variant = if minor < podid_crds::SELECTABLE_FIELDS_MINOR {
                    format!(" -- --kube-minor {minor}")
                } else {
                    String::new()
                };
                eprintln!(
                    "crdgen: {path} is out of date with crds/src/types.rs; regenerate it with `cargo run -p podid-crds --bin crdgen{variant} > {path}`"
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("crdgen: cannot read {path}: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: crdgen [--kube-minor N] [--check FILE]");
            ExitCode::from(2)
        }
    }
}
