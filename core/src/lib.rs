//! fieldsync-core: records as Automerge documents, the device store, the sync protocol and the
//! QUIC client — everything a phone and the server share.
//!
//! Layout follows quinn's split: `model`, `record`, `access`, `protocol` and `sync` are plain
//! code with no IO; `store` (redb) and `client` (quinn) are thin layers around them.

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

pub mod access;
pub mod client;
pub mod model;
pub mod protocol;
pub mod record;
pub mod store;
pub mod sync;
pub mod tls;

pub use access::{DeviceCtx, Role};
pub use model::{FieldValue, Kind};
pub use record::{Record, RecordView};
pub use store::DeviceStore;
