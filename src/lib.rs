//! plasticity: which pre-training checkpoint adapts fastest under LoRA fine-tuning?
//!
//! The pipeline is checkpoint loader ([`discover`], [`checkpoint`], [`model`]) -> LoRA engine
//! ([`lora`], [`data`], [`train`]) -> scorer ([`score`]) -> reports ([`report`]). The binary in
//! `main.rs` strings them together; everything public here is what examples, benches and
//! tests need.

pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod discover;
pub mod error;
pub mod lora;
pub mod model;
pub mod options;
pub mod progress;
pub mod report;
pub mod rng;
pub mod runner;
pub mod score;
pub mod simulate;
pub mod synth;
pub mod theory;
pub mod train;
