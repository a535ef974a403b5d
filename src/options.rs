//! Settings resolved once from the command line: typed, checked, with defaults applied.
//! No raw flag strings travel past this module, and nothing here trains or reads weights.

use std::path::PathBuf;

use candle_core::Device;

use crate::cli::{LoraArgs, ScanArgs, TrainArgs};
use crate::error::{Error, Result};
use crate::lora::{AdapterInit, LoraSpec, PeftConfig, Targets};
use crate::train::optim::AdamWConfig;
use crate::train::TrainSpec;

/// Where a report goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

impl Output {
    fn parse(value: &str) -> Output {
        if value == "-" { Output::Stdout } else { Output::File(PathBuf::from(value)) }
    }
}

/// Everything a scan needs, checked.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub dir: PathBuf,
    pub task: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub lora: LoraSpec,
    pub init: AdapterInit,
    pub train: TrainSpec,
    pub seq_len: usize,
    pub eval_blocks: usize,
    /// Seeds the adapter initialisation.
    pub seed: u64,
    /// Seeds the batch order.
    pub data_seed: u64,
    pub target_loss: Option<f64>,
    pub threads: usize,
    pub json: Option<Output>,
    pub progress: bool,
    pub device: Device,
}

impl ScanOptions {
    pub fn from_args(args: ScanArgs) -> Result<Self> {
        let threads = args.threads.unwrap_or_else(default_threads);
        at_least("--threads", threads, 1)?;
        if let Some(t) = args.target_loss {
            finite_positive("--target-loss", t)?;
        }
        let (lora, init) = lora_settings(&args.lora, args.train.seed)?;
        let train = train_settings(&args.train)?;
        Ok(ScanOptions {
            dir: args.dir,
            task: args.task,
            tokenizer: args.tokenizer,
            lora,
            init,
            train,
            seq_len: at_least("--seq-len", args.train.seq_len, 2)?,
            eval_blocks: at_least("--eval-blocks", args.train.eval_blocks, 1)?,
            seed: args.train.seed,
            data_seed: args.train.data_seed.unwrap_or(args.train.seed),
            target_loss: args.target_loss,
            threads,
            json: args.json.as_deref().map(Output::parse),
            progress: !args.quiet,
            device: Device::Cpu,
        })
    }

    /// "device-hours" on a CPU, "GPU-hours" on a GPU.
    pub fn hours_label(&self) -> &'static str {
        if self.device.is_cpu() { "device-hours" } else { "GPU-hours" }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn lora_settings(args: &LoraArgs, seed: u64) -> Result<(LoraSpec, AdapterInit)> {
    let (mut spec, init) = match &args.init_adapter {
        Some(dir) => (PeftConfig::read(dir)?.spec(&dir.join("adapter_config.json"))?, AdapterInit::Peft(dir.clone())),
        None => (LoraSpec::default(), AdapterInit::Seeded(seed)),
    };
    let from_adapter = args.init_adapter.is_some();
    let conflict = |flag: &'static str| Error::flag(flag, "cannot be combined with --init-adapter (the adapter's config sets it)");
    if let Some(r) = args.rank {
        if from_adapter { return Err(conflict("--rank")); }
        spec.rank = at_least("--rank", r, 1)?;
    }
    if let Some(a) = args.alpha {
        if from_adapter { return Err(conflict("--alpha")); }
        spec.alpha = finite_positive("--alpha", a)?;
    }
    if let Some(t) = &args.targets {
        if from_adapter { return Err(conflict("--targets")); }
        spec.targets = parse_targets(t)?;
    }
    if let Some(p) = args.dropout {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::flag("--dropout", format!("{p} is not in [0, 1)")));
        }
        spec.dropout = p;
    }
    spec.rslora |= args.rslora;
    Ok((spec, init))
}

fn parse_targets(value: &str) -> Result<Targets> {
    match value.trim() {
        "all-linear" => Ok(Targets::AllLinear),
        "default" => Ok(Targets::Default),
        list => {
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            if names.is_empty() {
                return Err(Error::flag("--targets", "no module names given"));
            }
            Ok(Targets::Names(names))
        }
    }
}

fn train_settings(args: &TrainArgs) -> Result<TrainSpec> {
    let max_grad_norm = args.max_grad_norm;
    if !(max_grad_norm >= 0.0 && max_grad_norm.is_finite()) {
        return Err(Error::flag("--max-grad-norm", format!("{max_grad_norm} must be >= 0")));
    }
    Ok(TrainSpec {
        optimizer: AdamWConfig { lr: finite_positive("--lr", args.lr)?, ..AdamWConfig::default() },
        warmup_steps: args.warmup_steps,
        max_grad_norm,
        batch_size: at_least("--batch-size", args.batch_size, 1)?,
        grad_accum: at_least("--grad-accum", args.grad_accum, 1)?,
        steps: at_least("--steps", args.steps, 1)?,
        eval_every: args.eval_every,
        timing_warmup: args.timing_warmup.min(args.steps.saturating_sub(1)),
    })
}

fn at_least(flag: &'static str, value: usize, min: usize) -> Result<usize> {
    if value < min {
        return Err(Error::flag(flag, format!("{value} is less than {min}")));
    }
    Ok(value)
}

fn finite_positive(flag: &'static str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::flag(flag, format!("{value} must be a positive number")));
    }
    Ok(value)
}
