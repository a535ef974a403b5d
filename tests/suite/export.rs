//! `scan --save-adapters` writes PEFT's format: scripts/make_export_fixtures.py loaded the
//! committed exports (tests/fixtures/exported/) with `PeftModel.from_pretrained` and recorded
//! PEFT's logits. Here, without Python: a fresh export with the same flags equals the committed
//! one tensor for tensor (within 1e-4 of each tensor's largest value, for other CPUs' rounding),
//! its names and shapes are PEFT's, and plasticity's adapted forward from the committed file
//! gives PEFT's logits within 1e-4 relative.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use plasticity::lora::{AdapterInit, PeftConfig};

use super::util::{fixtures, floats, json, load_with, model_dir, scan, to_vec, Dir};

/// EXPORT_FLAGS of scripts/make_export_fixtures.py.
const EXPORT_FLAGS: [&str; 15] = [
    "--steps",
    "6",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--eval-blocks",
    "4",
    "--lr",
    "1e-2",
    "--seed",
    "3",
    "--device",
    "cpu",
    "--quiet",
];

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
}

fn export(name: &str, to: &Path, extra: &[&str]) {
    let flags = [&EXPORT_FLAGS[..], &["--threads", "1", "--save-adapters", to.to_str().unwrap()], extra].concat();
    let out = scan(&model_dir(name), &fixtures().join("task.jsonl"), &flags).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// PEFT's names, (r, in) and (out, r) shapes, and a config naming exactly the adapted modules.
fn check_names_and_shapes(dir: &Path, name: &str) {
    let config = json(&dir.join("adapter_config.json"));
    let (r, modules) = (config["r"].as_u64().unwrap() as usize, config["target_modules"].as_array().unwrap());
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["fan_in_fan_out"], name == "gpt2");
    let t = tensors(dir);
    assert_eq!(t.len(), 2 * modules.len());
    for m in modules.iter().map(|m| m.as_str().unwrap()) {
        let (a, b) =
            (&t[&format!("base_model.model.{m}.lora_A.weight")], &t[&format!("base_model.model.{m}.lora_B.weight")]);
        assert_eq!((a.dim(0).unwrap(), b.dim(1).unwrap()), (r, r), "{m}");
        assert!(b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{m}: B was trained");
    }
}

#[test]
fn exported_adapters_are_peft_files() {
    for name in ["llama_gqa", "gpt2", "olmo", "olmo2", "bloom"] {
        let committed = fixtures().join("exported").join(name);
        check_names_and_shapes(&committed, name);
        let dir = Dir::new();
        export(name, dir.path(), &[]);
        let (fresh, old) = (tensors(&dir.path().join(name)), tensors(&committed));
        assert_eq!(fresh.len(), old.len());
        // the same training: equal up to the rounding another CPU's kernels may choose
        for (k, v) in &old {
            let (a, b) = (to_vec(&fresh[k]), to_vec(v));
            let size = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(err <= 1e-4 * size, "{name}: {k} differs from the export PEFT loaded by {err} (max {size})");
        }
        let (mut a, mut b) =
            (json(&dir.path().join(name).join("adapter_config.json")), json(&committed.join("adapter_config.json")));
        a.as_object_mut().unwrap().remove("base_model_name_or_path");
        b.as_object_mut().unwrap().remove("base_model_name_or_path");
        assert_eq!(a, b, "{name}: adapter_config.json");
    }
}

#[test]
fn exported_adapters_give_pefts_logits() {
    for name in ["llama_gqa", "gpt2", "olmo", "olmo2", "bloom"] {
        let dir = fixtures().join("exported").join(name);
        let expected = json(&dir.join("peft_logits.json"));
        let lora = PeftConfig::read(&dir).unwrap().spec(&dir).unwrap();
        let model = load_with(&model_dir(name), &lora, &AdapterInit::Peft(dir.clone()));
        let ids: Vec<u32> = expected["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32))
            .collect();
        let logits = to_vec(&model.model.forward(&Tensor::from_vec(ids, (2, 16), &Device::Cpu).unwrap()).unwrap());
        let want = floats(&expected["logits"]);
        let err = logits.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0)).fold(0.0, f64::max);
        eprintln!("{name}: logits with the exported adapter within {err:.1e} (relative) of PEFT's");
        assert!(err < 1e-4, "{name}: logits with the exported adapter differ from PEFT's by {err:e}");
    }
}

/// --save-best keeps the winner's adapter only; several seeds get a folder each.
#[test]
fn save_best_keeps_the_winner_only() {
    let dir = Dir::new();
    let (out, report) = (dir.path().join("adapters"), dir.path().join("r.json"));
    let flags = [
        "--steps",
        "4",
        "--seeds",
        "2",
        "--save-adapters",
        out.to_str().unwrap(),
        "--save-best",
        "--json",
        report.to_str().unwrap(),
        "--quiet",
    ];
    let run = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &flags).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let best = json(&report)["ranking"][0].as_str().unwrap().to_string();
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec![best.clone()]);
    let seeds: Vec<String> = std::fs::read_dir(out.join(&best))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(seeds.len(), 2, "{seeds:?}");
    assert!(seeds
        .iter()
        .all(|s| s.starts_with("seed-") && out.join(&best).join(s).join("adapter_model.safetensors").exists()));
}

/// --save-adapters never replaces a folder that is not an adapter: the series folder itself is
/// refused before training, and a snapshot's name already taken by other files fails that
/// snapshot's export, not the files.
#[test]
fn exports_never_replace_what_is_not_an_adapter() {
    let dir = Dir::new();
    let series = dir.path().join("series");
    std::fs::create_dir_all(&series).unwrap();
    let copy = |name: &str| {
        let to = series.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(model_dir("gpt2").join(f), to.join(f)).unwrap();
        }
    };
    copy("checkpoint-1");
    let out =
        scan(&series, &fixtures().join("task.jsonl"), &["--save-adapters", series.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint folder"));
    assert!(series.join("checkpoint-1/model.safetensors").exists());

    let adapters = dir.path().join("adapters");
    std::fs::create_dir_all(adapters.join("checkpoint-1")).unwrap();
    std::fs::write(adapters.join("checkpoint-1/notes.txt"), "mine").unwrap();
    let out = scan(&series, &fixtures().join("task.jsonl"), &["--save-adapters", adapters.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "the snapshot fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("notes.txt"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(adapters.join("checkpoint-1/notes.txt")).unwrap(), "mine");

    // names that merely look like the tool's (a dot-file, a seed-* file or folder of other things)
    for (rel, what) in [
        (".env", "a dot-file"),
        ("seed-notes.txt", "a seed-* file"),
        ("seed-1/notes.txt", "a seed folder holding something else"),
        ("seed-x/adapter_config.json", "a seed-* folder not named by a number"),
    ] {
        std::fs::remove_dir_all(adapters.join("checkpoint-1")).unwrap();
        let path = adapters.join("checkpoint-1").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "mine").unwrap();
        let out = scan(&series, &fixtures().join("task.jsonl"), &["--save-adapters", adapters.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{what}: the snapshot fails");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine", "{what} was removed");
    }
}
