//! The architectures plasticity fine-tunes, one file each, and the pieces they share.
//!
//! Each architecture reads its `config.json` with transformers' field names (a raw serde form,
//! then a checked, resolved form), loads its weights by the checkpoint's tensor names, and
//! computes logits exactly as transformers does in f32. Everything here is built from
//! differentiable candle ops: several fused candle ops (softmax_last_dim, rms_norm, layer_norm,
//! rope) have no backward and would silently stop the gradient before it reaches an adapter.
//! This module must not train or read task data.

pub mod fused;
pub mod gpt2;
pub mod gpt_neox;
pub mod llama;
pub mod sdpa;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use crate::checkpoint::weights::{WeightStore, Weights};
use crate::dropout::Dropout;
use crate::error::{Error, Result};
use crate::lora::{Adapter, AdapterInit, Linear, LoraCtx, LoraSpec};

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
pub const SUPPORTED: [&str; 5] = ["llama", "mistral", "qwen2", "gpt_neox", "gpt2"];

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

/// One training step's activations in bytes (f32), estimated from config.json: what the
/// backward pass keeps per layer and token (the block input and its norm, q, k, v and the
/// rotated q, k, the attention output, the second norm: 9 x hidden; the MLP's intermediate
/// tensors: 2 x intermediate, 3 for a gated MLP), per layer and sequence the attention
/// probabilities (heads x t^2), and the fused output head's per-thread chunks. Fields missing
/// from the config count as 0: the estimate is then low, never an error.
pub fn activation_bytes(config: &serde_json::Value, batch: usize, seq_len: usize) -> u64 {
    let get = |keys: &[&str]| keys.iter().find_map(|k| config.get(*k).and_then(|v| v.as_u64())).unwrap_or(0);
    let hidden = get(&["hidden_size", "n_embd"]);
    let layers = get(&["num_hidden_layers", "n_layer"]);
    let heads = get(&["num_attention_heads", "n_head"]);
    let inter = match get(&["intermediate_size", "n_inner"]) {
        0 => hidden.saturating_mul(4),
        i => i,
    };
    let gated = matches!(config.get("model_type").and_then(|v| v.as_str()), Some("llama" | "mistral" | "qwen2"));
    let (tokens, t) = ((batch as u64).saturating_mul(seq_len as u64), seq_len as u64);
    // saturating: an absurd config must give a huge estimate (refused), not an overflow
    let mlp = if gated { 3 } else { 2 } * inter.min(u64::MAX / 4);
    let per_layer = tokens
        .saturating_mul(hidden.saturating_mul(9).saturating_add(mlp))
        .saturating_add((batch as u64).saturating_mul(heads).saturating_mul(t).saturating_mul(t));
    let head_chunks = (rayon::current_num_threads() as u64 * 128).saturating_mul(get(&["vocab_size"]));
    layers.saturating_mul(per_layer).saturating_add(head_chunks).saturating_mul(4)
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

/// Parses an architecture's raw config from the JSON value, naming the file on error.
pub fn parse_config<T: for<'de> Deserialize<'de>>(dir: &Path, value: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let at = if field == "." { String::new() } else { format!(" (field {field})") };
        Error::input(dir.join("config.json"), format!("invalid config{at}: {}", e.inner()))
    })
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
        "gpt_neox" => gpt_neox::load(dir, &config, w, spec, init, seed),
        "gpt2" => gpt2::load(dir, &config, w, spec, init, seed),
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
    if part == 0 || whole % part != 0 {
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

/// How rotary frequencies are rescaled (transformers' `ROPE_INIT_FUNCTIONS`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// inv_freq / factor.
    Linear {
        factor: f64,
    },
    /// Llama 3: long wavelengths divided by `factor`, short ones kept, the band between blended.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The resolved rotary settings of a config, whichever transformers version wrote it.
#[derive(Debug, Clone, Copy)]
pub struct RopeConfig {
    pub theta: f64,
    pub partial_rotary_factor: Option<f64>,
    pub scaling: RopeScaling,
}

pub(crate) fn rope_settings(
    dir: &Path,
    top_theta: Option<f64>,
    scaling: &Option<RopeParameters>,
    parameters: &Option<RopeParameters>,
    default_theta: f64,
) -> Result<RopeConfig> {
    let p = parameters.as_ref().or(scaling.as_ref()).cloned().unwrap_or_default();
    let kind = p.rope_type.as_deref().or(p.legacy_type.as_deref()).unwrap_or("default");
    let need = |v: Option<f64>, field: &str| {
        v.ok_or_else(|| Error::input(dir.join("config.json"), format!("rope type {kind:?} needs {field}")))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need(p.factor, "factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need(p.factor, "factor")?,
            low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: need(
                p.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?,
        },
        other => {
            return Err(Error::input(
                dir.join("config.json"),
                format!("rope type {other:?} is not supported (supported: default, linear, llama3)"),
            ))
        }
    };
    let theta = parameters.as_ref().and_then(|p| p.rope_theta).or(top_theta).unwrap_or(default_theta);
    Ok(RopeConfig { theta, partial_rotary_factor: parameters.as_ref().and_then(|p| p.partial_rotary_factor), scaling })
}

/// HF's rotary embedding (`rotate_half` form) over the first `rot_dim` features of each head.
pub struct Rope {
    rot_dim: usize,
    /// (rot_dim / 2) inverse frequencies, scaled as the config asks.
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(rot_dim: usize, cfg: &RopeConfig) -> Self {
        // HF: inv_freq = 1 / theta^(arange(0, dim, 2) / dim), computed in f32.
        let inv = (0..rot_dim / 2).map(|i| 1.0 / (cfg.theta as f32).powf((2 * i) as f32 / rot_dim as f32));
        Rope { rot_dim, inv_freq: inv.map(|f| scale_frequency(f, cfg.scaling)).collect() }
    }

    /// cos and sin tables (t, rot_dim), each the frequencies repeated twice as in HF.
    fn tables(&self, t: usize, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let mut freqs = Vec::with_capacity(t * self.rot_dim);
        for pos in 0..t {
            let row: Vec<f32> = self.inv_freq.iter().map(|f| pos as f32 * f).collect();
            freqs.extend_from_slice(&row);
            freqs.extend_from_slice(&row);
        }
        let freqs = Tensor::from_vec(freqs, (t, self.rot_dim), device)?;
        Ok((freqs.cos()?, freqs.sin()?))
    }

    /// Rotates (b, h, t, d) queries or keys; features past `rot_dim` pass through.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.rot_dim == 0 {
            return Ok(x.clone());
        }
        if !(x.device().is_cpu() && x.dtype() == DType::F32) {
            return self.apply_composed(x);
        }
        let (cos, sin) = self.tables(x.dim(2)?, &Device::Cpu)?;
        let (cos, sin) = (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
        fused::rotary(x, cos, sin, self.rot_dim)
    }

    /// [`Self::apply`] from candle's differentiable ops (other devices, and the tests' reference).
    pub fn apply_composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, _h, t, d) = x.dims4()?;
        if self.rot_dim == 0 {
            return Ok(x.clone());
        }
        let (cos, sin) = self.tables(t, x.device())?; // f32, cast as HF casts them to x's dtype
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let rot = x.narrow(D::Minus1, 0, self.rot_dim)?;
        let half = self.rot_dim / 2;
        let x1 = rot.narrow(D::Minus1, 0, half)?;
        let x2 = rot.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // rotate_half
        let out = (rot.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        if self.rot_dim == d {
            return Ok(out);
        }
        let pass = x.narrow(D::Minus1, self.rot_dim, d - self.rot_dim)?;
        Tensor::cat(&[&out, &pass], D::Minus1)
    }
}

/// One inverse frequency under a scaling rule (transformers' `_compute_*_parameters`).
fn scale_frequency(f: f32, scaling: RopeScaling) -> f32 {
    match scaling {
        RopeScaling::None => f,
        RopeScaling::Linear { factor } => f / factor as f32,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let (factor, low, high, old) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32, old as f32);
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < old / high {
                f
            } else if wavelen > old / low {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        }
    }
}

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
/// attention). The fused kernel applies when nothing is dropped.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &Tensor,
    dropout: Option<&Dropout>,
) -> candle_core::Result<Tensor> {
    if sdpa::applies(q) && !crate::dropout::active(dropout) {
        return sdpa::fused_attention(q, k, v, scale, mask);
    }
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

/// Activations by their transformers names (`hidden_act` / `activation_function`).
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    Silu,
    /// Exact GELU (erf), transformers' "gelu".
    Gelu,
    /// The tanh approximation in one op: "gelu_pytorch_tanh".
    GeluTanh,
    /// The tanh approximation as transformers' FastGELUActivation writes it ("gelu_fast").
    GeluFast,
    /// The tanh approximation as transformers' NewGELUActivation writes it ("gelu_new"): the
    /// same function, but in bf16 each of its eight tensor ops rounds.
    GeluNew,
    Relu,
}

impl Activation {
    pub fn parse(dir: &Path, name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" => Ok(Activation::GeluNew),
            "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "gelu_fast" => Ok(Activation::GeluFast),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::input(dir.join("config.json"), format!("unsupported activation {other:?}"))),
        }
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluNew if x.dtype() != DType::F32 => return gelu_new_rounded(x),
            Activation::GeluFast if x.dtype() != DType::F32 => return gelu_fast_rounded(x),
            _ => {}
        }
        match self.fused() {
            Some(act) => fused::activation(x, act),
            None => x.relu(),
        }
    }

    /// act(gate) * up, for gated MLPs.
    pub fn gated(self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        match self.fused() {
            Some(act) => fused::gated(gate, up, act),
            None => gate.relu()? * up,
        }
    }

    fn fused(self) -> Option<fused::Act> {
        match self {
            Activation::Silu => Some(fused::Act::Silu),
            Activation::Gelu => Some(fused::Act::GeluErf),
            Activation::GeluTanh | Activation::GeluNew | Activation::GeluFast => Some(fused::Act::GeluTanh),
            Activation::Relu => None,
        }
    }
}

/// NewGELUActivation in a low precision, op by op as torch rounds it:
/// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`, each tensor op computed in f32
/// (scalars unrounded) and rounded to x's dtype.
fn gelu_new_rounded(x: &Tensor) -> candle_core::Result<Tensor> {
    let (lo, x32) = (Rounding(x.dtype()), x.to_dtype(DType::F32)?);
    let cube = lo.round((x32.sqr()? * &x32)?)?; // torch.pow(x, 3.0)
    let inner = lo.round((x32 + lo.widen(&lo.affine(&cube, 0.044715, 0.0)?)?)?)?;
    let t = lo.round(lo.widen(&lo.affine(&inner, (2.0 / std::f64::consts::PI).sqrt(), 0.0)?)?.tanh()?)?;
    lo.mul(&lo.affine(x, 0.5, 0.0)?, &lo.affine(&t, 1.0, 1.0)?)
}

/// FastGELUActivation in a low precision, op by op:
/// `0.5 * x * (1 + tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))`.
fn gelu_fast_rounded(x: &Tensor) -> candle_core::Result<Tensor> {
    let lo = Rounding(x.dtype());
    let x_c = lo.affine(x, 0.7978845608, 0.0)?;
    let inner = lo.affine(&lo.mul(&lo.affine(x, 0.044715, 0.0)?, x)?, 1.0, 1.0)?;
    let t = lo.round(lo.widen(&lo.mul(&x_c, &inner)?)?.tanh()?)?;
    lo.mul(&lo.affine(x, 0.5, 0.0)?, &lo.affine(&t, 1.0, 1.0)?)
}

/// torch's rounding of one elementwise op in a low precision: computed in f32 (scalars
/// unrounded), rounded to the dtype.
struct Rounding(DType);

impl Rounding {
    fn widen(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        t.to_dtype(DType::F32)
    }

    fn round(&self, t: Tensor) -> candle_core::Result<Tensor> {
        t.to_dtype(self.0)
    }

    /// t * mul + add.
    fn affine(&self, t: &Tensor, mul: f64, add: f64) -> candle_core::Result<Tensor> {
        self.round(self.widen(t)?.affine(mul, add)?)
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        self.round((self.widen(a)? * self.widen(b)?)?)
    }
}

/// transformers' LayerNorm / RMSNorm weights, applied with differentiable ops.
pub enum Norm {
    Layer { weight: Tensor, bias: Tensor, eps: f64 },
    Rms { weight: Tensor, eps: f64 },
}

impl Norm {
    pub fn layer(w: &Weights, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Norm::Layer { weight: w.get("weight", &[hidden])?, bias: w.get("bias", &[hidden])?, eps })
    }

    pub fn rms(w: &Weights, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Norm::Rms { weight: w.get("weight", &[hidden])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Layer { weight, bias, eps } => fused::layer_norm(x, weight, bias, *eps),
            Norm::Rms { weight, eps } => fused::rms_norm(x, weight, *eps),
        }
    }
}

/// nn.Linear (weight stored (out, in)) named `module`, with an adapter when it is a target.
pub(crate) fn linear(
    w: &Weights,
    module: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    ctx: &mut LoraCtx,
) -> Result<Linear> {
    let weight = w.get("weight", &[out_dim, in_dim])?;
    let b = if bias { Some(w.get("bias", &[out_dim])?) } else { None };
    let adapter = ctx.adapter_for(module, in_dim, out_dim, w.device())?;
    Ok(Linear::new(weight.t()?, b, adapter))
}

/// An embedding table (vocab, hidden): rows gathered by token id.
pub struct Embedding {
    pub table: Tensor,
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.table.dim(1)?;
        self.table.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, hidden))
        // (b, t, hidden)
    }
}

/// Ids as the u32 tensor the models take.
pub fn ids_tensor(ids: &[u32], b: usize, t: usize, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(ids, (b, t), device)?.to_dtype(DType::U32)
}
