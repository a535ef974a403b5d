//! The command line end to end on the committed checkpoint series (real Trainer folders).

use super::util::{fixtures, scan, without_timings, Dir};

#[test]
fn scan_of_the_committed_series_ranks_every_checkpoint() {
    let dir = Dir::new();
    let report = dir.path().join("report.json");
    let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &["--json", report.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("README.txt"), "the non-checkpoint entry is not named in a warning: {stderr}");
    assert!(
        stderr.contains("ranking mostly reflects the initial losses"),
        "four steps of a tiny model barely move the loss: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("best checkpoint to fine-tune"), "{stdout}");

    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    super::util::assert_valid_report(&r);
    assert_eq!(r["schema_version"], 2);
    assert_eq!(r["tool"]["name"], "plasticity");
    assert_eq!(r["status"], "complete");
    assert_eq!(r["hours_unit"], "device-hours");
    assert_eq!(r["settings"]["train"]["steps"], 4);
    assert_eq!(r["settings"]["lora"]["rank"], 8);
    assert!(r["target_loss"].as_f64().unwrap() > 0.0);
    let names: Vec<&str> = r["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["checkpoint-30", "checkpoint-60", "checkpoint-90", "checkpoint-120"]);
    // the ranking recomputed from the curves: the target is the median final eval loss; steps
    // to it are interpolated between eval points (three per curve: too few to forecast, so a
    // curve that misses it is not reached); reached before not reached, then fewer steps (one
    // shape, so steps order hours), then the lower final loss
    let evals = |c: &serde_json::Value| {
        c["curve"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| Some((p["step"].as_f64().unwrap(), p["eval_loss"].as_f64()?)))
            .collect::<Vec<_>>()
    };
    let mut finals: Vec<f64> =
        r["checkpoints"].as_array().unwrap().iter().map(|c| evals(c).last().unwrap().1).collect();
    finals.sort_by(f64::total_cmp);
    let target = (finals[1] + finals[2]) / 2.0;
    assert_eq!(r["target_loss"].as_f64(), Some(target));
    let steps_to = |e: &[(f64, f64)]| {
        e.iter().position(|p| p.1 <= target).map(|i| {
            if i == 0 {
                e[0].0
            } else {
                e[i - 1].0 + (e[i].0 - e[i - 1].0) * (e[i - 1].1 - target) / (e[i - 1].1 - e[i].1)
            }
        })
    };
    let mut expected: Vec<(bool, f64, f64, &str)> = r["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let e = evals(c);
            let steps = steps_to(&e);
            assert_eq!(c["steps_to_target"].as_f64(), steps, "{}", c["name"]);
            assert_eq!(c["at_target_before_training"].as_bool(), Some(e[0].1 <= target), "{}", c["name"]);
            (steps.is_none(), steps.unwrap_or(0.0), e.last().unwrap().1, c["name"].as_str().unwrap())
        })
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.total_cmp(&b.2)));
    let ranking: Vec<&str> = r["ranking"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ranking, expected.iter().map(|e| e.3).collect::<Vec<_>>());
    let onset = r["pretraining"]["plateau_onset_step"].as_f64().expect("the Trainer log has a plateau");
    assert!(r["pretraining"]["loss_curve"].as_array().unwrap().len() >= 10);
    for c in r["checkpoints"].as_array().unwrap() {
        assert_eq!(c["status"], "ok");
        assert_eq!(c["step_source"], "trainer_state.json");
        assert_eq!(c["after_plateau_onset"], c["step"].as_f64().unwrap() >= onset);
        assert_eq!(c["curve"].as_array().unwrap().len(), 5, "step 0 plus 4 updates");
        assert!(c["initial_eval_loss"].as_f64().is_some() && c["final_eval_loss"].as_f64().is_some());
        assert!(c["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(c["flops_per_s"].as_f64().unwrap() > c["tokens_per_s"].as_f64().unwrap());
        assert!(c["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
        assert!(c["rank"].as_u64().unwrap() >= 1);
        assert!(c["pretrain_loss"].as_f64().is_some());
    }
}

/// Losses of every curve point of every checkpoint, and the ranking.
fn losses_and_ranking(seed: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &["--json", "-", "--seed", seed])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = r["checkpoints"].as_array().unwrap().iter().flat_map(|c| c["curve"].as_array().unwrap().clone());
    let losses = points.map(|p| serde_json::json!([p["train_loss"], p["eval_loss"]])).collect();
    (losses, r["ranking"].clone())
}

#[test]
fn same_seed_same_report_apart_from_timings() {
    let a = losses_and_ranking("11");
    assert_eq!(a, losses_and_ranking("11"));
    assert_ne!(a.0, losses_and_ranking("12").0);
}

/// Same inputs and seeds: the JSON reports are byte-identical once timing fields are removed,
/// with two seeds per checkpoint (so intervals and every seed's run are compared too).
#[test]
fn same_inputs_give_byte_identical_reports_apart_from_timings() {
    let run = || {
        let out = scan(
            &fixtures().join("series"),
            &fixtures().join("task.jsonl"),
            &["--json", "-", "--seeds", "2", "--steps", "3"],
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        without_timings(&mut r);
        serde_json::to_string_pretty(&r).unwrap()
    };
    let (a, b) = (run(), run());
    assert!(a.contains("\"train_loss\"") && a.contains("\"ci95\""));
    assert_eq!(a, b);
}

#[test]
fn one_checkpoint_folder_is_scanned_alone() {
    let out = scan(&fixtures().join("models/gpt2"), &fixtures().join("task.jsonl"), &["--json", "-"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["checkpoints"].as_array().unwrap().len(), 1);
    assert_eq!(r["ranking"][0], "gpt2");
}

#[test]
fn pythia_style_names_order_by_step() {
    let dir = Dir::new();
    let series = dir.path().join("series");
    for (name, src) in [("step1000", "gpt_neox_parallel"), ("step300", "gpt_neox_sequential")] {
        let to = series.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixtures().join("models").join(src).join(f), to.join(f)).unwrap();
        }
    }
    let out = scan(&series, &fixtures().join("task.jsonl"), &["--json", "-", "--steps", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps: Vec<u64> = r["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [300, 1000]);
    assert_eq!(r["checkpoints"][0]["step_source"], "folder name");
}

#[test]
fn a_peft_adapter_can_start_the_fine_tune() {
    let adapter = fixtures().join("peft/gpt2");
    let out = scan(
        &fixtures().join("models/gpt2"),
        &fixtures().join("task.jsonl"),
        &["--json", "-", "--init-adapter", adapter.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["settings"]["lora"]["alpha"], 16.0);
    assert_eq!(r["settings"]["lora_scale"], 2.0);
    assert_eq!(r["checkpoints"][0]["trainable_params"], 2 * 8 * (64 + 192));
}

#[test]
fn seeds_give_confidence_intervals_and_every_run() {
    let out = scan(
        &fixtures().join("series"),
        &fixtures().join("task.jsonl"),
        &["--json", "-", "--seeds", "2", "--steps", "3", "--price-per-gpu-hour", "3"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    super::util::assert_valid_report(&r);
    assert_eq!(r["settings"]["seeds"], 2);
    assert_eq!(r["price_per_device_hour"], 3.0);
    for c in r["checkpoints"].as_array().unwrap() {
        assert_eq!(c["seeds"], 2);
        let runs = c["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert_ne!(runs[0]["curve"], runs[1]["curve"], "both seeds gave the same curve");
        // mean +- t(0.975, 1) sd / sqrt(2) of the two runs' final eval losses, computed here
        let finals: Vec<f64> = runs
            .iter()
            .map(|run| run["curve"].as_array().unwrap().iter().rev().find_map(|p| p["eval_loss"].as_f64()).unwrap())
            .collect();
        let mean = (finals[0] + finals[1]) / 2.0;
        let half = 12.706 * ((finals[0] - mean).powi(2) + (finals[1] - mean).powi(2)).sqrt() / 2f64.sqrt();
        assert!((c["final_eval_loss"].as_f64().unwrap() - mean).abs() < 1e-12);
        let [lo, hi] =
            [c["ci95"]["final_eval_loss"][0].as_f64().unwrap(), c["ci95"]["final_eval_loss"][1].as_f64().unwrap()];
        assert!(
            (lo - (mean - half)).abs() < 1e-9 && (hi - (mean + half)).abs() < 1e-9,
            "[{lo}, {hi}] vs {mean} +- {half}"
        );
        if let Some(h) = c["device_hours_to_target"].as_f64() {
            assert!((c["cost_to_target"].as_f64().unwrap() - 3.0 * h).abs() < 1e-12);
        }
        assert!(c["mean_eval_loss"].is_number() && c["loss_drop_per_device_hour"].is_number());
    }
}

#[test]
fn a_drop_target_is_per_checkpoint() {
    let out = scan(
        &fixtures().join("series"),
        &fixtures().join("task.jsonl"),
        &["--json", "-", "--target-drop", "0.5", "--lr", "1e-2"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    super::util::assert_valid_report(&r);
    assert_eq!(r["target"]["kind"], "drop");
    assert!(r["target_loss"].is_null());
    let drop = r["target"]["value"].as_f64().unwrap();
    for c in r["checkpoints"].as_array().unwrap() {
        let want = c["initial_eval_loss"].as_f64().unwrap() - drop;
        assert!((c["target_loss"].as_f64().unwrap() - want).abs() < 1e-12);
    }
}

/// An interrupted scan (two of four checkpoints measured) resumed from its report gives the
/// same curves and ranking as one uninterrupted scan, without re-measuring the first two.
#[test]
fn resume_completes_an_interrupted_scan() {
    let dir = Dir::new();
    let series = dir.path().join("series");
    let all: Vec<String> =
        ["checkpoint-30", "checkpoint-60", "checkpoint-90", "checkpoint-120"].map(String::from).to_vec();
    let copy = |name: &str| {
        let to = series.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["config.json", "model.safetensors", "trainer_state.json", "tokenizer.json"] {
            std::fs::copy(fixtures().join("series").join(name).join(f), to.join(f)).unwrap();
        }
    };
    let task = fixtures().join("task.jsonl");
    let report = dir.path().join("r.json");
    let json = |extra: &[&str]| {
        let out = scan(&series, &task, &[&["--json", report.to_str().unwrap()], extra].concat()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&report).unwrap()).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    all[..2].iter().for_each(|n| copy(n));
    let (partial, _) = json(&[]);
    all[2..].iter().for_each(|n| copy(n));
    let (resumed, stderr) = json(&["--resume", report.to_str().unwrap()]);
    assert_eq!(stderr.matches("reusing the measurement").count(), 2, "{stderr}");
    let (fresh, _) = json(&[]);

    let losses = |r: &serde_json::Value| {
        r["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["curve"].as_array().unwrap().iter().map(|p| p["eval_loss"].clone()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&resumed), losses(&fresh));
    assert_eq!(resumed["ranking"], fresh["ranking"]);
    for i in 0..2 {
        assert_eq!(
            resumed["checkpoints"][i]["median_step_s"], partial["checkpoints"][i]["median_step_s"],
            "checkpoint {i} was measured again"
        );
    }

    let (code, stderr) = {
        let out = scan(&series, &task, &["--resume", report.to_str().unwrap(), "--lr", "0.01"]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(2));
    assert!(stderr.contains("settings differ") && stderr.contains("train"), "{stderr}");
}

/// A resumed scan reuses a measurement only for the very same inputs: a checkpoint whose
/// tokenizer.json changed is fine-tuned again, and a task file changed under the same name
/// makes the settings differ.
#[test]
fn resume_notices_a_changed_tokenizer_or_task() {
    let dir = Dir::new();
    let series = dir.path().join("series");
    for name in ["checkpoint-30", "checkpoint-60"] {
        dir.copy_checkpoint(&fixtures().join("series").join(name), &format!("series/{name}"));
    }
    let task = dir.path().join("task.jsonl");
    std::fs::copy(fixtures().join("task.jsonl"), &task).unwrap();
    let report = dir.path().join("r.json");
    let run = |extra: &[&str]| {
        let out = scan(&series, &task, &[&["--json", report.to_str().unwrap()], extra].concat()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(run(&[]).0, Some(0));
    let resume = ["--resume", report.to_str().unwrap()];
    let (code, stderr) = run(&resume);
    assert_eq!((code, stderr.matches("reusing the measurement").count()), (Some(0), 2), "{stderr}");

    // the same vocabulary, other bytes: the tokenizer file is not the one measured
    let tok = series.join("checkpoint-60/tokenizer.json");
    let text = std::fs::read_to_string(&tok).unwrap();
    std::fs::write(&tok, format!("{text}\n")).unwrap();
    let (code, stderr) = run(&resume);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("reusing the measurement of checkpoint-30")
            && !stderr.contains("reusing the measurement of checkpoint-60"),
        "{stderr}"
    );

    std::fs::write(&task, format!("{}{{\"text\": \"one more document\"}}\n", std::fs::read_to_string(&task).unwrap()))
        .unwrap();
    let (code, stderr) = run(&resume);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("settings differ") && stderr.contains("input_fingerprints"), "{stderr}");
}

/// Racing on a committed series whose curves cross (tests/fixtures/series_crossing, on the
/// upper-cased task: checkpoint-800 starts above checkpoint-400 and ends below it). The race
/// names the full scan's winner for a stated fraction of the updates, the winner's curve is
/// the full scan's to the last bit (paused runs continue exactly), stopped checkpoints rank
/// last and say when and why, and the default target comes from the runs that finished.
/// With a given target, every finisher has the full scan's steps to target and order, and
/// its hours are its steps at the report's cost per step.
#[test]
fn race_on_crossing_curves_finds_the_full_scans_winner() {
    let run = |strategy: &str, extra: &[&str]| {
        // ranked for the probe itself (--budget 60): what the race decides on
        let flags = [
            &[
                "--json",
                "-",
                "--steps",
                "60",
                "--budget",
                "60",
                "--eval-every",
                "10",
                "--lr",
                "3e-3",
                "--eval-blocks",
                "8",
                "--batch-size",
                "8",
                "--strategy",
                strategy,
            ][..],
            extra,
        ]
        .concat();
        let out =
            scan(&fixtures().join("series_crossing"), &fixtures().join("task_upper.jsonl"), &flags).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        super::util::assert_valid_report(&r);
        r
    };
    let by_name = |r: &serde_json::Value, name: &str| {
        r["checkpoints"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
    };
    let evals = |c: &serde_json::Value| {
        c["curve"].as_array().unwrap().iter().filter_map(|p| p["eval_loss"].as_f64()).collect::<Vec<_>>()
    };
    let (full, race) = (run("full", &[]), run("race", &[]));
    let (early, late) = (evals(&by_name(&full, "checkpoint-400")), evals(&by_name(&full, "checkpoint-800")));
    assert!(late[0] > early[0] && late.last() < early.last(), "the curves cross: {early:?} {late:?}");
    assert_eq!(full["ranking"][0], "checkpoint-800");
    assert_eq!(race["ranking"][0], full["ranking"][0]);
    assert_eq!(race["race"]["rungs"], serde_json::json!([40, 60]));
    let (spent, budget) =
        (race["race"]["steps_trained"].as_u64().unwrap(), race["race"]["steps_full_budget"].as_u64().unwrap());
    assert_eq!(budget, 4 * 60);
    assert!(spent < budget, "the race saves nothing: {spent} of {budget} updates");
    eprintln!(
        "race on the crossing series: {spent} of {budget} updates ({:.0}% saved)",
        100.0 * (1.0 - spent as f64 / budget as f64)
    );
    let winner = race["ranking"][0].as_str().unwrap();
    let losses = |c: &serde_json::Value| {
        c["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["step"].clone(), p["train_loss"].clone(), p["eval_loss"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&by_name(&race, winner)), losses(&by_name(&full, winner)));
    let stopped: Vec<serde_json::Value> =
        race["checkpoints"].as_array().unwrap().iter().filter(|c| c["status"] == "stopped").cloned().collect();
    let finishers = race["checkpoints"].as_array().unwrap().len() - stopped.len();
    for c in &stopped {
        assert_eq!(c["stopped"]["at_step"], 40);
        assert_eq!(c["curve"].as_array().unwrap().last().unwrap()["step"], 40);
        assert!(
            c["stopped"]["reason"].as_str().unwrap().contains("at step 40")
                && c["stopped"]["reason"].as_str().unwrap().contains(winner),
            "{c}"
        );
        assert!(c["rank"].as_u64().unwrap() as usize > finishers);
    }
    let set_by: Vec<&str> = race["target"]["set_by"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(set_by.len(), finishers, "only runs that finished set the default target");
    assert!(set_by.iter().all(|n| by_name(&race, n)["status"] == "ok"));

    let (full, race) = (run("full", &["--target-loss", "3.45"]), run("race", &["--target-loss", "3.45"]));
    let finished: Vec<&serde_json::Value> =
        race["checkpoints"].as_array().unwrap().iter().filter(|c| c["status"] == "ok").collect();
    assert!(!finished.is_empty());
    let order = |r: &serde_json::Value| {
        r["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| finished.iter().any(|c| &c["name"] == *n))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(order(&race), order(&full));
    // one shape: every step costs the median step time of all its runs, stopped ones included
    let mut step_s: Vec<f64> =
        race["checkpoints"].as_array().unwrap().iter().map(|c| c["median_step_s"].as_f64().unwrap()).collect();
    step_s.sort_by(f64::total_cmp);
    let cost = (step_s[1] + step_s[2]) / 2.0;
    for c in finished {
        let f = by_name(&full, c["name"].as_str().unwrap());
        assert_eq!(c["steps_to_target"], f["steps_to_target"], "{}", c["name"]);
        match (c["steps_to_target"].as_f64(), c["device_hours_to_target"].as_f64()) {
            (Some(steps), Some(hours)) => {
                assert!((hours - steps * cost / 3600.0).abs() <= 1e-9 * hours.max(1e-12), "{c}")
            }
            (None, None) => {}
            _ => panic!("steps and hours to target disagree: {c}"),
        }
    }
}

/// Ctrl-C in the middle of a scan: exit 130, a valid report with status "interrupted" that
/// keeps every finished checkpoint, and `--resume` then gives the uninterrupted result.
#[test]
fn ctrl_c_keeps_finished_checkpoints_and_resume_completes_the_scan() {
    interrupt_and_resume(&[]);
}

/// The same with two workers (--devices cpu,cpu): both stop, and what either finished is kept.
#[test]
fn ctrl_c_stops_every_worker() {
    interrupt_and_resume(&["--devices", "cpu,cpu"]);
}

fn interrupt_and_resume(workers: &[&str]) {
    let dir = Dir::new();
    let (series, task) = (fixtures().join("series"), fixtures().join("task.jsonl"));
    let report = dir.path().join("r.json");
    let flags = [
        &[
            "--steps",
            "60",
            "--eval-every",
            "10",
            "--seq-len",
            "32",
            "--eval-blocks",
            "4",
            "--batch-size",
            "4",
            "--threads",
            "2",
            "--quiet",
        ][..],
        workers,
    ]
    .concat();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plasticity"))
        .arg("scan")
        .arg(&series)
        .arg("--task")
        .arg(&task)
        .args(&flags)
        .arg("--json")
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let finished = |r: &serde_json::Value| r["checkpoints"].as_array().map_or(0, |c| c.len());
    let started = std::time::Instant::now();
    loop {
        let partial =
            std::fs::read_to_string(&report).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        if partial.as_ref().is_some_and(|r| finished(r) >= 1) {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "no checkpoint finished in time");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let interrupted: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    super::util::assert_valid_report(&interrupted);
    assert_eq!(interrupted["status"], "interrupted");
    let kept = finished(&interrupted);
    assert!((1..4).contains(&kept), "{kept} checkpoints");
    assert!(interrupted["checkpoints"].as_array().unwrap().iter().all(|c| c["status"] == "ok"));

    let resume = |extra: &[&str]| {
        let out = scan(&series, &task, &[&flags[..], &["--json", report.to_str().unwrap()], extra].concat())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        (r, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (resumed, stderr) = resume(&["--resume", report.to_str().unwrap()]);
    assert_eq!(stderr.matches("reusing the measurement").count(), kept, "{stderr}");
    let (fresh, _) = resume(&[]);
    let losses = |r: &serde_json::Value| {
        r["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["curve"].as_array().unwrap().iter().map(|p| p["eval_loss"].clone()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(resumed["status"], "complete");
    assert_eq!(losses(&resumed), losses(&fresh));
    assert_eq!(resumed["ranking"], fresh["ranking"]);
}

/// Task distance: the gap between each snapshot's zero-shot task loss and its pre-training
/// loss (trainer_state.json's, or measured on --pretrain-sample), and its trend over steps.
#[test]
fn task_distance_from_trainer_state_and_from_a_pretraining_sample() {
    let (series, task, sample) =
        (fixtures().join("series"), fixtures().join("task.jsonl"), fixtures().join("task_prompt.jsonl"));
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = scan(&series, &task, &[&["--json", "-", "--device", "cpu"][..], extra].concat()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        super::util::assert_valid_report(&r);
        r
    };
    let check = |r: &serde_json::Value, pre: &str, source: &str| {
        let gaps: Vec<(f64, f64)> = r["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let want = c["initial_eval_loss"].as_f64().unwrap() - c[pre].as_f64().unwrap();
                assert!((c["task_gap"].as_f64().unwrap() - want).abs() < 1e-12, "{c}");
                (c["step"].as_f64().unwrap(), want)
            })
            .collect();
        let d = &r["task_distance"];
        assert_eq!(d["source"], source);
        let slope = d["gap_slope_per_1k_steps"].as_f64().unwrap();
        // least squares by hand
        let n = gaps.len() as f64;
        let (mx, my) = (gaps.iter().map(|g| g.0).sum::<f64>() / n, gaps.iter().map(|g| g.1).sum::<f64>() / n);
        let want = 1000.0 * gaps.iter().map(|g| (g.0 - mx) * (g.1 - my)).sum::<f64>()
            / gaps.iter().map(|g| (g.0 - mx).powi(2)).sum::<f64>();
        assert!((slope - want).abs() < 1e-9 * want.abs().max(1.0));
        // a verdict only when the slope's 95% interval (t with n - 2 = 2 degrees of freedom) excludes zero
        let sse: f64 = gaps.iter().map(|g| (g.1 - my - want / 1000.0 * (g.0 - mx)).powi(2)).sum();
        let half = 1000.0 * 4.303 * (sse / (n - 2.0) / gaps.iter().map(|g| (g.0 - mx).powi(2)).sum::<f64>()).sqrt();
        let ci = [d["slope_ci95"][0].as_f64().unwrap(), d["slope_ci95"][1].as_f64().unwrap()];
        assert!(
            (ci[0] - (want - half)).abs() < 1e-9 && (ci[1] - (want + half)).abs() < 1e-9,
            "{ci:?} vs {want} +- {half}"
        );
        let trend = if want - half > 0.0 {
            "widens"
        } else if want + half < 0.0 {
            "narrows"
        } else {
            "no clear trend"
        };
        assert_eq!((d["trend"].as_str().unwrap(), d["widening"].as_bool().unwrap()), (trend, trend == "widens"));
        assert!(d["summary"].as_str().unwrap().contains(trend), "{d}");
    };
    check(&run(&[]), "pretrain_loss", "trainer_state");
    let with_sample = run(&["--pretrain-sample", sample.to_str().unwrap()]);
    check(&with_sample, "pretrain_sample_loss", "pretrain_sample");
    // the sample loss is the eval loss of the model on the sample's first --eval-blocks blocks
    let first = &with_sample["checkpoints"][0];
    let model = super::util::load_with(
        std::path::Path::new(first["path"].as_str().unwrap()),
        &plasticity::lora::LoraSpec::default(),
        &plasticity::lora::AdapterInit::Seeded(0),
    );
    let docs = plasticity::data::read_task(&sample).unwrap();
    let tok = plasticity::data::TaskTokenizer::open(&series.join("checkpoint-30/tokenizer.json")).unwrap();
    let eos = tok.eos(model.eos_token_id).unwrap();
    let blocks =
        plasticity::data::sample_blocks(&plasticity::data::tokenize(&docs, &tok, eos).unwrap(), 32, 4, &sample)
            .unwrap();
    let want = plasticity::train::eval_loss(&model, &blocks, 4).unwrap();
    assert!((first["pretrain_sample_loss"].as_f64().unwrap() - want).abs() < 1e-9, "{first}");
}
