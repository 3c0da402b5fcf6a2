//! The store files as an attacker holding the store key sees them: every data key the key
//! slot files still give up, and every sealed record found anywhere in the files' bytes —
//! live, or left in freed redb pages — decrypted with it. AES-GCM is a counter mode: whoever
//! has a data key and a record's nonce gets its plaintext without knowing its place
//! (associated data), which only the tag checks, so the records are decrypted here as an
//! attacker would, without checking tags and without knowing their length (up to
//! [`SCAN_BYTES`] after each header).
//!
//! Used by tests to show that a consumed key cannot be recovered; an operator may run it on a
//! copy of a stopped KM's data directory the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext, UnboundCipherKey, AES_256};
use aws_lc_rs::iv::FixedLength;
use zeroize::Zeroizing;

use super::key_slots::{self, FILE_HEADER_BYTES, SLOT_BYTES};
use super::sealing::{StoreKey, HEADER_BYTES, KEY_BYTES, SEALED};
use super::StoreError;

/// Bytes decrypted after each record header found.
pub const SCAN_BYTES: usize = 2048;

/// What the files give up.
#[derive(Default)]
pub struct Recovered {
    /// Data keys the store key opens in the key slot files found.
    pub data_keys: usize,
    /// Sealed records found whose data key was recovered.
    pub records: usize,
    /// What those records decrypt to (each [`SCAN_BYTES`] long at most, the key first).
    pub plaintexts: Vec<Zeroizing<Vec<u8>>>,
}

impl Recovered {
    /// Whether `key` is among the recovered plaintexts.
    pub fn contains(&self, key: &[u8]) -> bool {
        !key.is_empty()
            && self
                .plaintexts
                .iter()
                .any(|p| p.windows(key.len()).any(|w| w == key))
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Recovers what `files` give up to the holder of `store_key`.
pub fn recover(files: &[PathBuf], store_key: &StoreKey) -> Result<Recovered, StoreError> {
    let aead = store_key.aead();
    let mut contents = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(path)
            .map_err(|e| StoreError::AtRest(format!("{}: {e}", path.display())))?;
        contents.push(Zeroizing::new(bytes));
    }
    // every slot position of every key slot file, destroyed ones included
    let mut keys: HashMap<(u32, u64), Zeroizing<[u8; KEY_BYTES]>> = HashMap::new();
    for bytes in &contents {
        if !key_slots::header_opens(&aead, bytes) {
            continue;
        }
        let slots = (bytes.len() - FILE_HEADER_BYTES as usize) / SLOT_BYTES;
        for slot in 0..slots {
            let at = FILE_HEADER_BYTES as usize + slot * SLOT_BYTES;
            if let Some((id, key)) =
                key_slots::unwrap_slot(&aead, slot as u32, &bytes[at..at + SLOT_BYTES])
            {
                keys.insert((slot as u32, id), key);
            }
        }
    }
    let mut out = Recovered {
        data_keys: keys.len(),
        ..Default::default()
    };
    if keys.is_empty() {
        return Ok(out);
    }
    for bytes in &contents {
        for at in 0..bytes.len().saturating_sub(HEADER_BYTES) {
            if bytes[at] != SEALED {
                continue;
            }
            let slot = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes"));
            let id = u64::from_be_bytes(bytes[at + 5..at + 13].try_into().expect("8 bytes"));
            let Some(key) = keys.get(&(slot, id)) else {
                continue;
            };
            // GCM encrypts its plaintext with the counter blocks nonce ‖ 2, nonce ‖ 3, ...
            let mut iv = [0u8; 16];
            iv[..12].copy_from_slice(&bytes[at + 13..at + HEADER_BYTES]);
            iv[15] = 2;
            let end = (at + HEADER_BYTES + SCAN_BYTES).min(bytes.len());
            let mut body = Zeroizing::new(bytes[at + HEADER_BYTES..end].to_vec());
            let ctr = UnboundCipherKey::new(&AES_256, &key[..])
                .and_then(DecryptingKey::ctr)
                .map_err(|_| StoreError::AtRest("AES-CTR".into()))?;
            ctr.decrypt(&mut body, DecryptionContext::Iv128(FixedLength::from(iv)))
                .map_err(|_| StoreError::AtRest("AES-CTR".into()))?;
            out.records += 1;
            out.plaintexts.push(body);
        }
    }
    Ok(out)
}

/// [`recover`] over every file under `dir`.
pub fn recover_dir(dir: &Path, store_key: &StoreKey) -> Result<Recovered, StoreError> {
    let files =
        files_under(dir).map_err(|e| StoreError::AtRest(format!("{}: {e}", dir.display())))?;
    recover(&files, store_key)
}
