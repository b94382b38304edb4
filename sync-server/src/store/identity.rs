//! Users, devices, enrollment codes and staff passwords: who may connect and as whom.
//!
//! Kept apart from the records because these change rarely, by hand (CLI, admin), while
//! records change every round; an enrollment consumes its code and adds the device in one
//! durable transaction so a code can never enroll two phones.

use fieldsync_proto::Scope;
use fieldsync_proto::access::{DeviceCtx, Role};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{CODES, DEVICES, Json, PASSWORDS, ReadTyped, USERS, WriteTyped};
use super::{ServerStore, StoreError};

/// A person: a field worker with devices, or an office or admin account with a password.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub scopes: Vec<Scope>,
}

/// An enrolled phone; its id is the hex of its public key, which is also its Automerge actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    pub user_id: String,
    /// Unix seconds.
    pub enrolled_at: i64,
    pub revoked: bool,
    /// Unix seconds of the last committed round.
    pub last_sync: Option<i64>,
}

/// What [`ServerStore::put_staff`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum StaffWrite {
    /// A new user.
    Added,
    /// The user existed with the same role and scopes; name and password are replaced.
    Updated,
    /// The user existed with another role or other scopes (this one) and was replaced, as asked.
    Replaced(User),
    /// The user exists with another role or other scopes, and replacing was not asked for:
    /// nothing was written. `devices` are the user's enrolled (not revoked) devices.
    Refused {
        existing: User,
        devices: Vec<String>,
    },
}

/// Whether two users' records give the same access: the same role and the same scopes, in any
/// order.
fn same_access(a: &User, b: &User) -> bool {
    let scopes = |u: &User| {
        let mut s = u.scopes.clone();
        s.sort();
        s.dedup();
        s
    };
    a.role == b.role && scopes(a) == scopes(b)
}

/// A one-time enrollment code: for whom, until when (Unix seconds), and which device used it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Code {
    user_id: String,
    expires_at: i64,
    used_by: Option<String>,
}

/// Leading characters of an enrollment code that name it: no two live codes share them, so a
/// wrong guess that starts like a live code is counted against that code (see
/// `enrollment::CodeGuard`), and one that starts like none can never succeed.
pub const CODE_ID_CHARS: usize = 4;

/// A code as the person typed it, in the form it is stored and looked up: groups may be
/// separated by spaces or dashes, letters may be lower case.
pub fn normalize_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// The part of `code` that names it.
pub fn code_id(code: &str) -> &str {
    match code.char_indices().nth(CODE_ID_CHARS) {
        Some((end, _)) => &code[..end],
        None => code,
    }
}

impl Code {
    fn is_live(&self, now: i64) -> bool {
        self.used_by.is_none() && self.expires_at > now
    }
}

impl ServerStore {
    /// Adds or replaces a user and issues a one-time code that enrolls one device for them.
    pub fn create_code(&self, user: &User, code: &str, expires_at: i64) -> Result<(), StoreError> {
        self.write_code(user, code, expires_at, None)
    }

    /// Like [`ServerStore::create_code`], but refuses (with [`StoreError::CodeIdTaken`]) a code
    /// whose id a live code already has, in the same transaction, so ids stay unique.
    pub fn create_unique_code(
        &self,
        user: &User,
        code: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write_code(user, code, expires_at, Some(now))
    }

    fn write_code(
        &self,
        user: &User,
        code: &str,
        expires_at: i64,
        unique_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let normalized = normalize_code(code);
        let code = normalized.as_str();
        let tx = self.db.begin_write()?;
        if let Some(now) = unique_at
            && live_code_with_id(&tx.open_table(CODES)?, code_id(code), now)?
        {
            return Err(StoreError::CodeIdTaken);
        }
        tx.open_table(USERS)?.put_encoded(user.id.as_str(), user)?;
        let entry = Code {
            user_id: user.id.clone(),
            expires_at,
            used_by: None,
        };
        tx.open_table(CODES)?.put_encoded(code, &entry)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds or replaces a user (office and admin accounts have no devices, only passwords).
    pub fn put_user(&self, user: &User) -> Result<(), StoreError> {
        self.put(USERS, user.id.as_str(), user)
    }

    /// Writes a staff user and their password hash (a PHC string) in one transaction.
    ///
    /// A user who exists with another role or other scopes is replaced only if `replace` is
    /// set: their enrolled devices act with the user's role and scopes, so a silent change
    /// would quietly widen (or narrow) what those phones may do. The check and the write are
    /// one transaction, so no other change can slip between them.
    pub fn put_staff(
        &self,
        user: &User,
        phc: &str,
        replace: bool,
    ) -> Result<StaffWrite, StoreError> {
        let tx = self.db.begin_write()?;
        let outcome = {
            let mut users = tx.open_table(USERS)?;
            let existing = users.get_decoded(user.id.as_str())?;
            let outcome = match existing {
                None => StaffWrite::Added,
                Some(old) if same_access(&old, user) => StaffWrite::Updated,
                Some(old) if replace => StaffWrite::Replaced(old),
                Some(existing) => {
                    let mut devices = Vec::new();
                    for entry in tx.open_table(DEVICES)?.iter()? {
                        let device: Device = entry?.1.value().decode()?;
                        if device.user_id == user.id && !device.revoked {
                            devices.push(device.device_id);
                        }
                    }
                    // Dropping the transaction unwritten aborts it.
                    return Ok(StaffWrite::Refused { existing, devices });
                }
            };
            users.put_encoded(user.id.as_str(), user)?;
            tx.open_table(PASSWORDS)?.insert(user.id.as_str(), phc)?;
            outcome
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// A user by id.
    pub fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.get(USERS, id)
    }

    /// Every user, by id.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.all(USERS)
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

    /// A user's password hash (a PHC string), if they have one.
    pub fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(PASSWORDS)?;
        Ok(table.get(user_id)?.map(|v| v.value().to_string()))
    }

    /// Consumes a code for a device, durably; a code enrolls one device, once.
    pub fn enroll(
        &self,
        code: &str,
        device_id: &str,
        now: i64,
    ) -> Result<(User, Device), StoreError> {
        let normalized = normalize_code(code);
        let code = normalized.as_str();
        let tx = self.db.begin_write()?;
        let result = {
            let mut codes = tx.open_table(CODES)?;
            let mut devices = tx.open_table(DEVICES)?;
            let users = tx.open_table(USERS)?;
            let Some(entry) = codes.get_decoded(code)? else {
                if live_code_with_id(&codes, code_id(code), now)? {
                    return Err(StoreError::WrongCode(code_id(code).to_string()));
                }
                return Err(StoreError::BadCode("unknown enrollment code".into()));
            };
            // The same device sending the code it enrolled with: its reply was lost. Answer
            // the same enrollment again (even past the code's expiry: it was used in time).
            if entry.used_by.as_deref() == Some(device_id) {
                let device = devices.get_decoded(device_id)?;
                let user = users.get_decoded(entry.user_id.as_str())?;
                return match (device, user) {
                    (Some(device), Some(user)) if !device.revoked && device.user_id == user.id => {
                        Ok((user, device))
                    }
                    _ => Err(StoreError::BadCode(
                        "this enrollment code was already used".into(),
                    )),
                };
            }
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
            let Some(user) = users.get_decoded(entry.user_id.as_str())? else {
                return Err(StoreError::NotFound(format!("no user {}", entry.user_id)));
            };
            let device = Device {
                device_id: device_id.to_string(),
                user_id: user.id.clone(),
                enrolled_at: now,
                revoked: false,
                last_sync: None,
            };
            devices.put_encoded(device_id, &device)?;
            let used = Code {
                used_by: Some(device_id.to_string()),
                ..entry
            };
            codes.put_encoded(code, &used)?;
            (user, device)
        };
        tx.commit()?;
        Ok(result)
    }

    /// The device's context for a connection, or None if unknown or revoked.
    pub fn device_ctx(&self, device_id: &str) -> Result<Option<DeviceCtx>, StoreError> {
        let tx = self.db.begin_read()?;
        let devices = tx.open_table(DEVICES)?;
        let Some(device) = devices.get_decoded(device_id)? else {
            return Ok(None);
        };
        if device.revoked {
            return Ok(None);
        }
        let users = tx.open_table(USERS)?;
        let Some(user) = users.get_decoded(device.user_id.as_str())? else {
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
            let Some(mut device) = devices.get_decoded(device_id)? else {
                return Err(StoreError::NotFound(format!("no device {device_id}")));
            };
            device.revoked = true;
            devices.put_encoded(device_id, &device)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every device, by id.
    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.all(DEVICES)
    }
}

/// Whether a code that is neither used nor expired at `now` starts with `id`.
fn live_code_with_id(
    codes: &impl ReadableTable<&'static str, Json<Code>>,
    id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    for entry in codes.range(id..)? {
        let (key, value) = entry?;
        if code_id(key.value()) != id {
            break;
        }
        let code: Code = value.value().decode()?;
        if code.is_live(now) {
            return Ok(true);
        }
    }
    Ok(false)
}
