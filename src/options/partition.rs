//! A partitioned scan (`--partition`): which part of the series this process scans, given as
//! K/N or read from a Slurm job array or a Kubernetes Indexed Job's environment. This file
//! must not read the environment itself (the caller passes a reader) or choose snapshots
//! beyond [`Partition::select`].

use crate::cli::Strategy;
use crate::error::{Error, Result};

/// One part of a partitioned scan: the snapshots at positions k-1, k-1+n, k-1+2n, ... in step
/// order (k is 1-based, as in cargo-nextest's `--partition count:k/n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub k: usize,
    pub n: usize,
}

impl Partition {
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items.into_iter().enumerate().filter(|(i, _)| i % self.n == self.k - 1).map(|(_, c)| c).collect()
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// `--partition K/N`, `auto` (Slurm job arrays) or `auto/N` (Kubernetes Indexed Jobs); `env`
/// reads the environment.
pub fn partition(
    value: Option<&str>,
    strategy: Strategy,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Partition>> {
    let Some(value) = value else { return Ok(None) };
    if strategy == Strategy::Race {
        return Err(Error::flag(
            "--partition",
            "a race compares all snapshots at each rung, so it cannot be partitioned: use --strategy full",
        ));
    }
    let number = |name: &str| -> Result<usize> {
        let v = env(name).ok_or_else(|| Error::flag("--partition", format!("auto: {name} is not set")))?;
        v.trim().parse().map_err(|_| Error::flag("--partition", format!("auto: {name}={v:?} is not a number")))
    };
    let (k, n) = match value.split_once('/') {
        None if value == "auto" => {
            let (id, min, count) = (
                number("SLURM_ARRAY_TASK_ID")?,
                env("SLURM_ARRAY_TASK_MIN").map_or(Ok(0), |_| number("SLURM_ARRAY_TASK_MIN"))?,
                number("SLURM_ARRAY_TASK_COUNT")?,
            );
            (id.checked_sub(min).map(|i| i + 1), Some(count))
        }
        Some(("auto", n)) => (Some(number("JOB_COMPLETION_INDEX")? + 1), n.parse().ok()),
        Some((k, n)) => (k.parse().ok(), n.parse().ok()),
        None => (None, None),
    };
    match (k, n) {
        (Some(k), Some(n)) if n >= 1 && (1..=n).contains(&k) => Ok(Some(Partition { k, n })),
        _ => Err(Error::flag("--partition", format!("{value:?} resolves to no part K/N with 1 <= K <= N"))),
    }
}
