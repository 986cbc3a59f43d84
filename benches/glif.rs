//! GLIF sweep throughput: 3,125 configs (a 5^5 grid around the AllenSDK reference configs of
//! GLIF1, GLIF3 and GLIF5) × the 50,000-sample reference stimulus, spike counts only
//! (`glif::sweep_spike_counts`, rayon over configs). Needs in Cargo.toml:
//!
//! ```toml
//! [[bench]]
//! name = "glif"
//! harness = false
//! ```
//!
//! Run: `cargo bench --bench glif`. Compare with AllenSDK through
//! `scripts/bench_glif_vs_allensdk.sh` (CPU time per config, same configs and stimulus).

use std::fs::File;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use neurostream::simulate::glif::{self, GlifConfig};
use neurostream::simulate::sweep::{SweepMethod, SweepParam, SweepSpec};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/glif").join(rel)
}

/// The reference OU stimulus (A, 50,000 samples), decoded from the fixture's lossless d2z
/// encoding (tests/fixtures/glif/README.md: zstd, byte planes, zigzag, two prefix sums).
fn stimulus() -> Vec<f64> {
    let raw = zstd::decode_all(File::open(fixture("glif_stimulus.npy.d2z.zst")).expect("fixture")).expect("zstd");
    let hl = u16::from_le_bytes([raw[8], raw[9]]) as usize;
    let data = &raw[10 + hl..];
    let n = data.len() / 8;
    let mut words: Vec<u64> = (0..n)
        .map(|i| (0..8).fold(0u64, |w, p| w | (u64::from(data[p * n + i]) << (8 * p))))
        .map(|z| (z >> 1) ^ (z & 1).wrapping_neg())
        .collect();
    for _ in 0..2 {
        for i in 1..words.len() {
            words[i] = words[i].wrapping_add(words[i - 1]);
        }
    }
    words.into_iter().map(f64::from_bits).collect()
}

/// 3,125 configs: R_input, C and th_inf × {0.8 … 1.2}, El and init_voltage ∈ {−2 … 2} mV.
fn sweep_configs(level: u8) -> Vec<GlifConfig> {
    let base = glif::load_neuron_config(&fixture(&format!("glif{level}_neuron_config.json"))).expect("config");
    let factors = || Some(vec![0.8, 0.9, 1.0, 1.1, 1.2]);
    let offsets = || Some(vec![-0.002, -0.001, 0.0, 0.001, 0.002]);
    let p = |name: &str, values: Option<Vec<f64>>, factors: Option<Vec<f64>>| SweepParam {
        name: name.into(),
        values,
        factors,
        min: None,
        max: None,
        relative: false,
    };
    let spec = SweepSpec {
        method: SweepMethod::Grid,
        n: None,
        params: vec![
            p("R_input", None, factors()),
            p("C", None, factors()),
            p("th_inf", None, factors()),
            p("El", offsets(), None),
            p("init_voltage", offsets(), None),
        ],
    };
    let plan = spec.expand(0);
    (0..plan.len()).map(|i| plan.config(&base, i).expect("valid sweep point").1).collect()
}

fn bench(c: &mut Criterion) {
    let stim = stimulus();
    let mut group = c.benchmark_group("glif_sweep_3125x50000_counts");
    group.sample_size(10);
    for level in [1u8, 3, 5] {
        let configs = sweep_configs(level);
        assert_eq!(configs.len(), 3125);
        group.throughput(Throughput::Elements((configs.len() * stim.len()) as u64));
        group.bench_function(format!("GLIF{level}"), |b| {
            b.iter(|| {
                let counts = glif::sweep_spike_counts(black_box(&configs), black_box(&stim)).expect("stimulus");
                black_box(counts.iter().filter_map(|r| r.as_ref().ok()).map(|c| c.n_spikes).sum::<usize>())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
