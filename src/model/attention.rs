//! Causal self-attention as transformers' eager attention computes it: the additive causal
//! mask (with Mistral's sliding window), grouped-query heads, and dropout on the attention
//! probabilities, from candle's differentiable ops: the path on other devices and dtypes, and
//! under attention dropout (on the CPU in f32 without dropout, `qkv_attention.rs` runs the fused
//! kernel instead). It must not hold projections or weights: an architecture passes q, k and v.

use candle_core::{DType, Device, Tensor, D};

use crate::dropout::Dropout;

/// Additive causal mask (t, t): 0 where key j may be seen from query i, -inf elsewhere.
/// `window` limits how far back a query sees (Mistral's sliding window: i - j < window).
pub fn causal_mask(t: usize, window: Option<usize>, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| (i, j)))
        .map(|(i, j)| {
            let visible = j <= i && window.is_none_or(|w| i - j < w);
            if visible {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Tensor::from_vec(mask, (t, t), device)
}

/// softmax(q k^T * scale + mask) v for q (b, h, t, d) and k, v (b, kv, t, d), kv dividing h,
/// with `dropout` on the attention probabilities while training (transformers' eager
/// attention).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &Tensor,
    dropout: Option<&Dropout>,
) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let (k, v) = (repeat_kv(&k.contiguous()?, h / kv)?, repeat_kv(&v.contiguous()?, h / kv)?); // (b, h, t, d)
    let scores = q.contiguous()?.matmul(&k.t()?)?; // (b, h, t, t)
                                                   // in bf16 the scale multiplies in f32 and the product rounds once (candle's bf16 affine
                                                   // would round the scale itself); the softmax runs in f32 and the probabilities go back to
                                                   // q's dtype, as transformers' eager attention does
    let scores = match q.dtype() {
        DType::F32 => (scores * scale)?,
        dt => scores.to_dtype(DType::F32)?.affine(scale, 0.0)?.to_dtype(dt)?,
    };
    let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(q.dtype())?;
    let probs = crate::dropout::apply(dropout, probs)?;
    let out = probs.matmul(&v)?; // (b, h, t, d)
    out.transpose(1, 2)?.reshape((b, t, h * d)) // (b, t, h*d)
}

/// GQA: each key/value head serves `n_rep` query heads.
fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, n_rep, t, d))?.reshape((b, kv * n_rep, t, d))
}
