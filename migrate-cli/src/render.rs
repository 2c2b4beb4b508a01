//! Renders a report as a kubectl-like table, JSON, YAML, Markdown or one self-contained HTML file.

use std::fmt::Write;

use podid_crds::plan::{Assessment, Severity, Verdict};

use crate::Error;
use crate::report::{ClusterReport, Report, ReportWorkload};

/// Output formats of `podid report -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
    Markdown,
    Html,
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format) -> Result<String, Error> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
        Format::Yaml => serde_yaml::to_string(report)?,
        Format::Table => table(report),
        Format::Markdown => markdown(report),
        Format::Html => html(report),
    })
}

fn identities(a: &Assessment) -> String {
    if a.identities.is_empty() {
        return "-".into();
    }
    a.identities
        .iter()
        .map(|i| format!("{}/{}", i.namespace, i.name))
        .collect::<Vec<_>>()
        .join(",")
}

fn reasons(a: &Assessment, sev: Severity) -> Vec<&str> {
    a.findings
        .iter()
        .filter(|f| f.severity == sev)
        .map(|f| f.code.as_str())
        .collect()
}

pub(crate) fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The cluster-wide findings, one line each (`cluster aks-a: ...` with several clusters).
fn cluster_lines(r: &Report) -> String {
    let mut out = String::new();
    for c in r.all_clusters() {
        let who = if r.cluster.is_some() {
            "cluster".to_string()
        } else {
            format!("cluster {}", c.facts.name.as_deref().unwrap_or("-"))
        };
        for f in &c.findings {
            let sev = match f.severity {
                Severity::Blocker => "blocker",
                Severity::Step => "step",
                Severity::Note => "note",
            };
            let _ = writeln!(out, "{who}: {} ({sev}): {}", f.code, f.message);
        }
    }
    out
}

fn workload_cell(a: &ReportWorkload) -> String {
    format!("{}/{}", a.workload.kind.to_lowercase(), a.workload.name)
}

fn table(r: &Report) -> String {
    let fleet = r.cluster.is_none();
    let mut header = vec![
        "NAMESPACE".to_string(),
        "WORKLOAD".into(),
        "SERVICEACCOUNT".into(),
        "IDENTITIES".into(),
        "VERDICT".into(),
        "REASONS".into(),
    ];
    if fleet {
        header.insert(0, "CLUSTER".into());
    }
    let mut rows = vec![header];
    for a in r.workloads.iter().filter(|a| a.uses_pod_identity) {
        let mut why = reasons(a, Severity::Blocker);
        if why.is_empty() {
            why = reasons(a, Severity::Step);
        }
        let mut row = vec![
            a.workload.namespace.clone(),
            workload_cell(a),
            a.workload.service_account.clone(),
            identities(a),
            a.verdict.as_str().into(),
            if why.is_empty() {
                "-".into()
            } else {
                why.join(",")
            },
        ];
        if fleet {
            row.insert(0, a.cluster.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    let mut out = cluster_lines(r);
    if !out.is_empty() {
        out.push('\n');
    }
    if rows.len() > 1 {
        out.push_str(&columns(&rows));
    } else {
        out.push_str("No workload uses pod identity.\n");
    }
    let v = &r.summary.verdicts;
    let _ = writeln!(
        out,
        "\n{} workloads use pod identity: {} ready, {} need changes, {} blocked ({} others do not use it).",
        v.using(),
        v.ready,
        v.needs_changes,
        v.blocked,
        v.not_using
    );
    if let Some(c) = &r.cluster
        && c.has_blocker()
        && v.using() > 0
    {
        out.push_str("The cluster itself blocks the move (see above): no workload can move before that is resolved.\n");
    }
    if fleet {
        let mut rows = vec![vec![
            "CLUSTER".to_string(),
            "OIDC ISSUER".into(),
            "USING".into(),
            "READY".into(),
            "NEEDS CHANGES".into(),
            "BLOCKED".into(),
            "CLUSTER FINDINGS".into(),
        ]];
        for c in &r.clusters {
            let s = c.summary.clone().unwrap_or_default();
            rows.push(vec![
                c.facts.name.clone().unwrap_or_default(),
                c.facts.oidc_issuer.clone().unwrap_or_else(|| "-".into()),
                s.verdicts.using().to_string(),
                s.verdicts.ready.to_string(),
                s.verdicts.needs_changes.to_string(),
                s.verdicts.blocked.to_string(),
                cluster_codes(c),
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    if !r.summary.identities.is_empty() {
        let mut header = vec![
            "IDENTITY".to_string(),
            "TYPE".into(),
            "CLIENTID".into(),
            "WORKLOADS".into(),
            "CREDENTIALS".into(),
            "BLOCKED".into(),
        ];
        if fleet {
            header.push("CLUSTERS".into());
        }
        let mut rows = vec![header];
        for i in &r.summary.identities {
            let mut row = vec![
                format!("{}/{}", i.namespace, i.name),
                i.type_.clone(),
                i.client_id.clone(),
                i.workloads.to_string(),
                format!(
                    "{}/{}",
                    i.federated_credentials,
                    podid_crds::plan::MAX_FEDERATED_CREDENTIALS
                ),
                i.counts.blocked.to_string(),
            ];
            if fleet {
                row.push(i.clusters.join(","));
            }
            rows.push(row);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    out
}

fn cluster_codes(c: &ClusterReport) -> String {
    if c.findings.is_empty() {
        return "-".into();
    }
    c.findings
        .iter()
        .map(|f| f.code.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn markdown(r: &Report) -> String {
    let v = &r.summary.verdicts;
    let mut out = String::from("# Pod identity → Workload ID migration report\n\n");
    let fleet = r.cluster.is_none();
    if let Some(c) = &r.cluster {
        if let Some(name) = &c.facts.name {
            let _ = writeln!(out, "Cluster: `{name}`  ");
        }
        let _ = writeln!(
            out,
            "OIDC issuer: {}\n",
            c.facts
                .oidc_issuer
                .as_deref()
                .map_or("**none**".to_string(), |i| format!("`{i}`"))
        );
    } else {
        let _ = writeln!(
            out,
            "## Clusters\n\n| Cluster | OIDC issuer | Using | Ready | Needs changes | Blocked |\n|---|---|---:|---:|---:|---:|"
        );
        for c in &r.clusters {
            let s = c.summary.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                c.facts.name.as_deref().unwrap_or("-"),
                c.facts
                    .oidc_issuer
                    .as_deref()
                    .map_or("**none**".to_string(), |i| format!("`{i}`")),
                s.verdicts.using(),
                s.verdicts.ready,
                s.verdicts.needs_changes,
                s.verdicts.blocked
            );
        }
        out.push('\n');
    }
    let findings: Vec<String> = r
        .all_clusters()
        .flat_map(|c| {
            c.findings.iter().map(move |f| {
                let who = if fleet {
                    format!("{}: ", c.facts.name.as_deref().unwrap_or("-"))
                } else {
                    String::new()
                };
                format!("- {who}`{}` {}", f.code, f.message)
            })
        })
        .collect();
    if !findings.is_empty() {
        let _ = writeln!(out, "## Cluster-wide findings\n\n{}\n", findings.join("\n"));
    }
    let _ = writeln!(out, "| Verdict | Workloads |\n|---|---:|");
    let _ = writeln!(
        out,
        "| ready | {} |\n| needs-changes | {} |\n| blocked | {} |\n| not-using | {} |\n",
        v.ready, v.needs_changes, v.blocked, v.not_using
    );
    let _ = writeln!(
        out,
        "## Workloads\n\n| Namespace | Workload | ServiceAccount | Identities | Verdict | Reasons and steps |\n|---|---|---|---|---|---|"
    );
    for a in r.workloads.iter().filter(|a| a.uses_pod_identity) {
        let notes: Vec<String> = a
            .findings
            .iter()
            .map(|f| format!("`{}` {}", f.code, f.message.replace('|', "\\|")))
            .collect();
        let ns = match &a.cluster {
            Some(c) => format!("{c}/{}", a.workload.namespace),
            None => a.workload.namespace.clone(),
        };
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | {} | **{}** | {} |",
            ns,
            a.workload.kind,
            a.workload.name,
            a.workload.service_account,
            identities(a),
            a.verdict.as_str(),
            notes.join("<br>")
        );
    }
    let _ = writeln!(
        out,
        "\n## Identities\n\n| Identity | Type | Client ID | Workloads | Federated credentials | Blocked | Clusters |\n|---|---|---|---:|---:|---:|---|"
    );
    for i in &r.summary.identities {
        let _ = writeln!(
            out,
            "| {}/{} | {} | `{}` | {} | {} | {} | {} |",
            i.namespace,
            i.name,
            i.type_,
            i.client_id,
            i.workloads,
            i.federated_credentials,
            i.counts.blocked,
            i.clusters.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n## Namespaces\n\n| Namespace | Ready | Needs changes | Blocked | Not using |\n|---|---:|---:|---:|---:|"
    );
    for (ns, c) in &r.summary.namespaces {
        let _ = writeln!(
            out,
            "| {ns} | {} | {} | {} | {} |",
            c.ready, c.needs_changes, c.blocked, c.not_using
        );
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Ready => "#2e7d32",
        Verdict::NeedsChanges => "#ef6c00",
        Verdict::Blocked => "#c62828",
        Verdict::NotUsing => "#757575",
    }
}

/// A horizontal bar chart of workloads per verdict, as inline SVG.
fn chart(r: &Report) -> String {
    let v = &r.summary.verdicts;
    let bars = [
        (Verdict::Ready, v.ready),
        (Verdict::NeedsChanges, v.needs_changes),
        (Verdict::Blocked, v.blocked),
        (Verdict::NotUsing, v.not_using),
    ];
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let mut svg = String::from(
        r#"<svg id="summary-chart" role="img" aria-label="Workloads by verdict" width="560" height="150" xmlns="http://www.w3.org/2000/svg">"#,
    );
    for (i, (verdict, n)) in bars.iter().enumerate() {
        let y = 10 + i * 34;
        let w = 360 * n / max;
        let _ = write!(
            svg,
            r#"<text x="0" y="{ty}" font-size="14">{label}</text><rect class="bar" data-verdict="{label}" x="130" y="{y}" width="{w}" height="24" fill="{color}"/><text x="{tx}" y="{ty}" font-size="14">{n}</text>"#,
            ty = y + 17,
            label = verdict.as_str(),
            color = verdict_color(*verdict),
            tx = 136 + w,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn html(r: &Report) -> String {
    let mut rows = String::new();
    for a in r.workloads.iter().filter(|a| a.uses_pod_identity) {
        let findings: String = a
            .findings
            .iter()
            .map(|f| {
                format!(
                    "<li><code>{}</code> {}</li>",
                    esc(f.code.as_str()),
                    esc(&f.message)
                )
            })
            .collect();
        let ns = match &a.cluster {
            Some(c) => format!("{c}/{}", a.workload.namespace),
            None => a.workload.namespace.clone(),
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class=\"v\" style=\"background:{}\">{}</span></td><td><ul>{}</ul></td></tr>",
            esc(&ns),
            esc(&a.workload.kind),
            esc(&a.workload.name),
            esc(&a.workload.service_account),
            esc(&identities(a)),
            verdict_color(a.verdict),
            a.verdict.as_str(),
            findings
        );
    }
    let mut id_rows = String::new();
    for i in &r.summary.identities {
        let _ = write!(
            id_rows,
            "<tr><td>{}/{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&i.namespace),
            esc(&i.name),
            esc(&i.type_),
            esc(&i.client_id),
            i.workloads,
            i.federated_credentials,
            i.counts.blocked,
            esc(&i.clusters.join(", "))
        );
    }
    let mut ns_rows = String::new();
    for (ns, c) in &r.summary.namespaces {
        let _ = write!(
            ns_rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(ns),
            c.ready,
            c.needs_changes,
            c.blocked,
            c.not_using
        );
    }
    let named = |c: &ClusterReport| {
        format!(
            "<b>{}</b> (OIDC issuer: <code>{}</code>)",
            c.facts.name.as_deref().map_or("(unnamed)".to_string(), esc),
            c.facts
                .oidc_issuer
                .as_deref()
                .map_or("none".to_string(), esc)
        )
    };
    let cluster = r.all_clusters().map(named).collect::<Vec<_>>().join(", ");
    let cluster_findings: String = r
        .all_clusters()
        .flat_map(|c| {
            c.findings.iter().map(move |f| {
                format!(
                    "<li>{}<code>{}</code> {}</li>",
                    if r.cluster.is_none() {
                        format!("{}: ", esc(c.facts.name.as_deref().unwrap_or("-")))
                    } else {
                        String::new()
                    },
                    esc(f.code.as_str()),
                    esc(&f.message)
                )
            })
        })
        .collect();
    let cluster_findings = if cluster_findings.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>Cluster-wide findings</h2>\n<ul id=\"cluster-findings\">{cluster_findings}</ul>"
        )
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>podid migration report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
th{{background:#f0f0f0;cursor:pointer;user-select:none}}th:after{{content:" \2195";color:#999}}
.v{{color:#fff;border-radius:3px;padding:1px 6px}}ul{{margin:0;padding-left:1.2em}}code{{font-size:90%}}
</style></head><body>
<h1>Pod identity → Workload ID migration report</h1>
<p>Cluster: {cluster} · {n} workloads use pod identity</p>
{cluster_findings}
{chart}
<h2>Workloads</h2>
<table class="sortable"><thead><tr><th>Namespace</th><th>Kind</th><th>Name</th><th>ServiceAccount</th><th>Identities</th><th>Verdict</th><th>Reasons and steps</th></tr></thead><tbody>
{rows}</tbody></table>
<h2>Identities</h2>
<table class="sortable"><thead><tr><th>Identity</th><th>Type</th><th>Client ID</th><th>Workloads</th><th>Federated credentials</th><th>Blocked</th><th>Clusters</th></tr></thead><tbody>
{id_rows}</tbody></table>
<h2>Namespaces</h2>
<table class="sortable"><thead><tr><th>Namespace</th><th>Ready</th><th>Needs changes</th><th>Blocked</th><th>Not using</th></tr></thead><tbody>
{ns_rows}</tbody></table>
<script>
document.querySelectorAll("table.sortable th").forEach(function(th){{
  th.addEventListener("click",function(){{
    var table=th.closest("table"),body=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
    var asc=th.dataset.dir!=="asc";th.dataset.dir=asc?"asc":"desc";
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){{var x=a.cells[i].innerText,y=b.cells[i].innerText,nx=parseFloat(x),ny=parseFloat(y);
      var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;}});
    rows.forEach(function(r){{body.appendChild(r);}});
  }});
}});
</script>
</body></html>
"#,
        n = r.summary.verdicts.using(),
        chart = chart(r),
    )
}
