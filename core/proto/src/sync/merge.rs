//! The server's merge rule: a device's push merged into the stored document, or refused whole.
//!
//! The same function serves the redb server, the PostgreSQL-ready store interface and the
//! in-process harness, so every backend refuses exactly the same pushes for the same reasons.

use automerge::{AutoCommit, ChangeHash, ReadDoc};
use uuid::Uuid;

use crate::access::{self, DeviceCtx};
use crate::model::Kind;
use crate::protocol::{Hash, Limits, PushDoc, split_changes};
use crate::record::{Record, RecordView};

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

/// Merges a device's push into the server's copy of the document, or says why not.
///
/// A refused push changes nothing: the caller stores `Merged::bytes` only on success.
pub fn merge_push(
    existing: Option<&StoredDoc>,
    push: &PushDoc,
    ctx: &DeviceCtx,
    limits: &Limits,
) -> Result<Merged, String> {
    let changes = split_changes(&push.changes, limits).map_err(|e| e.to_string())?;
    crate::model::check_scope(push.kind, &push.scope).map_err(|e| e.to_string())?;
    let id = Uuid::from_bytes(push.id);
    let (mut doc, before) = match existing {
        Some(stored) => {
            if stored.kind != push.kind || stored.scope != push.scope {
                return Err(format!(
                    "record {id} is a {} in `{}`; its kind and scope are fixed",
                    stored.kind, stored.scope
                ));
            }
            let record = Record::load(id, &stored.bytes)
                .map_err(|e| format!("stored document {id} is unreadable: {e}"))?;
            let values = record.values().map_err(|e| e.to_string())?;
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
            return Err(format!(
                "a change is signed by actor {}, not by this device; refused",
                change.actor_id().to_hex_string()
            ));
        }
    }
    let added: Vec<Hash> = new.iter().map(|c| c.hash().0).collect();
    let mut new_bytes = Vec::new();
    for change in &new {
        new_bytes.extend_from_slice(change.raw_bytes());
    }
    if !new.is_empty() {
        doc.apply_changes(new)
            .map_err(|e| format!("changes do not apply: {e}"))?;
        if !doc.get_missing_deps(&[]).is_empty() {
            return Err("changes depend on changes the server does not have".into());
        }
    }
    let mut record = Record::from_doc(id, doc).map_err(|e| e.to_string())?;
    if record.kind() != push.kind || record.scope() != push.scope {
        return Err(format!(
            "the document says {} in `{}` but was pushed as {} in `{}`",
            record.kind(),
            record.scope(),
            push.kind,
            push.scope
        ));
    }
    let snapshot = record.snapshot().map_err(|e| e.to_string())?;
    let after = snapshot.values();
    crate::model::validate_record(push.kind, &after).map_err(|e| e.to_string())?;
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
    access::check_write(ctx, push.kind, &push.scope, before.as_ref(), &after)?;
    let bytes = match existing {
        None => new_bytes,
        Some(stored) if stored.bytes.len() + new_bytes.len() > COMPACT_AFTER_BYTES => record.save(),
        Some(stored) => [stored.bytes.as_slice(), &new_bytes].concat(),
    };
    if bytes.len() > limits.max_doc_bytes {
        return Err(format!(
            "the document would grow to {} bytes; the limit is {}",
            bytes.len(),
            limits.max_doc_bytes
        ));
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
