//! The JUnit XML export (`--junit FILE`) for CI dashboards: the scan is a test suite, each
//! checkpoint a test case, and a failed checkpoint a failure with its reason.

use super::{CheckpointReport, Exporter, Report, Status};
use crate::error::Result;

pub struct Junit;

impl Exporter for Junit {
    fn render(&self, report: &Report) -> Result<Vec<u8>> {
        let n = report.checkpoints.len() + report.gates.len();
        let failures = report.checkpoints.iter().filter(|c| !c.measured()).count()
            + report.gates.iter().filter(|g| !g.passed).count();
        let time: f64 = report.checkpoints.iter().map(training_seconds).sum();
        let dir = report.settings.get("dir").and_then(|d| d.as_str()).unwrap_or("");
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str(&format!(
            "<testsuites name=\"plasticity\" tests=\"{n}\" failures=\"{failures}\" time=\"{time:.3}\">\n"
        ));
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" time=\"{time:.3}\">\n",
            esc(&format!("plasticity scan {dir}"))
        ));
        out.push_str(&properties(report));
        for c in &report.checkpoints {
            out.push_str(&testcase(c));
        }
        for g in &report.gates {
            out.push_str(&gate_case(g));
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        Ok(out.into_bytes())
    }
}

fn properties(report: &Report) -> String {
    let mut props = vec![("tool_version", report.tool.version.clone()), ("hours_unit", report.hours_unit.to_string())];
    if let Some(t) = report.target_loss {
        props.push(("target_loss", t.to_string()));
    }
    if let Some(best) = report.ranking.first() {
        props.push(("best", best.clone()));
    }
    let lines: String =
        props.iter().map(|(k, v)| format!("      <property name=\"{k}\" value=\"{}\"/>\n", esc(v))).collect();
    format!("    <properties>\n{lines}    </properties>\n")
}

fn testcase(c: &CheckpointReport) -> String {
    let head = format!(
        "    <testcase classname=\"plasticity.scan\" name=\"{}\" time=\"{:.3}\"",
        esc(&c.name),
        training_seconds(c)
    );
    match c.status {
        Status::Ok => {
            let rank = c.rank.map_or("unranked".to_string(), |r| format!("rank {r}"));
            let steps =
                c.steps_to_target.map_or("target not reached".to_string(), |s| format!("{s:.1} steps to target"));
            format!("{head}>\n      <system-out>{}</system-out>\n    </testcase>\n", esc(&format!("{rank}; {steps}")))
        }
        Status::Stopped => {
            let why = c
                .stopped
                .as_ref()
                .map_or(String::new(), |s| format!("stopped by the race at step {}: {}", s.at_step, s.reason));
            format!("{head}>\n      <skipped message=\"{}\"/>\n    </testcase>\n", esc(&why))
        }
        status @ (Status::Failed | Status::Diverged) => {
            let msg = c.error.clone().unwrap_or_default();
            format!(
                "{head}>\n      <failure type=\"{}\" message=\"{}\">{}</failure>\n    </testcase>\n",
                esc(status.as_str()),
                esc(&msg),
                esc(&msg)
            )
        }
    }
}

fn gate_case(g: &super::Gate) -> String {
    let head = format!("    <testcase classname=\"plasticity.gate\" name=\"{}\" time=\"0\"", esc(&g.name));
    if g.passed {
        format!("{head}>\n      <system-out>{}</system-out>\n    </testcase>\n", esc(&g.message))
    } else {
        format!(
            "{head}>\n      <failure type=\"gate\" message=\"{}\">{}</failure>\n    </testcase>\n",
            esc(&g.message),
            esc(&g.message)
        )
    }
}

/// Training time of a checkpoint: the last curve point's cumulative seconds.
fn training_seconds(c: &CheckpointReport) -> f64 {
    c.curve.last().map_or(0.0, |p| p.elapsed_s)
}

/// XML attribute and text escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}
