//! model.safetensors.index.json: any bytes next to the sharded Llama fixture's shards (shard
//! names that leave the folder, missing shards, tensors mapped twice), through the whole load.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plasticity_fuzz::Checkpoint;

fuzz_target!(|bytes: &[u8]| {
    let c = Checkpoint::fixture("llama_sharded");
    c.write("model.safetensors.index.json", bytes);
    c.load();
});
