//! config.json as the architectures read it: the checks every architecture applies to its
//! fields (positive sizes, divisible head counts, dropout probabilities defaulted as
//! transformers defaults them, `eos_token_id` as a number or a list), the raw rotary parameters
//! that transformers 4 and 5 write in different places, and the activation-memory estimate
//! read from the same fields. Every error names `config.json`. This file must not build
//! tensors or resolve what the fields mean for a layer (`rope.rs` resolves the rotary ones).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Parses an architecture's raw config from the JSON value, naming the file on error.
pub fn parse_config<T: for<'de> Deserialize<'de>>(dir: &Path, value: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let at = if field == "." { String::new() } else { format!(" (field {field})") };
        Error::input(dir.join("config.json"), format!("invalid config{at}: {}", e.inner()))
    })
}

/// `eos_token_id` may be a number or a list (the first is used).
pub(crate) fn eos_of(config: &serde_json::Value) -> Option<u32> {
    match config.get("eos_token_id")? {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Array(items) => items.first()?.as_u64().map(|n| n as u32),
        _ => None,
    }
}

/// A dropout probability from the config (`default` when absent, as transformers' config
/// class defaults it), which must lie in [0, 1).
pub(crate) fn dropout_p(dir: &Path, field: &str, value: Option<f64>, default: f64) -> Result<f64> {
    let p = value.unwrap_or(default);
    if !(0.0..1.0).contains(&p) {
        return Err(Error::input(
            dir.join("config.json"),
            format!("{field} = {p} is not a dropout probability in [0, 1)"),
        ));
    }
    Ok(p)
}

/// A config value that must be positive, with a message naming the field.
pub(crate) fn positive(dir: &Path, field: &str, value: usize) -> Result<usize> {
    if value == 0 {
        return Err(Error::input(dir.join("config.json"), format!("{field} must be positive")));
    }
    Ok(value)
}

pub(crate) fn divides(dir: &Path, what: &str, part: usize, whole: usize) -> Result<()> {
    if part == 0 || !whole.is_multiple_of(part) {
        return Err(Error::input(dir.join("config.json"), format!("{what}: {whole} is not divisible by {part}")));
    }
    Ok(())
}

/// transformers 4 writes `rope_theta` and `rope_scaling` at the top level; transformers 5 writes
/// `rope_parameters: {rope_type, rope_theta, factor, ...}`. Both land here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

/// The model's width from config.json, under any architecture's name for it (0 when absent).
pub fn hidden_size(config: &serde_json::Value) -> u64 {
    ["hidden_size", "n_embd", "n_embed"].iter().find_map(|k| config.get(*k).and_then(|v| v.as_u64())).unwrap_or(0)
}

/// One training step's activations in the transformer blocks, in bytes (f32), estimated from
/// config.json: what the backward pass keeps per layer and token (the block input and its
/// norm, q, k, v and the rotated q, k, the attention output, the second norm: 9 x hidden; the
/// MLP's intermediate tensors: 2 x intermediate, 3 for a gated MLP), per layer and sequence
/// the attention probabilities (heads x t^2). The output head's buffers depend on how the loss is computed
/// and are counted by `train::activation_bytes`. Fields missing from the config count as 0:
/// the estimate is then low, never an error.
pub fn activation_bytes(config: &serde_json::Value, batch: usize, seq_len: usize) -> u64 {
    let get = |keys: &[&str]| keys.iter().find_map(|k| config.get(*k).and_then(|v| v.as_u64())).unwrap_or(0);
    let hidden = hidden_size(config);
    let layers = get(&["num_hidden_layers", "n_layer"]);
    let heads = get(&["num_attention_heads", "n_head"]);
    let inter = match get(&["intermediate_size", "n_inner"]) {
        0 => hidden.saturating_mul(4),
        i => i,
    };
    let gated = matches!(
        config.get("model_type").and_then(|v| v.as_str()),
        Some("llama" | "mistral" | "qwen2" | "olmo" | "olmo2" | "olmo3")
    );
    let (tokens, t) = ((batch as u64).saturating_mul(seq_len as u64), seq_len as u64);
    // saturating: an absurd config must give a huge estimate (refused), not an overflow
    let mlp = if gated { 3 } else { 2 } * inter.min(u64::MAX / 4);
    let per_layer = tokens
        .saturating_mul(hidden.saturating_mul(9).saturating_add(mlp))
        .saturating_add((batch as u64).saturating_mul(heads).saturating_mul(t).saturating_mul(t));
    layers.saturating_mul(per_layer).saturating_mul(4)
}
