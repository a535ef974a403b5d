//! `plasticity simulate`: writes a checkpoint series of the single-index model, one folder per
//! pre-training amount, in the same layout as a transformers Trainer run (config.json,
//! model.safetensors, trainer_state.json), so `scan` treats it like any other series.
//!
//! The series carries its own fine-tuning settings, including a step budget derived from the
//! theory's predicted escape time of its slowest snapshot. This module writes files only; the
//! dynamics live in `single_index/mod.rs` and the formulas in `theory.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::rng::Stream;
use candle_core::{Device, Tensor};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::single_index::theory::{self, Link};
use crate::single_index::{population_loss, Config, FineTune, Variant, ESCAPE_THRESHOLD, MODEL_TYPE};

/// How much pre-training each snapshot gets.
#[derive(Debug, Clone)]
pub enum Amounts {
    /// P steps of population gradient descent from w = 0 with this step size.
    Steps { steps: Vec<u64>, pretrain_lr: f64 },
    /// The strengths mu directly.
    Strengths(Vec<f64>),
}

#[derive(Debug, Clone)]
pub struct SimulateSpec {
    pub out: PathBuf,
    pub link: Link,
    pub dim: usize,
    pub amounts: Amounts,
    pub variant: Variant,
    pub m0: Option<f64>,
    pub lr: f64,
    pub batch_size: usize,
    pub teacher_seed: u64,
    /// Fine-tuning step budget; None derives it from the theory.
    pub budget: Option<usize>,
}

/// One snapshot to write: folder name, step, mu and its provenance.
struct Snapshot {
    name: String,
    step: u64,
    mu: f64,
    pretrain_steps: Option<u64>,
}

/// Writes the series and returns the snapshot folders, in step order.
pub fn write_series(spec: &SimulateSpec) -> Result<Vec<PathBuf>> {
    prepare_out(&spec.out)?;
    let snapshots = snapshots(spec)?;
    let budget = spec.budget.unwrap_or_else(|| default_budget(spec, &snapshots));
    let (w_star, xi) = (
        unit_vector(spec.dim, spec.teacher_seed, Stream::Teacher),
        unit_vector(spec.dim, spec.teacher_seed, Stream::TeacherNoise),
    );
    snapshots.iter().map(|s| write_snapshot(spec, s, budget, &w_star, &xi)).collect()
}

/// The output folder must be new or empty: stale snapshots would join the series.
fn prepare_out(out: &Path) -> Result<()> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::input(out, format!("cannot list folder: {e}")))?;
        if entries.next().is_some() {
            return Err(Error::input(out, "output folder is not empty"));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::input(out, format!("cannot create folder: {e}")))
}

fn snapshots(spec: &SimulateSpec) -> Result<Vec<Snapshot>> {
    let list: Vec<Snapshot> = match &spec.amounts {
        Amounts::Steps { steps, pretrain_lr } => {
            if steps.iter().any(|&p| p > 0) && theory::strength_after(spec.link, 1, *pretrain_lr) == 0.0 {
                return Err(Error::flag(
                    "--steps-list",
                    format!(
                        "with the {} link, gradient descent from w = 0 never moves (A(0) = 0): give --strengths",
                        spec.link
                    ),
                ));
            }
            steps
                .iter()
                .map(|&p| Snapshot {
                    name: format!("checkpoint-{p}"),
                    step: p,
                    mu: theory::strength_after(spec.link, p, *pretrain_lr),
                    pretrain_steps: Some(p),
                })
                .collect()
        }
        Amounts::Strengths(mus) => mus
            .iter()
            .map(|&mu| Snapshot {
                name: format!("mu-{mu:.3}"),
                step: (mu * 1000.0).round() as u64,
                mu,
                pretrain_steps: None,
            })
            .collect(),
    };
    let mut steps: Vec<u64> = list.iter().map(|s| s.step).collect();
    steps.sort_unstable();
    steps.dedup();
    if steps.len() != list.len() {
        return Err(Error::flag("--steps-list", "two snapshots would share one step"));
    }
    Ok(list)
}

/// 12x the slowest predicted escape (the convergence after it is slower still for strong
/// pre-training), at least 2,000 steps. Runs stop early once converged, so only a snapshot
/// that stalls spends all of it.
fn default_budget(spec: &SimulateSpec, snapshots: &[Snapshot]) -> usize {
    let m0 = spec.m0.unwrap_or(1.0 / (spec.dim as f64).sqrt());
    let slowest = snapshots
        .iter()
        .map(|s| theory::predicted_escape_step(spec.link, s.mu, m0, ESCAPE_THRESHOLD, spec.lr))
        .filter(|p| p.is_finite())
        .fold(0.0, f64::max);
    ((12.0 * slowest) as usize).clamp(2_000, 2_000_000)
}

/// A unit vector drawn from N(0, I).
fn unit_vector(dim: usize, seed: u64, purpose: Stream) -> Vec<f64> {
    let mut rng = crate::rng::stream(seed, purpose, 0);
    let v: Vec<f64> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn write_snapshot(spec: &SimulateSpec, s: &Snapshot, budget: usize, w_star: &[f64], xi: &[f64]) -> Result<PathBuf> {
    let dir = spec.out.join(&s.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::input(&dir, format!("cannot create folder: {e}")))?;
    let mix = if spec.variant == Variant::RandomMix { 1.0 - s.mu } else { 0.0 };
    let w0: Vec<f64> = w_star.iter().zip(xi).map(|(w, x)| s.mu * w + mix * x).collect();
    let config = Config {
        model_type: MODEL_TYPE.into(),
        dim: spec.dim,
        link: spec.link,
        mu: s.mu,
        variant: spec.variant,
        teacher_seed: spec.teacher_seed,
        m0: spec.m0,
        u0: None,
        finetune: FineTune { lr: spec.lr, batch_size: spec.batch_size, steps: budget },
        pretrain_steps: s.pretrain_steps,
        pretrain_lr: match spec.amounts {
            Amounts::Steps { pretrain_lr, .. } => Some(pretrain_lr),
            Amounts::Strengths(_) => None,
        },
    };
    write_json(
        &dir.join("config.json"),
        &serde_json::to_value(&config).map_err(|source| Error::Encode { what: "config.json", source })?,
    )?;
    write_weights(&dir.join("model.safetensors"), &w0, w_star)?;
    let r = w0.iter().zip(w_star).map(|(a, b)| a * b).sum::<f64>();
    let q = w0.iter().map(|a| a * a).sum::<f64>();
    let pretrain_loss = population_loss(spec.link, r, q);
    let state =
        serde_json::json!({ "global_step": s.step, "log_history": [{ "step": s.step, "loss": pretrain_loss }] });
    write_json(&dir.join("trainer_state.json"), &state)?;
    Ok(dir)
}

fn write_weights(path: &Path, w0: &[f64], w_star: &[f64]) -> Result<()> {
    let tensor = |v: &[f64]| Tensor::from_slice(v, v.len(), &Device::Cpu);
    let map: HashMap<String, Tensor> = [("w0", tensor(w0)), ("w_star", tensor(w_star))]
        .into_iter()
        .map(|(k, t)| t.map(|t| (k.to_string(), t)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&map, path).map_err(|e| Error::input(path, format!("cannot write: {e}")))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Encode { what: "JSON", source })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::input(path, format!("cannot write: {e}")))
}
