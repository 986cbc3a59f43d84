//! Signal-preprocessing kernels for sampled traces: Butterworth filtering as second-order
//! sections ([`butterworth`]), rational polyphase resampling ([`resample`]) and the sample
//! spans of fixed windows and stimulus-locked epochs ([`window`]).
//!
//! Plain functions on `f64` slices, independent of Arrow and actors, so each is tested alone
//! against scipy's numbers (tests/fixtures/sigproc/make_ref.py); the `preprocess.filter`,
//! `preprocess.resample` and `preprocess.window` stages (src/stages/preprocess_signal.rs) apply
//! them row by row to list columns.

pub mod butterworth;
pub mod resample;
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
