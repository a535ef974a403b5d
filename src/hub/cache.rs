//! The Hugging Face hub cache, laid out as huggingface_hub lays it out, so that Python tools
//! and `plasticity scan` of the cache folder share every download:
//!
//! ```text
//! CACHE/models--ORG--NAME/
//!   blobs/ETAG                  one file per content (sha256 for LFS files, git oid else)
//!   blobs/ETAG.incomplete       a download in progress; never read as a file
//!   snapshots/COMMIT/FILE       a relative symlink to ../../blobs/ETAG
//!   refs/REVISION               the commit the revision pointed to
//! ```
//!
//! A file counts as cached only when its link resolves to a blob of the size the Hub reported.
//! A blob is written under huggingface_hub's lock, `CACHE/.locks/models--ORG--NAME/ETAG.lock`
//! (flock), so that processes sharing a cache (the parts of a partitioned scan, a Python
//! download) never write one blob at once. This module moves files; it must not make requests.

use std::path::{Path, PathBuf};

use super::api::RemoteFile;

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub root: PathBuf,
}

impl RepoCache {
    /// `cache/models--ORG--NAME`.
    pub fn new(cache: &Path, repo: &str) -> Self {
        RepoCache { root: cache.join(format!("models--{}", repo.replace('/', "--"))) }
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn blob(&self, blob: &str) -> PathBuf {
        self.root.join("blobs").join(blob)
    }

    /// Where a download of `blob` grows until it is complete.
    pub fn incomplete(&self, blob: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{blob}.incomplete"))
    }

    /// Takes the lock on `blob`, waiting while another process holds it; gives up (None) as
    /// soon as `stop` says so. `waiting` hears once that the lock is held elsewhere.
    pub fn lock(
        &self,
        blob: &str,
        stop: &dyn Fn() -> bool,
        waiting: &mut dyn FnMut(),
    ) -> std::io::Result<Option<std::fs::File>> {
        let dir =
            self.root.parent().unwrap_or(Path::new(".")).join(".locks").join(self.root.file_name().unwrap_or_default());
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{blob}.lock")))?;
        let mut told = false;
        loop {
            match try_lock(&file) {
                Ok(true) => return Ok(Some(file)),
                Ok(false) if stop() => return Ok(None),
                Ok(false) => {
                    if !std::mem::replace(&mut told, true) {
                        waiting();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `file` of `commit` is in the cache, whole.
    pub fn has(&self, commit: &str, file: &RemoteFile) -> bool {
        let link = self.snapshot(commit).join(&file.name);
        std::fs::metadata(link).is_ok_and(|m| m.is_file() && file.size.is_none_or(|s| m.len() == s))
    }

    /// Links `file` of `commit` to a whole blob another revision brought (a tokenizer many
    /// revisions share); false when there is none.
    pub fn link_existing(&self, commit: &str, file: &RemoteFile) -> bool {
        self.has_blob(file) && self.link(commit, file).is_ok()
    }

    /// `file`'s blob is in `blobs/`, of the listed size.
    fn has_blob(&self, file: &RemoteFile) -> bool {
        std::fs::metadata(self.blob(&file.blob)).is_ok_and(|m| file.size.is_none_or(|s| m.len() == s))
    }

    /// Bytes still to fetch for `file`: its size less what an interrupted download left.
    pub fn missing_bytes(&self, commit: &str, file: &RemoteFile) -> u64 {
        if self.has(commit, file) || self.has_blob(file) {
            return 0;
        }
        let partial = std::fs::metadata(self.incomplete(&file.blob)).map(|m| m.len()).unwrap_or(0);
        file.size.unwrap_or(0).saturating_sub(partial)
    }

    /// Moves a finished download into `blobs/` and links it from the snapshot.
    pub fn complete(&self, commit: &str, file: &RemoteFile) -> std::io::Result<()> {
        std::fs::rename(self.incomplete(&file.blob), self.blob(&file.blob))?;
        self.link(commit, file)
    }

    /// `snapshots/COMMIT/FILE` -> `../../blobs/ETAG` (one more `..` per folder in FILE).
    pub fn link(&self, commit: &str, file: &RemoteFile) -> std::io::Result<()> {
        let link = self.snapshot(commit).join(&file.name);
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let up = "../".repeat(2 + file.name.matches('/').count());
        let target = PathBuf::from(format!("{up}blobs/{}", file.blob));
        let _ = std::fs::remove_file(&link);
        symlink_or_copy(&target, &self.blob(&file.blob), &link)
    }

    /// Records that `revision` points to `commit` (`refs/REVISION`, written atomically).
    pub fn write_ref(&self, revision: &str, commit: &str) -> std::io::Result<()> {
        let path = self.root.join("refs").join(revision);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        crate::fs::write_atomic(&path, commit.as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// The revisions the cache knows (`refs/`, nested names included) and their commits.
    pub fn refs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        collect_refs(&self.root.join("refs"), "", &mut out);
        out.sort();
        out
    }

    /// Removes `files` of `commit` from the snapshot, and each blob no other snapshot links to.
    pub fn remove(&self, commit: &str, files: &[RemoteFile]) -> std::io::Result<()> {
        for f in files {
            let _ = std::fs::remove_file(self.snapshot(commit).join(&f.name));
            if !self.linked_anywhere(&f.blob) {
                let _ = std::fs::remove_file(self.blob(&f.blob));
            }
        }
        Ok(())
    }

    /// Some snapshot's top-level file links to `blob`.
    fn linked_anywhere(&self, blob: &str) -> bool {
        let Ok(snapshots) = std::fs::read_dir(self.root.join("snapshots")) else { return false };
        snapshots
            .flatten()
            .filter_map(|s| std::fs::read_dir(s.path()).ok())
            .flatten()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.file_name().is_some_and(|n| n == blob)))
    }
}

/// An exclusive flock (huggingface_hub's filelock takes the same), without waiting: false
/// when another process holds it. Closing the file releases it.
#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this File owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.path().is_dir() {
            collect_refs(&e.path(), &format!("{name}/"), out);
        } else if let Ok(commit) = std::fs::read_to_string(e.path()) {
            out.push((name, commit.trim().to_string()));
        }
    }
}

#[cfg(unix)]
fn symlink_or_copy(target: &Path, _blob: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Without symlinks (huggingface_hub on Windows without developer mode), the file is copied.
#[cfg(not(unix))]
fn symlink_or_copy(_target: &Path, blob: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, link).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, blob: &str, size: u64) -> RemoteFile {
        RemoteFile { name: name.into(), blob: blob.into(), size: Some(size) }
    }

    #[test]
    fn a_completed_download_is_linked_as_huggingface_hub_links_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        assert!(cache.root.ends_with("models--org--name"));
        let f = file("config.json", "abc", 2);
        std::fs::create_dir_all(cache.root.join("blobs")).unwrap();
        std::fs::write(cache.incomplete("abc"), "{}").unwrap();
        assert!(!cache.has("c0", &f));
        cache.complete("c0", &f).unwrap();
        assert!(cache.has("c0", &f));
        let link = std::fs::read_link(cache.snapshot("c0").join("config.json")).unwrap();
        assert_eq!(link, PathBuf::from("../../blobs/abc"));
        assert!(!cache.has("c0", &file("config.json", "abc", 3)), "a blob of another size is not the file");
    }

    #[test]
    fn refs_round_trip_and_removal_keeps_shared_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        cache.write_ref("step1", "c1").unwrap();
        cache.write_ref("pr/2", "c2").unwrap();
        assert_eq!(cache.refs(), vec![("pr/2".into(), "c2".into()), ("step1".into(), "c1".into())]);
        std::fs::create_dir_all(cache.root.join("blobs")).unwrap();
        let (shared, own) = (file("tokenizer.json", "t", 1), file("model.safetensors", "w", 1));
        for (commit, f) in [("c1", &shared), ("c2", &shared), ("c1", &own)] {
            std::fs::write(cache.blob(&f.blob), "x").unwrap();
            cache.link(commit, f).unwrap();
        }
        cache.remove("c1", &[shared.clone(), own.clone()]).unwrap();
        assert!(!cache.blob("w").exists());
        assert!(cache.blob("t").exists() && cache.has("c2", &shared));
    }
}
