//! Regenerates the bundled example snapshots from `podid_cli::synth`:
//! `cargo run -p podid-cli --example write-example-snapshots`.

fn main() -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::fs::write(
        dir.join("cluster-snapshot.yaml"),
        podid_cli::synth::example()?.to_snapshot_yaml()?,
    )?;
    std::fs::write(
        dir.join("legacy-cluster-snapshot.yaml"),
        podid_cli::synth::legacy_example()?.to_snapshot_yaml()?,
    )?;
    Ok(())
}
