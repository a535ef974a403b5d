//! Settings resolved once from the command line: typed, checked, with defaults applied.
//! No raw flag strings travel past this module, and nothing here trains or reads weights.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::cli::{ExportArgs, LoraArgs, ProbeArgs, ScanArgs, SeriesArgs, Strategy, TrainArgs};
use crate::error::{Error, Result};
use crate::lora::{AdapterInit, LoraSpec, PeftConfig, Targets};
use crate::report::{Format, Output};
use crate::score::budget::{Budget, DEFAULT_BUDGET};
use crate::score::TargetSpec;
use crate::single_index::simulate::{Amounts, SimulateSpec};
use crate::single_index::theory::Link;
use crate::single_index::Variant;
use crate::train::optim::AdamWConfig;
use crate::train::TrainSpec;

/// The training flags the user gave (checked), as opposed to defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Explicit {
    pub lr: Option<f64>,
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
}

/// Default training settings for transformer checkpoints (README, "Settings and defaults").
pub const DEFAULT_STEPS: usize = 60;
pub const DEFAULT_LR: f64 = 1e-3;
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// Everything a scan needs, checked.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub dir: PathBuf,
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

/// A grid of LoRA ranks and learning rates; the first of each is the main scan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sweep {
    pub ranks: Vec<usize>,
    pub lrs: Vec<f64>,
    /// --lrs was given (else `lrs` is the scan's one rate).
    #[serde(skip)]
    pub lrs_given: bool,
}

impl Sweep {
    /// (rank, lr) pairs: the main one first, then the rest of the grid, ranks outermost.
    pub fn variants(&self) -> Vec<(usize, f64)> {
        let grid = self.ranks.iter().flat_map(|&r| self.lrs.iter().map(move |&l| (r, l)));
        std::iter::once(self.main()).chain(grid.filter(|v| *v != self.main())).collect()
    }

    pub fn main(&self) -> (usize, f64) {
        (self.ranks[0], self.lrs[0])
    }
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

/// `--ranks` and `--lrs`: each a list of distinct values; None when neither is given.
fn sweep(args: &ScanArgs, rank: usize, lr: f64) -> Result<Option<Sweep>> {
    if args.ranks.is_none() && args.lrs.is_none() {
        return Ok(None);
    }
    let refuse = |why: &str| {
        Err(Error::flag(
            if args.ranks.is_some() { "--ranks" } else { "--lrs" },
            format!("cannot be combined with {why}"),
        ))
    };
    if args.strategy == Strategy::Race {
        return refuse("--strategy race (each variant would race separately)");
    }
    if args.partition.is_some() {
        return refuse("--partition yet (each part would sweep its own snapshots against its own target)");
    }
    if args.target_drop.is_some() {
        return refuse("--target-drop (each variant's drop would be its own; give --target-loss or none)");
    }
    if args.ranks.is_some() && args.lora.init_adapter.is_some() {
        return refuse("--init-adapter (the adapter fixes the rank)");
    }
    let ranks = match &args.ranks {
        Some(list) => list_of("--ranks", list, |v| v.parse::<usize>().ok().filter(|&r| r > 0))?,
        None => vec![rank],
    };
    let lrs = match &args.lrs {
        Some(list) => list_of("--lrs", list, |v| v.parse::<f64>().ok().filter(|l| l.is_finite() && *l > 0.0))?,
        None => vec![lr],
    };
    Ok(Some(Sweep { ranks, lrs, lrs_given: args.lrs.is_some() }))
}

/// A comma-separated list of distinct values, each checked by `parse`.
fn list_of<T: PartialEq + Copy>(flag: &'static str, list: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    for item in list.split(',').map(str::trim) {
        let v =
            parse(item).ok_or_else(|| Error::flag(flag, format!("{item:?} in {list:?} is not a positive number")))?;
        if out.contains(&v) {
            return Err(Error::flag(flag, format!("{item} is listed twice in {list:?}")));
        }
        out.push(v);
    }
    Ok(out)
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
            None => vec![crate::device::parse(&args.device)?],
        };
        if args.dtype == "bf16" && devices.iter().any(Device::is_cpu) {
            eprintln!("warning: --dtype bf16 on the CPU is slower and needs more memory than f32 (3.7x the step time and 4.1x the peak memory at the Pythia-70M shape): it is meant for GPUs");
        }
        let explicit = Explicit { lr: args.train.lr, steps: args.train.steps, batch_size: args.train.batch_size };
        Ok(ScanOptions {
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
            dtype: dtype(&args.dtype)?,
            save_adapters: args.save_adapters,
            sweep,
            pretrain_sample: args.pretrain_sample,
            save_best: args.save_best,
            budget,
            until_settled: args.until_settled,
        })
    }

    /// "device-hours" on a CPU, "GPU-hours" on a GPU.
    pub fn hours_label(&self) -> &'static str {
        if self.device.is_cpu() {
            "device-hours"
        } else {
            "GPU-hours"
        }
    }
}

/// Everything `plasticity probe` needs, checked.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub dir: PathBuf,
    pub task: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// Rank of the gradient capture and the modules probed (PEFT's defaults otherwise).
    pub lora: LoraSpec,
    pub batches: usize,
    /// None: the default for language models, or the batch a simulated series carries.
    pub batch_size: Option<usize>,
    pub seq_len: usize,
    pub eval_blocks: usize,
    pub seed: u64,
    pub against: Option<PathBuf>,
    pub json: Option<Output>,
    pub device: Device,
    pub threads: usize,
}

impl ProbeOptions {
    pub fn from_args(args: ProbeArgs) -> Result<Self> {
        let threads = at_least("--threads", args.threads.unwrap_or_else(default_threads), 1)?;
        let mut lora = LoraSpec { rank: at_least("--rank", args.rank, 1)?, ..LoraSpec::default() };
        if let Some(t) = &args.targets {
            lora.targets = parse_targets(t)?;
        }
        Ok(ProbeOptions {
            dir: args.dir,
            task: args.task,
            tokenizer: args.tokenizer,
            lora,
            batches: at_least("--batches", args.batches, 1)?,
            batch_size: args.batch_size.map(|b| at_least("--batch-size", b, 1)).transpose()?,
            seq_len: at_least("--seq-len", args.seq_len, 2)?,
            eval_blocks: at_least("--eval-blocks", args.eval_blocks, 1)?,
            seed: args.seed,
            against: args.against,
            json: args.json.as_deref().map(Output::parse),
            device: crate::device::parse(&args.device)?,
            threads,
        })
    }
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

/// `--dtype`: f32 or bf16.
pub fn dtype(value: &str) -> Result<DType> {
    match value {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::flag("--dtype", format!("{other:?} is not f32 or bf16"))),
    }
}

/// One part of a partitioned scan: the snapshots at positions k-1, k-1+n, k-1+2n, ... in step
/// order (k is 1-based, as in cargo-nextest's `--partition count:k/n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub k: usize,
    pub n: usize,
}

impl Partition {
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items.into_iter().enumerate().filter(|(i, _)| i % self.n == self.k - 1).map(|(_, c)| c).collect()
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// `--partition K/N`, `auto` (Slurm job arrays) or `auto/N` (Kubernetes Indexed Jobs); `env`
/// reads the environment.
pub fn partition(
    value: Option<&str>,
    strategy: Strategy,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Partition>> {
    let Some(value) = value else { return Ok(None) };
    if strategy == Strategy::Race {
        return Err(Error::flag(
            "--partition",
            "a race compares all snapshots at each rung, so it cannot be partitioned: use --strategy full",
        ));
    }
    let number = |name: &str| -> Result<usize> {
        let v = env(name).ok_or_else(|| Error::flag("--partition", format!("auto: {name} is not set")))?;
        v.trim().parse().map_err(|_| Error::flag("--partition", format!("auto: {name}={v:?} is not a number")))
    };
    let (k, n) = match value.split_once('/') {
        None if value == "auto" => {
            let (id, min, count) = (
                number("SLURM_ARRAY_TASK_ID")?,
                env("SLURM_ARRAY_TASK_MIN").map_or(Ok(0), |_| number("SLURM_ARRAY_TASK_MIN"))?,
                number("SLURM_ARRAY_TASK_COUNT")?,
            );
            (id.checked_sub(min).map(|i| i + 1), Some(count))
        }
        Some(("auto", n)) => (Some(number("JOB_COMPLETION_INDEX")? + 1), n.parse().ok()),
        Some((k, n)) => (k.parse().ok(), n.parse().ok()),
        None => (None, None),
    };
    match (k, n) {
        (Some(k), Some(n)) if n >= 1 && (1..=n).contains(&k) => Ok(Some(Partition { k, n })),
        _ => Err(Error::flag("--partition", format!("{value:?} resolves to no part K/N with 1 <= K <= N"))),
    }
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

/// The report files asked for; only one may go to stdout.
pub fn exports(args: &ExportArgs) -> Result<Vec<(Format, Output)>> {
    let all = [
        (Format::Json, &args.json),
        (Format::Markdown, &args.markdown),
        (Format::Csv, &args.csv),
        (Format::Junit, &args.junit),
        (Format::Plot, &args.plot),
    ];
    let list: Vec<(Format, Output)> =
        all.iter().filter_map(|(f, v)| v.as_deref().map(|v| (*f, Output::parse(v)))).collect();
    if let Some((_, out)) = list.iter().find(|(f, _)| *f == Format::Plot) {
        let ext = match out {
            Output::File(p) => p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase),
            Output::Stdout => return Err(Error::flag("--plot", "needs a file name ending in .svg or .png, not \"-\"")),
        };
        if !matches!(ext.as_deref(), Some("svg" | "png")) {
            return Err(Error::flag("--plot", "the file name must end in .svg or .png"));
        }
    }
    if list.iter().filter(|(_, o)| *o == Output::Stdout).count() > 1 {
        return Err(Error::flag("--json/--markdown/--csv/--junit", "only one report can go to stdout (\"-\")"));
    }
    Ok(list)
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
    let conflict =
        |flag: &'static str| Error::flag(flag, "cannot be combined with --init-adapter (the adapter's config sets it)");
    if let Some(r) = args.rank {
        if from_adapter {
            return Err(conflict("--rank"));
        }
        spec.rank = at_least("--rank", r, 1)?;
    }
    if let Some(a) = args.alpha {
        if from_adapter {
            return Err(conflict("--alpha"));
        }
        spec.alpha = finite_positive("--alpha", a)?;
    }
    if let Some(t) = &args.targets {
        if from_adapter {
            return Err(conflict("--targets"));
        }
        spec.targets = parse_targets(t)?;
    }
    if let Some(p) = args.dropout {
        if from_adapter {
            return Err(conflict("--dropout"));
        }
        if !(0.0..1.0).contains(&p) {
            return Err(Error::flag("--dropout", format!("{p} is not in [0, 1)")));
        }
        spec.dropout = p;
    }
    if args.rslora {
        if from_adapter {
            return Err(conflict("--rslora"));
        }
        spec.rslora = true;
    }
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
    let steps = at_least("--steps", args.steps.unwrap_or(DEFAULT_STEPS), 1)?;
    Ok(TrainSpec {
        optimizer: AdamWConfig {
            lr: finite_positive("--lr", args.lr.unwrap_or(DEFAULT_LR))?,
            ..AdamWConfig::default()
        },
        warmup_steps: args.warmup_steps,
        max_grad_norm,
        batch_size: at_least("--batch-size", args.batch_size.unwrap_or(DEFAULT_BATCH_SIZE), 1)?,
        grad_accum: at_least("--grad-accum", args.grad_accum, 1)?,
        steps,
        eval_every: args.eval_every,
        timing_warmup: args.timing_warmup.min(steps - 1),
    })
}

fn at_least(flag: &'static str, value: usize, min: usize) -> Result<usize> {
    if value < min {
        return Err(Error::flag(flag, format!("{value} is less than {min}")));
    }
    Ok(value)
}

/// A ratio of times that must be at least 1 (the most pre-trained snapshot can never be faster
/// than the best one).
fn at_least_one(flag: &'static str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value >= 1.0) {
        return Err(Error::flag(flag, format!("{value} must be a ratio of at least 1")));
    }
    Ok(value)
}

fn finite_positive(flag: &'static str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::flag(flag, format!("{value} must be a positive number")));
    }
    Ok(value)
}

/// The simulated series `simulate` or `demo` writes to `out`. `default_m0` applies when
/// --m0 is not given (demo starts deterministically at 1/sqrt(d), as the paper's reference).
pub fn simulate_spec(args: &SeriesArgs, out: PathBuf, demo: bool) -> Result<SimulateSpec> {
    let link: Link = args.link.parse().map_err(|e: String| Error::flag("--link", e))?;
    let dim = at_least("--dim", args.dim, 2)?;
    let variant = match args.variant.as_str() {
        "aligned" => Variant::Aligned,
        "random-mix" => Variant::RandomMix,
        other => return Err(Error::flag("--variant", format!("{other:?} is not aligned or random-mix"))),
    };
    let m0 = args.m0.or(demo.then(|| 1.0 / (dim as f64).sqrt()));
    if let Some(m) = m0 {
        if !(-1.0..=1.0).contains(&m) || m == 0.0 {
            return Err(Error::flag("--m0", format!("{m} must be in [-1, 1] and non-zero")));
        }
    }
    Ok(SimulateSpec {
        out,
        link,
        dim,
        amounts: amounts(args)?,
        variant,
        m0,
        lr: finite_positive("--lr", args.lr)?,
        batch_size: at_least("--batch-size", args.batch_size.unwrap_or(dim), 1)?,
        teacher_seed: args.teacher_seed,
        budget: args.budget.map(|b| at_least("--budget", b, 1)).transpose()?,
    })
}

fn amounts(args: &SeriesArgs) -> Result<Amounts> {
    if let Some(list) = &args.strengths {
        let mus = parse_list::<f64>("--strengths", list)?;
        if let Some(bad) = mus.iter().find(|m| !(0.0..=1.0).contains(*m)) {
            return Err(Error::flag("--strengths", format!("{bad} is not in [0, 1]")));
        }
        return Ok(Amounts::Strengths(mus));
    }
    let pretrain_lr = args.pretrain_lr;
    if !(pretrain_lr > 0.0 && pretrain_lr <= 1.0) {
        return Err(Error::flag("--pretrain-lr", format!("{pretrain_lr} is not in (0, 1]")));
    }
    Ok(Amounts::Steps { steps: parse_list::<u64>("--steps-list", &args.steps_list)?, pretrain_lr })
}

fn parse_list<T: std::str::FromStr>(flag: &'static str, list: &str) -> Result<Vec<T>> {
    let items: Vec<T> = list
        .split(',')
        .map(|s| s.trim().parse::<T>().map_err(|_| Error::flag(flag, format!("{s:?} is not a number"))))
        .collect::<Result<_>>()?;
    if items.is_empty() {
        return Err(Error::flag(flag, "empty list"));
    }
    Ok(items)
}
