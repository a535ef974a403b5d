//! The adapted linear layer as one CPU node: `y = bias + x @ wt + scale * (x @ A^T) @ B^T` in
//! f32, with a backward pass that returns dL/dx, dL/dA and dL/dB. Composed from candle's ops,
//! the same layer is five nodes: the forward pass adds the two branches' (tokens, out) outputs,
//! and the backward pass writes a gradient of that size for each branch and sums one of the
//! input's size over the uses of x. Here the adapter's product accumulates onto the frozen
//! one, and dL/dx onto itself, inside the matrix products. `adapter.rs` uses it only on the
//! CPU, in f32, with the adapter's dropout off, and composes the graph elsewhere: both paths
//! compute the same sums in the same order. This file must not know architectures or how
//! adapters are chosen.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use crate::matmul::{linear, matmul, product, rows_of, threads, with_mat, Dst, Mat};

/// The op: `wt` (in, out) and the bias are frozen; the three arguments are x, A (r, in) and B
/// (out, r).
pub(super) struct LoraLinear {
    wt: Tensor,
    bias: Option<Vec<f32>>,
    scale: f32,
    /// h = scale * x A^T (m, r) from the forward pass, for the backward's dB.
    h: Mutex<Option<Vec<f32>>>,
}

impl LoraLinear {
    pub fn new(wt: Tensor, bias: Option<Vec<f32>>, scale: f32) -> Self {
        LoraLinear { wt, bias, scale, h: Mutex::new(None) }
    }
}

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("lora linear: {msg}"))
}

/// The contiguous f32 elements of a CPU tensor's storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| err(format!("{what} is not contiguous")))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((r, _), (n, _)) = (la.shape().dims2()?, lb.shape().dims2()?);
        let (x, out) = rows_of(sx, lx, n)?;
        let (m, k) = (x.rows, x.cols);
        let (a, b) = (Mat::rows(slice(sa, la, "A")?, r, k), Mat::rows(slice(sb, lb, "B")?, n, r));
        let h = product(x, a.t(), self.scale, threads()).map_err(err)?; // (m, r), scaled while small
                                                                        // (m, n): the frozen branch, then the adapter's onto it
        let mut y = with_mat(&self.wt, |wt| linear(x, wt, self.bias.as_deref(), threads()).map_err(err))?;
        matmul(&mut y, Mat::rows(&h, m, r), b.t(), 1.0, Dst::Accumulate, threads()).map_err(err)?;
        *self.h.lock().map_err(|_| err("poisoned lock"))? = Some(h);
        Ok((CpuStorage::F32(y), out))
    }

    /// With g = dL/dy and h = scale * x A^T (kept by the forward pass): dB = g^T h, dA = scale (g B)^T x, and
    /// dx = g wt^T + scale (g B) A (none when nothing below x trains).
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((r, k), (n, _)) = (a.dims2()?, b.dims2()?);
        let (xc, ac, bc, gc) = (x.contiguous()?, a.contiguous()?, b.contiguous()?, grad.contiguous()?);
        let (xs, xl) = xc.storage_and_layout();
        let (as_, al) = ac.storage_and_layout();
        let (bs, bl) = bc.storage_and_layout();
        let (gs, gl) = gc.storage_and_layout();
        let m = gl.shape().elem_count() / n.max(1);
        let (xm, gm) =
            (Mat::rows(cpu_slice(&xs, xl, "input")?, m, k), Mat::rows(cpu_slice(&gs, gl, "gradient")?, m, n));
        let (am, bm) = (Mat::rows(cpu_slice(&as_, al, "A")?, r, k), Mat::rows(cpu_slice(&bs, bl, "B")?, n, r));
        let t = threads();
        let h = self.h.lock().map_err(|_| err("poisoned lock"))?.take(); // (m, r)
        let h = h.filter(|h| h.len() == m * r).ok_or_else(|| err("backward ran twice or without its forward"))?;
        // dB^T, then transposed: with the r outputs as gemm's short side, g is read in panels
        // of consecutive outputs (15-20 GFLOP/s the other way round, 27-44 so)
        let dbt = product(Mat::rows(&h, m, r).t(), gm, 1.0, t).map_err(err)?; // (r, n)
        let db: Vec<f32> = (0..n * r).map(|e| dbt[(e % r) * n + e / r]).collect(); // (n, r)
        let gu = product(gm, bm, self.scale, t).map_err(err)?; // (m, r)
        let da = product(Mat::rows(&gu, m, r).t(), xm, 1.0, t).map_err(err)?; // (r, k)
        let dx = match x.track_op() {
            true => Some(self.input_grad(gm, Mat::rows(&gu, m, r), am)?),
            false => None,
        };
        let dev = x.device();
        let dx = dx.map(|v| Tensor::from_vec(v, x.shape(), dev)).transpose()?;
        Ok((dx, Some(Tensor::from_vec(da, (r, k), dev)?), Some(Tensor::from_vec(db, (n, r), dev)?)))
    }
}

/// The contiguous f32 elements of a CPU tensor, from its storage guard.
fn cpu_slice<'a>(s: &'a Storage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Storage::Cpu(cpu) = s else { return Err(err(format!("{what} is not on the CPU"))) };
    slice(cpu, l, what)
}

impl LoraLinear {
    /// dx (m, k) = g wt^T + gu A, in one buffer.
    fn input_grad(&self, g: Mat, gu: Mat, a: Mat) -> candle_core::Result<Vec<f32>> {
        let mut dx = with_mat(&self.wt, |wt| product(g, wt.t(), 1.0, threads()).map_err(err))?;
        matmul(&mut dx, gu, a, 1.0, Dst::Accumulate, threads()).map_err(err)?;
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel, values};
    use candle_core::Var;

    /// The layer composed from candle's own ops, as `adapter.rs` builds it off the CPU.
    fn composed(x: &Tensor, wt: &Tensor, bias: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Tensor {
        let x2 = x.flatten_to(1).unwrap(); // (tokens, in)
        let base = x2.matmul(wt).unwrap().broadcast_add(bias).unwrap();
        let lora = x2.matmul(&a.t().unwrap()).unwrap().affine(scale, 0.0).unwrap().matmul(&b.t().unwrap()).unwrap();
        (base + lora).unwrap().reshape((2, 5, 4)).unwrap()
    }

    #[test]
    fn output_and_gradients_match_the_composed_graph() {
        let wt = values(&[4, 6], 0.3).t().unwrap(); // (in 6, out 4), strided like W.t()
        let bias = values(&[4], 1.1);
        let (x, a, b) =
            (Var::from_tensor(&values(&[2, 5, 6], 0.0)).unwrap(), values(&[3, 6], 0.5), values(&[4, 3], 0.9));
        let (a, b) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
        let weights = values(&[2, 5, 4], 2.0); // the loss weights each output differently
        let op = LoraLinear::new(wt.clone(), Some(bias.to_vec1().unwrap()), 2.0);
        let fused = x.as_tensor().apply_op3(a.as_tensor(), b.as_tensor(), op).unwrap();
        let want = composed(x.as_tensor(), &wt, &bias, a.as_tensor(), b.as_tensor(), 2.0);
        assert!(max_rel(&fused, &want) < 1e-6, "forward: {}", max_rel(&fused, &want));
        let grads = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (got, exp) = (grads(&fused), grads(&want));
        for (name, v) in [("x", x.as_tensor()), ("A", a.as_tensor()), ("B", b.as_tensor())] {
            let (g, e) = (got.get(v).unwrap(), exp.get(v).unwrap());
            assert_eq!(g.dims(), e.dims(), "{name}");
            assert!(max_rel(g, e) < 1e-5, "d{name}: {}", max_rel(g, e));
        }
    }

    #[test]
    fn an_input_nothing_trains_below_gets_no_gradient() {
        let x = values(&[2, 5, 6], 0.0); // not a variable, not computed from one
        let (a, b) =
            (Var::from_tensor(&values(&[3, 6], 0.5)).unwrap(), Var::from_tensor(&values(&[4, 3], 0.9)).unwrap());
        let op = LoraLinear::new(values(&[6, 4], 0.3), None, 0.5);
        let grads = x.apply_op3(a.as_tensor(), b.as_tensor(), op).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(a.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());
    }
}
