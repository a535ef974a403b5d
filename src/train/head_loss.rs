//! The frozen output head and the cross-entropy as one fused CPU op.
//!
//! The head turns 1024 hidden states into 1024 x 50k logits (200 MB in f32); applying the
//! head, then the loss, then their backward allocates that tensor several times per step
//! and touches it a dozen times, which costs more than the head's matmuls at small model
//! sizes. This op walks the rows in chunks that stay in cache: per chunk it computes the
//! logits, each row's log-sum-exp and picked logit, then (when training) the gradient of
//! the loss with respect to the logits and, with a second matmul, the gradient with respect
//! to the hidden states. Only that (tokens x hidden) gradient is kept for the backward
//! pass. The head is frozen, so no gradient for it is ever formed.
//!
//! It must not change what is computed: per-row losses equal
//! `weights_i * (logsumexp(h_i W^T) - (h_i W^T)[t_i])` to f32 rounding, as the composed
//! path in `loss.rs` (which other devices use) gives.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::math::{fast_exp, lanes_reduce};
use crate::matmul::{self, Dst, Mat};

/// Rows handled together. Each chunk streams the head twice (packed by the matmul on every
/// call), so fewer rows re-read and re-pack it more often; more rows need a larger logits
/// buffer per thread (rows x vocab f32: 103 MB at 512 rows and a 50k vocabulary). A batch is
/// trained in shards of 256 tokens, one thread each, or 512 for models 512 wide or wider
/// (`shard.rs`), so a shard of sequences up to 512 tokens long is one chunk. Against 256 rows
/// (two chunks per 512-token shard) it trained 2.5-7% more tokens/s at the 50k-vocabulary
/// shapes 512 and 768 wide (Pythia-70M and -160M shapes, 1 and 2 threads, medians of
/// after / before with `benches/ab_step.sh`; BENCHMARKS.md, "Head chunks of 512 rows"), as
/// 256 rows did against 128.
pub const ROWS_PER_CHUNK: usize = 512;

/// Bytes of the logits buffers the op keeps (one per thread that runs a chunk) for `tokens`
/// rows in shards of `shard` tokens, of a `vocab`-wide head on `threads` threads: the figure a
/// memory estimate adds. A chunk never spans two shards, so a shard shorter than
/// [`ROWS_PER_CHUNK`] is one chunk of its own size.
pub fn logits_buffer_bytes(vocab: u64, (tokens, shard): (u64, u64), threads: u64) -> u64 {
    let chunk = (ROWS_PER_CHUNK as u64).min(shard.max(1));
    let rows = threads.saturating_mul(chunk).min(tokens.next_multiple_of(chunk));
    rows.saturating_mul(vocab).saturating_mul(4)
}

/// Per-row weighted cross-entropy of `hidden (n, h) @ head_t (h, v)` against `targets` (n).
/// With `with_grad`, the result's backward yields dL/dhidden (and nothing for the head).
pub fn head_cross_entropy(
    hidden: &Tensor,
    head_t: &Tensor,
    targets: Vec<u32>,
    weights: Vec<f32>,
    with_grad: bool,
) -> candle_core::Result<Tensor> {
    let (n, h) = hidden.dims2()?;
    let (h2, v) = head_t.dims2()?;
    if h != h2 || targets.len() != n || weights.len() != n {
        candle_core::bail!(
            "head cross-entropy: hidden {n}x{h}, head {h2}x{v}, {} targets, {} weights",
            targets.len(),
            weights.len()
        );
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("head cross-entropy: target token {bad} is outside the vocabulary of {v}");
    }
    let head = head_t.t()?.contiguous()?; // (v, h), the checkpoint's own layout: no copy when it is already so
    let op = HeadCrossEntropy { head, targets, weights, with_grad, dhidden: Mutex::new(None) };
    let hidden = hidden.contiguous()?;
    if with_grad {
        hidden.apply_op1(op)
    } else {
        hidden.detach().apply_op1_no_bwd(&op)
    }
}

thread_local! {
    /// Each thread's logits buffer (rows x vocab, 103 MB at 512 rows and a 50k vocabulary),
    /// kept between chunks and steps: allocating it afresh each time cost a page fault per 4 kB.
    static LOGITS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct HeadCrossEntropy {
    head: Tensor, // (v, h)
    targets: Vec<u32>,
    weights: Vec<f32>,
    with_grad: bool,
    /// dL_i/dhidden_i for a unit upstream gradient, computed by the forward pass.
    dhidden: Mutex<Option<Tensor>>,
}

/// One chunk's results: per-row losses and, when training, its rows of dL/dhidden.
struct ChunkOut {
    losses: Vec<f32>,
    dhidden: Vec<f32>,
}

impl HeadCrossEntropy {
    /// Loss and gradient of the rows `start..start + rows`.
    fn chunk(&self, x: &[f32], w: &[f32], (h, v): (usize, usize), start: usize) -> ChunkOut {
        LOGITS.with_borrow_mut(|logits| self.chunk_in(logits, x, w, (h, v), start))
    }

    /// [`Self::chunk`] with `logits` as the scratch space for the chunk's logits.
    fn chunk_in(&self, logits: &mut Vec<f32>, x: &[f32], w: &[f32], (h, v): (usize, usize), start: usize) -> ChunkOut {
        let rows = x.len() / h;
        logits.resize(rows * v, 0.0); // every element is written by the matmul below
        let logits = &mut logits[..rows * v];
        matmul(logits, x, w, (rows, h, v), Rhs::Transposed);
        let mut losses = vec![0f32; rows];
        for (r, row) in logits.chunks_mut(v).enumerate() {
            let (t, wt) = (self.targets[start + r] as usize, self.weights[start + r]);
            if wt == 0.0 {
                row.fill(0.0);
                continue;
            }
            let picked = row[t];
            let lse = scaled_softmax(row, wt); // row now holds wt * softmax(logits)
            losses[r] = wt * (lse - picked);
            row[t] -= wt;
        }
        let mut dhidden = Vec::new();
        if self.with_grad {
            dhidden = vec![0f32; rows * h];
            matmul(&mut dhidden, logits, w, (rows, v, h), Rhs::AsStored);
        }
        ChunkOut { losses, dhidden }
    }
}

impl CustomOp1 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h) = layout.shape().dims2()?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("head cross-entropy needs contiguous hidden states".into()))?;
        let x = &storage.as_slice::<f32>()?[start..end];
        let (head_storage, head_layout) = self.head.storage_and_layout();
        let Storage::Cpu(head_cpu) = &*head_storage else {
            candle_core::bail!("head cross-entropy: the head is not on the CPU")
        };
        let (hs, he) = head_layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("head cross-entropy needs a contiguous head".into()))?;
        let w = &head_cpu.as_slice::<f32>()?[hs..he];
        let v = w.len() / h;
        let chunks: Vec<ChunkOut> = x
            .par_chunks(ROWS_PER_CHUNK * h)
            .enumerate()
            .map(|(c, xc)| self.chunk(xc, w, (h, v), c * ROWS_PER_CHUNK))
            .collect();
        let losses: Vec<f32> = chunks.iter().flat_map(|c| c.losses.iter().copied()).collect();
        if self.with_grad {
            let dh: Vec<f32> = chunks.into_iter().flat_map(|c| c.dhidden).collect();
            *self.dhidden.lock().map_err(|_| candle_core::Error::Msg("head cross-entropy: poisoned lock".into()))? =
                Some(Tensor::from_vec(dh, (n, h), &candle_core::Device::Cpu)?);
        }
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    /// dL/dhidden_i = g_i * (unit gradient of row i), from the forward pass.
    fn bwd(&self, _hidden: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let unit = self
            .dhidden
            .lock()
            .map_err(|_| candle_core::Error::Msg("head cross-entropy: poisoned lock".into()))?
            .take();
        let unit = unit.ok_or_else(|| {
            candle_core::Error::Msg("head cross-entropy: backward ran twice or without a training forward".into())
        })?;
        Ok(Some(unit.broadcast_mul(&grad.to_dtype(DType::F32)?.unsqueeze(1)?)?))
    }
}

/// How the (v, h) head is read by [`matmul`].
enum Rhs {
    /// As (h, v): its transpose, for logits = x @ W^T.
    Transposed,
    /// As (v, h), for dx = dlogits @ W.
    AsStored,
}

/// dst (m, n) = lhs (m, k) @ rhs, all row-major, on the calling thread. Operands of other
/// sizes are a bug: this panics.
fn matmul(dst: &mut [f32], lhs: &[f32], rhs: &[f32], (m, k, n): (usize, usize, usize), layout: Rhs) {
    let rhs = match layout {
        Rhs::Transposed => Mat::rows(rhs, n, k).t(),
        Rhs::AsStored => Mat::rows(rhs, k, n),
    };
    let sized = lhs.len() == m * k && rhs.data.len() == k * n;
    let done = sized && matmul::matmul(dst, Mat::rows(lhs, m, k), rhs, 1.0, Dst::Overwrite, 1).is_ok();
    assert!(done, "matmul operand sizes");
}

/// Replaces `row` by `scale * softmax(row)` and returns the row's log-sum-exp, with AVX2
/// where the CPU has it (the same loops and arithmetic, vectors twice as wide).
fn scaled_softmax(row: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature the function is compiled for.
        return unsafe { scaled_softmax_avx2(row, scale) };
    }
    scaled_softmax_portable(row, scale)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scaled_softmax_avx2(row: &mut [f32], scale: f32) -> f32 {
    scaled_softmax_portable(row, scale)
}

#[inline(always)]
fn scaled_softmax_portable(row: &mut [f32], scale: f32) -> f32 {
    let max = lanes_reduce(row, f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|x| *x = fast_exp(*x - max));
    let sum = lanes_reduce(row, 0.0, |a, b| a + b);
    let factor = scale / sum;
    row.iter_mut().for_each(|x| *x *= factor);
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Fused and composed paths agree on losses and on dL/dhidden, over several chunks and
    /// with rows that carry no loss.
    #[test]
    fn fused_equals_composed() {
        let dev = Device::Cpu;
        let (n, h, v) = (2 * ROWS_PER_CHUNK + 70, 16, 300); // two whole chunks and a part
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, h), &dev).unwrap()).unwrap();
        let head = Tensor::randn(0f32, 1.0, (v, h), &dev).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37) % v as u32).collect();
        let weights: Vec<f32> = (0..n).map(|i| if i % 5 == 4 { 0.0 } else { 0.5 + (i % 3) as f32 }).collect();
        let fused =
            head_cross_entropy(x.as_tensor(), &head.t().unwrap(), targets.clone(), weights.clone(), true).unwrap();
        let logits = x.as_tensor().matmul(&head.t().unwrap()).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let t = Tensor::new(targets.as_slice(), &dev).unwrap().unsqueeze(1).unwrap();
        let w = Tensor::new(weights.as_slice(), &dev).unwrap();
        let composed = (logp.gather(&t, 1).unwrap().squeeze(1).unwrap() * &w).unwrap().neg().unwrap();
        // errors relative to the largest magnitude: the gradients are sums over the vocabulary
        // of terms scaled by up to n, whose f32 rounding is absolute, not per element
        let close = |a: &Tensor, b: &Tensor| {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let scale = b.iter().fold(1f32, |m, q| m.max(q.abs()));
            let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / scale).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "max difference {worst} of the largest value {scale}");
            true
        };
        assert!(close(&fused, &composed));
        let scale = Tensor::arange(0f32, n as f32, &dev).unwrap();
        let ga = (fused.clone() * &scale).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (composed.clone() * &scale).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(close(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap()));
        let eval = head_cross_entropy(x.as_tensor(), &head.t().unwrap(), targets, weights, false).unwrap();
        assert!(close(&eval, &composed) && !eval.track_op());
    }

    /// One buffer per thread that runs a chunk: never more chunks than the rows make, and a
    /// shorter shard's buffer no larger than the shard.
    #[test]
    fn logits_buffers_counted_per_running_chunk() {
        let (rows, chunk) = (ROWS_PER_CHUNK as u64, ROWS_PER_CHUNK as u64 * 10 * 4);
        assert_eq!(logits_buffer_bytes(10, (4 * rows, rows), 2), 2 * chunk);
        assert_eq!(logits_buffer_bytes(10, (4 * rows, rows), 16), 4 * chunk);
        assert_eq!(logits_buffer_bytes(10, (4 * rows, 4 * rows), 16), 4 * chunk);
        assert_eq!(logits_buffer_bytes(10, (1, 1), 16), 10 * 4);
        assert_eq!(logits_buffer_bytes(10, (4 * rows, rows / 2), 2), chunk);
        assert_eq!(logits_buffer_bytes(10, (0, rows), 16), 0);
    }
}
