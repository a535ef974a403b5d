//! LoRA training matches PEFT: from the same saved adapter and on the same batches, every
//! step's loss is within 1e-3 relative (in practice far closer), as are the clipped grad
//! norms and the adapter weights after ten AdamW steps; with each batch whole and cut into
//! shards of one sequence. A sharded step gives the same numbers on 1 thread as on 4.

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
    check_in_shards(name, None); // the trainer's own cut: the whole batch of 4 x 32
    check_in_shards(name, Some(32)); // four shards of one sequence, on as many threads
}

fn check_in_shards(name: &str, shard_tokens: Option<usize>) {
    let dir = fixtures().join("peft").join(name);
    let expected = json(&dir.join("expected.json"));
    let lora = PeftConfig::read(&dir).unwrap().spec(&dir).unwrap();
    let model = load_with(&model_dir(name), &lora, &AdapterInit::Peft(dir.clone()));
    let batches = candle_core::safetensors::load(dir.join("batches.safetensors"), &Device::Cpu).unwrap();
    let ids = batches["input_ids"].to_dtype(DType::U32).unwrap(); // (steps, b, t)
    let mut trainer = Trainer::new(&model, &spec(&expected)).unwrap();
    if let Some(tokens) = shard_tokens {
        trainer = trainer.with_shard_tokens(tokens);
    }
    let shards = shard_tokens.map_or("the trainer's".to_string(), |t| format!("{t}-token"));
    let (want_loss, want_norm) = (floats(&expected["losses"]), floats(&expected["grad_norms"]));
    for step in 0..want_loss.len() {
        let step_ids = ids.get(step).unwrap();
        let labels = step_ids.ones_like().unwrap().to_dtype(DType::F32).unwrap();
        let (loss, norm) = trainer.step(&[Batch { ids: step_ids, labels }]).unwrap();
        let rel = (loss - want_loss[step]).abs() / want_loss[step];
        assert!(rel < 1e-3, "{name} in {shards} shards, step {step}: loss {loss} vs PEFT {}", want_loss[step]);
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

#[test]
fn olmo_training_matches_peft() {
    check("olmo");
}

#[test]
fn olmo2_training_matches_peft() {
    check("olmo2");
}

#[test]
fn olmo3_training_matches_peft() {
    check("olmo3");
}

#[test]
fn bloom_training_matches_peft() {
    check("bloom");
}

/// The losses, grad norms and adapters of three steps in shards of `shard_tokens`, on a pool of
/// `threads`.
fn sharded_run(threads: usize, shard_tokens: usize) -> (Vec<(f64, f64)>, Vec<Vec<f32>>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let dir = fixtures().join("peft").join("llama_gqa");
        let expected = json(&dir.join("expected.json"));
        let lora = PeftConfig::read(&dir).unwrap().spec(&dir).unwrap();
        let model = load_with(&model_dir("llama_gqa"), &lora, &AdapterInit::Peft(dir.clone()));
        let ids = candle_core::safetensors::load(dir.join("batches.safetensors"), &Device::Cpu).unwrap()["input_ids"]
            .to_dtype(DType::U32)
            .unwrap();
        let mut trainer = Trainer::new(&model, &spec(&expected)).unwrap().with_shard_tokens(shard_tokens);
        let steps = (0..3)
            .map(|step| {
                let step_ids = ids.get(step).unwrap();
                let labels = step_ids.ones_like().unwrap().to_dtype(DType::F32).unwrap();
                trainer.step(&[Batch { ids: step_ids, labels }]).unwrap()
            })
            .collect();
        let adapters = model.adapters.iter().map(|a| a.b.as_tensor().flatten_all().unwrap().to_vec1().unwrap());
        (steps, adapters.collect())
    })
}

#[test]
fn sharded_steps_do_not_depend_on_the_thread_count() {
    // a batch of 4 x 32: four shards, one per thread; two, whose products take two threads
    // each; the whole batch, whose products take all four
    for shard_tokens in [32, 64, 128] {
        let (one, four) = (sharded_run(1, shard_tokens), sharded_run(4, shard_tokens));
        assert_eq!(one, four, "shards of {shard_tokens} tokens");
        assert!(one.1.iter().flatten().any(|&w| w != 0.0), "the adapters did not train");
    }
}
