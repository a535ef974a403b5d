//! `--ranks` / `--lrs`: the scan once per (rank, lr), every variant on the same snapshots with
//! the same seeds and batches, scored against one target (the main variant's), then one report:
//! the main variant's ranking with a `sweep` section holding every variant and what changes
//! with rank and rate. The reports are rewritten after each variant. (Should the main variant
//! reach no target, the rest keep their own, and the summary says so.) This module must not
//! score (see `score::sweep`) or format anything.

use super::{race, Scan};
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};
use crate::options::{ScanOptions, Sweep};
use crate::report::{CheckpointReport, Report, Reports, SweepCheckpoint, SweepInfo, SweepPoint, SweepVariant};
use crate::score::{self, TargetSpec};

type Done = Vec<((usize, f64), Report)>;

/// Runs every variant of the sweep; the main one first.
pub fn run(opts: &ScanOptions, sweep: &Sweep, checkpoints: &[CheckpointRef], reports: &Reports) -> Result<Report> {
    if sweep.ranks.len() > 1 && checkpoints.iter().any(race::is_simulated) {
        return Err(Error::flag("--ranks", "a simulated single-index series has a rank-1 adapter: sweep --lrs only"));
    }
    let variants = sweep.variants();
    let (mut done, mut target): (Done, Option<TargetSpec>) = (Vec::new(), opts.target);
    for (i, v) in variants.iter().enumerate() {
        eprintln!("sweep {}/{}: rank {}, lr {:e}", i + 1, variants.len(), v.0, v.1);
        let mut vopts = opts.variant(*v);
        vopts.target = target;
        let report = Scan::new(&vopts, checkpoints)?.run(checkpoints, &Reports::create(&[])?)?;
        if i == 0 {
            target = target.or(report.target_loss.map(TargetSpec::Loss)); // the main variant's, for all
        }
        let interrupted = report.status == "interrupted";
        done.push((*v, report));
        let status = if interrupted { "interrupted" } else if done.len() < variants.len() { "running" } else { "complete" };
        let composite = compose(sweep, &done, status);
        reports.update(&composite)?;
        if interrupted || done.len() == variants.len() {
            return Ok(composite);
        }
    }
    Err(Error::Other("a sweep needs at least one variant".into()))
}

/// The main variant's report with the sweep section.
fn compose(sweep: &Sweep, done: &Done, status: &str) -> Report {
    let mut report = done[0].1.clone();
    report.status = status.into();
    let target = report.target_loss;
    let variants: Vec<SweepVariant> = sweep.ranks.iter().flat_map(|&r| sweep.lrs.iter().map(move |&l| (r, l))).filter_map(|v| variant(done, v, target)).collect();
    let (main_rank, main_lr) = sweep.main();
    let at_lr: Vec<&SweepVariant> = variants.iter().filter(|v| v.lr == main_lr).collect();
    let at_rank: Vec<&SweepVariant> = variants.iter().filter(|v| v.rank == main_rank).collect();
    let checkpoints: Vec<SweepCheckpoint> = report.checkpoints.iter().map(|c| per_checkpoint(&c.name, sweep, &at_lr, &at_rank, target)).collect();
    let winners = |vs: &[&SweepVariant], label: &dyn Fn(&SweepVariant) -> String| vs.iter().map(|v| (label(v), v.ranking.first().cloned())).collect::<Vec<_>>();
    let (by_rank, rank_line) = score::sweep::winner_sentence("rank", "rank", &winners(&at_lr, &|v| format!("r={}", v.rank)));
    let (by_lr, lr_line) = score::sweep::winner_sentence("learning rate", "rate", &winners(&at_rank, &|v| format!("lr={:e}", v.lr)));
    let mut summary = Vec::new();
    if target.is_none() {
        summary.push("no common target: the main variant ranked no snapshot, so each variant is scored against its own median final loss".to_string());
    }
    if sweep.ranks.len() > 1 {
        summary.push(format!("{rank_line} at lr={main_lr:e}"));
        summary.push(smallest_rank_line(&checkpoints));
    }
    if sweep.lrs.len() > 1 {
        let simulated = report.checkpoints.iter().any(|c| c.model_type.as_deref() == Some(crate::model::single_index::MODEL_TYPE));
        summary.push(if simulated { format!("{lr_line} (the single-index model's rank-1 adapter)") } else { format!("{lr_line} at r={main_rank}") });
        summary.push(best_lr_line(&checkpoints));
    }
    report.sweep = Some(SweepInfo {
        ranks: sweep.ranks.clone(),
        lrs: sweep.lrs.clone(),
        main_rank,
        main_lr,
        target_loss: target,
        variants,
        checkpoints,
        winner_changes_with_rank: by_rank,
        winner_changes_with_lr: by_lr,
        summary,
    });
    report
}

/// One variant's ranking and points, when it has run.
fn variant(done: &Done, (rank, lr): (usize, f64), target: Option<f64>) -> Option<SweepVariant> {
    let (_, r) = done.iter().find(|(v, _)| *v == (rank, lr))?;
    let checkpoints = r.checkpoints.iter().map(|c| point(c, target)).collect();
    Some(SweepVariant { rank, lr, status: r.status.clone(), ranking: r.ranking.clone(), checkpoints })
}

fn point(c: &CheckpointReport, target: Option<f64>) -> SweepPoint {
    let eval_curve: Vec<[f64; 2]> = score::metrics::eval_points(&c.curve).into_iter().map(|(s, l)| [s, l]).collect();
    // against the common absolute target on the curve; a drop target (per snapshot) as scored
    let reached = match target {
        Some(t) => score::sweep::reaches(&eval_curve, t),
        None => c.steps_to_target.is_some() && !c.extrapolated,
    };
    SweepPoint {
        name: c.name.clone(),
        status: c.status.clone(),
        rank: c.rank,
        reached,
        steps_to_target: c.steps_to_target.filter(|_| reached),
        device_hours_to_target: c.device_hours_to_target.filter(|_| reached),
        final_eval_loss: c.final_eval_loss,
        eval_curve,
    }
}

/// Smallest rank and hours by rank (at the main rate); best rate and hours by rate (at the main rank).
fn per_checkpoint(name: &str, sweep: &Sweep, at_lr: &[&SweepVariant], at_rank: &[&SweepVariant], target: Option<f64>) -> SweepCheckpoint {
    let find = |v: &SweepVariant| v.checkpoints.iter().find(|p| p.name == name).cloned();
    let by_rank: Vec<(usize, Option<SweepPoint>)> = sweep.ranks.iter().map(|&r| (r, at_lr.iter().find(|v| v.rank == r).and_then(|v| find(v)))).collect();
    let by_lr: Vec<(f64, Option<SweepPoint>)> = sweep.lrs.iter().map(|&l| (l, at_rank.iter().find(|v| v.lr == l).and_then(|v| find(v)))).collect();
    let smallest_rank = match target {
        Some(t) => score::sweep::smallest_rank(&by_rank.iter().filter_map(|(r, p)| Some((*r, p.as_ref()?.eval_curve.as_slice()))).collect::<Vec<_>>(), t),
        None => by_rank.iter().filter(|(_, p)| p.as_ref().is_some_and(|p| p.reached)).map(|(r, _)| *r).min(),
    };
    let entries: Vec<(f64, Option<f64>, Option<f64>)> = by_lr.iter().filter_map(|(l, p)| p.as_ref().map(|p| (*l, p.device_hours_to_target, p.final_eval_loss))).collect();
    SweepCheckpoint {
        name: name.to_string(),
        smallest_rank,
        hours_by_rank: by_rank.iter().map(|(_, p)| p.as_ref().and_then(|p| p.device_hours_to_target)).collect(),
        best_lr: score::sweep::best_lr(&entries),
        hours_by_lr: by_lr.iter().map(|(_, p)| p.as_ref().and_then(|p| p.device_hours_to_target)).collect(),
    }
}

fn smallest_rank_line(checkpoints: &[SweepCheckpoint]) -> String {
    let each: Vec<String> = checkpoints.iter().map(|c| format!("{} {}", c.name, c.smallest_rank.map_or("none within the budget".into(), |r| format!("r={r}")))).collect();
    format!("smallest rank that reaches the target: {}", each.join(", "))
}

fn best_lr_line(checkpoints: &[SweepCheckpoint]) -> String {
    let each: Vec<String> = checkpoints.iter().map(|c| format!("{} {}", c.name, c.best_lr.map_or("-".into(), |l| format!("lr={l:e}")))).collect();
    format!("best learning rate: {}", each.join(", "))
}
