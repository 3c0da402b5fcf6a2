//! Key material at rest: the store key and the sealed record format.
//!
//! Every record of the store that holds key bytes is either *plain* (`[0] ‖ bytes`, written
//! only with at-rest encryption switched off, for benches) or *sealed*:
//!
//! ```text
//! [1] ‖ slot index (u32 BE) ‖ slot id (u64 BE) ‖ nonce (12) ‖ AES-256-GCM(key bytes) ‖ tag (16)
//! ```
//!
//! sealed under the data key of one key slot (see [`super::key_slots`]). The nonce is the
//! slot's own counter: a data key is fresh random for every slot and seals records only in
//! the process that created it, counting from 0, so no (key, nonce) pair ever repeats, also
//! across restarts (a reopened store seals new records under new slots). The associated
//! data is the header followed by the record's place — its table and what identifies it there
//! (link, owner and number of a block; key ID, slave and master SAE of a delivery) — so a
//! record moved to another table, another link or another key ID does not open.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::StoreError;

/// Bytes of the store key and of every data key (AES-256).
pub const KEY_BYTES: usize = 32;
/// Bytes of an AES-GCM tag.
pub(super) const TAG_BYTES: usize = 16;
/// Format byte of a plain record.
pub(super) const PLAIN: u8 = 0;
/// Format byte of a sealed record.
pub(super) const SEALED: u8 = 1;
/// Bytes of a sealed record's header (format, slot index, slot id, nonce).
pub(super) const HEADER_BYTES: usize = 1 + 4 + 8 + NONCE_LEN;
/// Name of the store key file in the KM's data directory (unless configured elsewhere).
pub const STORE_KEY_FILE: &str = "store.key";

/// At-rest protection of the key store (`[key_store]` of the KM's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AtRestConfig {
    /// Seal key material at rest (default: on). Switching it off exists only so that
    /// `qkdni bench` can measure what sealing costs; a production KM keeps it on. Records
    /// sealed before stay readable while it is off.
    pub encrypt: bool,
    /// The store key file (32 random bytes, mode 0600); default `store.key` beside the
    /// store in the data directory, created at first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl Default for AtRestConfig {
    fn default() -> Self {
        Self {
            encrypt: true,
            key_file: None,
        }
    }
}

impl AtRestConfig {
    /// The store key file of the store at `store_path`.
    pub fn key_path(&self, store_path: &Path) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| {
            store_path
                .parent()
                .unwrap_or(Path::new("."))
                .join(STORE_KEY_FILE)
        })
    }
}

fn at_rest(what: impl std::fmt::Display) -> StoreError {
    StoreError::AtRest(what.to_string())
}

/// The key that wraps the data keys of the key slots. Zeroized when dropped (the bytes here;
/// the expanded key inside aws-lc is cleansed by aws-lc when its context is freed).
pub struct StoreKey {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: Zeroizing<[u8; KEY_BYTES]>) -> Self {
        Self { bytes }
    }

    /// Reads the key at `path`, or creates it there (0600, random, made durable) when no file
    /// exists. A key file that others may read, or of the wrong length, is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        match Self::load(path) {
            Err(StoreError::AtRest(_)) if !path.exists() => Self::create(path),
            other => other,
        }
    }

    /// Reads an existing key file.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::File::open(path)
            .map_err(|e| at_rest(format!("store key {}: {e}", path.display())))?;
        let mode = file
            .metadata()
            .map_err(|e| at_rest(format!("store key {}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(at_rest(format!(
                "store key {} is accessible to others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_BYTES + 1));
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&file, KEY_BYTES as u64 + 1),
            &mut bytes,
        )
        .map_err(|e| at_rest(format!("store key {}: {e}", path.display())))?;
        if bytes.len() != KEY_BYTES {
            return Err(at_rest(format!(
                "store key {} must hold exactly {KEY_BYTES} bytes",
                path.display()
            )));
        }
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        key.copy_from_slice(&bytes);
        Ok(Self::from_bytes(key))
    }

    fn create(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        aws_lc_rs::rand::fill(&mut key[..]).map_err(|_| at_rest("no randomness"))?;
        let fail = |e: std::io::Error| at_rest(format!("store key {}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        file.write_all(&key[..]).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        sync_dir(path).map_err(fail)?;
        tracing::info!(path = %path.display(), "store key created");
        Ok(Self::from_bytes(key))
    }

    /// An AES-256-GCM key of these bytes.
    pub(super) fn aead(&self) -> LessSafeKey {
        aead_key(&self.bytes)
    }
}

/// An AES-256-GCM key of `bytes`.
pub(super) fn aead_key(bytes: &[u8; KEY_BYTES]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

/// Makes the directory entry of `path` durable (a new file survives a crash).
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// The associated data naming a record's place: `table` and its identifying `parts`, each
/// length-prefixed (so that no two places give the same bytes).
pub(super) fn place(table: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + parts.iter().map(|p| p.len() + 2).sum::<usize>());
    out.extend_from_slice(b"qkdni-km-store/1");
    for part in std::iter::once(table.as_bytes()).chain(parts.iter().copied()) {
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The table and identifying parts of a [`place`], or `None` when `place` is not one.
pub(super) fn parts_of(place: &[u8]) -> Option<Vec<&[u8]>> {
    let mut rest = place.strip_prefix(b"qkdni-km-store/1".as_slice())?;
    let mut out = Vec::with_capacity(4);
    while !rest.is_empty() {
        let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        out.push(rest.get(2..2 + len)?);
        rest = &rest[2 + len..];
    }
    Some(out)
}

/// The header of a sealed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub slot: u32,
    pub id: u64,
    pub nonce: [u8; NONCE_LEN],
}

impl Header {
    /// The header of `record`, if it is sealed (`None` for a plain one).
    pub fn of(record: &[u8]) -> Result<Option<Header>, StoreError> {
        match record.first() {
            Some(&PLAIN) => Ok(None),
            Some(&SEALED) if record.len() >= HEADER_BYTES + TAG_BYTES => Ok(Some(Header {
                slot: u32::from_be_bytes(record[1..5].try_into().expect("4 bytes")),
                id: u64::from_be_bytes(record[5..13].try_into().expect("8 bytes")),
                nonce: record[13..HEADER_BYTES].try_into().expect("nonce"),
            })),
            _ => Err(at_rest("a key record of unknown format")),
        }
    }

    /// The record's number under its data key (the counter of its nonce).
    pub fn counter(&self) -> u64 {
        u64::from_be_bytes(self.nonce[NONCE_LEN - 8..].try_into().expect("8 bytes"))
    }

    fn bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0] = SEALED;
        out[1..5].copy_from_slice(&self.slot.to_be_bytes());
        out[5..13].copy_from_slice(&self.id.to_be_bytes());
        out[13..].copy_from_slice(&self.nonce);
        out
    }
}

/// The nonce of the `n`th record sealed under one data key.
pub(super) fn counter_nonce(n: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// How many bytes `record` holds (plain or sealed), without opening it.
pub(super) fn content_len(record: &[u8]) -> Result<usize, StoreError> {
    Ok(match Header::of(record)? {
        None => record.len() - 1,
        Some(_) => record.len() - HEADER_BYTES - TAG_BYTES,
    })
}

/// A plain record of `bytes`.
pub(super) fn plain(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + bytes.len());
    out.push(PLAIN);
    out.extend_from_slice(bytes);
    out
}

/// Seals `bytes` under `key` with `header`, bound to `place`.
pub(super) fn seal(key: &LessSafeKey, header: Header, place: &[u8], bytes: &[u8]) -> Vec<u8> {
    let head = header.bytes();
    let mut out = Vec::with_capacity(HEADER_BYTES + bytes.len() + TAG_BYTES);
    out.extend_from_slice(&head);
    out.extend_from_slice(bytes);
    let mut aad = Vec::with_capacity(HEADER_BYTES + place.len());
    aad.extend_from_slice(&head);
    aad.extend_from_slice(place);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(header.nonce),
            Aad::from(&aad),
            &mut out[HEADER_BYTES..],
        )
        .expect("AES-GCM seals any record this small");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens sealed `record` (with `header`) under `key`, bound to `place`.
pub(super) fn open(
    key: &LessSafeKey,
    header: Header,
    place: &[u8],
    record: &[u8],
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let mut aad = Vec::with_capacity(HEADER_BYTES + place.len());
    aad.extend_from_slice(&record[..HEADER_BYTES]);
    aad.extend_from_slice(place);
    let mut body = Zeroizing::new(record[HEADER_BYTES..].to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(header.nonce),
            Aad::from(&aad),
            &mut body[..],
        )
        .map_err(|_| at_rest("a key record does not authenticate (altered or moved)"))?
        .len();
    body.truncate(len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LessSafeKey {
        aead_key(&[7u8; KEY_BYTES])
    }

    fn header(n: u64) -> Header {
        Header {
            slot: 3,
            id: 99,
            nonce: counter_nonce(n),
        }
    }

    #[test]
    fn a_sealed_record_opens_in_its_place_only() {
        let at = place("blocks", &[b"l", &[0], &5u64.to_be_bytes()]);
        let record = seal(&key(), header(0), &at, &[42u8; 32]);
        assert_eq!(record.len(), HEADER_BYTES + 32 + TAG_BYTES);
        assert!(!record.windows(32).any(|w| w == [42u8; 32]));
        assert_eq!(Header::of(&record).unwrap(), Some(header(0)));
        assert_eq!(
            open(&key(), header(0), &at, &record).unwrap().as_slice(),
            &[42u8; 32]
        );
        // another place (number), another table, another key: refused
        let other = place("blocks", &[b"l", &[0], &6u64.to_be_bytes()]);
        assert!(open(&key(), header(0), &other, &record).is_err());
        let pending = place("pending", &[b"l", &[0], &5u64.to_be_bytes()]);
        assert!(open(&key(), header(0), &pending, &record).is_err());
        assert!(open(&aead_key(&[8u8; KEY_BYTES]), header(0), &at, &record).is_err());
    }

    #[test]
    fn any_changed_byte_is_detected() {
        let at = place("deliveries", &[b"id", b"sae"]);
        let record = seal(&key(), header(1), &at, b"key bytes");
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x01;
            let opened = Header::of(&bad)
                .ok()
                .flatten()
                .map(|h| open(&key(), h, &at, &bad));
            assert!(
                !matches!(opened, Some(Ok(_))),
                "a change of byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn places_are_unambiguous_and_nonces_count() {
        assert_ne!(place("t", &[b"ab", b"c"]), place("t", &[b"a", b"bc"]));
        assert_ne!(counter_nonce(1), counter_nonce(2));
        assert!(Header::of(&plain(b"x")).unwrap().is_none());
        assert!(Header::of(&[9, 1, 2]).is_err());
        assert_eq!(header(7).counter(), 7);
        let at = place("t", &[b"ab", b"", &[1, 2]]);
        assert_eq!(
            parts_of(&at).unwrap(),
            vec![b"t".as_slice(), b"ab", b"", &[1, 2]]
        );
        assert!(parts_of(&at[..at.len() - 1]).is_none());
        assert!(parts_of(b"other").is_none());
    }

    #[test]
    fn the_store_key_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = super::super::test_dir();
        let path = dir.path.join(STORE_KEY_FILE);
        let created = StoreKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = StoreKey::load_or_create(&path).unwrap();
        assert_eq!(created.bytes[..], again.bytes[..]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            StoreKey::load_or_create(&path),
            Err(StoreError::AtRest(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [1u8; 5]).unwrap();
        assert!(StoreKey::load(&path).is_err());
    }
}
