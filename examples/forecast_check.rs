//! How well the curve model forecasts a long fine-tune from a short probe. Given the JSON
//! report of a long scan (`plasticity scan DIR --task T --steps LONG --budget LONG --json
//! long.json`), every run's eval curve is cut at PROBE updates, forecast to its last step, and
//! compared with what the long run measured there: the error, whether the 95% interval covered
//! it, and over the checkpoints the Spearman correlation of the forecast order with the
//! measured one and whether the winner (lowest final loss) is the same. The tests assert what
//! the committed references show; this prints the figures for any series.
//!
//!     cargo run --release --example forecast_check -- long.json 60

use plasticity::report::Report;
use plasticity::score::curve_fit;
use plasticity::score::metrics::eval_points;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(probe)) = (args.get(1), args.get(2).and_then(|p| p.parse::<f64>().ok())) else {
        return Err("usage: forecast_check LONG_REPORT.json PROBE_UPDATES".into());
    };
    let report = Report::read(std::path::Path::new(path))?;
    println!("{:<18} {:>9} {:>22} {:>9} {:>8}", "checkpoint", "measured", "forecast [95%]", "error", "covered");
    let (mut forecast, mut measured, mut covered, mut runs) = (Vec::new(), Vec::new(), 0, 0);
    for c in report.checkpoints.iter().filter(|c| c.status == plasticity::report::Status::Ok) {
        let curves: Vec<&Vec<plasticity::curve::CurvePoint>> =
            if c.runs.is_empty() { vec![&c.curve] } else { c.runs.iter().map(|r| &r.curve).collect() };
        let (mut f_sum, mut m_sum) = (0.0, 0.0);
        for curve in &curves {
            let points = eval_points(curve);
            let &(end, truth) = points.last().ok_or("an empty curve")?;
            let cut: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 <= probe).collect();
            let at = match curve_fit::trusted(&cut, end) {
                Ok(f) => f.loss_at(end),
                Err(why) => {
                    println!("{:<18} {truth:>9.4} no forecast: {why}", c.name);
                    continue;
                }
            };
            let inside = at.lo <= truth && truth <= at.hi;
            println!(
                "{:<18} {truth:>9.4} {:>8.4} [{:.3}, {:.3}] {:>+9.4} {:>8}",
                c.name,
                at.value,
                at.lo,
                at.hi,
                at.value - truth,
                if inside { "yes" } else { "no" }
            );
            (f_sum, m_sum, covered, runs) = (f_sum + at.value, m_sum + truth, covered + inside as usize, runs + 1);
        }
        forecast.push((c.name.clone(), f_sum / curves.len() as f64));
        measured.push((c.name.clone(), m_sum / curves.len() as f64));
    }
    let order = |v: &[(String, f64)]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].1.total_cmp(&v[b].1));
        let mut rank = vec![0.0; v.len()];
        idx.iter().enumerate().for_each(|(r, &i)| rank[i] = r as f64);
        rank
    };
    let (rf, rm) = (order(&forecast), order(&measured));
    let n = rf.len() as f64;
    let d2: f64 = rf.iter().zip(&rm).map(|(a, b)| (a - b).powi(2)).sum();
    let spearman = 1.0 - 6.0 * d2 / (n * (n * n - 1.0));
    let winner =
        |r: &[f64], v: &[(String, f64)]| r.iter().position(|&x| x == 0.0).map(|i| v[i].0.clone()).unwrap_or_default();
    println!("\nintervals covering the measured loss: {covered} of {runs}");
    println!("Spearman (forecast order vs measured order): {spearman:.2}");
    println!("winner: forecast {}, measured {}", winner(&rf, &forecast), winner(&rm, &measured));
    Ok(())
}
