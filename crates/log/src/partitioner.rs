//! Which partition a record goes to: by key (Kafka's murmur2, so a key lands where the
//! Java client puts it), round robin, sticky for records without a key, or a rule of
//! the user's own.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Chooses a partition among `partitions` for a record of `topic` with `key`.
pub trait Partitioner: Send + Sync {
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32;

    /// Called when a batch for `topic` is full: a sticky partitioner moves on.
    fn on_new_batch(&self, _topic: &str, _partitions: u32) {}
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's partition for a key: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions.max(1)
}

/// By key: the same key always goes to the same partition (order per key kept);
/// records without a key go round robin.
#[derive(Debug, Default)]
pub struct KeyHash {
    fallback: RoundRobin,
}

impl Partitioner for KeyHash {
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32 {
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.fallback.partition(topic, None, partitions),
        }
    }
}

/// Each record to the next partition: balanced, no order across partitions.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Partitioner for RoundRobin {
    fn partition(&self, _topic: &str, _key: Option<&[u8]>, partitions: u32) -> u32 {
        (self.next.fetch_add(1, Ordering::Relaxed) % partitions.max(1) as usize) as u32
    }
}

/// Keyed records by hash; records without a key stay on one partition until its
/// batch is full, then move on (Kafka's sticky partitioner: full batches, balanced
/// over time).
#[derive(Debug)]
pub struct Sticky {
    current: AtomicU32,
}

impl Default for Sticky {
    fn default() -> Self {
        Sticky {
            current: AtomicU32::new(u32::MAX),
        }
    }
}

impl Partitioner for Sticky {
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32 {
        if let Some(key) = key {
            return partition_for_key(key, partitions);
        }
        let current = self.current.load(Ordering::Relaxed);
        if current < partitions {
            return current;
        }
        self.on_new_batch(topic, partitions);
        self.current.load(Ordering::Relaxed) % partitions.max(1)
    }

    fn on_new_batch(&self, _topic: &str, partitions: u32) {
        let next = self.current.load(Ordering::Relaxed).wrapping_add(1) % partitions.max(1);
        self.current.store(next, Ordering::Relaxed);
    }
}

/// A user's rule as a closure: `Custom(|topic, key, partitions| ...)`.
pub struct Custom<F>(pub F);

impl<F> Partitioner for Custom<F>
where
    F: Fn(&str, Option<&[u8]>, u32) -> u32 + Send + Sync,
{
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32 {
        (self.0)(topic, key, partitions) % partitions.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_own_test_vectors() {
        // org.apache.kafka.common.utils.UtilsTest.testMurmur2
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
        // librdkafka's unit test, values taken from the Java implementation.
        assert_eq!(murmur2(b"kafka") as u32, 0xd067cf64);
        assert_eq!(murmur2(b"giberish123456789") as u32, 0x8f552b0c);
        assert_eq!(murmur2(b"1234") as u32, 0x9fc97b14);
        assert_eq!(murmur2(b"234") as u32, 0xe7c009ca);
        assert_eq!(murmur2(b"34") as u32, 0x873930da);
        assert_eq!(murmur2(b"4") as u32, 0x5a4b5ca1);
        assert_eq!(murmur2(b"") as u32, 0x106e08d9);
    }

    #[test]
    fn keys_land_on_the_partitions_the_java_client_picks() {
        // kafka-python's test_murmur2_java_compatibility: 1000 partitions, values from
        // Kafka's Java partitioner.
        let cases: [(&[u8], u32); 6] = [
            (b"", 681),
            (b"a", 524),
            (b"ab", 434),
            (b"abc", 107),
            (b"123456789", 566),
            (b"\x00 ", 742),
        ];
        for (key, expected) in cases {
            assert_eq!(partition_for_key(key, 1000), expected, "{key:?}");
        }
        // librdkafka's 0048-partitioner (Java's Murmur2Cli values, masked positive).
        for (key, hash) in [
            ("23456", 0x058d780fu32),
            (
                "this is another string with more length to it perhaps",
                0x4f7703da,
            ),
            ("hejsan", 0x5ec19395),
        ] {
            for n in [7, 17] {
                assert_eq!(partition_for_key(key.as_bytes(), n), hash % n, "{key}");
            }
        }
    }

    #[test]
    fn round_robin_and_sticky_spread_keyless_records() {
        let rr = RoundRobin::default();
        let picks: Vec<u32> = (0..6).map(|_| rr.partition("t", None, 3)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let sticky = Sticky::default();
        let first = sticky.partition("t", None, 3);
        assert_eq!(sticky.partition("t", None, 3), first);
        sticky.on_new_batch("t", 3);
        assert_ne!(sticky.partition("t", None, 3), first);
        assert_eq!(sticky.partition("t", Some(b"abc"), 1000), 107);
        let custom = Custom(|_: &str, _: Option<&[u8]>, _: u32| 5);
        assert_eq!(custom.partition("t", None, 3), 2);
    }
}
