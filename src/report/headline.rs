//! The plain-words verdicts on a ranking: which snapshot is best to fine-tune, and how the
//! most pre-trained snapshot compares with it. Every sentence that says faster, slower or
//! best is backed by 95% intervals (several seeds, or a forecast's own), or says that one seed
//! cannot tell; every forecast number says it is one. The verdicts read the report's ranking
//! through [`Standing`]: the probe's, or the forecast one for a longer budget. It restates the
//! report; it never computes a score.

use super::standing::Standing;
use super::Report;

/// The two snapshots the verdicts compare: the best to fine-tune (the first ranked that is not
/// already at the target before fine-tuning: its rank measures adaptation) and the most
/// pre-trained one (the highest step, whatever became of it).
pub struct Pair<'a> {
    pub best: Option<Standing<'a>>,
    pub last: Option<Standing<'a>>,
}

impl<'a> Pair<'a> {
    pub fn of(report: &'a Report) -> Pair<'a> {
        let best = report.ranked().into_iter().find(|s| !s.at_target_before_training);
        Pair { best, last: report.checkpoints.iter().max_by_key(|c| c.step).map(|c| report.standing(c)) }
    }
}

/// Whether `a` is faster than `b` beyond noise, by their device-hours intervals.
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
pub fn evidence(a: &Standing, b: &Standing) -> Evidence {
    let interval = |s: &Standing| s.hours_ci.or_else(|| s.hours.map(|h| [h, h]));
    let several = a.c.seeds_ok > 1 && b.c.seeds_ok > 1;
    match (interval(a), interval(b)) {
        (Some(x), Some(y)) if several || x[0] < x[1] || y[0] < y[1] => {
            if x[1] < y[0] {
                Evidence::Significant
            } else {
                Evidence::NotSignificant
            }
        }
        (Some(_), None) if misses_for_sure(b) => Evidence::Significant,
        (Some(_), None) if several => Evidence::SomeSeedsMiss,
        _ => Evidence::OneSeed,
    }
}

/// The evidence that `a` ranks above `b` on what the ranking orders by (the eval loss at the
/// budget, when the report ranks for one): their intervals apart, or overlapping.
fn rank_evidence(a: &Standing, b: &Standing) -> Evidence {
    match (a.key, b.key) {
        (Some(x), Some(y)) if x[1] < x[2] || y[1] < y[2] => {
            if x[2] < y[1] {
                Evidence::Significant
            } else {
                Evidence::NotSignificant
            }
        }
        (Some(_), None) => Evidence::Significant,
        _ => Evidence::OneSeed,
    }
}

/// It does not reach the target beyond doubt: for a budget, the 95% interval of its forecast
/// loss there lies above the target; for the probe, no seed's curve gets there (with several
/// seeds).
fn misses_for_sure(s: &Standing) -> bool {
    let Some(target) = s.target_loss else { return false };
    if let Some(f) = s.c.forecast.as_ref().filter(|_| s.for_budget) {
        return f.eval_loss_ci95.is_some_and(|[lo, _]| lo > target);
    }
    let misses = |curve: &[crate::curve::CurvePoint]| curve.iter().filter_map(|p| p.eval_loss).all(|l| l > target);
    s.c.seeds_ok > 1 && s.c.runs.iter().all(|r| misses(&r.curve))
}

/// "best checkpoint to fine-tune: X", with what backs it.
pub fn best_line(report: &Report) -> Option<String> {
    let (name, backing) = best_verdict(report)?;
    Some(format!("best checkpoint to fine-tune{}: {name}{backing}", for_budget(report)))
}

/// " for N updates" when the ranking is for a forecast budget; else empty.
pub fn for_budget(report: &Report) -> String {
    report.budget.as_ref().filter(|b| b.forecast).map(|b| format!(" for {} updates", b.steps)).unwrap_or_default()
}

/// The first-ranked checkpoint and what backs its place, as " (...)".
pub fn best_verdict(report: &Report) -> Option<(String, String)> {
    let ranked = report.ranked();
    let winner = ranked.first()?;
    let first = winner.c.name.clone();
    if winner.at_target_before_training {
        let adapting = match Pair::of(report).best {
            Some(b) if b.steps.is_some() => format!("; of the others, {} ranks first", b.c.name),
            _ => "; none of the others reaches it within the budget".into(),
        };
        return Some((first, format!(" (already at the target before fine-tuning{adapting})")));
    }
    let budget = report.ranks_for_budget();
    let (better, judged) = if budget {
        (
            "a significantly lower forecast eval loss at the budget than",
            rank_evidence as fn(&Standing, &Standing) -> Evidence,
        )
    } else {
        ("significantly faster than", evidence as fn(&Standing, &Standing) -> Evidence)
    };
    let backing = match ranked.get(1) {
        None => String::new(),
        Some(second) => match judged(winner, second) {
            Evidence::Significant => format!(" ({better} the runner-up, {}, at 95%)", second.c.name),
            Evidence::NotSignificant => format!(" (tied with {}: their 95% intervals overlap)", second.c.name),
            Evidence::OneSeed => {
                " (ranked first on one seed, which cannot tell whether it is faster beyond seed noise)".into()
            }
            Evidence::SomeSeedsMiss => {
                format!(" (the runner-up, {}, reaches the target in some seeds only)", second.c.name)
            }
        },
    };
    Some((first, backing))
}

/// The headline: who is at the target already, how the most pre-trained snapshot compares
/// with the best, whether the difference is beyond noise, and when ranking for a budget,
/// whether the forecast reverses the probe and whether it is settled.
pub fn headline(report: &Report) -> String {
    let mut sentences: Vec<String> = Vec::new();
    let at_target: Vec<String> =
        report.ranked().iter().filter(|s| s.at_target_before_training).map(|s| s.c.name.clone()).collect();
    if !at_target.is_empty() {
        let verb = if at_target.len() == 1 { "is" } else { "are" };
        sentences.push(format!(
            "{} {verb} at the target without fine-tuning; the ranking of the others measures adaptation.",
            at_target.join(", ")
        ));
    }
    sentences.extend(budget_sentence(report));
    let pair = Pair::of(report);
    sentences.push(comparison(&pair));
    if let (Some(best), Some(last)) = (&pair.best, &pair.last) {
        sentences.extend(significance(best, last, report));
    }
    sentences.join(" ")
}

/// The leader's loss at the budget was measured (`--until-settled` ran it there).
fn leader_measured(report: &Report) -> bool {
    let leader = report.ranking.first();
    report.checkpoints.iter().any(|c| Some(&c.name) == leader && c.forecast.as_ref().is_some_and(|f| !f.forecast))
}

/// When ranking for a budget: whether the leader at the budget is the probe's, whether that
/// is forecast or measured, and whether the ranking is settled.
pub fn budget_sentence(report: &Report) -> Option<String> {
    let b = report.budget.as_ref().filter(|b| b.forecast)?;
    let (probe_leader, leader) = (report.measured_ranking.first()?, report.ranking.first()?);
    let mut lead = if probe_leader == leader {
        format!(
            "{leader} leads after the {}-update probe and is forecast to lead at {} updates.",
            b.probe_steps, b.steps
        )
    } else {
        format!(
            "After the {}-update probe {probe_leader} leads; by {} updates {leader} {}.",
            b.probe_steps,
            b.steps,
            if leader_measured(report) { "leads (measured)" } else { "is forecast to lead" }
        )
    };
    if leader_measured(report) && probe_leader == leader {
        lead =
            format!("{leader} leads after the {}-update probe and at {} updates (measured).", b.probe_steps, b.steps);
    }
    let settled = match (b.settled, b.more_updates_to_settle) {
        (Some(false), Some(n)) => format!(" Not settled: the leaders' forecast intervals overlap; about {n} more probe updates would separate them (a rough estimate)."),
        (Some(false), None) => " Not settled: the leaders' forecast intervals overlap.".to_string(),
        _ => String::new(),
    };
    Some(lead + &settled)
}

/// Steps to the target and the starting loss of a checkpoint, and what the steps are to (a
/// simulated series' target is the paper's tiny loss, 1e-6).
fn figures<'a>(s: &Standing<'a>) -> (Option<f64>, Option<f64>, &'static str) {
    let what = if s.c.single_index.is_some() { "to reach loss 1e-6" } else { "to reach the target loss" };
    (s.steps, s.c.initial_eval_loss, what)
}

fn describe(s: &Standing) -> String {
    let c = s.c;
    match &c.single_index {
        Some(m) => format!("{}, mu = {:.3}", c.name, m.mu),
        None if c.name.contains(&c.step.to_string()) => c.name.clone(),
        None => format!("{}, step {}", c.name, c.step),
    }
}

/// How the most pre-trained snapshot compares with the best one, each clause about the
/// snapshot it names.
fn comparison(pair: &Pair) -> String {
    let (Some(best), Some(last)) = (&pair.best, &pair.last) else {
        return "No checkpoint finished, so there is no ranking.".into();
    };
    let (l, b) = (describe(last), describe(best));
    if !last.c.measured() {
        return format!(
            "The most pre-trained snapshot ({l}) {}, so it cannot be compared; the best one to fine-tune is {b}.",
            last.c.status
        );
    }
    if best.c.name == last.c.name {
        return format!("The most pre-trained snapshot ({l}) is also the fastest to adapt.");
    }
    let (best_steps, best_loss, what) = figures(best);
    let (last_steps, last_loss, _) = figures(last);
    let lower_start = match (best_loss, last_loss) {
        (Some(bl), Some(ll)) if ll > 0.0 && ll < bl => Some(round_ratio(bl / ll)),
        _ => None,
    };
    let forecast = |s: &Standing| if s.forecast { " (forecast)" } else { "" };
    let best_needs = match best_steps {
        Some(s) => format!("the best one ({b}) needs {s:.0} steps {what}{}", forecast(best)),
        None => format!("the best one is {b}"),
    };
    if let Some(stop) = &last.c.stopped {
        return format!("The most pre-trained snapshot ({l}) was stopped by the race at rung {} (step {}): its forecast lay beyond the leader's; {best_needs}.", stop.rung, stop.at_step);
    }
    let starts = lower_start.as_ref().map(|r| format!("starts with a {r}x lower loss but ")).unwrap_or_default();
    match (best_steps, last_steps) {
        (Some(bs), Some(ls)) if bs > 0.0 => {
            let although = lower_start.as_ref().map(|r| format!(", although it starts with a {r}x lower loss")).unwrap_or_default();
            let said = if last.forecast || best.forecast { " (a forecast from the curve model, not a measurement)" } else { "" };
            format!("The most pre-trained snapshot ({l}) needs {}x more steps {what} than the best one ({b}){although}{said}.", round_ratio(ls / bs))
        }
        (Some(_), Some(_)) => format!("The best snapshot to fine-tune is {b}, at the target from its first steps; the most pre-trained one ({l}) {starts}is slower."),
        (_, None) => format!("The most pre-trained snapshot ({l}) {starts}does not reach the target within {}; {best_needs}.", horizon(last)),
        (None, Some(_)) => format!("The best snapshot to fine-tune is {b}, not the most pre-trained one ({l})."),
    }
}

/// How far a snapshot that misses the target was followed.
fn horizon(s: &Standing) -> String {
    match s.c.forecast.as_ref().filter(|f| s.for_budget && f.forecast) {
        Some(f) => format!("the {}-update budget, by the curve model's forecast", f.budget_steps),
        None => "the budget, nor by the curve model's forecast within 10x it".into(),
    }
}

/// Whether the best snapshot is faster than the most pre-trained one beyond noise.
fn significance(best: &Standing, last: &Standing, report: &Report) -> Option<String> {
    let seeds = best.c.seeds_ok.min(last.c.seeds_ok);
    if best.c.name == last.c.name {
        let ranked = report.ranked();
        let second = ranked.get(1)?;
        return Some(match evidence(best, second) {
            Evidence::Significant => format!(
                "It is significantly faster than the runner-up, {} (95% intervals do not overlap).",
                second.c.name
            ),
            Evidence::NotSignificant => format!("It is tied with {}: their 95% intervals overlap.", second.c.name),
            Evidence::OneSeed => ONE_SEED.into(),
            Evidence::SomeSeedsMiss => format!(
                "Over {} seeds the runner-up, {}, reaches the target in some seeds only.",
                best.c.seeds_ok, second.c.name
            ),
        });
    }
    if !last.c.measured() || last.c.stopped.is_some() {
        return None;
    }
    Some(match evidence(best, last) {
        Evidence::Significant => "The best one is significantly faster (95% intervals do not overlap).".into(),
        Evidence::NotSignificant => "The difference is not significant at 95% (the intervals overlap).".into(),
        Evidence::OneSeed => ONE_SEED.into(),
        Evidence::SomeSeedsMiss => format!("Over {seeds} seeds the most pre-trained snapshot reaches the target in some seeds only, so it has no mean time to compare."),
    })
}

const ONE_SEED: &str =
    "With one seed per snapshot the scan cannot tell whether this is beyond seed noise; --seeds 3 gives 95% intervals.";

/// Whole numbers from 10, one decimal from 2, two below (1.03x, not 1.0x).
fn round_ratio(r: f64) -> String {
    match r {
        r if r >= 10.0 => format!("{r:.0}"),
        r if r >= 2.0 => format!("{r:.1}"),
        r => format!("{r:.2}"),
    }
}
