mod cli;
mod engine;
mod errors;
mod parity;
mod peft;
pub mod util;
