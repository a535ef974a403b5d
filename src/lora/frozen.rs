//! The frozen base weight's matmul as candle custom ops: the backward pass returns dL/dx only,
//! where candle's own matmul backward would also compute the weight-sized dL/dW. On the CPU the
//! bias, and a block's residual, are the gemm's starting value, so each is one graph node with
//! no intermediate kept. This file must not know adapters or LoRA's settings.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::matmul::{linear, linear_onto, product, threads, with_mat, Mat};

/// `x @ wt` where `wt` (in, out) is frozen: the backward pass returns dL/dx only.
pub fn frozen_matmul(x: &Tensor, wt: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(wt, FrozenMatmul)
}

/// `x @ wt + bias` with frozen `wt` and bias; on the CPU the bias is the matmul's starting
/// value (one output tensor, one graph node; in bf16 the sum is rounded once, as torch's
/// addmm rounds it), elsewhere it is added after.
pub fn frozen_linear(x: &Tensor, wt: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let same = x.dtype() == wt.dtype() && bias.is_none_or(|b| b.dtype() == x.dtype());
    match bias {
        None => frozen_matmul(x, wt),
        Some(b)
            if x.device().is_cpu()
                && same
                && matches!(x.dtype(), DType::F32 | DType::BF16)
                && b.dims1()? == wt.dim(1)? =>
        {
            x.contiguous()?.apply_op3(wt, &b.contiguous()?, FrozenMatmulBias)
        }
        Some(b) => frozen_matmul(x, wt)?.broadcast_add(b),
    }
}

/// [`FrozenMatmul`] that starts from the bias: y = bias + x @ wt, on the CPU.
struct FrozenMatmulBias;

impl CustomOp3 for FrozenMatmulBias {
    fn name(&self) -> &'static str {
        "frozen-matmul-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if let CpuStorage::BF16(_) = s1 {
            // bf16: computed in f32 from the bias on, rounded once at the end
            let (y, out) = self.cpu_fwd(&widen(s1), l1, &widen(s2), l2, &widen(s3), l3)?;
            let CpuStorage::F32(y) = y else { candle_core::bail!("frozen matmul: f32 output expected") };
            return Ok((CpuStorage::BF16(y.iter().map(|&v| half::bf16::from_f32(v)).collect()), out));
        }
        let (m, _, n, out) = FrozenMatmul::dims(l1, l2)?;
        let (bs, be) = l3
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen matmul needs a contiguous bias".into()))?;
        let bias = &s3.as_slice::<f32>()?[bs..be];
        let (x, wt) = operands((m, n), s1, l1, s2, l2)?;
        let y = linear(x, wt, Some(bias), threads()).map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(y), out))
    }

    /// dL/dx = dL/dy @ wt^T; no gradient for the frozen weight and bias.
    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_grad(x, wt, grad)?), None, None))
    }
}

/// A bf16 storage as f32 (same layout); other storages as they are.
fn widen(s: &CpuStorage) -> CpuStorage {
    match s {
        CpuStorage::BF16(v) => CpuStorage::F32(v.iter().map(|x| x.to_f32()).collect()),
        other => other.clone(),
    }
}

/// y = residual + bias + x @ wt with frozen `wt` and bias, on the CPU: the matmul
/// accumulates onto the residual (see `Linear::forward_residual` in adapter.rs).
pub(super) struct FrozenLinearResidual {
    pub(super) bias: Option<Vec<f32>>,
}

impl CustomOp3 for FrozenLinearResidual {
    fn name(&self) -> &'static str {
        "frozen-linear-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, _, n, out) = FrozenMatmul::dims(l1, l2)?;
        let (rs, re) = l3
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen linear: residual not contiguous".into()))?;
        if l3.dims() != out.dims() {
            candle_core::bail!("frozen linear: residual {:?} for an output {:?}", l3.dims(), out.dims());
        }
        let residual = &s3.as_slice::<f32>()?[rs..re]; // (m, n)
        let (x, wt) = operands((m, n), s1, l1, s2, l2)?;
        let y = linear_onto(x, wt, self.bias.as_deref(), residual, threads()).map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(y), out))
    }

    /// dL/dx = dL/dy @ wt^T, dL/dresidual = dL/dy; nothing for the frozen weight.
    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _residual: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_grad(x, wt, grad)?), None, Some(grad.clone())))
    }
}

/// A contiguous x (m, k) and a weight (k, n) of any strides, as views of their storages.
fn operands<'a>(
    (m, n): (usize, usize),
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(Mat<'a>, Mat<'a>)> {
    if !l1.is_contiguous() {
        candle_core::bail!("frozen matmul needs a contiguous input");
    }
    let k = l2.dims()[0];
    let x = s1.as_slice::<f32>()?.get(l1.start_offset()..l1.start_offset() + m * k);
    let x = x.ok_or_else(|| candle_core::Error::Msg(format!("frozen matmul: input shorter than {m} x {k}")))?;
    let w = s2.as_slice::<f32>()?.get(l2.start_offset()..).unwrap_or(&[]);
    Ok((Mat::rows(x, m, k), Mat { data: w, rows: k, cols: n, rs: l2.stride()[0], cs: l2.stride()[1] }))
}

/// dL/dx = dL/dy @ wt^T for y = x @ wt, as one (tokens, out) x (out, in) matmul: a batched
/// matmul against the broadcast weight would repack the weight for every sequence. On the CPU
/// in f32 the product is written into a buffer that is never zero-filled first.
fn input_grad(x: &Tensor, wt: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    let out = wt.dim(1)?;
    let g2 = grad.contiguous()?.reshape(((), out))?; // (tokens, out)
    if !(g2.device().is_cpu() && g2.dtype() == DType::F32 && wt.dtype() == DType::F32) {
        return g2.matmul(&wt.t()?)?.reshape(x.shape());
    }
    let dx = with_mat(&g2, |g| with_mat(wt, |w| product(g, w.t(), 1.0, threads()).map_err(candle_core::Error::Msg)))?;
    Tensor::from_vec(dx, x.shape(), x.device())
}

/// The custom op behind [`frozen_matmul`].
struct FrozenMatmul;

impl FrozenMatmul {
    /// (m, k) x (k, n) over the flattened leading dims of x.
    fn dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize, Shape)> {
        let (k, n) = l2.shape().dims2()?;
        let dims = l1.dims();
        let k1 = *dims.last().ok_or_else(|| candle_core::Error::Msg("frozen matmul on a scalar".into()))?;
        if k1 != k {
            candle_core::bail!("frozen matmul: input has {k1} features, weight expects {k}");
        }
        let m = dims[..dims.len() - 1].iter().product();
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(n);
        Ok((m, k, n, Shape::from(out)))
    }

    fn fwd<S: BackendStorage>(s1: &S, l1: &Layout, s2: &S, l2: &Layout) -> candle_core::Result<(S, Shape)> {
        if !l1.is_contiguous() {
            candle_core::bail!("frozen matmul needs a contiguous input");
        }
        let (m, k, n, out) = Self::dims(l1, l2)?;
        let lhs = Layout::contiguous_with_offset((m, k), l1.start_offset());
        let y = s1.matmul(s2, (1, m, n, k), &lhs, l2)?;
        Ok((y, out))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if !matches!((s1, s2), (CpuStorage::F32(_), CpuStorage::F32(_))) {
            return Self::fwd(s1, l1, s2, l2);
        }
        // f32: the engine's own product, on the kernels `crate::isa` chose for this CPU
        let (m, _, n, out) = Self::dims(l1, l2)?;
        let (x, wt) = operands((m, n), s1, l1, s2, l2)?;
        Ok((CpuStorage::F32(product(x, wt, 1.0, threads()).map_err(candle_core::Error::Msg)?), out))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Self::fwd(s1, l1, s2, l2)
    }

    /// dL/dx = dL/dy @ wt^T; no gradient for the frozen weight.
    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_grad(x, wt, grad)?), None))
    }
}
