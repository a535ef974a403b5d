//! The plain-words verdicts on a ranking: which snapshot is best to fine-tune, and how the
//! most pre-trained snapshot compares with it. Every sentence that says faster, slower or
//! best is backed by the 95% intervals of several seeds, or says that one seed cannot tell.
//! It restates the report; it never computes a score.

use super::{CheckpointReport, Report};

/// The two snapshots the verdicts compare: the best to fine-tune (the first ranked that is not
/// already at the target before fine-tuning: its rank measures adaptation) and the most
/// pre-trained one (the highest step, whatever became of it).
pub struct Pair<'a> {
    pub best: Option<&'a CheckpointReport>,
    pub last: Option<&'a CheckpointReport>,
}

impl<'a> Pair<'a> {
    pub fn of(report: &'a Report) -> Pair<'a> {
        let ranked = report.ranking.iter().filter_map(|n| report.checkpoints.iter().find(|c| &c.name == n));
        Pair { best: ranked.clone().find(|c| !c.at_target_before_training), last: report.checkpoints.iter().max_by_key(|c| c.step) }
    }
}

/// Whether `a` is faster than `b` beyond seed noise, by their device-hours intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Both have intervals and `a`'s lies wholly below `b`'s.
    Significant,
    /// The intervals overlap.
    NotSignificant,
    /// A measured time from one seed has no interval.
    OneSeed,
    /// `b` reaches the target in some of its seeds only: it has no mean time to compare.
    SomeSeedsMiss,
}

/// The evidence that `a` is faster than `b`.
pub fn evidence(a: &CheckpointReport, b: &CheckpointReport) -> Evidence {
    let key = "device_hours_to_target";
    let interval = |c: &CheckpointReport| c.ci95.get(key).copied().or_else(|| c.device_hours_to_target.map(|h| [h, h]));
    let several = a.seeds_ok > 1 && b.seeds_ok > 1;
    match (interval(a), interval(b)) {
        (Some(x), Some(y)) if several || x[0] < x[1] || y[0] < y[1] => if x[1] < y[0] { Evidence::Significant } else { Evidence::NotSignificant },
        (Some(_), None) if several && misses_in_every_seed(b) => Evidence::Significant,
        (Some(_), None) if several => Evidence::SomeSeedsMiss,
        _ => Evidence::OneSeed,
    }
}

/// No seed's eval curve gets to the target.
fn misses_in_every_seed(c: &CheckpointReport) -> bool {
    let Some(target) = c.target_loss else { return false };
    let misses = |curve: &[crate::train::CurvePoint]| curve.iter().filter_map(|p| p.eval_loss).all(|l| l > target);
    if c.runs.is_empty() { misses(&c.curve) } else { c.runs.iter().all(|r| misses(&r.curve)) }
}

/// "best checkpoint to fine-tune: X", with what backs it.
pub fn best_line(report: &Report) -> Option<String> {
    let (name, backing) = best_verdict(report)?;
    Some(format!("best checkpoint to fine-tune: {name}{backing}"))
}

/// The first-ranked checkpoint and what backs its place, as " (...)".
pub fn best_verdict(report: &Report) -> Option<(String, String)> {
    let first = report.ranking.first()?;
    let at = |name: &str| report.checkpoints.iter().find(|c| c.name == name);
    let winner = at(first)?;
    if winner.at_target_before_training {
        let Pair { best, .. } = Pair::of(report);
        let adapting = match best {
            Some(b) if b.steps_to_target.is_some() => format!("; of the others, {} ranks first", b.name),
            _ => "; none of the others reaches it within the budget".into(),
        };
        return Some((first.clone(), format!(" (already at the target before fine-tuning{adapting})")));
    }
    let backing = match report.ranking.get(1).and_then(|n| at(n)) {
        None => String::new(),
        Some(second) => match evidence(winner, second) {
            Evidence::Significant => format!(" (significantly faster than the runner-up, {}, at 95%)", second.name),
            Evidence::NotSignificant => format!(" (tied with {}: their 95% intervals overlap)", second.name),
            Evidence::OneSeed => " (ranked first on one seed, which cannot tell whether it is faster beyond seed noise)".into(),
            Evidence::SomeSeedsMiss => format!(" (the runner-up, {}, reaches the target in some seeds only)", second.name),
        },
    };
    Some((first.clone(), backing))
}

/// The headline: who is at the target already, how the most pre-trained snapshot compares
/// with the best, and whether the difference is beyond seed noise.
pub fn headline(report: &Report) -> String {
    let mut sentences: Vec<String> = Vec::new();
    let at_target: Vec<&str> = report.checkpoints.iter().filter(|c| c.at_target_before_training && c.rank.is_some()).map(|c| c.name.as_str()).collect();
    if !at_target.is_empty() {
        let (who, verb) = if at_target.len() == 1 { (at_target[0].to_string(), "is") } else { (at_target.join(", "), "are") };
        sentences.push(format!("{who} {verb} at the target without fine-tuning; the ranking of the others measures adaptation."));
    }
    let pair = Pair::of(report);
    sentences.push(comparison(&pair));
    if let (Some(best), Some(last)) = (pair.best, pair.last) {
        sentences.extend(significance(best, last, report));
    }
    sentences.join(" ")
}

/// Steps to the target and the starting loss of a checkpoint (means over its seeds), and what
/// the steps are to (a simulated series' target is the paper's tiny loss, 1e-6).
fn figures(c: &CheckpointReport) -> (Option<f64>, Option<f64>, &'static str) {
    let what = if c.single_index.is_some() { "to reach loss 1e-6" } else { "to reach the target loss" };
    (c.steps_to_target, c.initial_eval_loss, what)
}

fn describe(c: &CheckpointReport) -> String {
    match &c.single_index {
        Some(m) => format!("{}, mu = {:.3}", c.name, m.mu),
        None if c.name.contains(&c.step.to_string()) => c.name.clone(),
        None => format!("{}, step {}", c.name, c.step),
    }
}

/// How the most pre-trained snapshot compares with the best one, each clause about the
/// snapshot it names.
fn comparison(pair: &Pair) -> String {
    let (Some(best), Some(last)) = (pair.best, pair.last) else {
        return "No checkpoint finished, so there is no ranking.".into();
    };
    let (l, b) = (describe(last), describe(best));
    if !last.measured() {
        return format!("The most pre-trained snapshot ({l}) {}, so it cannot be compared; the best one to fine-tune is {b}.", last.status);
    }
    if best.name == last.name {
        return format!("The most pre-trained snapshot ({l}) is also the fastest to adapt.");
    }
    let (best_steps, best_loss, what) = figures(best);
    let (last_steps, last_loss, _) = figures(last);
    let lower_start = match (best_loss, last_loss) {
        (Some(bl), Some(ll)) if ll > 0.0 && ll < bl => Some(round_ratio(bl / ll)),
        _ => None,
    };
    let best_needs = match best_steps {
        Some(s) => format!("the best one ({b}) needs {s:.0} steps {what}"),
        None => format!("the best one is {b}"),
    };
    if let Some(stop) = &last.stopped {
        return format!("The most pre-trained snapshot ({l}) was stopped by the race at rung {} (step {}): its forecast lay beyond the leader's; {best_needs}.", stop.rung, stop.at_step);
    }
    let starts = lower_start.as_ref().map(|r| format!("starts with a {r}x lower loss but ")).unwrap_or_default();
    match (best_steps, last_steps) {
        (Some(bs), Some(ls)) if bs > 0.0 => {
            let although = lower_start.as_ref().map(|r| format!(", although it starts with a {r}x lower loss")).unwrap_or_default();
            let forecast = if last.extrapolated { " (a forecast: it misses the target within the budget and the curve model extends its curve)" } else { "" };
            format!("The most pre-trained snapshot ({l}) needs {}x more steps {what} than the best one ({b}){although}{forecast}.", round_ratio(ls / bs))
        }
        (Some(_), Some(_)) => format!("The best snapshot to fine-tune is {b}, at the target from its first steps; the most pre-trained one ({l}) {starts}is slower."),
        (_, None) => format!("The most pre-trained snapshot ({l}) {starts}does not reach the target within the budget, nor by the curve model's forecast within 10x it; {best_needs}."),
        (None, Some(_)) => format!("The best snapshot to fine-tune is {b}, not the most pre-trained one ({l})."),
    }
}

/// Whether the best snapshot is faster than the most pre-trained one beyond seed noise.
fn significance(best: &CheckpointReport, last: &CheckpointReport, report: &Report) -> Option<String> {
    if best.name == last.name {
        let second = report.ranking.get(1).and_then(|n| report.checkpoints.iter().find(|c| &c.name == n))?;
        return Some(match evidence(best, second) {
            Evidence::Significant => format!("Over {} seeds it is significantly faster than the runner-up, {} (95% intervals do not overlap).", best.seeds_ok, second.name),
            Evidence::NotSignificant => format!("Over {} seeds it is tied with {}: their 95% intervals overlap.", best.seeds_ok, second.name),
            Evidence::OneSeed => ONE_SEED.into(),
            Evidence::SomeSeedsMiss => format!("Over {} seeds the runner-up, {}, reaches the target in some seeds only.", best.seeds_ok, second.name),
        });
    }
    if !last.measured() || last.stopped.is_some() {
        return None;
    }
    Some(match evidence(best, last) {
        Evidence::Significant => format!("Over {} seeds the best one is significantly faster (95% intervals do not overlap).", best.seeds_ok.min(last.seeds_ok)),
        Evidence::NotSignificant => format!("Over {} seeds the difference is not significant at 95% (the intervals overlap).", best.seeds_ok.min(last.seeds_ok)),
        Evidence::OneSeed => ONE_SEED.into(),
        Evidence::SomeSeedsMiss => format!("Over {} seeds the most pre-trained snapshot reaches the target in some seeds only, so it has no mean time to compare.", last.seeds_ok),
    })
}

const ONE_SEED: &str = "With one seed per snapshot the scan cannot tell whether this is beyond seed noise; --seeds 3 gives 95% intervals.";

/// 2 significant figures for small ratios, whole numbers above 10.
fn round_ratio(r: f64) -> String {
    if r >= 10.0 { format!("{r:.0}") } else { format!("{r:.1}") }
}
