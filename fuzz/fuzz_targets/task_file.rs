//! Task files: any bytes as a .jsonl task, read, tokenized with the fixture tokenizer and cut
//! into blocks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plasticity_fuzz::task_file;

fuzz_target!(|bytes: &[u8]| {
    task_file(bytes);
});
