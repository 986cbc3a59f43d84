//! File formats: readers for the recordings scientists bring (ABF, NWB, MATLAB, NumPy) and the
//! `inspect` summaries of them.
pub mod abf;
pub mod allen;
mod hdf5;
pub mod matlab;
pub mod npy;
pub mod nwb;
