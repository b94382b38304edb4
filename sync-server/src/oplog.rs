//! The operator's log: security and office events as structured log lines that can be kept.
//!
//! Every event is a `tracing` event with target `fieldsync::oplog`, an `event` field naming
//! it, and fields saying who (device, user, address), what and which record. With
//! `fieldsync-server --log-json` each is one JSON object per line, so a collector (journald,
//! a syslog relay, a file rotated daily) can keep them; 等保 (MLPS 2.0) asks for network logs
//! kept at least six months, which is the collector's retention setting, not the server's.
//! `RUST_LOG=fieldsync::oplog=info,warn` keeps just these.
//!
//! Events are functions rather than ad-hoc log lines so that every place that reports the
//! same thing reports it with the same name and fields.

use std::net::IpAddr;

use fieldsync_proto::protocol::Refusal;

const TARGET: &str = "fieldsync::oplog";

/// A device enrolled with a one-time code.
pub fn device_enrolled(device: &str, user: &str, address: IpAddr) {
    tracing::info!(target: TARGET, event = "device_enrolled", device, user, %address, "device enrolled");
}

/// An enrollment code was refused: unknown, expired, already used, or the device is enrolled.
pub fn code_refused(device: &str, address: IpAddr, reason: &str) {
    tracing::warn!(target: TARGET, event = "code_refused", device, %address, reason, "enrollment code refused");
}

/// A code was tried while it is slowed down after too many wrong tries.
pub fn code_rate_limited(device: &str, address: IpAddr) {
    tracing::warn!(target: TARGET, event = "code_rate_limited", device, %address, "enrollment code tried too often");
}

/// A revoked device tried to connect.
pub fn revoked_device(device: &str, address: IpAddr) {
    tracing::warn!(target: TARGET, event = "revoked_device", device, %address, "revoked device refused");
}

/// An unenrolled device asked for something other than enrollment.
pub fn unenrolled_request(device: &str, address: IpAddr) {
    tracing::info!(target: TARGET, event = "unenrolled_request", device, %address, "request from an unenrolled device refused");
}

/// A TLS handshake failed: among others, a phone whose pinned fingerprint is not this
/// server's certificate aborts here (a wrong fingerprint at enrollment, or someone posing as
/// the server on the phone's path).
pub fn handshake_failed(address: IpAddr, error: &str) {
    tracing::info!(target: TARGET, event = "handshake_failed", %address, error, "handshake failed");
}

/// A connection or handshake got no slot.
pub fn connection_busy(address: IpAddr, reason: &str) {
    tracing::info!(target: TARGET, event = "connection_busy", %address, reason, "no connection slot");
}

/// A device went over the sync rate limit.
pub fn rounds_rate_limited(device: &str, user: &str) {
    tracing::warn!(target: TARGET, event = "rounds_rate_limited", device, user, "sync rate limit hit");
}

/// The server refused records of a device's push, each with its reason.
pub fn records_refused(device: &str, user: &str, refused: &[Refusal]) {
    for refusal in refused {
        let record = uuid::Uuid::from_bytes(refusal.id).to_string();
        tracing::warn!(
            target: TARGET,
            event = "record_refused",
            device,
            user,
            record = %record,
            reason = %refusal.reason,
            "record refused"
        );
    }
}

/// Office staff did something to a record or a device: `action` names it (review, resolve,
/// revoke, code_issued, …), `subject` is the record or device id, `detail` the rest.
pub fn office_action(staff: &str, action: &str, subject: &str, detail: &str) {
    tracing::info!(target: TARGET, event = "office_action", staff, action, subject, detail, "office action");
}
