//! The layers an architecture builds its blocks from: activations by their transformers names
//! (with torch's op-by-op rounding of the tanh GELUs in bf16), layer and RMS norms, linear
//! layers that carry an adapter when LoRA targets them, and embedding tables. The arithmetic
//! runs in `fused.rs`'s kernels or LoRA's frozen matmul; this file must not know which
//! architecture uses which piece.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::fused;
use super::fused_mlp::{GatedLinear, GatedMlpResidual, LinearAct, MlpResidual, Proj};
use crate::checkpoint::weights::Weights;
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::lora::{Linear, LoraCtx};

/// Activations by their transformers names (`hidden_act` / `activation_function`).
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    Silu,
    /// Exact GELU (erf), transformers' "gelu".
    Gelu,
    /// The tanh approximation in one op: "gelu_pytorch_tanh".
    GeluTanh,
    /// The tanh approximation as transformers' FastGELUActivation writes it ("gelu_fast").
    GeluFast,
    /// The tanh approximation as transformers' NewGELUActivation writes it ("gelu_new"): the
    /// same function, but in bf16 each of its eight tensor ops rounds.
    GeluNew,
    Relu,
}

impl Activation {
    pub fn parse(dir: &Path, name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" => Ok(Activation::GeluNew),
            "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "gelu_fast" => Ok(Activation::GeluFast),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::input(dir.join("config.json"), format!("unsupported activation {other:?}"))),
        }
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluNew if x.dtype() != DType::F32 => return gelu_new_rounded(x),
            Activation::GeluFast if x.dtype() != DType::F32 => return gelu_fast_rounded(x),
            _ => {}
        }
        match self.fused() {
            Some(act) => fused::activation(x, act),
            None => x.relu(),
        }
    }

    /// act(gate) * up, for gated MLPs.
    pub fn gated(self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        match self.fused() {
            Some(act) => fused::gated(gate, up, act),
            None => gate.relu()? * up,
        }
    }

    /// act(linear(x)): one node (`fused_mlp.rs`) when the projection is frozen and x is f32
    /// on the CPU.
    pub fn apply_linear(self, linear: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        match (self.fused(), linear.frozen()) {
            (Some(act), Some((wt, bias))) if fusable(x, wt, bias) => {
                x.contiguous()?.apply_op1(LinearAct::new(Proj::new(wt, bias)?, act, x.track_op()))
            }
            _ => self.apply(&linear.forward(x)?),
        }
    }

    /// residual + dropout(fc_out(act(fc_in(x)))), the plain MLP with its residual and
    /// transformers' residual dropout: one node (`fused_mlp.rs`) when both projections are
    /// frozen, x and the residual are f32 on the CPU and nothing is dropped.
    pub fn mlp_residual(
        self,
        (fc_in, fc_out): (&Linear, &Linear),
        x: &Tensor,
        residual: &Tensor,
        dropout: Option<&Dropout>,
    ) -> candle_core::Result<Tensor> {
        match (self.fused(), fc_in.frozen(), fc_out.frozen()) {
            (Some(act), Some((w1, b1)), Some((w2, b2)))
                if !crate::dropout::active(dropout) && fusable(x, w1, b1) && fusable_onto(residual, (w1, w2, b2)) =>
            {
                let projections = (Proj::new(w1, b1)?, Proj::new(w2, b2)?);
                let op = MlpResidual::new(projections, act, x.track_op());
                x.contiguous()?.apply_op2(&residual.contiguous()?, op)
            }
            _ => fc_out.forward_residual_dropped(&self.apply_linear(fc_in, x)?, residual, dropout),
        }
    }

    /// act(gate(x)) * up(x), for gated MLPs: one node when both projections are frozen and x is
    /// f32 on the CPU.
    pub fn gated_linear(self, gate: &Linear, up: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        match (self.fused(), gate.frozen(), up.frozen()) {
            (Some(act), Some((wg, bg)), Some((wu, bu)))
                if fusable(x, wg, bg) && fusable(x, wu, bu) && wg.dims() == wu.dims() =>
            {
                let op = GatedLinear::new(Proj::new(wg, bg)?, Proj::new(wu, bu)?, act, x.track_op());
                x.contiguous()?.apply_op1(op)
            }
            _ => self.gated(&gate.forward(x)?, &up.forward(x)?),
        }
    }

    /// residual + down(act(gate(x)) * up(x)), the gated MLP with its residual: one node when
    /// the three projections are frozen and x and the residual are f32 on the CPU.
    pub fn gated_mlp_residual(
        self,
        (gate, up, down): (&Linear, &Linear, &Linear),
        x: &Tensor,
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match (self.fused(), gate.frozen(), up.frozen(), down.frozen()) {
            (Some(act), Some((wg, bg)), Some((wu, bu)), Some((wd, bd)))
                if fusable(x, wg, bg)
                    && fusable(x, wu, bu)
                    && wg.dims() == wu.dims()
                    && fusable_onto(residual, (wg, wd, bd)) =>
            {
                let projections = (Proj::new(wg, bg)?, Proj::new(wu, bu)?, Proj::new(wd, bd)?);
                let op = GatedMlpResidual::new(projections, act, x.track_op());
                x.contiguous()?.apply_op2(&residual.contiguous()?, op)
            }
            _ => down.forward_residual(&self.gated_linear(gate, up, x)?, residual),
        }
    }

    fn fused(self) -> Option<fused::Act> {
        match self {
            Activation::Silu => Some(fused::Act::Silu),
            Activation::Gelu => Some(fused::Act::GeluErf),
            Activation::GeluTanh | Activation::GeluNew | Activation::GeluFast => Some(fused::Act::GeluTanh),
            Activation::Relu => None,
        }
    }
}

/// Whether the fused MLP ops take x through the frozen weight (in, out) and bias.
fn fusable(x: &Tensor, wt: &Tensor, bias: Option<&Tensor>) -> bool {
    let f32 = |t: &Tensor| t.dtype() == DType::F32;
    let n = wt.dims().get(1).copied();
    x.device().is_cpu()
        && f32(x)
        && f32(wt)
        && wt.rank() == 2
        && x.dims().last() == wt.dims().first()
        && bias.is_none_or(|b| f32(b) && b.rank() == 1 && b.dims().first().copied() == n)
}

/// Whether the fused MLP takes the intermediate values through the frozen w2 (i, out) and b2
/// onto the residual (..., out), w1 (in, i) being the first projection's weight.
fn fusable_onto(residual: &Tensor, (w1, w2, b2): (&Tensor, &Tensor, Option<&Tensor>)) -> bool {
    let f32 = |t: &Tensor| t.dtype() == DType::F32;
    let out = w2.dims().get(1);
    residual.device().is_cpu()
        && f32(residual)
        && f32(w2)
        && w2.rank() == 2
        && w1.dims().get(1) == w2.dims().first()
        && residual.dims().last() == out
        && b2.is_none_or(|b| f32(b) && b.rank() == 1 && b.dims().first() == out)
}

/// NewGELUActivation in a low precision, op by op as torch rounds it:
/// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`, each tensor op computed in f32
/// (scalars unrounded) and rounded to x's dtype.
fn gelu_new_rounded(x: &Tensor) -> candle_core::Result<Tensor> {
    let (lo, x32) = (Rounding(x.dtype()), x.to_dtype(DType::F32)?);
    let cube = lo.round((x32.sqr()? * &x32)?)?; // torch.pow(x, 3.0)
    let inner = lo.round((x32 + lo.widen(&lo.affine(&cube, 0.044715, 0.0)?)?)?)?;
    let t = lo.round(lo.widen(&lo.affine(&inner, (2.0 / std::f64::consts::PI).sqrt(), 0.0)?)?.tanh()?)?;
    lo.mul(&lo.affine(x, 0.5, 0.0)?, &lo.affine(&t, 1.0, 1.0)?)
}

/// FastGELUActivation in a low precision, op by op:
/// `0.5 * x * (1 + tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))`.
fn gelu_fast_rounded(x: &Tensor) -> candle_core::Result<Tensor> {
    let lo = Rounding(x.dtype());
    let x_c = lo.affine(x, 0.7978845608, 0.0)?;
    let inner = lo.affine(&lo.mul(&lo.affine(x, 0.044715, 0.0)?, x)?, 1.0, 1.0)?;
    let t = lo.round(lo.widen(&lo.mul(&x_c, &inner)?)?.tanh()?)?;
    lo.mul(&lo.affine(x, 0.5, 0.0)?, &lo.affine(&t, 1.0, 1.0)?)
}

/// torch's rounding of one elementwise op in a low precision: computed in f32 (scalars
/// unrounded), rounded to the dtype.
struct Rounding(DType);

impl Rounding {
    fn widen(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.to_dtype(DType::F32)
    }

    fn round(&self, t: Tensor) -> candle_core::Result<Tensor> {
        t.to_dtype(self.0)
    }

    /// t * mul + add.
    fn affine(&self, t: &Tensor, mul: f64, add: f64) -> candle_core::Result<Tensor> {
        self.round(self.widen(t)?.affine(mul, add)?)
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        self.round((self.widen(a)? * self.widen(b)?)?)
    }
}

/// transformers' LayerNorm / RMSNorm weights, applied with differentiable ops.
pub enum Norm {
    Layer {
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    },
    /// LlamaRMSNorm: in bf16 the normalised row is rounded, then scaled by the weight.
    Rms {
        weight: Tensor,
        eps: f64,
    },
    /// OLMo 2's RMSNorm: in bf16 the weight scales the f32 row, rounded once (same as `Rms` in f32).
    RmsScaledInF32 {
        weight: Tensor,
        eps: f64,
    },
}

impl Norm {
    pub fn layer(w: &Weights, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Norm::Layer { weight: w.get("weight", &[hidden])?, bias: w.get("bias", &[hidden])?, eps })
    }

    pub fn rms(w: &Weights, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Norm::Rms { weight: w.get("weight", &[hidden])?, eps })
    }

    pub fn rms_scaled_in_f32(w: &Weights, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Norm::RmsScaledInF32 { weight: w.get("weight", &[hidden])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Layer { weight, bias, eps } => fused::layer_norm(x, weight, bias, *eps),
            Norm::Rms { weight, eps } => fused::rms_norm(x, weight, *eps),
            Norm::RmsScaledInF32 { weight, eps } if x.dtype() != DType::F32 => {
                let f32 = |t: &Tensor| t.to_dtype(DType::F32);
                fused::rms_norm(&f32(x)?, &f32(weight)?, *eps)?.to_dtype(x.dtype())
            }
            Norm::RmsScaledInF32 { weight, eps } => fused::rms_norm(x, weight, *eps),
        }
    }
}

/// nn.Linear (weight stored (out, in)) named `module`, with an adapter when it is a target.
pub(crate) fn linear(
    w: &Weights,
    module: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    ctx: &mut LoraCtx,
) -> Result<Linear> {
    let weight = w.get("weight", &[out_dim, in_dim])?;
    let b = if bias { Some(w.get("bias", &[out_dim])?) } else { None };
    let adapter = ctx.adapter_for(module, in_dim, out_dim, w.device())?;
    Ok(Linear::new(weight.t()?, b, adapter))
}

/// An embedding table (vocab, hidden): rows gathered by token id.
pub struct Embedding {
    pub table: Tensor,
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.table.dim(1)?;
        self.table.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, hidden))
        // (b, t, hidden)
    }
}
