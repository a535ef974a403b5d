//! What a rank and learning-rate sweep concludes, from each variant's curves and scores: the
//! smallest rank that reaches the target, the best rate, and whether the winner changes. Pure
//! functions, no I/O.

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

/// The rate with the fewest device-hours to target; when none reaches it, the one with the
/// lowest final eval loss. Entries are (rate, hours to target, final eval loss).
pub fn best_lr(entries: &[(f64, Option<f64>, Option<f64>)]) -> Option<f64> {
    let fastest = entries.iter().filter_map(|&(lr, h, _)| Some((lr, h?))).min_by(|a, b| a.1.total_cmp(&b.1));
    fastest.or_else(|| entries.iter().filter_map(|&(lr, _, l)| Some((lr, l?))).min_by(|a, b| a.1.total_cmp(&b.1))).map(|(lr, _)| lr)
}

/// "the winner is X at every rank (4, 8)" or "the winner changes with the rank: r=4: X, r=8: Y".
pub fn winner_sentence(what: &str, label: &str, winners: &[(String, Option<String>)]) -> (bool, String) {
    let named: Vec<&str> = winners.iter().filter_map(|(_, w)| w.as_deref()).collect();
    let changes = named.windows(2).any(|w| w[0] != w[1]);
    let values: Vec<&str> = winners.iter().map(|(v, _)| v.as_str()).collect();
    let sentence = match (changes, named.first()) {
        (_, None) => format!("{what}: no variant ranked a snapshot"),
        (false, Some(w)) => format!("{what}: the winner is {w} at every {label} ({})", values.join(", ")),
        (true, _) => {
            let each: Vec<String> = winners.iter().map(|(v, w)| format!("{v}: {}", w.as_deref().unwrap_or("-"))).collect();
            format!("{what}: the winner changes with the {label} ({})", each.join(", "))
        }
    };
    (changes, sentence)
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
        assert_eq!(best_lr(&[(1e-4, None, Some(2.0)), (3e-4, Some(0.2), Some(1.5)), (1e-3, Some(0.1), Some(1.7))]), Some(1e-3));
        assert_eq!(best_lr(&[(1e-4, None, Some(2.0)), (3e-4, None, Some(1.5))]), Some(3e-4));
        assert_eq!(best_lr(&[]), None);
    }

    #[test]
    fn winner_sentences() {
        let same = [("r=4".to_string(), Some("a".to_string())), ("r=8".to_string(), Some("a".to_string()))];
        assert_eq!(winner_sentence("rank", "rank", &same), (false, "rank: the winner is a at every rank (r=4, r=8)".to_string()));
        let diff = [("r=4".to_string(), Some("a".to_string())), ("r=8".to_string(), Some("b".to_string()))];
        let (changes, s) = winner_sentence("rank", "rank", &diff);
        assert!(changes && s.contains("changes") && s.contains("r=8: b"), "{s}");
    }
}
