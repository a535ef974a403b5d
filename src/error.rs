//! Errors a user can act on, and the exit codes they map to.
//!
//! Every message names the file (or flag) and what is wrong with it, on one line. This module
//! must not format for the terminal or decide whether a failure aborts the scan: the runner
//! decides that (a broken checkpoint is recorded and the scan goes on).

use std::path::{Path, PathBuf};

/// Exit codes, documented in docs/usage.md ("Exit codes").
pub mod exit {
    /// Every checkpoint was fine-tuned and every gate passed.
    pub const OK: i32 = 0;
    /// A gate failed (e.g. --fail-if-last-slower); the report is complete.
    pub const GATE: i32 = 1;
    /// A bad command line or bad input before any fine-tuning: flag, folder, task file,
    /// tokenizer, report path (clap's own usage errors are 2 as well).
    pub const USAGE: i32 = 2;
    /// The scan finished, but at least one checkpoint failed (each is in the report).
    pub const SOME_FAILED: i32 = 3;
    /// A Hub scan (`hf://ORG/NAME`) could not list the repository's revisions: the Hub
    /// refused (gated, private, missing) or could not be reached, before any fine-tuning.
    pub const HUB: i32 = 4;
    /// An unexpected internal error (a bug: please report it), or the system refused what the
    /// run needs (stdout, a temporary folder, a signal handler); EX_SOFTWARE of sysexits.h.
    pub const INTERNAL: i32 = 70;
    /// Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it); the report holds
    /// every finished checkpoint with status "interrupted".
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value that cannot be used.
    #[error("invalid value for {flag}: {msg}")]
    Flag { flag: &'static str, msg: String },

    /// A file or folder that is missing, unreadable or malformed.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },

    /// The Hugging Face Hub refused or could not be reached (one line, naming the repository).
    #[error("{0}")]
    Hub(String),
    /// A tensor operation failed (shape bug, out of memory, ...).
    #[error("{context}: {source}")]
    Compute { context: String, source: candle_core::Error },

    /// The system refused what the run needs: a signal handler, a temporary folder, stdout.
    #[error("{what}: {source}")]
    System { what: String, source: std::io::Error },

    /// A value could not be encoded as JSON (a bug: every report type is serialisable).
    #[error("cannot encode {what}: {source}")]
    Encode { what: &'static str, source: serde_json::Error },

    /// A run struck a bug (a panic, caught): that run fails, the others go on.
    #[error("internal error (a panic, please report it): {0}")]
    Panic(String),

    /// An invariant of plasticity's own does not hold (a bug, please report it).
    #[error("{0}")]
    Internal(String),

    /// Ctrl-C or SIGTERM: the scan stops after the current update.
    #[error("interrupted")]
    Interrupted,

    /// The training loss became NaN or infinite: the run is stopped and reported as diverged.
    #[error("diverged: training loss became {loss} at step {step}")]
    Diverged { loss: f64, step: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Input { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    pub fn flag(flag: &'static str, msg: impl Into<String>) -> Self {
        Error::Flag { flag, msg: msg.into() }
    }

    pub fn system(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::System { what: what.into(), source }
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// The exit code this error ends the program with when it is fatal.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Flag { .. } | Error::Input { .. } => exit::USAGE,
            Error::Hub(_) => exit::HUB,
            Error::Compute { .. }
            | Error::System { .. }
            | Error::Encode { .. }
            | Error::Panic(_)
            | Error::Internal(_)
            | Error::Diverged { .. } => exit::INTERNAL,
            Error::Interrupted => exit::INTERRUPTED,
        }
    }
}

/// Attaches context to candle errors: `t.matmul(&w).ctx("layer 3 attention")?`.
pub trait CandleContext<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Compute { context: context.into(), source })
    }
}

impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Compute { context: "tensor operation".into(), source }
    }
}

/// One-line form of an error chain (candle errors can carry newlines and backtraces).
pub fn one_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or("").trim();
    first.to_string()
}
