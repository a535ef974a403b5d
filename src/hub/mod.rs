//! `plasticity scan hf://ORG/NAME`: a Hugging Face Hub repository whose branches are the
//! snapshots of a series (Pythia's `step1000`, OLMo's `stage1-step1000-tokens4B`, BLOOM's
//! `global_step1000`), scanned without downloading the series first.
//!
//! The scan runs in three phases: [`list`] asks for the repository's branches and keeps those
//! whose name carries a step, as `discover` reads folder names (the scan then selects and
//! partitions them as it would folders); [`Listing::prepare`] fetches each kept revision's file list
//! and small files (config, tokenizer, trainer state) into the standard hub cache; the
//! [`Fetcher`] then streams the weights while the scan runs. With `HF_HUB_OFFLINE` set, no
//! request is made: the revisions are those the cache holds. A snapshot is the folder
//! `snapshots/COMMIT` of the cache, so a scan of the cache folder itself reads the same
//! files. This module must not train or score.

use std::collections::HashMap;
use std::path::Path;

use crate::discover::{CheckpointRef, Discovery};
use crate::error::{Error, Result};

mod api;
mod cache;
mod env;
mod fetch;

use api::{Hub, RemoteFile, Retry};
use cache::RepoCache;
pub use env::HubEnv;
pub use fetch::Fetcher;
use fetch::Plan;

/// The scheme that names a Hub repository where a folder is expected.
pub const SCHEME: &str = "hf://";

/// The repository id of `hf://ORG/NAME`, None for any other path; a malformed id is an error.
pub fn repo_of(dir: &Path) -> Option<Result<String>> {
    let rest = dir.to_str()?.strip_prefix(SCHEME)?;
    let rest = rest.strip_prefix("models/").unwrap_or(rest).trim_end_matches('/');
    let parts: Vec<&str> = rest.split('/').collect();
    let valid = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    Some(if parts.len() == 2 && parts.iter().all(|p| valid(p)) && !rest.contains("..") {
        Ok(rest.to_string())
    } else {
        Err(Error::input(dir, "expected hf://ORG/NAME (a model repository on the Hugging Face Hub)"))
    })
}

/// The revisions of a Hub repository that carry a step, before any file is fetched.
pub struct Listing {
    pub repo: String,
    pub discovery: Discovery,
    /// Revision name -> commit.
    commits: HashMap<String, String>,
    hub: Hub,
    cache: RepoCache,
}

/// Lists `repo`'s branches (the cache's refs when offline) as snapshots ordered by step.
pub fn list(repo: &str, env: HubEnv) -> Result<Listing> {
    let cache = RepoCache::new(&env.cache, repo);
    let offline = env.offline;
    let hub = Hub::new(env, Retry::default());
    let refs: Vec<(String, String)> = if offline {
        offline_refs(repo, &cache)?
    } else {
        let listed = hub.refs(repo).map_err(|e| Error::Hub(e.msg))?;
        listed.into_iter().map(|r| (r.name, r.commit)).collect()
    };
    let mut discovery = Discovery::default();
    for (name, commit) in &refs {
        if !is_plain_path(name) || !is_hex_id(commit) {
            discovery.warnings.push(format!("skipping revision {name:?}: not a usable name or commit ({commit:?})"));
            continue;
        }
        match crate::discover::parse_step(name) {
            Some(step) => discovery.checkpoints.push(CheckpointRef {
                name: name.clone(),
                path: cache.snapshot(commit),
                step,
                step_source: "hub revision name",
            }),
            None => discovery.warnings.push(format!("skipping revision {name}: no step in its name")),
        }
    }
    if discovery.checkpoints.is_empty() {
        return Err(Error::Hub(format!("hf://{repo}: no revision names a step ({} revision(s): expected names such as step1000 or stage1-step1000-tokens4B)", refs.len())));
    }
    let discovery = crate::discover::order_by_step(discovery)?;
    Ok(Listing { repo: repo.to_string(), discovery, commits: refs.into_iter().collect(), hub, cache })
}

/// A commit or blob id as the Hub writes them: 40 (git) or 64 (sha256) lower-case hex digits.
/// Anything else never becomes a path.
pub(crate) fn is_hex_id(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A branch or file name that stays inside its folder (`refs/`, `snapshots/COMMIT/`): no
/// empty, `.` or `..` part, no backslash.
pub(crate) fn is_plain_path(name: &str) -> bool {
    !name.is_empty() && !name.contains('\\') && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

/// HF_HUB_OFFLINE: the revisions the cache knows.
fn offline_refs(repo: &str, cache: &RepoCache) -> Result<Vec<(String, String)>> {
    let refs = cache.refs();
    if refs.is_empty() {
        return Err(Error::Hub(format!(
            "hf://{repo}: HF_HUB_OFFLINE is set and the cache holds no revision of it ({} has no refs)",
            cache.root.display()
        )));
    }
    Ok(refs)
}

impl Listing {
    /// Fetches the file lists and small files of `checkpoints` (the selected revisions) and
    /// starts streaming their weights; `keep` keeps the weights after each is scanned.
    pub fn prepare(self, checkpoints: &[CheckpointRef], keep: bool, bars: bool) -> Fetcher {
        if !self.hub.env.offline {
            eprintln!(
                "hf://{}: fetching the file lists, configs and tokenizers of {} revision(s) from {}",
                self.repo,
                checkpoints.len(),
                self.hub.env.endpoint
            );
        }
        let plans: Vec<Plan> = checkpoints.iter().map(|c| self.plan(c)).collect();
        if self.hub.env.offline {
            let missing: Vec<&str> = plans.iter().filter(|p| p.failed.is_some()).map(|p| p.name.as_str()).collect();
            if !missing.is_empty() {
                eprintln!(
                    "warning: HF_HUB_OFFLINE: revision(s) not in the cache, reported as failed: {}",
                    missing.join(", ")
                );
            }
        }
        Fetcher::start(self.hub, self.cache, self.repo, plans, keep, bars)
    }

    /// One revision's plan: its weights to stream, or why it failed already.
    fn plan(&self, c: &CheckpointRef) -> Plan {
        let commit = self.commits.get(&c.name).cloned().unwrap_or_default();
        let mut plan = Plan { name: c.name.clone(), commit, weights: Vec::new(), failed: None };
        let found = if crate::interrupt::requested() {
            Err(format!("revision {}: not fetched, the scan was interrupted", c.name))
        } else if self.hub.env.offline {
            self.cached_weights(&c.name, &plan.commit)
        } else {
            let index = || shard_names(&self.cache.snapshot(&plan.commit));
            self.fetch_small(&c.name, &plan.commit).and_then(|files| weights(&c.name, files, index()))
        };
        match found {
            Ok(weights) => plan.weights = weights,
            Err(e) => plan.failed = Some(e),
        }
        plan
    }

    /// Lists the revision's files, records its ref, and fetches every file but the weights.
    fn fetch_small(&self, name: &str, commit: &str) -> std::result::Result<Vec<RemoteFile>, String> {
        let files = self.hub.files(&self.repo, commit).map_err(|e| format!("revision {name}: {}", e.msg))?;
        self.cache.write_ref(name, commit).map_err(|e| format!("{}: cannot write: {e}", self.cache.root.display()))?;
        let small: Vec<&RemoteFile> = files.iter().filter(|f| is_small(&f.name)).collect();
        let need = small.iter().map(|f| self.cache.missing_bytes(commit, f)).sum();
        check_disk(&self.hub.env, &self.cache, need).map_err(|e| format!("revision {name}: {e}"))?;
        let stop = crate::interrupt::requested;
        for f in small {
            fetch_blob((&self.hub, &self.cache, &self.repo), commit, f, &stop, &mut |_| !stop(), &|line| {
                eprintln!("{line}")
            })
            .map_err(|e| format!("revision {name}: {e}"))?;
        }
        Ok(files)
    }

    /// Offline: the weight files the snapshot folder holds whole, as if listed.
    fn cached_weights(&self, name: &str, commit: &str) -> std::result::Result<Vec<RemoteFile>, String> {
        let missing = || format!("revision {name}: not in the cache, and HF_HUB_OFFLINE is set");
        let entries = std::fs::read_dir(self.cache.snapshot(commit)).map_err(|_| missing())?;
        let files = entries.flatten().filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let blob = std::fs::read_link(e.path()).ok()?.file_name()?.to_string_lossy().into_owned();
            Some(RemoteFile { size: Some(std::fs::metadata(e.path()).ok()?.len()), name, blob })
        });
        let index = shard_names(&self.cache.snapshot(commit));
        let weights = weights(name, files.collect(), index.clone()).map_err(|_| missing())?;
        let all_there = index.is_none_or(|shards| shards.len() == weights.len());
        if all_there {
            Ok(weights)
        } else {
            Err(missing())
        }
    }
}

/// Fetches `f` of `commit` into the cache under its blob's lock, unless it is there (or
/// another process put it there while this one waited); `say` prints a line.
pub(crate) fn fetch_blob(
    (hub, cache, repo): (&Hub, &RepoCache, &str),
    commit: &str,
    f: &RemoteFile,
    stop: &dyn Fn() -> bool,
    on_bytes: &mut dyn FnMut(u64) -> bool,
    say: &dyn Fn(&str),
) -> std::result::Result<(), String> {
    if cache.has(commit, f) || cache.link_existing(commit, f) {
        return Ok(());
    }
    let lock = cache.lock(&f.blob, stop, &mut || {
        say(&format!("waiting for another process's download of {} ({})", f.name, cache.blob(&f.blob).display()))
    });
    let _held = match lock {
        Ok(Some(held)) => held,
        Ok(None) => return Err(format!("{}: stopped while waiting for another process's download", f.name)),
        Err(e) => return Err(format!("{}: cannot lock: {e}", cache.root.display())),
    };
    if cache.link_existing(commit, f) {
        return Ok(());
    }
    let dest = cache.incomplete(&f.blob);
    hub.download(repo, commit, f, &dest, on_bytes).map_err(|e| e.msg)?;
    cache.complete(commit, f).map_err(|e| format!("{}: cannot move into the cache: {e}", dest.display()))
}

/// Files a scan reads besides the weights: configs, tokenizers, trainer state (top level).
fn is_small(name: &str) -> bool {
    !name.contains('/') && [".json", ".txt", ".model"].iter().any(|ext| name.ends_with(ext))
}

/// The shard files `model.safetensors.index.json` in `snapshot` names, when there is one.
fn shard_names(snapshot: &Path) -> Option<Vec<String>> {
    crate::checkpoint::weights::shard_names(&snapshot.join("model.safetensors.index.json")).ok()
}

/// The weight files to stream, chosen as the loader (`checkpoint::weights::weight_files`)
/// chooses them: `model.safetensors`, else the shards the index names, else
/// `pytorch_model.bin`.
fn weights(
    revision: &str,
    files: Vec<RemoteFile>,
    index: Option<Vec<String>>,
) -> std::result::Result<Vec<RemoteFile>, String> {
    let wanted: Vec<String> = match index {
        _ if files.iter().any(|f| f.name == "model.safetensors") => vec!["model.safetensors".into()],
        Some(shards) => shards,
        None => vec!["pytorch_model.bin".into()],
    };
    let found: Vec<RemoteFile> = files.iter().filter(|f| wanted.contains(&f.name)).cloned().collect();
    if found.is_empty() {
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        return Err(format!(
            "revision {revision}: no model weights (no model.safetensors, index or pytorch_model.bin among {})",
            names.join(", ")
        ));
    }
    if found.len() < wanted.len() {
        return Err(format!("revision {revision}: model.safetensors.index.json names shards the revision lacks"));
    }
    Ok(found)
}

/// Refuses a download of `need` bytes that the cache's disk cannot hold, naming both.
pub(crate) fn check_disk(env: &HubEnv, cache: &RepoCache, need: u64) -> std::result::Result<(), String> {
    let Some(free) = env.disk_free.or_else(|| free_bytes(&cache.root)) else { return Ok(()) };
    if need <= free {
        return Ok(());
    }
    Err(format!(
        "the download needs {} but {} has only {} free (free space, or choose another cache with HF_HUB_CACHE)",
        size(need),
        cache.root.display(),
        size(free)
    ))
}

/// Free bytes on the file system that holds `path` (or its nearest existing parent).
#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads a NUL-terminated path and fills the zeroed struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } == 0;
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    ok.then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_path: &Path) -> Option<u64> {
    None
}

/// `1.2 GB`, `34.5 MB`, `512 B`.
pub(crate) fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_paths_name_a_repository() {
        assert_eq!(repo_of(Path::new("hf://EleutherAI/pythia-14m")).unwrap().unwrap(), "EleutherAI/pythia-14m");
        assert_eq!(repo_of(Path::new("hf://models/allenai/OLMo-1B-hf/")).unwrap().unwrap(), "allenai/OLMo-1B-hf");
        assert!(repo_of(Path::new("./checkpoints")).is_none());
        for bad in ["hf://pythia", "hf://a/b/c", "hf://a/..", "hf://a/b c"] {
            assert!(repo_of(Path::new(bad)).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_are_chosen_as_the_loader_reads_them_and_a_revision_without_is_named() {
        let f = |name: &str| RemoteFile { name: name.into(), blob: name.into(), size: Some(1) };
        let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        let files = vec![f("config.json"), f("pytorch_model.bin"), f(shards[0]), f(shards[1]), f("model.safetensors")];
        let names = |w: Vec<RemoteFile>| w.into_iter().map(|f| f.name).collect::<Vec<_>>();
        let index: Option<Vec<String>> = Some(shards.iter().map(|s| s.to_string()).collect());
        assert_eq!(names(weights("step1", files[..4].to_vec(), index.clone()).unwrap()), shards);
        // the loader reads model.safetensors before an index, so only it is fetched
        assert_eq!(names(weights("step1", files.clone(), index).unwrap()), ["model.safetensors"]);
        assert!(weights("step1", files[..2].to_vec(), Some(vec![shards[0].into()])).is_err(), "a missing shard");
        let bin = weights("step1", vec![f("config.json"), f("pytorch_model.bin")], None).unwrap();
        assert_eq!(names(bin), ["pytorch_model.bin"]);
        let err = weights("step1", vec![f("config.json")], None).unwrap_err();
        assert!(err.contains("step1") && err.contains("config.json"), "{err}");
        assert!(is_small("tokenizer.json") && is_small("merges.txt") && !is_small("onnx/config.json"));
    }

    #[test]
    fn only_hex_ids_and_contained_ref_names_become_paths() {
        assert!(is_hex_id(&"a".repeat(40)) && is_hex_id(&"0".repeat(64)));
        assert!(!is_hex_id("") && !is_hex_id(&"A".repeat(40)) && !is_hex_id(&format!("../{}", "a".repeat(37))));
        assert!(is_plain_path("step1000") && is_plain_path("pr/1"));
        for bad in ["", "step1000-/../../x", "/step1", "a//b", "..", "a\\b"] {
            assert!(!is_plain_path(bad), "{bad}");
        }
    }
}
