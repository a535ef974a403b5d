//! Means and 95% confidence intervals over seeds (Student's t), and the overlap test that
//! decides ties.

/// A metric over seeds: mean and two-sided 95% confidence interval of the mean.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// Two-sided 97.5% quantiles of Student's t for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
    2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// t(0.975, dof): 1.96 beyond the table.
pub fn t975(dof: usize) -> f64 {
    dof.checked_sub(1).and_then(|i| T975.get(i)).copied().unwrap_or(1.96)
}

/// A least-squares slope with its 95% confidence interval (Student's t, n - 2 degrees of
/// freedom; none with two points).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slope {
    pub slope: f64,
    /// None with fewer than three points.
    pub ci95: Option<(f64, f64)>,
    pub n: usize,
}

impl Slope {
    /// y = c + slope x through `points`; None with fewer than two or when x does not vary.
    pub fn fit(points: &[(f64, f64)]) -> Option<Slope> {
        let n = points.len();
        let nf = n as f64;
        let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / nf, points.iter().map(|p| p.1).sum::<f64>() / nf);
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if n < 2 || sxx <= 0.0 {
            return None;
        }
        let slope = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
        let sse: f64 = points.iter().map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2)).sum();
        let ci95 = (n > 2).then(|| {
            let half = t975(n - 2) * (sse / (nf - 2.0) / sxx).sqrt();
            (slope - half, slope + half)
        });
        Some(Slope { slope, ci95, n })
    }

    /// The interval lies wholly above (1) or below (-1) zero; 0 when it holds zero or is unknown.
    pub fn sign(&self) -> i8 {
        match self.ci95 {
            Some((lo, _)) if lo > 0.0 => 1,
            Some((_, hi)) if hi < 0.0 => -1,
            _ => 0,
        }
    }
}

impl Estimate {
    /// mean +- t(0.975, n-1) * sd / sqrt(n); a single value has a zero-width interval.
    pub fn of(xs: &[f64]) -> Option<Estimate> {
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Some(Estimate { mean, lo: mean, hi: mean, n });
        }
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let t = t975(n - 1);
        let half = t * (var / n as f64).sqrt();
        Some(Estimate { mean, lo: mean - half, hi: mean + half, n })
    }

    /// The mean over seeds of values that carry intervals of their own (a forecast's
    /// (value, lo, hi)): the spread over seeds (Student's t) and the values' own half-widths
    /// (root of the sum of squares over n) join in quadrature, each side apart. A value of
    /// +inf (never) makes the mean and its upper bound +inf; the lower bound is then the
    /// seeds' lower bounds' own, +inf once one of them is.
    pub fn of_intervals(xs: &[(f64, f64, f64)]) -> Option<Estimate> {
        let seeds = Estimate::of(&xs.iter().map(|x| x.0).collect::<Vec<_>>())?;
        if !seeds.mean.is_finite() {
            let lo = Estimate::of(&xs.iter().map(|x| x.1).collect::<Vec<_>>())?;
            let lo = if lo.mean.is_finite() { lo.lo } else { f64::INFINITY };
            return Some(Estimate { mean: f64::INFINITY, lo, hi: f64::INFINITY, n: seeds.n });
        }
        let n = xs.len() as f64;
        let own = |side: &dyn Fn(&(f64, f64, f64)) -> f64| xs.iter().map(|x| side(x).powi(2)).sum::<f64>().sqrt() / n;
        let (own_lo, own_hi) = (own(&|x| x.0 - x.1), own(&|x| x.2 - x.0));
        Some(Estimate {
            lo: seeds.mean - (seeds.mean - seeds.lo).hypot(own_lo),
            hi: seeds.mean + (seeds.hi - seeds.mean).hypot(own_hi),
            ..seeds
        })
    }

    /// The interval cut at `min` (a mean of non-negative values has a non-negative bound).
    pub fn at_least(self, min: f64) -> Estimate {
        Estimate { lo: self.lo.max(min), ..self }
    }

    /// Every bound multiplied by `k` (> 0): steps to hours.
    pub fn scaled(self, k: f64) -> Estimate {
        Estimate { mean: self.mean * k, lo: self.lo * k, hi: self.hi * k, n: self.n }
    }

    /// It has an interval of some width (several seeds, or a forecast's own uncertainty).
    pub fn has_interval(&self) -> bool {
        self.lo < self.hi
    }

    /// Whether the two intervals share a point (then neither is significantly better).
    pub fn overlaps(&self, other: &Estimate) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_interval_uses_students_t() {
        let e = Estimate::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(e.mean, 2.0);
        // sd = 1, n = 3: half width = 4.303 / sqrt(3)
        assert!((e.hi - 2.0 - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(Estimate::of(&[5.0]).unwrap().lo, 5.0);
        assert!(Estimate::of(&[]).is_none());
    }

    #[test]
    fn intervals_of_their_own_widen_the_mean() {
        // two seeds at 10 and 12 (t half-width 12.706 * 1 / 1 = 12.706), each +-3 of its own:
        // own half-width sqrt(9 + 9) / 2 = 2.121
        let e = Estimate::of_intervals(&[(10.0, 7.0, 13.0), (12.0, 9.0, 15.0)]).unwrap();
        let half = 12.706f64.hypot(18f64.sqrt() / 2.0);
        assert!(
            (e.mean - 11.0).abs() < 1e-12 && (e.hi - 11.0 - half).abs() < 1e-9 && (11.0 - e.lo - half).abs() < 1e-9,
            "{e:?}"
        );
        // measured values (zero-width) give the plain t-interval
        assert_eq!(
            Estimate::of_intervals(&[(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (3.0, 3.0, 3.0)]),
            Estimate::of(&[1.0, 2.0, 3.0])
        );
        let never = Estimate::of_intervals(&[(10.0, 8.0, 12.0), (f64::INFINITY, 20.0, f64::INFINITY)]).unwrap();
        assert!(never.mean.is_infinite() && never.hi.is_infinite() && never.lo.is_finite());
    }

    #[test]
    fn a_slope_is_significant_only_when_its_interval_excludes_zero() {
        // y = 2x + noise: se = sqrt(SSE / (n - 2) / Sxx)
        let pts = [(0.0, 0.1), (1.0, 1.9), (2.0, 4.2), (3.0, 5.8)];
        let s = Slope::fit(&pts).unwrap();
        let (lo, hi) = s.ci95.unwrap();
        let sse: f64 = pts.iter().map(|p| (p.1 - (0.09 + 1.94 * p.0)).powi(2)).sum();
        let half = 4.303 * (sse / 2.0 / 5.0).sqrt();
        assert!((s.slope - 1.94).abs() < 1e-12 && (hi - lo - 2.0 * half).abs() < 1e-9, "{s:?}");
        assert_eq!(s.sign(), 1);
        let flat = Slope::fit(&[(0.0, 1.0), (1.0, 1.2), (2.0, 0.9), (3.0, 1.1)]).unwrap();
        assert_eq!(flat.sign(), 0, "{flat:?}");
        let two = Slope::fit(&[(0.0, 1.0), (1.0, 3.0)]).unwrap();
        assert_eq!((two.slope, two.ci95, two.sign()), (2.0, None, 0));
        assert!(Slope::fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }

    #[test]
    fn overlap_decides_ties() {
        let a = Estimate { mean: 1.0, lo: 0.5, hi: 1.5, n: 3 };
        let b = Estimate { mean: 2.0, lo: 1.4, hi: 2.6, n: 3 };
        let c = Estimate { mean: 3.0, lo: 2.7, hi: 3.3, n: 3 };
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
