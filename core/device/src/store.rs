//! The device store: records, their projections, what the server has not acknowledged,
//! cursors and the device identity, in one redb file.
//!
//! Every local write is one durable redb transaction holding the document, its projection and
//! its pending mark together, so a phone killed at any moment reopens with every committed record
//! intact and never with half of one.
//!
//! Before a local write commits, the role and scope rules the server will apply are checked
//! here with the same code ([`rules`]); a write they refuse is [`StoreError::Forbidden`] and
//! stores nothing. What the server refuses anyway (its rules changed since enrollment) can be
//! taken back with [`DeviceStore::revert`] ([`revert`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tls::{self, KeyAndCert};
use fieldsync_proto::Scope;
use fieldsync_proto::access::Role;
use fieldsync_proto::hours::Tally;
use fieldsync_proto::model::{self, FieldValue, Kind, Status};
use fieldsync_proto::protocol::{Changed, Cursor, DocData, DocId, Hash, PushDoc};
use fieldsync_proto::record::{HistoryEntry, Record, RecordError, RecordView};
use fieldsync_proto::sync::Pending;
pub use revert::Reverted;

/// Automerge bytes of each record (a full save).
const DOCS: TableDefinition<u128, &[u8]> = TableDefinition::new("docs");
/// JSON projection of each record, for lists without loading documents.
const VIEWS: TableDefinition<u128, &[u8]> = TableDefinition::new("views");
/// Current local heads of each record.
const HEADS: TableDefinition<u128, &[u8]> = TableDefinition::new("heads");
/// Heads the server is known to hold of each record: a version the server has (at least), kept
/// up to date by acknowledgements and pulls; what [`DeviceStore::revert`] goes back to.
const SYNCED: TableDefinition<u128, &[u8]> = TableDefinition::new("synced");
/// Records with local changes the server has not acknowledged.
const PENDING: TableDefinition<u128, ()> = TableDefinition::new("pending");
/// Records the server refused, with its reason, until they are edited again.
const REFUSED: TableDefinition<u128, &str> = TableDefinition::new("refused");
/// Change-feed position applied, per scope.
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// Identity and enrollment.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_KEY: &str = "device_key";
const META_CERT: &str = "device_cert";
const META_ENROLLMENT: &str = "enrollment";

/// The file name of the device store inside its folder.
pub const STORE_FILE: &str = "device.redb";

/// Why a device store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The redb file could not be opened, read or written.
    #[error("store: {0}")]
    Database(#[from] redb::Error),
    /// The store folder could not be created.
    #[error("store folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error("the store at {0} is in use by another process")]
    InUse(PathBuf),
    /// The record or its change was refused.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// No record with this id.
    #[error("no record {0}")]
    NotFound(Uuid),
    /// Stored data could not be decoded.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The device identity could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The operation needs the enrolled user (a check-in, my hours) and there is none yet.
    #[error("this device is not enrolled; enroll it with a one-time code first")]
    NotEnrolled,
    /// A check-in without a scope, for a user enrolled without any team scope.
    #[error("the enrolled user has no team scope; give the check-in a scope `team:<id>`")]
    NoTeamScope,
    /// The enrolled role and scopes do not allow this write; the reason is the one the server
    /// would give for it. Nothing was written.
    #[error("{0}")]
    Forbidden(String),
    /// `revert` of a record the server has not refused: only a refused record can be reverted
    /// or dropped. `pending` says whether it is waiting for a sync (else the server holds it all).
    #[error("{}", not_refused(*.id, *.pending))]
    NotRefused { id: Uuid, pending: bool },
}

fn not_refused(id: Uuid, pending: bool) -> String {
    let state = if pending {
        "it is waiting to be synced"
    } else {
        "the server holds all of it"
    };
    format!("record {id} was not refused ({state}); only a refused record can be reverted")
}

crate::impl_from_redb!(StoreError);

/// What a device learned at enrollment, and where its server is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentInfo {
    pub server: String,
    pub fingerprint: String,
    pub device_id: String,
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
    pub scopes: Vec<Scope>,
}

/// A volunteer check-in as entered on the phone.
///
/// The volunteer, team, status and device time are not part of the form: they come from the
/// enrollment and the phone's clock (see [`DeviceStore::check_in`]), so a form cannot record a
/// check-in for someone else or pre-confirm it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckInForm {
    pub activity: String,
    pub place: String,
    /// RFC 3339, e.g. `2026-11-28T08:00:00+08:00`.
    pub started_at: String,
    /// RFC 3339; left out at check-in and set by an update at check-out.
    pub ended_at: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub accuracy_m: Option<f64>,
    pub note: Option<String>,
    /// `team:<id>`; defaults to the enrolled user's first team scope.
    pub scope: Option<String>,
}

/// The enrolled user's check-ins held on this device, summed by review status.
///
/// Hours are the derived `hours` of each check-in (rounded to hundredths, as projected); a
/// check-in without an end yet has no hours and is counted as `open`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HoursSummary {
    /// Hours the office confirmed.
    pub confirmed_hours: f64,
    /// Hours submitted and not yet reviewed.
    pub submitted_hours: f64,
    /// Hours the office rejected (shown, never added to the others).
    pub rejected_hours: f64,
    pub confirmed: u64,
    pub submitted: u64,
    pub rejected: u64,
    /// Check-ins without an end yet.
    pub open: u64,
}

/// A device's local store.
///
/// Cheap to clone (the database is shared), so store work can run on a blocking thread while
/// the async round waits for it.
#[derive(Clone)]
pub struct DeviceStore {
    db: Arc<Database>,
    identity: KeyAndCert,
    actor: ActorId,
}

impl DeviceStore {
    /// Opens the store in `dir`, creating the folder, the file and the device key on first use.
    pub fn open(dir: &Path) -> Result<DeviceStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse(path)),
            Err(e) => return Err(StoreError::Database(e.into())),
        };
        let tx = db.begin_write()?;
        let identity = {
            for t in [DOCS, VIEWS, HEADS, SYNCED] {
                tx.open_table(t)?;
            }
            tx.open_table(PENDING)?;
            tx.open_table(REFUSED)?;
            tx.open_table(CURSORS)?;
            let mut meta = tx.open_table(META)?;
            let key = meta.get(META_KEY)?.map(|v| v.value().to_vec());
            let cert = meta.get(META_CERT)?.map(|v| v.value().to_vec());
            match (key, cert) {
                (Some(key_pkcs8), Some(cert)) => KeyAndCert { key_pkcs8, cert },
                _ => {
                    let fresh = KeyAndCert::generate("fieldsync-device")?;
                    meta.insert(META_KEY, fresh.key_pkcs8.as_slice())?;
                    meta.insert(META_CERT, fresh.cert.as_slice())?;
                    fresh
                }
            }
        };
        tx.commit()?;
        let actor = ActorId::from(tls::device_key_id(&identity.cert)?);
        Ok(DeviceStore {
            db: Arc::new(db),
            identity,
            actor,
        })
    }

    pub fn identity(&self) -> &KeyAndCert {
        &self.identity
    }

    /// This device's id: the hex of its actor id.
    pub fn device_id(&self) -> String {
        self.actor.to_hex_string()
    }

    pub fn enrollment(&self) -> Result<Option<EnrollmentInfo>, StoreError> {
        let tx = self.db.begin_read()?;
        enrollment_in(&tx.open_table(META)?)
    }

    pub fn set_enrollment(&self, info: &EnrollmentInfo) -> Result<(), StoreError> {
        let json = serde_json::to_vec(info).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tx = self.db.begin_write()?;
        tx.open_table(META)?
            .insert(META_ENROLLMENT, json.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Creates a record as one durable write; returns its projection.
    pub fn create(
        &self,
        kind: Kind,
        scope: &str,
        fields: &[(String, FieldValue)],
    ) -> Result<RecordView, StoreError> {
        let rules = self.rules()?;
        let mut record = Record::create(kind, scope, self.actor.clone(), fields, now())?;
        rules::check(rules.as_ref(), &record, None)?;
        let tx = self.db.begin_write()?;
        let view = write_local(&tx, &mut record)?;
        tx.commit()?;
        Ok(view)
    }

    /// Records a check-in for the enrolled user as one durable write; returns its projection.
    ///
    /// `volunteer_id`/`volunteer_name` come from the enrollment, `team` from the scope,
    /// `status` is `submitted` and `device_time` is the phone's clock now.
    pub fn check_in(&self, form: &CheckInForm) -> Result<RecordView, StoreError> {
        let info = self.enrollment()?.ok_or(StoreError::NotEnrolled)?;
        let scope = match &form.scope {
            Some(s) => model::check_scope(Kind::CheckIn, s).map_err(RecordError::from)?,
            None => info
                .scopes
                .iter()
                .find(|s| s.level() == Kind::CheckIn.scope_level())
                .cloned()
                .ok_or(StoreError::NoTeamScope)?,
        };
        let team = scope.id();
        let text = |name: &str, v: &str| (name.to_string(), FieldValue::Text(v.to_string()));
        let mut fields = vec![
            text("volunteer_id", &info.user_id),
            text("volunteer_name", &info.user_name),
            text("team", team),
            text("activity", &form.activity),
            text("place", &form.place),
            text("started_at", &form.started_at),
            ("status".to_string(), Status::Submitted.value()),
            text("device_time", &chrono::Local::now().to_rfc3339()),
        ];
        let optional = [
            ("ended_at", form.ended_at.clone().map(FieldValue::Text)),
            ("lat", form.lat.map(FieldValue::Number)),
            ("lon", form.lon.map(FieldValue::Number)),
            ("accuracy_m", form.accuracy_m.map(FieldValue::Number)),
            ("note", form.note.clone().map(FieldValue::Text)),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
        );
        self.create(Kind::CheckIn, scope.as_str(), &fields)
    }

    /// The enrolled user's check-in hours on this device, by review status.
    ///
    /// Reads projections only. Counts what this device holds: the user's own check-ins, with
    /// the office's verdicts as far as the last sync brought them.
    pub fn my_hours(&self) -> Result<HoursSummary, StoreError> {
        let info = self.enrollment()?.ok_or(StoreError::NotEnrolled)?;
        let mut tally = Tally::default();
        for view in self.list(Some(Kind::CheckIn), None)? {
            if view.text("volunteer_id") == Some(info.user_id.as_str()) {
                tally.add_view(&view);
            }
        }
        Ok(HoursSummary {
            confirmed_hours: tally.hours(Status::Confirmed),
            submitted_hours: tally.hours(Status::Submitted),
            rejected_hours: tally.hours(Status::Rejected),
            confirmed: tally.count(Status::Confirmed),
            submitted: tally.count(Status::Submitted),
            rejected: tally.count(Status::Rejected),
            open: tally.open(),
        })
    }

    /// Edits a record as one durable write; returns its projection.
    ///
    /// The record is read, checked and written in one write transaction, so a sync applying
    /// the server's changes at the same moment cannot be overwritten by an older copy.
    pub fn update(
        &self,
        id: Uuid,
        fields: &[(String, FieldValue)],
    ) -> Result<RecordView, StoreError> {
        let tx = self.db.begin_write()?;
        let edited = (|| {
            let rules = enrollment_in(&tx.open_table(META)?)?
                .map(|info| rules::device_ctx(&info, &self.actor));
            let bytes = tx
                .open_table(DOCS)?
                .get(id.as_u128())?
                .ok_or(StoreError::NotFound(id))?
                .value()
                .to_vec();
            let mut record = Record::load(id, &bytes)?;
            let before = record.values()?;
            record.set_actor(self.actor.clone());
            record.update(fields, now())?;
            rules::check(rules.as_ref(), &record, Some(&before))?;
            write_local(&tx, &mut record)
        })();
        match edited {
            Ok(view) => {
                tx.commit()?;
                Ok(view)
            }
            Err(e) => {
                tx.abort()?;
                Err(e)
            }
        }
    }

    /// Loads a record's document (for history and conflicts).
    pub fn record(&self, id: Uuid) -> Result<Record, StoreError> {
        let tx = self.db.begin_read()?;
        let docs = tx.open_table(DOCS)?;
        let bytes = docs.get(id.as_u128())?.ok_or(StoreError::NotFound(id))?;
        Ok(Record::load(id, bytes.value())?)
    }

    pub fn get(&self, id: Uuid) -> Result<Option<RecordView>, StoreError> {
        let tx = self.db.begin_read()?;
        let views = tx.open_table(VIEWS)?;
        views
            .get(id.as_u128())?
            .map(|v| decode_view(v.value()))
            .transpose()
    }

    /// Projections of every record, optionally of one kind and/or scope, oldest first.
    pub fn list(
        &self,
        kind: Option<Kind>,
        scope: Option<&str>,
    ) -> Result<Vec<RecordView>, StoreError> {
        let tx = self.db.begin_read()?;
        let views = tx.open_table(VIEWS)?;
        let mut out = Vec::new();
        for entry in views.iter()? {
            let view = decode_view(entry?.1.value())?;
            if kind.is_some_and(|k| k != view.kind) || scope.is_some_and(|s| s != view.scope) {
                continue;
            }
            out.push(view);
        }
        Ok(out)
    }

    pub fn history(&self, id: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(self.record(id)?.history())
    }

    /// Records with changes the server has not acknowledged.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(PENDING)?.len()?)
    }

    /// Records the server refused, with its reasons.
    pub fn refused(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REFUSED)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((Uuid::from_u128(k.value()), v.value().to_string()));
        }
        Ok(out)
    }

    /// Every pending record's changes since what the server is known to hold.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let tx = self.db.begin_read()?;
        let pending = tx.open_table(PENDING)?;
        let docs = tx.open_table(DOCS)?;
        let synced = tx.open_table(SYNCED)?;
        let mut out = Vec::new();
        for entry in pending.iter()? {
            let key = entry?.0.value();
            let id = Uuid::from_u128(key);
            let bytes = docs.get(key)?.ok_or(StoreError::NotFound(id))?;
            let mut record = Record::load(id, bytes.value())?;
            let known = match synced.get(key)? {
                Some(v) => decode_hashes(v.value())?,
                None => Vec::new(),
            };
            let known: Vec<ChangeHash> = known.into_iter().map(ChangeHash).collect();
            let changes = record.changes_since(&known);
            out.push(Pending {
                heads: record.heads().iter().map(|h| h.0).collect(),
                push: PushDoc {
                    id: *id.as_bytes(),
                    kind: record.kind(),
                    scope: record.scope().to_string(),
                    changes,
                },
            });
        }
        Ok(out)
    }

    pub fn cursors(&self) -> Result<Vec<Cursor>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CURSORS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(Cursor {
                scope: k.value().to_string(),
                seq: v.value(),
            });
        }
        Ok(out)
    }

    /// Records the server's verdicts in one durable write. A record edited since its push stays
    /// pending; its acknowledged part is remembered so the next push carries only the rest.
    pub fn acknowledge(
        &self,
        accepted: &[(DocId, Vec<Hash>)],
        refused: &[(DocId, String)],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let heads = tx.open_table(HEADS)?;
            let mut synced = tx.open_table(SYNCED)?;
            let mut pending = tx.open_table(PENDING)?;
            let mut refusals = tx.open_table(REFUSED)?;
            for (id, pushed) in accepted {
                let key = Uuid::from_bytes(*id).as_u128();
                synced.insert(key, encode_hashes(pushed).as_slice())?;
                let current = match heads.get(key)? {
                    Some(v) => decode_hashes(v.value())?,
                    None => Vec::new(),
                };
                if same_set(&current, pushed) {
                    pending.remove(key)?;
                }
                refusals.remove(key)?;
            }
            for (id, reason) in refused {
                let key = Uuid::from_bytes(*id).as_u128();
                pending.remove(key)?;
                refusals.insert(key, reason.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// For each changed document: the heads the device holds, including any of the server's
    /// heads it already has; empty if the device does not have the document.
    ///
    /// Where the device holds every one of the server's heads, those heads are exactly the
    /// server's version, and are remembered as such (one durable write, only when that is news:
    /// after an acknowledgement lost with its connection, say) so that `pending` pushes only
    /// what the server lacks and `revert` knows what to go back to.
    pub fn local_heads(&self, changed: &[Changed]) -> Result<Vec<(DocId, Vec<Hash>)>, StoreError> {
        let mut out = Vec::with_capacity(changed.len());
        let mut learned = Vec::new();
        {
            let tx = self.db.begin_read()?;
            let heads = tx.open_table(HEADS)?;
            let docs = tx.open_table(DOCS)?;
            let synced = tx.open_table(SYNCED)?;
            for c in changed {
                let key = Uuid::from_bytes(c.id).as_u128();
                let Some(local) = heads
                    .get(key)?
                    .map(|v| decode_hashes(v.value()))
                    .transpose()?
                else {
                    out.push((c.id, Vec::new()));
                    continue;
                };
                let mut have = local;
                let mut has_all = same_set(&have, &c.heads);
                if !has_all && let Some(bytes) = docs.get(key)? {
                    let doc = AutoCommit::load(bytes.value()).map_err(RecordError::from)?;
                    has_all = true;
                    for h in &c.heads {
                        if doc.get_change_by_hash(&ChangeHash(*h)).is_none() {
                            has_all = false;
                        } else if !have.contains(h) {
                            have.push(*h);
                        }
                    }
                }
                let known = synced.get(key)?.map(|v| decode_hashes(v.value()));
                let news = match known.transpose()? {
                    Some(known) => !same_set(&known, &c.heads),
                    None => true,
                };
                if has_all && news && !c.heads.is_empty() {
                    learned.push((key, encode_hashes(&c.heads)));
                }
                out.push((c.id, have));
            }
        }
        if !learned.is_empty() {
            let tx = self.db.begin_write()?;
            {
                let mut synced = tx.open_table(SYNCED)?;
                for (key, heads) in &learned {
                    synced.insert(*key, heads.as_slice())?;
                }
            }
            tx.commit()?;
        }
        Ok(out)
    }

    /// Applies documents from the server and stores the new cursors, in one durable write.
    pub fn apply(&self, docs: &[DocData], cursors: &[Cursor]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let pending = tx.open_table(PENDING)?;
            let refused = tx.open_table(REFUSED)?;
            let mut synced = tx.open_table(SYNCED)?;
            for data in docs {
                let id = Uuid::from_bytes(data.id);
                let key = id.as_u128();
                let existing = tx.open_table(DOCS)?.get(key)?.map(|v| v.value().to_vec());
                let is_new = existing.is_none();
                let local_changes = pending.get(key)?.is_some() || refused.get(key)?.is_some();
                let mut server_heads = None;
                let doc = match existing {
                    Some(bytes) => {
                        let mut doc = AutoCommit::load(&bytes).map_err(RecordError::from)?;
                        let before = doc.get_heads();
                        doc.load_incremental(&data.bytes)
                            .map_err(RecordError::from)?;
                        if local_changes {
                            let added: Vec<ChangeHash> =
                                doc.get_changes(&before).iter().map(|c| c.hash()).collect();
                            let known = match synced.get(key)? {
                                Some(v) => decode_hashes(v.value())?,
                                None => Vec::new(),
                            };
                            server_heads =
                                Some(revert::server_heads_after_pull(&mut doc, &known, &added)?);
                        }
                        doc
                    }
                    None => AutoCommit::load(&data.bytes).map_err(RecordError::from)?,
                };
                let mut record = Record::from_doc(id, doc)?;
                if !record.doc().get_missing_deps(&[]).is_empty() {
                    return Err(StoreError::Corrupt(format!(
                        "record {id} arrived without all of its history"
                    )));
                }
                let view = record.view()?;
                // A record new to this device is stored as received (already loadable), which
                // spares a full save per record on a first sync.
                let bytes = if is_new {
                    data.bytes.clone()
                } else {
                    record.save()
                };
                put_record(&tx, &mut record, &view, &bytes)?;
                // Without local changes the device holds just what the server sent it.
                let server_heads = match server_heads {
                    Some(heads) => heads,
                    None => record.heads().iter().map(|h| h.0).collect(),
                };
                if !server_heads.is_empty() {
                    synced.insert(key, encode_hashes(&server_heads).as_slice())?;
                }
            }
            let mut table = tx.open_table(CURSORS)?;
            for c in cursors {
                table.insert(c.scope.as_str(), c.seq)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Writes a locally edited record in `tx`: pending again, and no longer refused (an edit is
/// the way out of a refusal, and the next push says whether the server now takes it).
fn write_local(tx: &redb::WriteTransaction, record: &mut Record) -> Result<RecordView, StoreError> {
    let view = record.view()?;
    let key = record.id().as_u128();
    let bytes = record.save();
    put_record(tx, record, &view, &bytes)?;
    tx.open_table(PENDING)?.insert(key, ())?;
    tx.open_table(REFUSED)?.remove(key)?;
    Ok(view)
}

fn enrollment_in(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<EnrollmentInfo>, StoreError> {
    match meta.get(META_ENROLLMENT)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("enrollment: {e}"))),
        None => Ok(None),
    }
}

fn put_record(
    tx: &redb::WriteTransaction,
    record: &mut Record,
    view: &RecordView,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let key = record.id().as_u128();
    let json = serde_json::to_vec(view).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let heads: Vec<Hash> = record.heads().iter().map(|h| h.0).collect();
    tx.open_table(DOCS)?.insert(key, bytes)?;
    tx.open_table(VIEWS)?.insert(key, json.as_slice())?;
    tx.open_table(HEADS)?
        .insert(key, encode_hashes(&heads).as_slice())?;
    Ok(())
}

fn decode_view(bytes: &[u8]) -> Result<RecordView, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("projection: {e}")))
}

/// Concatenated 32-byte hashes.
pub fn encode_hashes(hashes: &[Hash]) -> Vec<u8> {
    hashes.concat()
}

pub fn decode_hashes(bytes: &[u8]) -> Result<Vec<Hash>, StoreError> {
    let (chunks, rest) = bytes.as_chunks::<32>();
    if !rest.is_empty() {
        return Err(StoreError::Corrupt("hash list length".into()));
    }
    Ok(chunks.to_vec())
}

fn same_set(a: &[Hash], b: &[Hash]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

mod revert;
mod rules;
#[cfg(test)]
mod tests;
