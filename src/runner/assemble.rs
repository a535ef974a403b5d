//! Builds the report from the results so far: scores every checkpoint (all seeds) and fills
//! the report's data model. Runs after every checkpoint, so it must stay cheap and pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{CheckpointResult, Run, Scan};
use crate::options::ScanOptions;
use crate::report::{
    gates, BudgetInfo, CheckpointReport, DeviceInfo, ForecastReport, Pretraining, RaceInfo, Report, SeedFailure,
    SeedRun, SettleInfo, StoppedInfo, TargetInfo, TaskDistance, Tool, SCHEMA_VERSION,
};
use crate::report::{DeviceKind, GapSource, HoursUnit, ScanStatus, Status, TargetKind, Trend};
use crate::score::budget::Budget;
use crate::score::stats::Slope;
use crate::score::{self, pretrain, Estimate, RunSummary, Score, Target, TargetSpec};
use crate::single_index;

/// What a report needs besides the results: how to score them and what to say about the run.
pub(super) struct Context {
    pub target: Option<TargetSpec>,
    pub price_per_hour: Option<f64>,
    pub fail_if_last_slower: Option<f64>,
    pub settings: serde_json::Value,
    pub device: DeviceInfo,
    pub hours_unit: HoursUnit,
    pub race: Option<RaceInfo>,
    /// The fine-tune the ranking answers for, and the probe's length in updates.
    pub budget: Option<Budget>,
    pub probe_steps: usize,
    /// What `--until-settled` did so far.
    pub settle: Option<SettleInfo>,
}

impl Scan<'_> {
    /// The report of the results so far, scored.
    pub fn report(&self, status: ScanStatus) -> Report {
        assemble(&self.results, &self.context(), status)
    }

    /// How this scan's results are scored and described.
    pub(super) fn context(&self) -> Context {
        Context {
            target: self.opts.target,
            price_per_hour: self.opts.price_per_hour,
            fail_if_last_slower: self.opts.fail_if_last_slower,
            settings: settings_json(self.opts),
            device: device_info(self.opts),
            hours_unit: self.opts.hours_unit(),
            race: self.race_info(),
            budget: Some(self.opts.budget),
            probe_steps: self.opts.train.steps,
            settle: self.settle.clone(),
        }
    }

    /// The race's rungs and spending (None for a full scan).
    fn race_info(&self) -> Option<RaceInfo> {
        let rungs = self.race_rungs.clone()?;
        let runs = self.results.iter().filter_map(|r| r.runs.as_ref().ok()).flatten();
        let steps_trained = runs.map(|r| r.outcome.step_seconds.len()).sum();
        let steps_full_budget = self.results.len() * self.opts.seeds * rungs.last().copied().unwrap_or(0);
        Some(RaceInfo { rungs, steps_trained, steps_full_budget })
    }
}

/// Without a target flag: the median final loss, or 1e-6 (the paper's tiny loss) for a
/// simulated series, which converges exactly.
pub(super) fn series_target(results: &[CheckpointResult]) -> TargetSpec {
    if all_simulated(results) {
        TargetSpec::Loss(single_index::TINY_LOSS)
    } else {
        TargetSpec::MedianFinal
    }
}

/// Every run is of the single-index model (which runs its own budget to convergence).
fn all_simulated(results: &[CheckpointResult]) -> bool {
    let runs: Vec<&Run> = results.iter().filter_map(|r| r.runs.as_ref().ok()).flatten().collect();
    !runs.is_empty() && runs.iter().all(|r| r.single_index.is_some())
}

/// Ranks for `budget`: every checkpoint's standing at it (`score::budget`), and when it is
/// longer than the probe, the report's ranking becomes the forecast one (the probe's is kept).
fn rank_for_budget(
    report: &mut Report,
    summaries: &[Option<Vec<RunSummary>>],
    results: &[CheckpointResult],
    budget: Budget,
    probe: usize,
    spec: TargetSpec,
) {
    let (target, scores) = score::budget::score(summaries, budget, probe, spec);
    let steps = scores.iter().flatten().map(|b| b.steps).max().unwrap_or(probe);
    let mut info = BudgetInfo {
        asked: budget.to_string(),
        probe_steps: probe,
        steps,
        forecast: false,
        target: None,
        settled: None,
        more_updates_to_settle: None,
        no_forecast: None,
        settle: None,
    };
    if steps > probe && target.is_none() {
        info.no_forecast = report
            .checkpoints
            .iter()
            .zip(&scores)
            .find_map(|(c, s)| Some(format!("{}: {}", c.name, s.as_ref()?.no_forecast?)));
    }
    if let (Some(target), true) = (target, steps > probe) {
        info.forecast = true;
        info.target = Some(target_info(&target, results));
        for (c, s) in report.checkpoints.iter_mut().zip(&scores) {
            c.forecast = s.as_ref().map(forecast_report);
        }
        let mut ranked: Vec<(usize, &String)> =
            report.checkpoints.iter().filter_map(|c| Some((c.forecast.as_ref()?.rank?, &c.name))).collect();
        ranked.sort();
        report.measured_ranking =
            std::mem::replace(&mut report.ranking, ranked.into_iter().map(|(_, n)| n.clone()).collect());
        (info.settled, info.more_updates_to_settle) = settled(&scores, probe, steps);
    }
    report.budget = Some(info);
}

/// Whether the leader and the runner-up at the budget are told apart, and if not, about how
/// many more probe updates would do it.
fn settled(scores: &[Option<score::budget::BudgetScore>], probe: usize, steps: usize) -> (Option<bool>, Option<usize>) {
    let at = |rank: usize| scores.iter().flatten().find(|s| s.rank == rank);
    let (Some(first), Some(second)) = (at(1), at(2)) else { return (None, None) };
    let more = match (first.eval_loss, second.eval_loss) {
        (Some(a), Some(b)) if second.tied_with_best => score::budget::updates_to_settle(&a, &b, probe, steps),
        _ => None,
    };
    (Some(!second.tied_with_best), more)
}

fn forecast_report(s: &score::budget::BudgetScore) -> ForecastReport {
    let ci = |e: &Option<Estimate>| e.filter(|e| e.n > 1 || e.has_interval()).map(|e| [e.lo, e.hi]);
    ForecastReport {
        budget_steps: s.steps,
        forecast: s.forecast,
        steps_forecast: s.steps_forecast,
        eval_loss: s.eval_loss.map(|e| e.mean),
        eval_loss_ci95: ci(&s.eval_loss),
        target_loss: Some(s.target_loss).filter(|t| t.is_finite()),
        steps_to_target: s.steps_to_target.map(|e| e.mean),
        steps_to_target_ci95: ci(&s.steps_to_target),
        device_hours_to_target: s.device_hours_to_target.map(|e| e.mean),
        device_hours_to_target_ci95: ci(&s.device_hours_to_target),
        rank: Some(s.rank),
        tied_with_best: s.tied_with_best,
        curve: s.curve.iter().map(|&(step, loss)| [step, loss]).collect(),
    }
}

/// The report of `results`, scored together (a scan's results so far, or merged partitions).
pub(super) fn assemble(results: &[CheckpointResult], ctx: &Context, status: ScanStatus) -> Report {
    let summaries: Vec<Option<Vec<RunSummary>>> = results
        .iter()
        .map(|r| r.runs.as_ref().ok().map(|runs| runs.iter().map(|run| summary(run, r.stopped.is_none())).collect()))
        .collect();
    let spec = ctx.target.unwrap_or_else(|| series_target(results));
    let scored = score::score(&summaries, spec);
    let scores: Vec<Option<&Score>> =
        (0..results.len()).map(|i| scored.as_ref().and_then(|(_, s)| s[i].as_ref())).collect();
    let pretraining = pretraining(results);
    let onset = pretraining.as_ref().and_then(|p| p.plateau_onset_step);
    let mut checkpoints: Vec<CheckpointReport> =
        results.iter().zip(&scores).map(|(r, s)| checkpoint_report(r, *s, ctx.price_per_hour)).collect();
    for c in checkpoints.iter_mut() {
        c.after_plateau_onset = onset.map(|o| c.step as f64 >= o);
    }
    let mut ranked: Vec<&CheckpointReport> = checkpoints.iter().filter(|c| c.rank.is_some()).collect();
    ranked.sort_by_key(|c| c.rank);
    let target = scored.as_ref().map(|(t, _)| t);
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        tool: Tool { name: env!("CARGO_PKG_NAME").into(), version: env!("CARGO_PKG_VERSION").into() },
        status,
        settings: ctx.settings.clone(),
        device: ctx.device.clone(),
        hours_unit: ctx.hours_unit,
        target_loss: target.filter(|t| !matches!(t.spec, TargetSpec::Drop(_))).map(|t| t.value),
        target: target.map(|t| target_info(t, results)),
        price_per_device_hour: ctx.price_per_hour,
        ranking: ranked.iter().map(|c| c.name.clone()).collect(),
        checkpoints,
        gates: Vec::new(),
        task_distance: None,
        sweep: None,
        pretraining,
        race: ctx.race.clone(),
        budget: None,
        measured_ranking: Vec::new(),
    };
    if let Some(budget) = ctx.budget.filter(|_| !all_simulated(results)) {
        rank_for_budget(&mut report, &summaries, results, budget, ctx.probe_steps, spec);
        if let Some(b) = report.budget.as_mut() {
            b.settle = ctx.settle.clone();
        }
    }
    report.task_distance = task_distance(&report.checkpoints);
    if let Some(x) = ctx.fail_if_last_slower {
        report.gates.push(gates::last_slower(&report, x));
    }
    report
}

/// What the scorer needs of a run; `finished`: it ran the whole budget.
pub(super) fn summary(run: &Run, finished: bool) -> RunSummary {
    RunSummary {
        curve: run.outcome.curve.clone(),
        median_step_s: run.outcome.median_step_s,
        shape_key: format!("{}:{}:{}", run.model_type, run.params, run.trainable_params),
        finished,
        tokens_per_update: run.outcome.tokens_per_step,
        train_tokens: run.train_tokens,
        beyond: run.settle.clone(),
    }
}

/// The target as the report states it, naming the checkpoints that set it.
fn target_info(t: &Target, results: &[CheckpointResult]) -> TargetInfo {
    let kind = match t.spec {
        TargetSpec::Loss(_) => TargetKind::Loss,
        TargetSpec::Drop(_) => TargetKind::Drop,
        TargetSpec::MedianFinal => TargetKind::MedianFinal,
    };
    TargetInfo { kind, value: t.value, set_by: t.set_by.iter().map(|&i| results[i].checkpoint.name.clone()).collect() }
}

fn checkpoint_report(r: &CheckpointResult, score: Option<&Score>, price: Option<f64>) -> CheckpointReport {
    let c = &r.checkpoint;
    let mut out = CheckpointReport {
        name: c.name.clone(),
        path: c.path.display().to_string(),
        step: c.step,
        step_source: c.step_source.into(),
        pretrain_loss: r.pretrain_loss,
        pretrain_sample_loss: r.pretrain_sample_loss,
        fingerprint: r.fingerprint.clone(),
        peak_rss_bytes: r.peak_rss_bytes,
        ..Default::default()
    };
    out.stopped =
        r.stopped.as_ref().map(|s| StoppedInfo { at_step: s.at_step, rung: s.rung, reason: s.reason.clone() });
    match &r.runs {
        Err(msg) => {
            out.status = if r.diverged { Status::Diverged } else { Status::Failed };
            out.error = Some(msg.clone());
        }
        Ok(runs) => {
            fill_runs(&mut out, runs, &r.seed_failures);
            if r.stopped.is_some() {
                out.status = Status::Stopped;
            }
            if let Some(s) = score {
                fill_score(&mut out, s, price);
            }
        }
    }
    out.task_gap = zero_shot(&out).zip(out.pretrain_sample_loss.or(out.pretrain_loss)).map(|(task, pre)| task - pre);
    out
}

/// What the runs measured: the first seed's curve, timing medians over seeds, every seed's run
/// (whenever several seeds were asked for), and the seeds that failed.
fn fill_runs(out: &mut CheckpointReport, runs: &[Run], failures: &[SeedFailure]) {
    let first = &runs[0];
    out.status = Status::Ok;
    out.model_type = Some(first.model_type.clone());
    out.params = Some(first.params);
    out.trainable_params = Some(first.trainable_params);
    out.curve = first.outcome.curve.clone();
    out.settle_curve = first.settle.clone();
    out.median_step_s = Some(crate::curve::median(&runs.iter().map(|r| r.outcome.median_step_s).collect::<Vec<_>>()));
    out.tokens_per_s = Some(crate::curve::median(&runs.iter().map(|r| r.outcome.tokens_per_s()).collect::<Vec<_>>()));
    out.flops_per_s = out.tokens_per_s.map(|t| t * first.flops_per_token);
    out.single_index = first.single_index.clone();
    out.base_dropout = first.base_dropout.clone();
    out.tokens_per_update = Some(first.outcome.tokens_per_step);
    out.train_tokens = Some(first.train_tokens).filter(|&t| t > 0);
    out.seeds = runs.len() + failures.len();
    out.seeds_ok = runs.len();
    out.seed_failures = failures.to_vec();
    if out.seeds > 1 {
        out.runs = runs
            .iter()
            .map(|r| SeedRun {
                seed: r.seed,
                data_seed: r.data_seed,
                median_step_s: r.outcome.median_step_s,
                curve: r.outcome.curve.clone(),
                settle_curve: r.settle.clone(),
            })
            .collect();
    }
}

/// The scorer's verdict: means in the plain fields, 95% intervals in `ci95`.
fn fill_score(out: &mut CheckpointReport, s: &Score, price: Option<f64>) {
    let mean = |e: &Option<Estimate>| e.map(|e| e.mean);
    out.target_loss = Some(s.target_loss);
    out.initial_eval_loss = mean(&s.initial_eval_loss);
    out.final_eval_loss = mean(&s.final_eval_loss);
    out.steps_to_target = mean(&s.steps_to_target);
    out.extrapolated = s.extrapolated;
    out.device_hours_to_target = mean(&s.device_hours_to_target);
    out.convergence_per_device_hour = s.convergence_per_device_hour;
    out.mean_eval_loss = mean(&s.mean_eval_loss);
    out.search_phase_steps = mean(&s.search_phase_steps);
    out.loss_drop_per_device_hour = mean(&s.loss_drop_per_device_hour);
    out.cost_to_target = price.and_then(|p| Some(p * s.device_hours_to_target?.mean));
    out.rank = Some(s.rank);
    out.tied_with_best = s.tied_with_best;
    out.at_target_before_training = s.at_target_before_training;
    out.step_cost_s = Some(s.step_cost_s);
    let intervals = [
        ("steps_to_target", &s.steps_to_target),
        ("device_hours_to_target", &s.device_hours_to_target),
        ("initial_eval_loss", &s.initial_eval_loss),
        ("final_eval_loss", &s.final_eval_loss),
        ("mean_eval_loss", &s.mean_eval_loss),
        ("search_phase_steps", &s.search_phase_steps),
        ("loss_drop_per_device_hour", &s.loss_drop_per_device_hour),
    ];
    out.ci95 = intervals
        .iter()
        .filter_map(|(k, e)| e.filter(|e| e.n > 1 || e.has_interval()).map(|e| (k.to_string(), [e.lo, e.hi])))
        .collect::<BTreeMap<_, _>>();
}

/// The pre-training loss log of a checkpoint's trainer_state.json (empty without one).
pub(super) fn pretrain_curve(dir: &Path) -> Vec<(f64, f64)> {
    let state = crate::checkpoint::state::TrainerState::read(&dir.join("trainer_state.json"));
    state.map(|s| pretrain::loss_curve(&s.log_history)).unwrap_or_default()
}

/// The eval loss before fine-tuning (scored or not).
fn zero_shot(c: &CheckpointReport) -> Option<f64> {
    c.initial_eval_loss.or_else(|| score::metrics::initial_eval_loss(&c.curve))
}

/// The gap's trend over the snapshots that have one (at least two steps apart), stated only
/// when its slope's 95% interval excludes zero (three snapshots or more). None for a simulated
/// series, whose task is its pre-training objective: its gap is zero by construction.
fn task_distance(checkpoints: &[CheckpointReport]) -> Option<TaskDistance> {
    if checkpoints.iter().any(|c| c.single_index.is_some()) {
        return None;
    }
    // one source for every point: the sample's losses when the scan measured them
    let sample = checkpoints.iter().any(|c| c.pretrain_sample_loss.is_some());
    let gap =
        |c: &CheckpointReport| Some(zero_shot(c)? - if sample { c.pretrain_sample_loss? } else { c.pretrain_loss? });
    let points: Vec<(f64, f64)> = checkpoints.iter().filter_map(|c| Some((c.step as f64, gap(c)?))).collect();
    let fit = Slope::fit(&points)?;
    let (first, last) = (points[0], points[points.len() - 1]);
    let ci = fit.ci95.map(|(lo, hi)| [1000.0 * lo, 1000.0 * hi]);
    let trend = match fit.sign() {
        1 => Trend::Widens,
        -1 => Trend::Narrows,
        _ => Trend::NoClearTrend,
    };
    let slope = match ci {
        Some([lo, hi]) => format!("{:+.4} per 1,000 steps, 95% interval [{lo:+.4}, {hi:+.4}]", 1000.0 * fit.slope),
        None => format!("{:+.4} per 1,000 steps", 1000.0 * fit.slope),
    };
    let verdict = match (trend, fit.n) {
        (Trend::Widens, _) => {
            "it widens: the later the snapshot, the further the task is from its pre-training data".to_string()
        }
        (Trend::Narrows, _) => {
            "it narrows: the later the snapshot, the closer the task is to its pre-training data".to_string()
        }
        (_, 2) => "two snapshots cannot show a trend".to_string(),
        _ => "no clear trend: the slope's interval holds zero".to_string(),
    };
    let summary = format!("the task gap (zero-shot task loss minus pre-training loss) goes from {:.4} at step {} to {:.4} at step {} ({slope}); {verdict}", first.1, first.0, last.1, last.0);
    Some(TaskDistance {
        source: if sample { GapSource::PretrainSample } else { GapSource::TrainerState },
        gap_slope_per_1k_steps: 1000.0 * fit.slope,
        slope_ci95: ci,
        first_gap: first.1,
        last_gap: last.1,
        trend,
        widening: trend == Trend::Widens,
        summary,
    })
}

/// The longest pre-training log of the series (the latest snapshot's holds the others) and
/// where it flattens.
fn pretraining(results: &[CheckpointResult]) -> Option<Pretraining> {
    let curve = results.iter().map(|r| &r.pretrain_curve).max_by_key(|c| c.len())?;
    if curve.is_empty() {
        return None;
    }
    Some(Pretraining {
        plateau_onset_step: pretrain::plateau_onset(curve),
        loss_curve: curve.iter().map(|&(s, l)| [s, l]).collect(),
    })
}

/// Every setting that shapes the result, so a report can be reproduced.
pub(super) fn settings_json(o: &ScanOptions) -> serde_json::Value {
    let init_adapter: Option<PathBuf> = match &o.init {
        crate::lora::AdapterInit::Peft(dir) => Some(dir.clone()),
        crate::lora::AdapterInit::Seeded(_) | crate::lora::AdapterInit::WeightGradient => None,
    };
    serde_json::json!({
        "dir": o.dir,
        "task": o.task,
        "tokenizer": o.tokenizer,
        "lora": o.lora,
        "lora_scale": o.lora.scale(),
        "init_adapter": init_adapter,
        "train": o.train,
        "seq_len": o.seq_len,
        "eval_blocks": o.eval_blocks,
        "seed": o.seed,
        "data_seed": o.data_seed,
        "seeds": o.seeds,
        "target_loss": match o.target { Some(TargetSpec::Loss(x)) => Some(x), _ => None },
        "target_drop": match o.target { Some(TargetSpec::Drop(x)) => Some(x), _ => None },
        "price_per_device_hour": o.price_per_hour,
        "fail_if_last_slower": o.fail_if_last_slower,
        "threads": o.threads,
        "strategy": o.strategy,
        "snapshots": o.selection,
        "partition": o.partition.map(|p| p.to_string()),
        "dtype": o.dtype.as_str(),
        "pretrain_sample": o.pretrain_sample,
        "sweep": o.sweep,
        "devices": o.devices.iter().map(crate::device::label).collect::<Vec<_>>(),
        "budget": o.budget,
        "until_settled": o.until_settled,
        "input_fingerprints": input_fingerprints(o),
    })
}

/// The contents of the files the settings name by path (task, --tokenizer, --pretrain-sample):
/// a file changed under the same name makes the settings differ, so `--resume` and `merge`
/// refuse to mix measurements of the old and the new contents.
fn input_fingerprints(o: &ScanOptions) -> serde_json::Value {
    let of = |p: &Option<PathBuf>| p.as_deref().and_then(|p| crate::checkpoint::fingerprint::file(p).ok());
    serde_json::json!({ "task": of(&o.task), "tokenizer": of(&o.tokenizer), "pretrain_sample": of(&o.pretrain_sample) })
}

fn device_info(o: &ScanOptions) -> DeviceInfo {
    let mut names: Vec<String> = Vec::new();
    for name in o.devices.iter().map(crate::device::name) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let kind = if o.device.is_cpu() { DeviceKind::Cpu } else { DeviceKind::Cuda };
    DeviceInfo { kind, name: names.join(", "), threads: o.threads, workers: o.devices.len() }
}
