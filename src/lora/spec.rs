//! The LoRA settings a scan asks for, with PEFT's names and defaults: which modules get an
//! adapter, the rank, alpha, dropout and rsLoRA scaling, and where the initial A and B come
//! from. These are plain values; this file must not build tensors or read files.

use std::path::PathBuf;

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
