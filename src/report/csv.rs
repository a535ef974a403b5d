//! The CSV export (`--csv FILE`): one row per checkpoint with raw, unrounded values, for
//! spreadsheets and scripts. Empty cells mean "not measured" or "not reached". When the scan
//! ranks for a budget beyond the probe, `budget_*` columns follow: the rank for the budget and
//! the values at it, with `budget_forecast` / `budget_steps_forecast` saying which are forecast
//! by the curve model rather than measured; `rank` stays the probe's own.

use super::{CheckpointReport, Exporter, Report};
use crate::error::Result;

pub struct Csv;

const COLUMNS: [&str; 28] = [
    "rank",
    "tied_with_best",
    "name",
    "path",
    "step",
    "status",
    "error",
    "target_loss",
    "initial_eval_loss",
    "final_eval_loss",
    "steps_to_target",
    "steps_to_target_lo",
    "steps_to_target_hi",
    "extrapolated",
    "at_target_before_training",
    "device_hours_to_target",
    "device_hours_to_target_lo",
    "device_hours_to_target_hi",
    "convergence_per_device_hour",
    "cost_to_target",
    "mean_eval_loss",
    "search_phase_steps",
    "loss_drop_per_device_hour",
    "tokens_per_s",
    "median_step_s",
    "pretrain_loss",
    "flops_per_s",
    "peak_rss_bytes",
];
const BUDGET: [&str; 15] = [
    "budget_steps",
    "budget_rank",
    "budget_tied_with_best",
    "budget_forecast",
    "budget_eval_loss",
    "budget_eval_loss_lo",
    "budget_eval_loss_hi",
    "budget_target_loss",
    "budget_steps_to_target",
    "budget_steps_to_target_lo",
    "budget_steps_to_target_hi",
    "budget_steps_forecast",
    "budget_device_hours_to_target",
    "budget_device_hours_to_target_lo",
    "budget_device_hours_to_target_hi",
];
const SINGLE_INDEX: [&str; 6] =
    ["mu", "initial_loss", "escape_step", "steps_to_tiny_loss", "tau", "predicted_escape_step"];

impl Exporter for Csv {
    fn render(&self, report: &Report) -> Result<Vec<u8>> {
        let with_theory = report.checkpoints.iter().any(|c| c.single_index.is_some());
        let with_budget = report.budget.as_ref().is_some_and(|b| b.forecast);
        let mut header: Vec<&str> = COLUMNS.to_vec();
        if with_budget {
            header.extend(BUDGET);
        }
        if with_theory {
            header.extend(SINGLE_INDEX);
        }
        let mut out = header.join(",") + "\n";
        for c in &report.checkpoints {
            let mut cells = cells(c);
            if with_budget {
                cells.extend(budget_cells(c));
            }
            if with_theory {
                cells.extend(theory_cells(c));
            }
            out.push_str(&(cells.iter().map(|s| quote(s)).collect::<Vec<_>>().join(",") + "\n"));
        }
        Ok(out.into_bytes())
    }
}

fn num<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn cells(c: &CheckpointReport) -> Vec<String> {
    let ci = |key: &str, i: usize| num(c.ci95.get(key).map(|b| b[i]));
    let ok = c.measured();
    vec![
        num(c.rank),
        if ok { c.tied_with_best.to_string() } else { String::new() },
        c.name.clone(),
        c.path.clone(),
        c.step.to_string(),
        c.status.to_string(),
        c.error.clone().unwrap_or_default(),
        num(c.target_loss),
        num(c.initial_eval_loss),
        num(c.final_eval_loss),
        num(c.steps_to_target),
        ci("steps_to_target", 0),
        ci("steps_to_target", 1),
        if ok { c.extrapolated.to_string() } else { String::new() },
        if ok { c.at_target_before_training.to_string() } else { String::new() },
        num(c.device_hours_to_target),
        ci("device_hours_to_target", 0),
        ci("device_hours_to_target", 1),
        num(c.convergence_per_device_hour),
        num(c.cost_to_target),
        num(c.mean_eval_loss),
        num(c.search_phase_steps),
        num(c.loss_drop_per_device_hour),
        num(c.tokens_per_s),
        num(c.median_step_s),
        num(c.pretrain_loss),
        num(c.flops_per_s),
        num(c.peak_rss_bytes),
    ]
}

fn budget_cells(c: &CheckpointReport) -> Vec<String> {
    let Some(f) = &c.forecast else { return vec![String::new(); BUDGET.len()] };
    let ci = |b: &Option<[f64; 2]>, i: usize| num(b.map(|b| b[i]));
    vec![
        f.budget_steps.to_string(),
        num(f.rank),
        f.tied_with_best.to_string(),
        f.forecast.to_string(),
        num(f.eval_loss),
        ci(&f.eval_loss_ci95, 0),
        ci(&f.eval_loss_ci95, 1),
        num(f.target_loss),
        num(f.steps_to_target),
        ci(&f.steps_to_target_ci95, 0),
        ci(&f.steps_to_target_ci95, 1),
        f.steps_forecast.to_string(),
        num(f.device_hours_to_target),
        ci(&f.device_hours_to_target_ci95, 0),
        ci(&f.device_hours_to_target_ci95, 1),
    ]
}

fn theory_cells(c: &CheckpointReport) -> Vec<String> {
    match &c.single_index {
        None => vec![String::new(); SINGLE_INDEX.len()],
        Some(m) => vec![
            num(Some(m.mu)),
            num(Some(m.initial_loss)),
            num(m.escape_step),
            num(m.steps_to_tiny_loss),
            num(m.tau),
            num(m.predicted_escape_step),
        ],
    }
}

/// RFC 4180 quoting: fields with a comma, quote or line break are quoted, quotes doubled.
fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
