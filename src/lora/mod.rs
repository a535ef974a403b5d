//! LoRA as PEFT defines it: which modules are adapted, how A and B start, and how the adapted
//! linear layer computes `base(x) + scale * B(A(dropout(x)))`.
//!
//! The frozen base weight never receives a gradient: its matmul is a custom op whose backward
//! returns only dL/dx (candle's own matmul backward would also compute the weight-sized dL/dW).
//! This module must not know any architecture; models name their modules as transformers does
//! and ask [`LoraCtx`] whether each one is adapted.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, Var};
use rand::Rng;

pub mod peft;

use crate::dropout::{Dropout, DropoutState};
use crate::error::{CandleContext, Error, Result};

/// Which modules get an adapter (PEFT's `target_modules`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Targets {
    /// PEFT's default for the model type (llama: q_proj,v_proj; gpt_neox: query_key_value; gpt2: c_attn).
    Default,
    /// Every linear layer but the output head (PEFT's "all-linear").
    AllLinear,
    /// Module names, matched as PEFT does: the whole module path or its last dotted components.
    Names(Vec<String>),
}

/// LoRA hyper-parameters with PEFT's names and defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoraSpec {
    /// `r`, default 8.
    pub rank: usize,
    /// `lora_alpha`, default 8.
    pub alpha: f64,
    /// `lora_dropout`, default 0.0.
    pub dropout: f64,
    /// `use_rslora`: scale alpha/sqrt(r) instead of alpha/r.
    pub rslora: bool,
    pub targets: Targets,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec { rank: 8, alpha: 8.0, dropout: 0.0, rslora: false, targets: Targets::Default }
    }
}

impl LoraSpec {
    /// PEFT's `scaling`: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// Where the initial adapter weights come from.
#[derive(Debug, Clone)]
pub enum AdapterInit {
    /// A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform with a = sqrt(5)), B = 0, drawn
    /// from a generator seeded by (seed, module path): identical for checkpoints of one shape.
    Seeded(u64),
    /// PEFT's saved `adapter_model.safetensors` (`--init-adapter DIR`).
    Peft(PathBuf),
    /// A = I (in x in), B = 0 (out x in) and scale 1, whatever the rank: dL/dB is then dL/dW of
    /// the frozen weight, (out, in) as nn.Linear stores it (`plasticity probe`'s gradient).
    WeightGradient,
}

/// One trainable adapter: A is (r, in) and B is (out, r), as PEFT stores them.
#[derive(Clone)]
pub struct Adapter {
    pub module: String,
    pub a: Var,
    pub b: Var,
    scale: f64,
    dropout: Option<Dropout>,
    /// A = I, never materialised (`AdapterInit::WeightGradient`): `a` is a 1 x 1 placeholder
    /// and B (out, in) multiplies x directly.
    identity_a: bool,
}

/// Collects adapters while a model is built, and decides which modules get one.
pub struct LoraCtx {
    spec: LoraSpec,
    targets: Vec<String>,
    init: AdapterInit,
    peft: Option<HashMap<String, Tensor>>,
    /// The model's dropout switch and generator, shared by every site.
    dropout_state: DropoutState,
    /// The adapters' input dropout (`lora_dropout`).
    dropout: Option<Dropout>,
    adapters: Vec<Adapter>,
    seen_modules: BTreeSet<String>,
}

impl LoraCtx {
    /// `default_targets` is PEFT's default for the architecture; `all_linear` its linear layers.
    pub fn new(
        spec: &LoraSpec,
        default_targets: &[&str],
        all_linear: &[&str],
        init: &AdapterInit,
        seed: u64,
    ) -> Result<Self> {
        let targets = match &spec.targets {
            Targets::Default => default_targets.iter().map(|s| s.to_string()).collect(),
            Targets::AllLinear => all_linear.iter().map(|s| s.to_string()).collect(),
            Targets::Names(names) => names.clone(),
        };
        let peft = match init {
            AdapterInit::Peft(dir) => Some(read_peft_adapter(dir)?),
            AdapterInit::Seeded(_) | AdapterInit::WeightGradient => None,
        };
        let dropout_state = DropoutState::new(seed);
        let dropout = dropout_state.site(spec.dropout);
        Ok(LoraCtx {
            spec: spec.clone(),
            targets,
            init: init.clone(),
            peft,
            dropout_state,
            dropout,
            adapters: vec![],
            seen_modules: BTreeSet::new(),
        })
    }

    /// PEFT's matching: `target == module` or `module` ends with `.target`.
    fn is_target(&self, module: &str) -> bool {
        self.targets.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// An adapter for `module` (a linear map in -> out) if it is a target, else None.
    pub fn adapter_for(
        &mut self,
        module: &str,
        in_dim: usize,
        out_dim: usize,
        device: &Device,
    ) -> Result<Option<Adapter>> {
        self.seen_modules.insert(module.to_string());
        if !self.is_target(module) {
            return Ok(None);
        }
        let full = matches!(self.init, AdapterInit::WeightGradient);
        if !full && (self.spec.rank == 0 || self.spec.rank > in_dim.min(out_dim)) {
            return Err(Error::flag(
                "--rank",
                format!("rank {} does not fit module {module} ({in_dim} -> {out_dim})", self.spec.rank),
            ));
        }
        let (a, b) = self.initial_weights(module, in_dim, out_dim, device)?;
        let adapter = Adapter {
            module: module.to_string(),
            a: Var::from_tensor(&a).ctx("adapter A")?,
            b: Var::from_tensor(&b).ctx("adapter B")?,
            scale: if full { 1.0 } else { self.spec.scale() },
            dropout: self.dropout.clone(),
            identity_a: full,
        };
        self.adapters.push(adapter.clone());
        Ok(Some(adapter))
    }

    fn initial_weights(
        &self,
        module: &str,
        in_dim: usize,
        out_dim: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let r = self.spec.rank;
        match (&self.init, &self.peft) {
            (AdapterInit::Peft(dir), Some(map)) => {
                let a = peft_tensor(map, dir, module, "lora_A", &[r, in_dim])?;
                let b = peft_tensor(map, dir, module, "lora_B", &[out_dim, r])?;
                Ok((a.to_device(device)?, b.to_device(device)?))
            }
            (AdapterInit::Seeded(seed), _) => {
                let mut rng = crate::rng::stream(*seed, crate::rng::Stream::AdapterInit, fnv1a(module));
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a: Vec<f32> = (0..r * in_dim).map(|_| rng.random_range(-bound..bound) as f32).collect();
                let a = Tensor::from_vec(a, (r, in_dim), device)?;
                let b = Tensor::zeros((out_dim, r), DType::F32, device)?;
                Ok((a, b))
            }
            (AdapterInit::WeightGradient, _) => {
                Ok((Tensor::zeros((1, 1), DType::F32, device)?, Tensor::zeros((out_dim, in_dim), DType::F32, device)?))
            }
            (AdapterInit::Peft(dir), None) => Err(Error::input(dir, "adapter not loaded")),
        }
    }

    /// The adapters created, after checking that every target matched some module.
    pub fn finish(self) -> Result<Vec<Adapter>> {
        for t in &self.targets {
            let hit = self.seen_modules.iter().any(|m| m == t || m.ends_with(&format!(".{t}")));
            if !hit {
                let known: BTreeSet<&str> = self.seen_modules.iter().filter_map(|m| m.rsplit('.').next()).collect();
                let known: Vec<&str> = known.into_iter().collect();
                return Err(Error::flag(
                    "--targets",
                    format!("target module {t:?} is not in the model (linear modules: {})", known.join(", ")),
                ));
            }
        }
        if self.adapters.is_empty() {
            return Err(Error::flag("--targets", "no module matched the LoRA targets"));
        }
        Ok(self.adapters)
    }

    /// A base-model dropout site with probability `p` (None for 0), sharing the adapters'
    /// switch and generator.
    pub fn dropout_site(&self, p: f64) -> Option<Dropout> {
        self.dropout_state.site(p)
    }

    /// The switch and generator every dropout site of the model shares.
    pub fn dropout_state(&self) -> DropoutState {
        self.dropout_state.clone()
    }
}

fn peft_tensor(
    map: &HashMap<String, Tensor>,
    dir: &Path,
    module: &str,
    which: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let key = format!("base_model.model.{module}.{which}.weight");
    let t = map
        .get(&key)
        .ok_or_else(|| Error::input(dir.join("adapter_model.safetensors"), format!("tensor {key} is missing")))?;
    if t.dims() != shape {
        return Err(Error::input(
            dir.join("adapter_model.safetensors"),
            format!("tensor {key} has shape {:?}, expected {shape:?}", t.dims()),
        ));
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// PEFT's `adapter_model.safetensors`, keys as PEFT saves them (adapter name removed).
fn read_peft_adapter(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let path = dir.join("adapter_model.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| Error::input(&path, format!("cannot read adapter: {}", crate::error::one_line(&e))))
}

/// PEFT's adapter settings from `adapter_config.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub use_rslora: bool,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
}

impl PeftConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
        serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("invalid adapter config: {e}")))
    }

    /// PEFT options that would change the computation and that plasticity does not implement.
    fn unsupported(&self) -> Option<&'static str> {
        let non_empty =
            |m: &Option<serde_json::Map<String, serde_json::Value>>| m.as_ref().is_some_and(|m| !m.is_empty());
        let set = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
        if self.use_dora {
            Some("use_dora (DoRA)")
        } else if self.bias.as_deref().is_some_and(|b| b != "none") {
            Some("bias other than \"none\"")
        } else if non_empty(&self.rank_pattern) || non_empty(&self.alpha_pattern) {
            Some("rank_pattern / alpha_pattern")
        } else if set(&self.layers_to_transform) {
            Some("layers_to_transform")
        } else if set(&self.modules_to_save) {
            Some("modules_to_save")
        } else {
            None
        }
    }

    /// The spec this adapter was made with.
    pub fn spec(&self, path: &Path) -> Result<LoraSpec> {
        if let Some(what) = self.unsupported() {
            return Err(Error::input(path, format!("adapter uses {what}, which plasticity does not support")));
        }
        let targets = match &self.target_modules {
            serde_json::Value::String(s) if s == "all-linear" => Targets::AllLinear,
            serde_json::Value::Array(items) => {
                Targets::Names(items.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            }
            other => return Err(Error::input(path, format!("unsupported target_modules {other}"))),
        };
        Ok(LoraSpec {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            rslora: self.use_rslora,
            targets,
        })
    }
}

/// 64-bit FNV-1a: a stable hash of module names (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A linear layer with a frozen weight, an optional frozen bias and an optional adapter.
pub struct Linear {
    /// The weight as (in, out), whatever its layout: `W.t()` for nn.Linear, `W` for Conv1D.
    wt: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

impl Linear {
    pub fn new(wt: Tensor, bias: Option<Tensor>, adapter: Option<Adapter>) -> Self {
        Linear { wt, bias, adapter }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = frozen_linear(x, &self.wt, self.bias.as_ref())?; // (..., out)
        match &self.adapter {
            None => Ok(y),
            Some(ad) if x.dtype() == ad.a.dtype() => y.add(&ad.forward(x)?),
            // PEFT with a bf16 base: the f32 adapter sees x cast to f32; the sum is cast back
            Some(ad) => y.to_dtype(ad.a.dtype())?.add(&ad.forward(&x.to_dtype(ad.a.dtype())?)?)?.to_dtype(x.dtype()),
        }
    }

    /// `residual + forward(x)`, the residual connection after a block's output projection.
    /// Without an adapter, on the CPU in f32, the product accumulates onto the residual in one
    /// node: the projection's output and the sum's operands are never kept for the backward
    /// pass, which needs neither (two fewer (tokens, hidden) tensors per block).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let fusable =
            self.adapter.is_none() && x.device().is_cpu() && x.dtype() == DType::F32 && residual.dtype() == DType::F32;
        if !fusable || residual.dims().last() != Some(&self.wt.dim(1)?) {
            return residual + self.forward(x)?;
        }
        let bias = match &self.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        x.contiguous()?.apply_op3(&self.wt, &residual.contiguous()?, FrozenLinearResidual { bias })
    }
}

impl Linear {
    /// `residual + dropout(forward(x))`: a block's output projection with transformers'
    /// residual dropout; the fused [`Self::forward_residual`] whenever nothing is dropped.
    pub fn forward_residual_dropped(
        &self,
        x: &Tensor,
        residual: &Tensor,
        dropout: Option<&Dropout>,
    ) -> candle_core::Result<Tensor> {
        match dropout {
            Some(d) if d.active() => residual + d.apply(&self.forward(x)?)?,
            _ => self.forward_residual(x, residual),
        }
    }
}

impl Adapter {
    /// scale * B(A(dropout(x))): (..., in) -> (..., out).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match &self.dropout {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        // scaled while it is (..., r): the same product as PEFT's B(A(x)) * scale, one
        // (..., out) tensor fewer
        // as one (tokens, in) matrix: one matmul per factor (and one per gradient), where a
        // batched matmul would repeat the small factor per sequence and sum its gradients
        let mut shape = x.dims().to_vec();
        let x2 = x.flatten_to(shape.len().saturating_sub(2))?; // (tokens, in)
        let h = if self.identity_a { x2 } else { x2.matmul(&self.a.as_tensor().t()?)?.affine(self.scale, 0.0)? }; // (tokens, r)
        let y = h.matmul(&self.b.as_tensor().t()?)?; // (tokens, out)
        if let Some(last) = shape.last_mut() {
            *last = y.dim(1)?;
        }
        y.reshape(shape)
    }
}

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
        if bias.len() != n {
            candle_core::bail!("frozen matmul: bias of {} for {n} outputs", bias.len());
        }
        let mut y: Vec<f32> = bias.iter().copied().cycle().take(m * n).collect();
        accumulate_matmul(&mut y, (m, n), s1, l1, s2, l2)?;
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
/// accumulates onto the residual (see [`Linear::forward_residual`]).
struct FrozenLinearResidual {
    bias: Option<Vec<f32>>,
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
        let mut y = s3.as_slice::<f32>()?[rs..re].to_vec(); // (m, n)
        if let Some(b) = &self.bias {
            y.chunks_exact_mut(n).for_each(|row| row.iter_mut().zip(b).for_each(|(v, &bi)| *v += bi));
        }
        accumulate_matmul(&mut y, (m, n), s1, l1, s2, l2)?;
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

/// y (m x n, row stride n) += x @ wt for a contiguous x (m, k) and a weight of any strides,
/// on candle's threads.
fn accumulate_matmul(
    y: &mut [f32],
    (m, n): (usize, usize),
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<()> {
    if !l1.is_contiguous() {
        candle_core::bail!("frozen matmul needs a contiguous input");
    }
    let k = l2.dims()[0];
    let x = &s1.as_slice::<f32>()?[l1.start_offset()..l1.start_offset() + m * k];
    let w = s2.as_slice::<f32>()?;
    let (w_rs, w_cs) = (l2.stride()[0], l2.stride()[1]);
    let w_last = l2.start_offset() + (k - 1) * w_rs + (n - 1) * w_cs;
    if y.len() != m * n || w_last >= w.len() {
        candle_core::bail!("frozen matmul: output of {} for {m} x {n}, or weight out of bounds", y.len());
    }
    // SAFETY: y is m x n (row stride n), x is m x k (row stride k), and the weight's
    // largest index, start + (k-1) rs + (n-1) cs, was checked against its length above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr().add(l2.start_offset()),
            w_cs as isize,
            w_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(),
        );
    }
    Ok(())
}

/// dL/dx = dL/dy @ wt^T for y = x @ wt, as one (tokens, out) x (out, in) matmul: a batched
/// matmul against the broadcast weight would repack the weight for every sequence.
fn input_grad(x: &Tensor, wt: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    let out = wt.dim(1)?;
    let g2 = grad.contiguous()?.reshape(((), out))?; // (tokens, out)
    g2.matmul(&wt.t()?)?.reshape(x.shape())
}

/// The threads candle's own matmul would use.
fn gemm_parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
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
        Self::fwd(s1, l1, s2, l2)
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
