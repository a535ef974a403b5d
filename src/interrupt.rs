//! Ctrl-C and SIGTERM during a scan. The first signal asks the scan to stop: the update in
//! progress finishes, the run it belongs to is abandoned (it would be incomplete), the report
//! is written with every finished checkpoint and status "interrupted", and the process exits
//! 130; `--resume` later completes it. A second signal exits at once (130), which loses
//! nothing either, because reports are only ever replaced atomically. This module must not
//! decide what is written: it only records that a stop was asked for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{exit, Error, Result};

static REQUESTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the handlers (once; later calls do nothing).
pub fn install() -> Result<()> {
    if REQUESTED.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // the second signal exits at once; the first only sets the flag
        signal_hook::flag::register_conditional_shutdown(signal, exit::INTERRUPTED, flag.clone())
            .map_err(|e| Error::system(format!("cannot handle signal {signal}"), e))?;
        signal_hook::flag::register(signal, flag.clone())
            .map_err(|e| Error::system(format!("cannot handle signal {signal}"), e))?;
    }
    let _ = REQUESTED.set(flag);
    Ok(())
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// `Err(Error::Interrupted)` once a stop was asked for: call between units of work.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
