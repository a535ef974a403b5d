//! `--ranks` / `--lrs`: every snapshot fine-tuned at every (rank, lr) with the same seeds and
//! batches, scored against the main variant's target; each variant equals a plain scan at its
//! settings, and the table, Markdown and plot show the sweep.

use super::util::{fixtures, json, scan, without_timings, Dir};

fn run(dir: &Dir, name: &str, extra: &[&str]) -> serde_json::Value {
    let report = dir.path().join(format!("{name}.json"));
    let lr: &[&str] = if extra.contains(&"--lr") || extra.contains(&"--lrs") { &[] } else { &["--lr", "1e-2"] };
    let flags =
        [&["--steps", "6", "--json", report.to_str().unwrap(), "--device", "cpu", "--quiet"][..], lr, extra].concat();
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
    let sweep = run(
        &dir,
        "sweep",
        &["--ranks", "2,8", "--lrs", "1e-2,3e-3", "--markdown", md.to_str().unwrap(), "--plot", plot.to_str().unwrap()],
    );
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
        let evals: Vec<serde_json::Value> = c["curve"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| !q["eval_loss"].is_null())
            .map(|q| serde_json::json!([q["step"].as_f64(), q["eval_loss"]]))
            .collect();
        assert_eq!(p["eval_curve"], serde_json::Value::Array(evals), "{}", p["name"]);
    }

    // per snapshot, recomputed from the variants: the smallest rank whose eval curve (at the
    // main rate) gets to the target, and the rate with the fewest hours (else the lowest final loss)
    let variant = |rank: u64, lr: f64| {
        s["variants"].as_array().unwrap().iter().find(|v| v["rank"] == rank && v["lr"] == lr).unwrap().clone()
    };
    let point = |v: &serde_json::Value, name: &serde_json::Value| {
        v["checkpoints"].as_array().unwrap().iter().find(|p| &p["name"] == name).unwrap().clone()
    };
    for c in s["checkpoints"].as_array().unwrap() {
        let reaches = |rank: u64| {
            point(&variant(rank, 1e-2), &c["name"])["eval_curve"]
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q[1].as_f64().unwrap() <= target)
        };
        let smallest = [2, 8].into_iter().find(|&r| reaches(r));
        assert_eq!(c["smallest_rank"].as_u64(), smallest, "{c}");
        let at = |lr: f64| point(&variant(2, lr), &c["name"]);
        let key = |lr: f64| {
            (
                at(lr)["device_hours_to_target"].as_f64().unwrap_or(f64::INFINITY),
                at(lr)["final_eval_loss"].as_f64().unwrap(),
            )
        };
        let best = if key(1e-2) <= key(3e-3) { 1e-2 } else { 3e-3 };
        assert_eq!(c["best_lr"].as_f64(), Some(best), "{c}");
        assert_eq!(c["best_lr_tied_with"], serde_json::json!([]), "one seed: no rate is tied with another");
    }
    let summary = s["summary"].as_array().unwrap();
    assert!(summary.iter().any(|l| l.as_str().unwrap().starts_with("rank: the winner")));
    assert!(summary.iter().any(|l| l.as_str().unwrap().starts_with("learning rate: the winner")));
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("rank sweep at lr=1e-2")
            && md.contains("learning-rate sweep at r=2")
            && md.contains("smallest rank"),
        "{md}"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("r=8, lr=3e-3"), "one panel per variant");
}

#[test]
fn sweeps_refuse_what_they_cannot_combine_with() {
    let peft = fixtures().join("peft/gpt2");
    for flags in [
        &["--ranks", "4,4"][..],
        &["--ranks", "0,4"],
        &["--lrs", "1e-3,-1"],
        &["--ranks", "4,8", "--strategy", "race"],
        &["--lrs", "1e-3,1e-4", "--partition", "1/2"],
        &["--ranks", "4,8", "--target-drop", "0.5"],
        &["--ranks", "4,8", "--init-adapter", peft.to_str().unwrap()],
    ] {
        let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), flags).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--ranks") || stderr.contains("--lrs"), "{stderr}");
    }
}

/// The series whose curves cross, swept over two ranks: what the summary says about the winner
/// follows the variants' own intervals, recomputed here from the report.
fn crossing_sweep(dir: &Dir, name: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let report = dir.path().join(format!("{name}.json"));
    let flags = [
        &[
            "--ranks",
            "2,8",
            "--lr",
            "3e-3",
            "--steps",
            "20",
            "--eval-every",
            "5",
            "--eval-blocks",
            "8",
            "--batch-size",
            "8",
            "--json",
            report.to_str().unwrap(),
            "--quiet",
        ][..],
        extra,
    ]
    .concat();
    let out = scan(&fixtures().join("series_crossing"), &fixtures().join("task_upper.jsonl"), &flags).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let r = json(&report);
    super::util::assert_valid_report(&r);
    (r, stderr)
}

/// The winner changes with the rank only when, at some rank, the other rank's winner is
/// significantly slower than that rank's own (95% intervals of device-hours apart); one seed
/// cannot tell, and says so.
#[test]
fn whether_the_winner_changes_is_backed_by_the_intervals() {
    let dir = Dir::new();
    for seeds in ["1", "3"] {
        let (r, _) = crossing_sweep(&dir, &format!("s{seeds}"), &["--seeds", seeds]);
        let s = &r["sweep"];
        let checkpoints = |rank: u64| -> Vec<serde_json::Value> {
            if rank == 2 {
                r["checkpoints"].as_array().unwrap().clone()
            } else {
                s["variants"].as_array().unwrap().iter().find(|v| v["rank"] == rank).unwrap()["measurements"]
                    .as_array()
                    .unwrap()
                    .clone()
            }
        };
        let winner = |rank: u64| {
            s["variants"].as_array().unwrap().iter().find(|v| v["rank"] == rank).unwrap()["ranking"][0]
                .as_str()
                .unwrap()
                .to_string()
        };
        let hours = |rank: u64, name: &str| {
            let c = checkpoints(rank).into_iter().find(|c| c["name"] == name).unwrap();
            let h = c["device_hours_to_target"].as_f64();
            c["ci95"]
                .get("device_hours_to_target")
                .map(|i| (i[0].as_f64().unwrap(), i[1].as_f64().unwrap()))
                .or(h.map(|h| (h, h)))
        };
        let (w2, w8) = (winner(2), winner(8));
        let apart = |rank: u64, best: &str, other: &str| matches!((hours(rank, best), hours(rank, other)), (Some(b), Some(o)) if b.1 < o.0 && seeds != "1");
        let changes = w2 != w8 && (apart(2, &w2, &w8) || apart(8, &w8, &w2));
        assert_eq!(s["winner_changes_with_rank"].as_bool(), Some(changes), "{s}");
        let line = s["summary"][0].as_str().unwrap();
        match (w2 == w8, changes, seeds) {
            (true, _, _) => assert!(line.contains("the winner is") && line.contains("at every rank"), "{line}"),
            (false, true, _) => {
                assert!(line.contains("changes with the rank") && line.contains("beyond seed noise at 95%"), "{line}")
            }
            (false, false, "1") => assert!(line.contains("one seed cannot tell"), "{line}"),
            (false, false, _) => assert!(line.contains("not beyond seed noise"), "{line}"),
        }
        eprintln!("{seeds} seed(s): {line}");
    }
}

/// A sweep saves every variant's adapters in its own folder; --save-best keeps the fastest
/// (variant, snapshot) only; --resume reuses every variant's measurements.
#[test]
fn a_sweep_saves_adapters_per_variant_and_resumes() {
    let dir = Dir::new();
    let adapters = dir.path().join("adapters");
    let (r, _) = crossing_sweep(&dir, "saved", &["--save-adapters", adapters.to_str().unwrap()]);
    let names: Vec<&str> = r["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for variant in ["r2-lr3e-3", "r8-lr3e-3"] {
        for name in &names {
            let config = json(&adapters.join(variant).join(name).join("adapter_config.json"));
            assert_eq!(config["r"].as_u64(), Some(if variant.starts_with("r2") { 2 } else { 8 }));
        }
    }
    let report = dir.path().join("saved.json");
    let (resumed, stderr) = crossing_sweep(&dir, "saved", &["--resume", report.to_str().unwrap()]);
    assert_eq!(stderr.matches("reusing the measurement").count(), 2 * names.len(), "{stderr}");
    let curves = |r: &serde_json::Value| {
        r["sweep"]["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["checkpoints"].as_array().unwrap().iter().map(|p| p["eval_curve"].clone()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(curves(&resumed), curves(&r));

    let best = dir.path().join("best");
    let (r, stderr) = crossing_sweep(&dir, "best", &["--save-adapters", best.to_str().unwrap(), "--save-best"]);
    let winners: Vec<(String, String, f64)> = r["sweep"]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let name = v["ranking"][0].as_str()?;
            let hours = v["checkpoints"].as_array().unwrap().iter().find(|p| p["name"] == name)?
                ["device_hours_to_target"]
                .as_f64()?;
            Some((format!("r{}-lr3e-3", v["rank"]), name.to_string(), hours))
        })
        .collect();
    let (variant, name, _) = winners.iter().min_by(|a, b| a.2.total_cmp(&b.2)).unwrap();
    let kept: Vec<String> = ["r2-lr3e-3", "r8-lr3e-3"]
        .iter()
        .flat_map(|v| names.iter().map(move |n| format!("{v}/{n}")))
        .filter(|p| best.join(p).exists())
        .collect();
    assert_eq!(kept, [format!("{variant}/{name}")], "{stderr}");
}
