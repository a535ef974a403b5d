//! Dropout as torch applies it while training: each element is zeroed with probability p and
//! the others are scaled by 1 / (1 - p); in evaluation it is the identity. Every dropout site
//! of one model (the adapters' input, and the base model's attention, residual and embedding
//! dropouts its config.json asks for) shares one switch and one seeded generator: the CPU
//! device cannot be seeded, and a paused fine-tune must resume with the very masks it would
//! have drawn. This module knows no architecture and must not decide where dropout goes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The switch and generator all dropout sites of one model share.
#[derive(Clone)]
pub struct DropoutState {
    rng: Arc<Mutex<ChaCha8Rng>>,
    training: Arc<AtomicBool>,
    /// Sites that drop with a probability above 0.
    sites: Arc<AtomicUsize>,
}

impl DropoutState {
    /// Masks drawn from the dropout stream of `seed`; training is on.
    pub fn new(seed: u64) -> Self {
        DropoutState {
            rng: Arc::new(Mutex::new(crate::rng::stream(seed, crate::rng::Stream::Dropout, 0))),
            training: Arc::new(AtomicBool::new(true)),
            sites: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A site dropping with probability `p`; None when p is 0 (nothing to draw).
    pub fn site(&self, p: f64) -> Option<Dropout> {
        (p > 0.0).then(|| {
            self.sites.fetch_add(1, Ordering::Relaxed);
            Dropout { p, state: self.clone() }
        })
    }

    /// Whether a forward pass now draws masks: training, with at least one site. Passes that
    /// draw must run one after another to draw the same masks every time.
    pub fn draws(&self) -> bool {
        self.training.load(Ordering::Relaxed) && self.sites.load(Ordering::Relaxed) > 0
    }

    /// Dropout on (training) or off (evaluation).
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    /// The generator's state, for pausing a fine-tune.
    pub fn rng(&self) -> ChaCha8Rng {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts the generator back in a state [`Self::rng`] returned.
    pub fn set_rng(&self, state: ChaCha8Rng) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

/// One dropout site.
#[derive(Clone)]
pub struct Dropout {
    p: f64,
    state: DropoutState,
}

impl Dropout {
    /// Whether it drops now (training).
    pub fn active(&self) -> bool {
        self.state.training.load(Ordering::Relaxed)
    }

    /// `x` with its elements dropped and the rest scaled, when training; `x` otherwise.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !self.active() {
            return Ok(x.clone());
        }
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let n = x.elem_count();
        let mask: Vec<f32> = {
            let mut rng = self.state.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..n).map(|_| if rng.random::<f64>() < self.p { 0.0 } else { keep }).collect()
        };
        x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// `x` through `site` when there is one.
pub fn apply(site: Option<&Dropout>, x: Tensor) -> candle_core::Result<Tensor> {
    match site {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

/// A site that drops now.
pub fn active(site: Option<&Dropout>) -> bool {
    site.is_some_and(Dropout::active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_about_p_and_keeps_the_mean_while_training_only() {
        let state = DropoutState::new(3);
        let site = state.site(0.25).unwrap();
        let x = Tensor::ones(40_000, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let y = site.apply(&x).unwrap().to_vec1::<f32>().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "{zeros}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        state.set_training(false);
        assert_eq!(site.apply(&x).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 40_000]);
        assert!(state.site(0.0).is_none());
    }

    #[test]
    fn a_restored_generator_draws_the_same_masks() {
        let state = DropoutState::new(7);
        let site = state.site(0.5).unwrap();
        let x = Tensor::ones(64, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let saved = state.rng();
        let first = site.apply(&x).unwrap().to_vec1::<f32>().unwrap();
        state.set_rng(saved);
        assert_eq!(site.apply(&x).unwrap().to_vec1::<f32>().unwrap(), first);
    }
}
