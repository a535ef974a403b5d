//! Model weights on disk: `model.safetensors`, sharded `model.safetensors.index.json`, or a
//! zip-format `pytorch_model.bin`, read into f32 tensors by name.
//!
//! Safetensors files are memory-mapped and each tensor is converted when a model asks for it,
//! so only one checkpoint's weights are resident while it is fine-tuned. Every error names the
//! file and the tensor. This module must not know any architecture: models ask for names and
//! shapes, and the store checks them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Where one tensor lives.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the file (header included in the offset).
    start: usize,
    end: usize,
}

/// The weights of one checkpoint, opened lazily.
pub struct WeightStore {
    files: Vec<(PathBuf, Source)>,
    entries: HashMap<String, Entry>,
    device: Device,
    /// What every tensor is converted to when read (f32 unless --dtype says otherwise).
    dtype: DType,
}

enum Source {
    Mmap(memmap2::Mmap),
    /// Tensors already read from a pickle file (`pytorch_model.bin`).
    Loaded(HashMap<String, Tensor>),
}

/// The weight file layout found in a checkpoint folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return Ok(vec![single]);
    }
    if index.is_file() {
        return shards_of(dir, &index);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(vec![bin]);
    }
    if dir.join("pytorch_model.bin.index.json").is_file() {
        return Err(Error::input(dir, "sharded pytorch_model.bin is not supported; convert it to safetensors (e.g. `model.save_pretrained(dir, safe_serialization=True)`)"));
    }
    Err(Error::input(
        dir,
        "no model weights (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin)",
    ))
}

/// The shard files of a sharded checkpoint, each checked to stay inside the checkpoint folder.
fn shards_of(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    shard_names(index)?.iter().map(|name| shard_path(dir, index, name)).collect()
}

/// The shard file names a `model.safetensors.index.json` maps its tensors to, sorted, once each.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::input(index, format!("cannot read: {e}")))?;
    let parsed: Index =
        serde_json::from_str(&text).map_err(|e| Error::input(index, format!("invalid shard index: {e}")))?;
    let mut names: Vec<String> = parsed.weight_map.into_values().collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn shard_path(dir: &Path, index: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(Error::input(index, format!("shard path {name:?} leaves the checkpoint folder")));
    }
    let path = dir.join(rel);
    let real = path.canonicalize().map_err(|e| Error::input(index, format!("shard {name:?}: {e}")))?;
    let root = dir.canonicalize().map_err(|e| Error::input(dir, e.to_string()))?;
    if !real.starts_with(&root) && !hub_cache_blobs(&root).is_some_and(|blobs| real.starts_with(blobs)) {
        return Err(Error::input(
            index,
            format!("shard {name:?} points outside the checkpoint folder (to {})", real.display()),
        ));
    }
    Ok(path)
}

/// The Hugging Face hub cache keeps a revision's files as symlinks from
/// `models--org--name/snapshots/REV/` to content-addressed `models--org--name/blobs/`: for a
/// checkpoint folder in that layout, the blobs folder of the same repository.
fn hub_cache_blobs(root: &Path) -> Option<PathBuf> {
    let snapshots = root.parent()?;
    let repo = snapshots.parent()?;
    let is_cache = snapshots.file_name()? == "snapshots" && repo.file_name()?.to_str()?.starts_with("models--");
    is_cache.then(|| repo.join("blobs"))
}

impl WeightStore {
    /// Opens every weight file of the checkpoint in `dir` and indexes its tensors.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        Self::open_as(dir, device, DType::F32)
    }

    /// [`Self::open`], reading every tensor as `dtype`.
    pub fn open_as(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let mut store = WeightStore { files: Vec::new(), entries: HashMap::new(), device: device.clone(), dtype };
        for path in weight_files(dir)? {
            if path.extension().is_some_and(|e| e == "bin") {
                store.add_pickle(&path)?;
            } else {
                store.add_safetensors(&path)?;
            }
        }
        Ok(store)
    }

    fn add_safetensors(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::input(path, format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only and lives as long as the store; plasticity never writes
        // checkpoint files. Another process truncating the file while we read it could fault,
        // which is the accepted risk of every mmap-based loader (candle, safetensors, PyTorch).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::input(path, format!("cannot map: {e}")))?;
        let (header_len, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::input(path, format!("invalid safetensors file: {e}")))?;
        let file_index = self.files.len();
        self.index_metadata(path, file_index, 8 + header_len, &meta)?;
        self.files.push((path.to_path_buf(), Source::Mmap(mmap)));
        Ok(())
    }

    fn index_metadata(&mut self, path: &Path, file: usize, data_start: usize, meta: &Metadata) -> Result<()> {
        for (name, info) in meta.tensors() {
            let (start, end) = (data_start + info.data_offsets.0, data_start + info.data_offsets.1);
            let entry = Entry { file, dtype: info.dtype, shape: info.shape.clone(), start, end };
            if self.entries.insert(name.clone(), entry).is_some() {
                return Err(Error::input(path, format!("tensor {name} appears in more than one weight file")));
            }
        }
        Ok(())
    }

    fn add_pickle(&mut self, path: &Path) -> Result<()> {
        let tensors = candle_core::pickle::read_all(path).map_err(|e| {
            Error::input(path, format!("cannot read PyTorch pickle ({}); convert it to safetensors with `model.save_pretrained(dir, safe_serialization=True)`", crate::error::one_line(&e)))
        })?;
        let file = self.files.len();
        let mut loaded = HashMap::new();
        for (name, t) in tensors {
            let entry = Entry { file, dtype: Dtype::F32, shape: t.dims().to_vec(), start: 0, end: 0 };
            self.entries.insert(name.clone(), entry);
            loaded.insert(name, t);
        }
        self.files.push((path.to_path_buf(), Source::Loaded(loaded)));
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of tensor `name`, from its header.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Every tensor name, sorted (for messages and for checks).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort();
        names
    }

    /// Bytes the weights take once converted to `dtype`, from the headers alone.
    pub fn bytes_as(&self, dtype: DType) -> u64 {
        let bytes = |e: &Entry| e.shape.iter().fold(dtype.size_in_bytes() as u64, |n, &d| n.saturating_mul(d as u64));
        self.entries.values().fold(0u64, |sum, e| sum.saturating_add(bytes(e)))
    }

    /// The dtype tensors are read as.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tensor `name` as the store's dtype with exactly `shape`, or an error naming file, tensor and shapes.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| self.missing(name))?;
        let path = &self.files[entry.file].0;
        if entry.shape != shape {
            return Err(Error::input(
                path,
                format!("tensor {name} has shape {:?}, the config implies {shape:?}", entry.shape),
            ));
        }
        self.read(entry, name).map_err(|e| match e {
            Error::Compute { source, .. } => {
                Error::input(path, format!("tensor {name}: {}", crate::error::one_line(&source)))
            }
            other => other,
        })
    }

    fn read(&self, entry: &Entry, name: &str) -> Result<Tensor> {
        let (path, source) = &self.files[entry.file];
        let t = match source {
            Source::Loaded(map) => map[name].clone(),
            Source::Mmap(mmap) => {
                let dtype = candle_dtype(entry.dtype).ok_or_else(|| {
                    Error::input(
                        path,
                        format!("tensor {name} has dtype {:?}; plasticity reads F32, F16 and BF16", entry.dtype),
                    )
                })?;
                Tensor::from_raw_buffer(&mmap[entry.start..entry.end], dtype, &entry.shape, &self.device)?
            }
        };
        let t = t.to_dtype(DType::F32)?;
        check_finite(&t).map_err(|msg| Error::input(path, format!("tensor {name} {msg}")))?;
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    fn missing(&self, name: &str) -> Error {
        let files: Vec<String> = self.files.iter().map(|(p, _)| p.display().to_string()).collect();
        let path = self.files.first().map(|(p, _)| p.clone()).unwrap_or_default();
        Error::input(path, format!("tensor {name} is missing (looked in {})", files.join(", ")))
    }
}

/// NaN or infinite weights make every loss NaN: refuse them by name rather than report a
/// diverged fine-tune. One pass over the f32 values, which are on the CPU at this point.
fn check_finite(t: &Tensor) -> std::result::Result<(), String> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { return Ok(()) };
    let Ok(values) = cpu.as_slice::<f32>() else { return Ok(()) };
    let Some((start, end)) = layout.contiguous_offsets() else { return Ok(()) };
    let values = &values[start..end];
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let bad = values.iter().filter(|v| !v.is_finite()).count();
            Err(format!("has {bad} non-finite value(s) (NaN or infinity), the first at flat index {i} ({})", values[i]))
        }
    }
}

fn candle_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F64 => Some(DType::F64),
        _ => None,
    }
}

/// A view of the store under a name prefix, like candle's `VarBuilder::pp`, so model
/// constructors read like the checkpoint's tensor names.
#[derive(Clone)]
pub struct Weights<'a> {
    store: &'a WeightStore,
    prefix: String,
}

impl<'a> Weights<'a> {
    pub fn new(store: &'a WeightStore) -> Self {
        Weights { store, prefix: String::new() }
    }

    /// The sub-tree `name` (`w.pp("model").pp("layers").pp(3)`).
    pub fn pp(&self, name: impl ToString) -> Self {
        Weights { store: self.store, prefix: self.path(&name.to_string()) }
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.get(&self.path(name), shape)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.path(name))
    }

    pub fn dtype(&self) -> DType {
        self.store.dtype()
    }

    pub fn device(&self) -> &Device {
        self.store.device()
    }
}
