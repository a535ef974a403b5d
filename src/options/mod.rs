//! Settings resolved once from the command line: typed, checked, with defaults applied.
//! No raw flag strings travel past this module, and nothing here trains or reads weights.
//!
//! Each command resolves its options in its own file: `scan.rs` (with `sweep.rs` for `--ranks`
//! and `--lrs`, and `partition.rs` for `--partition`), `probe.rs` and `simulate.rs` (simulate
//! and demo). What several commands share has its own file too: `training.rs` (the LoRA and
//! training flags) and `export.rs` (the report files of scan, report and merge). The checks of
//! single values and the default thread count are here, and every public item is re-exported
//! here, so `crate::options::X` does not depend on the files.

mod export;
mod partition;
mod probe;
mod scan;
mod selection;
mod simulate;
mod sweep;
mod training;

use crate::error::{Error, Result};

pub use export::exports;
pub use partition::{partition, Partition};
pub use probe::ProbeOptions;
pub use scan::{budget, Explicit, HubScan, ScanOptions};
pub use selection::Selection;
pub use simulate::simulate_spec;
pub use sweep::Sweep;
pub use training::{DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_STEPS};

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn at_least(flag: &'static str, value: usize, min: usize) -> Result<usize> {
    if value < min {
        return Err(Error::flag(flag, format!("{value} is less than {min}")));
    }
    Ok(value)
}

fn finite_positive(flag: &'static str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::flag(flag, format!("{value} must be a positive number")));
    }
    Ok(value)
}
