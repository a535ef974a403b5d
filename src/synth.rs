//! Random-weight checkpoints in Hugging Face's layout (config.json + model.safetensors), for
//! benchmarks at realistic shapes without downloading a model. The weights are N(0, 0.02) as
//! transformers initialises them, norms are 1 and biases 0; nothing here is for training.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};

/// The shape of a decoder-only model.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub positions: usize,
}

impl Shape {
    /// A small research model: 4 layers, hidden 128, 4 heads, vocab 2048.
    pub const TINY: Shape = Shape { layers: 4, hidden: 128, heads: 4, intermediate: 512, vocab: 2048, positions: 2048 };
    /// Pythia-14M: 6 layers, hidden 128, 4 heads, vocab 50304.
    pub const PYTHIA_14M: Shape =
        Shape { layers: 6, hidden: 128, heads: 4, intermediate: 512, vocab: 50304, positions: 2048 };
    /// Pythia-70M: 6 layers, hidden 512, 8 heads, vocab 50304.
    pub const PYTHIA_70M: Shape =
        Shape { layers: 6, hidden: 512, heads: 8, intermediate: 2048, vocab: 50304, positions: 2048 };
    /// Pythia-70M's body with a small vocabulary (2048): the transformer blocks are the work.
    pub const BODY_70M: Shape = Shape { vocab: 2048, ..Shape::PYTHIA_70M };
    /// Pythia-160M: 12 layers, hidden 768, 12 heads, vocab 50304.
    pub const PYTHIA_160M: Shape =
        Shape { layers: 12, hidden: 768, heads: 12, intermediate: 3072, vocab: 50304, positions: 2048 };

    /// The shapes the benchmarks compare, by name.
    pub const NAMED: [(&'static str, Shape); 5] = [
        ("tiny", Shape::TINY),
        ("14m", Shape::PYTHIA_14M),
        ("70m-body", Shape::BODY_70M),
        ("70m", Shape::PYTHIA_70M),
        ("160m", Shape::PYTHIA_160M),
    ];

    pub fn named(name: &str) -> Option<Shape> {
        Shape::NAMED.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// The (m, k, n) of the largest matrix product in the transformer blocks over a batch of
    /// `tokens`: the MLP's widening or the fused qkv projection, whichever is wider. The output
    /// head is left out: as one product with its (vocab, hidden) weight read transposed, the
    /// `gemm` crate runs it slower than the blocks' products and than the engine's chunked head,
    /// so a rate measured there says nothing about how close a step comes to the kernel.
    pub fn largest_block_matmul(&self, tokens: usize) -> (usize, usize, usize) {
        (tokens, self.hidden, self.intermediate.max(3 * self.hidden))
    }

    /// The (m, k, n) of the output head's product over a batch of `tokens`.
    pub fn head_matmul(&self, tokens: usize) -> (usize, usize, usize) {
        (tokens, self.hidden, self.vocab)
    }
}

/// Writes a random `model_type` ("llama", "gpt_neox" or "gpt2") checkpoint of `shape` to `dir`.
pub fn write_checkpoint(dir: &Path, model_type: &str, shape: Shape, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::input(dir, e.to_string()))?;
    let (config, tensors) = match model_type {
        "llama" => llama(shape),
        "gpt_neox" => gpt_neox(shape),
        "gpt2" => gpt2(shape),
        other => return Err(Error::flag("model_type", format!("cannot synthesise {other:?}"))),
    };
    let mut rng = crate::rng::stream(seed, crate::rng::Stream::AdapterInit, 0x5_1A7);
    let normal = Normal::new(0.0f32, 0.02).map_err(|e| Error::internal(e.to_string()))?;
    let mut map = HashMap::new();
    for (name, dims, kind) in tensors {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = match kind {
            Init::Normal => (0..n).map(|_| normal.sample(&mut rng)).collect(),
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
        };
        map.insert(name, Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(DType::F32)?);
    }
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&map, &path).map_err(|e| Error::input(&path, e.to_string()))?;
    let text = serde_json::to_string_pretty(&config).map_err(|source| Error::Encode { what: "config.json", source })?;
    std::fs::write(dir.join("config.json"), text).map_err(|e| Error::input(dir.join("config.json"), e.to_string()))
}

enum Init {
    Normal,
    Ones,
    Zeros,
}

type Spec = (serde_json::Value, Vec<(String, Vec<usize>, Init)>);

fn llama(s: Shape) -> Spec {
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": s.vocab, "hidden_size": s.hidden, "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.heads,
        "max_position_embeddings": s.positions, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "hidden_act": "silu", "eos_token_id": 0, "torch_dtype": "float32"
    });
    let (h, i) = (s.hidden, s.intermediate);
    let mut t = vec![
        ("model.embed_tokens.weight".into(), vec![s.vocab, h], Init::Normal),
        ("model.norm.weight".into(), vec![h], Init::Ones),
        ("lm_head.weight".into(), vec![s.vocab, h], Init::Normal),
    ];
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        for (name, dims) in [
            ("self_attn.q_proj", [h, h]),
            ("self_attn.k_proj", [h, h]),
            ("self_attn.v_proj", [h, h]),
            ("self_attn.o_proj", [h, h]),
            ("mlp.gate_proj", [i, h]),
            ("mlp.up_proj", [i, h]),
            ("mlp.down_proj", [h, i]),
        ] {
            t.push((format!("{p}.{name}.weight"), dims.to_vec(), Init::Normal));
        }
        t.push((format!("{p}.input_layernorm.weight"), vec![h], Init::Ones));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![h], Init::Ones));
    }
    (config, t)
}

fn gpt_neox(s: Shape) -> Spec {
    let config = serde_json::json!({
        "model_type": "gpt_neox", "vocab_size": s.vocab, "hidden_size": s.hidden, "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "max_position_embeddings": s.positions,
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "tie_word_embeddings": false, "eos_token_id": 0, "torch_dtype": "float32"
    });
    let (h, i) = (s.hidden, s.intermediate);
    let mut t = vec![
        ("gpt_neox.embed_in.weight".into(), vec![s.vocab, h], Init::Normal),
        ("gpt_neox.final_layer_norm.weight".into(), vec![h], Init::Ones),
        ("gpt_neox.final_layer_norm.bias".into(), vec![h], Init::Zeros),
        ("embed_out.weight".into(), vec![s.vocab, h], Init::Normal),
    ];
    for l in 0..s.layers {
        let p = format!("gpt_neox.layers.{l}");
        for (name, out, inp) in [
            ("attention.query_key_value", 3 * h, h),
            ("attention.dense", h, h),
            ("mlp.dense_h_to_4h", i, h),
            ("mlp.dense_4h_to_h", h, i),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![out, inp], Init::Normal));
            t.push((format!("{p}.{name}.bias"), vec![out], Init::Zeros));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.push((format!("{p}.{norm}.weight"), vec![h], Init::Ones));
            t.push((format!("{p}.{norm}.bias"), vec![h], Init::Zeros));
        }
    }
    (config, t)
}

/// Dropouts 0, as the other architectures' configs have them: without the keys GPT2Config
/// (and plasticity) would drop 10% at three places, and a benchmark would time the masks.
fn gpt2(s: Shape) -> Spec {
    let config = serde_json::json!({
        "model_type": "gpt2", "vocab_size": s.vocab, "n_embd": s.hidden, "n_layer": s.layers, "n_head": s.heads,
        "n_positions": s.positions, "n_inner": s.intermediate, "activation_function": "gelu_new", "eos_token_id": 0,
        "tie_word_embeddings": true, "torch_dtype": "float32", "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0
    });
    let (h, i) = (s.hidden, s.intermediate);
    let mut t = vec![
        ("transformer.wte.weight".into(), vec![s.vocab, h], Init::Normal),
        ("transformer.wpe.weight".into(), vec![s.positions, h], Init::Normal),
        ("transformer.ln_f.weight".into(), vec![h], Init::Ones),
        ("transformer.ln_f.bias".into(), vec![h], Init::Zeros),
    ];
    for l in 0..s.layers {
        let p = format!("transformer.h.{l}");
        for (name, inp, out) in
            [("attn.c_attn", h, 3 * h), ("attn.c_proj", h, h), ("mlp.c_fc", h, i), ("mlp.c_proj", i, h)]
        {
            t.push((format!("{p}.{name}.weight"), vec![inp, out], Init::Normal));
            t.push((format!("{p}.{name}.bias"), vec![out], Init::Zeros));
        }
        for norm in ["ln_1", "ln_2"] {
            t.push((format!("{p}.{norm}.weight"), vec![h], Init::Ones));
            t.push((format!("{p}.{norm}.bias"), vec![h], Init::Zeros));
        }
    }
    (config, t)
}
