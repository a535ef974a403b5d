//! BLOOM (BigScience), as transformers' `modeling_bloom.py`: LayerNorm blocks, ALiBi instead
//! of position embeddings (a per-head linear bias on the attention scores), a fused
//! `query_key_value` interleaved per head (`[q_h | k_h | v_h]` for each head h), a LayerNorm
//! right after the word embeddings, a tanh-approximated GELU, and the head tied to the word
//! embeddings. Checkpoints are read with or without the `transformer.` prefix (BigScience
//! published both). `pretraining_tp` with `slow_but_exact` splits the output projection into
//! slices in transformers; the sum is the same up to rounding, so it is computed whole. This
//! file must not train or read task data.

use std::path::Path;

use candle_core::{DType, Tensor, D};
use serde::Deserialize;

use super::{causal_mask, divides, dropout_p, eos_of, linear, parse_config, positive, qkv_attention};
use super::{Activation, CausalLm, Embedding, LoadedModel, Norm, Packing, Parts};
use crate::checkpoint::weights::Weights;
use crate::dropout::Dropout;
use crate::error::Result;
use crate::lora::{AdapterInit, Linear, LoraCtx, LoraSpec};

/// config.json as transformers writes it for `bloom`: BigScience's own files say `n_embed`
/// (which wins over `hidden_size`, as in transformers).
#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    pub vocab_size: usize,
    pub hidden_size: Option<usize>,
    pub n_embed: Option<usize>,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    pub tie_word_embeddings: Option<bool>,
    pub layer_norm_epsilon: Option<f64>,
    pub apply_residual_connection_post_layernorm: Option<bool>,
    pub hidden_dropout: Option<f64>,
    pub attention_dropout: Option<f64>,
}

/// The checked settings the model is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub layer_norm_epsilon: f64,
    /// The residual is the normalised input rather than the input itself.
    pub residual_post_layernorm: bool,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    pub tie_word_embeddings: bool,
}

impl RawConfig {
    pub fn resolve(&self, dir: &Path) -> Result<Config> {
        let hidden = positive(dir, "hidden_size", self.n_embed.or(self.hidden_size).unwrap_or(0))?;
        let heads = positive(dir, "n_head", self.n_head)?;
        divides(dir, "hidden_size / n_head", heads, hidden)?;
        Ok(Config {
            vocab_size: positive(dir, "vocab_size", self.vocab_size)?,
            hidden_size: hidden,
            n_layer: positive(dir, "n_layer", self.n_layer)?,
            n_head: heads,
            layer_norm_epsilon: self.layer_norm_epsilon.unwrap_or(1e-5),
            residual_post_layernorm: self.apply_residual_connection_post_layernorm.unwrap_or(false),
            hidden_dropout: dropout_p(dir, "hidden_dropout", self.hidden_dropout, 0.0)?,
            attention_dropout: dropout_p(dir, "attention_dropout", self.attention_dropout, 0.0)?,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(true),
        })
    }
}

impl Config {
    /// Parameters of the base model.
    pub fn n_params(&self) -> usize {
        let (h, v) = (self.hidden_size, self.vocab_size);
        let layer = (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h) + 4 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + 2 * h + self.n_layer * layer + 2 * h + head
    }
}

/// ALiBi's slope per head, as transformers' `_get_alibi_slopes`: a geometric series from the
/// closest power of two below the head count, then every other slope of the next power.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    let closest = 1usize << heads.ilog2();
    let base = |n: usize| 2f32.powf(-(2f32.powf(-((n as f32).log2() - 3.0))));
    let (b, extra) = (base(closest), base(2 * closest));
    let mut slopes: Vec<f32> = (1..=closest).map(|p| b.powi(p as i32)).collect();
    slopes.extend((0..(heads - closest).min(closest)).map(|i| extra.powi(2 * i as i32 + 1)));
    slopes
}

/// The causal mask with each head's ALiBi bias, (heads, t, t): slope * key position where the
/// key is visible (softmax ignores the per-row constant the full slope * (j - i) would add).
fn alibi_mask(t: usize, slopes: &[f32], device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let causal = causal_mask(t, None, device)?.flatten_all()?.to_vec1::<f32>()?; // (t*t,)
    let mask: Vec<f32> =
        slopes.iter().flat_map(|&s| causal.iter().enumerate().map(move |(ij, &m)| m + s * (ij % t) as f32)).collect();
    Tensor::from_vec(mask, (slopes.len(), t, t), device)
}

struct Attention {
    query_key_value: Linear,
    dense: Linear,
    heads: usize,
    head_dim: usize,
    attention_dropout: Option<Dropout>,
    hidden_dropout: Option<Dropout>,
}

impl Attention {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Attention {
            query_key_value: linear(&w.pp("query_key_value"), &w.path("query_key_value"), h, 3 * h, true, ctx)?,
            dense: linear(&w.pp("dense"), &w.path("dense"), h, h, true, ctx)?,
            heads: cfg.n_head,
            head_dim: h / cfg.n_head,
            attention_dropout: ctx.dropout_site(cfg.attention_dropout),
            hidden_dropout: ctx.dropout_site(cfg.hidden_dropout),
        })
    }

    /// residual + dropout(dense(attention(x))).
    fn forward(&self, x: &Tensor, mask: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let qkv = self.query_key_value.forward(x)?; // (b, t, 3 hidden), interleaved per head
        let (scale, dropout) = (1.0 / (self.head_dim as f64).sqrt(), self.attention_dropout.as_ref());
        let y = match qkv.dtype() {
            DType::F32 => qkv_attention(&qkv, self.heads, Packing::PerHead, None, scale, mask, dropout)?,
            _ => {
                let (q, k, v) = Packing::PerHead.split(&qkv, self.heads)?;
                attention_rounded_once(&q, &k, &v, scale, mask, dropout)?
            }
        }; // (b, t, hidden)
        self.dense.forward_residual_dropped(&y, residual, self.hidden_dropout.as_ref())
    }
}

/// BLOOM's attention in bf16 as transformers computes it: `alibi.baddbmm(q, k^T, alpha=scale)`
/// forms scale * q k^T + alibi in f32 from a bf16 alibi tensor and rounds once; the softmax
/// runs in f32 and the probabilities go back to bf16.
fn attention_rounded_once(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &Tensor,
    dropout: Option<&Dropout>,
) -> candle_core::Result<Tensor> {
    let (dt, (b, h, t, d)) = (q.dtype(), q.dims4()?);
    let f32 = |x: &Tensor| x.contiguous()?.to_dtype(DType::F32);
    let alibi = mask.to_dtype(dt)?.to_dtype(DType::F32)?; // (h, t, t); the causal -inf survives
    let scores = (f32(q)?.matmul(&f32(k)?.t()?)? * scale)?.broadcast_add(&alibi)?; // (b, h, t, t)
    let scores = scores.to_dtype(dt)?.to_dtype(DType::F32)?;
    let probs = crate::dropout::apply(dropout, candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(dt)?)?;
    probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, t, h * d)) // (b, t, h*d)
}

struct Mlp {
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
    hidden_dropout: Option<Dropout>,
}

impl Mlp {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Mlp {
            dense_h_to_4h: linear(&w.pp("dense_h_to_4h"), &w.path("dense_h_to_4h"), h, 4 * h, true, ctx)?,
            dense_4h_to_h: linear(&w.pp("dense_4h_to_h"), &w.path("dense_4h_to_h"), 4 * h, h, true, ctx)?,
            hidden_dropout: ctx.dropout_site(cfg.hidden_dropout),
        })
    }

    /// residual + dropout(mlp(x)), with BLOOM's tanh GELU (FastGELU's formula).
    fn forward(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let projections = (&self.dense_h_to_4h, &self.dense_4h_to_h); // (h, 4h), (4h, h)
        Activation::GeluFast.mlp_residual(projections, x, residual, self.hidden_dropout.as_ref())
    }
}

struct Block {
    input_layernorm: Norm,
    self_attention: Attention,
    post_attention_layernorm: Norm,
    mlp: Mlp,
    residual_post_layernorm: bool,
}

impl Block {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_epsilon);
        Ok(Block {
            input_layernorm: Norm::layer(&w.pp("input_layernorm"), h, eps)?,
            self_attention: Attention::load(cfg, &w.pp("self_attention"), ctx)?,
            post_attention_layernorm: Norm::layer(&w.pp("post_attention_layernorm"), h, eps)?,
            mlp: Mlp::load(cfg, &w.pp("mlp"), ctx)?,
            residual_post_layernorm: cfg.residual_post_layernorm,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let ln = self.input_layernorm.forward(x)?;
        let h = self.self_attention.forward(&ln, mask, if self.residual_post_layernorm { &ln } else { x })?;
        let ln = self.post_attention_layernorm.forward(&h)?;
        self.mlp.forward(&ln, if self.residual_post_layernorm { &ln } else { &h })
    }
}

pub struct Model {
    word_embeddings: Embedding,
    word_embeddings_layernorm: Norm,
    h: Vec<Block>,
    ln_f: Norm,
    /// The head as (hidden, vocab): word_embeddings^T (tied, the default), or lm_head.weight^T.
    head_t: Tensor,
    slopes: Vec<f32>,
}

impl Model {
    pub fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        // BigScience's checkpoints come with and without the `transformer.` prefix
        let m = if w.contains("word_embeddings.weight") { w.clone() } else { w.pp("transformer") };
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_epsilon);
        let table = m.get("word_embeddings.weight", &[cfg.vocab_size, h])?;
        let blocks = (0..cfg.n_layer).map(|i| Block::load(cfg, &m.pp("h").pp(i), ctx)).collect::<Result<Vec<_>>>()?;
        let head_t = match cfg.tie_word_embeddings {
            true => table.t()?,
            false => w.get("lm_head.weight", &[cfg.vocab_size, h])?.t()?,
        };
        Ok(Model {
            head_t,
            word_embeddings: Embedding { table },
            word_embeddings_layernorm: Norm::layer(&m.pp("word_embeddings_layernorm"), h, eps)?,
            h: blocks,
            ln_f: Norm::layer(&m.pp("ln_f"), h, eps)?,
            slopes: alibi_slopes(cfg.n_head),
        })
    }
}

impl CausalLm for Model {
    fn hidden_states(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let mask = alibi_mask(t, &self.slopes, ids.device())?; // (heads, t, t)
        let mut x = self.word_embeddings_layernorm.forward(&self.word_embeddings.forward(ids)?)?; // (b, t, hidden)
        for block in &self.h {
            x = block.forward(&x, &mask)?;
        }
        self.ln_f.forward(&x) // (b, t, hidden)
    }

    fn head_t(&self) -> &Tensor {
        &self.head_t
    }
}

/// PEFT's default target for bloom, and every linear layer for "all-linear".
pub const DEFAULT_TARGETS: [&str; 1] = ["query_key_value"];
pub const ALL_LINEAR: [&str; 4] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];

pub fn load(
    dir: &Path,
    config: &serde_json::Value,
    w: Weights,
    spec: &LoraSpec,
    init: &AdapterInit,
    seed: u64,
) -> Result<LoadedModel> {
    let raw: RawConfig = parse_config(dir, config)?;
    let cfg = raw.resolve(dir)?;
    let mut ctx = LoraCtx::new(spec, &DEFAULT_TARGETS, &ALL_LINEAR, init, seed)?;
    let model = Model::load(&cfg, &w, &mut ctx)?;
    let parts = Parts {
        model_type: "bloom".into(),
        vocab_size: cfg.vocab_size,
        n_params: cfg.n_params(),
        // the embedding table is a lookup; the head (tied or not) is a matmul
        matmul_params: cfg.n_params() - if cfg.tie_word_embeddings { 0 } else { cfg.vocab_size * cfg.hidden_size },
        layers: cfg.n_layer,
        hidden: cfg.hidden_size,
        eos_token_id: eos_of(config),
        max_positions: None,
        base_dropout: [
            ("attention_dropout".to_string(), cfg.attention_dropout),
            ("hidden_dropout".to_string(), cfg.hidden_dropout),
        ]
        .into(),
    };
    super::finish(Box::new(model), ctx, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `_get_alibi_slopes` for 4, 6 and 8 heads.
    #[test]
    fn slopes_follow_transformers() {
        let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-7);
        assert!(close(&alibi_slopes(4), &[0.25, 0.0625, 0.015625, 0.00390625]));
        let s6 = alibi_slopes(6);
        assert!(close(&s6[..4], &[0.25, 0.0625, 0.015625, 0.00390625]), "{s6:?}");
        assert!(close(&s6[4..], &[0.5, 0.125]), "{s6:?}");
        assert!(close(&alibi_slopes(8)[..2], &[0.5, 0.25]));
    }
}
