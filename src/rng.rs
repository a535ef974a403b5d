//! Seeded random streams. Every use of randomness draws from its own ChaCha stream, so two
//! purposes given the same seed (the default 0 for all of them) never see the same numbers:
//! with one shared stream the first Gaussian batch of a simulated fine-tune would be the
//! teacher direction itself. The CPU device of candle cannot be seeded, so nothing random
//! comes from it.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What the numbers are for; each purpose is an independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// LoRA A matrices (further keyed by module name).
    AdapterInit = 1,
    /// The order of training blocks.
    BatchOrder = 2,
    /// Dropout masks on the adapter input.
    Dropout = 3,
    /// The teacher direction w* of a simulated series.
    Teacher = 4,
    /// The random part xi of a random-mix pre-trained weight.
    TeacherNoise = 5,
    /// The initial adapter direction of a single-index fine-tune.
    SimAdapter = 6,
    /// The Gaussian batches of a single-index fine-tune.
    SimData = 7,
    /// The Gaussian batches of `plasticity probe` on a single-index checkpoint.
    ProbeData = 8,
    /// The residual resamples behind a fitted curve's interval (`score::curve_fit`).
    Bootstrap = 9,
}

/// A generator for `purpose` seeded with `seed` (and `key`, e.g. a module name's hash).
pub fn stream(seed: u64, purpose: Stream, key: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ key);
    rng.set_stream(purpose as u64);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn purposes_do_not_share_numbers() {
        let a: u64 = stream(0, Stream::Teacher, 0).random();
        let b: u64 = stream(0, Stream::SimData, 0).random();
        assert_ne!(a, b);
        let c: u64 = stream(0, Stream::Teacher, 0).random();
        assert_eq!(a, c);
    }
}
