//! The role and scope rules on the phone: the server's own `access::check_write`, run before a
//! local write commits, so a volunteer learns at once (not at the next sync) that a survey, a
//! confirmed status or another team's check-in is not theirs to write.
//!
//! The rules are fed from the store's enrollment (role, scopes, user, actor), which is what the
//! server's tables said when the device enrolled; the server checks again on every push, and
//! what it refuses after the rules changed is taken back with `revert`.
//!
//! Before enrollment there are no rules to check against: a store that is not enrolled keeps
//! local drafts of any kind (nothing a person records may be lost while they wait for a code).
//! The server checks them at the first sync, and what it refuses can be dropped with `revert`.
//! Check-ins need the enrollment anyway (the volunteer comes from it).

use std::collections::BTreeMap;

use automerge::ActorId;
use fieldsync_proto::access::{self, DeviceCtx};
use fieldsync_proto::model::FieldValue;
use fieldsync_proto::record::Record;

use super::{DeviceStore, EnrollmentInfo, StoreError};

impl DeviceStore {
    /// This device as the rules see it, from its enrollment; `None` before enrollment.
    pub fn rules(&self) -> Result<Option<DeviceCtx>, StoreError> {
        Ok(self
            .enrollment()?
            .map(|info| device_ctx(&info, &self.actor)))
    }
}

/// The rules' context of an enrolled device: what the server builds from its own tables.
pub(super) fn device_ctx(info: &EnrollmentInfo, actor: &ActorId) -> DeviceCtx {
    DeviceCtx {
        device_id: info.device_id.clone(),
        actor: actor.to_bytes().to_vec(),
        user_id: info.user_id.clone(),
        role: info.role,
        scopes: info.scopes.clone(),
    }
}

/// Checks that `record` as it now stands may be written by `ctx`, coming from `before` (its
/// values before the edit; `None` for a new record), exactly as the server checks a push.
pub(super) fn check(
    ctx: Option<&DeviceCtx>,
    record: &Record,
    before: Option<&BTreeMap<String, Vec<FieldValue>>>,
) -> Result<(), StoreError> {
    let Some(ctx) = ctx else {
        return Ok(());
    };
    let after = record.values()?;
    access::check_write(ctx, record.kind(), record.scope(), before, &after)
        .map_err(StoreError::Forbidden)
}
