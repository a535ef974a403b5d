//! Runs the scan: for each checkpoint in step order, open -> tokenize task -> fine-tune ->
//! result, then rescore and rewrite the reports.
//!
//! A checkpoint that fails (bad config, missing tensor, divergence...) becomes a failed result
//! with a one-line reason, and the scan goes on. Only one checkpoint's weights are resident per
//! worker (one worker, or one per `--devices` entry, see `workers.rs`): each model is dropped
//! before the worker opens the next. This module must not define scores (see `score.rs`) or
//! formats (see `report/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::Device;

use crate::curve::{CurvePoint, Outcome};
use crate::data::{self, BatchOrder, Blocks, Document, TaskTokenizer};
use crate::discover::CheckpointRef;
use crate::error::{one_line, Error, Result};
use crate::lora::AdapterInit;
use crate::model::{self, LoadedModel};
use crate::options::ScanOptions;
use crate::progress::Progress;
use crate::report::{Report, Reports, SeedFailure};
use crate::single_index::{self, RunSettings};
use crate::train::{self, Paused};

mod assemble;
pub(crate) mod blocks;
mod memory;
mod merge;
mod race;
mod resume;
mod sweep;
mod workers;

pub use memory::keep_freed_memory;
pub use merge::merge;
pub use sweep::{keep_best_adapter as keep_best_sweep_adapter, run as run_sweep};

/// What fine-tuning the checkpoint in `dir` needs resident, from the safetensors headers and
/// config.json alone: (f32 weights, one step's activations) in bytes.
pub fn memory_needed(dir: &Path, batch_size: usize, seq_len: usize) -> Result<(u64, u64)> {
    memory_needed_as(dir, batch_size, seq_len, candle_core::DType::F32)
}

/// [`memory_needed`] with the weights in `dtype` (activations are counted in f32: an upper
/// bound in bf16, where the adapters' path and the softmax stay f32).
pub fn memory_needed_as(
    dir: &Path,
    batch_size: usize,
    seq_len: usize,
    dtype: candle_core::DType,
) -> Result<(u64, u64)> {
    let weights = crate::checkpoint::weights::WeightStore::open(dir, &candle_core::Device::Cpu)?.bytes_as(dtype);
    Ok((weights, model::activation_bytes(&model::read_config(dir)?, batch_size, seq_len)))
}

/// A finished fine-tune (one seed).
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
    pub single_index: Option<single_index::Metrics>,
    /// The base model's dropouts applied while training, by their config names.
    pub base_dropout: std::collections::BTreeMap<String, f64>,
    /// Tokens in the task's training blocks under this checkpoint's tokenizer (0 for a
    /// simulated checkpoint): what an epoch is.
    pub train_tokens: usize,
    /// Curve points measured beyond the probe (`--until-settled`), after `outcome`'s: they
    /// inform the ranking at the budget only, never the probe's own measures.
    pub settle: Vec<CurvePoint>,
}

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
    /// The task file and its documents (None for a simulated series).
    task: Option<(PathBuf, Vec<Document>)>,
    /// The task's blocks by tokenizer.
    cache: blocks::Cached<Blocks>,
    pub results: Vec<CheckpointResult>,
    /// Measurements a previous report offers for reuse (--resume), by checkpoint name.
    previous: HashMap<String, crate::report::CheckpointReport>,
    /// The rungs, when racing.
    race_rungs: Option<Vec<usize>>,
    /// What `--until-settled` did so far.
    settle: Option<crate::report::SettleInfo>,
    /// --pretrain-sample and its documents.
    sample: Option<(PathBuf, Vec<Document>)>,
    /// Its blocks by tokenizer, and each checkpoint's loss on them (by name).
    sample_cache: blocks::Cached<Vec<data::Block>>,
    sample_losses: Mutex<HashMap<String, f64>>,
}

impl<'a> Scan<'a> {
    /// Reads the task file (a bad one stops the scan before any checkpoint is opened); without
    /// one, every checkpoint must carry its own task (single-index).
    pub fn new(opts: &'a ScanOptions, checkpoints: &[CheckpointRef]) -> Result<Self> {
        let task = match &opts.task {
            Some(path) => Some((path.clone(), data::read_task(path)?)),
            None => {
                needs_no_task(checkpoints)?;
                None
            }
        };
        if let Some(tok) = &opts.tokenizer {
            TaskTokenizer::open(tok)?;
        }
        if let Some(dir) = &opts.save_adapters {
            refuse_checkpoint_folders(dir, checkpoints)?;
        }
        if opts.save_adapters.is_some() && checkpoints.iter().any(race::is_simulated) {
            eprintln!("warning: --save-adapters: simulated single-index snapshots have no LoRA adapter in PEFT's sense; none is saved for them");
        }
        let sample =
            opts.pretrain_sample.as_ref().map(|p| Ok::<_, Error>((p.clone(), data::read_task(p)?))).transpose()?;
        Ok(Scan {
            opts,
            task,
            cache: blocks::Cached::default(),
            results: Vec::new(),
            previous: HashMap::new(),
            race_rungs: None,
            settle: None,
            sample,
            sample_cache: blocks::Cached::default(),
            sample_losses: Mutex::default(),
        })
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
    ) -> Result<&'static str> {
        for (i, c) in checkpoints.iter().enumerate() {
            progress.start_checkpoint(i, &c.name);
            memory::reset_peak();
            let Some(mut result) = self.measure(c, &self.opts.device, progress) else {
                return Ok("interrupted"); // this checkpoint's runs are abandoned
            };
            result.peak_rss_bytes = memory::peak_bytes();
            self.results.push(result);
            reports.update(&self.report("running"))?;
        }
        Ok("complete")
    }

    /// Fine-tunes one checkpoint on `device` (or reuses a resumed measurement): its result,
    /// failed or not; None when the scan was interrupted.
    fn measure(&self, c: &CheckpointRef, device: &Device, progress: &Progress) -> Option<CheckpointResult> {
        let fingerprint = crate::checkpoint::fingerprint::fingerprint(&c.path).ok();
        let mut diverged = false;
        let (runs, seed_failures) = match self.reusable(c, fingerprint.as_deref()) {
            Some(reused) => {
                progress.println(&format!("reusing the measurement of {} from the resumed report", c.name));
                (Ok(reused.0), reused.1)
            }
            None => match self.run_seeds(c, device, progress) {
                Err(Error::Interrupted) => return None,
                Err(e) => {
                    diverged = matches!(e, Error::Diverged { .. });
                    (Err(one_line(&e)), Vec::new())
                }
                Ok((runs, failures)) => (Ok(runs), failures),
            },
        };
        if let Err(msg) = &runs {
            let what = if diverged { "diverged" } else { "failed" };
            progress.println(&format!("error: checkpoint {} {what}: {msg}", c.name));
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
        let config = model::read_config(&c.path)?;
        let simulated = config.get("model_type").and_then(|v| v.as_str()) == Some(single_index::MODEL_TYPE);
        let (o, mut runs, mut failures) = (self.opts, Vec::new(), Vec::new());
        for i in 0..o.seeds as u64 {
            let (seed, data_seed) = (o.seed.wrapping_add(i), o.data_seed.wrapping_add(i));
            let run = caught(|| {
                if simulated {
                    self.run_single_index(&c.path, &config, seed, data_seed)
                } else {
                    self.run_one(c, device, progress, seed, data_seed)
                }
            });
            match run {
                Ok(run) => runs.push(run),
                Err(e) if seed_failure(&e) => failures.push((seed, data_seed, e)),
                Err(e) => return Err(e),
            }
        }
        seeds_outcome(runs, failures, progress, &c.name)
    }

    fn run_one(
        &self,
        c: &CheckpointRef,
        device: &Device,
        progress: &Progress,
        seed: u64,
        data_seed: u64,
    ) -> Result<Run> {
        Ok(self.advance(c, device, progress, (seed, data_seed), None, self.opts.train.steps)?.0)
    }

    /// Loads the checkpoint and trains one seed's run up to update `until`, from the start or
    /// from where `from` paused; returns the run so far and its paused state. The model is
    /// dropped on return.
    fn advance(
        &self,
        c: &CheckpointRef,
        device: &Device,
        progress: &Progress,
        (seed, data_seed): (u64, u64),
        from: Option<Paused>,
        until: usize,
    ) -> Result<(Run, Paused)> {
        let o = self.opts;
        let init = match &o.init {
            AdapterInit::Seeded(_) => AdapterInit::Seeded(seed),
            from_file => from_file.clone(),
        };
        if from.is_none() {
            self.check_memory(&c.path)?;
        }
        let model = model::load_as(&c.path, &o.lora, &init, seed, device, o.dtype)?;
        let blocks = self.blocks_for(&c.path, &model)?;
        let blocks = &*blocks;
        if from.is_none() && self.sample.is_some() {
            let loss = self.measure_sample_loss(&c.path, &model)?;
            self.sample_losses.lock().unwrap_or_else(|e| e.into_inner()).insert(c.name.clone(), loss);
        }
        // beyond the probe (--until-settled) the run goes on as one of `until` updates would:
        // the batch order's prefix and the learning rate after warm-up do not depend on its length
        let spec = train::TrainSpec { steps: until.max(o.train.steps), ..o.train.clone() };
        let order = BatchOrder::new(blocks.train.len(), spec.batch_size, spec.steps * spec.grad_accum, data_seed);
        let paused = train::fine_tune_until(&model, blocks, &order, &spec, from, until, &mut |ev| progress.step(ev))?;
        if let Some(dir) = self.adapter_dir(c, seed).filter(|_| until == o.train.steps) {
            let info = crate::lora::peft::ExportInfo { spec: &o.lora, base: &c.path, model_type: &model.model_type };
            crate::lora::peft::save(&dir, &model.adapters, &info)?;
        }
        let (params, trainable_params, flops_per_token) =
            (model.n_params, model.trainable_params(), model.flops_per_token(o.seq_len));
        let outcome = paused.outcome(&spec);
        let train_tokens = blocks.train.len() * blocks.seq_len;
        let run = Run {
            seed,
            data_seed,
            model_type: model.model_type.clone(),
            params,
            trainable_params,
            flops_per_token,
            outcome,
            single_index: None,
            base_dropout: model.base_dropout.clone(),
            train_tokens,
            settle: Vec::new(),
        };
        Ok((run, paused))
    }

    /// Where --save-adapters puts this checkpoint's adapter for `seed`: DIR/<name>/, or
    /// DIR/<name>/seed-<seed>/ with several seeds.
    fn adapter_dir(&self, c: &CheckpointRef, seed: u64) -> Option<PathBuf> {
        let dir = self.opts.save_adapters.as_ref()?.join(&c.name);
        Some(if self.opts.seeds > 1 { dir.join(format!("seed-{seed}")) } else { dir })
    }

    /// Refuses a checkpoint whose f32 weights plus one step's activations (estimated from the
    /// weight headers and config.json) exceed the memory available, instead of being killed.
    fn check_memory(&self, dir: &Path) -> Result<()> {
        let Some(available) = memory::available_bytes() else { return Ok(()) };
        let (weights, mut activations) =
            memory_needed_as(dir, self.opts.train.batch_size, self.opts.seq_len, self.opts.dtype)?;
        if self.opts.dtype != candle_core::DType::F32 && self.opts.devices.iter().any(Device::is_cpu) {
            // on the CPU, bf16 runs candle's composed ops (the fused kernels are f32), each matmul
            // widens its weight to f32 and the logits are formed: 4.1x f32's peak at 70M
            activations = activations.saturating_add(weights.saturating_mul(2)).saturating_mul(4);
        }
        let available = available / self.opts.devices.len().max(1) as u64; // one checkpoint per worker
        let gb = |b: u64| b as f64 / 1e9;
        if weights.saturating_add(activations) > available {
            return Err(Error::input(dir, format!(
                "needs about {:.2} GB to fine-tune (weights {:.2} GB, one step's activations {:.2} GB) but {:.2} GB are available; lower --batch-size or --seq-len, or use a larger machine",
                gb(weights.saturating_add(activations)), gb(weights), gb(activations), gb(available)
            )));
        }
        Ok(())
    }

    /// The paper's rank-1 SGD on the checkpoint's own synthetic task.
    fn run_single_index(&self, dir: &Path, config: &serde_json::Value, seed: u64, data_seed: u64) -> Result<Run> {
        Ok(self.advance_single_index(dir, config, (seed, data_seed), None, usize::MAX)?.0)
    }

    /// Single-index SGD up to step `until`, from the start or from where `from` paused.
    fn advance_single_index(
        &self,
        dir: &Path,
        config: &serde_json::Value,
        (seed, data_seed): (u64, u64),
        from: Option<single_index::Paused>,
        until: usize,
    ) -> Result<(Run, single_index::Paused)> {
        let cfg = single_index::Config::read(dir, config)?;
        let paused = single_index::run_until(dir, &cfg, &self.single_index_settings(seed, data_seed), from, until)?;
        // Per sample: three projections forward (X w*, X w, X omega) and X^T r backward.
        let flops_per_token = 8.0 * cfg.dim as f64;
        let run = Run {
            seed,
            data_seed,
            model_type: cfg.model_type.clone(),
            params: cfg.dim,
            trainable_params: cfg.dim + 1,
            flops_per_token,
            outcome: paused.outcome(),
            single_index: Some(paused.metrics.clone()),
            base_dropout: Default::default(),
            train_tokens: 0,
            settle: Vec::new(),
        };
        Ok((run, paused))
    }

    /// Flags given explicitly override what the simulated series carries.
    fn single_index_settings(&self, seed: u64, data_seed: u64) -> RunSettings {
        let e = self.opts.explicit;
        RunSettings { seed, data_seed, lr: e.lr, batch_size: e.batch_size, steps: e.steps }
    }

    /// The loss of the model as fine-tuning starts on --pretrain-sample's blocks.
    fn measure_sample_loss(&self, dir: &Path, model: &LoadedModel) -> Result<f64> {
        let Some((path, docs)) = &self.sample else { return Err(Error::Other("no pre-training sample".into())) };
        let (seq_len, n) = (self.opts.seq_len, self.opts.eval_blocks);
        let (blocks, tokenizer) = self
            .sample_cache
            .get(dir, self.opts.tokenizer.as_deref(), model, docs, |s| data::sample_blocks(s, seq_len, n, path))?;
        blocks::check_vocab(blocks.iter().flat_map(|b| b.ids.iter()), model, &tokenizer)?;
        train::eval_loss(model, &blocks, self.opts.train.batch_size)
    }

    /// A checkpoint's loss on --pretrain-sample: measured in this scan, or reused from the
    /// resumed report.
    pub(super) fn sample_loss_of(&self, name: &str) -> Option<f64> {
        let measured = self.sample_losses.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied();
        measured.or_else(|| self.previous.get(name).and_then(|p| p.pretrain_sample_loss))
    }

    /// The task's blocks under this checkpoint's tokenizer, checked against its vocabulary.
    fn blocks_for(&self, dir: &Path, model: &LoadedModel) -> Result<Arc<Blocks>> {
        let (task, docs) = self
            .task
            .as_ref()
            .ok_or_else(|| Error::flag("--task", format!("{} is a language model: give --task FILE", dir.display())))?;
        let (seq_len, n) = (self.opts.seq_len, self.opts.eval_blocks);
        let (blocks, tokenizer) =
            self.cache.get(dir, self.opts.tokenizer.as_deref(), model, docs, |s| data::blocks(s, seq_len, n, task))?;
        check_fits(&blocks, model, &tokenizer, seq_len)?;
        Ok(blocks)
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
        Err(Error::Other(format!("{PANIC}: {what}")))
    })
}

const PANIC: &str = "internal error (a panic, please report it)";

/// An error that strikes one seed's run and may spare the others: a divergence (it depends
/// on the seeds) or a bug. Errors about the checkpoint's files would fail every seed alike.
pub(super) fn seed_failure(e: &Error) -> bool {
    matches!(e, Error::Diverged { .. }) || matches!(e, Error::Other(m) if m.starts_with(PANIC))
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
            let status = if matches!(e, Error::Diverged { .. }) { "diverged" } else { "failed" };
            progress.println(&format!(
                "warning: checkpoint {name}: seed {seed} {status} ({}); it is scored on the other seeds",
                one_line(&e)
            ));
            SeedFailure { seed, data_seed, status: status.into(), error: one_line(&e) }
        })
        .collect();
    Ok((runs, records))
}

/// --save-adapters DIR puts each adapter in DIR/<name>: that must not be a checkpoint (say DIR
/// is the series folder itself).
fn refuse_checkpoint_folders(dir: &Path, checkpoints: &[CheckpointRef]) -> Result<()> {
    for c in checkpoints {
        let target = dir.join(&c.name);
        let same = |a: &Path| std::fs::canonicalize(a).ok();
        if target.exists() && same(&target).is_some() && checkpoints.iter().any(|k| same(&k.path) == same(&target)) {
            return Err(Error::flag(
                "--save-adapters",
                format!(
                    "{} would put adapters in the checkpoint folder {}: choose another folder",
                    dir.display(),
                    target.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Without --task, every checkpoint must be a simulated single-index one.
fn needs_no_task(checkpoints: &[CheckpointRef]) -> Result<()> {
    for c in checkpoints {
        let model_type = model::read_config(&c.path).ok().and_then(|v| v.get("model_type")?.as_str().map(String::from));
        if model_type.as_deref() != Some(single_index::MODEL_TYPE) {
            let what = model_type.unwrap_or_else(|| "not a simulated checkpoint".into());
            return Err(Error::flag("--task", format!("is required: {} is {what}", c.path.display())));
        }
    }
    Ok(())
}

/// Token ids must exist in the model's vocabulary; GPT-2 cannot see past `n_positions`.
pub(crate) fn check_fits(blocks: &Blocks, model: &LoadedModel, tokenizer: &Path, seq_len: usize) -> Result<()> {
    blocks::check_vocab(blocks.train.iter().chain(&blocks.eval).flat_map(|b| b.ids.iter()), model, tokenizer)?;
    if model.model_type == "gpt2" && model.max_positions.is_some_and(|p| seq_len > p) {
        return Err(Error::flag("--seq-len", format!("{seq_len} is longer than the model's n_positions")));
    }
    Ok(())
}
