//! A bounds-checked f32 matrix product over strided slices, for the CPU custom ops of the
//! engine: a call into the `gemm` crate's unsafe entry point through [`matmul`] or [`product`]
//! checks each operand's extent against its slice first, and [`product`] writes a new matrix
//! without zero-filling it; [`with_mat`] lends a CPU tensor's elements as such a view. This
//! module must not know models or adapters.

/// A read-only matrix inside a slice: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows` x `cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Whether every element's index lies inside the slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// A 2-D f32 tensor on the CPU as a view of its storage, with its strides, lent to `f`.
pub fn with_mat<T>(t: &candle_core::Tensor, f: impl FnOnce(Mat) -> candle_core::Result<T>) -> candle_core::Result<T> {
    let (rows, cols) = t.dims2()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("matmul: a {rows} x {cols} operand is not on the CPU")
    };
    let data = &cpu.as_slice::<f32>()?[layout.start_offset()..];
    f(Mat { data, rows, cols, rs: layout.stride()[0], cs: layout.stride()[1] })
}

/// How the product meets what the destination holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    /// dst = scale * lhs @ rhs; dst's old contents are never read.
    Overwrite,
    /// dst += scale * lhs @ rhs.
    Accumulate,
}

/// The threads a product may split over: the share [`with_threads`] set on this thread (a
/// batch's shards set theirs, `train::shard`), else 1 on a rayon worker, which runs one of
/// several parallel tasks whose siblings keep the other workers busy (a product split there
/// would hand its halves to threads that are busy, or take theirs while it waits), else the
/// threads candle's own matmul would use.
pub fn threads() -> usize {
    match SHARE.get() {
        Some(share) => share,
        None if rayon::current_thread_index().is_some() => 1,
        None => candle_core::utils::get_num_threads(),
    }
}

thread_local! {
    /// The threads products on this thread may split over, while [`with_threads`] runs.
    static SHARE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// `f` with the products it runs on this thread split over `threads` (at least 1): a shard's
/// share of the pool (`train::shard`). The previous share comes back when `f` returns or
/// unwinds, so a worker that steals another shard while it waits inside a product keeps each
/// shard's own.
pub fn with_threads<T>(threads: usize, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHARE.set(self.0);
        }
    }
    let _restore = Restore(SHARE.replace(Some(threads.max(1))));
    f()
}

/// dst (m x n, row-major) = or += `scale * lhs @ rhs`, on `threads` threads (1: the calling one).
pub fn matmul(dst: &mut [f32], lhs: Mat, rhs: Mat, scale: f32, dst_is: Dst, threads: usize) -> Result<(), String> {
    if dst.len() != lhs.rows * rhs.cols {
        return Err(refusal(dst.len(), lhs, rhs));
    }
    matmul_rows(dst, rhs.cols, lhs, rhs, scale, dst_is, threads)
}

/// [`matmul`] into the m x n rows of `dst` that start `dst_rs` elements apart (dst_rs >= n): a
/// block of a wider matrix.
pub fn matmul_rows(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    dst_is: Dst,
    threads: usize,
) -> Result<(), String> {
    rows_fit(dst.len(), dst_rs, lhs, rhs)?;
    // SAFETY: `rows_fit` bounds both operands and dst's rows; dst is borrowed mutably, so it
    // overlaps neither operand.
    unsafe { run(dst.as_mut_ptr(), dst_rs, lhs, rhs, scale, dst_is, threads) };
    Ok(())
}

/// dst = `scale * lhs @ rhs` into the m x n rows of slots that start `dst_rs` elements apart:
/// [`matmul_rows`] overwriting a block of a new matrix, whose slots it writes without reading.
pub fn product_rows(
    dst: &mut [std::mem::MaybeUninit<f32>],
    dst_rs: usize,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    threads: usize,
) -> Result<(), String> {
    rows_fit(dst.len(), dst_rs, lhs, rhs)?;
    // SAFETY: as in `matmul_rows`; an overwritten destination is never read, and `run` writes
    // every one of its m x n elements.
    unsafe { run(dst.as_mut_ptr().cast(), dst_rs, lhs, rhs, scale, Dst::Overwrite, threads) };
    Ok(())
}

/// Whether m rows of n, `dst_rs` apart, fit in `dst_len` elements and the operands chain.
fn rows_fit(dst_len: usize, dst_rs: usize, lhs: Mat, rhs: Mat) -> Result<(), String> {
    let (m, n) = (lhs.rows, rhs.cols);
    let fits = m == 0 || n == 0 || (dst_rs >= n && (m - 1) * dst_rs + n <= dst_len);
    if !fits || !chains(lhs, rhs) {
        return Err(refusal(dst_len, lhs, rhs));
    }
    Ok(())
}

/// A new row-major matrix `scale * lhs @ rhs`, written without being zero-filled first.
pub fn product(lhs: Mat, rhs: Mat, scale: f32, threads: usize) -> Result<Vec<f32>, String> {
    let len = lhs.rows * rhs.cols;
    if !chains(lhs, rhs) {
        return Err(refusal(len, lhs, rhs));
    }
    let fill = |dst: &mut [std::mem::MaybeUninit<f32>]| {
        product_rows(dst, rhs.cols, lhs, rhs, scale, threads).expect("a new matrix fits its own product")
    };
    // SAFETY: `product_rows` writes all m x n slots (zeros when k = 0); operands that chain
    // fit a matrix of exactly their size, so its checks pass (were they to fail, it would
    // panic before writing, and the vector would be dropped empty).
    Ok(unsafe { crate::uninit::written(len, fill) })
}

/// bias + x @ wt for every row of x (m, k), with wt (k, n): a new (m, n) matrix whose rows
/// start as the bias (the product accumulates onto it, as torch's addmm rounds it), or that is
/// never zero-filled without one.
pub fn linear(x: Mat, wt: Mat, bias: Option<&[f32]>, threads: usize) -> Result<Vec<f32>, String> {
    let Some(bias) = bias else { return product(x, wt, 1.0, threads) };
    if bias.len() != wt.cols {
        return Err(format!("linear: a bias of {} for {} outputs", bias.len(), wt.cols));
    }
    let mut y: Vec<f32> = Vec::with_capacity(x.rows * wt.cols);
    (0..x.rows).for_each(|_| y.extend_from_slice(bias));
    matmul(&mut y, x, wt, 1.0, Dst::Accumulate, threads)?;
    Ok(y)
}

/// residual + bias + x @ wt: a new (m, n) matrix that starts as the residual's (m, n) values
/// plus the bias on every row, onto which the product accumulates (a block's output
/// projection onto its residual, in one pass over the output).
pub fn linear_onto(
    x: Mat,
    wt: Mat,
    bias: Option<&[f32]>,
    residual: &[f32],
    threads: usize,
) -> Result<Vec<f32>, String> {
    if bias.is_some_and(|b| b.len() != wt.cols) {
        return Err(format!("linear: a bias for {} outputs", wt.cols));
    }
    let mut y = residual.to_vec();
    if let Some(b) = bias {
        y.chunks_exact_mut(wt.cols.max(1)).for_each(|row| row.iter_mut().zip(b).for_each(|(v, &bi)| *v += bi));
    }
    matmul(&mut y, x, wt, 1.0, Dst::Accumulate, threads)?;
    Ok(y)
}

/// A contiguous CPU argument (..., k) of a custom op as its (m, k) rows, and the shape
/// (..., n) of an output with n features per row.
pub fn rows_of<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    n: usize,
) -> candle_core::Result<(Mat<'a>, candle_core::Shape)> {
    let (start, end) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("matmul: input is not contiguous".into()))?;
    let d = l.dims();
    let Some((&k, lead)) = d.split_last() else { candle_core::bail!("matmul: input is a scalar") };
    let x = Mat::rows(&s.as_slice::<f32>()?[start..end], lead.iter().product(), k);
    Ok((x, candle_core::Shape::from([lead, &[n]].concat())))
}

/// Whether the operands' shapes chain and all their elements lie inside their slices.
fn chains(lhs: Mat, rhs: Mat) -> bool {
    rhs.rows == lhs.cols && lhs.in_bounds() && rhs.in_bounds()
}

fn refusal(dst_len: usize, lhs: Mat, rhs: Mat) -> String {
    format!(
        "matmul: ({} x {}) @ ({} x {}) into {dst_len} values, or an operand out of its bounds",
        lhs.rows, lhs.cols, rhs.rows, rhs.cols
    )
}

/// The product into `dst`, after [`chains`].
///
/// # Safety
/// `dst` must be valid for writes (and, to accumulate, reads) of m rows of n elements,
/// `dst_rs` apart, and overlap neither operand, and [`chains`] must hold for these
/// operands.
unsafe fn run(dst: *mut f32, dst_rs: usize, lhs: Mat, rhs: Mat, scale: f32, dst_is: Dst, threads: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if dst_is == Dst::Overwrite {
            (0..m).for_each(|i| std::ptr::write_bytes(dst.add(i * dst_rs), 0, n));
            // 0u32 bits are 0.0
        }
        return;
    }
    #[cfg(feature = "matmul-stats")]
    let _timer = stats::Timer::start((m, k, n), (lhs.cs != 1, rhs.cs != 1));
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // every index gemm forms into lhs or rhs is at most (rows - 1) rs + (cols - 1) cs of that
    // operand, which `chains` bounded; dst is m rows of n, dst_rs apart
    let call = kernels::Call {
        mnk: (m, n, k),
        dst,
        dst_rs: dst_rs as isize,
        read_dst: dst_is == Dst::Accumulate,
        lhs: (lhs.data.as_ptr(), lhs.cs as isize, lhs.rs as isize),
        rhs: (rhs.data.as_ptr(), rhs.cs as isize, rhs.rs as isize),
        beta: scale,
        parallelism,
    };
    kernels::run(call, crate::isa::kernels());
}

/// The `gemm` crate's f32 product on the kernel family [`crate::isa`] chose, entered below the
/// crate's own dispatch (which takes AVX-512 wherever the CPU has AVX-512F): the same generic
/// driver, micro-kernels and arguments as `gemm::gemm` passes them for a row-major destination
/// with positive strides.
mod kernels {
    use gemm::Parallelism;

    /// A pointer with its column and row strides.
    pub type Operand = (*const f32, isize, isize);

    /// dst (m x n, row stride `dst_rs`, column stride 1) = `beta * lhs @ rhs`, or += it with
    /// `read_dst`.
    pub struct Call {
        pub mnk: (usize, usize, usize),
        pub dst: *mut f32,
        pub dst_rs: isize,
        pub read_dst: bool,
        pub lhs: Operand,
        pub rhs: Operand,
        pub beta: f32,
        pub parallelism: Parallelism,
    }

    /// The product on `family`, or on the crate's own choice where this CPU cannot run it.
    ///
    /// # Safety
    /// As `gemm::gemm`'s.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub unsafe fn run(c: Call, family: crate::isa::Kernels) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::isa::Kernels;
            use gemm_common::simd::{V3, V4};
            match family {
                Kernels::Avx512 => {
                    if let Some(simd) = V4::try_new() {
                        use gemm_f32::microkernel::avx512f::f32::{H_M, H_N, H_UKR, MR_DIV_N, NR, UKR};
                        return drive::<_, 16, { MR_DIV_N * 16 }, NR, MR_DIV_N, H_M, H_N>(simd, &UKR, &H_UKR, c);
                    }
                }
                Kernels::Avx2 => {
                    if let Some(simd) = V3::try_new() {
                        use gemm_f32::microkernel::fma::f32::{H_M, H_N, H_UKR, MR_DIV_N, NR, UKR};
                        return drive::<_, 8, { MR_DIV_N * 8 }, NR, MR_DIV_N, H_M, H_N>(simd, &UKR, &H_UKR, c);
                    }
                }
                Kernels::Crate => {}
            }
        }
        let Call { mnk: (m, n, k), dst, dst_rs, read_dst, lhs, rhs, beta, parallelism } = c;
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            read_dst,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }

    /// `gemm::gemm`'s orientation (a destination with unit column stride is computed
    /// transposed, as the micro-kernels prefer), then its driver with these micro-kernels.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn drive<
        S: gemm_common::simd::MixedSimd<f32, f32, f32, f32>,
        const N: usize,
        const MR: usize,
        const NR: usize,
        const MR_DIV_N: usize,
        const H_M: usize,
        const H_N: usize,
    >(
        simd: S,
        ukr: &[[gemm_common::microkernel::MicroKernelFn<f32>; NR]; MR_DIV_N],
        h_ukr: &[[gemm_common::microkernel::HMicroKernelFn<f32>; H_N]; H_M],
        c: Call,
    ) {
        let Call { mnk: (m, n, k), dst, dst_rs, read_dst, lhs, rhs, beta, parallelism } = c;
        let (m, n, dst_cs, dst_rs, lhs, rhs) = if 1 < dst_rs {
            (n, m, dst_rs, 1, (rhs.0, rhs.2, rhs.1), (lhs.0, lhs.2, lhs.1))
        } else {
            (m, n, 1, dst_rs, lhs, rhs)
        };
        gemm_common::gemm::gemm_basic_generic::<S, f32, N, MR, NR, MR_DIV_N, H_M, H_N>(
            simd,
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            1.0,
            beta,
            false,
            false,
            false,
            |a, b, c| a * b + c,
            ukr,
            h_ukr,
            false,
            parallelism,
        );
    }
}

/// Time and work of every product by shape, for the benchmarks (`--features matmul-stats`;
/// each product then takes a lock, so a build for use never has it).
#[cfg(feature = "matmul-stats")]
pub mod stats {
    use std::sync::Mutex;
    use std::time::Instant;

    /// (m, k, n) and whether lhs and rhs are read with their columns strided (transposed).
    type Key = ((usize, usize, usize), (bool, bool));

    /// Per shape: seconds, flops and calls.
    static SHAPES: Mutex<Vec<(Key, f64, f64, usize)>> = Mutex::new(Vec::new());

    /// Records one product's time when dropped.
    pub(super) struct Timer(Key, Instant);

    impl Timer {
        pub(super) fn start(mkn: (usize, usize, usize), transposed: (bool, bool)) -> Self {
            Timer((mkn, transposed), Instant::now())
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            let (seconds, ((m, k, n), _)) = (self.1.elapsed().as_secs_f64(), self.0);
            let mut shapes = SHAPES.lock().unwrap_or_else(|e| e.into_inner());
            match shapes.iter_mut().find(|s| s.0 == self.0) {
                Some(s) => (s.1, s.2, s.3) = (s.1 + seconds, s.2 + 2.0 * (m * k * n) as f64, s.3 + 1),
                None => shapes.push((self.0, seconds, 2.0 * (m * k * n) as f64, 1)),
            }
        }
    }

    /// Forgets what was recorded (after warm-up steps).
    pub fn reset() {
        SHAPES.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// One JSON line per shape, the most time first, then the total: the products' wall time
    /// summed, its share, and GFLOP/s over that time (per thread where each product runs on
    /// one, as inside a batch's shards).
    pub fn report(out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut shapes = SHAPES.lock().unwrap_or_else(|e| e.into_inner()).clone();
        shapes.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (seconds, flops) = shapes.iter().fold((0.0, 0.0), |(s, f), x| (s + x.1, f + x.2));
        for (((m, k, n), (lhs_t, rhs_t)), s, f, calls) in &shapes {
            writeln!(
                out,
                "{{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"lhs_t\": {lhs_t}, \"rhs_t\": {rhs_t}, \"calls\": {calls}, \"seconds\": {s:.4}, \"share\": {:.4}, \"gflops\": {:.1}}}",
                s / seconds,
                f / s / 1e9
            )?;
        }
        writeln!(out, "{{\"products\": \"all\", \"seconds\": {seconds:.4}, \"gflops\": {:.1}}}", flops / seconds / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product by the definition, in f64.
    fn naive(lhs: Mat, rhs: Mat) -> Vec<f32> {
        let mut out = vec![0f32; lhs.rows * rhs.cols];
        for i in 0..lhs.rows {
            for j in 0..rhs.cols {
                let s: f64 = (0..lhs.cols)
                    .map(|p| lhs.data[i * lhs.rs + p * lhs.cs] as f64 * rhs.data[p * rhs.rs + j * rhs.cs] as f64)
                    .sum();
                out[i * rhs.cols + j] = s as f32;
            }
        }
        out
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 * 0.37 + seed).sin() * 2.0).round() / 4.0).collect()
    }

    #[test]
    fn products_over_transposed_views_match_the_definition() {
        let (a, b) = (values(5 * 3, 0.1), values(4 * 3, 0.7)); // a (5, 3), b stored (4, 3)
        let (lhs, rhs) = (Mat::rows(&a, 5, 3), Mat::rows(&b, 4, 3).t()); // (5, 3) @ (3, 4)
        let mut dst = vec![f32::NAN; 5 * 4];
        matmul(&mut dst, lhs, rhs, 1.0, Dst::Overwrite, 1).unwrap();
        assert_eq!(dst, naive(lhs, rhs), "an overwritten destination's old values are never read");
        matmul(&mut dst, lhs, rhs, -0.5, Dst::Accumulate, 1).unwrap();
        let half: Vec<f32> = naive(lhs, rhs).iter().map(|v| v * 0.5).collect();
        assert_eq!(dst, half);
    }

    /// Every kernel family this CPU has, through the driver the engine enters, on a product
    /// large enough to be packed and blocked (and split over 2 threads), into a block of a
    /// wider destination, overwritten then accumulated onto.
    #[test]
    fn every_kernel_family_this_cpu_has_matches_the_definition() {
        use crate::isa::Kernels;
        let (m, k, n, wide) = (70, 300, 130, 137);
        let (a, b) = (values(m * k, 0.3), values(n * k, 0.9)); // a (m, k), b stored (n, k)
        let (lhs, rhs) = (Mat::rows(&a, m, k), Mat::rows(&b, n, k).t());
        let want = naive(lhs, rhs);
        for family in [Kernels::Avx512, Kernels::Avx2, Kernels::Crate] {
            for (threads, parallelism) in [(1, gemm::Parallelism::None), (2, gemm::Parallelism::Rayon(2))] {
                let mut dst = vec![f32::NAN; m * wide];
                for (read_dst, beta) in [(false, 1.0), (true, -0.5)] {
                    let call = kernels::Call {
                        mnk: (m, n, k),
                        dst: dst.as_mut_ptr(),
                        dst_rs: wide as isize,
                        read_dst,
                        lhs: (lhs.data.as_ptr(), lhs.cs as isize, lhs.rs as isize),
                        rhs: (rhs.data.as_ptr(), rhs.cs as isize, rhs.rs as isize),
                        beta,
                        parallelism,
                    };
                    // SAFETY: dst holds m rows of `wide` >= n; both operands are whole matrices
                    unsafe { kernels::run(call, family) };
                }
                for i in 0..m {
                    for j in 0..n {
                        let (got, want) = (dst[i * wide + j], 0.5 * want[i * n + j]);
                        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{family:?} {threads}t ({i}, {j})");
                    }
                    assert!(dst[i * wide + n..(i + 1) * wide].iter().all(|v| v.is_nan()), "{family:?} wrote past n");
                }
            }
        }
    }

    #[test]
    fn a_block_of_a_wider_destination_leaves_the_other_columns_alone() {
        let (a, b) = (values(3 * 2, 0.2), values(2 * 4, 0.4)); // (3, 2) @ (2, 4)
        let (lhs, rhs) = (Mat::rows(&a, 3, 2), Mat::rows(&b, 2, 4));
        let mut wide = vec![7f32; 2 * 6 + 4]; // rows of 6, the product in columns 0..4
        matmul_rows(&mut wide, 6, lhs, rhs, 1.0, Dst::Overwrite, 1).unwrap();
        let want = naive(lhs, rhs);
        for i in 0..3 {
            assert_eq!(&wide[i * 6..i * 6 + 4], &want[i * 4..i * 4 + 4]);
        }
        assert_eq!((wide[4], wide[5], wide[10], wide[11]), (7.0, 7.0, 7.0, 7.0));
        assert!(matmul_rows(&mut wide, 6, lhs, rhs, 1.0, Dst::Overwrite, 1).is_ok());
        assert!(matmul_rows(&mut wide[..15], 6, lhs, rhs, 1.0, Dst::Overwrite, 1).is_err(), "a last row cut short");
        assert!(matmul_rows(&mut wide, 3, lhs, rhs, 1.0, Dst::Overwrite, 1).is_err(), "rows overlapping");
    }

    #[test]
    fn mismatched_or_out_of_bounds_operands_are_refused() {
        let a = values(6, 0.0);
        let mut dst = vec![0f32; 4];
        assert!(matmul(&mut dst, Mat::rows(&a, 2, 3), Mat::rows(&a, 2, 2), 1.0, Dst::Overwrite, 1).is_err());
        let short = Mat { data: &a, rows: 3, cols: 2, rs: 3, cs: 1 }; // last index 7 of 6
        assert!(matmul(&mut dst, Mat::rows(&a, 2, 3), short, 1.0, Dst::Overwrite, 1).is_err());
        assert_eq!(
            product(Mat::rows(&a, 2, 3), Mat::rows(&a, 3, 2), 1.0, 1).unwrap(),
            naive(Mat::rows(&a, 2, 3), Mat::rows(&a, 3, 2))
        );
        let mut zero_k = vec![1f32; 4];
        matmul(&mut zero_k, Mat::rows(&[], 2, 0), Mat::rows(&[], 0, 2), 1.0, Dst::Overwrite, 1).unwrap();
        assert_eq!(zero_k, vec![0.0; 4]);
    }

    /// lhs @ rhs on `family`'s kernels, split over `threads`.
    fn on(family: crate::isa::Kernels, threads: usize, lhs: Mat, rhs: Mat) -> Vec<f32> {
        let mut dst = vec![f32::NAN; lhs.rows * rhs.cols];
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        let call = kernels::Call {
            mnk: (lhs.rows, rhs.cols, lhs.cols),
            dst: dst.as_mut_ptr(),
            dst_rs: rhs.cols as isize,
            read_dst: false,
            lhs: (lhs.data.as_ptr(), lhs.cs as isize, lhs.rs as isize),
            rhs: (rhs.data.as_ptr(), rhs.cs as isize, rhs.rs as isize),
            beta: 1.0,
            parallelism,
        };
        // SAFETY: dst holds the m x n product; both operands are whole matrices
        unsafe { kernels::run(call, family) };
        dst
    }

    /// gemm splits a product's output between threads, never its depth: every element sums
    /// its terms in the same order on any number of threads, so a shard's products may take
    /// idle threads without changing a loss. (A depth split would round differently with
    /// these values.)
    #[test]
    fn a_product_rounds_the_same_on_any_number_of_threads() {
        use crate::isa::Kernels;
        let (m, k, n) = (256, 512, 1536);
        let inexact =
            |len: usize, seed: f32| -> Vec<f32> { (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect() };
        let (a, b) = (inexact(m * k, 0.3), inexact(n * k, 0.9));
        let x = Mat::rows(&a, m, k);
        for (w, orientation) in [(Mat::rows(&b, n, k).t(), "x @ W^T"), (Mat::rows(&b, k, n), "dy @ W")] {
            for family in [Kernels::Avx512, Kernels::Avx2, Kernels::Crate] {
                let one = on(family, 1, x, w);
                for threads in [2, 3, 4] {
                    assert!(on(family, threads, x, w) == one, "{orientation} on {family:?}, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn a_product_on_a_rayon_worker_stays_on_its_thread_unless_given_a_share() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        assert_eq!(pool.install(threads), 1);
        assert_eq!(pool.install(|| with_threads(3, threads)), 3);
        assert_eq!(pool.install(|| with_threads(2, || (with_threads(0, threads), threads()))), (1, 2));
        assert_eq!(pool.install(threads), 1, "the share ends with with_threads");
        assert_eq!(threads(), candle_core::utils::get_num_threads());
    }
}
