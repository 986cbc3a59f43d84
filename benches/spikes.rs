//! Spike detection speed on the 500,000-sample HH trace (50 kHz, 214 spikes; the same `v` as
//! `../shared/ref/peers/hh_trace_50kHz.npz`, stored losslessly in tests/fixtures/spikes).
//!
//! One unit of work = what the IPFX peer times: `detect_spikes` over the whole trace with IPFX's
//! defaults (10 kHz and 1 kHz Bessel filtfilt, dV/dt, detection, thresholds, troughs, widths, ADPs).
//! Besides criterion's wall-time statistics, the run ends with one line
//! `neurostream-cpu median_cpu_s=<s> repeats=<n> spikes=<n>`: the median process CPU time of single
//! calls (Linux `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`), the figure the peers report
//! (`time.process_time`), which scripts/bench_spikes_vs_ipfx.sh divides by theirs.
//!
//! Needs in Cargo.toml: `[[bench]] name = "spikes"  harness = false`.

use std::hint::black_box;

use criterion::Criterion;
use neurostream::features::spikes::{SpikeDetectionParams, SpikeWorkspace, Timebase, detect_spikes_with};

const DT_S: f64 = 2e-5;

/// The HH trace's voltage (mV): float64 little-endian bytes, byte-shuffled, zstd.
fn load_hh_v() -> Vec<f64> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spikes/hh_v_50kHz.f64shuf.zst");
    let raw = std::fs::read(path).expect("HH fixture");
    let shuffled = zstd::decode_all(&raw[..]).expect("zstd");
    let n = shuffled.len() / 8;
    (0..n)
        .map(|k| {
            let mut b = [0u8; 8];
            for (j, byte) in b.iter_mut().enumerate() {
                *byte = shuffled[j * n + k];
            }
            f64::from_le_bytes(b)
        })
        .collect()
}

fn run(ws: &mut SpikeWorkspace, v: &[f64], p: &SpikeDetectionParams) -> usize {
    let end = (v.len() - 1) as f64 * DT_S;
    detect_spikes_with(ws, Timebase::Uniform { t0_s: 0.0, dt_s: DT_S }, v, None, Some(0.0), Some(end), p)
        .expect("detection")
        .len()
}

/// CPU time of this process so far, s: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, what Python's
/// `time.process_time()` (the peers' clock) reads. (/proc schedstat is only updated at scheduler
/// ticks, 4 ms here, too coarse for single calls.)
#[cfg(target_os = "linux")]
fn process_cpu_s() -> Option<f64> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock_id: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the struct we pass (libc is linked into every Rust binary
    // on Linux; the layout is the x86_64/aarch64 one, 64-bit time_t and long).
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

#[cfg(not(target_os = "linux"))]
fn process_cpu_s() -> Option<f64> {
    None
}

fn main() {
    let v = load_hh_v();
    let p = SpikeDetectionParams::default();
    let mut ws = SpikeWorkspace::new();
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("detect_spikes_hh_50khz_500k_samples", |b| b.iter(|| run(&mut ws, black_box(&v), &p)));
    c.final_summary();

    // The peers' protocol: warm-up, then the median CPU time of single calls.
    let repeats = 31;
    let mut spikes = run(&mut ws, &v, &p);
    let mut cpu = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let (Some(t0), n, Some(t1)) = (process_cpu_s(), run(&mut ws, black_box(&v), &p), process_cpu_s()) else {
            return;
        };
        spikes = n;
        cpu.push(t1 - t0);
    }
    cpu.sort_by(f64::total_cmp);
    println!("neurostream-cpu median_cpu_s={:.6} repeats={repeats} spikes={spikes}", cpu[repeats / 2]);
}
