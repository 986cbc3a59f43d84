//! Normalization of population activity by its spontaneous period (Stringer, Pachitariu et al.
//! 2018b; the study's `dataset.load_mat` steps 2–4, see `shared/specs/studies.md`): per-neuron
//! z-scoring by the spontaneous statistics, removal of the spontaneous principal components from
//! the stimulus responses, mean-centering.
//!
//! Matrices are row-major `rows x n` slices over `n` neurons (one row per frame or presentation).

use super::pca::{PcaError, top_principal_axes};

/// Why a recording cannot be normalized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormalizeError {
    #[error("the recording has no neurons")]
    NoNeurons,
    #[error("{0} spontaneous frames: at least 2 are needed for a standard deviation")]
    TooFewFrames(usize),
    #[error(transparent)]
    Pca(#[from] PcaError),
}

/// Per-neuron mean and standard deviation (population, ddof = 0 as numpy's `std`) of a row-major
/// `rows x n` matrix.
pub fn column_mean_sd(x: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / n.max(1);
    let mut mean = vec![0.0; n];
    for r in x.chunks_exact(n) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut var = vec![0.0; n];
    for r in x.chunks_exact(n) {
        for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    let sd = var.into_iter().map(|s| (s / rows as f64).sqrt()).collect();
    (mean, sd)
}

/// `(x - mean) * scale` per neuron of a row-major `rows x n` matrix: z-scoring when `scale` is
/// `1 / sd` (multiplied, not divided, so that every row rounds alike).
pub fn zscore(x: &[f64], mean: &[f64], scale: &[f64]) -> Vec<f64> {
    let n = mean.len();
    let mut out = x.to_vec();
    for r in out.chunks_exact_mut(n) {
        for ((v, m), s) in r.iter_mut().zip(mean).zip(scale) {
            *v = (*v - m) * s;
        }
    }
    out
}

/// Removes from each row of a row-major `rows x n` matrix its projection on the orthonormal
/// `axes` (each of length `n`): `x -= x @ u @ u.T`.
pub fn project_off(x: &mut [f64], axes: &[Vec<f64>]) {
    let Some(n) = axes.first().map(Vec::len) else { return };
    for r in x.chunks_exact_mut(n) {
        let coefs: Vec<f64> = axes.iter().map(|u| u.iter().zip(r.iter()).map(|(a, b)| a * b).sum()).collect();
        for (u, c) in axes.iter().zip(&coefs) {
            for (v, ui) in r.iter_mut().zip(u) {
                *v -= c * ui;
            }
        }
    }
}

/// Subtracts each neuron's mean over the rows of a row-major `rows x n` matrix.
pub fn center_columns(x: &mut [f64], n: usize) {
    let (m, _) = column_mean_sd(x, n);
    for r in x.chunks_exact_mut(n) {
        for (v, mi) in r.iter_mut().zip(&m) {
            *v -= mi;
        }
    }
}

/// What [`normalize_by_spontaneous`] does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpontaneousParams {
    /// Principal components of the spontaneous activity projected out (study: 32).
    pub n_components: usize,
    /// Added to the spontaneous standard deviation before dividing (study: 1e-6).
    pub epsilon: f64,
    /// Mean-center each neuron over the presentations after the projection (study: yes).
    pub center: bool,
}

/// The study's normalization (`dataset.load_mat` steps 2–4) of row-major `resp` [p x n] by
/// `spont` [t x n]: z-score both by the spontaneous mean and `sd + epsilon`, project `resp` off
/// the top `n_components` axes of the z-scored spontaneous frames (`resp -= resp @ u @ u.T`),
/// then mean-center each neuron over the presentations. Returns (responses, z-scored
/// spontaneous frames).
pub fn normalize_by_spontaneous(resp: &[f64], spont: &[f64], n: usize, params: SpontaneousParams) -> Result<(Vec<f64>, Vec<f64>), NormalizeError> {
    if n == 0 {
        return Err(NormalizeError::NoNeurons);
    }
    let t = spont.len() / n;
    if t < 2 {
        return Err(NormalizeError::TooFewFrames(t));
    }
    let (mean, sd) = column_mean_sd(spont, n);
    let scale: Vec<f64> = sd.iter().map(|s| 1.0 / (s + params.epsilon)).collect();
    let z_spont = zscore(spont, &mean, &scale);
    let mut z_resp = zscore(resp, &mean, &scale);
    let axes = top_principal_axes(&z_spont, t, n, params.n_components)?;
    project_off(&mut z_resp, &axes);
    if params.center && !z_resp.is_empty() {
        center_columns(&mut z_resp, n);
    }
    Ok((z_resp, z_spont))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::spont_reference::{close, matrix, reference};

    #[test]
    fn zscore_and_pc_removal_match_numpy_scipy() {
        let r = reference();
        let (spont, n) = matrix(&r["spont"]);
        let (resp, _) = matrix(&r["resp"]);
        let (zs, _) = matrix(&r["z_spont"]);
        for (key, k, center) in [("zscore_only", 0, false), ("k2", 2, false), ("k2_centered", 2, true), ("k3_centered", 3, true)] {
            let params = SpontaneousParams { n_components: k, epsilon: 1e-6, center };
            let (out, z_spont) = normalize_by_spontaneous(&resp, &spont, n, params).unwrap();
            let (expected, _) = matrix(&r[key]);
            close(&out, &expected, 1e-9, key);
            close(&z_spont, &zs, 1e-9, "z_spont");
        }
    }

    #[test]
    fn mean_and_population_sd_of_columns() {
        // Columns (1, 3) and (2, 6): means 2 and 4, ddof-0 standard deviations 1 and 2.
        let (mean, sd) = column_mean_sd(&[1.0, 2.0, 3.0, 6.0], 2);
        assert_eq!((mean, sd), (vec![2.0, 4.0], vec![1.0, 2.0]));
        assert_eq!(zscore(&[1.0, 2.0, 3.0, 6.0], &[2.0, 4.0], &[1.0, 0.5]), vec![-1.0, -1.0, 1.0, 1.0]);
        let mut x = vec![1.0, 2.0, 3.0, 6.0];
        center_columns(&mut x, 2);
        assert_eq!(x, vec![-1.0, -2.0, 1.0, 2.0]);
        // Off the first axis, only the second coordinate stays.
        let mut x = vec![3.0, 4.0];
        project_off(&mut x, &[vec![1.0, 0.0]]);
        assert_eq!(x, vec![0.0, 4.0]);
    }

    #[test]
    fn too_many_components_and_too_few_frames_are_clear_errors() {
        let spont = vec![1.0, 2.0, 3.0, 4.0, 0.5, 1.0];
        let e = normalize_by_spontaneous(&[0.0, 0.0], &spont, 2, SpontaneousParams { n_components: 5, epsilon: 1e-6, center: true }).unwrap_err();
        assert!(e.to_string().contains("5 components"), "{e}");
        let e = normalize_by_spontaneous(&[0.0, 0.0], &spont[..2], 2, SpontaneousParams { n_components: 0, epsilon: 1e-6, center: true })
            .unwrap_err();
        assert!(e.to_string().contains("1 spontaneous frames"), "{e}");
        assert_eq!(normalize_by_spontaneous(&[], &[], 0, SpontaneousParams { n_components: 0, epsilon: 1e-6, center: true }), Err(NormalizeError::NoNeurons));
    }
}
