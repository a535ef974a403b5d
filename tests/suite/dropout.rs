//! The base model's own dropouts, applied while fine-tuning as transformers' Trainer applies
//! them (train mode) and never in evaluation. Masks cannot match torch's draw for draw, so the
//! training losses are compared in distribution: over 64 dropout seeds, from the PEFT parity
//! fixture's adapter on its batches, the mean training loss must lie within three standard
//! errors of transformers + PEFT's (scripts/make_dropout_fixtures.py), and the spread over
//! seeds within a factor 2 in variance (F(63, 63)'s 99.5% quantile is 1.93). Without the
//! dropouts every seed gives the same curve: a spread of zero fails the second check.

use candle_core::{DType, Device};
use plasticity::lora::{AdapterInit, PeftConfig};
use plasticity::train::{Batch, Trainer};

use super::util::{fixtures, floats, json, model_dir, Dir};

/// Every seed's mean training loss over the parity fixture's ten steps, with the model's
/// config dropouts set as in the expected file.
fn our_mean_losses(name: &str, expected: &serde_json::Value) -> (Vec<f64>, f64, f64) {
    let dir = Dir::new();
    let model_copy = dir.copy_checkpoint(&model_dir(name), name);
    let mut config = json(&model_copy.join("config.json"));
    for (field, p) in expected["dropouts"].as_object().unwrap() {
        config[field] = p.clone();
    }
    std::fs::write(model_copy.join("config.json"), config.to_string()).unwrap();
    let adapter = fixtures().join("peft").join(name);
    let parity = json(&adapter.join("expected.json"));
    let lora = PeftConfig::read(&adapter).unwrap().spec(&adapter).unwrap();
    let batches = candle_core::safetensors::load(adapter.join("batches.safetensors"), &Device::Cpu).unwrap();
    let ids = batches["input_ids"].to_dtype(DType::U32).unwrap(); // (steps, b, t)
    let seeds = expected["seeds"].as_u64().unwrap();
    let means: Vec<f64> = (0..seeds)
        .map(|seed| {
            let model =
                plasticity::model::load(&model_copy, &lora, &AdapterInit::Peft(adapter.clone()), seed, &Device::Cpu)
                    .unwrap();
            let mut trainer = Trainer::new(&model, &super::peft::spec(&parity)).unwrap();
            let losses: Vec<f64> = (0..10)
                .map(|step| {
                    let step_ids = ids.get(step).unwrap();
                    let labels = step_ids.ones_like().unwrap().to_dtype(DType::F32).unwrap();
                    trainer.step(&[Batch { ids: step_ids, labels }]).unwrap().0
                })
                .collect();
            losses.iter().sum::<f64>() / losses.len() as f64
        })
        .collect();
    let n = means.len() as f64;
    let mean = means.iter().sum::<f64>() / n;
    let sd = (means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    (means, mean, sd)
}

fn check(name: &str) {
    let expected = json(&fixtures().join("expected/dropout").join(format!("{name}.json")));
    let (theirs, their_sd, k) =
        (expected["mean"].as_f64().unwrap(), expected["sd"].as_f64().unwrap(), expected["seeds"].as_f64().unwrap());
    assert_eq!(floats(&expected["mean_loss_per_seed"]).len(), k as usize);
    let (_, ours, our_sd) = our_mean_losses(name, &expected);
    let band = 3.0 * ((our_sd.powi(2) + their_sd.powi(2)) / k).sqrt();
    eprintln!("{name}: mean training loss {ours:.5} (sd {our_sd:.5}) against transformers + PEFT's {theirs:.5} (sd {their_sd:.5}); band {band:.5}; without dropout {:.5}", expected["no_dropout_mean"].as_f64().unwrap());
    assert!((ours - theirs).abs() <= band, "{name}: mean training loss {ours} vs {theirs}, beyond {band}");
    let ratio = (our_sd / their_sd).powi(2);
    assert!((0.5..=2.0).contains(&ratio), "{name}: variance over seeds {ratio}x transformers + PEFT's");
}

#[test]
fn gpt2_dropouts_train_as_transformers_does() {
    check("gpt2");
}

#[test]
fn gpt_neox_dropouts_train_as_transformers_does() {
    check("gpt_neox_parallel");
}

#[test]
fn llama_attention_dropout_trains_as_transformers_does() {
    check("llama_gqa");
}

/// Evaluation never drops: the eval loss of a model whose config sets every dropout equals
/// the eval loss with none, and the report records the dropouts it trained with.
#[test]
fn evaluation_is_deterministic_and_the_report_names_the_dropouts() {
    let dir = Dir::new();
    let copy = dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-1");
    let mut config = json(&copy.join("config.json"));
    for field in ["attn_pdrop", "resid_pdrop", "embd_pdrop"] {
        config[field] = 0.1.into();
    }
    std::fs::write(copy.join("config.json"), config.to_string()).unwrap();
    let blocks = super::util::task_blocks(32, 4);
    let eval = |d: &std::path::Path| {
        plasticity::train::eval_loss(
            &super::util::load_with(d, &Default::default(), &AdapterInit::Seeded(0)),
            &blocks.eval,
            4,
        )
        .unwrap()
    };
    assert_eq!(eval(&copy), eval(&model_dir("gpt2")));
    let out = super::util::scan(dir.path(), &fixtures().join("task.jsonl"), &["--json", "-"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    super::util::assert_valid_report(&r);
    assert_eq!(
        r["checkpoints"][0]["base_dropout"],
        serde_json::json!({"attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1})
    );
}
