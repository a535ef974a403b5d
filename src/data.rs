//! Task data: a text or JSONL file turned into the token blocks every checkpoint trains and is
//! evaluated on.
//!
//! Blocks follow transformers' `group_texts`: documents are tokenised, joined with EOS after
//! each, cut into non-overlapping `seq_len` blocks, and the remainder is dropped. The last
//! `eval_blocks` blocks are held out. For prompt/completion data only completion tokens (and
//! the EOS that ends them) carry loss. The batch order is fixed by a seed and is the same for
//! every checkpoint. This module must not touch models or tensors.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// One training document.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// Plain text: every token carries loss.
    Text(String),
    /// Loss on the completion only (TRL's prompt/completion format).
    PromptCompletion { prompt: String, completion: String },
}

/// Reads `.txt` (the whole file is one document) or `.jsonl` (`text`, or `prompt` + `completion`).
pub fn read_task(path: &Path) -> Result<Vec<Document>> {
    let bytes = std::fs::read(path).map_err(|e| Error::input(path, format!("cannot read task file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::input(path, format!("task file is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
    })?;
    if text.trim().is_empty() {
        return Err(Error::input(path, "task file is empty"));
    }
    let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    if jsonl {
        parse_jsonl(path, &text)
    } else {
        Ok(vec![Document::Text(text)])
    }
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::input(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
        docs.push(document(&value).map_err(|msg| Error::input(path, format!("line {}: {msg}", i + 1)))?);
    }
    if docs.is_empty() {
        return Err(Error::input(path, "task file has no documents"));
    }
    Ok(docs)
}

fn document(value: &serde_json::Value) -> std::result::Result<Document, String> {
    let field = |name: &str| {
        value.get(name).map(|v| v.as_str().map(String::from).ok_or(format!("field {name:?} is not a string")))
    };
    match (field("text"), field("prompt"), field("completion")) {
        (Some(text), _, _) => Ok(Document::Text(text?)),
        (None, Some(prompt), Some(completion)) => {
            Ok(Document::PromptCompletion { prompt: prompt?, completion: completion? })
        }
        _ => Err("expected a \"text\" field, or \"prompt\" and \"completion\" fields".into()),
    }
}

/// A tokenizer loaded from `tokenizer.json`, with the file it came from.
pub struct TaskTokenizer {
    pub path: PathBuf,
    inner: Tokenizer,
}

impl TaskTokenizer {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::input(
                path,
                "tokenizer not found (pass --tokenizer FILE or put tokenizer.json in the checkpoint)",
            ));
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| Error::input(path, format!("invalid tokenizer: {}", crate::error::one_line(&e))))?;
        Ok(TaskTokenizer { path: path.to_path_buf(), inner })
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (as `tokenizer(text)` does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode(text, true).map_err(|e| Error::input(&self.path, format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The id of a token spelled `token`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// EOS: the config's `eos_token_id`, else a conventional EOS token of the vocabulary.
    pub fn eos(&self, from_config: Option<u32>) -> Result<u32> {
        let conventional = ["<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>"];
        from_config
            .or_else(|| conventional.iter().find_map(|t| self.token_id(t)))
            .ok_or_else(|| Error::input(&self.path, "no EOS token: set eos_token_id in config.json"))
    }
}

/// The whole task as one token stream; `labels[i]` says whether token i carries loss.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStream {
    pub ids: Vec<u32>,
    pub labels: Vec<bool>,
}

/// Tokenises every document and joins them with `eos` after each.
pub fn tokenize(docs: &[Document], tok: &TaskTokenizer, eos: u32) -> Result<TokenStream> {
    let mut stream = TokenStream { ids: Vec::new(), labels: Vec::new() };
    for doc in docs {
        let (ids, n_prompt) = match doc {
            Document::Text(text) => (tok.encode(text)?, 0),
            // As TRL does: tokenise prompt + completion together, mask the prompt's tokens.
            Document::PromptCompletion { prompt, completion } => {
                (tok.encode(&format!("{prompt}{completion}"))?, tok.encode(prompt)?.len())
            }
        };
        stream.labels.extend((0..ids.len()).map(|i| i >= n_prompt));
        stream.ids.extend(ids);
        stream.ids.push(eos);
        stream.labels.push(true);
    }
    Ok(stream)
}

/// One block of `seq_len` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub ids: Vec<u32>,
    pub labels: Vec<bool>,
}

/// Training and held-out blocks.
#[derive(Debug, Clone)]
pub struct Blocks {
    pub seq_len: usize,
    pub train: Vec<Block>,
    pub eval: Vec<Block>,
    pub n_tokens: usize,
}

/// Cuts the stream into blocks and holds out the last `eval_blocks`.
pub fn blocks(stream: &TokenStream, seq_len: usize, eval_blocks: usize, task: &Path) -> Result<Blocks> {
    let all: Vec<Block> = stream
        .ids
        .chunks_exact(seq_len)
        .zip(stream.labels.chunks_exact(seq_len))
        .map(|(ids, labels)| Block { ids: ids.to_vec(), labels: labels.to_vec() })
        .collect();
    if all.len() < eval_blocks + 1 {
        return Err(Error::input(task, format!(
            "task is too short: {} tokens make {} blocks of {seq_len}, but one training block plus {eval_blocks} eval blocks are needed",
            stream.ids.len(), all.len()
        )));
    }
    let split = all.len() - eval_blocks;
    let (train, eval) = all.split_at(split);
    Ok(Blocks { seq_len, train: train.to_vec(), eval: eval.to_vec(), n_tokens: stream.ids.len() })
}

/// The first `max_blocks` whole blocks of a stream (a pre-training sample), at least one.
pub fn sample_blocks(stream: &TokenStream, seq_len: usize, max_blocks: usize, path: &Path) -> Result<Vec<Block>> {
    let blocks: Vec<Block> = stream
        .ids
        .chunks_exact(seq_len)
        .zip(stream.labels.chunks_exact(seq_len))
        .take(max_blocks)
        .map(|(ids, labels)| Block { ids: ids.to_vec(), labels: labels.to_vec() })
        .collect();
    if blocks.is_empty() {
        return Err(Error::input(
            path,
            format!("pre-training sample is too short: {} tokens make no block of {seq_len}", stream.ids.len()),
        ));
    }
    Ok(blocks)
}

/// The order in which training blocks are drawn: a fresh seeded permutation per epoch,
/// concatenated, so every checkpoint sees the same batches.
#[derive(Debug, Clone)]
pub struct BatchOrder {
    indices: Vec<usize>,
    batch: usize,
}

impl BatchOrder {
    /// Enough indices for `micro_batches` batches of `batch` blocks out of `n_blocks`.
    pub fn new(n_blocks: usize, batch: usize, micro_batches: usize, seed: u64) -> Self {
        let mut rng = crate::rng::stream(seed, crate::rng::Stream::BatchOrder, 0);
        let need = batch * micro_batches;
        let mut indices = Vec::with_capacity(need + n_blocks);
        while indices.len() < need {
            let mut epoch: Vec<usize> = (0..n_blocks).collect();
            epoch.shuffle(&mut rng);
            indices.extend(epoch);
        }
        BatchOrder { indices, batch }
    }

    /// Block indices of micro-batch `i`.
    pub fn batch(&self, i: usize) -> &[usize] {
        &self.indices[i * self.batch..(i + 1) * self.batch]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: usize) -> TokenStream {
        TokenStream { ids: (0..n as u32).collect(), labels: vec![true; n] }
    }

    #[test]
    fn blocks_drop_the_remainder_and_hold_out_the_last() {
        let b = blocks(&stream(35), 8, 1, Path::new("t")).unwrap();
        assert_eq!(b.train.len(), 3);
        assert_eq!(b.eval[0].ids, (24..32).collect::<Vec<u32>>());
    }

    #[test]
    fn too_short_a_task_is_refused() {
        let e = blocks(&stream(15), 8, 1, Path::new("task.txt")).unwrap_err().to_string();
        assert!(e.contains("task.txt") && e.contains("too short"), "{e}");
    }

    #[test]
    fn batch_order_is_seeded_and_covers_each_epoch() {
        let a = BatchOrder::new(10, 4, 5, 7);
        let b = BatchOrder::new(10, 4, 5, 7);
        let c = BatchOrder::new(10, 4, 5, 8);
        assert_eq!(a.indices, b.indices);
        assert_ne!(a.indices, c.indices);
        let mut first: Vec<usize> = a.indices[..10].to_vec();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let e = parse_jsonl(Path::new("t.jsonl"), "{\"text\": \"a\"}\n{oops}\n").unwrap_err().to_string();
        assert!(e.contains("t.jsonl") && e.contains("line 2"), "{e}");
        let e = parse_jsonl(Path::new("t.jsonl"), "{\"prompt\": \"a\"}\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("completion"), "{e}");
    }
}
