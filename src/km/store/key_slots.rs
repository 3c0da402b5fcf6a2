//! Key slots: the data keys that seal the store's key records, each kept wrapped by the
//! store key in one fixed-size slot of a small file beside the redb file, and destroyed —
//! overwritten with zeros in place and made durable — once every record sealed under it is
//! gone. The ciphertext such records leave in freed redb pages then opens for nobody, the
//! holder of the store key included. The slots live outside redb because redb is
//! copy-on-write and never zeroes a freed page: a wrapped data key written there would stay
//! readable after its "removal".
//!
//! Each group of records that are consumed together (the blocks of one link owned by one end,
//! the pending blocks of a link, the keys waiting for one slave SAE, fetched keys) has its own
//! current slot; a slot seals at most [`Rotation::records`] records and for at most
//! [`Rotation::age`], then the group opens a new one. A slot's live records are counted
//! (recounted from the tables at open, then updated after every commit), so that:
//! - a slot is written and made durable before any record sealed under it is committed (it is
//!   created inside the transaction, before the commit);
//! - a slot is destroyed only after the commit that removed its last record, never while a
//!   committed record still needs it; a crash in between leaves a slot without records, which
//!   the next open destroys;
//! - a data key seals only in the process that created it, with a counter nonce from 0.
//!
//! File layout: a 64-byte header (magic, then an AES-GCM tag of nothing under the store key,
//! so that a wrong store key is refused at open), then slots of [`SLOT_BYTES`]:
//! `[1] ‖ 0 0 0 ‖ id (u64 BE) ‖ nonce (12) ‖ wrapped key (32) ‖ tag (16) ‖ 0…`, all zeros
//! when free.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use zeroize::Zeroizing;

use super::sealing::{self, Header, StoreKey, KEY_BYTES, TAG_BYTES};
use super::slot_index::{Found, Members};
use super::StoreError;

/// Magic of a key slot file.
pub(super) const MAGIC: &[u8; 16] = b"QKDNI-KEYSLOTS/1";
/// Bytes of the file header.
pub(super) const FILE_HEADER_BYTES: u64 = 64;
/// Bytes of one slot.
pub(super) const SLOT_BYTES: usize = 80;
const USED: u8 = 1;
const WRAP_PLACE: &[u8] = b"qkdni-key-slot/1";

/// When a group's current slot is replaced by a new one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rotation {
    /// Records sealed under one slot at most.
    pub records: u64,
    /// How long one slot seals new records at most.
    pub age: Duration,
    /// How long a slot consumed from keeps its other records before they are re-sealed
    /// elsewhere and it is destroyed (a slot's records are mostly consumed in order, so
    /// the next requests usually empty it first and nothing is re-sealed).
    pub compact_after: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        // small slots: a transaction that consumes from a slot re-seals what is left in it
        Self {
            records: 32,
            age: Duration::from_secs(30),
            compact_after: COMPACT_AFTER,
        }
    }
}

/// How long a partly consumed slot waits for its other records to be consumed before they
/// are re-sealed: with the sweep ([`Slots::due`]) every [`COMPACT_AFTER`]/4, the ciphertext
/// of a consumed key opens for nobody (the store key's holder included) at most 1.25 s
/// after its consumption, and the zeros of its slot are durable at most [`ZERO_SYNC`] later.
pub const COMPACT_AFTER: Duration = Duration::from_secs(1);

/// Changes of live records per slot made by one transaction.
pub(super) type Deltas = HashMap<u32, i64>;

/// What one committed transaction changed: live records per slot, and the records it sealed
/// (where they are) per slot.
pub(super) type Committed = (Deltas, HashMap<u32, Members>);

/// The key slot file of the store at `store_path`.
pub fn slot_path(store_path: &Path) -> PathBuf {
    store_path.with_extension("slots")
}

fn at_rest(what: impl std::fmt::Display) -> StoreError {
    StoreError::AtRest(what.to_string())
}

fn wrap_place(slot: u32, id: u64) -> Vec<u8> {
    let mut out = WRAP_PLACE.to_vec();
    out.extend_from_slice(&slot.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Opens the slot at `bytes` (position `slot`) with the store key, if it opens.
pub(super) fn unwrap_slot(
    store_key: &LessSafeKey,
    slot: u32,
    bytes: &[u8],
) -> Option<(u64, Zeroizing<[u8; KEY_BYTES]>)> {
    if bytes.len() < SLOT_BYTES || bytes[0] != USED {
        return None;
    }
    let id = u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let nonce: [u8; NONCE_LEN] = bytes[12..24].try_into().expect("nonce");
    let mut body = Zeroizing::new([0u8; KEY_BYTES + TAG_BYTES]);
    body.copy_from_slice(&bytes[24..24 + KEY_BYTES + TAG_BYTES]);
    let opened = store_key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_place(slot, id)),
            &mut body[..],
        )
        .ok()?;
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(opened);
    Some((id, key))
}

fn header_check(store_key: &LessSafeKey, nonce: [u8; NONCE_LEN]) -> [u8; TAG_BYTES] {
    let tag = store_key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(MAGIC),
            &mut [0u8; 0],
        )
        .expect("AES-GCM seals nothing");
    tag.as_ref().try_into().expect("16-byte tag")
}

/// Whether `bytes` start a key slot file whose header opens with `store_key`.
pub(super) fn header_opens(store_key: &LessSafeKey, bytes: &[u8]) -> bool {
    bytes.len() >= FILE_HEADER_BYTES as usize
        && &bytes[..16] == MAGIC
        && header_check(store_key, bytes[16..28].try_into().expect("nonce")) == bytes[28..44]
}

struct SlotFile {
    file: File,
    path: PathBuf,
    /// Slot positions in the file.
    len: u32,
    /// Positions free for a new slot.
    free: BTreeSet<u32>,
    /// Slots written and not yet made durable.
    dirty: bool,
    /// When slots overwritten with zeros were last made durable (see [`Self::zero`]).
    zeros_synced: Option<std::time::Instant>,
    /// Slots overwritten with zeros since then.
    zeros_pending: bool,
}

/// Longest time destroyed slots' zeros wait for a sync of their own while transactions
/// go on (they are durable earlier with any sync of new slots).
const ZERO_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

impl SlotFile {
    fn offset(slot: u32) -> u64 {
        FILE_HEADER_BYTES + u64::from(slot) * SLOT_BYTES as u64
    }

    fn io(&self, e: std::io::Error) -> StoreError {
        at_rest(format!("key slot file {}: {e}", self.path.display()))
    }

    /// Writes `bytes` at slot `slot` (durable at the next [`Self::sync`]).
    fn put(&mut self, slot: u32, bytes: &[u8; SLOT_BYTES]) -> Result<(), StoreError> {
        self.file
            .write_all_at(bytes, Self::offset(slot))
            .map_err(|e| self.io(e))?;
        self.dirty = true;
        self.len = self.len.max(slot + 1);
        Ok(())
    }

    /// Makes the slots written durable.
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.file.sync_data().map_err(|e| self.io(e))?;
            self.dirty = false;
            if self.zeros_pending {
                self.zeros_pending = false;
                self.zeros_synced = Some(std::time::Instant::now());
            }
        }
        Ok(())
    }

    /// Overwrites `slots` with zeros in place: from now on no read of the file finds their
    /// data keys. The zeros are made durable with the next sync of new slots, or here when
    /// the last durable zeros are [`ZERO_SYNC`] old: a key request pays no sync of its own
    /// for the slots it used up. A crash before they are durable leaves slots without
    /// records, which the next open destroys again; an idle store's last zeros reach the
    /// disk by the kernel's writeback.
    fn zero(&mut self, slots: &[u32]) -> Result<(), StoreError> {
        for &slot in slots {
            self.file
                .write_all_at(&[0u8; SLOT_BYTES], Self::offset(slot))
                .map_err(|e| self.io(e))?;
        }
        self.zeros_pending = true;
        if self.zeros_synced.is_none_or(|at| at.elapsed() >= ZERO_SYNC) {
            self.file.sync_data().map_err(|e| self.io(e))?;
            self.zeros_pending = false;
            self.zeros_synced = Some(std::time::Instant::now());
        }
        self.free.extend(slots);
        Ok(())
    }
}

/// A data key, ready to seal and open.
struct DataKey {
    id: u64,
    aead: LessSafeKey,
}

/// Live records of one slot.
#[derive(Debug, Default)]
struct Live {
    records: u64,
    /// Whether a committed record ever used it (a current slot is kept until then).
    used: bool,
    /// The group whose records it seals.
    group: String,
    /// Where its records are (the slot index).
    members: Members,
}

/// The slot a group seals its new records under.
struct Current {
    slot: u32,
    sealed: u64,
    since: Instant,
}

#[derive(Default)]
struct State {
    live: HashMap<u32, Live>,
    current: HashMap<String, Current>,
    /// Slots that may be destroyable without a transaction changing their records: a
    /// current slot replaced, a slot whose destruction failed (looked at by the next
    /// [`Slots::settle`], which so touches only these and the slots of its transaction).
    unsettled: BTreeSet<u32>,
    /// Slots consumed from that still hold records, with when those are to be re-sealed
    /// (unless consumed before).
    partial: HashMap<u32, Instant>,
}

/// The key slots of one store.
pub(super) struct Slots {
    seal_new: bool,
    rotation: Rotation,
    store_key: LessSafeKey,
    file: Mutex<SlotFile>,
    keys: RwLock<HashMap<u32, Arc<DataKey>>>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slots {
    /// Opens (or creates) the slot file at `path`; `seal_new`: new records are sealed.
    pub fn load(
        path: &Path,
        store_key: &StoreKey,
        seal_new: bool,
        rotation: Rotation,
    ) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let store_key = store_key.aead();
        let fail = |e: std::io::Error| at_rest(format!("key slot file {}: {e}", path.display()));
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => {
                let mut header = [0u8; FILE_HEADER_BYTES as usize];
                header[..16].copy_from_slice(MAGIC);
                let mut nonce = [0u8; NONCE_LEN];
                aws_lc_rs::rand::fill(&mut nonce).map_err(|_| at_rest("no randomness"))?;
                header[16..28].copy_from_slice(&nonce);
                header[28..44].copy_from_slice(&header_check(&store_key, nonce));
                file.write_all_at(&header, 0).map_err(fail)?;
                file.sync_all().map_err(fail)?;
                sealing::sync_dir(path).map_err(fail)?;
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(fail)?,
            Err(e) => return Err(fail(e)),
        };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(fail)?);
        if !header_opens(&store_key, &bytes) {
            return Err(at_rest(format!(
                "key slot file {} is not one or was made with another store key",
                path.display()
            )));
        }
        // a slot cut short by a crash while appended sealed nothing committed: ignored
        let len = ((bytes.len() as u64 - FILE_HEADER_BYTES) / SLOT_BYTES as u64) as u32;
        let mut keys = HashMap::new();
        let mut state = State::default();
        let mut free = BTreeSet::new();
        for slot in 0..len {
            let at = SlotFile::offset(slot) as usize;
            let raw = &bytes[at..at + SLOT_BYTES];
            if raw.iter().all(|b| *b == 0) {
                free.insert(slot);
                continue;
            }
            match unwrap_slot(&store_key, slot, raw) {
                Some((id, key)) => {
                    keys.insert(
                        slot,
                        Arc::new(DataKey {
                            id,
                            aead: sealing::aead_key(&key),
                        }),
                    );
                    state.live.insert(slot, Live::default());
                }
                // kept as it is (not reused, not destroyed): evidence for an operator
                None => tracing::error!(slot, "key slot does not open with the store key"),
            }
        }
        Ok(Self {
            seal_new,
            rotation,
            store_key,
            file: Mutex::new(SlotFile {
                file,
                path: path.to_owned(),
                len,
                free,
                dirty: false,
                zeros_synced: None,
                zeros_pending: false,
            }),
            keys: RwLock::new(keys),
            state: Mutex::new(state),
        })
    }

    /// Sets the live records per slot and where they are (found in the tables at open),
    /// then destroys the slots nothing needs (left by a crash after the commit that emptied
    /// them). Returns how many records name a slot that is not there (they cannot be opened).
    pub fn recount(&self, found: HashMap<u32, Found>) -> u64 {
        let mut orphans = 0;
        {
            let mut state = lock(&self.state);
            for (slot, found) in found {
                match state.live.get_mut(&slot) {
                    Some(live) => {
                        live.records = found.records;
                        live.used = true;
                        live.group = found.group;
                        live.members = found.members;
                    }
                    None => orphans += found.records,
                }
            }
        }
        let mut state = lock(&self.state);
        let all: Vec<u32> = state.live.keys().copied().collect();
        state.unsettled.extend(all);
        drop(state);
        self.settle(None);
        orphans
    }

    /// Seals `bytes` for `place` under `group`'s current slot (a new slot when it has none
    /// or it is used up); counted in `deltas`. A plain record when sealing is off.
    pub fn seal(
        &self,
        group: &str,
        place: &[u8],
        bytes: &[u8],
        deltas: &mut Deltas,
    ) -> Result<Vec<u8>, StoreError> {
        if !self.seal_new {
            return Ok(sealing::plain(bytes));
        }
        let mut state = lock(&self.state);
        let fresh = state.current.get(group).is_none_or(|c| {
            c.sealed >= self.rotation.records || c.since.elapsed() >= self.rotation.age
        });
        if fresh {
            let slot = self.create()?;
            if let Some(old) = state.current.get(group) {
                let old = old.slot;
                state.unsettled.insert(old);
            }
            state.live.insert(
                slot,
                Live {
                    group: group.to_owned(),
                    ..Live::default()
                },
            );
            state.current.insert(
                group.to_owned(),
                Current {
                    slot,
                    sealed: 0,
                    since: Instant::now(),
                },
            );
        }
        let current = state.current.get_mut(group).expect("current slot");
        let header = Header {
            slot: current.slot,
            id: 0,
            nonce: sealing::counter_nonce(current.sealed),
        };
        current.sealed += 1;
        let key = self.key(header.slot)?;
        *deltas.entry(header.slot).or_default() += 1;
        Ok(sealing::seal(
            &key.aead,
            Header {
                id: key.id,
                ..header
            },
            place,
            bytes,
        ))
    }

    /// Creates a slot with a new data key, durable before it returns.
    fn create(&self) -> Result<u32, StoreError> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        let mut id = [0u8; 8];
        let mut nonce = [0u8; NONCE_LEN];
        for buf in [&mut key[..], &mut id[..], &mut nonce[..]] {
            aws_lc_rs::rand::fill(buf).map_err(|_| at_rest("no randomness"))?;
        }
        let id = u64::from_be_bytes(id);
        let mut file = lock(&self.file);
        let slot = match file.free.first() {
            Some(&slot) => slot,
            None => file.len,
        };
        let mut bytes = Zeroizing::new([0u8; SLOT_BYTES]);
        bytes[0] = USED;
        bytes[4..12].copy_from_slice(&id.to_be_bytes());
        bytes[12..24].copy_from_slice(&nonce);
        bytes[24..24 + KEY_BYTES].copy_from_slice(&key[..]);
        let tag = self
            .store_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_place(slot, id)),
                &mut bytes[24..24 + KEY_BYTES],
            )
            .map_err(|_| at_rest("wrapping a data key"))?;
        bytes[24 + KEY_BYTES..24 + KEY_BYTES + TAG_BYTES].copy_from_slice(tag.as_ref());
        file.put(slot, &bytes)?;
        file.free.remove(&slot);
        drop(file);
        self.keys.write().unwrap_or_else(|e| e.into_inner()).insert(
            slot,
            Arc::new(DataKey {
                id,
                aead: sealing::aead_key(&key),
            }),
        );
        Ok(slot)
    }

    /// Whether new records are sealed.
    pub fn seals(&self) -> bool {
        self.seal_new
    }

    /// A number no other transaction of this process gets (names per-transaction groups).
    pub fn serial(&self) -> u64 {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes the slots created so far durable (before the commit of records sealed under
    /// them).
    pub fn sync(&self) -> Result<(), StoreError> {
        lock(&self.file).sync()
    }

    /// Notes the slots among `consumed` that still have live records after `deltas` as
    /// partly consumed (each stops being its group's current slot: its records are to be
    /// re-sealed elsewhere unless consumed soon, and it destroyed), then returns the partly
    /// consumed slots whose time is up (all of them with `everything`), with their group.
    pub fn due(
        &self,
        consumed: &BTreeSet<u32>,
        deltas: &Deltas,
        everything: bool,
    ) -> Vec<(u32, String)> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        for slot in consumed {
            let Some(live) = state.live.get(slot) else {
                continue;
            };
            let left = live
                .records
                .saturating_add_signed(deltas.get(slot).copied().unwrap_or(0));
            if left > 0 {
                state.current.retain(|_, c| c.slot != *slot);
                state
                    .partial
                    .entry(*slot)
                    .or_insert(now + self.rotation.compact_after);
            }
        }
        let state = &*state;
        let mut due: Vec<(u32, String)> = state
            .partial
            .iter()
            .filter(|(_, at)| everything || **at <= now)
            .filter_map(|(slot, _)| Some((*slot, state.live.get(slot)?.group.clone())))
            .collect();
        due.sort_unstable();
        due
    }

    /// Whether a partly consumed slot's records are to be re-sealed now (any, with
    /// `everything`).
    pub fn compaction_due(&self, everything: bool) -> bool {
        let now = Instant::now();
        lock(&self.state)
            .partial
            .values()
            .any(|at| everything || *at <= now)
    }

    /// Notes `slots` (found partly consumed at open) as due for compaction now.
    pub fn partly_consumed_at_open(&self, slots: impl IntoIterator<Item = u32>) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        for slot in slots {
            if state.live.contains_key(&slot) {
                state.partial.insert(slot, now);
            }
        }
    }

    /// Makes the zeros of destroyed slots durable now, if any are not.
    pub fn sync_zeros(&self) -> Result<(), StoreError> {
        let mut file = lock(&self.file);
        if file.zeros_pending {
            file.file.sync_data().map_err(|e| file.io(e))?;
            file.zeros_pending = false;
            file.zeros_synced = Some(Instant::now());
        }
        Ok(())
    }

    fn key(&self, slot: u32) -> Result<Arc<DataKey>, StoreError> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&slot)
            .cloned()
            .ok_or(StoreError::KeySlotGone { slot })
    }

    /// Opens `record` for `place` (a plain record as it is).
    pub fn open(&self, record: &[u8], place: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let Some(header) = Header::of(record)? else {
            return Ok(Zeroizing::new(record[1..].to_vec()));
        };
        let key = self.key(header.slot)?;
        if key.id != header.id {
            return Err(StoreError::KeySlotGone { slot: header.slot });
        }
        sealing::open(&key.aead, header, place, record)
    }

    /// Counts `record` as removed in `deltas`; returns its slot, if sealed.
    pub fn release(&self, record: &[u8], deltas: &mut Deltas) -> Result<Option<u32>, StoreError> {
        let header = Header::of(record)?;
        if let Some(header) = header {
            *deltas.entry(header.slot).or_default() -= 1;
        }
        Ok(header.map(|h| h.slot))
    }

    /// After a transaction: applies what it changed when it committed, then destroys every
    /// slot no committed record needs (a group's current slot only once it was used).
    /// Only the slots it changed and the unsettled ones are looked at (O(slots touched)).
    pub fn settle(&self, committed: Option<Committed>) {
        let mut state = lock(&self.state);
        let mut candidates = std::mem::take(&mut state.unsettled);
        let (deltas, sealed) = committed.unwrap_or_default();
        for (slot, delta) in deltas {
            let live = state.live.entry(slot).or_default();
            live.records = live.records.saturating_add_signed(delta);
            live.used |= live.records > 0;
            candidates.insert(slot);
        }
        for (slot, members) in sealed {
            if let Some(live) = state.live.get_mut(&slot) {
                live.members.extend(members);
            }
        }
        let gone: Vec<u32> = candidates
            .into_iter()
            .filter(|slot| {
                state.live.get(slot).is_some_and(|live| {
                    live.records == 0
                        && (live.used || !state.current.values().any(|c| c.slot == *slot))
                })
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        if let Err(error) = lock(&self.file).zero(&gone) {
            // kept: retried after the next transaction, or at the next open
            tracing::error!(%error, "destroying used-up key slots");
            state.unsettled.extend(gone);
            return;
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        for slot in &gone {
            state.live.remove(slot);
            state.partial.remove(slot);
            keys.remove(slot);
        }
        state.current.retain(|_, c| !gone.contains(&c.slot));
        tracing::debug!(slots = gone.len(), "key slots destroyed");
    }

    /// Where the records of `slot` are, as committed (`None`: no such slot).
    pub fn members(&self, slot: u32) -> Option<Members> {
        lock(&self.state).live.get(&slot).map(|l| l.members.clone())
    }

    /// The live records of `slot` once `deltas` are applied.
    pub fn records_left(&self, slot: u32, deltas: &Deltas) -> u64 {
        lock(&self.state).live.get(&slot).map_or(0, |live| {
            live.records
                .saturating_add_signed(deltas.get(&slot).copied().unwrap_or(0))
        })
    }

    /// Slots holding a data key now (in memory).
    #[cfg(test)]
    pub fn live_slots(&self) -> Vec<u32> {
        let mut slots: Vec<u32> = lock(&self.state).live.keys().copied().collect();
        slots.sort_unstable();
        slots
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableTable, TableHandle};
    use uuid::Uuid;
    use zeroize::Zeroizing;

    use super::super::deliveries::{self, DELIVERIES, FETCHED};
    use super::super::tests::{blocks, take, tempdir};
    use super::super::{
        block_place, forensics, AtRestConfig, DeliveryTerms, KeyStore, StoreError, StoreKey,
        BLOCKS, PENDING, RX, TX,
    };
    use super::*;

    const TERMS: DeliveryTerms = DeliveryTerms {
        expires_ms: u64::MAX,
        max_per_pair: 1000,
    };

    /// The store of `dir`, re-sealing what is left in a slot at once (see
    /// [`compaction_waits_for_the_rest_of_a_slot`] for the default).
    fn open(dir: &tempdir::Dir, rotation: Rotation) -> KeyStore {
        KeyStore::open_rotating(
            &dir.path.join("km.redb"),
            &AtRestConfig::default(),
            Rotation {
                compact_after: Duration::ZERO,
                ..rotation
            },
        )
        .unwrap()
    }

    fn store_key(dir: &tempdir::Dir) -> StoreKey {
        StoreKey::load(&dir.path.join("store.key")).unwrap()
    }

    fn recovered(dir: &tempdir::Dir) -> forensics::Recovered {
        forensics::recover_dir(&dir.path, &store_key(dir)).unwrap()
    }

    /// Whether `bytes` occur anywhere in the files of `dir`, as they are.
    fn raw_in_files(dir: &tempdir::Dir, bytes: &[u8]) -> bool {
        forensics::files_under(&dir.path).unwrap().iter().any(|f| {
            std::fs::read(f)
                .unwrap()
                .windows(bytes.len())
                .any(|w| w == bytes)
        })
    }

    /// Every live record opens; every slot position of the file is zero exactly when the
    /// slot is not live; every slot a record names is live.
    fn check(store: &KeyStore, path: &std::path::Path) {
        let txn = store.db.begin_read().unwrap();
        let mut named = std::collections::BTreeSet::new();
        let mut indexed = std::collections::BTreeMap::new();
        let mut opened = |record: &[u8], place: Vec<u8>| {
            if let Some(h) = Header::of(record).unwrap() {
                named.insert(h.slot);
                indexed.insert((h.slot, h.counter()), place.clone());
            }
            store
                .slots
                .open(record, &place)
                .expect("a live record opens");
        };
        for entry in txn.open_table(BLOCKS).unwrap().iter().unwrap() {
            let (k, v) = entry.unwrap();
            let (link, owner, seq) = k.value();
            opened(v.value(), block_place(BLOCKS.name(), link, owner, seq));
        }
        for entry in txn.open_table(PENDING).unwrap().iter().unwrap() {
            let (k, v) = entry.unwrap();
            let (link, seq) = k.value();
            let (owner, record) = v.value();
            opened(record, block_place(PENDING.name(), link, owner, seq));
        }
        for (def, head) in [(DELIVERIES, 0usize), (FETCHED, 8)] {
            for entry in txn.open_table(def).unwrap().iter().unwrap() {
                let (k, v) = entry.unwrap();
                let (id, slave) = k.value();
                let rest = &v.value()[head..];
                let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let master = std::str::from_utf8(&rest[2..2 + len]).unwrap();
                opened(
                    deliveries::record_of(rest),
                    deliveries::place(def.name(), id, slave, master),
                );
            }
        }
        // the slot index of every record's slot names it
        for ((slot, _), place) in &indexed {
            let members = store.slots.members(*slot).expect("a live slot");
            assert!(members.covers(place), "slot {slot}'s index misses a record");
        }
        let live = store.slots.live_slots();
        for slot in &named {
            assert!(
                live.contains(slot),
                "slot {slot} named by a record is not live"
            );
        }
        let file = std::fs::read(slot_path(path)).unwrap();
        for (i, raw) in file[FILE_HEADER_BYTES as usize..]
            .chunks_exact(SLOT_BYTES)
            .enumerate()
        {
            let zero = raw.iter().all(|b| *b == 0);
            assert_eq!(
                zero,
                !live.contains(&(i as u32)),
                "slot {i}: zero in the file exactly when not live (live {live:?})"
            );
        }
    }

    #[test]
    fn consumed_blocks_cannot_be_recovered_with_the_store_key() {
        let dir = tempdir::Dir::new();
        let store = open(&dir, Rotation::default());
        let arrived = blocks(4, 0x51);
        store
            .write(|t| t.store_blocks("l", 0, &arrived, 2))
            .unwrap();
        // sealed: not in the files as they are, but the store key gives them up while live
        for block in &arrived {
            assert!(!raw_in_files(&dir, &block[..]));
        }
        let before = recovered(&dir);
        assert_eq!(before.data_keys, 2, "one slot per owner");
        assert!(arrived.iter().all(|b| before.contains(&b[..])));
        assert_eq!(store.slots.live_slots().len(), 2);

        // this end's blocks are used: their slot is destroyed, the peer's stays
        take(&store, "l", TX, 2).unwrap();
        assert_eq!(store.slots.live_slots().len(), 1);
        let after = recovered(&dir);
        assert_eq!(after.data_keys, 1);
        assert!(!after.contains(&arrived[0][..]) && !after.contains(&arrived[1][..]));
        assert!(after.contains(&arrived[2][..]) && after.contains(&arrived[3][..]));
        check(&store, &dir.path.join("km.redb"));

        // the peer references its blocks: nothing is left to recover
        store
            .write(|t| t.remove_peer_blocks("l", TX, &[2, 3]))
            .unwrap();
        assert!(store.slots.live_slots().is_empty());
        let none = recovered(&dir);
        assert_eq!((none.data_keys, none.records), (0, 0));
        for block in &arrived {
            assert!(!none.contains(&block[..]) && !raw_in_files(&dir, &block[..]));
        }
        check(&store, &dir.path.join("km.redb"));
    }

    #[test]
    fn what_a_transaction_leaves_in_a_slot_is_sealed_again_and_the_slot_destroyed() {
        let dir = tempdir::Dir::new();
        let store = open(&dir, Rotation::default());
        let arrived = blocks(8, 0x20);
        store
            .write(|t| t.store_blocks("l", 0, &arrived, 8))
            .unwrap();
        assert_eq!(store.slots.live_slots().len(), 1);
        // one block used, seven left in the same slot: they move, the slot goes
        let first = store.slots.live_slots();
        take(&store, "l", TX, 1).unwrap();
        let now = store.slots.live_slots();
        assert_eq!(now.len(), 1);
        assert_ne!(first, now, "the slot the block was taken from is destroyed");
        let found = recovered(&dir);
        assert!(
            !found.contains(&arrived[0][..]),
            "a consumed block recovered"
        );
        assert!(arrived[1..].iter().all(|b| found.contains(&b[..])));
        check(&store, &dir.path.join("km.redb"));
        // a key fetched out of several of one request: the others move, it is gone
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let entries: Vec<(Uuid, Zeroizing<Vec<u8>>)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, Zeroizing::new(vec![0xc0 + i as u8; 32])))
            .collect();
        store
            .write(|t| t.insert_deliveries(&["s".into()], "m", &entries, TERMS))
            .unwrap();
        store
            .write(|t| t.take_deliveries("s", "m", &ids[..1], 0, 0))
            .unwrap();
        let found = recovered(&dir);
        assert!(!found.contains(&[0xc0; 32]));
        assert!(found.contains(&[0xc1; 32]) && found.contains(&[0xc2; 32]));
        check(&store, &dir.path.join("km.redb"));
        drop(store);
        let store = open(&dir, Rotation::default());
        let got = store
            .write(|t| t.take_deliveries("s", "m", &ids[1..], 0, 0))
            .unwrap();
        assert_eq!(got[1].key.as_slice(), &[0xc2; 32]);
        check(&store, &dir.path.join("km.redb"));
    }

    #[test]
    fn delivered_and_fetched_keys_go_with_their_slots() {
        let dir = tempdir::Dir::new();
        let store = open(&dir, Rotation::default());
        let (k1, k2) = (Uuid::new_v4(), Uuid::new_v4());
        let (key1, key2) = ([0xa1u8; 32], [0xa2u8; 32]);
        store
            .write(|t| {
                t.insert_delivery("s2", "s1", k1, &key1, TERMS)?;
                t.insert_delivery("s2", "s1", k2, &key2, TERMS)
            })
            .unwrap();
        assert!(recovered(&dir).contains(&key1));
        // fetched with a refetch window: sealed again in the fetched table, still live
        let got = store
            .write(|t| t.take_deliveries("s2", "s1", &[k1], 10, 1_000))
            .unwrap();
        assert_eq!(got[0].key.as_slice(), &key1);
        assert!(recovered(&dir).contains(&key1));
        let again = store
            .write(|t| t.take_deliveries("s2", "s1", &[k1], 20, 0))
            .unwrap();
        assert_eq!(again[0].key.as_slice(), &key1);
        // the window ends, k2 expires: both gone for good
        store.write(|t| t.expire_deliveries(1_000, 10)).unwrap();
        store
            .write(|t| t.withdraw_delivery("s2", k2).map(|_| ()))
            .unwrap();
        let gone = recovered(&dir);
        assert_eq!(gone.data_keys, 0);
        assert!(!gone.contains(&key1) && !gone.contains(&key2));
        assert!(!raw_in_files(&dir, &key1) && !raw_in_files(&dir, &key2));
        check(&store, &dir.path.join("km.redb"));
    }

    #[test]
    fn live_records_survive_a_reopen_and_pending_blocks_are_sealed_again() {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("km.redb");
        let arrived = blocks(6, 3);
        let key = Uuid::new_v4();
        {
            let store = open(&dir, Rotation::default());
            store
                .write(|t| t.store_pending("l", 0, &arrived, 3))
                .unwrap();
            store
                .write(|t| t.insert_delivery("s2", "s1", key, &[9; 16], TERMS))
                .unwrap();
            check(&store, &path);
        }
        let store = open(&dir, Rotation::default());
        check(&store, &path);
        store.write(|t| t.commit_pending("l", 6)).unwrap();
        // the pending slot's records all moved: it is destroyed
        check(&store, &path);
        assert_eq!(store.slots.live_slots().len(), 3);
        let peer = store.peek_peer_blocks("l", RX, &[0, 1, 2]).unwrap();
        assert_eq!(peer[1][..], arrived[1][..]);
        let reservation = store.reserve("l", RX, 3).unwrap();
        let taken = store.write(|t| t.take_reserved(&reservation)).unwrap();
        assert_eq!(taken[2].1[..], arrived[5][..]);
        drop(store);
        let store = open(&dir, Rotation::default());
        let got = store
            .write(|t| t.take_deliveries("s2", "s1", &[key], 0, 0))
            .unwrap();
        assert_eq!(got[0].key.as_slice(), &[9; 16]);
        check(&store, &path);
    }

    #[test]
    fn groups_rotate_their_slots_and_each_slot_dies_with_its_records() {
        let dir = tempdir::Dir::new();
        let store = open(
            &dir,
            Rotation {
                records: 2,
                age: Duration::from_secs(3600),
                ..Rotation::default()
            },
        );
        store
            .write(|t| t.store_blocks("l", 0, &blocks(6, 0), 6))
            .unwrap();
        assert_eq!(store.slots.live_slots().len(), 3);
        take(&store, "l", TX, 3).unwrap();
        assert_eq!(
            store.slots.live_slots().len(),
            2,
            "the oldest slot is used up"
        );
        check(&store, &dir.path.join("km.redb"));
        take(&store, "l", TX, 3).unwrap();
        assert!(store.slots.live_slots().is_empty());
        // a freed position is reused, the file does not grow
        let len = std::fs::metadata(slot_path(&dir.path.join("km.redb")))
            .unwrap()
            .len();
        store
            .write(|t| t.store_blocks("l", 6, &blocks(2, 0), 2))
            .unwrap();
        let now = std::fs::metadata(slot_path(&dir.path.join("km.redb")))
            .unwrap()
            .len();
        assert_eq!(len, now);
        check(&store, &dir.path.join("km.redb"));
    }

    #[test]
    fn a_crash_before_a_slot_is_destroyed_or_used_leaves_nothing_after_reopen() {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("km.redb");
        {
            let store = open(&dir, Rotation::default());
            store
                .write(|t| t.store_blocks("l", 0, &blocks(2, 0x77), 2))
                .unwrap();
            // a slot written for a transaction that never committed
            let refused = store.write(|t| {
                t.store_blocks("m", 0, &blocks(1, 0x78), 1)?;
                Err::<(), _>(StoreError::Db("crash".into()))
            });
            assert!(refused.is_err());
            let slot_file = std::fs::read(slot_path(&path)).unwrap();
            take(&store, "l", TX, 2).unwrap();
            // as if the process died after the commit and before the slot was zeroed
            std::fs::write(slot_path(&path), &slot_file).unwrap();
        }
        assert_eq!(recovered(&dir).data_keys, 2, "both slots are in the file");
        let store = open(&dir, Rotation::default());
        let after = recovered(&dir);
        assert_eq!(after.data_keys, 0);
        assert!(!after.contains(&[0x77; 32]));
        check(&store, &path);
    }

    #[test]
    fn altered_or_moved_records_and_a_wrong_store_key_are_refused() {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("km.redb");
        let store = open(&dir, Rotation::default());
        store
            .write(|t| t.store_blocks("l", 0, &blocks(3, 0), 0))
            .unwrap();
        // block 0's record copied over block 1's place, one bit of block 2's flipped
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(BLOCKS).unwrap();
                let first = table.get(("l", RX, 0)).unwrap().unwrap().value().to_vec();
                let mut third = table.get(("l", RX, 2)).unwrap().unwrap().value().to_vec();
                *third.last_mut().unwrap() ^= 1;
                table.insert(("l", RX, 1), first.as_slice()).unwrap();
                table.insert(("l", RX, 2), third.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        for seq in [1, 2] {
            assert!(matches!(
                store.peek_peer_blocks("l", TX, &[seq]),
                Err(StoreError::AtRest(_))
            ));
        }
        assert_eq!(store.peek_peer_blocks("l", TX, &[0]).unwrap().len(), 1);
        drop(store);
        // another store key does not open the slot file
        let other = dir.path.join("other.key");
        StoreKey::load_or_create(&other).unwrap();
        let config = AtRestConfig {
            encrypt: true,
            key_file: Some(other),
        };
        assert!(matches!(
            KeyStore::open_with(&path, &config),
            Err(StoreError::AtRest(_))
        ));
    }

    #[test]
    fn sealing_off_stores_plain_records_which_are_sealed_when_it_is_on_again() {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("km.redb");
        let off = AtRestConfig {
            encrypt: false,
            key_file: None,
        };
        {
            let store = KeyStore::open_with(&path, &off).unwrap();
            store
                .write(|t| t.store_blocks("l", 0, &blocks(2, 0x33), 2))
                .unwrap();
            assert!(store.slots.live_slots().is_empty());
            assert!(raw_in_files(&dir, &[0x33; 32]), "plain when off");
        }
        let store = KeyStore::open(&path).unwrap();
        assert_eq!(store.slots.live_slots().len(), 1);
        check(&store, &path);
        let reservation = store.reserve("l", TX, 2).unwrap();
        let taken = store.write(|t| t.take_reserved(&reservation)).unwrap();
        assert_eq!(taken[0].1[..], [0x33; 32]);
        assert!(store.slots.live_slots().is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Whatever arrives, is consumed, fails or reopens: every live record opens, every
        /// destroyed slot is zero in the file, and a consumed block is recovered by nobody.
        #[test]
        fn live_records_always_open_and_destroyed_slots_are_zero(
            ops in proptest::collection::vec((0u8..9, 0usize..6, 0usize..6), 1..40)
        ) {
            let dir = tempdir::Dir::new();
            let path = dir.path.join("km.redb");
            let rotation = Rotation { records: 3, age: Duration::from_secs(3600), ..Rotation::default() };
            let mut store = open(&dir, rotation);
            let mut fill = 0u8;
            let mut consumed: Vec<[u8; 32]> = Vec::new();
            let mut keys: Vec<Uuid> = Vec::new();
            for (op, a, b) in ops {
                fill = fill.wrapping_add(1);
                let next = store.next_seq("l").unwrap();
                match op {
                    0 => { let _ = store.write(|t| t.store_blocks("l", next, &blocks(a, fill.wrapping_mul(16)), b)); }
                    1 => { let _ = store.write(|t| t.store_pending("l", next, &blocks(a, fill.wrapping_mul(16)), b)); }
                    2 => { let _ = store.write(|t| t.commit_pending("l", next.saturating_sub(a as u64))); }
                    3 => {
                        let owner = (a % 2) as u8;
                        if let Ok(reservation) = store.reserve("l", owner, b) {
                            let taken = store.write(|t| t.take_reserved(&reservation)).unwrap();
                            consumed.extend(taken.iter().map(|(_, block)| **block));
                        }
                    }
                    4 => { let _ = store.write(|t| t.resync("l", next.saturating_sub(a as u64))); }
                    5 => {
                        let id = Uuid::new_v4();
                        if store.write(|t| t.insert_delivery("s", "m", id, &[fill; 24], TERMS)).is_ok() {
                            keys.push(id);
                        }
                    }
                    6 => {
                        if let Some(id) = keys.pop() {
                            let got = store.write(|t| t.take_deliveries("s", "m", &[id], 0, (b as u64) * 10)).unwrap();
                            proptest::prop_assert_eq!(got.len(), 1);
                        }
                    }
                    7 => { store.write(|t| t.expire_deliveries(30, 100)).unwrap(); }
                    _ => {
                        // a failed transaction, then a reopen (as after kill -9)
                        let _ = store.write(|t| {
                            t.store_blocks("l", next, &blocks(1, 0xee), 0)?;
                            Err::<(), _>(StoreError::Db("abort".into()))
                        });
                        drop(store);
                        store = open(&dir, rotation);
                    }
                }
                check(&store, &path);
            }
            // blocks consumed and not (by chance) of the same bytes as a live one are gone
            let live: Vec<[u8; 32]> = {
                let txn = store.db.begin_read().unwrap();
                let table = txn.open_table(BLOCKS).unwrap();
                let pending = txn.open_table(PENDING).unwrap();
                let mut live = Vec::new();
                for entry in table.iter().unwrap() {
                    let (k, v) = entry.unwrap();
                    let (link, owner, seq) = k.value();
                    let b = store.slots.open(v.value(), &block_place(BLOCKS.name(), link, owner, seq)).unwrap();
                    live.push(b.as_slice().try_into().unwrap());
                }
                for entry in pending.iter().unwrap() {
                    let (k, v) = entry.unwrap();
                    let (link, seq) = k.value();
                    let (owner, record) = v.value();
                    let b = store.slots.open(record, &block_place(PENDING.name(), link, owner, seq)).unwrap();
                    live.push(b.as_slice().try_into().unwrap());
                }
                live
            };
            if live.is_empty() && keys.is_empty() {
                // nothing live: nothing at all opens any more
                let found = recovered(&dir);
                for block in &consumed {
                    proptest::prop_assert!(!found.contains(block));
                }
            }
        }
    }
}
