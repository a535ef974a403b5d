//! The data a fine-tune produces and everything above the engine reads: loss-curve points,
//! a run's outcome and its progress events. It sits on the ground floor so that scores,
//! reports and the progress bar can read curves without depending on how they were trained;
//! it must not depend on any other module of the crate.

/// A point of the loss curve. `step` counts optimizer updates; step 0 is before training.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CurvePoint {
    pub step: usize,
    pub train_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// Training time (evaluation excluded) from the first update to the end of this one.
    pub elapsed_s: f64,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub curve: Vec<CurvePoint>,
    pub step_seconds: Vec<f64>,
    /// Median over the updates after the timing warm-up.
    pub median_step_s: f64,
    pub tokens_per_step: usize,
}

impl Outcome {
    pub fn tokens_per_s(&self) -> f64 {
        if self.median_step_s > 0.0 {
            self.tokens_per_step as f64 / self.median_step_s
        } else {
            0.0
        }
    }
}

/// Progress of a run, for the progress bar.
pub struct StepEvent {
    pub step: usize,
    pub steps: usize,
    pub train_loss: f64,
    pub eval_loss: Option<f64>,
    pub step_s: f64,
    pub tokens: usize,
}

/// The median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
