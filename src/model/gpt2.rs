//! GPT-2, as transformers' `modeling_gpt2.py`: learned positions, pre-norm LayerNorm blocks,
//! `Conv1D` projections whose weights are stored (in, out), `c_attn` holding q|k|v in blocks,
//! the tanh GELU, an output head tied to the token embeddings, and while training the three
//! dropouts of its config (0.1 each by default, as GPT2Config has them): `embd_pdrop` on the
//! embeddings, `attn_pdrop` on the attention probabilities, `resid_pdrop` on the attention's
//! and the MLP's output projections.

use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use super::{causal_mask, divides, dropout_p, eos_of, parse_config, positive, qkv_attention};
use super::{Activation, CausalLm, Embedding, LoadedModel, Norm, Packing, Parts};
use crate::checkpoint::weights::Weights;
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::lora::{AdapterInit, Linear, LoraCtx, LoraSpec};

#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    pub n_inner: Option<usize>,
    pub activation_function: Option<String>,
    pub layer_norm_epsilon: Option<f64>,
    pub scale_attn_weights: Option<bool>,
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
    pub reorder_and_upcast_attn: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub attn_pdrop: Option<f64>,
    pub resid_pdrop: Option<f64>,
    pub embd_pdrop: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    pub n_inner: usize,
    pub act: Activation,
    pub layer_norm_epsilon: f64,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub tie_word_embeddings: bool,
    pub attn_pdrop: f64,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
}

impl RawConfig {
    pub fn resolve(&self, dir: &Path) -> Result<Config> {
        let n_embd = positive(dir, "n_embd", self.n_embd)?;
        let n_head = positive(dir, "n_head", self.n_head)?;
        divides(dir, "n_embd / n_head", n_head, n_embd)?;
        Ok(Config {
            vocab_size: positive(dir, "vocab_size", self.vocab_size)?,
            n_embd,
            n_layer: positive(dir, "n_layer", self.n_layer)?,
            n_head,
            n_positions: positive(dir, "n_positions", self.n_positions)?,
            n_inner: self.n_inner.unwrap_or(4 * n_embd),
            act: Activation::parse(dir, self.activation_function.as_deref().unwrap_or("gelu_new"))?,
            layer_norm_epsilon: self.layer_norm_epsilon.unwrap_or(1e-5),
            scale_attn_weights: self.scale_attn_weights.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: self.scale_attn_by_inverse_layer_idx.unwrap_or(false),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(true),
            attn_pdrop: dropout_p(dir, "attn_pdrop", self.attn_pdrop, 0.1)?,
            resid_pdrop: dropout_p(dir, "resid_pdrop", self.resid_pdrop, 0.1)?,
            embd_pdrop: dropout_p(dir, "embd_pdrop", self.embd_pdrop, 0.1)?,
        })
    }
}

impl Config {
    /// The dropouts by their config names, for the report.
    pub fn dropouts(&self) -> std::collections::BTreeMap<String, f64> {
        [("attn_pdrop", self.attn_pdrop), ("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    pub fn n_params(&self) -> usize {
        let (h, i, v) = (self.n_embd, self.n_inner, self.vocab_size);
        let layer = 4 * h * h + 2 * h * i + 9 * h + i;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.n_positions * h + self.n_layer * layer + 2 * h + head
    }
}

/// transformers' Conv1D: weight (in, out), always with a bias; PEFT adapts it like a Linear.
fn conv1d(w: &Weights, module: &str, in_dim: usize, out_dim: usize, ctx: &mut LoraCtx) -> Result<Linear> {
    let weight = w.get("weight", &[in_dim, out_dim])?;
    let bias = w.get("bias", &[out_dim])?;
    let adapter = ctx.adapter_for(module, in_dim, out_dim, w.device())?;
    Ok(Linear::new(weight, Some(bias), adapter))
}

struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    heads: usize,
    scale: f64,
    attn_dropout: Option<Dropout>,
    resid_dropout: Option<Dropout>,
}

impl Attention {
    fn load(cfg: &Config, layer: usize, w: &Weights, module: &str, ctx: &mut LoraCtx) -> Result<Self> {
        let h = cfg.n_embd;
        let head_dim = h / cfg.n_head;
        let mut scale = if cfg.scale_attn_weights { 1.0 / (head_dim as f64).sqrt() } else { 1.0 };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Attention {
            c_attn: conv1d(&w.pp("c_attn"), &format!("{module}.c_attn"), h, 3 * h, ctx)?,
            c_proj: conv1d(&w.pp("c_proj"), &format!("{module}.c_proj"), h, h, ctx)?,
            heads: cfg.n_head,
            scale,
            attn_dropout: ctx.dropout_site(cfg.attn_pdrop),
            resid_dropout: ctx.dropout_site(cfg.resid_pdrop),
        })
    }

    /// residual + attention(x).
    fn forward(&self, x: &Tensor, mask: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let qkv = self.c_attn.forward(x)?; // (b, t, 3h) = [q | k | v]
        let y = qkv_attention(&qkv, self.heads, Packing::Blocked, None, self.scale, mask, self.attn_dropout.as_ref())?; // (b, t, h)
        self.c_proj.forward_residual_dropped(&y, residual, self.resid_dropout.as_ref())
    }
}

struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
    dropout: Option<Dropout>,
}

impl Mlp {
    fn load(cfg: &Config, w: &Weights, module: &str, ctx: &mut LoraCtx) -> Result<Self> {
        Ok(Mlp {
            c_fc: conv1d(&w.pp("c_fc"), &format!("{module}.c_fc"), cfg.n_embd, cfg.n_inner, ctx)?,
            c_proj: conv1d(&w.pp("c_proj"), &format!("{module}.c_proj"), cfg.n_inner, cfg.n_embd, ctx)?,
            act: cfg.act,
            dropout: ctx.dropout_site(cfg.resid_pdrop),
        })
    }

    /// residual + mlp(x).
    fn forward(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.act.mlp_residual((&self.c_fc, &self.c_proj), x, residual, self.dropout.as_ref())
    }
}

struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    mlp: Mlp,
}

impl Block {
    fn load(cfg: &Config, i: usize, w: &Weights, module: &str, ctx: &mut LoraCtx) -> Result<Self> {
        let (h, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        Ok(Block {
            ln_1: Norm::layer(&w.pp("ln_1"), h, eps)?,
            attn: Attention::load(cfg, i, &w.pp("attn"), &format!("{module}.attn"), ctx)?,
            ln_2: Norm::layer(&w.pp("ln_2"), h, eps)?,
            mlp: Mlp::load(cfg, &w.pp("mlp"), &format!("{module}.mlp"), ctx)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.attn.forward(&self.ln_1.forward(x)?, mask, x)?;
        self.mlp.forward(&self.ln_2.forward(&x)?, &x)
    }
}

pub struct Model {
    wte: Embedding,
    wpe: Tensor,
    drop: Option<Dropout>,
    h: Vec<Block>,
    ln_f: Norm,
    lm_head_t: Tensor,
}

impl Model {
    /// Weights may be saved with the `transformer.` prefix (GPT2LMHeadModel) or without it
    /// (the original OpenAI conversion); module names for LoRA always carry it, as in PEFT.
    pub fn load(cfg: &Config, w: &Weights, ctx: &mut LoraCtx) -> Result<Self> {
        let m = if w.contains("transformer.wte.weight") { w.pp("transformer") } else { w.clone() };
        let table = m.get("wte.weight", &[cfg.vocab_size, cfg.n_embd])?;
        let wpe = m.get("wpe.weight", &[cfg.n_positions, cfg.n_embd])?;
        let h = (0..cfg.n_layer)
            .map(|i| Block::load(cfg, i, &m.pp("h").pp(i), &format!("transformer.h.{i}"), ctx))
            .collect::<Result<Vec<_>>>()?;
        let lm_head_t = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            table.t()?
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, cfg.n_embd])?.t()?
        };
        let drop = ctx.dropout_site(cfg.embd_pdrop);
        Ok(Model {
            wte: Embedding { table },
            wpe,
            drop,
            h,
            ln_f: Norm::layer(&m.pp("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon)?,
            lm_head_t,
        })
    }
}

impl CausalLm for Model {
    fn hidden_states(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        if t > self.wpe.dim(0)? {
            candle_core::bail!("sequence of {t} tokens is longer than n_positions {}", self.wpe.dim(0)?);
        }
        let mask = causal_mask(t, None, ids.device())?;
        let pos = self.wpe.narrow(0, 0, t)?; // (t, h)
        let mut x = crate::dropout::apply(self.drop.as_ref(), self.wte.forward(ids)?.broadcast_add(&pos)?)?; // (b, t, h)
        for block in &self.h {
            x = block.forward(&x, &mask)?;
        }
        self.ln_f.forward(&x) // (b, t, hidden)
    }

    fn head_t(&self) -> &Tensor {
        &self.lm_head_t
    }
}

pub const DEFAULT_TARGETS: [&str; 1] = ["c_attn"];
pub const ALL_LINEAR: [&str; 3] = ["c_attn", "c_proj", "c_fc"];

pub fn load(
    dir: &Path,
    config: &serde_json::Value,
    w: Weights,
    spec: &LoraSpec,
    init: &AdapterInit,
    seed: u64,
) -> Result<LoadedModel> {
    let raw: RawConfig = parse_config(dir, config)?;
    if raw.reorder_and_upcast_attn.unwrap_or(false) {
        return Err(Error::input(dir.join("config.json"), "reorder_and_upcast_attn is not supported"));
    }
    let cfg = raw.resolve(dir)?;
    let mut ctx = LoraCtx::new(spec, &DEFAULT_TARGETS, &ALL_LINEAR, init, seed)?;
    let model = Model::load(&cfg, &w, &mut ctx)?;
    let parts = Parts {
        model_type: "gpt2".into(),
        vocab_size: cfg.vocab_size,
        n_params: cfg.n_params(),
        // Token and position lookups are not matmuls; the tied head is.
        matmul_params: cfg.n_params()
            - cfg.n_positions * cfg.n_embd
            - if cfg.tie_word_embeddings { 0 } else { cfg.vocab_size * cfg.n_embd },
        layers: cfg.n_layer,
        hidden: cfg.n_embd,
        eos_token_id: eos_of(config),
        max_positions: Some(cfg.n_positions),
        base_dropout: cfg.dropouts(),
    };
    super::finish(Box::new(model), ctx, parts)
}
