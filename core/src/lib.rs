//! fieldsync-core: records as Automerge documents, the device store, the sync protocol and the
//! QUIC client — everything a phone and the server share.
//!
//! Layout follows quinn's split: `model`, `record`, `access`, `protocol` and `sync` are plain
//! code with no IO; `store` (redb) and `client` (quinn) are thin layers around them.

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
