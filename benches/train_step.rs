//! One LoRA training update (forward, backward, clipping, AdamW) per architecture, on the
//! committed fixture models (2 layers, hidden 64, vocab 512), batch 8 x 128 tokens, r = 8 on
//! PEFT's default targets. Reports time per step; tokens/s = 1024 / time. Larger shapes and
//! the PyTorch+PEFT comparison belong to the performance work.
//!
//!     cargo bench --bench train_step

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use plasticity::lora::{AdapterInit, LoraSpec};
use plasticity::model;
use plasticity::train::optim::AdamWConfig;
use plasticity::train::{Batch, TrainSpec, Trainer};

const MODELS: [&str; 4] = ["llama_gqa", "qwen2", "gpt_neox_parallel", "gpt2"];
const BATCH: usize = 8;
const SEQ: usize = 128;

fn batch() -> Batch {
    let ids: Vec<u32> = (0..BATCH * SEQ).map(|i| ((i * 7919 + 13) % 511 + 1) as u32).collect();
    let ids = Tensor::from_vec(ids, (BATCH, SEQ), &Device::Cpu).expect("ids");
    let labels = ids.ones_like().and_then(|t| t.to_dtype(DType::F32)).expect("labels");
    Batch { ids, labels }
}

fn spec() -> TrainSpec {
    TrainSpec {
        optimizer: AdamWConfig::default(),
        warmup_steps: 0,
        max_grad_norm: 1.0,
        batch_size: BATCH,
        grad_accum: 1,
        steps: 1,
        eval_every: 0,
        timing_warmup: 0,
    }
}

fn train_step(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut group = c.benchmark_group("lora_step_b8_t128");
    group.sample_size(20);
    for name in MODELS {
        let m = model::load(&root.join(name), &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu).expect("fixture model");
        let mut trainer = Trainer::new(&m, &spec()).expect("trainer");
        let b = batch();
        group.bench_function(name, |bench| bench.iter(|| trainer.step(std::slice::from_ref(&b)).expect("step")));
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
