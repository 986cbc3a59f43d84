//! Pipeline-core benchmarks.
//!
//! * `graph_vs_loop`: the same three stage operators (source.parquet -> transform.filter ->
//!   transform.select) on the same 2 M-row input, once as the actor graph (`run_pipeline`, a fresh
//!   run directory per iteration, every stage checkpointed) and once called in a plain loop that
//!   writes the same checkpoints. The ratio is the runtime's overhead (goal: within 5%).
//! * `checkpoint_write`: 10 M float32 samples in the table layout of the pyarrow peer bench
//!   (`../shared/peers/bench/bench_parquet.py`: value f32, sweep_id i32, sample_index i64, channel
//!   dictionary<int8, utf8>), written through `CheckpointWriter` (zstd). Compare with
//!   `scripts/bench_core.sh`, which runs pyarrow on the same table shape in the same session.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{DictionaryArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int8Type, Schema};
use criterion::{Criterion, criterion_group, criterion_main};
use neurostream::pipeline::parse_str;
use neurostream::checkpoint::CheckpointWriter;
use neurostream::runtime::{Mode, RunOptions, run_pipeline};
use neurostream::stage::{Emitter, Operator};
use parquet::arrow::ArrowWriter;

const ROWS: usize = 2_000_000;

fn write_input(dir: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("sweep", DataType::Int64, false),
        Field::new("stimulus_amplitude", DataType::Float64, false),
        Field::new("spike_count", DataType::Int64, false),
    ]));
    let f = std::fs::File::create(dir.join("input.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(f, schema.clone(), None).unwrap();
    for chunk in 0..(ROWS / 100_000) {
        let base = chunk * 100_000;
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values((0..100_000).map(|i| format!("cell{}", (base + i) / 40)))),
                Arc::new(Int64Array::from_iter_values((0..100_000).map(|i| ((base + i) % 40) as i64))),
                Arc::new(arrow::array::Float64Array::from_iter_values((0..100_000).map(|i| ((base + i) % 37) as f64 * 20.0 - 100.0))),
                Arc::new(Int64Array::from_iter_values((0..100_000).map(|i| ((base + i) * 7 % 23) as i64))),
            ],
        )
        .unwrap();
        w.write(&b).unwrap();
    }
    w.close().unwrap();
}

const PIPELINE: &str = r#"
[pipeline]
name = "bench"

[stages.sweeps]
kind = "source.parquet"
paths = ["input.parquet"]

[stages.spiking]
kind = "transform.filter"
inputs = ["sweeps"]
where = "spike_count > 3 and stimulus_amplitude >= 0"

[stages.keep]
kind = "transform.select"
inputs = ["spiking"]
columns = ["recording_id", "stimulus_amplitude", "spike_count"]
"#;

/// The same operators and checkpoint writes as the graph, called one after the other.
fn plain_loop(p: &neurostream::pipeline::Pipeline, out_dir: &Path) -> u64 {
    let mut ops: Vec<Operator> = p.stages.iter().map(|s| s.def.build(&s.ctx, &s.input_schemas, &s.output_schema).unwrap()).collect();
    let mut writers: Vec<CheckpointWriter> = p
        .stages
        .iter()
        .map(|s| CheckpointWriter::create(&out_dir.join(&s.name), "loop", s.output_schema.clone(), p.section.row_group_rows, true).unwrap())
        .collect();
    let (first, rest) = ops.split_at_mut(1);
    let Operator::Source(src) = &mut first[0] else { unreachable!() };
    let mut rows = 0;
    loop {
        let mut em = Emitter::default();
        let more = src.next(&mut em).unwrap();
        for b in em.into_batches() {
            writers[0].write(&b).unwrap();
            let mut current = vec![b];
            for (k, op) in rest.iter_mut().enumerate() {
                let Operator::Transform(t) = op else { unreachable!() };
                let mut next = Vec::new();
                for b in current {
                    let mut em = Emitter::default();
                    t.process(0, b, &mut em).unwrap();
                    for o in em.into_batches() {
                        writers[k + 1].write(&o).unwrap();
                        next.push(o);
                    }
                }
                current = next;
            }
            rows += current.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
        if !more {
            break;
        }
    }
    for w in writers {
        w.commit(|_| {}).unwrap();
    }
    rows
}

fn graph_vs_loop(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path());
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, PIPELINE).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("graph_vs_loop");
    g.sample_size(10);
    g.bench_function("actor_graph", |b| {
        b.iter(|| {
            let run = tempfile::tempdir_in(dir.path()).unwrap();
            let mut p = parse_str(&path, PIPELINE).unwrap();
            p.set_run_dir(run.path().to_path_buf());
            let r = rt.block_on(run_pipeline(&p, &RunOptions::new(Mode::Run, true))).unwrap();
            black_box(r.stage("keep").unwrap().counters.rows_out)
        })
    });
    g.bench_function("plain_loop", |b| {
        b.iter(|| {
            let run = tempfile::tempdir_in(dir.path()).unwrap();
            let p = parse_str(&path, PIPELINE).unwrap();
            black_box(plain_loop(&p, run.path()))
        })
    });
    g.finish();
}

fn checkpoint_write(c: &mut Criterion) {
    let n = 10_000_000usize;
    let batch_rows = 65_536;
    let schema = Arc::new(Schema::new(vec![
        Field::new("value", DataType::Float32, false),
        Field::new("sweep_id", DataType::Int32, false),
        Field::new("sample_index", DataType::Int64, false),
        Field::new("channel", DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)), false),
    ]));
    // A voltage-like waveform plus deterministic noise, as the peer's synthetic table.
    let mut batches = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch_rows.min(n - start);
        let value = Float32Array::from_iter_values((start..start + len).map(|i| {
            let t = (i % 50_000) as f32 / 50_000.0;
            -65.0 + 20.0 * (t * 40.0).sin() + ((i * 2_654_435_761) % 1000) as f32 * 5e-5
        }));
        let sweep = Int32Array::from_iter_values((start..start + len).map(|i| (i / 50_000) as i32));
        let idx = Int64Array::from_iter_values((start..start + len).map(|i| (i % 50_000) as i64));
        let keys = arrow::array::Int8Array::from_iter_values((start..start + len).map(|i| (i % 2) as i8));
        let channel = DictionaryArray::<Int8Type>::try_new(keys, Arc::new(StringArray::from(vec!["Vm", "Im"]))).unwrap();
        batches.push(RecordBatch::try_new(schema.clone(), vec![Arc::new(value), Arc::new(sweep), Arc::new(idx), Arc::new(channel)]).unwrap());
        start += len;
    }
    let bytes: usize = batches.iter().map(neurostream::stage::batch_bytes).sum();
    eprintln!("checkpoint_write: {n} rows, {:.1} MB in memory", bytes as f64 / 1e6);
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("checkpoint_write");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Bytes(bytes as u64));
    g.bench_function("10M_float32_zstd", |b| {
        b.iter(|| {
            let stage = tempfile::tempdir_in(dir.path()).unwrap();
            let mut w = CheckpointWriter::create(stage.path(), "bench", schema.clone(), 1 << 20, true).unwrap();
            for batch in &batches {
                w.write(batch).unwrap();
            }
            black_box(w.commit(|_| {}).unwrap().manifest.rows)
        })
    });
    g.finish();
}

criterion_group!(benches, graph_vs_loop, checkpoint_write);
criterion_main!(benches);
