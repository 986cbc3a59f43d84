//! IPFX's spike-detection options, declared once for every stage that detects spikes
//! (`features.spikes`, `features.sweep`, `features.cell`), and the plain counterpart macro that lets
//! a config-declaring macro take either.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::features::spikes::SpikeDetectionParams;

/// A filter cutoff: a number of kHz, or `"none"` (no filter; also what 0 means).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Cutoff {
    Khz(f64),
    Off(NoFilter),
}

/// The word `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoFilter {
    None,
}

impl Cutoff {
    pub(crate) fn khz(self) -> Option<f64> {
        match self {
            Cutoff::Khz(k) => Some(k),
            Cutoff::Off(_) => None,
        }
    }
}

pub(crate) fn d_filter() -> Cutoff {
    Cutoff::Khz(10.0)
}
pub(crate) fn d_heavy() -> Cutoff {
    Cutoff::Khz(1.0)
}
macro_rules! default_fns {
    ($($f:ident),*) => { $( pub(crate) fn $f() -> f64 { SpikeDetectionParams::default().$f } )* };
}
pub(crate) mod defaults {
    use super::SpikeDetectionParams;
    default_fns!(
        dv_cutoff_v_per_s, max_interval_s, min_height_mv, min_peak_mv, thresh_frac, reject_at_stim_start_interval_s,
        clip_tolerance_mv, term_frac, adp_thresh_v_per_s, detour_tolerance_mv, flat_interval_s, adp_max_delta_t_s,
        adp_max_delta_v_mv
    );
}

/// Declares a stage config struct (serde, `deny_unknown_fields`, JSON schema) holding the given
/// fields. The plain counterpart of `ipfx_detection_struct!`, so that a macro declaring stage
/// configs can take either as a parameter.
macro_rules! plain_config_struct {
    ($(#[$meta:meta])* $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($fields)*
        }
    };
}
pub(crate) use plain_config_struct;

/// Declares a stage config struct with the given fields followed by every IPFX spike-detection
/// option (IPFX 2.1.2 names and defaults), and its `spike_detection()` conversion. One
/// declaration for every stage that detects spikes (`features.spikes`, `features.sweep`,
/// `features.cell`): serde's `deny_unknown_fields` does not combine with `flatten`, so the options
/// cannot be a nested struct, and copying them per stage let their docs and defaults drift.
macro_rules! ipfx_detection_struct {
    ($(#[$meta:meta])* $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($fields)*
            /// Cutoff of the 4-pole Bessel low-pass (forward-backward) applied before dV/dt (IPFX
            /// `filter`, 10), or "none". Must be below half the sampling rate: use "none" or e.g. 5
            /// for 20 kHz recordings [kHz].
            #[serde(default = "crate::stages::features::detection::d_filter")]
            pub filter_khz: crate::stages::features::detection::Cutoff,
            /// dV/dt whose up-crossing marks a putative spike (IPFX `dv_cutoff`, 20) [V/s].
            #[serde(default = "crate::stages::features::detection::defaults::dv_cutoff_v_per_s")]
            pub dv_cutoff_v_per_s: f64,
            /// Longest threshold-to-peak time (IPFX `max_interval`, 0.005) [s].
            #[serde(default = "crate::stages::features::detection::defaults::max_interval_s")]
            pub max_interval_s: f64,
            /// Smallest threshold-to-peak height (IPFX `min_height`, 2) [mV].
            #[serde(default = "crate::stages::features::detection::defaults::min_height_mv")]
            pub min_height_mv: f64,
            /// Smallest peak voltage (IPFX `min_peak`, -30) [mV].
            #[serde(default = "crate::stages::features::detection::defaults::min_peak_mv")]
            pub min_peak_mv: f64,
            /// Threshold at this fraction of the mean maximum upstroke (IPFX `thresh_frac`, 0.05) [1].
            #[serde(default = "crate::stages::features::detection::defaults::thresh_frac")]
            pub thresh_frac: f64,
            /// Reject spikes within this time after the window start, 0 = off (IPFX
            /// `reject_at_stim_start_interval`, 0) [s].
            #[serde(default = "crate::stages::features::detection::defaults::reject_at_stim_start_interval_s")]
            pub reject_at_stim_start_interval_s: f64,
            /// The last spike is clipped unless V returns to threshold + this (IPFX `tol`, 1) [mV].
            #[serde(default = "crate::stages::features::detection::defaults::clip_tolerance_mv")]
            pub clip_tolerance_mv: f64,
            /// Cutoff of the heavier Bessel filter for the ADP search (IPFX `heavy_filter`, 1), or
            /// "none" [kHz].
            #[serde(default = "crate::stages::features::detection::d_heavy")]
            pub heavy_filter_khz: crate::stages::features::detection::Cutoff,
            /// Fast trough at dV/dt >= this fraction of the downstroke (IPFX `term_frac`, 0.01) [1].
            #[serde(default = "crate::stages::features::detection::defaults::term_frac")]
            pub term_frac: f64,
            /// Heavy-filtered dV/dt that starts an ADP (IPFX `adp_thresh`, 0.5) [V/s].
            #[serde(default = "crate::stages::features::detection::defaults::adp_thresh_v_per_s")]
            pub adp_thresh_v_per_s: f64,
            /// Minimum drop for a "detour" reset (IPFX trough-details `tol`, 0.5) [mV].
            #[serde(default = "crate::stages::features::detection::defaults::detour_tolerance_mv")]
            pub detour_tolerance_mv: f64,
            /// The ADP rise must start within this time of the fast trough (IPFX `flat_interval`,
            /// 0.002) [s].
            #[serde(default = "crate::stages::features::detection::defaults::flat_interval_s")]
            pub flat_interval_s: f64,
            /// Largest fast-trough-to-ADP time (IPFX `adp_max_delta_t`, 0.005) [s].
            #[serde(default = "crate::stages::features::detection::defaults::adp_max_delta_t_s")]
            pub adp_max_delta_t_s: f64,
            /// Largest fast-trough-to-ADP rise (IPFX `adp_max_delta_v`, 10) [mV].
            #[serde(default = "crate::stages::features::detection::defaults::adp_max_delta_v_mv")]
            pub adp_max_delta_v_mv: f64,
        }

        impl $name {
            /// IPFX's detection parameters, from this stage's options.
            pub(crate) fn spike_detection(&self) -> crate::features::spikes::SpikeDetectionParams {
                crate::features::spikes::SpikeDetectionParams {
                    filter_khz: self.filter_khz.khz(),
                    dv_cutoff_v_per_s: self.dv_cutoff_v_per_s,
                    max_interval_s: self.max_interval_s,
                    min_height_mv: self.min_height_mv,
                    min_peak_mv: self.min_peak_mv,
                    thresh_frac: self.thresh_frac,
                    reject_at_stim_start_interval_s: self.reject_at_stim_start_interval_s,
                    clip_tolerance_mv: self.clip_tolerance_mv,
                    heavy_filter_khz: self.heavy_filter_khz.khz(),
                    term_frac: self.term_frac,
                    adp_thresh_v_per_s: self.adp_thresh_v_per_s,
                    detour_tolerance_mv: self.detour_tolerance_mv,
                    flat_interval_s: self.flat_interval_s,
                    adp_max_delta_t_s: self.adp_max_delta_t_s,
                    adp_max_delta_v_mv: self.adp_max_delta_v_mv,
                }
            }
        }
    };
}
pub(crate) use ipfx_detection_struct;
