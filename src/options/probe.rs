//! `plasticity probe`'s options: [`ProbeOptions`] from its flags. Of the fine-tune's settings a
//! probe takes only the LoRA targets' syntax (from `training.rs`): it does not train, so this
//! file must not resolve training settings.

use std::path::PathBuf;

use candle_core::Device;

use super::training::parse_targets;
use super::{at_least, default_threads};
use crate::cli::ProbeArgs;
use crate::error::Result;
use crate::lora::LoraSpec;
use crate::report::Output;

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
        if crate::hub::repo_of(&args.dir).is_some() {
            return Err(crate::error::Error::input(&args.dir, "probe reads a folder: scan the repository first (its snapshots stay in the hub cache), then probe the cache folder models--ORG--NAME"));
        }
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
            device: crate::device::open("--device", args.device)?,
            threads,
        })
    }
}
