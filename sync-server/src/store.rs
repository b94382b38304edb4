//! The server store on redb: documents, projections, the change feed per scope, users,
//! devices, enrollment codes and the receipt log.
//!
//! All table definitions live here. Writes of sync rounds go through [`Committer`], one thread
//! that merges every round waiting at that moment into one durable write transaction, so a burst
//! of phones costs one fsync per batch instead of one per phone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use fieldsync_proto::access::{DeviceCtx, Role};
use fieldsync_proto::model::Kind;
use fieldsync_proto::protocol::{
    Changed, Cursor, DocData, Hash, Limits, Outcome, PushDoc, PushResult, SyncReply, Want,
};
use fieldsync_proto::record::RecordView;
use fieldsync_proto::sync::{self, StoredDoc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Automerge bytes of each record: a saved document and/or appended change chunks.
const DOCS: TableDefinition<u128, &[u8]> = TableDefinition::new("docs");
/// JSON projection of each record (fields and conflicts), for lists and exports.
const VIEWS: TableDefinition<u128, &[u8]> = TableDefinition::new("views");
/// Each record's fixed kind and scope, its feed position and heads (postcard `IndexEntry`).
const INDEX: TableDefinition<u128, &[u8]> = TableDefinition::new("index");
/// The change feed: (scope, seq) → record; each record appears once, at its latest seq.
const FEED: TableDefinition<(&str, u64), u128> = TableDefinition::new("feed");
/// Every scope with its latest seq.
const SCOPES: TableDefinition<&str, u64> = TableDefinition::new("scopes");
/// (record, seq) → who pushed which changes when (JSON `Receipt`).
const RECEIPTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("receipts");
/// Users by id (JSON `User`).
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Devices by device id (JSON `Device`).
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// One-time enrollment codes (JSON `Code`).
const CODES: TableDefinition<&str, &[u8]> = TableDefinition::new("codes");
/// Office and admin password hashes (PHC strings) by user id.
const PASSWORDS: TableDefinition<&str, &str> = TableDefinition::new("passwords");
/// Dashboard login sessions by the SHA-256 (hex) of their cookie secret (JSON `WebSession`).
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// API tokens by the SHA-256 (hex) of the token (JSON `ApiToken`).
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SEQ: &str = "last_seq";

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

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IndexEntry {
    kind: Kind,
    scope: String,
    seq: u64,
    heads: Vec<Hash>,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    pub user_id: String,
    pub enrolled_at: i64,
    pub revoked: bool,
    pub last_sync: Option<i64>,
}

/// A dashboard login: whose it is, its CSRF token and when it ends (Unix seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebSession {
    pub user_id: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// An API token for scripts; only its hash is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub user_id: String,
    pub created_at: i64,
}

/// A record's stored document with its fixed kind and scope.
pub struct StoredRecord {
    pub kind: Kind,
    pub scope: String,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Code {
    user_id: String,
    expires_at: i64,
    used_by: Option<String>,
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

    /// Adds or replaces a user and issues a one-time code that enrolls one device for them.
    pub fn create_code(&self, user: &User, code: &str, expires_at: i64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(USERS)?
                .insert(user.id.as_str(), json(user)?.as_slice())?;
            let entry = Code {
                user_id: user.id.clone(),
                expires_at,
                used_by: None,
            };
            tx.open_table(CODES)?
                .insert(code, json(&entry)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds or replaces a user (office and admin accounts have no devices, only passwords).
    pub fn put_user(&self, user: &User) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(USERS)?
            .insert(user.id.as_str(), json(user)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let tx = self.db.begin_read()?;
        let users = tx.open_table(USERS)?;
        users.get(id)?.map(|v| unjson(v.value())).transpose()
    }

    /// Every user, by id.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(USERS)?;
        table.iter()?.map(|e| unjson(e?.1.value())).collect()
    }

    /// Sets a user's password hash (a PHC string); the user must exist.
    pub fn set_password(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(USERS)?.get(user_id)?.is_none() {
                return Err(StoreError::NotFound(format!("no user {user_id}")));
            }
            tx.open_table(PASSWORDS)?.insert(user_id, phc)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(PASSWORDS)?;
        Ok(table.get(user_id)?.map(|v| v.value().to_string()))
    }

    /// Stores a login session under the hash of its secret.
    pub fn put_session(&self, secret_hash: &str, session: &WebSession) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SESSIONS)?
            .insert(secret_hash, json(session)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn session(&self, secret_hash: &str) -> Result<Option<WebSession>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SESSIONS)?;
        table
            .get(secret_hash)?
            .map(|v| unjson(v.value()))
            .transpose()
    }

    /// Removes every session that ended before `now`; returns how many.
    pub fn prune_sessions(&self, now: i64) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
        let removed = {
            let mut table = tx.open_table(SESSIONS)?;
            let mut ended = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let session: WebSession = unjson(value.value())?;
                if session.expires_at <= now {
                    ended.push(key.value().to_string());
                }
            }
            for key in &ended {
                table.remove(key.as_str())?;
            }
            ended.len()
        };
        tx.commit()?;
        Ok(removed)
    }

    pub fn delete_session(&self, secret_hash: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SESSIONS)?.remove(secret_hash)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores an API token under its hash; the user must exist.
    pub fn put_token(&self, token_hash: &str, token: &ApiToken) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(USERS)?.get(token.user_id.as_str())?.is_none() {
                return Err(StoreError::NotFound(format!("no user {}", token.user_id)));
            }
            tx.open_table(TOKENS)?
                .insert(token_hash, json(token)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn token(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOKENS)?;
        table
            .get(token_hash)?
            .map(|v| unjson(v.value()))
            .transpose()
    }

    /// A record's stored Automerge document, for history and office changes.
    pub fn stored_record(&self, id: Uuid) -> Result<Option<StoredRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let index = tx.open_table(INDEX)?;
        let docs = tx.open_table(DOCS)?;
        let key = id.as_u128();
        let Some(entry) = index
            .get(key)?
            .map(|v| unpostcard::<IndexEntry>(v.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let bytes = docs
            .get(key)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| StoreError::Corrupt(format!("record {id} has no document")))?;
        Ok(Some(StoredRecord {
            kind: entry.kind,
            scope: entry.scope,
            bytes,
        }))
    }

    /// One record's projection.
    pub fn record_view(&self, id: Uuid) -> Result<Option<RecordView>, StoreError> {
        let tx = self.db.begin_read()?;
        let views = tx.open_table(VIEWS)?;
        views
            .get(id.as_u128())?
            .map(|v| unjson(v.value()))
            .transpose()
    }

    /// Consumes a code for a device, durably; a code enrolls one device, once.
    pub fn enroll(
        &self,
        code: &str,
        device_id: &str,
        now: i64,
    ) -> Result<(User, Device), StoreError> {
        let tx = self.db.begin_write()?;
        let result = {
            let mut codes = tx.open_table(CODES)?;
            let mut devices = tx.open_table(DEVICES)?;
            let users = tx.open_table(USERS)?;
            let entry: Code = match codes.get(code)? {
                Some(v) => unjson(v.value())?,
                None => return Err(StoreError::BadCode("unknown enrollment code".into())),
            };
            if entry.used_by.is_some() {
                return Err(StoreError::BadCode(
                    "this enrollment code was already used".into(),
                ));
            }
            if entry.expires_at <= now {
                return Err(StoreError::BadCode(
                    "this enrollment code has expired".into(),
                ));
            }
            if devices.get(device_id)?.is_some() {
                return Err(StoreError::BadCode(
                    "this device is already enrolled".into(),
                ));
            }
            let user: User = match users.get(entry.user_id.as_str())? {
                Some(v) => unjson(v.value())?,
                None => return Err(StoreError::NotFound(format!("no user {}", entry.user_id))),
            };
            let device = Device {
                device_id: device_id.to_string(),
                user_id: user.id.clone(),
                enrolled_at: now,
                revoked: false,
                last_sync: None,
            };
            devices.insert(device_id, json(&device)?.as_slice())?;
            let used = Code {
                used_by: Some(device_id.to_string()),
                ..entry
            };
            codes.insert(code, json(&used)?.as_slice())?;
            (user, device)
        };
        tx.commit()?;
        Ok(result)
    }

    /// The device's context for a connection, or None if unknown or revoked.
    pub fn device_ctx(&self, device_id: &str) -> Result<Option<DeviceCtx>, StoreError> {
        let tx = self.db.begin_read()?;
        let devices = tx.open_table(DEVICES)?;
        let Some(device) = devices
            .get(device_id)?
            .map(|v| unjson::<Device>(v.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        if device.revoked {
            return Ok(None);
        }
        let users = tx.open_table(USERS)?;
        let Some(user) = users
            .get(device.user_id.as_str())?
            .map(|v| unjson::<User>(v.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let actor = hex::decode(device_id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(DeviceCtx {
            device_id: device.device_id,
            actor,
            user_id: user.id,
            role: user.role,
            scopes: user.scopes,
        }))
    }

    /// Whether a device id was ever enrolled (revoked ones included).
    pub fn device_known(&self, device_id: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(DEVICES)?.get(device_id)?.is_some())
    }

    /// Revokes a device; it is refused at its next connection.
    pub fn revoke(&self, device_id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut devices = tx.open_table(DEVICES)?;
            let mut device: Device = match devices.get(device_id)? {
                Some(v) => unjson(v.value())?,
                None => return Err(StoreError::NotFound(format!("no device {device_id}"))),
            };
            device.revoked = true;
            devices.insert(device_id, json(&device)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DEVICES)?;
        table.iter()?.map(|e| unjson(e?.1.value())).collect()
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
            let view: RecordView = unjson(entry?.1.value())?;
            if kind.is_some_and(|k| k.as_str() != view.kind)
                || scope.is_some_and(|s| s != view.scope)
            {
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
            .map(|e| unjson(e?.1.value()))
            .collect()
    }

    /// Merges pushes against a read snapshot. This runs on the connection's own blocking task,
    /// so the merges of concurrent rounds use every core; the commit thread only writes.
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
                let (entry, stored) = load_stored(&index, &docs, &push)?;
                let merged = sync::merge_push(stored.as_ref(), &push, ctx, limits);
                Ok(Prepared {
                    base: entry.map(|e| e.seq),
                    merged,
                    push,
                })
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
        rounds: Vec<(DeviceCtx, Vec<Prepared>)>,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<Vec<Vec<PushResult>>, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Database(e.into()))?;
        let mut all = Vec::with_capacity(rounds.len());
        {
            let mut docs = tx.open_table(DOCS)?;
            let mut views = tx.open_table(VIEWS)?;
            let mut index = tx.open_table(INDEX)?;
            let mut feed = tx.open_table(FEED)?;
            let mut scopes = tx.open_table(SCOPES)?;
            let mut receipts = tx.open_table(RECEIPTS)?;
            let mut meta = tx.open_table(META)?;
            let mut devices = tx.open_table(DEVICES)?;
            let mut seq = meta.get(META_SEQ)?.map(|v| v.value()).unwrap_or(0);
            let mut scope_seqs: BTreeMap<String, u64> = BTreeMap::new();
            for (ctx, prepared) in rounds {
                let mut results = Vec::with_capacity(prepared.len());
                for Prepared { push, base, merged } in prepared {
                    let key = Uuid::from_bytes(push.id).as_u128();
                    let entry: Option<IndexEntry> = match index.get(key)? {
                        Some(v) => Some(unpostcard(v.value())?),
                        None => None,
                    };
                    let merged = if entry.as_ref().map(|e| e.seq) == base {
                        merged
                    } else {
                        let (_, stored) = load_stored(&index, &docs, &push)?;
                        sync::merge_push(stored.as_ref(), &push, &ctx, limits)
                    };
                    let outcome = match merged {
                        Err(reason) => Outcome::Refused { reason },
                        Ok(merged) => {
                            if let Some(bytes) = &merged.bytes {
                                seq += 1;
                                if let Some(old) = &entry {
                                    feed.remove((old.scope.as_str(), old.seq))?;
                                }
                                feed.insert((push.scope.as_str(), seq), key)?;
                                scope_seqs.insert(push.scope.clone(), seq);
                                docs.insert(key, bytes.as_slice())?;
                                views.insert(key, json(&merged.view)?.as_slice())?;
                                let new_entry = IndexEntry {
                                    kind: push.kind,
                                    scope: push.scope.clone(),
                                    seq,
                                    heads: merged.heads.clone(),
                                };
                                index.insert(key, postcard_bytes(&new_entry)?.as_slice())?;
                                let receipt = Receipt {
                                    device_id: ctx.device_id.clone(),
                                    user_id: ctx.user_id.clone(),
                                    received_at: now_ms,
                                    changes: merged.added.iter().map(hex::encode).collect(),
                                };
                                receipts.insert((key, seq), json(&receipt)?.as_slice())?;
                            }
                            Outcome::Accepted {
                                heads: merged.heads,
                            }
                        }
                    };
                    results.push(PushResult {
                        id: push.id,
                        outcome,
                    });
                }
                let device: Option<Device> = devices
                    .get(ctx.device_id.as_str())?
                    .map(|v| unjson(v.value()))
                    .transpose()?;
                if let Some(mut device) = device {
                    device.last_sync = Some(now_ms / 1000);
                    devices.insert(ctx.device_id.as_str(), json(&device)?.as_slice())?;
                }
                all.push(results);
            }
            for (scope, last) in &scope_seqs {
                scopes.insert(scope.as_str(), *last)?;
            }
            meta.insert(META_SEQ, seq)?;
        }
        tx.commit()?;
        Ok(all)
    }

    /// Documents changed in the scopes `ctx` may read since `cursors`, at most `limit`.
    pub fn changes_since(
        &self,
        ctx: &DeviceCtx,
        cursors: &[Cursor],
        limit: usize,
    ) -> Result<SyncReply, StoreError> {
        let tx = self.db.begin_read()?;
        let feed = tx.open_table(FEED)?;
        let index = tx.open_table(INDEX)?;
        let scopes: Vec<String> = if ctx.role.reads_everything() {
            let table = tx.open_table(SCOPES)?;
            table
                .iter()?
                .map(|e| e.map(|(k, _)| k.value().to_string()))
                .collect::<Result<_, _>>()?
        } else {
            ctx.scopes.clone()
        };
        let mut changed = Vec::new();
        let mut new_cursors = Vec::new();
        let mut more = false;
        for scope in scopes {
            let from = cursors
                .iter()
                .find(|c| c.scope == scope)
                .map_or(0, |c| c.seq);
            let mut last = from;
            for entry in
                feed.range((scope.as_str(), from.saturating_add(1))..=(scope.as_str(), u64::MAX))?
            {
                if changed.len() >= limit {
                    more = true;
                    break;
                }
                let (k, v) = entry?;
                let key = v.value();
                let e: IndexEntry = match index.get(key)? {
                    Some(v) => unpostcard(v.value())?,
                    None => return Err(StoreError::Corrupt("feed entry without index".into())),
                };
                last = k.value().1;
                changed.push(Changed {
                    id: *Uuid::from_u128(key).as_bytes(),
                    kind: e.kind,
                    scope: e.scope,
                    heads: e.heads,
                });
            }
            new_cursors.push(Cursor { scope, seq: last });
            if more {
                break;
            }
        }
        Ok(SyncReply {
            results: Vec::new(),
            changed,
            cursors: new_cursors,
            more,
        })
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
            let Some(entry) = index
                .get(key)?
                .map(|v| unpostcard::<IndexEntry>(v.value()))
                .transpose()?
            else {
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

/// A pushed document merged against the stored version with feed position `base`.
pub struct Prepared {
    push: PushDoc,
    base: Option<u64>,
    merged: Result<sync::Merged, String>,
}

/// The stored document a push applies to, with its index entry; None for a new record.
fn load_stored(
    index: &impl ReadableTable<u128, &'static [u8]>,
    docs: &impl ReadableTable<u128, &'static [u8]>,
    push: &PushDoc,
) -> Result<(Option<IndexEntry>, Option<StoredDoc>), StoreError> {
    let key = Uuid::from_bytes(push.id).as_u128();
    let Some(entry) = index
        .get(key)?
        .map(|v| unpostcard::<IndexEntry>(v.value()))
        .transpose()?
    else {
        return Ok((None, None));
    };
    let bytes = docs.get(key)?.map(|v| v.value().to_vec()).ok_or_else(|| {
        StoreError::Corrupt(format!("record {} has no document", Uuid::from_u128(key)))
    })?;
    let stored = StoredDoc {
        kind: entry.kind,
        scope: entry.scope.clone(),
        bytes,
    };
    Ok((Some(entry), Some(stored)))
}

/// A round waiting to be committed.
struct Job {
    ctx: DeviceCtx,
    push: Vec<Prepared>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<PushResult>, String>>,
}

/// Groups the pushes of concurrent rounds into shared durable commits on one thread.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
}

/// Most rounds merged into one commit.
const MAX_ROUNDS_PER_COMMIT: usize = 256;

impl Committer {
    /// Starts the commit thread; it ends when every `Committer` handle is dropped.
    /// A storage failure that redb will not recover from without reopening the file is sent
    /// on `fatal`, so the process can stop and be restarted rather than refuse rounds forever.
    pub fn start(
        store: ServerStore,
        limits: Limits,
        metrics: Arc<crate::Metrics>,
        fatal: tokio::sync::watch::Sender<Option<String>>,
    ) -> Committer {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fieldsync-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_ROUNDS_PER_COMMIT {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let rounds: Vec<(DeviceCtx, Vec<Prepared>)> =
                        batch.iter_mut().map(|j| (j.ctx.clone(), std::mem::take(&mut j.push))).collect();
                    let docs: usize = rounds.iter().map(|(_, p)| p.len()).sum();
                    tracing::info!(rounds = rounds.len(), docs, "committing");
                    let started = std::time::Instant::now();
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    let result = store.commit_rounds(rounds, &limits, now_ms);
                    metrics.record_commit(started.elapsed(), batch.len());
                    match result {
                        Ok(results) => {
                            for (job, r) in batch.into_iter().zip(results) {
                                let _ = job.reply.send(Ok(r));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, rounds = batch.len(), "commit failed; nothing acknowledged");
                            if e.needs_reopen() {
                                fatal.send_replace(Some(e.to_string()));
                            }
                            for job in batch {
                                let _ = job.reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            })
            .map(|_| Committer { jobs })
            .unwrap_or_else(|e| {
                // Without a commit thread every push is answered with an error, never lost.
                tracing::error!(error = %e, "cannot start the commit thread");
                let (jobs, _) = mpsc::channel();
                Committer { jobs }
            })
    }

    /// Queues a round and waits until it is durably committed, holding no thread meanwhile.
    pub async fn commit(
        &self,
        ctx: &DeviceCtx,
        push: Vec<Prepared>,
    ) -> Result<Vec<PushResult>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job {
                ctx: ctx.clone(),
                push,
                reply,
            })
            .map_err(|_| StoreError::ShuttingDown)?;
        match rx.await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(e)) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
            Err(_) => Err(StoreError::ShuttingDown),
        }
    }

    /// Queues a round and waits (blocking) until it is durably committed; for dashboard
    /// changes, which run on the blocking pool already.
    pub fn commit_blocking(
        &self,
        ctx: &DeviceCtx,
        push: Vec<Prepared>,
    ) -> Result<Vec<PushResult>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job {
                ctx: ctx.clone(),
                push,
                reply,
            })
            .map_err(|_| StoreError::ShuttingDown)?;
        match rx.blocking_recv() {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(e)) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
            Err(_) => Err(StoreError::ShuttingDown),
        }
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn unjson<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn postcard_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn unpostcard<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
