//! fieldsync-proto: what a phone and the sync server share, as plain code with no IO.
//!
//! As quinn-proto sits under quinn, this crate holds the logic and its drivers stay thin:
//! [`model`] (record kinds and schemas), [`scope`] (typed scopes), [`access`] (roles and write
//! rules), [`record`] (one record = one Automerge document), [`hours`] (volunteer hours by
//! review status), [`protocol`] (wire messages, framing, close codes) and [`sync`] (both sides' round state machines and the server's merge
//! rule). Messages and results go in, effects come out, time is passed in. Its normal
//! dependencies contain no socket, TLS, storage or async runtime crate; `.ci/run` checks that.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod hours;
pub mod model;
pub mod protocol;
pub mod record;
pub mod scope;
pub mod sync;

pub use access::{DeviceCtx, Role};
pub use model::{FieldValue, Kind, Status};
pub use record::{Record, RecordView};
pub use scope::{Scope, ScopeLevel};
