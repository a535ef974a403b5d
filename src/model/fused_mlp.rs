//! An MLP's first half as one CPU node with frozen weights: `act(x @ wt + b)` for the plain
//! MLP, `act(x @ wg + bg) * (x @ wu + bu)` for the gated one.
//!
//! Composed, the half is two or three nodes (the projections, then the activation), and the
//! activation's backward pass evaluates the activation's derivative again (an erf or an exp per
//! element) and hands the projections a gradient that candle zero-fills and sums per node. Here
//! the forward pass keeps what the backward pass multiplies by (act'(z); or act'(g) u and
//! act(g)) in place of the pre-activations the composed nodes keep, which is the same memory:
//! the backward pass is then one elementwise product per projection and the products with the
//! weights, accumulated into one dL/dx. Values are those of the composed nodes up to f32
//! rounding. `layers.rs` uses these ops only on the CPU, in f32, when no adapter sits on the
//! projections, and composes the nodes elsewhere. This file must not know architectures.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{per_act, Act};
use crate::math::with_avx2;
use crate::matmul::{linear, matmul, product, rows_of, threads, with_mat, Dst, Mat};

/// Elements per parallel task in the elementwise passes.
const CHUNK: usize = 4096;

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("fused mlp: {msg}"))
}

/// A frozen projection: the weight (in, out), whatever its strides, and the bias.
pub struct Proj {
    wt: Tensor,
    bias: Option<Vec<f32>>,
}

impl Proj {
    pub fn new(wt: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Self> {
        Ok(Proj { wt: wt.clone(), bias: bias.map(|b| b.to_vec1::<f32>()).transpose()? })
    }

    fn out(&self) -> candle_core::Result<usize> {
        self.wt.dim(1)
    }

    /// bias + x @ wt, (m, out).
    fn forward(&self, x: Mat) -> candle_core::Result<Vec<f32>> {
        with_mat(&self.wt, |wt| linear(x, wt, self.bias.as_deref(), threads()).map_err(err))
    }

    /// dx (m, in) = or += dz @ wt^T.
    fn input_grad(&self, dz: Mat, dx: Option<Vec<f32>>) -> candle_core::Result<Vec<f32>> {
        with_mat(&self.wt, |wt| match dx {
            None => product(dz, wt.t(), 1.0, threads()).map_err(err),
            Some(mut dx) => {
                matmul(&mut dx, dz, wt.t(), 1.0, Dst::Accumulate, threads()).map_err(err)?;
                Ok(dx)
            }
        })
    }
}

/// `v[i] *= g[i]` for dL/dy's contiguous elements g.
fn scale_by_grad(v: &mut [f32], grad: &Tensor) -> candle_core::Result<()> {
    let g = grad.contiguous()?.flatten_all()?;
    let (storage, layout) = g.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { return Err(err("gradient is not on the CPU")) };
    let g = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + v.len()];
    v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(v, g)| {
        let g = &g[..v.len()];
        with_avx2(
            #[inline(always)]
            || (0..v.len()).for_each(|k| v[k] *= g[k]),
        )
    });
    Ok(())
}

fn take<T>(saved: &Mutex<Option<T>>) -> candle_core::Result<T> {
    saved
        .lock()
        .map_err(|_| err("poisoned lock"))?
        .take()
        .ok_or_else(|| err("backward ran twice or without a training forward"))
}

/// act(x @ wt + b) as one node.
pub struct LinearAct {
    proj: Proj,
    act: Act,
    /// Whether a backward pass can follow (x depends on something trained): only then is
    /// act'(z) kept.
    keep: bool,
    saved: Mutex<Option<Vec<f32>>>,
}

impl LinearAct {
    pub fn new(proj: Proj, act: Act, keep: bool) -> Self {
        LinearAct { proj, act, keep, saved: Mutex::new(None) }
    }
}

impl CustomOp1 for LinearAct {
    fn name(&self) -> &'static str {
        "fused-linear-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, shape) = rows_of(s, l, self.proj.out()?)?;
        let mut z = self.proj.forward(x)?; // (m, out), the activation's input, then its output
        if !self.keep {
            z.par_chunks_mut(CHUNK).for_each(|z| {
                with_avx2(
                    #[inline(always)]
                    || per_act!(self.act, a => for v in z.iter_mut() { *v = a.eval(*v).0 }),
                )
            });
            return Ok((CpuStorage::F32(z), shape));
        }
        let mut d = vec![0f32; z.len()]; // act'(z)
        z.par_chunks_mut(CHUNK).zip(d.par_chunks_mut(CHUNK)).for_each(|(z, d)| {
            let d = &mut d[..z.len()];
            with_avx2(
                #[inline(always)]
                || {
                    per_act!(self.act, a => for k in 0..z.len() {
                        let (f, fp) = a.eval(z[k]);
                        z[k] = f;
                        d[k] = fp;
                    })
                },
            )
        });
        *self.saved.lock().map_err(|_| err("poisoned lock"))? = Some(d);
        Ok((CpuStorage::F32(z), shape))
    }

    /// dz = dy * act'(z); dx = dz @ wt^T.
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut dz = take(&self.saved)?;
        scale_by_grad(&mut dz, grad)?;
        let n = self.proj.out()?;
        let dx = self.proj.input_grad(Mat::rows(&dz, dz.len() / n.max(1), n), None)?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// act(x @ wg + bg) * (x @ wu + bu) as one node.
pub struct GatedLinear {
    gate: Proj,
    up: Proj,
    act: Act,
    /// As in [`LinearAct`].
    keep: bool,
    /// (act'(g) * u, act(g)): what dy multiplies into d/dg and d/du.
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl GatedLinear {
    pub fn new(gate: Proj, up: Proj, act: Act, keep: bool) -> Self {
        GatedLinear { gate, up, act, keep, saved: Mutex::new(None) }
    }
}

impl CustomOp1 for GatedLinear {
    fn name(&self) -> &'static str {
        "fused-gated-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, shape) = rows_of(s, l, self.gate.out()?)?;
        let (mut g, mut u) = (self.gate.forward(x)?, self.up.forward(x)?); // (m, i) each
        if g.len() != u.len() {
            return Err(err(format!("gate of {} values and up of {}", g.len(), u.len())));
        }
        let mut y = vec![0f32; g.len()];
        let keep = self.keep;
        y.par_chunks_mut(CHUNK).zip(g.par_chunks_mut(CHUNK)).zip(u.par_chunks_mut(CHUNK)).for_each(|((y, g), u)| {
            let (g, u) = (&mut g[..y.len()], &mut u[..y.len()]);
            with_avx2(
                #[inline(always)]
                || {
                    per_act!(self.act, a => for k in 0..y.len() {
                        let ((f, fp), uk) = (a.eval(g[k]), u[k]);
                        y[k] = f * uk;
                        if keep {
                            g[k] = fp * uk;
                            u[k] = f;
                        }
                    })
                },
            )
        });
        if keep {
            *self.saved.lock().map_err(|_| err("poisoned lock"))? = Some((g, u));
        }
        Ok((CpuStorage::F32(y), shape))
    }

    /// dg = dy * act'(g) * u, du = dy * act(g); dx = dg @ wg^T + du @ wu^T.
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (mut dg, mut du) = take(&self.saved)?;
        scale_by_grad(&mut dg, grad)?;
        scale_by_grad(&mut du, grad)?;
        let i = self.gate.out()?;
        let m = dg.len() / i.max(1);
        let dx = self.gate.input_grad(Mat::rows(&dg, m, i), None)?;
        let dx = self.up.input_grad(Mat::rows(&du, m, i), Some(dx))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel, values};
    use candle_core::Var;

    /// candle's own ops: bias + x @ wt over the flattened rows.
    fn linear(x: &Tensor, wt: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (b, t, _) = x.dims3().unwrap();
        let z = x.flatten_to(1).unwrap().matmul(wt).unwrap();
        let z = match bias {
            Some(bias) => z.broadcast_add(bias).unwrap(),
            None => z,
        };
        z.reshape((b, t, wt.dim(1).unwrap())).unwrap()
    }

    fn reference(act: Act, z: &Tensor) -> Tensor {
        match act {
            Act::Silu => z.silu().unwrap(),
            Act::GeluErf => z.gelu_erf().unwrap(),
            Act::GeluTanh => z.gelu().unwrap(),
        }
    }

    /// The fused output and dL/dx against candle's composed ops, for a loss that weights every
    /// output differently.
    fn compare(fused: impl Fn(&Tensor) -> Tensor, composed: impl Fn(&Tensor) -> Tensor, what: &str) {
        let x = Var::from_tensor(&values(&[2, 5, 6], 0.0)).unwrap();
        let (got, want) = (fused(x.as_tensor()), composed(x.as_tensor()));
        assert!(max_rel(&got, &want) < 1e-5, "{what} forward: {}", max_rel(&got, &want));
        let weights = values(got.dims(), 2.0);
        let dx =
            |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap().backward().unwrap().remove(x.as_tensor()).unwrap();
        let (got, want) = (dx(&got), dx(&want));
        assert!(max_rel(&got, &want) < 1e-5, "{what} dx: {}", max_rel(&got, &want));
    }

    #[test]
    fn linear_activation_matches_the_composed_ops() {
        let wt = values(&[8, 6], 0.3).t().unwrap(); // (in 6, out 8), strided like W.t()
        let bias = values(&[8], 1.1);
        for act in [Act::Silu, Act::GeluErf, Act::GeluTanh] {
            for b in [Some(&bias), None] {
                compare(
                    |x| x.apply_op1(LinearAct::new(Proj::new(&wt, b).unwrap(), act, true)).unwrap(),
                    |x| reference(act, &linear(x, &wt, b)),
                    &format!("{act:?}, bias {}", b.is_some()),
                );
            }
        }
    }

    #[test]
    fn gated_linear_matches_the_composed_ops() {
        let (wg, wu) = (values(&[8, 6], 0.3).t().unwrap(), values(&[6, 8], 0.8)); // two layouts
        let (bg, bu) = (values(&[8], 1.1), values(&[8], 1.7));
        for act in [Act::Silu, Act::GeluErf, Act::GeluTanh] {
            for (g, u) in [(Some(&bg), Some(&bu)), (None, None)] {
                let op = || GatedLinear::new(Proj::new(&wg, g).unwrap(), Proj::new(&wu, u).unwrap(), act, true);
                compare(
                    |x| x.apply_op1(op()).unwrap(),
                    |x| (reference(act, &linear(x, &wg, g)) * linear(x, &wu, u)).unwrap(),
                    &format!("gated {act:?}, bias {}", g.is_some()),
                );
            }
        }
    }

    #[test]
    fn without_a_backward_pass_nothing_is_kept_and_the_values_agree() {
        let (x, wt) = (values(&[2, 5, 6], 0.0), values(&[6, 8], 0.3));
        let op = LinearAct::new(Proj::new(&wt, None).unwrap(), Act::GeluErf, false);
        let y = x.apply_op1_no_bwd(&op).unwrap();
        assert!(op.saved.lock().unwrap().is_none());
        assert!(max_rel(&y, &reference(Act::GeluErf, &linear(&x, &wt, None))) < 1e-5);
        let gated = GatedLinear::new(Proj::new(&wt, None).unwrap(), Proj::new(&wt, None).unwrap(), Act::Silu, false);
        let y = x.apply_op1_no_bwd(&gated).unwrap();
        assert!(gated.saved.lock().unwrap().is_none());
        let z = linear(&x, &wt, None);
        assert!(max_rel(&y, &(z.silu().unwrap() * &z).unwrap()) < 1e-5);
    }
}
