//! Principal axes of a row-major data matrix, through the eigen-decomposition of its Gram matrix
//! by the cyclic Jacobi method.
//!
//! Why not `linfa-reduction`'s `Pca` (already a dependency, used by `train.cluster`'s PCA): it
//! centers the data and finds the components with LOBPCG from a random start, while the study
//! (Stringer et al. 2018b, `dataset.load_mat`) takes the leading eigenvectors of the uncentered
//! `z^T z` (scipy `eigsh`). Jacobi on the smaller Gram matrix is exact to rounding and
//! deterministic, which the faithfulness test against numpy/scipy relies on; the matrices are
//! small (min(frames, neurons) ≤ a few thousand).

/// Why the principal axes cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PcaError {
    #[error("{k} components asked of {t} spontaneous frames x {n} neurons (at most {})", t.min(n))]
    TooManyComponents { k: usize, t: usize, n: usize },
    #[error("the spontaneous activity has fewer than {k} non-zero principal components")]
    Degenerate { k: usize },
}

/// Eigenvalues and eigenvectors of a symmetric `m x m` matrix (row-major, overwritten) by the
/// cyclic Jacobi method (Golub & Van Loan, "Matrix Computations", 4th ed., §8.5; rotation as in
/// Numerical Recipes §11.1). Returns eigenvalues in descending order and the eigenvectors as
/// the columns of a row-major `m x m` matrix in the same order.
pub fn symmetric_eigen(a: &mut [f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let mut off = 0.0;
        for p in 0..m {
            for q in p + 1..m {
                off += a[p * m + q] * a[p * m + q];
            }
        }
        if off <= 1e-30 * total.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                jacobi_rotate(a, &mut v, m, p, q);
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| a[j * m + j].total_cmp(&a[i * m + i]));
    let values = order.iter().map(|&i| a[i * m + i]).collect();
    let mut vectors = vec![0.0; m * m];
    for (col, &i) in order.iter().enumerate() {
        for k in 0..m {
            vectors[k * m + col] = v[k * m + i];
        }
    }
    (values, vectors)
}

/// One Jacobi rotation in the (p, q) plane that zeroes `a[p][q]`, applied to `a` from both sides
/// and accumulated into the eigenvector matrix `v`.
fn jacobi_rotate(a: &mut [f64], v: &mut [f64], m: usize, p: usize, q: usize) {
    let apq = a[p * m + q];
    if apq == 0.0 {
        return;
    }
    let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let t = if theta == 0.0 { 1.0 } else { t };
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    for k in 0..m {
        let (akp, akq) = (a[k * m + p], a[k * m + q]);
        a[k * m + p] = c * akp - s * akq;
        a[k * m + q] = s * akp + c * akq;
    }
    for k in 0..m {
        let (apk, aqk) = (a[p * m + k], a[q * m + k]);
        a[p * m + k] = c * apk - s * aqk;
        a[q * m + k] = s * apk + c * aqk;
    }
    for k in 0..m {
        let (vkp, vkq) = (v[k * m + p], v[k * m + q]);
        v[k * m + p] = c * vkp - s * vkq;
        v[k * m + q] = s * vkp + c * vkq;
    }
}

/// `z^T z` (n x n, row-major) of a row-major `t x n` matrix, accumulated row by row.
fn gram_of_columns(z: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for row in z.chunks_exact(n) {
        for i in 0..n {
            let ri = row[i];
            if ri == 0.0 {
                continue;
            }
            let ci = &mut c[i * n..(i + 1) * n];
            for (cij, rj) in ci.iter_mut().zip(row) {
                *cij += ri * rj;
            }
        }
    }
    c
}

/// `z z^T` (t x t, row-major) of a row-major `t x n` matrix.
fn gram_of_rows(z: &[f64], t: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0.0; t * t];
    for a in 0..t {
        for b in a..t {
            let dot: f64 = z[a * n..(a + 1) * n].iter().zip(&z[b * n..(b + 1) * n]).map(|(x, y)| x * y).sum();
            g[a * t + b] = dot;
            g[b * t + a] = dot;
        }
    }
    g
}

/// The top `k` principal axes (unit vectors over neurons) of a row-major `t x n` matrix `z`, as
/// the study computes them: the leading eigenvectors of `z^T z` (scipy `eigsh(spont.T @ spont,
/// k)`; `z` is already z-scored, so this is the uncentered second-moment matrix). Works on the
/// smaller of `z^T z` (n x n) and `z z^T` (t x t, then `u = z^T v / sqrt(lambda)`, the SVD
/// relation between the two), so its cost is O(min(t, n)^3). Returned as `k` vectors of length `n`.
pub fn top_principal_axes(z: &[f64], t: usize, n: usize, k: usize) -> Result<Vec<Vec<f64>>, PcaError> {
    if k == 0 {
        return Ok(Vec::new());
    }
    if k > t.min(n) {
        return Err(PcaError::TooManyComponents { k, t, n });
    }
    let nonzero = |values: &[f64]| {
        if values[k - 1] <= 1e-12 * values[0].abs().max(f64::MIN_POSITIVE) { Err(PcaError::Degenerate { k }) } else { Ok(()) }
    };
    if n <= t {
        let mut c = gram_of_columns(z, n);
        let (values, vectors) = symmetric_eigen(&mut c, n);
        nonzero(&values)?;
        return Ok((0..k).map(|j| (0..n).map(|i| vectors[i * n + j]).collect()).collect());
    }
    let mut g = gram_of_rows(z, t, n);
    let (values, vectors) = symmetric_eigen(&mut g, t);
    nonzero(&values)?;
    Ok((0..k)
        .map(|j| {
            let scale = 1.0 / values[j].sqrt();
            let mut u = vec![0.0; n];
            for a in 0..t {
                let va = vectors[a * t + j] * scale;
                for (ui, zi) in u.iter_mut().zip(&z[a * n..(a + 1) * n]) {
                    *ui += va * zi;
                }
            }
            u
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::spont_reference::{close, matrix, reference};

    /// A known answer: the second-difference matrix tridiag(-1, 2, -1) of size 3 has eigenvalues
    /// 2 + √2, 2, 2 − √2 with eigenvectors (1, ∓√2, 1)/2 and (1, 0, −1)/√2.
    #[test]
    fn eigenvalues_and_vectors_of_the_second_difference_matrix() {
        let mut a = vec![2.0, -1.0, 0.0, -1.0, 2.0, -1.0, 0.0, -1.0, 2.0];
        let (values, vectors) = symmetric_eigen(&mut a, 3);
        let r2 = 2f64.sqrt();
        close(&values, &[2.0 + r2, 2.0, 2.0 - r2], 1e-14, "eigenvalues");
        let expected = [[0.5, -r2 / 2.0, 0.5], [1.0 / r2, 0.0, -1.0 / r2], [0.5, r2 / 2.0, 0.5]];
        for (j, e) in expected.iter().enumerate() {
            let col: Vec<f64> = (0..3).map(|i| vectors[i * 3 + j]).collect();
            // An eigenvector is defined up to its sign.
            let sign = if col.iter().zip(e).map(|(x, y)| x * y).sum::<f64>() < 0.0 { -1.0 } else { 1.0 };
            let col: Vec<f64> = col.iter().map(|x| x * sign).collect();
            close(&col, e, 1e-14, &format!("eigenvector {j}"));
        }
    }

    #[test]
    fn eigenvalues_match_numpy_eigh() {
        let r = reference();
        let (zs, n) = matrix(&r["z_spont"]);
        let mut c = vec![0.0; n * n];
        for row in zs.chunks_exact(n) {
            for i in 0..n {
                for j in 0..n {
                    c[i * n + j] += row[i] * row[j];
                }
            }
        }
        let (values, _) = symmetric_eigen(&mut c, n);
        let expected: Vec<f64> = serde_json::from_value(r["eigenvalues_desc"].clone()).unwrap();
        close(&values, &expected, 1e-9, "eigenvalues");
    }

    /// The wide case (more neurons than frames) goes through z z^T: the projector u u^T on the
    /// top two axes equals numpy's.
    #[test]
    fn wide_matrices_give_numpys_projector() {
        let r = reference();
        let (zs, n) = matrix(&r["z_spont"]);
        assert!(zs.len() / n > n, "the reference matrix is tall; its first 3 rows make it wide");
        let axes = top_principal_axes(&zs[..3 * n], 3, n, 2).unwrap();
        let expected: Vec<Vec<f64>> = serde_json::from_value(r["wide_projector_k2"].clone()).unwrap();
        for i in 0..n {
            for j in 0..n {
                let pij: f64 = axes.iter().map(|u| u[i] * u[j]).sum();
                assert!((pij - expected[i][j]).abs() < 1e-9, "wide projector[{i}][{j}] {pij} vs {}", expected[i][j]);
            }
        }
    }

    #[test]
    fn too_many_or_degenerate_components_are_refused() {
        let z = [1.0, 0.0, 2.0, 0.0];
        assert_eq!(top_principal_axes(&z, 2, 2, 3), Err(PcaError::TooManyComponents { k: 3, t: 2, n: 2 }));
        // Rank 1: a second axis does not exist.
        assert_eq!(top_principal_axes(&z, 2, 2, 2), Err(PcaError::Degenerate { k: 2 }));
        let axes = top_principal_axes(&z, 2, 2, 1).unwrap();
        assert!((axes[0][0].abs() - 1.0).abs() < 1e-15 && axes[0][1] == 0.0, "{axes:?}");
    }
}
