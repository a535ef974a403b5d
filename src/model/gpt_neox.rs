//! GPT-NeoX (Pythia), as transformers' `modeling_gpt_neox.py`: LayerNorm blocks with a parallel
//! (Pythia) or sequential residual, a fused per-head `query_key_value` projection, partial
//! rotary embeddings (`rotary_pct`), a GELU MLP and an untied `embed_out` head.

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use super::{causal_mask, divides, dropout_p, eos_of, linear, parse_config, positive, qkv_attention, rope_settings};
use super::{Activation, CausalLm, Embedding, LoadedModel, Norm, Packing, Parts, Rope, RopeParameters};
use crate::checkpoint::weights::Weights;
use crate::dropout::Dropout;
use crate::error::Result;
use crate::lora::{AdapterInit, Linear, LoraCtx, LoraSpec};

#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Option<String>,
    /// transformers 4; transformers 5 moves it to `rope_parameters.partial_rotary_factor`.
    pub rotary_pct: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    /// transformers 4; transformers 5 writes `rope_parameters.rope_theta`.
    pub rotary_emb_base: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    pub rope_parameters: Option<RopeParameters>,
    pub layer_norm_eps: Option<f64>,
    pub use_parallel_residual: Option<bool>,
    pub attention_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub max_position_embeddings: Option<usize>,
    pub attention_dropout: Option<f64>,
    pub hidden_dropout: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub head_size: usize,
    /// Features of each head that are rotated: int(head_size * rotary_pct).
    pub rotary_ndims: usize,
    pub rope: super::RopeConfig,
    pub act: Activation,
    pub layer_norm_eps: f64,
    pub use_parallel_residual: bool,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    /// On the attention probabilities while training.
    pub attention_dropout: f64,
    /// On the embeddings and on the attention's and the MLP's outputs while training.
    pub hidden_dropout: f64,
}

impl RawConfig {
    pub fn resolve(&self, dir: &Path) -> Result<Config> {
        let heads = positive(dir, "num_attention_heads", self.num_attention_heads)?;
        let hidden = positive(dir, "hidden_size", self.hidden_size)?;
        divides(dir, "hidden_size / num_attention_heads", heads, hidden)?;
        let head_size = hidden / heads;
        let top_theta = self.rope_theta.or(self.rotary_emb_base);
        let rope = rope_settings(dir, top_theta, &self.rope_scaling, &self.rope_parameters, 10000.0)?;
        let pct = rope.partial_rotary_factor.or(self.partial_rotary_factor).or(self.rotary_pct).unwrap_or(0.25);
        Ok(Config {
            vocab_size: positive(dir, "vocab_size", self.vocab_size)?,
            hidden_size: hidden,
            intermediate_size: positive(dir, "intermediate_size", self.intermediate_size)?,
            num_hidden_layers: positive(dir, "num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads,
            head_size,
            rotary_ndims: (head_size as f64 * pct) as usize,
            rope,
            act: Activation::parse(dir, self.hidden_act.as_deref().unwrap_or("gelu"))?,
            layer_norm_eps: self.layer_norm_eps.unwrap_or(1e-5),
            use_parallel_residual: self.use_parallel_residual.unwrap_or(true),
            attention_bias: self.attention_bias.unwrap_or(true),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_dropout: dropout_p(dir, "attention_dropout", self.attention_dropout, 0.0)?,
            hidden_dropout: dropout_p(dir, "hidden_dropout", self.hidden_dropout, 0.0)?,
        })
    }
}

impl Config {
    /// The dropouts by their config names, for the report.
    pub fn dropouts(&self) -> std::collections::BTreeMap<String, f64> {
        [("attention_dropout", self.attention_dropout), ("hidden_dropout", self.hidden_dropout)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    pub fn n_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let attn_bias = if self.attention_bias { 4 * h } else { 0 };
        let layer = 4 * h * h + 2 * h * i + attn_bias + i + h + 4 * h; // weights, biases, two LayerNorms
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + 2 * h + head
    }
}

struct Attention {
    query_key_value: Linear,
    dense: Linear,
    heads: usize,
    head_size: usize,
    rope: Rope,
    attention_dropout: Option<Dropout>,
    post_attention_dropout: Option<Dropout>,
}

impl Attention {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let h = cfg.hidden_size;
        let bias = cfg.attention_bias;
        Ok(Attention {
            query_key_value: linear(&w.pp("query_key_value"), &w.path("query_key_value"), h, 3 * h, bias, ctx)?,
            dense: linear(&w.pp("dense"), &w.path("dense"), h, h, bias, ctx)?,
            heads: cfg.num_attention_heads,
            head_size: cfg.head_size,
            rope: Rope::new(cfg.rotary_ndims, &cfg.rope),
            attention_dropout: ctx.dropout_site(cfg.attention_dropout),
            post_attention_dropout: ctx.dropout_site(cfg.hidden_dropout),
        })
    }

    /// `residual + attn(x)`, or attn(x) alone without a residual; attn(x) passes the
    /// post-attention dropout.
    fn forward(&self, x: &Tensor, mask: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let qkv = self.query_key_value.forward(x)?; // (b, t, 3 hidden), [q_h | k_h | v_h] per head h
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let dropout = self.attention_dropout.as_ref();
        let y = qkv_attention(&qkv, self.heads, Packing::PerHead, Some(&self.rope), scale, mask, dropout)?; // (b, t, hidden)
        let dropout = self.post_attention_dropout.as_ref();
        match residual {
            Some(r) => self.dense.forward_residual_dropped(&y, r, dropout),
            None => crate::dropout::apply(dropout, self.dense.forward(&y)?),
        }
    }
}

struct Mlp {
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
    act: Activation,
    post_mlp_dropout: Option<Dropout>,
}

impl Mlp {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            dense_h_to_4h: linear(&w.pp("dense_h_to_4h"), &w.path("dense_h_to_4h"), h, i, true, ctx)?,
            dense_4h_to_h: linear(&w.pp("dense_4h_to_h"), &w.path("dense_4h_to_h"), i, h, true, ctx)?,
            act: cfg.act,
            post_mlp_dropout: ctx.dropout_site(cfg.hidden_dropout),
        })
    }

    /// residual + mlp(x), mlp(x) through the post-MLP dropout.
    fn forward(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let projections = (&self.dense_h_to_4h, &self.dense_4h_to_h);
        self.act.mlp_residual(projections, x, residual, self.post_mlp_dropout.as_ref())
    }
}

struct Layer {
    input_layernorm: Norm,
    post_attention_layernorm: Norm,
    attention: Attention,
    mlp: Mlp,
    parallel: bool,
}

impl Layer {
    fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Layer {
            input_layernorm: Norm::layer(&w.pp("input_layernorm"), h, eps)?,
            post_attention_layernorm: Norm::layer(&w.pp("post_attention_layernorm"), h, eps)?,
            attention: Attention::load(cfg, &w.pp("attention"), ctx)?,
            mlp: Mlp::load(cfg, &w.pp("mlp"), ctx)?,
            parallel: cfg.use_parallel_residual,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        if self.parallel && x.dtype() != candle_core::DType::F32 {
            // (mlp + attn) + x in transformers' order: in bf16 each sum rounds
            let attn = self.attention.forward(&self.input_layernorm.forward(x)?, mask, None)?;
            let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(x)?, &attn)?;
            return mlp + x;
        }
        // h = x + attn(ln1(x))
        let h = self.attention.forward(&self.input_layernorm.forward(x)?, mask, Some(x))?;
        if self.parallel {
            // h + mlp(ln2(x)): x + attn(ln1(x)) + mlp(ln2(x))
            self.mlp.forward(&self.post_attention_layernorm.forward(x)?, &h)
        } else {
            // h + mlp(ln2(h))
            self.mlp.forward(&self.post_attention_layernorm.forward(&h)?, &h)
        }
    }
}

pub struct Model {
    embed_in: Embedding,
    emb_dropout: Option<Dropout>,
    layers: Vec<Layer>,
    final_layer_norm: Norm,
    embed_out_t: Tensor,
}

impl Model {
    pub fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let m = w.pp("gpt_neox");
        let table = m.get("embed_in.weight", &[cfg.vocab_size, cfg.hidden_size])?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, &m.pp("layers").pp(i), ctx))
            .collect::<Result<Vec<_>>>()?;
        let embed_out_t = if cfg.tie_word_embeddings {
            table.t()?
        } else {
            w.get("embed_out.weight", &[cfg.vocab_size, cfg.hidden_size])?.t()?
        };
        Ok(Model {
            embed_in: Embedding { table },
            emb_dropout: ctx.dropout_site(cfg.hidden_dropout),
            layers,
            final_layer_norm: Norm::layer(&m.pp("final_layer_norm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            embed_out_t,
        })
    }
}

impl CausalLm for Model {
    fn hidden_states(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let mask = causal_mask(t, None, ids.device())?;
        let mut x = crate::dropout::apply(self.emb_dropout.as_ref(), self.embed_in.forward(ids)?)?; // (b, t, hidden)
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
        }
        self.final_layer_norm.forward(&x) // (b, t, hidden)
    }

    fn head_t(&self) -> &Tensor {
        &self.embed_out_t
    }
}

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
        model_type: "gpt_neox".into(),
        vocab_size: cfg.vocab_size,
        n_params: cfg.n_params(),
        matmul_params: cfg.n_params() - cfg.vocab_size * cfg.hidden_size
            + if cfg.tie_word_embeddings { cfg.vocab_size * cfg.hidden_size } else { 0 },
        layers: cfg.num_hidden_layers,
        hidden: cfg.hidden_size,
        eos_token_id: eos_of(config),
        max_positions: raw.max_position_embeddings,
        base_dropout: cfg.dropouts(),
    };
    super::finish(Box::new(model), ctx, parts)
}
