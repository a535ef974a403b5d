//! The single-index theory of arXiv 2602.02855 ("When pre-training hurts LoRA fine-tuning"): link
//! functions, Gauss-Hermite expectations over z ~ N(0, 1), the coefficients A(mu) and B(mu) of
//! the linearised adapter dynamics around the saddle (u, m) = (0, 0), the escape time tau(mu),
//! and the predicted escape step. Pure numerics: no tensors, no I/O.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// The activation sigma of teacher and student.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Link {
    Linear,
    Relu,
    Erf,
    Sigmoid,
    /// The probabilists' Hermite polynomial He_k (information exponent k).
    Hermite(u32),
}

impl Link {
    pub fn value(self, z: f64) -> f64 {
        match self {
            Link::Linear => z,
            Link::Relu => z.max(0.0),
            Link::Erf => erf(z),
            Link::Sigmoid => 1.0 / (1.0 + (-z).exp()),
            Link::Hermite(k) => hermite(k, z),
        }
    }

    /// sigma'(z); ReLU's derivative at 0 is 0, as in PyTorch.
    pub fn d1(self, z: f64) -> f64 {
        match self {
            Link::Linear => 1.0,
            Link::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Link::Erf => 2.0 / PI.sqrt() * (-z * z).exp(),
            Link::Sigmoid => {
                let s = Link::Sigmoid.value(z);
                s * (1.0 - s)
            }
            Link::Hermite(k) => {
                if k == 0 {
                    0.0
                } else {
                    k as f64 * hermite(k - 1, z)
                }
            }
        }
    }

    /// sigma''(z) (zero almost everywhere for linear and ReLU).
    pub fn d2(self, z: f64) -> f64 {
        match self {
            Link::Linear | Link::Relu => 0.0,
            Link::Erf => -2.0 * z * Link::Erf.d1(z),
            Link::Sigmoid => {
                let s = Link::Sigmoid.value(z);
                s * (1.0 - s) * (1.0 - 2.0 * s)
            }
            Link::Hermite(k) => {
                if k < 2 {
                    0.0
                } else {
                    (k * (k - 1)) as f64 * hermite(k - 2, z)
                }
            }
        }
    }

    /// The factor the learning rate is divided by: k! * k for He_k (else SGD blows up), 1 otherwise.
    pub fn lr_divisor(self) -> f64 {
        match self {
            Link::Hermite(k) => (1..=k).map(f64::from).product::<f64>() * k as f64,
            _ => 1.0,
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Linear => write!(f, "linear"),
            Link::Relu => write!(f, "relu"),
            Link::Erf => write!(f, "erf"),
            Link::Sigmoid => write!(f, "sigmoid"),
            Link::Hermite(k) => write!(f, "he{k}"),
        }
    }
}

impl FromStr for Link {
    type Err = String;

    /// `linear`, `relu`, `erf`, `sigmoid`, `heK` or `hermite-K` (K >= 1).
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let hermite = lower.strip_prefix("hermite-").or_else(|| lower.strip_prefix("he"));
        match (lower.as_str(), hermite.map(str::parse::<u32>)) {
            ("linear", _) => Ok(Link::Linear),
            ("relu", _) => Ok(Link::Relu),
            ("erf", _) => Ok(Link::Erf),
            ("sigmoid", _) => Ok(Link::Sigmoid),
            (_, Some(Ok(k))) if (1..=8).contains(&k) => Ok(Link::Hermite(k)),
            _ => Err(format!("unknown link {s:?} (linear, relu, erf, sigmoid, he1..he8)")),
        }
    }
}

impl From<Link> for String {
    fn from(l: Link) -> String {
        l.to_string()
    }
}

impl TryFrom<String> for Link {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// He_k(z) by the recurrence He_{n+1} = z He_n - n He_{n-1}.
pub fn hermite(k: u32, z: f64) -> f64 {
    let (mut prev, mut cur) = (1.0, z);
    if k == 0 {
        return prev;
    }
    for n in 1..k {
        (prev, cur) = (cur, z * cur - n as f64 * prev);
    }
    cur
}

/// erf(z) to about 1e-15 (series for small |z|, continued fraction for large).
pub fn erf(z: f64) -> f64 {
    if z.abs() < 2.5 {
        // erf z = 2/sqrt(pi) * sum_n (-1)^n z^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, z2) = (z, z, z * z);
        for n in 1..200 {
            term *= -z2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        2.0 / PI.sqrt() * sum
    } else {
        z.signum() * (1.0 - erfc_cf(z.abs()))
    }
}

/// erfc(x) for x >= 2.5 by Lentz's continued fraction.
fn erfc_cf(x: f64) -> f64 {
    // erfc x = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...)))))
    let mut f = x;
    for n in (1..60).rev() {
        f = x + (n as f64 / 2.0) / f;
    }
    (-x * x).exp() / PI.sqrt() / f
}

/// Nodes and weights of `n`-point Gauss-Hermite quadrature for E[f(z)], z ~ N(0, 1):
/// E f ~ sum_i w_i f(z_i), with sum_i w_i = 1. Newton iteration on orthonormal Hermite
/// functions (Numerical Recipes' `gauher`), then rescaled from weight e^{-x^2}.
pub fn gauss_hermite(n: usize) -> Vec<(f64, f64)> {
    let mut x = vec![0.0f64; n];
    let mut w = vec![0.0f64; n];
    let pim4 = PI.powf(-0.25);
    let nf = n as f64;
    let mut z: f64 = 0.0;
    for i in 0..n.div_ceil(2) {
        z = match i {
            0 => (2.0 * nf + 1.0).sqrt() - 1.85575 * (2.0 * nf + 1.0).powf(-0.16667),
            1 => z - 1.14 * nf.powf(0.426) / z,
            2 => 1.86 * z - 0.86 * x[0],
            3 => 1.91 * z - 0.91 * x[1],
            _ => 2.0 * z - x[i - 2],
        };
        let mut pp = 0.0;
        for _ in 0..100 {
            let (mut p1, mut p2) = (pim4, 0.0);
            for j in 1..=n {
                let p3 = p2;
                p2 = p1;
                p1 = z * (2.0 / j as f64).sqrt() * p2 - ((j - 1) as f64 / j as f64).sqrt() * p3;
            }
            pp = (2.0 * nf).sqrt() * p2;
            let z1 = z;
            z = z1 - p1 / pp;
            if (z - z1).abs() <= 1e-15 * z.abs().max(1.0) {
                break;
            }
        }
        x[i] = z;
        x[n - 1 - i] = -z;
        w[i] = 2.0 / (pp * pp);
        w[n - 1 - i] = w[i];
    }
    x.iter().zip(&w).map(|(&x, &w)| (x * 2f64.sqrt(), w / PI.sqrt())).collect()
}

/// Quadrature points used for A, B and the population loss (even: ReLU's kink at 0 is then
/// integrated exactly by symmetry).
pub const QUADRATURE_POINTS: usize = 96;

/// E[f(z)] for z ~ N(0, 1).
pub fn expect(f: impl Fn(f64) -> f64) -> f64 {
    thread_local! {
        static RULE: Vec<(f64, f64)> = gauss_hermite(QUADRATURE_POINTS);
    }
    RULE.with(|rule| rule.iter().map(|&(z, w)| w * f(z)).sum())
}

/// A(mu) = E[(sigma(z) - sigma(mu z)) sigma'(mu z) z]: the coupling between u and m.
pub fn coef_a(link: Link, mu: f64) -> f64 {
    expect(|z| (link.value(z) - link.value(mu * z)) * link.d1(mu * z) * z) / link.lr_divisor()
}

/// B(mu) = E[(sigma(z) - sigma(mu z)) sigma''(mu z) - sigma'(mu z)^2]: the self-term of u.
pub fn coef_b(link: Link, mu: f64) -> f64 {
    expect(|z| (link.value(z) - link.value(mu * z)) * link.d2(mu * z) - link.d1(mu * z).powi(2)) / link.lr_divisor()
}

/// The unstable eigenvalue lambda+ = (B + sqrt(B^2 + 4 A^2)) / 2 of [[B, A], [A, 0]].
pub fn lambda_plus(link: Link, mu: f64) -> f64 {
    let (a, b) = (coef_a(link, mu), coef_b(link, mu));
    (b + (b * b + 4.0 * a * a).sqrt()) / 2.0
}

/// The escape time tau(mu) = 1 / lambda+ in units of lr x steps (infinite when A = 0).
/// For He_k the coefficients carry the same 1/(k! k) as the learning rate, so tau is
/// measured in units of the *nominal* learning rate.
pub fn tau(link: Link, mu: f64) -> f64 {
    let l = lambda_plus(link, mu);
    if l > 0.0 {
        1.0 / l
    } else {
        f64::INFINITY
    }
}

/// Predicted SGD steps until |m| >= m_thr from |m0|:
/// tau [ln(m_thr / |m0|) + ln(1 + lambda+^2 / A^2)] / lr.
pub fn predicted_escape_step(link: Link, mu: f64, m0: f64, m_thr: f64, lr: f64) -> f64 {
    let (a, l) = (coef_a(link, mu), lambda_plus(link, mu));
    if a == 0.0 || l <= 0.0 {
        return f64::INFINITY;
    }
    (1.0 / l) * ((m_thr / m0.abs()).ln() + (1.0 + l * l / (a * a)).ln()) / lr
}

/// Pre-training strength after `steps` of population gradient descent from w = 0 with step
/// `lr`: w stays along w*, and its component mu follows mu <- mu + lr A(mu) (for a linear link
/// exactly mu = 1 - (1 - lr)^steps).
pub fn strength_after(link: Link, steps: u64, lr: f64) -> f64 {
    let mut mu = 0.0;
    for _ in 0..steps {
        mu += lr * coef_a(link, mu) * link.lr_divisor();
    }
    mu
}

/// Closed forms for the linear link: A = 1 - mu, B = -1.
pub fn tau_linear(mu: f64) -> f64 {
    let a2 = (1.0 - mu).powi(2);
    (1.0 + (1.0 + 4.0 * a2).sqrt()) / (2.0 * a2)
}

/// ReLU: A = (1 - mu)/2, B = -1/2, so tau_relu = 2 tau_linear.
pub fn tau_relu(mu: f64) -> f64 {
    2.0 * tau_linear(mu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadrature_integrates_gaussian_moments() {
        assert!((expect(|_| 1.0) - 1.0).abs() < 1e-13);
        assert!((expect(|z| z * z) - 1.0).abs() < 1e-12);
        assert!((expect(|z| z.powi(4)) - 3.0).abs() < 1e-11);
        assert!((expect(|z| z.powi(6)) - 15.0).abs() < 1e-10);
    }

    #[test]
    fn erf_matches_known_values() {
        for (z, want) in
            [(0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527), (3.0, 0.9999779095030014)]
        {
            assert!((erf(z) - want).abs() < 1e-14, "erf({z})");
            assert!((erf(-z) + want).abs() < 1e-14);
        }
    }

    #[test]
    fn hermite_polynomials() {
        assert_eq!(hermite(3, 2.0), 8.0 - 6.0);
        assert_eq!(hermite(4, 1.0), 1.0 - 6.0 + 3.0);
        // Orthogonality under N(0, 1): E[He_j He_k] = k! delta_jk.
        assert!((expect(|z| hermite(3, z) * hermite(3, z)) - 6.0).abs() < 1e-10);
        assert!(expect(|z| hermite(3, z) * hermite(2, z)).abs() < 1e-10);
    }

    #[test]
    fn quadrature_tau_equals_the_closed_forms() {
        for mu in [0.1, 0.5, 0.9, 0.95, 0.99] {
            let (lin, relu) = (tau(Link::Linear, mu), tau(Link::Relu, mu));
            assert!((lin - tau_linear(mu)).abs() / tau_linear(mu) < 1e-6, "linear mu={mu}: {lin}");
            assert!((relu - tau_relu(mu)).abs() / tau_relu(mu) < 1e-6, "relu mu={mu}: {relu}");
        }
    }

    #[test]
    fn search_phase_diverges_like_one_minus_mu_squared() {
        let mu: f64 = 0.95;
        let scaled = |link| tau(link, mu) * (1.0 - mu).powi(2);
        assert!((scaled(Link::Linear) - 1.0).abs() < 0.05, "{}", scaled(Link::Linear));
        assert!((scaled(Link::Relu) - 2.0).abs() < 0.1, "{}", scaled(Link::Relu));
    }

    #[test]
    fn linear_pretraining_strength_has_a_closed_form() {
        for p in [1u64, 3, 10, 30] {
            assert!((strength_after(Link::Linear, p, 0.1) - (1.0 - 0.9f64.powi(p as i32))).abs() < 1e-12);
        }
    }

    #[test]
    fn he3_has_no_signal_without_pretraining_and_a_zero_near_a_third() {
        assert!(coef_a(Link::Hermite(3), 0.0).abs() < 1e-12);
        let (lo, hi) = (coef_a(Link::Hermite(3), 0.30), coef_a(Link::Hermite(3), 0.34));
        assert!(lo * hi < 0.0, "A changes sign between 0.30 and 0.34: {lo} {hi}");
    }

    #[test]
    fn links_parse_and_print() {
        for s in ["linear", "relu", "erf", "sigmoid", "he3"] {
            assert_eq!(s.parse::<Link>().unwrap().to_string(), s);
        }
        assert_eq!("hermite-4".parse::<Link>().unwrap(), Link::Hermite(4));
        assert!("tanh".parse::<Link>().is_err());
    }
}
