//! OLMo, OLMo 2 and OLMo 3 (AI2), as transformers' `modeling_olmo.py`, `modeling_olmo2.py` and
//! `modeling_olmo3.py`.
//!
//! Both are Llama-shaped decoders (grouped-query attention with rotary embeddings, a SwiGLU
//! MLP without biases) that differ in their norms:
//! - `olmo`: pre-norm blocks whose LayerNorm has no weight and no bias (eps fixed at 1e-5, not
//!   read from the config), and `clip_qkv`, which clamps q, k and v to [-clip, clip] before
//!   the heads are split;
//! - `olmo2`: post-norm blocks, `x + norm(attn(x))` then `h + norm(mlp(h))`, with RMSNorm
//!   (`rms_norm_eps`), and q and k RMS-normalised over the whole projected width (all heads
//!   together) before the rotary embedding;
//! - `olmo3`: OLMo 2's blocks, each layer attending fully or through a sliding window as its
//!   config's `layer_types` says (by default three sliding layers, then a full one), with
//!   rotary settings per layer type (`rope_parameters.full_attention` and
//!   `.sliding_attention`; a transformers 4 `rope_scaling` applies to full attention only).
//!
//! PEFT has no default targets for either (it asks for `target_modules`); plasticity adapts
//! q_proj and v_proj, as for Llama, and writes that list into exported adapters. This file
//! must not train or read task data.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Deserialize;

use super::{attention, causal_mask, divides, dropout_p, eos_of, linear, parse_config, positive};
use super::{projections_attention, rope_settings};
use super::{Activation, CausalLm, Embedding, LoadedModel, Norm, Parts, Rope, RopeParameters};
use crate::checkpoint::weights::Weights;
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::lora::{AdapterInit, Linear, LoraCtx, LoraSpec};

/// config.json as transformers writes it for `olmo` and `olmo2` (4.x or 5.x).
#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub hidden_act: Option<String>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    /// Flat, or (OLMo 3) one set per layer type.
    pub rope_parameters: Option<serde_json::Value>,
    pub attention_bias: Option<bool>,
    pub layer_types: Option<Vec<String>>,
    pub sliding_window: Option<usize>,
    pub clip_qkv: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub max_position_embeddings: Option<usize>,
    pub attention_dropout: Option<f64>,
}

/// Which of the two block layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Pre-norm, non-parametric LayerNorm, optional clip_qkv.
    Olmo,
    /// Post-norm RMSNorm, q/k norms.
    Olmo2,
    /// OLMo 2's blocks with per-layer sliding windows and per-layer-type rotary settings.
    Olmo3,
}

/// The checked settings the model is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub variant: Variant,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub act: Activation,
    /// OLMo 2's RMSNorm eps (OLMo's LayerNorm always uses 1e-5).
    pub rms_norm_eps: f64,
    /// Rotary settings of full-attention layers (every layer before OLMo 3).
    pub rope: super::RopeConfig,
    /// Rotary settings of sliding-window layers (OLMo 3).
    pub sliding_rope: super::RopeConfig,
    /// Per layer: attends through a window of this many keys (itself included), or fully.
    pub windows: Vec<Option<usize>>,
    pub attention_bias: bool,
    pub clip_qkv: Option<f64>,
    pub tie_word_embeddings: bool,
    pub attention_dropout: f64,
}

/// OlmoLayerNorm's eps, a constant in transformers.
const OLMO_LAYER_NORM_EPS: f64 = 1e-5;

impl RawConfig {
    pub fn resolve(&self, dir: &Path) -> Result<Config> {
        let variant = match self.model_type.as_str() {
            "olmo" => Variant::Olmo,
            "olmo2" => Variant::Olmo2,
            "olmo3" => Variant::Olmo3,
            other => return Err(Error::input(dir.join("config.json"), format!("not an OLMo model_type: {other:?}"))),
        };
        let heads = positive(dir, "num_attention_heads", self.num_attention_heads)?;
        let kv = positive(dir, "num_key_value_heads", self.num_key_value_heads.unwrap_or(heads))?;
        divides(dir, "num_attention_heads / num_key_value_heads", kv, heads)?;
        let hidden = positive(dir, "hidden_size", self.hidden_size)?;
        let head_dim = match self.head_dim {
            Some(d) => positive(dir, "head_dim", d)?,
            None => {
                divides(dir, "hidden_size / num_attention_heads", heads, hidden)?;
                hidden / heads
            }
        };
        Ok(Config {
            variant,
            vocab_size: positive(dir, "vocab_size", self.vocab_size)?,
            hidden_size: hidden,
            intermediate_size: positive(dir, "intermediate_size", self.intermediate_size)?,
            num_hidden_layers: positive(dir, "num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            act: Activation::parse(dir, self.hidden_act.as_deref().unwrap_or("silu"))?,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-5),
            rope: self.rope(dir, variant, "full_attention")?,
            sliding_rope: self.rope(dir, variant, "sliding_attention")?,
            windows: self.windows(dir, variant)?,
            attention_bias: self.attention_bias.unwrap_or(false),
            clip_qkv: self.clip(dir, variant)?,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_dropout: dropout_p(dir, "attention_dropout", self.attention_dropout, 0.0)?,
        })
    }

    /// The rotary settings of one layer type: OLMo 3 writes `rope_parameters` per type (a
    /// transformers 4 `rope_scaling` applies to full attention only); the others write one set.
    fn rope(&self, dir: &Path, variant: Variant, layer_type: &str) -> Result<super::RopeConfig> {
        let path = dir.join("config.json");
        let parse = |v: &serde_json::Value| -> Result<RopeParameters> {
            serde_json::from_value(v.clone()).map_err(|e| Error::input(&path, format!("rope_parameters: {e}")))
        };
        let params = self.rope_parameters.as_ref();
        let per_type = params.and_then(|v| v.get(layer_type));
        let flat = params.filter(|v| v.get("full_attention").is_none() && v.get("sliding_attention").is_none());
        let (parameters, scaling) = match (per_type, flat) {
            (Some(p), _) => (Some(parse(p)?), None),
            (None, Some(p)) => (Some(parse(p)?), self.rope_scaling.clone()),
            (None, None) if layer_type == "full_attention" => (None, self.rope_scaling.clone()),
            (None, None) => (None, None),
        };
        let default_theta = if variant == Variant::Olmo3 { 500000.0 } else { 10000.0 };
        rope_settings(dir, self.rope_theta, &scaling, &parameters, default_theta)
    }

    /// Each layer's sliding window: OLMo 3's `layer_types` (by default every fourth layer full),
    /// each `sliding_attention` layer with `sliding_window` keys; none before OLMo 3.
    fn windows(&self, dir: &Path, variant: Variant) -> Result<Vec<Option<usize>>> {
        let n = self.num_hidden_layers;
        if variant != Variant::Olmo3 {
            return Ok(vec![None; n]);
        }
        let path = dir.join("config.json");
        let default = |i: usize| if !(i + 1).is_multiple_of(4) { "sliding_attention" } else { "full_attention" };
        let types: Vec<String> =
            self.layer_types.clone().unwrap_or_else(|| (0..n).map(|i| default(i).into()).collect());
        if types.len() != n {
            return Err(Error::input(&path, format!("layer_types has {} entries for {n} layers", types.len())));
        }
        let window = positive(dir, "sliding_window", self.sliding_window.unwrap_or(4096))?;
        let of = |t: &String| match t.as_str() {
            "full_attention" => Ok(None),
            "sliding_attention" => Ok(Some(window)),
            other => Err(Error::input(
                &path,
                format!("layer type {other:?} is not supported (supported: full_attention, sliding_attention)"),
            )),
        };
        types.iter().map(of).collect()
    }

    /// OLMo's clip_qkv (positive when set); OLMo 2's attention has no clipping.
    fn clip(&self, dir: &Path, variant: Variant) -> Result<Option<f64>> {
        match (variant, self.clip_qkv) {
            (Variant::Olmo, Some(c)) if !(c.is_finite() && c > 0.0) => {
                Err(Error::input(dir.join("config.json"), format!("clip_qkv must be a positive number, not {c}")))
            }
            (Variant::Olmo, clip) => Ok(clip),
            (Variant::Olmo2 | Variant::Olmo3, _) => Ok(None),
        }
    }
}

impl Config {
    /// Parameters of the base model.
    pub fn n_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv + h } else { 0 };
        let norms = match self.variant {
            Variant::Olmo => 0,
            Variant::Olmo2 | Variant::Olmo3 => q + kv + 2 * h,
        };
        let layer = h * q + 2 * h * kv + q * h + bias + 3 * h * i + norms;
        let final_norm = if self.variant == Variant::Olmo { 0 } else { h };
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + final_norm + head
    }

    /// A norm over `width` features named `name`: OLMo's weightless LayerNorm, or OLMo 2's RMSNorm.
    fn norm(&self, w: &Weights, width: usize) -> Result<Norm> {
        match self.variant {
            Variant::Olmo => {
                let (dtype, device) = (w.dtype(), w.device());
                let ones = Tensor::ones(width, dtype, device).map_err(|e| Error::internal(e.to_string()))?;
                let zeros = Tensor::zeros(width, dtype, device).map_err(|e| Error::internal(e.to_string()))?;
                Ok(Norm::Layer { weight: ones, bias: zeros, eps: OLMO_LAYER_NORM_EPS })
            }
            Variant::Olmo2 | Variant::Olmo3 => Norm::rms_scaled_in_f32(w, width, self.rms_norm_eps),
        }
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// OLMo 2: RMSNorm over all heads of q, and of k.
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    clip_qkv: Option<f64>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope: Rope,
    attention_dropout: Option<Dropout>,
}

impl Attention {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx, sliding: bool) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let bias = cfg.attention_bias;
        let lin = |name: &str, i, o, ctx: &mut LoraCtx| linear(&w.pp(name), &w.path(name), i, o, bias, ctx);
        let olmo2 = cfg.variant != Variant::Olmo;
        Ok(Attention {
            q_proj: lin("q_proj", h, q, ctx)?,
            k_proj: lin("k_proj", h, kv, ctx)?,
            v_proj: lin("v_proj", h, kv, ctx)?,
            o_proj: lin("o_proj", q, h, ctx)?,
            q_norm: olmo2.then(|| cfg.norm(&w.pp("q_norm"), q)).transpose()?,
            k_norm: olmo2.then(|| cfg.norm(&w.pp("k_norm"), kv)).transpose()?,
            clip_qkv: cfg.clip_qkv,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
            rope: Rope::new(d, if sliding { &cfg.sliding_rope } else { &cfg.rope }),
            attention_dropout: ctx.dropout_site(cfg.attention_dropout),
        })
    }

    /// A projection of x, clipped (OLMo) and normalised (OLMo 2), (b, t, n * d).
    fn project(&self, proj: &Linear, norm: Option<&Norm>, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = proj.forward(x)?;
        if let Some(c) = self.clip_qkv {
            y = y.clamp(-c, c)?;
        }
        match norm {
            Some(n) => n.forward(&y),
            None => Ok(y),
        }
    }

    /// The attention output before o_proj's residual, (b, t, heads * d).
    fn heads(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let q = self.project(&self.q_proj, self.q_norm.as_ref(), x)?; // (b, t, heads * d)
        let k = self.project(&self.k_proj, self.k_norm.as_ref(), x)?;
        let v = self.project(&self.v_proj, None, x)?;
        let (scale, dropout) = (1.0 / (self.head_dim as f64).sqrt(), self.attention_dropout.as_ref());
        if q.dtype() == DType::F32 {
            return projections_attention((&q, &k, &v), (self.heads, self.kv_heads), &self.rope, scale, mask, dropout);
        }
        // OLMo's cos and sin tables stay f32: in bf16 the rotation rounds once
        let split = |y: Tensor, n| y.reshape((b, t, n, self.head_dim))?.transpose(1, 2); // (b, n, t, d)
        let q = self.rope.apply_rounded_once(&split(q, self.heads)?)?;
        let k = self.rope.apply_rounded_once(&split(k, self.kv_heads)?)?;
        attention(&q, &k, &split(v, self.kv_heads)?, scale, mask, dropout) // (b, t, h*d)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let lin = |name: &str, a, b, ctx: &mut LoraCtx| linear(&w.pp(name), &w.path(name), a, b, false, ctx);
        Ok(Mlp {
            gate_proj: lin("gate_proj", h, i, ctx)?,
            up_proj: lin("up_proj", h, i, ctx)?,
            down_proj: lin("down_proj", i, h, ctx)?,
            act: cfg.act,
        })
    }

    /// act(gate(x)) * up(x), (b, t, intermediate).
    fn hidden(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.act.gated_linear(&self.gate_proj, &self.up_proj, x)
    }
}

/// A block: OLMo's pre-norm or OLMo 2's post-norm layout.
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    /// OLMo: the norms before attention and MLP; OLMo 2: after each.
    attn_norm: Norm,
    mlp_norm: Norm,
    variant: Variant,
    /// Attends through the model's sliding-window mask (OLMo 3).
    sliding: bool,
}

impl DecoderLayer {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx, sliding: bool) -> Result<Self> {
        let h = cfg.hidden_size;
        let (attn_norm, mlp_norm) = match cfg.variant {
            Variant::Olmo => ("input_layernorm", "post_attention_layernorm"),
            Variant::Olmo2 | Variant::Olmo3 => ("post_attention_layernorm", "post_feedforward_layernorm"),
        };
        Ok(DecoderLayer {
            self_attn: Attention::load(cfg, &w.pp("self_attn"), ctx, sliding)?,
            mlp: Mlp::load(cfg, &w.pp("mlp"), ctx)?,
            attn_norm: cfg.norm(&w.pp(attn_norm), h)?,
            mlp_norm: cfg.norm(&w.pp(mlp_norm), h)?,
            variant: cfg.variant,
            sliding,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (attn, mlp) = (&self.self_attn, &self.mlp);
        match self.variant {
            Variant::Olmo => {
                // h = x + attn(ln(x)); h + mlp(ln(h))
                let h = attn.o_proj.forward_residual(&attn.heads(&self.attn_norm.forward(x)?, mask)?, x)?;
                mlp.down_proj.forward_residual(&mlp.hidden(&self.mlp_norm.forward(&h)?)?, &h)
            }
            Variant::Olmo2 | Variant::Olmo3 => {
                // h = x + norm(attn(x)); h + norm(mlp(h))
                let h = (x + self.attn_norm.forward(&attn.o_proj.forward(&attn.heads(x, mask)?)?)?)?;
                &h + self.mlp_norm.forward(&mlp.down_proj.forward(&mlp.hidden(&h)?)?)?
            }
        }
    }
}

pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: Norm,
    /// The output head as (hidden, vocab): lm_head.weight^T, or embed_tokens^T when tied.
    lm_head_t: Tensor,
    /// The window of the sliding layers (OLMo 3), when there are any.
    window: Option<usize>,
}

impl Model {
    pub fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let m = w.pp("model");
        let table = m.get("embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, &m.pp("layers").pp(i), ctx, cfg.windows[i].is_some()))
            .collect::<Result<Vec<_>>>()?;
        let lm_head_t = if cfg.tie_word_embeddings {
            table.t()?
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, cfg.hidden_size])?.t()?
        };
        let norm = cfg.norm(&m.pp("norm"), cfg.hidden_size)?;
        let window = cfg.windows.iter().flatten().next().copied();
        Ok(Model { embed_tokens: Embedding { table }, layers, norm, lm_head_t, window })
    }
}

impl CausalLm for Model {
    fn hidden_states(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let full = causal_mask(t, None, ids.device())?; // (t, t)
        let sliding = self.window.map(|w| causal_mask(t, Some(w), ids.device())).transpose()?;
        let mut x = self.embed_tokens.forward(ids)?; // (b, t, hidden)
        for layer in &self.layers {
            x = layer.forward(&x, if layer.sliding { sliding.as_ref().unwrap_or(&full) } else { &full })?;
        }
        self.norm.forward(&x) // (b, t, hidden)
    }

    fn head_t(&self) -> &Tensor {
        &self.lm_head_t
    }
}

/// Targets when none are given: PEFT has no default for OLMo, so Llama's (the module names
/// are the same), and the same list for "all-linear".
pub use super::llama::{ALL_LINEAR, DEFAULT_TARGETS};

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
    let embed = cfg.vocab_size * cfg.hidden_size;
    let parts = Parts {
        model_type: raw.model_type.clone(),
        vocab_size: cfg.vocab_size,
        n_params: cfg.n_params(),
        matmul_params: cfg.n_params() - embed + if cfg.tie_word_embeddings { embed } else { 0 },
        layers: cfg.num_hidden_layers,
        hidden: cfg.hidden_size,
        eos_token_id: eos_of(config),
        max_positions: raw.max_position_embeddings,
        base_dropout: [("attention_dropout".to_string(), cfg.attention_dropout)].into(),
    };
    super::finish(Box::new(model), ctx, parts)
}
