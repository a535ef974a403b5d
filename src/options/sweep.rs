//! A sweep over LoRA ranks and learning rates (`--ranks`, `--lrs`): the grid, its variants in
//! the order the runner trains them, and the scan flags a sweep cannot be combined with. This
//! file must not run the variants or compare them; the runner and the report do.

use crate::cli::{ScanArgs, Strategy};
use crate::error::{Error, Result};

/// A grid of LoRA ranks and learning rates; the first of each is the main scan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sweep {
    pub ranks: Vec<usize>,
    pub lrs: Vec<f64>,
    /// --lrs was given (else `lrs` is the scan's one rate).
    #[serde(skip)]
    pub lrs_given: bool,
}

impl Sweep {
    /// (rank, lr) pairs: the main one first, then the rest of the grid, ranks outermost.
    pub fn variants(&self) -> Vec<(usize, f64)> {
        let grid = self.ranks.iter().flat_map(|&r| self.lrs.iter().map(move |&l| (r, l)));
        std::iter::once(self.main()).chain(grid.filter(|v| *v != self.main())).collect()
    }

    pub fn main(&self) -> (usize, f64) {
        (self.ranks[0], self.lrs[0])
    }
}

/// `--ranks` and `--lrs`: each a list of distinct values; None when neither is given.
pub(super) fn sweep(args: &ScanArgs, rank: usize, lr: f64) -> Result<Option<Sweep>> {
    if args.ranks.is_none() && args.lrs.is_none() {
        return Ok(None);
    }
    let refuse = |why: &str| {
        Err(Error::flag(
            if args.ranks.is_some() { "--ranks" } else { "--lrs" },
            format!("cannot be combined with {why}"),
        ))
    };
    if args.strategy == Strategy::Race {
        return refuse("--strategy race (each variant would race separately)");
    }
    if args.partition.is_some() {
        return refuse("--partition yet (each part would sweep its own snapshots against its own target)");
    }
    if args.target_drop.is_some() {
        return refuse("--target-drop (each variant's drop would be its own; give --target-loss or none)");
    }
    if args.ranks.is_some() && args.lora.init_adapter.is_some() {
        return refuse("--init-adapter (the adapter fixes the rank)");
    }
    let ranks = match &args.ranks {
        Some(list) => list_of("--ranks", list, |v| v.parse::<usize>().ok().filter(|&r| r > 0))?,
        None => vec![rank],
    };
    let lrs = match &args.lrs {
        Some(list) => list_of("--lrs", list, |v| v.parse::<f64>().ok().filter(|l| l.is_finite() && *l > 0.0))?,
        None => vec![lr],
    };
    Ok(Some(Sweep { ranks, lrs, lrs_given: args.lrs.is_some() }))
}

/// A comma-separated list of distinct values, each checked by `parse`.
fn list_of<T: PartialEq + Copy>(flag: &'static str, list: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    for item in list.split(',').map(str::trim) {
        let v =
            parse(item).ok_or_else(|| Error::flag(flag, format!("{item:?} in {list:?} is not a positive number")))?;
        if out.contains(&v) {
            return Err(Error::flag(flag, format!("{item} is listed twice in {list:?}")));
        }
        out.push(v);
    }
    Ok(out)
}
