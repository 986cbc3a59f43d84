//! GLIF configuration fields by their Allen `neuron_config.json` names, in SI units: what a
//! [`crate::simulate::sweep`] over GLIF configs reads and writes, and the unit of each.
//!
//! One name table serves reads and writes ([`access`]), so a name that can be read can be swept.

use super::glif::{GlifConfig, GlifError, ThresholdDynamics, ThresholdReset, VoltageReset};
use super::sweep::{SweepError, Sweepable};

impl Sweepable for GlifConfig {
    type Invalid = GlifError;

    /// Reads a field on a scratch copy (one name table for reads and writes).
    fn get(&self, name: &str) -> Result<f64, SweepError> {
        access(&mut self.clone(), name, None)
    }

    /// Writes a field. `a_spike` / `b_spike` set both the threshold dynamics and the threshold
    /// reset (Allen configs carry the same values in both).
    fn set(&mut self, name: &str, value: f64) -> Result<(), SweepError> {
        access(self, name, Some(value)).map(|_| ())
    }

    fn check(&self) -> Result<(), GlifError> {
        self.validate("config")
    }
}

/// SI unit of a field, for column metadata (`None` for dimensionless coefficients).
pub fn unit(name: &str) -> Option<&'static str> {
    Some(match name {
        "R_input" => "Ohm",
        "C" => "F",
        "El" | "th_inf" | "init_voltage" | "init_threshold" | "a_spike" | "voltage_reset_b" => "V",
        "dt" => "s",
        "spike_cut_length" => "samples",
        "b_spike" | "a_voltage" | "b_voltage" => "1/s",
        n if n.starts_with("asc_amp_array[") => "A",
        n if n.starts_with("asc_tau_array[") => "s",
        _ => return None,
    })
}

/// `Some(Ok(j))` for `prefix[j]`, `Some(Err(()))` for a malformed index, `None` for another name.
fn indexed(name: &str, prefix: &str) -> Option<Result<usize, ()>> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('[')?;
    Some(rest.strip_suffix(']').and_then(|s| s.parse().ok()).ok_or(()))
}

/// Gets (value = None) or sets a field and returns its value. A failed set leaves `c` unchanged.
fn access(c: &mut GlifConfig, name: &str, value: Option<f64>) -> Result<f64, SweepError> {
    let perr = |reason: &str| SweepError::new(name, reason);
    fn rw(slot: &mut f64, value: Option<f64>) -> f64 {
        if let Some(v) = value {
            *slot = v;
        }
        *slot
    }
    let vec_slot = |v: &mut Vec<f64>, prefix: &str| -> Result<f64, SweepError> {
        match indexed(name, prefix) {
            Some(Ok(j)) if j < v.len() => Ok(rw(&mut v[j], value)),
            Some(Ok(j)) => Err(perr(&format!("index {j} out of range: the config has {} after-spike currents", v.len()))),
            _ => Err(perr("expected an index, e.g. `asc_amp_array[0]`")),
        }
    };
    let out = match name {
        "R_input" => rw(&mut c.r_input_ohm, value),
        "C" => rw(&mut c.c_farad, value),
        "El" => rw(&mut c.el_v, value),
        "th_inf" => rw(&mut c.th_inf_v, value),
        "dt" => rw(&mut c.dt_s, value),
        "init_voltage" => rw(&mut c.init_voltage_v, value),
        "init_threshold" => rw(&mut c.init_threshold_v, value),
        "spike_cut_length" => {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1e9) {
                    return Err(perr(&format!("{v} is not a whole number of samples")));
                }
                c.spike_cut_length = v as usize;
            }
            c.spike_cut_length as f64
        }
        "coeffs.th_inf" => rw(&mut c.coeffs.th_inf, value),
        "coeffs.C" => rw(&mut c.coeffs.c, value),
        "coeffs.G" => rw(&mut c.coeffs.g, value),
        "coeffs.a" => rw(&mut c.coeffs.a, value),
        "coeffs.b" => rw(&mut c.coeffs.b, value),
        n if n.starts_with("asc_amp_array[") => vec_slot(&mut c.asc_amp_a, "asc_amp_array")?,
        n if n.starts_with("asc_tau_array[") => vec_slot(&mut c.asc_tau_s, "asc_tau_array")?,
        n if n.starts_with("coeffs.asc_amp_array[") => vec_slot(&mut c.coeffs.asc_amp, "coeffs.asc_amp_array")?,
        "a_spike" | "b_spike" | "a_voltage" | "b_voltage" => threshold_component(c, name, value)?,
        "voltage_reset_a" | "voltage_reset_b" => match &mut c.voltage_reset {
            VoltageReset::VBefore { a, b_v } => rw(if name == "voltage_reset_a" { a } else { b_v }, value),
            VoltageReset::Zero => return Err(perr("the config's voltage reset is `zero` (no a, b)")),
        },
        _ => return Err(perr("unknown parameter (see the `sweep.params.name` documentation for the list)")),
    };
    Ok(out)
}

/// The threshold components `a_spike`, `b_spike`, `a_voltage`, `b_voltage` (absent when the
/// threshold dynamics are `inf`); a write of `a_spike` / `b_spike` also updates the threshold reset.
fn threshold_component(c: &mut GlifConfig, name: &str, value: Option<f64>) -> Result<f64, SweepError> {
    let (a_s, b_s, a_v, b_v) = match &mut c.threshold_dynamics {
        ThresholdDynamics::SpikeComponent { a_spike_v, b_spike_per_s, a_voltage_per_s, b_voltage_per_s }
        | ThresholdDynamics::ThreeComponentsExact { a_spike_v, b_spike_per_s, a_voltage_per_s, b_voltage_per_s } => {
            (a_spike_v, b_spike_per_s, a_voltage_per_s, b_voltage_per_s)
        }
        ThresholdDynamics::Inf => return Err(SweepError::new(name, "the config's threshold dynamics are `inf` (no threshold components)")),
    };
    let slot = match name {
        "a_spike" => a_s,
        "b_spike" => b_s,
        "a_voltage" => a_v,
        _ => b_v,
    };
    if let Some(v) = value {
        *slot = v;
    }
    let v = *slot;
    if let (Some(x), ThresholdReset::ThreeComponents { a_spike_v, b_spike_per_s }) = (value, &mut c.threshold_reset) {
        match name {
            "a_spike" => *a_spike_v = x,
            "b_spike" => *b_spike_per_s = x,
            _ => {}
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glif(level: u8) -> GlifConfig {
        let path = format!("{}/tests/fixtures/glif/glif{level}_neuron_config.json", env!("CARGO_MANIFEST_DIR"));
        super::super::glif::load_neuron_configs(std::path::Path::new(&path)).unwrap().remove(0)
    }

    #[test]
    fn every_named_field_reads_back_what_was_written() {
        let mut c = glif(5);
        for name in ["R_input", "C", "El", "th_inf", "dt", "init_voltage", "coeffs.G", "asc_amp_array[1]", "a_spike", "b_voltage", "voltage_reset_b"] {
            let before = c.get(name).unwrap();
            c.set(name, before * 1.5 + 1e-3).unwrap();
            assert_eq!(c.get(name).unwrap(), before * 1.5 + 1e-3, "{name}");
        }
        assert!(unit("R_input") == Some("Ohm") && unit("asc_tau_array[0]") == Some("s") && unit("coeffs.G").is_none());
    }

    #[test]
    fn bad_names_and_values_are_errors_that_leave_the_config_unchanged() {
        let mut c = glif(1);
        let before = c.clone();
        assert_eq!(c.set("nonsense", 1.0).unwrap_err().to_string(), "sweep parameter `nonsense`: unknown parameter (see the `sweep.params.name` documentation for the list)");
        assert!(c.set("asc_amp_array[9]", 1.0).unwrap_err().reason.contains("out of range"));
        assert!(c.set("asc_amp_array[x]", 1.0).unwrap_err().reason.contains("expected an index"));
        assert!(c.set("spike_cut_length", 2.5).unwrap_err().reason.contains("whole number"));
        assert!(c.set("a_spike", 1.0).unwrap_err().reason.contains("`inf`"), "GLIF1 has no threshold components");
        assert_eq!(c, before);
        c.set("C", -1.0).unwrap();
        assert!(c.check().is_err(), "a negative capacitance is refused");
    }
}
