//! Cross-entropy of next-token prediction from logits, composed from candle's differentiable
//! ops: the reference path (tests) and the path for devices other than the CPU. On the CPU a
//! training step never forms the logits; see `head_loss.rs`.

use candle_core::{Tensor, D};

/// Per-row losses `w_i * (logsumexp(x_i) - x_i[t_i])` for logits (n, v), targets (n) u32 and
/// weights (n) f32.
pub fn weighted_cross_entropy(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    (picked * weights)?.neg()
}
