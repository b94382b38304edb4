//! The device's side of a sync round: pending pushes and cursors in, effects out.
//!
//! [`ClientRound`] holds no store and no socket; [`drive_round`] runs its effects in order
//! against a [`RoundDriver`] (the QUIC client, or the in-process harness).
//!
//! Pending documents go in batches of at most [`BatchLimits`], each acknowledged (one durable
//! write on the device) before the next is sent, so a reply lost with the signal costs that
//! batch alone; the last batch carries the pull. A request whose reply never came is sent
//! again as it was — same batch id — by the driver after it reconnects: the round's state
//! only moves on a reply.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use uuid::Uuid;

use crate::protocol::{
    Batch, BatchAck, Changed, Changes, ClientMsg, Cursor, DocData, DocId, ErrorCode, Hash,
    PROTOCOL_VERSION, Pull, PushDoc, ServerMsg, SyncReply, Want,
};

/// One pending document of a device, with the local heads its push carries.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The document with every change the server has not acknowledged.
    pub push: PushDoc,
    /// The local heads those changes lead to; acknowledged as held once accepted.
    pub heads: Vec<Hash>,
}

/// How large one batch of pushed documents may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most documents in a batch.
    pub max_docs: usize,
    /// Most bytes of changes in a batch (a single larger document still goes, alone).
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    /// 25 documents or 16 KiB: a few seconds of a 64 kbit/s link, so a lost reply costs
    /// little, while a day's 50 check-ins still take only two exchanges.
    fn default() -> Self {
        BatchLimits {
            max_docs: 25,
            max_bytes: 16 * 1024,
        }
    }
}

/// How far a sync round has come, in documents, for progress bars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Pending documents pushed and answered by the server (accepted, refused or deferred).
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
    /// Documents the server refused, with the reasons: they wait for an edit.
    pub refused: Vec<(Uuid, String)>,
    /// Documents the server deferred because of its own trouble with them, with the reasons:
    /// they stay pending and go again next round.
    pub deferred: Vec<(Uuid, String)>,
    /// Request/reply exchanges this round took (not counting requests sent again).
    pub exchanges: usize,
    /// Connection attempts the round made: 1, plus one for each reconnect after the link
    /// dropped (failed attempts included).
    pub connections: usize,
    /// Documents put on the wire, counting a batch again each time it was sent again.
    pub pushed: usize,
}

/// Something the device driver must do, in order.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Send this request and feed the reply back as [`Input::Reply`].
    Send(ClientMsg),
    /// Record the server's verdicts on pushed documents (one durable write).
    Acknowledge {
        /// Documents accepted, with the local heads the push carried.
        accepted: Vec<(DocId, Vec<Hash>)>,
        /// Documents refused, with the server's reasons.
        refused: Vec<(DocId, String)>,
        /// Documents the server deferred: nothing to write (they stay pending as they are);
        /// counted in the progress.
        deferred: Vec<DocId>,
    },
    /// Find the local heads of these documents (empty if absent) and feed them back as
    /// [`Input::LocalHeads`].
    LookupHeads(Vec<Changed>),
    /// Apply these documents and then store the cursors, in one durable write.
    Apply {
        /// The documents' missing changes, or whole documents.
        docs: Vec<DocData>,
        /// Cursors to store with them; empty while a pull is paged.
        cursors: Vec<Cursor>,
    },
    /// The round is over.
    Done(RoundReport),
}

/// What the device driver feeds back into a round.
#[derive(Debug)]
pub enum Input {
    /// The server's reply to the last request.
    Reply(ServerMsg),
    /// The local heads asked for by [`Effect::LookupHeads`].
    LocalHeads(Vec<(DocId, Vec<Hash>)>),
}

/// Why a round stopped; nothing unacknowledged was marked acknowledged.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum RoundError {
    /// The server answered the request with an error; [`ErrorCode::class`] says whether it
    /// is a refusal, the server's trouble (try again) or an unknown device.
    #[error("the server answered ({code:?}): {message}")]
    Server {
        /// What kind of error.
        code: ErrorCode,
        /// The server's reason.
        message: String,
    },
    /// The server answered something that does not fit the protocol.
    #[error("unexpected reply from the server: {0}")]
    Unexpected(String),
}

#[derive(Debug)]
enum State {
    /// A `Sync` is out: maybe a batch (its id and documents), maybe the pull.
    AwaitSync {
        batch: Option<(u64, Vec<DocId>)>,
        pulling: bool,
    },
    AwaitHeads {
        changes: Changes,
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
    /// Batches not sent yet.
    batches: VecDeque<Vec<Pending>>,
    next_batch: u64,
    /// Local heads of the documents in the batch that is out.
    pushed: BTreeMap<DocId, Vec<Hash>>,
    /// Cursors as the device holds them (as last stored).
    cursors: Vec<Cursor>,
    /// Scopes the device had no cursor for when the round started.
    had_cursor: BTreeSet<String>,
    fresh: BTreeSet<String>,
    report: RoundReport,
}

impl ClientRound {
    /// Starts a round that pushes `pending` in batches numbered from `first_batch` and pulls
    /// since `cursors`.
    ///
    /// `first_batch` must not repeat an id this device used before (the driver draws it at
    /// random): the server answers a repeated id from its record of that batch.
    pub fn start(
        pending: Vec<Pending>,
        cursors: Vec<Cursor>,
        first_batch: u64,
        limits: BatchLimits,
    ) -> (ClientRound, Vec<Effect>) {
        let mut round = ClientRound {
            state: State::Finished,
            batches: split_batches(pending, limits),
            next_batch: first_batch,
            pushed: BTreeMap::new(),
            had_cursor: cursors.iter().map(|c| c.scope.clone()).collect(),
            cursors,
            fresh: BTreeSet::new(),
            report: RoundReport::default(),
        };
        let effect = round.next_sync();
        (round, vec![effect])
    }

    /// Advances the round with one input.
    pub fn handle(&mut self, input: Input) -> Result<Vec<Effect>, RoundError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        match (state, input) {
            (_, Input::Reply(ServerMsg::Error { code, message })) => {
                Err(RoundError::Server { code, message })
            }
            (State::AwaitSync { batch, pulling }, Input::Reply(ServerMsg::SyncReply(reply))) => {
                self.on_sync_reply(batch, pulling, reply)
            }
            (State::AwaitHeads { changes }, Input::LocalHeads(local)) => {
                let local: BTreeMap<DocId, Vec<Hash>> = local.into_iter().collect();
                let want: Vec<Want> = changes
                    .changed
                    .iter()
                    .filter_map(|c| {
                        let have = local.get(&c.id).cloned().unwrap_or_default();
                        let has_all = c.heads.iter().all(|h| have.contains(h));
                        (!has_all).then_some(Want { id: c.id, have })
                    })
                    .collect();
                let mut effects = Vec::new();
                if want.is_empty() {
                    effects.extend(self.after_apply(changes.docs, changes.cursors, changes.more));
                    return Ok(effects);
                }
                if !changes.docs.is_empty() {
                    self.report.received += changes.docs.len();
                    effects.push(Effect::Apply {
                        docs: changes.docs,
                        cursors: Vec::new(),
                    });
                }
                effects.push(self.fetch(changes.cursors, changes.more, want));
                Ok(effects)
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

    /// The next `Sync`: the next batch, with the pull once no batch is left after it.
    fn next_sync(&mut self) -> Effect {
        self.report.exchanges += 1;
        let batch = self.batches.pop_front().map(|docs| {
            let id = self.next_batch;
            self.next_batch = self.next_batch.wrapping_add(1);
            self.pushed = docs.iter().map(|p| (p.push.id, p.heads.clone())).collect();
            Batch {
                id,
                docs: docs.into_iter().map(|p| p.push).collect(),
            }
        });
        let pulling = self.batches.is_empty();
        self.state = State::AwaitSync {
            batch: batch
                .as_ref()
                .map(|b| (b.id, b.docs.iter().map(|d| d.id).collect())),
            pulling,
        };
        Effect::Send(ClientMsg::Sync {
            version: PROTOCOL_VERSION,
            batch,
            pull: pulling.then(|| self.pull()),
        })
    }

    fn pull(&self) -> Pull {
        Pull {
            cursors: self.cursors.clone(),
            fresh: self.fresh.iter().cloned().collect(),
        }
    }

    fn on_sync_reply(
        &mut self,
        batch: Option<(u64, Vec<DocId>)>,
        pulling: bool,
        reply: SyncReply,
    ) -> Result<Vec<Effect>, RoundError> {
        let mut effects = Vec::new();
        match (batch, reply.batch) {
            (None, None) => {}
            (Some((id, docs)), Some(ack)) if ack.id == id => {
                effects.push(self.acknowledge(&docs, ack)?);
            }
            (sent, got) => {
                return Err(RoundError::Unexpected(format!(
                    "batch {:?} answered as {:?}",
                    sent.map(|(id, _)| id),
                    got.map(|a| a.id)
                )));
            }
        }
        match (pulling, reply.pull) {
            (false, None) => effects.push(self.next_sync()),
            (true, Some(changes)) => effects.extend(self.on_changes(changes)),
            (asked, got) => {
                return Err(RoundError::Unexpected(format!(
                    "pull asked: {asked}, answered: {}",
                    got.is_some()
                )));
            }
        }
        Ok(effects)
    }

    fn acknowledge(&mut self, docs: &[DocId], ack: BatchAck) -> Result<Effect, RoundError> {
        let mut refused = Vec::new();
        for r in ack.refused {
            if !self.pushed.contains_key(&r.id) {
                return Err(RoundError::Unexpected(
                    "a refusal of a document that was not pushed".into(),
                ));
            }
            self.pushed.remove(&r.id);
            self.report
                .refused
                .push((Uuid::from_bytes(r.id), r.reason.clone()));
            refused.push((r.id, r.reason));
        }
        let mut deferred = Vec::new();
        for d in ack.deferred {
            if self.pushed.remove(&d.id).is_none() {
                return Err(RoundError::Unexpected(
                    "a deferral of a document that was not pushed (or answered twice)".into(),
                ));
            }
            self.report
                .deferred
                .push((Uuid::from_bytes(d.id), d.reason));
            deferred.push(d.id);
        }
        let accepted: Vec<(DocId, Vec<Hash>)> = docs
            .iter()
            .filter_map(|id| self.pushed.remove(id).map(|heads| (*id, heads)))
            .collect();
        self.report.sent += accepted.len();
        Ok(Effect::Acknowledge {
            accepted,
            refused,
            deferred,
        })
    }

    fn on_changes(&mut self, changes: Changes) -> Vec<Effect> {
        for c in &changes.cursors {
            if !self.had_cursor.contains(&c.scope) {
                self.fresh.insert(c.scope.clone());
            }
        }
        if changes.changed.is_empty() {
            return self.after_apply(changes.docs, changes.cursors, changes.more);
        }
        let lookup = Effect::LookupHeads(changes.changed.clone());
        self.state = State::AwaitHeads { changes };
        vec![lookup]
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
        self.cursors = cursors;
        if more {
            effects.push(self.next_sync());
        } else {
            self.state = State::Finished;
            effects.push(Effect::Done(self.report.clone()));
        }
        effects
    }
}

/// Splits pending documents into batches within `limits`, in order, as a round sends them.
pub fn split_batches(pending: Vec<Pending>, limits: BatchLimits) -> VecDeque<Vec<Pending>> {
    let mut batches = VecDeque::new();
    let mut current: Vec<Pending> = Vec::new();
    let mut bytes = 0;
    for p in pending {
        let size = p.push.changes.len();
        let full = current.len() >= limits.max_docs.max(1) || bytes + size > limits.max_bytes;
        if full && !current.is_empty() {
            batches.push_back(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(p);
    }
    if !current.is_empty() {
        batches.push_back(current);
    }
    batches
}

/// Runs a round's effects in order against a driver; shared by the QUIC client and the
/// in-process harness so both exercise the same sequence.
pub trait RoundDriver {
    /// The driver's error, which every round error converts into.
    type Error: From<RoundError>;
    /// Sends one request and waits for its reply (reconnecting and sending it again as it is,
    /// if the driver does that, when the link drops).
    fn exchange(
        &mut self,
        msg: ClientMsg,
    ) -> impl std::future::Future<Output = Result<ServerMsg, Self::Error>>;
    /// Records the server's verdicts in one durable write.
    fn acknowledge(
        &mut self,
        accepted: Vec<(DocId, Vec<Hash>)>,
        refused: Vec<(DocId, String)>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>>;
    /// Local heads of each document, as the subset of `server_heads` the device holds plus
    /// its own heads; empty if the document is absent.
    fn local_heads(
        &mut self,
        changed: Vec<Changed>,
    ) -> impl std::future::Future<Output = Result<Vec<(DocId, Vec<Hash>)>, Self::Error>>;
    /// Applies documents and stores the cursors in one durable write.
    fn apply(
        &mut self,
        docs: Vec<DocData>,
        cursors: Vec<Cursor>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>>;
    /// Called as the round goes: at its start, after each acknowledgement, fetch and apply,
    /// and at its end.
    fn progress(&mut self, _progress: Progress) {}
}

/// What a round starts from.
#[derive(Clone, Debug)]
pub struct RoundStart {
    /// The device's pending documents.
    pub pending: Vec<Pending>,
    /// The device's cursors.
    pub cursors: Vec<Cursor>,
    /// The id of the round's first batch; see [`ClientRound::start`].
    pub first_batch: u64,
    /// How large a batch may be.
    pub limits: BatchLimits,
}

/// Drives one round to its end.
pub async fn drive_round<D: RoundDriver>(
    driver: &mut D,
    start: RoundStart,
) -> Result<RoundReport, D::Error> {
    let mut progress = Progress {
        to_send: start.pending.len(),
        ..Progress::default()
    };
    driver.progress(progress);
    let (mut round, effects) = ClientRound::start(
        start.pending,
        start.cursors,
        start.first_batch,
        start.limits,
    );
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
            Effect::Acknowledge {
                accepted,
                refused,
                deferred,
            } => {
                progress.sent += accepted.len() + refused.len() + deferred.len();
                driver.acknowledge(accepted, refused).await?;
                driver.progress(progress);
                Vec::new()
            }
            Effect::LookupHeads(changed) => {
                let heads = driver.local_heads(changed).await?;
                round.handle(Input::LocalHeads(heads))?
            }
            Effect::Apply { docs, cursors } => {
                progress.received += docs.len();
                // Whole documents of fresh scopes arrive without a list to count first.
                progress.to_receive = progress.to_receive.max(progress.received);
                driver.apply(docs, cursors).await?;
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

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
