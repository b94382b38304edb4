//! One-time enrollment codes, shared by the `enroll` command and the dashboard, the QR
//! payload that carries server address, certificate fingerprint and code to a phone, and the
//! guard that makes guessing a code infeasible.
//!
//! # Why guessing is infeasible without blocking addresses
//!
//! A code is 12 characters from a 32-letter alphabet (60 bits). Its first
//! [`CODE_ID_CHARS`] characters name it: no two live codes share them. A wrong code that
//! names no live code cannot succeed whatever follows, so it costs nothing to refuse and is not
//! counted. A wrong code that names a live code is counted against that code: after
//! [`CodeGuard::FREE_TRIES`] wrong tries, the code accepts one try per cooldown (a minute).
//! Guessing the remaining 40 bits at one try a minute for the 30 days a code may live gives
//! about 43,000 tries against 10^12 possibilities: a chance of 4 in 10^8 per code.
//!
//! Nothing here looks at the source address, so one bad actor behind a carrier NAT does not
//! block the honest phones behind it; a person who mistyped their own code five times waits
//! a minute. (Each unenrolled connection may send one request, and the admission caps bound
//! how many an address holds, which bounds the rate of tries as well.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fieldsync_proto::access::Role;

pub use crate::store::normalize_code;
use crate::store::{CODE_ID_CHARS, ServerStore, StoreError, User, code_id};

/// A code just issued.
pub struct Issued {
    pub code: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Longest validity of a code: 30 days.
pub const MAX_TTL_SECS: i64 = 30 * 86400;

/// Adds `user` (or finds them unchanged) and issues a code that enrolls one device for them
/// within `ttl_secs`.
///
/// An existing user with another role or other scopes is refused: the change would silently
/// give every phone they already enrolled the new rights. [`issue_replacing`] makes it on
/// purpose.
pub fn issue(store: &ServerStore, user: &User, ttl_secs: i64) -> Result<Issued, String> {
    issue_with(store, user, ttl_secs, false)
}

/// Like [`issue`], replacing an existing device user's role, name and scopes (their enrolled
/// phones get the new rights at their next connection).
pub fn issue_replacing(store: &ServerStore, user: &User, ttl_secs: i64) -> Result<Issued, String> {
    issue_with(store, user, ttl_secs, true)
}

fn issue_with(
    store: &ServerStore,
    user: &User,
    ttl_secs: i64,
    replace: bool,
) -> Result<Issued, String> {
    if user.id.is_empty() || user.id.chars().any(char::is_whitespace) {
        return Err("a user id is one word, e.g. zhang3".into());
    }
    if user.name.is_empty() {
        return Err("a user needs a name".into());
    }
    if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
        return Err("a code is valid for between 1 second and 30 days".into());
    }
    if matches!(user.role, Role::Volunteer | Role::Village) && user.scopes.is_empty() {
        return Err(format!(
            "a {} needs at least one scope (team:<id> or village:<id>)",
            user.role
        ));
    }
    // A device user must not silently replace an office or admin account of the same id.
    if let Some(existing) = store.user(&user.id).map_err(|e| e.to_string())?
        && matches!(existing.role, Role::Office | Role::Admin)
        && existing.role != user.role
    {
        return Err(format!(
            "{} is a {} account; choose another user id for this device",
            user.id, existing.role
        ));
    }
    if let Some(existing) = store.user(&user.id).map_err(|e| e.to_string())?
        && !replace
        && (existing.role != user.role || existing.scopes != user.scopes)
    {
        let scopes: Vec<String> = existing.scopes.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{} is already a {} in {}; their enrolled phones would get the new role and scopes: \
             pass --replace to change them, or choose another user id",
            user.id,
            existing.role,
            scopes.join(", ")
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let expires_at = now + ttl_secs;
    // Ids are 20 bits: a clash with a live code is rare, and a few draws make it vanish.
    for _ in 0..16 {
        let code = new_code()?;
        match store.create_unique_code(user, &code, now, expires_at) {
            Ok(()) => return Ok(Issued { code, expires_at }),
            Err(StoreError::CodeIdTaken) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("too many live enrollment codes; let some expire or be used first".into())
}

/// Counts wrong tries per live code, and slows a code down once it has had too many.
pub struct CodeGuard {
    cooldown: Duration,
    tries: Mutex<HashMap<String, Tries>>,
}

#[derive(Clone, Copy)]
struct Tries {
    wrong: u32,
    last: Instant,
}

impl CodeGuard {
    /// Wrong tries a code takes before it is slowed down to one per cooldown.
    pub const FREE_TRIES: u32 = 5;

    /// A guard that lets a code that has had its free tries be tried once per `cooldown`.
    pub fn new(cooldown: Duration) -> CodeGuard {
        CodeGuard {
            cooldown,
            tries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the code `typed` may be tried now; if not, how long until it may.
    pub fn check(&self, typed: &str, now: Instant) -> Result<(), Duration> {
        let tries = self.tries.lock().unwrap_or_else(PoisonError::into_inner);
        match tries.get(code_id(typed)) {
            Some(t) if t.wrong >= Self::FREE_TRIES => {
                let since = now.saturating_duration_since(t.last);
                if since < self.cooldown {
                    Err(self.cooldown - since)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong try against the live code with id `id` (from [`StoreError::WrongCode`]).
    pub fn wrong(&self, id: &str, now: Instant) {
        let mut tries = self.tries.lock().unwrap_or_else(PoisonError::into_inner);
        // Only ids of live codes get here, so the map is as large as the live codes at most;
        // forgetting ones not tried for a while keeps it from holding used and expired ones.
        let forget_after = self.cooldown.max(Duration::from_secs(3600));
        tries.retain(|_, t| now.saturating_duration_since(t.last) < forget_after);
        let entry = tries.entry(id.to_string()).or_insert(Tries {
            wrong: 0,
            last: now,
        });
        entry.wrong = entry.wrong.saturating_add(1);
        entry.last = now;
    }

    /// Forgets the tries of a code that was just used.
    pub fn used(&self, typed: &str) {
        let mut tries = self.tries.lock().unwrap_or_else(PoisonError::into_inner);
        tries.remove(code_id(typed));
    }

    /// Codes with wrong tries on record.
    pub fn tracked(&self) -> usize {
        self.tries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The address phones should dial: the bound QUIC address, with the host the browser used
/// when the server listens on every interface.
pub fn server_address(sync_addr: SocketAddr, browser_host: Option<&str>) -> String {
    match browser_host {
        Some(host) if sync_addr.ip().is_unspecified() && !host.is_empty() => {
            format!("{host}:{}", sync_addr.port())
        }
        _ => sync_addr.to_string(),
    }
}

/// What the enrollment QR code holds.
pub fn qr_payload(server: &str, fingerprint: &str, code: &str) -> String {
    format!("fieldsync://enroll?server={server}&fingerprint={fingerprint}&code={code}")
}

/// Characters of a new code: 60 bits, of which the last 40 are secret even once its id is known.
pub const CODE_CHARS: usize = 12;

/// A one-time code from an alphabet without look-alike characters.
fn new_code() -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    const _: () = assert!(CODE_ID_CHARS < CODE_CHARS);
    let mut bytes = [0u8; CODE_CHARS];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no system randomness".to_string())?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_host_replaces_an_unspecified_address_only() {
        let any: SocketAddr = "0.0.0.0:4433".parse().expect("addr");
        let one: SocketAddr = "10.0.0.5:4433".parse().expect("addr");
        assert_eq!(
            server_address(any, Some("sync.example")),
            "sync.example:4433"
        );
        assert_eq!(server_address(one, Some("sync.example")), "10.0.0.5:4433");
        assert_eq!(server_address(any, None), "0.0.0.0:4433");
    }

    #[test]
    fn typed_codes_are_normalised() {
        assert_eq!(normalize_code(" abcd-efgh jkLM "), "ABCDEFGHJKLM");
        assert_eq!(normalize_code("ÄBC"), "ÄBC");
    }

    #[test]
    fn a_code_is_slowed_down_after_its_free_tries_only() {
        let guard = CodeGuard::new(Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..CodeGuard::FREE_TRIES {
            assert_eq!(guard.check("ABCDXXXXXXXX", start), Ok(()));
            guard.wrong("ABCD", start);
        }
        let later = start + Duration::from_secs(20);
        assert_eq!(
            guard.check("ABCDEFGHJKLM", later),
            Err(Duration::from_secs(40)),
            "even the right code waits: the guard cannot tell it from a guess"
        );
        assert_eq!(guard.check("WXYZEFGHJKLM", later), Ok(()), "other codes");
        let after = start + Duration::from_secs(60);
        assert_eq!(
            guard.check("ABCDEFGHJKLM", after),
            Ok(()),
            "one try a minute"
        );
        guard.wrong("ABCD", after);
        assert!(guard.check("ABCDEFGHJKLM", after).is_err());
        guard.used("ABCDEFGHJKLM");
        assert_eq!(guard.tracked(), 0);
    }

    #[test]
    fn the_guard_forgets_codes_not_tried_for_an_hour() {
        let guard = CodeGuard::new(Duration::from_secs(60));
        let start = Instant::now();
        for i in 0..100 {
            guard.wrong(&format!("{i:04}"), start);
        }
        assert_eq!(guard.tracked(), 100);
        guard.wrong("LAST", start + Duration::from_secs(3601));
        assert_eq!(guard.tracked(), 1);
    }

    #[test]
    fn issued_codes_have_unique_live_ids_and_wrong_tries_name_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ServerStore::open(dir.path()).expect("store");
        let user = User {
            id: "v1".into(),
            name: "王五".into(),
            role: Role::Volunteer,
            scopes: vec!["team:1".parse().expect("scope")],
        };
        let issued = issue(&store, &user, 3600).expect("code");
        assert_eq!(issued.code.chars().count(), CODE_CHARS);
        let now = chrono::Utc::now().timestamp();
        let twin = format!("{}ZZZZZZZZ", code_id(&issued.code));
        assert!(matches!(
            store.create_unique_code(&user, &twin, now, now + 60),
            Err(StoreError::CodeIdTaken)
        ));
        match store.enroll(&twin, "aa", now) {
            Err(StoreError::WrongCode(id)) => assert_eq!(id, code_id(&issued.code)),
            other => panic!("expected a wrong try at a live code, got {other:?}"),
        }
        assert!(matches!(
            store.enroll("QQQQQQQQQQQQ", "aa", now),
            Err(StoreError::BadCode(_))
        ));
    }

    #[test]
    fn a_code_changes_an_existing_device_users_rights_only_when_told_to() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ServerStore::open(dir.path()).expect("store");
        let volunteer = User {
            id: "zhang3".into(),
            name: "张三".into(),
            role: Role::Volunteer,
            scopes: vec!["team:1".parse().expect("scope")],
        };
        issue(&store, &volunteer, 3600).expect("first code");
        issue(&store, &volunteer, 3600).expect("a second phone, same rights");
        let widened = User {
            scopes: vec![
                "team:1".parse().expect("scope"),
                "team:2".parse().expect("scope"),
            ],
            ..volunteer.clone()
        };
        let refused = issue(&store, &widened, 3600).err().unwrap_or_default();
        assert!(refused.contains("--replace"), "{refused}");
        assert_eq!(store.user("zhang3").expect("read"), Some(volunteer));
        issue_replacing(&store, &widened, 3600).expect("on purpose");
        assert_eq!(store.user("zhang3").expect("read"), Some(widened));
    }

    #[test]
    fn a_device_code_never_replaces_a_staff_account() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ServerStore::open(dir.path()).expect("store");
        let office = User {
            id: "li".into(),
            name: "李四".into(),
            role: Role::Office,
            scopes: vec![],
        };
        crate::auth::add_staff(&store, &office, "long enough").expect("staff");
        let device_user = User {
            role: Role::Volunteer,
            scopes: vec!["team:1".parse().expect("scope")],
            ..office.clone()
        };
        let refused = issue(&store, &device_user, 3600).err().unwrap_or_default();
        assert!(refused.contains("office account"), "{refused}");
        assert_eq!(store.user("li").expect("read"), Some(office));
        let other = User {
            id: "li-phone".into(),
            ..device_user
        };
        assert!(issue(&store, &other, 3600).is_ok());
    }
}
