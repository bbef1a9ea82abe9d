//! A Kafka source's saved position: the next offset to read of every partition it has read,
//! as the bytes the engine keeps in checkpoints. Owns the encoding; never talks to a broker.
//!
//! Layout (little-endian): entry count u32, then per entry topic length u16, topic bytes,
//! partition i32, next offset i64; entries sorted by (topic, partition).

use std::collections::BTreeMap;

use eddy_engine::{EngineError, Result};

/// Next offset to read, by (topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

pub fn encode(offsets: &Offsets, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    for ((topic, partition), next) in offsets {
        // Topic names are at most 249 bytes (checked when options are read and by the broker).
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if b.len() < n {
        return Err(EngineError::State("a saved Kafka position is cut short".into()));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn array<const N: usize>(b: &mut &[u8]) -> Result<[u8; N]> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(b, N)?);
    Ok(a)
}

pub fn decode(mut b: &[u8]) -> Result<Offsets> {
    let mut out = Offsets::new();
    if b.is_empty() {
        return Ok(out);
    }
    let n = u32::from_le_bytes(array(&mut b)?);
    for _ in 0..n {
        let len = u16::from_le_bytes(array(&mut b)?) as usize;
        let topic = std::str::from_utf8(take(&mut b, len)?)
            .map_err(|_| EngineError::State("a saved Kafka position names a topic that is not UTF-8".into()))?
            .to_string();
        let partition = i32::from_le_bytes(array(&mut b)?);
        let next = i64::from_le_bytes(array(&mut b)?);
        out.insert((topic, partition), next);
    }
    if !b.is_empty() {
        return Err(EngineError::State("a saved Kafka position has bytes after its last entry".into()));
    }
    Ok(out)
}

/// The split id of a partition: stable across restarts (the engine keeps event time by it).
/// The topic's hash fills the high half; collisions of two topics' hashes in one source would
/// only merge their event-time clocks.
pub fn split_id(topic: &str, partition: i32) -> u64 {
    let h = twox_hash::XxHash3_64::oneshot(topic.as_bytes());
    (h & 0xFFFF_FFFF_0000_0000) | (partition as u32 as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn positions_round_trip(entries in proptest::collection::btree_map(("[a-z._-]{1,20}", 0i32..1000), 0i64..i64::MAX, 0..20)) {
            let mut b = Vec::new();
            encode(&entries, &mut b);
            prop_assert_eq!(decode(&b).unwrap(), entries);
        }

        #[test]
        fn cut_or_noisy_positions_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_cut_position_is_refused() {
        let mut o = Offsets::new();
        o.insert(("t".into(), 1), 42);
        let mut b = Vec::new();
        encode(&o, &mut b);
        assert!(decode(&b[..b.len() - 1]).is_err());
        assert!(decode(&[b.as_slice(), &[0]].concat()).is_err());
        assert_ne!(split_id("a", 0), split_id("b", 0));
        assert_eq!(split_id("a", 3) & 0xFFFF_FFFF, 3);
    }
}
