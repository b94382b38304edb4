//! The way out of a refusal: back to the server's version of a refused record, or away with a
//! refused record the server never had.
//!
//! The server refuses a push whole and stores none of it, so its version of a refused record
//! is the one the device last knew it to hold (`SYNCED`: the heads of its last acknowledged
//! push, or of what the last pull brought). Reverting forks the document at those heads, which
//! drops exactly the changes the server refused and keeps everything it has; a record with no
//! such heads never reached the server and is removed. Either way it is one durable write.
//!
//! For this to hold, `SYNCED` must never name a change the server lacks: pulls into a record
//! with local changes (pending or refused) advance it only by what the server sent
//! ([`server_heads_after_pull`]), never to the device's own heads.

use automerge::{AutoCommit, ChangeHash};
use fieldsync_proto::protocol::Hash;
use fieldsync_proto::record::{Record, RecordError, RecordView};
use redb::ReadableTable;
use uuid::Uuid;

use super::{
    DOCS, DeviceStore, HEADS, PENDING, REFUSED, SYNCED, StoreError, VIEWS, decode_hashes,
    put_record,
};

/// What [`DeviceStore::revert`] did with a refused record.
#[derive(Clone, Debug, PartialEq)]
pub enum Reverted {
    /// The record is back at the version the server holds; the refused local changes are gone.
    ToServer(RecordView),
    /// The server never had the record; it is gone from this device.
    Dropped,
}

impl DeviceStore {
    /// Takes back what the server refused of record `id`, as one durable write: back to the
    /// server's version if the server has the record, else the record is dropped.
    ///
    /// Only a refused record can be reverted: any other is [`StoreError::NotRefused`] (an
    /// unsynced edit is not lost by mistake), an unknown id [`StoreError::NotFound`].
    pub fn revert(&self, id: Uuid) -> Result<Reverted, StoreError> {
        let key = id.as_u128();
        let tx = self.db.begin_write()?;
        let done = (|| {
            if tx.open_table(REFUSED)?.get(key)?.is_none() {
                if tx.open_table(DOCS)?.get(key)?.is_none() {
                    return Err(StoreError::NotFound(id));
                }
                let pending = tx.open_table(PENDING)?.get(key)?.is_some();
                return Err(StoreError::NotRefused { id, pending });
            }
            let server = tx
                .open_table(SYNCED)?
                .get(key)?
                .map(|v| decode_hashes(v.value()))
                .transpose()?
                .filter(|heads| !heads.is_empty());
            let outcome = match server {
                Some(heads) => {
                    let bytes = tx
                        .open_table(DOCS)?
                        .get(key)?
                        .ok_or(StoreError::NotFound(id))?
                        .value()
                        .to_vec();
                    let mut record = server_version(id, &bytes, &heads)?;
                    let view = record.view()?;
                    let saved = record.save();
                    put_record(&tx, &mut record, &view, &saved)?;
                    Reverted::ToServer(view)
                }
                None => {
                    for table in [DOCS, VIEWS, HEADS] {
                        tx.open_table(table)?.remove(key)?;
                    }
                    Reverted::Dropped
                }
            };
            tx.open_table(REFUSED)?.remove(key)?;
            tx.open_table(PENDING)?.remove(key)?;
            Ok(outcome)
        })();
        match done {
            Ok(outcome) => {
                tx.commit()?;
                Ok(outcome)
            }
            Err(e) => {
                tx.abort()?;
                Err(e)
            }
        }
    }
}

/// The record as the server holds it: the local document cut back to the server's heads.
fn server_version(id: Uuid, bytes: &[u8], heads: &[Hash]) -> Result<Record, StoreError> {
    let mut doc = AutoCommit::load(bytes).map_err(RecordError::from)?;
    let heads: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
    let fork = doc.fork_at(&heads).map_err(|e| {
        StoreError::Corrupt(format!(
            "record {id}: the server's version is not in the local document: {e}"
        ))
    })?;
    Ok(Record::from_doc(id, fork)?)
}

/// What the server holds of a record with local changes after a pull brought `added` (the
/// changes new to the device): the version at `known` (what it held before) plus those.
///
/// The device's own heads would claim its unacknowledged or refused changes too, and a revert
/// would then keep exactly what it is meant to drop.
pub(super) fn server_heads_after_pull(
    doc: &mut AutoCommit,
    known: &[Hash],
    added: &[ChangeHash],
) -> Result<Vec<Hash>, StoreError> {
    let mut heads: Vec<ChangeHash> = known
        .iter()
        .map(|h| ChangeHash(*h))
        .filter(|h| doc.get_change_by_hash(h).is_some())
        .collect();
    heads.extend_from_slice(added);
    let mut version = doc
        .fork_at(&heads)
        .map_err(|e| StoreError::Corrupt(format!("the server's version: {e}")))?;
    Ok(version.get_heads().iter().map(|h| h.0).collect())
}
