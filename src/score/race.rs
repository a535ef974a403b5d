//! Racing (`--strategy race`): stop a snapshot early only when its forecast for the full
//! budget is worse than the leader's beyond its interval.
//!
//! Successive halving on the loss so far assumes that curves do not cross, and the effect this
//! tool measures is curves that cross: a strongly pre-trained snapshot may start higher on the
//! task, or sit on a plateau, and then overtake. So at each rung every live checkpoint's curve
//! so far is fitted with the curve model (`curve_fit`), which forecasts its time to the target
//! at the full budget with a 95% interval, and a checkpoint is stopped only when the whole of
//! that interval lies beyond the leader's. A checkpoint that cannot be forecast yet (too few
//! eval points, still in its search phase, or not yet bent: `curve_fit::trusted`) is judged
//! only by what is certain: with a given target loss that it has not reached, it gets there
//! after the rung if ever, and it stops when the leader got there before. The target at a rung is the scan's target rule applied to the forecasts: a
//! given loss as it is, the median final loss as the median of the runs' forecast losses at
//! the full budget, a drop target from their forecast drops. The last rung is the full
//! budget, so a survivor is measured exactly as `--strategy full` measures it. This module
//! decides; it does not train or write anything.

use super::curve_fit::{self, Interval};
use super::{metrics, Estimate, TargetSpec};
use crate::curve::median;

/// The update counts at which a race compares checkpoints: budget/9, budget/3 and 2 budget/3,
/// each rounded up to an eval step (a multiple of `eval_every`) and moved no earlier than the
/// step where a curve has [`curve_fit::TRUSTED_POINTS`] eval points, without repeats; then the
/// budget.
/// With evaluation only at the end (`eval_every` 0) there is one rung: the race is a full scan.
pub fn rungs(steps: usize, eval_every: usize) -> Vec<usize> {
    let mut out = Vec::new();
    if eval_every > 0 {
        let earliest = (curve_fit::TRUSTED_POINTS - 1) * eval_every;
        for (num, den) in [(1, 9), (1, 3), (2, 3)] {
            let rung = (steps * num).div_ceil(den).div_ceil(eval_every) * eval_every;
            let rung = rung.max(earliest);
            if rung < steps && out.last().is_none_or(|&last| rung > last) {
                out.push(rung);
            }
        }
    }
    out.push(steps);
    out
}

/// One live checkpoint at a rung: every seed's eval points so far, and the cost of a step.
pub struct Entrant<'a> {
    pub name: &'a str,
    pub seeds: Vec<Vec<(f64, f64)>>,
    /// Seconds per update of its shape.
    pub step_s: f64,
    /// Nothing is left to run (a simulated run that has converged): never stopped.
    pub finished: bool,
}

/// What a rung says of one live checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Continue,
    /// Stopped, with the reason in words.
    Stop(String),
}

/// The forecast of one checkpoint: steps to its target at the full budget (+inf: never), or
/// why it cannot be judged yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Outlook {
    Unjudged(&'static str),
    Steps(Estimate),
}

/// The verdicts for the live checkpoints at `rung` of a race over `budget` updates.
pub fn decide(entrants: &[Entrant], spec: TargetSpec, rung: usize, budget: usize, hours_unit: &str) -> Vec<Verdict> {
    let targets = targets_at_rung(entrants, spec, budget as f64);
    let given = matches!(spec, TargetSpec::Loss(_));
    let outlooks: Vec<Outlook> =
        entrants.iter().zip(&targets).map(|(e, &t)| outlook(&e.seeds, t, budget as f64, given)).collect();
    let hours = |i: usize| match &outlooks[i] {
        Outlook::Steps(s) => Some(s.scaled(entrants[i].step_s / 3600.0)),
        Outlook::Unjudged(_) => None,
    };
    let leader = (0..entrants.len())
        .filter_map(|i| Some((i, hours(i)?)))
        .filter(|(_, h)| h.mean.is_finite())
        .min_by(|a, b| a.1.mean.total_cmp(&b.1.mean));
    let Some((lead, lead_h)) = leader else { return vec![Verdict::Continue; entrants.len()] };
    (0..entrants.len())
        .map(|i| match hours(i) {
            Some(h) if i != lead && !entrants[i].finished && h.lo > lead_h.hi => {
                let says = |h: &Estimate| describe(h, hours_unit);
                Verdict::Stop(format!(
                    "at step {rung} its forecast time to eval loss {:.4} at the full budget is {}, all of it beyond the leader's {} ({})",
                    targets[i], says(&h), says(&lead_h), entrants[lead].name
                ))
            }
            _ => Verdict::Continue,
        })
        .collect()
}

/// "1.2e-4 [1.0e-4, 1.5e-4] device-hours", "never", or "at least 3.0e-4 device-hours".
fn describe(h: &Estimate, unit: &str) -> String {
    match (h.mean.is_finite(), h.lo.is_finite()) {
        (true, _) => format!("{:.3e} [{:.3e}, {:.3e}] {unit}", h.mean, h.lo, h.hi),
        (false, true) => format!("never within {}x the budget (at least {:.3e} {unit})", curve_fit::CAP, h.lo),
        (false, false) => format!("never within {}x the budget", curve_fit::CAP),
    }
}

/// Steps to `target` at the full budget over the seeds' curves so far: measured where a curve
/// got there (exact, as the ranking takes it: with one seed a measured step has no interval),
/// else forecast. A seed that cannot be forecast leaves the checkpoint unjudged, unless the
/// target is a given loss (`given`): then what is certain is that it gets there after its last
/// step, if ever ([last step, never)).
pub fn outlook(seeds: &[Vec<(f64, f64)>], target: f64, budget: f64, given: bool) -> Outlook {
    let cap = curve_fit::CAP * budget;
    let mut per = Vec::with_capacity(seeds.len());
    for points in seeds {
        if let Some(s) = metrics::steps_to(points, target) {
            per.push((s, s, s));
            continue;
        }
        let f = match curve_fit::trusted(points, budget) {
            Ok(f) => f,
            Err(_) if given => {
                per.push((f64::INFINITY, points.last().map_or(0.0, |p| p.0), f64::INFINITY));
                continue;
            }
            Err(why) => return Outlook::Unjudged(why),
        };
        let last = points.last().map_or(0.0, |p| p.0); // not reached by then: certain
        per.push(match f.steps_to(target, f64::INFINITY) {
            Some(Interval { value, lo, hi }) if value <= cap => {
                (value.max(last), lo.max(last), if hi >= cap { f64::INFINITY } else { hi.max(last) })
            }
            Some(Interval { lo, .. }) => (f64::INFINITY, lo.max(last), f64::INFINITY),
            None => (f64::INFINITY, f64::INFINITY, f64::INFINITY),
        });
    }
    Estimate::of_intervals(&per).map_or(Outlook::Unjudged("no run"), Outlook::Steps)
}

/// Each checkpoint's target at this rung: the scan's rule applied to the forecast curves.
fn targets_at_rung(entrants: &[Entrant], spec: TargetSpec, budget: f64) -> Vec<f64> {
    let finals = |e: &Entrant| e.seeds.iter().filter_map(|p| forecast_final(p, budget)).collect::<Vec<f64>>();
    match spec {
        TargetSpec::Loss(x) => vec![x; entrants.len()],
        TargetSpec::MedianFinal => vec![median(&entrants.iter().flat_map(finals).collect::<Vec<_>>()); entrants.len()],
        TargetSpec::Drop(f) => {
            let initial = |e: &Entrant| {
                Estimate::of(&e.seeds.iter().filter_map(|p| p.first().map(|x| x.1)).collect::<Vec<_>>())
                    .map_or(f64::NAN, |x| x.mean)
            };
            let drop = entrants
                .iter()
                .filter_map(|e| Estimate::of(&finals(e)).map(|fin| initial(e) - fin.mean))
                .fold(0.0, f64::max);
            entrants.iter().map(|e| initial(e) - f * drop).collect()
        }
    }
}

/// The eval loss a curve is forecast to have at the end of the budget (its last point when it
/// is there, or when it cannot be forecast).
fn forecast_final(points: &[(f64, f64)], budget: f64) -> Option<f64> {
    let &(step, loss) = points.last()?;
    if step >= budget {
        return Some(loss);
    }
    Some(curve_fit::forecast(points).map_or(loss, |f| f.fit.loss(budget)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_wait_for_enough_points() {
        assert_eq!(rungs(60, 10), [40, 60]);
        assert_eq!(rungs(90, 10), [40, 60, 90]);
        assert_eq!(rungs(120, 10), [40, 80, 120]);
        assert_eq!(rungs(18, 2), [8, 12, 18]);
        assert_eq!(rungs(900, 1), [100, 300, 600, 900]);
        assert_eq!(rungs(40, 10), [40]);
        assert_eq!(rungs(60, 0), [60]);
    }

    /// Eval points every 10 steps up to `upto`, with a fixed ripple of +-1% (measured curves
    /// are never exact; an exact curve would give a zero-width forecast).
    fn curve(f: impl Fn(f64) -> f64, upto: usize) -> Vec<(f64, f64)> {
        const RIPPLE: [f64; 5] = [0.0, 0.01, -0.01, 0.005, -0.005];
        (0..=upto).step_by(10).enumerate().map(|(i, s)| (s as f64, f(s as f64) * (1.0 + RIPPLE[i % 5]))).collect()
    }

    fn entrant<'a>(name: &'a str, f: impl Fn(f64) -> f64, upto: usize) -> Entrant<'a> {
        Entrant { name, seeds: vec![curve(f, upto)], step_s: 1.0, finished: false }
    }

    /// Curves that cross: `late` starts higher (14 against 7.2) and is still behind at the
    /// rung, but falls faster and reaches the target 6.0 first (near step 104), while `early`
    /// levels off at 6.3 and `flat` at 6.6. Successive halving on the loss so far would stop
    /// `late`; the forecast keeps it and stops `flat`.
    #[test]
    fn a_curve_that_will_overtake_is_not_stopped() {
        let early = |s: f64| 6.3 + 0.9 * (s + 1.0).powf(-0.3);
        let late = |s: f64| 3.0 + 11.0 * (s + 1.0).powf(-0.28);
        let flat = |s: f64| 6.6 + 0.6 * (s + 1.0).powf(-0.5);
        assert!(late(40.0) > early(40.0) && late(40.0) > flat(40.0), "late is still behind at the rung");
        let field = [entrant("early", early, 40), entrant("late", late, 40), entrant("flat", flat, 40)];
        let v = decide(&field, TargetSpec::Loss(6.0), 40, 120, "device-hours");
        assert_eq!(v[1], Verdict::Continue);
        let Verdict::Stop(why) = &v[2] else { panic!("flat does not reach 6.0: {v:?}") };
        assert!(why.contains("at step 40") && why.contains("(late)"), "{why}");
        // early levels off at 6.3 too; whether five noisy points of its slow fall rule out an
        // arrival within late's interval depends on the ripple: it may be kept, and if stopped,
        // then for late
        assert!(
            matches!(&v[0], Verdict::Continue) || matches!(&v[0], Verdict::Stop(why) if why.contains("(late)")),
            "{v:?}"
        );
    }

    /// A run on its plateau cannot be forecast: with the default target (estimated from the
    /// forecasts) it is never stopped; with a given target it is stopped only on a certainty:
    /// the leader got there before the rung, and it has not.
    #[test]
    fn a_run_that_cannot_be_forecast_is_judged_only_by_what_is_certain() {
        let fast = |s: f64| 1.0 + 3.0 * (-s / 10.0).exp();
        let plateau = |_s: f64| 4.0;
        let field = || [entrant("fast", fast, 40), entrant("plateau", plateau, 40)];
        assert_eq!(
            decide(&field(), TargetSpec::MedianFinal, 40, 120, "device-hours"),
            [Verdict::Continue, Verdict::Continue]
        );
        let v = decide(&field(), TargetSpec::Loss(2.0), 40, 120, "device-hours");
        let Verdict::Stop(why) = &v[1] else { panic!("{v:?}") };
        assert!(why.contains("at least 1.111e-2 device-hours"), "not before step 40: {why}");
        // a target the leader has not reached either: nothing is certain
        assert_eq!(decide(&field(), TargetSpec::Loss(1.02), 40, 120, "device-hours")[1], Verdict::Continue);
        assert_eq!(outlook(&[curve(plateau, 40)], 2.0, 120.0, false), Outlook::Unjudged("still in its search phase"));
        assert_eq!(outlook(&[curve(fast, 30)], 0.5, 120.0, false), Outlook::Unjudged("too few eval points"));
    }

    #[test]
    fn overlapping_forecasts_continue_and_finished_runs_are_never_stopped() {
        let a = |s: f64| 2.0 + 3.0 * (-s / 15.0).exp();
        let b = |s: f64| 2.0 + 3.0 * (-s / 15.5).exp();
        let high = |s: f64| 2.3 + 2.7 * (-s / 15.0).exp(); // levels off above the target
        let v = decide(&[entrant("a", a, 40), entrant("b", b, 40)], TargetSpec::Loss(2.1), 40, 120, "device-hours");
        assert_eq!(v, [Verdict::Continue, Verdict::Continue], "nearly equal curves are not told apart");
        let v =
            decide(&[entrant("a", a, 40), entrant("high", high, 40)], TargetSpec::Loss(2.2), 40, 120, "device-hours");
        assert!(matches!(v[1], Verdict::Stop(_)), "{v:?}");
        let mut done = entrant("high", high, 40);
        done.finished = true;
        assert_eq!(
            decide(&[entrant("a", a, 40), done], TargetSpec::Loss(2.2), 40, 120, "device-hours")[1],
            Verdict::Continue
        );
    }

    #[test]
    fn the_default_target_at_a_rung_is_the_median_forecast_final_loss() {
        let (a, b) = (|s: f64| 2.0 + 3.0 * (s + 1.0).powf(-0.5), |s: f64| 3.0 + 3.0 * (s + 1.0).powf(-0.5));
        let field = [entrant("a", a, 40), entrant("b", b, 40)];
        let t = targets_at_rung(&field, TargetSpec::MedianFinal, 120.0);
        let expected = (a(120.0) + b(120.0)) / 2.0;
        assert!((t[0] - expected).abs() < 0.05 && t[0] == t[1], "{t:?} vs {expected}");
    }
}
