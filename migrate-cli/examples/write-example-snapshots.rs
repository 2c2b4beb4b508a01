//! Regenerates the bundled example snapshots from `tests/support/synth.rs`:
//! `cargo run -p podid-cli --example write-example-snapshots`.

#[path = "../tests/support/mod.rs"]
mod support;

fn main() -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::fs::write(
        dir.join("cluster-snapshot.yaml"),
        support::synth::example().to_snapshot_yaml()?,
    )?;
    std::fs::write(
        dir.join("legacy-cluster-snapshot.yaml"),
        support::synth::legacy_example().to_snapshot_yaml()?,
    )?;
    Ok(())
}
