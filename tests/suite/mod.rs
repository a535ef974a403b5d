mod cli;
mod engine;
mod errors;
mod parity;
mod peft;
mod single_index;
pub mod util;
