//! Rotary position embeddings: the settings a config resolves to (theta, the rotated share of
//! each head, and transformers' linear and llama3 frequency scaling) and the rotation itself,
//! fused on the CPU in f32 and composed from differentiable ops elsewhere. This file must not
//! read config.json; an architecture hands it the fields it parsed.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use super::config::RopeParameters;
use super::fused::{self, Rotation};
use crate::error::{Error, Result};

/// How rotary frequencies are rescaled (transformers' `ROPE_INIT_FUNCTIONS`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// inv_freq / factor.
    Linear {
        factor: f64,
    },
    /// Llama 3: long wavelengths divided by `factor`, short ones kept, the band between blended.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The resolved rotary settings of a config, whichever transformers version wrote it.
#[derive(Debug, Clone, Copy)]
pub struct RopeConfig {
    pub theta: f64,
    pub partial_rotary_factor: Option<f64>,
    pub scaling: RopeScaling,
}

pub(crate) fn rope_settings(
    dir: &Path,
    top_theta: Option<f64>,
    scaling: &Option<RopeParameters>,
    parameters: &Option<RopeParameters>,
    default_theta: f64,
) -> Result<RopeConfig> {
    let p = parameters.as_ref().or(scaling.as_ref()).cloned().unwrap_or_default();
    let kind = p.rope_type.as_deref().or(p.legacy_type.as_deref()).unwrap_or("default");
    let need = |v: Option<f64>, field: &str| {
        v.ok_or_else(|| Error::input(dir.join("config.json"), format!("rope type {kind:?} needs {field}")))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need(p.factor, "factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need(p.factor, "factor")?,
            low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: need(
                p.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?,
        },
        other => {
            return Err(Error::input(
                dir.join("config.json"),
                format!("rope type {other:?} is not supported (supported: default, linear, llama3)"),
            ))
        }
    };
    let theta = parameters.as_ref().and_then(|p| p.rope_theta).or(top_theta).unwrap_or(default_theta);
    Ok(RopeConfig { theta, partial_rotary_factor: parameters.as_ref().and_then(|p| p.partial_rotary_factor), scaling })
}

/// HF's rotary embedding (`rotate_half` form) over the first `rot_dim` features of each head.
pub struct Rope {
    rot_dim: usize,
    /// (rot_dim / 2) inverse frequencies, scaled as the config asks.
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(rot_dim: usize, cfg: &RopeConfig) -> Self {
        // HF: inv_freq = 1 / theta^(arange(0, dim, 2) / dim), computed in f32.
        let inv = (0..rot_dim / 2).map(|i| 1.0 / (cfg.theta as f32).powf((2 * i) as f32 / rot_dim as f32));
        Rope { rot_dim, inv_freq: inv.map(|f| scale_frequency(f, cfg.scaling)).collect() }
    }

    /// cos and sin tables (t, rot_dim), each the frequencies repeated twice as in HF.
    fn tables(&self, t: usize, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let mut freqs = Vec::with_capacity(t * self.rot_dim);
        for pos in 0..t {
            let row: Vec<f32> = self.inv_freq.iter().map(|f| pos as f32 * f).collect();
            freqs.extend_from_slice(&row);
            freqs.extend_from_slice(&row);
        }
        let freqs = Tensor::from_vec(freqs, (t, self.rot_dim), device)?;
        Ok((freqs.cos()?, freqs.sin()?))
    }

    /// Rotates (b, h, t, d) queries or keys; features past `rot_dim` pass through.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.rot_dim == 0 {
            return Ok(x.clone());
        }
        if !(x.device().is_cpu() && x.dtype() == DType::F32) {
            return self.apply_composed(x);
        }
        fused::rotary(x, self.rotation(x.dim(2)?)?)
    }

    /// The f32 rotation at positions 0..t, for the CPU kernels.
    pub fn rotation(&self, t: usize) -> candle_core::Result<Rotation> {
        let (cos, sin) = self.tables(t, &Device::Cpu)?;
        let (cos, sin) = (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
        Ok(Rotation { cos, sin, rot_dim: self.rot_dim })
    }

    /// Features of each head that rotate (0: none).
    pub fn rot_dim(&self) -> usize {
        self.rot_dim
    }

    /// [`Self::apply`] computed in f32 and rounded once, as OLMo's `apply_rotary_pos_emb` does
    /// with its f32 cos and sin tables (Llama's are cast to the activations' dtype first).
    pub fn apply_rounded_once(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() == DType::F32 {
            return self.apply(x);
        }
        self.apply(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    }

    /// [`Self::apply`] from candle's differentiable ops (other devices, and the tests' reference).
    pub fn apply_composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_b, _h, t, d) = x.dims4()?;
        if self.rot_dim == 0 {
            return Ok(x.clone());
        }
        let (cos, sin) = self.tables(t, x.device())?; // f32, cast as HF casts them to x's dtype
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let rot = x.narrow(D::Minus1, 0, self.rot_dim)?;
        let half = self.rot_dim / 2;
        let x1 = rot.narrow(D::Minus1, 0, half)?;
        let x2 = rot.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // rotate_half
        let out = (rot.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        if self.rot_dim == d {
            return Ok(out);
        }
        let pass = x.narrow(D::Minus1, self.rot_dim, d - self.rot_dim)?;
        Tensor::cat(&[&out, &pass], D::Minus1)
    }
}

/// One inverse frequency under a scaling rule (transformers' `_compute_*_parameters`).
fn scale_frequency(f: f32, scaling: RopeScaling) -> f32 {
    match scaling {
        RopeScaling::None => f,
        RopeScaling::Linear { factor } => f / factor as f32,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let (factor, low, high, old) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32, old as f32);
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < old / high {
                f
            } else if wavelen > old / low {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        }
    }
}
