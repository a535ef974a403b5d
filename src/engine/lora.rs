//! The LoRA engine: a transformers checkpoint loaded with PEFT-style adapters, fine-tuned with
//! AdamW on the task's blocks (`train::fine_tune_until`). It owns what only language models
//! need: the task and its blocks per tokenizer, the memory check before loading, the
//! `--pretrain-sample` loss and `--save-adapters`. Each call loads the checkpoint and drops it
//! on return, so one snapshot's weights are resident per worker; a paused run keeps adapters,
//! optimizer moments and the dropout generator, never the base weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};

use super::blocks::{self, Cached};
use super::{Engine, Job, Paused, Run, Schedule};
use crate::curve::StepEvent;
use crate::data::{self, BatchOrder, Block, Blocks, Document, TaskTokenizer};
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};
use crate::lora::AdapterInit;
use crate::model::{self, LoadedModel};
use crate::options::ScanOptions;
use crate::train;

/// What fine-tuning the checkpoint in `dir` needs resident, from the safetensors headers and
/// config.json alone: (f32 weights, one step's activations) in bytes.
pub fn memory_needed(dir: &Path, batch_size: usize, seq_len: usize) -> Result<(u64, u64)> {
    memory_needed_as(dir, batch_size, seq_len, DType::F32)
}

/// [`memory_needed`] with the weights in `dtype` (activations are counted in f32: an upper
/// bound in bf16, where the adapters' path and the softmax stay f32).
pub fn memory_needed_as(dir: &Path, batch_size: usize, seq_len: usize, dtype: DType) -> Result<(u64, u64)> {
    let weights = crate::checkpoint::weights::WeightStore::open(dir, &Device::Cpu)?.bytes_as(dtype);
    Ok((weights, train::activation_bytes(&model::read_config(dir)?, batch_size, seq_len)))
}

/// Fine-tunes language-model snapshots with LoRA.
pub struct LoraEngine<'a> {
    opts: &'a ScanOptions,
    /// The task file and its documents (None for a simulated series).
    task: Option<(PathBuf, Vec<Document>)>,
    /// The task's blocks by tokenizer.
    cache: Cached<Blocks>,
    /// --pretrain-sample and its documents.
    sample: Option<(PathBuf, Vec<Document>)>,
    /// Its blocks by tokenizer, and each checkpoint's loss on them (by name).
    sample_cache: Cached<Vec<Block>>,
    sample_losses: Mutex<HashMap<String, f64>>,
}

impl<'a> LoraEngine<'a> {
    /// Reads the task and checks the tokenizer and `--save-adapters` before any training.
    pub fn new(opts: &'a ScanOptions, checkpoints: &[CheckpointRef]) -> Result<Self> {
        let task = opts.task.as_ref().map(|path| Ok::<_, Error>((path.clone(), data::read_task(path)?))).transpose()?;
        if let Some(tok) = &opts.tokenizer {
            TaskTokenizer::open(tok)?;
        }
        if let Some(dir) = &opts.save_adapters {
            refuse_checkpoint_folders(dir, checkpoints)?;
        }
        Ok(LoraEngine {
            opts,
            task,
            cache: Cached::default(),
            sample: None,
            sample_cache: Cached::default(),
            sample_losses: Mutex::default(),
        })
    }

    /// Reads `--pretrain-sample`, when given.
    pub fn with_sample(mut self) -> Result<Self> {
        self.sample =
            self.opts.pretrain_sample.as_ref().map(|p| Ok::<_, Error>((p.clone(), data::read_task(p)?))).transpose()?;
        Ok(self)
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
        let Some(available) = crate::memory::available_bytes() else { return Ok(()) };
        let (weights, mut activations) =
            memory_needed_as(dir, self.opts.train.batch_size, self.opts.seq_len, self.opts.dtype)?;
        if self.opts.dtype != DType::F32 && self.opts.devices.iter().any(Device::is_cpu) {
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

    /// The loss of the model as fine-tuning starts on --pretrain-sample's blocks.
    fn measure_sample_loss(&self, dir: &Path, model: &LoadedModel) -> Result<f64> {
        let Some((path, docs)) = &self.sample else { return Err(Error::internal("no pre-training sample")) };
        let (seq_len, n) = (self.opts.seq_len, self.opts.eval_blocks);
        let (blocks, tokenizer) = self
            .sample_cache
            .get(dir, self.opts.tokenizer.as_deref(), model, docs, |s| data::sample_blocks(s, seq_len, n, path))?;
        blocks::check_vocab(blocks.iter().flat_map(|b| b.ids.iter()), model, &tokenizer)?;
        train::eval_loss(model, &blocks, self.opts.train.batch_size)
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
        blocks::check_fits(&blocks, model, &tokenizer, seq_len)?;
        Ok(blocks)
    }

    /// The run so far as the runner records it.
    fn run_of(&self, job: &Job, model: &LoadedModel, outcome: crate::curve::Outcome, blocks: &Blocks) -> Run {
        Run {
            seed: job.seed,
            data_seed: job.data_seed,
            model_type: model.model_type.clone(),
            params: model.n_params,
            trainable_params: model.trainable_params(),
            flops_per_token: model.flops_per_token(self.opts.seq_len),
            outcome,
            single_index: None,
            base_dropout: model.base_dropout.clone(),
            train_tokens: blocks.train.len() * blocks.seq_len,
            settle: Vec::new(),
        }
    }
}

impl Engine for LoraEngine<'_> {
    fn steps(&self, _c: &CheckpointRef) -> Result<usize> {
        Ok(self.opts.train.steps)
    }

    fn schedule(&self, _checkpoints: &[CheckpointRef]) -> Result<Schedule> {
        Ok(Schedule { steps: self.opts.train.steps, eval_every: self.opts.train.eval_every })
    }

    /// Loads the checkpoint and trains one seed's run up to update `until`; the model is
    /// dropped on return.
    fn advance(
        &self,
        job: &Job,
        from: Option<Paused>,
        until: usize,
        on_step: &mut dyn FnMut(&StepEvent),
    ) -> Result<(Run, Paused)> {
        let (o, c) = (self.opts, job.checkpoint);
        let init = match &o.init {
            AdapterInit::Seeded(_) => AdapterInit::Seeded(job.seed),
            from_file => from_file.clone(),
        };
        if from.is_none() {
            self.check_memory(&c.path)?;
        }
        let model = model::load_as(&c.path, &o.lora, &init, job.seed, job.device, o.dtype)?;
        let blocks = self.blocks_for(&c.path, &model)?;
        let blocks = &*blocks;
        if from.is_none() && self.sample.is_some() {
            let loss = self.measure_sample_loss(&c.path, &model)?;
            self.sample_losses.lock().unwrap_or_else(|e| e.into_inner()).insert(c.name.clone(), loss);
        }
        // beyond the probe (--until-settled) the run goes on as one of `until` updates would:
        // the batch order's prefix and the learning rate after warm-up do not depend on its length
        let spec = train::TrainSpec { steps: until.max(o.train.steps), ..o.train.clone() };
        let order = BatchOrder::new(blocks.train.len(), spec.batch_size, spec.steps * spec.grad_accum, job.data_seed);
        let from = from.map(Paused::into_state::<train::Paused>).transpose()?;
        let paused = train::fine_tune_until(&model, blocks, &order, &spec, from, until, on_step)?;
        if let Some(dir) = self.adapter_dir(c, job.seed).filter(|_| until == o.train.steps) {
            let info = crate::lora::peft::ExportInfo { spec: &o.lora, base: &c.path, model_type: &model.model_type };
            let trained: Vec<_> = model.adapters.iter().map(crate::lora::Adapter::trained).collect();
            crate::lora::peft::save(&dir, &trained, &info)?;
        }
        let run = self.run_of(job, &model, paused.outcome(&spec), blocks);
        let steps_done = paused.steps_done();
        Ok((run, Paused::new(paused, steps_done, false)))
    }

    fn sample_loss(&self, name: &str) -> Option<f64> {
        self.sample_losses.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied()
    }
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
