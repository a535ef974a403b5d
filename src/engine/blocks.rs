//! Token blocks of the task (and of a pre-training sample), cut once per tokenizer and shared
//! by the workers of a scan and by `probe`: a series usually shares one tokenizer, and
//! tokenising a large task for every snapshot would cost more than probing it. This module
//! must not train.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::data::{self, Blocks, Document, TaskTokenizer, TokenStream};
use crate::error::{Error, Result};
use crate::model::LoadedModel;

/// A tokenizer file's bytes and the end-of-text id it is used with.
type TokenizerKey = (Vec<u8>, u32);

/// Values cut from a tokenised document stream, by tokenizer.
pub(crate) struct Cached<T>(Mutex<HashMap<TokenizerKey, Arc<T>>>);

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached(Mutex::default())
    }
}

impl<T> Cached<T> {
    /// `cut` applied to `docs` tokenised by the tokenizer of the checkpoint in `dir` (or
    /// `tokenizer`), computed the first time that tokenizer is met; with the tokenizer's path.
    pub fn get(
        &self,
        dir: &Path,
        tokenizer: Option<&Path>,
        model: &LoadedModel,
        docs: &[Document],
        cut: impl FnOnce(&TokenStream) -> Result<T>,
    ) -> Result<(Arc<T>, PathBuf)> {
        let path = tokenizer.map(Path::to_path_buf).unwrap_or_else(|| dir.join("tokenizer.json"));
        let tok = TaskTokenizer::open(&path)?;
        let eos = tok.eos(model.eos_token_id)?;
        let key = (std::fs::read(&path).map_err(|e| Error::input(&path, e.to_string()))?, eos);
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = cache.get(&key) {
            return Ok((value.clone(), path));
        }
        let value = Arc::new(cut(&data::tokenize(docs, &tok, eos)?)?);
        cache.insert(key, value.clone());
        Ok((value, path))
    }
}

/// Token ids must exist in the model's vocabulary.
pub(crate) fn check_vocab<'a>(ids: impl Iterator<Item = &'a u32>, model: &LoadedModel, tokenizer: &Path) -> Result<()> {
    let max_id = ids.max().copied().unwrap_or(0);
    if max_id as usize >= model.vocab_size {
        return Err(Error::input(
            tokenizer,
            format!("produces token id {max_id}, but the model's vocab_size is {}", model.vocab_size),
        ));
    }
    Ok(())
}

/// Token ids must exist in the model's vocabulary; GPT-2 cannot see past `n_positions`.
pub(crate) fn check_fits(blocks: &Blocks, model: &LoadedModel, tokenizer: &Path, seq_len: usize) -> Result<()> {
    check_vocab(blocks.train.iter().chain(&blocks.eval).flat_map(|b| b.ids.iter()), model, tokenizer)?;
    if model.model_type == "gpt2" && model.max_positions.is_some_and(|p| seq_len > p) {
        return Err(Error::flag("--seq-len", format!("{seq_len} is longer than the model's n_positions")));
    }
    Ok(())
}
