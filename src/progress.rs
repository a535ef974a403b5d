//! The progress bars on stderr: checkpoint i/n, step, loss, tokens/s and ETA, and one bar per
//! download of a Hub scan (bytes, MB/s, ETA) drawn with it. Hidden when stderr is not a
//! terminal or with --quiet. It must not affect what is measured.

use std::io::IsTerminal;
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Every bar of the process, drawn together so that they do not overwrite each other.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// `bar` drawn with the others, or hidden.
fn shown(bar: ProgressBar, enabled: bool) -> ProgressBar {
    if enabled && std::io::stderr().is_terminal() {
        bars().add(bar)
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        bar
    }
}

/// A bar for one download of `total` bytes, or hidden; `finish_and_clear` it when done.
pub fn download_bar(prefix: String, total: u64, enabled: bool) -> ProgressBar {
    let bar = shown(ProgressBar::new(total), enabled);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (ETA {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar
}

/// A line above the bars, or on stderr when they are hidden.
pub fn println(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

use crate::curve::StepEvent;

pub struct Progress {
    bar: ProgressBar,
    n: usize,
    steps: usize,
    /// Several workers (--devices): the bar advances when a checkpoint ends, not per step.
    per_checkpoint: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub fn new(checkpoints: usize, steps: usize, enabled: bool) -> Self {
        let bar = shown(ProgressBar::new((checkpoints * steps) as u64), enabled);
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {msg} (ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        Progress { bar, n: checkpoints, steps, per_checkpoint: false.into() }
    }

    pub fn start_checkpoint(&self, i: usize, name: &str) {
        self.bar.set_position((i * self.steps) as u64);
        self.bar.set_prefix(format!("checkpoint {}/{} {name}", i + 1, self.n));
    }

    /// A worker started a checkpoint on `device` (--devices).
    pub fn begin_checkpoint(&self, name: &str, device: &str) {
        self.per_checkpoint.store(true, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_prefix(format!(
            "{name} on {device} ({} of {} done)",
            self.bar.position() as usize / self.steps.max(1),
            self.n
        ));
    }

    /// A worker finished a checkpoint (--devices).
    pub fn end_checkpoint(&self) {
        self.bar.inc(self.steps as u64);
    }

    pub fn step(&self, ev: &StepEvent) {
        if !self.per_checkpoint.load(std::sync::atomic::Ordering::Relaxed) {
            self.bar.inc(1);
        }
        let tok_s = ev.tokens as f64 / ev.step_s.max(1e-9);
        let eval = ev.eval_loss.map(|l| format!(" eval {l:.4}")).unwrap_or_default();
        self.bar.set_message(format!("step {}/{} loss {:.4}{eval} {tok_s:.0} tok/s", ev.step, ev.steps, ev.train_loss));
    }

    /// A line above the bar (or plain stderr when the bar is hidden).
    pub fn println(&self, line: &str) {
        println(&self.bar, line);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
