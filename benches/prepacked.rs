//! Whether packing a frozen weight once would make the block's matrix products faster.
//!
//! The `gemm` crate copies the weight into its packed panel layout on every call (its lhs, read
//! transposed from the (out, in) checkpoint layout), and `perf` counts that copy as about a tenth
//! of a step's samples (`benches/profile_step.sh ARCH 70m-body`). A frozen weight could be packed
//! once per checkpoint instead, at the cost of a second copy of every block weight in memory. This
//! program measures what that would buy: `x @ W^T` through `gemm::gemm` (by `plasticity::matmul`,
//! as the engine calls it) against the same product through the crate's own AVX2 micro-kernel over
//! a weight packed beforehand (16-row panels, 256-deep blocks; the activations packed per call, as
//! the crate does), and `dy @ W` (the backward's dL/dx) through `gemm::gemm` for reference; a
//! product deeper than 512 is also timed as a sum of 512-deep ones. One thread, medians of 15 calls
//! after 3, three rounds. Reports figures; asserts nothing but that both products agree.
//!
//!     cargo bench --bench prepacked -- [TOKENS IN OUT]...   (default: the shapes below)

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::time::Instant;

use plasticity::matmul::{matmul, Dst, Mat};

/// Rows of a packed panel and columns of a micro-tile of the AVX2 f32 kernel `x2x6`.
const MR: usize = 16;
const NR: usize = 6;
/// Depth of a packed block.
const KC: usize = 256;
/// Depth of the parts of a deeper product summed by `crate_forward_split`.
const SPLIT: usize = 512;

/// Default shapes (tokens of a shard, in, out): the 70m-body MLP and fused qkv, the 160m MLP and
/// the Pythia-160M output head for a chunk of 128 rows.
const SHAPES: [[usize; 3]; 4] = [[256, 512, 2048], [256, 512, 1536], [256, 768, 3072], [128, 768, 50304]];

/// A weight (out, in) in panels of MR rows, per block of KC columns; each panel column-major.
struct Packed {
    data: Vec<f32>,
    out: usize,
    inner: usize,
    panels: usize,
}

impl Packed {
    fn new(w: &[f32], out: usize, inner: usize) -> Self {
        let panels = out.div_ceil(MR);
        let mut data = vec![0f32; panels * MR * inner]; // rows past `out` stay zero
        for o in 0..out {
            for i in 0..inner {
                let (kb, kk) = (i / KC, i % KC);
                let kc = KC.min(inner - kb * KC);
                data[kb * KC * panels * MR + (o / MR) * kc * MR + kk * MR + o % MR] = w[o * inner + i];
            }
        }
        Packed { data, out, inner, panels }
    }
}

/// y (tokens, out) = x (tokens, in) @ W^T over the packed weight.
#[cfg(target_arch = "x86_64")]
fn prepacked_forward(y: &mut [f32], x: &[f32], w: &Packed, tokens: usize, rhs: &mut Vec<f32>) {
    use gemm_f32::microkernel::fma::f32 as kernel;
    let tiles = tokens.div_ceil(NR);
    for kb in 0..w.inner.div_ceil(KC) {
        let (k0, kc) = (kb * KC, KC.min(w.inner - kb * KC));
        // x's block, packed: per tile of NR tokens, kc rows of NR contiguous values
        rhs.clear();
        rhs.resize(tiles * NR * kc, 0.0);
        for t in 0..tokens {
            for kk in 0..kc {
                rhs[(t / NR) * NR * kc + kk * NR + t % NR] = x[t * w.inner + k0 + kk];
            }
        }
        let (alpha, status) = if kb == 0 { (0.0, 0) } else { (1.0, 1) }; // overwrite, then accumulate
        for p in 0..w.panels {
            let m = MR.min(w.out - p * MR);
            let lhs = w.data[kb * KC * w.panels * MR + p * kc * MR..].as_ptr();
            for j in 0..tiles {
                let n = NR.min(tokens - j * NR);
                let tile = kernel::UKR[m.div_ceil(8) - 1][n - 1];
                // SAFETY: the packed panel holds kc x MR values (zero-padded rows), the packed
                // tile kc x NR, and y's tile (m x n at row stride out) lies inside y.
                unsafe {
                    tile(
                        m,
                        n,
                        kc,
                        y.as_mut_ptr().add(j * NR * w.out + p * MR),
                        lhs,
                        rhs[j * NR * kc..].as_ptr(),
                        w.out as isize,
                        1,
                        MR as isize,
                        NR as isize,
                        1,
                        alpha,
                        1.0,
                        status,
                        false,
                        false,
                        false,
                        lhs,
                    );
                }
            }
        }
    }
}

/// y (tokens, out) = x (tokens, in) @ W^T through `gemm::gemm` (the engine's own call), W
/// read in its (out, in) layout.
fn crate_forward(y: &mut [f32], x: &[f32], w: &[f32], (tokens, inner, out): (usize, usize, usize)) {
    let (x, w) = (Mat::rows(x, tokens, inner), Mat::rows(w, out, inner).t());
    matmul(y, x, w, 1.0, Dst::Overwrite, 1).expect("x @ W^T");
}

/// [`crate_forward`] as a sum of products `depth` deep (in a multiple of it): another blocking
/// of a deep product, through the same calls.
fn crate_forward_split(y: &mut [f32], x: &[f32], w: &[f32], (tokens, inner, out): (usize, usize, usize), depth: usize) {
    for c in (0..inner).step_by(depth) {
        let x = Mat { data: &x[c..], rows: tokens, cols: depth, rs: inner, cs: 1 };
        let w = Mat { data: &w[c..], rows: out, cols: depth, rs: inner, cs: 1 }.t();
        let dst_is = if c == 0 { Dst::Overwrite } else { Dst::Accumulate };
        matmul(y, x, w, 1.0, dst_is, 1).expect("x @ W^T in parts");
    }
}

/// dx (tokens, in) = dy (tokens, out) @ W through `gemm::gemm`.
fn crate_backward(dx: &mut [f32], dy: &[f32], w: &[f32], (tokens, inner, out): (usize, usize, usize)) {
    let (dy, w) = (Mat::rows(dy, tokens, out), Mat::rows(w, out, inner));
    matmul(dx, dy, w, 1.0, Dst::Overwrite, 1).expect("dy @ W");
}

/// GFLOP/s of `f`: the median of 15 calls after 3.
fn rate(flops: f64, mut f: impl FnMut()) -> f64 {
    (0..3).for_each(|_| f());
    let mut secs: Vec<f64> = (0..15)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    flops / secs[secs.len() / 2] / 1e9
}

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / 16_777_216.0 - 0.5
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn measure([tokens, inner, out]: [usize; 3]) {
    let (x, w, dy) = (values(tokens * inner, 1), values(out * inner, 2), values(tokens * out, 3));
    let packed = Packed::new(&w, out, inner);
    let (mut y1, mut y2, mut dx, mut rhs) =
        (vec![0f32; tokens * out], vec![0f32; tokens * out], vec![0f32; tokens * inner], Vec::new());
    crate_forward(&mut y1, &x, &w, (tokens, inner, out));
    prepacked_forward(&mut y2, &x, &packed, tokens, &mut rhs);
    let diff = y1.iter().zip(&y2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-3, "the prepacked product differs from gemm's by {diff}");
    let flops = 2.0 * (tokens * inner * out) as f64;
    println!("{tokens} x {inner} x {out} (GFLOP/s, one thread; max |difference| {diff:.1e})");
    for round in 1..=3 {
        let a = rate(flops, || crate_forward(&mut y1, &x, &w, (tokens, inner, out)));
        let b = rate(flops, || prepacked_forward(&mut y2, &x, &packed, tokens, &mut rhs));
        let c = rate(flops, || crate_backward(&mut dx, &dy, &w, (tokens, inner, out)));
        let parts = if inner % SPLIT == 0 && inner > SPLIT {
            format!("{:6.1}", rate(flops, || crate_forward_split(&mut y1, &x, &w, (tokens, inner, out), SPLIT)))
        } else {
            "     -".to_string()
        };
        println!("  round {round}: gemm x W^T {a:6.1}   prepacked x W^T {b:6.1}   gemm dy W {c:6.1}   gemm x W^T in {SPLIT}-deep parts {parts}");
    }
}

fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let shapes: Vec<[usize; 3]> = if numbers.len() >= 3 {
        numbers.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
    } else {
        SHAPES.to_vec()
    };
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2") {
        shapes.into_iter().for_each(measure);
        return;
    }
    println!("prepacked: needs an x86-64 CPU with AVX2 and FMA; {} shapes not measured", shapes.len());
}
