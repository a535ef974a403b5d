//! Partitioned scans: `--partition K/N` scans a part of the series (one task of a Slurm array
//! or a Kubernetes Indexed Job) and `merge` scores the parts together, as one full scan would.

use std::path::Path;

use super::util::{fixtures, json, scan, without_timings, Dir};

const FLAGS: [&str; 4] = ["--steps", "6", "--seeds", "2"];

fn scan_to(report: &Path, extra: &[&str]) -> (i32, String) {
    let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &[&FLAGS[..], &["--json", report.to_str().unwrap()], extra].concat()).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn merge(parts: &[&Path], extra: &[&str]) -> (i32, String) {
    let out = assert_cmd::Command::cargo_bin("plasticity").unwrap().arg("merge").args(parts).args(extra).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What must not depend on how the scan was split: curves, scores, ranks and the target
/// (everything but the clock's readings).
fn measured(report: &serde_json::Value) -> serde_json::Value {
    let mut r = report.clone();
    without_timings(&mut r);
    let keep = ["name", "step", "status", "curve", "runs", "steps_to_target", "final_eval_loss", "rank", "tied_with_best", "ci95"];
    let checkpoints: Vec<serde_json::Value> = r["checkpoints"].as_array().unwrap().iter().map(|c| keep.iter().map(|k| (k.to_string(), c[*k].clone())).collect::<serde_json::Map<_, _>>().into()).collect();
    serde_json::json!({ "ranking": r["ranking"], "target_loss": r["target_loss"], "checkpoints": checkpoints })
}

#[test]
fn two_partitions_merged_equal_one_full_scan() {
    let dir = Dir::new();
    let (full, p1, p2, merged) = (dir.path().join("full.json"), dir.path().join("p1.json"), dir.path().join("p2.json"), dir.path().join("all.json"));
    assert_eq!(scan_to(&full, &[]).0, 0);
    let (code, stderr) = scan_to(&p1, &["--partition", "1/2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("partition 1/2: 2 checkpoint(s)"), "{stderr}");
    assert_eq!(scan_to(&p2, &["--partition", "2/2"]).0, 0);
    assert_eq!(json(&p1)["checkpoints"].as_array().unwrap().len(), 2);
    let (code, stderr) = merge(&[&p2, &p1], &["--json", merged.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let merged = json(&merged);
    super::util::assert_valid_report(&merged);
    assert_eq!(measured(&merged), measured(&json(&full)));
    assert_eq!(merged["settings"]["partition"], serde_json::Value::Null);

    // a part alone is not the series: merge says which partition is missing
    let (code, stderr) = merge(&[&p1], &["--json", dir.path().join("half.json").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stderr.contains("missing 2/2"), "{stderr}");
}

#[test]
fn merge_refuses_parts_that_do_not_belong_together() {
    let dir = Dir::new();
    let (p1, p2) = (dir.path().join("p1.json"), dir.path().join("p2.json"));
    scan_to(&p1, &["--partition", "1/2"]);
    scan_to(&p2, &["--partition", "2/2", "--lr", "0.01"]);
    let (code, stderr) = merge(&[&p1, &p2], &[]);
    assert_eq!(code, 2);
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains("p2.json") && line.contains("settings differ from") && line.contains("train"), "{line}");

    let (code, stderr) = merge(&[&p1, &p1], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("the parts overlap"), "{stderr}");

    let mut report = json(&p1);
    report["tool"]["version"] = "0.0.1".into();
    std::fs::write(&p2, report.to_string()).unwrap();
    let (code, stderr) = merge(&[&p1, &p2], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("written by plasticity 0.0.1"), "{stderr}");
}

#[test]
fn partition_auto_reads_slurm_and_kubernetes() {
    let dir = Dir::new();
    let report = dir.path().join("r.json");
    let run = |env: &[(&str, &str)], value: &str| {
        let mut cmd = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &["--steps", "2", "--partition", value, "--json", report.to_str().unwrap()]);
        cmd.env_remove("SLURM_ARRAY_TASK_MIN").envs(env.iter().copied());
        let out = cmd.output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "4"), ("SLURM_ARRAY_TASK_COUNT", "3")], "auto");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json(&report)["settings"]["partition"], "2/3");
    let (code, _) = run(&[("JOB_COMPLETION_INDEX", "0")], "auto/2");
    assert_eq!(code, 0);
    assert_eq!(json(&report)["settings"]["partition"], "1/2");
    for (env, value) in [(&[][..], "auto"), (&[("JOB_COMPLETION_INDEX", "2")][..], "auto/2"), (&[][..], "3/2"), (&[][..], "0/2"), (&[][..], "x")] {
        let (code, stderr) = run(env, value);
        assert_eq!(code, 2, "{value}: {stderr}");
        assert!(stderr.contains("--partition"), "{stderr}");
    }
}
