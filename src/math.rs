//! Elementwise functions written so that loops over them vectorise: libm's expf and tanhf
//! are calls the compiler cannot vectorise, and they were a sixth of a training step.
//! Accuracy is a few ulp (the normal CDF: 3e-7, absolutely), far inside the 1e-4 the
//! parity tests allow. This module must stay free of tensors.

/// e^x to about 2 ulp for x in [-87, 88]; inputs outside are clamped (e^-87 is 1.6e-38).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2 (Cody-Waite split of ln 2);
    // round to nearest by adding and removing 1.5 * 2^23 (f32::round is a libm call)
    const SHIFT: f32 = 12_582_912.0;
    let k = x * std::f32::consts::LOG2_E + SHIFT;
    let n = k - SHIFT;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // degree-6 Taylor polynomial of e^r on |r| <= 0.347: relative error below 1e-7
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // k = SHIFT + n exactly, so its bits are SHIFT's plus n: 2^n's exponent field without a
    // float-to-int conversion (whose saturating semantics cost half the time of this function)
    let biased = k.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// tanh(x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|), which never overflows.
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    let e = fast_exp(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn fast_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// The standard normal CDF and density, (Phi(x), phi(x)), from one exponential. Phi comes from
/// erfc by Abramowitz & Stegun 7.1.26, the formula of PyTorch's vectorised CPU `erf`:
/// erfc(z) = t P(t) e^(-z^2) with t = 1 / (1 + 0.3275911 z), z = |x| / sqrt 2, within 1.5e-7 of
/// erf; with f32 rounding, within 3e-7 of Phi (absolutely: far out in the lower tail, where Phi
/// itself is smaller, not relatively). phi = e^(-x^2/2) / sqrt(2 pi) is the same exponential.
#[inline(always)]
pub fn fast_phi_pdf(x: f32) -> (f32, f32) {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = fast_exp(-0.5 * x * x); // e^(-z^2)
    let half_erfc = 0.5 * poly * e;
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, e * 0.398_942_3)
}

/// Reduces `xs` with `op` over eight independent lanes, which the compiler turns into SIMD
/// (a single running value is a serial dependency chain it must keep in order).
#[inline(always)]
pub fn lanes_reduce(xs: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = op(*a, x);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &x| op(a, x));
    acc.iter().fold(tail, |a, &x| op(a, x))
}

/// The dot product of `a` and `b` (as long as the shorter) over eight independent lanes, as
/// [`lanes_reduce`] sums.
#[inline(always)]
pub fn lanes_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(0.0, |s, (x, y)| s + x * y);
    acc.iter().fold(tail, |s, &v| s + v)
}

/// Runs `body` compiled for AVX2 and FMA when the CPU has them, else as is: the crate is built
/// for baseline x86-64 (SSE2), where the loops above vectorise four lanes wide at best and the
/// float-to-int steps do not vectorise at all; with AVX2 the elementwise kernels run about twice
/// as fast. The results are the same bits either way: Rust never contracts a * b + c into an FMA
/// nor reorders a sum, so only the instructions change, not the arithmetic.
///
/// Only code inlined into `run` gets the features: mark the closure `#[inline(always)]` and keep
/// its hot loop free of calls LLVM may decline to inline (an indexed `for` over slices cut to
/// one length, not a long iterator chain). A GELU loop written as `zip().for_each()` stayed
/// four lanes wide until it was written so (the 6 x 512 GPT-NeoX step, 1 thread: 823-880
/// against 921 tok/s).
#[inline(always)]
pub fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: the CPU was just checked to support every feature `run` is compiled for.
        return unsafe { run(body) };
    }
    body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_match_serial_ones() {
        let a: Vec<f32> = (0..37).map(|i| ((i as f32) * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| ((i as f32) * 0.11).cos()).collect();
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((lanes_dot(&a, &b) as f64 - dot).abs() < 1e-5);
        assert_eq!(lanes_dot(&a[..3], &b), a[0] * b[0] + a[1] * b[1] + a[2] * b[2]);
        let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(lanes_reduce(&a, f32::NEG_INFINITY, f32::max), max);
        let sum: f64 = a.iter().map(|&x| x as f64).sum();
        assert!((lanes_reduce(&a, 0.0, |x, y| x + y) as f64 - sum).abs() < 1e-5);
    }

    #[test]
    fn exp_matches_libm() {
        for i in 0..=39_500 {
            let x = -90.0 + i as f32 * 0.0045; // up to 87.75; above 88 the input is clamped
            let (a, b) = (fast_exp(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b + 2e-38, "exp({x}) = {b}, fast {a}");
        }
    }

    #[test]
    fn phi_and_its_density_match_erf() {
        for i in 0..=30_000 {
            let x = -15.0 + i as f32 * 0.001;
            let (xd, sqrt_2pi) = (x as f64, (2.0 * std::f64::consts::PI).sqrt());
            let exact = 0.5 * candle_core::cpu::erf::erfc_f64(-xd * std::f64::consts::FRAC_1_SQRT_2);
            let (cdf, pdf) = fast_phi_pdf(x);
            assert!((cdf as f64 - exact).abs() <= 3e-7, "Phi({x}) = {exact}, fast {cdf}");
            // the density's relative error grows as x^2 ulp, as in e^(-x^2/2) itself
            let density = (-0.5 * xd * xd).exp() / sqrt_2pi;
            let tol = 4e-7 + 1.2e-7 * xd * xd;
            assert!((pdf as f64 - density).abs() <= tol * density + 1e-38, "phi({x}) = {density}, fast {pdf}");
        }
    }

    #[test]
    fn tanh_and_sigmoid_match_libm() {
        for i in 0..=40_000 {
            let x = -100.0 + i as f32 * 0.005;
            assert!((fast_tanh(x) - x.tanh()).abs() <= 3e-7, "tanh({x})");
            let s = 1.0 / (1.0 + (-x).exp());
            assert!(
                (fast_sigmoid(x) - s).abs() <= 3e-7 * s.max(1e-30) + 1e-37,
                "sigmoid({x}): {} vs {s}",
                fast_sigmoid(x)
            );
        }
    }
}
