//! Engine invariants: every adapter weight receives a gradient, the frozen base is untouched,
//! and the same seeds give the same curves.

use candle_core::{Device, Tensor};
use plasticity::data::BatchOrder;
use plasticity::lora::{AdapterInit, LoraSpec, Targets};
use plasticity::train::optim::AdamWConfig;
use plasticity::train::{fine_tune, fine_tune_until, loss_sum, Batch, TrainSpec, Trainer};

use super::util::{load, load_with, model_dir, task_blocks, to_vec};

fn spec(steps: usize) -> TrainSpec {
    TrainSpec {
        optimizer: AdamWConfig { lr: 1e-2, ..AdamWConfig::default() },
        warmup_steps: 0,
        max_grad_norm: 1.0,
        batch_size: 4,
        grad_accum: 1,
        steps,
        eval_every: 2,
        timing_warmup: 0,
    }
}

fn batch() -> Batch {
    let blocks = task_blocks(32, 4);
    let refs: Vec<_> = blocks.train[..4].iter().collect();
    Batch::from_blocks(&refs, &Device::Cpu).unwrap()
}

/// After one update (B is no longer zero), a backward pass reaches every A and every B.
fn every_adapter_gets_a_gradient(name: &str, targets: Targets) {
    let lora = LoraSpec { targets, ..LoraSpec::default() };
    let model = load_with(&model_dir(name), &lora, &AdapterInit::Seeded(1));
    let b = batch();
    Trainer::new(&model, &spec(1)).unwrap().step(std::slice::from_ref(&b)).unwrap();
    let (sum, count) = loss_sum(&model.model.forward(&b.ids).unwrap(), &b).unwrap();
    let grads = (sum / count).unwrap().backward().unwrap();
    for ad in &model.adapters {
        for (which, var) in [("A", &ad.a), ("B", &ad.b)] {
            let g =
                grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {}.{which}", ad.module));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{name}: zero gradient for {}.{which}", ad.module);
        }
    }
}

#[test]
fn every_adapter_weight_gets_a_gradient() {
    for name in
        ["llama_gqa", "qwen2", "olmo", "olmo2", "olmo3", "bloom", "gpt_neox_parallel", "gpt_neox_sequential", "gpt2"]
    {
        every_adapter_gets_a_gradient(name, Targets::AllLinear);
    }
}

#[test]
fn default_targets_follow_peft() {
    let modules = |name: &str| load(name).adapters.iter().map(|a| a.module.clone()).collect::<Vec<_>>();
    assert_eq!(
        modules("llama_gqa"),
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    assert_eq!(
        modules("gpt_neox_parallel"),
        ["gpt_neox.layers.0.attention.query_key_value", "gpt_neox.layers.1.attention.query_key_value"]
    );
    assert_eq!(modules("gpt2"), ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]);
    assert_eq!(
        modules("bloom"),
        ["transformer.h.0.self_attention.query_key_value", "transformer.h.1.self_attention.query_key_value"]
    );
    // PEFT has no default for OLMo: Llama's
    for name in ["olmo", "olmo2", "olmo3"] {
        assert_eq!(modules(name), modules("llama_gqa"), "{name}");
    }
}

/// Training changes only the adapters: with B reset to zero the logits are bit-for-bit those
/// of the untouched checkpoint.
#[test]
fn base_weights_are_unchanged_by_training() {
    let ids = batch().ids;
    let fresh = to_vec(&load("llama_gqa").model.forward(&ids).unwrap());
    let model = load("llama_gqa");
    let mut trainer = Trainer::new(&model, &spec(3)).unwrap();
    for _ in 0..3 {
        trainer.step(&[batch()]).unwrap();
    }
    let trained = to_vec(&model.model.forward(&ids).unwrap());
    assert_ne!(trained, fresh, "training changed nothing");
    for ad in &model.adapters {
        ad.b.set(&ad.b.zeros_like().unwrap()).unwrap();
    }
    assert_eq!(to_vec(&model.model.forward(&ids).unwrap()), fresh);
}

fn curve(seed: u64, data_seed: u64) -> Vec<(Option<f64>, Option<f64>)> {
    let blocks = task_blocks(32, 4);
    let model = load_with(&model_dir("gpt_neox_parallel"), &LoraSpec::default(), &AdapterInit::Seeded(seed));
    let order = BatchOrder::new(blocks.train.len(), 4, 4, data_seed);
    let out = fine_tune(&model, &blocks, &order, &spec(4), &mut |_| {}).unwrap();
    out.curve.iter().map(|p| (p.train_loss, p.eval_loss)).collect()
}

#[test]
fn same_seeds_same_curve() {
    let a = curve(3, 5);
    assert_eq!(a, curve(3, 5));
    assert_ne!(a, curve(4, 5), "the adapter seed changes nothing");
    assert_ne!(a, curve(3, 6), "the data seed changes nothing");
}

/// A run paused after 3 updates, its model dropped and reloaded, then continued, gives the
/// same curve as an uninterrupted run: adapters, AdamW moments, the warm-up schedule and
/// the dropout generator all carry over (racing depends on it).
#[test]
fn paused_and_resumed_run_equals_uninterrupted() {
    let blocks = task_blocks(32, 4);
    let lora = LoraSpec { dropout: 0.1, ..LoraSpec::default() };
    let load =
        || plasticity::model::load(&model_dir("llama_gqa"), &lora, &AdapterInit::Seeded(2), 2, &Device::Cpu).unwrap();
    let spec = TrainSpec { warmup_steps: 2, ..spec(6) };
    let order = BatchOrder::new(blocks.train.len(), 4, 6, 9);
    let losses =
        |c: &[plasticity::curve::CurvePoint]| c.iter().map(|p| (p.step, p.train_loss, p.eval_loss)).collect::<Vec<_>>();
    let whole = fine_tune(&load(), &blocks, &order, &spec, &mut |_| {}).unwrap();
    let paused = fine_tune_until(&load(), &blocks, &order, &spec, None, 3, &mut |_| {}).unwrap();
    assert_eq!(paused.steps_done(), 3);
    let resumed = fine_tune_until(&load(), &blocks, &order, &spec, Some(paused), 6, &mut |_| {}).unwrap();
    assert_eq!(losses(&resumed.outcome(&spec).curve), losses(&whole.curve));
    let restarted = fine_tune_until(&load(), &blocks, &order, &spec, None, 6, &mut |_| {}).unwrap();
    assert_eq!(losses(&restarted.curve), losses(&whole.curve), "runs are deterministic");
}

/// The frozen matmul's backward equals candle's matmul backward for the input.
#[test]
fn frozen_matmul_gradient_matches_matmul() {
    let dev = Device::Cpu;
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f32, 1.0, (4, 5), &dev).unwrap();
    let ours = plasticity::lora::frozen_matmul(x.as_tensor(), &w.t().unwrap()).unwrap();
    let theirs = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
    assert_eq!(to_vec(&ours), to_vec(&theirs));
    let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let (a, b) = (to_vec(g1.get(x.as_tensor()).unwrap()), to_vec(g2.get(x.as_tensor()).unwrap()));
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5));
    assert!(g1.get(&w).is_none());
}

/// The frozen linear with a bias equals matmul + bias, in value and dL/dx, for a weight
/// stored (out, in) as nn.Linear and (in, out) as GPT-2's Conv1D.
#[test]
fn frozen_linear_with_bias_matches_matmul_plus_bias() {
    let dev = Device::Cpu;
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap()).unwrap();
    let bias = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (4, 5), &dev).unwrap();
    for wt in [w.t().unwrap(), w.t().unwrap().contiguous().unwrap()] {
        let ours = plasticity::lora::frozen_linear(x.as_tensor(), &wt, Some(&bias)).unwrap();
        let theirs = x.as_tensor().broadcast_matmul(&wt).unwrap().broadcast_add(&bias).unwrap();
        let (a, b) = (to_vec(&ours), to_vec(&theirs));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{a:?} {b:?}");
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (to_vec(g1.get(x.as_tensor()).unwrap()), to_vec(g2.get(x.as_tensor()).unwrap()));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-4));
    }
}

/// Random checkpoints written by `synth` load as the architectures they claim to be.
#[test]
fn synthetic_checkpoints_load() {
    let dir = super::util::Dir::new();
    let shape =
        plasticity::synth::Shape { layers: 2, hidden: 32, heads: 4, intermediate: 64, vocab: 100, positions: 64 };
    for arch in ["llama", "gpt_neox", "gpt2"] {
        let path = dir.path().join(arch);
        plasticity::synth::write_checkpoint(&path, arch, shape, 0).unwrap();
        let m = load_with(&path, &LoraSpec::default(), &AdapterInit::Seeded(0));
        let ids = Tensor::from_vec((0..16u32).collect::<Vec<_>>(), (2, 8), &Device::Cpu).unwrap();
        assert_eq!(m.model.forward(&ids).unwrap().dims(), &[2, 8, 100], "{arch}");
        let tensors = candle_core::safetensors::load(path.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(m.n_params, tensors.values().map(|t| t.elem_count()).sum::<usize>(), "{arch}: parameter count");
        // Every tensor but the lookup tables takes part in a matmul (gpt2's wte doubles as its head).
        let lookups: usize = tensors
            .iter()
            .filter(|(k, _)| k.contains("embed_in") || k.contains("embed_tokens") || k.contains("wpe"))
            .map(|(_, t)| t.elem_count())
            .sum();
        let want = 4.0 * (m.n_params - lookups) as f64 + 12.0 * (2 * 8 * 32) as f64;
        assert_eq!(m.flops_per_token(8), want, "{arch}: FLOPs per token");
    }
}

/// Gradient accumulation divides every micro-batch's loss sum by the loss tokens of the whole
/// update, as transformers' Trainer does (`num_items_in_batch`): 2 micro-batches of 4 blocks
/// give the curve of 1 batch of 8. The prompt/completion task makes the counts differ between
/// micro-batches, where dividing each by its own count would weigh their tokens unequally.
#[test]
fn two_micro_batches_of_four_equal_one_batch_of_eight() {
    let task = super::util::fixtures().join("task_prompt.jsonl");
    let tok = plasticity::data::TaskTokenizer::open(&super::util::fixtures().join("tokenizer.json")).unwrap();
    let stream = plasticity::data::tokenize(&plasticity::data::read_task(&task).unwrap(), &tok, 0).unwrap();
    let blocks = plasticity::data::blocks(&stream, 32, 2, &task).unwrap();
    let counts: Vec<usize> = blocks.train.iter().map(|b| b.labels[1..].iter().filter(|&&l| l).count()).collect();
    assert!(
        counts.iter().min() != counts.iter().max(),
        "the blocks must carry different numbers of loss tokens: {counts:?}"
    );
    let curve = |batch_size: usize, grad_accum: usize| {
        let model = plasticity::model::load(
            &model_dir("llama_gqa"),
            &LoraSpec::default(),
            &AdapterInit::Seeded(3),
            3,
            &Device::Cpu,
        )
        .unwrap();
        let spec = TrainSpec { batch_size, grad_accum, ..spec(4) };
        let order = BatchOrder::new(blocks.train.len(), batch_size, 4 * grad_accum, 5);
        let out = fine_tune(&model, &blocks, &order, &spec, &mut |_| {}).unwrap();
        out.curve.iter().flat_map(|p| [p.train_loss, p.eval_loss]).flatten().collect::<Vec<f64>>()
    };
    let (accumulated, whole) = (curve(4, 2), curve(8, 1));
    assert_eq!(accumulated.len(), whole.len());
    for (a, w) in accumulated.iter().zip(&whole) {
        assert!((a - w).abs() <= 1e-5 * w.abs(), "2 x 4 {accumulated:?}\n1 x 8 {whole:?}");
    }
}
