//! Signal preprocessing against scipy, and the three stages through the real binary.
//!
//! Reference values: tests/fixtures/sigproc/make_ref.py (scipy 1.17.1 `butter(output="sos")`,
//! `sosfiltfilt`, `sosfilt`, `resample_poly`) on sweep 8 of the real ABF recording
//! tests/fixtures/abf/171116sh_0018.abf (20 kHz, a spike and a current step in the segment).

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{Float32Type, Float64Type};
use neurostream::preprocess::butterworth::{Band, butter_sos};
use neurostream::preprocess::resample::{Padding, Resampler};

use crate::support::{cli_text, f32_list, f64_col, fixture, i64_col, read_parquet, workspace, write_parquet};

fn npy_f64(name: &str) -> Vec<f64> {
    let a: ndarray::Array1<f64> = ndarray_npy::read_npy(fixture("sigproc").join(name)).unwrap();
    a.to_vec()
}

fn segment() -> Vec<f64> {
    let a: ndarray::Array1<f32> = ndarray_npy::read_npy(fixture("sigproc/segment.npy")).unwrap();
    a.iter().map(|&v| f64::from(v)).collect()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("sigproc/ref.json")).unwrap()).unwrap()
}

/// max |got − want| / max |want|: the error relative to the signal's scale.
fn rel_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale
}

fn wn(hz: f64) -> f64 {
    2.0 * hz / 20_000.0
}

#[test]
fn butterworth_sections_and_zero_phase_filtering_match_scipy_on_a_real_sweep() {
    let r = reference();
    let x = segment();
    let designs = [
        ("low4_1000", 4, Band::Lowpass(wn(1000.0))),
        ("high3_10", 3, Band::Highpass(wn(10.0))),
        ("band2_300_3000", 2, Band::Bandpass(wn(300.0), wn(3000.0))),
    ];
    for (name, order, band) in designs {
        let sos = butter_sos(order, band).unwrap();
        let want: Vec<Vec<f64>> = serde_json::from_value(r["sos"][name].clone()).unwrap();
        assert_eq!(sos.sections.len(), want.len(), "{name}");
        for (g, w) in sos.sections.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() <= 1e-13 * b.abs().max(1.0), "{name}: section {g:?} vs scipy {w:?}");
            }
        }
        assert_eq!(sos.padlen() as u64, r["padlen"][name].as_u64().unwrap(), "{name}: sosfiltfilt pad length");
        let y = sos.filtfilt(&x).unwrap();
        let err = rel_error(&y, &npy_f64(&format!("filtfilt_{name}.npy")));
        eprintln!("sosfiltfilt {name}: max relative error {err:.2e}");
        // Same padding, same initial conditions, same recursion: only rounding differs.
        assert!(err < 1e-12, "{name}: {err}");
    }
    let sos = butter_sos(4, Band::Lowpass(wn(1000.0))).unwrap();
    let err = rel_error(&sos.filter_causal(&x).0, &npy_f64("causal_low4_1000.npy"));
    eprintln!("sosfilt (zi = sosfilt_zi * x[0]) low4_1000: max relative error {err:.2e}");
    assert!(err < 1e-12, "{err}");
}

#[test]
fn polyphase_resampling_matches_scipy_resample_poly_on_a_real_sweep() {
    let x = segment();
    for (name, up, down, pad) in [
        ("resample_1_4_mean", 1, 4, Padding::Mean),
        ("resample_2_5_mean", 2, 5, Padding::Mean),
        ("resample_3_2_median", 3, 2, Padding::Median),
        ("resample_1_4_zero", 1, 4, Padding::Zero),
    ] {
        let y = Resampler::new(up, down).apply(&x, pad);
        let err = rel_error(&y, &npy_f64(&format!("{name}.npy")));
        eprintln!("resample_poly {name}: {} samples, max relative error {err:.2e}", y.len());
        assert!(err < 1e-12, "{name}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Through the binary
// ---------------------------------------------------------------------------------------------

fn row_of(b: &RecordBatch, sweep: i64, chunk: Option<i64>) -> usize {
    let sweeps = i64_col(b, "sweep");
    let chunks = chunk.map(|_| i64_col(b, "chunk"));
    (0..b.num_rows()).find(|&r| sweeps[r] == sweep && chunks.as_ref().is_none_or(|c| Some(c[r]) == chunk)).unwrap()
}

/// A workspace with the real recording beside the pipeline.
fn project(pipeline: &str) -> tempfile::TempDir {
    workspace(pipeline, &[("abf/171116sh_0018.abf", "171116sh_0018.abf")])
}

const PIPELINE: &str = r#"
[pipeline]
name = "sigproc"

[stages.sweeps]
kind = "ingest.abf"
paths = ["171116sh_0018.abf"]

[stages.lowpass]
kind = "preprocess.filter"
inputs = ["sweeps"]
lowpass_hz = 2000
columns = ["response"]

[stages.at_5khz]
kind = "preprocess.resample"
inputs = ["lowpass"]
output_rate_hz = 5000

[stages.windows]
kind = "preprocess.window"
inputs = ["at_5khz"]
length_s = 0.1

[stages.lowpass_out]
kind = "sink.parquet"
inputs = ["lowpass"]
path = "out/lowpass.parquet"

[stages.resampled_out]
kind = "sink.parquet"
inputs = ["at_5khz"]
path = "out/resampled.parquet"

[stages.windows_out]
kind = "sink.parquet"
inputs = ["windows"]
path = "out/windows.parquet"
"#;

/// ingest.abf → filter → resample → window on a real recording: the filtered and resampled
/// sweep 8 equal scipy's (through float32, as stored), the rate column says 5 kHz, and the
/// windows are the resampled trace cut every 0.1 s with their keys and start times.
#[test]
fn filter_resample_window_pipeline_on_a_real_abf_agrees_with_scipy() {
    let dir = project(PIPELINE);
    let (code, text) = cli_text(dir.path(), &["run", "p.toml"]);
    assert_eq!(code, 0, "{text}");
    let r = reference();
    let p = &r["pipeline"];
    let lowpass = read_parquet(&dir.path().join("out/lowpass.parquet"));
    let row = row_of(&lowpass, 8, None);
    let got = f32_list(&lowpass, "response", row);
    assert_eq!(got.len(), 60_000);
    let want: Vec<f32> = serde_json::from_value(p["filtered_every_50"].clone()).unwrap();
    let mut worst = 0.0f32;
    for (k, w) in want.iter().enumerate() {
        let g = got[k * 50];
        worst = worst.max((g - w).abs() / w.abs().max(1.0));
    }
    eprintln!("pipeline sosfiltfilt vs scipy (float32 outputs): max relative difference {worst:.2e}");
    assert!(worst <= f32::EPSILON, "filtered sweep 8 differs from scipy by {worst} (more than one float32 step)");

    let resampled = read_parquet(&dir.path().join("out/resampled.parquet"));
    assert!(f64_col(&resampled, "sampling_rate_hz").iter().all(|&v| v == 5000.0));
    let schema = resampled.schema();
    assert_eq!(schema.field_with_name("sampling_rate_hz").unwrap().metadata().get("unit").map(String::as_str), Some("Hz"));
    assert_eq!(schema.field_with_name("response").unwrap().metadata().get("unit").map(String::as_str), Some("mV"));
    let row = row_of(&resampled, 8, None);
    let got = f32_list(&resampled, "response", row);
    assert_eq!(got.len() as u64, p["resampled_len"].as_u64().unwrap());
    assert_eq!(f32_list(&resampled, "stimulus", row).len(), got.len(), "the stimulus is resampled with the response");
    let want: Vec<f32> = serde_json::from_value(p["resampled_every_25"].clone()).unwrap();
    let mut worst = 0.0f32;
    for (k, w) in want.iter().enumerate() {
        worst = worst.max((got[k * 25] - w).abs() / w.abs().max(1.0));
    }
    eprintln!("pipeline resample_poly vs scipy (float32 outputs): max relative difference {worst:.2e}");
    assert!(worst <= 2.0 * f32::EPSILON, "resampled sweep 8 differs from scipy by {worst}");

    let windows = read_parquet(&dir.path().join("out/windows.parquet"));
    // 17 sweeps of 3 s, 30 windows of 0.1 s each.
    assert_eq!(windows.num_rows(), 17 * 30);
    let sweeps = i64_col(&windows, "sweep");
    let index = i64_col(&windows, "window");
    let starts = f64_col(&windows, "window_start_s");
    let rows8: Vec<usize> = (0..windows.num_rows()).filter(|&i| sweeps[i] == 8).collect();
    assert_eq!(rows8.len(), 30);
    for (k, &i) in rows8.iter().enumerate() {
        assert_eq!(index[i], k as i64);
        assert!((starts[i] - 0.1 * k as f64).abs() < 1e-12, "{}", starts[i]);
        let w = f32_list(&windows, "response", i);
        assert_eq!(w, got[k * 500..(k + 1) * 500].to_vec(), "window {k} is the resampled trace's samples");
        assert_eq!(f32_list(&windows, "stimulus", i).len(), 500);
    }
    assert!(windows.column_by_name("recording_id").is_some() && windows.column_by_name("file").is_some(), "source keys kept");
}

/// Chunked reading (0.5 s chunks, 0.1 s overlap): causal filtering carries its state across
/// chunks and equals the whole-sweep pass; zero-phase filtering per chunk row differs from the
/// whole sweep only by the edge transient left after 0.1 s; windows are cut once each.
#[test]
fn chunked_sweeps_filter_causally_as_if_whole_and_window_once() {
    let pipeline = r#"
[pipeline]
name = "chunks"

[stages.whole]
kind = "ingest.abf"
paths = ["171116sh_0018.abf"]

[stages.chunks]
kind = "ingest.abf"
paths = ["171116sh_0018.abf"]
chunk_s = 0.5
chunk_overlap_s = 0.1
chunks_per_batch = 3

[stages.causal_whole]
kind = "preprocess.filter"
inputs = ["whole"]
lowpass_hz = 2000
mode = "causal"

[stages.causal_chunks]
kind = "preprocess.filter"
inputs = ["chunks"]
lowpass_hz = 2000
mode = "causal"

[stages.zero_whole]
kind = "preprocess.filter"
inputs = ["whole"]
lowpass_hz = 2000

[stages.zero_chunks]
kind = "preprocess.filter"
inputs = ["chunks"]
lowpass_hz = 2000

[stages.windows_whole]
kind = "preprocess.window"
inputs = ["whole"]
length_s = 0.08
step_s = 0.03

[stages.windows_chunks]
kind = "preprocess.window"
inputs = ["chunks"]
length_s = 0.08
step_s = 0.03

[stages.o1]
kind = "sink.parquet"
inputs = ["causal_whole"]
path = "out/causal_whole.parquet"
[stages.o2]
kind = "sink.parquet"
inputs = ["causal_chunks"]
path = "out/causal_chunks.parquet"
[stages.o3]
kind = "sink.parquet"
inputs = ["zero_whole"]
path = "out/zero_whole.parquet"
[stages.o4]
kind = "sink.parquet"
inputs = ["zero_chunks"]
path = "out/zero_chunks.parquet"
[stages.o5]
kind = "sink.parquet"
inputs = ["windows_whole"]
path = "out/windows_whole.parquet"
[stages.o6]
kind = "sink.parquet"
inputs = ["windows_chunks"]
path = "out/windows_chunks.parquet"
"#;
    let dir = project(pipeline);
    let (code, text) = cli_text(dir.path(), &["run", "p.toml"]);
    assert_eq!(code, 0, "{text}");
    let out = |f: &str| read_parquet(&dir.path().join("out").join(f));
    let (cw, cc, zw, zc) = (out("causal_whole.parquet"), out("causal_chunks.parquet"), out("zero_whole.parquet"), out("zero_chunks.parquet"));
    assert_eq!(cc.num_rows(), 17 * 6);
    let mut zero_worst = 0.0f32;
    for r in 0..cc.num_rows() {
        let sweep = i64_col(&cc, "sweep")[r];
        let first = (f64_col(&cc, "trace_start_s")[r] * 20_000.0).round() as usize;
        let whole_causal = f32_list(&cw, "response", row_of(&cw, sweep, None));
        let chunk_causal = f32_list(&cc, "response", r);
        // The whole row, overlap included, equals the whole-sweep pass bit for bit.
        assert_eq!(chunk_causal, whole_causal[first..first + chunk_causal.len()].to_vec(), "sweep {sweep} row {r}");
        let zr = row_of(&zc, sweep, Some(i64_col(&cc, "chunk")[r]));
        let (c0, c1) = ((f64_col(&zc, "chunk_start_s")[zr] * 20_000.0).round() as usize, (f64_col(&zc, "chunk_end_s")[zr] * 20_000.0).round() as usize);
        let t0 = (f64_col(&zc, "trace_start_s")[zr] * 20_000.0).round() as usize;
        let whole_zero = f32_list(&zw, "response", row_of(&zw, sweep, None));
        let chunk_zero = f32_list(&zc, "response", zr);
        for g in c0..c1 {
            zero_worst = zero_worst.max((chunk_zero[g - t0] - whole_zero[g]).abs());
        }
    }
    eprintln!("zero-phase per chunk (0.1 s overlap) vs whole sweep, chunk cores: max |difference| {zero_worst:.2e} mV");
    assert!(zero_worst < 1e-3, "{zero_worst} mV");

    let (ww, wc) = (out("windows_whole.parquet"), out("windows_chunks.parquet"));
    let key = |b: &RecordBatch| {
        let mut k: Vec<(i64, i64, i64)> = (0..b.num_rows())
            .map(|i| (i64_col(b, "sweep")[i], i64_col(b, "window")[i], (f64_col(b, "window_start_s")[i] * 1e6).round() as i64))
            .collect();
        k.sort();
        k
    };
    assert_eq!(key(&ww), key(&wc), "the same windows, once each, whatever the chunking");
    assert!(wc.column_by_name("trace_start_s").is_none() && wc.column_by_name("chunk").is_some());
    // Values too: window 40 of sweep 3 (1.2 s, inside chunk 2's core).
    let pick = |b: &RecordBatch| (0..b.num_rows()).find(|&i| i64_col(b, "sweep")[i] == 3 && i64_col(b, "window")[i] == 40).unwrap();
    assert_eq!(f32_list(&ww, "response", pick(&ww)), f32_list(&wc, "response", pick(&wc)));
}

/// Epochs around a scalar onset column and around a list of event times: each epoch is the
/// trace's samples [event − pre, event + post), and epochs running off the trace are skipped.
#[test]
fn epochs_lock_to_an_onset_column_and_to_event_lists() {
    use arrow::array::{Float64Array, Int64Array, LargeListArray, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::collections::HashMap;
    use std::sync::Arc;
    let unit = |f: Field, u: &str| f.with_metadata(HashMap::from([("unit".to_string(), u.to_string())]));
    // Two rows at 1 kHz whose samples are their own indices, so a window's first value is its start.
    let trace: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("recording_id", DataType::Utf8, false),
        Field::new("sweep", DataType::Int64, false),
        unit(Field::new("sampling_rate_hz", DataType::Float64, false), "Hz"),
        unit(Field::new("response", DataType::LargeList(item.clone()), false), "mV"),
        unit(Field::new("onset_s", DataType::Float64, false), "s"),
        unit(Field::new("event_times", DataType::LargeList(Arc::new(Field::new("item", DataType::Float64, false))), false), "s"),
    ]));
    let events = LargeListArray::from_iter_primitive::<Float64Type, _, _>(vec![
        Some(vec![Some(0.005), Some(0.2), Some(0.5)]),
        Some(vec![Some(0.995)]),
    ]);
    let events = events.to_data().into_builder().data_type(schema.field(5).data_type().clone()).build().unwrap();
    let responses: Vec<Option<Vec<Option<f32>>>> = vec![Some(trace.iter().map(|&v| Some(v)).collect()), Some(trace.iter().map(|&v| Some(v + 1000.0)).collect())];
    let responses = LargeListArray::from_iter_primitive::<Float32Type, _, _>(responses);
    let responses = responses.to_data().into_builder().data_type(schema.field(3).data_type().clone()).build().unwrap();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["rec", "rec"])),
            Arc::new(Int64Array::from(vec![0, 1])),
            Arc::new(Float64Array::from(vec![1000.0, 1000.0])),
            arrow::array::make_array(responses),
            Arc::new(Float64Array::from(vec![0.3, 0.6])),
            arrow::array::make_array(events),
        ],
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    write_parquet(&tmp.path().join("data/traces.parquet"), &batch);
    std::fs::write(
        tmp.path().join("p.toml"),
        r#"
[pipeline]
name = "epochs"

[stages.traces]
kind = "source.parquet"
paths = ["data/traces.parquet"]

[stages.onsets]
kind = "preprocess.window"
inputs = ["traces"]
events_column = "onset_s"
pre_s = 0.05
post_s = 0.1

[stages.events]
kind = "preprocess.window"
inputs = ["traces"]
events_column = "event_times"
pre_s = 0.01
post_s = 0.02

[stages.a]
kind = "sink.parquet"
inputs = ["onsets"]
path = "out/onsets.parquet"

[stages.b]
kind = "sink.parquet"
inputs = ["events"]
path = "out/events.parquet"
"#,
    )
    .unwrap();
    let (code, text) = cli_text(tmp.path(), &["run", "p.toml"]);
    assert_eq!(code, 0, "{text}");
    let onsets = read_parquet(&tmp.path().join("out/onsets.parquet"));
    assert_eq!(onsets.num_rows(), 2);
    assert_eq!(f32_list(&onsets, "response", 0), (250..400).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(f32_list(&onsets, "response", 1)[0], 1550.0);
    assert_eq!(f64_col(&onsets, "event_s"), vec![0.3, 0.6]);
    assert_eq!(f64_col(&onsets, "window_start_s"), vec![0.25, 0.55]);
    assert_eq!(onsets.schema().field_with_name("event_s").unwrap().metadata().get("unit").map(String::as_str), Some("s"));
    let events = read_parquet(&tmp.path().join("out/events.parquet"));
    // 0.005 s and 0.995 s run off the trace; 0.2 and 0.5 remain, numbered by their position.
    assert_eq!(events.num_rows(), 2);
    assert_eq!(i64_col(&events, "window"), vec![1, 2]);
    assert_eq!(f32_list(&events, "response", 0).len(), 30);
    assert_eq!(f32_list(&events, "response", 0)[0], 190.0);
    assert_eq!(f32_list(&events, "response", 1)[0], 490.0);
    assert!(events.column_by_name("event_times").is_none(), "other list columns are not copied onto every window");
}

/// Bad configurations: values checked by `validate` at their TOML position, and a cutoff at or
/// above a recording's Nyquist frequency failing that recording at run time, naming the stage,
/// the option, the Nyquist frequency and the rate.
#[test]
fn bad_filter_configs_are_reported_at_the_option_and_above_nyquist_per_recording() {
    let bad = r#"[pipeline]
name = "bad"

[stages.sweeps]
kind = "ingest.abf"
paths = ["171116sh_0018.abf"]

[stages.lp]
kind = "preprocess.filter"
inputs = ["sweeps"]
lowpass_hz = -5
order = 0

[stages.rs]
kind = "preprocess.resample"
inputs = ["lp"]
output_rate_hz = 5000
columns = ["response"]

[stages.win]
kind = "preprocess.window"
inputs = ["rs"]
length_s = 0.1
pre_s = 0.2

[stages.out]
kind = "sink.parquet"
inputs = ["win"]
path = "out/w.parquet"
"#;
    let dir = project(bad);
    let (code, text) = cli_text(dir.path(), &["validate", "p.toml"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("p.toml:11:14: stage `lp`: -5 Hz must be a positive cutoff frequency"), "{text}");
    assert!(text.contains("p.toml:12:9: stage `lp`: 0 is outside 1..=16"), "{text}");
    assert!(text.contains("p.toml:24:9: stage `win`: only used with `events_column` (epochs)"), "{text}");
    assert!(text.contains("3 errors found"), "{text}");
    // With the values fixed, the schema checks run: the resample stage would leave `stimulus`
    // at the old rate.
    let fixed = bad.replace("lowpass_hz = -5\norder = 0", "lowpass_hz = 2000").replace("pre_s = 0.2\n", "");
    std::fs::write(dir.path().join("p.toml"), fixed).unwrap();
    let (code, text) = cli_text(dir.path(), &["validate", "p.toml"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("p.toml:17:11: stage `rs`: `stimulus` is a trace too; list it, or drop it before this stage"), "{text}");

    let above = PIPELINE.replace("lowpass_hz = 2000", "lowpass_hz = 12000");
    std::fs::write(dir.path().join("p.toml"), above).unwrap();
    let (code, text) = cli_text(dir.path(), &["validate", "p.toml"]);
    assert_eq!(code, 0, "the rate is a property of the data, known when a recording arrives:\n{text}");
    let (code, text) = cli_text(dir.path(), &["run", "p.toml"]);
    assert_eq!(code, 1, "{text}");
    let line = text.lines().find(|l| l.contains("FAILED")).unwrap_or_else(|| panic!("no failure line:\n{text}"));
    assert!(line.contains("lowpass") && line.contains("`lowpass_hz` = 12000 Hz is not below the Nyquist frequency 10000 Hz") && line.contains("sampled at 20000 Hz"), "{line}");
    assert!(!dir.path().join("out/windows.parquet").exists() || read_parquet(&dir.path().join("out/windows.parquet")).num_rows() == 0, "nothing downstream of the failed recordings");
}
