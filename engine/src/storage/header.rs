//! The 64-byte header every storage file starts with (WAL segment, state file, manifest):
//! magic (8), version u32, key id u32 (0 = plaintext), sequence u64 (a segment's first LSN or a
//! checkpoint's seq), nonce prefix (8, random per file), key check (8), zeros, CRC32C of bytes 0..60.
//! State files and manifests are version 1; WAL segments are written as version 2 (frames carry
//! their commit group, docs/wal.md) and version 1 segments are still read.

use super::{crc, u32_at, u64_at};

pub const HEADER_LEN: usize = 64;

pub struct FileHeader {
    pub version: u32,
    pub key_id: u32,
    pub seq: u64,
    pub nonce_prefix: [u8; 8],
    pub key_check: [u8; 8],
}

impl FileHeader {
    /// Appends the header to `out`.
    pub fn encode(&self, magic: &[u8; 8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.key_id.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        out.extend_from_slice(&self.key_check);
        out.resize(start + HEADER_LEN - 4, 0);
        let c = crc(&[&out[start..]]);
        out.extend_from_slice(&c.to_le_bytes());
    }

    /// The header at the start of `b`, if it is whole, ours (`magic`, a version up to
    /// `max_version`) and its CRC checks.
    pub fn decode(b: &[u8], magic: &[u8; 8], max_version: u32) -> Option<FileHeader> {
        if b.len() < HEADER_LEN
            || &b[..8] != magic
            || !(1..=max_version).contains(&u32_at(b, 8))
            || crc(&[&b[..HEADER_LEN - 4]]) != u32_at(b, HEADER_LEN - 4)
        {
            return None;
        }
        let mut nonce_prefix = [0u8; 8];
        nonce_prefix.copy_from_slice(&b[24..32]);
        let mut key_check = [0u8; 8];
        key_check.copy_from_slice(&b[32..40]);
        Some(FileHeader { version: u32_at(b, 8), key_id: u32_at(b, 12), seq: u64_at(b, 16), nonce_prefix, key_check })
    }
}
