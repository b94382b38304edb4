//! Every redb table of the server store, in one place.
//!
//! One list makes it plain what a data folder holds and lets `ServerStore::open` create each
//! table up front, so readers never meet a missing table.

use redb::TableDefinition;

/// Automerge bytes of each record: a saved document and/or appended change chunks.
pub(super) const DOCS: TableDefinition<u128, &[u8]> = TableDefinition::new("docs");
/// JSON projection of each record (fields and conflicts), for lists and exports.
pub(super) const VIEWS: TableDefinition<u128, &[u8]> = TableDefinition::new("views");
/// Each record's fixed kind and scope, its feed position and heads (postcard `IndexEntry`).
pub(super) const INDEX: TableDefinition<u128, &[u8]> = TableDefinition::new("index");
/// The change feed: (scope, seq) → record; each record appears once, at its latest seq.
pub(super) const FEED: TableDefinition<(&str, u64), u128> = TableDefinition::new("feed");
/// Every scope with its latest seq.
pub(super) const SCOPES: TableDefinition<&str, u64> = TableDefinition::new("scopes");
/// (record, seq) → who pushed which changes when (JSON `Receipt`).
pub(super) const RECEIPTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("receipts");
/// Users by id (JSON `User`).
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Devices by device id (JSON `Device`).
pub(super) const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// One-time enrollment codes (JSON `Code`).
pub(super) const CODES: TableDefinition<&str, &[u8]> = TableDefinition::new("codes");
/// Office and admin password hashes (PHC strings) by user id.
pub(super) const PASSWORDS: TableDefinition<&str, &str> = TableDefinition::new("passwords");
/// Dashboard login sessions by the SHA-256 (hex) of their cookie secret (JSON `WebSession`).
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// API tokens by the SHA-256 (hex) of the token (JSON `ApiToken`).
pub(super) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Counters.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The key in [`META`] of the last feed seq handed out, across all scopes.
pub(super) const META_SEQ: &str = "last_seq";
