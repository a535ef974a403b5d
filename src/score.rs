//! Turns loss curves into a ranking. A pure function of the measured runs: no I/O, no clocks.
//!
//! Definitions (README.md, "How scores are computed", repeats them):
//! - target eval loss: `--target-loss`, else the median over successful checkpoints of their
//!   final eval loss;
//! - steps to target: the first eval point at or below the target, linearly interpolated
//!   with the eval point before it; "not reached" when no eval point gets there;
//! - device-hours to target = steps to target x seconds per step / 3600, where seconds per
//!   step is the median step time of all checkpoints of the same architecture and size (so
//!   timing noise between identical models cannot reorder a series);
//! - convergence speed = 1 / device-hours to target;
//! - rank: by device-hours to target (not reached last), ties by final eval loss.

use std::collections::BTreeMap;

use crate::train::{median, CurvePoint};

/// What the scorer needs of one checkpoint's run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub curve: Vec<CurvePoint>,
    pub median_step_s: f64,
    /// Checkpoints with the same key share one per-step cost (architecture and size).
    pub shape_key: String,
}

/// The scorer's verdict for one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub steps_to_target: Option<f64>,
    pub device_hours_to_target: Option<f64>,
    pub convergence_per_device_hour: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub rank: usize,
}

/// The target eval loss: given, or the median of the final eval losses.
pub fn target_loss(runs: &[Option<&RunSummary>], given: Option<f64>) -> Option<f64> {
    if given.is_some() {
        return given;
    }
    let finals: Vec<f64> = runs.iter().flatten().filter_map(|r| final_eval_loss(&r.curve)).collect();
    (!finals.is_empty()).then(|| median(&finals))
}

pub fn final_eval_loss(curve: &[CurvePoint]) -> Option<f64> {
    curve.iter().rev().find_map(|p| p.eval_loss)
}

/// Steps until the eval loss first reaches `target`, interpolated between eval points.
pub fn steps_to_target(curve: &[CurvePoint], target: f64) -> Option<f64> {
    let evals: Vec<(f64, f64)> = curve.iter().filter_map(|p| Some((p.step as f64, p.eval_loss?))).collect();
    let hit = evals.iter().position(|&(_, loss)| loss <= target)?;
    if hit == 0 {
        return Some(evals[0].0);
    }
    let ((s0, l0), (s1, l1)) = (evals[hit - 1], evals[hit]);
    Some(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))
}

/// Scores every run (None = failed checkpoint) and ranks them; failed ones get no rank (0).
pub fn rank(runs: &[Option<&RunSummary>], target: f64) -> Vec<Score> {
    let cost = step_cost_by_shape(runs);
    let mut scores: Vec<Score> = runs.iter().map(|r| r.map_or_else(failed, |r| score(r, target, cost[&r.shape_key]))).collect();
    let mut order: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].is_some()).collect();
    order.sort_by(|&a, &b| {
        let key = |s: &Score| (s.device_hours_to_target.unwrap_or(f64::INFINITY), s.final_eval_loss.unwrap_or(f64::INFINITY));
        let (ka, kb) = (key(&scores[a]), key(&scores[b]));
        ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(&b))
    });
    for (place, &i) in order.iter().enumerate() {
        scores[i].rank = place + 1;
    }
    scores
}

fn failed() -> Score {
    Score { steps_to_target: None, device_hours_to_target: None, convergence_per_device_hour: None, final_eval_loss: None, rank: 0 }
}

fn score(run: &RunSummary, target: f64, step_s: f64) -> Score {
    let steps = steps_to_target(&run.curve, target);
    let hours = steps.map(|s| s * step_s / 3600.0);
    Score {
        steps_to_target: steps,
        device_hours_to_target: hours,
        convergence_per_device_hour: hours.map(|h| if h > 0.0 { 1.0 / h } else { f64::INFINITY }),
        final_eval_loss: final_eval_loss(&run.curve),
        rank: 0,
    }
}

/// The median step time of each group of identically shaped checkpoints.
fn step_cost_by_shape(runs: &[Option<&RunSummary>]) -> BTreeMap<String, f64> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs.iter().flatten() {
        groups.entry(r.shape_key.clone()).or_default().push(r.median_step_s);
    }
    groups.into_iter().map(|(k, v)| (k, median(&v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(evals: &[(usize, f64)]) -> Vec<CurvePoint> {
        evals.iter().map(|&(step, l)| CurvePoint { step, train_loss: None, eval_loss: Some(l), elapsed_s: 0.0 }).collect()
    }

    fn run(evals: &[(usize, f64)], step_s: f64) -> RunSummary {
        RunSummary { curve: curve(evals), median_step_s: step_s, shape_key: "m".into() }
    }

    #[test]
    fn steps_to_target_interpolates_between_eval_points() {
        let c = curve(&[(0, 4.0), (10, 3.0), (20, 2.0)]);
        assert_eq!(steps_to_target(&c, 2.5), Some(15.0));
        assert_eq!(steps_to_target(&c, 4.5), Some(0.0));
        assert_eq!(steps_to_target(&c, 1.0), None);
    }

    #[test]
    fn ranking_orders_by_time_then_final_loss_and_skips_failures() {
        let a = run(&[(0, 4.0), (10, 2.0)], 1.0); // reaches 3.0 at step 5
        let b = run(&[(0, 4.0), (10, 3.5), (20, 2.5)], 1.2); // at step 15
        let c = run(&[(0, 4.0), (10, 3.9)], 1.0); // never
        let runs = [Some(&b), None, Some(&c), Some(&a)];
        let s = rank(&runs, 3.0);
        assert_eq!(s.iter().map(|s| s.rank).collect::<Vec<_>>(), vec![2, 0, 3, 1]);
        // All three share one shape, so each step costs the median step time (1.0 s), not b's 1.2 s.
        assert!((s[0].device_hours_to_target.unwrap() - 15.0 * 1.0 / 3600.0).abs() < 1e-12);
        assert_eq!(s[2].steps_to_target, None);
    }

    #[test]
    fn default_target_is_the_median_final_loss() {
        let (a, b, c) = (run(&[(0, 3.0), (5, 1.0)], 1.0), run(&[(0, 3.0), (5, 2.0)], 1.0), run(&[(0, 3.0), (5, 4.0)], 1.0));
        assert_eq!(target_loss(&[Some(&a), Some(&b), None, Some(&c)], None), Some(2.0));
        assert_eq!(target_loss(&[Some(&a)], Some(0.5)), Some(0.5));
    }
}
