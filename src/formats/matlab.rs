//! Reader for MATLAB `.mat` files (v5/v7 and v7.3) and two neuroscience layouts stored in them:
//! CellExplorer `*.cell_metrics.cellinfo.mat` and the Stringer et al. 2018 `natimg2800` recordings.
//!
//! Role: give the pipeline plain Rust values from the `.mat` files scientists bring. A file is
//! first decoded into a small tree of [`MatValue`]s (numeric, char, cell, struct), whatever its
//! container, and the layout readers ([`read_cell_metrics`], [`read_natimg2800`],
//! [`read_class_assignment_mat`]) then pick the fields they need and check their shapes.
//!
//! Containers:
//! * MAT v5/v7 (header text "MATLAB 5.0 MAT-file"): parsed here from the byte layout published
//!   in MathWorks' "MAT-File Format" (matfile_format.pdf, R2023b): a 128-byte header, then
//!   tagged data elements (8-byte tag or the 4-byte "small element" form, 8-byte padding);
//!   `miMATRIX` (14) holds array flags, dimensions, name and class-specific sub-elements;
//!   `miCOMPRESSED` (15) holds one zlib-compressed element. The `matfile` crate reads only
//!   top-level numeric arrays, and CellExplorer and Stringer files keep everything in structs
//!   and cells, hence this parser. zlib is inflated with `hdf5_reader::filters::deflate`
//!   (already a dependency, bounded output).
//! * MAT v7.3 (header text "MATLAB 7.3 MAT-file"): an HDF5 file with a 512-byte user block,
//!   read with `hdf5-reader`. Conventions (facts from MathWorks' v7.3 notes and inspection of
//!   real files): the attribute `MATLAB_class` names the class; dimensions are the HDF5 shape
//!   reversed (MATLAB is column-major, so the element order is the same); structs are groups;
//!   cells are datasets of object references into `/#refs#`; `char` is UTF-16 in uint16;
//!   `MATLAB_empty = 1` marks an empty array whose data holds its dimensions.
//!
//! Safety: every count read from a header is checked against the bytes that hold it before
//! anything is allocated, recursion depth is bounded, and each problem is a [`MatError`]
//! naming the file, the variable path (`cell_metrics.spikes.times{1}`) and the reason.

use std::collections::HashMap;
use std::path::Path;

use hdf5_reader::group::Group;
use hdf5_reader::{Dataset, Datatype, Hdf5File};

/// MATLAB nests structs and cells only a few levels deep; a deeper tree is a corrupt file.
const MAX_DEPTH: usize = 64;
/// DEFLATE expands at most ~1032:1 (see `nwb.rs`); larger claimed sizes are refused.
const MAX_EXPANSION: usize = 1100;

/// Everything that can go wrong while reading a `.mat` file.
#[derive(Debug, thiserror::Error)]
pub enum MatError {
    #[error("{file}: cannot read the file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a MATLAB .mat file: {reason}")]
    NotMat { file: String, reason: String },
    #[error("{file}: malformed {what}: {reason}")]
    Malformed {
        file: String,
        what: String,
        reason: String,
    },
    #[error("{file}: variable `{variable}` is missing")]
    Missing { file: String, variable: String },
    #[error("{file}: variable `{variable}`: expected {expected}, found {found}")]
    WrongType {
        file: String,
        variable: String,
        expected: String,
        found: String,
    },
    #[error("{file}: variable `{variable}`: {reason}")]
    Invalid {
        file: String,
        variable: String,
        reason: String,
    },
}

/// The numeric payload of a MATLAB array, in MATLAB's column-major element order. `single`
/// stays `f32` (Stringer responses are large); every other numeric class is widened to `f64`
/// (exact for all classes except (u)int64 beyond 2^53).
#[derive(Debug, Clone, PartialEq)]
pub enum MatNumeric {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl MatNumeric {
    pub fn len(&self) -> usize {
        match self {
            MatNumeric::F32(v) => v.len(),
            MatNumeric::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            MatNumeric::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            MatNumeric::F64(v) => v.clone(),
        }
    }
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            MatNumeric::F32(v) => v.clone(),
            MatNumeric::F64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// One MATLAB value. `dims` are MATLAB dimensions (at least 2, column-major).
#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    /// Numeric or logical array; `class` is MATLAB's class name ("double", "single",
    /// "uint8", "logical", ...). Complex arrays keep their real part and `complex = true`.
    Numeric {
        class: String,
        dims: Vec<usize>,
        data: MatNumeric,
        complex: bool,
    },
    /// Character array; rows of a multi-row char matrix are joined with '\n'.
    Char { dims: Vec<usize>, text: String },
    /// Cell array, items in column-major order.
    Cell {
        dims: Vec<usize>,
        items: Vec<MatValue>,
    },
    /// Struct array: `values[element * fields.len() + field]`.
    Struct {
        dims: Vec<usize>,
        fields: Vec<String>,
        values: Vec<MatValue>,
    },
    /// A class this reader does not decode (sparse, object, function handle, opaque).
    Unsupported { class: String, dims: Vec<usize> },
}

impl MatValue {
    /// Short type description for error messages.
    pub fn kind(&self) -> String {
        match self {
            MatValue::Numeric { class, dims, .. } => format!("{class} {}", dims_text(dims)),
            MatValue::Char { dims, .. } => format!("char {}", dims_text(dims)),
            MatValue::Cell { dims, .. } => format!("cell {}", dims_text(dims)),
            MatValue::Struct { dims, .. } => format!("struct {}", dims_text(dims)),
            MatValue::Unsupported { class, dims } => {
                format!("{class} {} (unsupported)", dims_text(dims))
            }
        }
    }
    pub fn dims(&self) -> &[usize] {
        match self {
            MatValue::Numeric { dims, .. }
            | MatValue::Char { dims, .. }
            | MatValue::Cell { dims, .. }
            | MatValue::Struct { dims, .. }
            | MatValue::Unsupported { dims, .. } => dims,
        }
    }
    /// Field `name` of struct element `element` (0 for a scalar struct).
    pub fn field_at(&self, element: usize, name: &str) -> Option<&MatValue> {
        let MatValue::Struct { fields, values, .. } = self else {
            return None;
        };
        let f = fields.iter().position(|x| x == name)?;
        values.get(element.checked_mul(fields.len())?.checked_add(f)?)
    }
    pub fn field(&self, name: &str) -> Option<&MatValue> {
        self.field_at(0, name)
    }
    pub fn field_names(&self) -> &[String] {
        match self {
            MatValue::Struct { fields, .. } => fields,
            _ => &[],
        }
    }
    pub fn numeric(&self) -> Option<&MatNumeric> {
        match self {
            MatValue::Numeric { data, .. } => Some(data),
            _ => None,
        }
    }
    pub fn text(&self) -> Option<&str> {
        match self {
            MatValue::Char { text, .. } => Some(text),
            _ => None,
        }
    }
    pub fn cell_items(&self) -> Option<&[MatValue]> {
        match self {
            MatValue::Cell { items, .. } => Some(items),
            _ => None,
        }
    }
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Container version of a `.mat` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatFormat {
    /// Level 5 MAT-file (MATLAB v5/v6/v7, possibly zlib-compressed).
    V5,
    /// MATLAB v7.3 (HDF5).
    V73,
}

/// All variables of a `.mat` file.
#[derive(Debug, Clone, PartialEq)]
pub struct MatFile {
    pub file: String,
    pub format: MatFormat,
    pub variables: Vec<(String, MatValue)>,
}

impl MatFile {
    pub fn get(&self, name: &str) -> Option<&MatValue> {
        self.variables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// Reads every variable of a MAT v5/v7 or v7.3 file.
pub fn read_mat(path: impl AsRef<Path>) -> Result<MatFile, MatError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| MatError::Io {
        file: file.clone(),
        source,
    })?;
    if bytes.len() < 128 {
        return Err(MatError::NotMat {
            file,
            reason: format!("{} bytes, shorter than the 128-byte header", bytes.len()),
        });
    }
    if !bytes.starts_with(b"MATLAB") {
        return Err(MatError::NotMat {
            file,
            reason: "the header text does not start with \"MATLAB\"".into(),
        });
    }
    let version = u16::from_le_bytes([bytes[124], bytes[125]]);
    let is_hdf5 = bytes.starts_with(b"MATLAB 7.3")
        || version == 0x0200
        || bytes.get(512..520) == Some(b"\x89HDF\r\n\x1a\n");
    if is_hdf5 {
        drop(bytes);
        let variables = read_v73(path, &file)?;
        return Ok(MatFile {
            file,
            format: MatFormat::V73,
            variables,
        });
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => {
            return Err(MatError::NotMat {
                file,
                reason: format!("endian indicator {other:?} is neither \"IM\" nor \"MI\""),
            });
        }
    };
    let parser = V5 {
        file: &file,
        big_endian,
    };
    let variables = parser.parse_top(&bytes[128..])?;
    Ok(MatFile {
        file,
        format: MatFormat::V5,
        variables,
    })
}

// ---------------------------------------------------------------------------------------------
// MAT v5 parser
// ---------------------------------------------------------------------------------------------

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

struct V5<'a> {
    file: &'a str,
    big_endian: bool,
}

impl V5<'_> {
    fn malformed(&self, what: &str, reason: impl Into<String>) -> MatError {
        MatError::Malformed {
            file: self.file.to_string(),
            what: what.to_string(),
            reason: reason.into(),
        }
    }

    fn u32_at(&self, b: &[u8], at: usize) -> u32 {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    /// Reads the data element at `*pos`: (type, payload) and advances past its padding.
    /// `padded` is false only for miCOMPRESSED payloads, which MATLAB does not pad.
    fn element<'b>(
        &self,
        buf: &'b [u8],
        pos: &mut usize,
        what: &str,
    ) -> Result<(u32, &'b [u8]), MatError> {
        let start = *pos;
        if buf.len().saturating_sub(start) < 8 {
            return Err(self.malformed(
                what,
                format!(
                    "truncated: a data-element tag needs 8 bytes at offset {start}, {} remain",
                    buf.len().saturating_sub(start)
                ),
            ));
        }
        let first = self.u32_at(buf, start);
        if first >> 16 != 0 {
            // Small data element: type in the low 16 bits, size in the high 16, payload in 4 bytes.
            let size = (first >> 16) as usize;
            let dtype = first & 0xffff;
            if size > 4 {
                return Err(self.malformed(
                    what,
                    format!("small data element claims {size} bytes (at most 4)"),
                ));
            }
            *pos = start + 8;
            return Ok((dtype, &buf[start + 4..start + 4 + size]));
        }
        let dtype = first;
        let size = self.u32_at(buf, start + 4) as usize;
        let data_start = start + 8;
        let end = data_start.checked_add(size).filter(|&e| e <= buf.len()).ok_or_else(|| {
            self.malformed(what, format!("truncated: element of type {dtype} claims {size} bytes at offset {data_start}, {} remain", buf.len() - data_start))
        })?;
        *pos = if dtype == MI_COMPRESSED {
            end
        } else {
            (data_start + size.div_ceil(8) * 8).min(buf.len())
        };
        Ok((dtype, &buf[data_start..end]))
    }

    fn parse_top(&self, mut buf: &[u8]) -> Result<Vec<(String, MatValue)>, MatError> {
        let mut vars = Vec::new();
        let mut pos = 0;
        // Some writers pad the file end with zeros; stop at a zero tag.
        while buf.len().saturating_sub(pos) >= 8 && buf[pos..pos + 8] != [0u8; 8] {
            let (dtype, payload) = self.element(buf, &mut pos, "top-level element")?;
            match dtype {
                MI_MATRIX => vars.push(self.matrix(payload, "", 0)?),
                MI_COMPRESSED => {
                    let inflated = self.inflate(payload)?;
                    let mut inner = 0;
                    let (t, p) = self.element(&inflated, &mut inner, "compressed element")?;
                    if t == MI_MATRIX {
                        vars.push(self.matrix(p, "", 0)?);
                    }
                }
                _ => {} // other top-level elements carry no variables
            }
            buf = &buf[pos..];
            pos = 0;
        }
        Ok(vars)
    }

    /// Inflates one miCOMPRESSED payload. The inflated data is a single data element whose
    /// tag states its size, so the tag is inflated first and the output buffer is then sized
    /// exactly (the bounded inflater pre-allocates, and zero-filling a worst-case buffer of
    /// 1032 x the input cost 0.4 s on a 0.5 MB file).
    fn inflate(&self, payload: &[u8]) -> Result<Vec<u8>, MatError> {
        use hdf5_reader::filters::deflate::decompress_with_limit;
        let err =
            |e: hdf5_reader::error::Error| self.malformed("compressed element", e.to_string());
        let head = decompress_with_limit(payload, 8).map_err(err)?;
        if head.len() < 8 {
            return Err(self.malformed("compressed element", "inflates to less than one tag"));
        }
        let first = self.u32_at(&head, 0);
        let total = if first >> 16 != 0 {
            8
        } else {
            8 + self.u32_at(&head, 4) as usize
        };
        if total
            > payload
                .len()
                .saturating_mul(MAX_EXPANSION)
                .saturating_add(64)
        {
            return Err(self.malformed(
                "compressed element",
                format!(
                    "claims {total} bytes from {} compressed bytes",
                    payload.len()
                ),
            ));
        }
        let inflated = decompress_with_limit(payload, total).map_err(err)?;
        if inflated.len() != total {
            return Err(self.malformed(
                "compressed element",
                format!("inflates to {} bytes, its tag says {total}", inflated.len()),
            ));
        }
        Ok(inflated)
    }

    /// Decodes the payload of one miMATRIX element into (name, value).
    fn matrix(
        &self,
        buf: &[u8],
        parent: &str,
        depth: usize,
    ) -> Result<(String, MatValue), MatError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(parent, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        if buf.is_empty() {
            // An empty miMATRIX is MATLAB's `[]` inside cells and structs.
            return Ok((
                String::new(),
                MatValue::Numeric {
                    class: "double".into(),
                    dims: vec![0, 0],
                    data: MatNumeric::F64(Vec::new()),
                    complex: false,
                },
            ));
        }
        let mut pos = 0;
        let (t, flags) = self.element(buf, &mut pos, parent)?;
        if t != MI_UINT32 || flags.len() != 8 {
            return Err(
                self.malformed(parent, "array flags sub-element is not 8 bytes of miUINT32")
            );
        }
        let f0 = self.u32_at(flags, 0);
        let class = f0 & 0xff;
        let complex = f0 & 0x0800 != 0;
        let logical = f0 & 0x0200 != 0;
        let (t, dims_raw) = self.element(buf, &mut pos, parent)?;
        if t != MI_INT32 || dims_raw.len() % 4 != 0 || dims_raw.len() < 8 {
            return Err(
                self.malformed(parent, "dimensions sub-element is not at least two miINT32")
            );
        }
        let mut dims = Vec::with_capacity(dims_raw.len() / 4);
        for k in 0..dims_raw.len() / 4 {
            let d = self.u32_at(dims_raw, 4 * k) as i32;
            if d < 0 {
                return Err(self.malformed(parent, format!("negative dimension {d}")));
            }
            dims.push(d as usize);
        }
        let numel = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.malformed(parent, "dimension product overflows"))?;
        let (_, name_raw) = self.element(buf, &mut pos, parent)?;
        let name = String::from_utf8_lossy(name_raw)
            .trim_end_matches('\0')
            .to_string();
        let path = if parent.is_empty() {
            name.clone()
        } else {
            parent.to_string()
        };

        let value =
            match class {
                1 => {
                    // Cell: numel miMATRIX elements. Each needs at least an 8-byte tag.
                    if numel > (buf.len() - pos) / 8 {
                        return Err(self.malformed(
                            &path,
                            format!("cell claims {numel} items in {} bytes", buf.len() - pos),
                        ));
                    }
                    let mut items = Vec::with_capacity(numel);
                    for k in 0..numel {
                        let item_path = format!("{path}{{{}}}", k + 1);
                        let (t, p) = self.element(buf, &mut pos, &item_path)?;
                        if t != MI_MATRIX {
                            return Err(self.malformed(
                                &item_path,
                                format!("cell item has element type {t}, expected miMATRIX"),
                            ));
                        }
                        items.push(self.matrix(p, &item_path, depth + 1)?.1);
                    }
                    MatValue::Cell { dims, items }
                }
                2 | 3 => {
                    if class == 3 {
                        self.element(buf, &mut pos, &path)?; // class name of an object
                    }
                    let (_, len_raw) = self.element(buf, &mut pos, &path)?;
                    if len_raw.len() != 4 {
                        return Err(self
                            .malformed(&path, "field-name length sub-element is not one miINT32"));
                    }
                    let name_len = self.u32_at(len_raw, 0) as usize;
                    let (_, names_raw) = self.element(buf, &mut pos, &path)?;
                    if name_len == 0 && !names_raw.is_empty()
                        || name_len != 0 && names_raw.len() % name_len != 0
                    {
                        return Err(self.malformed(
                            &path,
                            format!(
                                "field names of {} bytes are not a multiple of {name_len}",
                                names_raw.len()
                            ),
                        ));
                    }
                    let fields: Vec<String> = if name_len == 0 {
                        Vec::new()
                    } else {
                        names_raw
                            .chunks(name_len)
                            .map(|c| {
                                String::from_utf8_lossy(c)
                                    .trim_end_matches('\0')
                                    .to_string()
                            })
                            .collect()
                    };
                    let total = numel
                        .checked_mul(fields.len())
                        .filter(|&n| n <= (buf.len() - pos) / 8)
                        .ok_or_else(|| {
                            self.malformed(
                                &path,
                                format!(
                                    "struct claims {numel} elements x {} fields in {} bytes",
                                    fields.len(),
                                    buf.len() - pos
                                ),
                            )
                        })?;
                    let mut values = Vec::with_capacity(total);
                    for k in 0..total {
                        let field = &fields[k % fields.len()];
                        let fpath = if numel == 1 {
                            format!("{path}.{field}")
                        } else {
                            format!("{path}({}).{field}", k / fields.len() + 1)
                        };
                        let (t, p) = self.element(buf, &mut pos, &fpath)?;
                        if t != MI_MATRIX {
                            return Err(self.malformed(
                                &fpath,
                                format!("field has element type {t}, expected miMATRIX"),
                            ));
                        }
                        values.push(self.matrix(p, &fpath, depth + 1)?.1);
                    }
                    if class == 3 {
                        MatValue::Unsupported {
                            class: "object".into(),
                            dims,
                        }
                    } else {
                        MatValue::Struct {
                            dims,
                            fields,
                            values,
                        }
                    }
                }
                4 => {
                    let (t, raw) = self.element(buf, &mut pos, &path)?;
                    let units: Vec<u32> = match t {
                        MI_UTF8 | MI_UINT8 | MI_INT8 => raw.iter().map(|&b| u32::from(b)).collect(),
                        MI_UINT16 | MI_UTF16 | MI_INT16 => raw
                            .chunks_exact(2)
                            .map(|c| {
                                u32::from(if self.big_endian {
                                    u16::from_be_bytes([c[0], c[1]])
                                } else {
                                    u16::from_le_bytes([c[0], c[1]])
                                })
                            })
                            .collect(),
                        MI_UTF32 | MI_UINT32 | MI_INT32 => {
                            raw.chunks_exact(4).map(|c| self.u32_at(c, 0)).collect()
                        }
                        other => {
                            return Err(self
                                .malformed(&path, format!("char data has element type {other}")));
                        }
                    };
                    // miUTF8 may hold multi-byte characters, so only the UTF-16/32 forms have one unit per element.
                    let text = if t == MI_UTF8 {
                        String::from_utf8_lossy(raw).into_owned()
                    } else {
                        if units.len() != numel {
                            return Err(self.malformed(
                                &path,
                                format!(
                                    "char array {} has {} characters",
                                    dims_text(&dims),
                                    units.len()
                                ),
                            ));
                        }
                        chars_column_major(&units, &dims)
                    };
                    MatValue::Char { dims, text }
                }
                6..=15 => {
                    let (t, raw) = self.element(buf, &mut pos, &path)?;
                    let class_name = if logical {
                        "logical"
                    } else {
                        numeric_class_name(class)
                    };
                    let data = if class == 7 {
                        MatNumeric::F32(self.decode(t, raw, numel, &path, |x| x as f32)?)
                    } else {
                        MatNumeric::F64(self.decode(t, raw, numel, &path, |x| x)?)
                    };
                    MatValue::Numeric {
                        class: class_name.into(),
                        dims,
                        data,
                        complex,
                    }
                }
                other => MatValue::Unsupported {
                    class: class_code_name(other).into(),
                    dims,
                },
            };
        Ok((name, value))
    }

    /// Decodes `numel` numbers stored as element type `t` (MATLAB may store a double array
    /// in a narrower integer type to save space) into `T`.
    fn decode<T>(
        &self,
        t: u32,
        raw: &[u8],
        numel: usize,
        path: &str,
        conv: impl Fn(f64) -> T,
    ) -> Result<Vec<T>, MatError> {
        let width = match t {
            MI_INT8 | MI_UINT8 => 1,
            MI_INT16 | MI_UINT16 => 2,
            MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
            MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
            other => {
                return Err(self.malformed(path, format!("numeric data has element type {other}")));
            }
        };
        if raw.len() != numel.saturating_mul(width) {
            return Err(self.malformed(
                path,
                format!("{} bytes of type {t} for {numel} elements", raw.len()),
            ));
        }
        let be = self.big_endian;
        let rd = |c: &[u8]| -> f64 {
            macro_rules! num {
                ($ty:ty, $n:literal) => {{
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    (if be {
                        <$ty>::from_be_bytes(a)
                    } else {
                        <$ty>::from_le_bytes(a)
                    }) as f64
                }};
            }
            match t {
                MI_INT8 => f64::from(c[0] as i8),
                MI_UINT8 => f64::from(c[0]),
                MI_INT16 => num!(i16, 2),
                MI_UINT16 => num!(u16, 2),
                MI_INT32 => num!(i32, 4),
                MI_UINT32 => num!(u32, 4),
                MI_SINGLE => num!(f32, 4),
                MI_INT64 => num!(i64, 8),
                MI_UINT64 => num!(u64, 8),
                _ => num!(f64, 8),
            }
        };
        Ok(raw.chunks_exact(width).map(|c| conv(rd(c))).collect())
    }
}

fn numeric_class_name(class: u32) -> &'static str {
    match class {
        6 => "double",
        7 => "single",
        8 => "int8",
        9 => "uint8",
        10 => "int16",
        11 => "uint16",
        12 => "int32",
        13 => "uint32",
        14 => "int64",
        _ => "uint64",
    }
}

fn class_code_name(class: u32) -> &'static str {
    match class {
        5 => "sparse",
        16 => "function_handle",
        17 => "opaque",
        _ => "unknown class",
    }
}

/// MATLAB stores an r x c char matrix column by column; return its rows joined by '\n'.
fn chars_column_major(units: &[u32], dims: &[usize]) -> String {
    let to_char = |u: u32| char::from_u32(u).unwrap_or('\u{fffd}');
    let rows = dims.first().copied().unwrap_or(0);
    if rows <= 1 {
        return units.iter().map(|&u| to_char(u)).collect();
    }
    let cols = units.len() / rows;
    (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| to_char(units[c * rows + r]))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// MAT v7.3 (HDF5)
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum H5Obj {
    Group(Group),
    Dataset(Box<Dataset>),
}

struct V73<'a> {
    file: &'a str,
    max_bytes: u64,
    /// Objects under /#refs#, by object-header address, for cell references.
    refs: HashMap<u64, H5Obj>,
}

fn read_v73(path: &Path, file: &str) -> Result<Vec<(String, MatValue)>, MatError> {
    let h5err = |what: &str, e: hdf5_reader::error::Error| MatError::Malformed {
        file: file.to_string(),
        what: what.to_string(),
        reason: e.to_string(),
    };
    let file_len = std::fs::metadata(path)
        .map_err(|source| MatError::Io {
            file: file.to_string(),
            source,
        })?
        .len();
    let h5 = Hdf5File::open(path).map_err(|e| h5err("HDF5 container", e))?;
    let sb = h5.superblock();
    // MATLAB writes the end-of-file address as an absolute offset (it equals the file size
    // of the 512-byte-user-block files), so compare it directly.
    if sb.eof_address > file_len {
        return Err(MatError::Malformed {
            file: file.to_string(),
            what: "HDF5 container".into(),
            reason: format!(
                "truncated: {file_len} bytes, the superblock says {}",
                sb.eof_address
            ),
        });
    }
    let root = h5.root_group().map_err(|e| h5err("root group", e))?;
    let mut refs = HashMap::new();
    if let Ok(g) = root.group("#refs#") {
        let (groups, datasets) = g.members().map_err(|e| h5err("/#refs#", e))?;
        for g in groups {
            refs.insert(g.address(), H5Obj::Group(g));
        }
        for d in datasets {
            refs.insert(d.address(), H5Obj::Dataset(Box::new(d)));
        }
    }
    let reader = V73 {
        file,
        max_bytes: file_len.saturating_mul(MAX_EXPANSION as u64),
        refs,
    };
    let (groups, datasets) = root.members().map_err(|e| h5err("root group", e))?;
    let mut vars = Vec::new();
    for g in groups {
        let name = g.name().to_string();
        if name.starts_with('#') {
            continue;
        }
        let v = reader.value(&H5Obj::Group(g), &name, 0)?;
        vars.push((name, v));
    }
    for d in datasets {
        let name = d.name().to_string();
        if name.starts_with('#') {
            continue;
        }
        let v = reader.value(&H5Obj::Dataset(Box::new(d)), &name, 0)?;
        vars.push((name, v));
    }
    Ok(vars)
}

impl V73<'_> {
    fn malformed(&self, what: &str, reason: impl Into<String>) -> MatError {
        MatError::Malformed {
            file: self.file.to_string(),
            what: what.to_string(),
            reason: reason.into(),
        }
    }

    fn value(&self, obj: &H5Obj, path: &str, depth: usize) -> Result<MatValue, MatError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(path, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        match obj {
            H5Obj::Group(g) => self.group_value(g, path, depth),
            H5Obj::Dataset(d) => self.dataset_value(d, path, depth),
        }
    }

    fn group_value(&self, g: &Group, path: &str, depth: usize) -> Result<MatValue, MatError> {
        let class = g
            .attribute("MATLAB_class")
            .and_then(|a| a.read_string())
            .unwrap_or_else(|_| "struct".into());
        if class != "struct" {
            return Ok(MatValue::Unsupported {
                class,
                dims: vec![1, 1],
            });
        }
        let (groups, datasets) = g
            .members()
            .map_err(|e| self.malformed(path, e.to_string()))?;
        let mut members: Vec<(String, H5Obj)> = groups
            .into_iter()
            .map(|x| (x.name().to_string(), H5Obj::Group(x)))
            .collect();
        members.extend(
            datasets
                .into_iter()
                .map(|x| (x.name().to_string(), H5Obj::Dataset(Box::new(x)))),
        );
        // A struct array stores every field as a reference dataset without MATLAB_class,
        // one reference per element.
        let is_array_field = |o: &H5Obj| matches!(o, H5Obj::Dataset(d) if matches!(d.dtype(), Datatype::Reference { .. }) && d.attribute("MATLAB_class").is_err());
        if !members.is_empty() && members.iter().all(|(_, o)| is_array_field(o)) {
            let H5Obj::Dataset(first) = &members[0].1 else {
                unreachable!("checked above")
            };
            let dims = matlab_dims(first.shape());
            let mut per_field = Vec::with_capacity(members.len());
            for (name, o) in &members {
                let H5Obj::Dataset(d) = o else { continue };
                per_field.push(self.deref_all(d, &format!("{path}.{name}"), depth)?);
            }
            let n = per_field[0].len();
            if per_field.iter().any(|f| f.len() != n) {
                return Err(
                    self.malformed(path, "struct-array fields have different element counts")
                );
            }
            let fields: Vec<String> = members.iter().map(|(n, _)| n.clone()).collect();
            let mut values = Vec::with_capacity(n * fields.len());
            for k in 0..n {
                for f in &per_field {
                    values.push(f[k].clone());
                }
            }
            return Ok(MatValue::Struct {
                dims,
                fields,
                values,
            });
        }
        let mut fields = Vec::with_capacity(members.len());
        let mut values = Vec::with_capacity(members.len());
        for (name, o) in &members {
            values.push(self.value(o, &format!("{path}.{name}"), depth + 1)?);
            fields.push(name.clone());
        }
        Ok(MatValue::Struct {
            dims: vec![1, 1],
            fields,
            values,
        })
    }

    /// Resolves every object reference of a reference dataset.
    fn deref_all(&self, d: &Dataset, path: &str, depth: usize) -> Result<Vec<MatValue>, MatError> {
        let Datatype::Reference { size, .. } = d.dtype() else {
            return Err(self.malformed(path, "expected object references"));
        };
        let size = usize::from(*size);
        let n = d
            .num_elements()
            .map_err(|e| self.malformed(path, e.to_string()))?;
        if !(1..=8).contains(&size) || n.saturating_mul(size as u64) > self.max_bytes {
            return Err(self.malformed(
                path,
                format!("{n} references of {size} bytes do not fit the file"),
            ));
        }
        let raw = d
            .read_raw_bytes()
            .map_err(|e| self.malformed(path, e.to_string()))?;
        let mut out = Vec::with_capacity(raw.len() / size);
        for (k, c) in raw.chunks_exact(size).enumerate() {
            let mut a = [0u8; 8];
            a[..size].copy_from_slice(c);
            let addr = u64::from_le_bytes(a);
            let item_path = format!("{path}{{{}}}", k + 1);
            let target = self.refs.get(&addr).ok_or_else(|| {
                self.malformed(
                    &item_path,
                    format!("reference to address {addr} is not an object in /#refs#"),
                )
            })?;
            out.push(self.value(target, &item_path, depth + 1)?);
        }
        Ok(out)
    }

    fn dataset_value(&self, d: &Dataset, path: &str, depth: usize) -> Result<MatValue, MatError> {
        let class = d
            .attribute("MATLAB_class")
            .and_then(|a| a.read_string())
            .ok();
        let empty = d
            .attribute("MATLAB_empty")
            .and_then(|a| a.read_as_f64())
            .map(|v| v != 0.0)
            .unwrap_or(false);
        let dims = matlab_dims(d.shape());
        if empty {
            let dims = vec![0, 0];
            return Ok(match class.as_deref() {
                Some("char") => MatValue::Char {
                    dims,
                    text: String::new(),
                },
                Some("cell") => MatValue::Cell {
                    dims,
                    items: Vec::new(),
                },
                Some("struct") => MatValue::Struct {
                    dims,
                    fields: Vec::new(),
                    values: Vec::new(),
                },
                other => MatValue::Numeric {
                    class: other.unwrap_or("double").to_string(),
                    dims,
                    data: MatNumeric::F64(Vec::new()),
                    complex: false,
                },
            });
        }
        match (class.as_deref(), d.dtype()) {
            (Some("cell") | None, Datatype::Reference { .. }) => {
                let items = self.deref_all(d, path, depth)?;
                Ok(MatValue::Cell { dims, items })
            }
            (Some("char"), _) => {
                let units = self.numbers(d, path)?;
                let units: Vec<u32> = units.iter().map(|&u| u as u32).collect();
                // uint16 code units are UTF-16: decode surrogate pairs.
                let text = if units.iter().any(|&u| (0xD800..0xE000).contains(&u)) {
                    String::from_utf16_lossy(&units.iter().map(|&u| u as u16).collect::<Vec<_>>())
                } else {
                    chars_column_major(&units, &dims)
                };
                Ok(MatValue::Char { dims, text })
            }
            (c, Datatype::FixedPoint { .. } | Datatype::FloatingPoint { .. }) => {
                let class = c.unwrap_or("double").to_string();
                if !matches!(
                    class.as_str(),
                    "double"
                        | "single"
                        | "logical"
                        | "int8"
                        | "uint8"
                        | "int16"
                        | "uint16"
                        | "int32"
                        | "uint32"
                        | "int64"
                        | "uint64"
                ) {
                    return Ok(MatValue::Unsupported { class, dims });
                }
                let values = self.numbers(d, path)?;
                let data = if class == "single" {
                    MatNumeric::F32(values.into_iter().map(|x| x as f32).collect())
                } else {
                    MatNumeric::F64(values)
                };
                Ok(MatValue::Numeric {
                    class,
                    dims,
                    data,
                    complex: false,
                })
            }
            (c, other) => Ok(MatValue::Unsupported {
                class: c
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{other:?}")),
                dims,
            }),
        }
    }

    /// Any integer/float dataset as f64, with the decoded size checked against the file.
    fn numbers(&self, d: &Dataset, path: &str) -> Result<Vec<f64>, MatError> {
        let n = d
            .num_elements()
            .map_err(|e| self.malformed(path, e.to_string()))?;
        let width = match d.dtype() {
            Datatype::FixedPoint { size, .. } | Datatype::FloatingPoint { size, .. } => {
                u64::from(*size)
            }
            other => return Err(self.malformed(path, format!("expected numbers, found {other:?}"))),
        };
        if n.saturating_mul(width) > self.max_bytes {
            return Err(self.malformed(path, format!("{n} elements cannot come from this file")));
        }
        let n = n as usize;
        match super::hdf5::read_numbers_f64(d, n) {
            Some(r) => r.map_err(|e| self.malformed(path, e.to_string())),
            None => Err(self.malformed(path, format!("unsupported number type {:?}", d.dtype()))),
        }
    }
}

/// MATLAB dimensions from an HDF5 shape (reversed; at least two).
fn matlab_dims(shape: &[u64]) -> Vec<usize> {
    let mut dims: Vec<usize> = shape.iter().rev().map(|&d| d as usize).collect();
    while dims.len() < 2 {
        dims.push(1);
    }
    dims
}

// ---------------------------------------------------------------------------------------------
// Layout helpers
// ---------------------------------------------------------------------------------------------

struct Layout<'a> {
    file: &'a str,
}

impl Layout<'_> {
    fn missing(&self, variable: &str) -> MatError {
        MatError::Missing {
            file: self.file.to_string(),
            variable: variable.to_string(),
        }
    }
    fn wrong(&self, variable: &str, expected: &str, found: &MatValue) -> MatError {
        MatError::WrongType {
            file: self.file.to_string(),
            variable: variable.to_string(),
            expected: expected.to_string(),
            found: found.kind(),
        }
    }
    fn invalid(&self, variable: &str, reason: impl Into<String>) -> MatError {
        MatError::Invalid {
            file: self.file.to_string(),
            variable: variable.to_string(),
            reason: reason.into(),
        }
    }
    fn field<'v>(
        &self,
        v: &'v MatValue,
        parent: &str,
        name: &str,
    ) -> Result<&'v MatValue, MatError> {
        if !matches!(v, MatValue::Struct { .. }) {
            return Err(self.wrong(parent, "a struct", v));
        }
        v.field(name)
            .ok_or_else(|| self.missing(&format!("{parent}.{name}")))
    }
    fn numbers(&self, v: &MatValue, path: &str) -> Result<Vec<f64>, MatError> {
        v.numeric()
            .map(MatNumeric::to_f64)
            .ok_or_else(|| self.wrong(path, "a numeric array", v))
    }
    /// Per-unit vector of length `n` (CellExplorer stores 1 x N rows).
    fn per_unit(&self, v: &MatValue, path: &str, n: usize) -> Result<Vec<f64>, MatError> {
        let x = self.numbers(v, path)?;
        if x.len() != n {
            return Err(self.invalid(path, format!("{} values for {n} units", x.len())));
        }
        Ok(x)
    }
    /// Per-unit strings: a cell of char arrays (a lone char array is accepted for one unit).
    fn per_unit_text(&self, v: &MatValue, path: &str, n: usize) -> Result<Vec<String>, MatError> {
        match v {
            MatValue::Cell { items, .. } if items.len() == n => items
                .iter()
                .enumerate()
                .map(|(k, it)| {
                    it.text()
                        .map(str::to_string)
                        .ok_or_else(|| self.wrong(&format!("{path}{{{}}}", k + 1), "char", it))
                })
                .collect(),
            MatValue::Char { text, .. } if n == 1 => Ok(vec![text.clone()]),
            other => Err(self.wrong(path, &format!("a cell of {n} strings"), other)),
        }
    }
    fn per_unit_cells<'v>(
        &self,
        v: &'v MatValue,
        path: &str,
        n: usize,
    ) -> Result<&'v [MatValue], MatError> {
        match v {
            MatValue::Cell { items, .. } if items.len() == n => Ok(items),
            other => Err(self.wrong(path, &format!("a cell with {n} items"), other)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CellExplorer cell_metrics
// ---------------------------------------------------------------------------------------------

/// One unit of a CellExplorer `cell_metrics` struct (Petersen et al. 2021, Neuron; field names
/// as documented at cellexplorer.org/datastructure/standard-cell-metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct CellExplorerUnit {
    /// `UID`: unit id within the session.
    pub uid: f64,
    pub session_name: String,
    pub brain_region: String,
    /// `putativeCellType`, e.g. "Pyramidal Cell", "Narrow Interneuron", "Wide Interneuron".
    pub putative_cell_type: String,
    /// Names of the `groundTruthClassification` fields flagged (non-zero) for this unit,
    /// e.g. ["Juxta"], ["PV"]; empty when the file has no ground truth for it.
    pub ground_truth: Vec<String>,
    /// `firingRate` (Hz).
    pub firing_rate_hz: f64,
    /// `troughToPeak` (ms), if present.
    pub trough_to_peak_ms: Option<f64>,
    pub ab_ratio: Option<f64>,
    pub burst_index_royer2012: Option<f64>,
    /// `acg_tau_rise` (ms), if present.
    pub acg_tau_rise_ms: Option<f64>,
    /// `spikes.times{i}` (s).
    pub spike_times_s: Vec<f64>,
    /// `waveforms.filt{i}`: mean filtered waveform on the peak channel (uV).
    pub waveform_filt_uv: Vec<f64>,
    /// `waveforms.time{i}` (ms), same length as the waveform.
    pub waveform_time_ms: Vec<f64>,
}

/// All units of one `*.cell_metrics.cellinfo.mat` file.
#[derive(Debug, Clone, PartialEq)]
pub struct CellMetricsFile {
    pub file: String,
    pub format: MatFormat,
    /// `sr` (or `general.sr`): sampling rate of the extracellular recording (Hz), if stored.
    pub sampling_rate_hz: Option<f64>,
    pub units: Vec<CellExplorerUnit>,
}

/// Reads a CellExplorer `cell_metrics` file (v5 or v7.3).
pub fn read_cell_metrics(path: impl AsRef<Path>) -> Result<CellMetricsFile, MatError> {
    let mat = read_mat(path)?;
    let l = Layout { file: &mat.file };
    let cm = mat
        .get("cell_metrics")
        .ok_or_else(|| l.missing("cell_metrics"))?;
    let p = "cell_metrics";
    let uid = l.numbers(l.field(cm, p, "UID")?, "cell_metrics.UID")?;
    let n = uid.len();
    if n == 0 {
        return Err(l.invalid("cell_metrics.UID", "no units"));
    }
    let firing = l.per_unit(l.field(cm, p, "firingRate")?, "cell_metrics.firingRate", n)?;
    let optional = |name: &str| -> Result<Option<Vec<f64>>, MatError> {
        match cm.field(name) {
            Some(v) => l.per_unit(v, &format!("cell_metrics.{name}"), n).map(Some),
            None => Ok(None),
        }
    };
    let ttp = optional("troughToPeak")?;
    let ab = optional("ab_ratio")?;
    let burst = optional("burstIndex_Royer2012")?;
    let tau = optional("acg_tau_rise")?;
    let session = l.per_unit_text(
        l.field(cm, p, "sessionName")?,
        "cell_metrics.sessionName",
        n,
    )?;
    let region = l.per_unit_text(
        l.field(cm, p, "brainRegion")?,
        "cell_metrics.brainRegion",
        n,
    )?;
    let ctype = l.per_unit_text(
        l.field(cm, p, "putativeCellType")?,
        "cell_metrics.putativeCellType",
        n,
    )?;
    let spikes = l.field(cm, p, "spikes")?;
    let times = l.per_unit_cells(
        l.field(spikes, "cell_metrics.spikes", "times")?,
        "cell_metrics.spikes.times",
        n,
    )?;
    let waveforms = l.field(cm, p, "waveforms")?;
    let filt = l.per_unit_cells(
        l.field(waveforms, "cell_metrics.waveforms", "filt")?,
        "cell_metrics.waveforms.filt",
        n,
    )?;
    let wtime = l.field(waveforms, "cell_metrics.waveforms", "time")?;

    // Ground truth: each field of groundTruthClassification flags the units of that type.
    let mut truth: Vec<Vec<String>> = vec![Vec::new(); n];
    if let Some(gt @ MatValue::Struct { .. }) = cm.field("groundTruthClassification") {
        for name in gt.field_names() {
            let path = format!("cell_metrics.groundTruthClassification.{name}");
            let v = gt.field(name).ok_or_else(|| l.missing(&path))?;
            let flags = l.per_unit(v, &path, n)?;
            for (k, f) in flags.iter().enumerate() {
                if *f != 0.0 {
                    truth[k].push(name.clone());
                }
            }
        }
    }
    let sampling_rate_hz = cm
        .field("sr")
        .or_else(|| cm.field("general").and_then(|g| g.field("sr")))
        .and_then(|v| v.numeric())
        .and_then(|d| d.to_f64().first().copied());

    let mut units = Vec::with_capacity(n);
    for k in 0..n {
        let spike_times_s = l.numbers(
            &times[k],
            &format!("cell_metrics.spikes.times{{{}}}", k + 1),
        )?;
        if spike_times_s.iter().any(|t| !t.is_finite()) {
            return Err(l.invalid(
                &format!("cell_metrics.spikes.times{{{}}}", k + 1),
                "non-finite spike time",
            ));
        }
        let waveform_filt_uv = l.numbers(
            &filt[k],
            &format!("cell_metrics.waveforms.filt{{{}}}", k + 1),
        )?;
        // `waveforms.time` is a cell per unit, or one shared vector in some CellExplorer versions.
        let waveform_time_ms = match wtime {
            MatValue::Cell { items, .. } if items.len() == n => l.numbers(
                &items[k],
                &format!("cell_metrics.waveforms.time{{{}}}", k + 1),
            )?,
            other => l.numbers(other, "cell_metrics.waveforms.time")?,
        };
        if waveform_time_ms.len() != waveform_filt_uv.len() {
            return Err(l.invalid(
                &format!("cell_metrics.waveforms.time{{{}}}", k + 1),
                format!(
                    "{} time points for a {}-sample waveform",
                    waveform_time_ms.len(),
                    waveform_filt_uv.len()
                ),
            ));
        }
        units.push(CellExplorerUnit {
            uid: uid[k],
            session_name: session[k].clone(),
            brain_region: region[k].clone(),
            putative_cell_type: ctype[k].clone(),
            ground_truth: std::mem::take(&mut truth[k]),
            firing_rate_hz: firing[k],
            trough_to_peak_ms: ttp.as_ref().map(|v| v[k]),
            ab_ratio: ab.as_ref().map(|v| v[k]),
            burst_index_royer2012: burst.as_ref().map(|v| v[k]),
            acg_tau_rise_ms: tau.as_ref().map(|v| v[k]),
            spike_times_s,
            waveform_filt_uv,
            waveform_time_ms,
        });
    }
    Ok(CellMetricsFile {
        file: mat.file.clone(),
        format: mat.format,
        sampling_rate_hz,
        units,
    })
}

// ---------------------------------------------------------------------------------------------
// Stringer et al. 2018 natimg2800
// ---------------------------------------------------------------------------------------------

/// A natimg2800 recording (Stringer, Pachitariu et al. 2018b; figshare 6845348) as the study 2
/// code reads it: `stim.resp`, `stim.spont`, `stim.istim` and the top-level `med`
/// (also accepted as `stim.med`). Matrices are returned row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NatImgRecording {
    pub n_presentations: usize,
    pub n_neurons: usize,
    pub n_spont_timepoints: usize,
    /// `stim.resp` [presentation][neuron], row-major.
    pub resp: Vec<f32>,
    /// `stim.spont` [timepoint][neuron], row-major.
    pub spont: Vec<f32>,
    /// `stim.istim`: 1-based image id per presentation, as stored (the largest id is the gray screen).
    pub istim: Vec<u32>,
    /// `med` [neuron] -> (x, y, z) position (pixels / plane depth, as stored).
    pub med: Vec<[f32; 3]>,
}

/// Reads a natimg2800 `.mat` file (v5 or v7.3).
pub fn read_natimg2800(path: impl AsRef<Path>) -> Result<NatImgRecording, MatError> {
    let mat = read_mat(path)?;
    let l = Layout { file: &mat.file };
    let stim = mat.get("stim").ok_or_else(|| l.missing("stim"))?;
    let resp_v = l.field(stim, "stim", "resp")?;
    let spont_v = l.field(stim, "stim", "spont")?;
    let istim_v = l.field(stim, "stim", "istim")?;
    let med_v = mat
        .get("med")
        .or_else(|| stim.field("med"))
        .ok_or_else(|| l.missing("med"))?;
    let matrix = |v: &MatValue, name: &str| -> Result<(usize, usize, Vec<f32>), MatError> {
        let MatValue::Numeric { dims, data, .. } = v else {
            return Err(l.wrong(name, "a numeric matrix", v));
        };
        if dims.len() != 2 {
            return Err(l.invalid(
                name,
                format!("expected 2 dimensions, found {}", dims_text(dims)),
            ));
        }
        let col_major = data.to_f32();
        let (r, c) = (dims[0], dims[1]);
        if col_major.iter().any(|x| !x.is_finite()) {
            return Err(l.invalid(name, "contains NaN or infinite values"));
        }
        let mut row_major = vec![0f32; col_major.len()];
        for j in 0..c {
            for i in 0..r {
                row_major[i * c + j] = col_major[j * r + i];
            }
        }
        Ok((r, c, row_major))
    };
    let (n_pres, n_neurons, resp) = matrix(resp_v, "stim.resp")?;
    let (n_spont, spont_neurons, spont) = matrix(spont_v, "stim.spont")?;
    if spont_neurons != n_neurons {
        return Err(l.invalid(
            "stim.spont",
            format!("{spont_neurons} neurons, stim.resp has {n_neurons}"),
        ));
    }
    let istim_f = l.numbers(istim_v, "stim.istim")?;
    if istim_f.len() != n_pres {
        return Err(l.invalid(
            "stim.istim",
            format!("{} entries for {n_pres} presentations", istim_f.len()),
        ));
    }
    let mut istim = Vec::with_capacity(n_pres);
    for (k, &x) in istim_f.iter().enumerate() {
        if !(x >= 1.0 && x.fract() == 0.0 && x <= f64::from(u32::MAX)) {
            return Err(l.invalid(
                "stim.istim",
                format!("entry {} is {x}, not a 1-based image id", k + 1),
            ));
        }
        istim.push(x as u32);
    }
    let (med_rows, med_cols, med_flat) = matrix(med_v, "med")?;
    if med_rows != n_neurons || med_cols != 3 {
        return Err(l.invalid(
            "med",
            format!("shape {med_rows}x{med_cols}, expected {n_neurons}x3 (neurons x xyz)"),
        ));
    }
    let med = med_flat
        .chunks_exact(3)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    Ok(NatImgRecording {
        n_presentations: n_pres,
        n_neurons,
        n_spont_timepoints: n_spont,
        resp,
        spont,
        istim,
        med,
    })
}

/// Class label of each natural image (Stringer et al. 2018b `stimuli_class_assignment*.mat`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageClasses {
    /// Class names by class id (id 0 = "unknown").
    pub class_names: Vec<String>,
    /// Class id of each image, indexed by the 0-based image index (`istim - 1`).
    pub class_of_image: Vec<u8>,
}

/// Reads `class_assignment` (1 x 2800, class ids 0..K-1; a double array stored as uint8) and
/// `class_names` (1 x K cell of strings) from the .mat file.
pub fn read_class_assignment_mat(path: impl AsRef<Path>) -> Result<ImageClasses, MatError> {
    let mat = read_mat(path)?;
    let l = Layout { file: &mat.file };
    let ca = mat
        .get("class_assignment")
        .ok_or_else(|| l.missing("class_assignment"))?;
    let names_v = mat
        .get("class_names")
        .ok_or_else(|| l.missing("class_names"))?;
    let items = names_v
        .cell_items()
        .ok_or_else(|| l.wrong("class_names", "a cell of strings", names_v))?;
    let class_names = l.per_unit_text(names_v, "class_names", items.len())?;
    let ids = l.numbers(ca, "class_assignment")?;
    let mut class_of_image = Vec::with_capacity(ids.len());
    for (k, &c) in ids.iter().enumerate() {
        if !(c >= 0.0 && c.fract() == 0.0 && (c as usize) < class_names.len()) {
            return Err(l.invalid(
                "class_assignment",
                format!(
                    "image {k}: class {c} is not an index into {} class names",
                    class_names.len()
                ),
            ));
        }
        class_of_image.push(c as u8);
    }
    Ok(ImageClasses {
        class_names,
        class_of_image,
    })
}

/// Reads the CSV conversion `image_index_0based,image_id_1based_matlab,class_id,class_name`.
pub fn read_class_assignment_csv(path: impl AsRef<Path>) -> Result<ImageClasses, MatError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| MatError::Io {
        file: file.clone(),
        source,
    })?;
    let bad = |line: usize, reason: String| MatError::Malformed {
        file: file.clone(),
        what: format!("line {line}"),
        reason,
    };
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| h.trim()).unwrap_or("");
    if header != "image_index_0based,image_id_1based_matlab,class_id,class_name" {
        return Err(bad(1, format!("unexpected header {header:?}")));
    }
    let mut class_names: Vec<String> = Vec::new();
    let mut class_of_image = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.trim().split(',').collect();
        let [idx, id1, cid, name] = cols.as_slice() else {
            return Err(bad(line_no, format!("{} columns, expected 4", cols.len())));
        };
        let idx: usize = idx
            .parse()
            .map_err(|_| bad(line_no, format!("image index {idx:?}")))?;
        let id1: usize = id1
            .parse()
            .map_err(|_| bad(line_no, format!("image id {id1:?}")))?;
        let cid: u8 = cid
            .parse()
            .map_err(|_| bad(line_no, format!("class id {cid:?}")))?;
        if idx != class_of_image.len() || id1 != idx + 1 {
            return Err(bad(
                line_no,
                format!("image index {idx} / id {id1} out of sequence"),
            ));
        }
        let c = usize::from(cid);
        if class_names.len() <= c {
            class_names.resize(c + 1, String::new());
        }
        if class_names[c].is_empty() {
            class_names[c] = name.to_string();
        } else if class_names[c] != *name {
            return Err(bad(
                line_no,
                format!("class {cid} named {name:?} and {:?}", class_names[c]),
            ));
        }
        class_of_image.push(cid);
    }
    Ok(ImageClasses {
        class_names,
        class_of_image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nwbmat");

    fn fixture(name: &str) -> String {
        format!("{DIR}/{name}")
    }

    fn expected(name: &str) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
    }

    fn f64s(v: &serde_json::Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    /// serde_json's default float parser may be off by one ulp from Python's repr, so
    /// "equal" means within a few ulps here.
    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs()),
            "{what}: {a} vs {b}"
        );
    }

    fn check_cell_metrics(name: &str, format: MatFormat) {
        let all = expected("expected_cellexplorer.json");
        let e = &all[name];
        let cm = read_cell_metrics(fixture(name)).unwrap();
        assert_eq!(cm.format, format);
        assert_eq!(cm.units.len(), 1);
        let u = &cm.units[0];
        assert_eq!(u.uid, e["uid"].as_f64().unwrap());
        assert_eq!(
            u.putative_cell_type,
            e["putative_cell_type"].as_str().unwrap()
        );
        assert_eq!(
            u.ground_truth,
            vec![e["ground_truth"].as_str().unwrap().to_string()]
        );
        assert_eq!(u.brain_region, e["brain_region"].as_str().unwrap());
        assert_eq!(u.session_name, e["session_name"].as_str().unwrap());
        close(
            u.firing_rate_hz,
            e["firing_rate_hz"].as_f64().unwrap(),
            "firingRate",
        );
        close(
            u.trough_to_peak_ms.unwrap(),
            e["trough_to_peak_ms"].as_f64().unwrap(),
            "troughToPeak",
        );
        close(
            u.ab_ratio.unwrap(),
            e["ab_ratio"].as_f64().unwrap(),
            "ab_ratio",
        );
        close(
            u.burst_index_royer2012.unwrap(),
            e["burst_index_royer2012"].as_f64().unwrap(),
            "burstIndex",
        );
        close(
            u.acg_tau_rise_ms.unwrap(),
            e["acg_tau_rise_ms"].as_f64().unwrap(),
            "acg_tau_rise",
        );
        assert_eq!(cm.sampling_rate_hz, e["sampling_rate_hz"].as_f64());
        let s = &e["spikes"];
        assert_eq!(
            u.spike_times_s.len(),
            e["n_spike_times"].as_u64().unwrap() as usize
        );
        assert_eq!(u.spike_times_s.len(), s["n"].as_u64().unwrap() as usize);
        for (a, b) in u.spike_times_s[..3].iter().zip(f64s(&s["first"])) {
            close(*a, b, "first spike times");
        }
        for (a, b) in u.spike_times_s[u.spike_times_s.len() - 3..]
            .iter()
            .zip(f64s(&s["last"]))
        {
            close(*a, b, "last spike times");
        }
        let sum: f64 = u.spike_times_s.iter().sum();
        assert!(
            (sum - s["sum"].as_f64().unwrap()).abs() <= 1e-9 * sum.abs(),
            "spike-time sum {sum}"
        );
        let (wf, wt) = (f64s(&e["waveform_filt_uv"]), f64s(&e["waveform_time_ms"]));
        assert_eq!(
            (u.waveform_filt_uv.len(), u.waveform_time_ms.len()),
            (wf.len(), wt.len())
        );
        for k in 0..wf.len() {
            close(u.waveform_filt_uv[k], wf[k], "waveform filt");
            close(u.waveform_time_ms[k], wt[k], "waveform time");
        }
    }

    #[test]
    fn cellexplorer_v73_hdf5_unit_matches_h5py_and_summary() {
        check_cell_metrics("d561102.cell_metrics.cellinfo.mat", MatFormat::V73);
    }

    #[test]
    fn cellexplorer_v5_compressed_unit_matches_scipy_and_summary() {
        check_cell_metrics("mouse5_181112B.cell_metrics.cellinfo.mat", MatFormat::V5);
    }

    fn check_natimg(name: &str) {
        let e = expected("expected_natimg2800.json");
        let rec = read_natimg2800(fixture(name)).unwrap();
        let resp: Vec<Vec<f64>> = e["resp"].as_array().unwrap().iter().map(f64s).collect();
        let spont: Vec<Vec<f64>> = e["spont"].as_array().unwrap().iter().map(f64s).collect();
        let med: Vec<Vec<f64>> = e["med"].as_array().unwrap().iter().map(f64s).collect();
        assert_eq!(
            (rec.n_presentations, rec.n_neurons, rec.n_spont_timepoints),
            (resp.len(), resp[0].len(), spont.len())
        );
        for (i, row) in resp.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                assert_eq!(rec.resp[i * rec.n_neurons + j], x as f32, "resp[{i}][{j}]");
            }
        }
        for (i, row) in spont.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                assert_eq!(
                    rec.spont[i * rec.n_neurons + j],
                    x as f32,
                    "spont[{i}][{j}]"
                );
            }
        }
        let istim: Vec<u32> = e["istim"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(rec.istim, istim);
        for (k, m) in med.iter().enumerate() {
            assert_eq!(rec.med[k].map(f64::from).to_vec(), *m, "med[{k}]");
        }
    }

    #[test]
    fn natimg2800_uncompressed_fixture_round_trips() {
        check_natimg("natimg2800_fixture.mat");
    }

    #[test]
    fn natimg2800_zlib_fixture_round_trips() {
        check_natimg("natimg2800_fixture_zlib.mat");
    }

    #[test]
    fn natimg2800_missing_resp_and_bad_shape_are_clear_errors() {
        let err = read_natimg2800(fixture("natimg2800_bad_no_resp.mat")).unwrap_err();
        assert!(
            matches!(err, MatError::Missing { .. }) && err.to_string().contains("stim.resp"),
            "{err}"
        );
        let err = read_natimg2800(fixture("natimg2800_bad_shape.mat")).unwrap_err();
        assert!(
            err.to_string().contains("`med`") && err.to_string().contains("5x3"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("nwbmat_mat_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "natimg2800_fixture.mat",
            "natimg2800_fixture_zlib.mat",
            "mouse5_181112B.cell_metrics.cellinfo.mat",
            "d561102.cell_metrics.cellinfo.mat",
        ] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            for cut in [10, 130, 200, bytes.len() / 3, bytes.len() - 7] {
                let p = dir.join(format!("cut_{cut}_{name}"));
                std::fs::write(&p, &bytes[..cut]).unwrap();
                assert!(
                    read_cell_metrics(&p).is_err() && read_natimg2800(&p).is_err(),
                    "{name} cut at {cut}"
                );
            }
            // Flip bytes in the body: must not panic (errors or odd values are both fine).
            let mut corrupt = bytes.clone();
            for k in (140..corrupt.len()).step_by(97) {
                corrupt[k] ^= 0x5a;
            }
            let p = dir.join(format!("corrupt_{name}"));
            std::fs::write(&p, &corrupt).unwrap();
            let _ = read_mat(&p);
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            read_mat(fixture("expected_nwb.json")),
            Err(MatError::NotMat { .. })
        ));
    }

    #[test]
    fn class_assignment_mat_matches_readme_counts_csv_and_matfile() {
        let classes =
            read_class_assignment_mat(fixture("stimuli_class_assignment_confident.mat")).unwrap();
        let names = [
            "unknown",
            "birds",
            "cats",
            "flowers",
            "hamsters",
            "holes",
            "insects",
            "mice",
            "mushrooms",
            "nests",
            "pellets",
            "snakes",
        ];
        assert_eq!(classes.class_names, names);
        assert_eq!(classes.class_of_image.len(), 2800);
        // Counts published in the shared README for the confident labels.
        let readme_counts = [343, 343, 356, 132, 264, 41, 277, 381, 368, 82, 51, 162];
        for (c, &n) in readme_counts.iter().enumerate() {
            assert_eq!(
                classes
                    .class_of_image
                    .iter()
                    .filter(|&&x| usize::from(x) == c)
                    .count(),
                n,
                "class {}",
                names[c]
            );
        }
        let csv = read_class_assignment_csv(fixture("class_assignment_confident.csv")).unwrap();
        assert_eq!(csv, classes);
        // Independent decoder of the same numeric variable: the `matfile` crate.
        let mf = matfile::MatFile::parse(
            std::fs::File::open(fixture("stimuli_class_assignment_confident.mat")).unwrap(),
        )
        .unwrap();
        let arr = mf.find_by_name("class_assignment").unwrap();
        assert_eq!(arr.size(), &vec![1, 2800]);
        // MATLAB saved this `double` array with miUINT8 storage (its space saving for
        // integer values): scipy.io.loadmat reports the storage type (uint8, as the shared
        // README says), matfile and this parser report the class, double.
        let raw = read_mat(fixture("stimuli_class_assignment_confident.mat")).unwrap();
        let Some(MatValue::Numeric { class, dims, .. }) = raw.get("class_assignment") else {
            panic!("class_assignment")
        };
        assert_eq!(
            (class.as_str(), dims.as_slice()),
            ("double", &[1usize, 2800][..])
        );
        let from_matfile: Vec<f64> = match arr.data() {
            matfile::NumericData::UInt8 { real, .. } => {
                real.iter().map(|&x| f64::from(x)).collect()
            }
            matfile::NumericData::Double { real, .. } => real.clone(),
            _ => panic!("class_assignment decoded by matfile as an unexpected type"),
        };
        let ours: Vec<f64> = classes
            .class_of_image
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        assert!(from_matfile == ours, "matfile and our parser disagree");
        let full = read_class_assignment_mat(fixture("stimuli_class_assignment.mat")).unwrap();
        assert_eq!(full.class_names.len(), 16);
        let count = |n: &str| {
            let c = full.class_names.iter().position(|x| x == n).unwrap();
            full.class_of_image
                .iter()
                .filter(|&&x| usize::from(x) == c)
                .count()
        };
        assert_eq!(
            (count("wildcats"), count("unknown"), count("cats")),
            (78, 101, 278)
        );
    }
}
