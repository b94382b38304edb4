//! The server's redb store: records and their feed, identities and logins, group commit.
//!
//! One file per domain so each reads on its own and two people can change different domains
//! without meeting: `tables` names every table and the typed values they hold, `records`
//! keeps documents, projections, the feed per scope and receipts, `identity` users, devices,
//! enrollment codes and passwords, `webauth` dashboard sessions and API tokens. Writes of sync rounds go through [`Committer`], one thread
//! that merges every round waiting at that moment into one durable write transaction, so a
//! burst of phones costs one fsync per batch instead of one per phone.

mod committer;
mod identity;
mod records;
mod tables;
mod webauth;

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Key, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use committer::Committer;
pub use identity::{CODE_ID_CHARS, Device, StaffWrite, User, code_id, normalize_code};
pub use records::{Prepared, PreparedRound, Receipt};
pub use webauth::{ApiToken, WebSession};

use tables::{Codec, ReadTyped, Typed, WriteTyped};

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
    /// Stored bytes could not be decoded (or a value could not be encoded), a record lacks its
    /// document or feed entry, or a group commit failed (its message then says why); nothing
    /// of the failed operation was written.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The committer thread is gone (the server is shutting down); the round was not committed.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// An enrollment code is unknown, already used or expired, or the device is already
    /// enrolled; the message is meant for the person enrolling.
    #[error("{0}")]
    BadCode(String),
    /// No code matches, but a live code has the same id (its first
    /// [`CODE_ID_CHARS`] characters): a mistyped or guessed code, counted against
    /// that code. Said to the person as an unknown code, like any other wrong one.
    #[error("unknown enrollment code")]
    WrongCode(String),
    /// A new code would share its id with a live code; the caller draws another.
    #[error("an enrollment code with this id is live already")]
    CodeIdTaken,
    /// No such user or device (the message names which).
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
        tables::create_all(&tx)?;
        tx.commit()?;
        Ok(ServerStore { db: Arc::new(db) })
    }

    /// The value under `key` in `table`, decoded, read in its own transaction.
    fn get<'k, K, T, C>(
        &self,
        table: TableDefinition<K, Typed<T, C>>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<T>, StoreError>
    where
        K: Key + 'static,
        T: DeserializeOwned + 'static,
        C: Codec,
    {
        let tx = self.db.begin_read()?;
        tx.open_table(table)?.get_decoded(key)
    }

    /// Every value of `table`, decoded, in key order.
    fn all<K, T, C>(&self, table: TableDefinition<K, Typed<T, C>>) -> Result<Vec<T>, StoreError>
    where
        K: Key + 'static,
        T: DeserializeOwned + 'static,
        C: Codec,
    {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(table)?;
        table.iter()?.map(|e| e?.1.value().decode()).collect()
    }

    /// Stores `value` under `key` in `table` in its own durable transaction.
    fn put<'k, K, T, C>(
        &self,
        table: TableDefinition<K, Typed<T, C>>,
        key: impl Borrow<K::SelfType<'k>>,
        value: &T,
    ) -> Result<(), StoreError>
    where
        K: Key + 'static,
        T: Serialize + 'static,
        C: Codec,
    {
        let tx = self.db.begin_write()?;
        tx.open_table(table)?.put_encoded(key, value)?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fieldsync_proto::access::Role;
    use fieldsync_proto::model::Kind;
    use uuid::Uuid;

    use super::*;

    /// A data folder written before the tables were typed (every value `&[u8]`, encoded by
    /// hand) opens and reads the same.
    #[test]
    fn a_folder_written_with_byte_tables_opens_and_reads_the_same()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let user = User {
            id: "u1".into(),
            name: "李四".into(),
            role: Role::Volunteer,
            scopes: vec!["team:t1".parse()?],
        };
        let id = Uuid::now_v7();
        let view = serde_json::json!({
            "id": id.to_string(), "kind": "check_in", "scope": "team:t1",
            "fields": {"place": "社区"}, "conflicts": {}
        });
        let entry = records::IndexEntry {
            kind: Kind::CheckIn,
            scope: "team:t1".into(),
            seq: 1,
            heads: vec![[7; 32]],
        };
        {
            let db = Database::create(dir.path().join(DB_FILE))?;
            let tx = db.begin_write()?;
            {
                let by_id = |name| TableDefinition::<u128, &[u8]>::new(name);
                let by_name = |name| TableDefinition::<&str, &[u8]>::new(name);
                tx.open_table(by_id("docs"))?
                    .insert(id.as_u128(), b"automerge".as_slice())?;
                tx.open_table(by_id("views"))?
                    .insert(id.as_u128(), serde_json::to_vec(&view)?.as_slice())?;
                tx.open_table(by_id("index"))?
                    .insert(id.as_u128(), postcard::to_stdvec(&entry)?.as_slice())?;
                tx.open_table(TableDefinition::<(u128, u64), &[u8]>::new("receipts"))?;
                tx.open_table(by_name("users"))?
                    .insert("u1", serde_json::to_vec(&user)?.as_slice())?;
                for name in ["devices", "codes", "sessions", "tokens"] {
                    tx.open_table(by_name(name))?;
                }
            }
            tx.commit()?;
        }
        let store = ServerStore::open(dir.path())?;
        assert_eq!(store.user("u1")?, Some(user));
        let stored = store.stored_record(id)?.ok_or("no record")?;
        assert_eq!(
            (stored.kind, stored.scope.as_str(), stored.bytes.as_slice()),
            (Kind::CheckIn, "team:t1", b"automerge".as_slice())
        );
        let read = store.record_view(id)?.ok_or("no view")?;
        assert_eq!(serde_json::to_value(read)?, view);
        Ok(())
    }
}
