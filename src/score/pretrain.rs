//! Pre-training context from the Trainer's `log_history`: where the pre-training loss curve
//! flattens. A snapshot taken after that point has little left to gain from pre-training,
//! and (arXiv 2602.02855, Springer et al. 2025) may adapt more slowly.

/// Plateau onset: the first logged step at which the pre-training loss, smoothed by a
/// trailing mean over 3 logged points, is within 10% of its total drop (first smoothed
/// value minus the last) from the last. None with fewer than 4 points or no drop.
pub fn plateau_onset(curve: &[(f64, f64)]) -> Option<f64> {
    if curve.len() < 4 {
        return None;
    }
    let smooth: Vec<(f64, f64)> = (0..curve.len())
        .map(|i| {
            let window = &curve[i.saturating_sub(2)..=i];
            (curve[i].0, window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64)
        })
        .collect();
    let (first, last) = (smooth[0].1, smooth[smooth.len() - 1].1);
    let drop = first - last;
    if drop <= 0.0 {
        return None;
    }
    smooth.iter().find(|p| p.1 - last <= 0.1 * drop).map(|p| p.0)
}

/// (step, loss) of every `log_history` entry that has both, in step order, duplicates merged.
pub fn loss_curve(entries: &[serde_json::Value]) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> =
        entries.iter().filter_map(|e| Some((e.get("step")?.as_f64()?, e.get("loss")?.as_f64()?))).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points.dedup_by(|a, b| a.0 == b.0);
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onset_is_where_ninety_percent_of_the_drop_is_done() {
        // Loss 10 -> 1 with a long flat tail: smoothed values reach within 0.9 of the end at step 5.
        let curve: Vec<(f64, f64)> = [10.0, 10.0, 10.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as f64, l))
            .collect();
        assert_eq!(plateau_onset(&curve), Some(6.0));
        assert_eq!(plateau_onset(&curve[..3]), None);
        let rising: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(plateau_onset(&rising), None);
    }

    #[test]
    fn loss_curve_keeps_entries_with_a_loss() {
        let entries: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"step": 20, "loss": 2.0}, {"step": 10, "loss": 3.0}, {"step": 20, "eval_loss": 2.5}, {"epoch": 1}]"#,
        )
        .unwrap();
        assert_eq!(loss_curve(&entries), vec![(10.0, 3.0), (20.0, 2.0)]);
    }
}
