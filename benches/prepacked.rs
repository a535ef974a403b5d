//! Whether packing a frozen weight once would make the block's matrix products faster.
//!
//! The `gemm` crate copies the weight into its packed panel layout on every call (its lhs, read
//! transposed from the (out, in) checkpoint layout), and `perf` counts that copy as about a tenth
//! of a step's samples (`benches/profile_step.sh ARCH 70m-body`). A frozen weight could be packed
//! once per checkpoint instead, at the cost of a second copy of every block weight in memory. This
//! program measures what that would buy, on the micro-kernels of the family the engine runs
//! (`src/isa.rs`: AVX-512, 64-row panels, or AVX2, 16-row panels; six columns per tile):
//! - `x @ W^T` through `gemm::gemm` (by `plasticity::matmul`, as the engine calls it) against the
//!   same product over a weight packed beforehand, in blocks 256 and 512 deep (the activations
//!   packed per call, as the crate does), and as a sum of 512-deep products where it is deeper;
//! - `dy @ W` (the backward's dL/dx) through `gemm::gemm` against the micro-kernel reading W
//!   where it lies, unpacked (its rows are the kernel's panels of consecutive inputs).
//!
//! One thread, medians of 15 calls after 3, three rounds. Reports figures; asserts nothing but
//! that the products agree.
//!
//!     cargo bench --bench prepacked -- [TOKENS IN OUT]...   (default: the shapes below)

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::time::Instant;

use plasticity::matmul::{matmul, Dst, Mat};

/// Columns of a micro-tile of the crate's f32 kernels (AVX2 `x2x6`, AVX-512 `x4x6`).
const NR: usize = 6;
/// Depth of the parts of a deeper product summed by `crate_forward_split`.
const SPLIT: usize = 512;

/// Default shapes (tokens of a shard, in, out): the 70m-body MLP and fused qkv, the 160m MLP and
/// the Pythia-160M output head for a chunk of 128 rows.
const SHAPES: [[usize; 3]; 4] = [[256, 512, 2048], [256, 512, 1536], [256, 768, 3072], [128, 768, 50304]];

/// One of the crate's f32 micro-kernel families: panels of `mr`
/// rows, and the kernel for an m x n tile (m <= mr, n <= NR).
#[derive(Clone, Copy)]
struct Kernel {
    name: &'static str,
    mr: usize,
    tile: fn(usize, usize) -> gemm_common::microkernel::MicroKernelFn<f32>,
}

#[cfg(target_arch = "x86_64")]
const AVX2: Kernel =
    Kernel { name: "avx2", mr: 16, tile: |m, n| gemm_f32::microkernel::fma::f32::UKR[m.div_ceil(8) - 1][n - 1] };

#[cfg(target_arch = "x86_64")]
const AVX512: Kernel =
    Kernel { name: "avx512", mr: 64, tile: |m, n| gemm_f32::microkernel::avx512f::f32::UKR[m.div_ceil(16) - 1][n - 1] };

/// A weight (out, in) in panels of `mr` rows, per block of `kc` columns; each panel
/// column-major.
struct Packed {
    data: Vec<f32>,
    out: usize,
    inner: usize,
    panels: usize,
    mr: usize,
    kc: usize,
}

impl Packed {
    fn new(w: &[f32], (out, inner): (usize, usize), mr: usize, kc: usize) -> Self {
        let panels = out.div_ceil(mr);
        let mut data = vec![0f32; panels * mr * inner]; // rows past `out` stay zero
        for o in 0..out {
            for i in 0..inner {
                let (kb, kk) = (i / kc, i % kc);
                let depth = kc.min(inner - kb * kc);
                data[kb * kc * panels * mr + (o / mr) * depth * mr + kk * mr + o % mr] = w[o * inner + i];
            }
        }
        Packed { data, out, inner, panels, mr, kc }
    }
}

/// A block of activations (rows `stride` apart, columns `k0..k0 + depth`) in the kernel's
/// layout: per tile of NR rows, `depth` rows of NR contiguous values.
fn pack_tiles(rhs: &mut Vec<f32>, src: &[f32], (tokens, stride): (usize, usize), (k0, depth): (usize, usize)) {
    rhs.clear();
    rhs.resize(tokens.div_ceil(NR) * NR * depth, 0.0);
    for t in 0..tokens {
        for kk in 0..depth {
            rhs[(t / NR) * NR * depth + kk * NR + t % NR] = src[t * stride + k0 + kk];
        }
    }
}

impl Kernel {
    /// dst's m x n tile (columns `dst_cs` apart) = or, after the first block, += the panel
    /// (m rows, columns `lhs_cs` apart) times the packed tile, both `depth` deep.
    ///
    /// # Safety
    /// The panel, the tile and dst's tile must hold what the kernel reads and writes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_product(
        self,
        (m, n, depth): (usize, usize, usize),
        dst: *mut f32,
        dst_cs: usize,
        lhs: (*const f32, usize),
        rhs: *const f32,
        first: bool,
    ) {
        let (alpha, status) = if first { (0.0, 0) } else { (1.0, 1) };
        (self.tile)(m, n)(
            m,
            n,
            depth,
            dst,
            lhs.0,
            rhs,
            dst_cs as isize,
            1,
            lhs.1 as isize,
            NR as isize,
            1,
            alpha,
            1.0,
            status,
            false,
            false,
            false,
            lhs.0,
        );
    }
}

/// y (tokens, out) = x (tokens, in) @ W^T over the packed weight.
#[cfg(target_arch = "x86_64")]
fn prepacked_forward(y: &mut [f32], x: &[f32], w: &Packed, kernel: Kernel, tokens: usize, rhs: &mut Vec<f32>) {
    let mr = w.mr;
    for kb in 0..w.inner.div_ceil(w.kc) {
        let (k0, kc) = (kb * w.kc, w.kc.min(w.inner - kb * w.kc));
        pack_tiles(rhs, x, (tokens, w.inner), (k0, kc));
        for p in 0..w.panels {
            let m = mr.min(w.out - p * mr);
            let lhs = w.data[kb * w.kc * w.panels * mr + p * kc * mr..].as_ptr();
            for j in 0..tokens.div_ceil(NR) {
                let n = NR.min(tokens - j * NR);
                // SAFETY: the packed panel holds kc x mr values (zero-padded rows), the packed
                // tile kc x NR, and y's tile (m x n at row stride out) lies inside y.
                unsafe {
                    let dst = y.as_mut_ptr().add(j * NR * w.out + p * mr);
                    kernel.tile_product((m, n, kc), dst, w.out, (lhs, mr), rhs[j * NR * kc..].as_ptr(), kb == 0);
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

/// dx (tokens, in) = dy (tokens, out) @ W through the micro-kernel, W read where it lies: the
/// kernel's panels are `mr` consecutive inputs of one weight row, rows `in` apart, so only dy
/// is packed.
#[cfg(target_arch = "x86_64")]
fn direct_backward(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    kernel: Kernel,
    dims: (usize, usize, usize),
    kc: usize,
    rhs: &mut Vec<f32>,
) {
    let ((tokens, inner, out), mr) = (dims, kernel.mr);
    for kb in 0..out.div_ceil(kc) {
        let (o0, depth) = (kb * kc, kc.min(out - kb * kc));
        pack_tiles(rhs, dy, (tokens, out), (o0, depth));
        for p in 0..inner.div_ceil(mr) {
            let m = mr.min(inner - p * mr);
            let lhs = w[o0 * inner + p * mr..].as_ptr();
            for j in 0..tokens.div_ceil(NR) {
                let n = NR.min(tokens - j * NR);
                // SAFETY: the kernel reads m values at lhs + c * inner for c < depth, inside w;
                // the packed tile holds depth x NR; dx's tile (m x n, row stride inner) lies in dx.
                unsafe {
                    let dst = dx.as_mut_ptr().add(j * NR * inner + p * mr);
                    kernel.tile_product(
                        (m, n, depth),
                        dst,
                        inner,
                        (lhs, inner),
                        rhs[j * NR * depth..].as_ptr(),
                        kb == 0,
                    );
                }
            }
        }
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
}

#[cfg(target_arch = "x86_64")]
fn measure([tokens, inner, out]: [usize; 3], kernel: Kernel) {
    let dims = (tokens, inner, out);
    let (x, w, dy) = (values(tokens * inner, 1), values(out * inner, 2), values(tokens * out, 3));
    let packed: Vec<Packed> = [256, 512].map(|kc| Packed::new(&w, (out, inner), kernel.mr, kc)).into();
    let (mut y1, mut y2, mut dx1, mut dx2, mut rhs) = (
        vec![0f32; tokens * out],
        vec![0f32; tokens * out],
        vec![0f32; tokens * inner],
        vec![0f32; tokens * inner],
        Vec::new(),
    );
    crate_forward(&mut y1, &x, &w, dims);
    crate_backward(&mut dx1, &dy, &w, dims);
    let mut diff = 0f32;
    for p in &packed {
        prepacked_forward(&mut y2, &x, p, kernel, tokens, &mut rhs);
        direct_backward(&mut dx2, &dy, &w, kernel, dims, p.kc, &mut rhs);
        diff = diff.max(max_difference(&y1, &y2)).max(max_difference(&dx1, &dx2));
    }
    assert!(diff < 1e-3, "a product over the micro-kernel differs from gemm's by {diff}");
    let flops = 2.0 * (tokens * inner * out) as f64;
    println!("{tokens} x {inner} x {out} ({} kernels, GFLOP/s, one thread; max |difference| {diff:.1e})", kernel.name);
    for round in 1..=3 {
        let a = rate(flops, || crate_forward(&mut y1, &x, &w, dims));
        let [b, b2] =
            [0, 1].map(|i| rate(flops, || prepacked_forward(&mut y2, &x, &packed[i], kernel, tokens, &mut rhs)));
        let c = rate(flops, || crate_backward(&mut dx1, &dy, &w, dims));
        let [d, d2] =
            [256, 512].map(|kc| rate(flops, || direct_backward(&mut dx2, &dy, &w, kernel, dims, kc, &mut rhs)));
        let parts = if inner % SPLIT == 0 && inner > SPLIT {
            format!("{:6.1}", rate(flops, || crate_forward_split(&mut y1, &x, &w, dims, SPLIT)))
        } else {
            "     -".to_string()
        };
        println!("  round {round}: x W^T: gemm {a:6.1}  prepacked kc 256 {b:6.1}  kc 512 {b2:6.1}  in {SPLIT}-deep parts {parts}");
        println!("           dy W:  gemm {c:6.1}  unpacked W kc 256 {d:6.1}  kc 512 {d2:6.1}");
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
    {
        use plasticity::isa::Kernels;
        let kernel = match plasticity::isa::kernels() {
            Kernels::Avx512 => Some(AVX512),
            Kernels::Avx2 => Some(AVX2),
            Kernels::Crate => None,
        };
        if let Some(kernel) = kernel {
            shapes.into_iter().for_each(|s| measure(s, kernel));
            return;
        }
    }
    println!("prepacked: needs an x86-64 CPU with AVX2 and FMA; {} shapes not measured", shapes.len());
}
