//! The learning-curve model: eval loss(s) = c + a g_b(s), a curve that falls towards an
//! asymptote c >= 0, fitted to one run's eval points, with a 95% interval for what it
//! forecasts. It exists because a run that has not reached the target within its budget may
//! still reach it later, or never: a model without an asymptote (the loss falling forever as
//! a power of the step) always promises the target eventually, however high its curve levels
//! off. Pure functions of the points: no I/O, and nothing here ranks or decides.
//!
//! Two families:
//! - power law: g_b(s) = (s + 1)^-b, the form fine-tuning curves follow;
//! - exponential: g_b(s) = exp(-b (s - s0) / S), s0 and S the first step and the span of the
//!   fitted points, kept only when the fitted points fall by a decade or more and it fits ten
//!   times better (the single-index model's curves).
//!
//! The fit minimises the squared *relative* error, sum ((fit - loss) / loss)^2: for a language
//! model's losses (a few nats, falling by tens of percent) that is nearly plain least squares,
//! and a curve falling by orders of magnitude (the single-index model's, towards 1e-6) is fitted
//! along its whole length instead of at its start alone. For a fixed b the model is linear in
//! (c, a), solved exactly under c >= 0 and a >= 0; b is found on a logarithmic grid and refined
//! by golden-section search. The fit uses the points from where the curve starts to fall (the
//! end of its search phase, `metrics`) onwards, at least [`MIN_POINTS`]. The interval comes
//! from a residual bootstrap: the fitted curve times one plus resampled relative residuals
//! (scaled by sqrt(n / (n - 3)) for the three fitted parameters), refitted [`REPLICATES`]
//! times with a fixed seed, so the same points always give the same interval; each side of the
//! percentile interval is then widened by t(0.975, n - 3) / 1.96 for the n fitted points.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::metrics;

/// Fewest eval points a curve is fitted to: three parameters and one residual.
pub const MIN_POINTS: usize = 4;

/// A forecast step beyond this multiple of the run's budget (its last eval step) counts as
/// never: the model is not trusted that far.
pub const CAP: f64 = 10.0;

/// Bootstrap replicates behind every interval.
pub const REPLICATES: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Power,
    Exponential,
    /// loss = c - a ln(s + 1): no asymptote, so never the forecast itself; an alternative
    /// that keeps the interval open to a curve still falling as fine-tuning curves often do.
    LogLinear,
}

/// A fitted curve: loss(s) = c + a g_b(s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurveFit {
    pub family: Family,
    /// The asymptote: the loss the curve levels off at.
    pub c: f64,
    pub a: f64,
    pub b: f64,
    /// First step of the fitted points (s0).
    pub from_step: f64,
    /// Span of the fitted points in steps (S; the exponential's unit of time).
    pub span: f64,
    /// Root mean square relative residual, (fit - loss) / loss, over the fitted points.
    pub rmse: f64,
}

impl CurveFit {
    /// g_b(s): 1 at the start, falling to 0.
    fn g(family: Family, b: f64, (from_step, span): (f64, f64), s: f64) -> f64 {
        match family {
            Family::Power => (s + 1.0).powf(-b),
            Family::Exponential => (-b * (s - from_step) / span).exp(),
            Family::LogLinear => -(s + 1.0).ln(),
        }
    }

    pub fn loss(&self, step: f64) -> f64 {
        self.c + self.a * Self::g(self.family, self.b, (self.from_step, self.span), step)
    }

    /// The first step at which the curve is at or below `target` (0 when it starts there);
    /// None when it levels off above it.
    pub fn steps_to(&self, target: f64) -> Option<f64> {
        if self.family != Family::LogLinear && (target < self.c || (target == self.c && self.a > 0.0)) {
            return None;
        }
        if self.a <= 0.0 {
            return Some(0.0);
        }
        let ratio = (target - self.c) / self.a; // g(s) = ratio
        let s = match self.family {
            Family::Power => ratio.powf(-1.0 / self.b) - 1.0,
            Family::Exponential => self.from_step - ratio.ln() * self.span / self.b,
            Family::LogLinear => (-ratio).exp() - 1.0,
        };
        Some(s.max(0.0)).filter(|s| s.is_finite())
    }
}

/// A fit and its bootstrap replicates: what a run's curve forecasts, with an interval.
#[derive(Debug, Clone)]
pub struct Forecast {
    pub fit: CurveFit,
    replicates: Vec<CurveFit>,
    /// The percentile half-widths are multiplied by t(0.975, n - 3) / 1.96: with few points
    /// the bootstrap's normal-like spread understates what three fitted parameters leave unknown.
    widen: f64,
    /// Other curves that fit the points nearly as well ([`PLAUSIBLE`]): the interval reaches
    /// their forecasts too, since a few points cannot tell which form the rest of the curve takes.
    alternatives: Vec<CurveFit>,
    /// The forecast's own error within the probe, per unit of ln(step + 1) it reached: the
    /// curve refitted without its last eval point misses that point by so much ([`backtest`]).
    /// The interval is at least +- this times ln((step + 1) / (last step + 1)).
    drift: f64,
    last_step: f64,
}

/// A forecast value with its 95% interval (2.5th and 97.5th percentiles over replicates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Forecast {
    /// Steps to `target`, each replicate's counted as never beyond `cap_step`; None when the
    /// fitted curve itself does not get there by `cap_step`. An upper bound beyond the cap is
    /// cut at the cap.
    pub fn steps_to(&self, target: f64, cap_step: f64) -> Option<Interval> {
        let within = |f: &CurveFit| f.steps_to(target).filter(|&s| s <= cap_step);
        let value = within(&self.fit)?;
        let mut draws: Vec<f64> = self.replicates.iter().map(|f| within(f).unwrap_or(f64::INFINITY)).collect();
        // steps are widened on a log scale: their spread is skewed, and stretching it linearly
        // would put the lower end at step 0 for any far target
        let ln = |x: f64| (x + 1.0).ln();
        let (pl, ph) = percentiles(&mut draws);
        let (lo, hi) = self.widened(ln(value), (ln(pl), ln(ph)));
        let (lo, hi) = (lo.exp() - 1.0, hi.exp() - 1.0);
        let (lo, hi) = self
            .alternatives
            .iter()
            .map(|f| within(f).unwrap_or(f64::INFINITY))
            .fold((lo, hi), |(l, h), v| (l.min(v), h.max(v)));
        // the curve shifted down (up) by the backtest's error at that step reaches the target
        // sooner (later)
        let drifted = |by: f64| {
            self.fit.steps_to(target + by * self.drift_at(value)).filter(|&s| s <= cap_step).unwrap_or(f64::INFINITY)
        };
        Some(Interval { value, lo: lo.min(drifted(1.0)).max(0.0), hi: hi.max(drifted(-1.0)).min(cap_step) })
    }

    /// How far the backtest's error grows by `step`.
    fn drift_at(&self, step: f64) -> f64 {
        self.drift * ((step + 1.0) / (self.last_step + 1.0)).ln().max(0.0)
    }

    /// The eval loss at `step`.
    pub fn loss_at(&self, step: f64) -> Interval {
        let value = self.fit.loss(step);
        let mut draws: Vec<f64> = self.replicates.iter().map(|f| f.loss(step)).collect();
        let (lo, hi) = self.widened(value, percentiles(&mut draws));
        let (lo, hi) = self.alternatives.iter().map(|f| f.loss(step)).fold((lo, hi), |(l, h), v| (l.min(v), h.max(v)));
        let drift = self.drift_at(step);
        Interval { value, lo: lo.min(value - drift), hi: hi.max(value + drift) }
    }

    /// The percentile interval around `value`, each side widened (and never excluding `value`).
    fn widened(&self, value: f64, (lo, hi): (f64, f64)) -> (f64, f64) {
        (value - (value - lo).max(0.0) * self.widen, value + (hi - value).max(0.0) * self.widen)
    }
}

/// The 2.5th and 97.5th percentiles (nearest rank) of `draws`; +inf sorts last.
fn percentiles(draws: &mut [f64]) -> (f64, f64) {
    draws.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| draws[((q * draws.len() as f64).ceil() as usize).clamp(1, draws.len()) - 1];
    if draws.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (at(0.025), at(0.975))
    }
}

/// Eval points (step 0 included) a curve needs before its forecast is trusted: the model's
/// three parameters and two residuals.
pub const TRUSTED_POINTS: usize = 5;

/// The forecast of a curve that can be trusted to extrapolate to `horizon`: at least
/// [`TRUSTED_POINTS`] eval points; past its search phase (its fitted curve has fallen by at
/// least 2% of where the fit starts and by a tenth of the whole fall it forecasts to the
/// horizon: a curve still on its plateau says nothing about when it will leave it); and bent
/// (over the second half of the steps since its search phase it fell at most [`BENT`] times
/// as fast as over the first: a curve still falling at its first pace shows nothing of where
/// it levels off).
/// Err: why not.
pub fn trusted(points: &[(f64, f64)], horizon: f64) -> std::result::Result<Forecast, &'static str> {
    if points.len() < TRUSTED_POINTS {
        return Err("too few eval points");
    }
    let (first, last) = (points[0].1, points[points.len() - 1].1);
    if first - last < 0.02 * first.abs() {
        return Err("still in its search phase");
    }
    if !bent(window(points).unwrap_or(points)) {
        return Err("its fall has not slowed yet: the probe is too short to show how the curve bends");
    }
    let f = forecast(points).ok_or("no falling curve fits")?;
    let (start, now) = (f.fit.loss(f.fit.from_step), f.fit.loss(points[points.len() - 1].0));
    let fallen = start - now;
    if fallen >= 0.02 * start.abs() && fallen >= 0.1 * (start - f.fit.loss(horizon)) {
        Ok(f)
    } else {
        Err("still in its search phase")
    }
}

/// How much slower the second half of a probe must fall than the first for its curve to count
/// as bent.
pub const BENT: f64 = 2.0 / 3.0;

/// The loss fell over the first half of the steps, and over the second half at most [`BENT`]
/// times as fast.
fn bent(points: &[(f64, f64)]) -> bool {
    let (first, last) = (points[0], points[points.len() - 1]);
    let middle = first.0 + (last.0 - first.0) / 2.0;
    let mid = points[points
        .iter()
        .map(|p| (p.0 - middle).abs())
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(i, _)| i)];
    let rate = |a: (f64, f64), b: (f64, f64)| if b.0 > a.0 { (a.1 - b.1) / (b.0 - a.0) } else { 0.0 };
    let (early, late) = (rate(first, mid), rate(mid, last));
    early > 0.0 && late <= BENT * early
}

/// Steps to the target of one run, with a 95% interval (zero-width when measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepsTo {
    pub steps: f64,
    pub lo: f64,
    pub hi: f64,
    /// Forecast by the curve model, not measured.
    pub extrapolated: bool,
}

/// Steps to `target`: measured when the curve reaches it; else forecast by the curve model
/// (flagged) when the fitted curve gets there within [`CAP`] times the
/// run's budget (its last eval step), never earlier than that step; else None.
pub fn steps_to_target(points: &[(f64, f64)], target: f64) -> Option<StepsTo> {
    if let Some(s) = metrics::steps_to(points, target) {
        return Some(StepsTo { steps: s, lo: s, hi: s, extrapolated: false });
    }
    let budget = points.last()?.0;
    let f = trusted(points, CAP * budget).ok()?.steps_to(target, CAP * budget)?;
    Some(StepsTo { steps: f.value.max(budget), lo: f.lo.max(budget), hi: f.hi.max(budget), extrapolated: true })
}

/// The fit of `points` ((step, eval loss), in step order) with its bootstrap; None with fewer
/// than [`MIN_POINTS`] points or when no decreasing curve fits.
pub fn forecast(points: &[(f64, f64)]) -> Option<Forecast> {
    let window = window(points)?;
    let n = window.len();
    let decades = window[0].1 >= DECADE * window[n - 1].1;
    let (power, expo) =
        (parsimonious(window, Family::Power), parsimonious(window, Family::Exponential).filter(|_| decades));
    let fit = match (power, expo) {
        (Some(p), Some(e)) if e.rmse.powi(2) * EXPONENTIAL_EDGE < p.rmse.powi(2) => e,
        (Some(p), _) => p,
        (None, e) => e?,
    };
    let widen = super::stats::t975(n.saturating_sub(3).max(1)) / 1.96;
    let candidates = [power, expo, fit_family(window, Family::LogLinear, true)];
    let alternatives = candidates
        .into_iter()
        .flatten()
        .filter(|f| *f != fit && f.rmse.powi(2) <= PLAUSIBLE * fit.rmse.powi(2))
        .collect();
    let last_step = window[window.len() - 1].0;
    Some(Forecast {
        fit,
        replicates: bootstrap(window, &fit),
        widen,
        alternatives,
        drift: backtest(window, &fit),
        last_step,
    })
}

/// The forecast's error within the probe, per unit of ln(step + 1): the curve refitted (same
/// model) without its last one or two points misses the last point by so much, divided by
/// how far that forecast reached; the larger of the two. 0 with too few points to leave any
/// out.
fn backtest(window: &[(f64, f64)], fit: &CurveFit) -> f64 {
    let n = window.len();
    let (to, truth) = window[n - 1];
    (1..=2)
        .filter(|&k| n >= MIN_POINTS + k)
        .filter_map(|k| {
            let early = fit_family(&window[..n - k], fit.family, fit.c > 0.0)?;
            let reach = ((to + 1.0) / (window[n - k - 1].0 + 1.0)).ln();
            (reach > 0.0).then(|| (early.loss(to) - truth).abs() / reach)
        })
        .fold(0.0, f64::max)
}

/// An alternative curve whose squared error is within this factor of the chosen one's fits
/// the points about as well (within a factor 2 in RMS).
const PLAUSIBLE: f64 = 4.0;

/// A family's fit with its asymptote at 0 unless a free asymptote fits significantly better
/// (an F-test of the nested models at 95%: the extra parameter must earn its place). A free
/// asymptote a few noisy points happen to favour would level the curve off at a loss it never
/// approached.
fn parsimonious(points: &[(f64, f64)], family: Family) -> Option<CurveFit> {
    let (free, zero) = (fit_family(points, family, true), fit_family(points, family, false));
    let (Some(f), Some(z)) = (free, zero) else { return free.or(zero) };
    let dof = points.len().saturating_sub(3).max(1);
    let (sse_free, sse_zero) = (f.rmse.powi(2), z.rmse.powi(2));
    let f_stat = if sse_free > 0.0 { (sse_zero - sse_free) / (sse_free / dof as f64) } else { f64::INFINITY };
    Some(if f_stat > super::stats::t975(dof).powi(2) { f } else { z })
}

/// How much better (in squared error) the exponential must fit than the power law to be kept:
/// fine-tuning curves follow power laws, and an exponential that fits a few noisy points
/// slightly better levels off too soon; the single-index model's curves, falling by decades,
/// are exponential by orders of magnitude.
const EXPONENTIAL_EDGE: f64 = 10.0;

/// The exponential is a candidate (chosen or alternative) only for a fitted window whose loss
/// falls by at least this factor: a curve falling towards zero by decades, as the single-index
/// model's do. A language model's fine-tuning curve falls by tens of percent, first fast (the
/// adapter finds the task) and then slowly; over a probe an exponential fits its fast part
/// better than a power law does and then levels off far too soon: on the committed long runs
/// (tests/fixtures/expected/long_runs) it orders the snapshots wrongly at three epochs where
/// the power law orders them rightly.
const DECADE: f64 = 10.0;

/// The points from where the loss first falls at [`STEEP`] of its fastest pace relative to
/// itself, at or after the end of the search phase (the eval point at or before it), or the
/// last [`MIN_POINTS`] when that leaves fewer.
const STEEP: f64 = 0.8;

fn window(points: &[(f64, f64)]) -> Option<&[(f64, f64)]> {
    if points.len() < MIN_POINTS {
        return None;
    }
    let search_end = metrics::search_phase_steps(points).unwrap_or(0.0);
    let after_search = points.iter().rposition(|p| p.0 <= search_end).unwrap_or(0);
    // where the loss falls fastest relative to itself: the start for a learning curve (its
    // fall slows from the first update), past the inflection for one that escapes a plateau
    let rate = |i: usize| {
        (points[i].1.max(1e-300) / points[i + 1].1.max(1e-300)).ln() / (points[i + 1].0 - points[i].0).max(1e-300)
    };
    let fastest = (after_search..points.len() - 1).map(rate).fold(f64::NEG_INFINITY, f64::max);
    let steep = (after_search..points.len() - 1).find(|&i| rate(i) >= STEEP * fastest).unwrap_or(after_search);
    Some(&points[steep.min(points.len() - MIN_POINTS)..])
}

/// Residual bootstrap replicates of `fit` on `points`, refitted as the same model (family, and
/// asymptote free or at 0).
fn bootstrap(points: &[(f64, f64)], fit: &CurveFit) -> Vec<CurveFit> {
    let n = points.len();
    let inflate = (n as f64 / (n - 3).max(1) as f64).sqrt();
    let residuals: Vec<f64> = points.iter().map(|&(s, l)| inflate * (l / fit.loss(s) - 1.0)).collect();
    let mut rng = crate::rng::stream(0, crate::rng::Stream::Bootstrap, 0);
    let mut sample = points.to_vec();
    (0..REPLICATES)
        .filter_map(|_| {
            for (p, &(s, _)) in sample.iter_mut().zip(points) {
                *p = (s, fit.loss(s) * (1.0 + residuals[rng.random_range(0..n)]));
            }
            fit_family(&sample, fit.family, fit.c > 0.0)
        })
        .collect()
}

/// The least-squares fit of one family (with a free asymptote c >= 0, or c = 0: the pure power
/// law of scaling laws): b on a log grid, then golden-section refinement.
fn fit_family(points: &[(f64, f64)], family: Family, free_c: bool) -> Option<CurveFit> {
    let (from_step, last) = (points.first()?.0, points.last()?.0);
    let span = (last - from_step).max(1.0);
    let (lo, hi) = match family {
        Family::Power => (1e-3f64, 10.0f64),
        Family::Exponential => (1e-2f64, 100.0f64),
        Family::LogLinear => (1.0, 1.0), // no b
    };
    let sse = |log_b: f64| linear_fit(points, family, log_b.exp(), (from_step, span), free_c).2;
    const GRID: usize = 48;
    let grid: Vec<f64> = (0..GRID).map(|i| lo.ln() + (hi.ln() - lo.ln()) * i as f64 / (GRID - 1) as f64).collect();
    let best = (0..GRID).min_by(|&i, &j| sse(grid[i]).total_cmp(&sse(grid[j])))?;
    let log_b = golden_min(&sse, grid[best.saturating_sub(1)], grid[(best + 1).min(GRID - 1)]);
    let b = log_b.exp();
    let (c, a, err) = linear_fit(points, family, b, (from_step, span), free_c);
    (err.is_finite()).then(|| CurveFit { family, c, a, b, from_step, span, rmse: (err / points.len() as f64).sqrt() })
}

/// The minimum of `f` on [lo, hi] by golden-section search (f unimodal there).
fn golden_min(f: &dyn Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    let r = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let (x1, x2) = (hi - r * (hi - lo), lo + r * (hi - lo));
        if f(x1) <= f(x2) {
            hi = x2
        } else {
            lo = x1
        }
    }
    (lo + hi) / 2.0
}

/// For a fixed b: (c, a, squared relative error) of the weighted least-squares line
/// loss = c + a g (weights 1 / loss^2), with c >= 0 and a >= 0 (a curve that does not rise).
fn linear_fit(points: &[(f64, f64)], family: Family, b: f64, at: (f64, f64), free_c: bool) -> (f64, f64, f64) {
    let g: Vec<f64> = points.iter().map(|p| CurveFit::g(family, b, at, p.0)).collect();
    let y: Vec<f64> = points.iter().map(|p| p.1).collect();
    let w: Vec<f64> = y.iter().map(|v| 1.0 / v.abs().max(1e-300).powi(2)).collect();
    let sum = |f: &dyn Fn(usize) -> f64| (0..y.len()).map(f).sum::<f64>();
    let total = sum(&|i| w[i]);
    let (mg, my) = (sum(&|i| w[i] * g[i]) / total, sum(&|i| w[i] * y[i]) / total);
    let sgg = sum(&|i| w[i] * (g[i] - mg).powi(2));
    let sgy = sum(&|i| w[i] * (g[i] - mg) * (y[i] - my));
    let (mut c, mut a) = if sgg > 0.0 { (my - sgy / sgg * mg, sgy / sgg) } else { (my, 0.0) };
    if a < 0.0 {
        (c, a) = (my, 0.0); // flat: the best non-rising curve
    }
    if c < 0.0 || !free_c {
        let (gy, gg) = (sum(&|i| w[i] * g[i] * y[i]), sum(&|i| w[i] * g[i] * g[i]));
        (c, a) = (0.0, if gg > 0.0 { (gy / gg).max(0.0) } else { 0.0 });
    }
    (c, a, sum(&|i| w[i] * (c + a * g[i] - y[i]).powi(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(f: impl Fn(f64) -> f64, steps: impl Iterator<Item = usize>) -> Vec<(f64, f64)> {
        steps.map(|s| (s as f64, f(s as f64))).collect()
    }

    #[test]
    fn recovers_a_power_law_with_an_asymptote() {
        let points = curve(|s| 2.0 + 3.0 * (s + 1.0).powf(-0.7), (0..=60).step_by(10));
        let f = forecast(&points).unwrap();
        assert_eq!(f.fit.family, Family::Power);
        assert!(
            (f.fit.c - 2.0).abs() < 1e-4 && (f.fit.a - 3.0).abs() < 1e-4 && (f.fit.b - 0.7).abs() < 1e-4,
            "{:?}",
            f.fit
        );
        let exact = (3.0f64 / 0.1).powf(1.0 / 0.7) - 1.0; // 2.1 = 2 + 3 (s+1)^-0.7
        let s = f.steps_to(2.1, 1e9).unwrap();
        assert!((s.value - exact).abs() < 1e-2 * exact && s.lo <= s.value && s.value <= s.hi, "{s:?} vs {exact}");
    }

    #[test]
    fn recovers_an_exponential_with_an_asymptote() {
        // falling by more than a decade (2.01 to 0.11), as the single-index model's curves do
        let points = curve(|s| 0.01 + 2.0 * (-0.05 * s).exp(), (0..=60).step_by(5));
        let f = forecast(&points).unwrap();
        assert_eq!(f.fit.family, Family::Exponential);
        assert!((f.fit.c - 0.01).abs() < 1e-6, "{:?}", f.fit);
        assert!((f.loss_at(200.0).value - (0.01 + 2.0 * (-10.0f64).exp())).abs() < 1e-6);
        // the same shape falling by tens of percent, as a fine-tuning curve does, is fitted with
        // the power law: an exponential fitted to a probe levels off too soon
        let shallow = curve(|s| 1.0 + 2.0 * (-0.05 * s).exp(), (0..=60).step_by(5));
        assert_eq!(forecast(&shallow).unwrap().fit.family, Family::Power);
    }

    /// Curves that level off above the target never reach it, however long they run; one
    /// that would reach it only far beyond the budget does not either.
    #[test]
    fn a_curve_that_plateaus_above_the_target_never_reaches_it() {
        let plateau = curve(|s| 2.0 + 1.0 * (s + 1.0).powf(-0.5), (0..=60).step_by(10));
        let f = forecast(&plateau).unwrap();
        assert!(f.fit.c > 1.9, "{:?}", f.fit);
        assert_eq!(f.steps_to(1.5, CAP * 60.0), None);
        let flat_exp = curve(|s| 0.05 + 1.0 * (-0.1 * s).exp(), (0..=60).step_by(10));
        assert_eq!(forecast(&flat_exp).unwrap().steps_to(0.045, CAP * 60.0), None);
        // 1.6 + (s+1)^-0.5 reaches 1.65 at s = 399: within ten budgets of 60, but not 1.61 (s = 9999)
        let slow = curve(|s| 1.6 + (s + 1.0).powf(-0.5), (0..=60).step_by(10));
        let f = forecast(&slow).unwrap();
        assert!((f.steps_to(1.65, CAP * 60.0).unwrap().value - 399.0).abs() < 2.0);
        assert_eq!(f.steps_to(1.61, CAP * 60.0), None);
    }

    /// A loss falling by orders of magnitude (the single-index model's, towards 1e-6) is fitted
    /// in relative error, so its tail sets the forecast as much as its start.
    #[test]
    fn a_curve_falling_by_decades_forecasts_a_tiny_target() {
        let points = curve(|s| 0.1 * (-0.01 * s).exp(), (0..=400).step_by(20));
        let exact = (0.1f64 / 1e-6).ln() / 0.01; // 1151.3
        let s = forecast(&points).unwrap().steps_to(1e-6, 4000.0).unwrap();
        assert!((s.value - exact).abs() < 1e-3 * exact, "{s:?} vs {exact}");
    }

    #[test]
    fn noisy_points_give_an_interval_around_the_truth() {
        let noise = [0.03, -0.02, 0.025, -0.03, 0.01, -0.015, 0.02, -0.01, 0.0, 0.015, -0.02, 0.01, -0.005];
        let points: Vec<(f64, f64)> =
            (0..13).map(|i| (i as f64 * 5.0, 2.0 + 3.0 * (i as f64 * 5.0 + 1.0).powf(-0.6) + noise[i])).collect();
        let f = forecast(&points).unwrap();
        let at = f.loss_at(600.0);
        let truth = 2.0 + 3.0 * 601f64.powf(-0.6);
        assert!(at.lo < at.value && at.value < at.hi, "{at:?}");
        assert!(at.lo <= truth && truth <= at.hi, "{at:?} vs {truth}");
        assert_eq!(forecast(&points).unwrap().loss_at(600.0), at, "a fixed seed: the same interval");
    }

    #[test]
    fn too_few_points_or_a_rising_curve_give_no_forecast() {
        assert!(forecast(&[(0.0, 3.0), (10.0, 2.0), (20.0, 1.5)]).is_none());
        let rising = curve(|s| 1.0 + 0.01 * s, (0..=60).step_by(10));
        let f = forecast(&rising).unwrap();
        assert!(f.fit.loss(600.0) > 0.99 * f.fit.loss(0.0), "the best non-rising curve is (nearly) flat: {:?}", f.fit);
        assert_eq!(f.steps_to(0.5, 600.0), None);
    }

    #[test]
    fn a_missed_target_is_forecast_with_an_interval() {
        let expo: Vec<(f64, f64)> =
            (0..=10).map(|i| (i as f64 * 10.0, 2.0 * (-0.03 * i as f64 * 10.0).exp())).collect();
        let s = steps_to_target(&expo, 0.02).unwrap();
        assert!(s.extrapolated);
        assert!((s.steps - 100f64.ln() / 0.03).abs() < 1e-2, "{s:?}");
        assert!(s.lo <= s.steps && s.steps <= s.hi);
        let measured = steps_to_target(&expo, 1.0).unwrap();
        assert_eq!((measured.extrapolated, measured.lo, measured.hi), (false, measured.steps, measured.steps));
    }

    #[test]
    fn a_flat_rising_or_levelling_tail_is_not_extrapolated() {
        let flat = [(0.0, 3.0), (10.0, 2.0), (20.0, 2.1), (30.0, 2.2), (40.0, 2.3)];
        assert_eq!(steps_to_target(&flat, 1.0), None);
        assert!(!steps_to_target(&flat, 2.5).unwrap().extrapolated);
        // a curve that levels off at 2.0 never reaches 1.9; the old tail fit without an
        // asymptote (a power law in the step) would have promised it
        let levelling: Vec<(f64, f64)> =
            (0..=6).map(|i| (i as f64 * 10.0, 2.0 + (i as f64 * 10.0 + 1.0).powf(-0.5))).collect();
        assert_eq!(steps_to_target(&levelling, 1.9), None);
    }
}
