//! Attention straight from a fused query/key/value projection (GPT-NeoX, BLOOM, GPT-2), with
//! the rotary embedding applied inside.
//!
//! Split with candle's views, the packed projection costs the backward pass a full-width
//! zero-filled gradient and a concatenation per part (the `narrow` backward), a sum of the
//! three, and the rotary op's own copies. Here the CPU op reads the queries, keys and values
//! where the projection wrote them, and its backward writes dL/d(qkv) in the projection's
//! layout in one pass, the rotation undone on the way. Llama-shaped models, whose three
//! projections are separate, get the same op over three tensors: no transposed copies of the
//! heads, and gradients returned in the projections' own layout. Elsewhere (other devices or
//! dtypes, attention dropout) the heads are split with views and `attention.rs` composes the
//! attention from candle's ops. This module must not hold weights.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

use super::attention::attention;
use super::fused::{data, Rotation};
use super::sdpa::{self, Dims, Kernel, View};
use super::Rope;
use crate::dropout::Dropout;
use crate::uninit::{copy, written};

/// Where each head's query, key and value lie in a row of the packed projection (width 3 h d).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Packing {
    /// [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]: GPT-NeoX and BLOOM.
    PerHead,
    /// [q_0 q_1 ... | k_0 k_1 ... | v_0 v_1 ...]: GPT-2.
    Blocked,
}

impl Packing {
    /// The first column of head `i`'s `part` (0 query, 1 key, 2 value), for h heads of size d.
    fn column(self, part: usize, i: usize, (h, d): (usize, usize)) -> usize {
        match self {
            Packing::PerHead => i * 3 * d + part * d,
            Packing::Blocked => part * h * d + i * d,
        }
    }

    /// Columns from one head's part to the next head's.
    fn head_stride(self, d: usize) -> usize {
        match self {
            Packing::PerHead => 3 * d,
            Packing::Blocked => d,
        }
    }

    /// q, k and v (b, h, t, d) as views of qkv (b, t, 3 h d).
    pub fn split(self, qkv: &Tensor, heads: usize) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, t, w) = qkv.dims3()?;
        let d = w / (3 * heads);
        match self {
            Packing::PerHead => {
                let x = qkv.reshape((b, t, heads, 3 * d))?.transpose(1, 2)?; // (b, h, t, 3d)
                Ok((x.narrow(D::Minus1, 0, d)?, x.narrow(D::Minus1, d, d)?, x.narrow(D::Minus1, 2 * d, d)?))
            }
            Packing::Blocked => {
                let x = qkv.reshape((b, t, 3, heads, d))?;
                let part = |i: usize| x.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2); // (b, h, t, d)
                Ok((part(0)?, part(1)?, part(2)?))
            }
        }
    }
}

/// softmax(rope(q) rope(k)^T * scale + mask) v for q, k, v packed in qkv (b, t, 3 h d) as
/// `packing` says, with `rope` on the queries and keys (None: no rotation) and `dropout` on
/// the probabilities while training: returns (b, t, h d).
#[allow(clippy::too_many_arguments)]
pub fn qkv_attention(
    qkv: &Tensor,
    heads: usize,
    packing: Packing,
    rope: Option<&Rope>,
    scale: f64,
    mask: &Tensor,
    dropout: Option<&Dropout>,
) -> candle_core::Result<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    if heads == 0 || w % (3 * heads) != 0 {
        candle_core::bail!("attention: a packed projection of width {w} for {heads} heads");
    }
    if !sdpa::applies(qkv) || crate::dropout::active(dropout) {
        let (q, k, v) = packing.split(qkv, heads)?;
        let (q, k) = match rope {
            Some(rope) => (rope.apply(&q)?, rope.apply(&k)?),
            None => (q, k),
        };
        return attention(&q, &k, &v, scale, mask, dropout);
    }
    let d = w / (3 * heads);
    let dims = Dims { b, h: heads, kv: heads, t, d };
    let op = QkvAttention::new(dims, Source::Packed(packing), rope, scale, mask)?;
    qkv.contiguous()?.apply_op1(op)
}

/// softmax(rope(q) rope(k)^T * scale + mask) v for the outputs of three projections, q
/// (b, t, h d) and k, v (b, t, kv d) with kv dividing h (grouped-query attention), with `rope`
/// on the queries and keys and `dropout` on the probabilities while training: returns
/// (b, t, h d).
pub fn projections_attention(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (heads, kv_heads): (usize, usize),
    rope: &Rope,
    scale: f64,
    mask: &Tensor,
    dropout: Option<&Dropout>,
) -> candle_core::Result<Tensor> {
    let (b, t, w) = q.dims3()?;
    let d = w / heads.max(1);
    let fits = |x: &Tensor| x.dims3().is_ok_and(|dims| dims == (b, t, kv_heads * d));
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || w % heads != 0 || !fits(k) || !fits(v) {
        candle_core::bail!(
            "attention: projections {:?}, {:?}, {:?} for {heads} query and {kv_heads} key/value heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if !sdpa::applies(q) || crate::dropout::active(dropout) {
        let split = |y: &Tensor, n| y.reshape((b, t, n, d))?.transpose(1, 2); // (b, n, t, d)
        let (q, k) = (rope.apply(&split(q, heads)?)?, rope.apply(&split(k, kv_heads)?)?);
        return attention(&q, &k, &split(v, kv_heads)?, scale, mask, dropout);
    }
    let dims = Dims { b, h: heads, kv: kv_heads, t, d };
    let op = QkvAttention::new(dims, Source::Separate, Some(rope), scale, mask)?;
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// Where the queries, keys and values lie.
#[derive(Clone, Copy)]
enum Source {
    /// In one packed projection (b, t, 3 h d).
    Packed(Packing),
    /// In three projections: q (b, t, h d), k and v (b, t, kv d).
    Separate,
}

/// The fused op over either source: one tensor or three, each contiguous.
struct QkvAttention {
    kernel: Kernel,
    source: Source,
    rotation: Option<Rotation>,
    /// What the backward needs from the forward.
    saved: Mutex<Option<Saved>>,
}

struct Saved {
    /// The softmax probabilities (b, h, t, t).
    probs: Vec<f32>,
    /// The rotated queries (b, h, t, d) and keys (b, kv, t, d), when there is a rotation.
    rotated: Option<[Vec<f32>; 2]>,
}

/// Where one part (queries, keys or values) lies: its source tensor, the column of head 0,
/// the columns from one head to the next, the source's row width, and its heads.
#[derive(Clone, Copy)]
struct Place {
    source: usize,
    start: usize,
    head_step: usize,
    width: usize,
    heads: usize,
}

fn lock_err<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("attention: poisoned lock".into())
}

impl QkvAttention {
    fn new(dims: Dims, source: Source, rope: Option<&Rope>, scale: f64, mask: &Tensor) -> candle_core::Result<Self> {
        let rotation = match rope {
            Some(rope) if rope.rot_dim() > 0 => Some(rope.rotation(dims.t)?),
            _ => None,
        };
        Ok(QkvAttention { kernel: Kernel::new(dims, scale, mask)?, source, rotation, saved: Mutex::new(None) })
    }

    /// Where part `part` (0 queries, 1 keys, 2 values) lies.
    fn place(&self, part: usize) -> Place {
        let Dims { h, kv, d, .. } = self.kernel.dims();
        let heads = if part == 0 { h } else { kv };
        match self.source {
            Source::Packed(p) => Place {
                source: 0,
                start: p.column(part, 0, (h, d)),
                head_step: p.head_stride(d),
                width: 3 * h * d,
                heads,
            },
            Source::Separate => Place { source: part, start: 0, head_step: d, width: heads * d, heads },
        }
    }

    /// Part `part` of the sources as a (b, heads, t, d) view.
    fn view<'a>(&self, sources: &[&'a [f32]], part: usize) -> View<'a> {
        let Place { source, start, head_step, width, .. } = self.place(part);
        View { data: sources[source], start, stride: [self.kernel.dims().t * width, head_step, width, 1] }
    }

    /// Part `part` of the sources rotated, as a contiguous (b, heads, t, d) buffer.
    fn rotate(&self, rotation: &Rotation, sources: &[&[f32]], part: usize) -> Vec<f32> {
        let Dims { b, t, d, .. } = self.kernel.dims();
        let Place { source, start, head_step, width, heads } = self.place(part);
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(t * d).enumerate().for_each(|(bh, head)| {
                let (bi, hi) = (bh / heads, bh % heads);
                let col = bi * t * width + start + hi * head_step;
                for (pos, row) in head.chunks_mut(d).enumerate() {
                    rotation.rotate(row, &sources[source][col + pos * width..][..d], pos, false);
                }
            })
        };
        // SAFETY: each row of d is rotated from its source row, which writes it whole
        unsafe { written(b * heads * t * d, fill) }
    }

    /// The views the kernel reads: the rotated buffers for queries and keys when there is a
    /// rotation, else the sources in place.
    fn views<'a>(&self, sources: &[&'a [f32]], rotated: &'a Option<[Vec<f32>; 2]>) -> [View<'a>; 3] {
        let Dims { h, kv, t, d, .. } = self.kernel.dims();
        match rotated {
            Some([q, k]) => [View::contiguous(q, (h, t, d)), View::contiguous(k, (kv, t, d)), self.view(sources, 2)],
            None => [self.view(sources, 0), self.view(sources, 1), self.view(sources, 2)],
        }
    }

    /// The output (b, t, h d), saving what the backward needs.
    fn forward(&self, sources: &[&[f32]]) -> candle_core::Result<Vec<f32>> {
        let rotated = self.rotation.as_ref().map(|r| [self.rotate(r, sources, 0), self.rotate(r, sources, 1)]);
        let [q, k, v] = self.views(sources, &rotated);
        let (probs, out) = self.kernel.forward(&q, &k, &v);
        *self.saved.lock().map_err(lock_err)? = Some(Saved { probs, rotated });
        Ok(out)
    }

    /// dL/d(source) for each source, from dL/d(output) (b, t, h d).
    fn backward(&self, sources: &[&[f32]], grad: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        let Saved { probs, rotated } = self
            .saved
            .lock()
            .map_err(lock_err)?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("attention: backward without forward".into()))?;
        let grad = grad.contiguous()?;
        let guard = grad.storage_and_layout();
        let dout = slice(&guard)?; // (b, t, h d), read where it lies
        let [q, k, v] = self.views(sources, &rotated);
        let grads = self.kernel.backward(&probs, &q, &k, &v, dout);
        Ok((0..sources.len()).map(|source| self.gather(source, &grads)).collect())
    }

    /// dL/d(source) (b, t, width) from dq, dk, dv (b, heads, t, d): each row written once, by
    /// the parts that lie in this source, the rotation of the queries and keys undone.
    fn gather(&self, source: usize, grads: &[Vec<f32>; 3]) -> Vec<f32> {
        let Dims { b, t, d, .. } = self.kernel.dims();
        let parts: Vec<(usize, Place)> =
            (0..3).map(|p| (p, self.place(p))).filter(|(_, at)| at.source == source).collect();
        let width = parts[0].1.width;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(width).enumerate().for_each(|(row, out)| {
                let (bi, pos) = (row / t, row % t);
                for &(part, Place { start, head_step, heads, .. }) in &parts {
                    for hi in 0..heads {
                        let src = &grads[part][((bi * heads + hi) * t + pos) * d..][..d];
                        let dst = &mut out[start + hi * head_step..][..d];
                        match &self.rotation {
                            Some(rotation) if part < 2 => rotation.rotate(dst, src, pos, true),
                            _ => copy(dst, src),
                        }
                    }
                }
            })
        };
        // SAFETY: the parts that lie in this source tile its rows (their heads' d columns at
        // the places `place` gives: packed, the three parts' h heads fill 3 h d; separate, one
        // part's heads fill its width), and each is written whole
        unsafe { written(b * t * width, fill) }
    }

    /// The output's shape.
    fn shape(&self) -> Shape {
        let Dims { b, h, t, d, .. } = self.kernel.dims();
        Shape::from((b, t, h * d))
    }
}

impl CustomOp1 for QkvAttention {
    fn name(&self) -> &'static str {
        "fused-qkv-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.forward(&[data(s, l)?])?), self.shape()))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let guard = qkv.storage_and_layout();
        let mut grads = self.backward(&[slice(&guard)?], grad)?;
        Ok(Some(Tensor::from_vec(grads.remove(0), qkv.shape(), &candle_core::Device::Cpu)?))
    }
}

impl CustomOp3 for QkvAttention {
    fn name(&self) -> &'static str {
        "fused-projections-attention"
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
        let out = self.forward(&[data(s1, l1)?, data(s2, l2)?, data(s3, l3)?])?;
        Ok((CpuStorage::F32(out), self.shape()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guards = [q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout()];
        let sources = [slice(&guards[0])?, slice(&guards[1])?, slice(&guards[2])?];
        let [dq, dk, dv]: [Vec<f32>; 3] = self
            .backward(&sources, grad)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("attention: 3 sources".into()))?;
        let cpu = &candle_core::Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), cpu)?),
            Some(Tensor::from_vec(dk, k.shape(), cpu)?),
            Some(Tensor::from_vec(dv, v.shape(), cpu)?),
        ))
    }
}

/// A contiguous f32 CPU tensor's data, from its storage guard.
fn slice<'a, G: std::ops::Deref<Target = Storage>>(
    (storage, layout): &'a (G, &Layout),
) -> candle_core::Result<&'a [f32]> {
    match &**storage {
        Storage::Cpu(cpu) => data(cpu, layout),
        _ => candle_core::bail!("attention: a source is not on the CPU"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{causal_mask, RopeConfig, RopeScaling};
    use crate::testing::{max_rel, values};
    use candle_core::{Device, Var};

    fn rope(rot_dim: usize) -> Rope {
        Rope::new(rot_dim, &RopeConfig { theta: 10_000.0, partial_rotary_factor: None, scaling: RopeScaling::None })
    }

    /// The composed reference: split views, the composed rotation, scores, mask, softmax.
    fn composed(qkv: &Tensor, heads: usize, packing: Packing, rope: &Rope, scale: f64, mask: &Tensor) -> Tensor {
        let (q, k, v) = packing.split(qkv, heads).unwrap();
        let (q, k) = (rope.apply_composed(&q).unwrap(), rope.apply_composed(&k).unwrap());
        let kt = k.contiguous().unwrap().t().unwrap();
        let scores = (q.contiguous().unwrap().matmul(&kt).unwrap() * scale).unwrap();
        let p = candle_nn::ops::softmax(&scores.broadcast_add(mask).unwrap(), D::Minus1).unwrap();
        let (b, h, t, d) = q.dims4().unwrap();
        p.matmul(&v.contiguous().unwrap()).unwrap().transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
    }

    /// The output and dL/d(qkv) of `f` for a fixed weighting of the output.
    fn with_grad(qkv: &Var, f: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
        let y = f(qkv.as_tensor());
        let weights = values(y.dims(), 0.4);
        let grads = (&y * weights).unwrap().sum_all().unwrap().backward().unwrap();
        (y, grads.get(qkv.as_tensor()).unwrap().clone())
    }

    /// Both packings, no, partial and full rotation, over several row blocks of a causal mask
    /// (the last one partial): the fused op equals the composed ops to f32 rounding.
    #[test]
    fn equals_the_split_projection() {
        let (b, h, t, d) = (2, 3, 40, 8);
        let mask = causal_mask(t, None, &Device::Cpu).unwrap();
        for packing in [Packing::PerHead, Packing::Blocked] {
            for rot_dim in [0, 4, 8] {
                let rope = rope(rot_dim);
                let qkv = Var::from_tensor(&values(&[b, t, 3 * h * d], 0.1)).unwrap();
                let fused = with_grad(&qkv, |x| qkv_attention(x, h, packing, Some(&rope), 0.3, &mask, None).unwrap());
                let reference = with_grad(&qkv, |x| composed(x, h, packing, &rope, 0.3, &mask));
                let case = format!("{packing:?}, rot_dim {rot_dim}");
                assert!(max_rel(&fused.0, &reference.0) < 1e-5, "{case}: output");
                assert!(max_rel(&fused.1, &reference.1) < 1e-5, "{case}: gradient");
            }
        }
    }

    /// A mask per head (ALiBi's slopes), as BLOOM passes it.
    #[test]
    fn takes_a_mask_per_head() {
        let (b, h, t, d) = (2, 2, 9, 4);
        let causal = causal_mask(t, None, &Device::Cpu).unwrap();
        let slopes = Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap().reshape((h, 1, 1)).unwrap();
        let distance = Tensor::arange(0f32, t as f32, &Device::Cpu).unwrap().reshape((1, 1, t)).unwrap();
        let mask = slopes.broadcast_mul(&distance).unwrap().broadcast_add(&causal).unwrap(); // (h, t, t)
        let qkv = Var::from_tensor(&values(&[b, t, 3 * h * d], 0.7)).unwrap();
        let none = rope(0);
        let fused = with_grad(&qkv, |x| qkv_attention(x, h, Packing::PerHead, None, 0.5, &mask, None).unwrap());
        let reference = with_grad(&qkv, |x| composed(x, h, Packing::PerHead, &none, 0.5, &mask));
        assert!(max_rel(&fused.0, &reference.0) < 1e-5);
        assert!(max_rel(&fused.1, &reference.1) < 1e-5);
    }

    /// Three projections with grouped-query heads and a sliding window (masked columns at both
    /// ends of a row), rotated in full and in part: equal to the composed ops.
    #[test]
    fn equals_the_split_projections_with_grouped_heads() {
        let (b, h, kv, t, d) = (2, 4, 2, 37, 8);
        let mask = causal_mask(t, Some(20), &Device::Cpu).unwrap();
        let var = |n: usize, seed: f32| Var::from_tensor(&values(&[b, t, n * d], seed)).unwrap();
        let (q, k, v) = (var(h, 0.1), var(kv, 0.2), var(kv, 0.3));
        let split = |y: &Tensor, n: usize| y.reshape((b, t, n, d)).unwrap().transpose(1, 2).unwrap();
        for rot_dim in [4, 8] {
            let rope = rope(rot_dim);
            let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
                let y = f(q.as_tensor(), k.as_tensor(), v.as_tensor());
                let grads = (&y * values(y.dims(), 0.4)).unwrap().sum_all().unwrap().backward().unwrap();
                let grad = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
                (y, [grad(&q), grad(&k), grad(&v)])
            };
            let fused = run(&|q, k, v| projections_attention((q, k, v), (h, kv), &rope, 0.3, &mask, None).unwrap());
            let reference = run(&|q, k, v| {
                let rep = |x: Tensor| {
                    let x = x.unsqueeze(2).unwrap().broadcast_as((b, kv, h / kv, t, d)).unwrap();
                    x.reshape((b, h, t, d)).unwrap()
                };
                let q = rope.apply_composed(&split(q, h)).unwrap().contiguous().unwrap();
                let k = rep(rope.apply_composed(&split(k, kv)).unwrap());
                let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.3).unwrap().broadcast_add(&mask).unwrap();
                let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
                let y = p.matmul(&rep(split(v, kv).contiguous().unwrap())).unwrap();
                y.transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
            });
            assert!(max_rel(&fused.0, &reference.0) < 1e-5, "rot_dim {rot_dim}: output");
            for i in 0..3 {
                assert!(max_rel(&fused.1[i], &reference.1[i]) < 1e-5, "rot_dim {rot_dim}: gradient {i}");
            }
        }
    }

    #[test]
    fn a_width_that_is_not_three_heads_is_an_error() {
        let qkv = values(&[1, 4, 10], 0.0);
        let mask = causal_mask(4, None, &Device::Cpu).unwrap();
        assert!(qkv_attention(&qkv, 3, Packing::PerHead, None, 1.0, &mask, None).is_err());
        let (q, kv) = (values(&[1, 4, 12], 0.0), values(&[1, 4, 8], 0.0));
        let none = rope(0);
        assert!(projections_attention((&q, &kv, &kv), (3, 2), &none, 1.0, &mask, None).is_err(), "3 heads, 2 kv");
        assert!(projections_attention((&q, &q, &kv), (3, 3), &none, 1.0, &mask, None).is_err(), "v too narrow");
    }
}
