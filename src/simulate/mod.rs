//! Neuron-model simulation kernels: the Allen GLIF family, Hodgkin-Huxley, and the Liu 1998 STG
//! conductance-based model; stimulus protocols and parameter sweeps. Plain functions on slices,
//! independent of Arrow and actors, so they can be tested against the reference tools and benchmarked alone.

pub mod glif;
pub mod glif_params;
pub mod hh;
pub mod stg;
pub mod stimulus;
pub mod sweep;
