//! AdamW exactly as `torch.optim.AdamW`, and `clip_grad_norm_` as torch computes it.
//!
//! candle's own AdamW defaults to weight decay 0.01 (the HF Trainer uses 0.0) and skips
//! variables without a gradient silently; here a missing gradient is an error, because an
//! adapter that receives no gradient means the graph is broken.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{CandleContext, Error, Result};

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The HF Trainer's defaults (`adam_beta1/2`, `adam_epsilon`, `weight_decay`).
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// AdamW's moments (m, v) per variable and its step count.
pub struct AdamState {
    moments: Vec<(Tensor, Tensor)>,
    t: i32,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    t: i32,
}

impl AdamW {
    pub fn new(vars: &[Var], cfg: AdamWConfig) -> Result<Self> {
        let slots = vars
            .iter()
            .map(|var| Ok(Slot { var: var.clone(), m: var.zeros_like()?, v: var.zeros_like()? }))
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("optimizer state")?;
        Ok(AdamW { cfg, slots, t: 0 })
    }

    /// Copies of the moments and the step count, to continue later with [`Self::restore`].
    pub fn state(&self) -> Result<AdamState> {
        let moments = self
            .slots
            .iter()
            .map(|s| Ok((s.m.copy()?, s.v.copy()?)))
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("optimizer state")?;
        Ok(AdamState { moments, t: self.t })
    }

    /// Continues from a state taken by [`Self::state`] of an optimizer over the same variables.
    pub fn restore(&mut self, state: AdamState) -> Result<()> {
        if state.moments.len() != self.slots.len() {
            return Err(Error::Internal(format!(
                "optimizer state has {} variables, the model {}",
                state.moments.len(),
                self.slots.len()
            )));
        }
        for (slot, (m, v)) in self.slots.iter_mut().zip(state.moments) {
            (slot.m, slot.v) = (m, v);
        }
        self.t = state.t;
        Ok(())
    }

    /// One update with learning rate `lr` (the schedule's value for this step).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.t);
        let bias2 = 1.0 - c.beta2.powi(self.t);
        for slot in &mut self.slots {
            let g = grads
                .get(slot.var.as_tensor())
                .ok_or_else(|| Error::internal("an adapter weight received no gradient"))?;
            slot.update(g, lr, c, bias1, bias2).ctx("AdamW update")?;
        }
        Ok(())
    }
}

impl Slot {
    /// torch: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= (lr / bias1) * m / (sqrt(v) / sqrt(bias2) + eps).
    fn update(&mut self, g: &Tensor, lr: f64, c: AdamWConfig, bias1: f64, bias2: f64) -> candle_core::Result<()> {
        self.m = ((&self.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
        self.v = ((&self.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
        let denom = ((self.v.sqrt()? / bias2.sqrt())? + c.eps)?;
        let p = (self.var.as_tensor() * (1.0 - lr * c.weight_decay))?;
        let p = (p - (self.m.div(&denom)? * (lr / bias1))?)?;
        self.var.set(&p)
    }
}

/// Scales the gradients so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient max_norm / (norm + 1e-6), capped at 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sum = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sum.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        for var in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}
