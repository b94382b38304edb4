//! What the office does with the merged records: review check-ins, resolve conflicts, add up
//! volunteer hours, follow village indicators and read a record's attributed history.
//!
//! Lists, hours and villages stream from the projections; only review, resolve and history load
//! a record's Automerge document. Review and resolve are ordinary Automerge changes made by the
//! server under an actor id derived from the office user's id, pushed through the same merge
//! rule and group commit as a phone's round: the role rules of `access` apply to them, the
//! receipt log records who made them, and phones pull them at their next sync like any change.

use std::collections::BTreeMap;

use fieldsync_proto::ScopeLevel;
use fieldsync_proto::access::{DeviceCtx, Role};
use fieldsync_proto::hours::Tally;
use fieldsync_proto::model::{self, FieldValue, Kind, Status};
use fieldsync_proto::protocol::{Outcome, PushDoc};
use fieldsync_proto::record::{Record, RecordView};
use serde::Serialize;
use uuid::Uuid;

use crate::session::Shared;
use crate::store::{ServerStore, StoreError, User};

/// The device id under which dashboard changes are logged: `web:<user id>`.
pub const WEB_DEVICE_PREFIX: &str = "web:";

/// A device clock this far ahead of the server's receipt is flagged (seconds).
pub const CLOCK_AHEAD_LIMIT_SECS: i64 = 5 * 60;
/// A change received this long after its device time is flagged: longer than any expected
/// stretch without signal, so more likely a wrong phone clock (seconds).
pub const CLOCK_BEHIND_LIMIT_SECS: i64 = 14 * 24 * 3600;

/// Why an office action failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum OfficeError {
    /// No record has this id.
    #[error("no record {0}")]
    NotFound(Uuid),
    /// The request makes no sense for this record (bad value, no conflict, wrong kind).
    #[error("{0}")]
    Invalid(String),
    /// The user's role may not make this change.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads an office verdict on a check-in: a status other than `submitted`.
pub fn verdict(s: &str) -> Result<Status, OfficeError> {
    match s.parse() {
        Ok(status) if status != Status::Submitted => Ok(status),
        _ => Err(not_a_verdict(s)),
    }
}

fn not_a_verdict(s: &str) -> OfficeError {
    OfficeError::Invalid(format!(
        "status must be `confirmed` or `rejected`, not `{s}`"
    ))
}

/// The Automerge actor of an office user's changes: 16 bytes of SHA-256 over a fixed prefix
/// and the user id, so the same user always signs as the same actor and history can name them.
pub fn office_actor(user_id: &str) -> Vec<u8> {
    let mut input = b"fieldsync office user\0".to_vec();
    input.extend_from_slice(user_id.as_bytes());
    ring::digest::digest(&ring::digest::SHA256, &input).as_ref()[..16].to_vec()
}

/// Confirms or rejects a check-in on behalf of `user`, with a note; `verdict` is not
/// `submitted` (a review cannot send a check-in back).
pub fn review(
    shared: &Shared,
    user: &User,
    id: Uuid,
    verdict: Status,
    note: &str,
    now: i64,
) -> Result<RecordView, OfficeError> {
    if verdict == Status::Submitted {
        return Err(not_a_verdict(verdict.as_str()));
    }
    let fields = vec![
        ("status".to_string(), verdict.value()),
        (
            "review_note".to_string(),
            FieldValue::Text(note.to_string()),
        ),
        ("reviewed_by".to_string(), FieldValue::Text(user.id.clone())),
    ];
    let reviewed = change(shared, user, id, now, |record| {
        if record.kind() != Kind::CheckIn {
            return Err(OfficeError::Invalid(format!(
                "only check-ins are reviewed; {id} is a {}",
                record.kind()
            )));
        }
        Ok(fields)
    })?;
    crate::oplog::office_action(&user.id, "review", &id.to_string(), verdict.as_str());
    Ok(reviewed)
}

/// Settles a conflicted field of a record: `value` becomes its only value.
pub fn resolve(
    shared: &Shared,
    user: &User,
    id: Uuid,
    field: &str,
    value: &serde_json::Value,
    now: i64,
) -> Result<RecordView, OfficeError> {
    let value = model::from_json(field, value).map_err(|e| OfficeError::Invalid(e.to_string()))?;
    let resolved = change(shared, user, id, now, |record| {
        let conflicted = record
            .snapshot()
            .map_err(|e| OfficeError::Invalid(e.to_string()))?
            .conflicts
            .contains_key(field);
        if !conflicted {
            return Err(OfficeError::Invalid(format!(
                "field `{field}` of {id} has no conflicting values to resolve"
            )));
        }
        Ok(vec![(field.to_string(), value)])
    })?;
    crate::oplog::office_action(&user.id, "resolve", &id.to_string(), field);
    Ok(resolved)
}

/// Makes one change to a stored record as `user` and commits it like a phone's push.
fn change(
    shared: &Shared,
    user: &User,
    id: Uuid,
    now: i64,
    fields_for: impl FnOnce(&Record) -> Result<Vec<(String, FieldValue)>, OfficeError>,
) -> Result<RecordView, OfficeError> {
    if user.role != Role::Office {
        return Err(OfficeError::Forbidden(format!(
            "only office staff review and resolve records; {} is {}",
            user.id, user.role
        )));
    }
    // One dashboard change at a time, each built on the version the previous one committed.
    let _serial = shared
        .office_changes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let stored = shared
        .store
        .stored_record(id)?
        .ok_or(OfficeError::NotFound(id))?;
    let mut record = Record::load(id, &stored.bytes)
        .map_err(|e| StoreError::Corrupt(format!("record {id}: {e}")))?;
    let fields = fields_for(&record)?;
    let ctx = DeviceCtx {
        device_id: format!("{WEB_DEVICE_PREFIX}{}", user.id),
        actor: office_actor(&user.id),
        user_id: user.id.clone(),
        role: user.role,
        scopes: Vec::new(),
    };
    let before = record.heads();
    record.set_actor(automerge::ActorId::from(ctx.actor.clone()));
    record
        .update(&fields, now)
        .map_err(|e| OfficeError::Invalid(e.to_string()))?;
    let push = PushDoc {
        id: *id.as_bytes(),
        kind: stored.kind,
        scope: stored.scope,
        changes: record.changes_since(&before),
    };
    let prepared = shared.store.prepare(&ctx, vec![push], &shared.limits)?;
    let results = shared.committer.commit_blocking(&ctx, prepared)?;
    match results.into_iter().next().map(|r| r.outcome) {
        Some(Outcome::Accepted { .. }) => shared
            .store
            .record_view(id)?
            .ok_or(OfficeError::NotFound(id)),
        Some(Outcome::Refused { reason }) => Err(OfficeError::Invalid(reason)),
        // The server's own copy is in trouble: a server error, not the staff member's input.
        Some(Outcome::Deferred { reason }) => Err(StoreError::Corrupt(reason).into()),
        None => Err(StoreError::Corrupt("the commit returned no outcome".into()).into()),
    }
}

/// Which records a list shows; every part is optional.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    pub kind: Option<Kind>,
    pub scope: Option<String>,
    pub status: Option<Status>,
    /// First day (`YYYY-MM-DD`) of the record's date: `started_at`, `visited_at`.
    pub from: Option<String>,
    /// Last day, inclusive.
    pub to: Option<String>,
    /// Text searched (case-insensitively) in every field value.
    pub text: Option<String>,
    /// Only records that hold a conflict.
    pub conflicted: bool,
}

impl RecordFilter {
    pub fn matches(&self, view: &RecordView) -> bool {
        if self.kind.is_some_and(|k| k != view.kind)
            || self.scope.as_ref().is_some_and(|s| *s != view.scope)
            || (self.conflicted && view.conflicts.is_empty())
        {
            return false;
        }
        if let Some(status) = &self.status
            && view.text("status") != Some(status.as_str())
        {
            return false;
        }
        if self.from.is_some() || self.to.is_some() {
            let Some(day) = record_day(view) else {
                return false;
            };
            if self.from.as_ref().is_some_and(|f| day < f.as_str())
                || self.to.as_ref().is_some_and(|t| day > t.as_str())
            {
                return false;
            }
        }
        if let Some(text) = &self.text {
            let needle = text.to_lowercase();
            let found = view
                .fields
                .values()
                .any(|v| v.to_cell().to_lowercase().contains(&needle))
                || view.id.contains(&needle);
            if !found {
                return false;
            }
        }
        true
    }
}

/// The day a record is about, as entered (`YYYY-MM-DD` of `started_at` or `visited_at`).
pub fn record_day(view: &RecordView) -> Option<&str> {
    let stamp = view
        .text("started_at")
        .or_else(|| view.text("visited_at"))?;
    stamp.get(..10)
}

/// Records matching `filter`, at most `limit`, streamed from the projections.
pub fn find_records(
    store: &ServerStore,
    filter: &RecordFilter,
    limit: usize,
) -> Result<Vec<RecordView>, StoreError> {
    let mut out = Vec::new();
    store.for_each_record(filter.kind, filter.scope.as_deref(), |view| {
        if out.len() < limit && filter.matches(&view) {
            out.push(view);
        }
        Ok(())
    })?;
    Ok(out)
}

/// How hours are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoursBy {
    Volunteer,
    Team,
}

impl HoursBy {
    pub fn parse(s: &str) -> Result<HoursBy, OfficeError> {
        match s {
            "volunteer" => Ok(HoursBy::Volunteer),
            "team" => Ok(HoursBy::Team),
            other => Err(OfficeError::Invalid(format!(
                "`by` must be `volunteer` or `team`, not `{other}`"
            ))),
        }
    }
}

/// Hours of one volunteer or team in one month.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HoursRow {
    /// The volunteer id, or the team scope (`team:<id>`).
    pub key: String,
    /// The volunteer's or team's name as recorded.
    pub name: String,
    /// `YYYY-MM` of `started_at`, as entered (the phone's local date).
    pub month: String,
    /// Hours of confirmed check-ins.
    pub confirmed: f64,
    /// Hours of check-ins still waiting for review.
    pub pending: f64,
    /// Hours of rejected check-ins (not counted anywhere else).
    pub rejected: f64,
    pub check_ins: u64,
}

/// Volunteer hours per volunteer or team and month; `month` (`YYYY-MM`) keeps only that month.
pub fn hours(
    store: &ServerStore,
    by: HoursBy,
    month: Option<&str>,
) -> Result<Vec<HoursRow>, OfficeError> {
    if let Some(m) = month
        && !is_month(m)
    {
        return Err(OfficeError::Invalid(format!(
            "month must look like 2026-11, not `{m}`"
        )));
    }
    // (key, month) → (name, tally)
    let mut rows: BTreeMap<(String, String), (String, Tally)> = BTreeMap::new();
    store.for_each_record(Some(Kind::CheckIn), None, |view| {
        let Some(row_month) = view.text("started_at").and_then(|s| s.get(..7)) else {
            return Ok(());
        };
        if month.is_some_and(|m| m != row_month) {
            return Ok(());
        }
        let (key, name) = match by {
            HoursBy::Volunteer => (
                view.text("volunteer_id").unwrap_or_default().to_string(),
                view.text("volunteer_name").unwrap_or_default().to_string(),
            ),
            HoursBy::Team => (
                view.scope.clone(),
                view.text("team").unwrap_or_default().to_string(),
            ),
        };
        rows.entry((key, row_month.to_string()))
            .or_insert_with(|| (name, Tally::default()))
            .1
            .add_view(&view);
        Ok(())
    })?;
    Ok(rows
        .into_iter()
        .map(|((key, month), (name, tally))| HoursRow {
            key,
            name,
            month,
            confirmed: tally.hours(Status::Confirmed),
            pending: tally.hours(Status::Submitted),
            rejected: tally.hours(Status::Rejected),
            check_ins: tally.check_ins(),
        })
        .collect())
}

fn is_month(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit)
        && matches!(s.get(5..7).and_then(|m| m.parse::<u8>().ok()), Some(1..=12))
}

/// One village: its latest survey, the fields in conflict, and its visits.
#[derive(Clone, Debug, Serialize)]
pub struct VillageRow {
    pub scope: String,
    pub village: String,
    /// The most recently created survey of the village.
    pub survey: Option<RecordView>,
    /// Conflicted fields of that survey.
    pub conflicts: Vec<String>,
    /// `visited_at` of the latest visit, as entered.
    pub last_visit: Option<String>,
    pub visits: u64,
}

/// One row per village scope that has any record.
pub fn villages(store: &ServerStore) -> Result<Vec<VillageRow>, StoreError> {
    let mut rows: BTreeMap<String, VillageRow> = BTreeMap::new();
    store.for_each_record(None, None, |view| {
        if view.kind.scope_level() != ScopeLevel::Village {
            return Ok(());
        }
        let row = rows
            .entry(view.scope.clone())
            .or_insert_with(|| VillageRow {
                scope: view.scope.clone(),
                village: String::new(),
                survey: None,
                conflicts: Vec::new(),
                last_visit: None,
                visits: 0,
            });
        if let Some(name) = view.text("village")
            && row.village.is_empty()
        {
            row.village = name.to_string();
        }
        match view.kind {
            // Ids are UUIDv7 and come in creation order, so the last survey seen is the latest.
            Kind::VillageSurvey => {
                row.conflicts = view.conflicts.keys().cloned().collect();
                if let Some(name) = view.text("village") {
                    row.village = name.to_string();
                }
                row.survey = Some(view);
            }
            Kind::VillageVisit => {
                row.visits += 1;
                if let Some(at) = view.text("visited_at")
                    && row.last_visit.as_deref().is_none_or(|last| at > last)
                {
                    row.last_visit = Some(at.to_string());
                }
            }
            Kind::CheckIn => {}
        }
        Ok(())
    })?;
    Ok(rows.into_values().collect())
}

/// One change of a record with who made it and when it arrived.
#[derive(Clone, Debug, Serialize)]
pub struct AttributedChange {
    pub hash: String,
    pub fields: Vec<String>,
    /// Unix seconds by the clock of the device that made the change.
    pub device_time: i64,
    /// The device id (or `web:<user>` for dashboard changes), if known.
    pub device_id: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// Unix seconds when the server committed it.
    pub received_at: Option<i64>,
    /// Receipt time minus device time, seconds.
    pub clock_gap: Option<i64>,
    /// The gap is beyond what being offline explains: the device clock is probably wrong.
    pub clock_flagged: bool,
}

/// A record's history, oldest first, with each change attributed to its device and user.
pub fn history(store: &ServerStore, id: Uuid) -> Result<Option<Vec<AttributedChange>>, StoreError> {
    let Some(stored) = store.stored_record(id)? else {
        return Ok(None);
    };
    let mut record = Record::load(id, &stored.bytes)
        .map_err(|e| StoreError::Corrupt(format!("record {id}: {e}")))?;
    let mut arrival: BTreeMap<String, (String, String, i64)> = BTreeMap::new();
    for receipt in store.receipts(id)? {
        for change in receipt.changes {
            arrival.insert(
                change,
                (
                    receipt.device_id.clone(),
                    receipt.user_id.clone(),
                    receipt.received_at / 1000,
                ),
            );
        }
    }
    let users: BTreeMap<String, User> = store
        .users()?
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    let devices: BTreeMap<String, String> = store
        .devices()?
        .into_iter()
        .map(|d| (d.device_id, d.user_id))
        .collect();
    let office_actors: BTreeMap<String, String> = users
        .values()
        .filter(|u| u.role == Role::Office)
        .map(|u| (hex::encode(office_actor(&u.id)), u.id.clone()))
        .collect();
    Ok(Some(
        record
            .history()
            .into_iter()
            .map(|entry| {
                let received = arrival.get(&entry.hash);
                let (device_id, user_id) = match received {
                    Some((device, user, _)) => (Some(device.clone()), Some(user.clone())),
                    None => match (devices.get(&entry.actor), office_actors.get(&entry.actor)) {
                        (Some(user), _) => (Some(entry.actor.clone()), Some(user.clone())),
                        (None, Some(user)) => (
                            Some(format!("{WEB_DEVICE_PREFIX}{user}")),
                            Some(user.clone()),
                        ),
                        (None, None) => (None, None),
                    },
                };
                let received_at = received.map(|r| r.2);
                let clock_gap = received_at.map(|r| r - entry.time);
                AttributedChange {
                    user_name: user_id
                        .as_ref()
                        .and_then(|u| users.get(u))
                        .map(|u| u.name.clone()),
                    hash: entry.hash,
                    fields: entry.fields,
                    device_time: entry.time,
                    device_id,
                    user_id,
                    received_at,
                    clock_gap,
                    clock_flagged: clock_gap.is_some_and(|g| {
                        !(-CLOCK_AHEAD_LIMIT_SECS..=CLOCK_BEHIND_LIMIT_SECS).contains(&g)
                    }),
                }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_checked() {
        assert!(is_month("2026-11"));
        assert!(!is_month("2026-13"));
        assert!(!is_month("2026-1"));
        assert!(!is_month("20x6-11"));
    }

    #[test]
    fn office_actors_are_stable_and_distinct() {
        assert_eq!(office_actor("li"), office_actor("li"));
        assert_ne!(office_actor("li"), office_actor("wang"));
        assert_eq!(office_actor("li").len(), 16);
    }
}
