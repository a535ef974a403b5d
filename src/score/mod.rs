//! Turns loss curves into a ranking. Pure functions of the measured runs: no I/O, no clocks.
//!
//! Each checkpoint has one run per seed. Every metric (defined in `metrics.rs`) is computed per
//! run, then summarised as a mean with a 95% confidence interval over seeds (`stats.rs`).
//! Checkpoints are ranked by device-hours to the target: measured first, then extrapolated
//! (flagged, never mixed silently with measured ones), then those that get nowhere; ties in
//! time are broken by final eval loss. A checkpoint whose interval overlaps the winner's is
//! reported as tied with it.

pub mod metrics;
pub mod pretrain;
pub mod race;
pub mod stats;
pub mod sweep;

use std::collections::BTreeMap;

use crate::train::{median, CurvePoint};
use metrics::eval_points;
pub use stats::Estimate;

/// What the scorer needs of one run (one checkpoint, one seed).
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub curve: Vec<CurvePoint>,
    pub median_step_s: f64,
    /// Checkpoints with the same key share one per-step cost (architecture and size), so
    /// timing noise between identical models cannot reorder a series.
    pub shape_key: String,
}

/// How the target eval loss is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetSpec {
    /// `--target-loss X`.
    Loss(f64),
    /// `--target-drop F`: each checkpoint must drop by F times the largest mean total drop
    /// (initial minus final eval loss) of any checkpoint, from its own initial loss.
    Drop(f64),
    /// The default: the median over all runs of their final eval loss.
    MedianFinal,
}

/// The scorer's verdict for one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub target_loss: f64,
    pub steps_to_target: Option<Estimate>,
    /// Some seed's steps come from a fitted tail, not a measured curve.
    pub extrapolated: bool,
    pub device_hours_to_target: Option<Estimate>,
    /// 1 / mean device-hours to target.
    pub convergence_per_device_hour: Option<f64>,
    pub initial_eval_loss: Option<Estimate>,
    pub final_eval_loss: Option<Estimate>,
    pub mean_eval_loss: Option<Estimate>,
    pub search_phase_steps: Option<Estimate>,
    pub loss_drop_per_device_hour: Option<Estimate>,
    pub rank: usize,
    /// The confidence interval of its device-hours overlaps the winner's.
    pub tied_with_best: bool,
}

/// The target used: its kind, the value given, and for a drop target the absolute drop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub spec: TargetSpec,
    /// The target loss (for `Drop`, the loss drop each checkpoint must achieve).
    pub value: f64,
}

/// Scores every checkpoint (None = failed) from its runs, one per seed, and ranks them.
pub fn score(checkpoints: &[Option<Vec<RunSummary>>], spec: TargetSpec) -> Option<(Target, Vec<Option<Score>>)> {
    let target = resolve(checkpoints, spec)?;
    let cost = step_cost_by_shape(checkpoints);
    let mut scores: Vec<Option<Score>> = checkpoints
        .iter()
        .map(|runs| runs.as_ref().filter(|r| !r.is_empty()).map(|runs| score_one(runs, target, &cost)))
        .collect();
    rank(&mut scores);
    Some((target, scores))
}

/// The target of a scan (None when no run finished).
fn resolve(checkpoints: &[Option<Vec<RunSummary>>], spec: TargetSpec) -> Option<Target> {
    let runs: Vec<&RunSummary> = checkpoints.iter().flatten().flatten().collect();
    if runs.is_empty() {
        return None;
    }
    let value = match spec {
        TargetSpec::Loss(x) => x,
        TargetSpec::MedianFinal => median(&runs.iter().filter_map(|r| metrics::final_eval_loss(&r.curve)).collect::<Vec<_>>()),
        TargetSpec::Drop(f) => f * largest_mean_drop(checkpoints),
    };
    Some(Target { spec, value })
}

fn largest_mean_drop(checkpoints: &[Option<Vec<RunSummary>>]) -> f64 {
    let drop = |r: &RunSummary| Some(metrics::initial_eval_loss(&r.curve)? - metrics::final_eval_loss(&r.curve)?);
    checkpoints
        .iter()
        .flatten()
        .filter_map(|runs| Estimate::of(&runs.iter().filter_map(drop).collect::<Vec<_>>()))
        .map(|e| e.mean)
        .fold(0.0, f64::max)
}

/// A metric of one run's eval points.
type Metric<'a> = dyn Fn(&[(f64, f64)]) -> Option<f64> + 'a;

/// All seeds' metrics of one checkpoint, summarised.
fn score_one(runs: &[RunSummary], target: Target, cost: &BTreeMap<String, f64>) -> Score {
    let step_s = cost[&runs[0].shape_key];
    let points: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| eval_points(&r.curve)).collect();
    let per = |f: &Metric<'_>| Estimate::of(&points.iter().filter_map(|p| f(p)).collect::<Vec<_>>());
    let initial = per(&|p| p.first().map(|x| x.1));
    let target_loss = match target.spec {
        TargetSpec::Drop(_) => initial.map_or(f64::NAN, |e| e.mean) - target.value,
        _ => target.value,
    };
    let steps: Option<Vec<(f64, bool)>> = points.iter().map(|p| metrics::steps_to_target(p, target_loss)).collect();
    let extrapolated = steps.as_ref().is_some_and(|s| s.iter().any(|x| x.1));
    let steps = steps.and_then(|s| Estimate::of(&s.iter().map(|x| x.0).collect::<Vec<_>>())).map(|e| e.at_least(0.0));
    let hours = steps.map(|e| Estimate { mean: e.mean * step_s / 3600.0, lo: e.lo * step_s / 3600.0, hi: e.hi * step_s / 3600.0, n: e.n });
    Score {
        target_loss,
        steps_to_target: steps,
        extrapolated,
        device_hours_to_target: hours,
        convergence_per_device_hour: hours.map(|h| if h.mean > 0.0 { 1.0 / h.mean } else { f64::INFINITY }),
        initial_eval_loss: initial,
        final_eval_loss: per(&|p| p.last().map(|x| x.1)),
        mean_eval_loss: per(&metrics::mean_eval_loss),
        search_phase_steps: per(&metrics::search_phase_steps).map(|e| e.at_least(0.0)),
        loss_drop_per_device_hour: per(&|p| metrics::loss_drop_per_hour(p, step_s)),
        rank: 0,
        tied_with_best: false,
    }
}

/// Order: measured, then extrapolated, then not reached; within each, device-hours, then
/// final eval loss, then step order.
fn rank(scores: &mut [Option<Score>]) {
    let key = |s: &Score| {
        let class = match (&s.device_hours_to_target, s.extrapolated) {
            (Some(_), false) => 0u8,
            (Some(_), true) => 1,
            (None, _) => 2,
        };
        (class, s.device_hours_to_target.map_or(f64::INFINITY, |h| h.mean), s.final_eval_loss.map_or(f64::INFINITY, |l| l.mean))
    };
    let mut order: Vec<(usize, (u8, f64, f64))> = scores.iter().enumerate().filter_map(|(i, s)| Some((i, key(s.as_ref()?)))).collect();
    order.sort_by(|(a, ka), (b, kb)| ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(ka.2.total_cmp(&kb.2)).then(a.cmp(b)));
    let best = order.first().and_then(|&(i, k)| Some((k.0, scores[i].as_ref()?.device_hours_to_target)));
    for (place, &(i, k)) in order.iter().enumerate() {
        if let Some(s) = scores[i].as_mut() {
            s.rank = place + 1;
            s.tied_with_best = place > 0 && matches!((best, s.device_hours_to_target), (Some((class, Some(b))), Some(h)) if class == k.0 && b.n > 1 && b.overlaps(&h));
        }
    }
}

/// The median step time of each group of identically shaped checkpoints, over all seeds.
fn step_cost_by_shape(checkpoints: &[Option<Vec<RunSummary>>]) -> BTreeMap<String, f64> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in checkpoints.iter().flatten().flatten() {
        groups.entry(r.shape_key.clone()).or_default().push(r.median_step_s);
    }
    groups.into_iter().map(|(k, v)| (k, median(&v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(evals: &[(usize, f64)], step_s: f64) -> RunSummary {
        let curve = evals.iter().map(|&(step, l)| CurvePoint { step, train_loss: None, eval_loss: Some(l), elapsed_s: 0.0 }).collect();
        RunSummary { curve, median_step_s: step_s, shape_key: "m".into() }
    }

    fn ranks(scores: &[Option<Score>]) -> Vec<usize> {
        scores.iter().map(|s| s.as_ref().map_or(0, |s| s.rank)).collect()
    }

    #[test]
    fn ranking_orders_measured_then_extrapolated_then_none() {
        let a = run(&[(0, 4.0), (10, 2.0)], 1.0); // reaches 3.0 at step 5
        let b = run(&[(0, 4.0), (10, 3.5), (20, 2.5)], 1.2); // at step 15
        let c = run(&[(0, 4.0), (10, 3.9)], 1.0); // never, too few points to extrapolate
        let d = run(&[(0, 4.0), (10, 3.6), (20, 3.4), (30, 3.25), (40, 3.15), (50, 3.1), (60, 3.06)], 1.0); // extrapolated
        let (target, s) = score(&[Some(vec![b]), None, Some(vec![c]), Some(vec![a]), Some(vec![d])], TargetSpec::Loss(3.0)).unwrap();
        assert_eq!(target.value, 3.0);
        assert_eq!(ranks(&s), vec![2, 0, 4, 1, 3]);
        let d = s[4].as_ref().unwrap();
        assert!(d.extrapolated && d.steps_to_target.unwrap().mean > 60.0);
        // Same shape: each step costs the median step time of all runs (1.0 s), not b's 1.2 s.
        let b = s[0].as_ref().unwrap();
        assert!((b.device_hours_to_target.unwrap().mean - 15.0 / 3600.0).abs() < 1e-12);
        assert!((b.convergence_per_device_hour.unwrap() - 240.0).abs() < 1e-9);
    }

    #[test]
    fn default_target_is_the_median_final_loss() {
        let runs = [Some(vec![run(&[(0, 3.0), (5, 1.0)], 1.0)]), Some(vec![run(&[(0, 3.0), (5, 2.0)], 1.0)]), None, Some(vec![run(&[(0, 3.0), (5, 4.0)], 1.0)])];
        assert_eq!(score(&runs, TargetSpec::MedianFinal).unwrap().0.value, 2.0);
        assert!(score(&[None], TargetSpec::MedianFinal).is_none());
    }

    #[test]
    fn drop_target_is_relative_to_each_initial_loss() {
        // Largest drop is 2.0 (a); half of it is 1.0: a needs 4 -> 3, b needs 3 -> 2.
        let a = run(&[(0, 4.0), (10, 2.0)], 1.0);
        let b = run(&[(0, 3.0), (10, 2.5), (20, 2.0)], 1.0);
        let (target, s) = score(&[Some(vec![a]), Some(vec![b])], TargetSpec::Drop(0.5)).unwrap();
        assert_eq!(target.value, 1.0);
        let (sa, sb) = (s[0].as_ref().unwrap(), s[1].as_ref().unwrap());
        assert_eq!((sa.target_loss, sb.target_loss), (3.0, 2.0));
        assert_eq!(sa.steps_to_target.unwrap().mean, 5.0);
        assert_eq!(sb.steps_to_target.unwrap().mean, 20.0);
    }

    #[test]
    fn overlapping_seed_intervals_are_ties() {
        let seeds = |steps: [f64; 3]| steps.iter().map(|&s| run(&[(0, 4.0), (s as usize, 2.0)], 1.0)).collect::<Vec<_>>();
        // Target 3.0 is reached halfway: steps 5, 6, 7 vs 6, 7, 8 (tied) vs 20, 21, 22 (not).
        let (_, s) = score(&[Some(seeds([10.0, 12.0, 14.0])), Some(seeds([12.0, 14.0, 16.0])), Some(seeds([40.0, 42.0, 44.0]))], TargetSpec::Loss(3.0)).unwrap();
        let s: Vec<&Score> = s.iter().map(|s| s.as_ref().unwrap()).collect();
        assert_eq!((s[0].rank, s[1].rank, s[2].rank), (1, 2, 3));
        assert!(s[1].tied_with_best && !s[2].tied_with_best && !s[0].tied_with_best);
        let e = s[0].steps_to_target.unwrap();
        assert_eq!((e.mean, e.n), (6.0, 3));
        assert!(e.lo < 6.0 && e.hi > 6.0);
    }

    #[test]
    fn single_seed_never_ties_unless_equal() {
        let (_, s) = score(&[Some(vec![run(&[(0, 4.0), (10, 2.0)], 1.0)]), Some(vec![run(&[(0, 4.0), (12, 2.0)], 1.0)])], TargetSpec::Loss(3.0)).unwrap();
        assert!(!s[1].as_ref().unwrap().tied_with_best);
    }
}
