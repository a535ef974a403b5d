//! `plasticity probe`: a forecast of which snapshot adapts fastest, without fine-tuning.
//!
//! For every adapted matrix W of each snapshot (the modules `scan` would adapt):
//! - weight geometry: spectral norm ||W||_2, stable rank ||W||_F^2 / ||W||_2^2, and effective
//!   rank exp(H(p)) with p_i = s_i / sum s (Roy and Vetterli), each averaged over the matrices,
//!   and its growth against the first snapshot;
//! - gradient capture at step 0: G = dL/dW on the task, averaged over `--batches` batches;
//!   `capture` = sum ||G_r||_F^2 / sum ||G||_F^2 (G_r the best rank-r approximation, summed
//!   over the matrices) and the gradient norm sqrt(sum ||G||_F^2);
//! - the zero-shot loss on the scan's eval blocks.
//!
//! The forecast is the captured gradient norm sqrt(sum ||G_r||_F^2) = grad_norm sqrt(capture):
//! the steepest first descent a rank-r update can find. The paper's mechanism (arXiv
//! 2602.02855) predicts that a strongly pre-trained snapshot offers the adapter a weaker, less
//! concentrated signal; a higher forecast means a faster start. Nothing here trains.

mod against;
pub mod table;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::checkpoint::weights::WeightStore;
use crate::data::{self, BatchOrder, Blocks, Document};
use crate::discover::{self, CheckpointRef};
use crate::engine::blocks::Cached;
use crate::error::{one_line, CandleContext, Error, Result};
use crate::linalg;
use crate::lora::AdapterInit;
use crate::model::{self, LoadedModel};
use crate::options::ProbeOptions;
use crate::single_index;
use crate::train::{self, Batch};

pub use against::{spearman, Against};

/// The probes of one snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub path: String,
    pub step: u64,
    /// "ok" or "failed".
    pub status: String,
    pub error: Option<String>,
    pub model_type: Option<String>,
    /// Adapted matrices probed.
    pub matrices: usize,
    pub spectral_norm: Option<f64>,
    pub stable_rank: Option<f64>,
    pub effective_rank: Option<f64>,
    /// Each geometry probe over the first probed snapshot's.
    pub spectral_norm_growth: Option<f64>,
    pub stable_rank_growth: Option<f64>,
    pub effective_rank_growth: Option<f64>,
    pub grad_norm: Option<f64>,
    pub capture: Option<f64>,
    pub forecast: Option<f64>,
    /// 1 = the fastest start forecast.
    pub forecast_rank: Option<usize>,
    pub zero_shot_loss: Option<f64>,
    pub seconds: f64,
}

/// What `probe` writes with --json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    pub tool: String,
    pub rank: usize,
    pub batches: usize,
    pub seed: u64,
    pub probes: Vec<Probe>,
    /// Snapshot names by forecast, fastest first.
    pub forecast_ranking: Vec<String>,
    pub against: Option<Against>,
}

/// The names of the numeric probes, as in [`Probe`] and in `--against`'s table.
pub const PROBES: [&str; 8] =
    ["forecast", "capture", "grad_norm", "spectral_norm", "stable_rank", "effective_rank", "zero_shot_loss", "step"];

impl Probe {
    pub fn value(&self, probe: &str) -> Option<f64> {
        match probe {
            "forecast" => self.forecast,
            "capture" => self.capture,
            "grad_norm" => self.grad_norm,
            "spectral_norm" => self.spectral_norm,
            "stable_rank" => self.stable_rank,
            "effective_rank" => self.effective_rank,
            "zero_shot_loss" => self.zero_shot_loss,
            "step" => Some(self.step as f64),
            _ => None,
        }
    }
}

/// Probes every snapshot in `o.dir`; a snapshot that fails is reported and the rest go on.
pub fn run(o: &ProbeOptions) -> Result<ProbeReport> {
    let found = discover::scan(&o.dir)?;
    found.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    let docs = o.task.as_ref().map(|t| Ok::<_, Error>((t.clone(), data::read_task(t)?))).transpose()?;
    let cache = Cached::default();
    let mut probes: Vec<Probe> =
        found.checkpoints.iter().map(|c| probe_checkpoint(c, o, docs.as_ref(), &cache)).collect();
    relative_growth(&mut probes);
    let forecast_ranking = rank_forecasts(&mut probes);
    let against = o.against.as_deref().map(|p| against::against(p, &probes)).transpose()?;
    Ok(ProbeReport {
        tool: format!("plasticity {}", env!("CARGO_PKG_VERSION")),
        rank: o.lora.rank,
        batches: o.batches,
        seed: o.seed,
        probes,
        forecast_ranking,
        against,
    })
}

fn probe_checkpoint(
    c: &CheckpointRef,
    o: &ProbeOptions,
    docs: Option<&(std::path::PathBuf, Vec<Document>)>,
    cache: &Cached<Blocks>,
) -> Probe {
    let started = Instant::now();
    let base = Probe { name: c.name.clone(), path: c.path.display().to_string(), step: c.step, ..Probe::default() };
    let probed = match model::read_config(&c.path) {
        Ok(cfg) if cfg.get("model_type").and_then(|v| v.as_str()) == Some(single_index::MODEL_TYPE) => {
            probe_single_index(&c.path, &cfg, o, base.clone())
        }
        Ok(_) => probe_lm(c, o, docs, cache, base.clone()),
        Err(e) => Err(e),
    };
    let mut p = probed.unwrap_or_else(|e| {
        eprintln!("error: probe of {} failed: {}", c.name, one_line(&e));
        Probe { status: "failed".into(), error: Some(one_line(&e)), ..base }
    });
    p.seconds = started.elapsed().as_secs_f64();
    p
}

// ---------------------------------------------------------------------------------------
// Language models

fn probe_lm(
    c: &CheckpointRef,
    o: &ProbeOptions,
    docs: Option<&(std::path::PathBuf, Vec<Document>)>,
    cache: &Cached<Blocks>,
    mut p: Probe,
) -> Result<Probe> {
    let (task, docs) = docs
        .ok_or_else(|| Error::flag("--task", format!("{} is a language model: give --task FILE", c.path.display())))?;
    let model = model::load(&c.path, &o.lora, &AdapterInit::WeightGradient, 0, &o.device)?;
    // the blocks `scan` cuts, so the zero-shot loss is the scan's eval loss at step 0
    let (blocks, tokenizer) = cache
        .get(&c.path, o.tokenizer.as_deref(), &model, docs, |s| data::blocks(s, o.seq_len, o.eval_blocks, task))?;
    crate::engine::blocks::check_fits(&blocks, &model, &tokenizer, o.seq_len)?;
    let blocks = &*blocks;
    let batch = o.batch_size.unwrap_or(crate::options::DEFAULT_BATCH_SIZE);
    p.zero_shot_loss = Some(train::eval_loss(&model, &blocks.eval, batch)?);
    let grads = weight_gradients(&model, blocks, batch, o)?; // (out, in) per adapted module
    let store = WeightStore::open(&c.path, &Device::Cpu)?;
    let mut geometry = Vec::new();
    let mut energy = (0.0, 0.0); // (captured by rank r, total)
    for (adapter, g) in model.adapters.iter().zip(&grads) {
        geometry.push(matrix_stats(&singular_values_of(&weight_of(&store, &adapter.module)?)?));
        let s = singular_values_of(g)?;
        energy.0 += s.iter().take(o.lora.rank).map(|v| v * v).sum::<f64>();
        energy.1 += s.iter().map(|v| v * v).sum::<f64>();
    }
    p.model_type = Some(model.model_type.clone());
    fill(&mut p, &geometry, energy);
    Ok(p)
}

/// dL/dW of every adapted module, (out, in), averaged over `o.batches` training batches: the
/// gradient of B under `AdapterInit::WeightGradient` (A = I, B = 0).
fn weight_gradients(model: &LoadedModel, blocks: &Blocks, batch: usize, o: &ProbeOptions) -> Result<Vec<Tensor>> {
    model.set_training(false);
    let device = model.adapters.first().map(|a| a.a.device().clone()).unwrap_or(Device::Cpu);
    let order = BatchOrder::new(blocks.train.len(), batch, o.batches, o.seed);
    let mut sums: Vec<Option<Tensor>> = vec![None; model.adapters.len()];
    for i in 0..o.batches {
        let refs: Vec<&data::Block> = order.batch(i).iter().map(|&j| &blocks.train[j]).collect();
        let (sum, count) = train::model_loss_sum(model.model.as_ref(), &Batch::from_blocks(&refs, &device)?, true)
            .ctx("probe forward pass")?;
        let grads = (sum / count.max(1.0)).and_then(|l| l.backward()).ctx("probe backward pass")?;
        for (acc, a) in sums.iter_mut().zip(&model.adapters) {
            let g = grads
                .get(a.b.as_tensor())
                .ok_or_else(|| Error::Internal(format!("no gradient reached {}", a.module)))?;
            *acc = Some(match acc.take() {
                None => g.clone(),
                Some(prev) => (prev + g).ctx("probe gradient sum")?,
            });
        }
    }
    sums.into_iter()
        .map(|g| {
            g.ok_or_else(|| Error::internal("no probe batch"))
                .and_then(|g| (g / o.batches as f64).ctx("probe gradient mean"))
        })
        .collect()
}

/// The frozen weight of `module` as stored (GPT-2's Conv1D transposed: same singular values).
/// Module names are transformers' paths; GPT-2 checkpoints converted from OpenAI's store them
/// without the `transformer.` prefix, as the loader accepts.
fn weight_of(store: &WeightStore, module: &str) -> Result<Tensor> {
    let names =
        [format!("{module}.weight"), format!("{}.weight", module.strip_prefix("transformer.").unwrap_or(module))];
    let name = names
        .iter()
        .find(|n| store.contains(n))
        .ok_or_else(|| Error::Internal(format!("tensor {} is missing", names[0])))?;
    let shape = store.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
    store.get(name, &shape)
}

fn singular_values_of(m: &Tensor) -> Result<Vec<f64>> {
    let (rows, cols) = m.dims2().ctx("a 2-D matrix")?;
    let values: Vec<f64> = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    linalg::singular_values(&values, rows, cols).map_err(Error::Internal)
}

// ---------------------------------------------------------------------------------------
// Single-index snapshots

/// The paper's model: the adapted "matrix" is w (1 x d); its step-0 gradient is
/// mean over fresh Gaussian batches of X^T r / B at w0, r = (sigma(w0.x) - sigma(w*.x)) sigma'(w0.x).
fn probe_single_index(dir: &Path, config: &serde_json::Value, o: &ProbeOptions, mut p: Probe) -> Result<Probe> {
    let cfg = single_index::Config::read(dir, config)?;
    let w = single_index::Weights::read(dir, cfg.dim)?;
    let batch = o.batch_size.unwrap_or(cfg.finetune.batch_size);
    let mut rng = crate::rng::stream(o.seed, crate::rng::Stream::ProbeData, 0);
    let mut g = vec![0.0; cfg.dim];
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut x = vec![0.0; cfg.dim];
    for _ in 0..o.batches * batch {
        x.iter_mut().for_each(|v| *v = StandardNormal.sample(&mut rng));
        let lam = dot(&x, &w.w0);
        let r = (cfg.link.value(lam) - cfg.link.value(dot(&x, &w.w_star))) * cfg.link.d1(lam);
        g.iter_mut().zip(&x).for_each(|(gi, xi)| *gi += r * xi / (o.batches * batch) as f64);
    }
    let norm2 = dot(&g, &g);
    p.model_type = Some(cfg.model_type.clone());
    p.zero_shot_loss = Some(single_index::population_loss(cfg.link, dot(&w.w0, &w.w_star), dot(&w.w0, &w.w0)));
    let s0 = dot(&w.w0, &w.w0).sqrt();
    fill(&mut p, &[MatrixStats { spectral: s0, stable_rank: 1.0, effective_rank: 1.0 }], (norm2, norm2));
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy)]
struct MatrixStats {
    spectral: f64,
    stable_rank: f64,
    effective_rank: f64,
}

/// Spectral norm, stable rank and effective rank from the singular values (largest first).
fn matrix_stats(s: &[f64]) -> MatrixStats {
    let top = s.first().copied().unwrap_or(0.0);
    let (sum, frob2) = (s.iter().sum::<f64>(), s.iter().map(|v| v * v).sum::<f64>());
    let entropy: f64 = s.iter().filter(|&&v| v > 0.0).map(|&v| v / sum).map(|p| -p * p.ln()).sum();
    MatrixStats {
        spectral: top,
        stable_rank: if top > 0.0 { frob2 / (top * top) } else { 0.0 },
        effective_rank: if sum > 0.0 { entropy.exp() } else { 0.0 },
    }
}

/// Means of the geometry over the matrices, and the gradient probes from (captured, total)
/// gradient energy.
fn fill(p: &mut Probe, geometry: &[MatrixStats], (captured, total): (f64, f64)) {
    let mean = |f: fn(&MatrixStats) -> f64| {
        (!geometry.is_empty()).then(|| geometry.iter().map(f).sum::<f64>() / geometry.len() as f64)
    };
    p.status = "ok".into();
    p.matrices = geometry.len();
    p.spectral_norm = mean(|m| m.spectral);
    p.stable_rank = mean(|m| m.stable_rank);
    p.effective_rank = mean(|m| m.effective_rank);
    p.grad_norm = Some(total.sqrt());
    p.capture = Some(if total > 0.0 { captured / total } else { 0.0 });
    p.forecast = Some(captured.sqrt());
}

/// Each geometry probe over the first probed snapshot's.
fn relative_growth(probes: &mut [Probe]) {
    let Some(first) = probes.iter().find(|p| p.status == "ok").cloned() else { return };
    let ratio = |now: Option<f64>, then: Option<f64>| Some(now? / then.filter(|t| *t != 0.0)?);
    for p in probes.iter_mut().filter(|p| p.status == "ok") {
        p.spectral_norm_growth = ratio(p.spectral_norm, first.spectral_norm);
        p.stable_rank_growth = ratio(p.stable_rank, first.stable_rank);
        p.effective_rank_growth = ratio(p.effective_rank, first.effective_rank);
    }
}

/// Ranks by forecast, highest first; returns the names in that order.
fn rank_forecasts(probes: &mut [Probe]) -> Vec<String> {
    let mut order: Vec<usize> = (0..probes.len()).filter(|&i| probes[i].forecast.is_some()).collect();
    order.sort_by(|&a, &b| probes[b].forecast.unwrap_or(0.0).total_cmp(&probes[a].forecast.unwrap_or(0.0)));
    for (rank, &i) in order.iter().enumerate() {
        probes[i].forecast_rank = Some(rank + 1);
    }
    order.iter().map(|&i| probes[i].name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_stats_of_known_spectra() {
        let m = matrix_stats(&[2.0, 2.0, 0.0]);
        assert!(
            (m.spectral - 2.0).abs() < 1e-12
                && (m.stable_rank - 2.0).abs() < 1e-12
                && (m.effective_rank - 2.0).abs() < 1e-12
        );
        let m = matrix_stats(&[3.0]);
        assert!((m.stable_rank - 1.0).abs() < 1e-12 && (m.effective_rank - 1.0).abs() < 1e-12);
        let m = matrix_stats(&[4.0, 1.0]);
        assert!((m.stable_rank - 17.0 / 16.0).abs() < 1e-12);
        let h = -(0.8f64 * 0.8f64.ln() + 0.2 * 0.2f64.ln());
        assert!((m.effective_rank - h.exp()).abs() < 1e-12);
    }
}
