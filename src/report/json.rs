//! The JSON report (`--json FILE`): the [`Report`] as serde writes it, pretty-printed.

use super::{Exporter, Report};
use crate::error::{Error, Result};

pub struct Json;

impl Exporter for Json {
    fn render(&self, report: &Report) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(report).map_err(|source| Error::Encode { what: "report", source })?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}
