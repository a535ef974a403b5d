//! The probe table: one row per snapshot in step order, then `--against`'s correlations.

use super::{ProbeReport, PROBES};
use crate::report::table::{grid, Table};
use crate::report::Status;

pub fn render(report: &ProbeReport) -> String {
    let mut out = format!(
        "probes at rank {} (gradient over {} batch(es)); forecast = sqrt(sum ||G_r||_F^2), higher = faster start\n",
        report.rank, report.batches
    );
    out.push_str(&grid(&probe_table(report)));
    if let Some(best) = report.forecast_ranking.first() {
        out.push_str(&format!("forecast best: {best}\n"));
    }
    if let Some(a) = &report.against {
        out.push_str(&format!("\nSpearman correlation with the measured speed ({} over {} snapshots of {}); +1: the probe orders the snapshots as the scan did\n", a.measured, a.snapshots, a.report));
        out.push_str(&grid(&against_table(report)));
    }
    out
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x != 0.0 && (x.abs() >= 1e4 || x.abs() < 1e-3) => format!("{x:.3e}"),
        Some(x) => format!("{x:.4}"),
    }
}

fn probe_table(report: &ProbeReport) -> Table {
    let header = [
        "forecast rank",
        "snapshot",
        "step",
        "forecast",
        "capture",
        "grad norm",
        "spectral norm (growth)",
        "stable rank (growth)",
        "effective rank (growth)",
        "zero-shot loss",
    ];
    let rows = report.probes.iter().map(|p| {
        if p.status != Status::Ok {
            return vec![
                "-".into(),
                p.name.clone(),
                p.step.to_string(),
                format!("failed: {}", p.error.as_deref().unwrap_or("")),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ];
        }
        let with_growth = |v: Option<f64>, g: Option<f64>| {
            format!("{} ({})", num(v), g.map(|g| format!("{g:.3}x")).unwrap_or_else(|| "-".into()))
        };
        vec![
            p.forecast_rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            p.name.clone(),
            p.step.to_string(),
            num(p.forecast),
            num(p.capture),
            num(p.grad_norm),
            with_growth(p.spectral_norm, p.spectral_norm_growth),
            with_growth(p.stable_rank, p.stable_rank_growth),
            with_growth(p.effective_rank, p.effective_rank_growth),
            num(p.zero_shot_loss),
        ]
    });
    Table { header: header.iter().map(|h| h.to_string()).collect(), rows: rows.collect() }
}

fn against_table(report: &ProbeReport) -> Table {
    let Some(a) = &report.against else { return Table { header: vec![], rows: vec![] } };
    let mut header = vec!["probe".to_string(), "vs measured speed".to_string()];
    if a.spearman_escape.is_some() {
        header.push("vs search phase (-steps)".into());
    }
    let rows = PROBES.iter().map(|&name| {
        let mut row = vec![name.to_string(), num(a.spearman.get(name).copied().flatten())];
        if let Some(e) = &a.spearman_escape {
            row.push(num(e.get(name).copied().flatten()));
        }
        row
    });
    Table { header, rows: rows.collect() }
}
