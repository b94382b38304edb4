//! The one error type foreign code sees, sorted by what the app can do about it.

use fieldsync_device::client::ClientError;
use fieldsync_device::store::StoreError;
use fieldsync_device::tls::TlsError;
use fieldsync_proto::model::ValidationError;
use fieldsync_proto::protocol::ErrorCode;
use fieldsync_proto::record::RecordError;

/// Why a `FieldStore` call failed. Local data is unchanged by every one of these.
///
/// Each variant carries a human-readable message (in Kotlin `e.message`, in Python `str(e)`,
/// in Swift the associated value); the variant tells the app what to do:
///
/// - `NotEnrolled`: show the enrollment screen.
/// - `Network`: no connection or the server vanished: keep working offline, sync later.
/// - `Unauthorized`: the server does not know this device or it was revoked: enroll again.
/// - `Certificate`: the server did not prove the identity pinned at enrollment (a wrong
///   fingerprint, or something posing as the server): nothing was sent; check the fingerprint
///   with the office. Trying again will not help.
/// - `Refused`: the server refused the request (bad or used enrollment code, too many syncs,
///   another protocol version), or the phone refused a write the user's role and scopes do not
///   allow (the same reason the server would give; nothing was written): show the message.
/// - `InvalidInput`: the input breaks the record's schema (unknown kind or field, wrong type,
///   bad scope or timestamp, missing required field): fix the form.
/// - `NotFound`: no record with this id on the device.
/// - `Storage`: the phone's store failed (disk, corrupt data, the store opened twice).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum FieldSyncError {
    #[error("{message}")]
    NotEnrolled { message: String },
    #[error("{message}")]
    Network { message: String },
    #[error("{message}")]
    Unauthorized { message: String },
    #[error("{message}")]
    Certificate { message: String },
    #[error("{message}")]
    Refused { message: String },
    #[error("{message}")]
    InvalidInput { message: String },
    #[error("{message}")]
    NotFound { message: String },
    #[error("{message}")]
    Storage { message: String },
}

impl FieldSyncError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        FieldSyncError::InvalidInput {
            message: message.into(),
        }
    }
}

impl From<StoreError> for FieldSyncError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotEnrolled => FieldSyncError::NotEnrolled { message },
            StoreError::NotFound(_) => FieldSyncError::NotFound { message },
            StoreError::NoTeamScope | StoreError::NotRefused { .. } => {
                FieldSyncError::InvalidInput { message }
            }
            StoreError::Forbidden(_) => FieldSyncError::Refused { message },
            StoreError::Record(r) => r.into(),
            StoreError::Database(_)
            | StoreError::Folder { .. }
            | StoreError::InUse(_)
            | StoreError::Corrupt(_)
            | StoreError::Tls(_) => FieldSyncError::Storage { message },
        }
    }
}

impl From<RecordError> for FieldSyncError {
    fn from(e: RecordError) -> Self {
        let message = e.to_string();
        match e {
            RecordError::Invalid(_) | RecordError::UnknownField { .. } => {
                FieldSyncError::InvalidInput { message }
            }
            // Documents on the device are written by this code; one that does not load is
            // damaged storage, not bad input.
            RecordError::Automerge(_) => FieldSyncError::Storage { message },
        }
    }
}

impl From<ValidationError> for FieldSyncError {
    fn from(e: ValidationError) -> Self {
        FieldSyncError::invalid(e.to_string())
    }
}

impl From<ClientError> for FieldSyncError {
    fn from(e: ClientError) -> Self {
        let message = e.to_string();
        match e {
            ClientError::NotEnrolled => FieldSyncError::NotEnrolled { message },
            ClientError::Network(_) => FieldSyncError::Network { message },
            ClientError::Refused {
                code: ErrorCode::Unauthorized,
                ..
            } => FieldSyncError::Unauthorized { message },
            ClientError::Refused { .. } => FieldSyncError::Refused { message },
            ClientError::Certificate(_) => FieldSyncError::Certificate { message },
            // The server (or something posing as it on the path) spoke nonsense: as far as the
            // app is concerned the sync failed in transit and is simply run again later.
            ClientError::Protocol(_) => FieldSyncError::Network { message },
            ClientError::Store(s) => s.into(),
            ClientError::Tls(TlsError::BadFingerprint) => FieldSyncError::InvalidInput { message },
            ClientError::Tls(TlsError::Certificate(_)) => FieldSyncError::Storage { message },
            ClientError::Tls(TlsError::Config(_)) => FieldSyncError::Network { message },
        }
    }
}
