//! Durable quota usage: the bits each QoS class used in its current period, kept in a small
//! redb table (`<data_dir>/qos.redb`) so that a quota holds across a KM's crash or restart.
//!
//! Every change of a class's window (a hold, a hold given back, a class removed) is sent,
//! in the order the ledger made it, to one writer thread that commits whatever has queued
//! meanwhile in one durable transaction (group commit: one fsync for many charges). A
//! request that holds quota waits until its hold is on disk before it receives its key
//! ([`super::gate::Qos::turn`]), so a crash never loses a charge whose key was supplied; it
//! may keep a hold whose request had not finished (the quota errs toward refusing) and may
//! lose a give-back not yet written (the same). Read back when the KM starts.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

/// class -> (period index, bits used in it).
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("qos_quota_usage");

/// The quota store could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("QoS quota store: {0}")]
pub struct QosStoreError(String);

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for QosStoreError {
            fn from(e: $t) -> Self {
                QosStoreError(e.to_string())
            }
        }
    )*};
}
store_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    std::io::Error
);

/// One change of a class's window: `Some((period, used))`, or `None` when the class is gone.
struct Change {
    class: String,
    window: Option<(u64, u64)>,
    /// Told `true` once the change is on disk (`false`: it could not be written).
    written: Option<oneshot::Sender<bool>>,
}

/// The writer of the quota usage (a thread owning the database).
pub struct QuotaStore {
    tx: Option<mpsc::Sender<Change>>,
    thread: Option<JoinHandle<()>>,
}

/// A class's window as stored: (class, period index, bits used).
pub type StoredWindow = (String, u64, u64);

impl QuotaStore {
    /// Opens (or creates) the store at `path`; returns it with the windows it holds.
    pub fn open(path: &Path) -> Result<(Self, Vec<StoredWindow>), QosStoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let mut windows = Vec::new();
        {
            let table = txn.open_table(USAGE)?;
            for row in table.iter()? {
                let (class, value) = row?;
                let (period, used) = value.value();
                windows.push((class.value().to_owned(), period, used));
            }
        }
        txn.commit()?;
        let (tx, rx) = mpsc::channel::<Change>();
        let thread = std::thread::Builder::new()
            .name("qos-quota-store".into())
            .spawn(move || write_loop(&db, &rx))?;
        Ok((
            Self {
                tx: Some(tx),
                thread: Some(thread),
            },
            windows,
        ))
    }

    /// Queues a change of `class`'s window (cheap: no I/O here). With `ack`, returns what
    /// tells when it is on disk.
    pub fn record(
        &self,
        class: &str,
        window: Option<(u64, u64)>,
        ack: bool,
    ) -> Option<oneshot::Receiver<bool>> {
        let (written, rx) = if ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let sent = self.tx.as_ref().is_some_and(|tx| {
            tx.send(Change {
                class: class.to_owned(),
                window,
                written,
            })
            .is_ok()
        });
        if sent {
            rx
        } else {
            tracing::error!(%class, "QoS quota store closed: usage not recorded");
            None
        }
    }
}

impl Drop for QuotaStore {
    fn drop(&mut self) {
        self.tx.take(); // the writer drains what is queued, then ends and closes the file
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(db: &Database, rx: &mpsc::Receiver<Change>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let written = write_batch(db, &batch);
        if let Err(error) = &written {
            tracing::error!(%error, changes = batch.len(), "QoS quota usage not written");
        }
        for change in batch {
            if let Some(tx) = change.written {
                let _ = tx.send(written.is_ok());
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[Change]) -> Result<(), QosStoreError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(USAGE)?;
        // in order: the last change of a class wins
        for change in batch {
            match change.window {
                Some(window) => {
                    table.insert(change.class.as_str(), window)?;
                }
                None => {
                    table.remove(change.class.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_read_back_in_order() {
        let dir = std::env::temp_dir().join(format!("qkdni-qos-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qos.redb");
        {
            let (store, windows) = QuotaStore::open(&path).unwrap();
            assert!(windows.is_empty());
            store.record("a", Some((7, 100)), false);
            store.record("b", Some((7, 5)), false);
            store.record("b", None, false);
            let ack = store.record("a", Some((7, 300)), true).unwrap();
            assert!(ack.await.unwrap());
        }
        let (store, windows) = QuotaStore::open(&path).unwrap();
        assert_eq!(windows, vec![("a".to_owned(), 7, 300)]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
