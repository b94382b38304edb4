//! The sync protocol as plain code: the device's round state machine, the server's handling of
//! a request over a storage backend, and the merge rule the server applies to every push.
//!
//! Nothing here does IO. The QUIC client and server and the redb stores are thin drivers: they
//! move messages, run effects against their store, and pass results back in.

use std::collections::{BTreeMap, VecDeque};

use automerge::{AutoCommit, ChangeHash, ReadDoc};
use uuid::Uuid;

use crate::access::{self, DeviceCtx};
use crate::model::Kind;
use crate::protocol::{
    ClientMsg, Cursor, DocData, DocId, ErrorCode, Hash, Limits, Outcome, PROTOCOL_VERSION, PushDoc,
    PushResult, ServerMsg, SyncReply, Want, split_changes,
};
use crate::record::{Record, RecordView};

/// Stored bytes of a document larger than this are compacted (saved whole) on the next merge;
/// below it, new changes are appended as chunks, which is far cheaper than a full save.
pub const COMPACT_AFTER_BYTES: usize = 16 * 1024;

/// A document as the server stores it: its fixed kind and scope, and its Automerge bytes.
#[derive(Clone, Debug)]
pub struct StoredDoc {
    pub kind: Kind,
    pub scope: String,
    pub bytes: Vec<u8>,
}

/// The result of merging one push into the server's copy.
#[derive(Debug)]
pub struct Merged {
    /// The document's new stored bytes, or None when the push brought nothing new.
    pub bytes: Option<Vec<u8>>,
    pub view: RecordView,
    pub heads: Vec<Hash>,
    /// Hashes of the changes this push added.
    pub added: Vec<Hash>,
}

/// Merges a device's push into the server's copy of the document, or says why not.
///
/// A refused push changes nothing: the caller stores `Merged::bytes` only on success.
pub fn merge_push(
    existing: Option<&StoredDoc>,
    push: &PushDoc,
    ctx: &DeviceCtx,
    limits: &Limits,
) -> Result<Merged, String> {
    let changes = split_changes(&push.changes, limits).map_err(|e| e.to_string())?;
    crate::model::check_scope(push.kind, &push.scope).map_err(|e| e.to_string())?;
    let id = Uuid::from_bytes(push.id);
    let (mut doc, before) = match existing {
        Some(stored) => {
            if stored.kind != push.kind || stored.scope != push.scope {
                return Err(format!(
                    "record {id} is a {} in `{}`; its kind and scope are fixed",
                    stored.kind, stored.scope
                ));
            }
            let record = Record::load(id, &stored.bytes)
                .map_err(|e| format!("stored document {id} is unreadable: {e}"))?;
            let values = record.values().map_err(|e| e.to_string())?;
            (record.into_doc(), Some(values))
        }
        None => (AutoCommit::new(), None),
    };
    let new: Vec<automerge::Change> = changes
        .into_iter()
        .filter(|c| doc.get_change_by_hash(&c.hash()).is_none())
        .collect();
    for change in &new {
        if change.actor_id().to_bytes() != ctx.actor.as_slice() {
            return Err(format!(
                "a change is signed by actor {}, not by this device; refused",
                change.actor_id().to_hex_string()
            ));
        }
    }
    let added: Vec<Hash> = new.iter().map(|c| c.hash().0).collect();
    let mut new_bytes = Vec::new();
    for change in &new {
        new_bytes.extend_from_slice(change.raw_bytes());
    }
    if !new.is_empty() {
        doc.apply_changes(new)
            .map_err(|e| format!("changes do not apply: {e}"))?;
        if !doc.get_missing_deps(&[]).is_empty() {
            return Err("changes depend on changes the server does not have".into());
        }
    }
    let mut record = Record::from_doc(id, doc).map_err(|e| e.to_string())?;
    if record.kind() != push.kind || record.scope() != push.scope {
        return Err(format!(
            "the document says {} in `{}` but was pushed as {} in `{}`",
            record.kind(),
            record.scope(),
            push.kind,
            push.scope
        ));
    }
    let snapshot = record.snapshot().map_err(|e| e.to_string())?;
    let after = snapshot.values();
    crate::model::validate_record(push.kind, &after).map_err(|e| e.to_string())?;
    let view = record.view_of(snapshot);
    let heads = record.heads().iter().map(|h| h.0).collect();
    if added.is_empty() {
        return Ok(Merged {
            bytes: None,
            view,
            heads,
            added,
        });
    }
    access::check_write(ctx, push.kind, &push.scope, before.as_ref(), &after)?;
    let bytes = match existing {
        None => new_bytes,
        Some(stored) if stored.bytes.len() + new_bytes.len() > COMPACT_AFTER_BYTES => record.save(),
        Some(stored) => [stored.bytes.as_slice(), &new_bytes].concat(),
    };
    if bytes.len() > limits.max_doc_bytes {
        return Err(format!(
            "the document would grow to {} bytes; the limit is {}",
            bytes.len(),
            limits.max_doc_bytes
        ));
    }
    Ok(Merged {
        bytes: Some(bytes),
        view,
        heads,
        added,
    })
}

/// Storage behind the server's side of the protocol.
pub trait SyncBackend {
    type Error: std::fmt::Display;

    /// Merges every push with [`merge_push`] and stores all accepted ones durably, together,
    /// before returning; one outcome per push, in order.
    fn commit(
        &mut self,
        ctx: &DeviceCtx,
        push: Vec<PushDoc>,
    ) -> Result<Vec<PushResult>, Self::Error>;

    /// Documents changed in the scopes `ctx` may read since `cursors`, at most `limit`.
    fn changes_since(
        &mut self,
        ctx: &DeviceCtx,
        cursors: &[Cursor],
        limit: usize,
    ) -> Result<SyncReply, Self::Error>;

    /// The changes of each wanted document that its holder lacks (readable ones only), in
    /// order, stopping once `budget` bytes are reached (always at least one document); returns
    /// them and how many wants at the end were not reached.
    fn fetch(
        &mut self,
        ctx: &DeviceCtx,
        want: &[Want],
        budget: usize,
    ) -> Result<(Vec<DocData>, usize), Self::Error>;
}

/// The server's answer to one request from an authenticated device.
pub fn serve<B: SyncBackend>(
    backend: &mut B,
    ctx: &DeviceCtx,
    msg: ClientMsg,
    limits: &Limits,
) -> ServerMsg {
    let error = |code, message: String| ServerMsg::Error { code, message };
    match msg {
        ClientMsg::Sync { version, .. }
        | ClientMsg::Fetch { version, .. }
        | ClientMsg::Enroll { version, .. }
            if version != PROTOCOL_VERSION =>
        {
            error(
                ErrorCode::Version,
                format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            )
        }
        ClientMsg::Enroll { .. } => error(
            ErrorCode::Malformed,
            "this device is already enrolled".into(),
        ),
        ClientMsg::Sync { push, cursors, .. } => {
            if push.len() > limits.max_docs_per_exchange {
                return error(
                    ErrorCode::TooLarge,
                    format!(
                        "{} documents in one push; the limit is {}",
                        push.len(),
                        limits.max_docs_per_exchange
                    ),
                );
            }
            let results = if push.is_empty() {
                Vec::new()
            } else {
                match backend.commit(ctx, push) {
                    Ok(r) => r,
                    Err(e) => return error(ErrorCode::Internal, format!("storage failed: {e}")),
                }
            };
            match backend.changes_since(ctx, &cursors, limits.max_docs_per_exchange) {
                Ok(mut reply) => {
                    reply.results = results;
                    ServerMsg::SyncReply(reply)
                }
                Err(e) => error(ErrorCode::Internal, format!("storage failed: {e}")),
            }
        }
        ClientMsg::Fetch { want, .. } => {
            if want.len() > limits.max_docs_per_exchange {
                return error(
                    ErrorCode::TooLarge,
                    format!(
                        "{} documents wanted; the limit is {}",
                        want.len(),
                        limits.max_docs_per_exchange
                    ),
                );
            }
            // Half the smaller cap leaves room for framing, whatever deflate achieves.
            let budget = limits.max_frame_bytes.min(limits.max_inflated_bytes) / 2;
            match backend.fetch(ctx, &want, budget) {
                Ok((docs, unsent)) => ServerMsg::Docs {
                    docs,
                    unsent: u32::try_from(unsent).unwrap_or(u32::MAX),
                },
                Err(e) => error(ErrorCode::Internal, format!("storage failed: {e}")),
            }
        }
    }
}

/// What the server returns for a wanted document: its stored bytes when the device has
/// nothing (no load needed: the fast path of a first sync), else only the missing changes.
pub fn changes_for(stored: &StoredDoc, have: &[Hash]) -> Result<Vec<u8>, String> {
    if have.is_empty() {
        return Ok(stored.bytes.clone());
    }
    let mut doc = AutoCommit::load(&stored.bytes).map_err(|e| e.to_string())?;
    let have: Vec<ChangeHash> = have
        .iter()
        .map(|h| ChangeHash(*h))
        .filter(|h| doc.get_change_by_hash(h).is_some())
        .collect();
    let mut out = Vec::new();
    for change in doc.get_changes(&have) {
        out.extend_from_slice(change.raw_bytes());
    }
    Ok(out)
}

/// One pending document of a device, with the local heads its push carries.
#[derive(Clone, Debug)]
pub struct Pending {
    pub push: PushDoc,
    pub heads: Vec<Hash>,
}

/// How far a sync round has come, in documents, for progress bars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Pending documents pushed and answered by the server (accepted or refused).
    pub sent: usize,
    /// Documents pending when the round started.
    pub to_send: usize,
    /// Documents received and stored.
    pub received: usize,
    /// Documents the device lacks changes of; 0 until the round has compared heads with the
    /// server's list of what changed, then grows to the final count.
    pub to_receive: usize,
}

/// Counts of one sync round, for reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundReport {
    /// Documents the server accepted.
    pub sent: usize,
    /// Documents received and applied.
    pub received: usize,
    /// Documents the server refused, with the reasons.
    pub refused: Vec<(Uuid, String)>,
    /// Request/reply exchanges this round took.
    pub exchanges: usize,
}

/// Something the device driver must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Send this request and feed the reply back as [`Input::Reply`].
    Send(ClientMsg),
    /// Record the server's verdicts on pushed documents (one durable write).
    Acknowledge {
        accepted: Vec<(DocId, Vec<Hash>)>,
        refused: Vec<(DocId, String)>,
    },
    /// Find the local heads of these documents (empty if absent) and feed them back as
    /// [`Input::LocalHeads`].
    LookupHeads(Vec<crate::protocol::Changed>),
    /// Apply these documents and then store the cursors, in one durable write.
    Apply {
        docs: Vec<DocData>,
        cursors: Vec<Cursor>,
    },
    /// The round is over.
    Done(RoundReport),
}

/// What the device driver feeds back into a round.
#[derive(Debug)]
pub enum Input {
    Reply(ServerMsg),
    LocalHeads(Vec<(DocId, Vec<Hash>)>),
}

/// Why a round stopped; nothing unacknowledged was marked acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The server refused the whole request.
    #[error("server refused the request ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// The server answered something that does not fit the protocol.
    #[error("unexpected reply from the server: {0}")]
    Unexpected(String),
}

#[derive(Debug)]
enum State {
    AwaitSync,
    AwaitHeads {
        reply: SyncReply,
    },
    AwaitDocs {
        cursors: Vec<Cursor>,
        more: bool,
        want: Vec<Want>,
    },
    Finished,
}

/// The device's side of one sync round.
#[derive(Debug)]
pub struct ClientRound {
    state: State,
    pushed: BTreeMap<DocId, Vec<Hash>>,
    cursors: Vec<Cursor>,
    report: RoundReport,
}

impl ClientRound {
    /// Starts a round that pushes `pending` and pulls since `cursors`.
    pub fn start(pending: Vec<Pending>, cursors: Vec<Cursor>) -> (ClientRound, Vec<Effect>) {
        let pushed = pending
            .iter()
            .map(|p| (p.push.id, p.heads.clone()))
            .collect();
        let push = pending.into_iter().map(|p| p.push).collect();
        let round = ClientRound {
            state: State::AwaitSync,
            pushed,
            cursors: cursors.clone(),
            report: RoundReport {
                exchanges: 1,
                ..RoundReport::default()
            },
        };
        let msg = ClientMsg::Sync {
            version: PROTOCOL_VERSION,
            push,
            cursors,
        };
        (round, vec![Effect::Send(msg)])
    }

    /// Advances the round with one input.
    pub fn handle(&mut self, input: Input) -> Result<Vec<Effect>, RoundError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        match (state, input) {
            (_, Input::Reply(ServerMsg::Error { code, message })) => {
                Err(RoundError::Refused { code, message })
            }
            (State::AwaitSync, Input::Reply(ServerMsg::SyncReply(reply))) => {
                self.on_sync_reply(reply)
            }
            (State::AwaitHeads { reply }, Input::LocalHeads(local)) => {
                let local: BTreeMap<DocId, Vec<Hash>> = local.into_iter().collect();
                let want: Vec<Want> = reply
                    .changed
                    .iter()
                    .filter_map(|c| {
                        let have = local.get(&c.id).cloned().unwrap_or_default();
                        let has_all = c.heads.iter().all(|h| have.contains(h));
                        (!has_all).then_some(Want { id: c.id, have })
                    })
                    .collect();
                if want.is_empty() {
                    return Ok(self.after_apply(Vec::new(), reply.cursors, reply.more));
                }
                Ok(vec![self.fetch(reply.cursors, reply.more, want)])
            }
            (
                State::AwaitDocs {
                    cursors,
                    more,
                    want,
                },
                Input::Reply(ServerMsg::Docs { docs, unsent }),
            ) => {
                let unsent = usize::try_from(unsent).unwrap_or(usize::MAX);
                if unsent == 0 {
                    return Ok(self.after_apply(docs, cursors, more));
                }
                if docs.is_empty() || unsent > want.len() {
                    return Err(RoundError::Unexpected(format!(
                        "{} documents returned with {unsent} of {} unsent",
                        docs.len(),
                        want.len()
                    )));
                }
                // Too much for one reply: apply this part now (cursors only at the very end).
                self.report.received += docs.len();
                let rest = want[want.len() - unsent..].to_vec();
                Ok(vec![
                    Effect::Apply {
                        docs,
                        cursors: Vec::new(),
                    },
                    self.fetch(cursors, more, rest),
                ])
            }
            (state, input) => Err(RoundError::Unexpected(format!("{input:?} while {state:?}"))),
        }
    }

    fn on_sync_reply(&mut self, reply: SyncReply) -> Result<Vec<Effect>, RoundError> {
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for result in &reply.results {
            if !self.pushed.contains_key(&result.id) {
                return Err(RoundError::Unexpected(
                    "a verdict for a document that was not pushed".into(),
                ));
            }
            match &result.outcome {
                Outcome::Accepted { .. } => {
                    let heads = self.pushed.remove(&result.id).unwrap_or_default();
                    accepted.push((result.id, heads));
                }
                Outcome::Refused { reason } => {
                    self.pushed.remove(&result.id);
                    self.report
                        .refused
                        .push((Uuid::from_bytes(result.id), reason.clone()));
                    refused.push((result.id, reason.clone()));
                }
            }
        }
        if !self.pushed.is_empty() {
            return Err(RoundError::Unexpected(format!(
                "{} pushed documents got no verdict",
                self.pushed.len()
            )));
        }
        self.report.sent += accepted.len();
        let mut effects = Vec::new();
        if !accepted.is_empty() || !refused.is_empty() {
            effects.push(Effect::Acknowledge { accepted, refused });
        }
        if reply.changed.is_empty() {
            effects.extend(self.after_apply(Vec::new(), reply.cursors, reply.more));
        } else {
            effects.push(Effect::LookupHeads(reply.changed.clone()));
            self.state = State::AwaitHeads { reply };
        }
        Ok(effects)
    }

    fn fetch(&mut self, cursors: Vec<Cursor>, more: bool, want: Vec<Want>) -> Effect {
        self.report.exchanges += 1;
        let msg = ClientMsg::Fetch {
            version: PROTOCOL_VERSION,
            want: want.clone(),
        };
        self.state = State::AwaitDocs {
            cursors,
            more,
            want,
        };
        Effect::Send(msg)
    }

    fn after_apply(&mut self, docs: Vec<DocData>, cursors: Vec<Cursor>, more: bool) -> Vec<Effect> {
        self.report.received += docs.len();
        let mut effects = Vec::new();
        if !docs.is_empty() || cursors != self.cursors {
            effects.push(Effect::Apply {
                docs,
                cursors: cursors.clone(),
            });
        }
        if more {
            self.cursors = cursors.clone();
            self.state = State::AwaitSync;
            self.report.exchanges += 1;
            effects.push(Effect::Send(ClientMsg::Sync {
                version: PROTOCOL_VERSION,
                push: Vec::new(),
                cursors,
            }));
        } else {
            self.state = State::Finished;
            effects.push(Effect::Done(self.report.clone()));
        }
        effects
    }
}

/// Runs a round's effects in order against a driver; shared by the QUIC client and the
/// in-process harness so both exercise the same sequence.
pub trait RoundDriver {
    type Error: From<RoundError>;
    /// Sends one request and waits for its reply.
    fn exchange(
        &mut self,
        msg: ClientMsg,
    ) -> impl std::future::Future<Output = Result<ServerMsg, Self::Error>>;
    fn acknowledge(
        &mut self,
        accepted: Vec<(DocId, Vec<Hash>)>,
        refused: Vec<(DocId, String)>,
    ) -> Result<(), Self::Error>;
    /// Local heads of each document, as the subset of `server_heads` the device holds plus
    /// its own heads; empty if the document is absent.
    fn local_heads(
        &mut self,
        changed: &[crate::protocol::Changed],
    ) -> Result<Vec<(DocId, Vec<Hash>)>, Self::Error>;
    fn apply(&mut self, docs: Vec<DocData>, cursors: Vec<Cursor>) -> Result<(), Self::Error>;
    /// Called as the round goes: at its start, after each acknowledgement, fetch and apply,
    /// and at its end.
    fn progress(&mut self, _progress: Progress) {}
}

/// Drives one round to its end.
pub async fn drive_round<D: RoundDriver>(
    driver: &mut D,
    pending: Vec<Pending>,
    cursors: Vec<Cursor>,
) -> Result<RoundReport, D::Error> {
    let mut progress = Progress {
        to_send: pending.len(),
        ..Progress::default()
    };
    driver.progress(progress);
    let (mut round, effects) = ClientRound::start(pending, cursors);
    let mut queue: VecDeque<Effect> = effects.into();
    while let Some(effect) = queue.pop_front() {
        let next = match effect {
            Effect::Send(msg) => {
                // A pull that does not fit one reply is fetched over several `Fetch`es, each
                // asking for what is still missing.
                if let ClientMsg::Fetch { want, .. } = &msg {
                    progress.to_receive = progress.received + want.len();
                    driver.progress(progress);
                }
                let reply = driver.exchange(msg).await?;
                round.handle(Input::Reply(reply))?
            }
            Effect::Acknowledge { accepted, refused } => {
                progress.sent += accepted.len() + refused.len();
                driver.acknowledge(accepted, refused)?;
                driver.progress(progress);
                Vec::new()
            }
            Effect::LookupHeads(changed) => {
                let heads = driver.local_heads(&changed)?;
                round.handle(Input::LocalHeads(heads))?
            }
            Effect::Apply { docs, cursors } => {
                progress.received += docs.len();
                driver.apply(docs, cursors)?;
                driver.progress(progress);
                Vec::new()
            }
            Effect::Done(report) => {
                driver.progress(progress);
                return Ok(report);
            }
        };
        queue.extend(next);
    }
    Err(RoundError::Unexpected("the round ended without finishing".into()).into())
}
