//! Partitioned scans: `--partition K/N` scans a part of the series (one task of a Slurm array
//! or a Kubernetes Indexed Job) and `merge` scores the parts together, as one full scan would.

use std::path::Path;

use super::util::{fixtures, json, scan, without_timings, Dir};

const FLAGS: [&str; 4] = ["--steps", "6", "--seeds", "2"];

fn scan_to(report: &Path, extra: &[&str]) -> (i32, String) {
    let out = scan(
        &fixtures().join("series"),
        &fixtures().join("task.jsonl"),
        &[&FLAGS[..], &["--json", report.to_str().unwrap()], extra].concat(),
    )
    .output()
    .unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn merge(parts: &[&Path], extra: &[&str]) -> (i32, String) {
    let out =
        assert_cmd::Command::cargo_bin("plasticity").unwrap().arg("merge").args(parts).args(extra).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What must not depend on how the scan was split: curves, scores, ranks and the target
/// (everything but the clock's readings).
fn measured(report: &serde_json::Value) -> serde_json::Value {
    let mut r = report.clone();
    without_timings(&mut r);
    let keep = [
        "name",
        "step",
        "status",
        "curve",
        "runs",
        "steps_to_target",
        "final_eval_loss",
        "rank",
        "tied_with_best",
        "ci95",
    ];
    let checkpoints: Vec<serde_json::Value> = r["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| keep.iter().map(|k| (k.to_string(), c[*k].clone())).collect::<serde_json::Map<_, _>>().into())
        .collect();
    serde_json::json!({ "ranking": r["ranking"], "target_loss": r["target_loss"], "checkpoints": checkpoints })
}

#[test]
fn two_partitions_merged_equal_one_full_scan() {
    let dir = Dir::new();
    let (full, p1, p2, merged) = (
        dir.path().join("full.json"),
        dir.path().join("p1.json"),
        dir.path().join("p2.json"),
        dir.path().join("all.json"),
    );
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
        let mut cmd = scan(
            &fixtures().join("series"),
            &fixtures().join("task.jsonl"),
            &["--steps", "2", "--partition", value, "--json", report.to_str().unwrap()],
        );
        cmd.env_remove("SLURM_ARRAY_TASK_MIN").envs(env.iter().copied());
        let out = cmd.output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) =
        run(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "4"), ("SLURM_ARRAY_TASK_COUNT", "3")], "auto");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json(&report)["settings"]["partition"], "2/3");
    let (code, _) = run(&[("JOB_COMPLETION_INDEX", "0")], "auto/2");
    assert_eq!(code, 0);
    assert_eq!(json(&report)["settings"]["partition"], "1/2");
    for (env, value) in [
        (&[][..], "auto"),
        (&[("JOB_COMPLETION_INDEX", "2")][..], "auto/2"),
        (&[][..], "3/2"),
        (&[][..], "0/2"),
        (&[][..], "x"),
    ] {
        let (code, stderr) = run(env, value);
        assert_eq!(code, 2, "{value}: {stderr}");
        assert!(stderr.contains("--partition"), "{stderr}");
    }
}

/// `--devices`: two workers, each taking the next snapshot, give the curves, scores and
/// ranking of one worker; the report counts the workers and leaves per-snapshot peak memory
/// unset (the process's peak is shared).
#[test]
fn two_workers_equal_one() {
    let dir = Dir::new();
    let (one, two) = (dir.path().join("one.json"), dir.path().join("two.json"));
    assert_eq!(scan_to(&one, &["--device", "cpu"]).0, 0);
    let (code, stderr) = scan_to(&two, &["--devices", "cpu,cpu"]);
    assert_eq!(code, 0, "{stderr}");
    let (one, two) = (json(&one), json(&two));
    super::util::assert_valid_report(&two);
    assert_eq!(measured(&two), measured(&one));
    assert_eq!(two["device"]["workers"], 2);
    assert_eq!(two["settings"]["devices"], serde_json::json!(["cpu", "cpu"]));
    assert!(two["checkpoints"].as_array().unwrap().iter().all(|c| c["peak_rss_bytes"].is_null()));
    assert!(one["checkpoints"].as_array().unwrap().iter().all(|c| c["peak_rss_bytes"].is_u64()));
}

/// `--dtype bf16` on the committed series: the same ranking as f32, every eval loss within
/// bf16's reach of the f32 one, and the dtype recorded.
#[test]
fn bf16_scan_ranks_as_f32() {
    let dir = Dir::new();
    let (f32, bf16) = (dir.path().join("f32.json"), dir.path().join("bf16.json"));
    assert_eq!(scan_to(&f32, &["--device", "cpu"]).0, 0);
    let (code, stderr) = scan_to(&bf16, &["--device", "cpu", "--dtype", "bf16"]);
    assert_eq!(code, 0, "{stderr}");
    let (f32, bf16) = (json(&f32), json(&bf16));
    assert_eq!(bf16["settings"]["dtype"], "bf16");
    assert_eq!(f32["settings"]["dtype"], "f32");
    assert_eq!(bf16["ranking"], f32["ranking"]);
    let evals = |r: &serde_json::Value| -> Vec<f64> {
        r["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c["curve"].as_array().unwrap().iter().filter_map(|p| p["eval_loss"].as_f64()).collect::<Vec<_>>()
            })
            .collect()
    };
    let (a, b) = (evals(&f32), evals(&bf16));
    assert_eq!(a.len(), b.len());
    assert!(a != b, "bf16 computes in bf16, not f32");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() / x < 1e-2, "eval loss {y} in bf16 vs {x} in f32");
    }
}

/// The curve numbers of a report as written: every `"eval_loss"` and `"train_loss"` line of the
/// pretty-printed JSON, compared as text (the shortest form of an f64 names it exactly), so
/// the check does not depend on how precisely a reader parses floats.
fn curve_numbers(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("\"eval_loss\"") || l.starts_with("\"train_loss\""))
        .map(String::from)
        .collect()
}

#[test]
fn merged_and_resumed_reports_keep_every_float_exactly() {
    let dir = Dir::new();
    let path = |name: &str| dir.path().join(name);
    // every update evaluated: a few hundred numbers, of which a lossy reader changes some
    let dense = ["--eval-every", "1"];
    assert_eq!(scan_to(&path("full.json"), &dense).0, 0);
    assert_eq!(scan_to(&path("p1.json"), &[&dense[..], &["--partition", "1/2"]].concat()).0, 0);
    assert_eq!(scan_to(&path("p2.json"), &[&dense[..], &["--partition", "2/2"]].concat()).0, 0);
    assert_eq!(merge(&[&path("p1.json"), &path("p2.json")], &["--json", path("merged.json").to_str().unwrap()]).0, 0);
    std::fs::copy(path("full.json"), path("resumed.json")).unwrap();
    let (code, stderr) =
        scan_to(&path("resumed.json"), &[&dense[..], &["--resume", path("full.json").to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.matches("reusing the measurement").count(), 4, "{stderr}");

    let full = curve_numbers(&path("full.json"));
    assert!(full.len() > 150, "{}", full.len());
    assert_eq!(curve_numbers(&path("merged.json")), full);
    assert_eq!(curve_numbers(&path("resumed.json")), full);
}
