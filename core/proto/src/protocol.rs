//! Wire messages, framing with a hard size cap, and the checks on incoming Automerge bytes.
//!
//! Every exchange is one QUIC bidirectional stream carrying one request frame and one reply
//! frame. A frame is a 4-byte big-endian body length, then the body: one encoding byte
//! (0 = plain, 1 = raw deflate) and the postcard-encoded message. The body length is checked
//! against the cap before anything is allocated, and a deflated body is inflated through a
//! counter that stops at the cap, so neither a lying length nor a zip bomb costs memory.
//!
//! A round is a few exchanges whatever the number of documents. `Sync` carries one batch of
//! pending documents and/or a pull since the device's cursors; pending documents go in bounded
//! batches, each acknowledged durably on its own, so a reply lost with the signal costs one
//! batch, and the last batch travels with the pull. The reply acknowledges the batch by its id
//! and names only the refused documents (the device knows what it pushed), and lists what
//! changed in the device's scopes — leaving out documents whose latest change is the asking
//! device's own push. For scopes the device has nothing of yet (a fresh phone) the reply holds
//! the documents themselves; otherwise `Fetch` sends the device's heads of the changed
//! documents it lacks and receives exactly the missing changes.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::model::Kind;

/// The protocol version this build speaks; both sides refuse any other.
///
/// 3: a batch's acknowledgement also names the documents the server deferred (its own trouble
/// with them, retried next round), and the server closes a connection it cannot look up with
/// [`close::SERVER_ERROR`].
pub const PROTOCOL_VERSION: u16 = 3;

/// The ALPN protocol id of fieldsync over QUIC.
pub const ALPN: &[u8] = b"fieldsync/1";

/// The server name devices present; the certificate is pinned, so the name is not checked.
pub const SERVER_NAME: &str = "fieldsync";

/// Application close codes of a fieldsync QUIC connection.
pub mod close {
    use super::ErrorClass;

    /// Normal end of a session.
    pub const DONE: u32 = 0;
    /// The device is unknown or revoked.
    pub const UNAUTHORIZED: u32 = 1;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// The server has no connection slot for this device now (too many connections at once,
    /// from this address, or of unenrolled devices): try again shortly.
    pub const BUSY: u32 = 5;
    /// The server had trouble of its own (its storage failed while looking the device up).
    pub const SERVER_ERROR: u32 = 4;

    /// What a device does about a connection closed with `code`.
    ///
    /// Only [`UNAUTHORIZED`] is an answer about the device; every other code, known or not
    /// (a newer server may add some), is the server or the path going away: try again.
    pub fn class(code: u64) -> ErrorClass {
        match u32::try_from(code) {
            Ok(UNAUTHORIZED) => ErrorClass::Unauthorized,
            _ => ErrorClass::Retry,
        }
    }
}

/// Bytes of a frame's length prefix.
pub const LENGTH_PREFIX: usize = 4;

const ENCODING_PLAIN: u8 = 0;
const ENCODING_DEFLATE: u8 = 1;
/// Bodies smaller than this are not worth deflating.
const DEFLATE_THRESHOLD: usize = 256;

/// The limits both sides enforce on what they receive. All configurable; the defaults suit a
/// phone syncing a few thousand records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame body on the wire, checked before allocating.
    pub max_frame_bytes: usize,
    /// Largest message after inflating a compressed frame or Automerge chunk.
    pub max_inflated_bytes: usize,
    /// Most documents pushed or fetched in one exchange.
    pub max_docs_per_exchange: usize,
    /// Most Automerge changes in one round.
    pub max_changes_per_round: usize,
    /// Most operations in one change.
    pub max_ops_per_change: usize,
    /// Largest stored document after a merge.
    pub max_doc_bytes: usize,
    /// Most sync rounds one device may start per minute.
    pub max_rounds_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 << 20,
            max_inflated_bytes: 64 << 20,
            max_docs_per_exchange: 10_000,
            max_changes_per_round: 100_000,
            max_ops_per_change: 10_000,
            max_doc_bytes: 4 << 20,
            max_rounds_per_minute: 120,
        }
    }
}

/// A document id on the wire: the record's UUID bytes.
pub type DocId = [u8; 16];
/// An Automerge change hash on the wire.
pub type Hash = [u8; 32];

/// A message from a device to the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Binds the connecting device's key to the user behind a one-time code.
    Enroll {
        /// The protocol version the device speaks.
        version: u16,
        /// The one-time code an admin issued.
        code: String,
    },
    /// Pushes one batch of pending documents and/or pulls what changed since the cursors.
    Sync {
        /// The protocol version the device speaks.
        version: u16,
        /// Pending documents to store, if any are left to push.
        batch: Option<Batch>,
        /// What to pull, on the round's last exchange of pushes (or alone).
        pull: Option<Pull>,
    },
    /// Asks for the changes of documents the device lacks, given what it has.
    Fetch {
        /// The protocol version the device speaks.
        version: u16,
        /// The documents the device lacks changes of.
        want: Vec<Want>,
    },
}

/// A message from the server to a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The device is enrolled: who it belongs to and what it may do.
    Enrolled(Enrollment),
    /// The answer to `Sync`.
    SyncReply(SyncReply),
    /// The wanted documents, in the order asked, up to a size budget; the last `unsent` wants
    /// did not fit and are asked for again.
    Docs {
        /// The wanted documents that fit, in the order asked.
        docs: Vec<DocData>,
        /// How many wants at the end did not fit.
        unsent: u32,
    },
    /// The request as a whole was not answered (refused, or the server's trouble); nothing of
    /// it was stored.
    Error {
        /// Why: devices act on its [`ErrorCode::class`].
        code: ErrorCode,
        /// Why, for the person.
        message: String,
    },
}

/// What a device learns when it enrolls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The device id the server bound to the device key.
    pub device_id: String,
    /// The user the device belongs to.
    pub user_id: String,
    /// The user's display name.
    pub user_name: String,
    /// The user's role.
    pub role: crate::access::Role,
    /// The scopes the user may read and write: from the server's own tables, so typed (they
    /// encode exactly as strings).
    pub scopes: Vec<crate::scope::Scope>,
}

/// One document's new local changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushDoc {
    /// The record's id.
    pub id: DocId,
    /// The record's kind, fixed at creation.
    pub kind: Kind,
    /// The record's scope, fixed at creation.
    pub scope: String,
    /// Concatenated Automerge change chunks.
    pub changes: Vec<u8>,
}

/// A scope's position in the server's change feed that a device has applied up to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The scope this cursor is for.
    pub scope: String,
    /// The last feed position of the scope the device has applied.
    pub seq: u64,
}

/// A bounded batch of pending documents, acknowledged on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Chosen by the device, the same when the batch is sent again after a lost reply: the
    /// server answers a batch it already committed from its record, without merging again.
    pub id: u64,
    /// The documents, each with every change the server has not acknowledged.
    pub docs: Vec<PushDoc>,
}

/// What a device asks to pull.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pull {
    /// Where the device stands in each scope it has pulled before.
    pub cursors: Vec<Cursor>,
    /// Scopes the device held nothing of when its round started (and has been paging through
    /// since): their documents come whole in the reply, with no list of heads to compare.
    /// Scopes missing from `cursors` count as fresh too.
    pub fresh: Vec<String>,
}

/// The server's answer to `Sync`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncReply {
    /// The verdict on the batch, if one was pushed.
    pub batch: Option<BatchAck>,
    /// What changed, if a pull was asked.
    pub pull: Option<Changes>,
}

/// The server's verdict on a batch: every document not named in `refused` or `deferred` is
/// durably stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchAck {
    /// The batch's id.
    pub id: u64,
    /// The documents refused whole and stored nowhere, with the reasons.
    pub refused: Vec<Refusal>,
    /// The documents the server could not merge because of its own trouble (their stored copy
    /// is unreadable, say): stored nowhere, to be pushed again as they are.
    pub deferred: Vec<Deferral>,
}

/// A pushed document the server refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The record's id.
    pub id: DocId,
    /// Why, for the person.
    pub reason: String,
}

/// A pushed document the server put off because of its own trouble with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deferral {
    /// The record's id.
    pub id: DocId,
    /// What went wrong on the server, for the person and the operator.
    pub reason: String,
}

/// What changed in a device's scopes since its cursors.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Changes {
    /// Documents changed since the cursors, with their current heads, for the device to
    /// compare with its own and fetch what it lacks.
    pub changed: Vec<Changed>,
    /// Documents of fresh scopes, whole.
    pub docs: Vec<DocData>,
    /// The cursors to store once every changed document has been applied.
    pub cursors: Vec<Cursor>,
    /// More changes wait beyond this page: pull again with the new cursors.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// The server's verdict on one pushed document, as its storage gives it; on the wire a batch
/// is answered by a [`BatchAck`] naming only the refused.
pub struct PushResult {
    /// The pushed document.
    pub id: DocId,
    /// Accepted (with the heads now stored), refused or deferred (with the reason).
    pub outcome: Outcome,
}

/// What became of one pushed document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Durably merged; the server holds these heads (and everything before them).
    Accepted {
        /// The document's heads on the server after the merge.
        heads: Vec<Hash>,
    },
    /// Refused whole and stored nowhere: the push breaks a rule (schema, access, a fixed kind
    /// or scope, a limit, malformed changes). The device marks it refused until it is edited.
    Refused {
        /// Why, for the person.
        reason: String,
    },
    /// Stored nowhere because of the server's own trouble with this document (its stored copy
    /// does not load, the changes do not apply to it): the device keeps it pending and pushes
    /// it again next round; the other documents of the batch are unaffected.
    Deferred {
        /// What went wrong on the server.
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// A document that changed in a scope since the device's cursor.
pub struct Changed {
    /// The record's id.
    pub id: DocId,
    /// The record's kind.
    pub kind: Kind,
    /// The record's scope.
    pub scope: String,
    /// The document's heads on the server now.
    pub heads: Vec<Hash>,
}

/// A document the device wants, with the heads it already has (empty if none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Want {
    /// The record's id.
    pub id: DocId,
    /// Heads of the document the device already holds.
    pub have: Vec<Hash>,
}

/// The changes of one document that the device lacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocData {
    /// The record's id.
    pub id: DocId,
    /// The record's kind.
    pub kind: Kind,
    /// The record's scope.
    pub scope: String,
    /// Automerge bytes: a saved document and/or change chunks.
    pub bytes: Vec<u8>,
}

/// Why a whole request was not answered; [`ErrorCode::class`] says what the device does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame or message could not be decoded.
    Malformed,
    /// A limit was exceeded.
    TooLarge,
    /// The client speaks another protocol version.
    Version,
    /// The enrollment code is unknown, used or expired.
    BadCode,
    /// The device is not enrolled, or was revoked.
    Unauthorized,
    /// Too many rounds in a short time.
    RateLimited,
    /// The server could not store the request; nothing was acknowledged.
    Internal,
}

/// What a device does about an error, whichever way it arrived (an error reply, a close code,
/// a per-record outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// A rule says no: tell the person why; sending the same again gets the same answer.
    Refused,
    /// The network or the server had trouble: keep everything pending and try again later.
    Retry,
    /// The server does not know this device or revoked it: enroll again.
    Unauthorized,
}

impl ErrorCode {
    /// The class of this code: the one place the device client and the bindings look it up.
    pub fn class(self) -> ErrorClass {
        match self {
            // The request itself is wrong, or the app is too old or the code bad: the same
            // request would be answered the same.
            ErrorCode::Malformed
            | ErrorCode::TooLarge
            | ErrorCode::Version
            | ErrorCode::BadCode => ErrorClass::Refused,
            ErrorCode::Unauthorized => ErrorClass::Unauthorized,
            // Too many rounds is "later", not "no": nothing about the records is wrong.
            ErrorCode::RateLimited | ErrorCode::Internal => ErrorClass::Retry,
        }
    }
}

/// Why a frame or its content was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The frame announced a body larger than the cap; nothing was allocated.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced body size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The input inflates past the cap.
    #[error("compressed data inflates past the limit of {limit} bytes")]
    InflatedTooLarge {
        /// The cap on inflated bytes.
        limit: usize,
    },
    /// The frame ended before its announced length.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the prefix or body should have had.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The encoding byte is unknown or the deflate stream is corrupt.
    #[error("bad frame encoding: {0}")]
    Encoding(String),
    /// A compressed frame where only an uncompressed one is accepted (see
    /// [`decode_plain_body`]); it was not inflated.
    #[error("a compressed frame is not accepted here")]
    Compressed,
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    /// The bytes are not valid Automerge change chunks.
    #[error("invalid Automerge data: {0}")]
    Automerge(String),
    /// More changes or operations than a limit allows.
    #[error("{0}")]
    Limit(String),
}

impl ProtocolError {
    /// The error code to send back for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::InflatedTooLarge { .. }
            | ProtocolError::Limit(_) => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// Encodes a message as one frame, deflating bodies worth it.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = postcard::to_stdvec(msg)?;
    let (encoding, payload) = if body.len() >= DEFLATE_THRESHOLD {
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &body)
            .and_then(|()| enc.finish())
            .map(|deflated| (ENCODING_DEFLATE, deflated))
            .map_err(|e| ProtocolError::Encoding(e.to_string()))?
    } else {
        (ENCODING_PLAIN, body)
    };
    let len = u32::try_from(payload.len() + 1).map_err(|_| ProtocolError::FrameTooLarge {
        size: payload.len(),
        limit: u32::MAX as usize,
    })?;
    let mut frame = Vec::with_capacity(LENGTH_PREFIX + 1 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(encoding);
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Reads a frame's announced body length and checks it against the cap.
pub fn frame_len(prefix: [u8; LENGTH_PREFIX], limits: &Limits) -> Result<usize, ProtocolError> {
    body_len(prefix, limits.max_frame_bytes)
}

/// Reads a frame's announced body length and checks it against `max_frame_bytes`.
pub fn body_len(
    prefix: [u8; LENGTH_PREFIX],
    max_frame_bytes: usize,
) -> Result<usize, ProtocolError> {
    let size = u32::from_be_bytes(prefix) as usize;
    if size > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            size,
            limit: max_frame_bytes,
        });
    }
    if size == 0 {
        return Err(ProtocolError::Encoding("empty frame".into()));
    }
    Ok(size)
}

/// Decodes a whole frame (prefix and body) into a message.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(
    frame: &[u8],
    limits: &Limits,
) -> Result<T, ProtocolError> {
    let Some((prefix, body)) = frame.split_first_chunk::<LENGTH_PREFIX>() else {
        return Err(ProtocolError::Truncated {
            expected: LENGTH_PREFIX,
            got: frame.len(),
        });
    };
    let size = frame_len(*prefix, limits)?;
    if body.len() != size {
        return Err(ProtocolError::Truncated {
            expected: size,
            got: body.len(),
        });
    }
    decode_body(body, limits)
}

/// Decodes a frame body (encoding byte and payload) into a message.
pub fn decode_body<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    limits: &Limits,
) -> Result<T, ProtocolError> {
    match body.split_first() {
        Some((&ENCODING_PLAIN, payload)) => Ok(postcard::from_bytes(payload)?),
        Some((&ENCODING_DEFLATE, payload)) => {
            let inflated = inflate_capped(
                flate2::read::DeflateDecoder::new(payload),
                limits.max_inflated_bytes,
            )?;
            Ok(postcard::from_bytes(&inflated)?)
        }
        Some((other, _)) => Err(ProtocolError::Encoding(format!(
            "unknown encoding byte {other}"
        ))),
        None => Err(ProtocolError::Encoding("empty frame".into())),
    }
}

/// Decodes a frame body that must not be compressed: what an unenrolled device may send, so
/// that a stranger can never make the server inflate anything.
pub fn decode_plain_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ProtocolError> {
    match body.split_first() {
        Some((&ENCODING_PLAIN, payload)) => Ok(postcard::from_bytes(payload)?),
        Some((&ENCODING_DEFLATE, _)) => Err(ProtocolError::Compressed),
        Some((other, _)) => Err(ProtocolError::Encoding(format!(
            "unknown encoding byte {other}"
        ))),
        None => Err(ProtocolError::Encoding("empty frame".into())),
    }
}

/// Inflates at most `limit` bytes; more is an error, not an allocation.
fn inflate_capped(reader: impl Read, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ProtocolError::Encoding(format!("corrupt deflate stream: {e}")))?;
    if out.len() > limit {
        return Err(ProtocolError::InflatedTooLarge { limit });
    }
    Ok(out)
}

const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// Splits concatenated Automerge change chunks into parsed changes, enforcing the limits.
///
/// Automerge inflates a compressed change chunk without any bound, so each compressed chunk
/// is first inflated here through the cap; only chunks that fit reach Automerge. Documents and
/// bundles are not accepted in a push: a push carries changes.
pub fn split_changes(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<automerge::Change>, ProtocolError> {
    let mut changes = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if changes.len() >= limits.max_changes_per_round {
            return Err(ProtocolError::Limit(format!(
                "more than {} changes",
                limits.max_changes_per_round
            )));
        }
        let bad = |m: &str| ProtocolError::Automerge(m.to_string());
        if rest.len() < 10 || rest[..4] != CHUNK_MAGIC {
            return Err(bad("not an Automerge chunk (bad magic bytes)"));
        }
        let chunk_type = rest[8];
        let (data_len, leb_len) = read_uleb(&rest[9..]).ok_or_else(|| bad("bad chunk length"))?;
        let header_len = 9 + leb_len;
        let total = usize::try_from(data_len)
            .ok()
            .and_then(|d| d.checked_add(header_len))
            .filter(|&t| t <= rest.len())
            .ok_or_else(|| bad("chunk longer than the data"))?;
        let chunk = &rest[..total];
        match chunk_type {
            CHUNK_CHANGE => {}
            CHUNK_COMPRESSED_CHANGE => {
                inflate_capped(
                    flate2::read::DeflateDecoder::new(&chunk[header_len..]),
                    limits.max_inflated_bytes,
                )?;
            }
            other => {
                return Err(bad(&format!(
                    "chunk type {other} is not a change; a push carries changes only"
                )));
            }
        }
        let change = automerge::Change::try_from(chunk)
            .map_err(|e| ProtocolError::Automerge(e.to_string()))?;
        // Parsing a change does not verify its checksum, but loading a stored document does: a
        // bad checksum accepted here would make the record unreadable for everyone after it.
        if change.hash().0[..4] != chunk[4..8] {
            return Err(bad("change checksum does not match its contents"));
        }
        if change.len() > limits.max_ops_per_change {
            return Err(ProtocolError::Limit(format!(
                "a change has {} operations; the limit is {}",
                change.len(),
                limits.max_ops_per_change
            )));
        }
        changes.push(change);
        rest = &rest[total..];
    }
    Ok(changes)
}

fn read_uleb(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
