//! Gates a CI job can fail on, evaluated on the finished report. A failed gate makes the
//! scan exit 1 (docs/usage.md, "Exit codes") and is a failed test case in the JUnit export.

use super::headline::Pair;
use super::standing::Standing;
use super::{Gate, Report};

/// `--fail-if-last-slower X`: the most pre-trained snapshot may need at most X times the
/// device-hours to target of the best snapshot to fine-tune (the pair the headline compares,
/// `headline::Pair`). It fails when the ratio of their mean hours exceeds X and, with several
/// seeds, only when that holds beyond seed noise: the low end of the most pre-trained
/// snapshot's 95% interval exceeds X times the high end of the best one's. (So a failed gate
/// and a headline saying "not significantly faster" never meet: X >= 1, and a significant
/// excess over X times the best is a significant excess over the best.) A most pre-trained
/// snapshot that failed, was stopped by a race, or does not reach the target fails the gate.
pub fn last_slower(report: &Report, threshold: f64) -> Gate {
    let Pair { best, last } = Pair::of(report);
    let last_name = last.as_ref().map_or("-", |s| s.c.name.as_str());
    let (value, passed, message) = match (&best, &last) {
        (_, Some(l)) if l.at_target_before_training => (
            Some(0.0),
            true,
            format!("the most pre-trained snapshot ({last_name}) is at the target before fine-tuning"),
        ),
        (Some(b), Some(l)) if b.c.name == l.c.name => {
            (Some(1.0), true, format!("the most pre-trained snapshot ({last_name}) is the best to fine-tune"))
        }
        (Some(b), Some(l)) => judge(b, l, threshold),
        _ => (None, false, format!("the most pre-trained snapshot ({last_name}) has no time to target to compare")),
    };
    Gate { name: "fail-if-last-slower".into(), threshold, value, passed, message }
}

/// (ratio of mean hours, passed, message) of the most pre-trained snapshot `l` against the best `b`.
fn judge(b: &Standing, l: &Standing, x: f64) -> (Option<f64>, bool, String) {
    let name = &l.c.name;
    if !l.c.measured() {
        return (None, false, format!("the most pre-trained snapshot ({name}) {}", l.c.status));
    }
    if let Some(stop) = &l.c.stopped {
        return (None, false, format!("the most pre-trained snapshot ({name}) was stopped by the race at rung {}: its forecast lay beyond the leader's", stop.rung));
    }
    let (Some(bh), Some(lh)) = (b.hours, l.hours) else {
        let within = if l.for_budget { "within the budget (forecast)" } else { "within the budget" };
        return (None, false, format!("the most pre-trained snapshot ({name}) does not reach the target {within}"));
    };
    let ratio = if bh > 0.0 {
        lh / bh
    } else if lh == 0.0 {
        1.0
    } else {
        f64::INFINITY
    };
    let forecast = if l.forecast || b.forecast { " (forecast by the curve model)" } else { "" };
    let said = format!("the most pre-trained snapshot ({name}) needs {ratio:.2}x the time to target of the best one ({}){forecast} (limit {x})", b.c.name);
    if ratio <= x {
        return (Some(ratio), true, said);
    }
    match evidence_beyond(b, l, x) {
        Some(true) => (Some(ratio), false, format!("{said}, beyond the limit at 95%")),
        Some(false) => (Some(ratio), true, format!("{said}, but not beyond the limit at 95% (the intervals allow it)")),
        None => (Some(ratio), false, format!("{said}; with one seed this is not tested against seed noise")),
    }
}

/// With intervals: whether the low end of `l`'s hours exceeds `x` times the high end of `b`'s.
/// None when neither has an interval (one seed, measured).
fn evidence_beyond(b: &Standing, l: &Standing, x: f64) -> Option<bool> {
    if b.hours_ci.is_none() && l.hours_ci.is_none() && (b.c.seeds_ok < 2 || l.c.seeds_ok < 2) {
        return None;
    }
    let b_hi = b.hours_ci.map_or(b.hours?, |i| i[1]);
    let l_lo = l.hours_ci.map_or(l.hours?, |i| i[0]);
    Some(l_lo > x * b_hi)
}
