//! How long the fused activation ops take per element: each of the engine's MLP activations
//! (SiLU, exact GELU, tanh GELU) forward and backward over a (tokens, intermediate) block, as
//! one node (`plasticity::model::fused::activation`) on the threads `RAYON_NUM_THREADS`
//! allows. The forward pass evaluates the activation once per element, the backward its
//! derivative, so the figures are mostly the cost of that arithmetic: the exact GELU's normal CDF
//! (`math::fast_phi_pdf`), the exponentials of SiLU and the tanh GELU. Median of 30 passes
//! after 3; reports figures, asserts nothing.
//!
//!     cargo bench --bench activations -- [TOKENS INTERMEDIATE]   (default: 512 2048)

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use plasticity::model::fused::{activation, Act};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (rows, cols) = match args[..] {
        [r, c] => (r, c),
        _ => (512, 2048),
    };
    let values: Vec<f32> = (0..rows * cols).map(|i| ((i % 1000) as f32 - 500.0) / 150.0).collect();
    let x = Var::from_tensor(&Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)?;
    println!("{rows} x {cols} values, {} threads: ns per element, forward and backward", rayon::current_num_threads());
    for (name, act) in [("silu", Act::Silu), ("gelu (erf)", Act::GeluErf), ("gelu (tanh)", Act::GeluTanh)] {
        let (forward, backward) = time(&x, act)?;
        let per = |s: f64| s * 1e9 / (rows * cols) as f64;
        println!("{name:12} forward {:6.3}  backward {:6.3}", per(forward), per(backward));
    }
    Ok(())
}

/// Median seconds of the forward pass and of the backward pass (candle's `backward` from the
/// output: it fills a gradient of ones, then runs the node's backward, dy * f'(x)).
fn time(x: &Var, act: Act) -> Res<(f64, f64)> {
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for i in 0..33 {
        let t = Instant::now();
        let y = activation(x.as_tensor(), act)?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = y.backward()?;
        let b = t.elapsed().as_secs_f64();
        drop(grads);
        if i >= 3 {
            forward.push(f);
            backward.push(b);
        }
    }
    Ok((median(forward), median(backward)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
