//! The list columns every simulation kind emits (spike times, voltage and stimulus traces), built
//! from per-row vectors in one pass.

use std::sync::Arc;

use arrow::array::{LargeListArray, PrimitiveArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{ArrowPrimitiveType, Field};

use crate::error::Result;

/// A `large_list<T>` column with non-null items from per-row values. A `None` row is a null row
/// when `nullable` (a failed simulation has no trace), else an empty list.
pub(super) fn list_column<T, R>(rows: impl IntoIterator<Item = Option<R>>, nullable: bool) -> Result<LargeListArray>
where
    T: ArrowPrimitiveType,
    R: AsRef<[T::Native]>,
{
    let mut values: Vec<T::Native> = Vec::new();
    let mut offsets = vec![0i64];
    let mut valid = Vec::new();
    for r in rows {
        if let Some(r) = &r {
            values.extend_from_slice(r.as_ref());
        }
        valid.push(r.is_some());
        offsets.push(values.len() as i64);
    }
    let nulls = nullable.then(|| NullBuffer::from(valid));
    Ok(LargeListArray::try_new(
        Arc::new(Field::new("item", T::DATA_TYPE, false)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(PrimitiveArray::<T>::from_iter_values(values)),
        nulls,
    )?)
}
