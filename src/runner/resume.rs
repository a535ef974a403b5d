//! `--resume`: reuse what a previous report measured, so an interrupted scan continues where
//! it stopped. A checkpoint is reused only when the previous report has the same settings,
//! the same tool version, the same checkpoint name and fingerprint, and status "ok"; its runs
//! are rebuilt from the saved curves, and the scorer recomputes everything from them, so the
//! merged result equals a fresh run (timings apart).

use std::path::Path;

use super::{Run, Scan};
use crate::curve::{CurvePoint, Outcome};
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};
use crate::report::{CheckpointReport, Report, SeedFailure};

/// Settings that do not change a measurement.
const IGNORED: [&str; 3] = ["threads", "devices", "snapshots"];

/// The settings that differ between two reports, `ignored` apart; a setting one report does
/// not record counts as null (a newer setting left unset).
pub(super) fn differing(before: &serde_json::Value, now: &serde_json::Value, ignored: &[&str]) -> Vec<String> {
    let (Some(a), Some(b)) = (before.as_object(), now.as_object()) else { return vec!["settings".into()] };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| !ignored.contains(&k.as_str())).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    keys.into_iter().filter(|k| a.get(*k).unwrap_or(&null) != b.get(*k).unwrap_or(&null)).cloned().collect()
}

impl Scan<'_> {
    /// Accepts `previous` if it was made with the same settings and tool version.
    pub fn resume_from(&mut self, previous: Report, path: &Path) -> Result<()> {
        if previous.tool.version != env!("CARGO_PKG_VERSION") {
            return Err(Error::input(
                path,
                format!("was written by plasticity {}, this is {}", previous.tool.version, env!("CARGO_PKG_VERSION")),
            ));
        }
        let now = super::assemble::settings_json(self.opts);
        let changed = differing(&previous.settings, &now, &IGNORED);
        if !changed.is_empty() {
            return Err(Error::input(path, format!("settings differ from this scan: {}", changed.join(", "))));
        }
        self.reuse(previous.checkpoints);
        Ok(())
    }

    /// Offers `checkpoints` (measured with these very settings) for reuse by name; a Hub
    /// scan's fetcher then skips the snapshots whose commit was measured.
    pub fn reuse(&mut self, checkpoints: Vec<CheckpointReport>) {
        self.previous = checkpoints
            .into_iter()
            .filter(|c| c.status == crate::report::Status::Ok)
            .map(|c| (c.name.clone(), c))
            .collect();
        if let Some(f) = self.fetcher {
            let same = |name: &str, fp: &Option<String>| fp.is_some() && f.fingerprint(name) == *fp;
            self.previous.iter().filter(|(n, c)| same(n, &c.fingerprint)).for_each(|(n, _)| f.skip(n));
        }
    }

    /// The previous runs of `c` and its seeds that failed, when its files have not changed.
    pub(super) fn reusable(
        &self,
        c: &CheckpointRef,
        fingerprint: Option<&str>,
    ) -> Option<(Vec<Run>, Vec<SeedFailure>)> {
        let prev = self.previous.get(&c.name)?;
        (fingerprint.is_some() && prev.fingerprint.as_deref() == fingerprint)
            .then(|| (runs_of(prev, self.opts.seed, self.opts.data_seed), prev.seed_failures.clone()))
    }
}

/// Runs rebuilt from a report entry: one per seed (from `runs[]`, or the single curve).
pub(super) fn runs_of(c: &CheckpointReport, seed: u64, data_seed: u64) -> Vec<Run> {
    let median = c.median_step_s.unwrap_or(0.0);
    let tokens_per_step =
        c.tokens_per_update.unwrap_or_else(|| (c.tokens_per_s.unwrap_or(0.0) * median).round() as usize);
    let seeds: Vec<(u64, u64, f64, &Vec<CurvePoint>)> = if c.runs.is_empty() {
        vec![(seed, data_seed, median, &c.curve)]
    } else {
        c.runs.iter().map(|r| (r.seed, r.data_seed, r.median_step_s, &r.curve)).collect()
    };
    seeds
        .into_iter()
        .map(|(seed, data_seed, median_step_s, curve)| Run {
            seed,
            data_seed,
            model_type: c.model_type.clone().unwrap_or_default(),
            params: c.params.unwrap_or(0),
            trainable_params: c.trainable_params.unwrap_or(0),
            flops_per_token: match (c.flops_per_s, c.tokens_per_s) {
                (Some(f), Some(t)) if t > 0.0 => f / t,
                _ => 0.0,
            },
            outcome: Outcome { curve: curve.clone(), step_seconds: Vec::new(), median_step_s, tokens_per_step },
            single_index: c.single_index.clone(),
            base_dropout: c.base_dropout.clone(),
            train_tokens: c.train_tokens.unwrap_or(0),
            settle: Vec::new(),
        })
        .collect()
}
