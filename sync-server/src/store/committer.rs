//! The group-commit thread: one writer that folds every waiting round into one transaction.
//!
//! redb allows one write transaction at a time and each durable commit costs an fsync; a
//! morning burst of phones would queue behind each other's fsyncs. One thread that takes
//! every round waiting at that moment pays one fsync per batch instead.

use std::sync::Arc;
use std::sync::mpsc;

use fieldsync_proto::access::DeviceCtx;
use fieldsync_proto::protocol::{Limits, PushResult};

use super::{Prepared, ServerStore, StoreError};

/// A round waiting to be committed.
struct Job {
    ctx: DeviceCtx,
    push: Vec<Prepared>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<PushResult>, String>>,
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
        fatal: tokio::sync::watch::Sender<Option<String>>,
    ) -> Committer {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fieldsync-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_ROUNDS_PER_COMMIT {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let rounds: Vec<(DeviceCtx, Vec<Prepared>)> =
                        batch.iter_mut().map(|j| (j.ctx.clone(), std::mem::take(&mut j.push))).collect();
                    let docs: usize = rounds.iter().map(|(_, p)| p.len()).sum();
                    tracing::info!(rounds = rounds.len(), docs, "committing");
                    let started = std::time::Instant::now();
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    let result = store.commit_rounds(rounds, &limits, now_ms);
                    metrics.record_commit(started.elapsed(), batch.len());
                    match result {
                        Ok(results) => {
                            for (job, r) in batch.into_iter().zip(results) {
                                let _ = job.reply.send(Ok(r));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, rounds = batch.len(), "commit failed; nothing acknowledged");
                            if e.needs_reopen() {
                                fatal.send_replace(Some(e.to_string()));
                            }
                            for job in batch {
                                let _ = job.reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            })
            .map(|_| Committer { jobs })
            .unwrap_or_else(|e| {
                // Without a commit thread every push is answered with an error, never lost.
                tracing::error!(error = %e, "cannot start the commit thread");
                let (jobs, _) = mpsc::channel();
                Committer { jobs }
            })
    }

    /// Queues a round and waits (blocking) until it is durably committed.
    pub fn commit_blocking(
        &self,
        ctx: &DeviceCtx,
        push: Vec<Prepared>,
    ) -> Result<Vec<PushResult>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job {
                ctx: ctx.clone(),
                push,
                reply,
            })
            .map_err(|_| StoreError::ShuttingDown)?;
        match rx.blocking_recv() {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(e)) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
            Err(_) => Err(StoreError::ShuttingDown),
        }
    }
}
