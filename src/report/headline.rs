//! One plain-language sentence about the ranking: how the most pre-trained snapshot compares
//! with the best one. Uses the single-index measurements (steps to loss <= 1e-6, population
//! loss) when the series has them, else steps to the target eval loss.

use super::{CheckpointReport, Report};

/// Steps to convergence and the starting loss of a checkpoint.
fn figures(c: &CheckpointReport) -> (Option<f64>, Option<f64>, &'static str) {
    match &c.single_index {
        Some(m) => (m.steps_to_tiny_loss.map(|s| s as f64), Some(m.initial_loss), "to reach loss 1e-6"),
        None => (c.steps_to_target, c.initial_eval_loss, "to reach the target loss"),
    }
}

fn describe(c: &CheckpointReport) -> String {
    match &c.single_index {
        Some(m) => format!("{}, mu = {:.3}", c.name, m.mu),
        None if c.name.contains(&c.step.to_string()) => c.name.clone(),
        None => format!("{}, step {}", c.name, c.step),
    }
}

pub fn headline(report: &Report) -> String {
    let sentence = comparison(report);
    match significance(report) {
        Some(s) => format!("{sentence} {s}"),
        None => sentence,
    }
}

/// Whether the winner beats the most pre-trained snapshot beyond seed noise (needs 2+ seeds).
fn significance(report: &Report) -> Option<String> {
    let ok: Vec<&CheckpointReport> = report.checkpoints.iter().filter(|c| c.measured()).collect();
    let best = ok.iter().find(|c| c.rank == Some(1))?;
    let last = ok.iter().max_by_key(|c| c.step)?;
    if best.name == last.name || best.seeds < 2 {
        return None;
    }
    let key = "device_hours_to_target";
    let (b, l) = (best.ci95.get(key)?, last.ci95.get(key));
    let verdict = match l {
        Some(l) if b[1] < l[0] => "significantly faster than",
        Some(_) => "not significantly faster than (95% intervals overlap)",
        None => "faster than (the most pre-trained one misses the target) ",
    };
    Some(format!("Over {} seeds the winner is {verdict} the most pre-trained snapshot.", best.seeds).replace(")  ", ") "))
}

fn comparison(report: &Report) -> String {
    let ok: Vec<&CheckpointReport> = report.checkpoints.iter().filter(|c| c.measured()).collect();
    let (Some(best), Some(last)) = (ok.iter().find(|c| c.rank == Some(1)), ok.iter().max_by_key(|c| c.step)) else {
        return "No checkpoint finished, so there is no ranking.".into();
    };
    if best.name == last.name {
        return format!("The most pre-trained snapshot ({}) is also the fastest to adapt.", describe(last));
    }
    let (best_steps, best_loss, what) = figures(best);
    let (last_steps, last_loss, _) = figures(last);
    let start = match (best_loss, last_loss) {
        (Some(b), Some(l)) if l > 0.0 && l < b => format!(", although it starts with a {}x lower loss", round_ratio(b / l)),
        _ => String::new(),
    };
    match (best_steps, last_steps) {
        (Some(b), Some(l)) if b > 0.0 => format!(
            "The most pre-trained snapshot ({}) needs {}x more steps {what} than the best one ({}){start}.",
            describe(last), round_ratio(l / b), describe(best)
        ),
        (Some(b), None) => format!(
            "The most pre-trained snapshot ({}) does not get there within the budget; the best one ({}) needs {b:.0} steps {what}{start}.",
            describe(last), describe(best)
        ),
        _ => format!("The best snapshot to fine-tune is {}, not the most pre-trained one ({}).", describe(best), describe(last)),
    }
}

/// 2 significant figures for small ratios, whole numbers above 10.
fn round_ratio(r: f64) -> String {
    if r >= 10.0 { format!("{r:.0}") } else { format!("{r:.1}") }
}
