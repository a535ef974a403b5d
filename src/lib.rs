//! plasticity: which pre-training checkpoint adapts fastest under LoRA fine-tuning?
//!
//! The pipeline is checkpoint loader ([`discover`], [`checkpoint`], [`model`]) -> LoRA engine
//! ([`lora`], [`data`], [`train`]) -> scorer ([`score`]) -> reports ([`report`]), run by
//! [`runner`] with settings resolved once in [`options`] from the flags of [`cli`]. [`app`]
//! holds the commands that `main.rs` dispatches to. The single-index model of arXiv
//! 2602.02855 adds [`theory`] (its formulas) and [`simulate`] (its checkpoint series);
//! [`synth`] writes random checkpoints for benchmarks. Everything public here is what
//! examples, benches and tests need.

pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod curve;
pub mod data;
pub mod device;
pub mod discover;
pub mod dropout;
pub mod error;
pub mod fs;
pub mod interrupt;
pub mod linalg;
pub mod lora;
pub mod math;
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
pub mod train;
