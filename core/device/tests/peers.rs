//! Many peers in one process, no sockets: the protocol state machines and the merge rule driven
//! deterministically (a seeded generator picks who edits what and who syncs when), with each
//! phone on its own redb device store and the server's storage in memory.

use std::collections::BTreeMap;

use fieldsync_device::store::DeviceStore;
use fieldsync_proto::access::{DeviceCtx, Role};
use fieldsync_proto::model::{FieldValue, Kind};
use fieldsync_proto::protocol::{
    Changed, Changes, ClientMsg, Cursor, DocData, DocId, Hash, Limits, Outcome, PushDoc,
    PushResult, ServerMsg, Want,
};
use fieldsync_proto::sync::{
    self, RoundDriver, RoundError, ServerEffect, ServerExchange, ServerInput, StorageFailure,
    StoredDoc,
};

/// The server's storage as plain maps: for this harness only, never instead of redb.
#[derive(Default)]
struct MemoryBackend {
    /// Each document with its feed seq, heads, and the device that holds it whole if its
    /// latest change was that device's push.
    docs: BTreeMap<DocId, (StoredDoc, u64, Vec<Hash>, Option<String>)>,
    /// Each device's last committed batch and its outcomes.
    batches: BTreeMap<String, (u64, Vec<PushResult>)>,
    seq: u64,
    commits: usize,
}

impl MemoryBackend {
    /// Answers one request by driving the server's exchange, as the QUIC session does.
    fn serve(&mut self, ctx: &DeviceCtx, msg: ClientMsg) -> ServerMsg {
        let (mut exchange, mut effect) = ServerExchange::start(msg, &Limits::default());
        loop {
            let input = match effect {
                ServerEffect::Reply(reply) => return reply,
                ServerEffect::Commit { batch, docs } => {
                    ServerInput::Committed(Ok(self.commit(ctx, batch, docs)))
                }
                ServerEffect::ReadFeed {
                    cursors,
                    fresh,
                    limit,
                    ..
                } => ServerInput::Feed(Ok(self.changes_since(ctx, &cursors, &fresh, limit))),
                ServerEffect::Fetch { want, .. } => ServerInput::Fetched(self.fetch(ctx, &want)),
            };
            effect = exchange.handle(input);
        }
    }

    fn commit(&mut self, ctx: &DeviceCtx, batch: u64, push: Vec<PushDoc>) -> Vec<PushResult> {
        if let Some((_, outcomes)) = self
            .batches
            .get(&ctx.device_id)
            .filter(|(id, _)| *id == batch)
        {
            return outcomes.clone();
        }
        self.commits += 1;
        let limits = Limits::default();
        let outcomes: Vec<PushResult> = push
            .into_iter()
            .map(|p| {
                let existing = self.docs.get(&p.id).map(|(d, ..)| d.clone());
                let outcome = match sync::merge_push(existing.as_ref(), &p, ctx, &limits) {
                    Err(e) => e.outcome(),
                    Ok(m) => {
                        if let Some(bytes) = m.bytes {
                            self.seq += 1;
                            let stored = StoredDoc {
                                kind: p.kind,
                                scope: p.scope.clone(),
                                bytes,
                            };
                            let writer = m.pusher_has_all.then(|| ctx.device_id.clone());
                            self.docs
                                .insert(p.id, (stored, self.seq, m.heads.clone(), writer));
                        }
                        Outcome::Accepted { heads: m.heads }
                    }
                };
                PushResult { id: p.id, outcome }
            })
            .collect();
        self.batches
            .insert(ctx.device_id.clone(), (batch, outcomes.clone()));
        outcomes
    }

    fn changes_since(
        &self,
        ctx: &DeviceCtx,
        cursors: &[Cursor],
        fresh: &[String],
        limit: usize,
    ) -> Changes {
        let mut scopes: Vec<String> = self.docs.values().map(|(d, ..)| d.scope.clone()).collect();
        scopes.sort();
        scopes.dedup();
        scopes.retain(|s| ctx.may_read(s));
        let mut out = Changes::default();
        for scope in scopes {
            let cursor = cursors.iter().find(|c| c.scope == scope);
            let whole = cursor.is_none() || fresh.contains(&scope);
            let from = cursor.map_or(0, |c| c.seq);
            let mut entries: Vec<_> = self
                .docs
                .iter()
                .filter(|(_, (d, seq, ..))| d.scope == scope && *seq > from)
                .collect();
            entries.sort_by_key(|(_, (_, seq, ..))| *seq);
            let mut last = from;
            for (id, (d, seq, heads, writer)) in entries.into_iter().take(limit) {
                last = *seq;
                if writer.as_deref() == Some(ctx.device_id.as_str()) {
                    continue;
                }
                if whole {
                    out.docs.push(DocData {
                        id: *id,
                        kind: d.kind,
                        scope: d.scope.clone(),
                        bytes: d.bytes.clone(),
                    });
                } else {
                    out.changed.push(Changed {
                        id: *id,
                        kind: d.kind,
                        scope: d.scope.clone(),
                        heads: heads.clone(),
                    });
                }
            }
            out.cursors.push(Cursor { scope, seq: last });
        }
        out
    }

    fn fetch(
        &self,
        ctx: &DeviceCtx,
        want: &[Want],
    ) -> Result<(Vec<DocData>, usize), StorageFailure> {
        let docs = want
            .iter()
            .filter_map(|w| self.docs.get(&w.id).map(|(d, ..)| (w, d)))
            .filter(|(_, d)| ctx.may_read(&d.scope))
            .map(|(w, d)| {
                Ok(DocData {
                    id: w.id,
                    kind: d.kind,
                    scope: d.scope.clone(),
                    bytes: sync::changes_for(d, &w.have).map_err(StorageFailure)?,
                })
            })
            .collect::<Result<Vec<_>, StorageFailure>>()?;
        Ok((docs, 0))
    }
}

struct Peer {
    store: DeviceStore,
    ctx: DeviceCtx,
    /// Batch ids are the driver's to choose; a counter keeps them unique per peer here.
    next_batch: std::cell::Cell<u64>,
}

/// Small batches, so the seeded runs push in several batches.
const BATCH: sync::BatchLimits = sync::BatchLimits {
    max_docs: 3,
    max_bytes: 64 * 1024,
};

/// Drives a round straight into the backend, as the QUIC driver does over the network.
struct InProcess<'a> {
    peer: &'a Peer,
    server: &'a mut MemoryBackend,
    exchanges: usize,
    progress: Vec<sync::Progress>,
}

impl RoundDriver for InProcess<'_> {
    type Error = HarnessError;

    async fn exchange(&mut self, msg: ClientMsg) -> Result<ServerMsg, HarnessError> {
        self.exchanges += 1;
        Ok(self.server.serve(&self.peer.ctx, msg))
    }

    async fn acknowledge(
        &mut self,
        accepted: Vec<(DocId, Vec<Hash>)>,
        refused: Vec<(DocId, String)>,
    ) -> Result<(), HarnessError> {
        Ok(self
            .peer
            .store
            .acknowledge(&accepted, &refused)
            .map_err(|e| e.to_string())?)
    }

    async fn local_heads(
        &mut self,
        changed: Vec<Changed>,
    ) -> Result<Vec<(DocId, Vec<Hash>)>, HarnessError> {
        Ok(self
            .peer
            .store
            .local_heads(&changed)
            .map_err(|e| e.to_string())?)
    }

    async fn apply(
        &mut self,
        docs: Vec<DocData>,
        cursors: Vec<Cursor>,
    ) -> Result<(), HarnessError> {
        Ok(self
            .peer
            .store
            .apply(&docs, &cursors)
            .map_err(|e| e.to_string())?)
    }
    fn progress(&mut self, progress: sync::Progress) {
        self.progress.push(progress);
    }
}

/// The harness's error: any failure is a test failure, with its message.
#[derive(Debug)]
struct HarnessError(#[allow(dead_code, reason = "shown through Debug when a round fails")] String);

impl From<RoundError> for HarnessError {
    fn from(e: RoundError) -> Self {
        HarnessError(e.to_string())
    }
}

impl From<String> for HarnessError {
    fn from(e: String) -> Self {
        HarnessError(e)
    }
}

fn sync_peer(peer: &Peer, server: &mut MemoryBackend) -> (sync::RoundReport, usize) {
    let pending = peer.store.pending().unwrap();
    let cursors = peer.store.cursors().unwrap();
    let mut driver = InProcess {
        peer,
        server,
        exchanges: 0,
        progress: Vec::new(),
    };
    let pending_count = pending.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let start = sync::RoundStart {
        pending,
        cursors,
        first_batch: peer.next_batch.get(),
        limits: BATCH,
    };
    peer.next_batch.set(peer.next_batch.get() + 1_000);
    let report = rt.block_on(sync::drive_round(&mut driver, start)).unwrap();
    assert_progress_sane(&driver.progress, pending_count, &report);
    let exchanges = driver.exchanges;
    (report, exchanges)
}

/// Progress starts at nothing done of what is pending, never goes back or past its totals,
/// and ends with every sent and received document the report counts.
fn assert_progress_sane(calls: &[sync::Progress], pending: usize, report: &sync::RoundReport) {
    let first = calls.first().expect("progress reported");
    assert_eq!(
        *first,
        sync::Progress {
            to_send: pending,
            ..Default::default()
        }
    );
    for pair in calls.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            b.sent >= a.sent && b.received >= a.received && b.to_receive >= a.to_receive,
            "progress went backwards: {calls:?}"
        );
    }
    for p in calls {
        assert!(
            p.sent <= p.to_send && p.received <= p.to_receive,
            "{calls:?}"
        );
    }
    let last = calls.last().expect("progress reported");
    assert_eq!(
        last.sent,
        report.sent + report.refused.len() + report.deferred.len(),
        "{calls:?}"
    );
    assert_eq!(last.sent, last.to_send, "{calls:?}");
    assert_eq!(last.received, report.received, "{calls:?}");
    assert_eq!(last.received, last.to_receive, "{calls:?}");
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn peer(dir: &std::path::Path, name: &str, role: Role, scopes: &[&str]) -> Peer {
    let store = DeviceStore::open(&dir.join(name)).unwrap();
    let actor = hex::decode(store.device_id()).unwrap();
    Peer {
        ctx: DeviceCtx {
            device_id: store.device_id(),
            actor,
            user_id: name.to_string(),
            role,
            scopes: scopes.iter().map(|s| s.parse().expect("scope")).collect(),
        },
        store,
        next_batch: std::cell::Cell::new(1),
    }
}

#[test]
fn seeded_offline_edits_converge_on_every_peer_in_scope() {
    for seed in [1u64, 7, 42] {
        let tmp = tempfile::tempdir().unwrap();
        let mut server = MemoryBackend::default();
        let village: Vec<Peer> = (0..4)
            .map(|i| {
                peer(
                    tmp.path(),
                    &format!("village{i}"),
                    Role::Village,
                    &["village:1"],
                )
            })
            .collect();
        let volunteer = peer(tmp.path(), "vol", Role::Volunteer, &["team:1"]);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);

        let first = village[0]
            .store
            .create(
                Kind::VillageSurvey,
                "village:1",
                &[("village".into(), FieldValue::Text("大坪村".into()))],
            )
            .unwrap();
        let survey = uuid::Uuid::parse_str(&first.id).unwrap();
        sync_peer(&village[0], &mut server);

        let fields = ["licensed_doctors", "tap_water_pct", "bus_service", "note"];
        for _step in 0..60 {
            let p = &village[rng.below(village.len())];
            match rng.below(3) {
                0 => {
                    sync_peer(p, &mut server);
                }
                _ if p.store.get(survey).unwrap().is_some() => {
                    let field = fields[rng.below(fields.len())];
                    let n = rng.below(100);
                    let value = match field {
                        "licensed_doctors" => FieldValue::Integer(n as i64),
                        "tap_water_pct" => FieldValue::Number(n as f64),
                        "bus_service" => FieldValue::Bool(n.is_multiple_of(2)),
                        _ => FieldValue::Text(format!("走访记录 {n}")),
                    };
                    p.store
                        .update(survey, &[(field.to_string(), value)])
                        .unwrap();
                }
                _ => {
                    p.store
                        .create(
                            Kind::VillageVisit,
                            "village:1",
                            &[
                                ("village".into(), FieldValue::Text("大坪村".into())),
                                (
                                    "household".into(),
                                    FieldValue::Text(format!("户{}", rng.below(50))),
                                ),
                                (
                                    "visited_at".into(),
                                    FieldValue::Text("2026-11-28T09:00:00+08:00".into()),
                                ),
                            ],
                        )
                        .unwrap();
                }
            }
        }
        // Everyone syncs twice: the first pass pushes, the second pulls what others pushed.
        for _ in 0..2 {
            for p in &village {
                let (report, exchanges) = sync_peer(p, &mut server);
                assert!(
                    report.refused.is_empty(),
                    "seed {seed}: {:?}",
                    report.refused
                );
                let batches = report.sent.div_ceil(BATCH.max_docs).max(1);
                assert!(
                    exchanges <= batches + 1,
                    "a round is its batches and at most one fetch, got {exchanges}"
                );
            }
        }
        let expected = village[0].store.list(None, None).unwrap();
        assert_eq!(expected.len(), server.docs.len(), "seed {seed}");
        for p in &village[1..] {
            assert_eq!(
                p.store.list(None, None).unwrap(),
                expected,
                "seed {seed}: peers converge"
            );
            assert_eq!(p.store.pending_count().unwrap(), 0);
        }
        sync_peer(&volunteer, &mut server);
        assert!(
            volunteer.store.list(None, None).unwrap().is_empty(),
            "no village records reach a volunteer"
        );
    }
}

#[test]
fn exchanges_grow_with_batches_not_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = MemoryBackend::default();
    let a = peer(tmp.path(), "a", Role::Village, &["village:1"]);
    let b = peer(tmp.path(), "b", Role::Village, &["village:1"]);
    for (n, b_is_fresh) in [(1usize, true), (200, false)] {
        for i in 0..n {
            a.store
                .create(
                    Kind::VillageSurvey,
                    "village:1",
                    &[("village".into(), FieldValue::Text(format!("村{i}")))],
                )
                .unwrap();
        }
        let commits_before = server.commits;
        let (push, push_exchanges) = sync_peer(&a, &mut server);
        assert_eq!(push.sent, n);
        let batches = n.div_ceil(BATCH.max_docs);
        assert_eq!(push_exchanges, batches, "push: one exchange per batch");
        assert_eq!(
            server.commits - commits_before,
            batches,
            "one commit per batch"
        );
        assert_eq!(
            push.received, 0,
            "nothing of its own comes back to the pusher"
        );
        let (pull, pull_exchanges) = sync_peer(&b, &mut server);
        assert_eq!(pull.received, n);
        if b_is_fresh {
            assert_eq!(
                pull_exchanges, 1,
                "a fresh phone: the documents come whole at once"
            );
        } else {
            assert_eq!(pull_exchanges, 2, "pull: the list of heads, then one fetch");
        }
    }
}
