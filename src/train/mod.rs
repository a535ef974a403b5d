//! The fine-tuning loop: the same short LoRA run for every checkpoint.
//!
//! One update = `grad_accum` micro-batches (each loss sum divided by the loss tokens of the
//! whole update, as the HF Trainer does), global grad-norm clipping, then AdamW on the adapter weights only. The eval
//! loss on the held-out blocks is measured before the first update and every `eval_every`
//! updates. Step times are read after synchronising the device and exclude evaluation. This
//! module must not decide rankings or write reports.

pub mod head_loss;
pub mod loss;
pub mod optim;
pub mod shard;

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use crate::curve::{median, CurvePoint, Outcome, StepEvent};
use crate::data::{BatchOrder, Block, Blocks};
use crate::error::{CandleContext, Error, Result};
use crate::model::{CausalLm, LoadedModel};
use optim::{clip_grad_norm, AdamW, AdamWConfig};

/// Settings of one fine-tuning run (identical for every checkpoint of a scan).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSpec {
    pub optimizer: AdamWConfig,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub steps: usize,
    pub eval_every: usize,
    /// Updates at the start that are timed but not counted in the median step time.
    pub timing_warmup: usize,
}

/// Token ids and per-token loss weights of a batch of blocks.
pub struct Batch {
    pub ids: Tensor,    // (b, t) u32
    pub labels: Tensor, // (b, t) f32: 1 where the token carries loss
}

impl Batch {
    pub fn from_blocks(blocks: &[&Block], device: &Device) -> Result<Self> {
        let t = blocks.first().map(|b| b.ids.len()).unwrap_or(0);
        let ids: Vec<u32> = blocks.iter().flat_map(|b| b.ids.iter().copied()).collect();
        let labels: Vec<f32> = blocks.iter().flat_map(|b| b.labels.iter().map(|&l| l as u8 as f32)).collect();
        Ok(Batch {
            ids: Tensor::from_vec(ids, (blocks.len(), t), device).ctx("batch ids")?,
            labels: Tensor::from_vec(labels, (blocks.len(), t), device).ctx("batch labels")?,
        })
    }

    pub fn tokens(&self) -> usize {
        self.ids.elem_count()
    }

    /// Tokens that carry loss: every labelled token but each block's first (nothing predicts it).
    pub fn loss_tokens(&self) -> candle_core::Result<f64> {
        let t = self.labels.dim(1)?;
        self.labels.narrow(1, 1, t - 1)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
    }
}

/// Sum of the cross-entropy of every predicted token, and how many there are:
/// token i+1 is predicted from tokens 0..=i, as transformers does with labels = input_ids.
/// Row (b, i) of the logits is scored against token (b, i+1); the last position of each
/// block predicts nothing and has weight 0, so the logits are never copied.
pub fn loss_sum(logits: &Tensor, batch: &Batch) -> candle_core::Result<(Tensor, f64)> {
    let (b, t, v) = logits.dims3()?;
    let (targets, weights) = shifted_targets(batch)?;
    let losses = loss::weighted_cross_entropy(&logits.reshape((b * t, v))?, &targets, &weights)?; // (b*t,)
    let count = weights.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((losses.sum_all()?, count))
}

/// The same sum as [`loss_sum`], from the model's hidden states: on the CPU in f32 the
/// frozen head and the loss run fused ([`head_loss`]), never forming the logits; elsewhere
/// through them. `with_grad` is false for evaluation, which then skips the head's backward.
pub fn model_loss_sum(model: &dyn CausalLm, batch: &Batch, with_grad: bool) -> candle_core::Result<(Tensor, f64)> {
    let hidden = model.hidden_states(&batch.ids)?; // (b, t, h)
    let head_t = model.head_t();
    if !(hidden.device().is_cpu() && hidden.dtype() == DType::F32 && head_t.dtype() == DType::F32) {
        // transformers' loss upcasts the logits to f32
        let logits = crate::lora::frozen_matmul(&hidden, head_t)?.to_dtype(DType::F32)?;
        return loss_sum(&if with_grad { logits } else { logits.detach() }, batch);
    }
    let (b, t, h) = hidden.dims3()?;
    let (targets, weights) = shifted_targets(batch)?;
    let (targets, weights) = (targets.to_vec1::<u32>()?, weights.to_vec1::<f32>()?);
    let count = weights.iter().map(|&w| w as f64).sum();
    let losses = head_loss::head_cross_entropy(&hidden.reshape((b * t, h))?, head_t, targets, weights, with_grad)?; // (b*t,)
    Ok((losses.sum_all()?, count))
}

/// One training step's activations in bytes (f32), estimated from config.json: the blocks'
/// ([`crate::model::activation_bytes`]) and the fused head's logits buffers, one per chunk
/// that can run at once on this process's threads ([`head_loss::logits_buffer_bytes`]).
pub fn activation_bytes(config: &serde_json::Value, batch: usize, seq_len: usize) -> u64 {
    let vocab = config.get("vocab_size").and_then(|v| v.as_u64()).unwrap_or(0);
    let tokens = (batch as u64).saturating_mul(seq_len as u64);
    let width = usize::try_from(crate::model::hidden_size(config)).unwrap_or(usize::MAX);
    let sequences = shard::sequences_per_shard(shard::shard_tokens(width), seq_len).min(batch); // as `Batch::shards` cuts
    let shard = (sequences as u64).saturating_mul(seq_len as u64);
    let head = head_loss::logits_buffer_bytes(vocab, (tokens, shard), rayon::current_num_threads() as u64);
    crate::model::activation_bytes(config, batch, seq_len).saturating_add(head)
}

/// Targets (b*t,) u32 and loss weights (b*t,) f32: position i predicts token i+1; the last
/// position of each block predicts nothing and has weight 0.
fn shifted_targets(batch: &Batch) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, t) = batch.ids.dims2()?;
    let dev = batch.ids.device();
    let pad_ids = Tensor::zeros((b, 1), DType::U32, dev)?;
    let pad_w = Tensor::zeros((b, 1), DType::F32, dev)?;
    let targets = Tensor::cat(&[&batch.ids.narrow(1, 1, t - 1)?, &pad_ids], 1)?.flatten_all()?;
    let weights = Tensor::cat(&[&batch.labels.narrow(1, 1, t - 1)?, &pad_w], 1)?.flatten_all()?;
    Ok((targets, weights))
}

/// Trains one model's adapters.
pub struct Trainer<'a> {
    model: &'a LoadedModel,
    vars: Vec<Var>,
    opt: AdamW,
    spec: TrainSpec,
    updates: usize,
    shard_tokens: usize,
}

impl<'a> Trainer<'a> {
    pub fn new(model: &'a LoadedModel, spec: &TrainSpec) -> Result<Self> {
        let vars: Vec<Var> = model.adapters.iter().flat_map(|a| [a.a.clone(), a.b.clone()]).collect();
        let opt = AdamW::new(&vars, spec.optimizer)?;
        let shard_tokens = shard::shard_tokens(model.hidden_size());
        Ok(Trainer { model, vars, opt, spec: spec.clone(), updates: 0, shard_tokens })
    }

    /// Cuts each batch into shards of about `tokens` tokens ([`shard::shard_tokens`] of the
    /// model's width unless set): the losses change only by rounding, as the tests check.
    pub fn with_shard_tokens(mut self, tokens: usize) -> Self {
        self.shard_tokens = tokens;
        self
    }

    /// The constant schedule with linear warm-up of transformers (`lr * s / warmup` for update s < warmup).
    fn lr(&self) -> f64 {
        let w = self.spec.warmup_steps;
        let factor = if self.updates < w { self.updates as f64 / w.max(1) as f64 } else { 1.0 };
        self.spec.optimizer.lr * factor
    }

    /// One optimizer update over `micro` batches; returns the mean training loss and the grad norm.
    /// Each micro-batch's loss sum is divided by the loss tokens of the whole update, as the HF
    /// Trainer does (`num_items_in_batch`), so accumulating equals one large batch.
    pub fn step(&mut self, micro: &[Batch]) -> Result<(f64, f64)> {
        self.model.set_training(true);
        let tokens: f64 = micro.iter().map(Batch::loss_tokens).sum::<candle_core::Result<f64>>().ctx("loss tokens")?;
        if micro.is_empty() {
            return Err(Error::internal("no micro-batches"));
        }
        let (mut grads, mut loss_total) = (candle_core::backprop::GradStore::default(), 0.0);
        for batch in micro {
            let (loss, g) = shard::loss_and_grads(self.model, (batch, self.shard_tokens), tokens, &self.vars)?;
            loss_total += loss;
            grads = add_grads(grads, g, &self.vars)?;
        }
        let norm = clip_grad_norm(&mut grads, &self.vars, self.spec.max_grad_norm)?;
        let lr = self.lr();
        self.opt.step(&grads, lr)?;
        self.updates += 1;
        Ok((loss_total, norm))
    }

    /// Copies of what training has changed: adapters, optimizer, dropout generator, step count.
    fn state(&self) -> Result<TrainState> {
        let adapters = self
            .vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("adapter state")?;
        Ok(TrainState {
            adapters,
            optimizer: self.opt.state()?,
            dropout: self.model.dropout_state(),
            updates: self.updates,
        })
    }

    /// Continues from `state`, taken from a trainer of the same checkpoint and settings.
    fn restore(&mut self, state: TrainState) -> Result<()> {
        if state.adapters.len() != self.vars.len() {
            return Err(Error::Internal(format!(
                "paused run has {} adapter tensors, the model {}",
                state.adapters.len(),
                self.vars.len()
            )));
        }
        for (var, value) in self.vars.iter().zip(&state.adapters) {
            var.set(value).ctx("adapter state")?;
        }
        self.opt.restore(state.optimizer)?;
        self.model.set_dropout_state(state.dropout);
        self.updates = state.updates;
        Ok(())
    }

    /// The eval loss of `blocks` (dropout off).
    pub fn eval(&self, blocks: &[Block]) -> Result<f64> {
        eval_loss(self.model, blocks, self.spec.batch_size)
    }
}

/// Mean cross-entropy over every predicted token of `blocks`, in chunks of `batch` blocks.
pub fn eval_loss(model: &LoadedModel, blocks: &[Block], batch: usize) -> Result<f64> {
    model.set_training(false);
    let device = model.adapters.first().map(|a| a.a.device().clone()).unwrap_or(Device::Cpu);
    let (mut sum, mut count) = (0.0, 0.0);
    for chunk in blocks.chunks(batch.max(1)) {
        let refs: Vec<&Block> = chunk.iter().collect();
        let (s, c) = shard::eval_sum(model, &Batch::from_blocks(&refs, &device)?)?;
        sum += s;
        count += c;
    }
    Ok(sum / count.max(1.0))
}

/// Adds the gradients of `g` into `acc` for every trainable variable.
fn add_grads(
    mut acc: candle_core::backprop::GradStore,
    g: candle_core::backprop::GradStore,
    vars: &[Var],
) -> Result<candle_core::backprop::GradStore> {
    for var in vars {
        if let Some(new) = g.get(var.as_tensor()) {
            let sum = match acc.remove(var.as_tensor()) {
                Some(old) => (old + new).ctx("gradient accumulation")?,
                None => new.clone(),
            };
            acc.insert(var.as_tensor(), sum);
        }
    }
    Ok(acc)
}

/// Runs the full fine-tuning of one checkpoint: evals, updates, timings.
pub fn fine_tune(
    model: &LoadedModel,
    blocks: &Blocks,
    order: &BatchOrder,
    spec: &TrainSpec,
    on_step: &mut dyn FnMut(&StepEvent),
) -> Result<Outcome> {
    Ok(fine_tune_until(model, blocks, order, spec, None, spec.steps, on_step)?.outcome(spec))
}

/// A fine-tune stopped after some updates. It holds everything needed to continue exactly
/// as if it had not stopped (adapters, optimizer moments, dropout generator, curve so far),
/// but not the base weights: a paused run does not keep its checkpoint resident.
pub struct Paused {
    state: TrainState,
    pub curve: Vec<CurvePoint>,
    step_seconds: Vec<f64>,
    tokens_per_step: usize,
}

/// The trainer's side of a [`Paused`] run.
struct TrainState {
    adapters: Vec<Tensor>,
    optimizer: optim::AdamState,
    dropout: rand_chacha::ChaCha8Rng,
    updates: usize,
}

impl Paused {
    /// Updates done so far.
    pub fn steps_done(&self) -> usize {
        self.state.updates
    }

    /// The run so far, as a finished run's outcome.
    pub fn outcome(&self, spec: &TrainSpec) -> Outcome {
        let timed = &self.step_seconds[spec.timing_warmup.min(self.step_seconds.len().saturating_sub(1))..];
        Outcome {
            median_step_s: median(timed),
            curve: self.curve.clone(),
            step_seconds: self.step_seconds.clone(),
            tokens_per_step: self.tokens_per_step,
        }
    }
}

/// Runs updates up to update `until` (at most `spec.steps`): from the start, or from where
/// `from` (a run of the same checkpoint, seed and settings) paused. Returns the run paused
/// there; [`Paused::outcome`] gives the result.
pub fn fine_tune_until(
    model: &LoadedModel,
    blocks: &Blocks,
    order: &BatchOrder,
    spec: &TrainSpec,
    from: Option<Paused>,
    until: usize,
    on_step: &mut dyn FnMut(&StepEvent),
) -> Result<Paused> {
    let mut trainer = Trainer::new(model, spec)?;
    let device = model.adapters.first().map(|a| a.a.device().clone()).unwrap_or(Device::Cpu);
    let tokens_per_step = spec.batch_size * spec.grad_accum * blocks.seq_len;
    let (mut curve, mut step_seconds) = match from {
        Some(p) => {
            trainer.restore(p.state)?;
            (p.curve, p.step_seconds)
        }
        None => (
            vec![CurvePoint {
                step: 0,
                train_loss: None,
                eval_loss: Some(trainer.eval(&blocks.eval)?),
                elapsed_s: 0.0,
            }],
            Vec::with_capacity(spec.steps),
        ),
    };
    let mut elapsed_s = curve.last().map_or(0.0, |p| p.elapsed_s);
    for step in trainer.updates + 1..=until.min(spec.steps) {
        let micro = micro_batches(blocks, order, spec, step - 1, &device)?;
        device.synchronize().ctx("device synchronize")?;
        let start = Instant::now();
        let (loss, _norm) = trainer.step(&micro)?;
        device.synchronize().ctx("device synchronize")?;
        step_seconds.push(start.elapsed().as_secs_f64());
        if !loss.is_finite() {
            return Err(Error::Diverged { loss, step });
        }
        crate::interrupt::check()?; // the run is abandoned: a partial curve would mislead
        let eval_loss = is_eval_step(step, spec).then(|| trainer.eval(&blocks.eval)).transpose()?;
        elapsed_s += step_seconds[step - 1];
        curve.push(CurvePoint { step, train_loss: Some(loss), eval_loss, elapsed_s });
        on_step(&StepEvent {
            step,
            steps: spec.steps,
            train_loss: loss,
            eval_loss,
            step_s: step_seconds[step - 1],
            tokens: tokens_per_step,
        });
    }
    Ok(Paused { state: trainer.state()?, curve, step_seconds, tokens_per_step })
}

fn is_eval_step(step: usize, spec: &TrainSpec) -> bool {
    step == spec.steps || (spec.eval_every > 0 && step.is_multiple_of(spec.eval_every))
}

/// The micro-batches of update `update` (0-based), in the seeded order.
fn micro_batches(
    blocks: &Blocks,
    order: &BatchOrder,
    spec: &TrainSpec,
    update: usize,
    device: &Device,
) -> Result<Vec<Batch>> {
    (0..spec.grad_accum)
        .map(|j| {
            let refs: Vec<&Block> =
                order.batch(update * spec.grad_accum + j).iter().map(|&i| &blocks.train[i]).collect();
            Batch::from_blocks(&refs, device)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle-core's backward, as vendored (vendor/README.md), stores a tensor's first
    /// gradient as it is: later uses must still be added onto it, and a gradient that arrives
    /// as a broadcast view (through a sum) must be stored contiguous, as the add made it.
    #[test]
    fn the_backward_pass_sums_every_use_of_a_tensor_and_stores_contiguous_gradients() {
        let values = [0.5f32, -1.0, 2.0, 3.0, -0.25, 1.5];
        let x = Var::from_vec(values.to_vec(), (2, 3), &Device::Cpu).unwrap();
        let t = x.as_tensor();
        let twice = (t * 2.0).unwrap().sum_all().unwrap();
        let loss = ((twice + t.sqr().unwrap().sum_all().unwrap()).unwrap() + t.sum_all().unwrap()).unwrap();
        let grad = loss.backward().unwrap().remove(t).unwrap();
        let want: Vec<f32> = values.iter().map(|v| 2.0 + 2.0 * v + 1.0).collect();
        assert_eq!(grad.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let once = t.sum_all().unwrap().backward().unwrap().remove(t).unwrap();
        assert!(once.is_contiguous(), "a broadcast gradient stored as a view");
    }

    /// The head's part of the estimate: one logits buffer per chunk that can run at once, a
    /// chunk being at most one shard of whole sequences (about 256 tokens below hidden 512,
    /// 512 from it on) and at most 512 rows.
    #[test]
    fn the_estimate_counts_a_logits_buffer_per_running_chunk_of_a_shard() {
        let threads = rayon::current_num_threads() as u64;
        let head = |hidden: u64, seq: usize| {
            let config = serde_json::json!({ "hidden_size": hidden, "vocab_size": 1000 });
            activation_bytes(&config, 8, seq) - crate::model::activation_bytes(&config, 8, seq)
        };
        let buffers = |rows: u64, chunks: u64| threads.min(chunks) * rows * 1000 * 4;
        assert_eq!(head(128, 128), buffers(256, 4)); // 4 shards of 2 sequences
        assert_eq!(head(512, 128), buffers(512, 2)); // 2 shards of 4
        assert_eq!(head(128, 1024), buffers(512, 16)); // 8 shards of 1 sequence, 2 chunks each
        assert_eq!(head(512, 100), buffers(500, 2)); // shards of 5 sequences and of 3
    }
}
