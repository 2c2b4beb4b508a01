//! Prints podid's CustomResourceDefinitions as YAML; `--check FILE` fails when FILE differs.

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match podid_crds::crds_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        [flag, path] if flag == "--check" => match std::fs::read_to_string(path) {
            Ok(current) if current == yaml => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "crdgen: {path} is out of date with crds/src/types.rs; regenerate it with `cargo run -p podid-crds --bin crdgen > {path}`"
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("crdgen: cannot read {path}: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: crdgen [--check FILE]");
            ExitCode::from(2)
        }
    }
}
