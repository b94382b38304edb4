//! The device's side of a sync round: pending pushes and cursors in, effects out.
//!
//! [`ClientRound`] holds no store and no socket; [`drive_round`] runs its effects in order
//! against a [`RoundDriver`] (the QUIC client, or the in-process harness).

use std::collections::{BTreeMap, VecDeque};

use uuid::Uuid;

use crate::protocol::{
    ClientMsg, Cursor, DocData, DocId, ErrorCode, Hash, Outcome, PROTOCOL_VERSION, PushDoc,
    ServerMsg, SyncReply, Want,
};

/// One pending document of a device, with the local heads its push carries.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The document with every change the server has not acknowledged.
    pub push: PushDoc,
    /// The local heads those changes lead to; acknowledged as held once accepted.
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
    },
    /// Find the local heads of these documents (empty if absent) and feed them back as
    /// [`Input::LocalHeads`].
    LookupHeads(Vec<crate::protocol::Changed>),
    /// Apply these documents and then store the cursors, in one durable write.
    Apply {
        /// The documents' missing changes.
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
    /// The server refused the whole request.
    #[error("server refused the request ({code:?}): {message}")]
    Refused {
        /// What kind of refusal.
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
    /// The driver's error, which every round error converts into.
    type Error: From<RoundError>;
    /// Sends one request and waits for its reply.
    fn exchange(
        &mut self,
        msg: ClientMsg,
    ) -> impl std::future::Future<Output = Result<ServerMsg, Self::Error>>;
    /// Records the server's verdicts in one durable write.
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
    /// Applies documents and stores the cursors in one durable write.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::protocol::{Changed, PushResult};

    fn id(n: u8) -> DocId {
        [n; 16]
    }

    fn pending(n: u8) -> Pending {
        Pending {
            push: PushDoc {
                id: id(n),
                kind: Kind::CheckIn,
                scope: "team:1".into(),
                changes: vec![n],
            },
            heads: vec![[n; 32]],
        }
    }

    fn cursor(seq: u64) -> Vec<Cursor> {
        vec![Cursor {
            scope: "team:1".into(),
            seq,
        }]
    }

    fn changed(n: u8) -> Changed {
        Changed {
            id: id(n),
            kind: Kind::CheckIn,
            scope: "team:1".into(),
            heads: vec![[n; 32]],
        }
    }

    fn doc(n: u8) -> DocData {
        DocData {
            id: id(n),
            kind: Kind::CheckIn,
            scope: "team:1".into(),
            bytes: vec![n],
        }
    }

    fn want(n: u8) -> Want {
        Want {
            id: id(n),
            have: Vec::new(),
        }
    }

    fn reply(results: Vec<PushResult>, changed: Vec<Changed>, seq: u64, more: bool) -> Input {
        Input::Reply(ServerMsg::SyncReply(SyncReply {
            results,
            changed,
            cursors: cursor(seq),
            more,
        }))
    }

    fn accepted(n: u8) -> PushResult {
        PushResult {
            id: id(n),
            outcome: Outcome::Accepted {
                heads: vec![[n; 32]],
            },
        }
    }

    fn refused(n: u8) -> PushResult {
        PushResult {
            id: id(n),
            outcome: Outcome::Refused {
                reason: "no".into(),
            },
        }
    }

    fn docs(docs: Vec<DocData>, unsent: u32) -> Input {
        Input::Reply(ServerMsg::Docs { docs, unsent })
    }

    fn send_fetch(want: Vec<Want>) -> Effect {
        Effect::Send(ClientMsg::Fetch {
            version: PROTOCOL_VERSION,
            want,
        })
    }

    fn done(sent: usize, received: usize, refused: usize, exchanges: usize) -> Effect {
        Effect::Done(RoundReport {
            sent,
            received,
            refused: (0..refused)
                .map(|_| (Uuid::from_bytes(id(2)), "no".to_string()))
                .collect(),
            exchanges,
        })
    }

    struct Case {
        name: &'static str,
        pending: Vec<Pending>,
        /// Each input fed in, with the effects it must produce.
        steps: Vec<(Input, Vec<Effect>)>,
    }

    /// Rounds that end well: every input's effects, in order, up to `Done`.
    #[test]
    fn rounds_produce_their_effects_in_order() {
        let cases = vec![
            Case {
                name: "nothing to push, nothing new: no write at all",
                pending: vec![],
                steps: vec![(reply(vec![], vec![], 3, false), vec![done(0, 0, 0, 1)])],
            },
            Case {
                name: "nothing new but the cursor moved: store the cursor",
                pending: vec![],
                steps: vec![(
                    reply(vec![], vec![], 5, false),
                    vec![
                        Effect::Apply {
                            docs: vec![],
                            cursors: cursor(5),
                        },
                        done(0, 0, 0, 1),
                    ],
                )],
            },
            Case {
                name: "one accepted, one refused: both acknowledged, the refusal reported",
                pending: vec![pending(1), pending(2)],
                steps: vec![(
                    reply(vec![accepted(1), refused(2)], vec![], 3, false),
                    vec![
                        Effect::Acknowledge {
                            accepted: vec![(id(1), vec![[1; 32]])],
                            refused: vec![(id(2), "no".into())],
                        },
                        done(1, 0, 1, 1),
                    ],
                )],
            },
            Case {
                name: "a changed document the device already has: no fetch",
                pending: vec![],
                steps: vec![
                    (
                        reply(vec![], vec![changed(4)], 4, false),
                        vec![Effect::LookupHeads(vec![changed(4)])],
                    ),
                    (
                        Input::LocalHeads(vec![(id(4), vec![[4; 32]])]),
                        vec![
                            Effect::Apply {
                                docs: vec![],
                                cursors: cursor(4),
                            },
                            done(0, 0, 0, 1),
                        ],
                    ),
                ],
            },
            Case {
                name: "a changed document the device lacks: fetch it, apply with the cursor",
                pending: vec![],
                steps: vec![
                    (
                        reply(vec![], vec![changed(4)], 4, false),
                        vec![Effect::LookupHeads(vec![changed(4)])],
                    ),
                    (Input::LocalHeads(vec![]), vec![send_fetch(vec![want(4)])]),
                    (
                        docs(vec![doc(4)], 0),
                        vec![
                            Effect::Apply {
                                docs: vec![doc(4)],
                                cursors: cursor(4),
                            },
                            done(0, 1, 0, 2),
                        ],
                    ),
                ],
            },
            Case {
                name: "a pull too big for one reply: apply the part, fetch the rest, cursor last",
                pending: vec![],
                steps: vec![
                    (
                        reply(vec![], vec![changed(4), changed(5)], 5, false),
                        vec![Effect::LookupHeads(vec![changed(4), changed(5)])],
                    ),
                    (
                        Input::LocalHeads(vec![]),
                        vec![send_fetch(vec![want(4), want(5)])],
                    ),
                    (
                        docs(vec![doc(4)], 1),
                        vec![
                            Effect::Apply {
                                docs: vec![doc(4)],
                                cursors: vec![],
                            },
                            send_fetch(vec![want(5)]),
                        ],
                    ),
                    (
                        docs(vec![doc(5)], 0),
                        vec![
                            Effect::Apply {
                                docs: vec![doc(5)],
                                cursors: cursor(5),
                            },
                            done(0, 2, 0, 3),
                        ],
                    ),
                ],
            },
            Case {
                name: "more pages of the feed: store the cursor, sync again from it",
                pending: vec![],
                steps: vec![
                    (
                        reply(vec![], vec![], 9, true),
                        vec![
                            Effect::Apply {
                                docs: vec![],
                                cursors: cursor(9),
                            },
                            Effect::Send(ClientMsg::Sync {
                                version: PROTOCOL_VERSION,
                                push: vec![],
                                cursors: cursor(9),
                            }),
                        ],
                    ),
                    (reply(vec![], vec![], 9, false), vec![done(0, 0, 0, 2)]),
                ],
            },
        ];
        for case in cases {
            let (mut round, first) = ClientRound::start(case.pending.clone(), cursor(3));
            let push = case.pending.iter().map(|p| p.push.clone()).collect();
            let expected_first = Effect::Send(ClientMsg::Sync {
                version: PROTOCOL_VERSION,
                push,
                cursors: cursor(3),
            });
            assert_eq!(first, vec![expected_first], "{}", case.name);
            for (i, (input, expected)) in case.steps.into_iter().enumerate() {
                let effects = round.handle(input);
                assert_eq!(effects, Ok(expected), "{}, step {i}", case.name);
            }
        }
    }

    /// Replies that do not fit the round stop it; nothing is acknowledged.
    #[test]
    fn rounds_stop_on_replies_that_do_not_fit() {
        let unexpected = |m: &str| RoundError::Unexpected(m.into());
        let cases: Vec<(&str, Vec<Pending>, Vec<Input>, RoundError)> = vec![
            (
                "the server refuses the request",
                vec![pending(1)],
                vec![Input::Reply(ServerMsg::Error {
                    code: ErrorCode::RateLimited,
                    message: "slow down".into(),
                })],
                RoundError::Refused {
                    code: ErrorCode::RateLimited,
                    message: "slow down".into(),
                },
            ),
            (
                "a verdict for a document never pushed",
                vec![pending(1)],
                vec![reply(vec![accepted(1), accepted(7)], vec![], 3, false)],
                unexpected("a verdict for a document that was not pushed"),
            ),
            (
                "a pushed document without a verdict",
                vec![pending(1), pending(2)],
                vec![reply(vec![accepted(1)], vec![], 3, false)],
                unexpected("1 pushed documents got no verdict"),
            ),
            (
                "documents returned with more unsent than wanted",
                vec![],
                vec![
                    reply(vec![], vec![changed(4)], 4, false),
                    Input::LocalHeads(vec![]),
                    docs(vec![doc(4)], 2),
                ],
                unexpected("1 documents returned with 2 of 1 unsent"),
            ),
            (
                "nothing returned yet some unsent: no progress",
                vec![],
                vec![
                    reply(vec![], vec![changed(4)], 4, false),
                    Input::LocalHeads(vec![]),
                    docs(vec![], 1),
                ],
                unexpected("0 documents returned with 1 of 1 unsent"),
            ),
        ];
        for (name, pending, inputs, expected) in cases {
            let (mut round, _) = ClientRound::start(pending, cursor(3));
            let mut last = Ok(Vec::new());
            for input in inputs {
                last = round.handle(input);
                if last.is_err() {
                    break;
                }
            }
            assert_eq!(last, Err(expected), "{name}");
        }
    }

    /// An input the round is not waiting for is an error naming both.
    #[test]
    fn inputs_out_of_order_are_refused() {
        let (mut round, _) = ClientRound::start(vec![], cursor(3));
        match round.handle(Input::LocalHeads(vec![])) {
            Err(RoundError::Unexpected(m)) => {
                assert!(m.contains("LocalHeads") && m.contains("AwaitSync"), "{m}")
            }
            other => panic!("expected Unexpected, got {other:?}"),
        }
        let (mut round, _) = ClientRound::start(vec![], cursor(3));
        match round.handle(docs(vec![], 0)) {
            Err(RoundError::Unexpected(m)) => assert!(m.contains("Docs"), "{m}"),
            other => panic!("expected Unexpected, got {other:?}"),
        }
    }
}
