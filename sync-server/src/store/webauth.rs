//! Dashboard login sessions and API tokens, each stored only under the hash of its secret.
//!
//! Storing the hash means a copy of the data folder does not let anyone log in; the office
//! HTTP layer hashes what a browser or script presents and looks that up here.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::{SESSIONS, TOKENS, USERS, WriteTyped};
use super::{ServerStore, StoreError};

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

impl ServerStore {
    /// Stores a login session under the hash of its secret.
    pub fn put_session(&self, secret_hash: &str, session: &WebSession) -> Result<(), StoreError> {
        self.put(SESSIONS, secret_hash, session)
    }

    /// The session stored under the hash of its secret, ended or not.
    pub fn session(&self, secret_hash: &str) -> Result<Option<WebSession>, StoreError> {
        self.get(SESSIONS, secret_hash)
    }

    /// Removes every session that ended at or before `now`; returns how many.
    pub fn prune_sessions(&self, now: i64) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
        let removed = {
            let mut table = tx.open_table(SESSIONS)?;
            let mut ended = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let session = value.value().decode()?;
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

    /// Ends a session (logout); nothing happens if there is none.
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
            tx.open_table(TOKENS)?.put_encoded(token_hash, token)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The API token stored under its hash.
    pub fn token(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        self.get(TOKENS, token_hash)
    }
}
