//! Mutations of an input: what turns the valid seeds into the inputs a decoder must
//! survive.
//!
//! Byte-level: bit flips, byte sets, small additions, interesting integers (0, -1,
//! i16/i32/i64 extremes, in both byte orders and as (zigzag) varints) written over
//! or into the input, insert/delete/duplicate ranges, splicing two inputs, and
//! truncation. Text formats add a dictionary of tokens (inserted, often many times
//! over) and wrappers that nest a range thousands of levels deep (`(`..`)`).

use crate::rng::Rng;

/// What a target adds to the byte-level mutations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dictionary {
    pub tokens: &'static [&'static str],
    /// (open, close) pairs that wrap a range, repeated to nest it deep.
    pub wrappers: &'static [(&'static str, &'static str)],
}

const INTERESTING: [i64; 16] = [
    0,
    1,
    -1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    -0x8000,
    0xffff,
    0x7fff_ffff,
    -0x8000_0000,
    0xffff_ffff,
    i64::MAX,
    i64::MIN,
    64 << 10,
    16,
];

pub struct Mutator {
    pub rng: Rng,
    pub max_len: usize,
    pub dictionary: Dictionary,
}

impl Mutator {
    /// Applies one to a few stacked mutations to `data`; `other` is another input to
    /// splice from. The result is at most `max_len` bytes.
    pub fn mutate(&mut self, data: &mut Vec<u8>, other: &[u8]) {
        let n = if self.rng.one_in(8) {
            2 + self.rng.below(8)
        } else {
            1 + self.rng.below(3)
        };
        for _ in 0..n {
            self.one(data, other);
            data.truncate(self.max_len);
        }
    }

    fn pos(&mut self, data: &[u8]) -> usize {
        self.rng.below(data.len() + 1)
    }

    /// A range of `data`, short more often than long.
    fn range(&mut self, data: &[u8]) -> (usize, usize) {
        let start = self.rng.below(data.len() + 1);
        let left = data.len() - start;
        let len = if self.rng.one_in(4) {
            self.rng.below(left + 1)
        } else {
            self.rng.below(left.min(16) + 1)
        };
        (start, start + len)
    }

    fn one(&mut self, data: &mut Vec<u8>, other: &[u8]) {
        let dict = self.dictionary;
        let ops = if dict.tokens.is_empty() { 11 } else { 13 };
        match self.rng.below(ops) {
            0 if !data.is_empty() => {
                let i = self.rng.below(data.len());
                data[i] ^= 1 << self.rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = self.rng.below(data.len());
                data[i] = self.rng.next_u64() as u8;
            }
            2 if !data.is_empty() => {
                let i = self.rng.below(data.len());
                let delta = 1 + self.rng.below(35) as u8;
                data[i] = if self.rng.one_in(2) {
                    data[i].wrapping_add(delta)
                } else {
                    data[i].wrapping_sub(delta)
                };
            }
            3 => {
                let bytes = self.interesting_fixed();
                self.put(data, &bytes);
            }
            4 => {
                let bytes = self.interesting_varint();
                self.put(data, &bytes);
            }
            5 => {
                let at = self.pos(data);
                let len = 1 + self.rng.below(16);
                let bytes: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                data.splice(at..at, bytes);
            }
            6 => {
                let (a, b) = self.range(data);
                data.drain(a..b);
            }
            7 => {
                // Duplicate a range, now and then many times over.
                let (a, b) = self.range(data);
                let chunk = data[a..b].to_vec();
                let times = if chunk.is_empty() {
                    0
                } else {
                    self.rng.count(self.max_len / chunk.len())
                };
                let at = self.pos(data);
                let repeated: Vec<u8> = chunk
                    .iter()
                    .copied()
                    .cycle()
                    .take(chunk.len() * times)
                    .collect();
                data.splice(at..at, repeated);
            }
            8 => {
                // Splice: a prefix of this input, a suffix of the other.
                let cut = self.pos(data);
                let from = self.rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            9 => {
                // A range of the other input, inserted or written over.
                let (a, b) = self.range(other);
                let at = self.pos(data);
                if self.rng.one_in(2) {
                    data.splice(at..at, other[a..b].iter().copied());
                } else {
                    let end = (at + (b - a)).min(data.len());
                    data.splice(at..end, other[a..b].iter().copied());
                }
            }
            10 => {
                let len = self.pos(data);
                data.truncate(len);
            }
            11 => {
                let token = self.rng.pick(dict.tokens).as_bytes();
                let times = self.rng.count(self.max_len / token.len().max(1));
                let at = self.pos(data);
                data.splice(
                    at..at,
                    token.iter().copied().cycle().take(token.len() * times),
                );
            }
            _ => {
                let Some(&(open, close)) =
                    (!dict.wrappers.is_empty()).then(|| self.rng.pick(dict.wrappers))
                else {
                    return;
                };
                let (a, b) = self.range(data);
                let times = self
                    .rng
                    .count(self.max_len / (open.len() + close.len()).max(1));
                let inner = data[a..b].to_vec();
                let mut wrapped =
                    Vec::with_capacity(inner.len() + times * (open.len() + close.len()));
                for _ in 0..times {
                    wrapped.extend_from_slice(open.as_bytes());
                }
                wrapped.extend_from_slice(&inner);
                for _ in 0..times {
                    wrapped.extend_from_slice(close.as_bytes());
                }
                data.splice(a..b, wrapped);
            }
        }
    }

    /// Writes `bytes` over `data` at a random position, or inserts them.
    fn put(&mut self, data: &mut Vec<u8>, bytes: &[u8]) {
        let at = self.pos(data);
        if self.rng.one_in(3) {
            data.splice(at..at, bytes.iter().copied());
        } else {
            let end = (at + bytes.len()).min(data.len());
            data.splice(at..end, bytes.iter().copied());
        }
    }

    fn interesting_fixed(&mut self) -> Vec<u8> {
        let v = *self.rng.pick(&INTERESTING);
        let width = *self.rng.pick(&[1usize, 2, 4, 8]);
        let be = v.to_be_bytes();
        let mut bytes = be[8 - width..].to_vec();
        if self.rng.one_in(3) {
            bytes.reverse();
        }
        bytes
    }

    fn interesting_varint(&mut self) -> Vec<u8> {
        let v = *self.rng.pick(&INTERESTING);
        let v = if self.rng.one_in(2) {
            v as i32 as i64
        } else {
            v
        };
        // Zigzag (Kafka's varint/varlong) or plain unsigned (protobuf, unsigned varint).
        let mut u = if self.rng.one_in(2) {
            ((v << 1) ^ (v >> 63)) as u64
        } else {
            v as u64
        };
        let mut out = vec![];
        loop {
            let byte = (u & 0x7f) as u8;
            u >>= 7;
            if u == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_size_bound() {
        let mut m = Mutator {
            rng: Rng::new(3),
            max_len: 300,
            dictionary: Dictionary {
                tokens: &["+1", "NOT "],
                wrappers: &[("(", ")")],
            },
        };
        let mut changed = 0;
        for _ in 0..5000 {
            let mut data = b"SELECT 1 + 2 FROM t".to_vec();
            m.mutate(&mut data, b"other input");
            assert!(data.len() <= 300);
            changed += usize::from(data != b"SELECT 1 + 2 FROM t");
        }
        assert!(changed > 4000, "{changed}");
    }
}
