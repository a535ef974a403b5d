//! config.json: any bytes next to a micro GPT-2 checkpoint's weights, through the whole load
//! (JSON, the architecture's fields and their checks, then the weights against the config).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plasticity_fuzz::Checkpoint;

fuzz_target!(|bytes: &[u8]| {
    let c = Checkpoint::micro("gpt2");
    c.write("config.json", bytes);
    c.load();
});
