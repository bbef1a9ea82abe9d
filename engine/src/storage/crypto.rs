//! Encryption at rest: AES-256-GCM (ring) for every WAL record, checkpoint blob and manifest.
//!
//! Nonces never repeat under a key: each file that is written gets a fresh random 8-byte prefix in
//! its header when it is created (files are never reopened for writing), and its records count up
//! from 0 in the remaining 4 bytes. The caller binds the record's place (file, offset or sequence,
//! key id) as associated data, so a record moved, swapped or replayed elsewhere fails to open.
//!
//! Keys come from a key file (one `ID:HEX64` per line, or one bare `HEX64` = key 1; the last line
//! is the key new files use, earlier ones stay readable) that nobody but the owner may read, or a
//! systemd credential. This module never logs or formats key bytes.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use super::StorageError;

pub const TAG_LEN: usize = 16;
pub const KEY_LEN: usize = 32;

struct Key {
    id: u32,
    aead: LessSafeKey,
    /// SHA-256("eddy-key-check" || key)[..8]: tells a wrong key from corruption.
    check: [u8; 8],
}

/// How records are protected: AES-256-GCM with a key ring, or (explicitly configured) not at all.
pub struct Cipher {
    keys: Vec<Key>,
}

impl Cipher {
    /// No encryption; only when the configuration turns it off explicitly.
    pub fn plaintext() -> Self {
        Cipher { keys: vec![] }
    }

    pub fn is_encrypted(&self) -> bool {
        !self.keys.is_empty()
    }

    /// A key ring from `(id, key bytes)`; the last key is the one new files use.
    pub fn from_keys(keys: &[(u32, [u8; KEY_LEN])]) -> Result<Self, StorageError> {
        if keys.is_empty() {
            return Err(StorageError::Key("the key file holds no key".into()));
        }
        let mut out = Vec::new();
        for (id, bytes) in keys {
            let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| StorageError::Key("not an AES-256 key".into()))?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(b"eddy-key-check");
            ctx.update(bytes);
            let mut check = [0u8; 8];
            check.copy_from_slice(&ctx.finish().as_ref()[..8]);
            if out.iter().any(|k: &Key| k.id == *id) {
                return Err(StorageError::Key(format!("key id {id} appears twice")));
            }
            out.push(Key { id: *id, aead: LessSafeKey::new(unbound), check });
        }
        Ok(Cipher { keys: out })
    }

    /// Reads a key file; refuses one that group or others may read.
    pub fn from_key_file(path: &Path) -> Result<Self, StorageError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| StorageError::Key(format!("key file {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StorageError::Key(format!(
                "key file {} has mode {mode:04o}; it must be readable by its owner only (chmod 600)",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| StorageError::Key(format!("key file {}: {e}", path.display())))?;
        Self::parse_keys(&text).map_err(|m| StorageError::Key(format!("key file {}: {m}", path.display())))
    }

    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (systemd makes it private to the unit).
    pub fn from_credential(name: &str) -> Result<Option<Self>, StorageError> {
        let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else { return Ok(None) };
        let path = Path::new(&dir).join(name);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| StorageError::Key(format!("credential {}: {e}", path.display())))?;
        Self::parse_keys(&text).map(Some).map_err(|m| StorageError::Key(format!("credential {}: {m}", path.display())))
    }

    fn parse_keys(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hex) = match line.split_once(':') {
                Some((id, hex)) => (id.trim().parse::<u32>().map_err(|_| format!("line {}: key id '{id}' is not a number", n + 1))?, hex.trim()),
                None => (1, line),
            };
            keys.push((id, decode_hex_key(hex).map_err(|m| format!("line {}: {m}", n + 1))?));
        }
        Self::from_keys(&keys).map_err(|e| e.to_string())
    }

    /// Id and check value of the key new files are written with (0 and zeros when plaintext).
    pub fn current(&self) -> (u32, [u8; 8]) {
        self.keys.last().map(|k| (k.id, k.check)).unwrap_or((0, [0; 8]))
    }

    fn key(&self, id: u32, check: &[u8; 8], what: &str) -> Result<&Key, StorageError> {
        let k = self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            StorageError::Key(format!("{what} is encrypted with key id {id}, which the key file does not hold"))
        })?;
        if &k.check != check {
            return Err(StorageError::Key(format!("{what} was written with a different key {id} than the one configured (wrong key)")));
        }
        Ok(k)
    }

    /// Checks that a file written with `(key_id, check)` can be read: the key is known and right,
    /// or the file is plaintext and so is the configuration.
    pub fn check_readable(&self, key_id: u32, check: &[u8; 8], what: &str) -> Result<(), StorageError> {
        match (key_id, self.is_encrypted()) {
            (0, false) => Ok(()),
            (0, true) => Err(StorageError::Key(format!("{what} is not encrypted, but encryption is on; refusing to mix"))),
            (_, false) => Err(StorageError::Key(format!("{what} is encrypted (key id {key_id}), but no key is configured"))),
            _ => self.key(key_id, check, what).map(|_| ()),
        }
    }

    /// Encrypts `buf[from..]` in place and appends the tag. Plaintext when `key_id` is 0.
    pub fn seal(&self, key_id: u32, nonce: [u8; 12], aad: &[u8], buf: &mut Vec<u8>, from: usize) -> Result<(), StorageError> {
        if key_id == 0 {
            return Ok(());
        }
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or_else(|| StorageError::Key(format!("no key {key_id}")))?;
        let tag = key
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf[from..])
            .map_err(|_| StorageError::Key("encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts a sealed record in place; returns the plaintext. `what` names it in errors.
    pub fn open<'a>(&self, key_id: u32, nonce: [u8; 12], aad: &[u8], buf: &'a mut [u8], what: &dyn Fn() -> String) -> Result<&'a [u8], StorageError> {
        if key_id == 0 {
            return Ok(buf);
        }
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or_else(|| StorageError::Key(format!("{}: no key {key_id}", what())))?;
        key.aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map(|p| &*p)
            .map_err(|_| StorageError::Corrupt(format!("{}: authentication failed (moved, altered or not ours)", what())))
    }

    /// Bytes a sealed record adds.
    pub fn overhead(key_id: u32) -> usize {
        if key_id == 0 {
            0
        } else {
            TAG_LEN
        }
    }
}

/// A fresh random nonce prefix for a file about to be written.
pub fn nonce_prefix() -> Result<[u8; 8], StorageError> {
    let mut p = [0u8; 8];
    SystemRandom::new().fill(&mut p).map_err(|_| StorageError::Key("the system random generator failed".into()))?;
    Ok(p)
}

pub fn nonce(prefix: [u8; 8], counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&prefix);
    n[8..].copy_from_slice(&counter.to_le_bytes());
    n
}

fn decode_hex_key(hex: &str) -> Result<[u8; KEY_LEN], String> {
    let hex = hex.trim();
    if hex.len() != KEY_LEN * 2 {
        return Err(format!("a key is {} hex digits, found {}", KEY_LEN * 2, hex.len()));
    }
    let mut out = [0u8; KEY_LEN];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| "not hex".to_string())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| format!("'{s}' is not hex"))?;
    }
    Ok(out)
}

/// A new random key as a key-file line (`eddyd keygen`).
pub fn generate_key_line(id: u32) -> Result<String, StorageError> {
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut k).map_err(|_| StorageError::Key("the system random generator failed".into()))?;
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{id}:{hex}"))
}
