//! Ingestion stages through the real binary: `ingest.nwb` on pynwb-written files (made from the
//! real ABF recordings, every 4th sample; tests/fixtures/nwbmat/make_nwb.py) gives the same sweeps
//! as `ingest.abf` on the ABF itself, and an NWB file with a missing piece fails alone, named.

use arrow::array::AsArray;

use crate::support::{f32_list, output_text, read_parquet, run_workspace, workspace};

#[test]
fn nwb_sweeps_equal_the_abf_sweeps_they_were_written_from_and_a_broken_file_fails_alone() {
    let tmp = workspace(
        r#"
[pipeline]
name = "ingest"

[stages.nwb]
kind = "ingest.nwb"
paths = ["nwb"]

[stages.abf]
kind = "ingest.abf"
paths = ["171116sh_0018.abf"]

[stages.nwb_out]
kind = "sink.parquet"
inputs = ["nwb"]
path = "out/nwb.parquet"

[stages.abf_out]
kind = "sink.parquet"
inputs = ["abf"]
path = "out/abf.parquet"
"#,
        &[
            ("nwbmat/icephys_171116sh_0018.nwb", "nwb/icephys_171116sh_0018.nwb"),
            ("nwbmat/bad_no_data.nwb", "nwb/bad_no_data.nwb"),
            ("abf/171116sh_0018.abf", "171116sh_0018.abf"),
        ],
    );
    let d = tmp.path();
    let out = run_workspace(d);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "the broken file makes the run exit 1:\n{text}");
    assert!(text.contains("bad_no_data.nwb"), "the broken file is named:\n{text}");
    let nwb = read_parquet(&d.join("out/nwb.parquet"));
    let abf = read_parquet(&d.join("out/abf.parquet"));
    assert_eq!(nwb.num_rows(), 3, "sweeps 0, 8, 16 of the ABF were written to NWB");
    let sweeps = nwb.column_by_name("sweep").unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
    assert_eq!(sweeps, vec![0, 8, 16]);
    let rate = nwb.column_by_name("sampling_rate_hz").unwrap().as_primitive::<arrow::datatypes::Float64Type>().value(0);
    // make_nwb.py keeps every 4th sample of the 20 kHz recording (fixture size).
    assert_eq!(rate, 5_000.0);
    for (row, &sweep) in sweeps.iter().enumerate() {
        for (col, tol) in [("response", 1e-4_f32), ("stimulus", 1e-3)] {
            let a = f32_list(&nwb, col, row);
            let b: Vec<f32> = f32_list(&abf, col, sweep as usize).into_iter().step_by(4).collect();
            assert_eq!(a.len(), b.len(), "{col} sweep {sweep}");
            let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(max <= tol * b.iter().fold(1.0f32, |m, v| m.max(v.abs())), "{col} sweep {sweep}: max difference {max}");
        }
    }
    let units = nwb.column_by_name("response_units").unwrap().as_string::<i32>().value(0).to_string();
    assert_eq!(units, "mV");
}

/// `source.csv` on the hc-3 cell table (no header; CRCNS metadata): the row count and the
/// interneuron / pyramidal counts equal Python's csv module's on the same file, the declared unit
/// lands in the schema, and a second file with a malformed row fails alone, named with its line.
#[test]
fn csv_tables_read_with_inferred_types_declared_units_and_a_bad_file_failing_alone() {
    let tmp = workspace(
        r#"
[pipeline]
name = "csv"

[stages.cells]
kind = "source.csv"
paths = ["tables/*.csv"]
has_header = false
units = { column_13 = "Hz" }

[stages.interneurons]
kind = "transform.filter"
inputs = ["cells"]
where = "column_15 == 'i'"

[stages.pyramidal]
kind = "transform.filter"
inputs = ["cells"]
where = "column_15 == 'p'"

[stages.all_out]
kind = "sink.parquet"
inputs = ["cells"]
path = "out/all.parquet"

[stages.i_out]
kind = "sink.parquet"
inputs = ["interneurons"]
path = "out/i.parquet"

[stages.p_out]
kind = "sink.parquet"
inputs = ["pyramidal"]
path = "out/p.parquet"
"#,
        &[("hc3/hc3-cell-first2000.csv", "tables/a_cells.csv")],
    );
    let d = tmp.path();
    std::fs::write(d.join("tables/b_broken.csv"), "5,ec1,ec,1,2,CA1,0,0,0,0,0,0,1.5,1.5,p\n6,ec1,ec,1,3,CA1,0,0\n").unwrap();
    let out = run_workspace(d);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "the broken file makes the run exit 1:\n{text}");
    assert!(text.contains("b_broken.csv") && text.contains("line 2"), "the broken file is named, with the line:\n{text}");
    let all = read_parquet(&d.join("out/all.parquet"));
    assert_eq!(all.num_rows(), 2000);
    assert_eq!(read_parquet(&d.join("out/i.parquet")).num_rows(), 306);
    assert_eq!(read_parquet(&d.join("out/p.parquet")).num_rows(), 1491);
    let f = all.schema().field_with_name("column_13").unwrap().clone();
    assert_eq!(f.metadata().get("unit").map(String::as_str), Some("Hz"));
    assert_eq!(f.data_type(), &arrow::datatypes::DataType::Float64);
}
