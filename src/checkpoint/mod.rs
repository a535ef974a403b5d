//! Reading a checkpoint folder: weights (single or sharded safetensors, pickle) and the
//! trainer state. Architecture configs live with their models in `model/`.

pub mod fingerprint;
pub mod state;
pub mod weights;
