//! Gates a CI job can fail on, evaluated on the finished report. A failed gate makes the
//! scan exit 1 (README.md, "Exit codes") and is a failed test case in the JUnit export.

use serde::{Deserialize, Serialize};

use super::{CheckpointReport, Report};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gate {
    /// The flag that set it, e.g. "fail-if-last-slower".
    pub name: String,
    pub threshold: f64,
    /// The measured value compared with the threshold (None: not measurable, counts as failed).
    pub value: Option<f64>,
    pub passed: bool,
    pub message: String,
}

/// `--fail-if-last-slower X`: the most pre-trained snapshot may need at most X times the
/// winner's device-hours to target. A last snapshot that fails or never reaches the target
/// fails the gate.
pub fn last_slower(report: &Report, threshold: f64) -> Gate {
    let ok: Vec<&CheckpointReport> = report.checkpoints.iter().filter(|c| c.measured()).collect();
    let best = ok.iter().find(|c| c.rank == Some(1));
    let last = report.checkpoints.iter().max_by_key(|c| c.step);
    let value = match (best, last) {
        (Some(b), Some(l)) if b.name == l.name => Some(1.0),
        (Some(b), Some(l)) => ratio(b.device_hours_to_target, l.device_hours_to_target),
        _ => None,
    };
    let passed = value.is_some_and(|v| v <= threshold);
    let last_name = last.map_or("-", |c| c.name.as_str());
    let message = match value {
        Some(v) => format!("the most pre-trained snapshot ({last_name}) needs {v:.2}x the winner's time to target (limit {threshold})"),
        None => format!("the most pre-trained snapshot ({last_name}) does not reach the target"),
    };
    Gate { name: "fail-if-last-slower".into(), threshold, value, passed, message }
}

fn ratio(best: Option<f64>, last: Option<f64>) -> Option<f64> {
    match (best?, last?) {
        (b, l) if b > 0.0 => Some(l / b),
        (_, 0.0) => Some(1.0),
        _ => Some(f64::INFINITY),
    }
}
