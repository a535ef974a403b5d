//! The fine-tune's settings from the LoRA and training flags: the adapter's spec (or the one an
//! `--init-adapter` folder fixes, which the LoRA flags may then not change), the module
//! targets' syntax, and the optimizer and step settings with their defaults for transformer
//! checkpoints. Scan uses all of it and probe the targets; this file must not read
//! command-specific flags.

use super::{at_least, finite_positive};
use crate::cli::{LoraArgs, TrainArgs};
use crate::error::{Error, Result};
use crate::lora::{AdapterInit, LoraSpec, PeftConfig, Targets};
use crate::train::optim::AdamWConfig;
use crate::train::TrainSpec;

/// Default training settings for transformer checkpoints (docs/usage.md, "Settings and defaults").
pub const DEFAULT_STEPS: usize = 60;
pub const DEFAULT_LR: f64 = 1e-3;
pub const DEFAULT_BATCH_SIZE: usize = 8;

pub(super) fn lora_settings(args: &LoraArgs, seed: u64) -> Result<(LoraSpec, AdapterInit)> {
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

pub(super) fn parse_targets(value: &str) -> Result<Targets> {
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

pub(super) fn train_settings(args: &TrainArgs) -> Result<TrainSpec> {
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
