//! One LoRA training update (forward, backward, clipping, AdamW) per architecture, batch 8 x
//! 128 tokens, r = 8 on PEFT's default targets, f32: on the committed fixture models (2
//! layers, hidden 64, vocab 512), and on random-weight checkpoints written at bench time at
//! the Pythia-14M shape (6 x 128, 4 heads, vocab 50304) and the Pythia-70M shape (6 x 512,
//! 8 heads). Reports time per step; tokens/s = 1024 / time. The PyTorch+PEFT comparison of
//! the same step is benches/compare_peft.sh.
//!
//!     cargo bench --bench train_step                 # all
//!     cargo bench --bench train_step -- pythia14m    # one group

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use plasticity::lora::{AdapterInit, LoraSpec};
use plasticity::model;
use plasticity::synth::{write_checkpoint, Shape};
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
        let m = model::load(&root.join(name), &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu)
            .expect("fixture model");
        let mut trainer = Trainer::new(&m, &spec()).expect("trainer");
        let b = batch();
        group.bench_function(name, |bench| bench.iter(|| trainer.step(std::slice::from_ref(&b)).expect("step")));
    }
    group.finish();
}

/// The same step on random checkpoints of a realistic shape, one per architecture.
fn realistic_step(c: &mut Criterion, group_name: &str, shape: Shape) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    for arch in ["llama", "gpt_neox", "gpt2"] {
        let path = dir.path().join(arch);
        write_checkpoint(&path, arch, shape, 0).expect("random checkpoint");
        let m = model::load(&path, &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu)
            .expect("random checkpoint loads");
        let mut trainer = Trainer::new(&m, &spec()).expect("trainer");
        let b = batch();
        group.bench_function(arch, |bench| bench.iter(|| trainer.step(std::slice::from_ref(&b)).expect("step")));
    }
    group.finish();
}

fn pythia14m(c: &mut Criterion) {
    realistic_step(c, "pythia14m_step_b8_t128", Shape::PYTHIA_14M);
}

fn pythia70m(c: &mut Criterion) {
    realistic_step(c, "pythia70m_step_b8_t128", Shape::PYTHIA_70M);
}

criterion_group!(benches, train_step, pythia14m, pythia70m);
criterion_main!(benches);
