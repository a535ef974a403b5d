//! A checkpoint's fingerprint, so `--resume` reuses a measurement only for the very same
//! files. Hashes config.json, trainer_state.json, tokenizer.json and, for each weight file,
//! its name, size, first 1 MiB (the safetensors header and the first tensors) and 64 KiB
//! windows at eight evenly spaced offsets: cheap on multi-GB files, and any retraining changes
//! the sampled values. [`file()`] samples any other input (task, tokenizer) the same way. It must
//! not read whole weight files.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::weights::weight_files;
use crate::error::{Error, Result};

const HEAD: u64 = 1 << 20;
const WINDOW: u64 = 64 << 10;
const WINDOWS: u64 = 8;

/// FNV-1a, 64 bits: stable across platforms and releases (std's hasher is not).
struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The fingerprint of the checkpoint in `dir`, as 16 hex digits.
pub fn fingerprint(dir: &Path) -> Result<String> {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for small in ["config.json", "trainer_state.json", "tokenizer.json"] {
        if let Ok(bytes) = std::fs::read(dir.join(small)) {
            h.write(small.as_bytes());
            h.write(&bytes);
        }
    }
    for path in weight_files(dir)? {
        sample_file(&path, &mut h).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
    }
    Ok(format!("{:016x}", h.0))
}

/// The fingerprint of one input file (a task, a tokenizer), sampled as weight files are.
pub fn file(path: &Path) -> Result<String> {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    sample_file(path, &mut h).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    Ok(format!("{:016x}", h.0))
}

fn sample_file(path: &Path, h: &mut Fnv) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    h.write(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
    h.write(&len.to_le_bytes());
    let mut read_at = |offset: u64, n: u64, h: &mut Fnv| -> std::io::Result<()> {
        let mut buf = vec![0u8; n.min(len.saturating_sub(offset)) as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)?;
        h.write(&buf);
        Ok(())
    };
    read_at(0, HEAD, h)?;
    if len > HEAD {
        for i in 1..=WINDOWS {
            read_at(HEAD + (len - HEAD) * i / (WINDOWS + 1), WINDOW, h)?;
        }
    }
    Ok(())
}
