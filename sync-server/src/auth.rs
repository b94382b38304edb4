//! Office and admin accounts: argon2 password hashes, dashboard login sessions and API tokens.
//!
//! Session cookies and API tokens are 32 random bytes; only their SHA-256 is stored, so a copy
//! of the data folder does not let anyone log in. Each session carries its own CSRF token,
//! which every form posts back.

use fieldsync_proto::access::Role;
use ring::rand::{SecureRandom, SystemRandom};

use crate::store::{ApiToken, ServerStore, StoreError, User, WebSession};

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
    /// Hashing failed, or the system has no randomness.
    #[error("password hashing: {0}")]
    Crypto(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// Adds (or replaces) an office or admin user with a password.
pub fn add_staff(store: &ServerStore, user: &User, password: &str) -> Result<(), AuthError> {
    if !matches!(user.role, Role::Office | Role::Admin) {
        return Err(AuthError::NotStaff(user.id.clone(), user.role));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword);
    }
    let phc = hash_password(password)?;
    store.put_user(user)?;
    store.set_password(&user.id, &phc)?;
    Ok(())
}

/// Checks a password and opens a session; returns the cookie secret and the session.
pub fn login(
    store: &ServerStore,
    user_id: &str,
    password: &str,
    now: i64,
) -> Result<(String, User, WebSession), AuthError> {
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
    let secret = new_secret()?;
    let session = WebSession {
        user_id: user.id.clone(),
        csrf: new_secret()?,
        expires_at: now + SESSION_SECONDS,
    };
    store.put_session(&secret_hash(&secret), &session)?;
    // Sessions nobody logged out of would otherwise pile up; logins are rare enough to sweep.
    store.prune_sessions(now)?;
    Ok((secret, user, session))
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
