//! docs/usage.md quotes `plasticity --help` and every subcommand's `--help` verbatim, each between
//! `<!-- BEGIN plasticity CMD --help -->` and `<!-- END plasticity CMD --help -->`. These tests run
//! the binary and fail when a block differs from what it prints; with UPDATE_SNAPSHOTS=1 they
//! rewrite the blocks (check the diff).

use std::path::PathBuf;

use clap::CommandFactory;
use plasticity::cli::Cli;

fn usage_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/usage.md")
}

/// `plasticity [SUBCOMMAND] --help` with the terminal width given in COLUMNS (stdout is a pipe).
fn help(subcommand: Option<&str>, columns: &str) -> String {
    let mut cmd = assert_cmd::Command::cargo_bin("plasticity").unwrap();
    cmd.args(subcommand).arg("--help").env("COLUMNS", columns);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "--help of {subcommand:?} exited with {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

/// Every subcommand but clap's own `help`, in the order `plasticity --help` lists them.
fn subcommands() -> Vec<String> {
    Cli::command().get_subcommands().map(|c| c.get_name().to_string()).filter(|n| n != "help").collect()
}

fn invocation(subcommand: Option<&str>) -> String {
    match subcommand {
        Some(sub) => format!("plasticity {sub} --help"),
        None => "plasticity --help".to_string(),
    }
}

/// The text between the markers of `invocation`, and where it starts and ends in `doc`.
fn block(doc: &str, invocation: &str) -> (usize, usize) {
    let begin = format!("<!-- BEGIN {invocation} -->\n");
    let end = format!("<!-- END {invocation} -->");
    let start =
        doc.find(&begin).unwrap_or_else(|| panic!("docs/usage.md has no `{}` marker", begin.trim())) + begin.len();
    let stop = start + doc[start..].find(&end).unwrap_or_else(|| panic!("docs/usage.md has no `{end}` marker"));
    (start, stop)
}

/// The first line where the quoted block and the binary's help part, as "quoted | printed".
fn first_difference(quoted: &str, printed: &str) -> String {
    let (mut q, mut p) = (quoted.lines(), printed.lines());
    loop {
        match (q.next(), p.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (a, b) => return format!("{:?} | {:?}", a.unwrap_or("<end>"), b.unwrap_or("<end>")),
        }
    }
}

fn fenced(help: &str) -> String {
    format!("```text\n{}\n```\n", help.trim_end())
}

#[test]
fn usage_md_quotes_every_help_verbatim() {
    let path = usage_md();
    let mut doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let commands: Vec<Option<String>> = std::iter::once(None).chain(subcommands().into_iter().map(Some)).collect();
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut stale = Vec::new();
    for sub in &commands {
        let invocation = invocation(sub.as_deref());
        let want = fenced(&help(sub.as_deref(), "100"));
        let (start, stop) = block(&doc, &invocation);
        if doc[start..stop] != want {
            if update {
                doc.replace_range(start..stop, &want);
            } else {
                stale.push(format!("{invocation} ({})", first_difference(&doc[start..stop], &want)));
            }
        }
    }
    if update {
        std::fs::write(&path, &doc).unwrap();
    }
    assert!(
        stale.is_empty(),
        "docs/usage.md differs from the binary's --help (rerun with UPDATE_SNAPSHOTS=1 and check the diff):\n{}",
        stale.join("\n")
    );
    let blocks = doc.matches("<!-- BEGIN plasticity").count();
    assert_eq!(blocks, commands.len(), "docs/usage.md quotes {blocks} --help blocks for {} commands", commands.len());
}

#[test]
fn help_is_wrapped_at_100_columns_however_wide_the_terminal() {
    for sub in [None, Some("scan")] {
        let at_100 = help(sub, "100");
        assert_eq!(help(sub, "250"), at_100, "{} depends on the terminal width", invocation(sub));
        let widest = at_100.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(widest <= 100, "{} has a line of {widest} characters", invocation(sub));
    }
}

#[test]
fn scan_groups_its_flags_under_headings() {
    let text = help(Some("scan"), "100");
    let headings: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ') && l.ends_with(':')).collect();
    assert_eq!(
        headings,
        [
            "Arguments:",
            "Options:",
            "Snapshots:",
            "Task and data:",
            "LoRA:",
            "Training:",
            "Scoring and budget:",
            "Output:",
            "Scale-out:"
        ]
    );
    let options = text.split("Options:\n").nth(1).unwrap().split("\n\n").next().unwrap();
    assert_eq!(options.lines().count(), 1, "every scan flag but --help sits under a heading: {options}");
}

#[test]
fn usage_md_has_a_settings_row_for_every_scan_flag() {
    let doc = std::fs::read_to_string(usage_md()).unwrap();
    let table = doc.split("## Settings and defaults").nth(1).unwrap().split("\n## ").next().unwrap();
    let documented: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .flat_map(|cell| cell.split('`').filter(|s| s.starts_with("--")))
        .map(|s| s.split(' ').next().unwrap())
        .collect();
    let cli = Cli::command();
    let scan = cli.find_subcommand("scan").unwrap();
    let missing: Vec<String> = scan
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| *long != "help")
        .map(|long| format!("--{long}"))
        .filter(|flag| !documented.contains(&flag.as_str()))
        .collect();
    assert!(missing.is_empty(), "docs/usage.md's settings table has no row for {}", missing.join(", "));
}
