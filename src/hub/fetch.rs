//! Streams a Hub scan's weights: one thread downloads the snapshots in scan order, each when
//! the scan asks for it and the next one ahead, so snapshot k+1 arrives while snapshot k
//! fine-tunes. With `--delete-downloads` a snapshot's weight files leave the cache once it is
//! scanned, so at most the snapshot in work and the one ahead are on disk.
//!
//! Before each snapshot's download the bytes it still needs are checked against the disk's free
//! space. A snapshot whose download fails for good is failed with the revision and the HTTP
//! status, and the scan goes on. Interrupting the scan stops the download in flight; its
//! partial file stays `.incomplete` and the next scan resumes it. This module must not train.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::api::{Hub, RemoteFile};
use super::cache::RepoCache;
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};

/// How many snapshots are downloaded ahead of the last one the scan asked for.
const AHEAD: usize = 1;

/// How often a scan waiting for a download looks for Ctrl-C.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// One snapshot's weights to fetch, or why it cannot be fetched.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub commit: String,
    pub weights: Vec<RemoteFile>,
    /// Set when the revision failed before its weights (listing, small files, offline).
    pub failed: Option<String>,
}

#[derive(Default)]
struct State {
    requested: Vec<bool>,
    /// Scanned (or skipped): its weights may leave the cache.
    released: Vec<bool>,
    outcome: Vec<Option<std::result::Result<(), String>>>,
    stop: bool,
}

struct Shared {
    hub: Hub,
    cache: RepoCache,
    repo: String,
    plans: Vec<Plan>,
    state: Mutex<State>,
    changed: Condvar,
    bars: bool,
}

/// The download thread and what the scan asks of it.
pub struct Fetcher {
    shared: Arc<Shared>,
    keep: bool,
    thread: Option<JoinHandle<()>>,
}

impl Fetcher {
    /// Starts the download thread for `plans` (in scan order).
    pub fn start(hub: Hub, cache: RepoCache, repo: String, plans: Vec<Plan>, keep: bool, bars: bool) -> Self {
        let n = plans.len();
        let outcome = plans.iter().map(|p| p.failed.clone().map(Err)).collect();
        let state = Mutex::new(State { requested: vec![false; n], released: vec![false; n], outcome, stop: false });
        let shared = Arc::new(Shared { hub, cache, repo, plans, state, changed: Condvar::new(), bars });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("hub-download".into()).spawn(move || worker.run()).ok();
        Fetcher { shared, keep, thread }
    }

    /// Blocks until `c`'s weights are in the cache: `Error::Hub` says why they never will
    /// be; Ctrl-C while waiting is `Error::Interrupted`.
    pub fn ready(&self, c: &CheckpointRef) -> Result<()> {
        crate::interrupt::check()?;
        let Some(i) = self.index(&c.name) else { return Ok(()) };
        let mut state = self.shared.lock();
        state.requested[i] = true;
        self.shared.changed.notify_all();
        if self.thread.is_none() && state.outcome[i].is_none() {
            return Err(Error::system("cannot start the download thread", std::io::Error::other("spawn failed")));
        }
        while state.outcome[i].is_none() {
            crate::interrupt::check()?;
            state = self.shared.changed.wait_timeout(state, POLL).unwrap_or_else(|e| e.into_inner()).0;
        }
        state.outcome[i].clone().unwrap_or(Ok(())).map_err(Error::Hub)
    }

    /// The commit the revision called `name` was read from: a resumed scan reuses a
    /// measurement of the same commit.
    pub fn fingerprint(&self, name: &str) -> Option<String> {
        self.index(name).map(|i| self.shared.plans[i].commit.clone())
    }

    /// `name` will not be asked for (a resumed scan reuses its measurement): nothing is
    /// downloaded for it.
    pub fn skip(&self, name: &str) {
        let Some(i) = self.index(name) else { return };
        let mut state = self.shared.lock();
        if state.outcome[i].is_none() {
            state.outcome[i] = Some(Ok(()));
        }
        state.released[i] = true;
    }

    /// `c` is scanned: its weight files leave the cache unless downloads are kept, or another
    /// revision still to be scanned points to the same commit.
    pub fn release(&self, c: &CheckpointRef) {
        let Some(i) = self.index(&c.name) else { return };
        let mut state = self.shared.lock();
        state.released[i] = true;
        let plans = &self.shared.plans;
        let shared = (0..plans.len()).any(|j| !state.released[j] && plans[j].commit == plans[i].commit);
        if !self.keep && !shared {
            let _ = self.shared.cache.remove(&plans[i].commit, &plans[i].weights);
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.shared.plans.iter().position(|p| p.name == name)
    }
}

impl Drop for Fetcher {
    /// Stops the thread (a download in flight ends at its next chunk) and waits for it.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Downloads the next snapshot due until told to stop. A panic (a bug, here or in a
    /// library) fails the snapshot in work and every one still pending, so no scan waits on
    /// a thread that is gone.
    fn run(&self) {
        while let Some(i) = self.next_due() {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.fetch(i)));
            let mut state = self.lock();
            match outcome {
                Ok(outcome) => state.outcome[i] = Some(outcome),
                Err(_) => {
                    let bug = "internal error in the download thread (a panic, please report it)".to_string();
                    state.outcome.iter_mut().filter(|o| o.is_none()).for_each(|o| *o = Some(Err(bug.clone())));
                    state.stop = true;
                }
            }
            drop(state);
            self.changed.notify_all();
        }
    }

    /// The first requested snapshot not yet fetched, else one ahead of the last requested;
    /// waits while there is neither. None once stopped.
    fn next_due(&self) -> Option<usize> {
        let mut state = self.lock();
        loop {
            if state.stop {
                return None;
            }
            let pending = |i: &usize| state.outcome[*i].is_none();
            let asked = (0..state.requested.len()).filter(|&i| state.requested[i]).find(pending);
            let last = state.requested.iter().rposition(|&r| r);
            let ahead = last.and_then(|l| (l + 1..=l + AHEAD).filter(|i| *i < state.outcome.len()).find(pending));
            if let Some(i) = asked.or(ahead) {
                return Some(i);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Fetches snapshot `i`'s weights that the cache lacks, after checking the disk.
    fn fetch(&self, i: usize) -> std::result::Result<(), String> {
        let plan = &self.plans[i];
        let cached = |f: &&RemoteFile| self.cache.has(&plan.commit, f) || self.cache.link_existing(&plan.commit, f);
        let missing: Vec<&RemoteFile> = plan.weights.iter().filter(|f| !cached(f)).collect();
        let need: u64 = missing.iter().map(|f| self.cache.missing_bytes(&plan.commit, f)).sum();
        super::check_disk(&self.hub.env, &self.cache, need).map_err(|e| format!("revision {}: {e}", plan.name))?;
        let total: u64 = missing.iter().filter_map(|f| f.size).sum();
        let bar = crate::progress::download_bar(format!("downloading {}", plan.name), total, self.bars);
        let started = std::time::Instant::now();
        for f in &missing {
            self.fetch_file(plan, f, &bar)?;
        }
        bar.finish_and_clear();
        if !missing.is_empty() {
            // the rate counts the bytes this download fetched, not a resumed file's earlier part
            crate::progress::println(&bar, &downloaded(&plan.name, need, started.elapsed().as_secs_f64()));
        }
        Ok(())
    }

    /// One file into `blobs/ETAG.incomplete`, then into place (see `fetch_blob`).
    fn fetch_file(&self, plan: &Plan, f: &RemoteFile, bar: &indicatif::ProgressBar) -> std::result::Result<(), String> {
        let stop = || self.lock().stop;
        let mut on_bytes = |n: u64| {
            bar.inc(n);
            !stop()
        };
        let say = |line: &str| crate::progress::println(bar, line);
        super::fetch_blob((&self.hub, &self.cache, &self.repo), &plan.commit, f, &stop, &mut on_bytes, &say)
            .map_err(|e| format!("revision {}: {e}", plan.name))
    }
}

/// `downloaded step1000: 1.2 GB in 30.0 s (40 MB/s)`.
fn downloaded(name: &str, bytes: u64, seconds: f64) -> String {
    let mb = bytes as f64 / 1e6;
    format!("downloaded {name}: {} in {seconds:.1} s ({:.1} MB/s)", super::size(bytes), mb / seconds.max(1e-3))
}
