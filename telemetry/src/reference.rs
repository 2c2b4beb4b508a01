//! Command-line references generated from the clap definitions so they cannot drift
//! (`docs/cli.md`, `docs/podid-operator-flags.md`, `docs/podid-nmi-flags.md`): every command, its usage,
//! every flag with its value, default and environment variable, and the examples its `--help`
//! shows after the flags.

use std::fmt::Write;

use clap::Command;

/// The reference of `root` and every subcommand, as Markdown, under `title`; `regenerate`
/// says how the file is made.
pub fn markdown(root: &Command, title: &str, regenerate: &str) -> String {
    let mut out = format!("# {title}\n\n<!-- Generated; do not edit. {regenerate} -->\n\n");
    let mut root = root.clone();
    root.build();
    command(&mut out, &root, root.get_name().to_owned());
    out
}

fn command(out: &mut String, cmd: &Command, path: String) {
    let depth = path.matches(' ').count();
    let _ = writeln!(out, "{} `{path}`\n", "#".repeat((depth + 2).min(4)));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{}\n", about.to_string().trim());
    }
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ").trim();
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
        // Global flags once, on the root.
        .filter(|a| depth == 0 || !a.is_global_set())
        .collect();
    if !args.is_empty() {
        out.push_str("| Flag | Value | Default | Env | Meaning |\n|---|---|---|---|---|\n");
        for a in args {
            let flag = match (a.get_short(), a.get_long()) {
                (Some(s), Some(l)) => format!("`-{s}`, `--{l}`"),
                (None, Some(l)) => format!("`--{l}`"),
                (Some(s), None) => format!("`-{s}`"),
                (None, None) => format!("`{}`", a.get_id().as_str().to_ascii_uppercase()),
            };
            let takes_value = a.get_num_args().is_some_and(|n| n.takes_values())
                && !matches!(
                    a.get_action(),
                    clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
                );
            let value = if !takes_value {
                String::new()
            } else {
                let possible: Vec<String> = a
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_owned())
                    .collect();
                match (possible.is_empty(), a.get_value_names()) {
                    (false, _) => possible.join(" \\| "),
                    (true, Some(names)) => names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    (true, None) => a.get_id().as_str().to_ascii_uppercase(),
                }
            };
            let default: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let env = a
                .get_env()
                .map(|e| format!("`{}`", e.to_string_lossy()))
                .unwrap_or_default();
            let help = a
                .get_long_help()
                .or(a.get_help())
                .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
                .unwrap_or_default();
            let code = |s: String| if s.is_empty() { s } else { format!("`{s}`") };
            let _ = writeln!(
                out,
                "| {flag} | {} | {} | {env} | {help} |",
                code(value),
                code(default.join(","))
            );
        }
        out.push('\n');
    }
    // Examples and exit codes, as `--help` prints them after the flags.
    if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        let _ = writeln!(out, "```text\n{}\n```\n", after.to_string().trim());
    }
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        command(out, sub, format!("{path} {}", sub.get_name()));
    }
}
