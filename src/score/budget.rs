//! Ranking for the fine-tune the user will run (`--budget`), from the probe's curves.
//!
//! A scan is a short probe, and the effect this tool measures is that the ranking changes with
//! the budget: a strongly pre-trained snapshot may sit longer on a plateau, or start higher,
//! and then overtake. So each run's eval curve is forecast to the budget with the curve model
//! (`curve_fit`), and the checkpoints are ranked by their eval loss at the budget: a fine-tune
//! of that length ends there, and the lower the better. Beside it, each checkpoint's time to
//! the target (the scan's rule applied to the losses at the budget: their median by default)
//! on the forecast curve, within the budget. What the probe already measured is not forecast.
//! A run still in its search phase after the probe cannot be forecast and says so (it ranks
//! last). Pure functions of the runs: no I/O, no clocks.

use super::curve_fit::{self, Interval};
use super::{metrics, step_cost_by_shape, Estimate, RunSummary, Target, TargetSpec};
use crate::curve::median;

/// The fine-tune the user will run (`--budget`): the ranking answers for it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Optimizer updates.
    Updates(usize),
    /// Training tokens: updates = tokens / tokens per update.
    Tokens(f64),
    /// Device-hours: updates = hours x 3600 / seconds per update of the snapshot's shape.
    Hours(f64),
    /// Passes over the task's training blocks: updates = epochs x training tokens / tokens per
    /// update.
    Epochs(f64),
}

/// The default budget: three epochs of the task, a common length for a LoRA fine-tune.
pub const DEFAULT_BUDGET: Budget = Budget::Epochs(3.0);

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Updates(n) => write!(f, "{n} updates"),
            Budget::Tokens(t) => write!(f, "{t} tokens"),
            Budget::Hours(h) => write!(f, "{h} device-hours"),
            Budget::Epochs(e) => write!(f, "{e} epochs"),
        }
    }
}

/// One checkpoint at the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetScore {
    /// The budget in updates for this checkpoint (tokens and hours depend on its tokenizer and shape).
    pub steps: usize,
    /// The eval loss at the budget, with its 95% interval.
    pub eval_loss: Option<Estimate>,
    pub target_loss: f64,
    /// Steps to the target within the budget (None: not within it).
    pub steps_to_target: Option<Estimate>,
    pub device_hours_to_target: Option<Estimate>,
    /// The loss at the budget comes from the curve model (the budget is beyond the probe).
    pub forecast: bool,
    /// The steps to target come from the curve model (the probe did not get there).
    pub steps_forecast: bool,
    /// Why no forecast could be made.
    pub no_forecast: Option<&'static str>,
    /// The forecast eval curve from the end of the probe to the budget (mean over seeds):
    /// (step, loss) at 16 steps; empty when the probe covered the budget.
    pub curve: Vec<(f64, f64)>,
    pub rank: usize,
    /// The 95% interval of its loss at the budget overlaps the leader's.
    pub tied_with_best: bool,
}

/// One run's curve at the budget.
struct RunAtBudget {
    steps: usize,
    points: Vec<(f64, f64)>,
    /// None when the probe covered the budget (measured), or when no forecast can be made.
    forecast: Option<curve_fit::Forecast>,
    /// (value, lo, hi) of the eval loss at the budget; None without a forecast.
    loss: Option<(f64, f64, f64)>,
    no_forecast: Option<&'static str>,
}

/// The budget in updates for a run whose steps cost `step_s` seconds: never shorter than its
/// probe (`probe` updates).
pub fn updates(budget: Budget, run: &RunSummary, step_s: f64, probe: usize) -> usize {
    let per_update = run.tokens_per_update.max(1) as f64;
    let n = match budget {
        Budget::Updates(n) => n as f64,
        Budget::Tokens(t) => t / per_update,
        Budget::Hours(h) if step_s > 0.0 => h * 3600.0 / step_s,
        Budget::Hours(_) => 0.0,
        Budget::Epochs(e) => e * run.train_tokens as f64 / per_update,
    };
    (n.ceil().min(usize::MAX as f64) as usize).max(probe)
}

/// Every checkpoint's standing at the budget, ranked, with the target at the budget. The target
/// is None when some run has no loss there (its curve cannot be forecast): a snapshot that
/// cannot be placed at the budget cannot be ranked there against the rest, and ranking it last
/// would be a verdict the data does not give; the scan then ranks on the probe and says why.
/// `probe` is the scan's length in updates.
pub fn score(
    checkpoints: &[Option<Vec<RunSummary>>],
    budget: Budget,
    probe: usize,
    spec: TargetSpec,
) -> (Option<Target>, Vec<Option<BudgetScore>>) {
    let cost = step_cost_by_shape(checkpoints.iter().flatten().flatten());
    let step_s = |r: &RunSummary| cost.get(&r.shape_key).copied().unwrap_or(0.0);
    let runs: Vec<Option<Vec<RunAtBudget>>> = checkpoints
        .iter()
        .map(|c| {
            c.as_ref().map(|runs| runs.iter().map(|r| at_budget(r, updates(budget, r, step_s(r), probe))).collect())
        })
        .collect();
    let all_placed = runs.iter().flatten().flatten().all(|r| r.loss.is_some());
    let target = resolve(&runs, spec).filter(|_| all_placed);
    let no_target = Target { spec, value: f64::NAN, set_by: Vec::new() };
    let mut scores: Vec<Option<BudgetScore>> = checkpoints
        .iter()
        .zip(&runs)
        .map(|(c, at)| {
            Some(score_one(at.as_ref()?, target.as_ref().unwrap_or(&no_target), step_s(c.as_ref()?.first()?)))
        })
        .collect();
    rank(&mut scores);
    (target, scores)
}

/// A run's loss at the budget: measured when the run got there (the probe, and any updates
/// beyond it while settling), else forecast when the curve can be trusted.
fn at_budget(run: &RunSummary, steps: usize) -> RunAtBudget {
    let points = metrics::eval_points(&[run.curve.as_slice(), run.beyond.as_slice()].concat());
    let last = points.last().map_or(0.0, |p| p.0);
    if last >= steps as f64 {
        let loss = metrics::loss_at(&points, steps as f64);
        return RunAtBudget { steps, points, forecast: None, loss: loss.map(|l| (l, l, l)), no_forecast: None };
    }
    match curve_fit::trusted(&points, steps as f64) {
        Ok(f) => {
            let Interval { value, lo, hi } = f.loss_at(steps as f64);
            RunAtBudget { steps, points, forecast: Some(f), loss: Some((value, lo, hi)), no_forecast: None }
        }
        Err(why) => RunAtBudget { steps, points, forecast: None, loss: None, no_forecast: Some(why) },
    }
}

/// The target at the budget: a given loss; the median of the runs' losses at the budget; or
/// each checkpoint's initial loss minus F x the largest mean drop to the budget.
fn resolve(runs: &[Option<Vec<RunAtBudget>>], spec: TargetSpec) -> Option<Target> {
    let with_loss: Vec<(usize, Vec<&RunAtBudget>)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.as_ref()?.iter().filter(|x| x.loss.is_some()).collect::<Vec<_>>())))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    if with_loss.is_empty() {
        return None;
    }
    let loss = |r: &RunAtBudget| r.loss.map_or(f64::NAN, |l| l.0);
    let (value, set_by) = match spec {
        TargetSpec::Loss(x) => (x, Vec::new()),
        TargetSpec::MedianFinal => (
            median(&with_loss.iter().flat_map(|(_, r)| r.iter().map(|x| loss(x))).collect::<Vec<_>>()),
            with_loss.iter().map(|(i, _)| *i).collect(),
        ),
        TargetSpec::Drop(f) => {
            let drop = |r: &&RunAtBudget| r.points.first().map(|p| p.1 - loss(r));
            let (i, d) = with_loss
                .iter()
                .filter_map(|(i, r)| Some((*i, Estimate::of(&r.iter().filter_map(drop).collect::<Vec<_>>())?.mean)))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            (f * d.max(0.0), vec![i])
        }
    };
    Some(Target { spec, value, set_by })
}

/// One checkpoint's seeds at the budget, summarised.
fn score_one(runs: &[RunAtBudget], target: &Target, step_s: f64) -> BudgetScore {
    let initial = Estimate::of(&runs.iter().filter_map(|r| r.points.first().map(|p| p.1)).collect::<Vec<_>>())
        .map_or(f64::NAN, |e| e.mean);
    let target_loss = if let TargetSpec::Drop(_) = target.spec { initial - target.value } else { target.value };
    let no_forecast = runs.iter().find_map(|r| r.no_forecast);
    let losses: Option<Vec<(f64, f64, f64)>> = runs.iter().map(|r| r.loss).collect();
    let steps: Option<Vec<(f64, f64, f64, bool)>> = runs.iter().map(|r| steps_to(r, target_loss)).collect();
    let steps_estimate = steps
        .as_ref()
        .and_then(|s| Estimate::of_intervals(&s.iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>()))
        .map(|e| e.at_least(0.0));
    BudgetScore {
        steps: runs.iter().map(|r| r.steps).max().unwrap_or(0),
        eval_loss: losses.as_deref().and_then(Estimate::of_intervals),
        target_loss,
        steps_to_target: steps_estimate,
        device_hours_to_target: steps_estimate.map(|e| e.scaled(step_s / 3600.0)),
        forecast: runs.iter().any(|r| r.forecast.is_some()),
        steps_forecast: steps.as_ref().is_some_and(|s| s.iter().any(|x| x.3)),
        no_forecast,
        curve: forecast_curve(runs),
        rank: 0,
        tied_with_best: false,
    }
}

/// The mean forecast curve of the seeds from the end of their probe to their budget, at 16
/// evenly spaced steps; empty unless every seed has a forecast.
fn forecast_curve(runs: &[RunAtBudget]) -> Vec<(f64, f64)> {
    let fits: Option<Vec<&curve_fit::Forecast>> = runs.iter().map(|r| r.forecast.as_ref()).collect();
    let (Some(fits), Some(first)) = (fits, runs.first()) else { return Vec::new() };
    let (from, to) = (first.points.last().map_or(0.0, |p| p.0), first.steps as f64);
    (0..=15)
        .map(|i| from + (to - from) * i as f64 / 15.0)
        .map(|s| (s, fits.iter().map(|f| f.fit.loss(s)).sum::<f64>() / fits.len() as f64))
        .collect()
}

/// (steps, lo, hi, forecast) to `target` within the run's budget: measured on the probe's
/// curve, else on the forecast curve; None when it does not get there within the budget.
fn steps_to(r: &RunAtBudget, target: f64) -> Option<(f64, f64, f64, bool)> {
    if let Some(s) = metrics::steps_to(&r.points, target).filter(|&s| s <= r.steps as f64) {
        return Some((s, s, s, false));
    }
    let i = r.forecast.as_ref()?.steps_to(target, r.steps as f64)?;
    let last = r.points.last().map_or(0.0, |p| p.0);
    Some((i.value.max(last), i.lo.max(last), i.hi.max(last), true))
}

/// Order: by eval loss at the budget, lowest first, then by hours to target; those that
/// cannot be forecast last. Ties with the leader: their loss intervals overlap.
fn rank(scores: &mut [Option<BudgetScore>]) {
    let key = |s: &BudgetScore| {
        (s.eval_loss.map_or(f64::INFINITY, |e| e.mean), s.device_hours_to_target.map_or(f64::INFINITY, |e| e.mean))
    };
    let mut order: Vec<usize> = scores.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|_| i)).collect();
    order.sort_by(|&a, &b| {
        let (ka, kb) = (scores[a].as_ref().map(key), scores[b].as_ref().map(key));
        let (ka, kb) = (ka.unwrap_or((f64::INFINITY, f64::INFINITY)), kb.unwrap_or((f64::INFINITY, f64::INFINITY)));
        ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(&b))
    });
    let leader = order.first().and_then(|&i| scores[i].as_ref()?.eval_loss);
    for (place, &i) in order.iter().enumerate() {
        if let Some(s) = scores[i].as_mut() {
            s.rank = place + 1;
            s.tied_with_best = place > 0
                && matches!((leader, s.eval_loss), (Some(l), Some(e)) if (l.has_interval() || e.has_interval()) && l.overlaps(&e));
        }
    }
}

/// Updates the probe would need for the leader and the runner-up to separate, a rough
/// estimate: forecast intervals narrow as the probe nears the budget, taken here to shrink
/// with the log of how far the forecast reaches (ln(budget / probe)). None when they are
/// separated, or when there is no gap to separate.
pub fn updates_to_settle(leader: &Estimate, runner_up: &Estimate, probe: usize, budget: usize) -> Option<usize> {
    if !leader.overlaps(runner_up) || budget <= probe {
        return None;
    }
    let gap = (runner_up.mean - leader.mean).abs();
    let widths = (leader.hi - leader.mean) + (runner_up.mean - runner_up.lo);
    if gap <= 0.0 || widths <= 0.0 {
        return Some(budget - probe);
    }
    let reach = (budget as f64 / probe.max(1) as f64).ln();
    let probe_needed = budget as f64 * (-reach * gap / widths).exp();
    Some((probe_needed.ceil() as usize).clamp(probe, budget) - probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::CurvePoint;

    /// A run whose eval curve is `f` at every 10 steps up to `probe`, one update of 1 s, 100
    /// tokens per update and 1,000 training tokens (an epoch is 10 updates).
    fn run(f: impl Fn(f64) -> f64, probe: usize) -> RunSummary {
        const RIPPLE: [f64; 5] = [0.0, 0.004, -0.004, 0.002, -0.002];
        let curve = (0..=probe)
            .step_by(10)
            .enumerate()
            .map(|(i, s)| CurvePoint {
                step: s,
                train_loss: None,
                eval_loss: Some(f(s as f64) * (1.0 + RIPPLE[i % 5])),
                elapsed_s: 0.0,
            })
            .collect();
        RunSummary {
            curve,
            median_step_s: 1.0,
            shape_key: "m".into(),
            finished: true,
            tokens_per_update: 100,
            train_tokens: 1000,
            beyond: Vec::new(),
        }
    }

    #[test]
    fn a_budget_in_any_unit_is_updates_never_below_the_probe() {
        let r = run(|_| 3.0, 60);
        assert_eq!(updates(Budget::Updates(750), &r, 1.0, 60), 750);
        assert_eq!(updates(Budget::Tokens(75_000.0), &r, 1.0, 60), 750);
        assert_eq!(updates(Budget::Hours(0.5), &r, 2.0, 60), 900);
        assert_eq!(updates(Budget::Epochs(3.0), &r, 1.0, 60), 60, "30 updates of epochs, but the probe ran 60");
        assert_eq!(updates(Budget::Epochs(100.0), &r, 1.0, 60), 1000);
    }

    /// The crossing the paper predicts: `early` leads after the 60-update probe, `late` (higher
    /// start, faster fall towards a lower asymptote) is forecast to lead by 750 updates.
    #[test]
    fn the_ranking_for_the_budget_follows_the_forecast_curves() {
        let early = |s: f64| 5.5 + 1.7 * (s + 1.0).powf(-0.5);
        let late = |s: f64| 4.8 + 5.0 * (s + 1.0).powf(-0.3);
        assert!(early(60.0) < late(60.0) && late(750.0) < early(750.0));
        let checkpoints = [Some(vec![run(early, 60)]), Some(vec![run(late, 60)])];
        let (target, s) = score(&checkpoints, Budget::Updates(750), 60, TargetSpec::MedianFinal);
        let target = target.unwrap();
        let (e, l) = (s[0].as_ref().unwrap(), s[1].as_ref().unwrap());
        assert_eq!((l.rank, e.rank), (1, 2), "{l:?}\n{e:?}");
        assert!(l.forecast && e.forecast && l.steps_forecast);
        let (le, ee) = (l.eval_loss.unwrap(), e.eval_loss.unwrap());
        assert!((le.mean - late(750.0)).abs() < 0.05 && (ee.mean - early(750.0)).abs() < 0.05, "{le:?} {ee:?}");
        assert!(le.lo <= le.mean && le.mean <= le.hi);
        // the median of the two losses at the budget: late reaches it within the budget, early does not
        assert!((target.value - (le.mean + ee.mean) / 2.0).abs() < 1e-12);
        assert!(l.steps_to_target.unwrap().mean <= 750.0 && e.steps_to_target.is_none());
    }

    #[test]
    fn a_budget_within_the_probe_is_measured_and_a_plateau_cannot_be_forecast_nor_ranked() {
        let falling = |s: f64| 2.0 + 3.0 * (-s / 30.0).exp();
        let (_, s) = score(&[Some(vec![run(falling, 60)])], Budget::Updates(60), 60, TargetSpec::Loss(2.5));
        let m = s[0].as_ref().unwrap();
        assert!(!m.forecast && m.eval_loss.unwrap().mean == run(falling, 60).curve.last().unwrap().eval_loss.unwrap());
        let (target, s) = score(
            &[Some(vec![run(falling, 60)]), Some(vec![run(|_| 4.0, 60)])],
            Budget::Updates(600),
            60,
            TargetSpec::Loss(2.5),
        );
        let plateau = s[1].as_ref().unwrap();
        assert_eq!((plateau.no_forecast, plateau.eval_loss), (Some("still in its search phase"), None));
        assert!(target.is_none(), "one snapshot that cannot be placed at the budget: no ranking there");
    }

    #[test]
    fn the_updates_to_settle_shrink_as_the_gap_grows() {
        let e = |mean: f64, half: f64| Estimate { mean, lo: mean - half, hi: mean + half, n: 1 };
        assert_eq!(updates_to_settle(&e(1.0, 0.1), &e(2.0, 0.1), 60, 750), None, "already separated");
        let near = updates_to_settle(&e(1.0, 0.5), &e(1.2, 0.5), 60, 750).unwrap();
        let far = updates_to_settle(&e(1.0, 0.5), &e(1.8, 0.5), 60, 750).unwrap();
        assert!(far < near && near <= 690, "{near} {far}");
        assert_eq!(updates_to_settle(&e(1.0, 0.5), &e(1.0, 0.5), 60, 750), Some(690));
    }
}
