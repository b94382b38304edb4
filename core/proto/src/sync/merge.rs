//! The server's merge rule: a device's push merged into the stored document, or refused whole,
//! or put off when the server's own copy is in trouble ([`MergeError`]).
//!
//! The same function serves the redb server, the PostgreSQL-ready store interface and the
//! in-process harness, so every backend refuses exactly the same pushes for the same reasons.

use automerge::{AutoCommit, ChangeHash, ReadDoc};
use uuid::Uuid;

use crate::access::{self, DeviceCtx};
use crate::model::Kind;
use crate::protocol::{Hash, Limits, Outcome, PushDoc, split_changes};
use crate::record::{Record, RecordError, RecordView};

/// Stored bytes of a document larger than this are compacted (saved whole) on the next merge;
/// below it, new changes are appended as chunks, which is far cheaper than a full save.
pub const COMPACT_AFTER_BYTES: usize = 16 * 1024;

/// A document as the server stores it: its fixed kind and scope, and its Automerge bytes.
#[derive(Clone, Debug)]
pub struct StoredDoc {
    /// The record's kind, fixed at creation.
    pub kind: Kind,
    /// The record's scope, fixed at creation.
    pub scope: String,
    /// Automerge bytes: a saved document and/or appended change chunks.
    pub bytes: Vec<u8>,
}

/// The result of merging one push into the server's copy.
#[derive(Debug)]
pub struct Merged {
    /// The document's new stored bytes, or None when the push brought nothing new.
    pub bytes: Option<Vec<u8>>,
    /// The record's projection after the merge.
    pub view: RecordView,
    /// The document's heads after the merge.
    pub heads: Vec<Hash>,
    /// Hashes of the changes this push added.
    pub added: Vec<Hash>,
    /// Every head after the merge is a change this push brought: the pushing device holds
    /// the whole document, so listing it back to that device would only cost bytes.
    pub pusher_has_all: bool,
}

/// Why a push was not merged, by whose trouble it is.
///
/// The line between the two: a push is [`MergeError::Refused`] when it breaks a rule the
/// person or their phone can be told about (bad scope, a changed kind or scope, a change signed
/// by another device, the schema, the write rules, a limit, change bytes that do not parse).
/// It is a [`MergeError::Fault`] when the server cannot do its part: its stored copy does not
/// load or read, or the changes (already parsed, checked and signed by this device) do not
/// apply to that copy or need history it lacks. An edit on the phone would mend none of
/// those, so refusing would strand the record; deferred, it stays pending and is pushed again
/// next round, and the operator sees the fault in the log and in `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The push breaks a rule; nothing is stored and the device marks the record refused
    /// with this reason until it is edited.
    #[error("{0}")]
    Refused(String),
    /// The server's own trouble with this document; nothing is stored and the device keeps
    /// the record pending.
    #[error("{0}")]
    Fault(String),
}

impl MergeError {
    /// The per-record outcome this error is answered with.
    pub fn outcome(self) -> Outcome {
        match self {
            MergeError::Refused(reason) => Outcome::Refused { reason },
            MergeError::Fault(reason) => Outcome::Deferred { reason },
        }
    }
}

fn refused(reason: impl ToString) -> MergeError {
    MergeError::Refused(reason.to_string())
}

/// A record error on the merged document: bad values are the push's (the stored copy read
/// fine before it); Automerge failing to read a document it accepted is the server's trouble.
fn merged_record_error(e: RecordError) -> MergeError {
    match e {
        RecordError::Automerge(_) => MergeError::Fault(format!("the merged document: {e}")),
        RecordError::Invalid(_) | RecordError::UnknownField { .. } => refused(e),
    }
}

/// Merges a device's push into the server's copy of the document, or says why not.
///
/// Nothing changes on error: the caller stores `Merged::bytes` only on success.
pub fn merge_push(
    existing: Option<&StoredDoc>,
    push: &PushDoc,
    ctx: &DeviceCtx,
    limits: &Limits,
) -> Result<Merged, MergeError> {
    let changes = split_changes(&push.changes, limits).map_err(refused)?;
    crate::model::check_scope(push.kind, &push.scope).map_err(refused)?;
    let id = Uuid::from_bytes(push.id);
    let (mut doc, before) = match existing {
        Some(stored) => {
            if stored.kind != push.kind || stored.scope != push.scope {
                return Err(refused(format!(
                    "record {id} is a {} in `{}`; its kind and scope are fixed",
                    stored.kind, stored.scope
                )));
            }
            let fault = |e: RecordError| {
                MergeError::Fault(format!(
                    "the server's copy of record {id} is unreadable: {e}"
                ))
            };
            let record = Record::load(id, &stored.bytes).map_err(fault)?;
            let values = record.values().map_err(fault)?;
            (record.into_doc(), Some(values))
        }
        None => (AutoCommit::new(), None),
    };
    let new: Vec<automerge::Change> = changes
        .into_iter()
        .filter(|c| doc.get_change_by_hash(&c.hash()).is_none())
        .collect();
    for change in &new {
        if change.actor_id().to_bytes() != ctx.actor.as_slice() {
            return Err(refused(format!(
                "a change is signed by actor {}, not by this device; refused",
                change.actor_id().to_hex_string()
            )));
        }
    }
    let added: Vec<Hash> = new.iter().map(|c| c.hash().0).collect();
    let mut new_bytes = Vec::new();
    for change in &new {
        new_bytes.extend_from_slice(change.raw_bytes());
    }
    if !new.is_empty() {
        doc.apply_changes(new).map_err(|e| {
            MergeError::Fault(format!(
                "the changes to record {id} do not apply to the server's copy: {e}"
            ))
        })?;
        if !doc.get_missing_deps(&[]).is_empty() {
            return Err(MergeError::Fault(format!(
                "the changes to record {id} depend on changes the server does not have"
            )));
        }
    }
    let mut record = Record::from_doc(id, doc).map_err(merged_record_error)?;
    if record.kind() != push.kind || record.scope() != push.scope {
        return Err(refused(format!(
            "the document says {} in `{}` but was pushed as {} in `{}`",
            record.kind(),
            record.scope(),
            push.kind,
            push.scope
        )));
    }
    let snapshot = record.snapshot().map_err(merged_record_error)?;
    let after = snapshot.values();
    crate::model::validate_record(push.kind, &after).map_err(refused)?;
    let view = record.view_of(snapshot);
    let heads: Vec<Hash> = record.heads().iter().map(|h| h.0).collect();
    if added.is_empty() {
        return Ok(Merged {
            bytes: None,
            view,
            heads,
            added,
            pusher_has_all: false,
        });
    }
    let pusher_has_all = heads.iter().all(|h| added.contains(h));
    access::check_write(ctx, push.kind, &push.scope, before.as_ref(), &after).map_err(refused)?;
    let bytes = match existing {
        None => new_bytes,
        Some(stored) if stored.bytes.len() + new_bytes.len() > COMPACT_AFTER_BYTES => record.save(),
        Some(stored) => [stored.bytes.as_slice(), &new_bytes].concat(),
    };
    if bytes.len() > limits.max_doc_bytes {
        return Err(refused(format!(
            "the document would grow to {} bytes; the limit is {}",
            bytes.len(),
            limits.max_doc_bytes
        )));
    }
    Ok(Merged {
        bytes: Some(bytes),
        view,
        heads,
        added,
        pusher_has_all,
    })
}

/// What the server returns for a wanted document: its stored bytes when the device has
/// nothing (no load needed: the fast path of a first sync), else only the missing changes.
pub fn changes_for(stored: &StoredDoc, have: &[Hash]) -> Result<Vec<u8>, String> {
    if have.is_empty() {
        return Ok(stored.bytes.clone());
    }
    let mut doc = AutoCommit::load(&stored.bytes).map_err(|e| e.to_string())?;
    let have: Vec<ChangeHash> = have
        .iter()
        .map(|h| ChangeHash(*h))
        .filter(|h| doc.get_change_by_hash(h).is_some())
        .collect();
    let mut out = Vec::new();
    for change in doc.get_changes(&have) {
        out.extend_from_slice(change.raw_bytes());
    }
    Ok(out)
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
