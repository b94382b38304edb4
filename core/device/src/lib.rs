//! fieldsync-device: the device side of fieldsync, a thin IO layer over `fieldsync-proto`.
//!
//! [`store`] keeps records, projections, pending changes, cursors and the device identity in
//! one redb file, each local write one durable transaction; [`client`] drives the proto crate's
//! round state machine over quinn; [`tls`] makes keys and certificates and both sides' rustls
//! configuration and [`transport`] the QUIC settings and frame reader (the server uses both); the `fieldsync` binary is the command line over
//! the store and the client.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

/// Implements `From` for each redb error type on an error enum with a `Database(redb::Error)`
/// variant, so `?` works on every redb call of a store.
#[macro_export]
macro_rules! impl_from_redb {
    ($target:ty) => {
        $crate::impl_from_redb!(
            $target: redb::TransactionError,
            redb::TableError,
            redb::StorageError,
            redb::CommitError
        );
    };
    ($target:ty: $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                Self::Database(e.into())
            }
        }
    )*};
}

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod store;
pub mod tls;
pub mod transport;

pub use store::DeviceStore;
