//! The scan report: one data model, written in several formats.
//!
//! Report files are created when the scan starts (a bad path fails before any training) and
//! rewritten atomically (temporary file + rename) after every checkpoint, so a crash never
//! loses a finished measurement or leaves a half-written file. Formats implement [`Exporter`];
//! this module must not compute scores (the scorer does) or print progress.
//!
//! The data model itself, the contract `schemas/report.schema.json` states, is in `schema.rs`
//! and re-exported here; this file keeps the exporters and the files they write.

pub mod csv;
pub mod gates;
pub mod headline;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod plot;
mod schema;
pub mod standing;
pub mod table;
pub mod warnings;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use schema::*;

/// One output format.
pub trait Exporter {
    fn render(&self, report: &Report) -> Result<Vec<u8>>;
}

/// The formats a report can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Markdown,
    Csv,
    Junit,
    /// SVG or PNG, by the file's extension; written by plotters, so never to stdout.
    Plot,
}

impl Format {
    fn exporter(self) -> Option<Box<dyn Exporter>> {
        match self {
            Format::Json => Some(Box::new(json::Json)),
            Format::Markdown => Some(Box::new(markdown::Markdown)),
            Format::Csv => Some(Box::new(csv::Csv)),
            Format::Junit => Some(Box::new(junit::Junit)),
            Format::Plot => None,
        }
    }
}

/// Where a report goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

impl Output {
    /// "-" is stdout, anything else a file.
    pub fn parse(value: &str) -> Output {
        if value == "-" {
            Output::Stdout
        } else {
            Output::File(PathBuf::from(value))
        }
    }
}

/// A format bound to where it goes; `exporter` None is the plot.
struct Sink {
    output: Output,
    exporter: Option<Box<dyn Exporter>>,
}

impl Sink {
    /// Writes the report to the sink's file, atomically.
    fn write_file(&self, path: &Path, report: &Report) -> Result<()> {
        match &self.exporter {
            Some(e) => crate::fs::write_atomic(path, &e.render(report)?),
            None => {
                let tmp = crate::fs::temp_path(path);
                plot::render(report, &tmp)?;
                crate::fs::commit(&tmp, path).map_err(|e| Error::input(path, format!("cannot write plot: {e}")))
            }
        }
    }
}

/// The report files of a scan.
pub struct Reports {
    sinks: Vec<Sink>,
}

impl Reports {
    /// Creates every report file now, so an unwritable path fails before training.
    pub fn create(exports: &[(Format, Output)]) -> Result<Self> {
        let sinks: Vec<Sink> =
            exports.iter().map(|(f, out)| Sink { output: out.clone(), exporter: f.exporter() }).collect();
        for sink in &sinks {
            if let Output::File(path) = &sink.output {
                touch(path)?;
            }
        }
        Ok(Reports { sinks })
    }

    /// Rewrites every file report (stdout reports are written only at the end).
    pub fn update(&self, report: &Report) -> Result<()> {
        for sink in &self.sinks {
            if let Output::File(path) = &sink.output {
                sink.write_file(path, report)?;
            }
        }
        Ok(())
    }

    /// Writes the final report everywhere, stdout included.
    pub fn finish(&self, report: &Report) -> Result<()> {
        self.update(report)?;
        for sink in &self.sinks {
            if let (Output::Stdout, Some(exporter)) = (&sink.output, &sink.exporter) {
                let bytes = exporter.render(report)?;
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)
                    .and_then(|_| out.flush())
                    .map_err(|e| Error::system("cannot write to stdout", e))?;
            }
        }
        Ok(())
    }

    /// Whether some report goes to stdout (then the table goes to stderr).
    pub fn uses_stdout(&self) -> bool {
        self.sinks.iter().any(|s| s.output == Output::Stdout)
    }
}

/// Creates (or truncates) `path`, failing early with a message naming it.
fn touch(path: &Path) -> Result<()> {
    std::fs::File::create(path).map(|_| ()).map_err(|e| Error::input(path, format!("cannot create report file: {e}")))
}
