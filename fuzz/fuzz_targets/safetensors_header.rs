//! model.safetensors: any bytes (header length, header JSON, offsets, dtypes, data) under the
//! micro GPT-2 checkpoint's config, through the whole load.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plasticity_fuzz::Checkpoint;

fuzz_target!(|bytes: &[u8]| {
    let c = Checkpoint::micro("gpt2");
    c.write("model.safetensors", bytes);
    c.load();
});
