//! What the side-by-side benchmarks (`bench/*.sh`) share: knobs from the environment, medians
//! and quantiles, a process's CPU time and peak memory read from `/proc`, and the SVG bar chart
//! each writes beside its JSON.

use std::time::Duration;

/// `name` from the environment as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1, nearest rank) of `sorted` (ascending); zero for none.
pub fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
    sorted[i]
}

/// CPU time and memory of a running process, from `/proc/<pid>`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcUsage {
    /// User plus system time so far.
    pub cpu: Duration,
    /// Resident set now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set since start or since [`reset_peak_rss`], KiB (`VmHWM`).
    pub peak_rss_kib: u64,
}

impl ProcUsage {
    /// Reads `pid`'s usage; `None` when it is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces: count fields after its closing paren.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Some(Self {
            cpu: Duration::from_secs_f64(ticks as f64 / hz),
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
        })
    }
}

/// Resets `pid`'s peak resident set to its current one (`/proc/<pid>/clear_refs`), so that
/// [`ProcUsage::peak_rss_kib`] covers one phase of a run.
pub fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// One kind of bar in a [`bar_chart`] (podid, the original, ...).
pub struct Series {
    pub name: String,
    pub color: &'static str,
}

/// One side of a [`bar_chart`]: what its bars measure, and the decimals of their labels.
pub struct Panel {
    pub title: String,
    pub decimals: usize,
}

/// One group of bars: `values[series][panel]` (`None`: no bar).
pub struct ChartRow {
    pub name: String,
    pub values: Vec<Vec<Option<f64>>>,
}

/// A horizontal bar chart as SVG: one panel beside the other, one group of bars per row, one
/// bar per series, each panel scaled to its own largest value, every bar labelled.
pub fn bar_chart(series: &[Series], panels: &[Panel], rows: &[ChartRow]) -> String {
    let (left, bar, gap) = (270.0, 18.0, 6.0);
    let panel_w = 300.0;
    let row_h = 16.0 + (bar + gap) * series.len() as f64;
    let w = left + (panel_w + 20.0) * panels.len() as f64;
    let h = 60.0 + row_h * rows.len() as f64;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
"##
    );
    for (p, panel) in panels.iter().enumerate() {
        s += &format!(
            "<text x=\"{}\" y=\"20\" font-weight=\"bold\">{}</text>\n",
            left + (panel_w + 20.0) * p as f64,
            escape(&panel.title)
        );
    }
    let mut x = 10.0;
    for se in series {
        s += &format!(
            "<rect x=\"{x}\" y=\"30\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"41\">{}</text>\n",
            se.color,
            x + 16.0,
            escape(&se.name)
        );
        x += 30.0 + 7.0 * se.name.len() as f64;
    }
    let max: Vec<f64> = (0..panels.len())
        .map(|p| {
            rows.iter()
                .flat_map(|r| r.values.iter().filter_map(|v| v.get(p).copied().flatten()))
                .fold(0.0, f64::max)
        })
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let y = 60.0 + row_h * i as f64;
        s += &format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n",
            y + bar,
            escape(&r.name)
        );
        for (j, (se, values)) in series.iter().zip(&r.values).enumerate() {
            let by = y + 4.0 + (bar + gap) * j as f64;
            for (p, panel) in panels.iter().enumerate() {
                let Some(v) = values.get(p).copied().flatten() else {
                    continue;
                };
                let px = left + (panel_w + 20.0) * p as f64;
                let bw = if max[p] > 0.0 {
                    (v / max[p] * (panel_w - 70.0)).max(1.0)
                } else {
                    1.0
                };
                s += &format!(
                    "<rect x=\"{px}\" y=\"{by}\" width=\"{bw:.1}\" height=\"{bar}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\">{v:.*}</text>\n",
                    se.color,
                    px + bw + 4.0,
                    by + 13.0,
                    panel.decimals,
                );
            }
        }
    }
    s + "</svg>\n"
}

/// The audit policy of [`crate::AUDIT_LOG_ENV`]: every request at Metadata level (who, verb,
/// resource, user agent; no bodies), one event when its response is complete (and one when a
/// watch's response starts).
pub const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
";

/// Requests counted from an API server audit log (JSON lines): per user agent, per verb. A
/// request counts once however many stages of it were logged (by its `auditID`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditCounts {
    /// user agent → verb → requests.
    pub by_agent: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

impl AuditCounts {
    /// Counts the events of `text` (lines that are not JSON events are skipped).
    pub fn parse(text: &str) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut out = Self::default();
        for line in text.lines() {
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(id) = ev["auditID"].as_str() else {
                continue;
            };
            if !seen.insert(id.to_string()) {
                continue;
            }
            let agent = ev["userAgent"].as_str().unwrap_or_default().to_string();
            let verb = ev["verb"].as_str().unwrap_or_default().to_string();
            *out.by_agent
                .entry(agent)
                .or_default()
                .entry(verb)
                .or_default() += 1;
        }
        out
    }

    /// The events of the file at `path` from byte `from` on (what was logged since a
    /// [`std::fs::metadata`] length taken earlier).
    pub fn read(path: &std::path::Path, from: u64) -> std::io::Result<Self> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(path)?;
        f.seek(std::io::SeekFrom::Start(from))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        Ok(Self::parse(&text))
    }

    /// Requests per verb of the user agents starting with `prefix`.
    pub fn verbs(&self, prefix: &str) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for (agent, verbs) in &self.by_agent {
            if agent.starts_with(prefix) {
                for (verb, n) in verbs {
                    *out.entry(verb.clone()).or_default() += n;
                }
            }
        }
        out
    }

    /// All requests of the user agents starting with `prefix`.
    pub fn total(&self, prefix: &str) -> u64 {
        self.verbs(prefix).values().sum()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 501);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile::<u32>(&[], 0.5), 0);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        let u = ProcUsage::of(std::process::id()).expect("own /proc");
        assert!(u.cpu > Duration::ZERO, "{u:?}");
        assert!(u.rss_kib > 0 && u.peak_rss_kib >= u.rss_kib, "{u:?}");
        assert_eq!(ProcUsage::of(u32::MAX), None);
    }

    #[test]
    fn audit_events_count_once_per_request_by_agent_and_verb() {
        let log = [
            r#"{"auditID":"a","stage":"ResponseStarted","verb":"watch","userAgent":"mic/v0.0.0"}"#,
            r#"{"auditID":"a","stage":"ResponseComplete","verb":"watch","userAgent":"mic/v0.0.0"}"#,
            r#"{"auditID":"b","stage":"ResponseComplete","verb":"create","userAgent":"mic/v0.0.0"}"#,
            r#"{"auditID":"c","stage":"ResponseComplete","verb":"create","userAgent":"mic/v0.0.0"}"#,
            r#"{"auditID":"d","stage":"ResponseComplete","verb":"patch","userAgent":"podid-operator/0.1.0"}"#,
            "not json",
        ]
        .join("\n");
        let c = AuditCounts::parse(&log);
        assert_eq!(c.total("mic/"), 3);
        assert_eq!(c.verbs("mic/")["create"], 2);
        assert_eq!(c.verbs("mic/")["watch"], 1);
        assert_eq!(c.total("podid-operator/"), 1);
        assert_eq!(c.total("kube-scheduler/"), 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, &log).unwrap();
        let from = log.find(r#"{"auditID":"d""#).unwrap() as u64;
        let since = AuditCounts::read(&path, from).unwrap();
        assert_eq!(
            (since.total("mic/"), since.total("podid-operator/")),
            (0, 1)
        );
    }

    #[test]
    fn the_chart_draws_a_labelled_bar_per_value_scaled_per_panel() {
        let svg = bar_chart(
            &[
                Series {
                    name: "podid".into(),
                    color: "#2b6cb0",
                },
                Series {
                    name: "original <v1>".into(),
                    color: "#c05621",
                },
            ],
            &[
                Panel {
                    title: "req/s".into(),
                    decimals: 0,
                },
                Panel {
                    title: "MiB".into(),
                    decimals: 1,
                },
            ],
            &[ChartRow {
                name: "warm".into(),
                values: vec![vec![Some(2000.0), Some(20.0)], vec![Some(1000.0), None]],
            }],
        );
        assert_eq!(svg.matches("<rect").count(), 2 + 3, "{svg}");
        assert!(
            svg.contains(">2000</text>") && svg.contains(">20.0</text>"),
            "{svg}"
        );
        assert!(svg.contains("original &lt;v1&gt;"), "{svg}");
        // The largest of a panel spans the panel; half of it, half as wide.
        assert!(
            svg.contains("width=\"230.0\"") && svg.contains("width=\"115.0\""),
            "{svg}"
        );
    }
}
