//! Turns loss curves into a ranking. Pure functions of the measured runs: no I/O, no clocks.
//!
//! Each checkpoint has one run per seed. Every metric (defined in `metrics.rs`) is computed per
//! run, then summarised as a mean with a 95% confidence interval over seeds (`stats.rs`); a
//! time to target forecast by the curve model (`curve_fit.rs`) adds the forecast's own
//! interval. Checkpoints are ranked by device-hours to the target: measured first, then
//! extrapolated (flagged, never mixed silently with measured ones), then those that get
//! nowhere; ties in time are broken by final eval loss. Checkpoints a race stopped rank after
//! every one that ran the whole budget. A checkpoint whose interval overlaps the winner's is
//! reported as tied with it.

pub mod budget;
pub mod curve_fit;
pub mod metrics;
pub mod pretrain;
pub mod race;
pub mod stats;
pub mod sweep;

use std::collections::BTreeMap;

use crate::curve::{median, CurvePoint};
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
    /// It ran the whole budget (a race did not stop it): only such runs set a default target.
    pub finished: bool,
    /// Training tokens per update.
    pub tokens_per_update: usize,
    /// Tokens in the task's training blocks (0: no task of blocks, a simulated run).
    pub train_tokens: usize,
    /// Points measured beyond the probe while settling the ranking at the budget (see
    /// `budget`); the probe's scores ignore them.
    pub beyond: Vec<CurvePoint>,
}

/// How the target eval loss is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetSpec {
    /// `--target-loss X`.
    Loss(f64),
    /// `--target-drop F`: each checkpoint must drop by F times the largest mean total drop
    /// (initial minus final eval loss) of any checkpoint, from its own initial loss.
    Drop(f64),
    /// The default: the median over all finished runs of their final eval loss.
    MedianFinal,
}

/// The scorer's verdict for one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub target_loss: f64,
    pub steps_to_target: Option<Estimate>,
    /// Some seed's steps come from the curve model, not a measured curve.
    pub extrapolated: bool,
    pub device_hours_to_target: Option<Estimate>,
    /// 1 / mean device-hours to target.
    pub convergence_per_device_hour: Option<f64>,
    pub initial_eval_loss: Option<Estimate>,
    pub final_eval_loss: Option<Estimate>,
    pub mean_eval_loss: Option<Estimate>,
    pub search_phase_steps: Option<Estimate>,
    pub loss_drop_per_device_hour: Option<Estimate>,
    /// Its eval loss before fine-tuning is already at or below the target: its time to target
    /// (zero) measures no adaptation.
    pub at_target_before_training: bool,
    /// A race stopped it before the whole budget.
    pub stopped: bool,
    /// The last eval step of its curves: the budget, or where a race stopped it.
    pub last_step: f64,
    /// Seconds per update its hours are priced at: the median step time of every run of its
    /// shape (architecture and size) in the scan.
    pub step_cost_s: f64,
    pub rank: usize,
    /// The confidence interval of its device-hours overlaps the winner's.
    pub tied_with_best: bool,
}

/// The target used: its kind, the value given, and for a drop target the absolute drop.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub spec: TargetSpec,
    /// The target loss (for `Drop`, the loss drop each checkpoint must achieve).
    pub value: f64,
    /// The checkpoints (indices) whose runs set the value: every one with a finished run for
    /// the median, the one with the largest drop for a drop target, none for a given loss.
    pub set_by: Vec<usize>,
}

/// Scores every checkpoint (None = failed) from its runs, one per seed, and ranks them. None
/// when no run can set the target (no run finished).
pub fn score(checkpoints: &[Option<Vec<RunSummary>>], spec: TargetSpec) -> Option<(Target, Vec<Option<Score>>)> {
    let target = resolve(checkpoints, spec)?;
    let cost = step_cost_by_shape(checkpoints.iter().flatten().flatten());
    let mut scores: Vec<Option<Score>> = checkpoints
        .iter()
        .map(|runs| runs.as_ref().filter(|r| !r.is_empty()).map(|runs| score_one(runs, &target, &cost)))
        .collect();
    rank(&mut scores);
    Some((target, scores))
}

/// The target of a scan, from the finished runs only: a run a race cut short would make a
/// median-final target easier and a drop target smaller.
fn resolve(checkpoints: &[Option<Vec<RunSummary>>], spec: TargetSpec) -> Option<Target> {
    let finished: Vec<(usize, Vec<&RunSummary>)> = checkpoints
        .iter()
        .enumerate()
        .filter_map(|(i, runs)| Some((i, runs.as_ref()?.iter().filter(|r| r.finished).collect::<Vec<_>>())))
        .filter(|(_, runs)| !runs.is_empty())
        .collect();
    if finished.is_empty() {
        return None;
    }
    let (value, set_by) = match spec {
        TargetSpec::Loss(x) => (x, Vec::new()),
        TargetSpec::MedianFinal => {
            let finals: Vec<f64> = finished
                .iter()
                .flat_map(|(_, runs)| runs.iter().filter_map(|r| metrics::final_eval_loss(&r.curve)))
                .collect();
            (median(&finals), finished.iter().map(|(i, _)| *i).collect())
        }
        TargetSpec::Drop(f) => {
            let (i, drop) = largest_mean_drop(&finished)?;
            (f * drop, vec![i])
        }
    };
    Some(Target { spec, value, set_by })
}

/// The checkpoint with the largest mean total drop (initial minus final eval loss), and it.
fn largest_mean_drop(finished: &[(usize, Vec<&RunSummary>)]) -> Option<(usize, f64)> {
    let drop = |r: &&RunSummary| Some(metrics::initial_eval_loss(&r.curve)? - metrics::final_eval_loss(&r.curve)?);
    finished
        .iter()
        .filter_map(|(i, runs)| Some((*i, Estimate::of(&runs.iter().filter_map(drop).collect::<Vec<_>>())?.mean)))
        .fold(None, |best: Option<(usize, f64)>, (i, d)| match best {
            Some((_, b)) if b >= d => best,
            _ => Some((i, d.max(0.0))),
        })
}

/// A metric of one run's eval points.
type Metric<'a> = dyn Fn(&[(f64, f64)]) -> Option<f64> + 'a;

/// All seeds' metrics of one checkpoint, summarised.
fn score_one(runs: &[RunSummary], target: &Target, cost: &BTreeMap<String, f64>) -> Score {
    let step_s = cost[&runs[0].shape_key];
    let points: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| eval_points(&r.curve)).collect();
    let per = |f: &Metric<'_>| Estimate::of(&points.iter().filter_map(|p| f(p)).collect::<Vec<_>>());
    let initial = per(&|p| p.first().map(|x| x.1));
    let target_loss = match target.spec {
        TargetSpec::Drop(_) => initial.map_or(f64::NAN, |e| e.mean) - target.value,
        _ => target.value,
    };
    let steps = steps_to_target(&points, target_loss);
    let hours = steps.map(|(e, _)| e.scaled(step_s / 3600.0));
    Score {
        target_loss,
        steps_to_target: steps.map(|(e, _)| e),
        extrapolated: steps.is_some_and(|(_, x)| x),
        device_hours_to_target: hours,
        convergence_per_device_hour: hours.map(|h| if h.mean > 0.0 { 1.0 / h.mean } else { f64::INFINITY }),
        initial_eval_loss: initial,
        final_eval_loss: per(&|p| p.last().map(|x| x.1)),
        mean_eval_loss: per(&metrics::mean_eval_loss),
        search_phase_steps: per(&metrics::search_phase_steps).map(|e| e.at_least(0.0)),
        loss_drop_per_device_hour: per(&|p| metrics::loss_drop_per_hour(p, step_s)),
        at_target_before_training: initial.is_some_and(|i| i.mean <= target_loss),
        stopped: runs.iter().any(|r| !r.finished),
        last_step: points.iter().filter_map(|p| p.last().map(|x| x.0)).fold(0.0, f64::max),
        step_cost_s: step_s,
        rank: 0,
        tied_with_best: false,
    }
}

/// Steps to target over seeds (and whether any seed's is forecast): None unless every seed
/// gets there; the interval joins the spread over seeds and each forecast's own
/// ([`Estimate::of_intervals`]).
fn steps_to_target(points: &[Vec<(f64, f64)>], target: f64) -> Option<(Estimate, bool)> {
    let per: Vec<curve_fit::StepsTo> =
        points.iter().map(|p| curve_fit::steps_to_target(p, target)).collect::<Option<_>>()?;
    let e = Estimate::of_intervals(&per.iter().map(|s| (s.steps, s.lo, s.hi)).collect::<Vec<_>>())?;
    Some((e.at_least(0.0), per.iter().any(|s| s.extrapolated)))
}

/// Order: runs that finished before those a race stopped (the later-stopped first); then
/// measured, extrapolated, not reached; within each, device-hours, then final eval loss, then
/// step order. Ties with the winner are for finishers of the winner's class with an interval.
fn rank(scores: &mut [Option<Score>]) {
    let key = |s: &Score| {
        let class = match (&s.device_hours_to_target, s.extrapolated) {
            (Some(_), false) => 0u8,
            (Some(_), true) => 1,
            (None, _) => 2,
        };
        let stopped_at = if s.stopped { -s.last_step } else { f64::NEG_INFINITY };
        (
            stopped_at,
            class,
            s.device_hours_to_target.map_or(f64::INFINITY, |h| h.mean),
            s.final_eval_loss.map_or(f64::INFINITY, |l| l.mean),
        )
    };
    let mut order: Vec<(usize, (f64, u8, f64, f64))> =
        scores.iter().enumerate().filter_map(|(i, s)| Some((i, key(s.as_ref()?)))).collect();
    order.sort_by(|(a, ka), (b, kb)| {
        ka.0.total_cmp(&kb.0)
            .then(ka.1.cmp(&kb.1))
            .then(ka.2.total_cmp(&kb.2))
            .then(ka.3.total_cmp(&kb.3))
            .then(a.cmp(b))
    });
    let best = order.first().and_then(|&(i, k)| Some((k.1, scores[i].as_ref()?.device_hours_to_target)));
    for (place, &(i, k)) in order.iter().enumerate() {
        if let Some(s) = scores[i].as_mut() {
            s.rank = place + 1;
            let tie = |b: &Estimate, h: &Estimate| (b.has_interval() || h.has_interval()) && b.overlaps(h);
            s.tied_with_best = place > 0
                && !s.stopped
                && matches!((best, s.device_hours_to_target), (Some((class, Some(b))), Some(h)) if class == k.1 && tie(&b, &h));
        }
    }
}

/// The median step time of each group of identically shaped runs: what a step costs.
pub fn step_cost_by_shape<'a>(runs: impl Iterator<Item = &'a RunSummary>) -> BTreeMap<String, f64> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        groups.entry(r.shape_key.clone()).or_default().push(r.median_step_s);
    }
    groups.into_iter().map(|(k, v)| (k, median(&v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(evals: &[(usize, f64)], step_s: f64) -> RunSummary {
        let curve = evals
            .iter()
            .map(|&(step, l)| CurvePoint { step, train_loss: None, eval_loss: Some(l), elapsed_s: 0.0 })
            .collect();
        RunSummary {
            curve,
            median_step_s: step_s,
            shape_key: "m".into(),
            finished: true,
            tokens_per_update: 1,
            train_tokens: 0,
            beyond: Vec::new(),
        }
    }

    fn ranks(scores: &[Option<Score>]) -> Vec<usize> {
        scores.iter().map(|s| s.as_ref().map_or(0, |s| s.rank)).collect()
    }

    #[test]
    fn ranking_orders_measured_then_extrapolated_then_none() {
        let a = run(&[(0, 4.0), (10, 2.0)], 1.0); // reaches 3.0 at step 5
        let b = run(&[(0, 4.0), (10, 3.5), (20, 2.5)], 1.2); // at step 15
        let c = run(&[(0, 4.0), (10, 3.9)], 1.0); // never, too few points to extrapolate
                                                  // 2.5 + 1.5 (s + 1)^-0.2 reaches 3.0 at s = 242, within ten budgets of 60
        let d =
            run(&(0..=6).map(|i| (10 * i, 2.5 + 1.5 * (10.0 * i as f64 + 1.0).powf(-0.2))).collect::<Vec<_>>(), 1.0);
        let (target, s) =
            score(&[Some(vec![b]), None, Some(vec![c]), Some(vec![a]), Some(vec![d])], TargetSpec::Loss(3.0)).unwrap();
        assert_eq!(target.value, 3.0);
        assert_eq!(ranks(&s), vec![2, 0, 4, 1, 3]);
        let d = s[4].as_ref().unwrap();
        let steps = d.steps_to_target.unwrap();
        assert!(
            d.extrapolated && (steps.mean - 242.0).abs() < 1.0 && steps.lo <= steps.mean && steps.mean <= steps.hi,
            "{steps:?}"
        );
        // Same shape: each step costs the median step time of all runs (1.0 s), not b's 1.2 s.
        let b = s[0].as_ref().unwrap();
        assert!((b.device_hours_to_target.unwrap().mean - 15.0 / 3600.0).abs() < 1e-12);
        assert!((b.convergence_per_device_hour.unwrap() - 240.0).abs() < 1e-9);
    }

    #[test]
    fn default_target_is_the_median_final_loss() {
        let runs = [
            Some(vec![run(&[(0, 3.0), (5, 1.0)], 1.0)]),
            Some(vec![run(&[(0, 3.0), (5, 2.0)], 1.0)]),
            None,
            Some(vec![run(&[(0, 3.0), (5, 4.0)], 1.0)]),
        ];
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
        let seeds =
            |steps: [f64; 3]| steps.iter().map(|&s| run(&[(0, 4.0), (s as usize, 2.0)], 1.0)).collect::<Vec<_>>();
        // Target 3.0 is reached halfway: steps 5, 6, 7 vs 6, 7, 8 (tied) vs 20, 21, 22 (not).
        let (_, s) = score(
            &[Some(seeds([10.0, 12.0, 14.0])), Some(seeds([12.0, 14.0, 16.0])), Some(seeds([40.0, 42.0, 44.0]))],
            TargetSpec::Loss(3.0),
        )
        .unwrap();
        let s: Vec<&Score> = s.iter().map(|s| s.as_ref().unwrap()).collect();
        assert_eq!((s[0].rank, s[1].rank, s[2].rank), (1, 2, 3));
        assert!(s[1].tied_with_best && !s[2].tied_with_best && !s[0].tied_with_best);
        let e = s[0].steps_to_target.unwrap();
        assert_eq!((e.mean, e.n), (6.0, 3));
        assert!(e.lo < 6.0 && e.hi > 6.0);
    }

    #[test]
    fn single_seed_never_ties_unless_equal() {
        let (_, s) = score(
            &[Some(vec![run(&[(0, 4.0), (10, 2.0)], 1.0)]), Some(vec![run(&[(0, 4.0), (12, 2.0)], 1.0)])],
            TargetSpec::Loss(3.0),
        )
        .unwrap();
        assert!(!s[1].as_ref().unwrap().tied_with_best);
    }

    /// A race's stopped runs end early, higher on their curves: they must not make the default
    /// target easier. Scored with the runs of a full scan cut where a race would stop them,
    /// the finishers keep the full scan's target, steps, hours and order.
    #[test]
    fn a_race_scores_its_finishers_as_the_full_scan_does() {
        let curve = |start: f64, rate: f64| {
            (0..=6).map(|i| (10 * i, start * (-rate * i as f64).exp() + 1.0)).collect::<Vec<_>>()
        };
        let full: Vec<RunSummary> =
            [(3.0, 0.5), (4.0, 0.3), (5.0, 0.2), (6.0, 0.1)].iter().map(|&(s, r)| run(&curve(s, r), 1.0)).collect();
        let mut raced = full.clone();
        for r in &mut raced[2..] {
            r.curve.truncate(3); // stopped at step 20
            r.finished = false;
        }
        let wrap = |runs: &[RunSummary]| runs.iter().map(|r| Some(vec![r.clone()])).collect::<Vec<_>>();
        let (t_full, s_full) = score(&wrap(&full), TargetSpec::MedianFinal).unwrap();
        let (t_race, s_race) = score(&wrap(&raced), TargetSpec::MedianFinal).unwrap();
        assert_eq!(t_race.set_by, vec![0, 1], "only the finishers set the target");
        // the median of the finishers' final losses, not of the cut curves' last points
        assert_eq!(t_race.value, median(&[full[0].curve[6].eval_loss.unwrap(), full[1].curve[6].eval_loss.unwrap()]));
        let (t_loss_full, s_loss_full) = score(&wrap(&full), TargetSpec::Loss(1.5)).unwrap();
        let (_, s_loss_race) = score(&wrap(&raced), TargetSpec::Loss(1.5)).unwrap();
        assert_eq!(t_loss_full.set_by, Vec::<usize>::new());
        for i in 0..2 {
            let (f, r) = (s_loss_full[i].as_ref().unwrap(), s_loss_race[i].as_ref().unwrap());
            assert_eq!(
                (f.steps_to_target, f.device_hours_to_target, f.rank),
                (r.steps_to_target, r.device_hours_to_target, r.rank)
            );
        }
        assert!(s_race[2].as_ref().unwrap().stopped && s_race[2].as_ref().unwrap().rank > 2);
        assert_eq!(t_full.set_by, vec![0, 1, 2, 3]);
        assert!(s_full.iter().all(|s| !s.as_ref().unwrap().stopped));
    }

    #[test]
    fn a_checkpoint_already_at_the_target_is_flagged() {
        let (_, s) = score(
            &[Some(vec![run(&[(0, 2.0), (10, 1.5)], 1.0)]), Some(vec![run(&[(0, 4.0), (10, 2.5)], 1.0)])],
            TargetSpec::Loss(2.5),
        )
        .unwrap();
        let (a, b) = (s[0].as_ref().unwrap(), s[1].as_ref().unwrap());
        assert!(a.at_target_before_training && a.steps_to_target.unwrap().mean == 0.0 && a.rank == 1);
        assert!(!b.at_target_before_training);
    }

    #[test]
    fn a_drop_target_names_the_checkpoint_with_the_largest_drop() {
        let (t, _) = score(
            &[Some(vec![run(&[(0, 4.0), (10, 3.5)], 1.0)]), Some(vec![run(&[(0, 4.0), (10, 2.0)], 1.0)])],
            TargetSpec::Drop(0.5),
        )
        .unwrap();
        assert_eq!((t.value, t.set_by), (1.0, vec![1]));
    }
}
