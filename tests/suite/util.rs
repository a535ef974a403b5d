//! Small helpers shared by the tests: fixture paths, model loading, a temp-dir builder,
//! and a runner for the binary.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use plasticity::data::{self, Blocks, TaskTokenizer};
use plasticity::lora::{AdapterInit, LoraSpec};
use plasticity::model::{self, LoadedModel};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn load(name: &str) -> LoadedModel {
    load_with(&model_dir(name), &LoraSpec::default(), &AdapterInit::Seeded(0))
}

pub fn load_with(dir: &Path, spec: &LoraSpec, init: &AdapterInit) -> LoadedModel {
    model::load(dir, spec, init, 0, &Device::Cpu).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The fixture task cut as the fixture script cuts it.
pub fn task_blocks(seq_len: usize, eval_blocks: usize) -> Blocks {
    let task = fixtures().join("task.jsonl");
    let docs = data::read_task(&task).unwrap();
    let tok = TaskTokenizer::open(&fixtures().join("tokenizer.json")).unwrap();
    let stream = data::tokenize(&docs, &tok, 0).unwrap();
    data::blocks(&stream, seq_len, eval_blocks, &task).unwrap()
}

/// A temporary folder that is removed when dropped.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        Dir { tmp: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Copies the files (not sub-folders) of a fixture folder to `name` inside this folder.
    pub fn copy_checkpoint(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_dir() {
                continue;
            }
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// `plasticity scan` with small, fast settings plus `extra` flags.
pub fn scan(dir: &Path, task: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("plasticity").unwrap();
    cmd.arg("scan").arg(dir).arg("--task").arg(task);
    let defaults = [
        ("--steps", "4"),
        ("--eval-every", "2"),
        ("--seq-len", "32"),
        ("--eval-blocks", "4"),
        ("--batch-size", "4"),
        ("--threads", "2"),
    ];
    for (flag, value) in defaults.iter().filter(|(f, _)| !extra.contains(f)) {
        cmd.args([flag, value]);
    }
    cmd.args(extra);
    cmd
}

/// Checks a JSON report against the published schema (schemas/report.schema.json).
pub fn assert_valid_report(report: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(include_str!("../../schemas/report.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(report).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "report does not match schemas/report.schema.json:\n{}", errors.join("\n"));
}

/// Fields measured with a clock or from the process (and what is computed from them).
pub const TIMING_FIELDS: [&str; 10] = [
    "elapsed_s",
    "median_step_s",
    "step_cost_s",
    "tokens_per_s",
    "flops_per_s",
    "peak_rss_bytes",
    "device_hours_to_target",
    "convergence_per_device_hour",
    "loss_drop_per_device_hour",
    "cost_to_target",
];

/// The report with every timing field removed, wherever it sits (ci95 included).
pub fn without_timings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            TIMING_FIELDS.iter().for_each(|k| {
                map.remove(*k);
            });
            map.values_mut().for_each(without_timings);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_timings),
        _ => {}
    }
}
