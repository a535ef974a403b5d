//! `plasticity probe`: the forecast without training. On the paper's single-index series the
//! step-0 gradient probe orders the snapshots as the measured escape steps do; on the committed
//! transformer series every probe runs and `--against` correlates it with a scan.

use plasticity::options::ProbeOptions;
use plasticity::probe::{self, spearman};
use plasticity::single_index::simulate::{self, Amounts, SimulateSpec};
use plasticity::single_index::theory::Link;
use plasticity::single_index::{self, Config, RunSettings, Variant};

use super::util::{fixtures, json, Dir};

fn options(dir: std::path::PathBuf) -> ProbeOptions {
    let args = plasticity::cli::ProbeArgs {
        dir,
        task: None,
        tokenizer: None,
        rank: 8,
        targets: None,
        batches: 4,
        batch_size: None,
        seq_len: 128,
        eval_blocks: 32,
        seed: 0,
        against: None,
        json: None,
        device: plasticity::device::DeviceSpec::Cpu,
        threads: Some(2),
    };
    ProbeOptions::from_args(args).unwrap()
}

#[test]
fn gradient_probe_orders_the_single_index_series_as_the_escape_steps() {
    let dir = Dir::new();
    let spec = SimulateSpec {
        out: dir.path().join("series"),
        link: Link::Linear,
        dim: 100,
        amounts: Amounts::Steps { steps: vec![1, 3, 5, 10, 15, 20, 30], pretrain_lr: 0.1 },
        variant: Variant::Aligned,
        m0: Some(0.1),
        lr: 0.2,
        batch_size: 100,
        teacher_seed: 0,
        budget: None,
    };
    let dirs = simulate::write_series(&spec).unwrap();
    let settings = RunSettings { seed: 0, data_seed: 0, lr: None, batch_size: None, steps: None };
    let escape: Vec<f64> = dirs
        .iter()
        .map(|d| {
            let cfg = Config::read(d, &json(&d.join("config.json"))).unwrap();
            single_index::run(d, &cfg, &settings).unwrap().1.escape_step.expect("escapes") as f64
        })
        .collect();
    let report = probe::run(&options(dir.path().join("series"))).unwrap();
    assert!(report.probes.iter().all(|p| p.status == plasticity::report::Status::Ok), "{:?}", report.probes);
    let forecast: Vec<f64> = report.probes.iter().map(|p| p.forecast.unwrap()).collect();
    let grad: Vec<f64> = report.probes.iter().map(|p| p.grad_norm.unwrap()).collect();
    let faster: Vec<f64> = escape.iter().map(|s| -s).collect();
    let rho = spearman(&forecast, &faster).unwrap();
    assert!(rho >= 0.9, "forecast vs -escape step: Spearman {rho} (forecast {forecast:?}, escape {escape:?})");
    assert!(spearman(&grad, &faster).unwrap() >= 0.9);
    assert_eq!(report.forecast_ranking.first().map(String::as_str), Some("checkpoint-1"));
}

#[test]
fn every_probe_runs_on_the_transformer_series_and_against_correlates() {
    let dir = Dir::new();
    let (series, task) = (fixtures().join("series"), fixtures().join("task.jsonl"));
    let (scan_json, probe_json) = (dir.path().join("scan.json"), dir.path().join("probe.json"));
    let out = super::util::scan(&series, &task, &["--steps", "6", "--json", scan_json.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = assert_cmd::Command::cargo_bin("plasticity")
        .unwrap()
        .args([
            "probe",
            series.to_str().unwrap(),
            "--task",
            task.to_str().unwrap(),
            "--against",
            scan_json.to_str().unwrap(),
            "--json",
            probe_json.to_str().unwrap(),
            "--device",
            "cpu",
            "--seq-len",
            "32",
            "--eval-blocks",
            "4",
            "--batch-size",
            "4",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("Spearman correlation") && stdout.contains("forecast best:"), "{stdout}");
    let r = json(&probe_json);
    let probes = r["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 4);
    for p in probes {
        assert_eq!(p["status"], "ok", "{p}");
        for k in [
            "forecast",
            "capture",
            "grad_norm",
            "spectral_norm",
            "stable_rank",
            "effective_rank",
            "zero_shot_loss",
            "spectral_norm_growth",
        ] {
            assert!(p[k].as_f64().is_some_and(f64::is_finite), "{k} in {p}");
        }
        assert!((0.0..=1.0 + 1e-12).contains(&p["capture"].as_f64().unwrap()));
        assert_eq!(p["matrices"], 2, "query_key_value in each of 2 layers");
    }
    // the zero-shot loss is the scan's initial eval loss (same blocks, same model)
    let scan = json(&scan_json);
    for (p, c) in probes.iter().zip(scan["checkpoints"].as_array().unwrap()) {
        let (a, b) = (p["zero_shot_loss"].as_f64().unwrap(), c["initial_eval_loss"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-5 * b, "{a} vs {b}");
    }
    // each correlation is Spearman's over the four snapshots, against the scan's measured speed
    let against = &r["against"];
    assert_eq!(against["snapshots"], 4);
    let checkpoints = scan["checkpoints"].as_array().unwrap();
    let reached = checkpoints.iter().all(|c| c["convergence_per_device_hour"].is_number());
    assert_eq!(against["measured"], if reached { "convergence_per_device_hour" } else { "-rank" });
    let speed: Vec<f64> = checkpoints
        .iter()
        .map(
            |c| if reached { c["convergence_per_device_hour"].as_f64().unwrap() } else { -c["rank"].as_f64().unwrap() },
        )
        .collect();
    for probe in ["step", "zero_shot_loss", "forecast"] {
        let values: Vec<f64> = probes.iter().map(|p| p[probe].as_f64().unwrap()).collect();
        let want = spearman(&values, &speed);
        assert_eq!(against["spearman"][probe].as_f64(), want, "{probe}");
    }
}

/// The probe's dL/dW (B's gradient with A = I, B = 0) is the weight gradient: a PEFT-style
/// adapter (random A, B = 0, PEFT-checked) gets dL/dB = scale * dL/dW A^T, on every module.
#[test]
fn weight_gradient_agrees_with_the_lora_gradient() {
    use candle_core::{DType, Device, Tensor};
    use plasticity::lora::{AdapterInit, LoraSpec};
    use plasticity::train::{model_loss_sum, Batch};
    let dir = super::util::model_dir("gpt_neox_parallel");
    let blocks = super::util::task_blocks(32, 4);
    let ids: Vec<u32> = blocks.train[..4].iter().flat_map(|b| b.ids.clone()).collect();
    let batch = Batch {
        ids: Tensor::from_vec(ids, (4, 32), &Device::Cpu).unwrap(),
        labels: Tensor::ones((4, 32), DType::F32, &Device::Cpu).unwrap(),
    };
    let grads_of = |init: AdapterInit| {
        let m = plasticity::model::load(&dir, &LoraSpec::default(), &init, 0, &Device::Cpu).unwrap();
        let (sum, n) = model_loss_sum(m.model.as_ref(), &batch, true).unwrap();
        let g = (sum / n).unwrap().backward().unwrap();
        m.adapters
            .iter()
            .map(|a| (g.get(a.b.as_tensor()).unwrap().clone(), a.a.as_tensor().clone()))
            .collect::<Vec<_>>()
    };
    let (full, lora) = (grads_of(AdapterInit::WeightGradient), grads_of(AdapterInit::Seeded(7)));
    let scale = LoraSpec::default().scale();
    for ((g_w, _), (g_b, a)) in full.iter().zip(&lora) {
        let want = (g_w.matmul(&a.t().unwrap()).unwrap() * scale).unwrap();
        let (x, y) = (super::util::to_vec(&want), super::util::to_vec(g_b));
        let err = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        let size = x.iter().map(|p| p.abs()).fold(0f32, f32::max);
        assert!(err <= 1e-4 * size, "dL/dB {err} from scale dL/dW A^T (max {size})");
    }
}

/// A GPT-2 checkpoint with OpenAI's unprefixed tensor names (h.0.attn.c_attn.weight) is probed
/// like the prefixed one, with the same numbers.
#[test]
fn gpt2_without_the_transformer_prefix_is_probed() {
    let dir = Dir::new();
    let (prefixed, bare) = (dir.path().join("a/gpt2"), dir.path().join("b/gpt2"));
    for d in [&prefixed, &bare] {
        std::fs::create_dir_all(d).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(super::util::model_dir("gpt2").join(f), d.join(f)).unwrap();
        }
    }
    let tensors = candle_core::safetensors::load(
        super::util::model_dir("gpt2").join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(&tensors, prefixed.join("model.safetensors")).unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v)).collect();
    candle_core::safetensors::save(&renamed, bare.join("model.safetensors")).unwrap();
    let probe = |d: &std::path::Path| {
        let mut o = options(d.to_path_buf());
        (o.task, o.seq_len, o.eval_blocks, o.batch_size) = (Some(fixtures().join("task.jsonl")), 32, 4, Some(4));
        probe::run(&o).unwrap().probes.remove(0)
    };
    let (a, b) = (probe(&prefixed), probe(&bare));
    assert_eq!(b.status, plasticity::report::Status::Ok, "{:?}", b.error);
    assert_eq!((a.forecast, a.spectral_norm, a.effective_rank), (b.forecast, b.spectral_norm, b.effective_rank));
}
