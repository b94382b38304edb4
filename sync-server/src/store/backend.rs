//! The server's side of the sync protocol: the proto crate's `SyncBackend` over the store.
//!
//! Kept alone in its file because it is about to be replaced by a state-machine driver; the
//! store itself does not depend on it.

use fieldsync_proto::access::DeviceCtx;
use fieldsync_proto::protocol::{Cursor, DocData, Limits, PushDoc, PushResult, SyncReply, Want};
use fieldsync_proto::sync::SyncBackend;

use super::{Committer, ServerStore, StoreError};

/// The server's side of the protocol over the redb store and the committer.
pub struct Backend<'a> {
    pub store: &'a ServerStore,
    pub committer: &'a Committer,
    pub limits: &'a Limits,
}

impl SyncBackend for Backend<'_> {
    type Error = StoreError;

    fn commit(
        &mut self,
        ctx: &DeviceCtx,
        push: Vec<PushDoc>,
    ) -> Result<Vec<PushResult>, StoreError> {
        let prepared = self.store.prepare(ctx, push, self.limits)?;
        self.committer.commit_blocking(ctx, prepared)
    }

    fn changes_since(
        &mut self,
        ctx: &DeviceCtx,
        cursors: &[Cursor],
        limit: usize,
    ) -> Result<SyncReply, StoreError> {
        self.store.changes_since(ctx, cursors, limit)
    }

    fn fetch(
        &mut self,
        ctx: &DeviceCtx,
        want: &[Want],
        budget: usize,
    ) -> Result<(Vec<DocData>, usize), StoreError> {
        self.store.fetch(ctx, want, budget)
    }
}
