//! The forward pass matches transformers: logits of a fixed input within 1e-4 relative, and
//! the eval loss of the fixture task within 1e-5 relative, for every architecture fixture.

use candle_core::{Device, Tensor};
use plasticity::train::eval_loss;

use super::util::{fixtures, floats, json, load, task_blocks, to_vec};

const MODELS: [&str; 8] = [
    "llama_gqa",
    "llama_tied_bf16",
    "llama_sharded",
    "mistral",
    "qwen2",
    "gpt_neox_parallel",
    "gpt_neox_sequential",
    "gpt2",
];

/// Largest |ours - theirs| / max(1, |theirs|) over all logits.
fn max_rel_err(ours: &[f32], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0)).fold(0.0, f64::max)
}

fn check_logits(name: &str) {
    let expected = json(&fixtures().join("expected").join(format!("{name}.json")));
    let ids: Vec<u32> = expected["input_ids"].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32)).collect();
    let shape: Vec<usize> = expected["logits_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let model = load(name);
    let ids = Tensor::from_vec(ids, (shape[0], shape[1]), &Device::Cpu).unwrap();
    let logits = model.model.forward(&ids).unwrap();
    assert_eq!(logits.dims(), &shape[..], "{name}");
    let err = max_rel_err(&to_vec(&logits), &floats(&expected["logits"]));
    assert!(err < 1e-4, "{name}: logits differ from transformers by {err:e} (relative)");
}

fn check_eval_loss(name: &str) {
    let expected = json(&fixtures().join("expected").join(format!("{name}.json")));
    let want = expected["eval_loss"].as_f64().unwrap();
    let seq_len = expected["seq_len"].as_u64().unwrap() as usize;
    let eval_blocks = expected["eval_blocks"].as_u64().unwrap() as usize;
    let blocks = task_blocks(seq_len, eval_blocks);
    let got = eval_loss(&load(name), &blocks.eval, 2).unwrap();
    let rel = (got - want).abs() / want.abs();
    assert!(rel < 1e-5, "{name}: eval loss {got} vs transformers {want} ({rel:e} relative)");
}

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        check_logits(name);
    }
}

#[test]
fn eval_loss_matches_transformers() {
    for name in MODELS {
        check_eval_loss(name);
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
