//! The plain-words verdicts on hand-built reports: every sentence that says faster, slower or
//! best names the right snapshot and is backed by 95% intervals, or says that one seed cannot
//! tell; the CI gate and the headline never contradict each other.

use plasticity::curve::CurvePoint;
use plasticity::report::gates::last_slower;
use plasticity::report::headline::{best_line, headline};
use plasticity::report::{CheckpointReport, DeviceInfo, DeviceKind, Report, ScanStatus, Status, StoppedInfo, Tool};

/// A measured checkpoint: `steps` to the target (None: not reached) at 1 s per step, and with
/// several seeds the 95% interval of its hours as `half` either side.
fn ckpt(
    name: &str,
    step: u64,
    rank: usize,
    initial: f64,
    steps: Option<f64>,
    seeds: usize,
    half: f64,
) -> CheckpointReport {
    let hours = steps.map(|s| s / 3600.0);
    let mut c = CheckpointReport {
        name: name.into(),
        path: name.into(),
        step,
        step_source: "folder name".into(),
        status: Status::Ok,
        curve: vec![
            CurvePoint { step: 0, train_loss: None, eval_loss: Some(initial), elapsed_s: 0.0 },
            CurvePoint {
                step: 60,
                train_loss: Some(3.0),
                eval_loss: Some(if steps.is_some() { 2.9 } else { 3.5 }),
                elapsed_s: 1.0,
            },
        ],
        initial_eval_loss: Some(initial),
        steps_to_target: steps,
        device_hours_to_target: hours,
        target_loss: Some(3.0),
        rank: Some(rank),
        seeds,
        seeds_ok: seeds,
        ..Default::default()
    };
    if let (Some(h), true) = (hours, seeds > 1) {
        c.ci95.insert("device_hours_to_target".into(), [h - half / 3600.0, h + half / 3600.0]);
    }
    c
}

fn report(mut checkpoints: Vec<CheckpointReport>) -> Report {
    let mut ranked: Vec<&CheckpointReport> = checkpoints.iter().filter(|c| c.rank.is_some()).collect();
    ranked.sort_by_key(|c| c.rank);
    let ranking = ranked.iter().map(|c| c.name.clone()).collect();
    checkpoints.sort_by_key(|c| c.step);
    Report {
        schema_version: plasticity::report::SCHEMA_VERSION,
        tool: Tool { name: "plasticity".into(), version: "0".into() },
        status: ScanStatus::Complete,
        settings: serde_json::json!({}),
        device: DeviceInfo { kind: DeviceKind::Cpu, name: "cpu".into(), threads: 1, workers: 1 },
        hours_unit: plasticity::report::HoursUnit::DeviceHours,
        target_loss: Some(3.0),
        target: None,
        price_per_device_hour: None,
        checkpoints,
        pretraining: None,
        gates: Vec::new(),
        ranking,
        race: None,
        task_distance: None,
        sweep: None,
        budget: None,
        measured_ranking: Vec::new(),
    }
}

#[test]
fn the_lower_start_belongs_to_the_snapshot_it_is_said_of() {
    // the most pre-trained snapshot starts lower (6.0 against 7.2) and never gets there
    let r = report(vec![ckpt("step100", 100, 1, 7.2, Some(20.0), 1, 0.0), ckpt("step800", 800, 2, 6.0, None, 1, 0.0)]);
    let h = headline(&r);
    assert!(h.starts_with("The most pre-trained snapshot (step800) starts with a 1.20x lower loss but does not reach the target within the budget"), "{h}");
    assert!(h.contains("the best one (step100) needs 20 steps") && !h.contains("although"), "{h}");
    // when it does get there, the lower start is still its own
    let r = report(vec![
        ckpt("step100", 100, 1, 7.2, Some(20.0), 1, 0.0),
        ckpt("step800", 800, 2, 6.0, Some(40.0), 1, 0.0),
    ]);
    let h = headline(&r);
    assert!(h.starts_with("The most pre-trained snapshot (step800) needs 2.0x more steps to reach the target loss than the best one (step100), although it starts with a 1.20x lower loss."), "{h}");
}

#[test]
fn a_snapshot_a_race_stopped_is_said_to_be_stopped() {
    let mut last = ckpt("step800", 800, 2, 6.0, None, 1, 0.0);
    last.status = Status::Stopped;
    last.stopped = Some(StoppedInfo { at_step: 40, rung: 1, reason: "its forecast ...".into() });
    let r = report(vec![ckpt("step100", 100, 1, 7.2, Some(20.0), 1, 0.0), last]);
    let h = headline(&r);
    assert!(
        h.contains("(step800) was stopped by the race at rung 1 (step 40)") && !h.contains("within the budget"),
        "{h}"
    );
    let gate = last_slower(&r, 2.0);
    assert!(!gate.passed && gate.message.contains("stopped by the race"), "{}", gate.message);
}

#[test]
fn a_snapshot_at_the_target_before_fine_tuning_is_named_and_not_called_fastest() {
    let mut zero_shot = ckpt("step800", 800, 1, 2.5, Some(0.0), 1, 0.0);
    zero_shot.at_target_before_training = true;
    let r = report(vec![
        ckpt("step100", 100, 2, 7.2, Some(20.0), 1, 0.0),
        ckpt("step200", 200, 3, 7.0, Some(30.0), 1, 0.0),
        zero_shot,
    ]);
    let h = headline(&r);
    assert!(
        h.starts_with("step800 is at the target without fine-tuning; the ranking of the others measures adaptation."),
        "{h}"
    );
    assert!(h.contains("The most pre-trained snapshot (step800)") && !h.contains("fastest to adapt"), "{h}");
    assert_eq!(best_line(&r).unwrap(), "best checkpoint to fine-tune: step800 (already at the target before fine-tuning; of the others, step100 ranks first)");
    assert!(last_slower(&r, 1.5).passed);
}

#[test]
fn one_seed_cannot_tell_and_several_seeds_are_tested() {
    let one = report(vec![
        ckpt("step100", 100, 1, 7.2, Some(20.0), 1, 0.0),
        ckpt("step800", 800, 2, 7.0, Some(40.0), 1, 0.0),
    ]);
    assert!(headline(&one).contains("With one seed per snapshot the scan cannot tell"), "{}", headline(&one));
    assert!(best_line(&one).unwrap().contains("ranked first on one seed"));
    let apart = report(vec![
        ckpt("step100", 100, 1, 7.2, Some(20.0), 3, 2.0),
        ckpt("step800", 800, 2, 7.0, Some(40.0), 3, 2.0),
    ]);
    assert!(
        headline(&apart).contains("The best one is significantly faster (95% intervals do not overlap)"),
        "{}",
        headline(&apart)
    );
    assert!(best_line(&apart).unwrap().contains("significantly faster than the runner-up, step800"));
    let overlapping = report(vec![
        ckpt("step100", 100, 1, 7.2, Some(20.0), 3, 15.0),
        ckpt("step800", 800, 2, 7.0, Some(40.0), 3, 15.0),
    ]);
    assert!(headline(&overlapping).contains("not significant at 95%"), "{}", headline(&overlapping));
    assert!(best_line(&overlapping).unwrap().contains("tied with step800"));
}

/// `--fail-if-last-slower X` compares mean hours, and with several seeds fails only when the
/// low end of the most pre-trained snapshot's interval exceeds X times the high end of the
/// best one's. Over a grid of intervals and limits: the gate follows that rule (computed here
/// independently), and a failed gate never meets a headline saying "not significant".
#[test]
fn the_gate_follows_its_rule_and_never_contradicts_the_headline() {
    let mut cases = 0;
    for seeds in [1, 3] {
        for last_steps in [20.0, 25.0, 35.0, 50.0, 90.0] {
            for half in [0.5, 3.0, 8.0, 20.0] {
                for x in [1.0, 1.5, 2.0, 3.0] {
                    let r = report(vec![
                        ckpt("step100", 100, 1, 7.2, Some(20.0), seeds, half),
                        ckpt("step800", 800, 2, 7.0, Some(last_steps), seeds, half),
                    ]);
                    let gate = last_slower(&r, x);
                    let ratio = last_steps / 20.0;
                    let beyond =
                        if seeds == 1 { ratio > x } else { ratio > x && (last_steps - half) > x * (20.0 + half) };
                    assert_eq!(
                        gate.passed, !beyond,
                        "seeds {seeds}, last {last_steps} +- {half}, X {x}: {}",
                        gate.message
                    );
                    assert!((gate.value.unwrap() - ratio).abs() < 1e-12);
                    let h = headline(&r);
                    assert!(
                        gate.passed || !h.contains("not significant"),
                        "the gate failed but the headline says: {h}"
                    );
                    if seeds == 1 && !gate.passed {
                        assert!(
                            gate.message.contains("one seed") && h.contains("cannot tell"),
                            "{} / {h}",
                            gate.message
                        );
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 160);
    // a most pre-trained snapshot that never reaches the target fails the gate
    let r = report(vec![ckpt("step100", 100, 1, 7.2, Some(20.0), 1, 0.0), ckpt("step800", 800, 2, 7.0, None, 1, 0.0)]);
    assert!(!last_slower(&r, 100.0).passed);
}
