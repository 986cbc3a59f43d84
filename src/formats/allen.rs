//! Reader for Allen Cell Types Database metadata: `ephys_sweeps.json` and `model_metadata.json`.
//!
//! Role: the Allen Institute publishes, per specimen, one JSON record per recorded sweep
//! (what stimulus was played, its amplitude, start and duration, and Allen's own spike count)
//! and, per fitted GLIF model, the model's metadata. The pipeline uses the sweep table to pick
//! sweeps by stimulus type and to compare its spike counts with Allen's `num_spikes`.
//!
//! Format facts (from the files as served by the Allen Brain Map API through AllenSDK
//! `CellTypesApi.get_ephys_sweeps` / `GlifApi.get_neuronal_models`): a JSON array of flat
//! objects; measured values are `null` when not computed. `stimulus_absolute_amplitude` is in
//! pA for current-clamp sweeps even though `stimulus_units` then says "Amps" in older records
//! ("pA" in newer ones); "Volts"/"mV" mark voltage-clamp test sweeps (amplitude in mV).
//! `stimulus_start_time`, `stimulus_duration` and `stimulus_interval` are in seconds.
//!
//! Errors name the file, the record (index and sweep number) and the field.

use std::path::Path;

use serde::Deserialize;

/// Everything that can go wrong while reading Allen metadata.
#[derive(Debug, thiserror::Error)]
pub enum AllenError {
    #[error("{file}: cannot read the file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid JSON: {source}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: {record}: {reason}")]
    Record {
        file: String,
        record: String,
        reason: String,
    },
}

/// One sweep record of `ephys_sweeps.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EphysSweep {
    /// Allen database id of the sweep.
    pub id: u64,
    pub specimen_id: u64,
    pub sweep_number: u32,
    /// Stimulus type, e.g. "Long Square", "Short Square", "Ramp", "Noise 1", "Test".
    pub stimulus_name: String,
    /// Stimulus-set code with index, e.g. "C1LSCOARSE150216[14]".
    pub stimulus_description: String,
    /// "Amps"/"pA" (current clamp) or "Volts"/"mV" (voltage-clamp test pulses).
    pub stimulus_units: String,
    /// Amplitude in pA (current clamp) or mV (voltage clamp); see [`Self::amplitude_pa`].
    pub stimulus_absolute_amplitude: Option<f64>,
    pub stimulus_relative_amplitude: Option<f64>,
    /// Stimulus duration (s).
    #[serde(rename = "stimulus_duration")]
    pub stimulus_duration_s: Option<f64>,
    /// Stimulus onset from the sweep start (s).
    #[serde(rename = "stimulus_start_time")]
    pub stimulus_start_time_s: Option<f64>,
    /// Interval between repeated pulses (s).
    #[serde(rename = "stimulus_interval")]
    pub stimulus_interval_s: Option<f64>,
    /// Allen's spike count for the sweep (null when not computed).
    pub num_spikes: Option<u32>,
    pub pre_vm_mv: Option<f64>,
    pub post_vm_mv: Option<f64>,
    pub slow_vm_mv: Option<f64>,
    pub vm_delta_mv: Option<f64>,
    pub pre_noise_rms_mv: Option<f64>,
    pub post_noise_rms_mv: Option<f64>,
    pub slow_noise_rms_mv: Option<f64>,
    pub bridge_balance_mohm: Option<f64>,
    pub leak_pa: Option<f64>,
    /// Most negative voltage reached during a hyperpolarising step (mV).
    pub peak_deflection: Option<f64>,
}

impl EphysSweep {
    /// True for current-clamp sweeps, whose amplitude is a current in pA.
    pub fn is_current_clamp(&self) -> bool {
        matches!(self.stimulus_units.as_str(), "Amps" | "pA")
    }

    /// Stimulus amplitude in pA for a current-clamp sweep, `None` otherwise.
    pub fn amplitude_pa(&self) -> Option<f64> {
        if self.is_current_clamp() {
            self.stimulus_absolute_amplitude
        } else {
            None
        }
    }
}

/// Reads an `ephys_sweeps.json` file; the records keep the file order.
pub fn read_ephys_sweeps(path: impl AsRef<Path>) -> Result<Vec<EphysSweep>, AllenError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AllenError::Io {
        file: file.clone(),
        source,
    })?;
    parse_ephys_sweeps(&text, &file)
}

/// Parses the text of an `ephys_sweeps.json` file; `file` labels errors.
pub fn parse_ephys_sweeps(text: &str, file: &str) -> Result<Vec<EphysSweep>, AllenError> {
    let records: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|source| AllenError::Json {
            file: file.to_string(),
            source,
        })?;
    let mut sweeps: Vec<EphysSweep> = Vec::with_capacity(records.len());
    for (k, value) in records.into_iter().enumerate() {
        let label = match value.get("sweep_number").and_then(|v| v.as_u64()) {
            Some(n) => format!("record {k} (sweep {n})"),
            None => format!("record {k}"),
        };
        let bad = |reason: String| AllenError::Record {
            file: file.to_string(),
            record: label.clone(),
            reason,
        };
        let sweep: EphysSweep = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        for (name, v) in [
            ("stimulus_duration", sweep.stimulus_duration_s),
            ("stimulus_start_time", sweep.stimulus_start_time_s),
            ("stimulus_interval", sweep.stimulus_interval_s),
        ] {
            if v.is_some_and(|x| x < 0.0) {
                return Err(bad(format!(
                    "{name} is negative ({} s)",
                    v.unwrap_or_default()
                )));
            }
        }
        if let Some(other) = sweeps.iter().find(|s| s.sweep_number == sweep.sweep_number) {
            return Err(bad(format!(
                "sweep_number {} repeats (record id {} and {})",
                sweep.sweep_number, other.id, sweep.id
            )));
        }
        sweeps.push(sweep);
    }
    Ok(sweeps)
}

/// The parts of a GLIF `model_metadata.json` the pipeline uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// Neuronal model id.
    pub id: u64,
    /// Model name, e.g. "1 Leaky Integrate and Fire (LIF)_Cux2-CreERT2;Ai14-198018.04.01.01".
    pub name: String,
    pub specimen_id: u64,
    /// GLIF level template (395310469 = LIF, ... ).
    pub neuronal_model_template_id: u64,
    pub specimen_name: String,
    pub hemisphere: Option<String>,
    /// Brain structure acronym, e.g. "VISp4", "MTG".
    pub structure_acronym: Option<String>,
    pub structure_name: Option<String>,
    /// Specimen tags, e.g. "dendrite type - spiny".
    pub tags: Vec<String>,
    pub donor_full_genotype: Option<String>,
    /// Explained variance ratio of the first model run (the fit quality Allen reports).
    pub explained_variance_ratio: Option<f64>,
}

impl ModelMetadata {
    /// "spiny"/"aspiny"/"sparsely spiny" from the `dendrite type - ...` tag.
    pub fn dendrite_type(&self) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix("dendrite type - "))
    }
}

#[derive(Deserialize)]
struct RawModel {
    id: u64,
    name: String,
    specimen_id: u64,
    neuronal_model_template_id: u64,
    specimen: RawSpecimen,
    #[serde(default)]
    neuronal_model_runs: Option<Vec<RawRun>>,
}
#[derive(Deserialize)]
struct RawSpecimen {
    name: String,
    hemisphere: Option<String>,
    structure: Option<RawStructure>,
    #[serde(default)]
    specimen_tags: Option<Vec<RawTag>>,
    donor: Option<RawDonor>,
}
#[derive(Deserialize)]
struct RawStructure {
    acronym: Option<String>,
    name: Option<String>,
}
#[derive(Deserialize)]
struct RawTag {
    name: String,
}
#[derive(Deserialize)]
struct RawDonor {
    full_genotype: Option<String>,
}
#[derive(Deserialize)]
struct RawRun {
    explained_variance_ratio: Option<f64>,
}

/// Reads a GLIF `model_metadata.json`.
pub fn read_model_metadata(path: impl AsRef<Path>) -> Result<ModelMetadata, AllenError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AllenError::Io {
        file: file.clone(),
        source,
    })?;
    let raw: RawModel = serde_json::from_str(&text).map_err(|source| AllenError::Json {
        file: file.clone(),
        source,
    })?;
    let structure = raw.specimen.structure;
    Ok(ModelMetadata {
        id: raw.id,
        name: raw.name,
        specimen_id: raw.specimen_id,
        neuronal_model_template_id: raw.neuronal_model_template_id,
        specimen_name: raw.specimen.name,
        hemisphere: raw.specimen.hemisphere,
        structure_acronym: structure.as_ref().and_then(|s| s.acronym.clone()),
        structure_name: structure.and_then(|s| s.name),
        tags: raw
            .specimen
            .specimen_tags
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.name)
            .collect(),
        donor_full_genotype: raw.specimen.donor.and_then(|d| d.full_genotype),
        explained_variance_ratio: raw
            .neuronal_model_runs
            .and_then(|r| r.first().and_then(|r| r.explained_variance_ratio)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nwbmat");

    fn fixture(name: &str) -> String {
        format!("{DIR}/{name}")
    }

    fn expected() -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixture("expected_allen.json")).unwrap())
            .unwrap()
    }

    fn opt_eq(a: Option<f64>, b: &Value, what: &str) {
        match (a, b.as_f64()) {
            (None, None) => {}
            (Some(x), Some(y)) => assert!(
                (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
                "{what}: {x} vs {y}"
            ),
            other => panic!("{what}: {other:?}"),
        }
    }

    fn check_sweeps(name: &str) {
        let all = expected();
        let e = &all[name];
        let sweeps = read_ephys_sweeps(fixture(name)).unwrap();
        assert_eq!(sweeps.len() as u64, e["n_sweeps"].as_u64().unwrap());
        let total: u64 = sweeps
            .iter()
            .map(|s| u64::from(s.num_spikes.unwrap_or(0)))
            .sum();
        assert_eq!(total, e["total_num_spikes"].as_u64().unwrap());
        for (stim, n) in e["stimulus_name_counts"].as_object().unwrap() {
            assert_eq!(
                sweeps.iter().filter(|s| &s.stimulus_name == stim).count() as u64,
                n.as_u64().unwrap(),
                "{stim}"
            );
        }
        let mut units: Vec<&str> = sweeps.iter().map(|s| s.stimulus_units.as_str()).collect();
        units.sort_unstable();
        units.dedup();
        assert_eq!(
            units,
            e["stimulus_units"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect::<Vec<_>>()
        );
        for want in e["sweeps"].as_array().unwrap() {
            let n = want["sweep_number"].as_u64().unwrap() as u32;
            let s = sweeps.iter().find(|s| s.sweep_number == n).unwrap();
            assert_eq!(s.id, want["id"].as_u64().unwrap());
            assert_eq!(s.specimen_id, want["specimen_id"].as_u64().unwrap());
            assert_eq!(s.stimulus_name, want["stimulus_name"].as_str().unwrap());
            assert_eq!(
                s.stimulus_description,
                want["stimulus_description"].as_str().unwrap()
            );
            assert_eq!(s.stimulus_units, want["stimulus_units"].as_str().unwrap());
            assert_eq!(s.num_spikes.map(u64::from), want["num_spikes"].as_u64());
            opt_eq(
                s.stimulus_absolute_amplitude,
                &want["stimulus_absolute_amplitude"],
                "amplitude",
            );
            opt_eq(
                s.stimulus_relative_amplitude,
                &want["stimulus_relative_amplitude"],
                "relative amplitude",
            );
            opt_eq(
                s.stimulus_duration_s,
                &want["stimulus_duration"],
                "duration",
            );
            opt_eq(
                s.stimulus_start_time_s,
                &want["stimulus_start_time"],
                "start",
            );
            opt_eq(
                s.stimulus_interval_s,
                &want["stimulus_interval"],
                "interval",
            );
            opt_eq(s.pre_vm_mv, &want["pre_vm_mv"], "pre_vm");
            opt_eq(
                s.bridge_balance_mohm,
                &want["bridge_balance_mohm"],
                "bridge balance",
            );
            opt_eq(s.leak_pa, &want["leak_pa"], "leak");
            opt_eq(
                s.peak_deflection,
                &want["peak_deflection"],
                "peak deflection",
            );
        }
    }

    #[test]
    fn mouse_glif_specimen_sweeps_match_python_json() {
        check_sweeps("allen_483101699_ephys_sweeps.json");
        // Anchors stated in the shared README: Noise 1 = sweeps 63, 65, 67 with 49/45/42 spikes.
        let sweeps = read_ephys_sweeps(fixture("allen_483101699_ephys_sweeps.json")).unwrap();
        let noise1: Vec<(u32, Option<u32>)> = sweeps
            .iter()
            .filter(|s| s.stimulus_name == "Noise 1")
            .map(|s| (s.sweep_number, s.num_spikes))
            .collect();
        assert_eq!(noise1, vec![(63, Some(49)), (65, Some(45)), (67, Some(42))]);
        let s49 = sweeps.iter().find(|s| s.sweep_number == 49).unwrap();
        assert_eq!(
            (s49.stimulus_name.as_str(), s49.num_spikes),
            ("Long Square", Some(6))
        );
        assert!(s49.is_current_clamp() && s49.amplitude_pa().is_some());
    }

    #[test]
    fn human_specimen_sweeps_match_python_json() {
        check_sweeps("allen_643625553_ephys_sweeps.json");
        let sweeps = read_ephys_sweeps(fixture("allen_643625553_ephys_sweeps.json")).unwrap();
        let test = sweeps.iter().find(|s| s.stimulus_units == "mV").unwrap();
        assert!(!test.is_current_clamp() && test.amplitude_pa().is_none());
    }

    #[test]
    fn model_metadata_matches_python_json() {
        let all = expected();
        for name in [
            "allen_483101699_model_metadata.json",
            "allen_573430299_model_metadata.json",
        ] {
            let e = &all[name];
            let m = read_model_metadata(fixture(name)).unwrap();
            assert_eq!(m.id, e["id"].as_u64().unwrap());
            assert_eq!(m.name, e["name"].as_str().unwrap());
            assert_eq!(m.specimen_id, e["specimen_id"].as_u64().unwrap());
            assert_eq!(
                m.neuronal_model_template_id,
                e["neuronal_model_template_id"].as_u64().unwrap()
            );
            assert_eq!(m.specimen_name, e["specimen_name"].as_str().unwrap());
            assert_eq!(m.hemisphere.as_deref(), e["hemisphere"].as_str());
            assert_eq!(
                m.structure_acronym.as_deref(),
                e["structure_acronym"].as_str()
            );
            assert_eq!(m.structure_name.as_deref(), e["structure_name"].as_str());
            assert_eq!(
                m.donor_full_genotype.as_deref(),
                e["donor_full_genotype"].as_str()
            );
            let tags: Vec<&str> = e["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            assert_eq!(m.tags, tags);
            opt_eq(
                m.explained_variance_ratio,
                &e["explained_variance_ratio"],
                "explained variance",
            );
        }
        let lif = read_model_metadata(fixture("allen_483101699_model_metadata.json")).unwrap();
        assert_eq!(lif.dendrite_type(), Some("spiny"));
    }

    #[test]
    fn malformed_records_name_the_record_and_field() {
        let err = parse_ephys_sweeps(
            r#"[{"id": 1, "specimen_id": 2, "sweep_number": 7, "stimulus_name": "Ramp"}]"#,
            "x.json",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x.json")
                && msg.contains("sweep 7")
                && msg.contains("stimulus_description"),
            "{msg}"
        );
        let dup = r#"[{"id":1,"specimen_id":2,"sweep_number":3,"stimulus_name":"a","stimulus_description":"b","stimulus_units":"pA"},
                      {"id":4,"specimen_id":2,"sweep_number":3,"stimulus_name":"a","stimulus_description":"b","stimulus_units":"pA"}]"#;
        assert!(
            parse_ephys_sweeps(dup, "d.json")
                .unwrap_err()
                .to_string()
                .contains("repeats")
        );
        let neg = r#"[{"id":1,"specimen_id":2,"sweep_number":3,"stimulus_name":"a","stimulus_description":"b","stimulus_units":"pA","stimulus_duration":-1.0}]"#;
        assert!(
            parse_ephys_sweeps(neg, "n.json")
                .unwrap_err()
                .to_string()
                .contains("stimulus_duration is negative")
        );
        let wrong = r#"[{"id":1,"specimen_id":2,"sweep_number":"three","stimulus_name":"a","stimulus_description":"b","stimulus_units":"pA"}]"#;
        assert!(
            parse_ephys_sweeps(wrong, "w.json")
                .unwrap_err()
                .to_string()
                .contains("record 0")
        );
        assert!(matches!(
            parse_ephys_sweeps("[{", "t.json"),
            Err(AllenError::Json { .. })
        ));
        assert!(matches!(
            read_ephys_sweeps(fixture("no_such_file.json")),
            Err(AllenError::Io { .. })
        ));
    }
}
