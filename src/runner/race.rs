//! `--strategy race`: the checkpoints advance rung by rung (see `score::race` for the rule),
//! and after each rung the losing ones stop. Between rungs a run is kept paused: its adapters
//! and optimizer moments, a few megabytes, never its base weights, so one checkpoint is
//! resident at a time as in a full scan. Language models and simulated single-index
//! checkpoints race alike (a series must be one or the other). Reports are rewritten after
//! every checkpoint's rung. `--until-settled` uses the same paused runs (a full scan is then a
//! race of one rung): after the probe, while the ranking at the budget is not settled, the
//! leader and the snapshots tied with it continue. This module orders the work; it must not
//! define the stopping rule, the settling rule or any score.

use super::{CheckpointResult, Run, Scan, Stopped};
use crate::discover::CheckpointRef;
use crate::engine::{Job, Paused};
use crate::error::{one_line, Error, Result};
use crate::progress::Progress;
use crate::report::ScanStatus;
use crate::report::{Report, Reports, SeedFailure};
use crate::score;
use crate::score::race::{self, Verdict};

/// One checkpoint in the race: its runs so far (one per seed) and their paused states.
struct Entrant {
    checkpoint: CheckpointRef,
    fingerprint: Option<String>,
    pretrain_curve: Vec<(f64, f64)>,
    runs: std::result::Result<Vec<(Run, Paused)>, String>,
    stopped: Option<Stopped>,
    peak_rss_bytes: Option<u64>,
    diverged: bool,
    seed_failures: Vec<SeedFailure>,
}

impl Entrant {
    fn new(c: &CheckpointRef) -> Self {
        Entrant {
            checkpoint: c.clone(),
            fingerprint: crate::checkpoint::fingerprint::fingerprint(&c.path).ok(),
            pretrain_curve: super::assemble::pretrain_curve(&c.path),
            runs: Ok(Vec::new()),
            stopped: None,
            peak_rss_bytes: None,
            diverged: false,
            seed_failures: Vec::new(),
        }
    }

    fn is_live(&self) -> bool {
        self.runs.is_ok() && self.stopped.is_none()
    }

    /// The result as a full scan would record it (runs as far as they went); None before
    /// its first rung.
    fn result(&self) -> Option<CheckpointResult> {
        if self.runs.as_ref().is_ok_and(|r| r.is_empty()) {
            return None;
        }
        Some(CheckpointResult {
            checkpoint: self.checkpoint.clone(),
            runs: self.runs.as_ref().map(|runs| runs.iter().map(|(r, _)| r.clone()).collect()).map_err(Clone::clone),
            pretrain_loss: self.pretrain_curve.last().map(|p| p.1),
            fingerprint: self.fingerprint.clone(),
            pretrain_curve: self.pretrain_curve.clone(),
            peak_rss_bytes: self.peak_rss_bytes,
            stopped: self.stopped.clone(),
            diverged: self.diverged,
            pretrain_sample_loss: None,
            seed_failures: self.seed_failures.clone(),
        })
    }
}

impl Scan<'_> {
    /// Races the checkpoints: every live one trains to the next rung, then the rule stops the
    /// losers; the last rung is the full budget.
    pub(super) fn race(&mut self, checkpoints: &[CheckpointRef], reports: &Reports) -> Result<Report> {
        let crate::engine::Schedule { steps: budget, eval_every } = self.engine.schedule(checkpoints)?;
        let racing = self.opts.strategy == crate::cli::Strategy::Race;
        let rungs = if racing { race::rungs(budget, eval_every) } else { vec![budget] };
        if racing {
            self.race_rungs = Some(rungs.clone());
        }
        let mut field: Vec<Entrant> = checkpoints.iter().map(Entrant::new).collect();
        let mut done = 0;
        for (k, &rung) in rungs.iter().enumerate() {
            let live: Vec<usize> = (0..field.len()).filter(|&i| field[i].is_live()).collect();
            let progress = Progress::new(live.len(), (rung - done) * self.opts.seeds, self.opts.progress);
            for (j, &i) in live.iter().enumerate() {
                let name = &field[i].checkpoint.name;
                progress.start_checkpoint(
                    j,
                    &if racing {
                        format!("{name} (rung {}/{}, step {rung})", k + 1, rungs.len())
                    } else {
                        name.clone()
                    },
                );
                if let Err(Error::Interrupted) = self.run_rung(&mut field[i], rung, &progress) {
                    progress.finish();
                    self.results = self.results_of(&field);
                    return Ok(self.report(ScanStatus::Interrupted));
                }
                self.publish(&field, reports, ScanStatus::Running)?;
            }
            progress.finish();
            if k + 1 < rungs.len() {
                self.judge(&mut field, rung, k + 1, budget);
                self.publish(&field, reports, ScanStatus::Running)?;
            }
            done = rung;
        }
        if self.opts.until_settled && self.settle(&mut field, reports)? {
            return Ok(self.report(ScanStatus::Interrupted));
        }
        self.results = self.results_of(&field);
        Ok(self.report(ScanStatus::Complete))
    }

    /// `--until-settled`: while the ranking at the budget is not settled, the contenders (the
    /// leader at the budget and the snapshots tied with it) continue every seed from where it
    /// paused to twice the updates it has (on an eval step, at most the budget); the others
    /// keep their probe. Stops when the leader is told apart, or no contender has updates
    /// left. True when interrupted.
    fn settle(&mut self, field: &mut [Entrant], reports: &Reports) -> Result<bool> {
        self.settle = Some(crate::report::SettleInfo::default());
        loop {
            let report = self.report(ScanStatus::Running);
            let Some(budget) =
                report.budget.as_ref().filter(|b| b.forecast && b.settled == Some(false)).map(|b| b.steps)
            else {
                return Ok(false);
            };
            let contenders: Vec<usize> = (0..field.len())
                .filter(|&i| {
                    field[i].is_live()
                        && is_contender(&report, &field[i].checkpoint.name)
                        && reached(&field[i]) < budget
                })
                .collect();
            let Some(from) = contenders.iter().map(|&i| reached(&field[i])).min() else { return Ok(false) };
            let next = next_round(from, self.opts.train.eval_every, budget);
            let progress = Progress::new(contenders.len(), (next - from) * self.opts.seeds, self.opts.progress);
            for (j, &i) in contenders.iter().enumerate() {
                let before = reached(&field[i]);
                progress.start_checkpoint(
                    j,
                    &format!("{} (settling: to step {next} of {budget})", field[i].checkpoint.name),
                );
                if let Err(Error::Interrupted) = self.run_rung(&mut field[i], next, &progress) {
                    progress.finish();
                    self.results = self.results_of(field);
                    return Ok(true);
                }
                split_at_probe(&mut field[i], self.opts.train.steps, self.opts.train.timing_warmup);
                let seeds = field[i].runs.as_ref().map_or(0, Vec::len);
                if let Some(s) = self.settle.as_mut() {
                    s.updates_trained += (next - before) * seeds;
                }
                self.publish(field, reports, ScanStatus::Running)?;
            }
            progress.finish();
            let names = contenders.iter().map(|&i| field[i].checkpoint.name.clone()).collect();
            if let Some(s) = self.settle.as_mut() {
                s.rounds.push(crate::report::SettleRound { step: next, contenders: names });
            }
        }
    }

    /// Advances every live seed of one checkpoint to `rung`. A seed that diverges or hits a
    /// bug drops out (recorded) while the others go on; the checkpoint fails when no seed is
    /// left or on any other error. An interruption is returned (the runs are then abandoned).
    fn run_rung(&mut self, e: &mut Entrant, rung: usize, progress: &Progress) -> Result<()> {
        super::memory::reset_peak();
        let Ok(runs) = std::mem::replace(&mut e.runs, Ok(Vec::new())) else { return Ok(()) };
        match self.fetched(&e.checkpoint) {
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(err) => {
                e.runs = Err(self.fail(e, err, progress));
                return Ok(());
            }
            Ok(()) => {}
        }
        let seeds: Vec<(u64, u64, Option<Paused>)> = if runs.is_empty() {
            (0..self.opts.seeds as u64)
                .map(|i| (self.opts.seed.wrapping_add(i), self.opts.data_seed.wrapping_add(i), None))
                .collect()
        } else {
            runs.into_iter().map(|(r, p)| (r.seed, r.data_seed, Some(p))).collect()
        };
        let (mut advanced, mut failures) = (Vec::with_capacity(seeds.len()), Vec::new());
        for (seed, data_seed, from) in seeds {
            let job = Job { checkpoint: &e.checkpoint, device: &self.opts.device, seed, data_seed };
            match super::caught(|| self.engine.advance(&job, from, rung, &mut |ev| progress.step(ev))) {
                Ok(run) => advanced.push(run),
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(err) if super::seed_failure(&err) => failures.push((seed, data_seed, err)),
                Err(err) => {
                    e.runs = Err(self.fail(e, err, progress));
                    return Ok(());
                }
            }
        }
        let (runs, paused): (Vec<Run>, Vec<Paused>) = advanced.into_iter().unzip();
        match super::seeds_outcome(runs, failures, progress, &e.checkpoint.name) {
            Ok((runs, records)) => {
                e.seed_failures.extend(records);
                e.runs = Ok(runs.into_iter().zip(paused).collect());
            }
            Err(err) => e.runs = Err(self.fail(e, err, progress)),
        }
        e.peak_rss_bytes = e.peak_rss_bytes.max(super::memory::peak_bytes());
        Ok(())
    }

    /// Records why a checkpoint failed; its message.
    fn fail(&self, e: &mut Entrant, err: Error, progress: &Progress) -> String {
        e.diverged = matches!(err, Error::Diverged { .. });
        progress.println(&format!("error: checkpoint {} failed: {}", e.checkpoint.name, one_line(&err)));
        one_line(&err)
    }

    /// Forecasts every live checkpoint from its curves up to `rung` and stops those whose
    /// whole interval is beyond the leader's (`score::race`).
    fn judge(&self, field: &mut [Entrant], rung: usize, rung_index: usize, budget: usize) {
        let live: Vec<usize> = (0..field.len())
            .filter(|&i| field[i].runs.as_ref().is_ok_and(|r| !r.is_empty()) && field[i].stopped.is_none())
            .collect();
        let runs = |i: usize| field[i].runs.as_ref().map(Vec::as_slice).unwrap_or_default();
        let summaries: Vec<Vec<score::RunSummary>> =
            live.iter().map(|&i| runs(i).iter().map(|(r, _)| super::assemble::summary(r, false)).collect()).collect();
        let cost = score::step_cost_by_shape(summaries.iter().flatten()); // priced as the ranking prices a step
        let entrants: Vec<race::Entrant> = live
            .iter()
            .zip(&summaries)
            .map(|(&i, s)| race::Entrant {
                name: &field[i].checkpoint.name,
                seeds: s.iter().map(|r| score::metrics::eval_points(&r.curve)).collect(),
                step_s: cost.get(&s[0].shape_key).copied().unwrap_or(0.0),
                finished: runs(i).iter().all(|(_, p)| p.finished()),
            })
            .collect();
        let spec = self.opts.target.unwrap_or_else(|| super::assemble::series_target(&self.results));
        let verdicts = race::decide(&entrants, spec, rung, budget, self.opts.hours_unit().as_str());
        for (&i, verdict) in live.iter().zip(verdicts) {
            if let Verdict::Stop(reason) = verdict {
                field[i].stopped = Some(Stopped { at_step: rung, rung: rung_index, reason });
            }
        }
    }

    /// The field's results so far, with each checkpoint's pre-training sample loss.
    fn results_of(&self, field: &[Entrant]) -> Vec<CheckpointResult> {
        let mut results: Vec<CheckpointResult> = field.iter().filter_map(Entrant::result).collect();
        results.iter_mut().for_each(|r| r.pretrain_sample_loss = self.sample_loss_of(&r.checkpoint.name));
        results
    }

    /// Rewrites the reports from the race so far.
    fn publish(&mut self, field: &[Entrant], reports: &Reports, status: ScanStatus) -> Result<()> {
        self.results = self.results_of(field);
        reports.update(&self.report(status))
    }
}

/// The leader at the budget, or tied with it.
fn is_contender(report: &Report, name: &str) -> bool {
    report.ranking.first().is_some_and(|first| first == name)
        || report.checkpoints.iter().any(|c| c.name == name && c.forecast.as_ref().is_some_and(|f| f.tied_with_best))
}

/// The fewest updates any seed of the entrant has done.
fn reached(e: &Entrant) -> usize {
    e.runs.as_ref().ok().and_then(|runs| runs.iter().map(|(_, p)| p.steps_done()).min()).unwrap_or(0)
}

/// A settling round's end: twice `from`, on an eval step, at most `budget`.
fn next_round(from: usize, eval_every: usize, budget: usize) -> usize {
    let doubled = (2 * from).max(from + 1);
    let on_eval = if eval_every > 0 { doubled.div_ceil(eval_every) * eval_every } else { doubled };
    on_eval.min(budget)
}

/// Keeps each run's probe in its outcome (what the probe's scores measure) and moves the
/// points beyond it to `settle` (what only the ranking at the budget uses).
fn split_at_probe(e: &mut Entrant, probe: usize, timing_warmup: usize) {
    let Ok(runs) = e.runs.as_mut() else { return };
    for (run, _) in runs.iter_mut() {
        let o = &mut run.outcome;
        let beyond = o.curve.iter().position(|p| p.step > probe).unwrap_or(o.curve.len());
        run.settle = o.curve.split_off(beyond);
        o.step_seconds.truncate(probe);
        let timed = &o.step_seconds[timing_warmup.min(o.step_seconds.len().saturating_sub(1))..];
        o.median_step_s = crate::curve::median(timed);
    }
}
