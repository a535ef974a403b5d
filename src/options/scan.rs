//! `plasticity scan`'s options: [`ScanOptions`] from the scan's flags, the flags only a scan
//! has (`--budget`, `--dtype`, `--devices`, `--strategy`, `--until-settled`), and the checks
//! that tie the scan's flags together (what cannot be combined with what). It must not resolve
//! what other commands share; that comes from `training.rs`, `export.rs` and the parent module.

use std::path::PathBuf;

use candle_core::{DType, Device};

use super::export::exports;
use super::partition::{partition, Partition};
use super::sweep::{sweep, Sweep};
use super::training::{lora_settings, train_settings};
use super::{at_least, default_threads, finite_positive};
use crate::cli::{Dtype, ScanArgs, Strategy};
use crate::error::{Error, Result};
use crate::lora::{AdapterInit, LoraSpec};
use crate::report::{Format, HoursUnit, Output};
use crate::score::budget::{Budget, DEFAULT_BUDGET};
use crate::score::TargetSpec;
use crate::train::TrainSpec;

/// The training flags the user gave (checked), as opposed to defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Explicit {
    pub lr: Option<f64>,
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
}

/// A scan of a Hugging Face Hub repository (`hf://ORG/NAME`).
#[derive(Debug, Clone)]
pub struct HubScan {
    /// `ORG/NAME`.
    pub repo: String,
    /// Keep each snapshot's weights in the cache after it is scanned.
    pub keep: bool,
}

/// Everything a scan needs, checked.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// The series' folder, or `hf://ORG/NAME` as given.
    pub dir: PathBuf,
    /// Set when `dir` names a Hub repository.
    pub hub: Option<HubScan>,
    pub task: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub lora: LoraSpec,
    pub init: AdapterInit,
    pub train: TrainSpec,
    /// Flags given explicitly: they override what a simulated series carries.
    pub explicit: Explicit,
    pub seq_len: usize,
    pub eval_blocks: usize,
    /// Seeds the adapter initialisation.
    pub seed: u64,
    /// Seeds the batch order.
    pub data_seed: u64,
    /// --target-loss or --target-drop; None: the series' default.
    pub target: Option<TargetSpec>,
    pub seeds: usize,
    pub price_per_hour: Option<f64>,
    /// A previous report to resume from.
    pub resume: Option<PathBuf>,
    pub strategy: Strategy,
    /// --snapshots, --max-snapshots, --spacing: which snapshots of the series are scanned.
    pub selection: Option<super::Selection>,
    /// --partition: which part of the series this process scans.
    pub partition: Option<Partition>,
    /// --fail-if-last-slower X.
    pub fail_if_last_slower: Option<f64>,
    pub threads: usize,
    /// Report formats and where they go (at most one to stdout).
    pub exports: Vec<(Format, Output)>,
    /// Append the Markdown summary to $GITHUB_STEP_SUMMARY when it is set.
    pub step_summary: bool,
    pub progress: bool,
    /// The first (or only) device; see `devices`.
    pub device: Device,
    /// One worker per entry (--devices); `[device]` without the flag.
    pub devices: Vec<Device>,
    /// Precision of the frozen base weights and activations (--dtype).
    pub dtype: DType,
    /// --save-adapters DIR.
    pub save_adapters: Option<PathBuf>,
    /// --pretrain-sample FILE.
    pub pretrain_sample: Option<PathBuf>,
    /// --save-best: only the winner's adapter stays in `save_adapters`.
    pub save_best: bool,
    /// --ranks / --lrs.
    pub sweep: Option<Sweep>,
    /// --budget: the fine-tune the ranking answers for.
    pub budget: Budget,
    /// --until-settled: continue the leaders' runs beyond the probe until the ranking at the
    /// budget is settled.
    pub until_settled: bool,
}

/// `--budget`: N (updates), N-tokens with an optional K, M or G, Nh, or N-epochs; positive,
/// and in updates no shorter than the probe (`steps`).
pub fn budget(value: Option<&str>, steps: usize) -> Result<Budget> {
    let Some(v) = value.map(str::trim) else { return Ok(DEFAULT_BUDGET) };
    let bad = || Error::flag("--budget", format!("{v:?} is not N (updates), N-tokens, Nh or N-epochs with N positive"));
    let number = |s: &str| s.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(bad);
    let parsed = if let Some(t) = v.strip_suffix("-tokens") {
        let (digits, scale) = match t.chars().last() {
            Some('K' | 'k') => (&t[..t.len() - 1], 1e3),
            Some('M' | 'm') => (&t[..t.len() - 1], 1e6),
            Some('G' | 'g') => (&t[..t.len() - 1], 1e9),
            _ => (t, 1.0),
        };
        Budget::Tokens(number(digits)? * scale)
    } else if let Some(h) = v.strip_suffix('h') {
        Budget::Hours(number(h)?)
    } else if let Some(e) = v.strip_suffix("-epochs") {
        Budget::Epochs(number(e)?)
    } else {
        Budget::Updates(v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(bad)?)
    };
    if let Budget::Updates(n) = parsed {
        if n < steps {
            return Err(Error::flag(
                "--budget",
                format!("{n} updates is shorter than the probe (--steps {steps}): give --steps {n} to measure it"),
            ));
        }
    }
    Ok(parsed)
}

impl ScanOptions {
    /// These options at one (rank, lr) of the sweep.
    pub fn variant(&self, (rank, lr): (usize, f64)) -> ScanOptions {
        let mut o = self.clone();
        o.lora.rank = rank;
        o.train.optimizer.lr = lr;
        if self.sweep.as_ref().is_some_and(|s| s.lrs_given) {
            o.explicit.lr = Some(lr); // overrides what a simulated series carries, as --lr does
        }
        o
    }
}

/// `--until-settled` needs the paused runs of one process on one device, over the whole series.
fn until_settled(args: &ScanArgs) -> Result<()> {
    if !args.until_settled {
        return Ok(());
    }
    let refuse = |why: &str| Err(Error::flag("--until-settled", format!("cannot be combined with {why}")));
    if args.ranks.is_some() || args.lrs.is_some() {
        return refuse("--ranks or --lrs (a sweep compares its variants at the probe)");
    }
    if args.resume.is_some() {
        return refuse("--resume (a resumed measurement has no paused run to continue)");
    }
    if args.partition.is_some() {
        return refuse("--partition (the leaders are known only over the whole series)");
    }
    if args.devices.is_some() {
        return refuse("--devices (the paused runs continue on one device)");
    }
    Ok(())
}

impl ScanOptions {
    pub fn from_args(args: ScanArgs) -> Result<Self> {
        let threads = args.threads.unwrap_or_else(default_threads);
        at_least("--threads", threads, 1)?;
        let target = match (args.target_loss, args.target_drop) {
            (Some(t), _) => Some(TargetSpec::Loss(finite_positive("--target-loss", t)?)),
            (None, Some(f)) if f > 0.0 && f <= 1.0 => Some(TargetSpec::Drop(f)),
            (None, Some(f)) => return Err(Error::flag("--target-drop", format!("{f} is not in (0, 1]"))),
            (None, None) => None,
        };
        let price_per_hour = args.price_per_gpu_hour.map(|p| finite_positive("--price-per-gpu-hour", p)).transpose()?;
        let (lora, init) = lora_settings(&args.lora, args.train.seed)?;
        let train = train_settings(&args.train)?;
        let budget = budget(args.budget.as_deref(), train.steps)?;
        until_settled(&args)?;
        let sweep = sweep(&args, lora.rank, train.optimizer.lr)?;
        if args.save_best && args.partition.is_some() {
            return Err(Error::flag("--save-best", "cannot be combined with --partition: a part does not know the series' winner (save every adapter, then keep `plasticity select`'s)"));
        }
        let devices = match &args.devices {
            Some(list) => device_list(list, args.strategy)?,
            None => vec![crate::device::open("--device", args.device)?],
        };
        if args.dtype == Dtype::Bf16 && devices.iter().any(Device::is_cpu) {
            eprintln!("warning: --dtype bf16 on the CPU is slower and needs more memory than f32 (3.7x the step time and 4.1x the peak memory at the Pythia-70M shape): it is meant for GPUs");
        }
        let explicit = Explicit { lr: args.train.lr, steps: args.train.steps, batch_size: args.train.batch_size };
        Ok(ScanOptions {
            hub: hub_scan(&args, sweep.is_some())?,
            dir: args.dir,
            task: args.task,
            tokenizer: args.tokenizer,
            lora,
            init,
            train,
            explicit,
            seq_len: at_least("--seq-len", args.train.seq_len, 2)?,
            eval_blocks: at_least("--eval-blocks", args.train.eval_blocks, 1)?,
            seed: args.train.seed,
            data_seed: args.train.data_seed.unwrap_or(args.train.seed),
            target,
            seeds: at_least("--seeds", args.seeds, 1)?,
            price_per_hour,
            resume: args.resume.clone(),
            strategy: strategy(args.strategy, args.resume.is_some())?,
            selection: super::Selection::new(args.snapshots.as_deref(), args.max_snapshots, args.spacing)?,
            partition: partition(args.partition.as_deref(), args.strategy, &|k| std::env::var(k).ok())?,
            fail_if_last_slower: args
                .fail_if_last_slower
                .map(|x| at_least_one("--fail-if-last-slower", x))
                .transpose()?,
            threads,
            exports: exports(&args.export)?,
            step_summary: !args.export.no_step_summary,
            progress: !args.quiet,
            device: devices.first().cloned().unwrap_or(Device::Cpu),
            devices,
            dtype: match args.dtype {
                Dtype::F32 => DType::F32,
                Dtype::Bf16 => DType::BF16,
            },
            save_adapters: args.save_adapters,
            sweep,
            pretrain_sample: args.pretrain_sample,
            save_best: args.save_best,
            budget,
            until_settled: args.until_settled,
        })
    }

    /// "device-hours" on a CPU, "GPU-hours" on a GPU.
    pub fn hours_unit(&self) -> HoursUnit {
        if self.device.is_cpu() {
            HoursUnit::DeviceHours
        } else {
            HoursUnit::GpuHours
        }
    }
}

/// `hf://ORG/NAME`, and `--delete-downloads`, which needs a Hub scan that opens each snapshot
/// once (a race or a sweep comes back to them).
fn hub_scan(args: &ScanArgs, sweep: bool) -> Result<Option<HubScan>> {
    let repo = crate::hub::repo_of(&args.dir).transpose()?;
    if !args.delete_downloads {
        return Ok(repo.map(|repo| HubScan { repo, keep: true }));
    }
    let Some(repo) = repo else {
        return Err(Error::flag("--delete-downloads", "is for hf:// scans (a folder's files are the user's own)"));
    };
    if args.strategy == Strategy::Race || args.until_settled || sweep {
        return Err(Error::flag(
            "--delete-downloads",
            "cannot be combined with --strategy race, --until-settled or a sweep: they come back to each snapshot",
        ));
    }
    Ok(Some(HubScan { repo, keep: false }))
}

/// `--devices`: racing advances all snapshots rung by rung on one device.
fn device_list(value: &str, strategy: Strategy) -> Result<Vec<Device>> {
    if strategy == Strategy::Race {
        return Err(Error::flag(
            "--devices",
            "cannot be combined with --strategy race (a race advances the snapshots in lockstep on one device)",
        ));
    }
    crate::device::parse_list(value)
}

/// `--strategy`; a race cannot yet resume a report (it would need the paused runs' state).
fn strategy(strategy: Strategy, resume: bool) -> Result<Strategy> {
    if strategy == Strategy::Race && resume {
        return Err(Error::flag(
            "--strategy",
            "race cannot be combined with --resume yet: resume with --strategy full, or rerun the race",
        ));
    }
    Ok(strategy)
}

/// A ratio of times that must be at least 1 (the most pre-trained snapshot can never be faster
/// than the best one).
fn at_least_one(flag: &'static str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value >= 1.0) {
        return Err(Error::flag(flag, format!("{value} must be a ratio of at least 1")));
    }
    Ok(value)
}
