//! The plot (`--plot FILE.svg|FILE.png`): every snapshot's eval-loss curve against steps and
//! against device-hours, the target line, and the ranking in the legend. Colours run from
//! light (least pre-trained) to dark (most pre-trained), so a reader sees at a glance whether
//! more pre-training means slower adaptation. When the scan ranks for a budget beyond the probe,
//! each curve continues dashed to the budget: the forecast, never drawn as a measurement. With
//! a rank or learning-rate sweep, one panel per variant (eval loss against steps). The font is
//! embedded: no system fonts needed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::{register_font, FontStyle};

use super::{CheckpointReport, Report, SweepInfo, SweepVariant};
use crate::error::{Error, Result};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1400, 560);

/// Draws the report to `path`; the extension chooses SVG or PNG.
pub fn render(report: &Report, path: &Path) -> Result<()> {
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let fail = |e: String| Error::input(path, format!("cannot draw plot: {e}"));
    let sweep = report.sweep.as_ref().filter(|s| s.variants.len() > 1);
    let size = sweep.map_or(SIZE, |s| (SIZE.0, 460 * grid_shape(s.variants.len()).0 as u32 + 60));
    let drawn = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => with_area(SVGBackend::new(path, size).into_drawing_area(), report, sweep),
        Some("png") => with_area(BitMapBackend::new(path, size).into_drawing_area(), report, sweep),
        _ => return Err(Error::input(path, "plot file must end in .svg or .png")),
    };
    drawn.map_err(fail)
}

fn with_area<B: DrawingBackend>(
    root: DrawingArea<B, Shift>,
    report: &Report,
    sweep: Option<&SweepInfo>,
) -> std::result::Result<(), String> {
    match sweep {
        Some(s) => draw_sweep(root, report, s),
        None => draw(root, report),
    }
}

/// (rows, columns) of the sweep's panels: near square, at most three across.
fn grid_shape(n: usize) -> (usize, usize) {
    let cols = ((n as f64).sqrt().ceil() as usize).clamp(1, 3);
    (n.div_ceil(cols), cols)
}

/// One panel per (rank, lr) variant: every snapshot's eval loss against steps.
fn draw_sweep<B: DrawingBackend>(
    root: DrawingArea<B, Shift>,
    report: &Report,
    sweep: &SweepInfo,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<B::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "plasticity sweep: eval loss per snapshot at each LoRA rank and learning rate (target {})",
        super::table::loss(sweep.target_loss)
    );
    let root = root.titled(&title, ("sans-serif", 24)).map_err(err)?;
    let panels = root.split_evenly(grid_shape(sweep.variants.len()));
    for (area, v) in panels.iter().zip(&sweep.variants) {
        let caption = format!("r={}, lr={:e}: best {}", v.rank, v.lr, v.ranking.first().map_or("-", |s| s.as_str()));
        let area = area.titled(&caption, ("sans-serif", 18)).map_err(err)?;
        panel(&area, sweep.target_loss, &variant_series(report, v), Series::steps, "optimizer steps").map_err(err)?;
    }
    root.present().map_err(err)
}

fn variant_series(report: &Report, v: &SweepVariant) -> Vec<Series> {
    let n = v.checkpoints.len().max(2) as f64;
    v.checkpoints
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.eval_curve.is_empty())
        .map(|(i, p)| {
            let step = report.checkpoints.iter().find(|c| c.name == p.name).map_or(0, |c| c.step);
            Series {
                label: format!("{} {} (step {step})", p.rank.map_or("-".into(), |r| format!("#{r}")), p.name),
                color: ViridisRGB::get_color(0.85 - 0.8 * i as f64 / (n - 1.0)),
                by_step: p.eval_curve.iter().map(|q| (q[0], q[1])).collect(),
                by_hours: Vec::new(),
                forecast_by_step: Vec::new(),
                forecast_by_hours: Vec::new(),
            }
        })
        .collect()
}

/// One curve: legend label, colour, and (x, loss) points for each panel, measured and forecast.
struct Series {
    label: String,
    color: RGBColor,
    by_step: Vec<(f64, f64)>,
    by_hours: Vec<(f64, f64)>,
    forecast_by_step: Vec<(f64, f64)>,
    forecast_by_hours: Vec<(f64, f64)>,
}

/// (x, loss) points.
type Points = [(f64, f64)];

/// Which of a series' point sets a panel draws: (measured, forecast).
type Pick = fn(&Series) -> (&Points, &Points);

impl Series {
    fn steps(&self) -> (&Points, &Points) {
        (&self.by_step, &self.forecast_by_step)
    }

    fn hours(&self) -> (&Points, &Points) {
        (&self.by_hours, &self.forecast_by_hours)
    }
}

fn series(report: &Report) -> Vec<Series> {
    let ok: Vec<&CheckpointReport> = report.checkpoints.iter().filter(|c| c.measured()).collect();
    let n = ok.len().max(2) as f64;
    ok.iter()
        .enumerate()
        .map(|(i, c)| {
            let step_h = c.step_cost_s.or(c.median_step_s).unwrap_or(0.0) / 3600.0; // as the ranking prices a step
                                                                                    // measured: the probe, and where --until-settled continued it
            let points: Vec<(f64, f64)> =
                c.curve.iter().chain(&c.settle_curve).filter_map(|p| Some((p.step as f64, p.eval_loss?))).collect();
            // the rank the report leads with: for the budget when forecast
            let (rank, tied) = c.forecast.as_ref().map_or((c.rank, c.tied_with_best), |f| (f.rank, f.tied_with_best));
            let rank = rank.map_or("-".into(), |r| format!("#{r}{}", if tied { "=" } else { "" }));
            let plateau = if c.after_plateau_onset == Some(true) { ", after pre-training plateau" } else { "" };
            let shade = 0.85 - 0.8 * i as f64 / (n - 1.0);
            let forecast: Vec<(f64, f64)> =
                c.forecast.as_ref().map_or(Vec::new(), |f| f.curve.iter().map(|p| (p[0], p[1])).collect());
            let hours = |pts: &[(f64, f64)]| pts.iter().map(|&(s, l)| (s * step_h, l)).collect();
            Series {
                label: format!("{rank} {} (step {}{plateau})", c.name, c.step),
                color: ViridisRGB::get_color(shade),
                by_hours: hours(&points),
                by_step: points,
                forecast_by_hours: hours(&forecast),
                forecast_by_step: forecast,
            }
        })
        .collect()
}

fn draw<B: DrawingBackend>(root: DrawingArea<B, Shift>, report: &Report) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<B::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let best = report.ranking.first().map_or("-", |s| s.as_str());
    let title = match report.budget.as_ref().filter(|b| b.forecast) {
        Some(b) => format!("plasticity: LoRA fine-tuning of each snapshot, dashed: forecast to {} updates (best for that budget: {best})", b.steps),
        None => format!("plasticity: LoRA fine-tuning of each snapshot (best: {best})"),
    };
    let root = root.titled(&title, ("sans-serif", 24)).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    let all = series(report);
    let hours = format!("{} (steps x the median step time of the shape)", report.hours_unit);
    // the target the ranking uses: at the budget when forecast
    let at_budget = report.budget.as_ref().filter(|b| b.forecast).and_then(|b| b.target.as_ref());
    let target = at_budget.or(report.target.as_ref()).filter(|t| t.kind != super::TargetKind::Drop).map(|t| t.value);
    panel(&panels[0], target, &all, Series::steps, "optimizer steps").map_err(err)?;
    panel(&panels[1], target, &all, Series::hours, &hours).map_err(err)?;
    root.present().map_err(err)
}

/// Loss ranges over more than two decades are drawn on a log axis.
fn loss_range(all: &[Series], target: Option<f64>) -> (f64, f64, bool) {
    let losses = all
        .iter()
        .flat_map(|s| s.by_step.iter().chain(&s.forecast_by_step).map(|p| p.1))
        .chain(target)
        .filter(|l| l.is_finite());
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| (a.min(l), b.max(l)));
    if !lo.is_finite() {
        return (0.0, 1.0, false);
    }
    if lo > 0.0 && hi / lo > 100.0 {
        return (lo / 2.0, hi * 2.0, true);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad, false)
}

fn panel<B: DrawingBackend>(
    area: &DrawingArea<B, Shift>,
    target: Option<f64>,
    all: &[Series],
    points: Pick,
    x_label: &str,
) -> std::result::Result<(), DrawingAreaErrorKind<B::ErrorType>> {
    let xs = || all.iter().flat_map(|s| points(s).0.iter().chain(points(s).1).map(|p| p.0));
    let x_max = xs().fold(0.0, f64::max).max(1e-12);
    let x_min = xs().filter(|&x| x > 0.0).fold(f64::INFINITY, f64::min);
    // Runs that stop after very different numbers of steps are read on a log axis from step 1.
    let log_x = x_min.is_finite() && x_max / x_min > 1000.0;
    let (lo, hi, log_y) = loss_range(all, target);
    let mut builder = ChartBuilder::on(area);
    builder.margin(16).x_label_area_size(48).y_label_area_size(72);
    let y_desc = if log_y { "eval loss (log scale)" } else { "eval loss" };
    let x_desc = if log_x { format!("{x_label}, log scale") } else { x_label.to_string() };
    let fmt_x = |x: &f64| match *x {
        0.0 => "0".to_string(),
        x if (1e-2..1e5).contains(&x) && x.fract() == 0.0 => format!("{x:.0}"),
        x => format!("{x:.1e}"),
    };
    let fmt_y = |y: &f64| if log_y { format!("{y:.0e}") } else { format!("{y:.3}") };
    macro_rules! chart {
        ($x:expr, $y:expr) => {{
            let mut chart = builder.build_cartesian_2d($x, $y)?;
            chart
                .configure_mesh()
                .x_desc(&x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&fmt_y)
                .label_style(("sans-serif", 15))
                .draw()?;
            curves(&mut chart, all, points, target, (if log_x { x_min } else { 0.0 }, x_max))?;
            legend(&mut chart, if log_y { SeriesLabelPosition::LowerLeft } else { SeriesLabelPosition::UpperRight })
        }};
    }
    match (log_x, log_y) {
        (true, true) => chart!((x_min..x_max * 1.2).log_scale(), (lo..hi).log_scale()),
        (true, false) => chart!((x_min..x_max * 1.2).log_scale(), lo..hi),
        (false, true) => chart!(0.0..x_max * 1.02, (lo..hi).log_scale()),
        (false, false) => chart!(0.0..x_max * 1.02, lo..hi),
    }
}

fn curves<'a, DB: DrawingBackend + 'a, X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    all: &[Series],
    points: Pick,
    target: Option<f64>,
    (x_min, x_max): (f64, f64),
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    if let Some(t) = target {
        // Dashes evenly spaced on screen, whether the axis is linear or logarithmic.
        let at = |f: f64| if x_min > 0.0 { x_min * (x_max / x_min).powf(f) } else { f * x_max };
        let dashes = (0..40).map(|i| (at(i as f64 / 40.0), at((i as f64 + 0.5) / 40.0)));
        chart
            .draw_series(dashes.map(|(a, b)| PathElement::new(vec![(a, t), (b, t)], BLACK.stroke_width(2))))?
            .label(format!("target {}", super::table::loss(Some(t))))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    for s in all {
        let style = s.color.stroke_width(3);
        let (measured, forecast) = points(s);
        let visible = measured.iter().copied().filter(|p| p.0 >= x_min);
        chart
            .draw_series(LineSeries::new(visible, style))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        let dashed = forecast.iter().copied().filter(|p| p.0 >= x_min);
        chart.draw_series(DashedLineSeries::new(dashed, 8, 6, s.color.stroke_width(2)))?;
    }
    Ok(())
}

/// The legend where curves are least likely: lower left on log-log plots (every curve starts
/// high), upper right otherwise.
fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::CurvePoint;

    /// The hours axis prices a step as the ranking does (the shape's shared step time), not at
    /// each checkpoint's own median.
    #[test]
    fn the_hours_axis_prices_steps_as_the_ranking_does() {
        let c = CheckpointReport {
            name: "a".into(),
            status: crate::report::Status::Ok,
            curve: vec![
                CurvePoint { step: 0, train_loss: None, eval_loss: Some(3.0), elapsed_s: 0.0 },
                CurvePoint { step: 3600, train_loss: None, eval_loss: Some(2.0), elapsed_s: 1.0 },
            ],
            median_step_s: Some(2.0),
            step_cost_s: Some(1.0),
            ..Default::default()
        };
        let mut report = crate::report::blank_report();
        report.checkpoints = vec![c];
        assert_eq!(series(&report)[0].by_hours, vec![(0.0, 3.0), (1.0, 2.0)]);
        assert!(series(&report)[0].forecast_by_step.is_empty(), "nothing forecast: nothing dashed");
        report.checkpoints[0].forecast = Some(crate::report::ForecastReport {
            curve: vec![[3600.0, 2.0], [7200.0, 1.5]],
            rank: Some(1),
            ..Default::default()
        });
        let s = &series(&report)[0];
        assert_eq!(
            (s.forecast_by_step.clone(), s.forecast_by_hours.clone()),
            (vec![(3600.0, 2.0), (7200.0, 1.5)], vec![(1.0, 2.0), (2.0, 1.5)])
        );
        assert!(s.label.starts_with("#1 a"), "{}", s.label);
    }
}
