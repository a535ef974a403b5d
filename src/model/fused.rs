//! Layer norm, RMS norm and the MLP activations as single CPU ops with their own backward.
//!
//! Composed from candle ops, a layer norm is about ten graph nodes, each with an output as
//! large as the hidden states, and candle's backward writes a gradient of that size per node
//! and sums those of inputs used twice; at small model sizes these passes cost more than the
//! matmuls. Each op here is one node: one parallel pass forward, one backward, and only dL/dx
//! is returned (norm weights are frozen). Values equal the composed ops to f32 rounding; on
//! other devices or dtypes the composed ops run instead. This module must not hold model
//! weights or know architectures.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::math::{fast_phi_pdf, fast_sigmoid, fast_tanh, with_avx2};
use crate::uninit::{copy, written};

/// Whether the fused CPU kernels apply to `x`.
fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Borrowed contiguous f32 data of a CPU tensor argument.
pub(super) fn data<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("fused op needs contiguous inputs".into()))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// Rows of the data, and the length of each.
fn rows(l: &Layout) -> candle_core::Result<usize> {
    l.dims()
        .last()
        .copied()
        .filter(|&n| n > 0)
        .ok_or_else(|| candle_core::Error::Msg("fused op on an empty last dimension".into()))
}

/// Checks that every argument of an op is as long as its first `len` values say (a kernel
/// that zips them writes each output element only where all have one).
fn lengths(op: &str, want: usize, args: &[&[f32]]) -> candle_core::Result<()> {
    match args.iter().find(|a| a.len() != want) {
        Some(a) => candle_core::bail!("{op}: an argument of {} values where {want} are needed", a.len()),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Norms

/// transformers' LayerNorm (`centered`) or RMSNorm over the last dimension, with weight
/// and bias (zeros for RMSNorm).
#[derive(Clone, Copy)]
struct NormOp {
    centered: bool,
    eps: f32,
}

/// LayerNorm: (x - mean) / sqrt(var + eps) * w + b, var biased, as torch computes it.
/// In bf16 it computes in f32 and rounds once, as torch's LayerNorm kernels do.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 {
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        return layer_norm(&f(x)?, &f(w)?, &f(b)?, eps)?.to_dtype(x.dtype());
    }
    if !fused(x) {
        return candle_nn::ops::layer_norm_slow(x, w, b, eps as f32);
    }
    x.contiguous()?.apply_op3(w, b, NormOp { centered: true, eps: eps as f32 })
}

/// RMSNorm: x / sqrt(mean(x^2) + eps) * w, as transformers' LlamaRMSNorm in f32.
/// In bf16, normalised in f32, rounded, then scaled by the weight, as LlamaRMSNorm does.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 {
        let normed = rms_norm(&x.to_dtype(DType::F32)?, &w.ones_like()?.to_dtype(DType::F32)?, eps)?; // (..., h)
        return normed.to_dtype(x.dtype())?.broadcast_mul(w);
    }
    if !fused(x) {
        return candle_nn::ops::rms_norm_slow(x, w, eps as f32);
    }
    x.contiguous()?.apply_op3(w, &w.zeros_like()?, NormOp { centered: false, eps: eps as f32 })
}

impl NormOp {
    /// (mean, 1/sqrt(var + eps)) of a row; mean is 0 for RMSNorm.
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = if self.centered { row.iter().sum::<f32>() / n } else { 0.0 };
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        "fused-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b, n) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?, rows(l1)?);
        lengths("norm", n, &[w, b])?;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(out, row)| {
                with_avx2(
                    #[inline(always)]
                    || {
                        let (mean, rstd) = self.stats(row);
                        for (((o, &v), &wi), &bi) in out.iter_mut().zip(row).zip(w).zip(b) {
                            o.write((v - mean) * rstd * wi + bi);
                        }
                    },
                )
            })
        };
        // SAFETY: each row of y is written whole from the row of x beside it (w and b are n long)
        let y = unsafe { written(x.len(), fill) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, &grad.contiguous()?, &NormGrad(*self))?;
        Ok((Some(dx), None, None))
    }
}

/// dL/dx of [`NormOp`] for (x, w, dL/dy): with xhat the normalised row and g = dy * w,
/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), without the mean(g) term for RMSNorm.
struct NormGrad(NormOp);

impl CustomOp3 for NormGrad {
    fn name(&self) -> &'static str {
        "fused-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, dy, n) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?, rows(l1)?);
        lengths("norm backward", n, &[w])?;
        lengths("norm backward", x.len(), &[dy])?;
        let nf = n as f32;
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            dx.par_chunks_mut(n).zip(x.par_chunks(n)).zip(dy.par_chunks(n)).for_each(|((out, row), dyr)| {
                with_avx2(
                    #[inline(always)]
                    || {
                        let (mean, rstd) = self.0.stats(row);
                        let (mut g_sum, mut gx_sum) = (0f32, 0f32);
                        for ((&v, &d), &wi) in row.iter().zip(dyr).zip(w) {
                            let g = d * wi;
                            g_sum += g;
                            gx_sum += g * (v - mean) * rstd;
                        }
                        let g_mean = if self.0.centered { g_sum / nf } else { 0.0 };
                        let gx_mean = gx_sum / nf;
                        for (((o, &v), &d), &wi) in out.iter_mut().zip(row).zip(dyr).zip(w) {
                            o.write(rstd * (d * wi - g_mean - (v - mean) * rstd * gx_mean));
                        }
                    },
                )
            })
        };
        // SAFETY: each row of dx is written whole from the rows of x and dy beside it (w is n long)
        let dx = unsafe { written(x.len(), fill) };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// Activations

/// The MLP activations of transformers, by their derivative-friendly forms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// x * sigmoid(x)
    Silu,
    /// x * Phi(x), exact (erf)
    GeluErf,
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    GeluTanh,
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// Expands `body` once per activation with `a` a constant, so that `a.eval` inlines to
/// straight-line code and the loops in `body` vectorise.
macro_rules! per_act {
    ($act:expr, $a:ident => $body:expr) => {
        match $act {
            Act::Silu => {
                let $a = Act::Silu;
                $body
            }
            Act::GeluErf => {
                let $a = Act::GeluErf;
                $body
            }
            Act::GeluTanh => {
                let $a = Act::GeluTanh;
                $body
            }
        }
    };
}
pub(super) use per_act;

impl Act {
    /// (f(x), f'(x)).
    #[inline(always)]
    pub(super) fn eval(self, x: f32) -> (f32, f32) {
        match self {
            Act::Silu => {
                let s = fast_sigmoid(x);
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
            Act::GeluErf => {
                let (cdf, pdf) = fast_phi_pdf(x);
                (x * cdf, cdf + x * pdf)
            }
            Act::GeluTanh => {
                let u = SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x);
                let t = fast_tanh(u);
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
            }
        }
    }
}

/// `act(x)` as one node; the backward multiplies by f'(x).
pub fn activation(x: &Tensor, act: Act) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 {
        // computed in f32 and rounded once, as torch computes activations in bf16
        return activation(&x.to_dtype(DType::F32)?, act)?.to_dtype(x.dtype());
    }
    if !fused(x) {
        return match act {
            Act::Silu => x.silu(),
            Act::GeluErf => x.gelu_erf(),
            Act::GeluTanh => x.gelu(),
        };
    }
    x.contiguous()?.apply_op1(ActOp(act))
}

struct ActOp(Act);

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "fused-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = data(s, l)?;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(o, i)| {
                let n = o.len();
                let i = &i[..n];
                with_avx2(
                    #[inline(always)]
                    || per_act!(self.0, a => for k in 0..n { o[k].write(a.eval(i[k]).0); }),
                )
            })
        };
        // SAFETY: each chunk of y is written whole from the chunk of x beside it
        let y = unsafe { written(x.len(), fill) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &ActGrad(self.0))?))
    }
}

/// dL/dx = dL/dy * f'(x).
struct ActGrad(Act);

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "fused-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, dy) = (data(s1, l1)?, data(s2, l2)?);
        lengths("activation backward", x.len(), &[dy])?;
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            dx.par_chunks_mut(4096).zip(x.par_chunks(4096)).zip(dy.par_chunks(4096)).for_each(|((o, i), d)| {
                let n = o.len();
                let (i, d) = (&i[..n], &d[..n]);
                with_avx2(
                    #[inline(always)]
                    || per_act!(self.0, a => for k in 0..n { o[k].write(d[k] * a.eval(i[k]).1); }),
                );
            })
        };
        // SAFETY: each chunk of dx is written whole from the chunks of x and dy beside it
        let dx = unsafe { written(x.len(), fill) };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// act(gate) * up, the gated MLP of Llama-style models, as one node: the backward needs
/// only gate and up, so act(gate) is never kept.
pub fn gated(gate: &Tensor, up: &Tensor, act: Act) -> candle_core::Result<Tensor> {
    if !fused(gate) || gate.dims() != up.dims() {
        return activation(gate, act)? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, GatedOp(act))
}

struct GatedOp(Act);

impl CustomOp2 for GatedOp {
    fn name(&self) -> &'static str {
        "fused-gated-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (data(s1, l1)?, data(s2, l2)?);
        lengths("gated activation", g.len(), &[u])?;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((o, g), u)| {
                let n = o.len();
                let (g, u) = (&g[..n], &u[..n]);
                with_avx2(
                    #[inline(always)]
                    || per_act!(self.0, a => for k in 0..n { o[k].write(a.eval(g[k]).0 * u[k]); }),
                );
            })
        };
        // SAFETY: each chunk of y is written whole from the chunks of g and u beside it
        let y = unsafe { written(g.len(), fill) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// d/dgate = dy * up * act'(gate); d/dup = dy * act(gate).
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dgate = gate.apply_op3_no_bwd(up, &grad, &GatedGrad { act: self.0, wrt_gate: true })?;
        let dup = gate.apply_op3_no_bwd(up, &grad, &GatedGrad { act: self.0, wrt_gate: false })?;
        Ok((Some(dgate), Some(dup)))
    }
}

/// One of the two gradients of [`GatedOp`] from (gate, up, dy).
struct GatedGrad {
    act: Act,
    wrt_gate: bool,
}

impl CustomOp3 for GatedGrad {
    fn name(&self) -> &'static str {
        "fused-gated-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u, dy) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        lengths("gated activation backward", g.len(), &[u, dy])?;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096).zip(dy.par_chunks(4096))).for_each(
                |((o, g), (u, d))| {
                    let (wrt_gate, n) = (self.wrt_gate, o.len());
                    let (g, u, d) = (&g[..n], &u[..n], &d[..n]);
                    with_avx2(
                        #[inline(always)]
                        || {
                            per_act!(self.act, a => if wrt_gate {
                                for k in 0..n {
                                    o[k].write(d[k] * u[k] * a.eval(g[k]).1);
                                }
                            } else {
                                for k in 0..n {
                                    o[k].write(d[k] * a.eval(g[k]).0);
                                }
                            })
                        },
                    );
                },
            )
        };
        // SAFETY: each chunk of out is written whole from the chunks of g, u and dy beside it
        let out = unsafe { written(g.len(), fill) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// Rotary embeddings

/// The rotation of HF's `rotate_half` rotary embedding at each position: cos and sin tables
/// (t, rot_dim), applied to the first `rot_dim` features of a head's row.
#[derive(Clone)]
pub struct Rotation {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub rot_dim: usize,
}

impl Rotation {
    /// out = x cos + rotate_half(x) sin at position `pos`, rotate_half(x) = (-x2, x1); with
    /// `inverse` the sin is negated, which is also the backward of the rotation. Features past
    /// `rot_dim` are copied. Every slot of `out`, as long as `x`, is written.
    pub fn rotate(&self, out: &mut [MaybeUninit<f32>], x: &[f32], pos: usize, inverse: bool) {
        let (r, half) = (self.rot_dim, self.rot_dim / 2);
        let (cos, sin) = (&self.cos[pos * r..(pos + 1) * r], &self.sin[pos * r..(pos + 1) * r]);
        let sign = if inverse { -1.0 } else { 1.0 };
        for i in 0..half {
            out[i].write(x[i] * cos[i] - sign * x[i + half] * sin[i]);
            out[i + half].write(x[i + half] * cos[i + half] + sign * x[i] * sin[i + half]);
        }
        copy(&mut out[r..], &x[r..]);
    }
}

/// HF's `rotate_half` rotary embedding of x (b, h, t, d) by `rotation`; the features past its
/// `rot_dim` pass through.
pub fn rotary(x: &Tensor, rotation: Rotation) -> candle_core::Result<Tensor> {
    let (_b, _h, t, d) = x.dims4()?;
    let Rotation { cos, sin, rot_dim } = &rotation;
    let rot_dim = *rot_dim;
    if rot_dim == 0 || rot_dim % 2 == 1 || rot_dim > d || cos.len() != t * rot_dim || sin.len() != t * rot_dim {
        candle_core::bail!(
            "rotary: rot_dim {rot_dim} with head size {d}, {} cos and {} sin values for {t} positions",
            cos.len(),
            sin.len()
        );
    }
    x.contiguous()?.apply_op1(RotaryOp { rotation, t, d, inverse: false })
}

/// Rotation by the positions' angles, or by their negatives (`inverse`): the backward of a
/// rotation is the rotation back, dx = dy * cos + rotate_half^T(dy * sin).
#[derive(Clone)]
struct RotaryOp {
    rotation: Rotation,
    t: usize,
    d: usize,
    inverse: bool,
}

impl CustomOp1 for RotaryOp {
    fn name(&self) -> &'static str {
        "fused-rotary"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = data(s, l)?;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(self.t * self.d).zip(x.par_chunks(self.t * self.d)).for_each(|(out, head)| {
                for (pos, (o, row)) in out.chunks_mut(self.d).zip(head.chunks(self.d)).enumerate() {
                    self.rotation.rotate(o, row, pos, self.inverse);
                }
            })
        };
        // SAFETY: every row of y is rotated from the row of x beside it, which writes it whole
        let y = unsafe { written(x.len(), fill) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = RotaryOp { inverse: !self.inverse, ..self.clone() };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / q.abs().max(1.0)).fold(0f32, f32::max);
        assert!(worst <= tol, "max relative difference {worst}");
    }

    /// Value and dL/dx of `fused` and `composed` agree, for a loss that weights every output.
    fn same_as_composed(fused: impl Fn(&Tensor) -> Tensor, composed: impl Fn(&Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0.3f32, 1.5, (3, 5, 24), &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (3, 5, 24), &dev).unwrap();
        let (a, b) = (fused(x.as_tensor()), composed(x.as_tensor()));
        close(&a, &b, 1e-5);
        let ga = (a * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap(), 1e-4);
    }

    #[test]
    fn norms_equal_the_composed_ops() {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f32, 0.5, 24, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 24, &dev).unwrap();
        same_as_composed(
            |x| layer_norm(x, &w, &b, 1e-5).unwrap(),
            |x| candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-5).unwrap(),
        );
        same_as_composed(|x| rms_norm(x, &w, 1e-6).unwrap(), |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-6).unwrap());
    }

    #[test]
    fn rotary_equals_the_composed_ops() {
        let rope = crate::model::Rope::new(
            16,
            &crate::model::RopeConfig {
                theta: 10_000.0,
                partial_rotary_factor: None,
                scaling: crate::model::RopeScaling::None,
            },
        );
        let heads = |x: &Tensor| x.reshape((3, 1, 5, 24)).unwrap();
        let back = |y: Tensor| y.reshape((3, 5, 24)).unwrap();
        same_as_composed(|x| back(rope.apply(&heads(x)).unwrap()), |x| back(rope.apply_composed(&heads(x)).unwrap()));
    }

    #[test]
    fn gated_activation_equals_the_composed_ops() {
        let dev = Device::Cpu;
        let up = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 24), &dev).unwrap()).unwrap();
        same_as_composed(
            |g| gated(g, up.as_tensor(), Act::Silu).unwrap(),
            |g| (g.silu().unwrap() * up.as_tensor()).unwrap(),
        );
        let g = Tensor::randn(0f32, 1.0, (3, 5, 24), &dev).unwrap();
        same_as_composed(|u| gated(&g, u, Act::Silu).unwrap(), |u| (g.silu().unwrap() * u).unwrap());
    }

    #[test]
    fn activations_equal_the_composed_ops() {
        same_as_composed(|x| activation(x, Act::Silu).unwrap(), |x| x.silu().unwrap());
        same_as_composed(|x| activation(x, Act::GeluErf).unwrap(), |x| x.gelu_erf().unwrap());
        same_as_composed(|x| activation(x, Act::GeluTanh).unwrap(), |x| x.gelu().unwrap());
    }
}
