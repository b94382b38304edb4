//! Roles, scopes and the field-level write rules, as plain functions.
//!
//! The server applies these to the merged result of every incoming push; the rules come from
//! the server's own tables (the connected device's role and scopes), never from document content.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{FieldValue, Kind, Status};
use crate::scope::Scope;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Records own check-ins in own team scopes.
    Volunteer,
    /// Keeps the village records of own village scopes.
    Village,
    /// Reads everything; reviews check-ins and resolves conflicts.
    Office,
    /// Reads everything; manages users and devices (writes no records).
    Admin,
}

impl Role {
    /// The role's name as stored and shown (`volunteer`, `village`, `office`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Volunteer => "volunteer",
            Role::Village => "village",
            Role::Office => "office",
            Role::Admin => "admin",
        }
    }

    /// Office and admin read every scope.
    pub fn reads_everything(self) -> bool {
        matches!(self, Role::Office | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "volunteer" => Ok(Role::Volunteer),
            "village" => Ok(Role::Village),
            "office" => Ok(Role::Office),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (volunteer, village, office, admin)"
            )),
        }
    }
}

/// The connected device as the server knows it from its own tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceCtx {
    /// The device id: hex of the first 16 bytes of the SHA-256 of its public key.
    pub device_id: String,
    /// The device's Automerge actor id (bytes).
    pub actor: Vec<u8>,
    /// The enrolled user the device belongs to.
    pub user_id: String,
    /// The user's role, from the server's tables.
    pub role: Role,
    /// The scopes the user may read and write (`team:<id>`, `village:<id>`).
    pub scopes: Vec<Scope>,
}

impl DeviceCtx {
    /// Whether the device may read records of `scope`.
    pub fn may_read(&self, scope: &str) -> bool {
        self.role.reads_everything() || self.scopes.iter().any(|s| s == scope)
    }
}

/// Fields only office staff may write on a check-in.
pub const REVIEW_FIELDS: [&str; 3] = ["status", "review_note", "reviewed_by"];

/// Checks that `ctx` may make the change from `before` (None for a new record) to `after`.
///
/// `before` and `after` map each field to all of its concurrent values, so resolving a
/// conflict shows up as a field whose set of values changed.
pub fn check_write(
    ctx: &DeviceCtx,
    kind: Kind,
    scope: &str,
    before: Option<&BTreeMap<String, Vec<FieldValue>>>,
    after: &BTreeMap<String, Vec<FieldValue>>,
) -> Result<(), String> {
    let empty = BTreeMap::new();
    let old = before.unwrap_or(&empty);
    let touched: Vec<&str> = after
        .keys()
        .chain(old.keys())
        .filter(|k| old.get(*k) != after.get(*k))
        .map(String::as_str)
        .collect();
    let in_scope = ctx.scopes.iter().any(|s| s == scope);
    match ctx.role {
        Role::Volunteer => {
            if kind != Kind::CheckIn {
                return Err(format!("a volunteer may not write {kind} records"));
            }
            if !in_scope {
                return Err(format!("this device may not write scope `{scope}`"));
            }
            let own = |values: &BTreeMap<String, Vec<FieldValue>>| {
                values.get("volunteer_id").is_some_and(|v| {
                    v.iter()
                        .all(|x| *x == FieldValue::Text(ctx.user_id.clone()))
                })
            };
            if !own(after) || (before.is_some() && !own(old)) {
                return Err("a volunteer may only write own check-ins".into());
            }
            for field in touched {
                let submitting = before.is_none()
                    && field == "status"
                    && after.get("status") == Some(&vec![Status::Submitted.value()]);
                if REVIEW_FIELDS.contains(&field) && !submitting {
                    return Err(format!("a volunteer may not set `{field}`"));
                }
            }
            Ok(())
        }
        Role::Village => {
            if kind == Kind::CheckIn {
                return Err("a village team member may not write check-ins".into());
            }
            if !in_scope {
                return Err(format!("this device may not write scope `{scope}`"));
            }
            Ok(())
        }
        Role::Office => {
            if before.is_none() {
                return Err(
                    "office staff review and resolve records; they do not create them".into(),
                );
            }
            for field in touched {
                let was_conflict = old.get(field).is_some_and(|v| v.len() > 1);
                let review = kind == Kind::CheckIn && REVIEW_FIELDS.contains(&field);
                if !review && !was_conflict {
                    return Err(format!(
                        "office staff may change `{field}` only to resolve a conflict"
                    ));
                }
            }
            Ok(())
        }
        Role::Admin => Err("admin devices manage users and devices; they write no records".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: Role) -> DeviceCtx {
        DeviceCtx {
            device_id: "d".into(),
            actor: vec![1; 16],
            user_id: "u1".into(),
            role,
            scopes: vec!["team:1".parse().unwrap(), "village:9".parse().unwrap()],
        }
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<FieldValue>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), vec![FieldValue::Text(v.to_string())]))
            .collect()
    }

    #[test]
    fn volunteer_writes_own_check_ins_in_own_team_only() {
        let v = ctx(Role::Volunteer);
        let mine = values(&[("volunteer_id", "u1"), ("status", "submitted")]);
        assert!(check_write(&v, Kind::CheckIn, "team:1", None, &mine).is_ok());
        assert!(check_write(&v, Kind::CheckIn, "team:2", None, &mine).is_err());
        let theirs = values(&[("volunteer_id", "u2"), ("status", "submitted")]);
        assert!(check_write(&v, Kind::CheckIn, "team:1", None, &theirs).is_err());
        let confirmed = values(&[("volunteer_id", "u1"), ("status", "confirmed")]);
        assert!(check_write(&v, Kind::CheckIn, "team:1", Some(&mine), &confirmed).is_err());
        assert!(check_write(&v, Kind::VillageSurvey, "village:9", None, &mine).is_err());
    }

    #[test]
    fn office_reviews_and_resolves_but_edits_nothing_else() {
        let o = ctx(Role::Office);
        let before = values(&[("volunteer_id", "u9"), ("status", "submitted")]);
        let reviewed = values(&[("volunteer_id", "u9"), ("status", "confirmed")]);
        assert!(check_write(&o, Kind::CheckIn, "team:5", Some(&before), &reviewed).is_ok());
        let edited = values(&[("volunteer_id", "u1"), ("status", "submitted")]);
        assert!(check_write(&o, Kind::CheckIn, "team:5", Some(&before), &edited).is_err());
        let mut conflicted = values(&[("village", "x")]);
        conflicted.insert(
            "note".into(),
            vec![FieldValue::Text("a".into()), FieldValue::Text("b".into())],
        );
        let resolved = values(&[("village", "x"), ("note", "a")]);
        assert!(
            check_write(
                &o,
                Kind::VillageSurvey,
                "village:1",
                Some(&conflicted),
                &resolved
            )
            .is_ok()
        );
        assert!(check_write(&o, Kind::CheckIn, "team:5", None, &before).is_err());
    }
}
