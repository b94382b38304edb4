//! The server store on redb: documents, projections, the change feed per scope, users,
//! devices, enrollment codes and the receipt log.
//!
//! Split by domain so each concern reads on its own: [`tables`] names every table, `records`
//! keeps documents, projections, the feed and receipts, `identity` users and devices,
//! `webauth` dashboard sessions and API tokens. Writes of sync rounds go through
//! [`Committer`], one thread that merges every round waiting at that moment into one durable
//! write transaction, so a burst of phones costs one fsync per batch instead of one per phone.

mod backend;
mod committer;
mod identity;
mod records;
mod tables;
mod webauth;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;
use serde::{Deserialize, Serialize};

pub use backend::Backend;
pub use committer::Committer;
pub use identity::{Device, User};
pub use records::{Prepared, Receipt, StoredRecord};
pub use webauth::{ApiToken, WebSession};

use tables::*;

/// The redb file inside a data folder.
pub const DB_FILE: &str = "fieldsync.redb";

/// Why a server store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The redb file could not be opened, read or written.
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    /// Another process (a running server) holds the data folder.
    #[error(
        "the data folder {0} is in use by another process (is the server running? stop it first)"
    )]
    InUse(PathBuf),
    /// Stored bytes could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The committer thread is gone (the server is shutting down).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// An enrollment code is unknown, used or expired.
    #[error("{0}")]
    BadCode(String),
    /// No such user or device.
    #[error("{0}")]
    NotFound(String),
}

fieldsync_device::impl_from_redb!(StoreError);

impl StoreError {
    /// Whether the database must be closed and reopened before it accepts writes again (redb
    /// refuses every write after an I/O error).
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                redb::Error::Io(_)
                    | redb::Error::PreviousIo
                    | redb::Error::Backend(_)
                    | redb::Error::Corrupted(_)
            )
        )
    }
}

/// The server's redb store.
#[derive(Clone)]
pub struct ServerStore {
    db: Arc<Database>,
}

impl ServerStore {
    /// Opens (creating if needed) the store in a data folder.
    pub fn open(dir: &Path) -> Result<ServerStore, StoreError> {
        let path = dir.join(DB_FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(dir.to_path_buf()));
            }
            Err(e) => return Err(StoreError::Database(e.into())),
        };
        Self::with_tables(db)
    }

    /// Opens (creating if needed) a store on any redb storage backend; tests use this to make
    /// storage fail on purpose.
    pub fn open_backend(backend: impl redb::StorageBackend) -> Result<ServerStore, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| StoreError::Database(e.into()))?;
        Self::with_tables(db)
    }

    fn with_tables(db: Database) -> Result<ServerStore, StoreError> {
        let tx = db.begin_write()?;
        for t in [DOCS, VIEWS, INDEX] {
            tx.open_table(t)?;
        }
        tx.open_table(FEED)?;
        tx.open_table(SCOPES)?;
        tx.open_table(RECEIPTS)?;
        for t in [USERS, DEVICES, CODES, SESSIONS, TOKENS] {
            tx.open_table(t)?;
        }
        tx.open_table(PASSWORDS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(ServerStore { db: Arc::new(db) })
    }
}

pub(super) fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn unjson<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn postcard_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn unpostcard<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
