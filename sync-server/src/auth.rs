//! Office and admin accounts: argon2 password hashes, dashboard login sessions and API tokens.
//!
//! Session cookies and API tokens are 32 random bytes; only their SHA-256 is stored, so a copy
//! of the data folder does not let anyone log in. Each session carries its own CSRF token,
//! which every form posts back.

use fieldsync_proto::access::Role;
use fieldsync_proto::scope;
use ring::rand::{SecureRandom, SystemRandom};

use crate::store::{ApiToken, ServerStore, StaffWrite, StoreError, User, WebSession};

/// How long a dashboard login lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;

/// Shortest password `user add` accepts.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong user or password; deliberately does not say which.
    #[error("wrong user or password")]
    BadCredentials,
    /// Only office and admin users have accounts on the dashboard.
    #[error("user {0} is a {1} and cannot have a dashboard account (office or admin only)")]
    NotStaff(String, Role),
    /// The password is too short.
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    /// The user exists with another role or other scopes, and replacing was not asked for;
    /// nothing was changed.
    #[error("{0}")]
    Exists(Box<ExistingUser>),
    /// Hashing failed, or the system has no randomness.
    #[error("password hashing: {0}")]
    Crypto(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A user that [`add_staff`] would have replaced, with what depends on them.
#[derive(Debug)]
pub struct ExistingUser {
    pub user: User,
    /// The user's enrolled, unrevoked devices, which act with the user's role and scopes.
    pub devices: Vec<String>,
    /// The role the new account would have had.
    pub wanted: Role,
}

impl std::fmt::Display for ExistingUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let u = &self.user;
        write!(f, "user {} already exists as {} {}", u.id, u.role, u.name)?;
        if !u.scopes.is_empty() {
            write!(f, " (scopes {})", scope::join(&u.scopes, ", "))?;
        }
        match self.devices.len() {
            0 => write!(f, " with no enrolled devices")?,
            n => {
                let short: Vec<&str> = self
                    .devices
                    .iter()
                    .map(|d| d.get(..16).unwrap_or(d))
                    .collect();
                write!(
                    f,
                    " with {n} enrolled device{} ({}…), which would act as {} devices",
                    if n == 1 { "" } else { "s" },
                    short.join("…, "),
                    self.wanted
                )?;
            }
        }
        write!(
            f,
            "; replace it explicitly (`user add --replace`, or “replace” on the users page) \
             or choose another user id"
        )
    }
}

/// What [`add_staff`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum StaffAdded {
    /// A new account.
    New,
    /// The account existed with the same role and scopes: its name and password are new.
    Updated,
    /// The user existed as this other user and was replaced, as asked.
    Replaced(User),
}

/// A PHC string (argon2id, the crate's default parameters) for `password`.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    fill_random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Crypto(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Crypto(e.to_string()))
}

/// Whether `password` matches the stored PHC string; a malformed hash never matches.
pub fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Adds an office or admin user with a password, or gives an existing one with the same role
/// and scopes a new name and password; refuses to change an existing user's role or scopes.
pub fn add_staff(
    store: &ServerStore,
    user: &User,
    password: &str,
) -> Result<StaffAdded, AuthError> {
    add_or_replace_staff(store, user, password, false)
}

/// Like [`add_staff`], and with `replace` also replaces a user of another role or other scopes
/// (their devices then act with the new role). User and password are one transaction.
pub fn add_or_replace_staff(
    store: &ServerStore,
    user: &User,
    password: &str,
    replace: bool,
) -> Result<StaffAdded, AuthError> {
    if !matches!(user.role, Role::Office | Role::Admin) {
        return Err(AuthError::NotStaff(user.id.clone(), user.role));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword);
    }
    // Hashed before the write transaction, which must not wait on argon2.
    let phc = hash_password(password)?;
    match store.put_staff(user, &phc, replace)? {
        StaffWrite::Added => Ok(StaffAdded::New),
        StaffWrite::Updated => Ok(StaffAdded::Updated),
        StaffWrite::Replaced(old) => Ok(StaffAdded::Replaced(old)),
        StaffWrite::Refused { existing, devices } => {
            Err(AuthError::Exists(Box::new(ExistingUser {
                user: existing,
                devices,
                wanted: user.role,
            })))
        }
    }
}

/// Checks a password and opens a session; returns the cookie secret and the session.
pub fn login(
    store: &ServerStore,
    user_id: &str,
    password: &str,
    now: i64,
) -> Result<(String, User, WebSession), AuthError> {
    let user = check_password(store, user_id, password)?;
    let (secret, session) = open_session(store, &user, now)?;
    Ok((secret, user, session))
}

/// The staff user `user_id` if `password` is theirs; the argon2 work of a login.
pub fn check_password(
    store: &ServerStore,
    user_id: &str,
    password: &str,
) -> Result<User, AuthError> {
    let phc = store.password_hash(user_id)?;
    let user = store.user(user_id)?;
    let (Some(phc), Some(user)) = (phc, user) else {
        // Hash anyway, so a missing user takes as long as a wrong password.
        let _ = hash_password(password);
        return Err(AuthError::BadCredentials);
    };
    if !verify_password(&phc, password) || !matches!(user.role, Role::Office | Role::Admin) {
        return Err(AuthError::BadCredentials);
    }
    Ok(user)
}

/// Opens a login session for `user`; returns the cookie secret and the session.
pub fn open_session(
    store: &ServerStore,
    user: &User,
    now: i64,
) -> Result<(String, WebSession), AuthError> {
    let secret = new_secret()?;
    let session = WebSession {
        user_id: user.id.clone(),
        csrf: new_secret()?,
        expires_at: now + SESSION_SECONDS,
    };
    store.put_session(&secret_hash(&secret), &session)?;
    // Sessions nobody logged out of would otherwise pile up; logins are rare enough to sweep.
    store.prune_sessions(now)?;
    Ok((secret, session))
}

/// The user and session behind a cookie secret, if it is live.
pub fn session_user(
    store: &ServerStore,
    secret: &str,
    now: i64,
) -> Result<Option<(User, WebSession)>, AuthError> {
    let Some(session) = store.session(&secret_hash(secret))? else {
        return Ok(None);
    };
    if session.expires_at <= now {
        store.delete_session(&secret_hash(secret))?;
        return Ok(None);
    }
    Ok(store.user(&session.user_id)?.map(|u| (u, session)))
}

/// Ends a session.
pub fn logout(store: &ServerStore, secret: &str) -> Result<(), AuthError> {
    Ok(store.delete_session(&secret_hash(secret))?)
}

/// Issues a new API token for a staff user; the token itself is shown once and never stored.
pub fn issue_token(store: &ServerStore, user_id: &str, now: i64) -> Result<String, AuthError> {
    let user = store
        .user(user_id)?
        .ok_or_else(|| StoreError::NotFound(format!("no user {user_id}")))?;
    if !matches!(user.role, Role::Office | Role::Admin) {
        return Err(AuthError::NotStaff(user.id, user.role));
    }
    let token = format!("fst_{}", new_secret()?);
    store.put_token(
        &secret_hash(&token),
        &ApiToken {
            user_id: user.id,
            created_at: now,
        },
    )?;
    Ok(token)
}

/// The user an API token belongs to.
pub fn token_user(store: &ServerStore, token: &str) -> Result<Option<User>, AuthError> {
    let Some(entry) = store.token(&secret_hash(token))? else {
        return Ok(None);
    };
    Ok(store.user(&entry.user_id)?)
}

/// Compares two secrets by their SHA-256, so the time taken says nothing about the secret.
pub fn same_secret(a: &str, b: &str) -> bool {
    secret_hash(a) == secret_hash(b)
}

/// 32 random bytes as hex: session secrets, CSRF tokens and API tokens.
pub fn new_secret() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn secret_hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

fn fill_random(bytes: &mut [u8]) -> Result<(), AuthError> {
    SystemRandom::new()
        .fill(bytes)
        .map_err(|_| AuthError::Crypto("no system randomness".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ServerStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ServerStore::open(dir.path()).expect("store");
        (dir, store)
    }

    fn staff(id: &str, role: Role) -> User {
        User {
            id: id.into(),
            name: id.into(),
            role,
            scopes: vec![],
        }
    }

    #[test]
    fn login_checks_the_password_and_sessions_expire() {
        let (_dir, store) = store();
        add_staff(&store, &staff("li", Role::Office), "correct horse").expect("add");
        assert!(matches!(
            login(&store, "li", "wrong horse", 0),
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            login(&store, "nobody", "correct horse", 0),
            Err(AuthError::BadCredentials)
        ));
        let (secret, user, session) = login(&store, "li", "correct horse", 100).expect("login");
        assert_eq!(user.id, "li");
        let (found, _) = session_user(&store, &secret, 101)
            .expect("read")
            .expect("live session");
        assert_eq!(found.id, "li");
        assert!(
            session_user(&store, &secret, session.expires_at)
                .expect("read")
                .is_none()
        );
        assert!(session_user(&store, "forged", 101).expect("read").is_none());
        // A session that was never used again after it ended is swept at the next login.
        let (stale, _, first) = login(&store, "li", "correct horse", 200).expect("login");
        login(&store, "li", "correct horse", first.expires_at).expect("login");
        assert!(store.session(&secret_hash(&stale)).expect("read").is_none());
    }

    #[test]
    fn a_role_or_scope_change_needs_replace_and_user_and_password_change_together() {
        let (_dir, store) = store();
        let volunteer = User {
            id: "zhang3".into(),
            name: "张三".into(),
            role: Role::Volunteer,
            scopes: vec!["team:7".parse().expect("scope")],
        };
        store
            .create_code(&volunteer, "CODE1", i64::MAX)
            .expect("code");
        store
            .enroll("CODE1", "ab12cd34ef56ab12cd34", 0)
            .expect("enroll");
        let office = staff("zhang3", Role::Office);
        let refused = add_staff(&store, &office, "long enough").expect_err("refused");
        let message = refused.to_string();
        assert!(matches!(refused, AuthError::Exists(_)), "{refused:?}");
        for part in [
            "zhang3",
            "volunteer",
            "team:7",
            "ab12cd34ef56ab12",
            "office",
            "replace",
        ] {
            assert!(message.contains(part), "`{part}` missing from: {message}");
        }
        // Nothing was written: the user is still the volunteer, with no password.
        assert_eq!(store.user("zhang3").expect("read"), Some(volunteer.clone()));
        assert_eq!(store.password_hash("zhang3").expect("read"), None);
        let ctx = store
            .device_ctx("ab12cd34ef56ab12cd34")
            .expect("read")
            .expect("device");
        assert_eq!(ctx.role, Role::Volunteer);

        // Asked explicitly, the user is replaced with a password in the same write.
        let replaced = add_or_replace_staff(&store, &office, "long enough", true).expect("replace");
        assert_eq!(replaced, StaffAdded::Replaced(volunteer));
        assert_eq!(store.user("zhang3").expect("read"), Some(office.clone()));
        assert!(check_password(&store, "zhang3", "long enough").is_ok());

        // The same role and scopes again is a password change, no replace needed.
        let renamed = User {
            name: "张三丰".into(),
            ..office.clone()
        };
        assert_eq!(
            add_staff(&store, &renamed, "another password").expect("update"),
            StaffAdded::Updated
        );
        assert!(check_password(&store, "zhang3", "another password").is_ok());
        // Other scopes are a change too.
        let narrowed = User {
            scopes: vec!["team:1".parse().expect("scope")],
            ..office
        };
        assert!(matches!(
            add_staff(&store, &narrowed, "another password"),
            Err(AuthError::Exists(_))
        ));
        assert_eq!(store.user("zhang3").expect("read"), Some(renamed));
    }

    #[test]
    fn only_staff_get_accounts_and_tokens() {
        let (_dir, store) = store();
        assert!(matches!(
            add_staff(&store, &staff("v", Role::Volunteer), "long enough"),
            Err(AuthError::NotStaff(..))
        ));
        assert!(matches!(
            add_staff(&store, &staff("a", Role::Admin), "short"),
            Err(AuthError::WeakPassword)
        ));
        add_staff(&store, &staff("a", Role::Admin), "long enough").expect("add");
        let token = issue_token(&store, "a", 0).expect("token");
        assert_eq!(
            token_user(&store, &token).expect("read").map(|u| u.id),
            Some("a".into())
        );
        assert!(token_user(&store, "fst_nope").expect("read").is_none());
        assert!(issue_token(&store, "ghost", 0).is_err());
    }
}
