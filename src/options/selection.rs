//! Which snapshots of a discovered series a scan keeps: `--snapshots` names them (names or
//! globs), `--max-snapshots` thins them to N spread evenly by step, linearly or in log space
//! (`--spacing`), always keeping the first and the last. A long series (Pythia's 154 revisions)
//! can then be profiled at a handful of points. This file must not discover snapshots or read
//! the environment; it only chooses among what discovery found.

use crate::cli::Spacing;
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};

/// The resolved selection flags (recorded in the report's settings as `snapshots`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Selection {
    /// Names or globs (`*`, `?`), each of which must match a snapshot.
    pub patterns: Vec<String>,
    pub max: Option<usize>,
    pub spacing: Spacing,
}

impl Selection {
    /// The flags as given; `--max-snapshots 0` and empty names are refused.
    pub fn new(snapshots: Option<&str>, max: Option<usize>, spacing: Spacing) -> Result<Option<Self>> {
        if max == Some(0) {
            return Err(Error::flag("--max-snapshots", "must be at least 1"));
        }
        let patterns: Vec<String> =
            snapshots.map(|s| s.split(',').map(|p| p.trim().to_string()).collect()).unwrap_or_default();
        if patterns.iter().any(String::is_empty) {
            return Err(Error::flag("--snapshots", "an empty name in the list"));
        }
        Ok((!patterns.is_empty() || max.is_some()).then_some(Selection { patterns, max, spacing }))
    }

    /// The snapshots kept, in step order.
    pub fn select(&self, found: Vec<CheckpointRef>) -> Result<Vec<CheckpointRef>> {
        let named = self.named(found)?;
        Ok(match self.max {
            Some(n) if n < named.len() => spread(named, n, self.spacing),
            _ => named,
        })
    }

    /// The snapshots `--snapshots` names (all without it); a pattern matching none is an error.
    fn named(&self, found: Vec<CheckpointRef>) -> Result<Vec<CheckpointRef>> {
        if self.patterns.is_empty() {
            return Ok(found);
        }
        if let Some(p) = self.patterns.iter().find(|p| !found.iter().any(|c| glob(p, &c.name))) {
            let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
            return Err(Error::flag("--snapshots", format!("{p:?} matches no snapshot (found: {})", names.join(", "))));
        }
        Ok(found.into_iter().filter(|c| self.patterns.iter().any(|p| glob(p, &c.name))).collect())
    }
}

/// `n` (at least 1, fewer than the count) snapshots spread evenly by step: the last (the one
/// alone when n is 1) and the first, then for each of the n - 2 targets evenly between their
/// steps (linearly, or evenly in log(step + 1)) the nearest snapshot not yet taken.
fn spread(found: Vec<CheckpointRef>, n: usize, spacing: Spacing) -> Vec<CheckpointRef> {
    let position = |step: u64| match spacing {
        Spacing::Linear => step as f64,
        Spacing::Log => (step as f64 + 1.0).ln(),
    };
    let at: Vec<f64> = found.iter().map(|c| position(c.step)).collect();
    let (lo, hi, last) = (at[0], at[at.len() - 1], found.len() - 1);
    let mut taken = vec![false; found.len()];
    (taken[last], taken[0]) = (true, n >= 2);
    for i in 1..n.saturating_sub(1) {
        let target = lo + (hi - lo) * i as f64 / (n - 1) as f64;
        let nearest = (0..found.len())
            .filter(|&j| !taken[j])
            .min_by(|&a, &b| (at[a] - target).abs().total_cmp(&(at[b] - target).abs()).then(a.cmp(&b)));
        if let Some(j) = nearest {
            taken[j] = true;
        }
    }
    found.into_iter().zip(taken).filter_map(|(c, keep)| keep.then_some(c)).collect()
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and `?` for one.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // classic two-pointer match with backtracking to the last star
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < s.len() {
        if i < p.len() && (p[i] == '?' || p[i] == s[j]) {
            (i, j) = (i + 1, j + 1);
        } else if i < p.len() && p[i] == '*' {
            (star, mark, i) = (Some(i), j, i + 1);
        } else if let Some(st) = star {
            (i, mark) = (st + 1, mark + 1);
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(steps: &[u64]) -> Vec<CheckpointRef> {
        let at = |s: &u64| CheckpointRef {
            name: format!("step{s}"),
            path: std::path::PathBuf::from(format!("step{s}")),
            step: *s,
            step_source: "folder name",
        };
        steps.iter().map(at).collect()
    }

    fn names(c: &[CheckpointRef]) -> Vec<&str> {
        c.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn globs_match_names() {
        assert!(glob("step1*", "step1000") && glob("step?000", "step3000") && glob("*", "anything"));
        assert!(!glob("step1*", "step2000") && !glob("step?", "step10") && glob("a*b*c", "aXbYbc"));
    }

    #[test]
    fn linear_spacing_keeps_the_ends_and_the_nearest_between() {
        let all = series(&[0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]);
        let kept = Selection { patterns: vec![], max: Some(3), spacing: Spacing::Linear }.select(all).unwrap();
        assert_eq!(names(&kept), ["step0", "step4000", "step8000"]);
    }

    #[test]
    fn log_spacing_favours_early_snapshots() {
        // Pythia's early revisions are log-spaced: 1, 2, 4, ..., 512, then every 1000
        let all = series(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 64000, 143000]);
        let kept = Selection { patterns: vec![], max: Some(4), spacing: Spacing::Log }.select(all.clone()).unwrap();
        assert_eq!(names(&kept), ["step1", "step64", "step4000", "step143000"]);
        let linear = Selection { patterns: vec![], max: Some(4), spacing: Spacing::Linear }.select(all).unwrap();
        assert_eq!(names(&linear), ["step1", "step16000", "step64000", "step143000"]);
    }
}
