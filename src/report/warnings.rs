//! What a finished scan warns about, in plain words: results that are easy to misread. The
//! scan prints these on stderr after the table; they restate the report, never add to it.

use super::Report;

/// Every warning about `report`, in the order they matter.
pub fn warnings(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(at_target_before_training(report));
    out.extend(seed_failures(report));
    out.extend(little_progress(report));
    out
}

/// A snapshot already at the target before fine-tuning wins on zero time, which says nothing
/// about how it adapts.
fn at_target_before_training(report: &Report) -> Option<String> {
    let names: Vec<&str> =
        report.checkpoints.iter().filter(|c| c.at_target_before_training).map(|c| c.name.as_str()).collect();
    (!names.is_empty()).then(|| {
        format!(
            "{} {} at the target before fine-tuning (eval loss at step 0 at or below it): a zero time to target measures no adaptation; give --target-drop F to rank by how far each snapshot's loss falls",
            names.join(", "),
            if names.len() == 1 { "is" } else { "are" }
        )
    })
}

/// Checkpoints ranked on fewer seeds than were run.
fn seed_failures(report: &Report) -> Vec<String> {
    report
        .checkpoints
        .iter()
        .filter(|c| !c.seed_failures.is_empty() && c.seeds_ok > 0)
        .map(|c| {
            let failed: Vec<String> = c.seed_failures.iter().map(|f| format!("seed {} {}", f.seed, f.status)).collect();
            format!(
                "{}: {} of {} seeds finished ({}); its metrics are means over the {} that did",
                c.name,
                c.seeds_ok,
                c.seeds,
                failed.join(", "),
                c.seeds_ok
            )
        })
        .collect()
}

/// When no fine-tune moved its eval loss by 1%, the ranking mostly restates the initial
/// losses: say so, and what to change.
fn little_progress(report: &Report) -> Option<String> {
    let drops: Vec<f64> = report
        .checkpoints
        .iter()
        .filter_map(|c| Some((c.initial_eval_loss? - c.final_eval_loss?) / c.initial_eval_loss?.abs().max(1e-12)))
        .collect();
    let best = drops.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (!drops.is_empty() && best < 0.01).then(|| {
        format!("no checkpoint's eval loss fell by 1% ({:.2}% at best): the ranking mostly reflects the initial losses; raise --steps or --lr", 100.0 * best)
    })
}
