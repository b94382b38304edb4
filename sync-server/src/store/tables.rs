//! Every redb table of the server store, in one place, with the typed values they hold.
//!
//! One list makes it plain what a data folder holds and lets `ServerStore::open` create each
//! table up front ([`create_all`]), so readers never meet a missing table. Values are typed ([`Json`],
//! [`Postcard`]) so a table says what it holds and no caller decodes bytes by hand; a value
//! that fails to decode is a [`StoreError::Corrupt`], never a panic.
//!
//! # Why the typed values keep the type name `&[u8]`
//!
//! redb stores each table's key and value type names in the file and, on `open_table`, refuses
//! a table whose stored names differ from the definition's (`TableError::TableTypeMismatch`;
//! see `check_match` in redb's `tree_store/table_tree_base.rs`: it compares classification and
//! name, and only composite types get a legacy spelling). Every data folder so far was written
//! with `&[u8]` values, so a new name such as `fieldsync::Json<User>` would make every existing
//! folder fail to open. The bytes are the very same (the JSON or postcard that was written by
//! hand before), so [`Typed`] reports `<&[u8] as Value>::type_name()` and existing files open
//! and read as before.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::marker::PhantomData;

use fieldsync_proto::record::RecordView;
use redb::{
    Key, ReadableTable, Table, TableDefinition, TableError, TypeName, Value, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use super::identity::{Code, Device, User};
use super::records::{BatchRecord, IndexEntry, Receipt};
use super::webauth::{ApiToken, WebSession};

/// Automerge bytes of each record: a saved document and/or appended change chunks.
pub(super) const DOCS: TableDefinition<u128, &[u8]> = TableDefinition::new("docs");
/// Projection of each record (fields and conflicts), for lists and exports.
pub(super) const VIEWS: TableDefinition<u128, Json<RecordView>> = TableDefinition::new("views");
/// Each record's fixed kind and scope, its feed position and heads.
pub(super) const INDEX: TableDefinition<u128, Postcard<IndexEntry>> = TableDefinition::new("index");
/// The change feed: (scope, seq) → record; each record appears once, at its latest seq.
pub(super) const FEED: TableDefinition<(&str, u64), u128> = TableDefinition::new("feed");
/// Every scope with its latest seq.
pub(super) const SCOPES: TableDefinition<&str, u64> = TableDefinition::new("scopes");
/// (record, seq) → who pushed which changes when.
pub(super) const RECEIPTS: TableDefinition<(u128, u64), Json<Receipt>> =
    TableDefinition::new("receipts");
/// Users by id.
pub(super) const USERS: TableDefinition<&str, Json<User>> = TableDefinition::new("users");
/// Devices by device id.
pub(super) const DEVICES: TableDefinition<&str, Json<Device>> = TableDefinition::new("devices");
/// One-time enrollment codes by the code.
pub(super) const CODES: TableDefinition<&str, Json<Code>> = TableDefinition::new("codes");
/// Office and admin password hashes (PHC strings) by user id.
pub(super) const PASSWORDS: TableDefinition<&str, &str> = TableDefinition::new("passwords");
/// Dashboard login sessions by the SHA-256 (hex) of their cookie secret.
pub(super) const SESSIONS: TableDefinition<&str, Json<WebSession>> =
    TableDefinition::new("sessions");
/// API tokens by the SHA-256 (hex) of the token.
pub(super) const TOKENS: TableDefinition<&str, Json<ApiToken>> = TableDefinition::new("tokens");
/// The last batch each device committed, by device id, with its outcomes: a batch sent again
/// after its reply was lost is answered from here without merging again.
pub(super) const BATCHES: TableDefinition<&str, Postcard<BatchRecord>> =
    TableDefinition::new("batches");
/// Records whose latest change is a push that left its device holding the whole document:
/// record → that device's id. The feed leaves these out for that device.
pub(super) const WRITERS: TableDefinition<u128, &str> = TableDefinition::new("writers");
/// Counters.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The key in [`META`] of the last feed seq handed out, across all scopes.
pub(super) const META_SEQ: &str = "last_seq";

/// Creates every table that does not exist yet, so readers never meet a missing one.
pub(super) fn create_all(tx: &WriteTransaction) -> Result<(), TableError> {
    macro_rules! create {
        ($($table:ident),+) => {$( tx.open_table($table)?; )+};
    }
    create!(
        DOCS, VIEWS, INDEX, FEED, SCOPES, RECEIPTS, USERS, DEVICES, CODES, PASSWORDS, SESSIONS,
        TOKENS, META, BATCHES, WRITERS
    );
    Ok(())
}

/// How a [`Typed`] value turns into bytes and back.
pub(super) trait Codec: 'static {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String>;
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String>;
}

/// Declares a [`Codec`] over a serde format's pair of functions to and from bytes.
macro_rules! codec {
    ($(#[$doc:meta])* $name:ident: $encode:path, $decode:path) => {
        $(#[$doc])*
        pub(super) enum $name {}

        impl Codec for $name {
            fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
                $encode(value).map_err(|e| e.to_string())
            }

            fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
                $decode(bytes).map_err(|e| e.to_string())
            }
        }
    };
}

codec!(
    /// `serde_json` bytes, readable with any JSON tool.
    JsonCodec: serde_json::to_vec, serde_json::from_slice
);
codec!(
    /// `postcard` bytes, compact for what every sync round reads.
    PostcardCodec: postcard::to_stdvec, postcard::from_bytes
);

/// A redb value type holding a `T` encoded by `C`; the type name is that of `&[u8]` (see the
/// module docs).
pub(super) struct Typed<T, C>(PhantomData<fn() -> (T, C)>);

/// A value stored as JSON.
pub(super) type Json<T> = Typed<T, JsonCodec>;
/// A value stored as postcard.
pub(super) type Postcard<T> = Typed<T, PostcardCodec>;

impl<T, C> fmt::Debug for Typed<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Typed<{}>", std::any::type_name::<T>())
    }
}

/// The bytes of one stored `T`, decoded on demand by [`Encoded::decode`].
///
/// redb's `Value::from_bytes` cannot fail, so decoding waits for the one call that can report
/// it; a presence check (`get(..)?.is_some()`) does not decode at all.
pub(super) struct Encoded<'a, T, C> {
    bytes: Cow<'a, [u8]>,
    _type: PhantomData<fn() -> (T, C)>,
}

impl<T: Serialize, C: Codec> Encoded<'static, T, C> {
    /// Encodes a value for an insert.
    pub(super) fn encode(value: &T) -> Result<Self, StoreError> {
        let bytes = C::encode(value).map_err(StoreError::Corrupt)?;
        Ok(Encoded {
            bytes: Cow::Owned(bytes),
            _type: PhantomData,
        })
    }
}

impl<T: DeserializeOwned, C: Codec> Encoded<'_, T, C> {
    /// The stored value, or [`StoreError::Corrupt`] if its bytes do not decode.
    pub(super) fn decode(&self) -> Result<T, StoreError> {
        C::decode(&self.bytes).map_err(StoreError::Corrupt)
    }
}

impl<T, C> fmt::Debug for Encoded<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Encoded<{}>({} bytes)",
            std::any::type_name::<T>(),
            self.bytes.len()
        )
    }
}

impl<T: 'static, C: Codec> Value for Typed<T, C> {
    type SelfType<'a>
        = Encoded<'a, T, C>
    where
        Self: 'a;
    type AsBytes<'a>
        = &'a [u8]
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> Encoded<'a, T, C>
    where
        Self: 'a,
    {
        Encoded {
            bytes: Cow::Borrowed(data),
            _type: PhantomData,
        }
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a Encoded<'b, T, C>) -> &'a [u8]
    where
        Self: 'b,
    {
        &value.bytes
    }

    fn type_name() -> TypeName {
        <&[u8] as Value>::type_name()
    }
}

/// Reading a decoded value by key from any typed table, in any transaction.
pub(super) trait ReadTyped<K: Key + 'static, T, C> {
    /// The value under `key`, decoded; None if there is none.
    fn get_decoded<'k>(&self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<T>, StoreError>;
}

impl<K, T, C, R> ReadTyped<K, T, C> for R
where
    K: Key + 'static,
    T: DeserializeOwned + 'static,
    C: Codec,
    R: ReadableTable<K, Typed<T, C>>,
{
    fn get_decoded<'k>(&self, key: impl Borrow<K::SelfType<'k>>) -> Result<Option<T>, StoreError> {
        self.get(key)?.map(|v| v.value().decode()).transpose()
    }
}

/// Writing an encoded value by key into a typed table of a write transaction.
pub(super) trait WriteTyped<K: Key + 'static, T> {
    /// Encodes `value` and stores it under `key`, replacing what was there.
    fn put_encoded<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: &T,
    ) -> Result<(), StoreError>;
}

impl<K, T, C> WriteTyped<K, T> for Table<'_, K, Typed<T, C>>
where
    K: Key + 'static,
    T: Serialize + 'static,
    C: Codec,
{
    fn put_encoded<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: &T,
    ) -> Result<(), StoreError> {
        self.insert(key, Encoded::<T, C>::encode(value)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase};
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Probe {
        name: String,
        n: u32,
    }

    const RAW: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
    const AS_JSON: TableDefinition<&str, Json<Probe>> = TableDefinition::new("probe");
    const AS_POSTCARD: TableDefinition<&str, Postcard<Probe>> = TableDefinition::new("probe");

    fn probe() -> Probe {
        Probe {
            name: "村".into(),
            n: 7,
        }
    }

    /// A file written with `&[u8]` values opens with the typed definition and reads the same.
    #[test]
    fn typed_tables_open_files_written_as_bytes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("probe.redb");
        {
            let db = Database::create(&path)?;
            let tx = db.begin_write()?;
            {
                let mut raw = tx.open_table(RAW)?;
                raw.insert("json", serde_json::to_vec(&probe())?.as_slice())?;
                raw.insert("bad", b"{not json".as_slice())?;
            }
            tx.commit()?;
        }
        let db = Database::create(&path)?;
        let tx = db.begin_read()?;
        let table = tx.open_table(AS_JSON)?;
        assert_eq!(table.get_decoded("json")?, Some(probe()));
        assert_eq!(table.get_decoded("missing")?, None);
        assert!(matches!(
            table.get_decoded("bad"),
            Err(StoreError::Corrupt(_))
        ));
        Ok(())
    }

    /// The typed wrappers write exactly the bytes the hand-written encoding did.
    #[test]
    fn typed_values_keep_the_byte_encoding() -> Result<(), Box<dyn std::error::Error>> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        let tx = db.begin_write()?;
        tx.open_table(AS_JSON)?.put_encoded("a", &probe())?;
        tx.commit()?;
        let tx = db.begin_read()?;
        let raw = tx.open_table(RAW)?;
        let bytes = raw.get("a")?.map(|v| v.value().to_vec());
        assert_eq!(bytes, Some(serde_json::to_vec(&probe())?));
        drop(raw);
        drop(tx);

        let tx = db.begin_write()?;
        tx.open_table(AS_POSTCARD)?.put_encoded("a", &probe())?;
        tx.commit()?;
        let tx = db.begin_read()?;
        let bytes = tx.open_table(RAW)?.get("a")?.map(|v| v.value().to_vec());
        assert_eq!(bytes, Some(postcard::to_stdvec(&probe())?));
        assert_eq!(tx.open_table(AS_POSTCARD)?.get_decoded("a")?, Some(probe()));
        Ok(())
    }
}
