//! An MLP's first half as one CPU node with frozen weights: `act(x @ wt + b)` for the plain
//! MLP, `act(x @ wg + bg) * (x @ wu + bu)` for the gated one; and either MLP whole with its
//! residual, e.g. `r + b2 + act(x @ w1 + b1) @ w2`, as one node.
//!
//! Composed, the half is two or three nodes (the projections, then the activation), and the
//! activation's backward pass evaluates the activation's derivative again (an erf or an exp per
//! element) and hands the projections a gradient that candle writes out per node. Here
//! the forward pass keeps what the backward pass multiplies by (act'(z); or act'(g) u and
//! act(g)) in place of the pre-activations the composed nodes keep, which is the same memory:
//! the backward pass is then one elementwise product per projection and the products with the
//! weights, accumulated into one dL/dx. The whole MLP as one node also keeps act(z) from
//! leaving it: the output projection's node would keep it as its input, and candle would write
//! out its gradient, while the backward pass needs only act'(z) and the weights.
//! Values are those of the composed nodes up to f32 rounding. `layers.rs` uses these ops only on the CPU, in f32, when no adapter sits on the
//! projections, and composes the nodes elsewhere. This file must not know architectures.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{per_act, Act};
use crate::math::with_avx2;
use crate::matmul::{linear_onto, matmul, product, rows_of, threads, with_mat, Dst, Mat};
use crate::uninit::written;

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
        let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
        if let Some(b) = bias.as_ref().filter(|b| Some(b.len()) != wt.dim(1).ok()) {
            return Err(err(format!("a bias of {} for a weight {:?}", b.len(), wt.dims())));
        }
        Ok(Proj { wt: wt.clone(), bias })
    }

    fn out(&self) -> candle_core::Result<usize> {
        self.wt.dim(1)
    }

    /// x @ wt, (m, out), without the bias: the activation that follows adds it.
    fn product(&self, x: Mat) -> candle_core::Result<Vec<f32>> {
        with_mat(&self.wt, |wt| product(x, wt, 1.0, threads()).map_err(err))
    }

    /// residual + bias + x @ wt, (m, out), from the residual's (m, out) values.
    fn forward_onto(&self, x: Mat, residual: &[f32]) -> candle_core::Result<Vec<f32>> {
        with_mat(&self.wt, |wt| linear_onto(x, wt, self.bias.as_deref(), residual, threads()).map_err(err))
    }

    /// dL/dy (..., out) @ wt^T, (m, in): the input gradient of a node that ends in this
    /// projection.
    fn input_grad_of(&self, grad: &Tensor) -> candle_core::Result<Vec<f32>> {
        let n = self.out()?;
        let g = grad.contiguous()?.flatten_all()?;
        let g = g.reshape((g.elem_count() / n.max(1), n))?;
        with_mat(&g, |g| self.input_grad(g, None))
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
    scale_by(v, &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + v.len()]);
    Ok(())
}

/// `v[i] *= g[i]`, g at least as long as v.
fn scale_by(v: &mut [f32], g: &[f32]) {
    v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(v, g)| {
        let g = &g[..v.len()];
        with_avx2(
            #[inline(always)]
            || (0..v.len()).for_each(|k| v[k] *= g[k]),
        )
    });
}

/// Elements per parallel task of an elementwise pass over rows of n: whole rows, about
/// [`CHUNK`] elements.
fn task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1) * n.max(1)
}

/// A projection's output before its activation: x @ wt (m, n) and the bias, which the pass
/// that reads it adds (a bias copied into every row first would be one more pass). The
/// bias, when there is one, is n long ([`Proj::new`]).
struct PreAct<'a> {
    z: &'a mut [f32],
    n: usize,
    bias: Option<&'a [f32]>,
}

impl<'a> PreAct<'a> {
    fn of(z: &'a mut [f32], proj: &'a Proj) -> candle_core::Result<Self> {
        Ok(PreAct { z, n: proj.out()?, bias: proj.bias.as_deref() })
    }
}

/// act(z + b) in place over one row z, and act'(z + b) into `d` (as long as the row) when
/// given. Each case is its own loop over equal-length slices, which vectorises.
#[inline(always)]
fn activate_row(a: Act, z: &mut [f32], bias: Option<&[f32]>, d: Option<&mut [MaybeUninit<f32>]>) {
    let n = z.len();
    match (bias, d) {
        (Some(b), Some(d)) => {
            let (b, d) = (&b[..n], &mut d[..n]);
            for k in 0..n {
                let (f, fp) = a.eval(z[k] + b[k]);
                z[k] = f;
                d[k].write(fp);
            }
        }
        (None, Some(d)) => {
            let d = &mut d[..n];
            for k in 0..n {
                let (f, fp) = a.eval(z[k]);
                z[k] = f;
                d[k].write(fp);
            }
        }
        (Some(b), None) => {
            let b = &b[..n];
            for k in 0..n {
                z[k] = a.eval(z[k] + b[k]).0;
            }
        }
        (None, None) => z.iter_mut().for_each(|v| *v = a.eval(*v).0),
    }
}

/// act(z + b) in place of z, and act'(z + b) when `keep`.
fn activate(act: Act, pre: PreAct, keep: bool) -> Option<Vec<f32>> {
    let PreAct { z, n, bias } = pre;
    if !keep {
        z.par_chunks_mut(task(n)).for_each(|z| {
            with_avx2(
                #[inline(always)]
                || per_act!(act, a => z.chunks_mut(n).for_each(|row| activate_row(a, row, bias, None))),
            )
        });
        return None;
    }
    let len = z.len();
    let fill = |d: &mut [MaybeUninit<f32>]| {
        z.par_chunks_mut(task(n)).zip(d.par_chunks_mut(task(n))).for_each(|(z, d)| {
            with_avx2(
                #[inline(always)]
                || {
                    per_act!(act, a => for (row, d) in z.chunks_mut(n).zip(d.chunks_mut(n)) {
                        activate_row(a, row, bias, Some(d))
                    })
                },
            )
        })
    };
    // SAFETY: d's tasks and rows are z's, and `activate_row` writes each element of a row of d
    Some(unsafe { written(len, fill) }) // act'(z + b)
}

/// y = act(g + bg) * (u + bu) over one row, and when `keep`, act'(g + bg) * (u + bu) in place
/// of g and act(g + bg) in place of u; all four as long as y.
#[inline(always)]
fn gate_up_row(
    a: Act,
    (y, g, u): (&mut [MaybeUninit<f32>], &mut [f32], &mut [f32]),
    bias: Option<(&[f32], &[f32])>,
    keep: bool,
) {
    let n = y.len();
    let (g, u) = (&mut g[..n], &mut u[..n]);
    match bias {
        Some((bg, bu)) => {
            let (bg, bu) = (&bg[..n], &bu[..n]);
            for k in 0..n {
                let ((f, fp), uk) = (a.eval(g[k] + bg[k]), u[k] + bu[k]);
                y[k].write(f * uk);
                if keep {
                    g[k] = fp * uk;
                    u[k] = f;
                }
            }
        }
        None => {
            for k in 0..n {
                let ((f, fp), uk) = (a.eval(g[k]), u[k]);
                y[k].write(f * uk);
                if keep {
                    g[k] = fp * uk;
                    u[k] = f;
                }
            }
        }
    }
}

/// Saves what the backward pass will `take`.
fn put<T>(saved: &Mutex<Option<T>>, value: T) -> candle_core::Result<()> {
    *saved.lock().map_err(|_| err("poisoned lock"))? = Some(value);
    Ok(())
}

fn take<T>(saved: &Mutex<Option<T>>) -> candle_core::Result<T> {
    saved
        .lock()
        .map_err(|_| err("poisoned lock"))?
        .take()
        .ok_or_else(|| err("backward ran twice or without a training forward"))
}

/// act(g) * u, and in place of g and u (when `keep`) what dL/dy multiplies into d/dg and d/du:
/// act'(g) * u and act(g); g and u with their biases added (a missing one of the two as
/// zeros).
fn gate_up(act: Act, (g, u): (PreAct, PreAct), keep: bool) -> candle_core::Result<Vec<f32>> {
    let (n, len) = (g.n, g.z.len());
    if u.n != n || u.z.len() != len {
        return Err(err(format!("gate of {len} values ({n} wide) and up of {} ({} wide)", u.z.len(), u.n)));
    }
    let zeros = vec![0f32; if g.bias.is_some() != u.bias.is_some() { n } else { 0 }];
    let bias = match (g.bias, u.bias) {
        (None, None) => None,
        (bg, bu) => Some((bg.unwrap_or(&zeros), bu.unwrap_or(&zeros))),
    };
    let (g, u) = (g.z, u.z);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        let tasks = y.par_chunks_mut(task(n)).zip(g.par_chunks_mut(task(n))).zip(u.par_chunks_mut(task(n)));
        tasks.for_each(|((y, g), u)| {
            with_avx2(
                #[inline(always)]
                || {
                    per_act!(act, a => for ((y, g), u) in y.chunks_mut(n).zip(g.chunks_mut(n)).zip(u.chunks_mut(n)) {
                        gate_up_row(a, (y, g, u), bias, keep)
                    })
                },
            )
        })
    };
    // SAFETY: y's tasks and rows are g's and u's, as long (checked above), and `gate_up_row`
    // writes each element of a row of y
    Ok(unsafe { written(len, fill) })
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
        let mut z = self.proj.product(x)?; // (m, out), the activation's input, then its output
        if let Some(d) = activate(self.act, PreAct::of(&mut z, &self.proj)?, self.keep) {
            put(&self.saved, d)?;
        }
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
        let (mut g, mut u) = (self.gate.product(x)?, self.up.product(x)?); // (m, i) each
        let y = gate_up(self.act, (PreAct::of(&mut g, &self.gate)?, PreAct::of(&mut u, &self.up)?), self.keep)?;
        if self.keep {
            put(&self.saved, (g, u))?;
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

/// The residual's contiguous values, which must have the output's shape.
fn residual_of<'a>(s: &'a CpuStorage, l: &Layout, shape: &Shape) -> candle_core::Result<&'a [f32]> {
    if l.dims() != shape.dims() {
        return Err(err(format!("a residual {:?} for an output {:?}", l.dims(), shape.dims())));
    }
    let n = shape.dims().last().copied().unwrap_or(1);
    Ok(rows_of(s, l, n)?.0.data)
}

/// residual + b2 + act(x @ w1 + b1) @ w2 as one node: the plain MLP with its residual. The
/// arguments are x and the residual.
pub struct MlpResidual {
    fc_in: Proj,
    fc_out: Proj,
    act: Act,
    /// As in [`LinearAct`].
    keep: bool,
    /// act'(z), (m, intermediate).
    saved: Mutex<Option<Vec<f32>>>,
}

impl MlpResidual {
    pub fn new((fc_in, fc_out): (Proj, Proj), act: Act, keep: bool) -> Self {
        MlpResidual { fc_in, fc_out, act, keep, saved: Mutex::new(None) }
    }
}

impl CustomOp2 for MlpResidual {
    fn name(&self) -> &'static str {
        "fused-mlp-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, shape) = rows_of(s1, l1, self.fc_out.out()?)?;
        let residual = residual_of(s2, l2, &shape)?;
        let mut z = self.fc_in.product(x)?; // (m, i), the activation's input, then its output
        let d = activate(self.act, PreAct::of(&mut z, &self.fc_in)?, self.keep);
        let y = self.fc_out.forward_onto(Mat::rows(&z, x.rows, self.fc_in.out()?), residual)?;
        if let Some(d) = d {
            put(&self.saved, d)?;
        }
        Ok((CpuStorage::F32(y), shape))
    }

    /// dz = (dy @ w2^T) * act'(z); dx = dz @ w1^T; dL/dresidual = dy. Where nothing below x
    /// trains (`keep` is false), only the residual's gradient.
    fn bwd(
        &self,
        x: &Tensor,
        _residual: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !self.keep {
            return Ok((None, Some(grad.clone())));
        }
        let d = take(&self.saved)?;
        let mut dz = self.fc_out.input_grad_of(grad)?; // (m, i)
        if dz.len() != d.len() {
            return Err(err(format!("a gradient of {} values for {} activations", dz.len(), d.len())));
        }
        scale_by(&mut dz, &d);
        let i = self.fc_in.out()?;
        let dx = self.fc_in.input_grad(Mat::rows(&dz, dz.len() / i.max(1), i), None)?;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(grad.clone())))
    }
}

/// residual + bd + (act(x @ wg + bg) * (x @ wu + bu)) @ wd as one node: the gated MLP with its
/// residual. The arguments are x and the residual.
pub struct GatedMlpResidual {
    gate: Proj,
    up: Proj,
    down: Proj,
    act: Act,
    /// As in [`LinearAct`].
    keep: bool,
    /// As in [`GatedLinear`].
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl GatedMlpResidual {
    pub fn new((gate, up, down): (Proj, Proj, Proj), act: Act, keep: bool) -> Self {
        GatedMlpResidual { gate, up, down, act, keep, saved: Mutex::new(None) }
    }
}

impl CustomOp2 for GatedMlpResidual {
    fn name(&self) -> &'static str {
        "fused-gated-mlp-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, shape) = rows_of(s1, l1, self.down.out()?)?;
        let residual = residual_of(s2, l2, &shape)?;
        let (mut g, mut u) = (self.gate.product(x)?, self.up.product(x)?); // (m, i) each
        let h = gate_up(self.act, (PreAct::of(&mut g, &self.gate)?, PreAct::of(&mut u, &self.up)?), self.keep)?;
        let y = self.down.forward_onto(Mat::rows(&h, x.rows, self.gate.out()?), residual)?;
        if self.keep {
            put(&self.saved, (g, u))?;
        }
        Ok((CpuStorage::F32(y), shape))
    }

    /// dh = dy @ wd^T; dg = dh * act'(g) * u, du = dh * act(g); dx = dg @ wg^T + du @ wu^T;
    /// dL/dresidual = dy. Where nothing below x trains, only the residual's gradient.
    fn bwd(
        &self,
        x: &Tensor,
        _residual: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !self.keep {
            return Ok((None, Some(grad.clone())));
        }
        let (mut dg, mut du) = take(&self.saved)?;
        let dh = self.down.input_grad_of(grad)?; // (m, i)
        if dh.len() != dg.len() {
            return Err(err(format!("a gradient of {} values for {} activations", dh.len(), dg.len())));
        }
        scale_by(&mut dg, &dh);
        scale_by(&mut du, &dh);
        let i = self.gate.out()?;
        let m = dg.len() / i.max(1);
        let dx = self.gate.input_grad(Mat::rows(&dg, m, i), None)?;
        let dx = self.up.input_grad(Mat::rows(&du, m, i), Some(dx))?;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(grad.clone())))
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
    fn mlp_with_its_residual_matches_the_composed_ops() {
        let (w1, w2) = (values(&[8, 6], 0.3).t().unwrap(), values(&[8, 6], 0.8)); // two layouts
        let (b1, b2) = (values(&[8], 1.1), values(&[6], 1.7));
        let residual = Var::from_tensor(&values(&[2, 5, 6], 2.3)).unwrap();
        for act in [Act::Silu, Act::GeluErf, Act::GeluTanh] {
            for (c, d) in [(Some(&b1), Some(&b2)), (None, None)] {
                let op = || MlpResidual::new((Proj::new(&w1, c).unwrap(), Proj::new(&w2, d).unwrap()), act, true);
                let r = residual.as_tensor();
                compare(
                    |x| x.apply_op2(r, op()).unwrap(),
                    |x| (r + linear(&reference(act, &linear(x, &w1, c)), &w2, d)).unwrap(),
                    &format!("mlp {act:?}, bias {}", c.is_some()),
                );
                // dL/dresidual is dL/dy
                let weights = values(r.dims(), 2.0);
                let grads = (x_of(r).apply_op2(r, op()).unwrap() * &weights).unwrap().sum_all().unwrap().backward();
                let dr = grads.unwrap().remove(r).unwrap();
                assert!(max_rel(&dr, &weights) < 1e-6, "mlp {act:?} dresidual");
            }
        }
    }

    #[test]
    fn gated_mlp_with_its_residual_matches_the_composed_ops() {
        let (wg, wu, wd) = (values(&[8, 6], 0.3).t().unwrap(), values(&[6, 8], 0.8), values(&[8, 6], 1.3));
        let (bg, bu, bd) = (values(&[8], 1.1), values(&[8], 1.7), values(&[6], 0.4));
        let r = Var::from_tensor(&values(&[2, 5, 6], 2.3)).unwrap();
        for act in [Act::Silu, Act::GeluErf, Act::GeluTanh] {
            for (g, u, d) in [(Some(&bg), Some(&bu), Some(&bd)), (None, None, None)] {
                let projections =
                    || (Proj::new(&wg, g).unwrap(), Proj::new(&wu, u).unwrap(), Proj::new(&wd, d).unwrap());
                let hidden = |x: &Tensor| (reference(act, &linear(x, &wg, g)) * linear(x, &wu, u)).unwrap();
                compare(
                    |x| x.apply_op2(r.as_tensor(), GatedMlpResidual::new(projections(), act, true)).unwrap(),
                    |x| (r.as_tensor() + linear(&hidden(x), &wd, d)).unwrap(),
                    &format!("gated mlp {act:?}, bias {}", g.is_some()),
                );
                let frozen = GatedMlpResidual::new(projections(), act, false);
                let y = x_of(r.as_tensor()).apply_op2(r.as_tensor(), frozen).unwrap();
                let dr = y.sum_all().unwrap().backward().unwrap().remove(r.as_tensor()).unwrap();
                assert!(max_rel(&dr, &Tensor::ones_like(&dr).unwrap()) < 1e-6, "gated mlp {act:?} dresidual");
            }
        }
    }

    /// Below the lowest adapter x trains nothing while the residual does: the op keeps
    /// nothing for x and passes dL/dy to the residual.
    #[test]
    fn an_input_nothing_trains_below_gets_no_gradient_and_the_residual_gets_dy() {
        let (w1, w2) = (values(&[6, 8], 0.3), values(&[8, 6], 0.8));
        let residual = Var::from_tensor(&values(&[2, 5, 6], 2.3)).unwrap();
        let x = values(&[2, 5, 6], 0.0); // not a variable, not computed from one
        let op = MlpResidual::new((Proj::new(&w1, None).unwrap(), Proj::new(&w2, None).unwrap()), Act::GeluErf, false);
        let y = x.apply_op2(residual.as_tensor(), op).unwrap();
        let want =
            (residual.as_tensor() + linear(&reference(Act::GeluErf, &linear(&x, &w1, None)), &w2, None)).unwrap();
        assert!(max_rel(&y, &want) < 1e-5);
        let mut grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let dr = grads.remove(residual.as_tensor()).unwrap();
        assert!(max_rel(&dr, &Tensor::ones_like(&dr).unwrap()) < 1e-6);
    }

    /// An input for the op: values unlike the residual's.
    fn x_of(like: &Tensor) -> Tensor {
        values(like.dims(), 0.0)
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
