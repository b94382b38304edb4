//! Table-driven tests of the device's round state machine.

use super::*;
use crate::model::Kind;
use crate::protocol::{Deferral, Refusal};

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

fn changes(changed: Vec<Changed>, docs: Vec<DocData>, seq: u64, more: bool) -> Changes {
    Changes {
        changed,
        docs,
        cursors: cursor(seq),
        more,
    }
}

fn reply(batch: Option<BatchAck>, pull: Option<Changes>) -> Input {
    Input::Reply(ServerMsg::SyncReply(SyncReply { batch, pull }))
}

fn pulled(changed: Vec<Changed>, seq: u64, more: bool) -> Input {
    reply(None, Some(changes(changed, vec![], seq, more)))
}

fn ack(id: u64, refused: &[u8]) -> Option<BatchAck> {
    ack_deferring(id, refused, &[])
}

fn ack_deferring(id: u64, refused: &[u8], deferred: &[u8]) -> Option<BatchAck> {
    Some(BatchAck {
        id,
        refused: refused
            .iter()
            .map(|n| Refusal {
                id: self::id(*n),
                reason: "no".into(),
            })
            .collect(),
        deferred: deferred
            .iter()
            .map(|n| Deferral {
                id: self::id(*n),
                reason: "later".into(),
            })
            .collect(),
    })
}

fn docs(docs: Vec<DocData>, unsent: u32) -> Input {
    Input::Reply(ServerMsg::Docs { docs, unsent })
}

fn send_sync(batch: Option<(u64, &[u8])>, pull: Option<(Vec<Cursor>, &[&str])>) -> Effect {
    Effect::Send(ClientMsg::Sync {
        version: PROTOCOL_VERSION,
        batch: batch.map(|(id, docs)| Batch {
            id,
            docs: docs.iter().map(|n| pending(*n).push).collect(),
        }),
        pull: pull.map(|(cursors, fresh)| Pull {
            cursors,
            fresh: fresh.iter().map(|s| s.to_string()).collect(),
        }),
    })
}

fn send_fetch(want: Vec<Want>) -> Effect {
    Effect::Send(ClientMsg::Fetch {
        version: PROTOCOL_VERSION,
        want,
    })
}

fn acknowledge(accepted: &[u8], refused: &[u8]) -> Effect {
    acknowledge_deferring(accepted, refused, &[])
}

fn acknowledge_deferring(accepted: &[u8], refused: &[u8], deferred: &[u8]) -> Effect {
    Effect::Acknowledge {
        accepted: accepted.iter().map(|n| (id(*n), vec![[*n; 32]])).collect(),
        refused: refused.iter().map(|n| (id(*n), "no".to_string())).collect(),
        deferred: deferred.iter().map(|n| id(*n)).collect(),
    }
}

fn apply(docs: Vec<DocData>, cursors: Vec<Cursor>) -> Effect {
    Effect::Apply { docs, cursors }
}

fn done(sent: usize, received: usize, refused: &[u8], exchanges: usize) -> Effect {
    Effect::Done(RoundReport {
        sent,
        received,
        refused: refused
            .iter()
            .map(|n| (Uuid::from_bytes(id(*n)), "no".to_string()))
            .collect(),
        exchanges,
        ..RoundReport::default()
    })
}

struct Case {
    name: &'static str,
    pending: Vec<Pending>,
    cursors: Vec<Cursor>,
    limits: BatchLimits,
    /// The first request, then each input fed in with the effects it must produce.
    first: Effect,
    steps: Vec<(Input, Vec<Effect>)>,
}

fn case(name: &'static str, pending: &[u8], first: Effect) -> Case {
    Case {
        name,
        pending: pending.iter().map(|n| pending_doc(*n)).collect(),
        cursors: cursor(3),
        limits: BatchLimits::default(),
        first,
        steps: Vec::new(),
    }
}

fn pending_doc(n: u8) -> Pending {
    pending(n)
}

/// Rounds that end well: every input's effects, in order, up to `Done`.
#[test]
fn rounds_produce_their_effects_in_order() {
    let pull3 = || Some((cursor(3), &[][..]));
    let cases = vec![
        Case {
            steps: vec![(pulled(vec![], 3, false), vec![done(0, 0, &[], 1)])],
            ..case(
                "nothing to push, nothing new: no write at all",
                &[],
                send_sync(None, pull3()),
            )
        },
        Case {
            steps: vec![(
                pulled(vec![], 5, false),
                vec![apply(vec![], cursor(5)), done(0, 0, &[], 1)],
            )],
            ..case(
                "nothing new but the cursor moved: store the cursor",
                &[],
                send_sync(None, pull3()),
            )
        },
        Case {
            steps: vec![(
                reply(ack(100, &[2]), Some(changes(vec![], vec![], 3, false))),
                vec![acknowledge(&[1], &[2]), done(1, 0, &[2], 1)],
            )],
            ..case(
                "one batch with the pull; one accepted, one refused, both acknowledged",
                &[1, 2],
                send_sync(Some((100, &[1, 2])), pull3()),
            )
        },
        Case {
            steps: vec![(
                reply(
                    ack_deferring(100, &[3], &[2]),
                    Some(changes(vec![], vec![], 3, false)),
                ),
                vec![
                    acknowledge_deferring(&[1], &[3], &[2]),
                    Effect::Done(RoundReport {
                        sent: 1,
                        refused: vec![(Uuid::from_bytes(id(3)), "no".into())],
                        deferred: vec![(Uuid::from_bytes(id(2)), "later".into())],
                        exchanges: 1,
                        ..RoundReport::default()
                    }),
                ],
            )],
            ..case(
                "a deferred document is neither accepted nor refused: it stays pending",
                &[1, 2, 3],
                send_sync(Some((100, &[1, 2, 3])), pull3()),
            )
        },
        Case {
            limits: BatchLimits {
                max_docs: 2,
                max_bytes: 1 << 20,
            },
            steps: vec![
                (
                    reply(ack(100, &[]), None),
                    vec![
                        acknowledge(&[1, 2], &[]),
                        send_sync(Some((101, &[3])), pull3()),
                    ],
                ),
                (
                    reply(ack(101, &[]), Some(changes(vec![], vec![], 3, false))),
                    vec![acknowledge(&[3], &[]), done(3, 0, &[], 2)],
                ),
            ],
            ..case(
                "two batches: each acknowledged on its own, the pull with the last",
                &[1, 2, 3],
                send_sync(Some((100, &[1, 2])), None),
            )
        },
        Case {
            steps: vec![
                (
                    pulled(vec![changed(4)], 4, false),
                    vec![Effect::LookupHeads(vec![changed(4)])],
                ),
                (
                    Input::LocalHeads(vec![(id(4), vec![[4; 32]])]),
                    vec![apply(vec![], cursor(4)), done(0, 0, &[], 1)],
                ),
            ],
            ..case(
                "a changed document the device already has: no fetch",
                &[],
                send_sync(None, pull3()),
            )
        },
        Case {
            steps: vec![
                (
                    pulled(vec![changed(4)], 4, false),
                    vec![Effect::LookupHeads(vec![changed(4)])],
                ),
                (Input::LocalHeads(vec![]), vec![send_fetch(vec![want(4)])]),
                (
                    docs(vec![doc(4)], 0),
                    vec![apply(vec![doc(4)], cursor(4)), done(0, 1, &[], 2)],
                ),
            ],
            ..case(
                "a changed document the device lacks: fetch it, apply with the cursor",
                &[],
                send_sync(None, pull3()),
            )
        },
        Case {
            steps: vec![
                (
                    pulled(vec![changed(4), changed(5)], 5, false),
                    vec![Effect::LookupHeads(vec![changed(4), changed(5)])],
                ),
                (
                    Input::LocalHeads(vec![]),
                    vec![send_fetch(vec![want(4), want(5)])],
                ),
                (
                    docs(vec![doc(4)], 1),
                    vec![apply(vec![doc(4)], vec![]), send_fetch(vec![want(5)])],
                ),
                (
                    docs(vec![doc(5)], 0),
                    vec![apply(vec![doc(5)], cursor(5)), done(0, 2, &[], 3)],
                ),
            ],
            ..case(
                "a pull too big for one reply: apply the part, fetch the rest, cursor last",
                &[],
                send_sync(None, pull3()),
            )
        },
        Case {
            steps: vec![
                (
                    pulled(vec![], 9, true),
                    vec![
                        apply(vec![], cursor(9)),
                        send_sync(None, Some((cursor(9), &[]))),
                    ],
                ),
                (pulled(vec![], 9, false), vec![done(0, 0, &[], 2)]),
            ],
            ..case(
                "more pages of the feed: store the cursor, pull again from it",
                &[],
                send_sync(None, pull3()),
            )
        },
        Case {
            cursors: vec![],
            steps: vec![
                (
                    reply(None, Some(changes(vec![], vec![doc(4)], 9, true))),
                    vec![
                        apply(vec![doc(4)], cursor(9)),
                        send_sync(None, Some((cursor(9), &["team:1"]))),
                    ],
                ),
                (
                    reply(None, Some(changes(vec![], vec![doc(5)], 12, false))),
                    vec![apply(vec![doc(5)], cursor(12)), done(0, 2, &[], 2)],
                ),
            ],
            ..case(
                "a fresh phone: documents come whole, the scope stays fresh while paging",
                &[],
                send_sync(None, Some((vec![], &[]))),
            )
        },
        Case {
            steps: vec![
                (
                    reply(
                        None,
                        Some(changes(vec![changed(5)], vec![doc(4)], 5, false)),
                    ),
                    vec![Effect::LookupHeads(vec![changed(5)])],
                ),
                (
                    Input::LocalHeads(vec![]),
                    vec![apply(vec![doc(4)], vec![]), send_fetch(vec![want(5)])],
                ),
                (
                    docs(vec![doc(5)], 0),
                    vec![apply(vec![doc(5)], cursor(5)), done(0, 2, &[], 2)],
                ),
            ],
            ..case(
                "whole documents and a list together: the whole ones first, cursor last",
                &[],
                send_sync(None, pull3()),
            )
        },
    ];
    for case in cases {
        let (mut round, first) = ClientRound::start(case.pending, case.cursors, 100, case.limits);
        assert_eq!(first, vec![case.first], "{}", case.name);
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
    let no_change = || Some(changes(vec![], vec![], 3, false));
    let cases: Vec<(&str, &[u8], Vec<Input>, RoundError)> = vec![
        (
            "the server refuses the request",
            &[1],
            vec![Input::Reply(ServerMsg::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
            })],
            RoundError::Server {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
            },
        ),
        (
            "a deferral of a document never pushed",
            &[1],
            vec![reply(ack_deferring(100, &[], &[7]), no_change())],
            unexpected("a deferral of a document that was not pushed (or answered twice)"),
        ),
        (
            "a document both refused and deferred",
            &[1],
            vec![reply(ack_deferring(100, &[1], &[1]), no_change())],
            unexpected("a deferral of a document that was not pushed (or answered twice)"),
        ),
        (
            "the ack names another batch",
            &[1],
            vec![reply(ack(7, &[]), no_change())],
            unexpected("batch Some(100) answered as Some(7)"),
        ),
        (
            "no ack for a pushed batch",
            &[1],
            vec![reply(None, no_change())],
            unexpected("batch Some(100) answered as None"),
        ),
        (
            "an ack though nothing was pushed",
            &[],
            vec![reply(ack(100, &[]), no_change())],
            unexpected("batch None answered as Some(100)"),
        ),
        (
            "a refusal of a document never pushed",
            &[1],
            vec![reply(ack(100, &[7]), no_change())],
            unexpected("a refusal of a document that was not pushed"),
        ),
        (
            "no changes though the pull was asked",
            &[1],
            vec![reply(ack(100, &[]), None)],
            unexpected("pull asked: true, answered: false"),
        ),
        (
            "documents returned with more unsent than wanted",
            &[],
            vec![
                pulled(vec![changed(4)], 4, false),
                Input::LocalHeads(vec![]),
                docs(vec![doc(4)], 2),
            ],
            unexpected("1 documents returned with 2 of 1 unsent"),
        ),
        (
            "nothing returned yet some unsent: no progress",
            &[],
            vec![
                pulled(vec![changed(4)], 4, false),
                Input::LocalHeads(vec![]),
                docs(vec![], 1),
            ],
            unexpected("0 documents returned with 1 of 1 unsent"),
        ),
    ];
    for (name, pending, inputs, expected) in cases {
        let pending = pending.iter().map(|n| self::pending(*n)).collect();
        let (mut round, _) = ClientRound::start(pending, cursor(3), 100, BatchLimits::default());
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
    let start = || ClientRound::start(vec![], cursor(3), 1, BatchLimits::default()).0;
    match start().handle(Input::LocalHeads(vec![])) {
        Err(RoundError::Unexpected(m)) => {
            assert!(m.contains("LocalHeads") && m.contains("AwaitSync"), "{m}")
        }
        other => panic!("expected Unexpected, got {other:?}"),
    }
    match start().handle(docs(vec![], 0)) {
        Err(RoundError::Unexpected(m)) => assert!(m.contains("Docs"), "{m}"),
        other => panic!("expected Unexpected, got {other:?}"),
    }
}

#[test]
fn batches_respect_both_limits_and_keep_order() {
    let sized = |n: u8, len: usize| {
        let mut p = pending(n);
        p.push.changes = vec![n; len];
        p
    };
    let limits = BatchLimits {
        max_docs: 3,
        max_bytes: 100,
    };
    let ids = |b: &VecDeque<Vec<Pending>>| -> Vec<Vec<u8>> {
        b.iter()
            .map(|batch| batch.iter().map(|p| p.push.id[0]).collect())
            .collect()
    };
    let by_count = split_batches((1..=7).map(|n| sized(n, 10)).collect(), limits);
    assert_eq!(ids(&by_count), vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    let by_bytes = split_batches(
        vec![
            sized(1, 60),
            sized(2, 30),
            sized(3, 20),
            sized(4, 500),
            sized(5, 1),
        ],
        limits,
    );
    assert_eq!(
        ids(&by_bytes),
        vec![vec![1, 2], vec![3], vec![4], vec![5]],
        "a document larger than the byte limit goes alone"
    );
    assert!(split_batches(vec![], limits).is_empty());
}
