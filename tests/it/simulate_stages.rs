//! `simulate.glif` and `simulate.stg` driven through the real binary on pipeline files in a
//! tempdir, checked against the reference tools' outputs in tests/fixtures/glif (AllenSDK 2.16.2)
//! and tests/fixtures/stg (upstream STG code, Radau rtol 1e-9), and against closed-form LIF
//! solutions where no tool output exists (the dt test).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};

use crate::support::{cli_text, f32_list, f64_col, fixture, read_parquet, write_parquet};

fn run_ok(dir: &Path, file: &str) {
    let (code, text) = cli_text(dir, &["run", file, "--quiet"]);
    assert_eq!(code, 0, "run failed:\n{text}");
}

fn i64_opt_col(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    b.column_by_name(name).unwrap().as_primitive::<Int64Type>().iter().collect()
}
fn str_col(b: &RecordBatch, name: &str) -> Vec<String> {
    b.column_by_name(name).unwrap().as_string::<i32>().iter().map(|s| s.unwrap_or("<null>").to_string()).collect()
}
fn f64_lists(b: &RecordBatch, name: &str) -> Vec<Vec<f64>> {
    let l = b.column_by_name(name).unwrap().as_list::<i64>();
    (0..l.len()).map(|i| l.value(i).as_primitive::<Float64Type>().values().to_vec()).collect()
}
fn unit(schema: &Schema, name: &str) -> Option<String> {
    schema.field_with_name(name).unwrap().metadata().get("unit").cloned()
}

/// Decodes the glif fixtures' `.npy.d2z.zst` (see tests/fixtures/glif/README.md): zstd, then the
/// byte planes, zigzag and two prefix sums per column undone. Returns (shape, values).
fn read_d2z(name: &str) -> (Vec<usize>, Vec<f64>) {
    let raw = zstd::decode_all(File::open(fixture(&format!("glif/{name}"))).unwrap()).unwrap();
    let (hl, start) = if raw[6] == 1 {
        (u16::from_le_bytes([raw[8], raw[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(raw[8..12].try_into().unwrap()) as usize, 12)
    };
    let header = std::str::from_utf8(&raw[start..start + hl]).unwrap();
    let inner = header.split("'shape':").nth(1).unwrap();
    let shape: Vec<usize> = inner[inner.find('(').unwrap() + 1..inner.find(')').unwrap()]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = &raw[start + hl..];
    let n = data.len() / 8;
    let words: Vec<u64> = (0..n).map(|i| (0..8).fold(0u64, |w, p| w | (u64::from(data[p * n + i]) << (8 * p)))).collect();
    let ncols = if shape.len() == 1 { 1 } else { shape[1] };
    let rows = n / ncols;
    let mut out = vec![0.0; n];
    for c in 0..ncols {
        let mut col: Vec<u64> = words[c * rows..(c + 1) * rows].iter().map(|&z| (z >> 1) ^ (z & 1).wrapping_neg()).collect();
        for _ in 0..2 {
            for i in 1..col.len() {
                col[i] = col[i].wrapping_add(col[i - 1]);
            }
        }
        for (r, w) in col.into_iter().enumerate() {
            out[r * ncols + c] = f64::from_bits(w);
        }
    }
    (shape, out)
}

/// Writes a 1-D float64 .npy (version 1.0).
fn write_npy(path: &Path, x: &[f64]) {
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}", x.len());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in x {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// int64 .npy (the AllenSDK spike-count fixtures).
fn read_npy_i64(path: &Path) -> Vec<i64> {
    let raw = std::fs::read(path).unwrap();
    let hl = u16::from_le_bytes([raw[8], raw[9]]) as usize;
    assert!(std::str::from_utf8(&raw[10..10 + hl]).unwrap().contains("<i8"));
    raw[10 + hl..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// AllenSDK spike CSV rows: (step, grid time, interpolated time, ...).
fn read_spikes_csv(name: &str) -> Vec<Vec<f64>> {
    std::fs::read_to_string(fixture(&format!("glif/{name}")))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect()
}

/// A tempdir holding the reference OU stimulus as a plain .npy (A, 20 kHz, 50,000 samples).
fn workdir_with_stimulus() -> (tempfile::TempDir, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let (shape, stim) = read_d2z("glif_stimulus.npy.d2z.zst");
    assert_eq!(shape, vec![50_000]);
    write_npy(&dir.path().join("stim.npy"), &stim);
    (dir, stim)
}

fn manifest(dir: &Path, pipeline: &str, stage: &str) -> serde_json::Value {
    let stage_dir = dir.join("runs").join(pipeline).join(stage);
    let cp = std::fs::read_dir(&stage_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("manifest.json").is_file())
        .unwrap_or_else(|| panic!("no checkpoint under {}", stage_dir.display()));
    serde_json::from_str(&std::fs::read_to_string(cp.join("manifest.json")).unwrap()).unwrap()
}

/// The stage on AllenSDK's 100-config sweeps (GLIF1, GLIF3, GLIF5; jittered configs given as a
/// list of base configs) reproduces AllenSDK's spike counts config for config.
#[test]
fn glif_stage_reproduces_allensdk_sweep_spike_counts() {
    let (dir, _) = workdir_with_stimulus();
    let mut toml = String::from("[pipeline]\nname = \"ref_sweeps\"\n");
    for level in [1, 3, 5] {
        let json = zstd::decode_all(File::open(fixture(&format!("glif/glif{level}_sweep100_configs.json.zst"))).unwrap()).unwrap();
        std::fs::write(dir.path().join(format!("glif{level}_configs.json")), json).unwrap();
        toml.push_str(&format!(
            "\n[stages.glif{level}]\nkind = \"simulate.glif\"\nneuron_config = \"glif{level}_configs.json\"\n\
             stimuli = [{{ kind = \"file\", path = \"stim.npy\", unit = \"A\" }}]\n\
             record_voltage = false\nrecord_stimulus = false\nblock_size = 32\n\
             \n[stages.out{level}]\nkind = \"sink.parquet\"\ninputs = [\"glif{level}\"]\npath = \"out{level}.parquet\"\n"
        ));
    }
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    run_ok(dir.path(), "p.toml");
    for level in [1, 3, 5] {
        let want = read_npy_i64(&fixture(&format!("glif/glif{level}_sweep100_spike_counts.npy")));
        assert_eq!(want.len(), 100);
        let b = read_parquet(&dir.path().join(format!("out{level}.parquet")));
        let schema = b.schema();
        assert_eq!(b.num_rows(), 100);
        assert!(schema.field_with_name("response").is_err(), "record_voltage = false must drop `response`");
        let counts = i64_opt_col(&b, "spike_count");
        let base = i64_opt_col(&b, "base_config");
        let statuses = str_col(&b, "status");
        let got: Vec<i64> = counts.iter().map(|c| c.expect("every reference config completes")).collect();
        let order: Vec<i64> = base.iter().map(|x| x.unwrap()).collect();
        assert_eq!(order, (0..100).collect::<Vec<i64>>());
        assert!(statuses.iter().all(|s| s == "ok"));
        assert_eq!(got, want, "GLIF{level}: spike counts differ from AllenSDK");
        assert!(want.iter().sum::<i64>() > 0);
        let spikes = f64_lists(&b, "model_spike_times");
        assert!(spikes.iter().zip(&got).all(|(s, &n)| s.len() as i64 == n));
    }
}

/// One GLIF5 config with voltage recorded: the response is AllenSDK's voltage converted to
/// absolute mV (1e3·(V + El_reference), spike cuts filled with AllenSDK's 0.05 V) and the spike
/// times are AllenSDK's interpolated spike times.
#[test]
fn glif_stage_response_and_spike_times_match_allensdk_run() {
    let (dir, stim) = workdir_with_stimulus();
    let toml = format!(
        "[pipeline]\nname = \"one\"\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"{}\"\n\
         stimuli = [{{ kind = \"file\", path = \"stim.npy\", unit = \"A\", name = \"ou\" }}]\n\
         [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"sim\"]\npath = \"one.parquet\"\n",
        fixture("glif/glif5_neuron_config.json").display()
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    run_ok(dir.path(), "p.toml");
    let b = read_parquet(&dir.path().join("one.parquet"));
    let schema = b.schema();
    assert_eq!(b.num_rows(), 1);
    assert_eq!(unit(&schema, "response").as_deref(), Some("mV"));
    assert_eq!(unit(&schema, "stimulus").as_deref(), Some("pA"));
    assert_eq!(unit(&schema, "model_spike_times").as_deref(), Some("s"));
    assert_eq!(unit(&schema, "sampling_rate_hz").as_deref(), Some("Hz"));
    assert_eq!(str_col(&b, "stimulus_kind"), vec!["ou"]);
    assert_eq!(f64_col(&b, "sampling_rate_hz"), vec![20_000.0]);
    let el_ref_mv = f64_col(&b, "el_reference_mv")[0];
    assert_eq!(el_ref_mv, -75.0); // glif5_neuron_config.json: El_reference = -0.075 V

    let (_, v_ref) = read_d2z("glif5_voltage.npy.d2z.zst");
    let response = f32_list(&b, "response", 0);
    assert_eq!(response.len(), v_ref.len());
    let mut max_err = 0.0f64;
    for (r, v) in response.iter().zip(&v_ref) {
        let v = if v.is_nan() { 0.05 } else { *v };
        max_err = max_err.max((f64::from(*r) - (v - 0.075) * 1e3).abs());
    }
    // f32 storage of ~-75 mV values: half an ULP is 3.8e-6 mV.
    assert!(max_err < 1e-5, "response differs from AllenSDK by {max_err} mV");
    let stimulus = f32_list(&b, "stimulus", 0);
    assert!(stimulus.iter().zip(&stim).all(|(s, a)| (f64::from(*s) - a * 1e12).abs() <= 1e-6 * (a * 1e12).abs().max(1.0)));

    let want: Vec<f64> = read_spikes_csv("glif5_spikes.csv").iter().map(|r| r[2]).collect();
    let got = &f64_lists(&b, "model_spike_times")[0];
    assert_eq!(got.len(), want.len());
    let max_dt = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(max_dt < 1e-12, "spike times differ from AllenSDK by {max_dt} s");
    assert_eq!(i64_opt_col(&b, "spike_count"), vec![Some(want.len() as i64)]);
}

/// Closed form of AllenSDK's forward-Euler LIF (El = 0) from rest on a current step switched on
/// at sample `onset`: after integrating m samples of the step, V_m = V∞(1 − (1 − dt/τ)^m) with
/// V∞ = I·R and τ = R·C. The spike step k is the first sample with V > θ∞, and AllenSDK's
/// interpolated time is k·dt + dt·(θ − V_{m−1})/(V_m − V_{m−1}) (specs/glif.md).
fn euler_lif_first_spike_s(i_a: f64, r_ohm: f64, c_f: f64, th_v: f64, dt_s: f64, onset: usize) -> f64 {
    let v_inf = i_a * r_ohm;
    let decay = 1.0 - dt_s / (r_ohm * c_f);
    let m = ((1.0 - th_v / v_inf).ln() / decay.ln()).floor() as i32 + 1;
    let v = |m: i32| v_inf * (1.0 - decay.powi(m));
    assert!(v(m) > th_v && v(m - 1) <= th_v);
    let k = onset as f64 + f64::from(m) - 1.0;
    k * dt_s + dt_s * (th_v - v(m - 1)) / (v(m) - v(m - 1))
}

/// A swept dt changes the integration step and the stimulus sampling: the step stimulus is
/// regenerated at each dt, the first spike follows the closed-form Euler solution at that dt,
/// and the trace length is duration/dt. Without `dt_stimulus`, sweeping dt is refused.
#[test]
fn swept_dt_really_changes_the_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = fixture("glif/allen_configs/glif_483101699_neuron_config.json");
    let body = |dt_line: &str| {
        format!(
            "[pipeline]\nname = \"dt\"\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"{}\"\n{dt_line}\n\
             stimuli = [{{ kind = \"long_square\", amplitude_pa = 300.0, start_s = 0.1, duration_s = 0.3, total_s = 0.5 }}]\n\
             sweep = {{ params = [{{ name = \"dt\", values = [1e-5, 5e-5, 2e-4] }}] }}\n\
             [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"sim\"]\npath = \"dt.parquet\"\n",
            cfg_path.display()
        )
    };
    std::fs::write(dir.path().join("bad.toml"), body("")).unwrap();
    let (code, text) = cli_text(dir.path(), &["validate", "bad.toml", "--quiet"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("dt_stimulus"), "{text}");

    std::fs::write(dir.path().join("p.toml"), body("dt_stimulus = \"regenerate\"")).unwrap();
    run_ok(dir.path(), "p.toml");
    let b = read_parquet(&dir.path().join("dt.parquet"));
    let schema = b.schema();
    assert_eq!(unit(&schema, "dt").as_deref(), Some("s"));
    assert_eq!(f64_col(&b, "dt"), vec![1e-5, 5e-5, 2e-4]);
    let rates = f64_col(&b, "sampling_rate_hz");
    assert!(rates.iter().zip([1e5, 2e4, 5e3]).all(|(a, b)| (a / b - 1.0).abs() < 1e-12), "{rates:?}");
    // Config 485513169: R 183419927.9 Ω, C 1.0949e-10 F, θ∞ = th_inf·coeffs.th_inf.
    let (r, c, th) = (183419927.9118323, 1.0949424420741503e-10, 0.03418635859613008 * 1.1958624156695845);
    let spikes = f64_lists(&b, "model_spike_times");
    let mut firsts = Vec::new();
    for (row, dt) in [1e-5, 5e-5, 2e-4].into_iter().enumerate() {
        let response = f32_list(&b, "response", row);
        assert_eq!(response.len(), (0.5 / dt as f64).round() as usize);
        let want = euler_lif_first_spike_s(300e-12, r, c, th, dt, (0.1 / dt as f64).round() as usize);
        let t = spikes[row][0];
        assert!((t - want).abs() < 1e-6 * dt, "dt {dt}: first spike at {t} s, closed form {want} s");
        firsts.push(t);
    }
    assert!(firsts[0] != firsts[1] && firsts[1] != firsts[2], "dt did not change the spike times: {firsts:?}");
    let counts = i64_opt_col(&b, "spike_count");
    assert!(counts.iter().all(|c| c.unwrap() > 3), "{counts:?}");
}

/// A file stimulus resampled to another dt: at the file's own dt the counts are AllenSDK's; at
/// half the step the trace has twice the samples and the spike count stays close.
#[test]
fn resampled_file_stimulus_follows_dt() {
    let (dir, _) = workdir_with_stimulus();
    let toml = format!(
        "[pipeline]\nname = \"rs\"\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"{}\"\ndt_stimulus = \"resample\"\n\
         record_voltage = false\nstimuli = [{{ kind = \"file\", path = \"stim.npy\", unit = \"A\", sampling_rate_hz = 20000.0 }}]\n\
         sweep = {{ params = [{{ name = \"dt\", values = [5e-5, 2.5e-5] }}] }}\n\
         [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"sim\"]\npath = \"rs.parquet\"\n",
        fixture("glif/glif1_neuron_config.json").display()
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    run_ok(dir.path(), "p.toml");
    let b = read_parquet(&dir.path().join("rs.parquet"));
    let want = read_spikes_csv("glif1_spikes.csv").len() as i64;
    let counts: Vec<i64> = i64_opt_col(&b, "spike_count").into_iter().map(Option::unwrap).collect();
    assert_eq!(counts[0], want);
    assert!((counts[1] - want).abs() <= want / 5 + 1, "{counts:?}");
    assert_eq!(f32_list(&b, "stimulus", 0).len(), 50_000);
    assert_eq!(f32_list(&b, "stimulus", 1).len(), 100_000);
}

/// `block_size` bounds the rows of every batch: 10 configs × 2 stimuli in blocks of 3 give
/// 2 × ceil(10/3) = 8 batches and 20 rows (checkpoint manifest), and the output order is
/// stimulus-major, config order within a stimulus.
#[test]
fn block_size_bounds_batch_rows() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[pipeline]\nname = \"blocks\"\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"{}\"\nblock_size = 3\n\
         record_voltage = false\nrecord_stimulus = false\n\
         stimuli = [{{ kind = \"long_square\", amplitude_rheobase = 1.5, duration_s = 0.2, total_s = 0.2 }},\n\
                    {{ kind = \"long_square\", amplitude_rheobase = 3.0, duration_s = 0.2, total_s = 0.2, name = \"strong\" }}]\n\
         sweep = {{ params = [{{ name = \"R_input\", factors = [0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25] }}] }}\n\
         [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"sim\"]\npath = \"b.parquet\"\n",
        fixture("glif/allen_configs/glif_483101699_neuron_config.json").display()
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    run_ok(dir.path(), "p.toml");
    let m = manifest(dir.path(), "blocks", "sim");
    assert_eq!(m["rows"], 20);
    assert_eq!(m["batches"], 8);
    let b = read_parquet(&dir.path().join("b.parquet"));
    assert_eq!(str_col(&b, "stimulus_kind")[..10].iter().filter(|s| *s == "long_square").count(), 10);
    let idx: Vec<i64> = i64_opt_col(&b, "config_index").into_iter().map(Option::unwrap).collect();
    assert_eq!(idx, (0..10).chain(0..10).collect::<Vec<i64>>());
    let r = f64_col(&b, "R_input");
    assert!((r[0] / 183419927.9118323 - 0.8).abs() < 1e-12 && (r[9] / 183419927.9118323 - 1.25).abs() < 1e-12);
    // Lower input resistance, less depolarisation: spike counts never decrease with R.
    let counts: Vec<i64> = i64_opt_col(&b, "spike_count").into_iter().map(Option::unwrap).collect();
    assert!(counts[..10].windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(counts[10..].iter().zip(&counts[..10]).all(|(s, w)| s >= w));
}

/// A broken neuron_config fails `validate` with exit 2 and a diagnostic at the `neuron_config` line.
#[test]
fn bad_neuron_config_is_a_validate_error_at_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("glif/glif1_neuron_config.json")).unwrap()).unwrap();
    cfg["C"] = serde_json::json!(-1e-10);
    std::fs::write(dir.path().join("neg_c.json"), cfg.to_string()).unwrap();
    std::fs::write(dir.path().join("trunc.json"), "{\"R_input\": 1e8, \"C\":").unwrap();
    for (file, needle) in [("neg_c.json", "C"), ("trunc.json", "invalid JSON"), ("missing.json", "cannot read")] {
        let toml = format!(
            "[pipeline]\nname = \"bad\"\n\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"{file}\"\n\
             stimuli = [{{ kind = \"long_square\", amplitude_pa = 100.0, duration_s = 0.1, total_s = 0.1 }}]\n"
        );
        std::fs::write(dir.path().join("bad.toml"), toml).unwrap();
        let (code, text) = cli_text(dir.path(), &["validate", "bad.toml", "--quiet"]);
        assert_eq!(code, 2, "{file}: {text}");
        let line = text.lines().find(|l| l.starts_with("bad.toml:6:17:")).unwrap_or_else(|| panic!("{file}: no diagnostic at 6:17 (the value of neuron_config):\n{text}"));
        assert!(line.contains(needle) && line.contains(file), "{file}: {line}");
    }
}

/// A config whose reset lands above threshold (GLIF2 with V ← V + 50 mV) gets status
/// `bad_reset` with the spike step of AllenSDK's first spike, a null count and a null response.
#[test]
fn bad_reset_is_a_status_not_nans() {
    let (dir, _) = workdir_with_stimulus();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("glif/glif2_neuron_config.json")).unwrap()).unwrap();
    cfg["voltage_reset_method"]["params"] = serde_json::json!({"a": 1.0, "b": 0.05});
    std::fs::write(dir.path().join("bad_reset.json"), serde_json::json!([cfg, serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(fixture("glif/glif2_neuron_config.json")).unwrap()).unwrap()]).to_string()).unwrap();
    let toml = "[pipeline]\nname = \"br\"\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"bad_reset.json\"\n\
                stimuli = [{ kind = \"file\", path = \"stim.npy\", unit = \"A\" }]\n\
                [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"sim\"]\npath = \"br.parquet\"\n";
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    run_ok(dir.path(), "p.toml");
    let b = read_parquet(&dir.path().join("br.parquet"));
    let reference = read_spikes_csv("glif2_spikes.csv");
    assert_eq!(str_col(&b, "status"), vec!["bad_reset", "ok"]);
    assert_eq!(i64_opt_col(&b, "spike_count"), vec![None, Some(reference.len() as i64)]);
    let detail = str_col(&b, "status_detail");
    assert!(detail[0].contains(&format!("step {}", reference[0][0] as usize)), "{}", detail[0]);
    assert_eq!(detail[1], "<null>");
    assert!(b.column_by_name("response").unwrap().is_null(0));
    let response_ok = f32_list(&b, "response", 1);
    assert!(response_ok.iter().all(|v| v.is_finite()));
    assert_eq!(f64_lists(&b, "model_spike_times")[0], vec![reference[0][2]]);
}

/// `simulate.stg` on a conductance table read by `source.parquet`: the upstream reference cells'
/// 2-s spike trains match the Radau rtol 1e-9 solution (tolerances of the kernel's own test), a
/// row with g_leak = 0 gets status `error`, and the input columns pass through.
#[test]
fn stg_stage_matches_radau_reference_trains() {
    let dir = tempfile::tempdir().unwrap();
    let refs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("stg/reference_vectors.json")).unwrap()).unwrap();
    let names = ["g_Na", "g_Kd", "g_CaT", "g_CaS", "g_KCa", "g_A", "g_H", "g_leak"];
    let cells = ["G_SPIKING", "G_BURSTING"];
    let mut rows: Vec<Vec<f64>> = cells
        .iter()
        .map(|c| refs["stg_simulation_2s"][c]["g"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    let mut bad = rows[0].clone();
    bad[7] = 0.0;
    rows.push(bad);
    let mut fields = vec![Field::new("cell", DataType::Utf8, false)];
    fields.extend(names.iter().map(|n| Field::new(*n, DataType::Float64, false)));
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<arrow::array::ArrayRef> = vec![Arc::new(arrow::array::StringArray::from(vec!["spiking", "bursting", "no_leak"]))];
    for k in 0..8 {
        cols.push(Arc::new(Float64Array::from(rows.iter().map(|r| r[k]).collect::<Vec<f64>>())));
    }
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    write_parquet(&dir.path().join("g.parquet"), &batch);
    let toml = "[pipeline]\nname = \"stg\"\n[stages.g]\nkind = \"source.parquet\"\npaths = [\"g.parquet\"]\n\
                [stages.sim]\nkind = \"simulate.stg\"\ninputs = [\"g\"]\ndt_ms = 0.01\nduration_ms = 2000.0\ntransient_ms = 0.0\nvoltage_every_steps = 100\n\
                [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"sim\"]\npath = \"stg.parquet\"\n";
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    run_ok(dir.path(), "p.toml");
    let b = read_parquet(&dir.path().join("stg.parquet"));
    let schema = b.schema();
    assert_eq!(unit(&schema, "spike_times").as_deref(), Some("s"));
    assert_eq!(str_col(&b, "cell"), vec!["spiking", "bursting", "no_leak"]);
    assert_eq!(f64_col(&b, "g_Na")[1], rows[1][0]);
    assert_eq!(str_col(&b, "status"), vec!["ok", "ok", "error"]);
    assert!(str_col(&b, "status_detail")[2].contains("g_leak"));
    let trains = f64_lists(&b, "spike_times");
    for (row, (cell, tol_ms)) in [("G_SPIKING", 0.5), ("G_BURSTING", 0.1)].into_iter().enumerate() {
        let want: Vec<f64> = refs["stg_simulation_2s"][cell]["spike_times_radau_rtol1e-9_ms"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(trains[row].len(), want.len(), "{cell}");
        let err = trains[row].iter().zip(&want).map(|(a, b)| (a * 1e3 - b).abs()).fold(0.0, f64::max);
        assert!(err <= tol_ms, "{cell}: spike times off by {err} ms");
    }
    assert_eq!(i64_opt_col(&b, "spike_count"), vec![Some(29), Some(65), None]);
    // 2000 ms at 0.01 ms, every 100th step, both ends included: 2001 samples at 1 ms.
    let v = f32_list(&b, "voltage", 0);
    assert_eq!(v.len(), 2001);
    assert!(v.iter().all(|x| (-100.0..60.0).contains(x)));
    assert_eq!(f64_col(&b, "voltage_dt_ms")[0], 1.0);
}

/// A protocol of the shared stimulus module (`kind = "protocol"`, here its long square) is
/// rendered at each config's rate: the first spike follows the closed-form Euler solution.
#[test]
fn shared_stimulus_protocols_are_rendered_at_each_dt() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[pipeline]\nname = \"proto\"\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"{}\"\ndt_stimulus = \"regenerate\"\n\
         stimuli = [{{ kind = \"protocol\", spec = {{ protocol = \"long_square\", amplitude_pa = 300.0, onset_s = 0.1, duration_s = 0.3, total_s = 0.5 }} }}]\n\
         sweep = {{ params = [{{ name = \"dt\", values = [2e-5, 1e-4] }}] }}\n\
         [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"sim\"]\npath = \"proto.parquet\"\n",
        fixture("glif/allen_configs/glif_483101699_neuron_config.json").display()
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    run_ok(dir.path(), "p.toml");
    let b = read_parquet(&dir.path().join("proto.parquet"));
    assert_eq!(str_col(&b, "stimulus_kind"), vec!["long_square", "long_square"]);
    let (r, c, th) = (183419927.9118323, 1.0949424420741503e-10, 0.03418635859613008 * 1.1958624156695845);
    let spikes = f64_lists(&b, "model_spike_times");
    for (row, dt) in [2e-5, 1e-4].into_iter().enumerate() {
        assert_eq!(f32_list(&b, "stimulus", row).len(), (0.5 / dt as f64).round() as usize);
        let want = euler_lif_first_spike_s(300e-12, r, c, th, dt, (0.1 / dt as f64).round() as usize);
        assert!((spikes[row][0] - want).abs() < 1e-6 * dt, "dt {dt}: {} vs {want}", spikes[row][0]);
    }
}

/// A 3 x 3 grid of R_input and C around the Allen GLIF1 model 485513169, simulated on the
/// synthesised Allen Noise 1 at 1.5x rheobase (so most configs spike), then `features.membrane`.
fn membrane_pipeline(fill: &str, membrane: &str) -> String {
    format!(
        "[pipeline]\nname = \"mem\"\n[stages.sim]\nkind = \"simulate.glif\"\nneuron_config = \"{}\"\n\
         rheobase_pa = 231.75\nrecord_stimulus = true\nspike_cut_fill = \"{fill}\"\n\
         stimuli = [{{ kind = \"allen_noise1\", gap_s = 0.0, epoch_s = 2.0, epochs_rheobase = [1.5] }}]\n\
         sweep = {{ method = \"grid\", params = [{{ name = \"R_input\", values = [5.834e7, 1.834e8, 5.834e8] }}, {{ name = \"C\", values = [5e-11, 1e-10, 5e-10] }}] }}\n\
         [stages.fit]\nkind = \"features.membrane\"\ninputs = [\"sim\"]\n{membrane}\n\
         [stages.out]\nkind = \"sink.parquet\"\ninputs = [\"fit\"]\npath = \"mem.parquet\"\n",
        fixture("glif/allen_configs/glif_483101699_neuron_config.json").display()
    )
}

/// Relative errors of the fitted R and C against each row's swept R_input and C, and the
/// absolute error of El against the config's El_reference (El = 0 relative), in mV.
fn membrane_errors(dir: &Path) -> Vec<(f64, f64, f64, i64)> {
    let b = read_parquet(&dir.join("mem.parquet"));
    let schema = b.schema();
    assert_eq!(unit(&schema, "membrane_r_mohm").as_deref(), Some("MΩ"));
    assert_eq!(unit(&schema, "membrane_c_pf").as_deref(), Some("pF"));
    assert!(schema.field_with_name("response").is_err(), "list columns are dropped by default");
    let (r, c, el_ref) = (f64_col(&b, "R_input"), f64_col(&b, "C"), f64_col(&b, "el_reference_mv"));
    let opt = |name: &str| -> Vec<Option<f64>> { b.column_by_name(name).unwrap().as_primitive::<Float64Type>().iter().collect() };
    let (fr, fc, fe) = (opt("membrane_r_mohm"), opt("membrane_c_pf"), opt("membrane_el_mv"));
    let spikes = i64_opt_col(&b, "spike_count");
    (0..b.num_rows())
        .map(|k| {
            let (fr, fc, fe) = (fr[k].expect("fitted R"), fc[k].expect("fitted C"), fe[k].expect("fitted El"));
            ((fr * 1e6 / r[k] - 1.0).abs(), (fc * 1e-12 / c[k] - 1.0).abs(), (fe - el_ref[k]).abs(), spikes[k].unwrap())
        })
        .collect()
}

/// AllenSDK's spike cuts are NaN: every finite pair of samples is one exact Euler step of the
/// model, so the Allen GLIF fitting method (dV/dt regressed on V and I) reads back each config's
/// R_input and C, whatever the spiking, to the float32 storage of mV and pA.
#[test]
fn membrane_fit_reads_back_r_and_c_of_simulated_glif_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), membrane_pipeline("nan", "scheme = \"allensdk\"")).unwrap();
    run_ok(dir.path(), "p.toml");
    let errors = membrane_errors(dir.path());
    assert_eq!(errors.len(), 9);
    assert!(errors.iter().filter(|e| e.3 > 0).count() >= 3, "the grid must include spiking configs: {errors:?}");
    for (k, (er, ec, ee, _)) in errors.iter().enumerate() {
        assert!(*er < 1e-3 && *ec < 1e-3 && *ee < 0.05, "row {k}: R {er:e}, C {ec:e}, El {ee} mV");
    }
}

/// With AllenSDK's constant 0.05 V fill in the spike cuts the flat cut samples poison the fit
/// unless the spikes are excluded: `spike_times` with a window covering the 55-sample cut
/// (2.75 ms at dt 5e-5 s) restores it.
#[test]
fn membrane_fit_needs_the_spike_windows_when_cuts_are_filled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), membrane_pipeline("allen", "scheme = \"allensdk\"")).unwrap();
    run_ok(dir.path(), "p.toml");
    let poisoned = membrane_errors(dir.path());
    assert!(poisoned.iter().any(|e| e.3 > 0 && e.1 > 0.05), "the fill must spoil a spiking row: {poisoned:?}");
    let windows = "scheme = \"allensdk\"\nspike_times = \"model_spike_times\"\nexclude_before_s = 0.0001\nexclude_after_s = 0.003";
    std::fs::write(dir.path().join("p.toml"), membrane_pipeline("allen", windows)).unwrap();
    run_ok(dir.path(), "p.toml");
    for (k, (er, ec, ee, _)) in membrane_errors(dir.path()).iter().enumerate() {
        assert!(*er < 1e-3 && *ec < 1e-3 && *ee < 0.05, "row {k}: R {er:e}, C {ec:e}, El {ee} mV");
    }
}

/// Bad settings are all reported at once, each with its line in the pipeline file.
#[test]
fn membrane_fit_settings_are_checked_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "min_pairs = 2\nexclude_after_s = -1.0\nstimulus = \"response\"";
    std::fs::write(dir.path().join("p.toml"), membrane_pipeline("nan", bad)).unwrap();
    let (code, text) = cli_text(dir.path(), &["run", "p.toml", "--quiet"]);
    assert_ne!(code, 0);
    assert!(text.contains("three unknowns need at least 3 pairs"), "{text}");
    assert!(text.contains("must be a duration >= 0 s, got -1"), "{text}");
    assert!(text.contains("p.toml:14:13:") && text.contains("p.toml:15:19:"), "positions are reported: {text}");
    // The wrong unit is found in the same pass as the bad values (regression: schema errors used
    // to wait until every value error was fixed, so a user needed two runs to see them all).
    assert!(text.contains("p.toml:16:12:") && text.contains("column `response` of input `input` is in mV, but pA is needed"), "{text}");
    assert!(text.contains("3 errors found"), "{text}");
    assert!(!dir.path().join("mem.parquet").exists());
}
