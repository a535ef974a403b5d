//! Finds the snapshots of a checkpoint series in a folder and orders them by training step.
//!
//! Real series come from transformers' Trainer (`checkpoint-N/` with `trainer_state.json`),
//! Pythia (`stepN`), OLMo (`stepN-tokensXB`), Megatron/DeepSpeed (`iter_N`, `global_stepN`),
//! home-grown loops (`ckpt_N`) and the Hugging Face hub cache (`models--org--name/`, one
//! revision per step as Pythia publishes them). This module only looks at names and small JSON
//! files: it must not open weights (a broken snapshot is the runner's business, reported per
//! checkpoint).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One snapshot of the series, before anything heavy is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRef {
    pub name: String,
    pub path: PathBuf,
    pub step: u64,
    /// Where the step came from: "trainer_state.json" or "folder name".
    pub step_source: &'static str,
}

/// Every `step_source` discovery writes.
pub const STEP_SOURCES: [&str; 4] =
    ["trainer_state.json", "folder name", "hub revision name", "none (single checkpoint)"];

/// What discovery found: the snapshots ordered by step, and warnings about skipped entries.
#[derive(Debug, Default)]
pub struct Discovery {
    pub checkpoints: Vec<CheckpointRef>,
    pub warnings: Vec<String>,
}

/// Files that make a folder look like a checkpoint.
const MARKERS: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// Name prefixes that carry a step, tried in order (longest first where one is a prefix of another).
const STEP_PREFIXES: [&str; 11] =
    ["checkpoint-", "checkpoint_", "global_step", "step-", "step_", "step", "iter_", "iter-", "iter", "ckpt_", "ckpt-"];

/// Lists the snapshots in `dir`, or `dir` itself when it is one checkpoint.
pub fn scan(dir: &Path) -> Result<Discovery> {
    let meta = fs::metadata(dir).map_err(|e| Error::input(dir, format!("cannot open folder: {e}")))?;
    if !meta.is_dir() {
        return Err(Error::input(dir, "is a file, expected a folder of checkpoints"));
    }
    if looks_like_checkpoint(dir) && !has_checkpoint_children(dir) {
        return single(dir).map(|c| Discovery { checkpoints: vec![c], warnings: vec![] });
    }
    let mut found = Discovery::default();
    if is_hub_cache_repo(dir) {
        hub_cache_revisions(dir, &mut found)?;
    } else {
        for entry in sorted_entries(dir)? {
            classify(&entry, &mut found);
        }
    }
    if found.checkpoints.is_empty() {
        return Err(Error::input(dir, "no checkpoints found (expected sub-folders such as checkpoint-N or stepN holding config.json and model weights)"));
    }
    found.warnings.extend(architecture_mix(&found.checkpoints));
    order_by_step(found)
}

/// A series that mixes architectures is scanned (each snapshot with its own config and
/// tokenizer) but said out loud: losses under different tokenizers are not per-token comparable.
fn architecture_mix(checkpoints: &[CheckpointRef]) -> Option<String> {
    let mut by_type: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for c in checkpoints {
        let text = fs::read_to_string(c.path.join("config.json")).ok();
        let config: Option<serde_json::Value> = text.and_then(|t| serde_json::from_str(&t).ok());
        if let Some(t) = config.as_ref().and_then(|v| v.get("model_type")).and_then(|v| v.as_str()) {
            by_type.entry(t.to_string()).or_default().push(&c.name);
        }
    }
    if by_type.len() < 2 {
        return None;
    }
    let groups: Vec<String> = by_type.iter().map(|(t, names)| format!("{t}: {}", names.join(", "))).collect();
    Some(format!("the series mixes architectures ({}); each is fine-tuned with its own config and tokenizer and all are ranked together", groups.join("; ")))
}

/// `dir` is itself a checkpoint: its step comes from trainer_state.json or its name, else 0.
fn single(dir: &Path) -> Result<CheckpointRef> {
    let name = file_name(dir);
    let (step, step_source) = step_of(dir, &name)?.unwrap_or((0, "none (single checkpoint)"));
    Ok(CheckpointRef { name, path: dir.to_path_buf(), step, step_source })
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = fs::read_dir(dir).map_err(|e| Error::input(dir, format!("cannot list folder: {e}")))?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::input(dir, format!("cannot list folder: {e}")))?;
        entries.push(entry.path());
    }
    entries.sort();
    Ok(entries)
}

/// Adds `path` to the checkpoints, or records why it is skipped.
fn classify(path: &Path, found: &mut Discovery) {
    let name = file_name(path);
    match fs::metadata(path) {
        // a dangling link, a symlink loop, no permission...
        Err(e) => return found.warnings.push(format!("skipping {}: cannot open: {e}", path.display())),
        Ok(m) if !m.is_dir() => {
            return found.warnings.push(format!("skipping {}: not a checkpoint folder", path.display()))
        }
        Ok(_) => {}
    }
    if let Err(e) = fs::read_dir(path) {
        return found.warnings.push(format!("skipping {}: cannot list folder: {e}", path.display()));
    }
    if path.file_name().is_some_and(|n| n.to_str().is_none()) {
        found.warnings.push(format!("{}: folder name is not UTF-8; reports call it {name:?}", path.display()));
    }
    let named = parse_step(&name).is_some();
    if !named && !looks_like_checkpoint(path) {
        found.warnings.push(format!("skipping {}: not a checkpoint (no config.json or weights)", path.display()));
        return;
    }
    match step_of(path, &name) {
        Ok(Some((step, step_source))) => {
            found.checkpoints.push(CheckpointRef { name, path: path.to_path_buf(), step, step_source })
        }
        Ok(None) => found.warnings.push(format!(
            "skipping {}: no step (name it checkpoint-N or stepN, or add trainer_state.json)",
            path.display()
        )),
        Err(e) => found.warnings.push(format!("skipping {}: {e}", path.display())),
    }
}

/// Sorts by step and refuses two snapshots at the same step.
pub fn order_by_step(mut found: Discovery) -> Result<Discovery> {
    found.checkpoints.sort_by(|a, b| (a.step, &a.name).cmp(&(b.step, &b.name)));
    let mut seen: BTreeMap<u64, &CheckpointRef> = BTreeMap::new();
    for c in &found.checkpoints {
        if let Some(other) = seen.insert(c.step, c) {
            return Err(Error::input(
                &c.path,
                format!("step {} is also the step of {} (two snapshots at one step)", c.step, other.path.display()),
            ));
        }
    }
    Ok(found)
}

/// The step of a checkpoint folder: `global_step` of trainer_state.json, else the folder name.
fn step_of(dir: &Path, name: &str) -> Result<Option<(u64, &'static str)>> {
    let state = dir.join("trainer_state.json");
    if state.is_file() {
        let global_step = crate::checkpoint::state::TrainerState::read(&state)?.global_step;
        return Ok(Some((global_step, "trainer_state.json")));
    }
    Ok(parse_step(name).map(|s| (s, "folder name")))
}

/// Parses the step out of a snapshot folder name: `checkpoint-500`, `step1000`,
/// `step-3`, `step1000-tokens4B`, `stage1-step1000-tokens4B`, `global_step20`, `iter_0001000`, `ckpt_7`.
pub fn parse_step(name: &str) -> Option<u64> {
    let lower = name.to_ascii_lowercase();
    let lower = strip_stage(&lower);
    STEP_PREFIXES.iter().find_map(|prefix| {
        let rest = lower.strip_prefix(prefix)?;
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let tail = &rest[digits..];
        let tail_ok = tail.is_empty() || tail.starts_with('-') || tail.starts_with('_');
        if digits == 0 || !tail_ok {
            return None;
        }
        rest[..digits].parse().ok()
    })
}

/// OLMo revisions read `stage1-step1000-tokens4B`: the stage does not order snapshots.
fn strip_stage(name: &str) -> &str {
    let Some(rest) = name.strip_prefix("stage") else { return name };
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    match rest[digits..].strip_prefix('-') {
        Some(tail) if digits > 0 => tail,
        _ => name,
    }
}

/// A repository in the Hugging Face hub cache (`models--org--name/`): revisions are files in
/// `refs/` (Pythia's `step1000`, `main`) holding a commit, whose files are in `snapshots/COMMIT/`.
fn is_hub_cache_repo(dir: &Path) -> bool {
    dir.join("refs").is_dir() && dir.join("snapshots").is_dir()
}

/// One checkpoint per ref whose name carries a step, named after the ref; the others
/// (`main`) are reported and skipped, as is a ref whose snapshot is not downloaded.
fn hub_cache_revisions(repo: &Path, found: &mut Discovery) -> Result<()> {
    for entry in sorted_entries(&repo.join("refs"))? {
        let name = file_name(&entry);
        let Some(step) = parse_step(&name) else {
            found.warnings.push(format!("skipping revision {name}: no step in its name"));
            continue;
        };
        let commit = match fs::read_to_string(&entry) {
            Ok(text) => text.trim().to_string(),
            Err(e) => {
                found.warnings.push(format!("skipping {}: cannot read: {e}", entry.display()));
                continue;
            }
        };
        let path = repo.join("snapshots").join(&commit);
        if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') || !path.is_dir() {
            found.warnings.push(format!(
                "skipping revision {name}: snapshot {commit:?} is not in {}",
                repo.join("snapshots").display()
            ));
            continue;
        }
        found.checkpoints.push(CheckpointRef { name, path, step, step_source: "hub revision name" });
    }
    Ok(())
}

fn looks_like_checkpoint(dir: &Path) -> bool {
    MARKERS.iter().any(|m| dir.join(m).is_file())
}

fn has_checkpoint_children(dir: &Path) -> bool {
    let Ok(read) = fs::read_dir(dir) else { return false };
    read.flatten().any(|e| e.path().is_dir() && parse_step(&e.file_name().to_string_lossy()).is_some())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_step;

    #[test]
    fn step_names_of_real_series() {
        let cases = [
            ("checkpoint-500", Some(500)),
            ("step1000", Some(1000)),
            ("step-3", Some(3)),
            ("step_3", Some(3)),
            ("step1000-tokens4B", Some(1000)),
            ("stage1-step1000-tokens4B", Some(1000)),
            ("global_step20", Some(20)),
            ("iter_0001000", Some(1000)),
            ("ckpt_7", Some(7)),
            ("Checkpoint-12", Some(12)),
            ("checkpoint-", None),
            ("checkpoint-12a", None),
            ("steps", None),
            ("runs", None),
            ("README.txt", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_step(name), want, "{name}");
        }
    }
}
