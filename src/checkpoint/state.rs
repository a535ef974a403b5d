//! `trainer_state.json`, as transformers' Trainer writes it next to each checkpoint.
//!
//! Only the fields plasticity uses are read; everything else in the file is ignored, so files
//! from any transformers version parse. This module must not guess a step it cannot read.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct TrainerState {
    pub global_step: u64,
    /// Pre-training log entries (`{"step": .., "loss": ..}` and others); kept for reports.
    #[serde(default)]
    pub log_history: Vec<serde_json::Value>,
}

impl TrainerState {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
        serde_json::from_str(&text).map_err(|e| Error::input(path, format!("invalid trainer state: {e}")))
    }
}
