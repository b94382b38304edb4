//! The sync protocol as plain code: both sides' state machines and the server's merge rule.
//!
//! Nothing here does IO. The QUIC client and server and the redb stores are thin drivers: they
//! move messages, run the effects a state machine returns against their store, and feed the
//! results back in.
//!
//! - [`client`]: the device's round ([`ClientRound`], driven by [`drive_round`]).
//! - [`server`]: the server's answer to one request ([`ServerExchange`]): commit these pushes,
//!   read the feed since these cursors, fetch these changes, reply.
//! - [`merge`]: the merge rule the server applies to every push ([`merge_push`]).
//! - [`retry`]: when a device tries again after losing the connection ([`Backoff`]).

pub mod client;
pub mod merge;
pub mod retry;
pub mod server;

pub use client::{
    BatchLimits, ClientRound, Effect, Input, Pending, Progress, RoundDriver, RoundError,
    RoundReport, RoundStart, drive_round, split_batches,
};
pub use merge::{COMPACT_AFTER_BYTES, MergeError, Merged, StoredDoc, changes_for, merge_push};
pub use retry::Backoff;
pub use server::{ServerEffect, ServerExchange, ServerInput, StorageFailure};
