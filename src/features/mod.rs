//! Feature extraction kernels: IPFX-compatible spike detection and spike features, spike-train
//! (sweep) features. Plain functions on slices; the pipeline stages wrap them.

pub mod spike_train;
pub mod spikes;
pub mod stats;
pub mod cell;
pub mod membrane;
pub mod subthreshold;
pub mod trace;
pub mod units;
