//! plasticity: which pre-training checkpoint adapts fastest under LoRA fine-tuning?
//!
//! The pipeline is checkpoint loader ([`discover`], [`hub`], [`checkpoint`], [`model`]) -> LoRA engine
//! ([`lora`], [`data`], [`train`], behind the [`engine::Engine`] trait) -> scorer ([`score`])
//! -> reports ([`report`]), run by [`runner`] with settings resolved once in [`options`] from
//! the flags of [`cli`]. [`app`] holds the commands that `main.rs` dispatches to. The
//! single-index model of arXiv 2602.02855 ([`single_index`]: the model, its theory and its
//! series) is the other engine; [`synth`] writes random checkpoints for benchmarks.
//! Everything public here is what examples, benches and tests need.
//!
//! ## Floors
//!
//! Imports point down only: a module may use modules on its floor or below, never above, and
//! no two files import each other, directly or through others (`tests/suite/floors.rs` checks
//! both against this table).
//!
//! | floor | modules |
//! |-------|---------|
//! | 8 | `app` |
//! | 7 | `runner`, `probe` |
//! | 6 | `engine` |
//! | 5 | `options`, `cli` |
//! | 4 | `report` |
//! | 3 | `train`, `score` |
//! | 2 | `model`, `lora`, `single_index`, `synth`, `hub` |
//! | 1 | `checkpoint`, `discover`, `data`, `dropout` |
//! | 0 | `error`, `curve`, `device`, `fs`, `memory`, `interrupt`, `isa`, `progress`, `rng`, `math`, `linalg`, `matmul`, `uninit`, `testing` |

pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod curve;
pub mod data;
pub mod device;
pub mod discover;
pub mod dropout;
pub mod engine;
pub mod error;
pub mod fs;
pub mod hub;
pub mod interrupt;
pub mod isa;
pub mod linalg;
pub mod lora;
pub mod math;
pub mod matmul;
pub mod memory;
pub mod model;
pub mod options;
pub mod probe;
pub mod progress;
pub mod report;
pub mod rng;
pub mod runner;
pub mod score;
pub mod single_index;
pub mod synth;
#[cfg(test)]
pub mod testing;
pub mod train;
pub mod uninit;
