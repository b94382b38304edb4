//! The one error type foreign code sees, sorted by what the app can do about it.

use fieldsync_device::client::ClientError;
use fieldsync_device::store::StoreError;
use fieldsync_device::tls::TlsError;
use fieldsync_proto::model::ValidationError;
use fieldsync_proto::protocol::ErrorClass;
use fieldsync_proto::record::RecordError;

/// Why a `FieldStore` call failed. Local data is unchanged by every one of these.
///
/// Each variant carries a human-readable message (in Kotlin `e.message`, in Python `str(e)`,
/// in Swift the associated value); the variant tells the app what to do:
///
/// - `NotEnrolled`: show the enrollment screen.
/// - `Network`: no connection or the server vanished: keep working offline, sync later.
/// - `ServerUnavailable`: the server was reached but could not take the round now (its storage
///   failed, it could not look this phone up, it is restarting, or it asked for fewer syncs a
///   minute): nothing is lost, everything stays pending; sync later. Retried on its own by
///   `BackgroundSync`, like `Network`.
/// - `Unauthorized`: the server does not know this device or it was revoked: enroll again.
/// - `Certificate`: the server did not prove the identity pinned at enrollment (a wrong
///   fingerprint, or something posing as the server): nothing was sent; check the fingerprint
///   with the office. Trying again will not help.
/// - `Refused`: the server refused the request (bad or used enrollment code, a malformed or
///   too large request, another protocol version), or the phone refused a write the user's
///   role and scopes do not allow (the same reason the server would give; nothing was
///   written): show the message; the same again would be refused again.
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
    ServerUnavailable { message: String },
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
            // The server's answers sort by the class of their code, the same table the device
            // client uses, so the two cannot disagree.
            ClientError::Refused { code, .. } | ClientError::Unavailable { code, .. } => {
                match code.class() {
                    ErrorClass::Refused => FieldSyncError::Refused { message },
                    ErrorClass::Unauthorized => FieldSyncError::Unauthorized { message },
                    ErrorClass::Retry => FieldSyncError::ServerUnavailable { message },
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_proto::protocol::ErrorCode;

    fn variant(e: &FieldSyncError) -> &'static str {
        match e {
            FieldSyncError::NotEnrolled { .. } => "NotEnrolled",
            FieldSyncError::Network { .. } => "Network",
            FieldSyncError::ServerUnavailable { .. } => "ServerUnavailable",
            FieldSyncError::Unauthorized { .. } => "Unauthorized",
            FieldSyncError::Certificate { .. } => "Certificate",
            FieldSyncError::Refused { .. } => "Refused",
            FieldSyncError::InvalidInput { .. } => "InvalidInput",
            FieldSyncError::NotFound { .. } => "NotFound",
            FieldSyncError::Storage { .. } => "Storage",
        }
    }

    /// Every error the device client gives a round maps to the variant its class calls for:
    /// the server's trouble (Internal, rate limits, a failed device lookup, shutting down) is
    /// retried, never shown as a refusal or as "enroll again".
    #[test]
    fn client_errors_map_to_their_class() {
        let answered = |code| ClientError::answered(code, "why".into());
        let cases: Vec<(&str, ClientError, &str)> = vec![
            ("no signal", ClientError::Network("gone".into()), "Network"),
            (
                "storage failed",
                answered(ErrorCode::Internal),
                "ServerUnavailable",
            ),
            (
                "too many syncs",
                answered(ErrorCode::RateLimited),
                "ServerUnavailable",
            ),
            (
                "a retry-class code however it was wrapped",
                ClientError::Refused {
                    code: ErrorCode::Internal,
                    message: "storage failed".into(),
                },
                "ServerUnavailable",
            ),
            ("revoked", answered(ErrorCode::Unauthorized), "Unauthorized"),
            ("bad code", answered(ErrorCode::BadCode), "Refused"),
            ("too large", answered(ErrorCode::TooLarge), "Refused"),
            ("malformed", answered(ErrorCode::Malformed), "Refused"),
            ("old app", answered(ErrorCode::Version), "Refused"),
            ("not enrolled", ClientError::NotEnrolled, "NotEnrolled"),
            (
                "wrong certificate",
                ClientError::Certificate("alert".into()),
                "Certificate",
            ),
        ];
        for (name, client, expected) in cases {
            let retry = client.is_retryable();
            let e = FieldSyncError::from(client);
            assert_eq!(variant(&e), expected, "{name}: {e:?}");
            let retried = crate::background::SyncFailure::of(&e).is_none();
            assert_eq!(
                retried, retry,
                "{name}: background sync retries what core calls retry"
            );
        }
    }
}
