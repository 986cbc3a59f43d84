//! Stage kinds run in-process through the harness (no binary, no pipeline file): the generic
//! transforms on a small hand-made batch, a source failing one file alone, a sink writing its
//! file, and `ingest.abf` -> `features.spikes` on the real ABF recordings against IPFX.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use neurostream::stage::columns::{field, unit_of};

use crate::support::harness::Harness;
use crate::support::{ABF_FILES, fixture, read_csv};

/// Five sweeps of two cells: the cell, an amplitude in pA (one null), a spike count.
fn sweeps() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        field("recording_id", DataType::Utf8, false, None),
        field("stimulus_amplitude", DataType::Float64, true, Some("pA")),
        field("spike_count", DataType::Int64, false, None),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["a", "a", "b", "b", "b"])),
            Arc::new(Float64Array::from(vec![Some(-50.0), Some(100.0), None, Some(200.0), Some(0.0)])),
            Arc::new(Int64Array::from(vec![0, 3, 7, 12, 0])),
        ],
    )
    .unwrap()
}

fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
    b.column_by_name(col).unwrap().as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect()
}

fn floats(b: &RecordBatch, col: &str) -> Vec<Option<f64>> {
    b.column_by_name(col).unwrap().as_primitive::<Float64Type>().iter().collect()
}

#[test]
fn filter_keeps_matching_rows_and_drops_null_comparisons() {
    let h = Harness::new("kind = \"transform.filter\"\nwhere = \"stimulus_amplitude >= 0 and not recording_id == 'a' or spike_count == 3\"");
    let out = h.run(&[&[sweeps()]]).unwrap();
    let rows = out.rows();
    // The null amplitude compares to null and its row is dropped; the second row passes through the `or`.
    assert_eq!(floats(&rows, "stimulus_amplitude"), vec![Some(100.0), Some(200.0), Some(0.0)]);
    assert_eq!(strings(&rows, "recording_id"), ["a", "b", "b"]);
    assert_eq!(unit_of(rows.schema().field_with_name("stimulus_amplitude").unwrap()), Some("pA"));
    assert!(out.failures.is_empty());
}

#[test]
fn filter_type_errors_point_into_the_predicate() {
    let h = Harness::new("kind = \"transform.filter\"\nwhere = \"spike_cont > 1 and recording_id > 2\"");
    let issues = h.run(&[&[sweeps()]]).unwrap_err();
    let found: Vec<(Option<usize>, &str)> = issues.iter().map(|i| (i.offset, i.message.as_str())).collect();
    assert_eq!(found, [
        (Some(0), "no column `spike_cont` in the input; did you mean `spike_count`?"),
        (Some(19), "column `recording_id` is string; it cannot be compared with a number")
    ]);
}

#[test]
fn select_keeps_the_given_order_and_drop_keeps_the_rest() {
    let out = Harness::new("kind = \"transform.select\"\ncolumns = [\"spike_count\", \"recording_id\"]").run(&[&[sweeps()]]).unwrap();
    let names: Vec<&str> = out.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["spike_count", "recording_id"]);
    assert_eq!(out.rows().column(0).as_primitive::<Int64Type>().values().to_vec(), vec![0, 3, 7, 12, 0]);

    let out = Harness::new("kind = \"transform.select\"\ndrop = [\"spike_count\"]").run(&[&[sweeps()]]).unwrap();
    let rows = out.rows();
    assert_eq!(rows.num_columns(), 2);
    assert_eq!(unit_of(rows.schema().field(1)), Some("pA"), "units survive the projection");
}

#[test]
fn derive_adds_float_columns_with_units_and_nulls_for_undefined_values() {
    let h = Harness::new(
        r#"kind = "transform.derive"
columns = [
  { name = "per_spike", expr = "stimulus_amplitude / spike_count", unit = "pA" },
  { name = "rectified", expr = "max(per_spike - 20, 0) + coalesce(per_spike, -1)" },
]"#,
    );
    let out = h.run(&[&[sweeps()]]).unwrap();
    let rows = out.rows();
    // x / 0 is not finite, so null; a null amplitude gives null; coalesce fills both with -1.
    assert_eq!(floats(&rows, "per_spike"), vec![None, Some(100.0 / 3.0), None, Some(200.0 / 12.0), None]);
    assert_eq!(floats(&rows, "rectified"), vec![None, Some(100.0 / 3.0 - 20.0 + 100.0 / 3.0), None, Some(200.0 / 12.0), None]);
    assert_eq!(unit_of(out.schema.field_with_name("per_spike").unwrap()), Some("pA"));
    assert_eq!(out.schema.fields().len(), 5);
}

#[test]
fn csv_source_fails_a_malformed_file_alone_and_sink_csv_writes_the_rest() {
    let h = Harness::new("kind = \"source.csv\"\npaths = [\"tables/*.csv\"]\nunits = { amp = \"pA\" }");
    std::fs::create_dir_all(h.dir().join("tables")).unwrap();
    std::fs::write(h.dir().join("tables/a.csv"), "cell,amp\nx,1.5\ny,2.5\n").unwrap();
    std::fs::write(h.dir().join("tables/b.csv"), "cell,amp\nz,3.5,extra\n").unwrap();
    let out = h.run(&[]).unwrap();
    assert_eq!(out.rows().num_rows(), 2);
    assert_eq!(unit_of(out.schema.field_with_name("amp").unwrap()), Some("pA"));
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    assert!(out.failures[0].unit.ends_with("b.csv") && out.failures[0].message.contains("b.csv"), "{:?}", out.failures);

    let sink = Harness::new("kind = \"sink.csv\"\npath = \"out/table.csv\"");
    let written = sink.run(&[&out.batches]).unwrap();
    assert!(written.batches.is_empty() && written.schema.fields().is_empty(), "a sink emits nothing");
    let rows = read_csv(&sink.dir().join("out/table.csv"));
    assert_eq!(rows.iter().map(|r| (r["cell"].as_str(), r["amp"].as_str())).collect::<Vec<_>>(), [("x", "1.5"), ("y", "2.5")]);
}

/// The same spikes as IPFX 2.1.2 (tests/fixtures/featstage/ipfx_abf_reference.json, 5 kHz filter)
/// in every sweep of both recordings, with the stages chained by hand in-process.
#[test]
fn abf_sweeps_give_ipfx_spike_counts_in_process() {
    let paths: Vec<String> = ABF_FILES.iter().map(|s| format!("\"{}\"", fixture(&format!("abf/{s}.abf")).display())).collect();
    let ingest = Harness::new(&format!("kind = \"ingest.abf\"\npaths = [{}]", paths.join(", ")));
    let sweeps = ingest.run(&[]).unwrap();
    assert!(sweeps.failures.is_empty(), "{:?}", sweeps.failures);
    let spikes = Harness::new("kind = \"features.spikes\"\nfilter_khz = 5").run(&[&sweeps.batches]).unwrap();
    assert!(spikes.failures.is_empty(), "{:?}", spikes.failures);

    let sweep_rows = sweeps.rows();
    let file_of: HashMap<String, String> = strings(&sweep_rows, "recording_id").into_iter().zip(strings(&sweep_rows, "file")).collect();
    let rows = spikes.rows();
    let mut ours: HashMap<(String, i64), u64> = HashMap::new();
    let sweep = rows.column_by_name("sweep").unwrap().as_primitive::<Int64Type>();
    for (r, id) in strings(&rows, "recording_id").into_iter().enumerate() {
        *ours.entry((file_of[&id].clone(), sweep.value(r))).or_default() += 1;
    }
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("featstage/ipfx_abf_reference.json")).unwrap()).unwrap();
    let mut total = 0;
    for stem in ABF_FILES {
        for s in reference["files"][stem]["sweeps"].as_array().unwrap() {
            let want = s["filter_5khz"]["count"].as_u64().unwrap();
            let got = ours.get(&(stem.to_string(), s["sweep"].as_i64().unwrap())).copied().unwrap_or(0);
            assert_eq!(got, want, "{stem} sweep {}", s["sweep"]);
            total += got;
        }
    }
    assert_eq!(total, 472);
    assert_eq!(rows.num_rows(), 472);
}
