//! `/metrics` as the original aad-pod-identity components expose it: the Prometheus text format
//! (0.0.4), where the original's counters keep their names (`aadpodidentity_…_count`, no
//! `_total`), so dashboards and alerts written for the original keep working. prometheus-client
//! renders OpenMetrics, whose counters must end in `_total`; [`render`] turns that into the
//! Prometheus text format: counters of the original's namespace ([`ORIGINAL_PREFIX`]) lose the
//! suffix, podid's own counters keep it (named `…_total` in their `# TYPE` line too), and the
//! OpenMetrics-only lines (`# EOF`, `# UNIT`) go.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// Content type of [`render`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The namespace of the original components' metrics: register them in
/// `registry.sub_registry_with_prefix("aadpodidentity")`.
pub const ORIGINAL_PREFIX: &str = "aadpodidentity_";

/// The registry in the Prometheus text format (see the module's documentation).
pub fn render(registry: &Registry) -> String {
    let mut open = String::new();
    let _ = encode(&mut open, registry);
    from_openmetrics(&open)
}

fn from_openmetrics(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // The counter family being written, and whether it keeps `_total`.
    let mut counter: Option<(String, bool)> = None;
    // `# HELP` comes before `# TYPE`, which decides the name it is written under.
    let mut help: Option<String> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(
                rest.split_once(' ')
                    .map(|(_, h)| h)
                    .unwrap_or("")
                    .to_owned(),
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, ""));
            counter =
                (kind == "counter").then(|| (name.to_owned(), !name.starts_with(ORIGINAL_PREFIX)));
            let exposed = match &counter {
                Some((name, true)) => format!("{name}_total"),
                _ => name.to_owned(),
            };
            if let Some(h) = help.take() {
                out.push_str(&format!("# HELP {exposed} {h}\n"));
            }
            out.push_str(&format!("# TYPE {exposed} {kind}\n"));
            continue;
        }
        match &counter {
            Some((family, false)) => {
                let total = format!("{family}_total");
                match line.strip_prefix(&total) {
                    Some(rest) => out.push_str(&format!("{family}{rest}")),
                    None => out.push_str(line),
                }
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::Histogram;

    #[test]
    fn the_originals_counters_keep_their_names_and_podids_keep_total() {
        let mut registry = Registry::default();
        let original = registry.sub_registry_with_prefix("aadpodidentity");
        let errors: Family<Vec<(String, String)>, Counter> = Family::default();
        original.register("imds_operations_errors_count", "Errors", errors.clone());
        let hist = Histogram::new([0.5, 1.0]);
        original.register("nmi_operations_duration_seconds", "Duration", hist.clone());
        let ours = Counter::<u64>::default();
        registry.register("podid_operator_arm_calls", "Calls", ours.clone());
        errors
            .get_or_create(&vec![("operation_type".into(), "adal_token".into())])
            .inc();
        hist.observe(0.7);
        ours.inc();
        let text = render(&registry);
        for want in [
            "# TYPE aadpodidentity_imds_operations_errors_count counter",
            r#"aadpodidentity_imds_operations_errors_count{operation_type="adal_token"} 1"#,
            "# TYPE aadpodidentity_nmi_operations_duration_seconds histogram",
            r#"aadpodidentity_nmi_operations_duration_seconds_bucket{le="1.0"} 1"#,
            "aadpodidentity_nmi_operations_duration_seconds_count 1",
            "# HELP podid_operator_arm_calls_total Calls.",
            "# TYPE podid_operator_arm_calls_total counter",
            "# HELP aadpodidentity_imds_operations_errors_count Errors.",
            "podid_operator_arm_calls_total 1",
        ] {
            assert!(text.lines().any(|l| l == want), "{want}\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("errors_count_total"), "{text}");
    }
}
