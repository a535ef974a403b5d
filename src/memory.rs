//! Memory: the peak resident memory per checkpoint, from Linux's /proc (the high-water mark
//! is reset before a checkpoint by writing 5 to /proc/self/clear_refs and read after it from
//! VmHWM), and the memory available before loading one (MemAvailable, capped by a cgroup v2
//! limit, or `PLASTICITY_MEMORY_LIMIT` bytes). On other systems these say nothing.

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

/// Bytes this process may still use: MemAvailable, within the cgroup's memory.max, or the
/// `PLASTICITY_MEMORY_LIMIT` environment variable (bytes) when set.
pub fn available_bytes() -> Option<u64> {
    if let Some(limit) = std::env::var("PLASTICITY_MEMORY_LIMIT").ok().and_then(|v| v.trim().parse().ok()) {
        return Some(limit);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let cgroup = || -> Option<u64> {
        let max: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?.trim().parse().ok()?;
        let used: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok()?.trim().parse().ok()?;
        Some(max.saturating_sub(used))
    };
    Some(cgroup().map_or(kib * 1024, |c| c.min(kib * 1024)))
}

/// Keeps freed memory in the process for the next allocation of the same size: glibc's default
/// gives each large tensor fresh pages from the kernel (mmap) and returns them on free, so every
/// training step page-faults and zeroes its activations again (15% of a Pythia-70M-shape step,
/// `benches/compare_peft.sh`). Tensors up to 32 MiB (glibc's ceiling for this setting) now come
/// from the heap, and the heap's top is not trimmed. A shard thread allocates from an arena of
/// its own, and the trim threshold does not cover an arena's extra 64 MiB heaps: glibc unmapped
/// one whenever a step freed it and mapped it again in the next step (6 x 512 GPT-NeoX, 2
/// threads: about 7,000 page faults, 100 unmappings and over 2,000 flushes of the other
/// thread's address translations per step). A top pad as large as such a heap keeps it. Call
/// it once, before the first allocation that matters; elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters; the values are in glibc's range (the
        // mmap threshold at most HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit targets, and the top pad
        // HEAP_MAX_SIZE).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// The calling thread's minor page faults so far.
    fn thread_faults() -> i64 {
        // SAFETY: rusage is plain data, and getrusage only writes into the one it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        usage.ru_minflt
    }

    /// The page faults taken while 96 MiB is written in blocks of 2 MiB, as a shard's
    /// activations are, and then freed.
    fn one_step() -> i64 {
        let before = thread_faults();
        let blocks: Vec<Vec<u8>> = (0..48).map(|_| vec![1u8; 2 << 20]).collect();
        drop(std::hint::black_box(blocks));
        thread_faults() - before
    }

    #[test]
    fn a_thread_reuses_the_memory_its_last_step_freed() {
        super::keep_freed_memory();
        let (first, second) = std::thread::spawn(|| (one_step(), one_step())).join().unwrap();
        // 24,576 pages of 4 KiB the first time (fewer where the kernel backs them with huge pages)
        assert!(second <= first.max(1_000) / 10, "the second step faulted {second} pages in again (the first {first})");
    }
}
