//! Preprocessing kernels, plain functions on `f64`/`f32` slices independent of Arrow and actors,
//! each tested alone against its reference (scipy, numpy; tests/fixtures):
//! - sampled traces: Butterworth filtering as second-order sections ([`butterworth`]), rational
//!   polyphase resampling ([`resample`]) and the sample spans of fixed windows and
//!   stimulus-locked epochs ([`window`]), which the `preprocess.filter`, `preprocess.resample`
//!   and `preprocess.window` stages apply row by row to list columns;
//! - population activity (row-major `rows x neurons` matrices): the Jacobi eigensolver and
//!   principal axes ([`pca`]), z-scoring and the normalization by the spontaneous period
//!   ([`normalize`]), and the voxel grid over neuron positions ([`voxel`]), behind
//!   `preprocess.spontaneous` and `preprocess.voxelize`.

pub mod butterworth;
pub mod normalize;
pub mod pca;
pub mod resample;
pub mod voxel;
pub mod window;

/// A complex number, just enough for filter design (poles and zeros). Division is Smith's
/// algorithm, the one numpy uses, so designs round the way scipy's do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Complex {
    pub re: f64,
    pub im: f64,
}

impl Complex {
    pub const fn new(re: f64, im: f64) -> Self {
        Complex { re, im }
    }
    pub const fn real(re: f64) -> Self {
        Complex { re, im: 0.0 }
    }
    pub fn add(self, o: Complex) -> Complex {
        Complex::new(self.re + o.re, self.im + o.im)
    }
    pub fn sub(self, o: Complex) -> Complex {
        Complex::new(self.re - o.re, self.im - o.im)
    }
    pub fn mul(self, o: Complex) -> Complex {
        Complex::new(self.re * o.re - self.im * o.im, self.re * o.im + self.im * o.re)
    }
    pub fn scale(self, s: f64) -> Complex {
        Complex::new(self.re * s, self.im * s)
    }
    pub fn conj(self) -> Complex {
        Complex::new(self.re, -self.im)
    }
    pub fn div(self, o: Complex) -> Complex {
        let (a, b, c, d) = (self.re, self.im, o.re, o.im);
        if c.abs() >= d.abs() {
            let rat = d / c;
            let scl = 1.0 / (c + d * rat);
            Complex::new((a + b * rat) * scl, (b - a * rat) * scl)
        } else {
            let rat = c / d;
            let scl = 1.0 / (d + c * rat);
            Complex::new((a * rat + b) * scl, (b * rat - a) * scl)
        }
    }
    pub fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }
    /// Principal square root (C99 `csqrt`): non-negative real part, imaginary part with the sign of `im`.
    pub fn sqrt(self) -> Complex {
        if self.re == 0.0 && self.im == 0.0 {
            return Complex::new(0.0, self.im);
        }
        let t = ((self.abs() + self.re.abs()) / 2.0).sqrt();
        if self.re >= 0.0 { Complex::new(t, self.im / (2.0 * t)) } else { Complex::new(self.im.abs() / (2.0 * t), t.copysign(self.im)) }
    }
}

/// The fixed matrices of `tests/fixtures/natimg/spont_reference.py` and numpy 2 / scipy `eigsh`'s
/// results on them (the study's own steps), shared by the tests of [`pca`] and [`normalize`].
#[cfg(test)]
pub(crate) mod spont_reference {
    pub fn reference() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/natimg/spont_reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A JSON matrix as a row-major slice and its column count.
    pub fn matrix(v: &serde_json::Value) -> (Vec<f64>, usize) {
        let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
        let n = rows[0].len();
        (rows.into_iter().flatten().collect(), n)
    }

    pub fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs reference {y}");
        }
    }
}
