//! Command-line flags and their help text; nothing else. `options/` checks and resolves them.
//! The items' comments are clap's `--help` text, written for a terminal rather than as
//! markdown (`cuda[:N]`, `DIR/<snapshot>/`), so rustdoc's link and HTML checks are off here.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::device::DeviceSpec;
use crate::single_index::theory::Link;
use crate::single_index::Variant;

#[derive(Debug, Parser)]
#[command(
    name = "plasticity",
    version,
    about = "Which pre-training checkpoint adapts fastest under LoRA fine-tuning?",
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing would only add noise
pub enum Command {
    /// Fine-tune every checkpoint of a series with the same short LoRA run and rank them.
    Scan(ScanArgs),
    /// Write a checkpoint series of the single-index model of arXiv 2602.02855.
    Simulate(SimulateArgs),
    /// Simulate a series where more pre-training slows LoRA down, scan it, and explain the ranking.
    Demo(DemoArgs),
    /// Render a saved JSON report as a table, Markdown, CSV or JUnit, without training.
    Report(ReportArgs),
    /// Print the path of the best checkpoint in a saved JSON report (for scripts).
    Select(SelectArgs),
    /// Merge the JSON reports of a partitioned scan (scan --partition K/N) into one ranking.
    Merge(MergeArgs),
    /// Forecast without training: weight geometry and step-0 gradient capture of every snapshot.
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Folder of checkpoints (as for scan) or one checkpoint folder.
    pub dir: PathBuf,

    /// Task data (as for scan); not needed for a simulated single-index series.
    #[arg(long, value_name = "FILE", help_heading = "Task and data")]
    pub task: Option<PathBuf>,

    /// tokenizer.json to use instead of each checkpoint's own.
    #[arg(long, value_name = "FILE", help_heading = "Task and data")]
    pub tokenizer: Option<PathBuf>,

    /// The rank r whose share of the gradient energy is measured (as scan's --rank).
    #[arg(long, allow_hyphen_values = true, default_value_t = 8, value_name = "R", help_heading = "LoRA")]
    pub rank: usize,

    /// Modules probed: as scan's --targets (PEFT's default for the model type).
    #[arg(long, value_name = "NAMES", help_heading = "LoRA")]
    pub targets: Option<String>,

    /// Task batches the step-0 gradient is averaged over.
    #[arg(long, allow_hyphen_values = true, default_value_t = 4, value_name = "N", help_heading = "Task and data")]
    pub batches: usize,

    /// Blocks per batch [default: 8, or the batch a simulated series carries].
    #[arg(long, allow_hyphen_values = true, value_name = "N", help_heading = "Task and data")]
    pub batch_size: Option<usize>,

    /// Tokens per block.
    #[arg(long, allow_hyphen_values = true, default_value_t = 128, value_name = "N", help_heading = "Task and data")]
    pub seq_len: usize,

    /// Held-out blocks for the zero-shot loss (as scan's, so the two agree).
    #[arg(long, allow_hyphen_values = true, default_value_t = 32, value_name = "N", help_heading = "Task and data")]
    pub eval_blocks: usize,

    /// Seeds which batches are drawn (as scan's --data-seed).
    #[arg(long, allow_hyphen_values = true, default_value_t = 0, value_name = "SEED", help_heading = "Task and data")]
    pub seed: u64,

    /// A scan's JSON report of the same series: print each probe's Spearman correlation with
    /// the measured convergence speed.
    #[arg(long, value_name = "REPORT.json", help_heading = "Output")]
    pub against: Option<PathBuf>,

    /// Write the probes as JSON to FILE (- for stdout).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub json: Option<String>,

    /// cpu, cuda[:N] or auto, as for scan.
    #[arg(long, default_value = "auto", value_name = "cpu|cuda[:N]|auto", help_heading = "Scale-out")]
    pub device: DeviceSpec,

    /// Threads for the CPU kernels [default: all cores].
    #[arg(long, allow_hyphen_values = true, value_name = "N", help_heading = "Scale-out")]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The partial JSON reports, one per partition.
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,

    #[command(flatten)]
    pub export: ExportArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A JSON report written by `plasticity scan --json`.
    pub report: PathBuf,

    #[command(flatten)]
    pub export: ExportArgs,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// A JSON report written by `plasticity scan --json`.
    pub report: PathBuf,

    /// Print the best K checkpoints, best first.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1, value_name = "K")]
    pub top: usize,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Folder to write the series to (created; must be empty if it exists).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    #[command(flatten)]
    pub series: SeriesArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the simulated series in DIR (created; must be empty) [default: a temporary folder].
    pub dir: Option<PathBuf>,

    #[command(flatten)]
    pub series: SeriesArgs,

    /// Also write the scan's JSON report to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
}

/// The single-index series: model, pre-training amounts, and the fine-tuning it carries.
#[derive(Debug, Args)]
#[command(next_help_heading = "Series")]
pub struct SeriesArgs {
    /// Link function: linear, relu, erf, sigmoid, or heK (Hermite polynomial He_K).
    #[arg(long, default_value = "linear", value_name = "LINK")]
    pub link: Link,

    /// Input dimension d.
    #[arg(long, allow_hyphen_values = true, default_value_t = 100, value_name = "D")]
    pub dim: usize,

    /// Pre-training amounts P: steps of population gradient descent from w = 0.
    #[arg(long, value_name = "LIST", default_value = "1,3,5,10,15,20,30", conflicts_with = "strengths")]
    pub steps_list: String,

    /// Pre-training strengths mu in [0, 1] given directly, instead of --steps-list.
    #[arg(long, value_name = "LIST")]
    pub strengths: Option<String>,

    /// Step size of the pre-training gradient descent (mu = 1 - (1 - lr)^P for a linear link).
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.1, value_name = "LR")]
    pub pretrain_lr: f64,

    /// w0 = mu w* ("aligned") or mu w* + (1 - mu) xi with xi random ("random-mix").
    #[arg(long, default_value = "aligned", value_name = "VARIANT")]
    pub variant: Variant,

    /// Deterministic adapter start with alignment m0 [simulate: uniform on the sphere; demo: 1/sqrt(d)].
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub m0: Option<f64>,

    /// Fine-tuning SGD learning rate the series carries.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.2, value_name = "LR")]
    pub lr: f64,

    /// Fine-tuning batch size the series carries [default: d].
    #[arg(long, allow_hyphen_values = true, value_name = "B")]
    pub batch_size: Option<usize>,

    /// Fine-tuning step budget [default: 12x the slowest predicted escape, at least 2000].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub budget: Option<usize>,

    /// Seed of the teacher direction w* (and of xi for random-mix).
    #[arg(long, allow_hyphen_values = true, default_value_t = 0, value_name = "SEED")]
    pub teacher_seed: u64,
}

/// `scan`'s flags alone, so `demo` scans with exactly scan's defaults.
#[derive(Debug, Parser)]
pub struct ScanOnly {
    #[command(flatten)]
    pub args: ScanArgs,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Folder of checkpoints (checkpoint-N/, stepN/, ...), one checkpoint folder, or
    /// hf://ORG/NAME: a Hugging Face Hub repository whose branches are the snapshots.
    pub dir: PathBuf,

    /// Scan only the snapshots (revisions) these names or globs match (`*`, `?`), e.g.
    /// step1000,step*000; each must match one.
    #[arg(long, visible_alias = "revisions", value_name = "NAME,GLOB,...", help_heading = "Snapshots")]
    pub snapshots: Option<String>,

    /// Scan at most N snapshots, spread evenly by step (first and last included).
    #[arg(long, allow_hyphen_values = true, value_name = "N", help_heading = "Snapshots")]
    pub max_snapshots: Option<usize>,

    /// How --max-snapshots spreads them: evenly in step, or in log(step), which favours the
    /// early snapshots where a series changes fastest.
    #[arg(long, value_enum, default_value_t = Spacing::Linear, value_name = "linear|log", hide_possible_values = true, help_heading = "Snapshots")]
    pub spacing: Spacing,

    /// hf:// scans: remove each snapshot's weight files from the Hub cache once it is scanned,
    /// so that at most two snapshots are on disk at a time.
    #[arg(long, conflicts_with = "keep_downloads", help_heading = "Snapshots")]
    pub delete_downloads: bool,

    /// hf:// scans: keep every download in the Hub cache (the default).
    #[arg(long, help_heading = "Snapshots")]
    pub keep_downloads: bool,

    /// Task data: .txt (one document) or .jsonl with "text" or "prompt"+"completion".
    /// Not needed for simulated single-index series, whose task is in their config.
    #[arg(long, value_name = "FILE", help_heading = "Task and data")]
    pub task: Option<PathBuf>,

    /// tokenizer.json to use instead of each checkpoint's own.
    #[arg(long, value_name = "FILE", help_heading = "Task and data")]
    pub tokenizer: Option<PathBuf>,

    #[command(flatten)]
    pub lora: LoraArgs,

    #[command(flatten)]
    pub train: TrainArgs,

    /// Target eval loss [default: the median of the final eval losses; 1e-6 for a simulated series].
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "LOSS",
        conflicts_with = "target_drop",
        help_heading = "Scoring and budget"
    )]
    pub target_loss: Option<f64>,

    /// Target a loss drop instead: F times the largest total drop of any checkpoint, from each
    /// checkpoint's own initial loss.
    #[arg(long, allow_hyphen_values = true, value_name = "F", help_heading = "Scoring and budget")]
    pub target_drop: Option<f64>,

    /// The fine-tune you will run, which the ranking answers for: N updates, N-tokens (K, M, G
    /// allowed: 20M-tokens), Nh device-hours, or N-epochs of the task's training blocks. Beyond
    /// --steps each snapshot's curve is forecast to it, with 95% intervals [default: 3-epochs].
    #[arg(long, value_name = "N|N-tokens|Nh|N-epochs", help_heading = "Scoring and budget")]
    pub budget: Option<String>,

    /// When the leaders' forecasts at the budget overlap after the probe, keep training only
    /// them (doubling their updates each round, up to the budget) until their 95% intervals
    /// separate or they reach the budget; the report says what this cost.
    #[arg(long, help_heading = "Scoring and budget")]
    pub until_settled: bool,

    /// Fine-tune each checkpoint N times (seeds --seed..--seed+N-1, likewise --data-seed) and
    /// report means with 95% confidence intervals.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1, value_name = "N", help_heading = "Training")]
    pub seeds: usize,

    /// full: every checkpoint gets the whole budget. race: at rungs along the budget, a
    /// snapshot is stopped only when its forecast time to the target (a fitted learning curve
    /// with a 95% interval) lies wholly beyond the leader's; the report says which were
    /// stopped, when and why.
    #[arg(long, value_enum, default_value_t = Strategy::Full, help_heading = "Scoring and budget")]
    pub strategy: Strategy,

    /// Exit 1 when the most pre-trained snapshot needs more than X (>= 1) times the
    /// device-hours to target of the best snapshot to fine-tune (or never reaches the target);
    /// with several seeds only when that holds at 95%.
    #[arg(long, allow_hyphen_values = true, value_name = "X", help_heading = "Scoring and budget")]
    pub fail_if_last_slower: Option<f64>,

    /// Add cost columns: device-hours x P.
    #[arg(long, allow_hyphen_values = true, value_name = "P", help_heading = "Scoring and budget")]
    pub price_per_gpu_hour: Option<f64>,

    #[command(flatten)]
    pub export: ExportArgs,

    /// Reuse the checkpoints a previous (possibly interrupted) report measured with the same
    /// settings and the same files; fine-tune only the rest. May be the --json file itself.
    #[arg(long, value_name = "REPORT.json", help_heading = "Output")]
    pub resume: Option<PathBuf>,

    /// Sweep LoRA ranks: fine-tune every snapshot at each (e.g. 4,8,16,32), same seeds and
    /// batches; the first is the main scan. Combines with --lrs into a grid.
    #[arg(long, value_name = "R,R,...", help_heading = "LoRA")]
    pub ranks: Option<String>,

    /// Sweep learning rates (e.g. 1e-4,3e-4,1e-3); the first is the main scan.
    #[arg(long, value_name = "LR,LR,...", help_heading = "Training")]
    pub lrs: Option<String>,

    /// Pre-training data (.txt or .jsonl, as --task): each snapshot's loss on its first
    /// --eval-blocks blocks is the pre-training loss the task gap is measured against, instead
    /// of the last loss in trainer_state.json.
    #[arg(long, value_name = "FILE", help_heading = "Task and data")]
    pub pretrain_sample: Option<PathBuf>,

    /// Write each snapshot's trained adapter in PEFT's format to DIR/<snapshot>/
    /// (DIR/<snapshot>/seed-<seed>/ with several seeds): adapter_config.json and
    /// adapter_model.safetensors, loadable with PeftModel.from_pretrained.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub save_adapters: Option<PathBuf>,

    /// With --save-adapters: keep only the winner's adapter once the scan completes.
    #[arg(long, requires = "save_adapters", help_heading = "Output")]
    pub save_best: bool,

    /// Where to fine-tune: cpu, cuda (GPU 0), cuda:N, or auto (the first GPU when this build
    /// has CUDA support and one is usable, else the CPU, saying why).
    #[arg(
        long,
        default_value = "auto",
        value_name = "cpu|cuda[:N]|auto",
        conflicts_with = "devices",
        help_heading = "Scale-out"
    )]
    pub device: DeviceSpec,

    /// Several devices, one worker each: every worker fine-tunes the next snapshot not yet
    /// taken (e.g. cuda:0,cuda:1). Results equal a run on one device but for timings; a
    /// device may repeat (cpu,cpu: two CPU workers sharing --threads).
    #[arg(long, value_name = "DEV,DEV,...", help_heading = "Scale-out")]
    pub devices: Option<String>,

    /// Precision of the frozen base weights and activations: f32, or bf16 as transformers
    /// loads with torch_dtype=bfloat16 (adapters, their gradients and the optimizer stay f32,
    /// as PEFT keeps them). bf16 halves the weights' memory; on a CPU it is slower than f32.
    #[arg(long, value_enum, default_value_t = Dtype::F32, value_name = "f32|bf16", hide_possible_values = true, help_heading = "Training")]
    pub dtype: Dtype,

    /// Scan only every N-th snapshot (in step order) starting at the K-th, K in 1..=N: one task
    /// of a job array; `plasticity merge` joins the parts' reports. `auto` takes K and N from
    /// Slurm (SLURM_ARRAY_TASK_ID, _MIN and _COUNT); `auto/N` takes K from Kubernetes'
    /// JOB_COMPLETION_INDEX (0-based) with N parts.
    #[arg(long, value_name = "K/N|auto|auto/N", help_heading = "Scale-out")]
    pub partition: Option<String>,

    /// Threads for the CPU kernels [default: all cores].
    #[arg(long, allow_hyphen_values = true, value_name = "N", help_heading = "Scale-out")]
    pub threads: Option<usize>,

    /// Do not draw the progress bar.
    #[arg(long, help_heading = "Output")]
    pub quiet: bool,
}

/// How the budget is spent across checkpoints.
/// `--dtype`: the precision of the frozen weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

/// How `--max-snapshots` spreads the snapshots it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    Linear,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Full,
    Race,
}

/// Report files, each FILE or "-" for stdout; created at start, rewritten after each checkpoint.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Output")]
pub struct ExportArgs {
    /// Write the JSON report to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,

    /// Write a Markdown summary to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<String>,

    /// Write one CSV row per checkpoint to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<String>,

    /// Write JUnit XML (a test case per checkpoint) to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<String>,

    /// Draw every snapshot's eval-loss curve (against steps and device-hours) to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<String>,

    /// Do not append the Markdown summary to $GITHUB_STEP_SUMMARY.
    #[arg(long)]
    pub no_step_summary: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "LoRA")]
pub struct LoraArgs {
    /// LoRA rank r (PEFT default 8).
    #[arg(long, allow_hyphen_values = true, value_name = "R")]
    pub rank: Option<usize>,

    /// LoRA alpha (PEFT default 8); the adapter is scaled by alpha/r.
    #[arg(long, allow_hyphen_values = true, value_name = "ALPHA")]
    pub alpha: Option<f64>,

    /// Dropout on the adapter input (PEFT default 0).
    #[arg(long, allow_hyphen_values = true, value_name = "P")]
    pub dropout: Option<f64>,

    /// Scale by alpha/sqrt(r) (rsLoRA) instead of alpha/r.
    #[arg(long)]
    pub rslora: bool,

    /// Modules to adapt: comma-separated names, "all-linear", or PEFT's default for the model type.
    #[arg(long, value_name = "LIST")]
    pub targets: Option<String>,

    /// Start from a PEFT adapter (adapter_config.json + adapter_model.safetensors) instead of a fresh one.
    #[arg(long, value_name = "DIR")]
    pub init_adapter: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Training")]
pub struct TrainArgs {
    /// Optimizer updates per checkpoint [default: 60, or the budget a simulated series carries].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub steps: Option<usize>,

    /// Learning rate, constant after warm-up [default: 1e-3 for AdamW, or the SGD rate a simulated series carries].
    #[arg(long, allow_hyphen_values = true, value_name = "LR")]
    pub lr: Option<f64>,

    /// Linear learning-rate warm-up over the first N updates.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0, value_name = "N")]
    pub warmup_steps: usize,

    /// Clip the global gradient norm (0 disables).
    #[arg(long, allow_hyphen_values = true, default_value_t = 1.0, value_name = "NORM")]
    pub max_grad_norm: f64,

    /// Blocks per micro-batch [default: 8, or the batch a simulated series carries].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Micro-batches per update.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1, value_name = "N")]
    pub grad_accum: usize,

    /// Tokens per block.
    #[arg(long, allow_hyphen_values = true, default_value_t = 128, value_name = "N", help_heading = "Task and data")]
    pub seq_len: usize,

    /// Held-out blocks at the end of the task data.
    #[arg(long, allow_hyphen_values = true, default_value_t = 32, value_name = "N", help_heading = "Task and data")]
    pub eval_blocks: usize,

    /// Measure the eval loss every N updates (and at step 0 and the last step).
    #[arg(long, allow_hyphen_values = true, default_value_t = 10, value_name = "N")]
    pub eval_every: usize,

    /// Seed of the adapter initialisation.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0, value_name = "SEED")]
    pub seed: u64,

    /// Seed of the training batch order [default: --seed].
    #[arg(long, allow_hyphen_values = true, value_name = "SEED")]
    pub data_seed: Option<u64>,

    /// Updates timed but left out of the median step time.
    #[arg(long, allow_hyphen_values = true, default_value_t = 2, value_name = "N")]
    pub timing_warmup: usize,
}
