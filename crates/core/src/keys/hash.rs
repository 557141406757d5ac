//! The bytes and 64-bit hashes of key values, the same in every process.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use arrow::array::{Array, ArrayRef};
use arrow::buffer::Buffer;
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::Result;

/// The bytes of each slot of an array, alike exactly when the values are equal: a
/// fixed-width value's own little-endian bytes, others' Arrow row encoding. (Floating
/// point keys, whose equality is not their bytes', are not summarized for filters.)
pub(super) enum ValueBytes {
    Fixed { values: Buffer, width: usize },
    Rows(Rows),
}

impl ValueBytes {
    /// `rows` encodes values without a fixed width; `None` makes one for this array.
    pub(super) fn of(array: &ArrayRef, rows: Option<&RowConverter>) -> Result<Self> {
        if let Some(width) = array.data_type().primitive_width() {
            let data = array.to_data();
            let values =
                data.buffers()[0].slice_with_length(data.offset() * width, array.len() * width);
            return Ok(ValueBytes::Fixed { values, width });
        }
        let made;
        let converter = match rows {
            Some(c) => c,
            None => {
                made = RowConverter::new(vec![SortField::new(array.data_type().clone())])?;
                &made
            }
        };
        Ok(ValueBytes::Rows(
            converter.convert_columns(std::slice::from_ref(array))?,
        ))
    }

    #[inline(always)]
    pub(super) fn get(&self, i: usize) -> &[u8] {
        match self {
            ValueBytes::Fixed { values, width } => &values[i * width..(i + 1) * width],
            ValueBytes::Rows(rows) => rows.row(i).data(),
        }
    }

    /// [`hash_bytes`] of every slot; widths 1 to 16 have loops of their own.
    pub(super) fn hashes(&self) -> Vec<u64> {
        match self {
            ValueBytes::Fixed { values, width } => match width {
                1 => hash_width::<1>(values),
                2 => hash_width::<2>(values),
                4 => hash_width::<4>(values),
                8 => hash_width::<8>(values),
                16 => hash_width::<16>(values),
                _ => values.chunks_exact(*width).map(hash_bytes).collect(),
            },
            ValueBytes::Rows(rows) => rows.iter().map(|r| hash_bytes(r.data())).collect(),
        }
    }
}

/// A 64-bit hash of every slot of `array`, nulls too (whatever their slots hold), the
/// same in every process: fixed-width values hash their own little-endian bytes, the
/// rest their Arrow row encoding ([`ValueBytes`]).
pub fn hash_each(array: &ArrayRef) -> Result<Vec<u64>> {
    Ok(ValueBytes::of(array, None)?.hashes())
}

fn hash_width<const W: usize>(values: &[u8]) -> Vec<u64> {
    values
        .chunks_exact(W)
        .map(|c| hash_bytes(<&[u8; W]>::try_from(c).expect("W bytes").as_slice()))
        .collect()
}

/// The length, then the bytes eight at a time (the last word zero-filled), each
/// through a murmur3 finalizer: for a fixed-width value of up to eight bytes, one
/// finalizer. Two values hash alike only by chance (a bloom filter's false positive).
#[inline(always)]
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64).wrapping_mul(0x0100_0000_01b3);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        h = mix(h ^ u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut word = 0u64;
        for (i, b) in rest.iter().enumerate() {
            word |= u64::from(*b) << (8 * i);
        }
        h = mix(h ^ word);
    }
    h
}

/// murmur3's 64-bit finalizer: every input bit flips about half the output bits.
#[inline(always)]
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A set of [`hash_each`] values: they are mixed already, so the set hashes them no
/// further (std's SipHash took most of the time of merging a large build side's keys).
pub(super) type HashSet64 = HashSet<u64, BuildHasherDefault<Identity>>;

#[derive(Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
