//! `--dtype bf16` runs as transformers + PEFT run a model loaded with
//! `dtype=torch.bfloat16` (scripts/make_bf16_fixtures.py's numbers).
//!
//! Logits: bf16 rounds after every op, so an f32 computation, or one op rounded at another
//! point than torch rounds it (a bias added after the matmul instead of inside it, a sum of
//! three terms in another order), lands as far from transformers' bf16 logits as its f32 ones
//! are. Ours must be within 0.6 of that distance (max and mean). gpt_neox, qwen2, olmo, olmo2
//! and bloom match bit for bit (OLMo rotates in f32 and rounds once, Llama rounds each op); llama and gpt2 differ where a transcendental function (cos, tanh) differs
//! from torch's in the last f32 bit and the bf16 rounding then flips.
//!
//! Training: PEFT's 10-step loss curve on the bf16 base with f32 adapters, within 5e-4
//! relative at every step.

use candle_core::{DType, Device, Tensor};
use plasticity::lora::{AdapterInit, LoraSpec, PeftConfig};
use plasticity::model;
use plasticity::train::{Batch, Trainer};

use super::peft::spec;
use super::util::{fixtures, floats, json, model_dir, to_vec};

/// The models with PEFT traces.
const MODELS: [&str; 8] = ["llama_gqa", "qwen2", "gpt_neox_parallel", "gpt2", "olmo", "olmo2", "olmo3", "bloom"];
/// Logits only: one head of 128, whose scale 1/sqrt(128) is not a bf16 number.
const HD128: &str = "llama_hd128";

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn mean_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

fn expected(name: &str) -> serde_json::Value {
    json(&fixtures().join("expected/bf16").join(format!("{name}.json")))
}

/// (|ours - transformers bf16|, |transformers bf16 - transformers f32|), max over the logits;
/// also checks the same ratio for the mean.
fn logits_errors(name: &str) -> (f64, f64) {
    let e = expected(name);
    let ids: Vec<u32> = e["input_ids"][0].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let m =
        model::load_as(&model_dir(name), &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu, DType::BF16)
            .unwrap();
    let t = ids.len();
    let logits = m.model.forward(&Tensor::from_vec(ids, (1, t), &Device::Cpu).unwrap()).unwrap();
    assert_eq!(logits.dtype(), DType::BF16, "{name}: the logits of a bf16 model are bf16");
    let ours: Vec<f64> = to_vec(&logits.to_dtype(DType::F32).unwrap()).iter().map(|&v| v as f64).collect();
    // the JSON holds the shortest decimals of f32 values: back to f32 before comparing
    let as_f32 = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| x as f32 as f64).collect() };
    let (theirs, f32) = (as_f32(floats(&e["logits"])), as_f32(floats(&e["logits_f32"])));
    let (mean_err, mean_moved) = (mean_abs(&ours, &theirs), mean_abs(&theirs, &f32));
    assert!(
        mean_err < 0.6 * mean_moved,
        "{name}: mean logit error {mean_err} against transformers' bf16, which is {mean_moved} from f32"
    );
    (max_abs(&ours, &theirs), max_abs(&theirs, &f32))
}

#[test]
fn bf16_logits_match_transformers_in_bf16() {
    let names: Vec<&str> = MODELS.iter().copied().chain([HD128]).collect();
    let errors: Vec<(f64, f64)> = names.iter().map(|n| logits_errors(n)).collect();
    for (name, &(err, moved)) in names.iter().zip(&errors) {
        eprintln!("{name}: bf16 logits within {err:.5} of transformers'; bf16 moves them {moved:.5} from f32");
    }
    let of = |n: &str| errors[names.iter().position(|m| *m == n).unwrap()].0;
    assert_eq!(of("gpt_neox_parallel"), 0.0, "gpt_neox: bit for bit");
    assert_eq!(of("olmo"), 0.0, "olmo: bit for bit");
    assert_eq!(of("olmo2"), 0.0, "olmo2: bit for bit");
    assert_eq!(of("bloom"), 0.0, "bloom: bit for bit");
    assert!(of("qwen2") < 1e-4, "qwen2: within one rounding");
    assert_eq!(of(HD128), 0.0, "llama with head_dim 128: bit for bit (the scale rounds once)");
    for (name, (err, moved)) in names.into_iter().zip(errors) {
        assert!(err < 0.6 * moved, "{name}: bf16 logits differ from transformers' bf16 by {err}, while bf16 itself moves them only {moved} from f32");
    }
}

/// PEFT's loss curve on the bf16 base, from the committed adapter and batches.
fn check_training(name: &str) {
    let dir = fixtures().join("peft").join(name);
    let (trace, e) = (json(&dir.join("expected.json")), expected(name));
    let lora = PeftConfig::read(&dir).unwrap().spec(&dir).unwrap();
    let m =
        model::load_as(&model_dir(name), &lora, &AdapterInit::Peft(dir.clone()), 0, &Device::Cpu, DType::BF16).unwrap();
    assert!(m.adapters.iter().all(|a| a.a.dtype() == DType::F32 && a.b.dtype() == DType::F32), "adapters stay f32");
    let batches = candle_core::safetensors::load(dir.join("batches.safetensors"), &Device::Cpu).unwrap();
    let ids = batches["input_ids"].to_dtype(DType::U32).unwrap(); // (steps, b, t)
    let mut trainer = Trainer::new(&m, &spec(&trace)).unwrap();
    let (want, f32) = (floats(&e["peft_losses"]), floats(&e["peft_losses_f32"]));
    let mut got = Vec::new();
    for step in 0..want.len() {
        let step_ids = ids.get(step).unwrap();
        let labels = step_ids.ones_like().unwrap().to_dtype(DType::F32).unwrap();
        got.push(trainer.step(&[Batch { ids: step_ids, labels }]).unwrap().0);
    }
    let rel = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs()).fold(0.0, f64::max);
    let ours_f32 = our_f32_losses(name, &trace, &ids);
    let (moved, ours_moved) = (max_abs(&want, &f32), max_abs(&got, &ours_f32));
    eprintln!(
        "{name}: bf16 losses within {rel:.1e} relative of PEFT's; bf16 moves PEFT's {:.1e} and ours {:.1e} from f32",
        moved / want[0],
        ours_moved / want[0]
    );
    assert!(rel < 5e-4, "{name}: bf16 losses {got:?} vs PEFT's {want:?} (f32: {f32:?})");
    // bf16 really rounds in training: ours moves from our f32 curve as PEFT's moves from its own
    assert!(ours_moved > 0.25 * moved, "{name}: our bf16 curve is only {ours_moved} from our f32 one (PEFT: {moved})");
}

/// Our f32 run of the same trace (the f32 PEFT parity test checks it against PEFT).
fn our_f32_losses(name: &str, trace: &serde_json::Value, ids: &Tensor) -> Vec<f64> {
    let dir = fixtures().join("peft").join(name);
    let lora = PeftConfig::read(&dir).unwrap().spec(&dir).unwrap();
    let m = model::load(&model_dir(name), &lora, &AdapterInit::Peft(dir.clone()), 0, &Device::Cpu).unwrap();
    let mut trainer = Trainer::new(&m, &spec(trace)).unwrap();
    (0..trace["steps"].as_u64().unwrap() as usize)
        .map(|step| {
            let step_ids = ids.get(step).unwrap();
            let labels = step_ids.ones_like().unwrap().to_dtype(DType::F32).unwrap();
            trainer.step(&[Batch { ids: step_ids, labels }]).unwrap().0
        })
        .collect()
}

#[test]
fn bf16_training_matches_peft_on_a_bf16_base() {
    for name in MODELS {
        check_training(name);
    }
}
