//! NumPy `.npy` files holding one 1-D little-endian float64 array (a current trace saved with
//! `np.save`), read with the header checked against the file length before it is trusted: no
//! allocation is sized by an unchecked header field.
//!
//! Format: NEP 1 (`numpy/lib/format.py`): the magic string `\x93NUMPY`, a version byte pair, the
//! header length (u16 for version 1, u32 for versions 2 and 3), a Python-literal header dict
//! (`descr`, `fortran_order`, `shape`), then the raw data.

use std::path::{Path, PathBuf};

/// Why a `.npy` file cannot be read as a 1-D float64 trace. Displays as `<path>: <reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct NpyError {
    pub path: PathBuf,
    pub reason: String,
}

/// Reads a 1-D little-endian float64 `.npy` file; every sample must be finite (it is a current).
pub fn read_npy_f64(path: &Path) -> Result<Vec<f64>, NpyError> {
    let bad = |reason: String| NpyError { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not an .npy file (magic string missing)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let data_start = start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(&bytes[start..data_start]).map_err(|_| bad("header is not text".into()))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !(compact.contains("'descr':'<f8'") || compact.contains("'descr':'float64'")) {
        return Err(bad(format!("dtype must be little-endian float64 ('<f8'); header: {}", header.trim())));
    }
    // `fortran_order` needs no check: 1-D data is the same in both orders, and any other shape is
    // refused below.
    let shape_part = compact.split("'shape':(").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape in header".into()))?;
    let dims: Vec<&str> = shape_part.split(',').filter(|s| !s.is_empty()).collect();
    if dims.len() != 1 {
        return Err(bad(format!("expected a 1-D array, shape is ({shape_part})")));
    }
    let n: usize = dims[0].parse().map_err(|_| bad(format!("bad shape `{shape_part}`")))?;
    let data = &bytes[data_start..];
    if n.checked_mul(8) != Some(data.len()) {
        return Err(bad(format!("header says {n} samples but the file holds {} bytes of data (truncated or padded)", data.len())));
    }
    if n == 0 {
        return Err(bad("the array is empty".into()));
    }
    let values: Vec<f64> = data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(bad(format!("sample {i} is {v}, not a finite current")));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` with the given header dict and data bytes (header padded to 64 bytes).
    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_a_float64_vector_and_refuses_what_it_cannot_trust() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = [1.5f64, -2.0, 3e-12].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ok = write(dir.path(), "ok.npy", &npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", &data));
        assert_eq!(read_npy_f64(&ok).unwrap(), vec![1.5, -2.0, 3e-12]);

        let cases = [
            ("i8.npy", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", &data), "dtype must be little-endian float64"),
            ("2d.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3), }", &data), "expected a 1-D array"),
            ("short.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }", &data), "header says 4 samples"),
            ("empty.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }", &[]), "the array is empty"),
            ("text.npy", b"hello world, not numpy".to_vec(), "magic string missing"),
        ];
        for (name, bytes, needle) in cases {
            let e = read_npy_f64(&write(dir.path(), name, &bytes)).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
        }
        let nan: Vec<u8> = [0.0f64, f64::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = read_npy_f64(&write(dir.path(), "nan.npy", &npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", &nan))).unwrap_err();
        assert!(e.to_string().contains("sample 1 is NaN"), "{e}");
        assert!(read_npy_f64(&dir.path().join("missing.npy")).unwrap_err().to_string().contains("cannot read"));
    }
}
