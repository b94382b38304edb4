//! The server's side of one exchange: an authenticated device's request in, effects out.
//!
//! [`ServerExchange`] decides what a request needs (commit these pushes, read the feed since
//! these cursors, fetch these changes) and builds the reply from the results the driver feeds
//! back. It never waits: the QUIC session awaits the group commit between two calls, so a round
//! holds no thread while its commit is queued, and the in-process harness drives the same
//! machine over plain maps.
//!
//! Who is asking is settled before a request reaches this machine (the session checks the
//! device certificate, enrollment and rate limits). A storage failure becomes
//! [`ErrorCode::Internal`]: the device keeps its changes pending and retries; it is never
//! reported as a refusal.

use crate::protocol::{
    BatchAck, Changes, ClientMsg, Cursor, Deferral, DocData, ErrorCode, Limits, Outcome,
    PROTOCOL_VERSION, Pull, PushDoc, PushResult, Refusal, ServerMsg, SyncReply, Want,
};

/// Storage could not do what an effect asked; the message is for logs and the device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StorageFailure(pub String);

/// Something the server's driver must do for the exchange, then feed back.
///
/// A document the merge cannot take because of the server's own trouble with it
/// ([`MergeError::Fault`](super::MergeError::Fault)) is fed back as [`Outcome::Deferred`] (the
/// device keeps it pending); a storage failure of the whole effect as a [`StorageFailure`]
/// (the device gets [`ErrorCode::Internal`] and retries the round).
#[derive(Debug, PartialEq)]
pub enum ServerEffect {
    /// Store batch `batch` of the device: if the device's batch with this id is already
    /// committed, give back its recorded outcomes without merging again; else merge each
    /// document with [`merge_push`](super::merge_push) and store every accepted one durably,
    /// together with the batch's record, before answering. Feed back
    /// [`ServerInput::Committed`] with one outcome per document, in order (a merge error as
    /// [`MergeError::outcome`](super::MergeError::outcome)).
    Commit {
        /// The batch's id, chosen by the device.
        batch: u64,
        /// The batch's documents.
        docs: Vec<PushDoc>,
    },
    /// Read what changed in the scopes the device may read since its cursors, at most `limit`
    /// documents: documents of fresh scopes (listed in `fresh` or absent from `cursors`) whole
    /// up to `budget` bytes, the others as their heads; leave out documents whose latest change
    /// is this device's own push that left nothing for it to fetch. Feed back
    /// [`ServerInput::Feed`].
    ReadFeed {
        /// Where the device stands in each scope.
        cursors: Vec<Cursor>,
        /// Scopes whose documents go whole.
        fresh: Vec<String>,
        /// Most documents to list or send.
        limit: usize,
        /// Bytes of whole documents to gather before stopping.
        budget: usize,
    },
    /// Read the changes of each wanted document that the device lacks (readable ones only), in
    /// order, stopping once `budget` bytes are reached (always at least one document); feed
    /// back [`ServerInput::Fetched`].
    Fetch {
        /// What the device lacks, with the heads it has.
        want: Vec<Want>,
        /// Bytes of changes to gather before stopping.
        budget: usize,
    },
    /// Send this reply: the exchange is over.
    Reply(ServerMsg),
}

/// A result the driver feeds back into the exchange.
#[derive(Debug)]
pub enum ServerInput {
    /// The outcome of [`ServerEffect::Commit`].
    Committed(Result<Vec<PushResult>, StorageFailure>),
    /// The outcome of [`ServerEffect::ReadFeed`].
    Feed(Result<Changes, StorageFailure>),
    /// The outcome of [`ServerEffect::Fetch`]: the documents, and how many wants at the end
    /// were not reached.
    Fetched(Result<(Vec<DocData>, usize), StorageFailure>),
}

#[derive(Debug)]
enum State {
    AwaitCommit {
        batch: u64,
        pushed: usize,
        pull: Option<Pull>,
    },
    AwaitFeed {
        ack: Option<BatchAck>,
    },
    AwaitFetch,
    Finished,
}

/// The server's side of one request/reply exchange.
#[derive(Debug)]
pub struct ServerExchange {
    state: State,
    limits: Limits,
}

impl ServerExchange {
    /// Starts answering `msg` from an enrolled device; returns the first effect.
    pub fn start(msg: ClientMsg, limits: &Limits) -> (ServerExchange, ServerEffect) {
        let mut exchange = ServerExchange {
            state: State::Finished,
            limits: limits.clone(),
        };
        let effect = exchange.on_request(msg);
        (exchange, effect)
    }

    /// Advances the exchange with the result of the last effect.
    pub fn handle(&mut self, input: ServerInput) -> ServerEffect {
        let state = std::mem::replace(&mut self.state, State::Finished);
        match (state, input) {
            (
                State::AwaitCommit {
                    batch,
                    pushed,
                    pull,
                },
                ServerInput::Committed(Ok(results)),
            ) => {
                if results.len() != pushed {
                    return internal(format!(
                        "storage answered {} outcomes for {pushed} pushed documents",
                        results.len()
                    ));
                }
                let ack = batch_ack(batch, results);
                match pull {
                    Some(pull) => self.read_feed(pull, Some(ack)),
                    None => reply(Some(ack), None),
                }
            }
            (State::AwaitFeed { ack }, ServerInput::Feed(Ok(changes))) => reply(ack, Some(changes)),
            (State::AwaitFetch, ServerInput::Fetched(Ok((docs, unsent)))) => {
                ServerEffect::Reply(ServerMsg::Docs {
                    docs,
                    unsent: u32::try_from(unsent).unwrap_or(u32::MAX),
                })
            }
            (
                State::AwaitCommit { .. } | State::AwaitFeed { .. } | State::AwaitFetch,
                ServerInput::Committed(Err(e))
                | ServerInput::Feed(Err(e))
                | ServerInput::Fetched(Err(e)),
            ) => internal(format!("storage failed: {e}")),
            (state, input) => internal(format!("{input:?} while {state:?}")),
        }
    }

    fn on_request(&mut self, msg: ClientMsg) -> ServerEffect {
        let max = self.limits.max_docs_per_exchange;
        match msg {
            ClientMsg::Sync { version, .. }
            | ClientMsg::Fetch { version, .. }
            | ClientMsg::Enroll { version, .. }
                if version != PROTOCOL_VERSION =>
            {
                refuse(
                    ErrorCode::Version,
                    format!(
                        "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                    ),
                )
            }
            ClientMsg::Enroll { .. } => refuse(
                ErrorCode::Malformed,
                "this device is already enrolled".into(),
            ),
            ClientMsg::Sync {
                batch: Some(batch), ..
            } if batch.docs.len() > max => refuse(
                ErrorCode::TooLarge,
                format!(
                    "{} documents in one push; the limit is {max}",
                    batch.docs.len()
                ),
            ),
            ClientMsg::Sync {
                batch: Some(batch),
                pull,
                ..
            } => {
                self.state = State::AwaitCommit {
                    batch: batch.id,
                    pushed: batch.docs.len(),
                    pull,
                };
                ServerEffect::Commit {
                    batch: batch.id,
                    docs: batch.docs,
                }
            }
            ClientMsg::Sync {
                batch: None,
                pull: Some(pull),
                ..
            } => self.read_feed(pull, None),
            ClientMsg::Sync {
                batch: None,
                pull: None,
                ..
            } => reply(None, None),
            ClientMsg::Fetch { want, .. } if want.len() > max => refuse(
                ErrorCode::TooLarge,
                format!("{} documents wanted; the limit is {max}", want.len()),
            ),
            ClientMsg::Fetch { want, .. } => {
                self.state = State::AwaitFetch;
                ServerEffect::Fetch {
                    want,
                    budget: self.reply_budget(),
                }
            }
        }
    }

    fn read_feed(&mut self, pull: Pull, ack: Option<BatchAck>) -> ServerEffect {
        self.state = State::AwaitFeed { ack };
        ServerEffect::ReadFeed {
            cursors: pull.cursors,
            fresh: pull.fresh,
            limit: self.limits.max_docs_per_exchange,
            budget: self.reply_budget(),
        }
    }

    /// Half the smaller cap leaves room for framing, whatever deflate achieves.
    fn reply_budget(&self) -> usize {
        self.limits
            .max_frame_bytes
            .min(self.limits.max_inflated_bytes)
            / 2
    }
}

/// The wire's verdict on a batch: only the refused and the deferred documents are named.
fn batch_ack(id: u64, results: Vec<PushResult>) -> BatchAck {
    let mut ack = BatchAck {
        id,
        refused: Vec::new(),
        deferred: Vec::new(),
    };
    for r in results {
        match r.outcome {
            Outcome::Accepted { .. } => {}
            Outcome::Refused { reason } => ack.refused.push(Refusal { id: r.id, reason }),
            Outcome::Deferred { reason } => ack.deferred.push(Deferral { id: r.id, reason }),
        }
    }
    ack
}

fn reply(batch: Option<BatchAck>, pull: Option<Changes>) -> ServerEffect {
    ServerEffect::Reply(ServerMsg::SyncReply(SyncReply { batch, pull }))
}

fn refuse(code: ErrorCode, message: String) -> ServerEffect {
    ServerEffect::Reply(ServerMsg::Error { code, message })
}

fn internal(message: String) -> ServerEffect {
    refuse(ErrorCode::Internal, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::protocol::{Batch, Changed, ErrorClass};
    use crate::sync::MergeError;

    fn push(n: u8) -> PushDoc {
        PushDoc {
            id: [n; 16],
            kind: Kind::CheckIn,
            scope: "team:1".into(),
            changes: vec![n],
        }
    }

    fn cursors() -> Vec<Cursor> {
        vec![Cursor {
            scope: "team:1".into(),
            seq: 7,
        }]
    }

    fn pull() -> Pull {
        Pull {
            cursors: cursors(),
            fresh: vec!["team:2".into()],
        }
    }

    fn sync(version: u16, docs: Vec<PushDoc>, pull: Option<Pull>) -> ClientMsg {
        ClientMsg::Sync {
            version,
            batch: (!docs.is_empty()).then_some(Batch { id: 42, docs }),
            pull,
        }
    }

    fn wants(n: usize) -> Vec<Want> {
        (0..n)
            .map(|i| Want {
                id: [i as u8; 16],
                have: Vec::new(),
            })
            .collect()
    }

    fn fetch(version: u16, n: usize) -> ClientMsg {
        ClientMsg::Fetch {
            version,
            want: wants(n),
        }
    }

    fn accepted(n: u8) -> PushResult {
        PushResult {
            id: [n; 16],
            outcome: Outcome::Accepted {
                heads: vec![[n; 32]],
            },
        }
    }

    fn deferred(n: u8) -> PushResult {
        PushResult {
            id: [n; 16],
            outcome: MergeError::Fault("the stored copy is unreadable".into()).outcome(),
        }
    }

    fn refused(n: u8) -> PushResult {
        PushResult {
            id: [n; 16],
            outcome: Outcome::Refused {
                reason: "kind and scope are fixed".into(),
            },
        }
    }

    fn changes() -> Changes {
        Changes {
            changed: vec![Changed {
                id: [9; 16],
                kind: Kind::CheckIn,
                scope: "team:1".into(),
                heads: vec![[9; 32]],
            }],
            docs: Vec::new(),
            cursors: vec![Cursor {
                scope: "team:1".into(),
                seq: 8,
            }],
            more: false,
        }
    }

    fn small_limits() -> Limits {
        Limits {
            max_docs_per_exchange: 2,
            max_frame_bytes: 1000,
            max_inflated_bytes: 4000,
            ..Limits::default()
        }
    }

    fn error_code(effect: &ServerEffect) -> Option<ErrorCode> {
        match effect {
            ServerEffect::Reply(ServerMsg::Error { code, .. }) => Some(*code),
            _ => None,
        }
    }

    fn sync_reply(batch: Option<BatchAck>, pull: Option<Changes>) -> ServerMsg {
        ServerMsg::SyncReply(SyncReply { batch, pull })
    }

    /// Every request answered at once, without touching storage: the error branches.
    #[test]
    fn requests_refused_before_any_storage_work() {
        let old = PROTOCOL_VERSION + 1;
        let cases: Vec<(&str, ClientMsg, ErrorCode)> = vec![
            (
                "sync, other version",
                sync(old, vec![], Some(pull())),
                ErrorCode::Version,
            ),
            ("fetch, other version", fetch(old, 1), ErrorCode::Version),
            (
                "enroll, other version",
                ClientMsg::Enroll {
                    version: old,
                    code: "C".into(),
                },
                ErrorCode::Version,
            ),
            (
                "enroll, already enrolled",
                ClientMsg::Enroll {
                    version: PROTOCOL_VERSION,
                    code: "C".into(),
                },
                ErrorCode::Malformed,
            ),
            (
                "batch over the limit",
                sync(PROTOCOL_VERSION, vec![push(1), push(2), push(3)], None),
                ErrorCode::TooLarge,
            ),
            (
                "fetch over the limit",
                fetch(PROTOCOL_VERSION, 3),
                ErrorCode::TooLarge,
            ),
        ];
        for (name, msg, code) in cases {
            let (_, effect) = ServerExchange::start(msg, &small_limits());
            assert_eq!(error_code(&effect), Some(code), "{name}: {effect:?}");
        }
    }

    /// Each request's sequence of effects, with the results fed back, and the final reply.
    #[test]
    fn requests_run_their_effects_in_order() {
        struct Case {
            name: &'static str,
            msg: ClientMsg,
            /// (expected effect, result fed back)
            steps: Vec<(ServerEffect, ServerInput)>,
            reply: ServerMsg,
        }
        let read_feed = || ServerEffect::ReadFeed {
            cursors: cursors(),
            fresh: vec!["team:2".into()],
            limit: 2,
            budget: 500,
        };
        let commit = |docs| ServerEffect::Commit { batch: 42, docs };
        let cases = vec![
            Case {
                name: "nothing asked: an empty reply, no storage work",
                msg: sync(PROTOCOL_VERSION, vec![], None),
                steps: vec![],
                reply: sync_reply(None, None),
            },
            Case {
                name: "a pull alone only reads the feed",
                msg: sync(PROTOCOL_VERSION, vec![], Some(pull())),
                steps: vec![(read_feed(), ServerInput::Feed(Ok(changes())))],
                reply: sync_reply(None, Some(changes())),
            },
            Case {
                name: "a batch alone commits; the ack names only the refused",
                msg: sync(PROTOCOL_VERSION, vec![push(1), push(2)], None),
                steps: vec![(
                    commit(vec![push(1), push(2)]),
                    ServerInput::Committed(Ok(vec![accepted(1), refused(2)])),
                )],
                reply: sync_reply(
                    Some(BatchAck {
                        id: 42,
                        refused: vec![Refusal {
                            id: [2; 16],
                            reason: "kind and scope are fixed".into(),
                        }],
                        deferred: vec![],
                    }),
                    None,
                ),
            },
            Case {
                name: "a merge fault is a deferral, not a refusal; the rest still land",
                msg: sync(PROTOCOL_VERSION, vec![push(1), push(2)], None),
                steps: vec![(
                    commit(vec![push(1), push(2)]),
                    ServerInput::Committed(Ok(vec![deferred(1), accepted(2)])),
                )],
                reply: sync_reply(
                    Some(BatchAck {
                        id: 42,
                        refused: vec![],
                        deferred: vec![Deferral {
                            id: [1; 16],
                            reason: "the stored copy is unreadable".into(),
                        }],
                    }),
                    None,
                ),
            },
            Case {
                name: "the last batch with the pull: commit, then read the feed",
                msg: sync(PROTOCOL_VERSION, vec![push(1), push(2)], Some(pull())),
                steps: vec![
                    (
                        commit(vec![push(1), push(2)]),
                        ServerInput::Committed(Ok(vec![accepted(1), accepted(2)])),
                    ),
                    (read_feed(), ServerInput::Feed(Ok(changes()))),
                ],
                reply: sync_reply(
                    Some(BatchAck {
                        id: 42,
                        refused: vec![],
                        deferred: vec![],
                    }),
                    Some(changes()),
                ),
            },
            Case {
                name: "a fetch within half the smaller cap",
                msg: fetch(PROTOCOL_VERSION, 2),
                steps: vec![(
                    ServerEffect::Fetch {
                        want: wants(2),
                        budget: 500,
                    },
                    ServerInput::Fetched(Ok((Vec::new(), 1))),
                )],
                reply: ServerMsg::Docs {
                    docs: Vec::new(),
                    unsent: 1,
                },
            },
        ];
        for case in cases {
            let (mut exchange, mut effect) = ServerExchange::start(case.msg, &small_limits());
            for (expected, input) in case.steps {
                assert_eq!(effect, expected, "{}", case.name);
                effect = exchange.handle(input);
            }
            assert_eq!(effect, ServerEffect::Reply(case.reply), "{}", case.name);
        }
    }

    /// Storage failures and results that do not fit the request become Internal (retry),
    /// never a refusal of the records.
    #[test]
    fn storage_trouble_is_internal_never_a_refusal() {
        let fail = || StorageFailure("disk on fire".into());
        let cases: Vec<(&str, ClientMsg, Vec<ServerInput>, &str)> = vec![
            (
                "commit fails",
                sync(PROTOCOL_VERSION, vec![push(1)], Some(pull())),
                vec![ServerInput::Committed(Err(fail()))],
                "storage failed: disk on fire",
            ),
            (
                "feed read fails after a commit",
                sync(PROTOCOL_VERSION, vec![push(1)], Some(pull())),
                vec![
                    ServerInput::Committed(Ok(vec![accepted(1)])),
                    ServerInput::Feed(Err(fail())),
                ],
                "storage failed",
            ),
            (
                "fetch fails",
                fetch(PROTOCOL_VERSION, 1),
                vec![ServerInput::Fetched(Err(fail()))],
                "storage failed",
            ),
            (
                "one verdict short",
                sync(PROTOCOL_VERSION, vec![push(1), push(2)], None),
                vec![ServerInput::Committed(Ok(vec![accepted(1)]))],
                "1 outcomes for 2 pushed",
            ),
            (
                "a feed where a commit result was due",
                sync(PROTOCOL_VERSION, vec![push(1)], Some(pull())),
                vec![ServerInput::Feed(Ok(changes()))],
                "while AwaitCommit",
            ),
            (
                "input after the reply",
                fetch(PROTOCOL_VERSION, 1),
                vec![
                    ServerInput::Fetched(Ok((Vec::new(), 0))),
                    ServerInput::Fetched(Ok((Vec::new(), 0))),
                ],
                "while Finished",
            ),
        ];
        for (name, msg, inputs, expected) in cases {
            let (mut exchange, mut effect) = ServerExchange::start(msg, &small_limits());
            for input in inputs {
                effect = exchange.handle(input);
            }
            match effect {
                ServerEffect::Reply(ServerMsg::Error {
                    code: code @ ErrorCode::Internal,
                    message,
                }) => {
                    assert_eq!(code.class(), ErrorClass::Retry, "{name}");
                    assert!(message.contains(expected), "{name}: {message}")
                }
                other => panic!("{name}: expected an internal error, got {other:?}"),
            }
        }
    }
}
