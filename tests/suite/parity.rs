//! The forward pass matches transformers: logits of a fixed input within 1e-4 relative, and
//! the eval loss of the fixture task within 1e-5 relative, for every architecture fixture.

use std::path::Path;

use candle_core::{Device, Tensor};
use plasticity::lora::{AdapterInit, LoraSpec};
use plasticity::train::eval_loss;

use super::util::{fixtures, floats, json, load, load_with, model_dir, task_blocks, to_vec, Dir};

/// (model folder, expected numbers): gpt2_pickle holds gpt2's weights as pytorch_model.bin.
const MODELS: [(&str, &str); 16] = [
    ("llama_gqa", "llama_gqa"),
    ("llama_tied_bf16", "llama_tied_bf16"),
    ("llama_sharded", "llama_sharded"),
    ("llama_rope_llama3", "llama_rope_llama3"),
    ("llama_rope_linear", "llama_rope_linear"),
    ("mistral", "mistral"),
    ("qwen2", "qwen2"),
    ("olmo", "olmo"),
    ("olmo2", "olmo2"),
    ("olmo3", "olmo3"),
    ("gpt_neox_parallel", "gpt_neox_parallel"),
    ("gpt_neox_sequential", "gpt_neox_sequential"),
    ("gpt2", "gpt2"),
    ("gpt2_pickle", "gpt2"),
    ("bloom", "bloom"),
    ("bloom_post_ln", "bloom_post_ln"),
];

/// Largest |ours - theirs| / max(1, |theirs|) over all logits.
fn max_rel_err(ours: &[f32], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0)).fold(0.0, f64::max)
}

fn check_logits(dir: &Path, name: &str) {
    let expected = json(&fixtures().join("expected").join(format!("{name}.json")));
    let ids: Vec<u32> = expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32))
        .collect();
    let shape: Vec<usize> =
        expected["logits_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let model = load_with(dir, &LoraSpec::default(), &AdapterInit::Seeded(0));
    let ids = Tensor::from_vec(ids, (shape[0], shape[1]), &Device::Cpu).unwrap();
    let logits = model.model.forward(&ids).unwrap();
    assert_eq!(logits.dims(), &shape[..], "{name}");
    let err = max_rel_err(&to_vec(&logits), &floats(&expected["logits"]));
    assert!(err < 1e-4, "{}: logits differ from transformers by {err:e} (relative)", dir.display());
}

fn check_eval_loss(dir: &str, name: &str) {
    let expected = json(&fixtures().join("expected").join(format!("{name}.json")));
    let want = expected["eval_loss"].as_f64().unwrap();
    let seq_len = expected["seq_len"].as_u64().unwrap() as usize;
    let eval_blocks = expected["eval_blocks"].as_u64().unwrap() as usize;
    let blocks = task_blocks(seq_len, eval_blocks);
    let got = eval_loss(&load(dir), &blocks.eval, 2).unwrap();
    let rel = (got - want).abs() / want.abs();
    assert!(rel < 1e-5, "{name}: eval loss {got} vs transformers {want} ({rel:e} relative)");
}

#[test]
fn logits_match_transformers() {
    for (dir, name) in MODELS {
        check_logits(&model_dir(dir), name);
    }
}

#[test]
fn eval_loss_matches_transformers() {
    for (dir, name) in MODELS {
        check_eval_loss(dir, name);
    }
}

#[test]
fn tokenization_matches_the_tokenizers_library() {
    let expected = json(&fixtures().join("expected/task_tokens.json"));
    let blocks = task_blocks(32, 4);
    let first: Vec<u32> = blocks.train[0].ids.iter().chain(&blocks.train[1].ids).copied().collect();
    let want: Vec<u32> = expected["first_64"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(first, want);
    assert_eq!(blocks.n_tokens as u64, expected["n_tokens"].as_u64().unwrap());
}

/// The same checkpoint with its config rewritten as transformers 4 wrote it (top-level
/// `rope_theta` / `rope_scaling`, `rotary_pct`, `rotary_emb_base`, `torch_dtype`) gives the
/// same logits.
#[test]
fn transformers_4_configs_are_read() {
    let dir = Dir::new();
    for name in ["llama_gqa", "llama_rope_llama3", "gpt_neox_sequential"] {
        let to = dir.copy_checkpoint(&model_dir(name), name);
        let mut cfg = json(&to.join("config.json"));
        let obj = cfg.as_object_mut().unwrap();
        let rope = obj.remove("rope_parameters").unwrap();
        let dtype = obj.remove("dtype").unwrap();
        obj.insert("torch_dtype".into(), dtype);
        obj.insert("transformers_version".into(), "4.46.0".into());
        if name.starts_with("gpt_neox") {
            obj.insert("rotary_pct".into(), rope["partial_rotary_factor"].clone());
            obj.insert("rotary_emb_base".into(), rope["rope_theta"].clone());
        } else {
            obj.insert("rope_theta".into(), rope["rope_theta"].clone());
            let mut scaling = rope.clone();
            scaling.as_object_mut().unwrap().remove("rope_theta");
            let default = scaling["rope_type"] == "default";
            obj.insert("rope_scaling".into(), if default { serde_json::Value::Null } else { scaling });
        }
        std::fs::write(to.join("config.json"), cfg.to_string()).unwrap();
        check_logits(&to, name);
    }
}

#[test]
fn unsupported_rope_types_are_refused() {
    let dir = Dir::new();
    let to = dir.copy_checkpoint(&model_dir("llama_gqa"), "yarn");
    let mut cfg = json(&to.join("config.json"));
    cfg["rope_parameters"]["rope_type"] = "yarn".into();
    std::fs::write(to.join("config.json"), cfg.to_string()).unwrap();
    let err = plasticity::model::load(&to, &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json") && err.contains("yarn"), "{err}");
}

/// OLMo 3's per-layer attention is read from `layer_types`; what plasticity cannot compute is
/// refused by name, and so is a list that does not cover the layers.
#[test]
fn olmo3_layer_types_are_checked() {
    let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = Dir::new();
        let to = dir.copy_checkpoint(&model_dir("olmo3"), "olmo3");
        let mut cfg = json(&to.join("config.json"));
        edit(&mut cfg);
        std::fs::write(to.join("config.json"), cfg.to_string()).unwrap();
        plasticity::model::load(&to, &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu)
            .err()
            .expect("refused")
            .to_string()
    };
    let err = refused(&|c| c["layer_types"][0] = "chunked_attention".into());
    assert!(err.contains("config.json") && err.contains("chunked_attention"), "{err}");
    let err = refused(&|c| c["layer_types"] = serde_json::json!(["full_attention"]));
    assert!(err.contains("layer_types has 1 entries for 2 layers"), "{err}");
    let err = refused(&|c| c["rope_parameters"]["full_attention"]["rope_type"] = "yarn".into());
    assert!(err.contains("yarn"), "{err}");
}

/// BigScience's BLOOM configs say `n_embed` where transformers 5 writes `hidden_size`; the
/// same checkpoint read either way gives the same logits.
#[test]
fn bloom_configs_with_n_embed_are_read() {
    let dir = Dir::new();
    let to = dir.copy_checkpoint(&model_dir("bloom"), "bloom");
    let mut cfg = json(&to.join("config.json"));
    let obj = cfg.as_object_mut().unwrap();
    let hidden = obj.remove("hidden_size").unwrap();
    obj.insert("n_embed".into(), hidden);
    obj.insert("hidden_size".into(), 1.into()); // n_embed wins, as in transformers
    std::fs::write(to.join("config.json"), cfg.to_string()).unwrap();
    check_logits(&to, "bloom");
}
