//! LoRA training matches PEFT: from the same saved adapter and on the same batches, every
//! step's loss is within 1e-3 relative (in practice far closer), as are the clipped grad
//! norms and the adapter weights after ten AdamW steps.

use candle_core::{DType, Device};
use plasticity::lora::{AdapterInit, PeftConfig};
use plasticity::train::optim::AdamWConfig;
use plasticity::train::{Batch, TrainSpec, Trainer};

use super::util::{fixtures, floats, json, load_with, model_dir};

pub(super) fn spec(expected: &serde_json::Value) -> TrainSpec {
    TrainSpec {
        optimizer: AdamWConfig { lr: expected["lr"].as_f64().unwrap(), ..AdamWConfig::default() },
        warmup_steps: 0,
        max_grad_norm: expected["max_grad_norm"].as_f64().unwrap(),
        batch_size: 4,
        grad_accum: 1,
        steps: 10,
        eval_every: 0,
        timing_warmup: 0,
    }
}

fn check(name: &str) {
    let dir = fixtures().join("peft").join(name);
    let expected = json(&dir.join("expected.json"));
    let lora = PeftConfig::read(&dir).unwrap().spec(&dir).unwrap();
    let model = load_with(&model_dir(name), &lora, &AdapterInit::Peft(dir.clone()));
    let batches = candle_core::safetensors::load(dir.join("batches.safetensors"), &Device::Cpu).unwrap();
    let ids = batches["input_ids"].to_dtype(DType::U32).unwrap(); // (steps, b, t)
    let mut trainer = Trainer::new(&model, &spec(&expected)).unwrap();
    let (want_loss, want_norm) = (floats(&expected["losses"]), floats(&expected["grad_norms"]));
    for step in 0..want_loss.len() {
        let step_ids = ids.get(step).unwrap();
        let labels = step_ids.ones_like().unwrap().to_dtype(DType::F32).unwrap();
        let (loss, norm) = trainer.step(&[Batch { ids: step_ids, labels }]).unwrap();
        let rel = (loss - want_loss[step]).abs() / want_loss[step];
        assert!(rel < 1e-3, "{name} step {step}: loss {loss} vs PEFT {}", want_loss[step]);
        let rel = (norm - want_norm[step]).abs() / want_norm[step];
        assert!(rel < 1e-3, "{name} step {step}: grad norm {norm} vs PEFT {}", want_norm[step]);
    }
    let l2: f64 = model
        .adapters
        .iter()
        .flat_map(|a| [a.a.as_tensor(), a.b.as_tensor()])
        .map(|t| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
        .sum::<f64>()
        .sqrt();
    let want = expected["final_lora_params_l2"].as_f64().unwrap();
    assert!((l2 - want).abs() / want < 1e-4, "{name}: adapter norm after training {l2} vs PEFT {want}");
}

#[test]
fn llama_training_matches_peft() {
    check("llama_gqa");
}

#[test]
fn qwen2_training_matches_peft() {
    check("qwen2");
}

#[test]
fn gpt_neox_training_matches_peft() {
    check("gpt_neox_parallel");
}

#[test]
fn gpt2_training_matches_peft() {
    check("gpt2");
}
