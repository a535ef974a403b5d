//! The one seam that varies between kinds of snapshot: "fine-tune this snapshot, one seed, up
//! to update N; pause; continue". The runner, racing, settling, sweeps, workers and resume talk
//! to [`Engine`] only and never ask which kind of snapshot they hold.
//!
//! Three engines implement it: [`lora::LoraEngine`] (a transformers checkpoint, its adapters
//! and AdamW), [`single_index::SingleIndexEngine`] (the paper's rank-1 SGD on the snapshot's
//! own synthetic task) and, in unit tests, a scripted engine that returns prescribed curves in
//! microseconds. [`Series`] routes each snapshot of a scan to the engine of its kind. An
//! engine must not score, rank or write reports: it returns curves and timings.

pub mod blocks;
pub mod lora;
#[cfg(test)]
pub(crate) mod scripted;
pub mod single_index;

use std::any::Any;
use std::collections::BTreeMap;

use candle_core::Device;

use crate::curve::{CurvePoint, Outcome, StepEvent};
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};
use crate::options::ScanOptions;

/// Fine-tunes snapshots, one seed at a time, pausable between any two updates.
pub trait Engine: Sync {
    /// Updates of the scan's own run of `c` (its probe): `--steps`, or the budget a simulated
    /// snapshot carries.
    fn steps(&self, c: &CheckpointRef) -> Result<usize>;

    /// The updates of a full run of the whole series and the spacing of its eval points: a
    /// race's last rung and the grid its rungs sit on.
    fn schedule(&self, checkpoints: &[CheckpointRef]) -> Result<Schedule>;

    /// Trains `job` up to update `until` (at most its [`Engine::steps`] unless settling goes
    /// beyond), from the start or from where `from` (a run of the same job) paused; returns the
    /// run so far and its paused state. Nothing of the snapshot stays resident on return.
    fn advance(
        &self,
        job: &Job,
        from: Option<Paused>,
        until: usize,
        on_step: &mut dyn FnMut(&StepEvent),
    ) -> Result<(Run, Paused)>;

    /// The snapshot's loss on `--pretrain-sample` before fine-tuning, when this engine
    /// measured one.
    fn sample_loss(&self, _name: &str) -> Option<f64> {
        None
    }

    /// The adapter rank when the engine fixes it (`--rank` then changes nothing).
    fn fixed_rank(&self, _c: &CheckpointRef) -> Option<usize> {
        None
    }
}

/// One seed's fine-tune of one snapshot.
pub struct Job<'a> {
    pub checkpoint: &'a CheckpointRef,
    pub device: &'a Device,
    /// Seeds the adapter initialisation.
    pub seed: u64,
    /// Seeds the batch order.
    pub data_seed: u64,
}

/// A series' full run: `steps` updates with an eval point every `eval_every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub steps: usize,
    pub eval_every: usize,
}

/// A finished fine-tune (one seed), or one paused so far.
#[derive(Clone)]
pub struct Run {
    pub seed: u64,
    pub data_seed: u64,
    pub model_type: String,
    pub params: usize,
    pub trainable_params: usize,
    /// FLOPs per training token (per sample for single-index), for achieved FLOP/s.
    pub flops_per_token: f64,
    pub outcome: Outcome,
    /// The paper's measurements, for single-index checkpoints.
    pub single_index: Option<crate::single_index::Metrics>,
    /// The base model's dropouts applied while training, by their config names.
    pub base_dropout: BTreeMap<String, f64>,
    /// Tokens in the task's training blocks under this checkpoint's tokenizer (0 for a
    /// simulated checkpoint): what an epoch is.
    pub train_tokens: usize,
    /// Curve points measured beyond the probe (`--until-settled`), after `outcome`'s: they
    /// inform the ranking at the budget only, never the probe's own measures.
    pub settle: Vec<CurvePoint>,
}

/// A fine-tune stopped after some updates: what the runner may know of it (how far it went,
/// whether anything is left to do) and the engine's own state, opaque to everyone else.
pub struct Paused {
    state: Box<dyn Any + Send>,
    steps_done: usize,
    finished: bool,
}

impl Paused {
    pub fn new(state: impl Any + Send, steps_done: usize, finished: bool) -> Self {
        Paused { state: Box::new(state), steps_done, finished }
    }

    /// Updates done so far (`usize::MAX` for a run that can never go further).
    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// Nothing is left to run (a simulated run that has converged).
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether the engine state is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.state.is::<T>()
    }

    /// The engine's state, when it is a `T` (an engine handed another engine's pause is a bug).
    pub fn into_state<T: Any>(self) -> Result<T> {
        self.state
            .downcast::<T>()
            .map(|s| *s)
            .map_err(|_| Error::internal("a paused run was handed to an engine of another kind"))
    }
}

/// The engines of a scan, and which snapshot goes to which: a simulated single-index
/// snapshot (config `model_type` "single_index") to [`single_index::SingleIndexEngine`], any
/// other to [`lora::LoraEngine`].
pub struct Series<'a> {
    lora: lora::LoraEngine<'a>,
    single_index: single_index::SingleIndexEngine<'a>,
}

impl<'a> Series<'a> {
    /// Reads the task file (a bad one stops the scan before any checkpoint is opened); without
    /// one, every checkpoint must carry its own task (single-index).
    pub fn new(opts: &'a ScanOptions, checkpoints: &[CheckpointRef]) -> Result<Self> {
        if opts.task.is_none() {
            needs_no_task(checkpoints)?;
        }
        let lora = lora::LoraEngine::new(opts, checkpoints)?;
        if opts.save_adapters.is_some() && checkpoints.iter().any(is_simulated) {
            eprintln!("warning: --save-adapters: simulated single-index snapshots have no LoRA adapter in PEFT's sense; none is saved for them");
        }
        let lora = lora.with_sample()?;
        Ok(Series { lora, single_index: single_index::SingleIndexEngine::new(opts) })
    }

    /// The engine of `c`'s kind; a config.json that cannot be read fails here, first.
    fn engine_for(&self, c: &CheckpointRef) -> Result<&dyn Engine> {
        Ok(match Kind::of(c)?.0 {
            Kind::SingleIndex => &self.single_index,
            Kind::LanguageModel => &self.lora,
        })
    }
}

impl Engine for Series<'_> {
    fn steps(&self, c: &CheckpointRef) -> Result<usize> {
        self.engine_for(c)?.steps(c)
    }

    /// A race needs a series of one kind.
    fn schedule(&self, checkpoints: &[CheckpointRef]) -> Result<Schedule> {
        let simulated: Vec<&CheckpointRef> = checkpoints.iter().filter(|c| is_simulated(c)).collect();
        if simulated.is_empty() {
            return self.lora.schedule(checkpoints);
        }
        if simulated.len() < checkpoints.len() {
            return Err(Error::flag(
                "--strategy",
                format!(
                    "race needs a series of one kind, and {} is simulated while others are language models",
                    simulated[0].path.display()
                ),
            ));
        }
        self.single_index.schedule(checkpoints)
    }

    fn advance(
        &self,
        job: &Job,
        from: Option<Paused>,
        until: usize,
        on_step: &mut dyn FnMut(&StepEvent),
    ) -> Result<(Run, Paused)> {
        let engine: &dyn Engine = match &from {
            Some(p) if p.is::<crate::single_index::Paused>() => &self.single_index,
            Some(_) => &self.lora,
            None => self.engine_for(job.checkpoint)?,
        };
        engine.advance(job, from, until, on_step)
    }

    fn sample_loss(&self, name: &str) -> Option<f64> {
        self.lora.sample_loss(name)
    }

    fn fixed_rank(&self, c: &CheckpointRef) -> Option<usize> {
        self.engine_for(c).ok()?.fixed_rank(c)
    }
}

/// The two kinds of snapshot, told apart by config.json's `model_type`: what routes a
/// snapshot to its engine (and `probe` to its measurements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A transformers checkpoint.
    LanguageModel,
    /// A simulated snapshot of the paper's single-index model.
    SingleIndex,
}

impl Kind {
    /// The snapshot's kind, with its parsed config.json.
    pub fn of(c: &CheckpointRef) -> Result<(Kind, serde_json::Value)> {
        let config = crate::model::read_config(&c.path)?;
        let simulated = config.get("model_type").and_then(|v| v.as_str()) == Some(crate::single_index::MODEL_TYPE);
        Ok((if simulated { Kind::SingleIndex } else { Kind::LanguageModel }, config))
    }
}

/// The snapshot is of the paper's single-index model (an unreadable config is not).
fn is_simulated(c: &CheckpointRef) -> bool {
    matches!(Kind::of(c), Ok((Kind::SingleIndex, _)))
}

/// Without --task, every checkpoint must be a simulated single-index one.
fn needs_no_task(checkpoints: &[CheckpointRef]) -> Result<()> {
    let Some(c) = checkpoints.iter().find(|c| !is_simulated(c)) else { return Ok(()) };
    let config = crate::model::read_config(&c.path).ok();
    let what = config.as_ref().and_then(|v| v.get("model_type")?.as_str()).unwrap_or("not a simulated checkpoint");
    Err(Error::flag("--task", format!("is required: {} is {what}", c.path.display())))
}
