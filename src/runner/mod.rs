//! Runs the scan: for each checkpoint in step order, fine-tune it with the scan's engine
//! (`crate::engine`, one run per seed), then rescore and rewrite the reports.
//!
//! A checkpoint that fails (bad config, missing tensor, divergence...) becomes a failed result
//! with a one-line reason, and the scan goes on. Only one checkpoint's weights are resident per
//! worker (one worker, or one per `--devices` entry, see `workers.rs`): each model is dropped
//! before the worker opens the next. This module orders the work and never asks which kind of
//! snapshot it holds; it must not define scores (see `score/`), formats (see `report/`) or how
//! a snapshot is fine-tuned (see `engine/`).

use std::collections::HashMap;

use candle_core::Device;

use crate::discover::CheckpointRef;
use crate::engine::{Engine, Job, Run, Series};
use crate::error::{one_line, Error, Result};
use crate::memory;
use crate::options::ScanOptions;
use crate::progress::Progress;
use crate::report::{Report, Reports, ScanStatus, SeedFailure, SeedStatus, Status};

mod assemble;
mod merge;
mod race;
mod resume;
mod sweep;
mod workers;

pub use merge::merge;
pub use sweep::{keep_best_adapter as keep_best_sweep_adapter, run as run_sweep};

/// One checkpoint's result: its runs (one per seed), or why there are none.
pub struct CheckpointResult {
    pub checkpoint: CheckpointRef,
    pub runs: std::result::Result<Vec<Run>, String>,
    pub pretrain_loss: Option<f64>,
    /// See `checkpoint::fingerprint`; None when the files cannot be read.
    pub fingerprint: Option<String>,
    /// (step, loss) of the pre-training log in its trainer_state.json.
    pub pretrain_curve: Vec<(f64, f64)>,
    /// Peak resident memory of the process while this checkpoint ran (Linux), in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Set when a race stopped this checkpoint before the full budget.
    pub stopped: Option<Stopped>,
    /// The failure (if any) was a training loss that became NaN or infinite.
    pub diverged: bool,
    /// The loss on --pretrain-sample before fine-tuning.
    pub pretrain_sample_loss: Option<f64>,
    /// Seeds that failed while others finished (`runs` holds those).
    pub seed_failures: Vec<SeedFailure>,
}

/// Why and when a race stopped a checkpoint.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub at_step: usize,
    /// 1-based rung.
    pub rung: usize,
    pub reason: String,
}

/// A scan in progress.
pub struct Scan<'a> {
    opts: &'a ScanOptions,
    /// Fine-tunes the snapshots.
    engine: Box<dyn Engine + 'a>,
    pub results: Vec<CheckpointResult>,
    /// Measurements a previous report offers for reuse (--resume), by checkpoint name.
    previous: HashMap<String, crate::report::CheckpointReport>,
    /// The rungs, when racing.
    race_rungs: Option<Vec<usize>>,
    /// What `--until-settled` did so far.
    settle: Option<crate::report::SettleInfo>,
    /// Streams the snapshots of a Hub scan; None when they are all on disk.
    fetcher: Option<&'a crate::hub::Fetcher>,
}

impl<'a> Scan<'a> {
    /// A scan of `checkpoints` with the engines their kinds need ([`Series`]): reads the task
    /// and checks what can be checked before any checkpoint is opened.
    pub fn new(opts: &'a ScanOptions, checkpoints: &[CheckpointRef]) -> Result<Self> {
        Ok(Scan::with_engine(opts, Box::new(Series::new(opts, checkpoints)?)))
    }

    /// A scan that fine-tunes with `engine`.
    pub fn with_engine(opts: &'a ScanOptions, engine: Box<dyn Engine + 'a>) -> Self {
        Scan {
            opts,
            engine,
            results: Vec::new(),
            previous: HashMap::new(),
            race_rungs: None,
            settle: None,
            fetcher: None,
        }
    }

    /// A scan whose snapshots `fetcher` downloads as they are needed.
    pub fn with_fetcher(mut self, fetcher: Option<&'a crate::hub::Fetcher>) -> Self {
        self.fetcher = fetcher;
        self
    }

    /// Fine-tunes every checkpoint, rewriting the reports after each one.
    pub fn run(&mut self, checkpoints: &[CheckpointRef], reports: &Reports) -> Result<Report> {
        if self.opts.strategy == crate::cli::Strategy::Race || self.opts.until_settled {
            return self.race(checkpoints, reports);
        }
        let progress = Progress::new(checkpoints.len(), self.opts.train.steps * self.opts.seeds, self.opts.progress);
        let status = if self.opts.devices.len() > 1 {
            self.run_workers(checkpoints, reports, &progress)?
        } else {
            self.run_sequential(checkpoints, reports, &progress)?
        };
        progress.finish();
        Ok(self.report(status))
    }

    /// One checkpoint after another on the one device; returns the scan's status.
    fn run_sequential(
        &mut self,
        checkpoints: &[CheckpointRef],
        reports: &Reports,
        progress: &Progress,
    ) -> Result<ScanStatus> {
        for (i, c) in checkpoints.iter().enumerate() {
            progress.start_checkpoint(i, &c.name);
            memory::reset_peak();
            let Some(mut result) = self.measure(c, &self.opts.device, progress) else {
                return Ok(ScanStatus::Interrupted); // this checkpoint's runs are abandoned
            };
            result.peak_rss_bytes = memory::peak_bytes();
            self.results.push(result);
            reports.update(&self.report(ScanStatus::Running))?;
        }
        Ok(ScanStatus::Complete)
    }

    /// Fine-tunes one checkpoint on `device` (or reuses a resumed measurement): its result,
    /// failed or not; None when the scan was interrupted.
    fn measure(&self, c: &CheckpointRef, device: &Device, progress: &Progress) -> Option<CheckpointResult> {
        let fingerprint = match self.fetcher {
            Some(f) => f.fingerprint(&c.name),
            None => crate::checkpoint::fingerprint::fingerprint(&c.path).ok(),
        };
        let mut diverged = false;
        let (runs, seed_failures) = match self.reusable(c, fingerprint.as_deref()) {
            Some(reused) => {
                progress.println(&format!("reusing the measurement of {} from the resumed report", c.name));
                (Ok(reused.0), reused.1)
            }
            None => match self.fetched(c).and_then(|()| self.run_seeds(c, device, progress)) {
                Err(Error::Interrupted) => return None,
                Err(e) => {
                    diverged = matches!(e, Error::Diverged { .. });
                    (Err(one_line(&e)), Vec::new())
                }
                Ok((runs, failures)) => (Ok(runs), failures),
            },
        };
        if let Err(msg) = &runs {
            let what = if diverged { Status::Diverged } else { Status::Failed };
            progress.println(&format!("error: checkpoint {} {what}: {msg}", c.name));
        }
        if let Some(f) = self.fetcher {
            f.release(c);
        }
        let pretrain_curve = assemble::pretrain_curve(&c.path);
        let pretrain_loss = pretrain_curve.last().map(|p| p.1);
        let pretrain_sample_loss = self.sample_loss_of(&c.name);
        Some(CheckpointResult {
            checkpoint: c.clone(),
            runs,
            pretrain_loss,
            fingerprint,
            pretrain_curve,
            peak_rss_bytes: None,
            stopped: None,
            diverged,
            pretrain_sample_loss,
            seed_failures,
        })
    }

    /// Waits for `c`'s download in a Hub scan; a download that failed fails the checkpoint.
    pub(super) fn fetched(&self, c: &CheckpointRef) -> Result<()> {
        match self.fetcher {
            Some(f) => f.ready(c),
            None => Ok(()),
        }
    }

    /// One fine-tune per seed: seeds --seed + i and --data-seed + i for i < --seeds. A seed
    /// whose run diverges or hits a bug (a panic) is recorded and the others go on; any other
    /// error is about the checkpoint and fails it at once. When every seed fails, the
    /// checkpoint fails with the first seed's error.
    fn run_seeds(
        &self,
        c: &CheckpointRef,
        device: &Device,
        progress: &Progress,
    ) -> Result<(Vec<Run>, Vec<SeedFailure>)> {
        let (o, mut runs, mut failures) = (self.opts, Vec::new(), Vec::new());
        let until = self.engine.steps(c)?; // a broken config fails the checkpoint, not a seed
        for i in 0..o.seeds as u64 {
            let job =
                Job { checkpoint: c, device, seed: o.seed.wrapping_add(i), data_seed: o.data_seed.wrapping_add(i) };
            let run = caught(|| Ok(self.engine.advance(&job, None, until, &mut |ev| progress.step(ev))?.0));
            match run {
                Ok(run) => runs.push(run),
                Err(e) if seed_failure(&e) => failures.push((job.seed, job.data_seed, e)),
                Err(e) => return Err(e),
            }
        }
        seeds_outcome(runs, failures, progress, &c.name)
    }

    /// A checkpoint's loss on --pretrain-sample: measured in this scan, or reused from the
    /// resumed report.
    pub(super) fn sample_loss_of(&self, name: &str) -> Option<f64> {
        let measured = self.engine.sample_loss(name);
        measured.or_else(|| self.previous.get(name).and_then(|p| p.pretrain_sample_loss))
    }
}

/// `work()`, with a panic (a bug, in plasticity or a library) turned into an error, so that
/// only the run it struck fails.
pub(super) fn caught<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::Panic(what))
    })
}

/// An error that strikes one seed's run and may spare the others: a divergence (it depends
/// on the seeds) or a bug. Errors about the checkpoint's files would fail every seed alike.
pub(super) fn seed_failure(e: &Error) -> bool {
    matches!(e, Error::Diverged { .. } | Error::Panic(_))
}

/// The runs of the seeds that finished and what became of the others (each a
/// [`seed_failure`], with its seed and data seed); the first failure when no seed finished.
pub(super) fn seeds_outcome(
    runs: Vec<Run>,
    mut failures: Vec<(u64, u64, Error)>,
    progress: &Progress,
    name: &str,
) -> Result<(Vec<Run>, Vec<SeedFailure>)> {
    if runs.is_empty() {
        return Err(failures.swap_remove(0).2);
    }
    let records = failures
        .into_iter()
        .map(|(seed, data_seed, e)| {
            let status = if matches!(e, Error::Diverged { .. }) { SeedStatus::Diverged } else { SeedStatus::Failed };
            progress.println(&format!(
                "warning: checkpoint {name}: seed {seed} {status} ({}); it is scored on the other seeds",
                one_line(&e)
            ));
            SeedFailure { seed, data_seed, status, error: one_line(&e) }
        })
        .collect();
    Ok((runs, records))
}

#[cfg(test)]
mod tests;
