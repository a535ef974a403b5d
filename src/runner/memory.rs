//! Peak resident memory per checkpoint, from Linux's /proc: the high-water mark is reset
//! before a checkpoint (writing 5 to /proc/self/clear_refs) and read after it (VmHWM). On
//! other systems both are no-ops and the report says nothing.

/// Resets the process's peak resident set size, where the kernel allows it.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident set size since the last reset, in bytes.
pub fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
