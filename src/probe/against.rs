//! `probe --against REPORT.json`: how well each probe foretells what a scan measured, as a
//! Spearman rank correlation over the snapshots both know (positive: a higher probe value
//! goes with faster convergence). It must not change the probes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Probe, PROBES};
use crate::error::{Error, Result};
use crate::report::Status;
use crate::report::{CheckpointReport, Report};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Against {
    pub report: String,
    /// The measured speed correlated with: `convergence_per_device_hour` when every matched
    /// snapshot reached the target, else minus the scan's rank.
    pub measured: String,
    pub snapshots: usize,
    /// Spearman correlation of each probe with the measured speed (None: fewer than three
    /// snapshots, or a constant probe).
    pub spearman: BTreeMap<String, Option<f64>>,
    /// For a simulated series: each probe against minus the measured escape step (the
    /// search phase), the paper's quantity.
    pub spearman_escape: Option<BTreeMap<String, Option<f64>>>,
}

/// Correlates `probes` with the scan report at `path`, matching snapshots by name.
pub fn against(path: &Path, probes: &[Probe]) -> Result<Against> {
    let report = Report::read(path)?;
    let pairs: Vec<(&Probe, &CheckpointReport)> = probes
        .iter()
        .filter(|p| p.status == Status::Ok)
        .filter_map(|p| Some((p, report.checkpoints.iter().find(|c| c.name == p.name && c.status == Status::Ok)?)))
        .collect();
    if pairs.is_empty() {
        return Err(Error::input(path, "shares no measured snapshot with the probed folder"));
    }
    let reached = pairs.iter().all(|(_, c)| c.convergence_per_device_hour.is_some());
    let speed: Vec<Option<f64>> = pairs
        .iter()
        .map(|(_, c)| if reached { c.convergence_per_device_hour } else { c.rank.map(|r| -(r as f64)) })
        .collect();
    let escape: Vec<Option<f64>> = pairs.iter().map(|(_, c)| c.search_phase_steps.map(|s| -s)).collect();
    let table = |measured: &[Option<f64>]| -> BTreeMap<String, Option<f64>> {
        PROBES.iter().map(|&name| (name.to_string(), correlate(&pairs, name, measured))).collect()
    };
    Ok(Against {
        report: path.display().to_string(),
        measured: if reached { "convergence_per_device_hour".into() } else { "-rank".into() },
        snapshots: pairs.len(),
        spearman: table(&speed),
        spearman_escape: escape.iter().all(Option::is_some).then(|| table(&escape)),
    })
}

fn correlate(pairs: &[(&Probe, &CheckpointReport)], probe: &str, measured: &[Option<f64>]) -> Option<f64> {
    let (x, y): (Vec<f64>, Vec<f64>) =
        pairs.iter().zip(measured).filter_map(|((p, _), m)| Some((p.value(probe)?, (*m)?))).unzip();
    spearman(&x, &y)
}

/// Spearman's rank correlation (ties get their mean rank); None for fewer than three pairs or
/// a constant side.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let mean = (x.len() as f64 + 1.0) / 2.0;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mean) * (b - mean);
        sxx += (a - mean) * (a - mean);
        syy += (b - mean) * (b - mean);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// 1-based ranks, ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let j = (i..order.len()).take_while(|&j| v[order[j]] == v[order[i]]).last().unwrap_or(i);
        let shared = (i + j) as f64 / 2.0 + 1.0;
        (i..=j).for_each(|k| out[order[k]] = shared);
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_reversed_and_tied_data() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 25.0, 100.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(ranks(&[5.0, 1.0, 5.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]).unwrap();
        assert!((r - 0.8).abs() < 1e-12, "{r}");
    }
}
