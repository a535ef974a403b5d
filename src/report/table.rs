//! The ranking table printed at the end of a scan, one row per checkpoint in step order.

use super::{CheckpointReport, Report, TargetKind};

/// The table as text: rank, checkpoint, step, eval losses, steps and hours to target, speed;
/// then, for a simulated series, its measurements against the theory.
pub fn render(report: &Report) -> String {
    let mut out = summary_line(report) + "\n";
    out.push_str(&grid(&ranking_table(report)));
    for note in footnotes(report) {
        out.push_str(&format!("{note}\n"));
    }
    if let Some(line) = super::headline::best_line(report) {
        out.push_str(&format!("{line}\n"));
    }
    if let Some(line) = super::headline::budget_sentence(report) {
        out.push_str(&format!("{line}\n"));
    }
    if let Some(theory) = theory_table(report) {
        out.push_str(&format!("\n{THEORY_CAPTION}\n{}", grid(&theory)));
    }
    for (caption, table) in sweep_tables(report) {
        out.push_str(&format!("\n{caption}\n{}", grid(&table)));
    }
    if let Some(s) = &report.sweep {
        s.summary.iter().for_each(|line| out.push_str(&format!("{line}\n")));
    }
    out
}

/// With a sweep: device-hours to target by rank (at the main rate) and by rate (at the main
/// rank), with the smallest rank and the best rate, and each variant's winner.
pub fn sweep_tables(report: &Report) -> Vec<(String, Table)> {
    let Some(s) = &report.sweep else { return Vec::new() };
    let mut tables = Vec::new();
    let winner = |rank: usize, lr: f64| {
        s.variants
            .iter()
            .find(|v| v.rank == rank && v.lr == lr)
            .and_then(|v| v.ranking.first().cloned())
            .unwrap_or_else(|| "-".into())
    };
    let hours = |h: &Option<f64>| {
        h.map_or("not reached".to_string(), |h| if h == 0.0 { "0".into() } else { format!("{h:.3e}") })
    };
    if s.ranks.len() > 1 {
        let mut header = vec!["checkpoint".to_string()];
        header.extend(s.ranks.iter().map(|r| format!("r={r}")));
        header.push("smallest rank".into());
        let mut rows: Vec<Vec<String>> = s
            .checkpoints
            .iter()
            .map(|c| {
                let mut row = vec![c.name.clone()];
                row.extend(c.hours_by_rank.iter().map(hours));
                row.push(c.smallest_rank.map_or("none".into(), |r| r.to_string()));
                row
            })
            .collect();
        let mut last = vec!["winner".to_string()];
        last.extend(s.ranks.iter().map(|&r| winner(r, s.main_lr)));
        last.push(String::new());
        rows.push(last);
        tables.push((
            format!("rank sweep at lr={:e}: {} to the target {}", s.main_lr, report.hours_unit, loss(s.target_loss)),
            Table { header, rows },
        ));
    }
    if s.lrs.len() > 1 {
        let mut header = vec!["checkpoint".to_string()];
        header.extend(s.lrs.iter().map(|l| format!("lr={l:e}")));
        header.push("best lr".into());
        let mut rows: Vec<Vec<String>> = s
            .checkpoints
            .iter()
            .map(|c| {
                let mut row = vec![c.name.clone()];
                row.extend(c.hours_by_lr.iter().map(hours));
                let tied: String = c.best_lr_tied_with.iter().map(|l| format!(" ={l:e}")).collect();
                row.push(c.best_lr.map_or("-".into(), |l| format!("{l:e}{tied}")));
                row
            })
            .collect();
        let mut last = vec!["winner".to_string()];
        last.extend(s.lrs.iter().map(|&l| winner(s.main_rank, l)));
        last.push(String::new());
        rows.push(last);
        let simulated =
            report.checkpoints.iter().any(|c| c.model_type.as_deref() == Some(crate::single_index::MODEL_TYPE));
        let at = if simulated { "the rank-1 adapter".to_string() } else { format!("r={}", s.main_rank) };
        tables.push((
            format!("learning-rate sweep at {at}: {} to the target {}", report.hours_unit, loss(s.target_loss)),
            Table { header, rows },
        ));
    }
    tables
}

/// A table as header and rows of formatted cells, shared by the text and Markdown formats.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

pub const THEORY_CAPTION: &str =
    "single-index model (escape: first step with |m| >= 0.5; prediction from the linearised dynamics)";

/// "target eval loss ...; time in device-hours on CPU (n threads)", led by the budget the
/// ranking answers for when it is longer than the probe.
pub fn summary_line(report: &Report) -> String {
    let probe = probe_line(report);
    match report.budget.as_ref().filter(|b| b.forecast) {
        Some(b) => {
            let target = b.target.as_ref().map_or(String::new(), |t| match t.kind {
                TargetKind::Drop => format!("; target: each checkpoint's eval loss drops by {} by then", loss(Some(t.value))),
                _ => format!("; target eval loss {} at the budget", loss(Some(t.value))),
            });
            format!("ranked for a fine-tune of {} updates ({}), forecast from {}-update probes{target}{}\nprobe: {probe}", b.steps, b.asked, b.probe_steps, settle_note(b))
        }
        None => match report.budget.as_ref().and_then(|b| Some((b, b.no_forecast.as_ref()?))) {
            Some((b, why)) => format!("a fine-tune of {} updates ({}) cannot be forecast from {}-update probes ({why}); ranked on the probe\n{probe}", b.steps, b.asked, b.probe_steps),
            None => probe,
        },
    }
}

/// What `--until-settled` trained beyond the probe: "; settling continued checkpoint-400,
/// checkpoint-800 to 461 updates (3 rounds, 922 updates beyond the probe)".
fn settle_note(b: &super::BudgetInfo) -> String {
    let Some(s) = b.settle.as_ref().filter(|s| !s.rounds.is_empty()) else { return String::new() };
    let last = &s.rounds[s.rounds.len() - 1];
    let rounds = if s.rounds.len() == 1 { "1 round".to_string() } else { format!("{} rounds", s.rounds.len()) };
    format!(
        "; settling continued {} to {} updates ({rounds}, {} updates beyond the probe)",
        last.contenders.join(", "),
        last.step,
        s.updates_trained
    )
}

/// The probe's target and the device the hours are measured on.
fn probe_line(report: &Report) -> String {
    let target = match (&report.target, report.target_loss) {
        (Some(t), _) if t.kind == TargetKind::Drop => {
            format!("target: each checkpoint's eval loss drops by {}", loss(Some(t.value)))
        }
        (_, Some(t)) => format!("target eval loss {}", loss(Some(t))),
        _ => return "no target (no checkpoint finished)".into(),
    };
    let measured = report.checkpoints.iter().filter(|c| c.measured()).count();
    let target = match &report.target {
        Some(t) if t.kind == TargetKind::MedianFinal && t.set_by.len() < measured => {
            format!("{target} (the median final loss of the runs that finished: {})", t.set_by.join(", "))
        }
        _ => target,
    };
    format!("{target}; time in {} on {} ({} threads)", report.hours_unit, report.device.name, report.device.threads)
}

/// One row per checkpoint, in step order: at the budget when it is longer than the probe.
pub fn ranking_table(report: &Report) -> Table {
    if report.ranks_for_budget() {
        return budget_table(report);
    }
    probe_table(report)
}

/// The budget's ranking: forecast values marked `~` with their 95% intervals, and the probe's
/// own final loss and rank beside them.
fn budget_table(report: &Report) -> Table {
    let b = report.budget.as_ref().map_or((0, 0), |b| (b.probe_steps, b.steps));
    let hours = &report.hours_unit;
    let header: Vec<String> = [
        "rank".into(),
        "checkpoint".into(),
        "step".into(),
        "eval@0".into(),
        format!("eval@{}", b.0),
        format!("eval@{}", b.1),
        "steps→target".into(),
        format!("{hours}→target"),
        "probe rank".into(),
        "tokens/s".into(),
    ]
    .to_vec();
    let rows = report.checkpoints.iter().map(budget_row).collect();
    Table { header, rows }
}

fn budget_row(c: &CheckpointReport) -> Vec<String> {
    let Some(f) = c.forecast.as_ref().filter(|_| c.measured()) else {
        let why = c.error.clone().unwrap_or_default();
        return vec!["-".into(), c.name.clone(), c.step.to_string(), format!("{}: {why}", c.status)];
    };
    let with = |forecast: bool, v: Option<f64>, ci: Option<[f64; 2]>, fmt: &dyn Fn(f64) -> String| match v {
        Some(v) => format!(
            "{}{}{}",
            if forecast { "~" } else { "" },
            fmt(v),
            ci.map_or(String::new(), |[lo, hi]| format!(" [{}, {}]", fmt(lo), fmt(hi)))
        ),
        None => "-".into(),
    };
    let eval = with(f.forecast, f.eval_loss, f.eval_loss_ci95, &|v| loss(Some(v)));
    let steps = match f.steps_to_target {
        None => "not within the budget".into(),
        _ => with(f.steps_forecast, f.steps_to_target, f.steps_to_target_ci95, &|v| format!("{v:.0}")),
    };
    let rank = f.rank.map_or("-".into(), |r| format!("{r}{}", if f.tied_with_best { "=" } else { "" }));
    vec![
        rank,
        c.name.clone(),
        c.step.to_string(),
        loss(c.initial_eval_loss),
        loss(c.final_eval_loss),
        eval,
        steps,
        with(f.steps_forecast, f.device_hours_to_target, None, &|v| format!("{v:.3e}")),
        c.rank.map_or("-".into(), |r| r.to_string()),
        c.tokens_per_s.map_or("-".into(), |t| format!("{t:.0}")),
    ]
}

/// The probe's ranking, one row per checkpoint in step order.
fn probe_table(report: &Report) -> Table {
    let hours = &report.hours_unit;
    let mut header: Vec<String> =
        ["rank", "checkpoint", "step", "eval@0", "final eval", "steps→target", &format!("{hours}→target"), "tokens/s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let priced = report.price_per_device_hour.is_some();
    if priced {
        header.push("cost→target".into());
    }
    let pretrain = report.checkpoints.iter().any(|c| c.pretrain_loss.is_some());
    if pretrain {
        header.push("pretrain loss".into());
    }
    Table { header, rows: report.checkpoints.iter().map(|c| row(c, priced, pretrain)).collect() }
}

/// Left-aligned columns two spaces apart.
pub fn grid(table: &Table) -> String {
    let (header, rows) = (&table.header, &table.rows);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
            + "\n"
    };
    std::iter::once(header).chain(rows).map(|r| line(r)).collect()
}

/// A loss: 4 decimals, or scientific notation below 1e-3.
pub fn loss(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v != 0.0 && v.abs() < 1e-3 => format!("{v:.2e}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn row(c: &CheckpointReport, priced: bool, pretrain: bool) -> Vec<String> {
    if !c.measured() {
        let err = c.error.clone().unwrap_or_default();
        return vec!["-".into(), c.name.clone(), c.step.to_string(), format!("{}: {err}", c.status)];
    }
    let interval =
        |key: &str, p: usize| c.ci95.get(key).map_or(String::new(), |[lo, hi]| format!(" [{lo:.p$}, {hi:.p$}]"));
    let approx = if c.extrapolated { "~" } else { "" };
    let zero_shot = if c.at_target_before_training { " †" } else { "" };
    let steps = c
        .steps_to_target
        .map_or("not reached".into(), |s| format!("{approx}{s:.1}{}{zero_shot}", interval("steps_to_target", 1)));
    let hours = |h: f64| if h == 0.0 { "0".to_string() } else { format!("{approx}{h:.3e}") };
    let mut cells = vec![
        c.rank.map_or("-".into(), |r| match (&c.stopped, c.tied_with_best) {
            (Some(s), _) => format!("{r} (stopped@{})", s.at_step),
            (None, true) => format!("{r}="),
            (None, false) => r.to_string(),
        }),
        c.name.clone(),
        c.step.to_string(),
        loss(c.initial_eval_loss),
        loss(c.final_eval_loss),
        steps,
        c.device_hours_to_target.map_or("-".into(), hours),
        c.tokens_per_s.map_or("-".into(), |t| format!("{t:.0}")),
    ];
    if priced {
        cells.push(
            c.cost_to_target.map_or("-".into(), |x| if x >= 0.01 { format!("{x:.2}") } else { format!("{x:.2e}") }),
        );
    }
    if pretrain {
        let mark = if c.after_plateau_onset == Some(true) { " *" } else { "" };
        cells.push(format!("{}{mark}", loss(c.pretrain_loss)));
    }
    cells
}

/// Notes under the ranking: extrapolation and ties, when they occur.
pub fn footnotes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(b) = report.budget.as_ref().filter(|b| b.forecast) {
        notes.push(format!(
            "~ a forecast to the {}-update budget by the curve model (a power law with an asymptote, or an exponential where a curve falls by decades, fitted to each probe's eval points); [low, high] is its 95% interval; ranked by the eval loss at the budget; probe rank: the ranking after the {}-update probe itself",
            b.steps, b.probe_steps
        ));
        if report.checkpoints.iter().any(|c| c.forecast.as_ref().is_some_and(|f| f.tied_with_best)) {
            notes.push("= tied with the best: their 95% intervals of the eval loss at the budget overlap".into());
        }
        return notes.into_iter().chain(context_notes(report)).collect();
    }
    notes.extend(probe_notes(report));
    notes.extend(context_notes(report));
    notes
}

/// The probe's marks: forecast times, zero-shot winners, ties.
fn probe_notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if report.checkpoints.iter().any(|c| c.extrapolated) {
        notes.push("~ a forecast: the target was not reached within the budget, and the curve model (power law or exponential with an asymptote) extends the curve; [low, high] is its 95% interval".into());
    }
    if report.checkpoints.iter().any(|c| c.at_target_before_training) {
        notes.push("† at the target before fine-tuning (eval loss at step 0 at or below it): its zero time measures no adaptation".into());
    }
    if report.checkpoints.iter().any(|c| c.tied_with_best) {
        notes.push("= tied with the best: their 95% confidence intervals of time to target overlap".into());
    }
    notes
}

/// What the scan was and what surrounds the ranking: race, pre-training plateau, seeds, task distance.
fn context_notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(race) = &report.race {
        let stopped = report.checkpoints.iter().filter(|c| c.stopped.is_some()).count();
        let share = 100.0 * race.steps_trained as f64 / race.steps_full_budget.max(1) as f64;
        notes.push(format!(
            "race: compared at steps {:?}; stopped {stopped} of {} checkpoints early (ranked last, metrics from their curves so far); trained {} of the full budget's {} updates ({share:.0}%)",
            race.rungs, report.checkpoints.len(), race.steps_trained, race.steps_full_budget
        ));
    }
    if let Some(onset) = report.pretraining.as_ref().and_then(|p| p.plateau_onset_step) {
        if report.checkpoints.iter().any(|c| c.after_plateau_onset == Some(true)) {
            notes.push(format!("* taken after the pre-training loss flattened (plateau onset at step {onset})"));
        }
    }
    if let Some(n) = report.checkpoints.iter().map(|c| c.seeds).max().filter(|&n| n > 1) {
        notes.push(format!("means over {n} seeds; [low, high] is the 95% confidence interval"));
    }
    if let Some(d) = &report.task_distance {
        let source = if d.source == super::GapSource::PretrainSample {
            "the --pretrain-sample loss"
        } else {
            "the last loss in trainer_state.json"
        };
        notes.push(format!("task distance: {} (pre-training loss: {source})", d.summary));
    }
    notes
}

/// The single-index measurements against the theory, when the series has them.
pub fn theory_table(report: &Report) -> Option<Table> {
    let rows: Vec<Vec<String>> = report.checkpoints.iter().filter_map(theory_row).collect();
    if rows.is_empty() {
        return None;
    }
    let header = ["checkpoint", "mu", "initial loss", "escape step", "predicted", "ratio", "steps to 1e-6", "tau"];
    Some(Table { header: header.iter().map(|s| s.to_string()).collect(), rows })
}

fn theory_row(c: &CheckpointReport) -> Option<Vec<String>> {
    let m = c.single_index.as_ref()?;
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let ratio = match (m.escape_step, m.predicted_escape_step) {
        (Some(e), Some(p)) if p > 0.0 => Some(e as f64 / p),
        _ => None,
    };
    Some(vec![
        c.name.clone(),
        format!("{:.3}", m.mu),
        loss(Some(m.initial_loss)),
        m.escape_step.map_or("not reached".into(), |s| s.to_string()),
        opt(m.predicted_escape_step, 0),
        opt(ratio, 2),
        m.steps_to_tiny_loss.map_or("not reached".into(), |s| s.to_string()),
        opt(m.tau, 1),
    ])
}
