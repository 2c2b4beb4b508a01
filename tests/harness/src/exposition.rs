//! Prometheus text exposition, read back: which metric families a component exposes, with their
//! types and the label names of their samples, so a test can hold podid's `/metrics` to the
//! original component's own (parity runs scrape both).

use std::collections::{BTreeMap, BTreeSet};

/// One family: its `# TYPE` and the label-name sets its samples carry (`le` and `quantile`
/// left out: those are the histogram's and summary's own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Family {
    pub kind: String,
    pub label_sets: BTreeSet<Vec<String>>,
}

/// The families of a text exposition by name. Samples are attributed to the family whose
/// `# TYPE` precedes them (`_bucket`, `_sum`, `_count` of a histogram included).
pub fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_owned()).or_default().kind = kind.to_owned();
            current = Some(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(family) = &current else { continue };
        let labels: Vec<String> = match (line.find('{'), line.rfind('}')) {
            (Some(a), Some(b)) if a < b => line[a + 1..b]
                .split("\",")
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_owned()))
                .filter(|k| !k.is_empty() && k != "le" && k != "quantile")
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        if let Some(f) = out.get_mut(family) {
            f.label_sets.insert(labels);
        }
    }
    out
}

/// What of `original`'s families (those named with `prefix`, e.g. `aadpodidentity_`) `ours`
/// lacks or exposes differently: a missing family, another type, or, where both carry samples,
/// other label names. Empty when `ours` covers them all.
pub fn differences(original: &str, ours: &str, prefix: &str) -> Vec<String> {
    let (theirs, ours) = (families(original), families(ours));
    let mut out = Vec::new();
    for (name, t) in theirs.iter().filter(|(n, _)| n.starts_with(prefix)) {
        match ours.get(name) {
            None => out.push(format!("{name}: missing")),
            Some(o) if o.kind != t.kind => {
                out.push(format!("{name}: type {} (original: {})", o.kind, t.kind))
            }
            Some(o)
                if !o.label_sets.is_empty()
                    && !t.label_sets.is_empty()
                    && o.label_sets != t.label_sets =>
            {
                out.push(format!(
                    "{name}: labels {:?} (original: {:?})",
                    o.label_sets, t.label_sets
                ))
            }
            _ => {}
        }
    }
    out
}

/// Every family aad-pod-identity v1.8.17 defines (`pkg/metrics`), MIC's and NMI's together. Its
/// exporter leaves out a family no sample was recorded in, so a run's scrape can lack some.
pub const AAD_POD_IDENTITY_FAMILIES: &[&str] = &[
    "aadpodidentity_assigned_identity_addition_count",
    "aadpodidentity_assigned_identity_addition_duration_seconds",
    "aadpodidentity_assigned_identity_deletion_count",
    "aadpodidentity_assigned_identity_deletion_duration_seconds",
    "aadpodidentity_assigned_identity_update_count",
    "aadpodidentity_assigned_identity_update_duration_seconds",
    "aadpodidentity_cloud_provider_operations_duration_seconds",
    "aadpodidentity_cloud_provider_operations_errors_count",
    "aadpodidentity_imds_operations_duration_seconds",
    "aadpodidentity_imds_operations_errors_count",
    "aadpodidentity_kubernetes_api_operations_errors_count",
    "aadpodidentity_mic_cycle_count",
    "aadpodidentity_mic_cycle_duration_seconds",
    "aadpodidentity_mic_new_leader_election_count",
    "aadpodidentity_nmi_operations_duration_seconds",
];

/// The families `ours` exposes that are neither in `original`'s exposition nor in `known` (the
/// original's families a run may leave unscraped) and not named with `own_prefix` (podid's
/// additions go under `podid_`): a name an existing dashboard would not know and could mistake
/// for the original's. Empty when every family is the original's or plainly podid's own.
pub fn unknown_families(
    original: &str,
    ours: &str,
    known: &[&str],
    own_prefix: &str,
) -> Vec<String> {
    let theirs = families(original);
    families(ours)
        .into_keys()
        .filter(|n| {
            !n.starts_with(own_prefix) && !theirs.contains_key(n) && !known.contains(&n.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_types_and_label_names_are_read_back() {
        let original = "# HELP a_x_count c\n# TYPE a_x_count counter\na_x_count{operation_type=\"t\"} 3\n# TYPE a_h histogram\na_h_bucket{op=\"x\",le=\"1\"} 1\na_h_count{op=\"x\"} 1\n";
        assert!(differences(original, original, "a_").is_empty());
        let renamed = original.replace("a_x_count", "a_x_count_total");
        assert_eq!(
            differences(original, &renamed, "a_"),
            vec!["a_x_count: missing"]
        );
        let relabelled = original.replace("op=", "operation=");
        assert_eq!(differences(original, &relabelled, "a_").len(), 1);
        let gauge = original.replace("a_x_count counter", "a_x_count gauge");
        assert_eq!(differences(original, &gauge, "a_").len(), 1);
    }

    #[test]
    fn a_family_neither_the_originals_nor_podids_own_is_named() {
        let original = "# TYPE a_x counter\na_x 1\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 2\n";
        let ours = "# TYPE a_x counter\na_x 1\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 2\n# TYPE podid_cache_hits counter\npodid_cache_hits 3\n";
        assert!(unknown_families(original, ours, &[], "podid_").is_empty());
        let extra = format!(
            "{ours}# TYPE a_y_total counter\na_y_total 1\n# TYPE cache_hits gauge\ncache_hits 1\n"
        );
        assert_eq!(
            unknown_families(original, &extra, &[], "podid_"),
            vec!["a_y_total", "cache_hits"]
        );
        // One of the original's families that this run left without samples on its side.
        assert_eq!(
            unknown_families(original, &extra, &["a_y_total"], "podid_"),
            vec!["cache_hits"]
        );
    }
}
