//! `plasticity merge`: one report from the partial reports of a partitioned scan
//! (`scan --partition K/N`). The parts must come from the same tool version and the same
//! settings (partition and thread count apart), be complete, and hold disjoint checkpoints;
//! their runs are scored together, so target, ranks and intervals are those of one full scan.
//! It trains nothing and must not open checkpoints.

use std::path::PathBuf;

use super::assemble::{assemble, Context};
use super::{resume, CheckpointResult};
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};
use crate::report::{CheckpointReport, Report};
use crate::report::{ScanStatus, Status};
use crate::score::TargetSpec;

/// Settings that may differ between the parts of one scan.
const PER_PART: [&str; 3] = ["threads", "partition", "devices"];

/// The merged report and warnings worth printing (missing partitions, mixed devices).
pub fn merge(parts: Vec<(PathBuf, Report)>) -> Result<(Report, Vec<String>)> {
    let (first_path, first) = parts.first().ok_or_else(|| Error::flag("merge", "no reports given"))?;
    for (path, part) in &parts {
        check_compatible((first_path, first), (path, part))?;
    }
    let warnings = [missing_partitions(&parts), mixed_devices(&parts)].into_iter().flatten().collect();
    let mut settings = first.settings.clone();
    if let Some(s) = settings.as_object_mut() {
        s.insert("partition".into(), serde_json::Value::Null); // the merge covers every part
    }
    let ctx = Context {
        target: target_of(&settings),
        price_per_hour: settings["price_per_device_hour"].as_f64(),
        fail_if_last_slower: settings["fail_if_last_slower"].as_f64(),
        device: first.device.clone(),
        hours_unit: first.hours_unit,
        race: None,
        budget: serde_json::from_value(settings["budget"].clone()).ok(),
        probe_steps: settings["train"]["steps"].as_u64().unwrap_or(0) as usize,
        settle: None, // --until-settled cannot be partitioned
        settings,
    };
    let results = results_of(&parts)?;
    Ok((assemble(&results, &ctx, ScanStatus::Complete), warnings))
}

/// Same tool, complete, not a race, same settings as the first part.
fn check_compatible((first_path, first): (&PathBuf, &Report), (path, part): (&PathBuf, &Report)) -> Result<()> {
    if part.tool.version != first.tool.version {
        return Err(Error::input(
            path,
            format!(
                "was written by plasticity {}, but {} by plasticity {}",
                part.tool.version,
                first_path.display(),
                first.tool.version
            ),
        ));
    }
    if part.status != ScanStatus::Complete {
        return Err(Error::input(
            path,
            format!("is {}, not complete: finish its scan with --resume first", part.status),
        ));
    }
    if part.race.is_some() {
        return Err(Error::input(path, "is a race (--strategy race), which cannot be partitioned"));
    }
    let changed = resume::differing(&first.settings, &part.settings, &PER_PART);
    if !changed.is_empty() {
        return Err(Error::input(
            path,
            format!("settings differ from {}: {}", first_path.display(), changed.join(", ")),
        ));
    }
    Ok(())
}

/// The target a full scan with these settings uses (None: the series default).
fn target_of(settings: &serde_json::Value) -> Option<TargetSpec> {
    match (settings["target_loss"].as_f64(), settings["target_drop"].as_f64()) {
        (Some(loss), _) => Some(TargetSpec::Loss(loss)),
        (None, Some(drop)) => Some(TargetSpec::Drop(drop)),
        (None, None) => None,
    }
}

/// Every part's checkpoints in step order, rebuilt as results; a name in two parts is refused.
fn results_of(parts: &[(PathBuf, Report)]) -> Result<Vec<CheckpointResult>> {
    let mut all: Vec<(&PathBuf, &CheckpointReport)> =
        parts.iter().flat_map(|(p, r)| r.checkpoints.iter().map(move |c| (p, c))).collect();
    all.sort_by(|a, b| (a.1.step, &a.1.name).cmp(&(b.1.step, &b.1.name)));
    if let Some(w) = all.windows(2).find(|w| w[0].1.name == w[1].1.name) {
        return Err(Error::input(
            w[1].0,
            format!("checkpoint {} is also in {}: the parts overlap", w[1].1.name, w[0].0.display()),
        ));
    }
    let settings = &parts[0].1.settings;
    let (seed, data_seed) = (settings["seed"].as_u64().unwrap_or(0), settings["data_seed"].as_u64().unwrap_or(0));
    let mut results: Vec<CheckpointResult> = all.into_iter().map(|(_, c)| result_of(c, seed, data_seed)).collect();
    // the series' pre-training log: the longest any part carries (scored as a full scan does)
    let longest = parts.iter().filter_map(|(_, r)| r.pretraining.as_ref()).max_by_key(|p| p.loss_curve.len());
    if let (Some(p), Some(first)) = (longest, results.first_mut()) {
        first.pretrain_curve = p.loss_curve.iter().map(|&[s, l]| (s, l)).collect();
    }
    Ok(results)
}

fn result_of(c: &CheckpointReport, seed: u64, data_seed: u64) -> CheckpointResult {
    let measured = matches!(c.status, Status::Ok | Status::Stopped);
    CheckpointResult {
        checkpoint: CheckpointRef {
            name: c.name.clone(),
            path: PathBuf::from(&c.path),
            step: c.step,
            step_source: step_source(&c.step_source),
        },
        runs: if measured {
            Ok(resume::runs_of(c, seed, data_seed))
        } else {
            Err(c.error.clone().unwrap_or_else(|| c.status.to_string()))
        },
        pretrain_loss: c.pretrain_loss,
        fingerprint: c.fingerprint.clone(),
        pretrain_curve: Vec::new(),
        peak_rss_bytes: c.peak_rss_bytes,
        stopped: None,
        diverged: c.status == Status::Diverged,
        pretrain_sample_loss: c.pretrain_sample_loss,
        seed_failures: c.seed_failures.clone(),
    }
}

/// Discovery's names for where a step came from, read back from a report.
fn step_source(s: &str) -> &'static str {
    crate::discover::STEP_SOURCES.iter().find(|k| **k == s).copied().unwrap_or("report")
}

/// "merging 2 of 3 partitions (missing 3/3)" when the parts do not cover the series.
fn missing_partitions(parts: &[(PathBuf, Report)]) -> Option<String> {
    let of: Vec<(usize, usize)> = parts
        .iter()
        .filter_map(|(_, r)| {
            r.settings["partition"]
                .as_str()?
                .split_once('/')
                .and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)))
        })
        .collect();
    let n = of.first()?.1;
    let missing: Vec<String> = (1..=n).filter(|k| !of.contains(&(*k, n))).map(|k| format!("{k}/{n}")).collect();
    (!missing.is_empty()).then(|| {
        format!(
            "merging {} of {n} partitions (missing {}): their checkpoints are not in the ranking",
            of.len(),
            missing.join(", ")
        )
    })
}

fn mixed_devices(parts: &[(PathBuf, Report)]) -> Option<String> {
    let mut names: Vec<&str> = parts.iter().map(|(_, r)| r.device.name.as_str()).collect();
    names.sort();
    names.dedup();
    (names.len() > 1).then(|| format!("the parts ran on different devices ({}): a step of each shape is priced at the median step time of that shape's runs across all parts, so device-hours mix the devices' speeds", names.join("; ")))
}
