//! What a rank and learning-rate sweep concludes, from each variant's curves and scores: the
//! smallest rank that reaches the target and the best rate. (Whether the winner changes is
//! judged on the variants' reports, in `runner::sweep`.) Pure functions, no I/O.

use super::metrics;

/// The smallest rank whose eval curve ([step, loss] points) reaches `target` within its budget
/// (measured, not extrapolated); None when no rank does.
pub fn smallest_rank(curves: &[(usize, &[[f64; 2]])], target: f64) -> Option<usize> {
    curves.iter().filter(|(_, c)| reaches(c, target)).map(|(r, _)| *r).min()
}

/// The curve reaches `target` between its first and last eval point.
pub fn reaches(curve: &[[f64; 2]], target: f64) -> bool {
    let points: Vec<(f64, f64)> = curve.iter().map(|p| (p[0], p[1])).collect();
    metrics::steps_to(&points, target).is_some()
}

/// The rate with the fewest device-hours to target, equal hours broken by the lower final eval
/// loss (as the ranking breaks them); when none reaches the target, the one with the lowest
/// final eval loss. Entries are (rate, hours to target, final eval loss).
pub fn best_lr(entries: &[(f64, Option<f64>, Option<f64>)]) -> Option<f64> {
    let key = |&(_, h, l): &(f64, Option<f64>, Option<f64>)| (h.unwrap_or(f64::INFINITY), l.unwrap_or(f64::INFINITY));
    entries
        .iter()
        .filter(|e| e.1.is_some() || e.2.is_some())
        .min_by(|a, b| key(a).0.total_cmp(&key(b).0).then(key(a).1.total_cmp(&key(b).1)))
        .map(|e| e.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-made curves: r = 4 plateaus above the target, r = 8 crosses it between eval points,
    /// r = 16 crosses it earlier, r = 32 only at a point beyond its budget would (never here).
    #[test]
    fn smallest_rank_that_reaches_the_target() {
        let r4: &[[f64; 2]] = &[[0.0, 3.0], [10.0, 2.6], [20.0, 2.5], [30.0, 2.45]];
        let r8: &[[f64; 2]] = &[[0.0, 3.0], [10.0, 2.5], [20.0, 2.1], [30.0, 1.9]];
        let r16: &[[f64; 2]] = &[[0.0, 3.0], [10.0, 1.95], [20.0, 1.7], [30.0, 1.6]];
        let r32: &[[f64; 2]] = &[[0.0, 3.0], [10.0, 2.9], [20.0, 2.8], [30.0, 2.7]];
        let all = [(4, r4), (8, r8), (16, r16), (32, r32)];
        assert_eq!(smallest_rank(&all, 2.0), Some(8));
        assert_eq!(smallest_rank(&all, 1.65), Some(16));
        assert_eq!(smallest_rank(&all, 2.46), Some(4), "r = 4 reaches 2.46 by step 30");
        assert_eq!(smallest_rank(&all, 1.0), None, "nothing reaches 1.0 within the budget");
        assert_eq!(smallest_rank(&[(32, r32), (8, r8)], 2.0), Some(8), "order of the list does not matter");
    }

    #[test]
    fn best_lr_prefers_time_then_loss() {
        assert_eq!(
            best_lr(&[(1e-4, None, Some(2.0)), (3e-4, Some(0.2), Some(1.5)), (1e-3, Some(0.1), Some(1.7))]),
            Some(1e-3)
        );
        assert_eq!(best_lr(&[(1e-4, None, Some(2.0)), (3e-4, None, Some(1.5))]), Some(3e-4));
        assert_eq!(best_lr(&[]), None);
        // equal hours (both at the target from the start): the lower final loss
        assert_eq!(best_lr(&[(1e-2, Some(0.0), Some(4.5)), (3e-3, Some(0.0), Some(4.4))]), Some(3e-3));
    }
}
