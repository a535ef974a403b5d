//! The paper's experiment (arXiv 2602.02855, "When pre-training hurts LoRA fine-tuning"): a simulated series where
//! more pre-training makes the rank-1 adapter slower, checked against the linearised theory.

use std::path::PathBuf;

use plasticity::single_index::simulate::{self, Amounts, SimulateSpec};
use plasticity::single_index::theory::Link;
use plasticity::single_index::{self, Config, Metrics, RunSettings, Variant};

use super::util::Dir;

fn spec(out: PathBuf, link: Link, amounts: Amounts, budget: Option<usize>) -> SimulateSpec {
    SimulateSpec {
        out,
        link,
        dim: 100,
        amounts,
        variant: Variant::Aligned,
        m0: Some(0.1),
        lr: 0.2,
        batch_size: 100,
        teacher_seed: 0,
        budget,
    }
}

/// Fine-tunes every snapshot of the series with the given seeds.
fn run_series(spec: &SimulateSpec, seed: u64) -> Vec<Metrics> {
    let dirs = simulate::write_series(spec).unwrap();
    let settings = RunSettings { seed, data_seed: seed, lr: None, batch_size: None, steps: None };
    dirs.iter()
        .map(|dir| {
            let value: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
            let cfg = Config::read(dir, &value).unwrap();
            single_index::run(dir, &cfg, &settings).unwrap().1
        })
        .collect()
}

fn reference() -> (Dir, SimulateSpec) {
    let dir = Dir::new();
    let steps = vec![1, 3, 5, 10, 15, 20, 30];
    let s = spec(dir.path().join("series"), Link::Linear, Amounts::Steps { steps, pretrain_lr: 0.1 }, None);
    (dir, s)
}

/// The paper's reference experiment: linear link, d = B = 100, lr = 0.2, m0 = 1/sqrt(d).
#[test]
fn more_pretraining_makes_the_adapter_slower() {
    let (_dir, spec) = reference();
    let runs = run_series(&spec, 0);
    let l0: Vec<f64> = runs.iter().map(|m| m.initial_loss).collect();
    let n_m: Vec<usize> = runs.iter().map(|m| m.escape_step.expect("every snapshot escapes")).collect();
    let n_l: Vec<usize> = runs.iter().map(|m| m.steps_to_tiny_loss.expect("every snapshot converges")).collect();
    assert!(l0.windows(2).all(|w| w[1] < w[0]), "initial loss must fall with P: {l0:?}");
    assert!(n_m.windows(2).all(|w| w[1] > w[0]), "escape step must rise with P: {n_m:?}");
    assert!(n_l.windows(2).all(|w| w[1] > w[0]), "steps to 1e-6 must rise with P: {n_l:?}");
    let ratio = n_l[6] as f64 / n_l[0] as f64;
    assert!(ratio > 100.0, "N_L(30) / N_L(1) = {ratio}");
    for m in &runs {
        let r = m.escape_step.unwrap() as f64 / m.predicted_escape_step.unwrap();
        assert!((0.9..=1.4).contains(&r), "mu = {}: measured / predicted escape = {r}", m.mu);
        assert!((m.m0 - 0.1).abs() < 1e-12);
    }
}

#[test]
fn same_seed_same_numbers() {
    let (_a, spec_a) = reference();
    let (_b, spec_b) = reference();
    let (x, y) = (run_series(&spec_a, 5), run_series(&spec_b, 5));
    assert_eq!(x, y);
    let (_c, spec_c) = reference();
    assert_ne!(x, run_series(&spec_c, 6), "the seed changes nothing");
}

/// He3 has information exponent 3: no signal without pre-training, a stall where A(mu) = 0
/// (mu near 0.32), and an optimal intermediate strength.
#[test]
fn he3_has_an_optimal_pretraining_strength() {
    let dir = Dir::new();
    let strengths = vec![0.1, 0.325, 0.7, 0.95];
    let runs =
        run_series(&spec(dir.path().join("he3"), Link::Hermite(3), Amounts::Strengths(strengths), Some(6000)), 0);
    let esc: Vec<Option<usize>> = runs.iter().map(|m| m.escape_step).collect();
    let (slow_low, stalled, fast, slow_high) = (esc[0].unwrap(), esc[1], esc[2].unwrap(), esc[3].unwrap());
    assert!(stalled.is_none(), "mu = 0.325 should stall within its budget: {esc:?}");
    assert!(fast < slow_low && fast < slow_high, "escape steps are not U-shaped: {esc:?}");
    assert!(slow_low > 5 * fast && slow_high > 2 * fast, "{esc:?}");
}

#[test]
fn linear_pretraining_from_zero_moves_but_relu_needs_strengths() {
    let dir = Dir::new();
    let err = simulate::write_series(&spec(
        dir.path().join("relu"),
        Link::Relu,
        Amounts::Steps { steps: vec![1, 2], pretrain_lr: 0.1 },
        None,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("--strengths"), "{err}");
    let series = dir.path().join("nonempty");
    std::fs::create_dir_all(series.join("something")).unwrap();
    let err = simulate::write_series(&spec(series, Link::Linear, Amounts::Strengths(vec![0.5]), None)).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

/// `plasticity demo` end to end: simulate, scan with no flags, rank, explain.
#[test]
fn demo_runs_end_to_end() {
    let dir = Dir::new();
    let series = dir.path().join("demo");
    let out = assert_cmd::Command::cargo_bin("plasticity")
        .unwrap()
        .arg("demo")
        .arg(&series)
        .args(["--json", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("needs") && stderr.contains("more steps") && stderr.contains("lower loss"),
        "no headline: {stderr}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    super::util::assert_valid_report(&r);
    assert_eq!(r["ranking"][0], "checkpoint-1");
    assert_eq!(r["ranking"].as_array().unwrap().last().unwrap(), "checkpoint-30");
    assert_eq!(r["target_loss"], 1e-6);
    for c in r["checkpoints"].as_array().unwrap() {
        for field in ["mu", "initial_loss", "escape_step", "steps_to_tiny_loss", "tau", "predicted_escape_step"] {
            assert!(c[field].is_number(), "{field} missing in {c}");
        }
        assert_eq!(c["step_source"], "trainer_state.json");
    }
    // The series stays on disk and scans again without flags.
    let again = assert_cmd::Command::cargo_bin("plasticity").unwrap().arg("scan").arg(&series).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn scan_without_task_of_a_language_model_is_refused() {
    let out = assert_cmd::Command::cargo_bin("plasticity")
        .unwrap()
        .arg("scan")
        .arg(super::util::model_dir("gpt2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--task"));
}

/// The gate compares the most pre-trained snapshot with the winner: 233x here.
#[test]
fn last_slower_gate_sets_the_exit_code() {
    let dir = Dir::new();
    let series = dir.path().join("s");
    let bin = || assert_cmd::Command::cargo_bin("plasticity").unwrap();
    assert!(bin()
        .args(["simulate", "--out", series.to_str().unwrap(), "--steps-list", "1,30", "--m0", "0.1"])
        .output()
        .unwrap()
        .status
        .success());
    let gate =
        |x: &str| bin().arg("scan").arg(&series).args(["--fail-if-last-slower", x, "--json", "-"]).output().unwrap();
    let failed = gate("10");
    assert_eq!(failed.status.code(), Some(1), "{}", String::from_utf8_lossy(&failed.stderr));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("gate failed"));
    let r: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    super::util::assert_valid_report(&r);
    assert_eq!(r["gates"][0]["passed"], false);
    assert!(r["gates"][0]["value"].as_f64().unwrap() > 100.0);
    assert_eq!(gate("1000").status.code(), Some(0));
}

/// A race over the paper's series finds the full scan's ranking: a run that has converged is
/// finished, never stopped; the most pre-trained snapshot, past its plateau but forecast to
/// converge long after the leader at the first rung, is stopped there; and the race trains
/// fewer steps than the full scan.
#[test]
fn race_over_the_paper_series_keeps_the_ranking() {
    let (_dir, spec) = reference();
    simulate::write_series(&spec).unwrap();
    let scan = |strategy: &str| {
        let out = assert_cmd::Command::cargo_bin("plasticity")
            .unwrap()
            .args(["scan", "--quiet", "--json", "-", "--strategy", strategy])
            .arg(&spec.out)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        super::util::assert_valid_report(&r);
        r
    };
    let (full, race) = (scan("full"), scan("race"));
    assert_eq!(race["ranking"], full["ranking"]);
    let trained = |r: &serde_json::Value| {
        r["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["curve"].as_array().unwrap().last().unwrap()["step"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(race["race"]["steps_trained"].as_u64().unwrap(), trained(&race));
    assert!(trained(&race) < trained(&full), "race {} vs full {}", trained(&race), trained(&full));
    eprintln!(
        "race on the paper's series: {} of {} updates ({:.0}% saved)",
        trained(&race),
        trained(&full),
        100.0 * (1.0 - trained(&race) as f64 / trained(&full) as f64)
    );
    let stopped: Vec<&str> = race["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "stopped")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(stopped, ["checkpoint-30"]);
}

/// SGD at lr 2.4 diverges on the single-index model after about 1,700 steps, the exact step
/// depending on the seeds: with a budget of 1,720 steps, seeds 1 and 2 of checkpoint-1 and
/// seed 1 of checkpoint-10 diverge while the others finish. Each checkpoint keeps the metrics
/// of the seeds that finished, says how many did, and is ranked with a warning; when every
/// seed diverges the checkpoint fails, as with one seed.
#[test]
fn a_failed_seed_does_not_erase_its_checkpoint() {
    let dir = Dir::new();
    let series = dir.path().join("s");
    let bin = || assert_cmd::Command::cargo_bin("plasticity").unwrap();
    assert!(bin()
        .args(["simulate", "--out", series.to_str().unwrap(), "--steps-list", "1,10", "--m0", "0.1"])
        .output()
        .unwrap()
        .status
        .success());
    let scan = |steps: &str| {
        bin()
            .arg("scan")
            .arg(&series)
            .args(["--quiet", "--lr", "2.4", "--seeds", "3", "--steps", steps, "--json", "-"])
            .output()
            .unwrap()
    };
    let out = scan("1720");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    super::util::assert_valid_report(&r);
    let failed_seeds = |c: &serde_json::Value| {
        c["seed_failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["seed"].as_u64().unwrap(), f["status"].as_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    let (c1, c10) = (&r["checkpoints"][0], &r["checkpoints"][1]);
    assert_eq!((c1["status"].as_str(), c1["seeds"].as_u64(), c1["seeds_ok"].as_u64()), (Some("ok"), Some(3), Some(1)));
    assert_eq!(failed_seeds(c1), [(1, "diverged".to_string()), (2, "diverged".to_string())]);
    assert_eq!((c10["seeds_ok"].as_u64(), failed_seeds(c10)), (Some(2), vec![(1, "diverged".to_string())]));
    // the metrics are those of the finished seeds: checkpoint-10's final loss is the mean of its two
    let finals: Vec<f64> = c10["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["curve"].as_array().unwrap().last().unwrap()["eval_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(finals.len(), 2);
    assert!((c10["final_eval_loss"].as_f64().unwrap() - (finals[0] + finals[1]) / 2.0).abs() <= 1e-9 * finals[0].abs());
    assert_eq!(r["ranking"].as_array().unwrap().len(), 2);
    assert!(stderr.contains("checkpoint-1: 1 of 3 seeds finished"), "{stderr}");

    let out = scan("1800");
    assert_eq!(out.status.code(), Some(3), "every seed of both diverges");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["checkpoints"][0]["status"], "diverged");
}
