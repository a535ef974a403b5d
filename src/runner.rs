//! Runs the scan: for each checkpoint in step order, open -> tokenize task -> fine-tune ->
//! result, then rescore and rewrite the reports.
//!
//! A checkpoint that fails (bad config, missing tensor, divergence...) becomes a failed result
//! with a one-line reason, and the scan goes on. Only one checkpoint's weights are resident at
//! a time: each model is dropped before the next is opened. This module must not define
//! scores (see `score.rs`) or formats (see `report/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::data::{self, BatchOrder, Blocks, Document, TaskTokenizer};
use crate::discover::CheckpointRef;
use crate::error::{one_line, Error, Result};
use crate::model::single_index::{self, RunSettings};
use crate::model::{self, LoadedModel};
use crate::options::ScanOptions;
use crate::progress::Progress;
use crate::report::{CheckpointReport, DeviceInfo, Report, Reports, Tool, SCHEMA_VERSION};
use crate::score::{self, RunSummary};
use crate::train::{self, Outcome};

/// A finished fine-tune.
pub struct Run {
    pub model_type: String,
    pub params: usize,
    pub trainable_params: usize,
    pub outcome: Outcome,
    /// The paper's measurements, for single-index checkpoints.
    pub single_index: Option<single_index::Metrics>,
}

/// One checkpoint's result: a run, or why there is none.
pub struct CheckpointResult {
    pub checkpoint: CheckpointRef,
    pub run: std::result::Result<Run, String>,
    pub pretrain_loss: Option<f64>,
}

/// Token blocks already built, by tokenizer file contents (a series usually shares one).
#[derive(Default)]
struct BlockCache {
    by_tokenizer: HashMap<(Vec<u8>, u32), Blocks>,
}

/// A scan in progress.
pub struct Scan<'a> {
    opts: &'a ScanOptions,
    /// The task file and its documents (None for a simulated series).
    task: Option<(PathBuf, Vec<Document>)>,
    cache: BlockCache,
    pub results: Vec<CheckpointResult>,
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
        Ok(Scan { opts, task, cache: BlockCache::default(), results: Vec::new() })
    }

    /// Fine-tunes every checkpoint, rewriting the reports after each one.
    pub fn run(&mut self, checkpoints: &[CheckpointRef], reports: &Reports) -> Result<Report> {
        let progress = Progress::new(checkpoints.len(), self.opts.train.steps, self.opts.progress);
        for (i, c) in checkpoints.iter().enumerate() {
            progress.start_checkpoint(i, &c.name);
            let run = self.run_one(c, &progress).map_err(|e| one_line(&e));
            if let Err(msg) = &run {
                progress.println(&format!("error: checkpoint {} failed: {msg}", c.name));
            }
            let pretrain_loss = pretrain_loss(&c.path);
            self.results.push(CheckpointResult { checkpoint: c.clone(), run, pretrain_loss });
            reports.update(&self.report("running"))?;
        }
        progress.finish();
        Ok(self.report("complete"))
    }

    fn run_one(&mut self, c: &CheckpointRef, progress: &Progress) -> Result<Run> {
        let config = model::read_config(&c.path)?;
        if config.get("model_type").and_then(|v| v.as_str()) == Some(single_index::MODEL_TYPE) {
            return self.run_single_index(&c.path, &config);
        }
        let o = self.opts;
        let model = model::load(&c.path, &o.lora, &o.init, o.seed, &o.device)?;
        let blocks = self.blocks_for(&c.path, &model)?;
        let order = BatchOrder::new(blocks.train.len(), o.train.batch_size, o.train.steps * o.train.grad_accum, o.data_seed);
        let outcome = train::fine_tune(&model, blocks, &order, &o.train, &mut |ev| progress.step(ev))?;
        Ok(Run { model_type: model.model_type.clone(), params: model.n_params, trainable_params: model.trainable_params(), outcome, single_index: None })
    }

    /// The paper's rank-1 SGD on the checkpoint's own synthetic task.
    fn run_single_index(&self, dir: &Path, config: &serde_json::Value) -> Result<Run> {
        let cfg = single_index::Config::read(dir, config)?;
        let e = self.opts.explicit;
        let settings = RunSettings { seed: self.opts.seed, data_seed: self.opts.data_seed, lr: e.lr, batch_size: e.batch_size, steps: e.steps };
        let (outcome, metrics) = single_index::run(dir, &cfg, &settings)?;
        Ok(Run { model_type: cfg.model_type.clone(), params: cfg.dim, trainable_params: cfg.dim + 1, outcome, single_index: Some(metrics) })
    }

    /// The task's blocks under this checkpoint's tokenizer, checked against its vocabulary.
    fn blocks_for(&mut self, dir: &Path, model: &LoadedModel) -> Result<&Blocks> {
        let (task, docs) = self.task.as_ref().ok_or_else(|| Error::flag("--task", format!("{} is a language model: give --task FILE", dir.display())))?;
        let path = self.opts.tokenizer.clone().unwrap_or_else(|| dir.join("tokenizer.json"));
        let tok = TaskTokenizer::open(&path)?;
        let eos = tok.eos(model.eos_token_id)?;
        let key = (std::fs::read(&path).map_err(|e| Error::input(&path, e.to_string()))?, eos);
        if !self.cache.by_tokenizer.contains_key(&key) {
            let stream = data::tokenize(docs, &tok, eos)?;
            let blocks = data::blocks(&stream, self.opts.seq_len, self.opts.eval_blocks, task)?;
            self.cache.by_tokenizer.insert(key.clone(), blocks);
        }
        let blocks = &self.cache.by_tokenizer[&key];
        check_fits(blocks, model, &path, self.opts.seq_len)?;
        Ok(blocks)
    }

    /// The report of the results so far, scored.
    pub fn report(&self, status: &str) -> Report {
        let summaries: Vec<Option<RunSummary>> = self.results.iter().map(|r| r.run.as_ref().ok().map(summary)).collect();
        let refs: Vec<Option<&RunSummary>> = summaries.iter().map(Option::as_ref).collect();
        let target = score::target_loss(&refs, self.opts.target_loss.or(self.series_target()));
        let scores = target.map(|t| score::rank(&refs, t));
        let checkpoints: Vec<CheckpointReport> = self
            .results
            .iter()
            .enumerate()
            .map(|(i, r)| checkpoint_report(r, scores.as_ref().map(|s| &s[i])))
            .collect();
        let mut ranked: Vec<&CheckpointReport> = checkpoints.iter().filter(|c| c.rank.is_some()).collect();
        ranked.sort_by_key(|c| c.rank);
        Report {
            schema_version: SCHEMA_VERSION,
            tool: Tool { name: env!("CARGO_PKG_NAME").into(), version: env!("CARGO_PKG_VERSION").into() },
            status: status.into(),
            settings: settings_json(self.opts),
            device: device_info(self.opts),
            hours_unit: self.opts.hours_label().into(),
            target_loss: target,
            ranking: ranked.iter().map(|c| c.name.clone()).collect(),
            checkpoints,
        }
    }
}

impl Scan<'_> {
    /// A simulated series converges exactly: its natural target is the paper's tiny loss.
    fn series_target(&self) -> Option<f64> {
        let runs: Vec<&Run> = self.results.iter().filter_map(|r| r.run.as_ref().ok()).collect();
        let all_simulated = !runs.is_empty() && runs.iter().all(|r| r.single_index.is_some());
        all_simulated.then_some(single_index::TINY_LOSS)
    }
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
fn check_fits(blocks: &Blocks, model: &LoadedModel, tokenizer: &Path, seq_len: usize) -> Result<()> {
    let max_id = blocks.train.iter().chain(&blocks.eval).flat_map(|b| b.ids.iter()).max().copied().unwrap_or(0);
    if max_id as usize >= model.vocab_size {
        return Err(Error::input(tokenizer, format!("produces token id {max_id}, but the model's vocab_size is {}", model.vocab_size)));
    }
    if model.model_type == "gpt2" && model.max_positions.is_some_and(|p| seq_len > p) {
        return Err(Error::flag("--seq-len", format!("{seq_len} is longer than the model's n_positions")));
    }
    Ok(())
}

fn summary(run: &Run) -> RunSummary {
    RunSummary {
        curve: run.outcome.curve.clone(),
        median_step_s: run.outcome.median_step_s,
        shape_key: format!("{}:{}:{}", run.model_type, run.params, run.trainable_params),
    }
}

fn checkpoint_report(r: &CheckpointResult, score: Option<&score::Score>) -> CheckpointReport {
    let c = &r.checkpoint;
    let mut out = CheckpointReport {
        name: c.name.clone(),
        path: c.path.display().to_string(),
        step: c.step,
        step_source: c.step_source.into(),
        pretrain_loss: r.pretrain_loss,
        ..Default::default()
    };
    match &r.run {
        Err(msg) => {
            out.status = "failed".into();
            out.error = Some(msg.clone());
        }
        Ok(run) => {
            out.status = "ok".into();
            out.model_type = Some(run.model_type.clone());
            out.params = Some(run.params);
            out.trainable_params = Some(run.trainable_params);
            out.initial_eval_loss = run.outcome.curve.first().and_then(|p| p.eval_loss);
            out.final_eval_loss = score::final_eval_loss(&run.outcome.curve);
            out.median_step_s = Some(run.outcome.median_step_s);
            out.tokens_per_s = Some(run.outcome.tokens_per_s());
            out.curve = run.outcome.curve.clone();
            out.single_index = run.single_index.clone();
            if let Some(s) = score {
                out.steps_to_target = s.steps_to_target;
                out.device_hours_to_target = s.device_hours_to_target;
                out.convergence_per_device_hour = s.convergence_per_device_hour;
                out.rank = Some(s.rank);
            }
        }
    }
    out
}

fn pretrain_loss(dir: &Path) -> Option<f64> {
    crate::checkpoint::state::TrainerState::read(&dir.join("trainer_state.json")).ok()?.last_train_loss()
}

/// Every setting that shapes the result, so a report can be reproduced.
fn settings_json(o: &ScanOptions) -> serde_json::Value {
    let init_adapter: Option<PathBuf> = match &o.init {
        crate::lora::AdapterInit::Peft(dir) => Some(dir.clone()),
        crate::lora::AdapterInit::Seeded(_) => None,
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
        "target_loss": o.target_loss,
        "threads": o.threads,
    })
}

fn device_info(o: &ScanOptions) -> DeviceInfo {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())));
    DeviceInfo { kind: "cpu".into(), name: cpu.unwrap_or_else(|| "cpu".into()), threads: o.threads }
}
