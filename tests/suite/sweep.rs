//! `--ranks` / `--lrs`: every snapshot fine-tuned at every (rank, lr) with the same seeds and
//! batches, scored against the main variant's target; each variant equals a plain scan at its
//! settings, and the table, Markdown and plot show the sweep.

use super::util::{fixtures, json, scan, without_timings, Dir};

fn run(dir: &Dir, name: &str, extra: &[&str]) -> serde_json::Value {
    let report = dir.path().join(format!("{name}.json"));
    let lr: &[&str] = if extra.contains(&"--lr") || extra.contains(&"--lrs") { &[] } else { &["--lr", "1e-2"] };
    let flags = [&["--steps", "6", "--json", report.to_str().unwrap(), "--device", "cpu", "--quiet"][..], lr, extra].concat();
    let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &flags).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&report);
    super::util::assert_valid_report(&r);
    r
}

/// Curves and ranks of a plain scan, clock readings aside.
fn measured(r: &serde_json::Value) -> serde_json::Value {
    let mut r = r.clone();
    without_timings(&mut r);
    let names = |c: &serde_json::Value| (c["name"].clone(), c["curve"].clone(), c["rank"].clone());
    serde_json::json!({ "ranking": r["ranking"], "checkpoints": r["checkpoints"].as_array().unwrap().iter().map(|c| { let (n, cu, ra) = names(c); serde_json::json!([n, cu, ra]) }).collect::<Vec<_>>() })
}

#[test]
fn a_rank_and_rate_sweep_equals_plain_scans_and_renders() {
    let dir = Dir::new();
    let (md, plot) = (dir.path().join("s.md"), dir.path().join("s.svg"));
    let sweep = run(&dir, "sweep", &["--ranks", "2,8", "--lrs", "1e-2,3e-3", "--markdown", md.to_str().unwrap(), "--plot", plot.to_str().unwrap()]);
    let s = &sweep["sweep"];
    assert_eq!(s["variants"].as_array().unwrap().len(), 4);
    assert_eq!((s["main_rank"].as_u64(), s["main_lr"].as_f64()), (Some(2), Some(1e-2)));
    assert_eq!(sweep["settings"]["lora"]["rank"], 2);

    // the main variant is the plain scan at its settings; another variant is the plain scan at
    // its settings against the main target
    let main = run(&dir, "main", &["--rank", "2"]);
    assert_eq!(measured(&sweep), measured(&main));
    let target = s["target_loss"].as_f64().unwrap();
    assert_eq!(sweep["target_loss"].as_f64(), Some(target));
    let other = run(&dir, "other", &["--rank", "8", "--lr", "3e-3", "--target-loss", &format!("{target:e}")]);
    let v = s["variants"].as_array().unwrap().iter().find(|v| v["rank"] == 8 && v["lr"] == 3e-3).unwrap();
    assert_eq!(v["ranking"], other["ranking"]);
    for (p, c) in v["checkpoints"].as_array().unwrap().iter().zip(other["checkpoints"].as_array().unwrap()) {
        let evals: Vec<serde_json::Value> = c["curve"].as_array().unwrap().iter().filter(|q| !q["eval_loss"].is_null()).map(|q| serde_json::json!([q["step"].as_f64(), q["eval_loss"]])).collect();
        assert_eq!(p["eval_curve"], serde_json::Value::Array(evals), "{}", p["name"]);
    }

    // per snapshot: smallest rank and best rate are among the values swept
    for c in s["checkpoints"].as_array().unwrap() {
        assert!(c["smallest_rank"].is_null() || [2, 8].contains(&c["smallest_rank"].as_u64().unwrap()));
        assert!([1e-2, 3e-3].contains(&c["best_lr"].as_f64().unwrap()));
        assert_eq!(c["hours_by_rank"].as_array().unwrap().len(), 2);
    }
    let summary = s["summary"].as_array().unwrap();
    assert!(summary.iter().any(|l| l.as_str().unwrap().starts_with("rank: the winner")));
    assert!(summary.iter().any(|l| l.as_str().unwrap().starts_with("learning rate: the winner")));
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("rank sweep at lr=1e-2") && md.contains("learning-rate sweep at r=2") && md.contains("smallest rank"), "{md}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("r=8, lr=3e-3"), "one panel per variant");
}

#[test]
fn sweeps_refuse_what_they_cannot_combine_with() {
    let peft = fixtures().join("peft/gpt2");
    for flags in [&["--ranks", "4,4"][..], &["--ranks", "0,4"], &["--lrs", "1e-3,-1"], &["--ranks", "4,8", "--strategy", "race"], &["--lrs", "1e-3,1e-4", "--partition", "1/2"], &["--lrs", "1e-3,1e-4", "--resume", "r.json"], &["--ranks", "4,8", "--save-adapters", "out"], &["--ranks", "4,8", "--target-drop", "0.5"], &["--ranks", "4,8", "--init-adapter", peft.to_str().unwrap()]] {
        let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), flags).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--ranks") || stderr.contains("--lrs"), "{stderr}");
    }
}
