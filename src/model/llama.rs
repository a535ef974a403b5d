//! Llama, and the architectures that share its forward pass: Mistral (sliding window) and
//! Qwen2 (q/k/v biases). Mirrors transformers' `modeling_llama.py`: pre-norm RMSNorm blocks,
//! grouped-query attention with rotary embeddings, a SwiGLU MLP, tied or untied output head.

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use super::{
    causal_mask, divides, dropout_p, eos_of, linear, parse_config, positive, projections_attention, rope_settings,
};
use super::{Activation, CausalLm, Embedding, LoadedModel, Norm, Parts, Rope, RopeParameters};
use crate::checkpoint::weights::Weights;
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::lora::{AdapterInit, Linear, LoraCtx, LoraSpec};

/// config.json as transformers writes it (4.x or 5.x), fields optional where versions differ.
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
    pub rope_parameters: Option<RopeParameters>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_position_embeddings: Option<usize>,
    pub attention_dropout: Option<f64>,
}

/// The checked settings the model is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub act: Activation,
    pub rms_norm_eps: f64,
    pub rope: super::RopeConfig,
    /// Bias on q, k, v (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub sliding_window: Option<usize>,
    /// On the attention probabilities while training (Llama, Mistral and Qwen2 have no other dropout).
    pub attention_dropout: f64,
}

impl RawConfig {
    pub fn resolve(&self, dir: &Path) -> Result<Config> {
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
        let rope = rope_settings(dir, self.rope_theta, &self.rope_scaling, &self.rope_parameters, 10000.0)?;
        let qwen2 = self.model_type == "qwen2";
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(Config {
            vocab_size: positive(dir, "vocab_size", self.vocab_size)?,
            hidden_size: hidden,
            intermediate_size: positive(dir, "intermediate_size", self.intermediate_size)?,
            num_hidden_layers: positive(dir, "num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            act: Activation::parse(dir, self.hidden_act.as_deref().unwrap_or("silu"))?,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope,
            qkv_bias: qwen2 || attention_bias,
            o_bias: !qwen2 && attention_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            sliding_window: self.window(dir)?,
            attention_dropout: dropout_p(dir, "attention_dropout", self.attention_dropout, 0.0)?,
        })
    }

    /// Mistral applies its window on every layer; Qwen2's per-layer windows are not supported.
    fn window(&self, dir: &Path) -> Result<Option<usize>> {
        match self.model_type.as_str() {
            "mistral" => Ok(self.sliding_window),
            "qwen2" if self.use_sliding_window.unwrap_or(false) => {
                Err(Error::input(dir.join("config.json"), "qwen2 with use_sliding_window is not supported"))
            }
            _ => Ok(None),
        }
    }
}

impl Config {
    /// Parameters of the base model.
    pub fn n_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h;
        let layer = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope: Rope,
    attention_dropout: Option<Dropout>,
}

impl Attention {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let lin = |name: &str, i, o, bias, ctx: &mut LoraCtx| linear(&w.pp(name), &w.path(name), i, o, bias, ctx);
        Ok(Attention {
            q_proj: lin("q_proj", h, q, cfg.qkv_bias, ctx)?,
            k_proj: lin("k_proj", h, kv, cfg.qkv_bias, ctx)?,
            v_proj: lin("v_proj", h, kv, cfg.qkv_bias, ctx)?,
            o_proj: lin("o_proj", q, h, cfg.o_bias, ctx)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
            rope: Rope::new(d, &cfg.rope),
            attention_dropout: ctx.dropout_site(cfg.attention_dropout),
        })
    }

    /// residual + attention(x).
    fn forward(&self, x: &Tensor, mask: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let (q, k, v) = (self.q_proj.forward(x)?, self.k_proj.forward(x)?, self.v_proj.forward(x)?); // (b, t, n * d)
        let (heads, scale) = ((self.heads, self.kv_heads), 1.0 / (self.head_dim as f64).sqrt());
        let y = projections_attention((&q, &k, &v), heads, &self.rope, scale, mask, self.attention_dropout.as_ref())?; // (b, t, h*d)
        self.o_proj.forward_residual(&y, residual)
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
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let lin = |name: &str, a, b, ctx: &mut LoraCtx| linear(&w.pp(name), &w.path(name), a, b, bias, ctx);
        Ok(Mlp {
            gate_proj: lin("gate_proj", h, i, ctx)?,
            up_proj: lin("up_proj", h, i, ctx)?,
            down_proj: lin("down_proj", i, h, ctx)?,
            act: cfg.act,
        })
    }

    /// residual + mlp(x).
    fn forward(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let projections = (&self.gate_proj, &self.up_proj, &self.down_proj); // (h, i), (h, i), (i, h)
        self.act.gated_mlp_residual(projections, x, residual)
    }
}

struct DecoderLayer {
    input_layernorm: Norm,
    self_attn: Attention,
    post_attention_layernorm: Norm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        Ok(DecoderLayer {
            input_layernorm: Norm::rms(&w.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            self_attn: Attention::load(cfg, &w.pp("self_attn"), ctx)?,
            post_attention_layernorm: Norm::rms(&w.pp("post_attention_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            mlp: Mlp::load(cfg, &w.pp("mlp"), ctx)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.self_attn.forward(&self.input_layernorm.forward(x)?, mask, x)?;
        self.mlp.forward(&self.post_attention_layernorm.forward(&x)?, &x)
    }
}

pub struct Model {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: Norm,
    /// The output head as (hidden, vocab): lm_head.weight^T, or embed_tokens^T when tied.
    lm_head_t: Tensor,
    sliding_window: Option<usize>,
}

impl Model {
    pub fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let m = w.pp("model");
        let table = m.get("embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, &m.pp("layers").pp(i), ctx))
            .collect::<Result<Vec<_>>>()?;
        let lm_head_t = if cfg.tie_word_embeddings {
            table.t()?
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, cfg.hidden_size])?.t()?
        };
        Ok(Model {
            embed_tokens: Embedding { table },
            layers,
            norm: Norm::rms(&m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            lm_head_t,
            sliding_window: cfg.sliding_window,
        })
    }
}

impl CausalLm for Model {
    fn hidden_states(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let mask = causal_mask(t, self.sliding_window, ids.device())?; // (t, t)
        let mut x = self.embed_tokens.forward(ids)?; // (b, t, hidden)
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
        }
        self.norm.forward(&x) // (b, t, hidden)
    }

    fn head_t(&self) -> &Tensor {
        &self.lm_head_t
    }
}

/// PEFT's default targets for these model types, and every linear layer for "all-linear".
pub const DEFAULT_TARGETS: [&str; 2] = ["q_proj", "v_proj"];
pub const ALL_LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

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
        model_type: raw.model_type.clone(),
        vocab_size: cfg.vocab_size,
        n_params: cfg.n_params(),
        matmul_params: cfg.n_params() - cfg.vocab_size * cfg.hidden_size
            + if cfg.tie_word_embeddings { cfg.vocab_size * cfg.hidden_size } else { 0 },
        layers: cfg.num_hidden_layers,
        hidden: cfg.hidden_size,
        eos_token_id: eos_of(config),
        max_positions: raw.max_position_embeddings,
        base_dropout: [("attention_dropout".to_string(), cfg.attention_dropout)].into(),
    };
    super::finish(Box::new(model), ctx, parts)
}
