//! One-time enrollment codes, shared by the `enroll` command and the dashboard, and the QR
//! payload that carries server address, certificate fingerprint and code to a phone.

use std::net::SocketAddr;

use fieldsync_proto::access::Role;

use crate::store::{ServerStore, User};

/// A code just issued.
pub struct Issued {
    pub code: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Longest validity of a code: 30 days.
pub const MAX_TTL_SECS: i64 = 30 * 86400;

/// Adds or updates `user` and issues a code that enrolls one device for them within `ttl_secs`.
pub fn issue(store: &ServerStore, user: &User, ttl_secs: i64) -> Result<Issued, String> {
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
    let code = new_code()?;
    let expires_at = chrono::Utc::now().timestamp() + ttl_secs;
    store
        .create_code(user, &code, expires_at)
        .map_err(|e| e.to_string())?;
    Ok(Issued { code, expires_at })
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

/// A 10-character one-time code from an alphabet without look-alike characters.
fn new_code() -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 10];
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
