//! `kubectl podid …`: the same program as `podid`, under the name kubectl looks for on PATH.

#[path = "../main.rs"]
mod podid_main;

fn main() -> std::process::ExitCode {
    podid_main::main()
}
