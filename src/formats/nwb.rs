//! Reader for NWB 2 intracellular electrophysiology (icephys) files: current-clamp sweeps.
//!
//! Role: turn an NWB 2.x file written by pynwb/MatNWB into plain per-sweep traces, the
//! membrane potential of every `CurrentClampSeries` in mV and its paired
//! `CurrentClampStimulusSeries` command in pA, with the series metadata (conversion,
//! offset, resolution, stored unit, starting time, rate, sweep number, electrode) and the
//! rows of the `intracellular_recordings` table when the file has one.
//!
//! The layout follows the NWB core schema 2.x (nwb.icephys.yaml, nwb.base.yaml; facts only,
//! no code copied): a `TimeSeries` group carries `data` with attributes `unit`, `conversion`,
//! `offset`, `resolution`, and either `starting_time` (attribute `rate`, Hz) or
//! `timestamps`; physical value = `data * conversion + offset` in `unit` ("volts" for a
//! `CurrentClampSeries`, "amperes" for a `CurrentClampStimulusSeries`); `sweep_number` is an
//! attribute and `electrode` a link to an `IntracellularElectrode` in
//! `/general/intracellular_ephys`. The `IntracellularRecordingsTable` stores its `stimulus`
//! and `response` columns as `TimeSeriesReferenceVectorData`, a compound of
//! `(idx_start: i32, count: i32, timeseries: object reference)`.
//!
//! Design: HDF5 is read with the pure-Rust `hdf5-reader` (no system libhdf5). Values are read
//! into our own `Vec`s with `Dataset::read_into`, so its ndarray version never leaks out.
//! Every buffer sized from a dataset header is checked against the file length first
//! (uncompressed data cannot be larger than the file; DEFLATE expands at most ~1032:1), and
//! every missing or malformed piece becomes an [`NwbError`] naming the file, the HDF5 object
//! and the reason, never a panic.

use std::collections::HashMap;
use std::path::Path;

use hdf5_reader::group::Group;
use hdf5_reader::{Dataset, Datatype, Hdf5File};

/// DEFLATE's maximal expansion ratio is about 1032:1; any decoded dataset larger than this
/// multiple of the file size cannot come from real data and is refused before allocating.
const MAX_EXPANSION: u64 = 1100;
/// Scale from SI volts to the reported millivolts.
const MV_PER_V: f64 = 1e3;
/// Scale from SI amperes to the reported picoamperes.
const PA_PER_A: f64 = 1e12;

/// Everything that can go wrong while reading an NWB icephys file.
#[derive(Debug, thiserror::Error)]
pub enum NwbError {
    #[error("{file}: cannot open as HDF5: {reason}")]
    Open { file: String, reason: String },
    #[error("{file}: not an NWB 2 file: {reason}")]
    NotNwb { file: String, reason: String },
    #[error("{file}: {object}: missing {what}")]
    Missing {
        file: String,
        object: String,
        what: String,
    },
    #[error("{file}: {object}: wrong data type: expected {expected}, found {found}")]
    WrongDtype {
        file: String,
        object: String,
        expected: String,
        found: String,
    },
    #[error("{file}: {object}: invalid value: {reason}")]
    Invalid {
        file: String,
        object: String,
        reason: String,
    },
    #[error("{file}: {object}: HDF5 read failed: {reason}")]
    Read {
        file: String,
        object: String,
        reason: String,
    },
    #[error("{file}: no CurrentClampSeries found in /acquisition")]
    NoSweeps { file: String },
}

/// One NWB `PatchClampSeries` (response or stimulus) scaled to the reporting unit.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchClampTrace {
    /// HDF5 path of the series group, e.g. `/acquisition/response_sweep_000`.
    pub path: String,
    /// `neurodata_type` attribute (`CurrentClampSeries`, `CurrentClampStimulusSeries`).
    pub neurodata_type: String,
    /// Samples in [`Self::unit`]: `(data * conversion + offset) * scale`, scale 1e3 (V->mV)
    /// or 1e12 (A->pA).
    pub values: Vec<f32>,
    /// Reporting unit: `"mV"` for a membrane potential, `"pA"` for a current.
    pub unit: &'static str,
    /// The file's `data.unit` attribute (`"volts"`, `"amperes"`).
    pub stored_unit: String,
    /// `data.conversion`: multiplies the stored value into `stored_unit`.
    pub conversion: f64,
    /// `data.offset` (in `stored_unit`), added after the conversion.
    pub offset: f64,
    /// `data.resolution` in `stored_unit` (NaN or -1 when the writer did not know it).
    pub resolution: f64,
    /// Time of the first sample (s).
    pub starting_time_s: f64,
    /// Sampling rate (Hz).
    pub rate_hz: f64,
    /// `sweep_number` attribute, if present.
    pub sweep_number: Option<u64>,
    /// Name of the linked `IntracellularElectrode`, if the link resolves.
    pub electrode: Option<String>,
    /// `gain` dataset (V/V for a response, V/A or A/V for a stimulus), if present.
    pub gain: Option<f64>,
    /// `stimulus_description` attribute, if present.
    pub stimulus_description: Option<String>,
}

impl PatchClampTrace {
    /// Sample interval (s).
    pub fn dt_s(&self) -> f64 {
        1.0 / self.rate_hz
    }
}

/// One current-clamp sweep: the recorded membrane potential and the command that drove it.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentClampSweep {
    pub sweep_number: Option<u64>,
    /// Membrane potential (mV).
    pub response: PatchClampTrace,
    /// Command current (pA), if a stimulus series is paired with the response.
    pub stimulus: Option<PatchClampTrace>,
    /// `bias_current` (pA), if stored.
    pub bias_current_pa: Option<f64>,
    /// `bridge_balance` (MOhm), if stored.
    pub bridge_balance_mohm: Option<f64>,
    /// `capacitance_compensation` (pF), if stored.
    pub capacitance_compensation_pf: Option<f64>,
}

/// An `IntracellularElectrode` from `/general/intracellular_ephys`.
#[derive(Debug, Clone, PartialEq)]
pub struct IntracellularElectrode {
    pub name: String,
    pub description: Option<String>,
}

/// A reference from a table row into a time series: `count` samples from `idx_start`
/// (`-1, -1` means "no series" in NWB).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesReference {
    /// HDF5 path of the referenced series (empty if the reference does not resolve to a
    /// series under /acquisition or /stimulus).
    pub path: String,
    pub idx_start: i32,
    pub count: i32,
}

/// One row of the `intracellular_recordings` table.
#[derive(Debug, Clone, PartialEq)]
pub struct IntracellularRecordingRow {
    pub id: i64,
    pub stimulus: Option<SeriesReference>,
    pub response: Option<SeriesReference>,
}

/// The icephys content of one NWB file.
#[derive(Debug, Clone, PartialEq)]
pub struct NwbIcephysFile {
    pub file: String,
    /// Root attribute `nwb_version`, e.g. "2.11.0".
    pub nwb_version: String,
    pub identifier: Option<String>,
    pub session_description: Option<String>,
    pub electrodes: Vec<IntracellularElectrode>,
    /// Sweeps sorted by sweep number (then series path).
    pub sweeps: Vec<CurrentClampSweep>,
    /// Rows of `/general/intracellular_ephys/intracellular_recordings` (empty if absent).
    pub recordings: Vec<IntracellularRecordingRow>,
}

/// Reads every `CurrentClampSeries` of an NWB 2 file with its stimulus.
///
/// Pairing of stimulus and response: through the `intracellular_recordings` table when it
/// exists (the schema's own statement of which series belong together), otherwise by equal
/// `sweep_number` (the NWB 2.0-2.3 convention of the deprecated `SweepTable`).
pub fn read_nwb_icephys(path: impl AsRef<Path>) -> Result<NwbIcephysFile, NwbError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let file_len = std::fs::metadata(path)
        .map_err(|e| NwbError::Open {
            file: file.clone(),
            reason: e.to_string(),
        })?
        .len();
    let h5 = Hdf5File::open(path).map_err(|e| NwbError::Open {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    // The superblock records where the writer ended the file; a shorter file lost data
    // even if the objects we need happen to precede the cut.
    // (Compared as an absolute offset, as MATLAB v7.3 files with a 512-byte user block show.)
    let eof = h5.superblock().eof_address;
    if eof > file_len {
        return Err(NwbError::Open {
            file,
            reason: format!(
                "truncated: the superblock says the file ends at byte {eof}, it has {file_len}"
            ),
        });
    }
    let ctx = Ctx {
        file: file.clone(),
        max_bytes: file_len.saturating_mul(MAX_EXPANSION),
    };
    let root = h5.root_group().map_err(|e| ctx.read("/", e))?;

    let nwb_version = root
        .attribute("nwb_version")
        .and_then(|a| a.read_string())
        .map_err(|_| NwbError::NotNwb {
            file: file.clone(),
            reason: "the root group has no string attribute `nwb_version`".into(),
        })?;
    if !nwb_version.starts_with('2') {
        return Err(NwbError::NotNwb {
            file,
            reason: format!("nwb_version is {nwb_version:?}; only NWB 2.x is supported"),
        });
    }
    let identifier = ctx.optional_string_dataset(&root, "identifier");
    let session_description = ctx.optional_string_dataset(&root, "session_description");

    // Electrodes, keyed by object-header address so that links from series resolve.
    let mut electrodes = Vec::new();
    let mut electrode_by_address = HashMap::new();
    if let Ok(icephys) = root
        .group("general")
        .and_then(|g| g.group("intracellular_ephys"))
    {
        let (groups, _) = icephys
            .members()
            .map_err(|e| ctx.read("/general/intracellular_ephys", e))?;
        for g in groups {
            if neurodata_type(&g).as_deref() == Some("IntracellularElectrode") {
                let name = g.name().to_string();
                electrode_by_address.insert(g.address(), name.clone());
                electrodes.push(IntracellularElectrode {
                    description: ctx.optional_string_dataset(&g, "description"),
                    name,
                });
            }
        }
    }

    // All patch-clamp series in /acquisition and /stimulus/presentation.
    let mut responses = Vec::new();
    let mut stimuli = Vec::new();
    let mut path_by_address = HashMap::new();
    for (parent, wanted) in [
        ("/acquisition", "CurrentClampSeries"),
        ("/stimulus/presentation", "CurrentClampStimulusSeries"),
    ] {
        let Ok(group) = open_group_path(&root, parent) else {
            continue;
        };
        let (groups, _) = group.members().map_err(|e| ctx.read(parent, e))?;
        for g in groups {
            let series_path = format!("{parent}/{}", g.name());
            path_by_address.insert(g.address(), series_path.clone());
            if neurodata_type(&g).as_deref() != Some(wanted) {
                continue;
            }
            let trace = ctx.read_trace(&g, &series_path, &electrode_by_address)?;
            if wanted == "CurrentClampSeries" {
                responses.push((g, trace));
            } else {
                stimuli.push(trace);
            }
        }
    }
    if responses.is_empty() {
        return Err(NwbError::NoSweeps { file });
    }

    let recordings = match open_group_path(
        &root,
        "/general/intracellular_ephys/intracellular_recordings",
    ) {
        Ok(table) => ctx.read_recordings_table(&table, &path_by_address)?,
        Err(_) => Vec::new(),
    };

    let mut sweeps = Vec::with_capacity(responses.len());
    for (group, response) in responses {
        let from_table = recordings
            .iter()
            .find(|row| {
                row.response
                    .as_ref()
                    .is_some_and(|r| r.path == response.path)
            })
            .and_then(|row| row.stimulus.as_ref())
            .and_then(|s| stimuli.iter().find(|t| t.path == s.path));
        let stimulus = if recordings.is_empty() {
            stimuli.iter().find(|s| {
                s.sweep_number.is_some()
                    && s.sweep_number == response.sweep_number
                    && (s.electrode == response.electrode)
            })
        } else {
            from_table
        }
        .cloned();
        if let Some(s) = &stimulus {
            ctx.check_alignment(&response, s)?;
        }
        sweeps.push(CurrentClampSweep {
            sweep_number: response.sweep_number,
            bias_current_pa: ctx
                .optional_scalar(&group, &response.path, "bias_current")?
                .map(|a| a * PA_PER_A),
            bridge_balance_mohm: ctx
                .optional_scalar(&group, &response.path, "bridge_balance")?
                .map(|o| o * 1e-6),
            capacitance_compensation_pf: ctx
                .optional_scalar(&group, &response.path, "capacitance_compensation")?
                .map(|f| f * 1e12),
            response,
            stimulus,
        });
    }
    sweeps.sort_by(|a, b| {
        a.sweep_number
            .cmp(&b.sweep_number)
            .then_with(|| a.response.path.cmp(&b.response.path))
    });

    Ok(NwbIcephysFile {
        file: ctx.file,
        nwb_version,
        identifier,
        session_description,
        electrodes,
        sweeps,
        recordings,
    })
}

/// Per-file reading context: the label used in errors and the decoded-size ceiling.
struct Ctx {
    file: String,
    max_bytes: u64,
}

impl Ctx {
    fn read(&self, object: &str, e: hdf5_reader::error::Error) -> NwbError {
        NwbError::Read {
            file: self.file.clone(),
            object: object.to_string(),
            reason: e.to_string(),
        }
    }

    fn missing(&self, object: &str, what: &str) -> NwbError {
        NwbError::Missing {
            file: self.file.clone(),
            object: object.to_string(),
            what: what.to_string(),
        }
    }

    fn invalid(&self, object: &str, reason: impl Into<String>) -> NwbError {
        NwbError::Invalid {
            file: self.file.clone(),
            object: object.to_string(),
            reason: reason.into(),
        }
    }

    fn optional_string_dataset(&self, group: &Group, name: &str) -> Option<String> {
        group.dataset(name).ok().and_then(|d| d.read_string().ok())
    }

    /// A scalar numeric dataset that the schema marks optional; present but unreadable is an error.
    fn optional_scalar(
        &self,
        group: &Group,
        object: &str,
        name: &str,
    ) -> Result<Option<f64>, NwbError> {
        let Ok(ds) = group.dataset(name) else {
            return Ok(None);
        };
        let values = self.read_numeric(&ds, &format!("{object}/{name}"))?;
        match values.as_slice() {
            [v] => Ok(Some(*v)),
            other => Err(self.invalid(
                &format!("{object}/{name}"),
                format!("expected a scalar, found {} values", other.len()),
            )),
        }
    }

    /// Reads any integer or floating-point dataset as f64, refusing other types and sizes
    /// that cannot come from this file.
    fn read_numeric(&self, ds: &Dataset, object: &str) -> Result<Vec<f64>, NwbError> {
        let n = ds.num_elements().map_err(|e| self.read(object, e))?;
        let dtype = ds.dtype().clone();
        let elem_bytes: u64 = match &dtype {
            Datatype::FixedPoint { size, .. } | Datatype::FloatingPoint { size, .. } => {
                u64::from(*size)
            }
            other => {
                return Err(NwbError::WrongDtype {
                    file: self.file.clone(),
                    object: object.to_string(),
                    expected: "an integer or floating-point number".into(),
                    found: describe_dtype(other),
                });
            }
        };
        if n.saturating_mul(elem_bytes) > self.max_bytes {
            return Err(self.invalid(
                object,
                format!("{n} elements of {elem_bytes} bytes cannot come from this file"),
            ));
        }
        let n = usize::try_from(n).map_err(|_| self.invalid(object, "too many elements"))?;
        match super::hdf5::read_numbers_f64(ds, n) {
            Some(r) => r.map_err(|e| self.read(object, e)),
            None => Err(NwbError::WrongDtype {
                file: self.file.clone(),
                object: object.to_string(),
                expected: "an integer or floating-point number".into(),
                found: describe_dtype(&dtype),
            }),
        }
    }

    fn attr_f64(&self, ds: &Dataset, object: &str, name: &str) -> Result<Option<f64>, NwbError> {
        match ds.attribute(name) {
            Ok(a) => a.read_as_f64().map(Some).map_err(|e| {
                self.invalid(object, format!("attribute `{name}` is not a number ({e})"))
            }),
            Err(_) => Ok(None),
        }
    }

    fn read_trace(
        &self,
        group: &Group,
        path: &str,
        electrodes: &HashMap<u64, String>,
    ) -> Result<PatchClampTrace, NwbError> {
        let neurodata_type = neurodata_type(group).unwrap_or_default();
        let data_path = format!("{path}/data");
        let data = group
            .dataset("data")
            .map_err(|_| self.missing(path, "dataset `data`"))?;
        if data.ndim() != 1 {
            return Err(self.invalid(
                &data_path,
                format!(
                    "expected 1 dimension (time), found shape {:?}",
                    data.shape()
                ),
            ));
        }
        let stored_unit = data
            .attribute("unit")
            .and_then(|a| a.read_string())
            .map_err(|_| self.missing(&data_path, "string attribute `unit`"))?;
        let (unit, scale) = match stored_unit.as_str() {
            "volts" | "volt" | "V" => ("mV", MV_PER_V),
            "amperes" | "ampere" | "amps" | "A" => ("pA", PA_PER_A),
            other => {
                return Err(self.invalid(
                    &data_path,
                    format!("unit {other:?} is neither volts nor amperes"),
                ));
            }
        };
        let conversion = self
            .attr_f64(&data, &data_path, "conversion")?
            .unwrap_or(1.0);
        let offset = self.attr_f64(&data, &data_path, "offset")?.unwrap_or(0.0);
        let resolution = self
            .attr_f64(&data, &data_path, "resolution")?
            .unwrap_or(-1.0);
        if !conversion.is_finite() || conversion == 0.0 || !offset.is_finite() {
            return Err(self.invalid(
                &data_path,
                format!(
                    "conversion {conversion} / offset {offset} must be finite, conversion non-zero"
                ),
            ));
        }
        let raw = self.read_numeric(&data, &data_path)?;
        let values: Vec<f32> = raw
            .iter()
            .map(|&x| ((x * conversion + offset) * scale) as f32)
            .collect();

        let (starting_time_s, rate_hz) = self.read_timing(group, path, values.len())?;
        let sweep_number = match group.attribute("sweep_number") {
            Ok(a) => {
                let v = a
                    .read_as_f64()
                    .map_err(|e| self.invalid(path, format!("attribute `sweep_number`: {e}")))?;
                if !(v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53)) {
                    return Err(self.invalid(
                        path,
                        format!("sweep_number {v} is not a non-negative integer"),
                    ));
                }
                Some(v as u64)
            }
            Err(_) => None,
        };
        let electrode = group
            .group("electrode")
            .ok()
            .and_then(|e| electrodes.get(&e.address()).cloned());
        let gain = self.optional_scalar(group, path, "gain")?;
        let stimulus_description = group
            .attribute("stimulus_description")
            .and_then(|a| a.read_string())
            .ok();
        Ok(PatchClampTrace {
            path: path.to_string(),
            neurodata_type,
            values,
            unit,
            stored_unit,
            conversion,
            offset,
            resolution,
            starting_time_s,
            rate_hz,
            sweep_number,
            electrode,
            gain,
            stimulus_description,
        })
    }

    /// `starting_time` + `rate`, or uniformly spaced `timestamps` (a sweep with irregular
    /// sampling cannot be represented as a trace with one rate, so it is refused).
    fn read_timing(&self, group: &Group, path: &str, n: usize) -> Result<(f64, f64), NwbError> {
        if let Ok(st) = group.dataset("starting_time") {
            let st_path = format!("{path}/starting_time");
            let t0 = match self.read_numeric(&st, &st_path)?.as_slice() {
                [t] => *t,
                other => {
                    return Err(self.invalid(
                        &st_path,
                        format!("expected a scalar, found {} values", other.len()),
                    ));
                }
            };
            let rate = self
                .attr_f64(&st, &st_path, "rate")?
                .ok_or_else(|| self.missing(&st_path, "attribute `rate` (sampling rate, Hz)"))?;
            if !(rate.is_finite() && rate > 0.0 && t0.is_finite()) {
                return Err(self.invalid(
                    &st_path,
                    format!("rate {rate} Hz must be positive, starting time {t0} finite"),
                ));
            }
            return Ok((t0, rate));
        }
        let ts_path = format!("{path}/timestamps");
        let ts = group
            .dataset("timestamps")
            .map_err(|_| self.missing(path, "`starting_time` (with `rate`) or `timestamps`"))?;
        let t = self.read_numeric(&ts, &ts_path)?;
        if t.len() != n || n < 2 {
            return Err(self.invalid(&ts_path, format!("{} timestamps for {n} samples", t.len())));
        }
        let dt = (t[n - 1] - t[0]) / (n - 1) as f64;
        if !(dt.is_finite() && dt > 0.0)
            || t.windows(2)
                .any(|w| ((w[1] - w[0]) - dt).abs() > 1e-6 * dt.max(1e-12) + 1e-9)
        {
            return Err(self.invalid(
                &ts_path,
                "timestamps are not uniformly spaced; a single rate cannot describe them",
            ));
        }
        Ok((t[0], 1.0 / dt))
    }

    fn read_recordings_table(
        &self,
        table: &Group,
        series_paths: &HashMap<u64, String>,
    ) -> Result<Vec<IntracellularRecordingRow>, NwbError> {
        const TABLE: &str = "/general/intracellular_ephys/intracellular_recordings";
        let ids_ds = table
            .dataset("id")
            .map_err(|_| self.missing(TABLE, "dataset `id`"))?;
        let ids = self.read_numeric(&ids_ds, &format!("{TABLE}/id"))?;
        let stimuli =
            self.read_reference_column(table, "stimuli", "stimulus", ids.len(), series_paths)?;
        let responses =
            self.read_reference_column(table, "responses", "response", ids.len(), series_paths)?;
        Ok(ids
            .iter()
            .enumerate()
            .map(|(i, &id)| IntracellularRecordingRow {
                id: id as i64,
                stimulus: stimuli.as_ref().and_then(|c| c[i].clone()),
                response: responses.as_ref().and_then(|c| c[i].clone()),
            })
            .collect())
    }

    /// Decodes a `TimeSeriesReferenceVectorData` column (compound idx_start, count, ref).
    fn read_reference_column(
        &self,
        table: &Group,
        sub_table: &str,
        column: &str,
        rows: usize,
        series_paths: &HashMap<u64, String>,
    ) -> Result<Option<Vec<Option<SeriesReference>>>, NwbError> {
        let object =
            format!("/general/intracellular_ephys/intracellular_recordings/{sub_table}/{column}");
        let Ok(ds) = table.group(sub_table).and_then(|g| g.dataset(column)) else {
            return Ok(None);
        };
        let Datatype::Compound { size, fields } = ds.dtype().clone() else {
            return Err(NwbError::WrongDtype {
                file: self.file.clone(),
                object,
                expected: "compound (idx_start, count, timeseries)".into(),
                found: describe_dtype(ds.dtype()),
            });
        };
        let field = |name: &str| fields.iter().find(|f| f.name == name);
        let (Some(start_f), Some(count_f), Some(ref_f)) =
            (field("idx_start"), field("count"), field("timeseries"))
        else {
            return Err(self.invalid(
                &object,
                "compound lacks one of the fields idx_start, count, timeseries",
            ));
        };
        let ref_size = match ref_f.datatype {
            Datatype::Reference { size, .. } => size as usize,
            _ => return Err(self.invalid(&object, "field `timeseries` is not an object reference")),
        };
        for f in [start_f, count_f] {
            if !matches!(
                f.datatype,
                Datatype::FixedPoint {
                    size: 4,
                    signed: true,
                    ..
                }
            ) {
                return Err(self.invalid(
                    &object,
                    format!("field `{}` is not a 32-bit integer", f.name),
                ));
            }
        }
        let n = ds.num_elements().map_err(|e| self.read(&object, e))?;
        if n != rows as u64 {
            return Err(self.invalid(&object, format!("{n} rows, but the table has {rows} ids")));
        }
        if n.saturating_mul(u64::from(size)) > self.max_bytes {
            return Err(self.invalid(&object, "column larger than the file"));
        }
        let raw = ds.read_raw_bytes().map_err(|e| self.read(&object, e))?;
        let size = size as usize;
        if raw.len() != rows * size
            || [
                start_f.byte_offset as usize + 4,
                count_f.byte_offset as usize + 4,
                ref_f.byte_offset as usize + ref_size,
            ]
            .iter()
            .any(|&end| end > size)
            || !(1..=8).contains(&ref_size)
        {
            return Err(self.invalid(&object, "compound layout does not fit its element size"));
        }
        let i32_at = |rec: &[u8], off: u32| {
            let o = off as usize;
            i32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]])
        };
        let mut out = Vec::with_capacity(rows);
        for rec in raw.chunks_exact(size) {
            let idx_start = i32_at(rec, start_f.byte_offset);
            let count = i32_at(rec, count_f.byte_offset);
            let o = ref_f.byte_offset as usize;
            let mut addr_bytes = [0u8; 8];
            addr_bytes[..ref_size].copy_from_slice(&rec[o..o + ref_size]);
            let address = u64::from_le_bytes(addr_bytes);
            out.push(if idx_start < 0 && count < 0 {
                None
            } else {
                Some(SeriesReference {
                    path: series_paths.get(&address).cloned().unwrap_or_default(),
                    idx_start,
                    count,
                })
            });
        }
        Ok(Some(out))
    }

    /// A stimulus and its response must share the time base, or a sample-by-sample analysis
    /// (spike count during the step) would silently misalign.
    fn check_alignment(
        &self,
        response: &PatchClampTrace,
        stimulus: &PatchClampTrace,
    ) -> Result<(), NwbError> {
        let same_rate = (response.rate_hz - stimulus.rate_hz).abs() <= 1e-9 * response.rate_hz;
        let same_start =
            (response.starting_time_s - stimulus.starting_time_s).abs() <= 0.5 / response.rate_hz;
        if !same_rate || !same_start || response.values.len() != stimulus.values.len() {
            return Err(self.invalid(
                &response.path,
                format!(
                    "paired stimulus {} differs in time base: {} vs {} samples, {} vs {} Hz, start {} vs {} s",
                    stimulus.path,
                    response.values.len(),
                    stimulus.values.len(),
                    response.rate_hz,
                    stimulus.rate_hz,
                    response.starting_time_s,
                    stimulus.starting_time_s
                ),
            ));
        }
        Ok(())
    }
}

fn neurodata_type(group: &Group) -> Option<String> {
    group
        .attribute("neurodata_type")
        .and_then(|a| a.read_string())
        .ok()
}

fn open_group_path(root: &Group, path: &str) -> Result<Group, hdf5_reader::error::Error> {
    let mut g = root.clone();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        g = g.group(part)?;
    }
    Ok(g)
}

fn describe_dtype(dtype: &Datatype) -> String {
    match dtype {
        Datatype::String { .. } => "fixed-length string".into(),
        Datatype::VarLen { .. } => "variable-length string or sequence".into(),
        Datatype::Compound { .. } => "compound".into(),
        Datatype::Reference { .. } => "object reference".into(),
        Datatype::Opaque { .. } => "opaque".into(),
        Datatype::Enum { .. } => "enum".into(),
        Datatype::Array { .. } => "array".into(),
        Datatype::Bitfield { .. } => "bitfield".into(),
        Datatype::FixedPoint { size, signed, .. } => {
            format!("{}int{}", if *signed { "" } else { "u" }, size * 8)
        }
        Datatype::FloatingPoint { size, .. } => format!("float{}", size * 8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nwbmat");

    fn fixture(name: &str) -> String {
        format!("{DIR}/{name}")
    }

    #[derive(serde::Deserialize)]
    struct Stats {
        n: usize,
        sum: f64,
        sum_sq: f64,
        min: f64,
        max: f64,
        probe_indices: Vec<usize>,
        probe_values: Vec<f64>,
    }
    #[derive(serde::Deserialize)]
    struct ExpectedFile {
        sweeps: Vec<u64>,
        starting_time_s: Vec<f64>,
        voltage_mv: Vec<Stats>,
        command_pa: Vec<Stats>,
    }
    #[derive(serde::Deserialize)]
    struct Expected {
        rate_hz: f64,
        files: HashMap<String, ExpectedFile>,
    }

    /// Compares a read trace with statistics numpy computed on the arrays that went into
    /// pynwb. `tol` is the per-sample float32 rounding budget of the storage scheme.
    fn assert_matches(values: &[f32], s: &Stats, tol: f64, what: &str) -> f64 {
        assert_eq!(values.len(), s.n, "{what}: length");
        let mut max_err = 0.0f64;
        for (&i, &v) in s.probe_indices.iter().zip(&s.probe_values) {
            let err = (f64::from(values[i]) - v).abs();
            max_err = max_err.max(err);
            assert!(err <= tol, "{what}[{i}]: read {} vs {v}", values[i]);
        }
        let sum: f64 = values.iter().map(|&x| f64::from(x)).sum();
        let sum_sq: f64 = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let min = values
            .iter()
            .fold(f64::INFINITY, |m, &x| m.min(f64::from(x)));
        let max = values
            .iter()
            .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
        assert!(
            (sum - s.sum).abs() <= tol * s.n as f64,
            "{what}: sum {sum} vs {}",
            s.sum
        );
        assert!(
            (sum_sq - s.sum_sq).abs() <= 1e-6 * s.sum_sq.abs() + tol * s.n as f64 * 200.0,
            "{what}: sum_sq {sum_sq} vs {}",
            s.sum_sq
        );
        assert!(
            (min - s.min).abs() <= tol && (max - s.max).abs() <= tol,
            "{what}: range {min}..{max} vs {}..{}",
            s.min,
            s.max
        );
        max_err
    }

    fn check_file(name: &str, v_tol_mv: f64, i_tol_pa: f64) {
        let expected: Expected =
            serde_json::from_str(&std::fs::read_to_string(fixture("expected_nwb.json")).unwrap())
                .unwrap();
        let exp = &expected.files[name];
        let nwb = read_nwb_icephys(fixture(name)).unwrap();
        assert!(nwb.nwb_version.starts_with("2."), "{}", nwb.nwb_version);
        assert_eq!(nwb.electrodes.len(), 1);
        assert_eq!(nwb.electrodes[0].name, "electrode_0");
        assert_eq!(nwb.sweeps.len(), exp.sweeps.len());
        assert_eq!(
            nwb.recordings.len(),
            exp.sweeps.len(),
            "intracellular_recordings rows"
        );
        let (mut v_err, mut i_err) = (0.0f64, 0.0f64);
        for (k, sweep) in nwb.sweeps.iter().enumerate() {
            assert_eq!(sweep.sweep_number, Some(exp.sweeps[k]));
            let r = &sweep.response;
            assert_eq!((r.unit, r.stored_unit.as_str()), ("mV", "volts"));
            assert_eq!(r.neurodata_type, "CurrentClampSeries");
            assert_eq!(r.electrode.as_deref(), Some("electrode_0"));
            assert_eq!(r.rate_hz, expected.rate_hz);
            assert_eq!(r.starting_time_s, exp.starting_time_s[k]);
            assert!(r.resolution.is_nan());
            assert_eq!(sweep.bias_current_pa, Some(0.0));
            let s = sweep.stimulus.as_ref().expect("paired stimulus");
            assert_eq!((s.unit, s.stored_unit.as_str()), ("pA", "amperes"));
            assert_eq!(s.neurodata_type, "CurrentClampStimulusSeries");
            assert_eq!(s.sweep_number, Some(exp.sweeps[k]));
            v_err = v_err.max(assert_matches(
                &r.values,
                &exp.voltage_mv[k],
                v_tol_mv,
                "voltage",
            ));
            i_err = i_err.max(assert_matches(
                &s.values,
                &exp.command_pa[k],
                i_tol_pa,
                "command",
            ));
            let row = &nwb.recordings[k];
            assert_eq!(row.response.as_ref().unwrap().path, r.path);
            assert_eq!(row.stimulus.as_ref().unwrap().path, s.path);
            assert_eq!(
                row.response.as_ref().unwrap().count as usize,
                r.values.len()
            );
        }
        eprintln!("{name}: max |error| voltage {v_err:.3e} mV, command {i_err:.3e} pA");
    }

    #[test]
    fn round_trip_mv_with_conversion_contiguous() {
        // Stored in mV as float32 with conversion 1e-3: exact up to the f64 product rounding.
        check_file("icephys_171116sh_0018.nwb", 1e-4, 1e-4);
    }

    #[test]
    fn round_trip_volts_with_offset_gzip() {
        // Stored as float32 volts relative to -70 mV: float32 spacing near 0.03 V is ~2e-9 V
        // (2e-6 mV); command in float32 amperes (~1e-19 A spacing for 1e-10 A).
        check_file("icephys_17o05028_ic_steps.nwb", 1e-4, 1e-3);
    }

    #[test]
    fn missing_data_is_a_clear_error() {
        let err = read_nwb_icephys(fixture("bad_no_data.nwb")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, NwbError::Missing { .. }), "{msg}");
        assert!(
            msg.contains("bad_no_data.nwb")
                && msg.contains("/acquisition/response_sweep_000")
                && msg.contains("`data`"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_dtype_is_a_clear_error() {
        let err = read_nwb_icephys(fixture("bad_wrong_dtype.nwb")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, NwbError::WrongDtype { .. }), "{msg}");
        assert!(
            msg.contains("/acquisition/response_sweep_000/data") && msg.contains("string"),
            "{msg}"
        );
    }

    #[test]
    fn missing_rate_is_a_clear_error() {
        let err = read_nwb_icephys(fixture("bad_no_rate.nwb")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, NwbError::Missing { .. }), "{msg}");
        assert!(
            msg.contains("starting_time") && msg.contains("rate"),
            "{msg}"
        );
    }

    #[test]
    fn non_hdf5_and_truncated_files_are_errors() {
        let err = read_nwb_icephys(fixture("expected_nwb.json")).unwrap_err();
        assert!(matches!(err, NwbError::Open { .. }), "{err}");
        let bytes = std::fs::read(fixture("icephys_17o05028_ic_steps.nwb")).unwrap();
        let dir = std::env::temp_dir().join(format!("nwbmat_trunc_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for cut in [64usize, 2048, bytes.len() / 2, bytes.len() - 100] {
            let p = dir.join(format!("cut_{cut}.nwb"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(
                read_nwb_icephys(&p).is_err(),
                "truncated at {cut} bytes must fail"
            );
        }
        // Flipped bytes anywhere in the file: an error or odd values, but never a panic.
        for (stride, start) in [(4099usize, 96usize), (509, 2000), (61, 40000)] {
            let mut corrupt = bytes.clone();
            for k in (start..corrupt.len()).step_by(stride) {
                corrupt[k] ^= 0xa5;
            }
            let p = dir.join(format!("corrupt_{stride}.nwb"));
            std::fs::write(&p, &corrupt).unwrap();
            let _ = read_nwb_icephys(&p);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
