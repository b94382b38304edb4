//! The group-commit thread: one writer that folds every waiting round into one transaction.
//!
//! redb allows one write transaction at a time and each durable commit costs an fsync; a
//! morning burst of phones would queue behind each other's fsyncs. One thread that takes
//! every round waiting at that moment pays one fsync per batch instead.

use std::sync::Arc;
use std::sync::mpsc;

use fieldsync_proto::access::DeviceCtx;
use fieldsync_proto::protocol::{Limits, PushResult};
use tokio::sync::{oneshot, watch};

use super::{Prepared, PreparedRound, ServerStore, StoreError};

/// What a round hears back from the commit thread: its results, or why the commit failed.
type Reply = Result<Vec<PushResult>, String>;

/// A round waiting to be committed.
struct Job {
    round: Option<PreparedRound>,
    reply: oneshot::Sender<Reply>,
}

/// Groups the pushes of concurrent rounds into shared durable commits on one thread.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
}

/// Most rounds merged into one commit.
const MAX_ROUNDS_PER_COMMIT: usize = 256;

impl Committer {
    /// Starts the commit thread; it ends when every `Committer` handle is dropped.
    /// A storage failure that redb will not recover from without reopening the file is sent
    /// on `fatal`, so the process can stop and be restarted rather than refuse rounds forever.
    pub fn start(
        store: ServerStore,
        limits: Limits,
        metrics: Arc<crate::Metrics>,
        fatal: watch::Sender<Option<String>>,
    ) -> Committer {
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = CommitThread {
            store,
            limits,
            metrics,
            fatal,
        };
        std::thread::Builder::new()
            .name("fieldsync-commit".into())
            .spawn(move || thread.run(&rx))
            .map(|_| Committer { jobs })
            .unwrap_or_else(|e| {
                // Without a commit thread every push is answered with an error, never lost.
                tracing::error!(error = %e, "cannot start the commit thread");
                let (jobs, _) = mpsc::channel();
                Committer { jobs }
            })
    }

    /// Queues a device's batch and waits until it is durably committed, holding no thread
    /// meanwhile; the batch's id is recorded with its outcomes in the same transaction.
    pub async fn commit(
        &self,
        ctx: &DeviceCtx,
        batch: Option<u64>,
        push: Vec<Prepared>,
    ) -> Result<Vec<PushResult>, StoreError> {
        let reply = self.queue(PreparedRound {
            ctx: ctx.clone(),
            batch,
            push,
        })?;
        answer(reply.await)
    }

    /// Queues a change and waits (blocking) until it is durably committed; for dashboard
    /// changes, which run on the blocking pool already.
    pub fn commit_blocking(
        &self,
        ctx: &DeviceCtx,
        push: Vec<Prepared>,
    ) -> Result<Vec<PushResult>, StoreError> {
        let reply = self.queue(PreparedRound {
            ctx: ctx.clone(),
            batch: None,
            push,
        })?;
        answer(reply.blocking_recv())
    }

    /// Records that a device synced (a round that only pulled), in the next group commit.
    pub async fn touch(&self, ctx: &DeviceCtx) -> Result<(), StoreError> {
        self.commit(ctx, None, Vec::new()).await.map(|_| ())
    }

    /// Hands a round to the commit thread; the receiver gets its reply.
    fn queue(&self, round: PreparedRound) -> Result<oneshot::Receiver<Reply>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                round: Some(round),
                reply,
            })
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(rx)
    }
}

/// A round's reply as the caller sees it: a failed commit is `Corrupt` with its reason, a
/// commit thread that went away without answering is `ShuttingDown`.
fn answer(reply: Result<Reply, oneshot::error::RecvError>) -> Result<Vec<PushResult>, StoreError> {
    match reply {
        Ok(Ok(results)) => Ok(results),
        Ok(Err(e)) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
        Err(_) => Err(StoreError::ShuttingDown),
    }
}

/// What the commit thread owns.
struct CommitThread {
    store: ServerStore,
    limits: Limits,
    metrics: Arc<crate::Metrics>,
    fatal: watch::Sender<Option<String>>,
}

impl CommitThread {
    /// Commits batches until every sender is gone: each batch is the first waiting round and
    /// every round queued behind it, up to [`MAX_ROUNDS_PER_COMMIT`].
    fn run(&self, rx: &mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_ROUNDS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Commits one batch in one durable transaction and answers each of its rounds.
    fn commit(&self, mut batch: Vec<Job>) {
        let rounds: Vec<PreparedRound> = batch.iter_mut().filter_map(|j| j.round.take()).collect();
        let docs: usize = rounds.iter().map(|r| r.push.len()).sum();
        tracing::info!(rounds = rounds.len(), docs, "committing");
        let started = std::time::Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let result = self.store.commit_rounds(rounds, &self.limits, now_ms);
        self.metrics.record_commit(started.elapsed(), batch.len());
        match result {
            Ok(results) => {
                for (job, r) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, rounds = batch.len(), "commit failed; nothing acknowledged");
                // The rounds hear first: a fatal failure stops the server, and their replies
                // are waited for only once they are on their way.
                for job in batch {
                    let _ = job.reply.send(Err(e.to_string()));
                }
                if e.needs_reopen() {
                    self.fatal.send_replace(Some(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;
    use fieldsync_proto::access::Role;
    use fieldsync_proto::model::{FieldValue, Kind};
    use fieldsync_proto::protocol::{Outcome, PushDoc};
    use fieldsync_proto::record::Record;

    use super::*;
    use crate::store::User;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A store with one village worker enrolled on each of `devices`, and their contexts.
    fn store_with(devices: &[&str]) -> Result<(ServerStore, Vec<DeviceCtx>), StoreError> {
        let store = ServerStore::open_backend(redb::backends::InMemoryBackend::new())?;
        let user = User {
            id: "w1".into(),
            name: "王五".into(),
            role: Role::Village,
            scopes: vec!["village:1".parse().expect("scope")],
        };
        let mut ctxs = Vec::new();
        for (i, device) in devices.iter().enumerate() {
            let code = format!("code{i}");
            store.create_code(&user, &code, i64::MAX)?;
            store.enroll(&code, device, 1)?;
            ctxs.push(
                store
                    .device_ctx(device)?
                    .ok_or(StoreError::NotFound(device.to_string()))?,
            );
        }
        Ok((store, ctxs))
    }

    fn committer(store: &ServerStore) -> Committer {
        let (fatal, _) = watch::channel(None);
        Committer::start(store.clone(), Limits::default(), Arc::default(), fatal)
    }

    fn push(record: &mut Record, since: &[automerge::ChangeHash]) -> PushDoc {
        PushDoc {
            id: *record.id().as_bytes(),
            kind: record.kind(),
            scope: record.scope().to_string(),
            changes: record.changes_since(since),
        }
    }

    fn accepted(results: &[PushResult]) -> bool {
        results
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Accepted { .. }))
    }

    /// The async commit answers once the round is durable: the record, its receipt and the
    /// device's last sync are there.
    #[tokio::test]
    async fn commit_awaits_the_group_commit() -> TestResult {
        let (store, ctxs) = store_with(&["0101"])?;
        let ctx = &ctxs[0];
        let committer = committer(&store);
        let mut record = Record::create(
            Kind::VillageSurvey,
            "village:1",
            ActorId::from(ctx.actor.clone()),
            &[("village".into(), FieldValue::Text("大坪村".into()))],
            1,
        )?;
        let prepared = store.prepare(ctx, vec![push(&mut record, &[])], &Limits::default())?;
        let results = committer.commit(ctx, None, prepared).await?;
        assert_eq!(results.len(), 1);
        assert!(accepted(&results), "{results:?}");
        assert!(store.record_view(record.id())?.is_some());
        assert_eq!(store.receipts(record.id())?.len(), 1);
        let device = store.devices()?.into_iter().next().ok_or("no device")?;
        assert!(device.last_sync.is_some());
        Ok(())
    }

    /// Two rounds prepared against the same stored version both land: the one committed second
    /// is merged again against what the first wrote, so neither edit is lost.
    #[tokio::test]
    async fn a_round_prepared_against_an_older_version_is_merged_again() -> TestResult {
        let (store, ctxs) = store_with(&["0101", "0202"])?;
        let committer = committer(&store);
        let limits = Limits::default();
        let mut first = Record::create(
            Kind::VillageSurvey,
            "village:1",
            ActorId::from(ctxs[0].actor.clone()),
            &[("village".into(), FieldValue::Text("大坪村".into()))],
            1,
        )?;
        let prepared = store.prepare(&ctxs[0], vec![push(&mut first, &[])], &limits)?;
        assert!(accepted(&committer.commit(&ctxs[0], None, prepared).await?));

        let base = first.heads();
        let mut second = Record::load(first.id(), &first.save())?;
        second.set_actor(ActorId::from(ctxs[1].actor.clone()));
        first.update(&[("licensed_doctors".into(), FieldValue::Integer(2))], 2)?;
        second.update(&[("bus_service".into(), FieldValue::Bool(true))], 2)?;
        let a = store.prepare(&ctxs[0], vec![push(&mut first, &base)], &limits)?;
        let b = store.prepare(&ctxs[1], vec![push(&mut second, &base)], &limits)?;
        assert!(accepted(&committer.commit(&ctxs[0], None, a).await?));
        assert!(accepted(&committer.commit(&ctxs[1], None, b).await?));

        let view = store.record_view(first.id())?.ok_or("no view")?;
        assert_eq!(view.fields["licensed_doctors"], FieldValue::Integer(2));
        assert_eq!(view.fields["bus_service"], FieldValue::Bool(true));
        assert_eq!(store.receipts(first.id())?.len(), 3);
        Ok(())
    }

    /// A committed batch is recorded with its outcomes; the feed leaves the pusher's own
    /// document out for the pusher, lists it for others, and sends it whole to a fresh phone.
    #[tokio::test]
    async fn batches_are_recorded_and_own_pushes_not_listed_back() -> TestResult {
        let (store, ctxs) = store_with(&["0101", "0202"])?;
        let (pusher, other) = (&ctxs[0], &ctxs[1]);
        let committer = committer(&store);
        let mut record = Record::create(
            Kind::VillageSurvey,
            "village:1",
            ActorId::from(pusher.actor.clone()),
            &[("village".into(), FieldValue::Text("大坪村".into()))],
            1,
        )?;
        let prepared = store.prepare(pusher, vec![push(&mut record, &[])], &Limits::default())?;
        let results = committer.commit(pusher, Some(7), prepared).await?;
        assert_eq!(store.recorded_batch(&pusher.device_id, 7)?, Some(results));
        assert_eq!(store.recorded_batch(&pusher.device_id, 8)?, None);
        assert_eq!(store.recorded_batch(&other.device_id, 7)?, None);

        let cursor = vec![fieldsync_proto::protocol::Cursor {
            scope: "village:1".into(),
            seq: 0,
        }];
        let own = store.changes_since(pusher, &cursor, &[], 100, 1 << 20)?;
        assert!(own.changed.is_empty() && own.docs.is_empty(), "{own:?}");
        assert_eq!(own.cursors[0].seq, 1, "the cursor still moves past it");
        let listed = store.changes_since(other, &cursor, &[], 100, 1 << 20)?;
        assert_eq!(listed.changed.len(), 1);
        assert!(listed.docs.is_empty());
        let fresh = store.changes_since(other, &[], &[], 100, 1 << 20)?;
        assert!(fresh.changed.is_empty());
        assert_eq!(fresh.docs.len(), 1, "a fresh scope gets the document whole");
        assert_eq!(fresh.docs[0].id, *record.id().as_bytes());

        // Someone else's change: the document is listed for the first pusher again.
        let mut theirs = Record::load(record.id(), &record.save())?;
        theirs.set_actor(ActorId::from(other.actor.clone()));
        let before = theirs.heads();
        theirs.update(&[("licensed_doctors".into(), FieldValue::Integer(3))], 2)?;
        let prepared =
            store.prepare(other, vec![push(&mut theirs, &before)], &Limits::default())?;
        assert!(accepted(&committer.commit(other, Some(1), prepared).await?));
        let now = store.changes_since(pusher, &cursor, &[], 100, 1 << 20)?;
        assert_eq!(
            now.changed.len(),
            1,
            "another device's change is listed back"
        );
        Ok(())
    }

    /// A record whose stored document is gone (a damaged store) is deferred alone, not
    /// refused and not failing the batch: the other record of the batch lands.
    #[tokio::test]
    async fn a_record_missing_its_document_is_deferred_and_the_rest_land() -> TestResult {
        let (store, ctxs) = store_with(&["0101"])?;
        let ctx = &ctxs[0];
        let committer = committer(&store);
        let limits = Limits::default();
        let survey = |village: &str| {
            Record::create(
                Kind::VillageSurvey,
                "village:1",
                ActorId::from(ctx.actor.clone()),
                &[("village".into(), FieldValue::Text(village.into()))],
                1,
            )
        };
        let mut damaged = survey("大坪村")?;
        let prepared = store.prepare(ctx, vec![push(&mut damaged, &[])], &limits)?;
        assert!(accepted(&committer.commit(ctx, None, prepared).await?));
        let base = damaged.heads();
        damaged.update(&[("licensed_doctors".into(), FieldValue::Integer(2))], 2)?;
        let mut other = survey("小河村")?;
        let pushes = vec![push(&mut damaged, &base), push(&mut other, &[])];

        let remove_doc = |store: &ServerStore| -> TestResult {
            let tx = store.db.begin_write()?;
            tx.open_table(super::super::tables::DOCS)?
                .remove(damaged.id().as_u128())?;
            tx.commit()?;
            Ok(())
        };
        remove_doc(&store)?;
        let prepared = store.prepare(ctx, pushes.clone(), &limits)?;
        let results = committer.commit(ctx, Some(1), prepared).await?;
        match &results[0].outcome {
            Outcome::Deferred { reason } => assert!(reason.contains("no document"), "{reason}"),
            other => panic!("expected a deferral, got {other:?}"),
        }
        assert!(
            matches!(results[1].outcome, Outcome::Accepted { .. }),
            "{results:?}"
        );
        assert!(store.record_view(other.id())?.is_some());
        Ok(())
    }

    /// Without a commit thread a round is refused as shutting down, never left waiting.
    #[tokio::test]
    async fn commit_without_a_commit_thread_is_shutting_down() -> TestResult {
        let (store, ctxs) = store_with(&["0101"])?;
        let (jobs, rx) = mpsc::channel();
        drop(rx);
        let committer = Committer { jobs };
        let prepared = store.prepare(&ctxs[0], Vec::new(), &Limits::default())?;
        assert!(matches!(
            committer.commit(&ctxs[0], None, prepared).await,
            Err(StoreError::ShuttingDown)
        ));
        Ok(())
    }
}
