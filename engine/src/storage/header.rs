//! The 64-byte header every storage file starts with (WAL segment, state file, manifest):
//! magic (8), version u32, key id u32 (0 = plaintext), sequence u64 (a segment's first LSN or a
//! checkpoint's seq), nonce prefix (8, random per file), key check (8), owner (8; zeros before
//! version 2), zeros, CRC32C of bytes 0..60. Files are written as version 2 (WAL frames carry
//! their commit group, docs/wal.md; records bind their owner); version 1 files are still read.

use super::{crc, u32_at, u64_at};

pub const HEADER_LEN: usize = 64;

/// Whose files these are: a digest of an identity (a pipeline's name; a sink's) that every
/// version 2 header carries and every record's associated data binds, so a file moved or copied
/// between pipelines — even ones with the same SQL text — is refused, never read as theirs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner(pub [u8; 8]);

impl Owner {
    pub fn of(identity: &str) -> Owner {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"eddy-owner");
        ctx.update(identity.as_bytes());
        let mut o = [0u8; 8];
        o.copy_from_slice(&ctx.finish().as_ref()[..8]);
        Owner(o)
    }

    /// The owner of something named `name` within this one (a pipeline's sink).
    pub fn child(&self, name: &str) -> Owner {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        Owner::of(&format!("{hex}/{name}"))
    }
}

pub struct FileHeader {
    pub version: u32,
    pub key_id: u32,
    pub seq: u64,
    pub nonce_prefix: [u8; 8],
    pub key_check: [u8; 8],
    pub owner: Owner,
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
        out.extend_from_slice(&self.owner.0);
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
        let mut owner = Owner::default();
        owner.0.copy_from_slice(&b[40..48]);
        Some(FileHeader {
            version: u32_at(b, 8),
            key_id: u32_at(b, 12),
            seq: u64_at(b, 16),
            nonce_prefix,
            key_check,
            owner,
        })
    }
}
