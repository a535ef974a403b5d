//! Helpers for the unit tests of the CPU ops: deterministic inputs and a relative error. Built
//! only for tests; it must not be used by the library itself.

use candle_core::{Device, Tensor};

/// A deterministic f32 tensor of `shape` with values in [-1, 1], varied by `seed`.
pub fn values(shape: &[usize], seed: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731 + seed).sin()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("a tensor of its own element count")
}

/// max |got - want| over max |want|.
pub fn max_rel(got: &Tensor, want: &Tensor) -> f32 {
    let scalar = |t: Tensor| t.to_scalar::<f32>().expect("an f32 scalar");
    let diff = scalar((got - want).and_then(|d| d.abs()?.max_all()).expect("same shapes"));
    diff / scalar(want.abs().and_then(|w| w.max_all()).expect("a tensor"))
}
