//! The progress bar on stderr: checkpoint i/n, step, loss, tokens/s and ETA. Hidden when
//! stderr is not a terminal or with --quiet. It must not affect what is measured.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
        let bar = ProgressBar::new((checkpoints * steps) as u64);
        if !(enabled && std::io::stderr().is_terminal()) {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
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
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
