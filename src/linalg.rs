//! Singular values of a dense matrix, for the probes: the eigenvalues of its smaller Gram
//! matrix (M M^T or M^T M, in f64 through the gemm crate), from a Householder reduction to
//! tridiagonal form and the implicit QL iteration with Wilkinson shifts (tred2 and tqli in
//! Numerical Recipes, eigenvalues only). That is O(n^3) in the smaller dimension n: well under
//! a second at n = 512, about a minute at n = 4096. Squaring the matrix loses the smallest
//! singular values to rounding (below about 1e-8 of the largest), which the probes' ratios and
//! entropies do not see. This module must not know about models.

/// Singular values of the `rows` x `cols` row-major matrix `m`, largest first.
pub fn singular_values(m: &[f64], rows: usize, cols: usize) -> Result<Vec<f64>, String> {
    if m.len() != rows * cols {
        return Err(format!("singular values: {} values for a {rows} x {cols} matrix", m.len()));
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    let (n, gram) = gram(m, rows, cols);
    let mut s: Vec<f64> = symmetric_eigenvalues(gram, n)?.into_iter().map(|l| l.max(0.0).sqrt()).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    Ok(s)
}

/// The smaller of M M^T and M^T M, n x n row-major.
fn gram(m: &[f64], rows: usize, cols: usize) -> (usize, Vec<f64>) {
    // as (n, k) with strides: rows of M, or columns of M
    let (n, k, rs, cs) = if rows <= cols { (rows, cols, cols as isize, 1) } else { (cols, rows, 1, cols as isize) };
    let mut g = vec![0.0f64; n * n];
    // SAFETY: g is n x n (row stride n); the lhs reads m at i*rs + l*cs for i < n, l < k and
    // the rhs (its transpose) at l*cs + j*rs for l < k, j < n, all inside the rows x cols matrix.
    unsafe {
        gemm::gemm(
            n,
            n,
            k,
            g.as_mut_ptr(),
            1,
            n as isize,
            false,
            m.as_ptr(),
            cs,
            rs,
            m.as_ptr(),
            rs,
            cs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    (n, g)
}

/// Eigenvalues of the symmetric n x n row-major matrix `a`, in no particular order.
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Result<Vec<f64>, String> {
    let (mut d, mut e) = (vec![0.0; n], vec![0.0; n]);
    tridiagonalize(&mut a, n, &mut d, &mut e);
    ql_implicit(&mut d, &mut e)?;
    Ok(d)
}

/// Householder reduction to a tridiagonal matrix: diagonal `d`, sub-diagonal in `e[1..]`.
fn tridiagonalize(a: &mut [f64], n: usize, d: &mut [f64], e: &mut [f64]) {
    let at = |i: usize, j: usize| i * n + j;
    for i in (1..n).rev() {
        let l = i - 1;
        if l == 0 {
            e[i] = a[at(i, l)];
            continue;
        }
        let scale: f64 = (0..=l).map(|k| a[at(i, k)].abs()).sum();
        if scale == 0.0 {
            e[i] = a[at(i, l)];
            continue;
        }
        let mut h = 0.0;
        for k in 0..=l {
            a[at(i, k)] /= scale;
            h += a[at(i, k)] * a[at(i, k)];
        }
        let f = a[at(i, l)];
        let g = if f >= 0.0 { -h.sqrt() } else { h.sqrt() };
        e[i] = scale * g;
        h -= f * g;
        a[at(i, l)] = f - g;
        let mut f = 0.0;
        for j in 0..=l {
            let g: f64 = (0..=j).map(|k| a[at(j, k)] * a[at(i, k)]).sum::<f64>()
                + (j + 1..=l).map(|k| a[at(k, j)] * a[at(i, k)]).sum::<f64>();
            e[j] = g / h;
            f += e[j] * a[at(i, j)];
        }
        let hh = f / (h + h);
        for j in 0..=l {
            let f = a[at(i, j)];
            let g = e[j] - hh * f;
            e[j] = g;
            for k in 0..=j {
                a[at(j, k)] -= f * e[k] + g * a[at(i, k)];
            }
        }
    }
    (0..n).for_each(|i| d[i] = a[at(i, i)]);
}

/// Eigenvalues of the tridiagonal matrix (d, e[1..]) into `d`, by implicit QL.
fn ql_implicit(d: &mut [f64], e: &mut [f64]) -> Result<(), String> {
    let n = d.len();
    if n == 0 {
        return Ok(());
    }
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut iterations = 0;
        loop {
            let m = (l..n - 1).find(|&m| e[m].abs() <= f64::EPSILON * (d[m].abs() + d[m + 1].abs())).unwrap_or(n - 1);
            if m == l {
                break;
            }
            iterations += 1;
            if iterations > 60 {
                return Err("eigenvalues: the QL iteration did not converge".into());
            }
            ql_sweep(d, e, l, m);
        }
    }
    Ok(())
}

/// One implicit QL step with a Wilkinson shift on the block l..=m.
fn ql_sweep(d: &mut [f64], e: &mut [f64], l: usize, m: usize) {
    let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
    let r = g.hypot(1.0);
    g = d[m] - d[l] + e[l] / (g + r.copysign(g));
    let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
    for i in (l..m).rev() {
        let (f, b) = (s * e[i], c * e[i]);
        let r = f.hypot(g);
        e[i + 1] = r;
        if r == 0.0 {
            // underflow: the block splits here; the caller iterates again
            d[i + 1] -= p;
            e[m] = 0.0;
            return;
        }
        (s, c) = (f / r, g / r);
        g = d[i + 1] - p;
        let r = (d[i] - g) * s + 2.0 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
    }
    d[l] -= p;
    e[l] = g;
    e[m] = 0.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // [[2, 1, 0], [1, 2, 1], [0, 1, 2]]: 2 - sqrt 2, 2, 2 + sqrt 2
        let mut l = symmetric_eigenvalues(vec![2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0], 3).unwrap();
        l.sort_by(f64::total_cmp);
        let want = [2.0 - 2f64.sqrt(), 2.0, 2.0 + 2f64.sqrt()];
        l.iter().zip(want).for_each(|(a, b)| assert!((a - b).abs() < 1e-12, "{l:?}"));
    }

    #[test]
    fn singular_values_of_rank_one_and_diagonal_matrices() {
        // u v^T with |u| = 3, |v| = 5: one singular value 15, the rest 0
        let (u, v) = ([1.0, 2.0, 2.0], [3.0, 0.0, 4.0, 0.0]);
        let m: Vec<f64> = u.iter().flat_map(|a| v.iter().map(move |b| a * b)).collect();
        let s = singular_values(&m, 3, 4).unwrap();
        assert!((s[0] - 15.0).abs() < 1e-9 && s[1..].iter().all(|x| x.abs() < 1e-6), "{s:?}");
        let s = singular_values(&[0.0, -3.0, 0.0, 0.0, 7.0, 0.0], 3, 2).unwrap(); // tall, two non-zeros
        assert!((s[0] - 7.0).abs() < 1e-12 && (s[1] - 3.0).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn singular_values_keep_the_frobenius_norm_and_the_spectral_norm() {
        let mut x = 12345u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let (rows, cols) = (40, 70);
        let m: Vec<f64> = (0..rows * cols).map(|_| next()).collect();
        let s = singular_values(&m, rows, cols).unwrap();
        assert_eq!(s.len(), rows);
        let frob: f64 = m.iter().map(|v| v * v).sum();
        assert!((s.iter().map(|v| v * v).sum::<f64>() - frob).abs() < 1e-9 * frob);
        // power iteration on M^T M for the largest
        let mut v = vec![1.0; cols];
        for _ in 0..500 {
            let mv: Vec<f64> = (0..rows).map(|i| (0..cols).map(|j| m[i * cols + j] * v[j]).sum()).collect();
            let w: Vec<f64> = (0..cols).map(|j| (0..rows).map(|i| m[i * cols + j] * mv[i]).sum()).collect();
            let n = w.iter().map(|a| a * a).sum::<f64>().sqrt();
            v = w.iter().map(|a| a / n).collect();
        }
        let mv: Vec<f64> = (0..rows).map(|i| (0..cols).map(|j| m[i * cols + j] * v[j]).sum()).collect();
        let top = mv.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!((s[0] - top).abs() < 1e-9 * top, "{} vs {top}", s[0]);
    }
}
