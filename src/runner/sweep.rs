//! `--ranks` / `--lrs`: the scan once per (rank, lr), every variant on the same snapshots with
//! the same seeds and batches, scored against one target (the main variant's), then one report:
//! the main variant's ranking with a `sweep` section holding every variant and what changes
//! with rank and rate. The reports are rewritten after each variant. With `--save-adapters
//! DIR` each variant's adapters go to `DIR/r<rank>-lr<lr>/`; with `--resume` every variant reuses
//! what the previous sweep report measured. (Should the main variant reach no target, the rest
//! keep their own, and the summary says so.) This module must not score (see `score::sweep`)
//! or format anything; its sentences restate the variants' reports.

use std::path::{Path, PathBuf};

use super::Scan;
use crate::discover::CheckpointRef;
use crate::engine::{Engine, Series};
use crate::error::{Error, Result};
use crate::options::{ScanOptions, Sweep};
use crate::report::headline::{evidence, Evidence};
use crate::report::ScanStatus;
use crate::report::{CheckpointReport, Report, Reports, SweepCheckpoint, SweepInfo, SweepPoint, SweepVariant};
use crate::score::{self, TargetSpec};

type Done = Vec<((usize, f64), Report)>;

/// The engine a variant's scan fine-tunes with, from its options.
pub type EngineFor<'e> = dyn for<'o> Fn(&'o ScanOptions) -> Result<Box<dyn Engine + 'o>> + 'e;

/// Runs every variant of the sweep, the main one first; `previous` is a sweep report to resume.
pub fn run(
    opts: &ScanOptions,
    sweep: &Sweep,
    checkpoints: &[CheckpointRef],
    reports: &Reports,
    previous: Option<(Report, &Path)>,
    fetcher: Option<&crate::hub::Fetcher>,
) -> Result<Report> {
    run_with(opts, sweep, checkpoints, reports, previous, &|o| series(o, checkpoints), fetcher)
}

fn series<'o>(opts: &'o ScanOptions, checkpoints: &[CheckpointRef]) -> Result<Box<dyn Engine + 'o>> {
    Ok(Box::new(Series::new(opts, checkpoints)?))
}

/// [`run`] with each variant fine-tuned by `engine_for(its options)`.
pub fn run_with(
    opts: &ScanOptions,
    sweep: &Sweep,
    checkpoints: &[CheckpointRef],
    reports: &Reports,
    previous: Option<(Report, &Path)>,
    engine_for: &EngineFor,
    fetcher: Option<&crate::hub::Fetcher>,
) -> Result<Report> {
    let variants = sweep.variants();
    let (mut done, mut target): (Done, Option<TargetSpec>) = (Vec::new(), opts.target);
    for (i, &v) in variants.iter().enumerate() {
        eprintln!("sweep {}/{}: rank {}, lr {:e}", i + 1, variants.len(), v.0, v.1);
        let vopts = variant_options(opts, v, target);
        let engine = engine_for(&vopts)?;
        if i == 0 && sweep.ranks.len() > 1 && checkpoints.iter().any(|c| engine.fixed_rank(c).is_some()) {
            return Err(Error::flag(
                "--ranks",
                "a simulated single-index series has a rank-1 adapter: sweep --lrs only",
            ));
        }
        let mut scan = Scan::with_engine(&vopts, engine).with_fetcher(fetcher);
        match &previous {
            Some((prev, path)) if i == 0 => scan.resume_from(prev.clone(), path)?, // checks the settings once
            Some((prev, _)) => scan.reuse(measurements(prev, v)),
            None => {}
        }
        let report = scan.run(checkpoints, &Reports::create(&[])?)?;
        if i == 0 {
            target = target.or(report.target_loss.map(TargetSpec::Loss)); // the main variant's, for all
        }
        let interrupted = report.status == ScanStatus::Interrupted;
        done.push((v, report));
        let status = if interrupted {
            ScanStatus::Interrupted
        } else if done.len() < variants.len() {
            ScanStatus::Running
        } else {
            ScanStatus::Complete
        };
        let composite = compose(sweep, &done, status);
        reports.update(&composite)?;
        if interrupted || done.len() == variants.len() {
            return Ok(composite);
        }
    }
    Err(Error::internal("a sweep needs at least one variant"))
}

/// The scan's options at one (rank, lr), scored against `target`, its adapters in their own folder.
fn variant_options(opts: &ScanOptions, v: (usize, f64), target: Option<TargetSpec>) -> ScanOptions {
    let mut o = opts.variant(v);
    o.target = target;
    o.budget = crate::score::budget::Budget::Updates(o.train.steps); // variants compare on the probe itself
    o.save_adapters = opts.save_adapters.as_ref().map(|dir| dir.join(variant_folder(v)));
    o.save_best = false;
    o
}

/// "r8-lr1e-3": where a variant's adapters go under --save-adapters.
pub fn variant_folder((rank, lr): (usize, f64)) -> String {
    format!("r{rank}-lr{lr:e}")
}

/// What the previous sweep measured at `v`: the report's own checkpoints for the main variant,
/// the variant's measurements for the others.
fn measurements(prev: &Report, v: (usize, f64)) -> Vec<CheckpointReport> {
    let Some(s) = &prev.sweep else { return Vec::new() };
    s.variants.iter().find(|x| (x.rank, x.lr) == v).map(|x| x.measurements.clone()).unwrap_or_default()
}

/// --save-best after a sweep: only the adapter of the fastest (variant, snapshot) stays, at
/// `DIR/<variant>/<snapshot>`; None when no variant ranked a snapshot that has one.
pub fn keep_best_adapter(dir: &Path, report: &Report) -> Result<Option<PathBuf>> {
    let Some(s) = &report.sweep else { return Ok(None) };
    let winners = s.variants.iter().filter_map(|v| {
        let name = v.ranking.first()?;
        let point = v.checkpoints.iter().find(|p| &p.name == name)?;
        Some(((v.rank, v.lr), name, point.device_hours_to_target?))
    });
    let Some((v, name, _)) = winners.min_by(|a, b| a.2.total_cmp(&b.2)) else { return Ok(None) };
    let best = dir.join(variant_folder(v)).join(name);
    if !best.is_dir() {
        return Ok(None);
    }
    for variant in s.variants.iter().map(|x| dir.join(variant_folder((x.rank, x.lr)))).filter(|p| p.is_dir()) {
        for c in &report.checkpoints {
            let path = variant.join(&c.name);
            if path != best && path.exists() {
                crate::lora::peft::ensure_adapter_folder(&path)?;
                std::fs::remove_dir_all(&path)
                    .map_err(|e| Error::input(&path, format!("cannot remove a non-winning adapter: {e}")))?;
            }
        }
    }
    Ok(Some(best))
}

/// The main variant's report with the sweep section.
fn compose(sweep: &Sweep, done: &Done, status: ScanStatus) -> Report {
    let mut report = done[0].1.clone();
    report.status = status;
    let target = report.target_loss;
    let main = sweep.main();
    let variants: Vec<SweepVariant> = sweep
        .ranks
        .iter()
        .flat_map(|&r| sweep.lrs.iter().map(move |&l| (r, l)))
        .filter_map(|v| variant(done, v, target, v == main))
        .collect();
    let at_lr: Vec<(String, &Report)> =
        done.iter().filter(|(v, _)| v.1 == main.1).map(|(v, r)| (format!("r={}", v.0), r)).collect();
    let at_rank: Vec<(String, &Report)> =
        done.iter().filter(|(v, _)| v.0 == main.0).map(|(v, r)| (format!("lr={:e}", v.1), r)).collect();
    let checkpoints: Vec<SweepCheckpoint> =
        report.checkpoints.iter().map(|c| per_checkpoint(&c.name, sweep, done, &variants, target)).collect();
    let (by_rank, rank_line) = winner_verdict("rank", "rank", &at_lr);
    let (by_lr, lr_line) = winner_verdict("learning rate", "rate", &at_rank);
    let mut summary = Vec::new();
    if target.is_none() {
        summary.push("no common target: the main variant ranked no snapshot, so each variant is scored against its own median final loss".to_string());
    }
    if sweep.ranks.len() > 1 {
        summary.push(format!("{rank_line} at lr={:e}", main.1));
        summary.push(smallest_rank_line(&checkpoints));
    }
    if sweep.lrs.len() > 1 {
        let simulated =
            report.checkpoints.iter().any(|c| c.model_type.as_deref() == Some(crate::single_index::MODEL_TYPE));
        summary.push(if simulated {
            format!("{lr_line} (the single-index model's rank-1 adapter)")
        } else {
            format!("{lr_line} at r={}", main.0)
        });
        summary.push(best_lr_line(&checkpoints));
    }
    report.sweep = Some(SweepInfo {
        ranks: sweep.ranks.clone(),
        lrs: sweep.lrs.clone(),
        main_rank: main.0,
        main_lr: main.1,
        target_loss: target,
        variants,
        checkpoints,
        winner_changes_with_rank: by_rank,
        winner_changes_with_lr: by_lr,
        summary,
    });
    report
}

/// One variant's ranking and points, when it has run; the full measurements of a variant
/// other than the main one (the main one's are the report's checkpoints), for --resume.
fn variant(done: &Done, (rank, lr): (usize, f64), target: Option<f64>, main: bool) -> Option<SweepVariant> {
    let (_, r) = done.iter().find(|(v, _)| *v == (rank, lr))?;
    let checkpoints = r.checkpoints.iter().map(|c| point(c, target)).collect();
    let measurements = if main { Vec::new() } else { r.checkpoints.clone() };
    Some(SweepVariant { rank, lr, status: r.status, ranking: r.ranking.clone(), checkpoints, measurements })
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
        status: c.status,
        rank: c.rank,
        reached,
        steps_to_target: c.steps_to_target.filter(|_| reached),
        device_hours_to_target: c.device_hours_to_target.filter(|_| reached),
        device_hours_ci95: c.ci95.get("device_hours_to_target").copied().filter(|_| reached),
        final_eval_loss: c.final_eval_loss,
        eval_curve,
    }
}

/// Whether the winner changes along one axis of the sweep, backed by the variants' intervals:
/// it changes when some variant's winner is significantly slower, at another variant's
/// settings, than that variant's own winner (95% intervals apart). Otherwise differing winners
/// are said to be within seed noise, or that one seed cannot tell.
fn winner_verdict<'a>(what: &str, label: &str, variants: &[(String, &'a Report)]) -> (bool, String) {
    let winner = |r: &Report| r.ranking.first().cloned();
    let find = |r: &'a Report, name: &str| r.checkpoints.iter().find(|c| c.name == name).map(|c| r.standing(c));
    let mut differ = false;
    let mut significant = false;
    let mut one_seed = false;
    for (_, a) in variants {
        for (_, b) in variants {
            let (Some(wa), Some(wb)) = (winner(a), winner(b)) else { continue };
            if wa == wb {
                continue;
            }
            differ = true;
            if let (Some(best), Some(other)) = (find(b, &wb), find(b, &wa)) {
                match evidence(&best, &other) {
                    Evidence::Significant => significant = true,
                    Evidence::OneSeed => one_seed = true,
                    _ => {}
                }
            }
        }
    }
    let each = variants
        .iter()
        .map(|(l, r)| format!("{l}: {}", winner(r).unwrap_or_else(|| "-".into())))
        .collect::<Vec<_>>()
        .join(", ");
    let sentence = match (variants.iter().find_map(|(_, r)| winner(r)), differ, significant) {
        (None, _, _) => format!("{what}: no variant ranked a snapshot"),
        (Some(w), false, _) => format!("{what}: the winner is {w} at every {label} ({})", variants.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(", ")),
        (Some(_), true, true) => format!("{what}: the winner changes with the {label} ({each}), beyond seed noise at 95%"),
        (Some(_), true, false) if one_seed => format!("{what}: the winners differ ({each}), but one seed cannot tell whether that is beyond seed noise"),
        (Some(_), true, false) => format!("{what}: the winners differ ({each}), but not beyond seed noise: each is tied with the others at their settings (95% intervals overlap)"),
    };
    (significant, sentence)
}

/// Smallest rank and hours by rank (at the main rate); best rate, the rates tied with it, and
/// hours by rate (at the main rank).
fn per_checkpoint(
    name: &str,
    sweep: &Sweep,
    done: &Done,
    variants: &[SweepVariant],
    target: Option<f64>,
) -> SweepCheckpoint {
    let main = sweep.main();
    let point = |v: (usize, f64)| {
        variants
            .iter()
            .find(|x| (x.rank, x.lr) == v)
            .and_then(|x| x.checkpoints.iter().find(|p| p.name == name).cloned())
    };
    let by_rank: Vec<(usize, Option<SweepPoint>)> = sweep.ranks.iter().map(|&r| (r, point((r, main.1)))).collect();
    let by_lr: Vec<(f64, Option<SweepPoint>)> = sweep.lrs.iter().map(|&l| (l, point((main.0, l)))).collect();
    let smallest_rank = match target {
        Some(t) => score::sweep::smallest_rank(
            &by_rank.iter().filter_map(|(r, p)| Some((*r, p.as_ref()?.eval_curve.as_slice()))).collect::<Vec<_>>(),
            t,
        ),
        None => by_rank.iter().filter(|(_, p)| p.as_ref().is_some_and(|p| p.reached)).map(|(r, _)| *r).min(),
    };
    let entries: Vec<(f64, Option<f64>, Option<f64>)> = by_lr
        .iter()
        .filter_map(|(l, p)| p.as_ref().map(|p| (*l, p.device_hours_to_target, p.final_eval_loss)))
        .collect();
    let best_lr = score::sweep::best_lr(&entries);
    SweepCheckpoint {
        name: name.to_string(),
        smallest_rank,
        hours_by_rank: by_rank.iter().map(|(_, p)| p.as_ref().and_then(|p| p.device_hours_to_target)).collect(),
        best_lr,
        best_lr_tied_with: best_lr.map(|best| tied_rates(name, best, main.0, &sweep.lrs, done)).unwrap_or_default(),
        hours_by_lr: by_lr.iter().map(|(_, p)| p.as_ref().and_then(|p| p.device_hours_to_target)).collect(),
    }
}

/// The other rates at which `name` is not significantly slower than at its best rate.
fn tied_rates(name: &str, best: f64, rank: usize, lrs: &[f64], done: &Done) -> Vec<f64> {
    let at = |lr: f64| {
        done.iter()
            .find(|(v, _)| *v == (rank, lr))
            .and_then(|(_, r)| r.checkpoints.iter().find(|c| c.name == name).map(|c| r.standing(c)))
    };
    let Some(fastest) = at(best).filter(|s| s.hours.is_some()) else { return Vec::new() };
    lrs.iter()
        .copied()
        .filter(|&l| l != best)
        .filter(|&l| at(l).is_some_and(|s| s.hours.is_some() && evidence(&fastest, &s) == Evidence::NotSignificant))
        .collect()
}

fn smallest_rank_line(checkpoints: &[SweepCheckpoint]) -> String {
    let each: Vec<String> = checkpoints
        .iter()
        .map(|c| {
            format!("{} {}", c.name, c.smallest_rank.map_or("none within the budget".into(), |r| format!("r={r}")))
        })
        .collect();
    format!("smallest rank that reaches the target: {}", each.join(", "))
}

fn best_lr_line(checkpoints: &[SweepCheckpoint]) -> String {
    let each: Vec<String> = checkpoints
        .iter()
        .map(|c| {
            let tied = c.best_lr_tied_with.iter().map(|l| format!("lr={l:e}")).collect::<Vec<_>>();
            let tied = if tied.is_empty() { String::new() } else { format!(" (tied with {})", tied.join(", ")) };
            format!("{} {}{tied}", c.name, c.best_lr.map_or("-".into(), |l| format!("lr={l:e}")))
        })
        .collect();
    format!("best learning rate: {}", each.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;

    /// A variant's report: (name, hours, half-width of the hours' interval; 0 = one seed) in rank order.
    fn variant(entries: &[(&str, f64, f64)]) -> Report {
        let checkpoints = entries
            .iter()
            .enumerate()
            .map(|(i, &(name, h, half))| {
                let mut c = CheckpointReport {
                    name: name.into(),
                    status: Status::Ok,
                    rank: Some(i + 1),
                    device_hours_to_target: Some(h),
                    seeds: 3,
                    seeds_ok: if half > 0.0 { 3 } else { 1 },
                    ..Default::default()
                };
                if half > 0.0 {
                    c.ci95.insert("device_hours_to_target".into(), [h - half, h + half]);
                }
                c
            })
            .collect();
        let mut r = crate::report::blank_report();
        r.ranking = entries.iter().map(|e| e.0.to_string()).collect();
        r.checkpoints = checkpoints;
        r
    }

    fn refs(v: &[(String, Report)]) -> Vec<(String, &Report)> {
        v.iter().map(|(l, r)| (l.clone(), r)).collect()
    }

    #[test]
    fn the_winner_changes_only_beyond_seed_noise() {
        let same = [
            ("r=4".to_string(), variant(&[("a", 1.0, 0.1), ("b", 2.0, 0.1)])),
            ("r=8".to_string(), variant(&[("a", 1.0, 0.1), ("b", 2.0, 0.1)])),
        ];
        let (changes, line) = winner_verdict("rank", "rank", &refs(&same));
        assert!(!changes && line == "rank: the winner is a at every rank (r=4, r=8)", "{line}");
        // at r=8, b beats a with intervals apart
        let apart = [
            ("r=4".to_string(), variant(&[("a", 1.0, 0.1), ("b", 1.1, 0.1)])),
            ("r=8".to_string(), variant(&[("b", 1.0, 0.1), ("a", 2.0, 0.1)])),
        ];
        let (changes, line) = winner_verdict("rank", "rank", &refs(&apart));
        assert!(changes && line.contains("changes with the rank (r=4: a, r=8: b), beyond seed noise at 95%"), "{line}");
        // the winners differ, but each is tied with the other at its own settings
        let tied = [
            ("r=4".to_string(), variant(&[("a", 1.0, 0.5), ("b", 1.2, 0.5)])),
            ("r=8".to_string(), variant(&[("b", 1.0, 0.5), ("a", 1.2, 0.5)])),
        ];
        let (changes, line) = winner_verdict("rank", "rank", &refs(&tied));
        assert!(!changes && line.contains("the winners differ") && line.contains("not beyond seed noise"), "{line}");
        let one_seed = [
            ("r=4".to_string(), variant(&[("a", 1.0, 0.0), ("b", 2.0, 0.0)])),
            ("r=8".to_string(), variant(&[("b", 1.0, 0.0), ("a", 2.0, 0.0)])),
        ];
        let (changes, line) = winner_verdict("rank", "rank", &refs(&one_seed));
        assert!(!changes && line.contains("one seed cannot tell"), "{line}");
    }

    #[test]
    fn a_rate_within_seed_noise_of_the_best_is_tied_with_it() {
        let done: Done = vec![
            ((8, 1e-3), variant(&[("a", 1.0, 0.3)])),
            ((8, 3e-3), variant(&[("a", 1.2, 0.3)])),
            ((8, 1e-2), variant(&[("a", 3.0, 0.3)])),
        ];
        assert_eq!(tied_rates("a", 1e-3, 8, &[1e-3, 3e-3, 1e-2], &done), vec![3e-3]);
        let one_seed: Done = vec![((8, 1e-3), variant(&[("a", 1.0, 0.0)])), ((8, 3e-3), variant(&[("a", 1.2, 0.0)]))];
        assert!(tied_rates("a", 1e-3, 8, &[1e-3, 3e-3], &one_seed).is_empty());
    }
}
