//! The adapters of one model: [`LoraCtx`] decides, module by module while an architecture is
//! built, which linear layers are adapted and draws (or reads) their initial A and B; a
//! [`Linear`] then computes `base(x) + scale * B(A(dropout(x)))` with the base weight frozen.
//! This file must not name any architecture's modules, and leaves the frozen matmul's
//! arithmetic to `frozen.rs`.

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use super::frozen::{frozen_linear, FrozenLinearResidual};
use super::fused::LoraLinear;
use super::peft::{peft_tensor, read_peft_adapter};
use super::spec::{AdapterInit, LoraSpec, Targets};
use crate::dropout::{Dropout, DropoutState};
use crate::error::{CandleContext, Error, Result};

/// One trainable adapter: A is (r, in) and B is (out, r), as PEFT stores them.
#[derive(Clone)]
pub struct Adapter {
    pub module: String,
    pub a: Var,
    pub b: Var,
    scale: f64,
    dropout: Option<Dropout>,
    /// A = I, never materialised (`AdapterInit::WeightGradient`): `a` is a 1 x 1 placeholder
    /// and B (out, in) multiplies x directly.
    identity_a: bool,
}

/// Collects adapters while a model is built, and decides which modules get one.
pub struct LoraCtx {
    spec: LoraSpec,
    targets: Vec<String>,
    init: AdapterInit,
    peft: Option<HashMap<String, Tensor>>,
    /// The model's dropout switch and generator, shared by every site.
    dropout_state: DropoutState,
    /// The adapters' input dropout (`lora_dropout`).
    dropout: Option<Dropout>,
    adapters: Vec<Adapter>,
    seen_modules: BTreeSet<String>,
}

impl LoraCtx {
    /// `default_targets` is PEFT's default for the architecture; `all_linear` its linear layers.
    pub fn new(
        spec: &LoraSpec,
        default_targets: &[&str],
        all_linear: &[&str],
        init: &AdapterInit,
        seed: u64,
    ) -> Result<Self> {
        let targets = match &spec.targets {
            Targets::Default => default_targets.iter().map(|s| s.to_string()).collect(),
            Targets::AllLinear => all_linear.iter().map(|s| s.to_string()).collect(),
            Targets::Names(names) => names.clone(),
        };
        let peft = match init {
            AdapterInit::Peft(dir) => Some(read_peft_adapter(dir)?),
            AdapterInit::Seeded(_) | AdapterInit::WeightGradient => None,
        };
        let dropout_state = DropoutState::new(seed);
        let dropout = dropout_state.site(spec.dropout);
        Ok(LoraCtx {
            spec: spec.clone(),
            targets,
            init: init.clone(),
            peft,
            dropout_state,
            dropout,
            adapters: vec![],
            seen_modules: BTreeSet::new(),
        })
    }

    /// PEFT's matching: `target == module` or `module` ends with `.target`.
    fn is_target(&self, module: &str) -> bool {
        self.targets.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// An adapter for `module` (a linear map in -> out) if it is a target, else None.
    pub fn adapter_for(
        &mut self,
        module: &str,
        in_dim: usize,
        out_dim: usize,
        device: &Device,
    ) -> Result<Option<Adapter>> {
        self.seen_modules.insert(module.to_string());
        if !self.is_target(module) {
            return Ok(None);
        }
        let full = matches!(self.init, AdapterInit::WeightGradient);
        if !full && (self.spec.rank == 0 || self.spec.rank > in_dim.min(out_dim)) {
            return Err(Error::flag(
                "--rank",
                format!("rank {} does not fit module {module} ({in_dim} -> {out_dim})", self.spec.rank),
            ));
        }
        let (a, b) = self.initial_weights(module, in_dim, out_dim, device)?;
        let adapter = Adapter {
            module: module.to_string(),
            a: Var::from_tensor(&a).ctx("adapter A")?,
            b: Var::from_tensor(&b).ctx("adapter B")?,
            scale: if full { 1.0 } else { self.spec.scale() },
            dropout: self.dropout.clone(),
            identity_a: full,
        };
        self.adapters.push(adapter.clone());
        Ok(Some(adapter))
    }

    fn initial_weights(
        &self,
        module: &str,
        in_dim: usize,
        out_dim: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let r = self.spec.rank;
        match (&self.init, &self.peft) {
            (AdapterInit::Peft(dir), Some(map)) => {
                let a = peft_tensor(map, dir, module, "lora_A", &[r, in_dim])?;
                let b = peft_tensor(map, dir, module, "lora_B", &[out_dim, r])?;
                Ok((a.to_device(device)?, b.to_device(device)?))
            }
            (AdapterInit::Seeded(seed), _) => {
                let mut rng = crate::rng::stream(*seed, crate::rng::Stream::AdapterInit, fnv1a(module));
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a: Vec<f32> = (0..r * in_dim).map(|_| rng.random_range(-bound..bound) as f32).collect();
                let a = Tensor::from_vec(a, (r, in_dim), device)?;
                let b = Tensor::zeros((out_dim, r), DType::F32, device)?;
                Ok((a, b))
            }
            (AdapterInit::WeightGradient, _) => {
                Ok((Tensor::zeros((1, 1), DType::F32, device)?, Tensor::zeros((out_dim, in_dim), DType::F32, device)?))
            }
            (AdapterInit::Peft(dir), None) => Err(Error::input(dir, "adapter not loaded")),
        }
    }

    /// The adapters created, after checking that every target matched some module.
    pub fn finish(self) -> Result<Vec<Adapter>> {
        for t in &self.targets {
            let hit = self.seen_modules.iter().any(|m| m == t || m.ends_with(&format!(".{t}")));
            if !hit {
                let known: BTreeSet<&str> = self.seen_modules.iter().filter_map(|m| m.rsplit('.').next()).collect();
                let known: Vec<&str> = known.into_iter().collect();
                return Err(Error::flag(
                    "--targets",
                    format!("target module {t:?} is not in the model (linear modules: {})", known.join(", ")),
                ));
            }
        }
        if self.adapters.is_empty() {
            return Err(Error::flag("--targets", "no module matched the LoRA targets"));
        }
        Ok(self.adapters)
    }

    /// A base-model dropout site with probability `p` (None for 0), sharing the adapters'
    /// switch and generator.
    pub fn dropout_site(&self, p: f64) -> Option<Dropout> {
        self.dropout_state.site(p)
    }

    /// The switch and generator every dropout site of the model shares.
    pub fn dropout_state(&self) -> DropoutState {
        self.dropout_state.clone()
    }
}

/// 64-bit FNV-1a: a stable hash of module names (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A linear layer with a frozen weight, an optional frozen bias and an optional adapter.
pub struct Linear {
    /// The weight as (in, out), whatever its layout: `W.t()` for nn.Linear, `W` for Conv1D.
    wt: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

impl Linear {
    pub fn new(wt: Tensor, bias: Option<Tensor>, adapter: Option<Adapter>) -> Self {
        Linear { wt, bias, adapter }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(ad) = self.adapter.as_ref().filter(|ad| self.fuses(ad, x)) {
            let bias = self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
            let op = LoraLinear::new(self.wt.clone(), bias, ad.scale as f32);
            return x.contiguous()?.apply_op3(ad.a.as_tensor(), ad.b.as_tensor(), op);
        }
        let y = frozen_linear(x, &self.wt, self.bias.as_ref())?; // (..., out)
        match &self.adapter {
            None => Ok(y),
            Some(ad) if x.dtype() == ad.a.dtype() => y.add(&ad.forward(x)?),
            // PEFT with a bf16 base: the f32 adapter sees x cast to f32; the sum is cast back
            Some(ad) => y.to_dtype(ad.a.dtype())?.add(&ad.forward(&x.to_dtype(ad.a.dtype())?)?)?.to_dtype(x.dtype()),
        }
    }

    /// The frozen weight (in, out) and bias, when no adapter sits on the layer: for callers
    /// that fuse the layer into a larger CPU op.
    pub fn frozen(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        match self.adapter {
            None => Some((&self.wt, self.bias.as_ref())),
            Some(_) => None,
        }
    }

    /// Whether the layer runs as one [`LoraLinear`] node: on the CPU, everything in f32, A a
    /// real factor, and no adapter dropout in force.
    fn fuses(&self, ad: &Adapter, x: &Tensor) -> bool {
        let f32 = |t: &Tensor| t.dtype() == DType::F32;
        x.device().is_cpu()
            && f32(x)
            && f32(&self.wt)
            && f32(ad.a.as_tensor())
            && self.bias.as_ref().is_none_or(|b| f32(b) && b.dims1().ok() == self.wt.dim(1).ok())
            && !ad.identity_a
            && !ad.dropout.as_ref().is_some_and(Dropout::active)
    }

    /// `residual + forward(x)`, the residual connection after a block's output projection.
    /// Without an adapter, on the CPU in f32, the product accumulates onto the residual in one
    /// node: the projection's output and the sum's operands are never kept for the backward
    /// pass, which needs neither (two fewer (tokens, hidden) tensors per block).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let fusable =
            self.adapter.is_none() && x.device().is_cpu() && x.dtype() == DType::F32 && residual.dtype() == DType::F32;
        if !fusable || residual.dims().last() != Some(&self.wt.dim(1)?) {
            return residual + self.forward(x)?;
        }
        let bias = match &self.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        x.contiguous()?.apply_op3(&self.wt, &residual.contiguous()?, FrozenLinearResidual { bias })
    }
}

impl Linear {
    /// `residual + dropout(forward(x))`: a block's output projection with transformers'
    /// residual dropout; the fused [`Self::forward_residual`] whenever nothing is dropped.
    pub fn forward_residual_dropped(
        &self,
        x: &Tensor,
        residual: &Tensor,
        dropout: Option<&Dropout>,
    ) -> candle_core::Result<Tensor> {
        match dropout {
            Some(d) if d.active() => residual + d.apply(&self.forward(x)?)?,
            _ => self.forward_residual(x, residual),
        }
    }
}

impl Adapter {
    /// The adapter as PEFT's files hold it.
    pub fn trained(&self) -> super::peft::Trained<'_> {
        super::peft::Trained { module: &self.module, a: self.a.as_tensor(), b: self.b.as_tensor() }
    }

    /// scale * B(A(dropout(x))): (..., in) -> (..., out).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match &self.dropout {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        // scaled while it is (..., r): the same product as PEFT's B(A(x)) * scale, one
        // (..., out) tensor fewer
        // as one (tokens, in) matrix: one matmul per factor (and one per gradient), where a
        // batched matmul would repeat the small factor per sequence and sum its gradients
        let mut shape = x.dims().to_vec();
        let x2 = x.flatten_to(shape.len().saturating_sub(2))?; // (tokens, in)
        let h = if self.identity_a { x2 } else { x2.matmul(&self.a.as_tensor().t()?)?.affine(self.scale, 0.0)? }; // (tokens, r)
        let y = h.matmul(&self.b.as_tensor().t()?)?; // (tokens, out)
        if let Some(last) = shape.last_mut() {
            *last = y.dim(1)?;
        }
        y.reshape(shape)
    }
}
