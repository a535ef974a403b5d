//! Scaled dot-product attention, softmax(q k^T * scale + mask) v, as one CPU op with its own
//! backward.
//!
//! Composed from candle ops this is about ten graph nodes over (b, heads, t, t) tensors
//! (scores, scaled, masked, the softmax's five steps, the transposed output) plus copies of
//! repeated key/value heads for grouped-query attention. Here each (batch, key/value head)
//! group is one task: per query head two small matmuls forward and four backward, the
//! probabilities kept for the backward pass, and the output written straight into the
//! (b, t, heads * d) layout the output projection reads. Grouped-query heads are never
//! copied: the key/value gradients of a group are summed in place. This module must not
//! know about rotary embeddings or projections.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::math::{fast_exp, lanes_dot, lanes_reduce, with_avx2};
use crate::matmul::{matmul_rows, Dst, Mat};

/// Whether the fused op applies (CPU, f32).
pub fn applies(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32
}

/// softmax(q k^T * scale + mask) v for q (b, h, t, d), k and v (b, kv, t, d) with kv dividing
/// h, and an additive mask (t, t), or one per head (h, t, t) (ALiBi's slopes): returns
/// (b, t, h * d). Every head's mask must hide the same entries (-inf).
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let mask_fits = mask.dims() == [t, t] || mask.dims() == [h, t, t];
    if kv == 0 || h % kv != 0 || k.dims4()? != (b, kv, t, d) || v.dims4()? != (b, kv, t, d) || !mask_fits {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?}, mask {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.dims()
        );
    }
    let mask = mask.flatten_all()?.to_vec1::<f32>()?;
    let blocks = blocks_of(&mask, t);
    let op = Attention { dims: Dims { b, h, kv, t, d }, scale: scale as f32, mask, blocks, probs: Mutex::new(None) };
    q.apply_op3(k, v, op) // strided views are read in place: no copies of q, k, v
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    d: usize,
}

impl Dims {
    /// Query heads per key/value head.
    fn rep(&self) -> usize {
        self.h / self.kv
    }
}

struct Attention {
    dims: Dims,
    scale: f32,
    /// (t, t) or (h, t, t), additive; -inf entries get probability exactly 0.
    mask: Vec<f32>,
    /// The mask's row blocks; columns past a block's `cols` are never computed (they stay 0).
    blocks: Vec<Block>,
    /// The softmax probabilities (b, h, t, t) of the forward pass, for the backward.
    probs: Mutex<Option<Vec<f32>>>,
}

/// A (b, heads, t, d) tensor read through its layout: any strides, no copy.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 4],
}

impl<'a> View<'a> {
    fn new(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<Self> {
        let stride: [usize; 4] =
            l.stride().try_into().map_err(|_| candle_core::Error::Msg("attention needs 4-d inputs".into()))?;
        Ok(View { data: s.as_slice::<f32>()?, start: l.start_offset(), stride })
    }

    /// Head (b, h) as a (t, d) matrix: its data from the first element, and (row, column) strides.
    fn head(&self, b: usize, h: usize) -> (&'a [f32], (usize, usize)) {
        (&self.data[self.start + b * self.stride[0] + h * self.stride[1]..], (self.stride[2], self.stride[3]))
    }
}

/// A head's (t, d) matrix and its (row, column) strides.
type Operand<'a> = (&'a [f32], (usize, usize));

fn lock_err<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("attention: poisoned lock".into())
}

impl Attention {
    /// Head `hi`'s additive (t, t) mask.
    fn mask_of(&self, hi: usize) -> &[f32] {
        let tt = self.dims.t * self.dims.t;
        if self.mask.len() == tt {
            &self.mask
        } else {
            &self.mask[hi * tt..(hi + 1) * tt]
        }
    }

    /// One query head's forward: probabilities into `p` (t, t), output into `out` (rows of
    /// stride h * d, starting at this head's columns).
    fn head_forward(&self, hi: usize, (q, k, v): (Operand, Operand, Operand), p: &mut [f32], out: &mut [f32]) {
        let ((q, qs), (k, ks), (v, vs)) = (q, k, v);
        let Dims { h, t, d, .. } = self.dims;
        let mask = self.mask_of(hi);
        for &Block { rows: (r0, r1), cols: c } in &self.blocks {
            let (m, p) = (r1 - r0, &mut p[r0 * t..r1 * t]);
            // scores = q k^T, (m, c): k^T has the strides of k swapped
            gemm_strided(p, t, &q[r0 * qs.0..], qs, k, (ks.1, ks.0), (m, d, c), Dst::Overwrite, 1.0);
            for (i, row) in p.chunks_mut(t).enumerate() {
                let i = r0 + i;
                masked_softmax(&mut row[..c], &mask[i * t..i * t + c], self.scale);
            }
            // out = p v, (m, d) written with row stride h * d
            gemm_strided(&mut out[r0 * h * d..], h * d, p, (t, 1), v, vs, (m, c, d), Dst::Overwrite, 1.0);
        }
    }
}

/// Query rows `rows.0..rows.1`, whose keys past `cols` are all masked: their scores, softmax
/// and products stop there (a causal mask leaves about half of each (t, t) matrix out).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Block {
    rows: (usize, usize),
    cols: usize,
}

/// Rows per block: fewer skip more of a causal mask, more make larger products.
const BLOCK_ROWS: usize = 32;

/// The row blocks of an additive (t, t) mask, each with the columns its rows can see (at
/// least 1, so a fully masked block still runs its softmax, which writes zeros).
fn blocks_of(mask: &[f32], t: usize) -> Vec<Block> {
    let seen = |i: usize| mask[i * t..(i + 1) * t].iter().rposition(|&m| m != f32::NEG_INFINITY).map_or(0, |j| j + 1);
    (0..t)
        .step_by(BLOCK_ROWS)
        .map(|r0| {
            let r1 = (r0 + BLOCK_ROWS).min(t);
            Block { rows: (r0, r1), cols: (r0..r1).map(seen).max().unwrap_or(0).max(1) }
        })
        .collect()
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let Dims { b, h, t, d, .. } = self.dims;
        let (q, k, v) = (View::new(s1, l1)?, View::new(s2, l2)?, View::new(s3, l3)?);
        let mut probs = vec![0f32; b * h * t * t];
        let mut out = vec![0f32; b * t * h * d];
        // one task per batch row: its output rows (t, h * d) are contiguous
        out.par_chunks_mut(t * h * d).zip(probs.par_chunks_mut(h * t * t)).enumerate().for_each(
            |(bi, (out_b, probs_b))| {
                for (hi, p) in probs_b.chunks_mut(t * t).enumerate() {
                    let kvi = hi / self.dims.rep();
                    self.head_forward(hi, (q.head(bi, hi), k.head(bi, kvi), v.head(bi, kvi)), p, &mut out_b[hi * d..]);
                }
            },
        );
        *self.probs.lock().map_err(lock_err)? = Some(probs);
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self
            .probs
            .lock()
            .map_err(lock_err)?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("attention: backward without forward".into()))?;
        let flat = |x: &Tensor| x.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (dq, dk, dv) = self.backward(&probs, &flat(q)?, &flat(k)?, &flat(v)?, &flat(grad)?);
        let Dims { b, h, kv, t, d } = self.dims;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
            Some(Tensor::from_vec(dk, (b, kv, t, d), dev)?),
            Some(Tensor::from_vec(dv, (b, kv, t, d), dev)?),
        ))
    }
}

impl Attention {
    /// dq, dk, dv from the saved probabilities and dL/dout (b, t, h * d); one task per
    /// (batch, key/value head), which owns that head's dk and dv.
    fn backward(&self, probs: &[f32], q: &[f32], k: &[f32], v: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Dims { b, h, kv, t, d } = self.dims;
        let mut dq = vec![0f32; b * h * t * d];
        let mut dk = vec![0f32; b * kv * t * d];
        let mut dv = vec![0f32; b * kv * t * d];
        let rep = self.dims.rep();
        dq.par_chunks_mut(rep * t * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(g, ((dq_g, dk_g), dv_g))| {
                let (bi, kvi) = (g / kv, g % kv);
                let (kh, vh) = (&k[g * t * d..][..t * d], &v[g * t * d..][..t * d]);
                let mut ds = vec![0f32; t * t];
                for (r, dq_h) in dq_g.chunks_mut(t * d).enumerate() {
                    let hi = kvi * rep + r;
                    let p = &probs[(bi * h + hi) * t * t..][..t * t];
                    let qh = &q[(bi * h + hi) * t * d..][..t * d];
                    let doh = &dout[bi * t * h * d + hi * d..];
                    for &Block { rows: (r0, r1), cols: c } in &self.blocks {
                        let m = r1 - r0;
                        let (p, ds) = (&p[r0 * t..r1 * t], &mut ds[r0 * t..r1 * t]);
                        let (doh, qh) = (&doh[r0 * h * d..], &qh[r0 * d..]);
                        // dv += p^T dout
                        gemm_strided(dv_g, d, p, (1, t), doh, (h * d, 1), (c, m, d), Dst::Accumulate, 1.0);
                        // dp = dout v^T, then ds = p * (dp - rowsum(dp * p))
                        gemm_strided(ds, t, doh, (h * d, 1), vh, (1, d), (m, d, c), Dst::Overwrite, 1.0);
                        softmax_grad_rows(ds, p, t, c);
                        // dq = ds k * scale; dk += ds^T q * scale
                        let dq_rows = &mut dq_h[r0 * d..];
                        gemm_strided(dq_rows, d, ds, (t, 1), kh, (d, 1), (m, c, d), Dst::Overwrite, self.scale);
                        gemm_strided(dk_g, d, ds, (1, t), qh, (d, 1), (c, m, d), Dst::Accumulate, self.scale);
                    }
                }
            });
        (dq, dk, dv)
    }
}

/// ds = p * (dp - rowsum(dp * p)) in place over the first `c` columns of each row of
/// `ds` (dp on entry) and `p`, rows of stride `t`.
fn softmax_grad_rows(ds: &mut [f32], p: &[f32], t: usize, c: usize) {
    with_avx2(
        #[inline(always)]
        || {
            for (ds_row, p_row) in ds.chunks_mut(t).zip(p.chunks(t)) {
                let (ds_row, p_row) = (&mut ds_row[..c], &p_row[..c]);
                let dot = lanes_dot(ds_row, p_row);
                for j in 0..c {
                    ds_row[j] = p_row[j] * (ds_row[j] - dot);
                }
            }
        },
    )
}

/// softmax(row * scale + mask) in place; -inf mask entries get exactly 0.
fn masked_softmax(row: &mut [f32], mask: &[f32], scale: f32) {
    with_avx2(
        #[inline(always)]
        || masked_softmax_body(row, mask, scale),
    )
}

#[inline(always)]
fn masked_softmax_body(row: &mut [f32], mask: &[f32], scale: f32) {
    // each loop free of a serial reduction, so each vectorises; the two reductions run over
    // eight lanes
    for (x, &m) in row.iter_mut().zip(mask) {
        *x = *x * scale + m;
    }
    let max = lanes_reduce(row, f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0); // a fully masked row attends to nothing
        return;
    }
    for (x, &m) in row.iter_mut().zip(mask) {
        *x = if m == f32::NEG_INFINITY { 0.0 } else { fast_exp(*x - max) };
    }
    let inv = 1.0 / lanes_reduce(row, 0.0, |a, b| a + b);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// dst (m, n, rows `d_rs` apart) [+]= beta * lhs (m, k) @ rhs (k, n), each operand given as
/// (row stride, column stride). Operands out of their bounds are a bug: this panics.
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    dst: &mut [f32],
    d_rs: usize,
    lhs: &[f32],
    (l_rs, l_cs): (usize, usize),
    rhs: &[f32],
    (r_rs, r_cs): (usize, usize),
    (m, k, n): (usize, usize, usize),
    dst_is: Dst,
    beta: f32,
) {
    let lhs = Mat { data: lhs, rows: m, cols: k, rs: l_rs, cs: l_cs };
    let rhs = Mat { data: rhs, rows: k, cols: n, rs: r_rs, cs: r_cs };
    matmul_rows(dst, d_rs, lhs, rhs, beta, dst_is, 1).expect("attention operands in bounds");
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The composed reference: repeat kv heads, scores, mask, softmax, weighted sum.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: &Tensor) -> Tensor {
        let (b, h, t, d) = q.dims4().unwrap();
        let rep = h / k.dim(1).unwrap();
        let expand = |x: &Tensor| {
            let (b, kv, t, d) = x.dims4().unwrap();
            x.unsqueeze(2).unwrap().broadcast_as((b, kv, rep, t, d)).unwrap().reshape((b, kv * rep, t, d)).unwrap()
        };
        let scores = (q.matmul(&expand(k).t().unwrap()).unwrap() * scale).unwrap().broadcast_add(mask).unwrap();
        let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        p.matmul(&expand(v)).unwrap().transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) {
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / q.abs().max(1.0)).fold(0f32, f32::max);
        assert!(worst < 1e-5, "max relative difference {worst}");
    }

    /// Short and long sequences (several row blocks, the last one partial), causal and with
    /// a sliding window (masked columns at both ends of a row).
    #[test]
    fn equals_the_composed_ops_with_grouped_heads() {
        for (t, window) in [(7, Some(4)), (70, None), (70, Some(40))] {
            equals_the_composed_ops(t, window);
        }
    }

    fn equals_the_composed_ops(t: usize, window: Option<usize>) {
        let dev = Device::Cpu;
        let (b, h, kv, d) = (2, 4, 2, 8);
        let var = |shape: (usize, usize, usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (var((b, h, t, d)), var((b, kv, t, d)), var((b, kv, t, d)));
        let mask = crate::model::causal_mask(t, window, &dev).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (b, t, h * d), &dev).unwrap();
        let fused = fused_attention(&q, &k, &v, 0.3, &mask).unwrap();
        let reference = composed(&q, &k, &v, 0.3, &mask);
        close(&fused, &reference);
        let ga = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for x in [&q, &k, &v] {
            close(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        }
    }

    /// A mask per head (ALiBi's linear biases on a causal mask), over several row blocks.
    #[test]
    fn takes_a_mask_per_head() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 40, 4);
        let var = |shape: (usize, usize, usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (var((b, h, t, d)), var((b, h, t, d)), var((b, h, t, d)));
        let causal = crate::model::causal_mask(t, None, &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let per_head: Vec<f32> = [0.5f32, 0.25, 0.125]
            .iter()
            .flat_map(|&s| causal.iter().enumerate().map(move |(ij, &m)| m + s * (ij % t) as f32))
            .collect();
        let mask = Tensor::from_vec(per_head, (h, t, t), &dev).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (b, t, h * d), &dev).unwrap();
        let fused = fused_attention(&q, &k, &v, 0.5, &mask).unwrap();
        let reference = composed(&q, &k, &v, 0.5, &mask);
        close(&fused, &reference);
        let ga = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for x in [&q, &k, &v] {
            close(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        }
    }

    /// q, k, v as strided views into one packed (b, t, 3, h, d) projection, as GPT-2 splits it;
    /// two row blocks.
    #[test]
    fn reads_strided_views_in_place() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 45, 4);
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, 3, h, d), &dev).unwrap()).unwrap();
        let split = |i: usize| qkv.as_tensor().narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap();
        let (q, k, v) = (split(0), split(1), split(2));
        assert!(!q.is_contiguous());
        let mask = crate::model::causal_mask(t, None, &dev).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (b, t, h * d), &dev).unwrap();
        let fused = fused_attention(&q, &k, &v, 0.5, &mask).unwrap();
        let reference =
            composed(&q.contiguous().unwrap(), &k.contiguous().unwrap(), &v.contiguous().unwrap(), 0.5, &mask);
        close(&fused, &reference);
        let ga = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        close(ga.get(qkv.as_tensor()).unwrap(), gb.get(qkv.as_tensor()).unwrap());
    }
}

#[cfg(test)]
mod block_tests {
    use super::*;

    #[test]
    fn a_causal_mask_cuts_each_block_at_its_last_row() {
        let t = 70;
        let mask = crate::model::causal_mask(t, None, &candle_core::Device::Cpu).unwrap();
        let blocks = blocks_of(&mask.flatten_all().unwrap().to_vec1::<f32>().unwrap(), t);
        let cut: Vec<((usize, usize), usize)> = blocks.iter().map(|b| (b.rows, b.cols)).collect();
        assert_eq!(cut, [((0, 32), 32), ((32, 64), 64), ((64, 70), 70)]);
        let open = vec![0f32; t * t];
        assert!(blocks_of(&open, t).iter().all(|b| b.cols == t), "no mask: every column");
    }
}
