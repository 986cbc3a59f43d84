//! Conductance-model throughput (docs/benchmarks.md; issue 3's goals are ratios against brian2 and
//! against the upstream STG numbers of specs/dic_stg.md):
//!
//! * `hh/traub_miles_10000x1s_1thread`: 10,000 independent Traub-Miles neurons (brian2's HH
//!   example model, bias 0.05..500 pA) for 1 s at dt = 0.01 ms on one thread — the brian2
//!   cpp_standalone peer scenario of `../shared/peers` (`peer_brian2_n10000.json`: 436,153
//!   spikes; the spike total is checked once before timing);
//! * `stg/one_cell_1s_dt0.025_tables`: one Liu-1998 STG cell (the reference set G_BURSTING of
//!   `../shared/ref/dic`) for 1 simulated second at dt = 0.025 ms with gate tables, the data-set
//!   setting; the spec's upstream numbers are per cell per simulated second.
//!
//! Run: `cargo bench --bench neuron_models`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use neurostream::simulate::hh::{self, HhDrive, HhParams, HhRun};
use neurostream::simulate::stg::{self, GateTables, SimulationConfig, StgParams};

fn hh_bench(c: &mut Criterion) {
    let n = 10_000;
    let bias: Vec<f64> = (0..n).map(|i| 500.0 * (i + 1) as f64 / n as f64).collect();
    let run = HhRun { dt_ms: 0.01, n_steps: 100_000, threshold_mv: -20.0, record_neurons: vec![], record_every_steps: 1 };
    let drive = HhDrive { bias_pa: &bias, waveform: None, waveform_gain: None };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let spikes: usize = pool.install(|| hh::simulate(&HhParams::traub_miles(), &run, &drive).unwrap()).spike_counts().iter().sum();
    assert_eq!(spikes, 436_153, "brian2 2.9.0 cpp_standalone gives 436,153 spikes on this network");
    let mut g = c.benchmark_group("hh");
    g.sample_size(10);
    g.bench_function("traub_miles_10000x1s_1thread", |b| {
        b.iter(|| pool.install(|| black_box(hh::simulate(&HhParams::traub_miles(), &run, &drive).unwrap().spike_steps.len())))
    });
    g.finish();
}

fn stg_bench(c: &mut Criterion) {
    let g_bursting = [2817.51002, 145.85252, 8.4270442, 14.5818832, 106.575443, 151.625062, 0.367655917, 0.00947267955];
    let config = SimulationConfig { dt_ms: 0.025, duration_ms: 1000.0, ..SimulationConfig::default() };
    let tables = GateTables::new(config.dt_ms).unwrap();
    let u0 = stg::default_initial_state();
    let params = StgParams::default();
    let mut g = c.benchmark_group("stg");
    g.bench_function("one_cell_1s_dt0.025_tables", |b| {
        b.iter(|| black_box(stg::simulate_cell_with_tables(&g_bursting, &u0, &params, &config, &tables).unwrap().spike_times_ms.len()))
    });
    g.finish();
}

criterion_group!(benches, hh_bench, stg_bench);
criterion_main!(benches);
