//! PEFT's adapter format, read and written. Reading: `adapter_config.json` as [`PeftConfig`]
//! (refusing the PEFT options that would change the computation and that plasticity does not
//! implement) and `adapter_model.safetensors` as tensors by PEFT's names, the initial weights
//! of `--init-adapter`. Writing: a trained adapter, so `PeftModel.from_pretrained(base, DIR)`
//! loads it as it is: `adapter_config.json` and `adapter_model.safetensors` with PEFT's tensor
//! names (`base_model.model.<module>.lora_A.weight`, (r, in); `lora_B.weight`, (out, r)).
//!
//! In a written config, `target_modules` lists the adapted modules by their full paths, which
//! PEFT matches exactly: the file then adapts what was trained and nothing else. GPT-2's Conv1D layers are marked
//! `fan_in_fan_out`, as PEFT marks them. Both files are written into a temporary folder that
//! then replaces the adapter's folder (the old one is moved aside first and removed last), so a
//! reader never sees one file of a new export beside one of an old. A folder that holds anything
//! but what this module writes is never replaced or removed. This module must not train or
//! choose which adapters to keep.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::spec::{LoraSpec, Targets};
use crate::error::{Error, Result};

/// PEFT's adapter settings from `adapter_config.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub use_rslora: bool,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
}

impl PeftConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
        serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid adapter config: {e}")))
    }

    /// PEFT options that would change the computation and that plasticity does not implement.
    fn unsupported(&self) -> Option<&'static str> {
        let non_empty =
            |m: &Option<serde_json::Map<String, serde_json::Value>>| m.as_ref().is_some_and(|m| !m.is_empty());
        let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
        if self.use_dora {
            Some("use_dora (DoRA)")
        } else if self.bias.as_deref().is_some_and(|b| b != "none") {
            Some("bias other than \"none\"")
        } else if non_empty(&self.rank_pattern) || non_empty(&self.alpha_pattern) {
            Some("rank_pattern / alpha_pattern")
        } else if set(&self.layers_to_transform) {
            Some("layers_to_transform")
        } else if set(&self.modules_to_save) {
            Some("modules_to_save")
        } else {
            None
        }
    }

    /// The spec this adapter was made with.
    pub fn spec(&self, path: &Path) -> Result<LoraSpec> {
        if let Some(what) = self.unsupported() {
            return Err(Error::input(path, format!("adapter uses {what}, which plasticity does not support")));
        }
        let targets = match &self.target_modules {
            serde_json::Value::String(s) if s == "all-linear" => Targets::AllLinear,
            serde_json::Value::Array(items) => {
                Targets::Names(items.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            }
            other => return Err(Error::input(path, format!("unsupported target_modules {other}"))),
        };
        Ok(LoraSpec {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            rslora: self.use_rslora,
            targets,
        })
    }
}

pub(super) fn peft_tensor(
    map: &HashMap<String, Tensor>,
    dir: &Path,
    module: &str,
    which: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let key = format!("base_model.model.{module}.{which}.weight");
    let t = map
        .get(&key)
        .ok_or_else(|| Error::input(dir.join("adapter_model.safetensors"), format!("tensor {key} is missing")))?;
    if t.dims() != shape {
        return Err(Error::input(
            dir.join("adapter_model.safetensors"),
            format!("tensor {key} has shape {:?}, expected {shape:?}", t.dims()),
        ));
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// PEFT's `adapter_model.safetensors`, keys as PEFT saves them (adapter name removed).
pub(super) fn read_peft_adapter(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let path = dir.join("adapter_model.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| Error::input(&path, format!("cannot read adapter: {}", crate::error::one_line(&e))))
}

/// What adapter_config.json records besides the tensors.
/// A trained adapter as PEFT's files hold it: the module's path and its A (r, in) and B (out, r).
pub struct Trained<'a> {
    pub module: &'a str,
    pub a: &'a Tensor,
    pub b: &'a Tensor,
}

pub struct ExportInfo<'a> {
    pub spec: &'a LoraSpec,
    /// The checkpoint the adapter was trained on (`base_model_name_or_path`).
    pub base: &'a Path,
    pub model_type: &'a str,
}

/// Writes `adapters` to the folder `dir` (replaced if it exists) in PEFT's format.
pub fn save(dir: &Path, adapters: &[Trained], info: &ExportInfo) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.with_file_name(format!(".{name}.partial"));
    let io = |path: &Path, what: &str, e: std::io::Error| Error::input(path, format!("cannot {what}: {e}"));
    if tmp.exists() {
        ensure_partial_export(&tmp)?;
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, "remove a partial export", e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, "create the adapter folder", e))?;
    let st = tmp.join("adapter_model.safetensors");
    let bytes = safetensors::tensor::serialize(&tensors(adapters)?, None)
        .map_err(|e| Error::input(&st, format!("cannot serialise the adapter: {e}")))?;
    crate::fs::write_atomic(&st, &bytes)?;
    let config = serde_json::to_string_pretty(&config(adapters, info))
        .map_err(|source| Error::Encode { what: "adapter_config.json", source })?;
    crate::fs::write_atomic(&tmp.join("adapter_config.json"), format!("{config}\n").as_bytes())?;
    let old = dir.with_file_name(format!(".{name}.old"));
    if dir.exists() {
        ensure_adapter_folder(dir)?;
        if old.exists() {
            ensure_adapter_folder(&old)?;
            std::fs::remove_dir_all(&old).map_err(|e| io(&old, "remove an old export", e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| io(dir, "move the previous adapter aside", e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, "write the adapter folder", e))?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent).and_then(|f| f.sync_all()).map_err(|e| io(parent, "sync the folder", e))?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, "remove the previous adapter", e))?;
    }
    Ok(())
}

/// Refuses to replace `dir` unless it holds only what this module writes: the two adapter
/// files, and per-seed folders `seed-<number>` holding only those.
pub fn ensure_adapter_folder(dir: &Path) -> Result<()> {
    ensure_only(dir, &|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match name.strip_prefix("seed-") {
            Some(n) if is_dir && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                ensure_adapter_folder(&entry.path()).is_ok()
            }
            _ => !is_dir && ADAPTER_FILES.contains(&name.as_str()),
        }
    })
}

const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// A partial export left by an interrupted save: the adapter files and their temporaries.
fn ensure_partial_export(dir: &Path) -> Result<()> {
    ensure_only(dir, &|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = name
            .strip_prefix(".tmp")
            .map(|rest| rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start_matches('.'))
            .unwrap_or(&name);
        entry.file_type().is_ok_and(|t| t.is_file()) && ADAPTER_FILES.contains(&file)
    })
}

/// Refuses `dir` when an entry fails `ours`, naming the entry.
fn ensure_only(dir: &Path, ours: &dyn Fn(&std::fs::DirEntry) -> bool) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::input(dir, format!("cannot list: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::input(dir, format!("cannot list: {e}")))?;
        if !ours(&entry) {
            let name = entry.file_name().to_string_lossy().into_owned();
            return Err(Error::input(dir, format!("exists and holds {name:?}, which this tool did not write: not replacing it (choose another --save-adapters folder)")));
        }
    }
    Ok(())
}

/// PEFT's tensor names and f32 CPU copies of A and B.
fn tensors(adapters: &[Trained]) -> Result<HashMap<String, Tensor>> {
    let mut map = HashMap::new();
    for a in adapters {
        for (which, weight) in [("lora_A", a.a), ("lora_B", a.b)] {
            let t = weight.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous()?;
            map.insert(format!("base_model.model.{}.{which}.weight", a.module), t);
        }
    }
    Ok(map)
}

/// adapter_config.json: the LoRA settings under PEFT's names, PEFT's defaults elsewhere.
fn config(adapters: &[Trained], info: &ExportInfo) -> serde_json::Value {
    let mut modules: Vec<&str> = adapters.iter().map(|a| a.module).collect();
    modules.sort();
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": std::fs::canonicalize(info.base).unwrap_or_else(|_| info.base.to_path_buf()).display().to_string(),
        "r": info.spec.rank,
        "lora_alpha": info.spec.alpha,
        "lora_dropout": info.spec.dropout,
        "use_rslora": info.spec.rslora,
        "target_modules": modules,
        "fan_in_fan_out": info.model_type == "gpt2",
        "bias": "none",
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}
