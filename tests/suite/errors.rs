//! Bad input: every case ends with a one-line message naming the file and the problem and a
//! documented exit code, never a panic; a broken checkpoint fails alone and the scan goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::util::{fixtures, model_dir, scan, Dir};

const INPUT: i32 = 2;
const SOME_FAILED: i32 = 3;
const ALL_FAILED: i32 = 3;
const USAGE: i32 = 2;

fn task() -> PathBuf {
    fixtures().join("task.jsonl")
}

/// Runs a scan and returns (exit code, stderr, JSON report if any).
fn run(dir: &Path, task: &Path, extra: &[&str]) -> (i32, String, Option<serde_json::Value>) {
    let out = scan(dir, task, &[&["--json", "-"], extra].concat()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report = serde_json::from_slice(&out.stdout).ok();
    (out.status.code().unwrap(), stderr, report)
}

/// The error lines of stderr: each must be a single line starting with "error:".
fn errors(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error:")).collect()
}

/// A series of one good gpt2 checkpoint (step 1) and one broken by `mutate` (step 2).
fn series_with_broken(mutate: impl FnOnce(&Path)) -> Dir {
    let dir = Dir::new();
    dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-1");
    let broken = dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-2");
    mutate(&broken);
    dir
}

fn failure_of(report: &serde_json::Value, name: &str) -> String {
    let c = report["checkpoints"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    assert_eq!(c["status"], "failed");
    assert!(c["rank"].is_null());
    c["error"].as_str().unwrap().to_string()
}

/// One checkpoint broken: exit 4, the other ranked, the reason in the report and on stderr.
fn assert_broken(mutate: impl FnOnce(&Path), expect: &[&str]) {
    let dir = series_with_broken(mutate);
    let (code, stderr, report) = run(dir.path(), &task(), &["--steps", "1"]);
    assert_eq!(code, SOME_FAILED, "{stderr}");
    let report = report.expect("a report despite the failure");
    super::util::assert_valid_report(&report);
    assert_eq!(report["ranking"], serde_json::json!(["checkpoint-1"]));
    let msg = failure_of(&report, "checkpoint-2");
    for e in expect {
        assert!(msg.contains(e), "{msg:?} does not mention {e:?}");
    }
    assert!(!msg.contains('\n'));
    assert!(errors(&stderr).iter().any(|l| l.contains("checkpoint-2")), "{stderr}");
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

#[test]
fn missing_folder() {
    let (code, stderr, _) = run(Path::new("/no/such/series"), &task(), &[]);
    assert_eq!(code, INPUT);
    assert!(errors(&stderr)[0].contains("/no/such/series"), "{stderr}");
}

#[test]
fn folder_without_checkpoints() {
    let dir = Dir::new();
    dir.write("notes/readme.md", "nothing here");
    let (code, stderr, _) = run(dir.path(), &task(), &[]);
    assert_eq!(code, INPUT);
    assert!(stderr.contains("no checkpoints found"), "{stderr}");
}

#[test]
fn duplicate_steps_name_both() {
    let dir = Dir::new();
    dir.copy_checkpoint(&model_dir("gpt2"), "step5");
    dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-5");
    let (code, stderr, _) = run(dir.path(), &task(), &[]);
    assert_eq!(code, INPUT);
    assert!(stderr.contains("step5") && stderr.contains("checkpoint-5"), "{stderr}");
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    assert_broken(
        |d| edit_config(d, |c| c["model_type"] = "mamba".into()),
        &["config.json", "mamba", "llama", "gpt_neox", "gpt2"],
    );
}

#[test]
fn invalid_config_json() {
    assert_broken(|d| std::fs::write(d.join("config.json"), "{ not json").unwrap(), &["config.json", "invalid JSON"]);
}

#[test]
fn missing_config_json() {
    assert_broken(|d| std::fs::remove_file(d.join("config.json")).unwrap(), &["config.json", "cannot read"]);
}

#[test]
fn config_missing_a_field() {
    assert_broken(
        |d| {
            edit_config(d, |c| {
                c.as_object_mut().unwrap().remove("n_head");
            })
        },
        &["config.json", "n_head"],
    );
}

#[test]
fn absurd_config_values() {
    assert_broken(|d| edit_config(d, |c| c["n_head"] = 5.into()), &["config.json", "not divisible"]);
    assert_broken(|d| edit_config(d, |c| c["n_layer"] = 0.into()), &["config.json", "n_layer"]);
    assert_broken(|d| edit_config(d, |c| c["vocab_size"] = 0.into()), &["config.json", "vocab_size"]);
    assert_broken(|d| edit_config(d, |c| c["n_embd"] = (-3).into()), &["config.json", "n_embd"]);
}

/// Damaged safetensors files, each failing only its checkpoint with the file named.
#[test]
fn damaged_safetensors_files() {
    let truncate = |d: &Path| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    };
    let header_longer_than_file = |d: &Path| {
        let p = d.join("model.safetensors");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&p, bytes).unwrap();
    };
    let empty = |d: &Path| std::fs::write(d.join("model.safetensors"), b"").unwrap();
    let cases: [&dyn Fn(&Path); 3] = [&truncate, &header_longer_than_file, &empty];
    for mutate in cases {
        assert_broken(mutate, &["model.safetensors", "invalid safetensors"]);
    }
}

/// A NaN or an infinity in the weights fails that checkpoint by name; the scan goes on.
#[test]
fn non_finite_weights_are_named() {
    for bad in [f32::NAN, f32::INFINITY] {
        assert_broken(
            |d| {
                edit_weights(d, |t| {
                    let name = "transformer.h.0.attn.c_proj.weight";
                    let mut v = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    v[5] = bad;
                    let shape = t[name].shape().clone();
                    t.insert(name.into(), Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
                })
            },
            &["model.safetensors", "transformer.h.0.attn.c_proj.weight", "non-finite", "flat index 5"],
        );
    }
}

/// A fine-tune whose loss blows up is stopped and reported as diverged, with the step.
#[test]
fn a_diverging_fine_tune_is_reported_as_diverged() {
    let (code, stderr, report) = run(&model_dir("gpt2"), &task(), &["--lr", "1e30", "--steps", "4"]);
    assert_eq!(code, SOME_FAILED, "{stderr}");
    let report = report.expect("a report");
    super::util::assert_valid_report(&report);
    let c = &report["checkpoints"][0];
    assert_eq!(c["status"], "diverged");
    let msg = c["error"].as_str().unwrap();
    assert!(msg.starts_with("diverged: training loss became") && msg.contains("at step"), "{msg}");
    assert!(stderr.contains("diverged"), "{stderr}");
}

/// A checkpoint that cannot fit in the memory available is refused before loading, saying
/// what it needs (PLASTICITY_MEMORY_LIMIT stands in for a small machine).
#[test]
fn a_checkpoint_too_large_for_memory_is_refused_before_loading() {
    let out = super::util::scan(&model_dir("gpt2"), &task(), &["--json", "-"])
        .env("PLASTICITY_MEMORY_LIMIT", "1000000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(SOME_FAILED), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = report["checkpoints"][0]["error"].as_str().unwrap();
    assert!(msg.contains("needs about") && msg.contains("GB are available") && msg.contains("models/gpt2"), "{msg}");
    let fits = super::util::scan(&model_dir("gpt2"), &task(), &[])
        .env("PLASTICITY_MEMORY_LIMIT", "100000000000")
        .output()
        .unwrap();
    assert_eq!(fits.status.code(), Some(0));
}

/// `PLASTICITY_KERNELS` names the CPU kernel family: an unknown one is refused on one line
/// with the usage exit code, and a granted one is named in the report's device.
#[test]
fn a_kernel_family_is_chosen_by_name_or_refused() {
    let out = scan(&model_dir("gpt2"), &task(), &[]).env("PLASTICITY_KERNELS", "sse").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(USAGE), "{stderr}");
    assert!(stderr.contains("PLASTICITY_KERNELS: \"sse\": give avx2, avx512 or auto"), "{stderr}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        granted_avx2_is_named();
    }
}

#[cfg(target_arch = "x86_64")]
fn granted_avx2_is_named() {
    let out = scan(&model_dir("gpt2"), &task(), &["--json", "-", "--steps", "2"])
        .env("PLASTICITY_KERNELS", "avx2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let device = report["device"]["name"].as_str().unwrap();
    assert!(device.ends_with("(avx2 kernels)"), "{device}");
}

#[test]
fn missing_tensor_is_named() {
    assert_broken(
        |d| {
            edit_weights(d, |t| {
                t.remove("transformer.h.1.mlp.c_fc.weight");
            })
        },
        &["model.safetensors", "transformer.h.1.mlp.c_fc.weight", "missing"],
    );
}

#[test]
fn tensor_of_the_wrong_shape_is_named() {
    assert_broken(
        |d| {
            edit_weights(d, |t| {
                t.insert(
                    "transformer.h.0.attn.c_attn.weight".into(),
                    Tensor::zeros((64, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
                );
            })
        },
        &["transformer.h.0.attn.c_attn.weight", "[64, 64]", "[64, 192]"],
    );
}

#[test]
fn unreadable_safetensors() {
    assert_broken(
        |d| std::fs::write(d.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}").unwrap(),
        &["model.safetensors", "invalid safetensors"],
    );
    assert_broken(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap(), &["no model weights"]);
}

#[test]
fn missing_tokenizer() {
    assert_broken(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(), &["tokenizer.json", "not found"]);
}

#[test]
fn every_checkpoint_broken_exits_5() {
    let dir = Dir::new();
    let c = dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-1");
    std::fs::write(c.join("config.json"), "[]").unwrap();
    let (code, _, report) = run(dir.path(), &task(), &[]);
    assert_eq!(code, ALL_FAILED);
    assert_eq!(report.unwrap()["ranking"], serde_json::json!([]));
}

#[test]
fn empty_task_file() {
    let dir = Dir::new();
    let t = dir.write("task.txt", "  \n");
    let (code, stderr, _) = run(&model_dir("gpt2"), &t, &[]);
    assert_eq!(code, INPUT);
    assert!(errors(&stderr)[0].contains("task.txt") && stderr.contains("empty"), "{stderr}");
}

#[test]
fn task_too_short_for_the_blocks() {
    let dir = Dir::new();
    let t = dir.write("task.txt", "A few words only.");
    let (code, _, report) = run(&model_dir("gpt2"), &t, &[]);
    assert_eq!(code, ALL_FAILED);
    let msg = failure_of(&report.unwrap(), "gpt2");
    assert!(msg.contains("task.txt") && msg.contains("too short"), "{msg}");
}

#[test]
fn invalid_jsonl_line_is_numbered() {
    let dir = Dir::new();
    let t = dir.write("task.jsonl", "{\"text\": \"fine\"}\n{\"text\": 3}\n");
    let (code, stderr, _) = run(&model_dir("gpt2"), &t, &[]);
    assert_eq!(code, INPUT);
    assert!(errors(&stderr)[0].contains("task.jsonl") && stderr.contains("line 2"), "{stderr}");
}

#[test]
fn binary_task_file() {
    let dir = Dir::new();
    let t = dir.write("task.txt", [0xffu8, 0xfe, 0x00, 0x80]);
    let (code, stderr, _) = run(&model_dir("gpt2"), &t, &[]);
    assert_eq!(code, INPUT);
    assert!(stderr.contains("not UTF-8"), "{stderr}");
}

#[test]
fn bad_flags_exit_2() {
    for flags in [
        &["--steps", "0"][..],
        &["--lr", "-1"],
        &["--steps", "-1"],
        &["--target-loss", "-2"],
        &["--seeds", "-3"],
        &["--price-per-gpu-hour", "-1e-3"],
        &["--fail-if-last-slower", "-1"],
        &["--dropout", "1.5"],
        &["--batch-size", "0"],
        &["--targets", ","],
        &["--strategy", "race", "--resume", "r.json"],
        &["--device", "tpu"],
        &["--device", "cuda:0"],
        &["--partition", "1/2", "--strategy", "race"],
        &["--dtype", "f16"],
        &["--devices", "cpu,auto"],
        &["--devices", "cpu,"],
        &["--devices", "cuda:0,cuda:1"],
        &["--devices", "cpu,cpu", "--strategy", "race"],
        &["--partition", "1/2", "--save-adapters", "out", "--save-best"],
    ] {
        let (code, stderr, _) = run(&model_dir("gpt2"), &task(), flags);
        assert_eq!(code, USAGE, "{flags:?}: {stderr}");
        let errors = errors(&stderr);
        assert_eq!(errors.len(), 1, "{stderr}");
        // the message names the flag at fault (a negative number is a value, not a flag)
        assert!(flags.iter().any(|f| f.starts_with("--") && errors[0].contains(*f)), "{flags:?}: {}", errors[0]);
    }
    // clap refuses the two device flags together, with its usage text
    let (code, stderr, _) = run(&model_dir("gpt2"), &task(), &["--device", "cpu", "--devices", "cpu,cpu"]);
    assert_eq!(code, USAGE, "{stderr}");
    assert!(stderr.contains("--devices"), "{stderr}");
}

#[test]
fn unknown_target_module_is_refused() {
    let (code, _, report) = run(&model_dir("gpt2"), &task(), &["--targets", "q_proj"]);
    assert_eq!(code, ALL_FAILED);
    let msg = failure_of(&report.unwrap(), "gpt2");
    assert!(msg.contains("q_proj") && msg.contains("c_attn"), "{msg}");
}

#[test]
fn unwritable_report_path_fails_before_training() {
    let start = std::time::Instant::now();
    let out = scan(&fixtures().join("series"), &task(), &["--json", "/no/such/dir/report.json", "--steps", "50"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(INPUT), "{stderr}");
    assert!(stderr.contains("/no/such/dir/report.json"), "{stderr}");
    assert!(start.elapsed().as_secs() < 10, "it trained first");
}

#[test]
fn shard_paths_may_not_leave_the_checkpoint() {
    let dir = Dir::new();
    let c = dir.copy_checkpoint(&model_dir("llama_sharded"), "checkpoint-1");
    let index = c.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index)
        .unwrap()
        .replace("\"model-00001-of-00003.safetensors\"", "\"../model-00001-of-00003.safetensors\"");
    std::fs::write(&index, text).unwrap();
    let (code, _, report) = run(dir.path(), &task(), &[]);
    assert_eq!(code, ALL_FAILED);
    assert!(failure_of(&report.unwrap(), "checkpoint-1").contains("leaves the checkpoint folder"));
}

#[test]
fn adapters_with_unsupported_peft_options_are_refused() {
    let dir = Dir::new();
    let adapter = dir.copy_checkpoint(&fixtures().join("peft/gpt2"), "adapter");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    cfg["use_dora"] = true.into();
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();
    let (code, stderr, _) = run(&model_dir("gpt2"), &task(), &["--init-adapter", adapter.to_str().unwrap()]);
    assert_eq!(code, INPUT);
    assert!(errors(&stderr)[0].contains("adapter_config.json") && stderr.contains("DoRA"), "{stderr}");
    // what the adapter's config sets cannot be changed by a flag: refused, never overridden
    for flag in
        [&["--rank", "4"][..], &["--alpha", "32"], &["--targets", "c_attn"], &["--rslora"], &["--dropout", "0.1"]]
    {
        let (code, stderr, _) = run(
            &model_dir("gpt2"),
            &task(),
            &[&["--init-adapter", fixtures().join("peft/gpt2").to_str().unwrap()], flag].concat(),
        );
        assert_eq!(code, USAGE, "{flag:?}: {stderr}");
        assert!(errors(&stderr)[0].contains(flag[0]) && stderr.contains("--init-adapter"), "{stderr}");
    }
}

#[test]
fn invalid_tokenizer_json() {
    assert_broken(
        |d| std::fs::write(d.join("tokenizer.json"), "{\"version\": \"1.0\", \"model\": 7}").unwrap(),
        &["tokenizer.json"],
    );
    assert_broken(|d| std::fs::write(d.join("tokenizer.json"), [0xffu8, 0x00, 0x13]).unwrap(), &["tokenizer.json"]);
}

#[test]
fn a_rank_larger_than_a_layer_is_refused_by_module() {
    let (code, _, report) = run(&model_dir("gpt2"), &task(), &["--rank", "65"]);
    assert_eq!(code, ALL_FAILED);
    let msg = failure_of(&report.unwrap(), "gpt2");
    assert!(msg.contains("--rank") && msg.contains("rank 65") && msg.contains("attn.c_attn (64 -> 192)"), "{msg}");
}

#[test]
fn more_eval_blocks_than_the_task_holds() {
    let (code, _, report) = run(&model_dir("gpt2"), &task(), &["--eval-blocks", "100000"]);
    assert_eq!(code, ALL_FAILED);
    let msg = failure_of(&report.unwrap(), "gpt2");
    assert!(msg.contains("task.jsonl") && msg.contains("100000 eval blocks"), "{msg}");
}

/// Sizes so large that the memory estimate's products overflow 64 bits: the checkpoint is
/// refused for memory (the estimate saturates) instead of the scan panicking on the overflow.
#[test]
fn absurd_sizes_saturate_the_memory_estimate() {
    assert_broken(
        |d| {
            edit_config(d, |c| {
                c["n_embd"] = (1u64 << 62).into();
                c["n_layer"] = (1u64 << 40).into();
                c["vocab_size"] = (1u64 << 62).into();
            })
        },
        &["needs about", "GB are available"],
    );
}
