//! LoRA as PEFT defines it: which modules are adapted, how A and B start, and how the adapted
//! linear layer computes `base(x) + scale * B(A(dropout(x)))`.
//!
//! The frozen base weight never receives a gradient: its matmul is a custom op whose backward
//! returns only dL/dx (candle's own matmul backward would also compute the weight-sized dL/dW).
//! This module must not know any architecture; models name their modules as transformers does
//! and ask [`LoraCtx`] whether each one is adapted.
//!
//! Each concept has its file, re-exported here: `spec.rs` (the hyper-parameters and where the
//! initial weights come from), `adapter.rs` (the adapters a model collects and the adapted
//! linear layer), `frozen.rs` (the custom ops of the frozen matmul), `fused.rs` (the adapted layer as one CPU
//! node) and `peft.rs` (PEFT's
//! files, read and written).

mod adapter;
mod frozen;
mod fused;
pub mod peft;
mod spec;

pub use adapter::{Adapter, Linear, LoraCtx};
pub use frozen::{frozen_linear, frozen_matmul};
pub use peft::PeftConfig;
pub use spec::{AdapterInit, LoraSpec, Targets};
