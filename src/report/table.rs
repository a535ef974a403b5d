//! The ranking table printed at the end of a scan, one row per checkpoint in step order.

use super::{CheckpointReport, Report};

/// The table as text: rank, checkpoint, step, eval losses, steps and hours to target, speed.
pub fn render(report: &Report) -> String {
    let hours = &report.hours_unit;
    let header = ["rank", "checkpoint", "step", "eval@0", "final eval", "steps→target", &format!("{hours}→target"), "tokens/s"];
    let rows: Vec<Vec<String>> = report.checkpoints.iter().map(row).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string();
    let mut out = String::new();
    match report.target_loss {
        Some(t) => out.push_str(&format!("target eval loss {t:.4}; time in {hours} on {} ({} threads)\n", report.device.name, report.device.threads)),
        None => out.push_str("no target eval loss (no checkpoint finished)\n"),
    }
    out.push_str(&line(header.iter().map(|s| s.to_string()).collect()));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    if let Some(best) = report.ranking.first() {
        out.push_str(&format!("best checkpoint to fine-tune: {best}\n"));
    }
    out
}

fn row(c: &CheckpointReport) -> Vec<String> {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    if c.status != "ok" {
        let err = c.error.clone().unwrap_or_default();
        return vec!["-".into(), c.name.clone(), c.step.to_string(), format!("{}: {err}", c.status)];
    }
    vec![
        c.rank.map_or("-".into(), |r| r.to_string()),
        c.name.clone(),
        c.step.to_string(),
        f(c.initial_eval_loss, 4),
        f(c.final_eval_loss, 4),
        c.steps_to_target.map_or("not reached".into(), |s| format!("{s:.1}")),
        c.device_hours_to_target.map_or("-".into(), |h| format!("{h:.3e}")),
        f(c.tokens_per_s, 0),
    ]
}
