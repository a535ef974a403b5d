//! Prints how far plasticity is from transformers and PEFT on the committed fixtures:
//! the largest relative logit error and the eval-loss error of every architecture, and the
//! largest relative loss error over ten LoRA steps against PEFT. The tests assert bounds;
//! this shows the figures.
//!
//!     cargo run --release --example parity
//!     PLASTICITY_DEVICE=cuda target/cuda/release/examples/parity   # the same on a GPU

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use plasticity::data::{self, TaskTokenizer};
use plasticity::lora::{AdapterInit, LoraSpec, PeftConfig};
use plasticity::model;
use plasticity::train::optim::AdamWConfig;
use plasticity::train::{eval_loss, Batch, TrainSpec, Trainer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `PLASTICITY_DEVICE` (cpu, cuda, cuda:N, auto), cpu when unset.
fn device() -> Res<Device> {
    Ok(plasticity::device::parse(&std::env::var("PLASTICITY_DEVICE").unwrap_or_else(|_| "cpu".into()))?)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(path: &Path) -> Res<serde_json::Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
}

/// (max relative logit error, relative eval-loss error) against transformers.
fn forward_errors(name: &str) -> Res<(f64, f64)> {
    let expected = json(&fixtures().join("expected").join(format!("{name}.json")))?;
    let dev = device()?;
    let m = model::load(&fixtures().join("models").join(name), &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &dev)?;
    let rows = expected["input_ids"].as_array().ok_or("input_ids")?;
    let ids: Vec<u32> = rows.iter().flat_map(floats).map(|x| x as u32).collect();
    let t = ids.len() / 2;
    let logits = m.model.forward(&Tensor::from_vec(ids, (2, t), &dev)?)?.flatten_all()?.to_vec1::<f32>()?;
    let want = floats(&expected["logits"]);
    let logit_err =
        logits.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0)).fold(0.0, f64::max);
    let task = fixtures().join("task.jsonl");
    let tok = TaskTokenizer::open(&fixtures().join("tokenizer.json"))?;
    let stream = data::tokenize(&data::read_task(&task)?, &tok, 0)?;
    let blocks = data::blocks(&stream, 32, 4, &task)?;
    let want_loss = expected["eval_loss"].as_f64().ok_or("eval_loss")?;
    let loss = eval_loss(&m, &blocks.eval, 4)?;
    Ok((logit_err, (loss - want_loss).abs() / want_loss))
}

/// Largest relative per-step loss error over PEFT's ten steps.
fn peft_error(name: &str) -> Res<f64> {
    let dir = fixtures().join("peft").join(name);
    let expected = json(&dir.join("expected.json"))?;
    let spec = PeftConfig::read(&dir)?.spec(&dir)?;
    let dev = device()?;
    let m = model::load(&fixtures().join("models").join(name), &spec, &AdapterInit::Peft(dir.clone()), 0, &dev)?;
    let train = TrainSpec {
        optimizer: AdamWConfig { lr: expected["lr"].as_f64().ok_or("lr")?, ..AdamWConfig::default() },
        warmup_steps: 0,
        max_grad_norm: 1.0,
        batch_size: 4,
        grad_accum: 1,
        steps: 10,
        eval_every: 0,
        timing_warmup: 0,
    };
    let ids = candle_core::safetensors::load(dir.join("batches.safetensors"), &Device::Cpu)?["input_ids"]
        .to_dtype(DType::U32)?
        .to_device(&dev)?;
    let mut trainer = Trainer::new(&m, &train)?;
    let mut worst: f64 = 0.0;
    for (step, want) in floats(&expected["losses"]).into_iter().enumerate() {
        let ids = ids.get(step)?;
        let labels = ids.ones_like()?.to_dtype(DType::F32)?;
        let (loss, _) = trainer.step(&[Batch { ids, labels }])?;
        worst = worst.max((loss - want).abs() / want);
    }
    Ok(worst)
}

fn main() -> Res<()> {
    println!("{:<22} {:>18} {:>18}", "model", "logits max rel err", "eval loss rel err");
    for name in [
        "llama_gqa",
        "llama_tied_bf16",
        "llama_sharded",
        "mistral",
        "qwen2",
        "olmo",
        "olmo2",
        "olmo3",
        "gpt_neox_parallel",
        "gpt_neox_sequential",
        "gpt2",
        "bloom",
        "bloom_post_ln",
    ] {
        let (logits, loss) = forward_errors(name)?;
        println!("{name:<22} {logits:>18.2e} {loss:>18.2e}");
    }
    println!("\n{:<22} {:>28}", "model", "PEFT 10-step loss max rel err");
    for name in ["llama_gqa", "qwen2", "olmo", "olmo2", "olmo3", "gpt_neox_parallel", "gpt2", "bloom"] {
        println!("{name:<22} {:>28.2e}", peft_error(name)?);
    }
    Ok(())
}
