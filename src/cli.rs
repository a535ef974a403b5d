//! Command-line flags and their help text; nothing else. `options.rs` checks and resolves them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "plasticity", version, about = "Which pre-training checkpoint adapts fastest under LoRA fine-tuning?")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fine-tune every checkpoint of a series with the same short LoRA run and rank them.
    Scan(ScanArgs),
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Folder of checkpoints (checkpoint-N/, stepN/, ...) or one checkpoint folder.
    pub dir: PathBuf,

    /// Task data: .txt (one document) or .jsonl with "text" or "prompt"+"completion".
    #[arg(long, value_name = "FILE")]
    pub task: PathBuf,

    /// tokenizer.json to use instead of each checkpoint's own.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    #[command(flatten)]
    pub lora: LoraArgs,

    #[command(flatten)]
    pub train: TrainArgs,

    /// Target eval loss [default: the median of the checkpoints' final eval losses].
    #[arg(long, value_name = "LOSS")]
    pub target_loss: Option<f64>,

    /// Write the JSON report to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,

    /// Threads for the CPU kernels [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Do not draw the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct LoraArgs {
    /// LoRA rank r (PEFT default 8).
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,

    /// LoRA alpha (PEFT default 8); the adapter is scaled by alpha/r.
    #[arg(long, value_name = "ALPHA")]
    pub alpha: Option<f64>,

    /// Dropout on the adapter input (PEFT default 0).
    #[arg(long, value_name = "P")]
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
pub struct TrainArgs {
    /// Optimizer updates per checkpoint.
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub steps: usize,

    /// AdamW learning rate (constant after warm-up).
    #[arg(long, default_value_t = 1e-3, value_name = "LR")]
    pub lr: f64,

    /// Linear learning-rate warm-up over the first N updates.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup_steps: usize,

    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0, value_name = "NORM")]
    pub max_grad_norm: f64,

    /// Blocks per micro-batch.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch_size: usize,

    /// Micro-batches per update.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub grad_accum: usize,

    /// Tokens per block.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub seq_len: usize,

    /// Held-out blocks at the end of the task data.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub eval_blocks: usize,

    /// Measure the eval loss every N updates (and at step 0 and the last step).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub eval_every: usize,

    /// Seed of the adapter initialisation.
    #[arg(long, default_value_t = 0, value_name = "SEED")]
    pub seed: u64,

    /// Seed of the training batch order [default: --seed].
    #[arg(long, value_name = "SEED")]
    pub data_seed: Option<u64>,

    /// Updates timed but left out of the median step time.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub timing_warmup: usize,
}
