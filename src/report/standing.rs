//! What the verdicts (headline, best line, gates) read of a checkpoint: its place in the
//! report's ranking and its time to the target. When the report ranks for a budget longer
//! than the probe these are the forecast ones (`forecast`); otherwise the probe's own. Every
//! verdict reads them through here, so a verdict can never mix the probe's numbers with the
//! budget's ranking. It restates the report; it computes nothing new.

use super::{CheckpointReport, Report};

/// A checkpoint as the report's ranking sees it.
pub struct Standing<'a> {
    pub c: &'a CheckpointReport,
    pub rank: Option<usize>,
    pub tied_with_best: bool,
    pub steps: Option<f64>,
    pub hours: Option<f64>,
    /// The 95% interval of `hours` (several seeds, or a forecast).
    pub hours_ci: Option<[f64; 2]>,
    pub target_loss: Option<f64>,
    /// The time to target is forecast by the curve model, not measured.
    pub forecast: bool,
    /// Its eval loss before fine-tuning is at or below the target.
    pub at_target_before_training: bool,
    /// These are the budget's figures (`c.forecast`), not the probe's.
    pub for_budget: bool,
    /// What the ranking orders by, as [mean, low, high] (low = high without an interval): the
    /// device-hours to target for the probe, the eval loss at the budget for a budget.
    pub key: Option<[f64; 3]>,
}

impl Report {
    /// The ranking is the forecast one for a budget longer than the probe.
    pub fn ranks_for_budget(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.forecast)
    }

    /// `c` as the report's ranking sees it.
    pub fn standing<'a>(&self, c: &'a CheckpointReport) -> Standing<'a> {
        match c.forecast.as_ref().filter(|_| self.ranks_for_budget()) {
            Some(f) => Standing {
                c,
                rank: f.rank,
                tied_with_best: f.tied_with_best,
                steps: f.steps_to_target,
                hours: f.device_hours_to_target,
                hours_ci: f.device_hours_to_target_ci95,
                target_loss: f.target_loss,
                forecast: f.steps_forecast,
                at_target_before_training: matches!((c.initial_eval_loss, f.target_loss), (Some(i), Some(t)) if i <= t),
                for_budget: true,
                key: f.eval_loss.map(|l| f.eval_loss_ci95.map_or([l, l, l], |[lo, hi]| [l, lo, hi])),
            },
            None => Standing {
                c,
                rank: c.rank,
                tied_with_best: c.tied_with_best,
                steps: c.steps_to_target,
                hours: c.device_hours_to_target,
                hours_ci: c.ci95.get("device_hours_to_target").copied(),
                target_loss: c.target_loss,
                forecast: c.extrapolated,
                at_target_before_training: c.at_target_before_training,
                for_budget: false,
                key: c
                    .device_hours_to_target
                    .map(|h| c.ci95.get("device_hours_to_target").map_or([h, h, h], |[lo, hi]| [h, *lo, *hi])),
            },
        }
    }

    /// The ranked checkpoints, best first, as standings.
    pub fn ranked(&self) -> Vec<Standing<'_>> {
        self.ranking
            .iter()
            .filter_map(|n| self.checkpoints.iter().find(|c| &c.name == n))
            .map(|c| self.standing(c))
            .collect()
    }
}
