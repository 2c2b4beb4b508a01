//! Benchmark (not a test): a generated 50,000-pod / 500-namespace snapshot, timed through
//! parse → report → render. `cargo bench -p podid-cli --bench report_scale`.

use std::time::Instant;

#[path = "../tests/support/mod.rs"]
mod support;

use podid_cli::inventory::{ContextFromInventory, Inventory};
use podid_cli::render::{Format, render};
use podid_cli::report::Report;
use podid_crds::plan::ClusterContext;
use podid_crds::policy::MatchOptions;

fn main() -> anyhow::Result<()> {
    let pods: usize = std::env::var("PODID_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let namespaces: usize = std::env::var("PODID_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let objects = support::synth::scale_objects(namespaces, pods);
    let mut text = String::new();
    for o in &objects {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(o)?);
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("scale.yaml");
    std::fs::write(&file, &text)?;
    println!(
        "snapshot: {} objects, {:.1} MiB, {pods} pods in {namespaces} namespaces",
        objects.len(),
        text.len() as f64 / 1048576.0
    );
    for run in 1..=3 {
        let t0 = Instant::now();
        let inv = Inventory::from_files(&[&file])?;
        let t1 = Instant::now();
        let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
        let report = Report::build(&inv, &ctx, &[]);
        let t2 = Instant::now();
        let out = render(&report, Format::Table)?;
        let t3 = Instant::now();
        println!(
            "run {run}: parse {:.2}s, assess {:.2}s, render {:.2}s, total {:.2}s ({} workloads, {} bytes of table)",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t3 - t0).as_secs_f64(),
            report.summary.workloads,
            out.len()
        );
    }
    Ok(())
}
