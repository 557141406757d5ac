//! Bloom filters of key hashes ([`super::hash_each`]), for build sides with too many
//! keys to list.

use crate::error::{EmberError, Result};

/// A bloom filter of key hashes: about ten bits a key, and three probes that fall in
/// one 64-bit word (one memory read a probe row), about 2 % false positives and no
/// false negatives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BloomFilter {
    bits: Vec<u64>,
}

impl BloomFilter {
    /// The filter of `hashes`, `n` of them.
    pub fn of(hashes: impl Iterator<Item = u64>, n: usize) -> Self {
        let words = (n * 10).div_ceil(64).next_power_of_two().max(1);
        let mut filter = BloomFilter {
            bits: vec![0; words],
        };
        for h in hashes {
            let (word, mask) = filter.probes(h);
            filter.bits[word] |= mask;
        }
        filter
    }

    /// The word hash `h` falls in (its high half), and the three bits set in it for
    /// `h` (from its low bits).
    #[inline(always)]
    fn probes(&self, h: u64) -> (usize, u64) {
        let word = (h >> 32) as usize & (self.bits.len() - 1);
        let mask = (1 << (h & 63)) | (1 << ((h >> 6) & 63)) | (1 << ((h >> 12) & 63));
        (word, mask)
    }

    /// False when no key had hash `h`; true when one may have.
    #[inline(always)]
    pub fn may_contain(&self, h: u64) -> bool {
        let (word, mask) = self.probes(h);
        self.bits[word] & mask == mask
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The filter [`to_bytes`](Self::to_bytes) wrote: a power-of-two count of words.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let words = bytes.len() / 8;
        if !bytes.len().is_multiple_of(8) || !words.is_power_of_two() {
            return Err(EmberError::Decode {
                what: "bloom filter",
                message: format!(
                    "{} bytes is not a power-of-two count of 8-byte words",
                    bytes.len()
                ),
            });
        }
        Ok(BloomFilter {
            bits: bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        })
    }

    /// Bytes it takes in a plan.
    pub fn len_bytes(&self) -> usize {
        self.bits.len() * 8
    }
}
