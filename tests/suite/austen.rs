//! The README's language-model example: the shipped Austen series (scripts/make_austen_series.py)
//! scanned with scan's defaults. Fine-tuning must matter on it (every curve falls clearly) and
//! the ranking for the budget must not be the order of the zero-shot losses.

use super::util::{self, fixtures, Dir};

#[test]
fn the_default_scan_of_the_austen_series_falls_clearly_and_reorders_the_snapshots() {
    let dir = Dir::new();
    let json = dir.path().join("r.json");
    let mut cmd = assert_cmd::Command::cargo_bin("plasticity").unwrap();
    let out = cmd
        .arg("scan")
        .arg(fixtures().join("series_austen"))
        .arg("--task")
        .arg(fixtures().join("task_austen.jsonl"))
        .args(["--threads", "2", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("the ranking mostly reflects the initial losses"), "{stderr}");
    let report = util::json(&json);
    let checkpoints = report["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 5);
    for c in checkpoints {
        let (first, last) = (c["initial_eval_loss"].as_f64().unwrap(), c["final_eval_loss"].as_f64().unwrap());
        assert!(last < 0.9 * first, "{}: {first} -> {last} is not a clear fall", c["name"]);
    }
    let mut zero_shot: Vec<(f64, String)> = checkpoints
        .iter()
        .map(|c| (c["initial_eval_loss"].as_f64().unwrap(), c["name"].as_str().unwrap().to_string()))
        .collect();
    zero_shot.sort_by(|a, b| a.0.total_cmp(&b.0));
    let by_zero_shot: Vec<&str> = zero_shot.iter().map(|(_, n)| n.as_str()).collect();
    let ranking: Vec<&str> = report["ranking"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_ne!(ranking, by_zero_shot, "the ranking is the order of the zero-shot losses");
    assert_eq!(by_zero_shot[0], "checkpoint-800");
    let at = |name: &str| ranking.iter().position(|n| *n == name).unwrap();
    assert!(
        at("checkpoint-3200") < at("checkpoint-800"),
        "checkpoint-3200 starts worse than checkpoint-800 and ends better: {ranking:?}"
    );
}
