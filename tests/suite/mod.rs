mod cli;
mod engine;
mod errors;
mod exports;
mod folders;
mod parity;
mod peft;
mod single_index;
pub mod util;
