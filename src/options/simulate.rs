//! The options of `plasticity simulate` and `plasticity demo`: the single-index series to write
//! ([`SimulateSpec`]), from the series flags both commands share. This file must not write the
//! series or scan it.

use std::path::PathBuf;

use super::{at_least, finite_positive};
use crate::cli::SeriesArgs;
use crate::error::{Error, Result};
use crate::single_index::simulate::{Amounts, SimulateSpec};

/// The simulated series `simulate` or `demo` writes to `out`. `default_m0` applies when
/// --m0 is not given (demo starts deterministically at 1/sqrt(d), as the paper's reference).
pub fn simulate_spec(args: &SeriesArgs, out: PathBuf, demo: bool) -> Result<SimulateSpec> {
    let link = args.link;
    let dim = at_least("--dim", args.dim, 2)?;
    let variant = args.variant;
    let m0 = args.m0.or(demo.then(|| 1.0 / (dim as f64).sqrt()));
    if let Some(m) = m0 {
        if !(-1.0..=1.0).contains(&m) || m == 0.0 {
            return Err(Error::flag("--m0", format!("{m} must be in [-1, 1] and non-zero")));
        }
    }
    Ok(SimulateSpec {
        out,
        link,
        dim,
        amounts: amounts(args)?,
        variant,
        m0,
        lr: finite_positive("--lr", args.lr)?,
        batch_size: at_least("--batch-size", args.batch_size.unwrap_or(dim), 1)?,
        teacher_seed: args.teacher_seed,
        budget: args.budget.map(|b| at_least("--budget", b, 1)).transpose()?,
    })
}

fn amounts(args: &SeriesArgs) -> Result<Amounts> {
    if let Some(list) = &args.strengths {
        let mus = parse_list::<f64>("--strengths", list)?;
        if let Some(bad) = mus.iter().find(|m| !(0.0..=1.0).contains(*m)) {
            return Err(Error::flag("--strengths", format!("{bad} is not in [0, 1]")));
        }
        return Ok(Amounts::Strengths(mus));
    }
    let pretrain_lr = args.pretrain_lr;
    if !(pretrain_lr > 0.0 && pretrain_lr <= 1.0) {
        return Err(Error::flag("--pretrain-lr", format!("{pretrain_lr} is not in (0, 1]")));
    }
    Ok(Amounts::Steps { steps: parse_list::<u64>("--steps-list", &args.steps_list)?, pretrain_lr })
}

fn parse_list<T: std::str::FromStr>(flag: &'static str, list: &str) -> Result<Vec<T>> {
    let items: Vec<T> = list
        .split(',')
        .map(|s| s.trim().parse::<T>().map_err(|_| Error::flag(flag, format!("{s:?} is not a number"))))
        .collect::<Result<_>>()?;
    if items.is_empty() {
        return Err(Error::flag(flag, "empty list"));
    }
    Ok(items)
}
