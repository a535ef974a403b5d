//! The export formats, from hand-built reports compared with committed snapshots in
//! tests/snapshots/ (regenerate with UPDATE_SNAPSHOTS=1 after checking the diff), and the
//! `report` and `select` commands on a real scan.

use plasticity::curve::CurvePoint;
use plasticity::report::{
    csv::Csv, junit::Junit, markdown::Markdown, BudgetInfo, CheckpointReport, DeviceInfo, DeviceKind, Exporter,
    ForecastReport, RaceInfo, Report, ScanStatus, SettleInfo, SettleRound, Status, StoppedInfo, TargetInfo, TargetKind,
    Tool,
};
use plasticity::single_index::Metrics;

use super::util::{fixtures, scan, Dir};

fn point(step: usize, eval: f64, elapsed_s: f64) -> CurvePoint {
    CurvePoint { step, train_loss: (step > 0).then_some(eval + 0.1), eval_loss: Some(eval), elapsed_s }
}

fn ok(name: &str, step: u64, rank: usize, initial: f64, fin: f64, steps: Option<f64>) -> CheckpointReport {
    CheckpointReport {
        name: name.into(),
        path: format!("runs/{name}"),
        step,
        step_source: "folder name".into(),
        status: Status::Ok,
        model_type: Some("gpt_neox".into()),
        params: Some(1000),
        trainable_params: Some(64),
        curve: vec![point(0, initial, 0.0), point(10, fin, 2.5)],
        initial_eval_loss: Some(initial),
        final_eval_loss: Some(fin),
        median_step_s: Some(0.25),
        tokens_per_s: Some(4096.0),
        steps_to_target: steps,
        device_hours_to_target: steps.map(|s| s * 0.25 / 3600.0),
        convergence_per_device_hour: steps.map(|s| 3600.0 / (s * 0.25)),
        rank: Some(rank),
        ..Default::default()
    }
}

fn report() -> Report {
    let failed = CheckpointReport {
        name: "step3000".into(),
        path: "runs/step3000".into(),
        step: 3000,
        step_source: "folder name".into(),
        status: Status::Failed,
        error: Some(
            "runs/step3000/model.safetensors: tensor gpt_neox.embed_in.weight is missing, \"quoted\" & <angled>".into(),
        ),
        ..Default::default()
    };
    Report {
        schema_version: plasticity::report::SCHEMA_VERSION,
        tool: Tool { name: "plasticity".into(), version: "0.1.0".into() },
        status: ScanStatus::Complete,
        settings: serde_json::json!({"dir": "runs"}),
        device: DeviceInfo { kind: DeviceKind::Cpu, name: "Test CPU".into(), threads: 2, workers: 1 },
        hours_unit: plasticity::report::HoursUnit::DeviceHours,
        target_loss: Some(3.5),
        target: Some(TargetInfo { kind: TargetKind::Loss, value: 3.5, set_by: Vec::new() }),
        price_per_device_hour: None,
        checkpoints: vec![
            ok("step1000", 1000, 1, 4.0, 3.0, Some(5.0)),
            extrapolated(),
            ok("step2500", 2500, 3, 3.7, 3.65, None),
            failed,
        ],
        ranking: vec!["step1000".into(), "step2000".into(), "step2500".into()],
        race: None,
        gates: Vec::new(),
        pretraining: None,
        task_distance: None,
        sweep: None,
        budget: None,
        measured_ranking: Vec::new(),
    }
}

/// Three seeds, an extrapolated time to target, tied with the best.
fn extrapolated() -> CheckpointReport {
    let mut c = ok("step2000", 2000, 2, 3.8, 3.6, Some(40.0));
    c.extrapolated = true;
    c.tied_with_best = true;
    c.seeds = 3;
    c.ci95.insert("steps_to_target".into(), [4.0, 76.0]);
    c.ci95.insert("device_hours_to_target".into(), [4.0 * 0.25 / 3600.0, 76.0 * 0.25 / 3600.0]);
    c
}

fn simulated() -> Report {
    let mut r = report();
    r.checkpoints.truncate(2);
    r.checkpoints[1] = ok("step2000", 2000, 2, 3.8, 3.6, None);
    r.ranking.truncate(2);
    for (c, mu) in r.checkpoints.iter_mut().zip([0.1, 0.9]) {
        c.single_index = Some(Metrics {
            mu,
            initial_loss: 0.5 * (1.0 - mu) * (1.0 - mu),
            escape_step: Some(20),
            steps_to_tiny_loss: None,
            tau: Some(1.9),
            predicted_escape_step: Some(18.0),
            m0: 0.1,
        });
    }
    r
}

/// Ranked for a budget of 100 updates from the 10-update probe: the forecast reverses it
/// (step2500, third after the probe, leads at the budget), and the leaders are not told apart
/// after one round of settling.
fn budgeted() -> Report {
    let mut r = report();
    let target = TargetInfo {
        kind: TargetKind::MedianFinal,
        value: 3.3,
        set_by: vec!["step1000".into(), "step2000".into(), "step2500".into()],
    };
    let settle = SettleInfo {
        rounds: vec![SettleRound { step: 20, contenders: vec!["step2500".into(), "step1000".into()] }],
        updates_trained: 20,
    };
    r.budget = Some(BudgetInfo {
        asked: "3 epochs".into(),
        probe_steps: 10,
        steps: 100,
        forecast: true,
        target: Some(target),
        settled: Some(false),
        more_updates_to_settle: Some(40),
        no_forecast: None,
        settle: Some(settle),
    });
    let at = |rank: usize, loss: f64, steps: Option<f64>, tied: bool| ForecastReport {
        budget_steps: 100,
        forecast: true,
        steps_forecast: steps.is_some_and(|s| s > 10.0),
        eval_loss: Some(loss),
        eval_loss_ci95: Some([loss - 0.1, loss + 0.1]),
        target_loss: Some(3.3),
        steps_to_target: steps,
        steps_to_target_ci95: steps.map(|s| [s * 0.8, s * 1.3]),
        device_hours_to_target: steps.map(|s| s * 0.25 / 3600.0),
        device_hours_to_target_ci95: steps.map(|s| [s * 0.8 * 0.25 / 3600.0, s * 1.3 * 0.25 / 3600.0]),
        rank: Some(rank),
        tied_with_best: tied,
        curve: vec![[10.0, loss + 0.3], [55.0, loss + 0.1], [100.0, loss]],
    };
    r.checkpoints[0].forecast = Some(at(2, 3.25, Some(60.0), true));
    r.checkpoints[1].forecast = Some(at(3, 3.4, None, false));
    r.checkpoints[2].forecast = Some(at(1, 3.2, Some(45.0), false));
    r.measured_ranking =
        std::mem::replace(&mut r.ranking, vec!["step2500".into(), "step1000".into(), "step2000".into()]);
    r
}

/// Compares with tests/snapshots/NAME, or writes it when UPDATE_SNAPSHOTS is set.
fn snapshot(name: &str, got: Vec<u8>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_SNAPSHOTS=1)", path.display()));
    assert_eq!(String::from_utf8(got).unwrap(), want, "{name} differs from its snapshot");
}

#[test]
fn hand_built_reports_match_the_schema() {
    for r in [report(), simulated(), budgeted()] {
        super::util::assert_valid_report(&serde_json::to_value(&r).unwrap());
    }
    let mut drifted = serde_json::to_value(report()).unwrap();
    drifted["checkpoints"][0]["undocumented"] = 1.into();
    let caught = std::panic::catch_unwind(|| super::util::assert_valid_report(&drifted));
    assert!(caught.is_err(), "the schema must refuse fields it does not document");
}

#[test]
fn markdown_snapshot() {
    snapshot("report.md", Markdown.render(&report()).unwrap());
    snapshot("simulated.md", Markdown.render(&simulated()).unwrap());
    snapshot("budget.md", Markdown.render(&budgeted()).unwrap());
}

#[test]
fn csv_snapshot() {
    snapshot("report.csv", Csv.render(&report()).unwrap());
    snapshot("simulated.csv", Csv.render(&simulated()).unwrap());
    snapshot("budget.csv", Csv.render(&budgeted()).unwrap());
}

#[test]
fn junit_snapshot() {
    let mut r = report();
    r.gates.push(plasticity::report::gates::last_slower(&r, 2.0));
    assert!(!r.gates[0].passed, "the most pre-trained snapshot (step3000) failed");
    snapshot("report.xml", Junit.render(&r).unwrap());
}

/// A race's report: stopped checkpoints keep their metrics and rank, are marked in the
/// table, skipped (not failed) in JUnit, and the spending is a footnote.
fn raced() -> Report {
    let mut r = report();
    r.checkpoints.truncate(3);
    r.checkpoints[2].status = Status::Stopped;
    r.checkpoints[2].stopped =
        Some(StoppedInfo { at_step: 10, rung: 1, reason: "rank 3 of 3 at step 10 (keeping the best 1)".into() });
    r.race = Some(RaceInfo { rungs: vec![40, 60], steps_trained: 100, steps_full_budget: 180 });
    r
}

#[test]
fn race_exports() {
    super::util::assert_valid_report(&serde_json::to_value(raced()).unwrap());
    let table = plasticity::report::table::render(&raced());
    assert!(
        table.contains("3 (stopped@10)") && table.contains("trained 100 of the full budget's 180 updates (56%)"),
        "{table}"
    );
    let junit = String::from_utf8(Junit.render(&raced()).unwrap()).unwrap();
    assert!(
        junit.contains("failures=\"0\"")
            && junit.contains("<skipped message=\"stopped by the race at step 10: rank 3 of 3"),
        "{junit}"
    );
}

/// A scan's Markdown equals `plasticity report` of its JSON; `select` prints the winner's path.
#[test]
fn report_and_select_reuse_a_saved_report() {
    let dir = Dir::new();
    let (json, md, csv, junit) =
        (dir.path().join("r.json"), dir.path().join("r.md"), dir.path().join("r.csv"), dir.path().join("r.xml"));
    let paths: Vec<&str> = [&json, &md, &csv, &junit].iter().map(|p| p.to_str().unwrap()).collect();
    let out = scan(
        &fixtures().join("series"),
        &fixtures().join("task.jsonl"),
        &["--json", paths[0], "--markdown", paths[1], "--csv", paths[2], "--junit", paths[3], "--steps", "2"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bin = || assert_cmd::Command::cargo_bin("plasticity").unwrap();
    let again = bin().args(["report", paths[0], "--markdown", "-"]).output().unwrap();
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout), std::fs::read_to_string(&md).unwrap());
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), 5, "{csv_text}");
    assert!(std::fs::read_to_string(&junit).unwrap().contains("tests=\"4\" failures=\"0\""));

    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let best = r["ranking"][0].as_str().unwrap();
    let selected = bin().args(["select", paths[0]]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&selected.stdout).trim(),
        fixtures().join("series").join(best).display().to_string()
    );
    let top2 = bin().args(["select", paths[0], "--top", "2"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&top2.stdout).lines().count(), 2);
    let bad = bin().args(["select", md.to_str().unwrap()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn only_one_report_may_use_stdout() {
    let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &["--json", "-", "--csv", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn step_summary_is_appended_on_github() {
    let dir = Dir::new();
    let summary = dir.write("summary.md", "earlier step\n");
    let run = |extra: &[&str]| {
        let mut cmd = scan(&fixtures().join("models/gpt2"), &fixtures().join("task.jsonl"), extra);
        cmd.env("GITHUB_STEP_SUMMARY", &summary).output().unwrap()
    };
    assert!(run(&["--steps", "1"]).status.success());
    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(text.starts_with("earlier step\n") && text.contains("## plasticity scan"), "{text}");
    assert!(run(&["--steps", "1", "--no-step-summary"]).status.success());
    assert_eq!(std::fs::read_to_string(&summary).unwrap(), text);
}

/// The plot draws one curve per snapshot in each panel (plus its legend line), names every
/// snapshot in both legends, and renders as PNG too.
#[test]
fn plot_draws_every_snapshot() {
    let dir = Dir::new();
    let (svg, png, json) = (dir.path().join("p.svg"), dir.path().join("p.png"), dir.path().join("r.json"));
    let out = scan(
        &fixtures().join("series"),
        &fixtures().join("task.jsonl"),
        &["--plot", svg.to_str().unwrap(), "--json", json.to_str().unwrap(), "--steps", "2"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches("stroke-width=\"3\"").count(), 4 * 2 * 2, "curves and legend lines");
    for name in ["checkpoint-30", "checkpoint-60", "checkpoint-90", "checkpoint-120"] {
        assert_eq!(text.matches(&format!("{name} (step")).count(), 2, "{name} in both legends");
    }
    let again = assert_cmd::Command::cargo_bin("plasticity")
        .unwrap()
        .args(["report", json.to_str().unwrap(), "--plot", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000);
    for bad in ["-", "plot.jpg"] {
        let out = scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &["--plot", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--plot {bad}");
    }
}

/// A reader that closes the pipe early (`plasticity report big.json | head -1`) ends the
/// output quietly: no panic, exit 0.
#[test]
fn closed_stdout_is_not_a_panic() {
    let dir = Dir::new();
    let mut r = report();
    let first = r.checkpoints[0].clone();
    r.checkpoints =
        (0..3000).map(|i| CheckpointReport { name: format!("step{i}"), step: i, ..first.clone() }).collect();
    r.ranking = r.checkpoints.iter().map(|c| c.name.clone()).collect();
    let path = dir.path().join("big.json");
    std::fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("plasticity"))
        .arg("report")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the table is written
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Numbers whose shortest decimal form has 17 digits, which a fast but inexact float parser
/// reads one unit in the last place off (serde_json without `float_roundtrip`).
#[test]
fn a_saved_report_reads_back_every_float_exactly() {
    let hard = [7.8450821165054565, -0.11802338630922371, 0.0031031879999999998, 0.020666721000000002];
    let mut r = report();
    r.checkpoints[0].curve = hard
        .iter()
        .enumerate()
        .map(|(i, &l)| CurvePoint { step: i, train_loss: Some(l), eval_loss: Some(l), elapsed_s: l.abs() })
        .collect();
    r.checkpoints[0].final_eval_loss = Some(hard[0]);
    let dir = Dir::new();
    let path = dir.path().join("r.json");
    std::fs::write(&path, plasticity::report::json::Json.render(&r).unwrap()).unwrap();
    let back = Report::read(&path).unwrap();
    assert_eq!(back.checkpoints[0].curve, r.checkpoints[0].curve);
    assert_eq!(back.checkpoints[0].final_eval_loss, Some(hard[0]));
}
