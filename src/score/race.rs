//! Racing (`--strategy race`): successive halving over eval rungs.
//!
//! Every live checkpoint trains to the next rung; there the scorer ranks them on their curves
//! so far (the same target rule, measured to the rung), and only the best third (rounded
//! down, at least one, as in Hyperband) go on, plus
//! any whose confidence interval overlaps the leader's: a checkpoint is never stopped while
//! the seeds cannot tell it from the best. The last rung is the full budget, so survivors are
//! measured exactly as `--strategy full` measures them. This module decides; it does not
//! train or write anything.

use super::Score;

/// Each rung keeps the best floor(n / ETA) of n checkpoints, at least one (Hyperband's usual
/// reduction factor).
pub const ETA: usize = 3;

/// Rungs per race, the last being the full budget: budget/9, budget/3, budget.
const RUNGS: u32 = 3;

/// The update counts at which a race compares checkpoints: `steps / ETA^k` for k = 2, 1, 0,
/// each rounded up to an eval step (a multiple of `eval_every`), without repeats. With
/// evaluation only at the end (`eval_every` 0) there is one rung: the race is a full scan.
pub fn rungs(steps: usize, eval_every: usize) -> Vec<usize> {
    let mut out = Vec::new();
    if eval_every > 0 {
        for k in (1..RUNGS).rev() {
            let raw = steps.div_ceil(ETA.pow(k));
            let rung = raw.div_ceil(eval_every) * eval_every;
            if rung < steps && out.last().is_none_or(|&last| rung > last) {
                out.push(rung);
            }
        }
    }
    out.push(steps);
    out
}

/// What happens to one live checkpoint after a rung.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Continue,
    /// Stopped, with the reason in words.
    Stop(String),
}

/// The verdicts for the live checkpoints' scores at a rung (scored among themselves; None for
/// one without a score, which cannot be judged and so continues).
pub fn decide(scores: &[Option<Score>], rung: usize, hours_unit: &str) -> Vec<Verdict> {
    let live = scores.iter().filter(|s| s.is_some()).count();
    let keep = (live / ETA).max(1);
    let leader = scores.iter().flatten().find(|s| s.rank == 1);
    scores
        .iter()
        .map(|s| match s {
            Some(s) if s.rank > keep && !s.tied_with_best => Verdict::Stop(reason(s, leader, rung, live, keep, hours_unit)),
            _ => Verdict::Continue,
        })
        .collect()
}

/// "rank 4 of 6 at step 10 (keeping the best 2): 0.0031 device-hours to eval loss 3.2101 against the leader's 0.0012".
fn reason(s: &Score, leader: Option<&Score>, rung: usize, live: usize, keep: usize, hours_unit: &str) -> String {
    let hours = |s: &Score| match &s.device_hours_to_target {
        Some(h) => format!("{:.3e} {hours_unit}{}", h.mean, if s.extrapolated { " (extrapolated)" } else { "" }),
        None => "never".to_string(),
    };
    let versus = leader.map(|l| format!(" against the leader's {}", hours(l))).unwrap_or_default();
    format!("rank {} of {live} at step {rung} (keeping the best {keep}): {} to eval loss {:.4}{versus}", s.rank, hours(s), s.target_loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::Estimate;

    #[test]
    fn rungs_are_thirds_of_the_budget_on_eval_steps() {
        assert_eq!(rungs(60, 10), [10, 20, 60]);
        assert_eq!(rungs(90, 10), [10, 30, 90]);
        assert_eq!(rungs(100, 5), [15, 35, 100]);
        assert_eq!(rungs(20, 10), [10, 20]);
        assert_eq!(rungs(10, 10), [10]);
        assert_eq!(rungs(60, 0), [60]);
    }

    fn score(rank: usize, hours: f64, tied: bool) -> Option<Score> {
        let e = Estimate { mean: hours, lo: hours, hi: hours, n: 1 };
        Some(Score {
            target_loss: 2.0,
            steps_to_target: Some(e),
            extrapolated: false,
            device_hours_to_target: Some(e),
            convergence_per_device_hour: Some(1.0 / hours),
            initial_eval_loss: None,
            final_eval_loss: None,
            mean_eval_loss: None,
            search_phase_steps: None,
            loss_drop_per_device_hour: None,
            rank,
            tied_with_best: tied,
        })
    }

    #[test]
    fn always_keeps_the_leader() {
        let v = decide(&[score(2, 2.0, false), score(1, 1.0, false)], 10, "device-hours");
        assert_eq!(v[1], Verdict::Continue);
        assert!(matches!(v[0], Verdict::Stop(_)));
    }

    #[test]
    fn keeps_the_best_third_and_every_tie() {
        let scores = [score(3, 3.0, false), score(1, 1.0, false), None, score(2, 2.0, false), score(5, 5.0, true), score(4, 4.0, false)];
        let v = decide(&scores, 10, "device-hours");
        let kept: Vec<bool> = v.iter().map(|v| *v == Verdict::Continue).collect();
        // 5 scored: keep floor(5/3) = 1 (rank 1), the tie, and the unscored one
        assert_eq!(kept, [false, true, true, false, true, false]);
        let Verdict::Stop(why) = &v[0] else { unreachable!() };
        assert!(why.starts_with("rank 3 of 5 at step 10 (keeping the best 1): 3.000e0 device-hours"), "{why}");
        assert!(why.ends_with("against the leader's 1.000e0 device-hours"), "{why}");
    }
}
