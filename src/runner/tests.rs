//! The runner on the scripted engine: full scans, races, settling, resume, workers, sweeps and
//! merges, each in milliseconds, on curves whose ranking is known in advance.

use std::path::Path;

use clap::Parser;

use super::Scan;
use crate::cli::{Cli, Command};
use crate::discover::CheckpointRef;
use crate::engine::scripted::{updates_of, Script, Scripted};
use crate::engine::Schedule;
use crate::options::ScanOptions;
use crate::report::{Report, Reports, ScanStatus, SeedStatus, Status};

/// Converges fast to 1.0; the seed shifts it a little.
fn fast(step: usize, seed: u64, _rank: usize, _lr: f64) -> f64 {
    1.0 + 3.0 * (-(step as f64) / 20.0).exp() + seed as f64 * 1e-3
}

/// Converges slowly to 1.0.
fn slow(step: usize, seed: u64, _rank: usize, _lr: f64) -> f64 {
    1.0 + 3.0 * (-(step as f64) / 60.0).exp() + seed as f64 * 1e-3
}

/// Settles far above the others: it never reaches their target.
fn hopeless(step: usize, seed: u64, _rank: usize, _lr: f64) -> f64 {
    5.0 + 1.0 * (-(step as f64) / 20.0).exp() + seed as f64 * 1e-3
}

/// Deterministic noise in [-1, 1] from (step, seed).
fn noise(step: usize, seed: u64) -> f64 {
    let h = (step as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((h >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// Two snapshots a probe cannot tell apart: the same curve up to a little noise.
fn twin_a(step: usize, seed: u64, _rank: usize, _lr: f64) -> f64 {
    1.0 + 3.0 * (-(step as f64) / 40.0).exp() + 0.02 * noise(step, seed)
}

fn twin_b(step: usize, seed: u64, _rank: usize, _lr: f64) -> f64 {
    1.0 + 3.0 * (-(step as f64) / 40.0).exp() + 0.02 * noise(step, seed + 7)
}

/// A higher rank and a higher rate both speed it up.
fn by_rank_and_lr(step: usize, _seed: u64, rank: usize, lr: f64) -> f64 {
    1.0 + 3.0 * (-(step as f64) * rank as f64 * lr / 0.2).exp()
}

/// Checkpoint folders named `names` (with a config and a small weight file, so fingerprints
/// exist) in a temporary series folder.
fn series(names: &[&str]) -> (tempfile::TempDir, Vec<CheckpointRef>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let refs = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).expect("checkpoint dir");
            std::fs::write(path.join("config.json"), r#"{"model_type": "scripted"}"#).expect("config");
            std::fs::write(path.join("model.safetensors"), name.as_bytes()).expect("weights");
            CheckpointRef { name: name.to_string(), path, step: (i as u64 + 1) * 100, step_source: "folder name" }
        })
        .collect();
    (dir, refs)
}

/// `plasticity scan DIR FLAGS...` resolved.
fn options(dir: &Path, flags: &[&str]) -> ScanOptions {
    let dir = dir.to_string_lossy();
    let args = [&["plasticity", "scan", &dir, "--quiet", "--no-step-summary", "--threads", "1"][..], flags].concat();
    let Command::Scan(args) = Cli::try_parse_from(args).expect("flags").command else { panic!("not a scan") };
    ScanOptions::from_args(args).expect("options")
}

fn scripted(scripts: &[(&str, Script)], steps: usize) -> Scripted {
    Scripted::new(scripts, Schedule { steps, eval_every: 10 })
}

fn scan(opts: &ScanOptions, engine: Scripted, checkpoints: &[CheckpointRef]) -> Report {
    Scan::with_engine(opts, Box::new(engine)).run(checkpoints, &Reports::create(&[]).expect("no files")).expect("scan")
}

fn curves(report: &Report) -> Vec<(String, Vec<Option<f64>>)> {
    report.checkpoints.iter().map(|c| (c.name.clone(), c.curve.iter().map(|p| p.eval_loss).collect())).collect()
}

fn three() -> [(&'static str, Script); 3] {
    [("a", Script::new(slow, 1.0)), ("b", Script::new(fast, 1.0)), ("c", Script::new(hopeless, 1.0))]
}

#[test]
fn a_full_scan_ranks_the_scripted_curves_and_trains_each_seed_once() {
    let (dir, refs) = series(&["a", "b", "c"]);
    let opts = options(dir.path(), &["--steps", "100", "--seeds", "2", "--budget", "100"]);
    let engine = scripted(&three(), 100);
    let report = Scan::with_engine(&opts, Box::new(engine)).run(&refs, &Reports::create(&[]).unwrap()).unwrap();
    assert_eq!(report.status, ScanStatus::Complete);
    assert_eq!(report.ranking.first().map(String::as_str), Some("b"), "the fast curve wins");
    for c in &report.checkpoints {
        assert_eq!(c.runs.len(), 2, "{}: one run per seed", c.name);
        assert_eq!(c.curve.last().map(|p| p.step), Some(100));
    }
}

#[test]
fn a_broken_snapshot_fails_alone_and_a_diverged_seed_is_recorded() {
    let (dir, refs) = series(&["a", "b", "c"]);
    let opts = options(dir.path(), &["--steps", "50", "--seeds", "2", "--budget", "50"]);
    let broken = Script { broken: Some("weights are truncated"), ..Script::new(slow, 1.0) };
    let diverging = Script { diverge: Some((1, 30)), ..Script::new(fast, 1.0) };
    let report = scan(&opts, scripted(&[("a", broken), ("b", diverging), ("c", Script::new(slow, 1.0))], 50), &refs);
    let a = &report.checkpoints[0];
    assert_eq!(a.status, Status::Failed);
    assert!(a.error.as_deref().is_some_and(|e| e.contains("weights are truncated")), "{:?}", a.error);
    let b = &report.checkpoints[1];
    assert_eq!((b.status, b.seeds_ok), (Status::Ok, 1));
    assert_eq!(b.seed_failures.len(), 1);
    assert_eq!((b.seed_failures[0].seed, b.seed_failures[0].status), (1, SeedStatus::Diverged));
    assert_eq!(report.checkpoints[2].status, Status::Ok);
}

#[test]
fn a_seed_that_hits_a_bug_fails_alone_with_the_panic_message() {
    let (dir, refs) = series(&["a", "b"]);
    let opts = options(dir.path(), &["--steps", "50", "--seeds", "2", "--budget", "50"]);
    let buggy = Script { panic: Some((0, 10)), ..Script::new(fast, 1.0) };
    let report = scan(&opts, scripted(&[("a", buggy), ("b", Script::new(slow, 1.0))], 50), &refs);
    let a = &report.checkpoints[0];
    assert_eq!((a.status, a.seeds_ok), (Status::Ok, 1), "the other seed scores it");
    let failure = &a.seed_failures[0];
    assert_eq!((failure.seed, failure.status), (0, SeedStatus::Failed));
    assert_eq!(failure.error, "internal error (a panic, please report it): scripted bug at step 10");
}

#[test]
fn a_race_stops_the_hopeless_snapshot_and_continues_the_others_from_their_pauses() {
    let (dir, refs) = series(&["a", "b", "c"]);
    let full = scan(&options(dir.path(), &["--steps", "240", "--budget", "240"]), scripted(&three(), 240), &refs);
    let opts = options(dir.path(), &["--steps", "240", "--budget", "240", "--strategy", "race"]);
    let engine = scripted(&three(), 240);
    let mut race = Scan::with_engine(&opts, Box::new(engine));
    let report = race.run(&refs, &Reports::create(&[]).unwrap()).unwrap();
    let c = &report.checkpoints[2];
    assert_eq!(c.status, Status::Stopped, "the hopeless snapshot is stopped");
    let info = report.race.as_ref().expect("race info");
    assert!(info.steps_trained < info.steps_full_budget, "{info:?}");
    assert_eq!(report.ranking.first(), full.ranking.first(), "the race names the full scan's winner");
    let (raced, whole) = (curves(&report), curves(&full));
    let survivors: Vec<&str> =
        report.checkpoints.iter().filter(|c| c.status == Status::Ok).map(|c| c.name.as_str()).collect();
    assert!(survivors.contains(&"b"), "{survivors:?}");
    for name in survivors {
        let of = |v: &[(String, Vec<Option<f64>>)]| v.iter().find(|c| c.0 == name).cloned();
        assert_eq!(of(&raced), of(&whole), "{name}: a survivor's curve is the full scan's");
    }
}

#[test]
fn a_paused_run_continues_where_it_stopped() {
    let (dir, refs) = series(&["a", "b", "c"]);
    let opts = options(dir.path(), &["--steps", "240", "--budget", "240", "--strategy", "race"]);
    let engine = scripted(&three(), 240);
    let log = engine.calls.clone();
    let report = scan(&opts, engine, &refs);
    let calls = log.lock().unwrap().clone();
    let b: Vec<_> = calls.iter().filter(|c| c.0 == "b").collect();
    assert!(b.len() > 1, "the leader ran rung by rung: {b:?}");
    for pair in b.windows(2) {
        assert_eq!(pair[1].2, Some(pair[0].3), "each rung starts where the last one paused: {b:?}");
    }
    assert_eq!(updates_of(&log, "b"), 240, "no update is trained twice");
    assert!(report.checkpoints[1].curve.windows(2).all(|w| w[0].step < w[1].step));
}

#[test]
fn resume_reuses_finished_snapshots_and_measures_only_the_rest() {
    let (dir, refs) = series(&["a", "b", "c"]);
    let opts = options(dir.path(), &["--steps", "60", "--budget", "60"]);
    let first = scan(&opts, scripted(&three(), 60), &refs[..2]);
    let engine = scripted(&three(), 60);
    let log = engine.calls.clone();
    let mut again = Scan::with_engine(&opts, Box::new(engine));
    again.resume_from(first.clone(), Path::new("report.json")).expect("same settings");
    let report = again.run(&refs, &Reports::create(&[]).unwrap()).unwrap();
    assert_eq!((updates_of(&log, "a"), updates_of(&log, "b"), updates_of(&log, "c")), (0, 0, 60));
    let full = scan(&opts, scripted(&three(), 60), &refs);
    assert_eq!(curves(&report), curves(&full), "a resumed scan equals a fresh one");
    assert_eq!(report.ranking, full.ranking);
}

#[test]
fn resume_refuses_a_report_made_with_other_settings() {
    let (dir, refs) = series(&["a", "b"]);
    let first = scan(&options(dir.path(), &["--steps", "60"]), scripted(&three(), 60), &refs);
    let opts = options(dir.path(), &["--steps", "60", "--lr", "3e-3"]);
    let mut again = Scan::with_engine(&opts, Box::new(scripted(&three(), 60)));
    let err = again.resume_from(first, Path::new("report.json")).expect_err("settings differ");
    assert!(err.to_string().contains("settings differ from this scan: train"), "{err}");
}

#[test]
fn workers_on_several_devices_give_the_sequential_results() {
    let (dir, refs) = series(&["a", "b", "c"]);
    let one = scan(&options(dir.path(), &["--steps", "60", "--seeds", "2"]), scripted(&three(), 60), &refs);
    let opts = options(dir.path(), &["--steps", "60", "--seeds", "2", "--devices", "cpu,cpu"]);
    let two = scan(&opts, scripted(&three(), 60), &refs);
    assert_eq!(curves(&one), curves(&two));
    assert_eq!(one.ranking, two.ranking);
    assert_eq!(two.device.workers, 2);
}

#[test]
fn a_sweep_runs_every_variant_with_its_own_settings() {
    let (dir, refs) = series(&["a", "b"]);
    let opts = options(dir.path(), &["--steps", "60", "--ranks", "4,8", "--lrs", "1e-3,3e-3"]);
    let sweep = opts.sweep.clone().expect("a sweep");
    let scripts = [("a", Script::new(by_rank_and_lr, 1.0)), ("b", Script::new(slow, 1.0))];
    let engine_for = |o: &ScanOptions| {
        let mut e = scripted(&scripts, o.train.steps);
        (e.rank, e.lr) = (o.lora.rank, o.train.optimizer.lr);
        e
    };
    let reports = Reports::create(&[]).unwrap();
    let report = super::sweep::run_with(&opts, &sweep, &refs, &reports, None, &|o| Ok(Box::new(engine_for(o))), None)
        .expect("sweep");
    let s = report.sweep.as_ref().expect("sweep section");
    assert_eq!(s.variants.len(), 4);
    let final_loss = |rank: usize, lr: f64| {
        let v = s.variants.iter().find(|v| (v.rank, v.lr) == (rank, lr)).expect("variant");
        v.checkpoints.iter().find(|p| p.name == "a").and_then(|p| p.final_eval_loss).expect("final loss")
    };
    assert!(final_loss(8, 3e-3) < final_loss(4, 1e-3), "each variant trained with its own rank and rate");
    assert_eq!(report.status, ScanStatus::Complete);
}

#[test]
fn merging_the_parts_of_a_partitioned_scan_gives_the_full_ranking() {
    let (dir, refs) = series(&["a", "b", "c", "d"]);
    let four = [three().as_slice(), &[("d", Script::new(fast, 2.0))]].concat();
    let full = scan(&options(dir.path(), &["--steps", "60", "--budget", "60"]), scripted(&four, 60), &refs);
    let parts: Vec<(std::path::PathBuf, Report)> = (1..=2)
        .map(|k| {
            let opts = options(dir.path(), &["--steps", "60", "--budget", "60", "--partition", &format!("{k}/2")]);
            let part = opts.partition.expect("partition").select(refs.clone());
            (format!("part{k}.json").into(), scan(&opts, scripted(&four, 60), &part))
        })
        .collect();
    let (merged, warnings) = super::merge(parts).expect("merge");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(merged.ranking, full.ranking);
    assert_eq!(merged.target_loss, full.target_loss);
    assert_eq!(curves(&merged), curves(&full));
}

#[test]
fn settling_continues_the_tied_leaders_from_their_pauses_and_keeps_the_probe() {
    let (dir, refs) = series(&["a", "b", "c"]);
    let scripts = [("a", Script::new(twin_a, 1.0)), ("b", Script::new(twin_b, 1.0)), ("c", Script::new(hopeless, 1.0))];
    let flags = ["--steps", "60", "--seeds", "2", "--budget", "480"];
    let probe = scan(&options(dir.path(), &flags), scripted(&scripts, 60), &refs);
    assert_eq!(probe.budget.as_ref().and_then(|b| b.settled), Some(false), "the probe leaves the twins tied");
    let engine = scripted(&scripts, 60);
    let log = engine.calls.clone();
    let settled = scan(&options(dir.path(), &[&flags[..], &["--until-settled"]].concat()), engine, &refs);
    let settle = settled.budget.as_ref().and_then(|b| b.settle.clone()).expect("settle info");
    assert!(!settle.rounds.is_empty() && settle.updates_trained > 0, "{settle:?}");
    let calls = log.lock().unwrap().clone();
    for name in ["a", "b"] {
        let resumed: Vec<_> = calls.iter().filter(|c| c.0 == name && c.2.is_some()).collect();
        assert!(!resumed.is_empty(), "{name} continued: {calls:?}");
        assert!(resumed.iter().all(|c| c.2.is_some_and(|from| from >= 60 && from < c.3)), "{resumed:?}");
    }
    assert_eq!(updates_of(&log, "c"), 2 * 60, "the hopeless snapshot keeps its probe");
    assert_eq!(curves(&settled), curves(&probe), "the probe's curves stay the probe's");
}
