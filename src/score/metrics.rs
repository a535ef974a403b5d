//! The metrics of one fine-tuning run, each defined once here (docs/scoring.md repeats the
//! definitions). Pure functions of a loss curve and a step cost.

use crate::curve::CurvePoint;

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

/// The eval loss at `step`, linearly interpolated between the eval points around it (None
/// outside the curve).
pub fn loss_at(points: &[(f64, f64)], step: f64) -> Option<f64> {
    let after = points.iter().position(|p| p.0 >= step)?;
    if after == 0 || points[after].0 == step {
        return (points[after].0 == step).then_some(points[after].1);
    }
    let ((s0, l0), (s1, l1)) = (points[after - 1], points[after]);
    Some(l0 + (l1 - l0) * (step - s0) / (s1 - s0))
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
    fn loss_at_interpolates_within_the_curve() {
        let p = pts(&[(0.0, 4.0), (10.0, 3.0), (20.0, 2.0)]);
        assert_eq!(
            (loss_at(&p, 15.0), loss_at(&p, 20.0), loss_at(&p, 0.0), loss_at(&p, 25.0)),
            (Some(2.5), Some(2.0), Some(4.0), None)
        );
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
}
