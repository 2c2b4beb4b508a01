//! docs/podid-operator-flags.md is what the clap definitions of `podid-operator` generate: a flag added or changed
//! without the reference fails here. Regenerate with
//! `PODID_WRITE_REFERENCE=1 cargo test -p podid-operator --test flags_reference`.

use clap::CommandFactory;

#[test]
fn flag_reference_is_current() {
    let generated = podid_telemetry::reference::markdown(
        &podid_operator::config::Flags::command(),
        "`podid-operator` flags",
        "A test (flag_reference_is_current) fails when it is out of date: regenerate with `PODID_WRITE_REFERENCE=1 cargo test -p podid-operator --test flags_reference`.",
    );
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/podid-operator-flags.md");
    if std::env::var_os("PODID_WRITE_REFERENCE").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/podid-operator-flags.md is out of date: regenerate with `PODID_WRITE_REFERENCE=1 cargo test -p podid-operator --test flags_reference`"
    );
}
