//! The metrics of one fine-tuning run, each defined once here (README.md, "How scores are
//! computed", repeats the definitions). Pure functions of a loss curve and a step cost.

use super::curve_fit;
use crate::train::CurvePoint;

/// The eval points of a curve as (step, eval loss).
pub fn eval_points(curve: &[CurvePoint]) -> Vec<(f64, f64)> {
    curve.iter().filter_map(|p| Some((p.step as f64, p.eval_loss?))).collect()
}

pub fn initial_eval_loss(curve: &[CurvePoint]) -> Option<f64> {
    curve.iter().find_map(|p| p.eval_loss)
}

pub fn final_eval_loss(curve: &[CurvePoint]) -> Option<f64> {
    curve.iter().rev().find_map(|p| p.eval_loss)
}

/// Steps until the eval loss first reaches `target`: the first eval point at or below it,
/// linearly interpolated with the eval point before it (0 when step 0 is already there).
pub fn steps_to(points: &[(f64, f64)], target: f64) -> Option<f64> {
    let hit = points.iter().position(|&(_, loss)| loss <= target)?;
    if hit == 0 {
        return Some(points[0].0);
    }
    let ((s0, l0), (s1, l1)) = (points[hit - 1], points[hit]);
    Some(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))
}

/// Search-phase length: steps until the eval loss has fallen by 10% of its total drop
/// (initial minus lowest), the plateau arXiv 2602.02855 predicts for strong pre-training.
/// None when the loss never falls.
pub fn search_phase_steps(points: &[(f64, f64)]) -> Option<f64> {
    let l0 = points.first()?.1;
    let lowest = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let drop = l0 - lowest;
    (drop > 0.0).then(|| steps_to(points, l0 - 0.1 * drop)).flatten()
}

/// Area under the eval-loss curve (trapezoids over steps) divided by the steps it spans:
/// the mean eval loss over the run, comparable between budgets.
pub fn mean_eval_loss(points: &[(f64, f64)]) -> Option<f64> {
    let (first, last) = (points.first()?, points.last()?);
    if points.len() == 1 || last.0 <= first.0 {
        return Some(first.1);
    }
    let area: f64 = points.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum();
    Some(area / (last.0 - first.0))
}

/// Loss drop per device-hour over the whole budget: (initial - final) / hours of training.
pub fn loss_drop_per_hour(points: &[(f64, f64)], step_s: f64) -> Option<f64> {
    let (first, last) = (points.first()?, points.last()?);
    let hours = last.0 * step_s / 3600.0;
    (hours > 0.0).then(|| (first.1 - last.1) / hours)
}

/// Steps to the target of one run, with a 95% interval (zero-width when measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepsTo {
    pub steps: f64,
    pub lo: f64,
    pub hi: f64,
    /// Forecast by the curve model, not measured.
    pub extrapolated: bool,
}

/// Steps to `target`: measured when the curve reaches it; else forecast by the curve model
/// (`curve_fit`, flagged) when the fitted curve gets there within [`curve_fit::CAP`] times the
/// run's budget (its last eval step), never earlier than that step; else None.
pub fn steps_to_target(points: &[(f64, f64)], target: f64) -> Option<StepsTo> {
    if let Some(s) = steps_to(points, target) {
        return Some(StepsTo { steps: s, lo: s, hi: s, extrapolated: false });
    }
    let budget = points.last()?.0;
    let f = curve_fit::forecast(points)?.steps_to(target, curve_fit::CAP * budget)?;
    Some(StepsTo { steps: f.value.max(budget), lo: f.lo.max(budget), hi: f.hi.max(budget), extrapolated: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f64, f64)]) -> Vec<(f64, f64)> {
        v.to_vec()
    }

    #[test]
    fn steps_to_interpolates_between_eval_points() {
        let p = pts(&[(0.0, 4.0), (10.0, 3.0), (20.0, 2.0)]);
        assert_eq!(steps_to(&p, 2.5), Some(15.0));
        assert_eq!(steps_to(&p, 4.5), Some(0.0));
        assert_eq!(steps_to(&p, 1.0), None);
    }

    #[test]
    fn search_phase_is_ten_percent_of_the_drop() {
        // drop 4 -> 2 is 2; 10% of it is reached at loss 3.8, between steps 10 (3.9) and 20 (3.7)
        let p = pts(&[(0.0, 4.0), (10.0, 3.9), (20.0, 3.7), (30.0, 2.0)]);
        assert!((search_phase_steps(&p).unwrap() - 15.0).abs() < 1e-12);
        assert_eq!(search_phase_steps(&pts(&[(0.0, 1.0), (10.0, 1.2)])), None);
    }

    #[test]
    fn mean_eval_loss_is_the_normalised_area() {
        let p = pts(&[(0.0, 4.0), (10.0, 2.0), (20.0, 2.0)]);
        assert!((mean_eval_loss(&p).unwrap() - (30.0 + 20.0) / 20.0).abs() < 1e-12);
    }

    #[test]
    fn loss_drop_per_hour_over_the_budget() {
        let p = pts(&[(0.0, 4.0), (100.0, 3.0)]);
        // 100 steps of 36 s = 1 hour
        assert!((loss_drop_per_hour(&p, 36.0).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_missed_target_is_forecast_with_an_interval() {
        let expo: Vec<(f64, f64)> = (0..=10).map(|i| (i as f64 * 10.0, 2.0 * (-0.01 * i as f64 * 10.0).exp())).collect();
        let s = steps_to_target(&expo, 0.2).unwrap();
        assert!(s.extrapolated);
        assert!((s.steps - 100.0 * 10f64.ln()).abs() < 1e-3, "{s:?}");
        assert!(s.lo <= s.steps && s.steps <= s.hi);
        let measured = steps_to_target(&expo, 1.0).unwrap();
        assert_eq!((measured.extrapolated, measured.lo, measured.hi), (false, measured.steps, measured.steps));
    }

    #[test]
    fn a_flat_rising_or_levelling_tail_is_not_extrapolated() {
        let flat = pts(&[(0.0, 3.0), (10.0, 2.0), (20.0, 2.1), (30.0, 2.2), (40.0, 2.3)]);
        assert_eq!(steps_to_target(&flat, 1.0), None);
        assert!(!steps_to_target(&flat, 2.5).unwrap().extrapolated);
        // a curve that levels off at 2.0 never reaches 1.9; the old tail fit without an
        // asymptote (a power law in the step) would have promised it
        let levelling: Vec<(f64, f64)> = (0..=6).map(|i| (i as f64 * 10.0, 2.0 + (i as f64 * 10.0 + 1.0).powf(-0.5))).collect();
        assert_eq!(steps_to_target(&levelling, 1.9), None);
    }
}
