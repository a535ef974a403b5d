//! Data parallelism inside one batch, on the CPU.
//!
//! A batch is cut into shards of whole sequences, about [`shard_tokens`] tokens each. Each
//! shard's forward and backward run on a thread of their own, with every matrix product and
//! kernel inside them working on that shard alone, and the shards' adapter gradients are then
//! summed in shard order. Splitting every product of a small model over two threads left them
//! waiting on each other between operations (a third of a 4 x 128 model's step at 2 threads);
//! whole shards keep each thread busy for a full forward and backward. Where the pool has more
//! threads than a batch has shards, each shard's products split over its share of them.
//!
//! The cut depends on the batch and the model's width only, never on the thread count, and the
//! sums run in a fixed order (a product split over threads divides its output, not its depth),
//! so a run's losses are the same on 1 thread or 16. Where dropout draws masks, the
//! shards run one after another (the masks come from one seeded stream, in order); on a GPU
//! the batch stays whole. This module must not change what is computed: the loss of a batch
//! is the sum of its shards' losses, each divided by the same token count.

use candle_core::backprop::GradStore;
use candle_core::{DType, Var};
use rayon::prelude::*;

use super::{add_grads, model_loss_sum, Batch};
use crate::error::{CandleContext, Result};
use crate::model::LoadedModel;

/// Tokens per shard of a model `hidden` wide: 256, or 512 from [`WIDE`] on.
///
/// The gemm crate packs a frozen weight into its panel layout on every product, so a shard pays
/// that copy once per weight: twice the tokens halve its share. At hidden 512 and 768 shards of
/// 512 ran faster (2 threads: 70m-body llama 2,345-2,473 tok/s against 2,211-2,262, gpt_neox
/// 2,876-2,985 against 2,762-2,910; 160m llama 445-478 against 413-446), while at hidden 128
/// the 256-token shards were faster (tiny llama 33,722-35,130 against 32,058-32,883) and held
/// less memory (1.38x the estimate of `train::activation_bytes` with 512, 0.88x with 256). At
/// 2 threads, 2 sequences of 128 were fastest for the 4 x 128 llama (17,500-19,000 tok/s,
/// against 15,700-19,600 for 4 sequences, 14,900-15,100 for 1 and 10,000-12,200 for the whole
/// batch of 8). Measured with `examples/step_timing time DIR STEPS WARMUP 128 SHARD`
/// (BENCHMARKS.md, "Shards by width").
pub fn shard_tokens(hidden: usize) -> usize {
    if hidden >= WIDE {
        512
    } else {
        256
    }
}

/// The width from which shards hold 512 tokens.
pub const WIDE: usize = 512;

/// Whole sequences of `seq_len` tokens in a shard of about `tokens` tokens: at least one.
pub fn sequences_per_shard(tokens: usize, seq_len: usize) -> usize {
    (tokens / seq_len.max(1)).max(1)
}

impl Batch {
    /// The batch cut into shards of whole sequences, about `tokens` tokens each (at least one
    /// sequence); the whole batch off the CPU.
    pub fn shards(&self, tokens: usize) -> candle_core::Result<Vec<Batch>> {
        let (b, t) = self.ids.dims2()?;
        let rows = if self.ids.device().is_cpu() { sequences_per_shard(tokens, t) } else { b.max(1) };
        (0..b).step_by(rows).map(|start| self.narrow(start, rows.min(b - start))).collect()
    }

    /// Sequences `start..start + len`.
    fn narrow(&self, start: usize, len: usize) -> candle_core::Result<Self> {
        Ok(Batch { ids: self.ids.narrow(0, start, len)?, labels: self.labels.narrow(0, start, len)? })
    }
}

/// The loss of `batch` (its loss sum divided by `tokens`) and the gradients of `vars`,
/// computed in shards of about `shard_tokens` tokens.
pub(super) fn loss_and_grads(
    model: &LoadedModel,
    (batch, shard_tokens): (&Batch, usize),
    tokens: f64,
    vars: &[Var],
) -> Result<(f64, GradStore)> {
    let shards = batch.shards(shard_tokens).ctx("batch shards")?;
    let in_turn = model.draws_dropout();
    let share = thread_share(if in_turn { 1 } else { shards.len() });
    let shard = |s: &Batch| -> Result<(f64, GradStore)> {
        crate::matmul::with_threads(share, || {
            let (sum, _) = model_loss_sum(model.model.as_ref(), s, true).ctx("forward pass")?;
            let loss = (sum / tokens.max(1.0)).ctx("loss")?;
            let value = loss.to_scalar::<f32>().ctx("loss")? as f64;
            Ok((value, loss.backward().ctx("backward pass")?))
        })
    };
    let done: Vec<Result<(f64, GradStore)>> =
        if in_turn { shards.iter().map(shard).collect() } else { shards.par_iter().map(shard).collect() };
    let (mut loss, mut grads) = (0.0, GradStore::default());
    for result in done {
        let (value, g) = result?;
        loss += value;
        grads = add_grads(grads, g, vars)?;
    }
    Ok((loss, grads))
}

/// The loss sum of `batch` and how many tokens carry loss, without gradients, shard by shard.
pub(super) fn eval_sum(model: &LoadedModel, batch: &Batch) -> Result<(f64, f64)> {
    let shards = batch.shards(shard_tokens(model.hidden_size())).ctx("batch shards")?;
    let share = thread_share(shards.len());
    let shard = |s: &Batch| -> Result<(f64, f64)> {
        crate::matmul::with_threads(share, || {
            let (sum, count) = model_loss_sum(model.model.as_ref(), s, false).ctx("eval forward pass")?;
            Ok((sum.to_dtype(DType::F64).and_then(|s| s.to_scalar::<f64>()).ctx("eval loss")?, count))
        })
    };
    let done: Vec<Result<(f64, f64)>> = shards.par_iter().map(shard).collect();
    done.into_iter().try_fold((0.0, 0.0), |(sum, count), r| r.map(|(s, c)| (sum + s, count + c)))
}

/// The threads each of `at_once` shards running at the same time may split its products over:
/// the pool's threads shared out, rounded up (an idle thread steals a part, a busy one leaves
/// it); all of them for shards that run one after another.
fn thread_share(at_once: usize) -> usize {
    rayon::current_num_threads().div_ceil(at_once.max(1))
}
