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
}
