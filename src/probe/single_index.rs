//! `probe` of a simulated single-index snapshot: its step-0 gradient on fresh Gaussian batches
//! and the norm of its frozen weight, measured as the paper's model defines them.

use std::path::Path;

use rand_distr::{Distribution, StandardNormal};

use super::measures::{fill, MatrixStats, Probe};
use crate::error::Result;
use crate::options::ProbeOptions;
use crate::single_index;

/// The paper's model: the adapted "matrix" is w (1 x d); its step-0 gradient is
/// mean over fresh Gaussian batches of X^T r / B at w0, r = (sigma(w0.x) - sigma(w*.x)) sigma'(w0.x).
pub(super) fn probe(dir: &Path, config: &serde_json::Value, o: &ProbeOptions, mut p: Probe) -> Result<Probe> {
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
