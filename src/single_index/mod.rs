//! The single-index model of arXiv 2602.02855 as a checkpoint architecture: a frozen
//! pre-trained weight w0 = mu w* (or mu w* + (1 - mu) xi), a rank-1 adapter w = w0 + u omega
//! with omega kept on the unit sphere, trained by one-pass SGD on fresh Gaussian batches with
//! the loss 1/2 mean (sigma(w.x) - sigma(w*.x))^2, exactly as the paper's code does.
//!
//! The synthetic task lives in the checkpoint's config.json (dimension, link, fine-tuning
//! settings), so a series needs no task file. It runs in f64 on the CPU: at d = 100 a step is
//! a few microseconds, far below what a tensor library's dispatch would cost. This module
//! must not rank or report; it returns a curve like any fine-tune, plus the paper's metrics.

pub mod simulate;
pub mod theory;

use std::path::Path;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::curve::{median, CurvePoint, Outcome};
use crate::error::{Error, Result};
use crate::rng::{stream, Stream};
use theory::Link;

/// How w0 relates to the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// w0 = mu w*.
    Aligned,
    /// w0 = mu w* + (1 - mu) xi, xi a random unit vector.
    RandomMix,
}

impl std::str::FromStr for Variant {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "aligned" => Ok(Variant::Aligned),
            "random-mix" => Ok(Variant::RandomMix),
            other => Err(format!("{other:?} is not aligned or random-mix")),
        }
    }
}

/// The fine-tuning a simulated series carries, so `scan` needs no flags for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FineTune {
    pub lr: f64,
    pub batch_size: usize,
    /// Step budget; the run stops earlier once the loss is tiny and the adapter has escaped.
    pub steps: usize,
}

/// config.json of a single-index checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub dim: usize,
    pub link: Link,
    /// Pre-training strength: the component of w0 along w*.
    pub mu: f64,
    pub variant: Variant,
    pub teacher_seed: u64,
    /// Deterministic adapter start: omega = m0 w* + sqrt(1 - m0^2) xi_perp. None: uniform on the sphere.
    pub m0: Option<f64>,
    /// Initial adapter scale u0 (the paper: 1/d^2).
    pub u0: Option<f64>,
    pub finetune: FineTune,
    /// Provenance: pre-training steps and step size that gave mu (None when mu was given).
    pub pretrain_steps: Option<u64>,
    pub pretrain_lr: Option<f64>,
}

pub const MODEL_TYPE: &str = "single_index";
/// |m| at which the adapter direction has escaped the saddle.
pub const ESCAPE_THRESHOLD: f64 = 0.5;
/// The loss that counts as converged.
pub const TINY_LOSS: f64 = 1e-6;

impl Config {
    pub fn read(dir: &Path, value: &serde_json::Value) -> Result<Self> {
        let cfg: Config = crate::model::parse_config(dir, value)?;
        let bad = |msg: String| Err(Error::input(dir.join("config.json"), msg));
        if cfg.dim < 2 {
            return bad(format!("dim must be at least 2, got {}", cfg.dim));
        }
        if !(0.0..=1.0).contains(&cfg.mu) {
            return bad(format!("mu must be in [0, 1], got {}", cfg.mu));
        }
        if cfg.m0.is_some_and(|m| !(-1.0..=1.0).contains(&m) || m == 0.0) {
            return bad("m0 must be in [-1, 1] and non-zero".into());
        }
        if !(cfg.finetune.lr > 0.0 && cfg.finetune.batch_size > 0 && cfg.finetune.steps > 0) {
            return bad("finetune needs lr > 0, batch_size > 0 and steps > 0".into());
        }
        Ok(cfg)
    }

    pub fn u0(&self) -> f64 {
        self.u0.unwrap_or(1.0 / (self.dim * self.dim) as f64)
    }
}

/// The paper's measurements of one run, with the linearised theory next to them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub mu: f64,
    /// Population loss before fine-tuning.
    pub initial_loss: f64,
    /// First step with |m| >= 0.5.
    pub escape_step: Option<usize>,
    /// First step with population loss <= 1e-6.
    pub steps_to_tiny_loss: Option<usize>,
    /// tau(mu) from A(mu) and B(mu) (aligned variant only).
    pub tau: Option<f64>,
    pub predicted_escape_step: Option<f64>,
    pub m0: f64,
}

/// Settings of a run that come from the command line rather than the checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    /// Seeds the adapter direction.
    pub seed: u64,
    /// Seeds the Gaussian batches.
    pub data_seed: u64,
    pub lr: Option<f64>,
    pub batch_size: Option<usize>,
    pub steps: Option<usize>,
}

/// The frozen weights and the teacher, read from model.safetensors.
pub struct Weights {
    pub w0: Vec<f64>,
    pub w_star: Vec<f64>,
}

impl Weights {
    pub fn read(dir: &Path, dim: usize) -> Result<Self> {
        let path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .map_err(|e| Error::input(&path, format!("invalid safetensors file: {}", crate::error::one_line(&e))))?;
        let get = |name: &str| -> Result<Vec<f64>> {
            let t = tensors.get(name).ok_or_else(|| Error::input(&path, format!("tensor {name} is missing")))?;
            if t.dims() != [dim] {
                return Err(Error::input(
                    &path,
                    format!("tensor {name} has shape {:?}, the config implies [{dim}]", t.dims()),
                ));
            }
            t.to_dtype(candle_core::DType::F64)
                .and_then(|t| t.to_vec1())
                .map_err(|e| Error::input(&path, e.to_string()))
        };
        Ok(Weights { w0: get("w0")?, w_star: get("w_star")? })
    }
}

/// Population loss 1/2 E[(sigma(w*.x) - sigma(w.x))^2] from the overlaps R = w.w* and
/// Q = |w|^2 (|w*| = 1): exact for a linear link, 2-D Gauss-Hermite otherwise.
pub fn population_loss(link: Link, r: f64, q: f64) -> f64 {
    if link == Link::Linear {
        return 0.5 * (1.0 - 2.0 * r + q).max(0.0);
    }
    let s = (q - r * r).max(0.0).sqrt();
    0.5 * theory::expect(|z1| theory::expect(|z3| (link.value(z1) - link.value(r * z1 + s * z3)).powi(2)))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalize(v: &mut [f64]) {
    let n = dot(v, v).sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

/// The initial adapter direction: uniform on the sphere, or m0 along w* plus a random
/// orthogonal part.
fn initial_direction(w_star: &[f64], m0: Option<f64>, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut xi: Vec<f64> = (0..w_star.len()).map(|_| StandardNormal.sample(rng)).collect();
    if let Some(m0) = m0 {
        let along = dot(&xi, w_star);
        xi.iter_mut().zip(w_star).for_each(|(x, w)| *x -= along * w); // orthogonal to w*
        normalize(&mut xi);
        let perp = (1.0 - m0 * m0).sqrt();
        return w_star.iter().zip(&xi).map(|(w, x)| m0 * w + perp * x).collect();
    }
    normalize(&mut xi);
    xi
}

/// Steps at which the curve records a point: every step to 100, then 90 points a decade.
fn is_curve_step(step: usize) -> bool {
    let mut grain = 1;
    while step >= 100 * grain {
        grain *= 10;
    }
    step.is_multiple_of(grain)
}

/// The state of one fine-tune.
struct Sgd<'a> {
    link: Link,
    w: &'a Weights,
    u: f64,
    omega: Vec<f64>,
    lr: f64,
    batch: usize,
    x: Vec<f64>,
}

impl Sgd<'_> {
    fn weight(&self) -> Vec<f64> {
        self.w.w0.iter().zip(&self.omega).map(|(w0, o)| w0 + self.u * o).collect()
    }

    fn m(&self) -> f64 {
        dot(&self.omega, &self.w.w_star)
    }

    fn population_loss(&self) -> f64 {
        let w = self.weight();
        population_loss(self.link, dot(&w, &self.w.w_star), dot(&w, &w))
    }

    /// One SGD step on a fresh batch; returns the batch loss before the update.
    /// With nu = X omega, lambda = X w, r_i = (sigma(lambda_i) - y_i) sigma'(lambda_i):
    /// g_u = mean(r nu), g_omega = u X^T r / B; then omega is renormalised.
    fn step(&mut self, rng: &mut ChaCha8Rng) -> f64 {
        let d = self.omega.len();
        self.x.iter_mut().for_each(|v| *v = StandardNormal.sample(rng));
        let w = self.weight();
        let (mut g_u, mut g_omega, mut loss) = (0.0, vec![0.0; d], 0.0);
        for row in self.x.chunks_exact(d) {
            let (y, lam, nu) = (self.link.value(dot(row, &self.w.w_star)), dot(row, &w), dot(row, &self.omega));
            let err = self.link.value(lam) - y;
            let r = err * self.link.d1(lam);
            loss += 0.5 * err * err;
            g_u += r * nu;
            g_omega.iter_mut().zip(row).for_each(|(g, x)| *g += r * x);
        }
        let b = self.batch as f64;
        let omega_scale = self.lr * self.u / b; // both gradients at the same point
        self.u -= self.lr * g_u / b;
        self.omega.iter_mut().zip(&g_omega).for_each(|(o, g)| *o -= omega_scale * g);
        normalize(&mut self.omega);
        loss / b
    }
}

/// Fine-tunes the single-index checkpoint in `dir`.
pub fn run(dir: &Path, cfg: &Config, settings: &RunSettings) -> Result<(Outcome, Metrics)> {
    let paused = run_until(dir, cfg, settings, None, usize::MAX)?;
    Ok((paused.outcome(), paused.metrics))
}

/// The steps a run of `cfg` may take: `--steps`, or the series' own budget.
pub fn budget(cfg: &Config, settings: &RunSettings) -> usize {
    settings.steps.unwrap_or(cfg.finetune.steps)
}

/// A fine-tune stopped after some steps (for racing): the adapter (u, omega), the batch
/// generator and what has been measured. Continuing it gives the same steps as a run that
/// never stopped; the pause adds one point to the curve.
pub struct Paused {
    u: f64,
    omega: Vec<f64>,
    data_rng: ChaCha8Rng,
    pub metrics: Metrics,
    curve: Vec<CurvePoint>,
    step_seconds: Vec<f64>,
    batch: usize,
    /// Converged (tiny loss and escape both seen): further steps would change nothing.
    done: bool,
}

impl Paused {
    /// It reached the tiny loss and escaped: more steps would measure nothing new.
    pub fn converged(&self) -> bool {
        self.done
    }

    pub fn outcome(&self) -> Outcome {
        Outcome {
            median_step_s: median(&self.step_seconds),
            curve: self.curve.clone(),
            step_seconds: self.step_seconds.clone(),
            tokens_per_step: self.batch,
        }
    }
}

/// Runs to step `until` (or the budget, or convergence), from the start or from `from`.
pub fn run_until(
    dir: &Path,
    cfg: &Config,
    settings: &RunSettings,
    from: Option<Paused>,
    until: usize,
) -> Result<Paused> {
    let weights = Weights::read(dir, cfg.dim)?;
    let lr = settings.lr.unwrap_or(cfg.finetune.lr);
    let batch = settings.batch_size.unwrap_or(cfg.finetune.batch_size);
    let budget = budget(cfg, settings);
    let mut run = match from {
        Some(p) => p,
        None => start(&weights, cfg, settings, lr, batch),
    };
    let mut sgd = Sgd {
        link: cfg.link,
        w: &weights,
        u: run.u,
        omega: std::mem::take(&mut run.omega),
        lr: lr / cfg.link.lr_divisor(),
        batch,
        x: vec![0.0; batch * cfg.dim],
    };
    let stop = until.min(budget);
    let mut elapsed_s = run.curve.last().map_or(0.0, |p| p.elapsed_s);
    let cheap_loss = cfg.link == Link::Linear;
    for step in run.step_seconds.len() + 1..=stop {
        if run.done {
            break;
        }
        if step % 1024 == 0 {
            crate::interrupt::check()?;
        }
        let started = Instant::now();
        let train_loss = sgd.step(&mut run.data_rng);
        run.step_seconds.push(started.elapsed().as_secs_f64());
        elapsed_s += run.step_seconds[step - 1];
        if !train_loss.is_finite() {
            return Err(Error::Diverged { loss: train_loss, step });
        }
        let metrics = &mut run.metrics;
        if metrics.escape_step.is_none() && sgd.m().abs() >= ESCAPE_THRESHOLD {
            metrics.escape_step = Some(step);
        }
        let record = is_curve_step(step) || step == stop;
        // The quadrature loss is dear: take it at curve points, and at every step once the
        // batch loss says convergence is near, so steps_to_tiny_loss is exact to the step.
        let near = train_loss <= 10.0 * TINY_LOSS;
        let loss = (cheap_loss || record || near).then(|| sgd.population_loss());
        if metrics.steps_to_tiny_loss.is_none() && loss.is_some_and(|l| l <= TINY_LOSS) {
            metrics.steps_to_tiny_loss = Some(step);
        }
        run.done = metrics.steps_to_tiny_loss.is_some() && metrics.escape_step.is_some();
        if record || run.done {
            let eval_loss = loss.or_else(|| Some(sgd.population_loss()));
            run.curve.push(CurvePoint { step, train_loss: Some(train_loss), eval_loss, elapsed_s });
        }
    }
    (run.u, run.omega) = (sgd.u, sgd.omega);
    Ok(run)
}

/// The run before its first step: the seeded adapter direction and the step-0 measurements.
fn start(weights: &Weights, cfg: &Config, settings: &RunSettings, lr: f64, batch: usize) -> Paused {
    let mut init_rng = stream(settings.seed, Stream::SimAdapter, 0);
    let omega = initial_direction(&weights.w_star, cfg.m0, &mut init_rng);
    let sgd =
        Sgd { link: cfg.link, w: weights, u: cfg.u0(), omega, lr: lr / cfg.link.lr_divisor(), batch, x: Vec::new() };
    let (m0, initial_loss) = (sgd.m(), sgd.population_loss());
    let mut metrics = Metrics { mu: cfg.mu, initial_loss, m0, ..Metrics::default() };
    theory_for(cfg, lr, m0, &mut metrics);
    if m0.abs() >= ESCAPE_THRESHOLD {
        metrics.escape_step = Some(0);
    }
    let curve = vec![CurvePoint { step: 0, train_loss: None, eval_loss: Some(initial_loss), elapsed_s: 0.0 }];
    Paused {
        u: sgd.u,
        omega: sgd.omega,
        data_rng: stream(settings.data_seed, Stream::SimData, 0),
        metrics,
        curve,
        step_seconds: Vec::new(),
        batch,
        done: false,
    }
}

/// tau(mu) and the predicted escape step, for the aligned variant the theory describes.
fn theory_for(cfg: &Config, lr: f64, m0: f64, metrics: &mut Metrics) {
    if cfg.variant != Variant::Aligned {
        return;
    }
    let tau = theory::tau(cfg.link, cfg.mu);
    let predicted = theory::predicted_escape_step(cfg.link, cfg.mu, m0, ESCAPE_THRESHOLD, lr);
    metrics.tau = tau.is_finite().then_some(tau);
    metrics.predicted_escape_step = predicted.is_finite().then_some(predicted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_steps_thin_out_by_decade() {
        let steps: Vec<usize> = (1..=2000).filter(|&s| is_curve_step(s)).collect();
        assert_eq!(steps.len(), 99 + 90 + 11);
        assert!(is_curve_step(100) && is_curve_step(110) && !is_curve_step(105) && is_curve_step(1100));
    }

    #[test]
    fn quadrature_population_loss_matches_the_linear_closed_form() {
        let (r, q) = (0.7, 0.8);
        let quad = 0.5 * theory::expect(|z1| theory::expect(|z3| (z1 - (r * z1 + (q - r * r).sqrt() * z3)).powi(2)));
        assert!((quad - population_loss(Link::Linear, r, q)).abs() < 1e-12);
        assert!(population_loss(Link::Erf, 1.0, 1.0) < 1e-15);
    }

    #[test]
    fn deterministic_start_has_the_requested_alignment() {
        let mut w_star = vec![0.0; 10];
        w_star[3] = 1.0;
        let omega = initial_direction(&w_star, Some(0.3), &mut stream(1, Stream::SimAdapter, 0));
        assert!((dot(&omega, &w_star) - 0.3).abs() < 1e-12);
        assert!((dot(&omega, &omega) - 1.0).abs() < 1e-12);
    }
}
