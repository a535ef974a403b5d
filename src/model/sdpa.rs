//! The scaled dot-product attention kernel, softmax(q k^T * scale + mask) v, forward and
//! backward, over (b, heads, t, d) views of f32 data on the CPU.
//!
//! Composed from candle ops this is about ten graph nodes over (b, heads, t, t) tensors
//! (scores, scaled, masked, the softmax's five steps, the transposed output) plus copies of
//! repeated key/value heads for grouped-query attention. Here each batch row (forward) or each
//! (batch, key/value head) group (backward) is one task: per query head two small matmuls
//! forward and four backward, the probabilities kept for the backward pass, and the output
//! written straight into the (b, t, heads * d) layout the output projection reads.
//! Grouped-query heads are never copied: the key/value gradients of a group are summed in
//! place. The candle op that feeds it lives in `qkv_attention.rs`; this module must not know
//! about rotary embeddings, projections or candle's graph.

use std::mem::MaybeUninit;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::math::{fast_exp, lanes_dot, lanes_reduce, with_avx2};
use crate::matmul::{matmul_rows, product_rows, Dst, Mat};
use crate::uninit::written;

/// Whether the fused op applies (CPU, f32).
pub fn applies(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32
}

/// Batch rows, query heads, key/value heads, positions and head size.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub b: usize,
    pub h: usize,
    pub kv: usize,
    pub t: usize,
    pub d: usize,
}

impl Dims {
    /// Query heads per key/value head.
    fn rep(&self) -> usize {
        self.h / self.kv
    }
}

/// The attention arithmetic over (b, heads, t, d) views: the forward pass, which returns
/// the probabilities its backward needs, and the backward pass.
pub(super) struct Kernel {
    dims: Dims,
    scale: f32,
    /// (t, t) or (h, t, t), additive; -inf entries get probability exactly 0.
    mask: Vec<f32>,
    /// The mask's row blocks; columns past a block's `cols` are never computed (they stay 0).
    blocks: Vec<Block>,
}

/// A (b, heads, t, d) tensor read through its layout: any strides, no copy.
pub(super) struct View<'a> {
    pub data: &'a [f32],
    pub start: usize,
    pub stride: [usize; 4],
}

impl<'a> View<'a> {
    /// A contiguous (b, heads, t, d) buffer.
    pub fn contiguous(data: &'a [f32], (heads, t, d): (usize, usize, usize)) -> Self {
        View { data, start: 0, stride: [heads * t * d, t * d, d, 1] }
    }

    /// Head (b, h) as a (t, d) matrix: its data from the first element, and (row, column) strides.
    fn head(&self, b: usize, h: usize) -> (&'a [f32], (usize, usize)) {
        (&self.data[self.start + b * self.stride[0] + h * self.stride[1]..], (self.stride[2], self.stride[3]))
    }
}

/// A head's (t, d) matrix and its (row, column) strides.
type Operand<'a> = (&'a [f32], (usize, usize));

impl Kernel {
    /// The kernel for `dims` with an additive mask (t, t), or one per head (h, t, t) (ALiBi's
    /// slopes). Every head's mask must hide the same entries (-inf).
    pub fn new(dims: Dims, scale: f64, mask: &Tensor) -> candle_core::Result<Self> {
        let Dims { h, t, .. } = dims;
        if mask.dims() != [t, t] && mask.dims() != [h, t, t] {
            candle_core::bail!("attention: a mask {:?} for {h} heads over {t} positions", mask.dims());
        }
        let mask = mask.flatten_all()?.to_vec1::<f32>()?;
        let blocks = blocks_of(&mask, t);
        Ok(Kernel { dims, scale: scale as f32, mask, blocks })
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// The probabilities (b, h, t, t) and the output (b, t, h * d); one task per batch row,
    /// whose output rows (t, h * d) are contiguous.
    pub fn forward(&self, q: &View, k: &View, v: &View) -> (Vec<f32>, Vec<f32>) {
        let Dims { b, h, t, d, .. } = self.dims;
        let mut probs = vec![0f32; b * h * t * t]; // zero past each block's last visible column
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(t * h * d).zip(probs.par_chunks_mut(h * t * t)).enumerate().for_each(
                |(bi, (out_b, probs_b))| {
                    for (hi, p) in probs_b.chunks_mut(t * t).enumerate() {
                        let kvi = hi / self.dims.rep();
                        let qkv = (q.head(bi, hi), k.head(bi, kvi), v.head(bi, kvi));
                        self.head_forward(hi, qkv, p, &mut out_b[hi * d..]);
                    }
                },
            )
        };
        // SAFETY: every row block of every head writes its d columns of each of its rows, and
        // the blocks cover all t rows
        let out = unsafe { written(b * t * h * d, fill) };
        (probs, out)
    }

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
    fn head_forward(
        &self,
        hi: usize,
        (q, k, v): (Operand, Operand, Operand),
        p: &mut [f32],
        out: &mut [MaybeUninit<f32>],
    ) {
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
            product_strided(&mut out[r0 * h * d..], h * d, p, (t, 1), v, vs, (m, c, d), 1.0);
        }
    }

    /// dq (b, h, t, d), dk and dv (b, kv, t, d) from the saved probabilities and dL/dout
    /// (b, t, h * d); one task per (batch, key/value head), which owns that head's dk and dv.
    pub fn backward(&self, probs: &[f32], q: &View, k: &View, v: &View, dout: &[f32]) -> [Vec<f32>; 3] {
        let Dims { b, h, kv, t, d } = self.dims;
        let mut dk = vec![0f32; b * kv * t * d]; // accumulated over the row blocks
        let mut dv = vec![0f32; b * kv * t * d];
        let rep = self.dims.rep();
        let fill = |dq: &mut [MaybeUninit<f32>]| {
            dq.par_chunks_mut(rep * t * d)
                .zip(dk.par_chunks_mut(t * d))
                .zip(dv.par_chunks_mut(t * d))
                .enumerate()
                .for_each(|(g, ((dq_g, dk_g), dv_g))| {
                    let (bi, kvi) = (g / kv, g % kv);
                    let (kh, vh) = (k.head(bi, kvi), v.head(bi, kvi));
                    let mut ds = vec![0f32; t * t];
                    for (r, dq_h) in dq_g.chunks_mut(t * d).enumerate() {
                        let hi = kvi * rep + r;
                        let p = &probs[(bi * h + hi) * t * t..][..t * t];
                        let qh = q.head(bi, hi);
                        let doh = &dout[bi * t * h * d + hi * d..];
                        self.head_backward((p, doh, qh, kh, vh), &mut ds, dq_h, dk_g, dv_g);
                    }
                })
        };
        // SAFETY: every row block of every query head writes its rows of dq, and the blocks
        // cover all t rows
        let dq = unsafe { written(b * h * t * d, fill) };
        [dq, dk, dv]
    }

    /// One query head's backward over its row blocks: dq_h written, dk and dv (its
    /// key/value head's) accumulated; `ds` is (t, t) scratch.
    fn head_backward(
        &self,
        (p, doh, (q, qs), (k, ks), (v, vs)): (&[f32], &[f32], Operand, Operand, Operand),
        ds: &mut [f32],
        dq_h: &mut [MaybeUninit<f32>],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let Dims { h, t, d, .. } = self.dims;
        for &Block { rows: (r0, r1), cols: c } in &self.blocks {
            let m = r1 - r0;
            let (p, ds) = (&p[r0 * t..r1 * t], &mut ds[r0 * t..r1 * t]);
            let (doh, q) = (&doh[r0 * h * d..], &q[r0 * qs.0..]);
            // dv += p^T dout
            gemm_strided(dv, d, p, (1, t), doh, (h * d, 1), (c, m, d), Dst::Accumulate, 1.0);
            // dp = dout v^T, then ds = p * (dp - rowsum(dp * p))
            gemm_strided(ds, t, doh, (h * d, 1), v, (vs.1, vs.0), (m, d, c), Dst::Overwrite, 1.0);
            softmax_grad_rows(ds, p, t, c);
            // dq = ds k * scale; dk += ds^T q * scale
            product_strided(&mut dq_h[r0 * d..], d, ds, (t, 1), k, ks, (m, c, d), self.scale);
            gemm_strided(dk, d, ds, (1, t), q, qs, (c, m, d), Dst::Accumulate, self.scale);
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
    let (lhs, rhs) = mats((lhs, (l_rs, l_cs)), (rhs, (r_rs, r_cs)), (m, k, n));
    matmul_rows(dst, d_rs, lhs, rhs, beta, dst_is, 1).expect("attention operands in bounds");
}

/// [`gemm_strided`] overwriting slots of a new matrix: dst = beta * lhs @ rhs.
#[allow(clippy::too_many_arguments)]
fn product_strided(
    dst: &mut [MaybeUninit<f32>],
    d_rs: usize,
    lhs: &[f32],
    (l_rs, l_cs): (usize, usize),
    rhs: &[f32],
    (r_rs, r_cs): (usize, usize),
    (m, k, n): (usize, usize, usize),
    beta: f32,
) {
    let (lhs, rhs) = mats((lhs, (l_rs, l_cs)), (rhs, (r_rs, r_cs)), (m, k, n));
    product_rows(dst, d_rs, lhs, rhs, beta, 1).expect("attention operands in bounds");
}

/// lhs (m, k) and rhs (k, n) as matrices over their data and (row, column) strides.
fn mats<'a>(
    (lhs, (l_rs, l_cs)): Operand<'a>,
    (rhs, (r_rs, r_cs)): Operand<'a>,
    (m, k, n): (usize, usize, usize),
) -> (Mat<'a>, Mat<'a>) {
    let lhs = Mat { data: lhs, rows: m, cols: k, rs: l_rs, cs: l_cs };
    (lhs, Mat { data: rhs, rows: k, cols: n, rs: r_rs, cs: r_cs })
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
