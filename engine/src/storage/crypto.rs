//! Encryption at rest: AES-256-GCM (ring) for every WAL record, checkpoint blob and manifest.
//!
//! Nonces never repeat under a key: each file that is written gets a fresh random 8-byte prefix in
//! its header when it is created (files are never reopened for writing), and its records count up
//! from 0 in the remaining 4 bytes. The caller binds the record's place (file, offset or sequence,
//! key id) as associated data, so a record moved, swapped or replayed elsewhere fails to open.
//!
//! The caller hands in key material (`(id, bytes)`; the last key is the one new files use, earlier
//! ones stay readable); where keys are kept is the daemon's business. Key id 0 marks plaintext in
//! every file format, so it is never a key. This module never logs or formats key bytes.

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
    /// Ids of the keys in the ring (empty: not encrypted).
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

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
            if *id == 0 {
                return Err(StorageError::Key(
                    "key id 0 is reserved (it marks unencrypted files); key ids start at 1".into(),
                ));
            }
            let unbound =
                UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| StorageError::Key("not an AES-256 key".into()))?;
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

    /// Id and check value of the key new files are written with (0 and zeros when plaintext).
    pub fn current(&self) -> (u32, [u8; 8]) {
        self.keys.last().map(|k| (k.id, k.check)).unwrap_or((0, [0; 8]))
    }

    fn key(&self, id: u32, check: &[u8; 8], what: &str) -> Result<&Key, StorageError> {
        let k = self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            StorageError::Key(format!("{what} is encrypted with key id {id}, which the key file does not hold"))
        })?;
        if &k.check != check {
            return Err(StorageError::Key(format!(
                "{what} was written with another key than the key file's key id {id} (wrong key)"
            )));
        }
        Ok(k)
    }

    /// Checks that a file written with `(key_id, check)` can be read: the key is known and right,
    /// or the file is plaintext and so is the configuration.
    pub fn check_readable(&self, key_id: u32, check: &[u8; 8], what: &str) -> Result<(), StorageError> {
        match (key_id, self.is_encrypted()) {
            (0, false) => Ok(()),
            (0, true) => {
                Err(StorageError::Key(format!("{what} is not encrypted, but encryption is on; refusing to mix")))
            }
            (_, false) => {
                Err(StorageError::Key(format!("{what} is encrypted (key id {key_id}), but no key is configured")))
            }
            _ => self.key(key_id, check, what).map(|_| ()),
        }
    }

    /// Encrypts `buf[from..]` in place and appends the tag. Plaintext when `key_id` is 0.
    pub fn seal(
        &self,
        key_id: u32,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), StorageError> {
        // Callers seal with `current()`, which is 0 only without keys (`from_keys` refuses id 0).
        debug_assert!(key_id != 0 || !self.is_encrypted(), "plaintext record under an encrypting cipher");
        if key_id == 0 {
            return Ok(());
        }
        let key =
            self.keys.iter().find(|k| k.id == key_id).ok_or_else(|| StorageError::Key(format!("no key {key_id}")))?;
        let tag = key
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf[from..])
            .map_err(|_| StorageError::Key("encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts a sealed record in place; returns the plaintext. `what` names it in errors.
    pub fn open<'a>(
        &self,
        key_id: u32,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &'a mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<&'a [u8], StorageError> {
        if key_id == 0 {
            return Ok(buf);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| StorageError::Key(format!("{}: no key {key_id}", what())))?;
        key.aead.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf).map(|p| &*p).map_err(|_| {
            StorageError::Corrupt(format!("{}: authentication failed (moved, altered or not ours)", what()))
        })
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
    random_bytes()
}

/// `N` bytes from the system's random generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], StorageError> {
    let mut p = [0u8; N];
    SystemRandom::new().fill(&mut p).map_err(|_| StorageError::Key("the system random generator failed".into()))?;
    Ok(p)
}

pub fn nonce(prefix: [u8; 8], counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&prefix);
    n[8..].copy_from_slice(&counter.to_le_bytes());
    n
}
