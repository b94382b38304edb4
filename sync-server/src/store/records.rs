//! Records, their projections, the change feed per scope and the receipt log.
//!
//! A sync round reads here twice: `prepare` merges pushes against a read snapshot on the
//! connection's own task (so merges use every core), and `commit_rounds` writes what the
//! committer gathered in one durable transaction, merging again only where another round
//! wrote the same record first. The feed keeps each record once, at its latest seq, so no
//! cursor can skip a change.

use std::collections::BTreeMap;

use fieldsync_proto::Scope;
use fieldsync_proto::access::DeviceCtx;
use fieldsync_proto::model::Kind;
use fieldsync_proto::protocol::{
    Changed, Changes, Cursor, DocData, Hash, Limits, Outcome, PushDoc, PushResult, Want,
};
use fieldsync_proto::record::RecordView;
use fieldsync_proto::sync::{self, MergeError, StoredDoc};
use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tables::*;
use super::{Device, ServerStore, StoreError};

/// What the store knows of a record without loading its document: its fixed kind and scope,
/// its current position in the scope's feed and its heads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct IndexEntry {
    pub(super) kind: Kind,
    pub(super) scope: String,
    pub(super) seq: u64,
    pub(super) heads: Vec<Hash>,
}

/// A device's last committed batch and its outcomes, kept to answer it again without
/// merging when its reply was lost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct BatchRecord {
    pub(super) id: u64,
    pub(super) outcomes: Vec<PushResult>,
}

/// A round as the committer hands it over: whose, which batch, and its merged pushes. A
/// round with no batch and no pushes only records that the device synced.
pub struct PreparedRound {
    /// The device.
    pub ctx: DeviceCtx,
    /// The batch's id, recorded with its outcomes in the same transaction.
    pub batch: Option<u64>,
    /// The merged pushes.
    pub push: Vec<Prepared>,
}

/// Who delivered which changes of a record, and when the server received them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub device_id: String,
    pub user_id: String,
    /// Unix milliseconds of the commit.
    pub received_at: i64,
    /// Hex hashes of the changes this push added.
    pub changes: Vec<String>,
}

impl ServerStore {
    /// A record's stored Automerge document, for history and office changes.
    pub fn stored_record(&self, id: Uuid) -> Result<Option<StoredDoc>, StoreError> {
        let tx = self.db.begin_read()?;
        let index = tx.open_table(INDEX)?;
        let docs = tx.open_table(DOCS)?;
        Ok(load_stored(&index, &docs, id.as_u128())?.map(|(_, stored)| stored))
    }

    /// One record's projection.
    pub fn record_view(&self, id: Uuid) -> Result<Option<RecordView>, StoreError> {
        self.get(VIEWS, id.as_u128())
    }

    /// Projections of every record, optionally filtered, in id (creation) order.
    pub fn records(
        &self,
        kind: Option<Kind>,
        scope: Option<&str>,
    ) -> Result<Vec<RecordView>, StoreError> {
        let mut out = Vec::new();
        self.for_each_record(kind, scope, |v| {
            out.push(v);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams projections without loading any Automerge document.
    pub fn for_each_record(
        &self,
        kind: Option<Kind>,
        scope: Option<&str>,
        mut f: impl FnMut(RecordView) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let views = tx.open_table(VIEWS)?;
        for entry in views.iter()? {
            let view = entry?.1.value().decode()?;
            if kind.is_some_and(|k| k != view.kind) || scope.is_some_and(|s| s != view.scope) {
                continue;
            }
            f(view)?;
        }
        Ok(())
    }

    /// Receipts of a record, oldest first.
    pub fn receipts(&self, id: Uuid) -> Result<Vec<Receipt>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RECEIPTS)?;
        let key = id.as_u128();
        table
            .range((key, 0)..=(key, u64::MAX))?
            .map(|e| e?.1.value().decode())
            .collect()
    }

    /// The outcomes of the device's batch `batch` if it is the last one the device committed.
    pub fn recorded_batch(
        &self,
        device_id: &str,
        batch: u64,
    ) -> Result<Option<Vec<PushResult>>, StoreError> {
        let record: Option<BatchRecord> = self.get(BATCHES, device_id)?;
        Ok(record.filter(|r| r.id == batch).map(|r| r.outcomes))
    }

    /// Merges pushes against a read snapshot. This runs on the connection's own blocking task,
    /// so the merges of concurrent rounds use every core; the commit thread only writes.
    ///
    /// A record whose stored entry is damaged is a [`MergeError::Fault`] of that record alone
    /// (deferred; the others of the batch go on); a database that cannot be read fails the
    /// whole call.
    pub fn prepare(
        &self,
        ctx: &DeviceCtx,
        push: Vec<PushDoc>,
        limits: &Limits,
    ) -> Result<Vec<Prepared>, StoreError> {
        let tx = self.db.begin_read()?;
        let index = tx.open_table(INDEX)?;
        let docs = tx.open_table(DOCS)?;
        push.into_iter()
            .map(|push| {
                let key = Uuid::from_bytes(push.id).as_u128();
                let (base, merged) = match record_fault(load_stored(&index, &docs, key))? {
                    Ok(Some((entry, stored))) => (
                        Some(entry.seq),
                        sync::merge_push(Some(&stored), &push, ctx, limits),
                    ),
                    Ok(None) => (None, sync::merge_push(None, &push, ctx, limits)),
                    // Looked at again at commit time (no entry has this base), where it is
                    // deferred unless the entry was mended meanwhile.
                    Err(fault) => (Some(UNREAD), Err(fault)),
                };
                Ok(Prepared { push, base, merged })
            })
            .collect()
    }

    /// Commits the prepared pushes of several rounds in one durable transaction.
    ///
    /// A document whose stored version changed since it was prepared (another round wrote it
    /// first) is merged again here against the current version. Each round gets one outcome
    /// per pushed document; a refused document writes nothing, the others of the round land.
    pub fn commit_rounds(
        &self,
        rounds: Vec<PreparedRound>,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<Vec<Vec<PushResult>>, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Database(e.into()))?;
        let all = {
            let mut writer = RoundWriter::open(&tx, limits, now_ms)?;
            let all = rounds
                .into_iter()
                .map(|round| writer.round(round))
                .collect::<Result<Vec<_>, _>>()?;
            writer.finish()?;
            all
        };
        tx.commit()?;
        Ok(all)
    }

    /// What changed in the scopes `ctx` may read since `cursors`, at most `limit` documents.
    ///
    /// Documents of fresh scopes (in `fresh`, or without a cursor) come whole until `budget`
    /// bytes are reached; the others are listed with their heads. A document whose latest
    /// change is this device's own push that left it holding everything is left out (the
    /// cursor still moves past it).
    pub fn changes_since(
        &self,
        ctx: &DeviceCtx,
        cursors: &[Cursor],
        fresh: &[String],
        limit: usize,
        budget: usize,
    ) -> Result<Changes, StoreError> {
        let tx = self.db.begin_read()?;
        let feed = tx.open_table(FEED)?;
        let index = tx.open_table(INDEX)?;
        let docs = tx.open_table(DOCS)?;
        let writers = tx.open_table(WRITERS)?;
        let scopes: Vec<String> = if ctx.role.reads_everything() {
            let table = tx.open_table(SCOPES)?;
            table
                .iter()?
                .map(|e| e.map(|(k, _)| k.value().to_string()))
                .collect::<Result<_, _>>()?
        } else {
            ctx.scopes.iter().map(Scope::to_string).collect()
        };
        let mut out = Changes::default();
        let mut bytes = 0;
        for scope in scopes {
            let cursor = cursors.iter().find(|c| c.scope == scope);
            let whole = cursor.is_none() || fresh.contains(&scope);
            let from = cursor.map_or(0, |c| c.seq);
            let mut last = from;
            for entry in
                feed.range((scope.as_str(), from.saturating_add(1))..=(scope.as_str(), u64::MAX))?
            {
                if out.changed.len() + out.docs.len() >= limit || bytes >= budget {
                    out.more = true;
                    break;
                }
                let (k, v) = entry?;
                let key = v.value();
                last = k.value().1;
                if writers
                    .get(key)?
                    .is_some_and(|w| w.value() == ctx.device_id)
                {
                    continue;
                }
                let Some(e) = index.get_decoded(key)? else {
                    return Err(StoreError::Corrupt("feed entry without index".into()));
                };
                let id = *Uuid::from_u128(key).as_bytes();
                if whole {
                    let Some(doc) = docs.get(key)? else {
                        return Err(StoreError::Corrupt(format!(
                            "record {} has no document",
                            Uuid::from_u128(key)
                        )));
                    };
                    let doc = doc.value().to_vec();
                    bytes += doc.len();
                    out.docs.push(DocData {
                        id,
                        kind: e.kind,
                        scope: e.scope,
                        bytes: doc,
                    });
                } else {
                    out.changed.push(Changed {
                        id,
                        kind: e.kind,
                        scope: e.scope,
                        heads: e.heads,
                    });
                }
            }
            out.cursors.push(Cursor { scope, seq: last });
            if out.more {
                break;
            }
        }
        Ok(out)
    }

    /// The changes of each wanted record that the device lacks; records it may not read are
    /// left out.
    pub fn fetch(
        &self,
        ctx: &DeviceCtx,
        want: &[Want],
        budget: usize,
    ) -> Result<(Vec<DocData>, usize), StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let index = tx.open_table(INDEX)?;
        let mut out = Vec::with_capacity(want.len());
        let mut size = 0;
        for (i, w) in want.iter().enumerate() {
            if size >= budget && !out.is_empty() {
                return Ok((out, want.len() - i));
            }
            let key = Uuid::from_bytes(w.id).as_u128();
            let Some(entry) = index.get_decoded(key)? else {
                continue;
            };
            if !ctx.may_read(&entry.scope) {
                continue;
            }
            let Some(bytes) = docs.get(key)?.map(|v| v.value().to_vec()) else {
                continue;
            };
            let stored = StoredDoc {
                kind: entry.kind,
                scope: entry.scope,
                bytes,
            };
            let bytes = sync::changes_for(&stored, &w.have).map_err(StoreError::Corrupt)?;
            size += bytes.len();
            out.push(DocData {
                id: w.id,
                kind: stored.kind,
                scope: stored.scope,
                bytes,
            });
        }
        Ok((out, 0))
    }
}

/// The `base` of a push whose stored entry could not be read at prepare time: no entry has
/// it, so the commit reads the record again.
const UNREAD: u64 = u64::MAX;

/// A pushed document merged against the stored version with feed position `base`.
pub struct Prepared {
    push: PushDoc,
    base: Option<u64>,
    merged: Result<sync::Merged, MergeError>,
}

/// The tables one group commit writes, open in its write transaction, and the feed positions
/// it has handed out so far.
struct RoundWriter<'tx, 'a> {
    docs: Table<'tx, u128, &'static [u8]>,
    views: Table<'tx, u128, Json<RecordView>>,
    index: Table<'tx, u128, Postcard<IndexEntry>>,
    feed: Table<'tx, (&'static str, u64), u128>,
    scopes: Table<'tx, &'static str, u64>,
    receipts: Table<'tx, (u128, u64), Json<Receipt>>,
    meta: Table<'tx, &'static str, u64>,
    devices: Table<'tx, &'static str, Json<Device>>,
    batches: Table<'tx, &'static str, Postcard<BatchRecord>>,
    writers: Table<'tx, u128, &'static str>,
    limits: &'a Limits,
    /// Unix milliseconds the whole commit is stamped with.
    now_ms: i64,
    /// The last seq handed out, across all scopes.
    seq: u64,
    /// The last seq this commit wrote in each scope.
    scope_seqs: BTreeMap<String, u64>,
}

impl<'tx, 'a> RoundWriter<'tx, 'a> {
    fn open(
        tx: &'tx WriteTransaction,
        limits: &'a Limits,
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let meta = tx.open_table(META)?;
        let seq = meta.get(META_SEQ)?.map(|v| v.value()).unwrap_or(0);
        Ok(RoundWriter {
            docs: tx.open_table(DOCS)?,
            views: tx.open_table(VIEWS)?,
            index: tx.open_table(INDEX)?,
            feed: tx.open_table(FEED)?,
            scopes: tx.open_table(SCOPES)?,
            receipts: tx.open_table(RECEIPTS)?,
            meta,
            devices: tx.open_table(DEVICES)?,
            batches: tx.open_table(BATCHES)?,
            writers: tx.open_table(WRITERS)?,
            limits,
            now_ms,
            seq,
            scope_seqs: BTreeMap::new(),
        })
    }

    /// Writes one round's pushes, one result per push, records its batch and stamps its
    /// device.
    fn round(&mut self, round: PreparedRound) -> Result<Vec<PushResult>, StoreError> {
        let PreparedRound { ctx, batch, push } = round;
        let results = push
            .into_iter()
            .map(|p| self.push(&ctx, p))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(id) = batch {
            let record = BatchRecord {
                id,
                outcomes: results.clone(),
            };
            self.batches.put_encoded(ctx.device_id.as_str(), &record)?;
        }
        self.stamp_last_sync(&ctx.device_id)?;
        Ok(results)
    }

    /// One pushed document: merged again if another round wrote it since it was prepared,
    /// then written unless refused.
    fn push(
        &mut self,
        ctx: &DeviceCtx,
        Prepared { push, base, merged }: Prepared,
    ) -> Result<PushResult, StoreError> {
        let key = Uuid::from_bytes(push.id).as_u128();
        let (entry, merged) = match record_fault(self.index.get_decoded(key))? {
            Ok(entry) if entry.as_ref().map(|e| e.seq) == base => (entry, merged),
            Ok(entry) => {
                let merged = match record_fault(load_stored(&self.index, &self.docs, key))? {
                    Ok(stored) => {
                        let stored = stored.map(|(_, stored)| stored);
                        sync::merge_push(stored.as_ref(), &push, ctx, self.limits)
                    }
                    Err(fault) => Err(fault),
                };
                (entry, merged)
            }
            Err(fault) => (None, Err(fault)),
        };
        let outcome = match merged {
            Err(e) => {
                if let MergeError::Fault(reason) = &e {
                    tracing::error!(device = %ctx.device_id, record = %Uuid::from_u128(key), %reason, "record deferred: the server's copy is in trouble");
                }
                e.outcome()
            }
            Ok(merged) => {
                self.write_merged(ctx, &push, entry.as_ref(), &merged)?;
                Outcome::Accepted {
                    heads: merged.heads,
                }
            }
        };
        Ok(PushResult {
            id: push.id,
            outcome,
        })
    }

    /// Writes one merged document under the next seq: moves it to the end of its scope's feed
    /// and stores its document, view, index entry and receipt. A merge that brought nothing
    /// new writes nothing.
    fn write_merged(
        &mut self,
        ctx: &DeviceCtx,
        push: &PushDoc,
        old: Option<&IndexEntry>,
        merged: &sync::Merged,
    ) -> Result<(), StoreError> {
        let Some(bytes) = &merged.bytes else {
            return Ok(());
        };
        let key = Uuid::from_bytes(push.id).as_u128();
        self.seq += 1;
        let seq = self.seq;
        if let Some(old) = old {
            self.feed.remove((old.scope.as_str(), old.seq))?;
        }
        self.feed.insert((push.scope.as_str(), seq), key)?;
        self.scope_seqs.insert(push.scope.clone(), seq);
        self.docs.insert(key, bytes.as_slice())?;
        self.views.put_encoded(key, &merged.view)?;
        let entry = IndexEntry {
            kind: push.kind,
            scope: push.scope.clone(),
            seq,
            heads: merged.heads.clone(),
        };
        self.index.put_encoded(key, &entry)?;
        if merged.pusher_has_all {
            self.writers.insert(key, ctx.device_id.as_str())?;
        } else {
            self.writers.remove(key)?;
        }
        let receipt = Receipt {
            device_id: ctx.device_id.clone(),
            user_id: ctx.user_id.clone(),
            received_at: self.now_ms,
            changes: merged.added.iter().map(hex::encode).collect(),
        };
        self.receipts.put_encoded((key, seq), &receipt)
    }

    /// Records on the device (if it is enrolled) that it synced now.
    fn stamp_last_sync(&mut self, device_id: &str) -> Result<(), StoreError> {
        if let Some(mut device) = self.devices.get_decoded(device_id)? {
            device.last_sync = Some(self.now_ms / 1000);
            self.devices.put_encoded(device_id, &device)?;
        }
        Ok(())
    }

    /// Stores each written scope's last seq and the overall last seq.
    fn finish(mut self) -> Result<(), StoreError> {
        for (scope, last) in &self.scope_seqs {
            self.scopes.insert(scope.as_str(), *last)?;
        }
        self.meta.insert(META_SEQ, self.seq)?;
        Ok(())
    }
}

/// A damaged entry of one record (undecodable index entry, no document) as that record's
/// fault; any other storage error stays the caller's error.
fn record_fault<T>(loaded: Result<T, StoreError>) -> Result<Result<T, MergeError>, StoreError> {
    match loaded {
        Ok(found) => Ok(Ok(found)),
        Err(StoreError::Corrupt(reason)) => Ok(Err(MergeError::Fault(format!(
            "the server's copy is damaged: {reason}"
        )))),
        Err(other) => Err(other),
    }
}

/// A record's index entry and stored document; None for a record the server does not have.
/// An indexed record without a document is corrupt.
fn load_stored(
    index: &impl ReadableTable<u128, Postcard<IndexEntry>>,
    docs: &impl ReadableTable<u128, &'static [u8]>,
    key: u128,
) -> Result<Option<(IndexEntry, StoredDoc)>, StoreError> {
    let Some(entry) = index.get_decoded(key)? else {
        return Ok(None);
    };
    let bytes = docs.get(key)?.map(|v| v.value().to_vec()).ok_or_else(|| {
        StoreError::Corrupt(format!("record {} has no document", Uuid::from_u128(key)))
    })?;
    let stored = StoredDoc {
        kind: entry.kind,
        scope: entry.scope.clone(),
        bytes,
    };
    Ok(Some((entry, stored)))
}
