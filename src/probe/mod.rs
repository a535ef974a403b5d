//! `plasticity probe`: a forecast of which snapshot adapts fastest, without fine-tuning.
//!
//! For every adapted matrix W of each snapshot (the modules `scan` would adapt):
//! - weight geometry: spectral norm ||W||_2, stable rank ||W||_F^2 / ||W||_2^2, and effective
//!   rank exp(H(p)) with p_i = s_i / sum s (Roy and Vetterli), each averaged over the matrices,
//!   and its growth against the first snapshot;
//! - gradient capture at step 0: G = dL/dW on the task, averaged over `--batches` batches;
//!   `capture` = sum ||G_r||_F^2 / sum ||G||_F^2 (G_r the best rank-r approximation, summed
//!   over the matrices) and the gradient norm sqrt(sum ||G||_F^2);
//! - the zero-shot loss on the scan's eval blocks.
//!
//! The forecast is the captured gradient norm sqrt(sum ||G_r||_F^2) = grad_norm sqrt(capture):
//! the steepest first descent a rank-r update can find. The paper's mechanism (arXiv
//! 2602.02855) predicts that a strongly pre-trained snapshot offers the adapter a weaker, less
//! concentrated signal; a higher forecast means a faster start. Nothing here trains.
mod against;
mod lm;
mod measures;
mod single_index;
pub mod table;

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{self, Blocks, Document};
use crate::discover::{self, CheckpointRef};
use crate::engine::blocks::Cached;
use crate::engine::Kind;
use crate::error::{one_line, Error, Result};
use crate::options::ProbeOptions;
use crate::report::Status;

pub use against::{spearman, Against};
pub use measures::{Probe, PROBES};

/// What `probe` writes with --json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    pub tool: String,
    pub rank: usize,
    pub batches: usize,
    pub seed: u64,
    pub probes: Vec<Probe>,
    /// Snapshot names by forecast, fastest first.
    pub forecast_ranking: Vec<String>,
    pub against: Option<Against>,
}

/// Probes every snapshot in `o.dir`; a snapshot that fails is reported and the rest go on.
pub fn run(o: &ProbeOptions) -> Result<ProbeReport> {
    let found = discover::scan(&o.dir)?;
    found.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    let docs = o.task.as_ref().map(|t| Ok::<_, Error>((t.clone(), data::read_task(t)?))).transpose()?;
    let cache = Cached::default();
    let mut probes: Vec<Probe> =
        found.checkpoints.iter().map(|c| probe_checkpoint(c, o, docs.as_ref(), &cache)).collect();
    relative_growth(&mut probes);
    let forecast_ranking = rank_forecasts(&mut probes);
    let against = o.against.as_deref().map(|p| against::against(p, &probes)).transpose()?;
    Ok(ProbeReport {
        tool: format!("plasticity {}", env!("CARGO_PKG_VERSION")),
        rank: o.lora.rank,
        batches: o.batches,
        seed: o.seed,
        probes,
        forecast_ranking,
        against,
    })
}

fn probe_checkpoint(
    c: &CheckpointRef,
    o: &ProbeOptions,
    docs: Option<&(std::path::PathBuf, Vec<Document>)>,
    cache: &Cached<Blocks>,
) -> Probe {
    let started = Instant::now();
    let base = Probe { name: c.name.clone(), path: c.path.display().to_string(), step: c.step, ..Probe::default() };
    let probed = match Kind::of(c) {
        Ok((Kind::SingleIndex, cfg)) => single_index::probe(&c.path, &cfg, o, base.clone()),
        Ok((Kind::LanguageModel, _)) => lm::probe(c, o, docs, cache, base.clone()),
        Err(e) => Err(e),
    };
    let mut p = probed.unwrap_or_else(|e| {
        eprintln!("error: probe of {} failed: {}", c.name, one_line(&e));
        Probe { status: Status::Failed, error: Some(one_line(&e)), ..base }
    });
    p.seconds = started.elapsed().as_secs_f64();
    p
}

/// Each geometry probe over the first probed snapshot's.
fn relative_growth(probes: &mut [Probe]) {
    let Some(first) = probes.iter().find(|p| p.status == Status::Ok).cloned() else { return };
    let ratio = |now: Option<f64>, then: Option<f64>| Some(now? / then.filter(|t| *t != 0.0)?);
    for p in probes.iter_mut().filter(|p| p.status == Status::Ok) {
        p.spectral_norm_growth = ratio(p.spectral_norm, first.spectral_norm);
        p.stable_rank_growth = ratio(p.stable_rank, first.stable_rank);
        p.effective_rank_growth = ratio(p.effective_rank, first.effective_rank);
    }
}

/// Ranks by forecast, highest first; returns the names in that order.
fn rank_forecasts(probes: &mut [Probe]) -> Vec<String> {
    let mut order: Vec<usize> = (0..probes.len()).filter(|&i| probes[i].forecast.is_some()).collect();
    order.sort_by(|&a, &b| probes[b].forecast.unwrap_or(0.0).total_cmp(&probes[a].forecast.unwrap_or(0.0)));
    for (rank, &i) in order.iter().enumerate() {
        probes[i].forecast_rank = Some(rank + 1);
    }
    order.iter().map(|&i| probes[i].name.clone()).collect()
}
