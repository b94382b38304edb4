//! The records and enums foreign code sees, and their conversions from and to core's types.
//!
//! They mirror core one to one (`model::FieldValue`, `record::RecordView`, `HistoryEntry`,
//! `store::HoursSummary`, `sync::RoundReport`, …); only the shapes change, to what uniffi can
//! carry and what reads naturally in Kotlin and Swift.

use std::collections::HashMap;

use fieldsync_device::store::{
    EnrollmentInfo, HoursSummary as CoreHoursSummary, Reverted as CoreReverted,
};
use fieldsync_proto::model::{self, FieldType as CoreFieldType};
use fieldsync_proto::record::{HistoryEntry as CoreHistoryEntry, RecordView};
use fieldsync_proto::sync::RoundReport;
use fieldsync_proto::{Kind, Role as CoreRole};

/// The value of one field.
///
/// Timestamps are `Text` in RFC 3339 (`2026-11-28T08:00:00+08:00`), kept exactly as entered;
/// the schema says which text fields are timestamps and they are checked on every write.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum FieldValue {
    Text { value: String },
    Number { value: f64 },
    Integer { value: i64 },
    Bool { value: bool },
    TextList { values: Vec<String> },
}

impl From<model::FieldValue> for FieldValue {
    fn from(v: model::FieldValue) -> Self {
        match v {
            model::FieldValue::Text(value) => FieldValue::Text { value },
            model::FieldValue::Number(value) => FieldValue::Number { value },
            model::FieldValue::Integer(value) => FieldValue::Integer { value },
            model::FieldValue::Bool(value) => FieldValue::Bool { value },
            model::FieldValue::TextList(values) => FieldValue::TextList { values },
        }
    }
}

impl From<FieldValue> for model::FieldValue {
    fn from(v: FieldValue) -> Self {
        match v {
            FieldValue::Text { value } => model::FieldValue::Text(value),
            FieldValue::Number { value } => model::FieldValue::Number(value),
            FieldValue::Integer { value } => model::FieldValue::Integer(value),
            FieldValue::Bool { value } => model::FieldValue::Bool(value),
            FieldValue::TextList { values } => model::FieldValue::TextList(values),
        }
    }
}

/// One record as the app shows it.
///
/// `fields` holds the value that currently stands for each field (and, for a check-in, the
/// derived `hours`); `conflicts` holds only the fields where devices set different values
/// concurrently, with all of those values. Resolving a conflict is an ordinary `update`.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct FieldRecord {
    /// UUID v7 (sortable by creation time).
    pub id: String,
    /// `check_in`, `village_visit` or `village_survey`.
    pub kind: String,
    /// `team:<id>` or `village:<id>`.
    pub scope: String,
    pub fields: HashMap<String, FieldValue>,
    pub conflicts: HashMap<String, Vec<FieldValue>>,
}

impl From<RecordView> for FieldRecord {
    fn from(v: RecordView) -> Self {
        FieldRecord {
            id: v.id,
            kind: v.kind.as_str().to_string(),
            scope: v.scope,
            fields: v.fields.into_iter().map(|(k, v)| (k, v.into())).collect(),
            conflicts: v
                .conflicts
                .into_iter()
                .map(|(k, vs)| (k, vs.into_iter().map(Into::into).collect()))
                .collect(),
        }
    }
}

/// One change of a record: which device changed which fields, and when.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct HistoryEntry {
    /// The device that made the change (its Automerge actor id, hex).
    pub device_id: String,
    /// Seconds since the Unix epoch, by that device's clock.
    pub time: i64,
    /// The fields the change wrote.
    pub fields: Vec<String>,
    /// The change's hash (hex).
    pub hash: String,
}

impl From<CoreHistoryEntry> for HistoryEntry {
    fn from(h: CoreHistoryEntry) -> Self {
        HistoryEntry {
            device_id: h.actor,
            time: h.time,
            fields: h.fields,
            hash: h.hash,
        }
    }
}

/// What a user may do (assigned at enrollment by the server's admin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Role {
    /// Records own check-ins in own team scopes.
    Volunteer,
    /// Keeps the village records of own village scopes.
    Village,
    /// Reads everything; reviews check-ins and resolves conflicts.
    Office,
    /// Reads everything; manages users and devices.
    Admin,
}

impl From<CoreRole> for Role {
    fn from(r: CoreRole) -> Self {
        match r {
            CoreRole::Volunteer => Role::Volunteer,
            CoreRole::Village => Role::Village,
            CoreRole::Office => Role::Office,
            CoreRole::Admin => Role::Admin,
        }
    }
}

/// Who this device is enrolled as, and with which server.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Enrollment {
    /// `host:port` of the sync server.
    pub server: String,
    pub device_id: String,
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
    /// The scopes the user reads and writes (`team:<id>`, `village:<id>`).
    pub scopes: Vec<String>,
}

impl From<EnrollmentInfo> for Enrollment {
    fn from(e: EnrollmentInfo) -> Self {
        Enrollment {
            server: e.server,
            device_id: e.device_id,
            user_id: e.user_id,
            user_name: e.user_name,
            role: e.role.into(),
            scopes: e.scopes.into_iter().map(String::from).collect(),
        }
    }
}

/// A record the server refused, and why. It stays on the device, marked refused, until it is
/// edited again (the edit makes it pending once more).
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Refusal {
    pub id: String,
    pub reason: String,
}

/// A record the server could not take because of its own trouble with it, and why. It stays
/// pending on the device and is pushed again by the next round.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Deferral {
    pub id: String,
    pub reason: String,
}

/// How far a sync round has come, in records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, uniffi::Record)]
pub struct SyncProgress {
    /// Pending records pushed and answered by the server (accepted, refused or deferred).
    pub sent: u64,
    /// Records pending when the round started.
    pub to_send: u64,
    /// Records received and stored.
    pub received: u64,
    /// Records this phone lacks changes of: 0 until the round has compared with the server's
    /// list of what changed, then the final count (it can grow when a big pull is paged).
    pub to_receive: u64,
}

impl From<fieldsync_proto::sync::Progress> for SyncProgress {
    fn from(p: fieldsync_proto::sync::Progress) -> Self {
        SyncProgress {
            sent: count(p.sent),
            to_send: count(p.to_send),
            received: count(p.received),
            to_receive: count(p.to_receive),
        }
    }
}

/// The outcome of one sync round.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct SyncReport {
    /// Records pushed and accepted by the server.
    pub sent: u64,
    /// Records received from the server and applied.
    pub received: u64,
    /// Records pushed and refused, with the server's reasons: they wait for an edit.
    pub refused: Vec<Refusal>,
    /// Records pushed that the server could not take because of its own trouble with them
    /// (its copy is damaged, say), with its reasons: they stay pending and go again next
    /// round; nothing for the user to fix.
    pub deferred: Vec<Deferral>,
    /// Request/reply exchanges the round took.
    pub exchanges: u64,
    /// Connections the round used: 1, plus one for each reconnect after the signal dropped.
    pub connections: u64,
    /// Records put on the wire, counting a batch again each time a lost connection made the
    /// round send it again (`pushed - sent - refused - deferred` is what the bad signal cost).
    pub pushed: u64,
}

impl From<RoundReport> for SyncReport {
    fn from(r: RoundReport) -> Self {
        SyncReport {
            sent: count(r.sent),
            received: count(r.received),
            refused: r
                .refused
                .into_iter()
                .map(|(id, reason)| Refusal {
                    id: id.to_string(),
                    reason,
                })
                .collect(),
            deferred: r
                .deferred
                .into_iter()
                .map(|(id, reason)| Deferral {
                    id: id.to_string(),
                    reason,
                })
                .collect(),
            exchanges: count(r.exchanges),
            connections: count(r.connections),
            pushed: count(r.pushed),
        }
    }
}

/// The enrolled user's check-in hours held on this device, by review status.
///
/// A check-in without an end has no hours yet and is counted as `open`.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct HoursSummary {
    /// Hours the office confirmed.
    pub confirmed_hours: f64,
    /// Hours submitted and not yet reviewed.
    pub submitted_hours: f64,
    /// Hours the office rejected.
    pub rejected_hours: f64,
    pub confirmed: u64,
    pub submitted: u64,
    pub rejected: u64,
    pub open: u64,
}

impl From<CoreHoursSummary> for HoursSummary {
    fn from(h: CoreHoursSummary) -> Self {
        HoursSummary {
            confirmed_hours: h.confirmed_hours,
            submitted_hours: h.submitted_hours,
            rejected_hours: h.rejected_hours,
            confirmed: h.confirmed,
            submitted: h.submitted,
            rejected: h.rejected,
            open: h.open,
        }
    }
}

/// The type of a field in a schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum FieldType {
    Text,
    Number,
    Integer,
    Bool,
    /// RFC 3339 text.
    Timestamp,
    TextList,
}

impl From<CoreFieldType> for FieldType {
    fn from(t: CoreFieldType) -> Self {
        match t {
            CoreFieldType::Text => FieldType::Text,
            CoreFieldType::Number => FieldType::Number,
            CoreFieldType::Integer => FieldType::Integer,
            CoreFieldType::Bool => FieldType::Bool,
            CoreFieldType::Timestamp => FieldType::Timestamp,
            CoreFieldType::TextList => FieldType::TextList,
        }
    }
}

/// One field of a kind's schema, for building forms.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct FieldSpec {
    pub name: String,
    pub field_type: FieldType,
    /// A record cannot be saved without it.
    pub required: bool,
    /// Computed when shown (a check-in's `hours`); never written.
    pub derived: bool,
    /// Only office staff may write it (review fields).
    pub office_only: bool,
}

/// The schema of `kind` as this build writes it.
pub(crate) fn schema_of(kind: Kind) -> Vec<FieldSpec> {
    kind.schema()
        .fields
        .iter()
        .map(|f| FieldSpec {
            name: f.name.to_string(),
            field_type: f.ty.into(),
            required: f.required,
            derived: f.derived,
            office_only: f.office_only,
        })
        .collect()
}

/// A count as foreign code sees it (usize is not a foreign type).
pub(crate) fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What `revert` did with a refused record.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum Reverted {
    /// The record is back at the version the server holds; the refused changes are gone.
    ToServer { record: FieldRecord },
    /// The server never had the record; it is gone from the phone.
    Dropped,
}

impl From<CoreReverted> for Reverted {
    fn from(r: CoreReverted) -> Self {
        match r {
            CoreReverted::ToServer(view) => Reverted::ToServer {
                record: view.into(),
            },
            CoreReverted::Dropped => Reverted::Dropped,
        }
    }
}
