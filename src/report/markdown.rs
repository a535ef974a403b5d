//! The Markdown summary (`--markdown FILE`, and `$GITHUB_STEP_SUMMARY`): the ranking table, the
//! best checkpoint, the headline, and the single-index table when there is one.

use super::table::{footnotes, ranking_table, summary_line, sweep_tables, theory_table, Table, THEORY_CAPTION};
use super::{headline, Exporter, Report};
use crate::error::Result;

pub struct Markdown;

impl Exporter for Markdown {
    fn render(&self, report: &Report) -> Result<Vec<u8>> {
        Ok(render(report).into_bytes())
    }
}

pub fn render(report: &Report) -> String {
    let mut out = format!("## plasticity scan ({})\n\n{}\n\n", report.status, summary_line(report));
    out.push_str(&pipes(&ranking_table(report)));
    let notes = footnotes(report);
    if !notes.is_empty() {
        out.push_str(&format!("\n{}\n", notes.join("; ")));
    }
    if let Some((best, backing)) = headline::best_verdict(report) {
        out.push_str(&format!(
            "\n**Best checkpoint to fine-tune{}: `{best}`**{backing}. {}\n",
            headline::for_budget(report),
            headline::headline(report)
        ));
    }
    if let Some(theory) = theory_table(report) {
        out.push_str(&format!("\n{THEORY_CAPTION}\n\n{}", pipes(&theory)));
    }
    for (caption, table) in sweep_tables(report) {
        out.push_str(&format!("\n{caption}\n\n{}", pipes(&table)));
    }
    if let Some(s) = &report.sweep {
        s.summary.iter().for_each(|line| out.push_str(&format!("\n- {line}")));
        out.push('\n');
    }
    out
}

/// A GitHub-flavoured Markdown table; `|`, `<` and `>` inside cells are escaped.
fn pipes(table: &Table) -> String {
    let cell = |c: &String| c.replace('|', "\\|").replace('<', "&lt;").replace('>', "&gt;");
    let line = |cells: &[String]| format!("| {} |\n", cells.iter().map(cell).collect::<Vec<_>>().join(" | "));
    let rule = format!("|{}\n", "---|".repeat(table.header.len()));
    line(&table.header) + &rule + &table.rows.iter().map(|r| line(r)).collect::<String>()
}
