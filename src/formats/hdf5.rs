//! Small helpers shared by the HDF5-based readers (NWB, MATLAB v7.3).

use hdf5_reader::{Dataset, Datatype};

/// Reads an integer or floating-point dataset of `n` elements as f64 (`as` casts, so 64-bit
/// integers beyond 2^53 round). The caller checks `n` against the file size before this
/// allocates. `None` if the element type is not a 1, 2, 4 or 8-byte number.
pub fn read_numbers_f64(ds: &Dataset, n: usize) -> Option<Result<Vec<f64>, hdf5_reader::error::Error>> {
    macro_rules! via {
        ($t:ty) => {{
            let mut buf: Vec<$t> = vec![<$t>::default(); n];
            ds.read_into(&mut buf).map(|()| buf.into_iter().map(|v| v as f64).collect())
        }};
    }
    Some(match ds.dtype() {
        Datatype::FloatingPoint { size: 4, .. } => via!(f32),
        Datatype::FloatingPoint { size: 8, .. } => via!(f64),
        Datatype::FixedPoint { size: 1, signed: true, .. } => via!(i8),
        Datatype::FixedPoint { size: 1, signed: false, .. } => via!(u8),
        Datatype::FixedPoint { size: 2, signed: true, .. } => via!(i16),
        Datatype::FixedPoint { size: 2, signed: false, .. } => via!(u16),
        Datatype::FixedPoint { size: 4, signed: true, .. } => via!(i32),
        Datatype::FixedPoint { size: 4, signed: false, .. } => via!(u32),
        Datatype::FixedPoint { size: 8, signed: true, .. } => via!(i64),
        Datatype::FixedPoint { size: 8, signed: false, .. } => via!(u64),
        _ => return None,
    })
}
