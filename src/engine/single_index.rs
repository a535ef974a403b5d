//! The single-index engine: the paper's rank-1 SGD on the snapshot's own synthetic task
//! (`crate::single_index`), with the flags given explicitly (`--lr`, `--batch-size`,
//! `--steps`) overriding what the simulated series carries. A run ends at its budget or once
//! it has converged; a paused one never settles further (`--until-settled` leaves it be).

use super::{Engine, Job, Paused, Run, Schedule};
use crate::curve::StepEvent;
use crate::discover::CheckpointRef;
use crate::error::Result;
use crate::options::ScanOptions;
use crate::single_index::{self as si, RunSettings};

/// Fine-tunes simulated single-index snapshots.
pub struct SingleIndexEngine<'a> {
    opts: &'a ScanOptions,
}

impl<'a> SingleIndexEngine<'a> {
    pub fn new(opts: &'a ScanOptions) -> Self {
        SingleIndexEngine { opts }
    }

    /// Flags given explicitly override what the simulated series carries.
    fn settings(&self, seed: u64, data_seed: u64) -> RunSettings {
        let e = self.opts.explicit;
        RunSettings { seed, data_seed, lr: e.lr, batch_size: e.batch_size, steps: e.steps }
    }

    fn config(c: &CheckpointRef) -> Result<si::Config> {
        si::Config::read(&c.path, &crate::model::read_config(&c.path)?)
    }
}

impl Engine for SingleIndexEngine<'_> {
    fn steps(&self, c: &CheckpointRef) -> Result<usize> {
        Ok(si::budget(&Self::config(c)?, &self.settings(self.opts.seed, self.opts.data_seed)))
    }

    /// The first snapshot's budget; any step can be a rung (a pause records one).
    fn schedule(&self, checkpoints: &[CheckpointRef]) -> Result<Schedule> {
        let steps = match checkpoints.first() {
            Some(c) => self.steps(c)?,
            None => self.opts.train.steps,
        };
        Ok(Schedule { steps, eval_every: 1 })
    }

    fn advance(
        &self,
        job: &Job,
        from: Option<Paused>,
        until: usize,
        _on_step: &mut dyn FnMut(&StepEvent),
    ) -> Result<(Run, Paused)> {
        let dir = &job.checkpoint.path;
        let cfg = Self::config(job.checkpoint)?;
        let from = from.map(Paused::into_state::<si::Paused>).transpose()?;
        let paused = si::run_until(dir, &cfg, &self.settings(job.seed, job.data_seed), from, until)?;
        let run = Run {
            seed: job.seed,
            data_seed: job.data_seed,
            model_type: cfg.model_type.clone(),
            params: cfg.dim,
            trainable_params: cfg.dim + 1,
            // Per sample: three projections forward (X w*, X w, X omega) and X^T r backward.
            flops_per_token: 8.0 * cfg.dim as f64,
            outcome: paused.outcome(),
            single_index: Some(paused.metrics.clone()),
            base_dropout: Default::default(),
            train_tokens: 0,
            settle: Vec::new(),
        };
        let finished = paused.converged();
        Ok((run, Paused::new(paused, usize::MAX, finished)))
    }

    /// The paper's adapter is rank 1.
    fn fixed_rank(&self, _c: &CheckpointRef) -> Option<usize> {
        Some(1)
    }
}
