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
    ClientMsg, Cursor, DocData, ErrorCode, Limits, PROTOCOL_VERSION, PushDoc, PushResult,
    ServerMsg, SyncReply, Want,
};

/// Storage could not do what an effect asked; the message is for logs and the device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StorageFailure(pub String);

/// Something the server's driver must do for the exchange, then feed back.
#[derive(Debug, PartialEq)]
pub enum ServerEffect {
    /// Merge each push with [`merge_push`](super::merge_push) and store every accepted one
    /// durably, together, before answering; feed back [`ServerInput::Committed`] with one
    /// outcome per push, in order.
    Commit(Vec<PushDoc>),
    /// Read the documents changed in the scopes the device may read since `cursors`, at most
    /// `limit`; feed back [`ServerInput::Feed`].
    ReadFeed {
        /// Where the device stands in each scope.
        cursors: Vec<Cursor>,
        /// Most documents to list.
        limit: usize,
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
    Feed(Result<SyncReply, StorageFailure>),
    /// The outcome of [`ServerEffect::Fetch`]: the documents, and how many wants at the end
    /// were not reached.
    Fetched(Result<(Vec<DocData>, usize), StorageFailure>),
}

#[derive(Debug)]
enum State {
    AwaitCommit { cursors: Vec<Cursor>, pushed: usize },
    AwaitFeed { results: Vec<PushResult> },
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
            (State::AwaitCommit { cursors, pushed }, ServerInput::Committed(Ok(results))) => {
                if results.len() != pushed {
                    return internal(format!(
                        "storage answered {} outcomes for {pushed} pushed documents",
                        results.len()
                    ));
                }
                self.read_feed(cursors, results)
            }
            (State::AwaitFeed { results }, ServerInput::Feed(Ok(mut reply))) => {
                reply.results = results;
                ServerEffect::Reply(ServerMsg::SyncReply(reply))
            }
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
            ClientMsg::Sync { push, .. } if push.len() > max => refuse(
                ErrorCode::TooLarge,
                format!("{} documents in one push; the limit is {max}", push.len()),
            ),
            ClientMsg::Sync { push, cursors, .. } if push.is_empty() => {
                self.read_feed(cursors, Vec::new())
            }
            ClientMsg::Sync { push, cursors, .. } => {
                self.state = State::AwaitCommit {
                    cursors,
                    pushed: push.len(),
                };
                ServerEffect::Commit(push)
            }
            ClientMsg::Fetch { want, .. } if want.len() > max => refuse(
                ErrorCode::TooLarge,
                format!("{} documents wanted; the limit is {max}", want.len()),
            ),
            ClientMsg::Fetch { want, .. } => {
                self.state = State::AwaitFetch;
                // Half the smaller cap leaves room for framing, whatever deflate achieves.
                let budget = self
                    .limits
                    .max_frame_bytes
                    .min(self.limits.max_inflated_bytes)
                    / 2;
                ServerEffect::Fetch { want, budget }
            }
        }
    }

    fn read_feed(&mut self, cursors: Vec<Cursor>, results: Vec<PushResult>) -> ServerEffect {
        self.state = State::AwaitFeed { results };
        ServerEffect::ReadFeed {
            cursors,
            limit: self.limits.max_docs_per_exchange,
        }
    }
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
    use crate::protocol::{Changed, Outcome};

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

    fn sync(version: u16, push: Vec<PushDoc>) -> ClientMsg {
        ClientMsg::Sync {
            version,
            push,
            cursors: cursors(),
        }
    }

    fn fetch(version: u16, wants: usize) -> ClientMsg {
        ClientMsg::Fetch {
            version,
            want: (0..wants)
                .map(|i| Want {
                    id: [i as u8; 16],
                    have: Vec::new(),
                })
                .collect(),
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

    fn feed() -> SyncReply {
        SyncReply {
            results: Vec::new(),
            changed: vec![Changed {
                id: [9; 16],
                kind: Kind::CheckIn,
                scope: "team:1".into(),
                heads: vec![[9; 32]],
            }],
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

    /// Every request answered at once, without touching storage: the error branches.
    #[test]
    fn requests_refused_before_any_storage_work() {
        let old = PROTOCOL_VERSION + 1;
        let cases: Vec<(&str, ClientMsg, ErrorCode)> = vec![
            ("sync, other version", sync(old, vec![]), ErrorCode::Version),
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
                "push over the limit",
                sync(PROTOCOL_VERSION, vec![push(1), push(2), push(3)]),
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
        let limits = small_limits();
        let read_feed = || ServerEffect::ReadFeed {
            cursors: cursors(),
            limit: 2,
        };
        let cases = vec![
            Case {
                name: "an empty push only reads the feed",
                msg: sync(PROTOCOL_VERSION, vec![]),
                steps: vec![(read_feed(), ServerInput::Feed(Ok(feed())))],
                reply: ServerMsg::SyncReply(feed()),
            },
            Case {
                name: "a push commits, then reads the feed; the verdicts go with it",
                msg: sync(PROTOCOL_VERSION, vec![push(1), push(2)]),
                steps: vec![
                    (
                        ServerEffect::Commit(vec![push(1), push(2)]),
                        ServerInput::Committed(Ok(vec![accepted(1), accepted(2)])),
                    ),
                    (read_feed(), ServerInput::Feed(Ok(feed()))),
                ],
                reply: ServerMsg::SyncReply(SyncReply {
                    results: vec![accepted(1), accepted(2)],
                    ..feed()
                }),
            },
            Case {
                name: "a fetch within half the smaller cap",
                msg: fetch(PROTOCOL_VERSION, 2),
                steps: vec![(
                    ServerEffect::Fetch {
                        want: match fetch(PROTOCOL_VERSION, 2) {
                            ClientMsg::Fetch { want, .. } => want,
                            _ => Vec::new(),
                        },
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
            let (mut exchange, mut effect) = ServerExchange::start(case.msg, &limits);
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
                sync(PROTOCOL_VERSION, vec![push(1)]),
                vec![ServerInput::Committed(Err(fail()))],
                "storage failed: disk on fire",
            ),
            (
                "feed read fails after a commit",
                sync(PROTOCOL_VERSION, vec![push(1)]),
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
                sync(PROTOCOL_VERSION, vec![push(1), push(2)]),
                vec![ServerInput::Committed(Ok(vec![accepted(1)]))],
                "1 outcomes for 2 pushed",
            ),
            (
                "a feed where a commit result was due",
                sync(PROTOCOL_VERSION, vec![push(1)]),
                vec![ServerInput::Feed(Ok(feed()))],
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
                    code: ErrorCode::Internal,
                    message,
                }) => assert!(message.contains(expected), "{name}: {message}"),
                other => panic!("{name}: expected an internal error, got {other:?}"),
            }
        }
    }
}
