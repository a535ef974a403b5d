//! File writing that never leaves a half-written file behind: every report, adapter and
//! merged result is written beside its destination and renamed over it. This module knows
//! nothing of what it writes.
//!
//! A rename replaces whatever the destination is, so two kinds of destination are treated
//! apart: a symbolic link is followed (the file it points to is replaced, the link stays),
//! and a destination that is not a regular file (`/dev/null`, a FIFO, a terminal) is written
//! in place, since renaming over it would replace the device with a plain file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dest = resolve(path);
    if is_special(&dest) {
        return write_in_place(&dest, bytes).map_err(|e| Error::input(path, format!("cannot write: {e}")));
    }
    let tmp = temp_path(&dest);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::input(path, format!("cannot write: {e}"))
    })
}

/// Moves a finished temporary file (from `temp_path(path)`) to `path`, by the rules of
/// `write_atomic`: renamed over a regular file or a link's target, copied into a device.
pub fn commit(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let dest = resolve(path);
    let moved = if is_special(&dest) {
        std::fs::read(tmp).and_then(|bytes| write_in_place(&dest, &bytes))
    } else {
        std::fs::rename(tmp, &dest)
    };
    let _ = std::fs::remove_file(tmp);
    moved
}

/// A hidden file beside `path` (beside the file a link points to) that keeps its extension
/// (plotters picks the format by it).
pub fn temp_path(path: &Path) -> PathBuf {
    let dest = resolve(path);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = if is_special(&dest) { std::env::temp_dir() } else { dest.parent().unwrap_or(Path::new("")).into() };
    dir.join(format!(".tmp{}.{name}", std::process::id()))
}

/// The file a symbolic link points to; any other path as it is (a dangling link too).
fn resolve(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).unwrap_or_else(|_| path.into()),
        _ => path.into(),
    }
}

/// An existing destination that is not a regular file or a folder: a device, FIFO or socket.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| !m.is_file() && !m.is_dir()).unwrap_or(false)
}

fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(bytes)?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_replaced_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, "old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_followed_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (target, link) = (dir.path().join("target.json"), dir.path().join("link.json"));
        std::fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    }

    /// `--json /dev/null` must not turn the machine's /dev/null into a plain file. A FIFO
    /// stands in for the device: it is not a regular file either, and any user may make one.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_in_place_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        write_atomic(&fifo, b"report").unwrap();
        assert_eq!(reader.join().unwrap(), "report");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
