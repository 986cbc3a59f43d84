//! Fuzz target: `AbfFile::from_bytes` on arbitrary bytes must return `Ok` or an `AbfError`,
//! never panic; and for every accepted file, reading every ADC sweep and every DAC command
//! (samples and segments) of every sweep must also return `Ok` or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The reader itself, compiled from the repository source (the same file the crate uses as
/// `neurostream::formats::abf`), so this target does not build the whole crate.
#[path = "../../src/formats/abf.rs"]
#[allow(dead_code)]
mod abf;

use abf::AbfFile;

fuzz_target!(|data: &[u8]| {
    let Ok(abf) = AbfFile::from_bytes(data, "fuzz.abf") else {
        return;
    };
    let _ = abf.sample_interval_s();
    let _ = (abf.protocol(), abf.protocol_path(), abf.version(), abf.epochs().len());
    for c in 0..abf.channel_count() {
        for s in 0..abf.sweep_count() {
            let trace = abf.sweep_adc(c, s).expect("in-range sweep_adc must succeed");
            assert_eq!(trace.len(), abf.samples_per_sweep());
        }
    }
    for d in 0..abf.dac_channels().len() {
        for s in 0..abf.sweep_count() {
            if let Ok(cmd) = abf.sweep_command(d, s) {
                assert_eq!(cmd.len(), abf.samples_per_sweep());
            }
            let _ = abf.sweep_command_f32(d, s);
            let _ = abf.sweep_command_segments(d, s);
        }
    }
    // Out-of-range requests are errors, not panics.
    assert!(abf.sweep_adc(abf.channel_count(), 0).is_err());
    assert!(abf.sweep_adc(0, abf.sweep_count()).is_err());
    assert!(abf.sweep_command(abf.dac_channels().len(), 0).is_err());
});
