//! What the fuzz targets share: a scratch copy of a test fixture whose files a target
//! overwrites with the fuzzer's bytes before loading it the way a scan does. Errors are the
//! expected outcome; a panic, an abort or a runaway allocation is a finding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use plasticity::data::{self, TaskTokenizer};
use plasticity::lora::{AdapterInit, LoraSpec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub const MICRO: plasticity::synth::Shape = plasticity::synth::Shape { layers: 1, hidden: 8, heads: 2, intermediate: 16, vocab: 16, positions: 16 };

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("plasticity-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        dir
    })
}

/// A checkpoint in the scratch folder whose files a target overwrites.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// A random-weight checkpoint of `model_type` small enough that a full load takes
    /// microseconds (1 layer, hidden 8, vocab 16), written by `plasticity::synth`.
    pub fn micro(model_type: &str) -> Checkpoint {
        let dir = scratch().join(format!("micro-{model_type}"));
        if !dir.exists() {
            plasticity::synth::write_checkpoint(&dir, model_type, MICRO, 0).expect("a micro checkpoint");
        }
        Checkpoint { dir }
    }

    /// A copy of `tests/fixtures/models/NAME`.
    pub fn fixture(name: &str) -> Checkpoint {
        let dir = scratch().join(name);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).expect("a checkpoint folder");
            for entry in std::fs::read_dir(fixtures().join("models").join(name)).expect("the fixture") {
                let entry = entry.expect("a fixture file");
                std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("a copy");
            }
        }
        Checkpoint { dir }
    }

    /// Replaces one file; the next call of the same target overwrites it again.
    pub fn write(&self, file: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(file), bytes).expect("a scratch write");
    }

    /// Loads the checkpoint as a scan does: config, weights (with the memory estimate a scan
    /// makes first) and adapters.
    pub fn load(&self) {
        let _ = plasticity::engine::lora::memory_needed(&self.dir, 4, 32);
        let _ = plasticity::model::load(&self.dir, &LoraSpec::default(), &AdapterInit::Seeded(0), 0, &Device::Cpu);
    }
}

/// Reads `bytes` as a .jsonl task, tokenizes it with the fixture tokenizer and cuts blocks.
pub fn task_file(bytes: &[u8]) {
    static TOKENIZER: OnceLock<TaskTokenizer> = OnceLock::new();
    let tok = TOKENIZER.get_or_init(|| TaskTokenizer::open(&fixtures().join("tokenizer.json")).expect("the fixture tokenizer"));
    let path = scratch().join("task.jsonl");
    std::fs::write(&path, bytes).expect("a scratch write");
    let Ok(docs) = data::read_task(&path) else { return };
    let Ok(stream) = data::tokenize(&docs, tok, 0) else { return };
    let _ = data::blocks(&stream, 32, 4, &path);
}
