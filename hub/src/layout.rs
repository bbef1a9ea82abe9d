//! The bucket's key layout, the one place it is spelled:
//!
//! `<prefix>streams/<stream>/gateway=<gateway>/date=<yyyy-mm-dd>/<outbox>-<first_seq>.parquet`
//!
//! `outbox` is 16 hex digits, `first_seq` 20 decimal digits (so keys sort by sequence). A batch is
//! named by its outbox and first row alone: a batch sent again, however it is cut, maps to the same
//! key, which is what makes a create-only put store it once. Hive-style `gateway=` and `date=`
//! segments give readers (DuckDB, Spark, DataFusion) those columns.
//!
//! Checkpoint backups: `<prefix>checkpoints/gateway=<gateway>/pipeline=<pipeline>/` holds
//! `blobs/<sha256>` (state files, named by their digest: stored once however many checkpoints
//! share them) and `index/<stored ms>-<seq>.ckpt` (one per checkpoint, written after all its
//! blobs, so an index names only blobs that are there; keys sort by when the hub recorded them),
//! and `pinned` (the key of the one index retention keeps besides the newest).
//! Owns names; never does I/O.

/// What a name in a key may hold: it is a path segment and a Hive partition value.
pub fn valid_name(s: &str, max_len: usize) -> bool {
    !s.is_empty()
        && s.len() <= max_len
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `d` is a `yyyy-mm-dd` date.
pub fn valid_date(d: &str) -> bool {
    let b = d.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// The key of the batch of `stream` from `gateway`'s outbox `outbox` that starts at `first_seq`.
/// The names must have passed [`valid_name`] and the date [`valid_date`].
pub fn batch_key(prefix: &str, stream: &str, gateway: &str, date: &str, outbox: u64, first_seq: u64) -> String {
    debug_assert!(valid_name(stream, 128) && valid_name(gateway, 64) && valid_date(date));
    format!("{prefix}streams/{stream}/gateway={gateway}/date={date}/{outbox:016x}-{first_seq:020}.parquet")
}

/// Where one gateway's backups of one pipeline live (ends in `/`).
pub fn checkpoint_dir(prefix: &str, gateway: &str, pipeline: &str) -> String {
    debug_assert!(valid_name(gateway, 64) && valid_name(pipeline, 128));
    format!("{prefix}checkpoints/gateway={gateway}/pipeline={pipeline}/")
}

/// Where one gateway's backups live (ends in `/`).
pub fn checkpoint_gateway_dir(prefix: &str, gateway: &str) -> String {
    format!("{prefix}checkpoints/gateway={gateway}/")
}

pub fn checkpoint_index_key(dir: &str, stored_ms: i64, seq: u64) -> String {
    format!("{dir}index/{:020}-{seq:020}.ckpt", stored_ms.max(0))
}

/// Holds the key of the index retention keeps besides the newest: the last before a checkpoint
/// of another state (started afresh, gone back, or with other hub-sink outboxes) arrived
/// (`checkpoints::retained`).
pub fn checkpoint_pin_key(dir: &str) -> String {
    format!("{dir}pinned")
}

pub fn blob_key(dir: &str, sha256: &str) -> String {
    debug_assert!(valid_sha256(sha256));
    format!("{dir}blobs/{sha256}")
}

/// A SHA-256 digest in lowercase hex.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `store.prefix` as keys start with it: empty, or ending in one `/`.
pub fn normalize_prefix(p: &str) -> String {
    let p = p.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_sequence_and_names_are_checked() {
        let a = batch_key("", "plant_stats", "gw-1", "2026-12-01", 0xab, 9);
        let b = batch_key("", "plant_stats", "gw-1", "2026-12-01", 0xab, 10);
        assert_eq!(a, "streams/plant_stats/gateway=gw-1/date=2026-12-01/00000000000000ab-00000000000000000009.parquet");
        assert!(a < b);
        assert_eq!(normalize_prefix("/fleet-a/"), "fleet-a/");
        assert_eq!(normalize_prefix(""), "");
        for bad in ["", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad, 64), "{bad}");
        }
        assert!(valid_name("gw-1.plant_a", 64));
        assert!(valid_date("2026-02-28"));
        for bad in ["2026-13-01", "2026-1-01", "20261201", "2026-12-00", "abcd-ef-gh"] {
            assert!(!valid_date(bad), "{bad}");
        }
    }
}
