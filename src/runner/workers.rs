//! `--devices`: one worker thread per device, each taking the next snapshot not yet taken.
//!
//! Every snapshot is fine-tuned exactly as a sequential scan would (same seeds, same batches,
//! same blocks), so results differ only in timings. The main thread collects the results in
//! step order and rewrites the reports after each one. Peak memory per snapshot is not
//! recorded: several snapshots are resident at once and the process's peak is shared. This
//! module must not score or format anything.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use candle_core::Device;

use super::{assemble, CheckpointResult, Scan};
use crate::discover::CheckpointRef;
use crate::error::Result;
use crate::progress::Progress;
use crate::report::Reports;
use crate::report::ScanStatus;

impl Scan<'_> {
    /// Runs the workers and collects their results; returns the scan's status.
    pub(super) fn run_workers(
        &mut self,
        checkpoints: &[CheckpointRef],
        reports: &Reports,
        progress: &Progress,
    ) -> Result<ScanStatus> {
        let ctx = self.context();
        let names: std::collections::BTreeSet<String> = self
            .opts
            .devices
            .iter()
            .map(|d| crate::device::name(d).split(" (").next().unwrap_or_default().to_string())
            .collect();
        if names.len() > 1 {
            eprintln!(
                "warning: --devices: the devices differ ({}); a snapshot's timings depend on which one fine-tuned it",
                names.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        // results in step order, and each one's position in `checkpoints`
        let (mut results, mut order, mut interrupted): (Vec<CheckpointResult>, Vec<usize>, bool) =
            (Vec::new(), Vec::new(), false);
        let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(usize, Option<CheckpointResult>)>();
        let this = &*self;
        let outcome = std::thread::scope(|s| -> Result<()> {
            for device in &this.opts.devices {
                let (tx, next, stop) = (tx.clone(), &next, &stop);
                s.spawn(move || this.worker(device, checkpoints, (next, stop), progress, tx));
            }
            drop(tx);
            for (i, result) in rx {
                let Some(result) = result else {
                    interrupted = true;
                    continue;
                };
                let at = order.partition_point(|&j| j < i);
                order.insert(at, i);
                results.insert(at, result);
                if let Err(e) = reports.update(&assemble::assemble(&results, &ctx, ScanStatus::Running)) {
                    stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
            Ok(())
        });
        self.results = results;
        outcome?;
        Ok(if interrupted { ScanStatus::Interrupted } else { ScanStatus::Complete })
    }

    /// One worker: takes snapshots until none is left, the scan is interrupted or the main
    /// thread stopped it.
    fn worker(
        &self,
        device: &Device,
        checkpoints: &[CheckpointRef],
        (next, stop): (&AtomicUsize, &AtomicBool),
        progress: &Progress,
        tx: mpsc::Sender<(usize, Option<CheckpointResult>)>,
    ) {
        while !stop.load(Ordering::SeqCst) {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(c) = checkpoints.get(i) else { return };
            progress.begin_checkpoint(&c.name, &crate::device::label(device));
            let result = self.measure(c, device, progress);
            let interrupted = result.is_none();
            if interrupted {
                stop.store(true, Ordering::SeqCst);
            } else {
                progress.end_checkpoint();
            }
            if tx.send((i, result)).is_err() || interrupted {
                return;
            }
        }
    }
}
