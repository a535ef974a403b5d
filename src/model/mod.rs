//! The architectures plasticity fine-tunes, one file each, and the pieces they share.
//!
//! Each architecture reads its `config.json` with transformers' field names (a raw serde form,
//! then a checked, resolved form), loads its weights by the checkpoint's tensor names, and
//! computes logits exactly as transformers does in f32. Everything here is built from
//! differentiable candle ops: several fused candle ops (softmax_last_dim, rms_norm, layer_norm,
//! rope) have no backward and would silently stop the gradient before it reaches an adapter.
//! This module must not train or read task data.
//!
//! The shared pieces live one concept per file and are re-exported here, so an architecture
//! imports them all from this module: `config.rs` (config.json's fields), `rope.rs` (rotary
//! embeddings), `attention.rs` (the causal mask and eager attention) and `layers.rs` (norms,
//! activations, linear layers, embeddings), with the CPU kernels behind them in `fused.rs`,
//! `fused_mlp.rs` (an MLP's projections and activation, or a whole MLP with its residual, as
//! one node), `qkv_attention.rs` (attention straight from the q, k and v projections, rotation
//! included) and `sdpa.rs` (its kernel). This file keeps the model trait, the loaded model and
//! the loading.

mod attention;
pub mod bloom;
mod config;
pub mod fused;
mod fused_mlp;
pub mod gpt2;
pub mod gpt_neox;
mod layers;
pub mod llama;
pub mod olmo;
mod qkv_attention;
mod rope;
pub mod sdpa;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::weights::{WeightStore, Weights};
use crate::error::{Error, Result};
use crate::lora::{Adapter, AdapterInit, LoraCtx, LoraSpec};

pub use attention::{attention, causal_mask};
pub use config::{activation_bytes, hidden_size, parse_config, RopeParameters};
pub(crate) use config::{divides, dropout_p, eos_of, positive};
pub(crate) use layers::linear;
pub use layers::{Activation, Embedding, Norm};
pub(crate) use qkv_attention::{projections_attention, qkv_attention, Packing};
pub(crate) use rope::rope_settings;
pub use rope::{Rope, RopeConfig, RopeScaling};

/// A causal language model: token ids (b, t) in, logits (b, t, vocab) out.
pub trait CausalLm: Send + Sync {
    /// The last layer's hidden states after the final norm, (b, t, hidden).
    fn hidden_states(&self, ids: &Tensor) -> candle_core::Result<Tensor>;

    /// The frozen output head as (hidden, vocab): the head's weight transposed, or the
    /// embedding table transposed when they are tied.
    fn head_t(&self) -> &Tensor;

    /// Logits (b, t, vocab).
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        crate::lora::frozen_matmul(&self.hidden_states(ids)?, self.head_t())
    }
}

/// The model types plasticity knows, as written in config.json's `model_type`.
pub const SUPPORTED: [&str; 9] = ["llama", "mistral", "qwen2", "olmo", "olmo2", "olmo3", "gpt_neox", "gpt2", "bloom"];

/// A loaded checkpoint: the model with its adapters, ready to train.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub adapters: Vec<Adapter>,
    pub model_type: String,
    pub vocab_size: usize,
    /// Parameters of the base model (frozen), counted from the config.
    pub n_params: usize,
    pub eos_token_id: Option<u32>,
    pub max_positions: Option<usize>,
    matmul_params: usize,
    layers: usize,
    hidden: usize,
    /// The dropout probabilities its config.json sets, by their transformers names, applied
    /// while training (empty when the architecture has none).
    pub base_dropout: std::collections::BTreeMap<String, f64>,
    dropout: crate::dropout::DropoutState,
}

impl LoadedModel {
    /// Dropout on (training) or off (evaluation).
    pub fn set_training(&self, on: bool) {
        self.dropout.set_training(on);
    }

    /// FLOPs of one training token with blocks of `seq_len`: 2N forward and 2N for dL/dx
    /// (frozen weights get no gradient), N the matmul parameters, plus causal attention's
    /// QK^T and AV, 4 seq hidden per layer forward and twice that backward.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        4.0 * self.matmul_params as f64 + 12.0 * (self.layers * seq_len * self.hidden) as f64
    }

    /// The width of the residual stream (config.json's `hidden_size`).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Whether a forward pass now draws dropout masks (see [`crate::dropout::DropoutState::draws`]).
    pub fn draws_dropout(&self) -> bool {
        self.dropout.draws()
    }

    /// The state of the dropout generator.
    pub fn dropout_state(&self) -> rand_chacha::ChaCha8Rng {
        self.dropout.rng()
    }

    /// Puts the dropout generator back in a state [`Self::dropout_state`] returned.
    pub fn set_dropout_state(&self, state: rand_chacha::ChaCha8Rng) {
        self.dropout.set_rng(state);
    }

    pub fn trainable_params(&self) -> usize {
        self.adapters.iter().map(|a| a.a.elem_count() + a.b.elem_count()).sum()
    }
}

/// Reads `config.json` in `dir` as a JSON value, with a message naming the file.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::input(&path, "expected a JSON object"));
    }
    Ok(value)
}

/// Opens the checkpoint in `dir`: config, weights and adapters, in f32.
pub fn load(dir: &Path, spec: &LoraSpec, init: &AdapterInit, seed: u64, device: &Device) -> Result<LoadedModel> {
    load_as(dir, spec, init, seed, device, DType::F32)
}

/// [`load`] with base weights and activations in `dtype`; adapters stay f32 (PEFT's
/// `autocast_adapter_dtype`), so a bf16 model runs as transformers + PEFT run one loaded with
/// `torch_dtype=torch.bfloat16`.
pub fn load_as(
    dir: &Path,
    spec: &LoraSpec,
    init: &AdapterInit,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<LoadedModel> {
    let config = read_config(dir)?;
    let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let store = WeightStore::open_as(dir, device, dtype)?;
    let w = Weights::new(&store);
    match model_type.as_str() {
        "llama" | "mistral" | "qwen2" => llama::load(dir, &config, w, spec, init, seed),
        "olmo" | "olmo2" | "olmo3" => olmo::load(dir, &config, w, spec, init, seed),
        "gpt_neox" => gpt_neox::load(dir, &config, w, spec, init, seed),
        "gpt2" => gpt2::load(dir, &config, w, spec, init, seed),
        "bloom" => bloom::load(dir, &config, w, spec, init, seed),
        "" => {
            Err(Error::input(dir.join("config.json"), format!("no model_type (supported: {})", SUPPORTED.join(", "))))
        }
        other => Err(Error::input(
            dir.join("config.json"),
            format!("unsupported model_type {other:?} (supported: {})", SUPPORTED.join(", ")),
        )),
    }
}

/// Assembles a [`LoadedModel`] once an architecture has built its model.
pub(crate) struct Parts {
    pub model_type: String,
    pub vocab_size: usize,
    pub n_params: usize,
    /// Parameters that take part in matmuls: all but the embedding lookups (the output head
    /// counts, tied or not).
    pub matmul_params: usize,
    pub layers: usize,
    pub hidden: usize,
    pub eos_token_id: Option<u32>,
    pub max_positions: Option<usize>,
    /// The config's dropout probabilities, by their transformers names.
    pub base_dropout: std::collections::BTreeMap<String, f64>,
}

pub(crate) fn finish(model: Box<dyn CausalLm>, ctx: LoraCtx, parts: Parts) -> Result<LoadedModel> {
    let dropout = ctx.dropout_state();
    let adapters = ctx.finish()?;
    Ok(LoadedModel {
        model,
        adapters,
        model_type: parts.model_type,
        vocab_size: parts.vocab_size,
        n_params: parts.n_params,
        eos_token_id: parts.eos_token_id,
        max_positions: parts.max_positions,
        matmul_params: parts.matmul_params,
        layers: parts.layers,
        hidden: parts.hidden,
        base_dropout: parts.base_dropout,
        dropout,
    })
}
