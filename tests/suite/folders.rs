//! Folders as other tools and people leave them: symlink loops and dangling links, names that
//! are not UTF-8, unreadable entries, a mix of architectures, shards reached through symlinks,
//! and the Hugging Face hub cache. Each is scanned or refused with a message naming the path.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::util::{fixtures, model_dir, scan, Dir};

/// Runs a scan with a JSON report on stdout: (exit code, stderr, report).
fn run(dir: &Path, extra: &[&str]) -> (i32, String, serde_json::Value) {
    let out = scan(dir, &fixtures().join("task.jsonl"), &[&["--json", "-", "--steps", "1"], extra].concat())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    (out.status.code().unwrap(), stderr, report)
}

fn ranking(report: &serde_json::Value) -> Vec<String> {
    report["ranking"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn status_of(report: &serde_json::Value, name: &str) -> (String, String) {
    let c = report["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report"));
    (c["status"].as_str().unwrap().to_string(), c["error"].as_str().unwrap_or("").to_string())
}

#[test]
fn symlink_loops_and_dangling_links_are_skipped_with_a_reason() {
    let dir = Dir::new();
    dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-1");
    symlink("checkpoint-2", dir.path().join("checkpoint-2")).unwrap(); // points at itself
    symlink("checkpoint-4", dir.path().join("checkpoint-3")).unwrap();
    symlink("checkpoint-3", dir.path().join("checkpoint-4")).unwrap();
    symlink("nowhere", dir.path().join("checkpoint-5")).unwrap();
    let (code, stderr, report) = run(dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ranking(&report), ["checkpoint-1"]);
    for name in ["checkpoint-2", "checkpoint-3", "checkpoint-4"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("warning: skipping") && l.contains(name) && l.contains("symbolic links")),
            "{name}: {stderr}"
        );
    }
    assert!(stderr.lines().any(|l| l.contains("checkpoint-5") && l.contains("cannot open")), "{stderr}");
}

#[test]
fn a_name_that_is_not_utf8_is_scanned_and_said() {
    let dir = Dir::new();
    dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-1");
    let odd = std::ffi::OsStr::from_bytes(b"checkpoint-2-\xff\xfe");
    let from = dir.copy_checkpoint(&model_dir("gpt2"), "tmp");
    std::fs::rename(from, dir.path().join(odd)).unwrap();
    let (code, stderr, report) = run(dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    super::util::assert_valid_report(&report);
    assert_eq!(ranking(&report).len(), 2);
    assert!(ranking(&report).contains(&"checkpoint-2-\u{fffd}\u{fffd}".to_string()));
    assert!(stderr.contains("not UTF-8"), "{stderr}");
}

#[test]
fn an_unreadable_folder_is_skipped_with_the_os_reason() {
    let dir = Dir::new();
    dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-1");
    let locked = dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-2");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let readable_anyway = std::fs::read_dir(&locked).is_ok(); // root reads everything
    let (code, stderr, report) = run(dir.path(), &[]);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    if readable_anyway {
        assert_eq!((code, ranking(&report).len()), (0, 2), "{stderr}");
    } else {
        assert_eq!(ranking(&report), ["checkpoint-1"]);
        assert!(stderr.lines().any(|l| l.contains("checkpoint-2") && l.contains("Permission denied")), "{stderr}");
    }
}

#[test]
fn a_mix_of_architectures_is_scanned_and_said() {
    let dir = Dir::new();
    dir.copy_checkpoint(&model_dir("gpt2"), "checkpoint-1");
    dir.copy_checkpoint(&model_dir("llama_gqa"), "checkpoint-2");
    let (code, stderr, report) = run(dir.path(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ranking(&report).len(), 2);
    let warning = stderr.lines().find(|l| l.contains("mixes architectures")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(warning.contains("gpt2: checkpoint-1") && warning.contains("llama: checkpoint-2"), "{warning}");
}

/// llama_sharded copied to `checkpoint-1`, with shard 1 replaced by `place(series, shard)`.
fn sharded_with(place: impl FnOnce(&Path, &Path)) -> (i32, String, serde_json::Value) {
    let dir = Dir::new();
    let c = dir.copy_checkpoint(&model_dir("llama_sharded"), "checkpoint-1");
    place(dir.path(), &c.join("model-00001-of-00003.safetensors"));
    run(dir.path(), &[])
}

#[test]
fn shards_reached_through_symlinks_must_stay_inside() {
    let outside = |series: &Path, shard: &Path| {
        std::fs::rename(shard, series.join("elsewhere.safetensors")).unwrap();
        symlink("../elsewhere.safetensors", shard).unwrap();
    };
    let (_, _, report) = sharded_with(outside);
    let (status, error) = status_of(&report, "checkpoint-1");
    assert_eq!(status, "failed");
    assert!(
        error.contains("model.safetensors.index.json") && error.contains("points outside the checkpoint folder"),
        "{error}"
    );

    let absolute = |_: &Path, shard: &Path| {
        let index = shard.with_file_name("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).unwrap();
        let text = text.replace("\"model-00001-of-00003.safetensors\"", &format!("{:?}", shard.display().to_string()));
        std::fs::write(index, text).unwrap();
    };
    let (_, _, report) = sharded_with(absolute);
    assert!(status_of(&report, "checkpoint-1").1.contains("leaves the checkpoint folder"));

    let inside = |_: &Path, shard: &Path| {
        std::fs::rename(shard, shard.with_file_name("real.safetensors")).unwrap();
        symlink("real.safetensors", shard).unwrap();
    };
    let (code, stderr, _) = sharded_with(inside);
    assert_eq!(code, 0, "{stderr}");
}

/// The hub cache's layout for one repository: `refs/REV` holds a commit, the files of
/// `snapshots/COMMIT/` are symlinks into `blobs/`.
fn hub_cache(revisions: &[(&str, &str, &str)]) -> Dir {
    let dir = Dir::new();
    let repo = dir.path().join("models--org--tiny");
    for (rev, commit, fixture) in revisions {
        dir.write(&format!("models--org--tiny/refs/{rev}"), commit);
        let snapshot = repo.join("snapshots").join(commit);
        if snapshot.exists() {
            continue; // another ref names the same commit
        }
        std::fs::create_dir_all(&snapshot).unwrap();
        for entry in std::fs::read_dir(model_dir(fixture)).unwrap().map(Result::unwrap) {
            let blob = repo.join("blobs").join(format!("{commit}-{}", entry.file_name().to_string_lossy()));
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::copy(entry.path(), &blob).unwrap();
            symlink(Path::new("../../blobs").join(blob.file_name().unwrap()), snapshot.join(entry.file_name()))
                .unwrap();
        }
    }
    dir
}

#[test]
fn a_hub_cache_repository_is_a_series_of_its_step_revisions() {
    let cache = hub_cache(&[
        ("step2", "bbbb", "llama_sharded"),
        ("step1", "aaaa", "llama_sharded"),
        ("main", "bbbb", "llama_sharded"),
    ]);
    cache.write("models--org--tiny/refs/step3", "cccc"); // not downloaded
    let (code, stderr, report) = run(&cache.path().join("models--org--tiny"), &[]);
    assert_eq!(code, 0, "{stderr}");
    let steps: Vec<(String, u64)> = report["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["step"].as_u64().unwrap()))
        .collect();
    assert_eq!(steps, [("step1".to_string(), 1), ("step2".to_string(), 2)]);
    assert!(stderr.contains("skipping revision main"), "{stderr}");
    assert!(stderr.contains("skipping revision step3") && stderr.contains("\"cccc\""), "{stderr}");
}

/// `--snapshots` names snapshots (globs allowed), `--max-snapshots` thins the series to N spread
/// by step with the first and last kept; the report records the selection. A name matching
/// nothing, and N = 0, are refused with exit code 2.
#[test]
fn snapshots_are_selected_by_name_and_spread() {
    let series = fixtures().join("series");
    let names = |r: &serde_json::Value| -> Vec<String> {
        r["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    let (code, stderr, report) = run(&series, &["--max-snapshots", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&report), ["checkpoint-30", "checkpoint-120"]);
    assert!(stderr.contains("scanning 2 of the series' 4 snapshot(s)"), "{stderr}");
    assert_eq!(report["settings"]["snapshots"]["max"], 2);
    assert_eq!(report["settings"]["snapshots"]["spacing"], "linear");
    let (code, stderr, report) = run(&series, &["--snapshots", "checkpoint-6*,checkpoint-90"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&report), ["checkpoint-60", "checkpoint-90"]);
    for flags in [&["--snapshots", "checkpoint-1000"][..], &["--max-snapshots", "0"][..]] {
        let out =
            scan(&series, &fixtures().join("task.jsonl"), &[&["--steps", "2"][..], flags].concat()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(flags[0]) && stderr.lines().count() <= 2, "{flags:?}: {stderr}");
    }
}
