//! What `probe` measures of one snapshot, and the statistics both kinds of snapshot share:
//! the geometry of the adapted matrices from their singular values, and the gradient energy
//! a rank-r update captures. Pure functions; nothing here loads or trains.

use serde::{Deserialize, Serialize};

use crate::report::Status;

/// The probes of one snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub path: String,
    pub step: u64,
    /// "ok" or "failed".
    pub status: Status,
    pub error: Option<String>,
    pub model_type: Option<String>,
    /// Adapted matrices probed.
    pub matrices: usize,
    pub spectral_norm: Option<f64>,
    pub stable_rank: Option<f64>,
    pub effective_rank: Option<f64>,
    /// Each geometry probe over the first probed snapshot's.
    pub spectral_norm_growth: Option<f64>,
    pub stable_rank_growth: Option<f64>,
    pub effective_rank_growth: Option<f64>,
    pub grad_norm: Option<f64>,
    pub capture: Option<f64>,
    pub forecast: Option<f64>,
    /// 1 = the fastest start forecast.
    pub forecast_rank: Option<usize>,
    pub zero_shot_loss: Option<f64>,
    pub seconds: f64,
}

/// The names of the numeric probes, as in [`Probe`] and in `--against`'s table.
pub const PROBES: [&str; 8] =
    ["forecast", "capture", "grad_norm", "spectral_norm", "stable_rank", "effective_rank", "zero_shot_loss", "step"];

impl Probe {
    pub fn value(&self, probe: &str) -> Option<f64> {
        match probe {
            "forecast" => self.forecast,
            "capture" => self.capture,
            "grad_norm" => self.grad_norm,
            "spectral_norm" => self.spectral_norm,
            "stable_rank" => self.stable_rank,
            "effective_rank" => self.effective_rank,
            "zero_shot_loss" => self.zero_shot_loss,
            "step" => Some(self.step as f64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct MatrixStats {
    pub spectral: f64,
    pub stable_rank: f64,
    pub effective_rank: f64,
}

/// Spectral norm, stable rank and effective rank from the singular values (largest first).
pub(super) fn matrix_stats(s: &[f64]) -> MatrixStats {
    let top = s.first().copied().unwrap_or(0.0);
    let (sum, frob2) = (s.iter().sum::<f64>(), s.iter().map(|v| v * v).sum::<f64>());
    let entropy: f64 = s.iter().filter(|&&v| v > 0.0).map(|&v| v / sum).map(|p| -p * p.ln()).sum();
    MatrixStats {
        spectral: top,
        stable_rank: if top > 0.0 { frob2 / (top * top) } else { 0.0 },
        effective_rank: if sum > 0.0 { entropy.exp() } else { 0.0 },
    }
}

/// Means of the geometry over the matrices, and the gradient probes from (captured, total)
/// gradient energy.
pub(super) fn fill(p: &mut Probe, geometry: &[MatrixStats], (captured, total): (f64, f64)) {
    let mean = |f: fn(&MatrixStats) -> f64| {
        (!geometry.is_empty()).then(|| geometry.iter().map(f).sum::<f64>() / geometry.len() as f64)
    };
    p.status = Status::Ok;
    p.matrices = geometry.len();
    p.spectral_norm = mean(|m| m.spectral);
    p.stable_rank = mean(|m| m.stable_rank);
    p.effective_rank = mean(|m| m.effective_rank);
    p.grad_norm = Some(total.sqrt());
    p.capture = Some(if total > 0.0 { captured / total } else { 0.0 });
    p.forecast = Some(captured.sqrt());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_stats_of_known_spectra() {
        let m = matrix_stats(&[2.0, 2.0, 0.0]);
        assert!(
            (m.spectral - 2.0).abs() < 1e-12
                && (m.stable_rank - 2.0).abs() < 1e-12
                && (m.effective_rank - 2.0).abs() < 1e-12
        );
        let m = matrix_stats(&[3.0]);
        assert!((m.stable_rank - 1.0).abs() < 1e-12 && (m.effective_rank - 1.0).abs() < 1e-12);
        let m = matrix_stats(&[4.0, 1.0]);
        assert!((m.stable_rank - 17.0 / 16.0).abs() < 1e-12);
        let h = -(0.8f64 * 0.8f64.ln() + 0.2 * 0.2f64.ln());
        assert!((m.effective_rank - h.exp()).abs() < 1e-12);
    }
}
