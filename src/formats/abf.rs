//! Reader for Axon Binary Format 2 (ABF2) recordings, as written by Clampex 10/11.
//!
//! Role: turn an `.abf` file into per-sweep traces (the recorded ADC channels, scaled to
//! physical units) plus the command waveform each DAC delivered during every sweep, rebuilt
//! from the protocol's epoch table. The numbers reproduce pyABF 2.3 (Scott W. Harden,
//! github.com/swharden/pyABF, MIT): the header layout follows `src/pyabf/abf2/*.py` and the
//! official ABF2 section map; the scaling follows `ABF._readHeadersV2` / `_loadAndScaleData`
//! in `src/pyabf/abf.py`; the command waveform follows `EpochTable.getEpochWaveformsBySweep`
//! and `EpochSweepWaveform.getWaveform` in `src/pyabf/waveform.py` and `Stimulus` in
//! `src/pyabf/stimulus.py`. No code was copied; only the file layout and the arithmetic are.
//!
//! Design: the whole file is read into memory and parsed from a byte slice. Every header
//! value that sizes a read or an allocation is checked against the file length first, so a
//! truncated or corrupted file yields an [`AbfError`] naming the file, the field and the
//! reason, never a panic and never an allocation sized by an unchecked header field.
//! ABF1 files (signature `"ABF "`) are rejected with [`AbfError::Abf1NotSupported`].

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// ABF files address sections in 512-byte blocks.
const BLOCK_BYTES: u64 = 512;
/// ABF2 supports at most 16 ADC channels (`ABF_ADCCOUNT` in the Axon SDK).
const MAX_ADC_CHANNELS: usize = 16;
/// Byte offsets of the section-map entries in the ABF2 file header. Each entry is
/// `{u32 block index, u32 bytes per entry, i64 entry count}` (16 bytes).
const SECTION_PROTOCOL: u64 = 76;
const SECTION_ADC: u64 = 92;
const SECTION_DAC: u64 = 108;
const SECTION_EPOCH_PER_DAC: u64 = 156;
const SECTION_STRINGS: u64 = 220;
const SECTION_DATA: u64 = 236;
const SECTION_SYNCH_ARRAY: u64 = 316;
/// Operation mode "gap-free": pyABF treats such files as one sweep.
const OPERATION_MODE_GAP_FREE: i16 = 3;

/// Everything that can go wrong while reading an ABF file. Every variant names the file
/// (its path, or the label given to [`AbfFile::from_bytes`]).
#[derive(Debug, thiserror::Error)]
pub enum AbfError {
    #[error("{file}: cannot read the file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not an ABF file: the first 4 bytes are {found:?}, expected \"ABF2\"")]
    BadMagic { file: String, found: String },
    #[error("{file}: ABF1 files (signature \"ABF \") are not supported; only ABF2 is")]
    Abf1NotSupported { file: String },
    #[error(
        "{file}: truncated: {what} needs bytes {start}..{end} but the file has {file_len} bytes"
    )]
    Truncated {
        file: String,
        what: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("{file}: invalid header field {field}: {reason}")]
    InvalidField {
        file: String,
        field: String,
        reason: String,
    },
    #[error("{file}: unsupported: {what}")]
    Unsupported { file: String, what: String },
    #[error("{file}: {what} {index} is out of range (the file has {count})")]
    OutOfRange {
        file: String,
        what: &'static str,
        index: usize,
        count: usize,
    },
    #[error("{file}: command waveform of DAC {dac}, sweep {sweep}: {reason}")]
    Waveform {
        file: String,
        dac: usize,
        sweep: usize,
        reason: String,
    },
}

/// Shape of one epoch of the waveform editor (`nEpochType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochKind {
    Off,
    Step,
    Ramp,
    Pulse,
    Triangle,
    Cosine,
    Biphasic,
    /// A type code pyABF does not know; its samples are NaN, as in pyABF.
    Unknown(i16),
}

impl EpochKind {
    fn from_code(code: i16) -> Self {
        match code {
            0 => Self::Off,
            1 => Self::Step,
            2 => Self::Ramp,
            3 => Self::Pulse,
            4 => Self::Triangle,
            5 => Self::Cosine,
            7 => Self::Biphasic,
            other => Self::Unknown(other),
        }
    }
}

/// One row of the EpochPerDAC section: an epoch as configured in the waveform editor.
/// Levels are in the DAC's units (pA in current clamp); durations in samples.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochDefinition {
    pub epoch_number: i16,
    pub dac_number: i16,
    pub kind: EpochKind,
    pub first_level: f32,
    pub level_increment: f32,
    pub first_duration_samples: i32,
    pub duration_increment_samples: i32,
    pub pulse_period_samples: i32,
    pub pulse_width_samples: i32,
}

impl EpochDefinition {
    /// Clampex letter of the epoch: 0 -> "A", 25 -> "Z" (pyABF's `Epoch.epochLetter`).
    pub fn letter(&self) -> String {
        let mut number = i32::from(self.epoch_number);
        if number < 0 {
            return "?".to_string();
        }
        let mut letter = String::new();
        while number >= 0 {
            letter.push(char::from(b'A' + (number % 26) as u8));
            number -= 26;
        }
        letter
    }
}

/// One span of a sweep's command waveform: the holding segment before the epochs (the first
/// 1/64 of the sweep), one segment per non-"Off" epoch, and the segment after the epochs.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSegment {
    /// `None` for the pre-epoch and post-epoch holding segments.
    pub epoch_number: Option<i16>,
    pub kind: EpochKind,
    pub start_sample: usize,
    pub end_sample: usize,
    /// Level reached in this segment (DAC units), already stepped for the sweep.
    pub level: f64,
    pub pulse_period_samples: i64,
    pub pulse_width_samples: i64,
}

/// A recorded (ADC) channel and the linear scaling from stored int16 to physical units.
#[derive(Clone, Debug, PartialEq)]
pub struct AdcChannel {
    pub name: String,
    pub units: String,
    /// Physical units per int16 count, rounded to f32 as numpy applies it.
    pub gain_per_count: f32,
    pub offset: f32,
}

/// A command (DAC) channel and how its waveform is produced.
#[derive(Clone, Debug, PartialEq)]
pub struct DacChannel {
    pub dac_number: i16,
    /// Name and units are resolved only for the first `channel_count` DACs, as pyABF does.
    pub name: Option<String>,
    pub units: Option<String>,
    /// `fDACHoldingLevel`, with pyABF's clean-up (|x| > 1e6 -> NaN, 0 < |x| < 1e-6 -> 0).
    pub holding_level: f64,
    pub waveform_enabled: bool,
    /// 0 none, 1 epoch table, 2 stimulus file.
    pub waveform_source: i16,
    /// `nInterEpisodeLevel != 0`: between sweeps the DAC keeps the last epoch's level.
    pub keeps_last_level_between_sweeps: bool,
}

/// A parsed ABF2 file with its sweeps scaled to physical units.
#[derive(Clone, Debug)]
pub struct AbfFile {
    label: String,
    version: [u8; 4],
    sampling_rate_hz: u32,
    sweep_count: usize,
    samples_per_sweep: usize,
    adc_channels: Vec<AdcChannel>,
    dac_channels: Vec<DacChannel>,
    epochs: Vec<EpochDefinition>,
    protocol_path: String,
    protocol: String,
    /// Scaled samples, channel-major: channel `c` occupies `c*points_per_channel ..`.
    /// Empty when the file was opened header-only ([`AbfReader`]).
    samples: Vec<f32>,
    samples_loaded: bool,
    points_per_channel: usize,
    /// Byte offset of the first sample of the data section (checked to lie in the file).
    data_start: u64,
    /// 0 = int16, 1 = float32.
    data_format: u16,
}

/// Where the parser's bytes come from: an in-memory file image, or an open file read with
/// seeks (header-only opening, so a long recording is never loaded whole).
enum Image<'a> {
    Slice(&'a [u8]),
    File(std::cell::RefCell<std::fs::File>),
}

/// Bounds-checked little-endian reads from the file (image or open file).
struct Bytes<'a> {
    image: Image<'a>,
    file_len: u64,
    file: &'a str,
}

impl<'a> Bytes<'a> {
    fn len(&self) -> u64 {
        self.file_len
    }

    /// `len` bytes from `start`, checked against the file length before anything is read or
    /// allocated, so an allocation is never larger than the file.
    fn slice(&self, start: u64, len: u64, what: &str) -> Result<Cow<'a, [u8]>, AbfError> {
        let end = start.checked_add(len);
        match end {
            Some(end) if end <= self.len() => match &self.image {
                Image::Slice(data) => Ok(Cow::Borrowed(&data[start as usize..end as usize])),
                Image::File(file) => {
                    let mut buf = vec![0u8; len as usize];
                    read_exact_at(&mut file.borrow_mut(), start, &mut buf).map_err(|source| AbfError::Io {
                        file: self.file.to_string(),
                        source,
                    })?;
                    Ok(Cow::Owned(buf))
                }
            },
            _ => Err(AbfError::Truncated {
                file: self.file.to_string(),
                what: what.to_string(),
                start,
                end: end.unwrap_or(u64::MAX),
                file_len: self.len(),
            }),
        }
    }

    fn array<const N: usize>(&self, offset: u64, what: &str) -> Result<[u8; N], AbfError> {
        let bytes = self.slice(offset, N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn i16(&self, offset: u64, what: &str) -> Result<i16, AbfError> {
        self.array(offset, what).map(i16::from_le_bytes)
    }
    fn u16(&self, offset: u64, what: &str) -> Result<u16, AbfError> {
        self.array(offset, what).map(u16::from_le_bytes)
    }
    fn i32(&self, offset: u64, what: &str) -> Result<i32, AbfError> {
        self.array(offset, what).map(i32::from_le_bytes)
    }
    fn u32(&self, offset: u64, what: &str) -> Result<u32, AbfError> {
        self.array(offset, what).map(u32::from_le_bytes)
    }
    fn i64(&self, offset: u64, what: &str) -> Result<i64, AbfError> {
        self.array(offset, what).map(i64::from_le_bytes)
    }
    fn f32(&self, offset: u64, what: &str) -> Result<f32, AbfError> {
        self.array(offset, what).map(f32::from_le_bytes)
    }

    fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> AbfError {
        AbfError::InvalidField {
            file: self.file.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A section of the file after its map entry was checked against the file length.
#[derive(Clone, Copy, Debug)]
struct Section {
    byte_start: u64,
    entry_bytes: u64,
    entry_count: usize,
}

impl Section {
    fn entry_offset(&self, index: usize) -> u64 {
        // Cannot overflow: start + bytes * count was checked to lie within the file.
        self.byte_start + self.entry_bytes * index as u64
    }
}

/// Reads a section-map entry and checks that all its entries lie inside the file and are at
/// least `min_entry_bytes` long (the furthest field this reader uses), so later per-entry
/// reads and any allocation sized by the entry count are bounded by the file size.
fn locate_section(
    bytes: &Bytes<'_>,
    name: &str,
    map_offset: u64,
    min_entry_bytes: u64,
) -> Result<Section, AbfError> {
    let block = bytes.u32(map_offset, &format!("section map entry of {name}"))?;
    let entry_bytes =
        u64::from(bytes.u32(map_offset + 4, &format!("section map entry of {name}"))?);
    let count = bytes.i64(map_offset + 8, &format!("section map entry of {name}"))?;
    if count < 0 {
        return Err(bytes.invalid(
            format!("{name}.llNumEntries"),
            format!("negative entry count {count}"),
        ));
    }
    let byte_start = u64::from(block) * BLOCK_BYTES;
    if count == 0 {
        return Ok(Section {
            byte_start,
            entry_bytes,
            entry_count: 0,
        });
    }
    if entry_bytes < min_entry_bytes {
        return Err(bytes.invalid(
            format!("{name}.uBytes"),
            format!("entry size {entry_bytes} bytes is smaller than the {min_entry_bytes} bytes an entry needs"),
        ));
    }
    let count = count as u64;
    let end = entry_bytes
        .checked_mul(count)
        .and_then(|total| total.checked_add(byte_start));
    match end {
        Some(end) if end <= bytes.len() => Ok(Section {
            byte_start,
            entry_bytes,
            // end <= file length, so the count fits in usize.
            entry_count: count as usize,
        }),
        _ => Err(AbfError::Truncated {
            file: bytes.file.to_string(),
            what: format!("{name} ({count} entries of {entry_bytes} bytes from block {block})"),
            start: byte_start,
            end: end.unwrap_or(u64::MAX),
            file_len: bytes.len(),
        }),
    }
}

/// Splits the first entry of the Strings section into the indexed strings that header
/// fields refer to, the way pyABF's `StringsSection` does: start at the last `\0\0`, map
/// 0xB5 (micro sign) to 'u', split on `\0`, drop the first piece, decode as ASCII with
/// U+FFFD for other bytes, strip Python whitespace.
fn indexed_strings(first_entry: &[u8]) -> Vec<String> {
    // Python's bytes.rfind returns -1 when absent, and slicing [-1:] keeps the last byte.
    let tail = match first_entry.windows(2).rposition(|pair| pair == [0, 0]) {
        Some(start) => &first_entry[start..],
        None => &first_entry[first_entry.len().saturating_sub(1)..],
    };
    tail.split(|&b| b == 0)
        .skip(1)
        .map(|piece| {
            let text: String = piece
                .iter()
                .map(|&b| match b {
                    0xB5 => 'u',
                    b if b.is_ascii() => char::from(b),
                    _ => char::REPLACEMENT_CHARACTER,
                })
                .collect();
            text.trim_matches(is_python_whitespace).to_string()
        })
        .collect()
}

/// Characters Python's `str.strip()` removes, restricted to what ASCII decoding can yield.
fn is_python_whitespace(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\x1f'
    )
}

fn lookup_string(
    bytes: &Bytes<'_>,
    strings: &[String],
    index: i64,
    field: &str,
) -> Result<String, AbfError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| strings.get(i))
        .cloned()
        .ok_or_else(|| {
            bytes.invalid(
                field,
                format!(
                    "string index {index} is out of range (the strings section holds {} strings)",
                    strings.len()
                ),
            )
        })
}

/// pyABF's protocol name: the stem of a Windows path ending in ".pro", else "None".
fn protocol_name(path: &str) -> String {
    if !path.ends_with(".pro") {
        return "None".to_string();
    }
    let name = path.rsplit(['\\', '/']).next().unwrap_or(path);
    // A drive prefix without separator ("C:x.pro") is not part of the name.
    let name = match name.as_bytes() {
        [d, b':', ..] if d.is_ascii_alphabetic() => &name[2..],
        _ => name,
    };
    match name.rfind('.') {
        Some(dot) if dot > 0 => name[..dot].to_string(),
        _ => name.to_string(),
    }
}

fn require_divisor(bytes: &Bytes<'_>, value: f64, field: String) -> Result<f64, AbfError> {
    if value == 0.0 || !value.is_finite() {
        return Err(bytes.invalid(
            field,
            format!("scaling divisor is {value}; it must be finite and non-zero"),
        ));
    }
    Ok(value)
}

impl AbfFile {
    /// Reads and parses the ABF2 file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AbfError> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| AbfError::Io {
            file: label.clone(),
            source,
        })?;
        Self::from_bytes(&data, &label)
    }

    /// Parses an ABF2 file image; `label` names the file in error messages.
    pub fn from_bytes(data: &[u8], label: &str) -> Result<Self, AbfError> {
        let bytes = Bytes { image: Image::Slice(data), file_len: data.len() as u64, file: label };
        Self::parse(&bytes, label, true)
    }

    /// Parses the header (and, with `load_samples`, the samples) from `bytes`.
    fn parse(bytes: &Bytes<'_>, label: &str, load_samples: bool) -> Result<Self, AbfError> {
        let magic: [u8; 4] = bytes.array(0, "file signature")?;
        match &magic {
            b"ABF2" => {}
            b"ABF " => {
                return Err(AbfError::Abf1NotSupported {
                    file: label.to_string(),
                });
            }
            other => {
                return Err(AbfError::BadMagic {
                    file: label.to_string(),
                    found: String::from_utf8_lossy(other).into_owned(),
                });
            }
        }
        let version_le: [u8; 4] = bytes.array(4, "fFileVersionNumber")?;
        let version = [version_le[3], version_le[2], version_le[1], version_le[0]];
        let actual_episodes = bytes.u32(12, "lActualEpisodes")?;
        let data_format = bytes.u16(30, "nDataFormat")?;
        let protocol_path_index = bytes.u32(72, "uProtocolPathIndex")?;

        // Protocol section: pyABF reads its fields at fixed offsets from the block start.
        let protocol = locate_section(&bytes, "ProtocolSection", SECTION_PROTOCOL, 0)?;
        let p = protocol.byte_start;
        let operation_mode = bytes.i16(p, "ProtocolSection.nOperationMode")?;
        let sequence_interval_us = bytes.f32(p + 2, "ProtocolSection.fADCSequenceInterval")?;
        let adc_range = bytes.f32(p + 110, "ProtocolSection.fADCRange")?;
        let adc_resolution = bytes.i32(p + 118, "ProtocolSection.lADCResolution")?;

        // pyABF: dataRate = int(1e6 / fADCSequenceInterval).
        let rate = 1e6 / f64::from(sequence_interval_us);
        if !(rate.is_finite() && rate >= 1.0 && rate < f64::from(u32::MAX)) {
            return Err(bytes.invalid(
                "ProtocolSection.fADCSequenceInterval",
                format!("{sequence_interval_us} us gives a sampling rate of {rate} Hz"),
            ));
        }
        let sampling_rate_hz = rate as u32;

        let adc = locate_section(&bytes, "ADCSection", SECTION_ADC, 82)?;
        let channel_count = adc.entry_count;
        if channel_count == 0 {
            return Err(bytes.invalid("ADCSection.llNumEntries", "the file has zero ADC channels"));
        }
        if channel_count > MAX_ADC_CHANNELS {
            return Err(bytes.invalid(
                "ADCSection.llNumEntries",
                format!("{channel_count} ADC channels, ABF2 allows at most {MAX_ADC_CHANNELS}"),
            ));
        }

        // Only the first Strings entry is used (it holds every indexed string; the map's
        // "entry count" is the number of strings), so only that entry must lie in the file.
        let strings_block = bytes.u32(SECTION_STRINGS, "section map entry of StringsSection")?;
        let strings_bytes =
            bytes.u32(SECTION_STRINGS + 4, "section map entry of StringsSection")?;
        let strings_count =
            bytes.i64(SECTION_STRINGS + 8, "section map entry of StringsSection")?;
        let strings = match strings_count {
            ..0 => {
                return Err(bytes.invalid(
                    "StringsSection.llNumEntries",
                    format!("negative entry count {strings_count}"),
                ));
            }
            0 => Vec::new(),
            _ => indexed_strings(&bytes.slice(
                u64::from(strings_block) * BLOCK_BYTES,
                u64::from(strings_bytes),
                "StringsSection[0]",
            )?),
        };

        let mut adc_channels = Vec::with_capacity(channel_count);
        for i in 0..channel_count {
            let o = adc.entry_offset(i);
            let field = |name: &str| format!("ADCSection[{i}].{name}");
            let telegraph_enable = bytes.i16(o + 2, &field("nTelegraphEnable"))?;
            let telegraph_gain = bytes.f32(o + 6, &field("fTelegraphAdditGain"))?;
            let programmable_gain = bytes.f32(o + 28, &field("fADCProgrammableGain"))?;
            let instrument_scale = bytes.f32(o + 40, &field("fInstrumentScaleFactor"))?;
            let instrument_offset = bytes.f32(o + 44, &field("fInstrumentOffset"))?;
            let signal_gain = bytes.f32(o + 48, &field("fSignalGain"))?;
            let signal_offset = bytes.f32(o + 52, &field("fSignalOffset"))?;
            let name_index = bytes.i32(o + 74, &field("lADCChannelNameIndex"))?;
            let units_index = bytes.i32(o + 78, &field("lADCUnitsIndex"))?;

            // pyABF computes the gain in f64 in exactly this order, starting from the int 1.
            let mut gain = 1.0
                / require_divisor(
                    &bytes,
                    f64::from(instrument_scale),
                    field("fInstrumentScaleFactor"),
                )?;
            gain /= require_divisor(&bytes, f64::from(signal_gain), field("fSignalGain"))?;
            gain /= require_divisor(
                &bytes,
                f64::from(programmable_gain),
                field("fADCProgrammableGain"),
            )?;
            if telegraph_enable == 1 {
                gain /= require_divisor(
                    &bytes,
                    f64::from(telegraph_gain),
                    field("fTelegraphAdditGain"),
                )?;
            }
            gain *= f64::from(adc_range);
            gain /= require_divisor(
                &bytes,
                f64::from(adc_resolution),
                "ProtocolSection.lADCResolution".to_string(),
            )?;
            let offset = 0.0 + f64::from(instrument_offset) - f64::from(signal_offset);
            if !gain.is_finite() || !offset.is_finite() {
                return Err(bytes.invalid(
                    field("scaling"),
                    format!("gain {gain} / offset {offset} is not finite"),
                ));
            }

            let mut name = lookup_string(
                &bytes,
                &strings,
                i64::from(name_index),
                &field("lADCChannelNameIndex"),
            )?;
            let mut units = lookup_string(
                &bytes,
                &strings,
                i64::from(units_index),
                &field("lADCUnitsIndex"),
            )?;
            if name.is_empty() {
                name = "?".to_string();
            }
            if units.is_empty() {
                units = "?".to_string();
            }
            adc_channels.push(AdcChannel {
                name,
                units,
                gain_per_count: gain as f32,
                offset: offset as f32,
            });
        }

        let dac = locate_section(&bytes, "DACSection", SECTION_DAC, 46)?;
        let mut dac_channels = Vec::with_capacity(dac.entry_count);
        for i in 0..dac.entry_count {
            let o = dac.entry_offset(i);
            let field = |name: &str| format!("DACSection[{i}].{name}");
            let dac_number = bytes.i16(o, &field("nDACNum"))?;
            let raw_holding = f64::from(bytes.f32(o + 12, &field("fDACHoldingLevel"))?);
            let name_index = bytes.i32(o + 24, &field("lDACChannelNameIndex"))?;
            let units_index = bytes.i32(o + 28, &field("lDACChannelUnitsIndex"))?;
            let waveform_enable = bytes.i16(o + 40, &field("nWaveformEnable"))?;
            let waveform_source = bytes.i16(o + 42, &field("nWaveformSource"))?;
            let inter_episode_level = bytes.i16(o + 44, &field("nInterEpisodeLevel"))?;
            // pyABF treats absurd holding levels as unfilled memory read as a float.
            let holding_level = if raw_holding.abs() > 1e6 {
                f64::NAN
            } else if raw_holding.abs() > 0.0 && raw_holding.abs() < 1e-6 {
                0.0
            } else {
                raw_holding
            };
            let (name, units) = if i < channel_count {
                (
                    Some(lookup_string(
                        &bytes,
                        &strings,
                        i64::from(name_index),
                        &field("lDACChannelNameIndex"),
                    )?),
                    Some(lookup_string(
                        &bytes,
                        &strings,
                        i64::from(units_index),
                        &field("lDACChannelUnitsIndex"),
                    )?),
                )
            } else {
                (None, None)
            };
            dac_channels.push(DacChannel {
                dac_number,
                name,
                units,
                holding_level,
                waveform_enabled: waveform_enable != 0,
                waveform_source,
                keeps_last_level_between_sweeps: inter_episode_level != 0,
            });
        }

        let epoch_section =
            locate_section(&bytes, "EpochPerDACSection", SECTION_EPOCH_PER_DAC, 30)?;
        let mut epochs = Vec::with_capacity(epoch_section.entry_count);
        for i in 0..epoch_section.entry_count {
            let o = epoch_section.entry_offset(i);
            let field = |name: &str| format!("EpochPerDACSection[{i}].{name}");
            epochs.push(EpochDefinition {
                epoch_number: bytes.i16(o, &field("nEpochNum"))?,
                dac_number: bytes.i16(o + 2, &field("nDACNum"))?,
                kind: EpochKind::from_code(bytes.i16(o + 4, &field("nEpochType"))?),
                first_level: bytes.f32(o + 6, &field("fEpochInitLevel"))?,
                level_increment: bytes.f32(o + 10, &field("fEpochLevelInc"))?,
                first_duration_samples: bytes.i32(o + 14, &field("lEpochInitDuration"))?,
                duration_increment_samples: bytes.i32(o + 18, &field("lEpochDurationInc"))?,
                pulse_period_samples: bytes.i32(o + 22, &field("lEpochPulsePeriod"))?,
                pulse_width_samples: bytes.i32(o + 26, &field("lEpochPulseWidth"))?,
            });
        }

        let protocol_path = lookup_string(
            &bytes,
            &strings,
            i64::from(protocol_path_index),
            "uProtocolPathIndex",
        )?;
        let protocol = protocol_name(&protocol_path);
        let protocol_path = if protocol == "None" {
            "None".to_string()
        } else {
            protocol_path
        };

        // Data section: interleaved samples, int16 (nDataFormat 0) or float32 (1).
        let sample_bytes = match data_format {
            0 => 2,
            1 => 4,
            other => {
                return Err(AbfError::Unsupported {
                    file: label.to_string(),
                    what: format!("nDataFormat {other} (only 0 = int16 and 1 = float32 exist)"),
                });
            }
        };
        let data_entry_bytes = bytes.u32(SECTION_DATA + 4, "section map entry of DataSection")?;
        let data_entry_count = bytes.i64(SECTION_DATA + 8, "section map entry of DataSection")?;
        if data_entry_count > 0 && u64::from(data_entry_bytes) != sample_bytes {
            return Err(bytes.invalid(
                "DataSection.uBytes",
                format!("{data_entry_bytes} bytes per sample, but nDataFormat {data_format} stores {sample_bytes}"),
            ));
        }
        let data_section = locate_section(&bytes, "DataSection", SECTION_DATA, sample_bytes)?;
        let point_count = data_section.entry_count;
        if point_count % channel_count != 0 {
            return Err(bytes.invalid(
                "DataSection.llNumEntries",
                format!("{point_count} samples do not split evenly over {channel_count} channels"),
            ));
        }
        let points_per_channel = point_count / channel_count;

        // pyABF: gap-free files hold one sweep; a zero episode count also means one sweep.
        let mut sweep_count = actual_episodes as usize;
        if operation_mode == OPERATION_MODE_GAP_FREE || sweep_count == 0 {
            sweep_count = 1;
        }
        let samples_per_sweep = points_per_channel / sweep_count;
        if samples_per_sweep == 0 {
            return Err(bytes.invalid(
                "lActualEpisodes",
                format!("{actual_episodes} sweeps do not fit in {points_per_channel} samples per channel"),
            ));
        }

        // Variable-length sweeps (synch array with differing lengths) are not supported.
        if sweep_count > 1 {
            let synch = locate_section(&bytes, "SynchArraySection", SECTION_SYNCH_ARRAY, 8)?;
            let mut first_length = None;
            for i in 0..synch.entry_count {
                let length = bytes.i32(
                    synch.entry_offset(i) + 4,
                    &format!("SynchArraySection[{i}].lLength"),
                )?;
                match first_length {
                    None => first_length = Some(length),
                    Some(first) if first != length => {
                        return Err(AbfError::Unsupported {
                            file: label.to_string(),
                            what: format!(
                                "variable-length sweeps (synch array lengths {first} and {length})"
                            ),
                        });
                    }
                    Some(_) => {}
                }
            }
        }

        let samples = if load_samples {
            let raw = bytes.slice(
                data_section.byte_start,
                point_count as u64 * sample_bytes,
                "DataSection samples",
            )?;
            deinterleave_and_scale(&raw, data_format, &adc_channels, points_per_channel)
        } else {
            Vec::new()
        };

        Ok(AbfFile {
            label: label.to_string(),
            version,
            sampling_rate_hz,
            sweep_count,
            samples_per_sweep,
            adc_channels,
            dac_channels,
            epochs,
            protocol_path,
            protocol,
            samples,
            samples_loaded: load_samples,
            points_per_channel,
            data_start: data_section.byte_start,
            data_format,
        })
    }

    /// The path or label used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// File format version as (major, minor, bugfix, build), e.g. [2, 6, 0, 0].
    pub fn version(&self) -> [u8; 4] {
        self.version
    }
    /// Samples per second per channel, truncated to an integer as pyABF does.
    pub fn sampling_rate_hz(&self) -> u32 {
        self.sampling_rate_hz
    }
    pub fn sample_interval_s(&self) -> f64 {
        1.0 / f64::from(self.sampling_rate_hz)
    }
    pub fn sweep_count(&self) -> usize {
        self.sweep_count
    }
    pub fn samples_per_sweep(&self) -> usize {
        self.samples_per_sweep
    }
    pub fn channel_count(&self) -> usize {
        self.adc_channels.len()
    }
    pub fn adc_channels(&self) -> &[AdcChannel] {
        &self.adc_channels
    }
    pub fn dac_channels(&self) -> &[DacChannel] {
        &self.dac_channels
    }
    /// Protocol name (file stem of the .pro path), or "None".
    pub fn protocol(&self) -> &str {
        &self.protocol
    }
    pub fn protocol_path(&self) -> &str {
        &self.protocol_path
    }
    /// Every row of the epoch table, for all DACs, in file order (including "Off" epochs).
    pub fn epochs(&self) -> &[EpochDefinition] {
        &self.epochs
    }

    /// Scaled samples of one ADC channel in one sweep (e.g. membrane potential in mV).
    /// Fails on a header-only [`AbfReader`] header: read ranges with the reader instead.
    pub fn sweep_adc(&self, channel: usize, sweep: usize) -> Result<&[f32], AbfError> {
        self.check_sweep(sweep)?;
        if channel >= self.adc_channels.len() {
            return Err(self.out_of_range("ADC channel", channel, self.adc_channels.len()));
        }
        if !self.samples_loaded {
            return Err(AbfError::Unsupported {
                file: self.label.clone(),
                what: "the file was opened header-only; read sample ranges with AbfReader::read_adc_range".into(),
            });
        }
        let start = channel * self.points_per_channel + sweep * self.samples_per_sweep;
        Ok(&self.samples[start..start + self.samples_per_sweep])
    }

    /// The command waveform the DAC delivered during `sweep` (DAC units, pA in current
    /// clamp), as pyABF's `sweepC` (which pairs ADC channel i with DAC i). Values are f64 like
    /// pyABF's; cast to f32 to match arrays saved as float32.
    pub fn sweep_command(&self, dac: usize, sweep: usize) -> Result<Vec<f64>, AbfError> {
        self.sweep_command_range(dac, sweep, 0, self.samples_per_sweep)
    }

    /// [`Self::sweep_command`] rounded to f32.
    pub fn sweep_command_f32(&self, dac: usize, sweep: usize) -> Result<Vec<f32>, AbfError> {
        self.sweep_command_range_f32(dac, sweep, 0, self.samples_per_sweep)
    }

    /// Samples `start..start + len` of [`Self::sweep_command`], computed without building the
    /// whole sweep (a gap-free hour would need 576 MB as f64). Equal to slicing the whole.
    pub fn sweep_command_range(&self, dac: usize, sweep: usize, start: usize, len: usize) -> Result<Vec<f64>, AbfError> {
        self.check_sweep(sweep)?;
        self.check_range(start, len)?;
        let channel = self
            .dac_channels
            .get(dac)
            .ok_or_else(|| self.out_of_range("DAC", dac, self.dac_channels.len()))?;
        if !channel.waveform_enabled || channel.waveform_source == 0 {
            return Ok(vec![channel.holding_level; len]);
        }
        match channel.waveform_source {
            1 => {
                let segments = self.sweep_command_segments(dac, sweep)?;
                let mut out = vec![f64::NAN; len];
                render_segments(&segments, self.samples_per_sweep, start, &mut out)
                    .map_err(|reason| self.waveform_error(dac, sweep, reason))?;
                Ok(out)
            }
            2 => Err(AbfError::Unsupported {
                file: self.label.clone(),
                what: format!("DAC {dac} is driven by a stimulus file, not an epoch table"),
            }),
            // pyABF returns NaN for an unknown waveform source.
            _ => Ok(vec![f64::NAN; len]),
        }
    }

    /// [`Self::sweep_command_range`] rounded to f32.
    pub fn sweep_command_range_f32(&self, dac: usize, sweep: usize, start: usize, len: usize) -> Result<Vec<f32>, AbfError> {
        Ok(self
            .sweep_command_range(dac, sweep, start, len)?
            .into_iter()
            .map(|v| v as f32)
            .collect())
    }

    /// `start..start + len` must lie inside one sweep (so it is bounded by the file size).
    fn check_range(&self, start: usize, len: usize) -> Result<(), AbfError> {
        match start.checked_add(len) {
            Some(end) if end <= self.samples_per_sweep => Ok(()),
            _ => Err(AbfError::OutOfRange {
                file: self.label.clone(),
                what: "sample range end",
                index: start.saturating_add(len),
                count: self.samples_per_sweep,
            }),
        }
    }

    /// The epoch table of `dac` stepped to `sweep` (pyABF's `EpochSweepWaveform`): a
    /// holding segment over the first `samples_per_sweep / 64` samples, one segment per
    /// non-"Off" epoch with duration and level incremented by the sweep number, and a final
    /// segment to the end of the sweep. Before the first epoch and after the last the DAC
    /// sits at the holding level, or at the previous sweep's last epoch level when
    /// `nInterEpisodeLevel` is set.
    pub fn sweep_command_segments(
        &self,
        dac: usize,
        sweep: usize,
    ) -> Result<Vec<CommandSegment>, AbfError> {
        self.check_sweep(sweep)?;
        let channel = self
            .dac_channels
            .get(dac)
            .ok_or_else(|| self.out_of_range("DAC", dac, self.dac_channels.len()))?;
        let epochs: Vec<&EpochDefinition> = self
            .epochs
            .iter()
            .filter(|e| i64::from(e.dac_number) == dac as i64 && e.kind != EpochKind::Off)
            .collect();
        let holding = channel.holding_level;
        let level_of = |e: &EpochDefinition, s: usize| {
            f64::from(e.first_level) + f64::from(e.level_increment) * s as f64
        };
        // Level the DAC was left at by sweep `s` (the post-epoch level of that sweep).
        let level_after_sweep = |s: usize| match epochs.last() {
            Some(last) if channel.keeps_last_level_between_sweeps => level_of(last, s),
            _ => holding,
        };
        let before_level = if sweep == 0 {
            holding
        } else {
            level_after_sweep(sweep - 1)
        };

        let n = self.samples_per_sweep as i64;
        let pre_end = n / 64;
        let mut segments = Vec::with_capacity(epochs.len() + 2);
        segments.push(CommandSegment {
            epoch_number: None,
            kind: EpochKind::Step,
            start_sample: 0,
            end_sample: pre_end as usize,
            level: before_level,
            pulse_period_samples: 0,
            pulse_width_samples: 0,
        });
        let mut position = pre_end;
        for epoch in &epochs {
            let duration = i64::from(epoch.duration_increment_samples)
                .checked_mul(sweep as i64)
                .and_then(|d| d.checked_add(i64::from(epoch.first_duration_samples)));
            let end = duration.and_then(|d| position.checked_add(d));
            let (Some(duration), Some(end)) = (duration, end) else {
                return Err(self.waveform_error(
                    dac,
                    sweep,
                    format!("epoch {} duration overflows", epoch.letter()),
                ));
            };
            if duration < 0 {
                return Err(self.waveform_error(
                    dac,
                    sweep,
                    format!(
                        "epoch {} has a negative duration of {duration} samples",
                        epoch.letter()
                    ),
                ));
            }
            if end > n {
                return Err(self.waveform_error(
                    dac,
                    sweep,
                    format!(
                        "epoch {} ends at sample {end}, past the sweep end ({n} samples)",
                        epoch.letter()
                    ),
                ));
            }
            segments.push(CommandSegment {
                epoch_number: Some(epoch.epoch_number),
                kind: epoch.kind,
                start_sample: position as usize,
                end_sample: end as usize,
                level: level_of(epoch, sweep),
                pulse_period_samples: i64::from(epoch.pulse_period_samples),
                pulse_width_samples: i64::from(epoch.pulse_width_samples),
            });
            position = end;
        }
        segments.push(CommandSegment {
            epoch_number: None,
            kind: EpochKind::Step,
            start_sample: position as usize,
            end_sample: n as usize,
            level: level_after_sweep(sweep),
            pulse_period_samples: 0,
            pulse_width_samples: 0,
        });
        Ok(segments)
    }

    fn check_sweep(&self, sweep: usize) -> Result<(), AbfError> {
        if sweep >= self.sweep_count {
            return Err(self.out_of_range("sweep", sweep, self.sweep_count));
        }
        Ok(())
    }

    fn out_of_range(&self, what: &'static str, index: usize, count: usize) -> AbfError {
        AbfError::OutOfRange {
            file: self.label.clone(),
            what,
            index,
            count,
        }
    }

    fn waveform_error(&self, dac: usize, sweep: usize, reason: String) -> AbfError {
        AbfError::Waveform {
            file: self.label.clone(),
            dac,
            sweep,
            reason,
        }
    }
}

/// Splits interleaved samples into one run per channel and scales int16 counts like pyABF:
/// cast to f32, multiply by the f32-rounded gain, then add the f32-rounded offset, each step
/// rounded to f32 (numpy's float32 ufunc loops). Float32 data is used unscaled, as in pyABF.
fn deinterleave_and_scale(
    raw: &[u8],
    data_format: u16,
    channels: &[AdcChannel],
    points_per_channel: usize,
) -> Vec<f32> {
    let channel_count = channels.len();
    let mut samples = vec![0f32; channel_count * points_per_channel];
    if data_format == 0 {
        for (frame, chunk) in raw.chunks_exact(2 * channel_count).enumerate() {
            for (c, (pair, channel)) in chunk.chunks_exact(2).zip(channels).enumerate() {
                let count = f32::from(i16::from_le_bytes([pair[0], pair[1]]));
                samples[c * points_per_channel + frame] =
                    count * channel.gain_per_count + channel.offset;
            }
        }
    } else {
        for (frame, chunk) in raw.chunks_exact(4 * channel_count).enumerate() {
            for (c, quad) in chunk.chunks_exact(4).enumerate() {
                samples[c * points_per_channel + frame] =
                    f32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]);
            }
        }
    }
    samples
}

/// Sample `i` of numpy's `linspace(start, stop, num)` (endpoint included): `i * step + start`,
/// with `(i / div) * delta + start` when the step underflows to zero, and the last sample
/// `stop` exactly.
fn linspace_at(i: usize, num: usize, start: f64, stop: f64) -> f64 {
    let delta = stop - start;
    if num == 1 {
        return 0.0 * delta + start;
    }
    if i == num - 1 {
        return stop;
    }
    let div = (num - 1) as f64;
    let step = delta / div;
    if step == 0.0 {
        (i as f64 / div) * delta + start
    } else {
        i as f64 * step + start
    }
}

/// Fills `out` with samples `first..first + out.len()` of one sweep (`sweep_len` samples) of
/// the command built from the sweep's segments, shaping each segment as pyABF's
/// `EpochSweepWaveform.getWaveform` (samples outside every segment stay as given, NaN). Each
/// sample is computed from its index alone, so any range equals the same slice of the whole
/// sweep. Pulse trains start at the segment start and repeat every `pulse_period` samples,
/// `int(length / period)` times; where pulses overlap the later one wins, as in pyABF.
fn render_segments(segments: &[CommandSegment], sweep_len: usize, first: usize, out: &mut [f64]) -> Result<(), String> {
    let range_end = first + out.len();
    for (i, segment) in segments.iter().enumerate() {
        let level = segment.level;
        let before = if i == 0 { level } else { segments[i - 1].level };
        let delta = level - before;
        let (seg_start, seg_end) = (segment.start_sample, segment.end_sample);
        if seg_start > seg_end || seg_end > sweep_len {
            return Err(format!("segment {seg_start}..{seg_end} lies outside the sweep"));
        }
        let length = (seg_end - seg_start) as i64;
        let period = segment.pulse_period_samples;
        let width = segment.pulse_width_samples;
        let pulse_count = if period > 0 { length / period } else { 0 };
        let is_train = matches!(
            segment.kind,
            EpochKind::Pulse | EpochKind::Triangle | EpochKind::Cosine | EpochKind::Biphasic
        );
        if is_train && pulse_count > 0 && width < 0 {
            return Err(format!("pulse width {width} samples is negative"));
        }
        if segment.kind == EpochKind::Triangle && pulse_count > 0 && width > period {
            return Err(format!("triangle pulse width {width} exceeds its period {period} samples"));
        }
        let (lo, hi) = (seg_start.max(first), seg_end.min(range_end));
        if lo >= hi {
            continue;
        }
        let chunk = &mut out[lo - first..hi - first];
        // Index of the first written sample inside the segment.
        let j0 = (lo - seg_start) as i64;
        let n = length as usize;
        // The last pulse starting at or before segment sample j (pulse_count > 0).
        let last_pulse = |j: i64| (j / period).min(pulse_count - 1);
        let cosine_stop = (2 * pulse_count) as f64 * std::f64::consts::PI;
        for (k, y) in chunk.iter_mut().enumerate() {
            let j = j0 + k as i64;
            *y = match segment.kind {
                EpochKind::Step => level,
                EpochKind::Ramp => linspace_at(j as usize, n, before, level),
                EpochKind::Pulse => {
                    if pulse_count > 0 && j - last_pulse(j) * period < width { level } else { before }
                }
                EpochKind::Triangle => {
                    let p = if period > 0 { j / period } else { i64::MAX };
                    if p < pulse_count {
                        let offset = j - p * period;
                        if offset < width {
                            linspace_at(offset as usize, width as usize, before, level)
                        } else {
                            linspace_at((offset - width) as usize, (period - width) as usize, level, before)
                        }
                    } else {
                        f64::NAN
                    }
                }
                EpochKind::Cosine => {
                    let x = linspace_at(j as usize, n, 0.0, cosine_stop);
                    let cosine = (x + std::f64::consts::PI).cos() * delta / 2.0;
                    before + (cosine + delta / 2.0)
                }
                EpochKind::Biphasic => {
                    let p1 = if pulse_count > 0 { last_pulse(j) * period } else { i64::MAX };
                    if pulse_count > 0 && j < p1 + width {
                        let p2 = (p1 + p1 + width) / 2;
                        if j < p2 { before + delta } else { before - delta }
                    } else {
                        before
                    }
                }
                // pyABF warns and leaves unknown epoch types as NaN.
                EpochKind::Off | EpochKind::Unknown(_) => f64::NAN,
            };
        }
    }
    Ok(())
}

/// Reads `buf.len()` bytes at byte `offset` of `file`.
fn read_exact_at(file: &mut std::fs::File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// An ABF2 file opened header-only: the header is parsed with seeks (the same checks as
/// [`AbfFile::from_bytes`]), and samples are read on demand by range, so memory is bounded by
/// the range asked for, never by the recording's length.
pub struct AbfReader {
    header: AbfFile,
    file: std::fs::File,
    /// Reused buffer of raw interleaved sample bytes.
    raw: Vec<u8>,
}

impl AbfReader {
    /// Opens `path` and parses its header; no sample is read yet.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AbfError> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let io = |source| AbfError::Io { file: label.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let bytes = Bytes { image: Image::File(std::cell::RefCell::new(file)), file_len, file: &label };
        let header = AbfFile::parse(&bytes, &label, false)?;
        let Image::File(file) = bytes.image else { unreachable!("opened as a file") };
        Ok(AbfReader { header, file: file.into_inner(), raw: Vec::new() })
    }

    /// The parsed header: every metadata accessor and the command waveform
    /// ([`AbfFile::sweep_command_range`]); its `sweep_adc` fails (no samples are loaded).
    pub fn header(&self) -> &AbfFile {
        &self.header
    }

    /// Scaled samples `start..start + len` of ADC `channel` in `sweep`, equal to the same
    /// slice of [`AbfFile::sweep_adc`].
    pub fn read_adc_range(&mut self, channel: usize, sweep: usize, start: usize, len: usize) -> Result<Vec<f32>, AbfError> {
        let mut out = Vec::new();
        self.read_adc_range_into(channel, sweep, start, len, &mut out)?;
        Ok(out)
    }

    /// [`Self::read_adc_range`] into `out` (cleared first), reusing its allocation.
    pub fn read_adc_range_into(
        &mut self,
        channel: usize,
        sweep: usize,
        start: usize,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), AbfError> {
        let h = &self.header;
        h.check_sweep(sweep)?;
        if channel >= h.adc_channels.len() {
            return Err(h.out_of_range("ADC channel", channel, h.adc_channels.len()));
        }
        h.check_range(start, len)?;
        let channels = h.adc_channels.len();
        let sample_bytes = if h.data_format == 0 { 2 } else { 4 };
        let frame_bytes = channels * sample_bytes;
        // Cannot overflow: the whole data section was checked to lie inside the file.
        let first_frame = (sweep * h.samples_per_sweep + start) as u64;
        let offset = h.data_start + first_frame * frame_bytes as u64;
        self.raw.resize(len * frame_bytes, 0);
        read_exact_at(&mut self.file, offset, &mut self.raw).map_err(|source| AbfError::Io { file: h.label.clone(), source })?;
        let scale = &h.adc_channels[channel];
        out.clear();
        out.reserve(len);
        let at = channel * sample_bytes;
        if h.data_format == 0 {
            out.extend(self.raw.chunks_exact(frame_bytes).map(|frame| {
                f32::from(i16::from_le_bytes([frame[at], frame[at + 1]])) * scale.gain_per_count + scale.offset
            }));
        } else {
            out.extend(
                self.raw
                    .chunks_exact(frame_bytes)
                    .map(|frame| f32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])),
            );
        }
        // The buffer is kept for the next call but not grown beyond what a range needs.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Reference tests: the two Clampex ABF2 files from pyABF's test data, compared sample by
    //! sample with pyABF 2.3.8's own reading of them (tests/fixtures/abf/README.md), plus
    //! truncation and corruption tests that must end in an error, never a panic.
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/abf/");
    const SWEEP_SAMPLES: usize = 60_000;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    /// Parses a little-endian float32 C-order .npy image into (shape, values).
    fn parse_npy_f32(bytes: &[u8]) -> (Vec<usize>, Vec<f32>) {
        assert_eq!(&bytes[..6], b"\x93NUMPY", "npy magic");
        let (header_len, data_start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            _ => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
        };
        let header = std::str::from_utf8(&bytes[data_start..data_start + header_len]).unwrap();
        assert!(header.contains("'descr': '<f4'"), "npy dtype: {header}");
        assert!(
            header.contains("'fortran_order': False"),
            "npy order: {header}"
        );
        let shape_text = header
            .split("'shape': (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let shape: Vec<usize> = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let values: Vec<f32> = bytes[data_start + header_len..]
            .chunks_exact(4)
            .map(|q| f32::from_le_bytes([q[0], q[1], q[2], q[3]]))
            .collect();
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "npy payload length"
        );
        (shape, values)
    }

    /// Number of differing samples and the largest absolute difference (NaN must match NaN).
    fn compare(ours: &[f32], reference: &[f32]) -> (usize, f64) {
        assert_eq!(ours.len(), reference.len());
        let mut mismatches = 0;
        let mut max_abs = 0f64;
        for (&a, &b) in ours.iter().zip(reference) {
            if a.is_nan() && b.is_nan() {
                continue;
            }
            if a != b {
                mismatches += 1;
                max_abs = max_abs.max((f64::from(a) - f64::from(b)).abs());
            }
        }
        (mismatches, max_abs)
    }

    /// Opens `name`.abf and compares every sweep's voltage and command with pyABF's arrays.
    fn check_against_pyabf(
        name: &str,
        sweeps: usize,
        protocol: &str,
        step_first_pa: f64,
        step_increment_pa: f64,
    ) {
        let abf = AbfFile::open(format!("{FIXTURES}{name}.abf")).unwrap();
        assert_eq!(abf.version(), [2, 6, 0, 0]);
        assert_eq!(abf.sampling_rate_hz(), 20_000);
        assert_eq!(abf.sweep_count(), sweeps);
        assert_eq!(abf.samples_per_sweep(), SWEEP_SAMPLES);
        assert_eq!(abf.channel_count(), 1);
        assert_eq!(abf.adc_channels()[0].units, "mV");
        assert_eq!(abf.adc_channels()[0].name, "IN 0");
        assert_eq!(abf.dac_channels()[0].units.as_deref(), Some("pA"));
        assert_eq!(abf.dac_channels()[0].name.as_deref(), Some("Cmd 0"));
        assert_eq!(abf.protocol(), protocol);

        let compressed = fixture(&format!("{name}.pyabf.npy.zst"));
        let npy = zstd::decode_all(&compressed[..]).unwrap();
        let (shape, reference) = parse_npy_f32(&npy);
        assert_eq!(shape, vec![sweeps, 2, SWEEP_SAMPLES]);

        let mut worst_voltage = (0, 0f64);
        let mut worst_command = (0, 0f64);
        // The header-only reader, by ranges that straddle nothing in particular.
        let mut reader = AbfReader::open(format!("{FIXTURES}{name}.abf")).unwrap();
        assert_eq!(reader.header().samples_per_sweep(), SWEEP_SAMPLES);
        assert!(reader.header().sweep_adc(0, 0).is_err(), "no samples are loaded");
        let ranges = [(0, 7001), (7001, 30_002), (37_003, 22_997), (59_999, 1)];
        for sweep in 0..sweeps {
            let base = sweep * 2 * SWEEP_SAMPLES;
            let command_ref = &reference[base..base + SWEEP_SAMPLES];
            let voltage_ref = &reference[base + SWEEP_SAMPLES..base + 2 * SWEEP_SAMPLES];

            let (bad, max_abs) = compare(abf.sweep_adc(0, sweep).unwrap(), voltage_ref);
            worst_voltage = (worst_voltage.0 + bad, worst_voltage.1.max(max_abs));
            for (start, len) in ranges {
                let part = reader.read_adc_range(0, sweep, start, len).unwrap();
                let (bad, max_abs) = compare(&part, &voltage_ref[start..start + len]);
                worst_voltage = (worst_voltage.0 + bad, worst_voltage.1.max(max_abs));
                let part = reader.header().sweep_command_range_f32(0, sweep, start, len).unwrap();
                let (bad, max_abs) = compare(&part, &command_ref[start..start + len]);
                worst_command = (worst_command.0 + bad, worst_command.1.max(max_abs));
            }
            assert!(reader.read_adc_range(0, sweep, 59_999, 2).is_err(), "a range past the sweep end");
            let command = abf.sweep_command_f32(0, sweep).unwrap();
            let (bad, max_abs) = compare(&command, command_ref);
            worst_command = (worst_command.0 + bad, worst_command.1.max(max_abs));

            // The README's description of the protocol: variable step from sample 2937.
            let segments = abf.sweep_command_segments(0, sweep).unwrap();
            assert_eq!(
                segments[0].end_sample, 937,
                "pre-epoch holding segment is 1/64 of the sweep"
            );
            assert_eq!(
                (segments[2].start_sample, segments[2].end_sample),
                (2937, 12937)
            );
            assert_eq!(
                f64::from(command_ref[2937]),
                step_first_pa + step_increment_pa * sweep as f64
            );
        }
        eprintln!(
            "{name}: voltage mismatches {worst_voltage:?}, command mismatches {worst_command:?}"
        );
        assert_eq!(
            worst_voltage.0, 0,
            "{name}: voltage samples differing from pyABF (max abs {})",
            worst_voltage.1
        );
        assert_eq!(
            worst_command.0, 0,
            "{name}: command samples differing from pyABF (max abs {})",
            worst_command.1
        );
    }

    #[test]
    fn regular_spiking_file_matches_pyabf_every_sample() {
        check_against_pyabf(
            "171116sh_0018",
            17,
            "0113 steps dual -100 to 300 step 25",
            -100.0,
            25.0,
        );
    }

    #[test]
    fn spontaneously_active_file_matches_pyabf_every_sample() {
        check_against_pyabf(
            "17o05028_ic_steps",
            16,
            "0112 steps dual -50 to 150 step 10",
            -50.0,
            10.0,
        );
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = AbfFile::open("/nonexistent/dir/x.abf").unwrap_err();
        assert!(matches!(err, AbfError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/dir/x.abf"));
    }

    /// End of the last byte range the reader needs in 171116sh_0018.abf: the synch array
    /// (block 3998, 17 entries of 8 bytes); the data section ends earlier, at byte 2_046_656.
    const FILE1_LAST_NEEDED_BYTE: usize = 3998 * 512 + 17 * 8;

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = fixture("171116sh_0018.abf");
        let mut offsets: Vec<usize> = (0..8192).collect();
        offsets.extend((0..400).map(|k| 8192 + k * (FILE1_LAST_NEEDED_BYTE - 8192) / 400));
        offsets.extend(FILE1_LAST_NEEDED_BYTE - 16..FILE1_LAST_NEEDED_BYTE);
        for &len in &offsets {
            match AbfFile::from_bytes(&full[..len], "truncated.abf") {
                Ok(_) => panic!("truncation at {len} bytes was accepted"),
                Err(e) => assert!(e.to_string().starts_with("truncated.abf: "), "{e}"),
            }
        }
        // Bytes after the last section are not needed.
        assert!(AbfFile::from_bytes(&full[..FILE1_LAST_NEEDED_BYTE], "trimmed.abf").is_ok());
        // The header-only reader applies the same checks to a file on disk.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.abf");
        for len in [0, 100, 6000, 2_000_000, FILE1_LAST_NEEDED_BYTE - 1] {
            std::fs::write(&path, &full[..len]).unwrap();
            let err = AbfReader::open(&path).err().unwrap_or_else(|| panic!("header-only open accepted {len} bytes"));
            assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
        }
    }

    fn patched(base: &[u8], offset: usize, value: &[u8]) -> Vec<u8> {
        let mut copy = base.to_vec();
        copy[offset..offset + value.len()].copy_from_slice(value);
        copy
    }

    #[test]
    fn corrupted_header_fields_give_clear_errors() {
        let base = fixture("171116sh_0018.abf");
        // Section blocks in this file: Protocol 1, ADC 2, DAC 3, EpochPerDAC 7, Strings 10.
        let protocol = 512;
        let adc = 2 * 512;
        let epoch_per_dac = 7 * 512;
        let cases: Vec<(&str, usize, Vec<u8>, &str)> = vec![
            ("ABF1 signature", 0, b"ABF ".to_vec(), "ABF1 files"),
            ("wrong magic", 0, b"PK\x03\x04".to_vec(), "not an ABF file"),
            (
                "zero ADC channels",
                92 + 8,
                0i64.to_le_bytes().to_vec(),
                "zero ADC channels",
            ),
            (
                "negative ADC count",
                92 + 8,
                (-1i64).to_le_bytes().to_vec(),
                "negative entry count",
            ),
            (
                "17 ADC channels",
                92 + 8,
                17i64.to_le_bytes().to_vec(),
                "at most 16",
            ),
            (
                "huge ADC count",
                92 + 8,
                i64::MAX.to_le_bytes().to_vec(),
                "truncated: ADCSection",
            ),
            (
                "ADC block past the end",
                92,
                u32::MAX.to_le_bytes().to_vec(),
                "truncated: ADCSection",
            ),
            (
                "ADC entry too small",
                92 + 4,
                10u32.to_le_bytes().to_vec(),
                "ADCSection.uBytes",
            ),
            (
                "huge DAC count",
                108 + 8,
                (1i64 << 40).to_le_bytes().to_vec(),
                "truncated: DACSection",
            ),
            (
                "huge epoch count",
                156 + 8,
                (1i64 << 50).to_le_bytes().to_vec(),
                "truncated: EpochPerDACSection",
            ),
            (
                "negative string count",
                220 + 8,
                (-5i64).to_le_bytes().to_vec(),
                "StringsSection.llNumEntries",
            ),
            (
                "strings past the end",
                220,
                100_000u32.to_le_bytes().to_vec(),
                "truncated: StringsSection",
            ),
            (
                "huge data count",
                236 + 8,
                (u32::MAX as i64).to_le_bytes().to_vec(),
                "truncated: DataSection",
            ),
            (
                "data block past the end",
                236,
                4000u32.to_le_bytes().to_vec(),
                "truncated: DataSection",
            ),
            (
                "data entry size 4 for int16",
                236 + 4,
                4u32.to_le_bytes().to_vec(),
                "DataSection.uBytes",
            ),
            (
                "unknown data format",
                30,
                9u16.to_le_bytes().to_vec(),
                "nDataFormat 9",
            ),
            (
                "absurd sweep count",
                12,
                u32::MAX.to_le_bytes().to_vec(),
                "lActualEpisodes",
            ),
            (
                "more sweeps than samples",
                12,
                2_000_000u32.to_le_bytes().to_vec(),
                "lActualEpisodes",
            ),
            (
                "zero sample interval",
                protocol + 2,
                0f32.to_le_bytes().to_vec(),
                "fADCSequenceInterval",
            ),
            (
                "NaN sample interval",
                protocol + 2,
                f32::NAN.to_le_bytes().to_vec(),
                "fADCSequenceInterval",
            ),
            (
                "negative sample interval",
                protocol + 2,
                (-50f32).to_le_bytes().to_vec(),
                "fADCSequenceInterval",
            ),
            (
                "zero ADC resolution",
                protocol + 118,
                0i32.to_le_bytes().to_vec(),
                "lADCResolution",
            ),
            (
                "zero instrument scale",
                adc + 40,
                0f32.to_le_bytes().to_vec(),
                "fInstrumentScaleFactor",
            ),
            (
                "infinite signal gain",
                adc + 48,
                f32::INFINITY.to_le_bytes().to_vec(),
                "fSignalGain",
            ),
            (
                "channel name index",
                adc + 74,
                10_000i32.to_le_bytes().to_vec(),
                "lADCChannelNameIndex",
            ),
            (
                "negative units index",
                adc + 78,
                (-1i32).to_le_bytes().to_vec(),
                "lADCUnitsIndex",
            ),
            (
                "protocol path index",
                72,
                u32::MAX.to_le_bytes().to_vec(),
                "uProtocolPathIndex",
            ),
            (
                "synch block past the end",
                316,
                u32::MAX.to_le_bytes().to_vec(),
                "truncated: SynchArraySection",
            ),
            (
                "variable sweep lengths",
                3998 * 512 + 8 + 4,
                1234i32.to_le_bytes().to_vec(),
                "variable-length sweeps",
            ),
            (
                "epoch entry too small",
                156 + 4,
                8u32.to_le_bytes().to_vec(),
                "EpochPerDACSection.uBytes",
            ),
        ];
        // Two identical ADC channels and an odd sample count cannot be de-interleaved.
        let mut two_channels = patched(&base, 92 + 8, &2i64.to_le_bytes());
        two_channels.copy_within(adc..adc + 128, adc + 128);
        assert_eq!(
            AbfFile::from_bytes(&two_channels, "two.abf")
                .unwrap()
                .samples_per_sweep(),
            SWEEP_SAMPLES / 2
        );
        let odd = patched(&two_channels, 236 + 8, &1_020_001i64.to_le_bytes());
        let err = AbfFile::from_bytes(&odd, "odd.abf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not split evenly over 2 channels"), "{err}");
        // Sanity: the unpatched file opens, and the epoch section is where we think it is.
        let abf = AbfFile::from_bytes(&base, "ok.abf").unwrap();
        assert_eq!(abf.epochs()[1].first_level, -100.0);
        assert_eq!(
            i16::from_le_bytes([base[epoch_per_dac + 48], base[epoch_per_dac + 49]]),
            1
        );
        for (what, offset, value, expected) in cases {
            let data = patched(&base, offset, &value);
            match AbfFile::from_bytes(&data, "corrupt.abf") {
                Ok(_) => panic!("{what}: corrupted file was accepted"),
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.starts_with("corrupt.abf: "), "{what}: {text}");
                    assert!(
                        text.contains(expected),
                        "{what}: expected {expected:?} in {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn corrupted_epoch_table_fails_when_the_command_is_built() {
        let base = fixture("171116sh_0018.abf");
        let epoch_b = 7 * 512 + 48; // second EpochPerDAC entry (epoch B)
        let cases: Vec<(&str, usize, Vec<u8>, &str)> = vec![
            (
                "duration past the sweep",
                epoch_b + 14,
                1_000_000_000i32.to_le_bytes().to_vec(),
                "past the sweep end",
            ),
            (
                "negative duration",
                epoch_b + 14,
                (-20_000i32).to_le_bytes().to_vec(),
                "negative duration",
            ),
            (
                "huge duration increment",
                epoch_b + 18,
                i32::MAX.to_le_bytes().to_vec(),
                "past the sweep end",
            ),
        ];
        for (what, offset, value, expected) in cases {
            let data = patched(&base, offset, &value);
            let abf = AbfFile::from_bytes(&data, "epochs.abf").unwrap();
            let err = abf.sweep_command(0, abf.sweep_count() - 1).unwrap_err();
            assert!(err.to_string().contains(expected), "{what}: {err}");
            assert!(err.to_string().contains("epoch B"), "{what}: {err}");
        }
        let abf = AbfFile::from_bytes(&base, "ok.abf").unwrap();
        assert!(matches!(
            abf.sweep_adc(0, 17),
            Err(AbfError::OutOfRange { .. })
        ));
        assert!(matches!(
            abf.sweep_adc(1, 0),
            Err(AbfError::OutOfRange { .. })
        ));
        assert!(matches!(
            abf.sweep_command(8, 0),
            Err(AbfError::OutOfRange { .. })
        ));
        // DAC 1 has its waveform disabled: pyABF returns the holding level.
        assert!(abf.sweep_command(1, 0).unwrap().iter().all(|&v| v == 0.0));
    }

    /// Small deterministic generator (xorshift64*) so the fuzz test needs no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn random_header_corruption_never_panics() {
        let mut data = fixture("171116sh_0018.abf");
        // Shrink the data section to 64 samples per sweep and the epochs to fit it, so every
        // accepted mutant is cheap to decode and its command waveform is actually rendered.
        data[236 + 8..236 + 16].copy_from_slice(&(17i64 * 64).to_le_bytes());
        for epoch in 0..5 {
            let o = 7 * 512 + epoch * 48;
            data[o + 14..o + 18].copy_from_slice(&10i32.to_le_bytes());
        }
        let clean = AbfFile::from_bytes(&data, "small.abf").unwrap();
        assert_eq!(clean.samples_per_sweep(), 64);
        assert_eq!(clean.sweep_command(0, 16).unwrap().len(), 64);

        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..3000 {
            let mut saved = Vec::new();
            for _ in 0..1 + rng.next() % 4 {
                // Half in the header and section map, half anywhere in the header blocks
                // (Protocol, ADC, DAC, EpochPerDAC, Strings: blocks 0..11).
                let span = if rng.next() & 1 == 0 { 364 } else { 11 * 512 };
                let offset = (rng.next() % span) as usize;
                saved.push((offset, data[offset]));
                data[offset] = (rng.next() & 0xFF) as u8;
            }
            match AbfFile::from_bytes(&data, "fuzz.abf") {
                Ok(abf) => {
                    accepted += 1;
                    for sweep in 0..abf.sweep_count().min(20) {
                        for channel in 0..abf.channel_count() {
                            assert_eq!(
                                abf.sweep_adc(channel, sweep).unwrap().len(),
                                abf.samples_per_sweep()
                            );
                        }
                        for dac in 0..abf.dac_channels().len() {
                            if let Ok(command) = abf.sweep_command(dac, sweep) {
                                assert_eq!(command.len(), abf.samples_per_sweep());
                            }
                        }
                    }
                }
                Err(e) => {
                    rejected += 1;
                    assert!(e.to_string().starts_with("fuzz.abf: "));
                }
            }
            for &(offset, byte) in saved.iter().rev() {
                data[offset] = byte;
            }
        }
        eprintln!("random corruption: {accepted} accepted, {rejected} rejected");
        assert!(rejected > 0);
    }

    #[test]
    fn pulse_train_epochs_render_without_panicking() {
        // Structural checks only (pyABF's shapes; no reference recording uses these types):
        // one segment of each train type after a holding segment at 0.
        for kind in [
            EpochKind::Pulse,
            EpochKind::Triangle,
            EpochKind::Cosine,
            EpochKind::Biphasic,
            EpochKind::Ramp,
        ] {
            for (period, width) in [(10, 4), (0, 0), (7, 7), (3, 0), (1000, 5)] {
                let segments = vec![
                    CommandSegment {
                        epoch_number: None,
                        kind: EpochKind::Step,
                        start_sample: 0,
                        end_sample: 5,
                        level: 0.0,
                        pulse_period_samples: 0,
                        pulse_width_samples: 0,
                    },
                    CommandSegment {
                        epoch_number: Some(0),
                        kind,
                        start_sample: 5,
                        end_sample: 105,
                        level: 50.0,
                        pulse_period_samples: period,
                        pulse_width_samples: width,
                    },
                ];
                let mut out = vec![f64::NAN; 105];
                render_segments(&segments, 105, 0, &mut out).unwrap();
                // Every range equals the same slice of the whole sweep.
                for (first, len) in [(0, 105), (3, 10), (5, 1), (17, 60), (100, 5), (104, 1), (50, 0)] {
                    let mut part = vec![f64::NAN; len];
                    render_segments(&segments, 105, first, &mut part).unwrap();
                    let whole = &out[first..first + len];
                    assert!(part.iter().zip(whole).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?} {period}/{width} {first}+{len}");
                }
                assert!(out[..5].iter().all(|&v| v == 0.0));
                if kind == EpochKind::Ramp {
                    assert_eq!((out[5], out[104]), (0.0, 50.0));
                }
                if kind == EpochKind::Pulse && period == 10 {
                    assert_eq!(
                        &out[5..16],
                        &[50.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 50.0]
                    );
                }
            }
        }
        let bad = CommandSegment {
            epoch_number: Some(0),
            kind: EpochKind::Triangle,
            start_sample: 0,
            end_sample: 100,
            level: 1.0,
            pulse_period_samples: 10,
            pulse_width_samples: 20,
        };
        assert!(render_segments(&[bad.clone()], 100, 0, &mut vec![0.0; 100]).is_err());
        // The error does not depend on the range asked for.
        assert!(render_segments(&[bad], 100, 0, &mut []).is_err());
    }

    #[test]
    fn indexed_strings_and_protocol_names_follow_pyabf() {
        let strings = indexed_strings(
            b"SSCH\x01\x00\x00\x00\x00\x00Clampex\x00C:\\p\\my proto.pro\x00 IN 0 \x00\xb5V\x00",
        );
        assert_eq!(
            strings,
            vec!["", "Clampex", "C:\\p\\my proto.pro", "IN 0", "uV", ""]
        );
        assert_eq!(protocol_name("C:\\p\\my proto.pro"), "my proto");
        assert_eq!(protocol_name("L:/a/b.c.pro"), "b.c");
        assert_eq!(protocol_name("none.txt"), "None");
        assert!(indexed_strings(b"").is_empty());
        assert_eq!(
            EpochDefinition {
                epoch_number: 27,
                ..sample_epoch()
            }
            .letter(),
            "BB"
        );
    }

    fn sample_epoch() -> EpochDefinition {
        EpochDefinition {
            epoch_number: 0,
            dac_number: 0,
            kind: EpochKind::Step,
            first_level: 0.0,
            level_increment: 0.0,
            first_duration_samples: 0,
            duration_increment_samples: 0,
            pulse_period_samples: 0,
            pulse_width_samples: 0,
        }
    }
}
