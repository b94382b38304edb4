//! fieldsync-bindings: the uniffi facade over the device core (fieldsync-device, fieldsync-proto) that phones link.
//!
//! One object, [`FieldStore`], wraps core's [`DeviceStore`] the way mozilla's
//! application-services wrap their Rust components: every method converts its arguments, calls
//! core, and converts the result. No record, sync or validation logic lives here; what the app
//! needs and core lacked (the check-in form, the user's hours) was added to core.
//!
//! Threading: `enroll` and `sync` are async (they talk to the server) and run on uniffi's tokio
//! support, so Kotlin calls them from a coroutine, Swift with `await` and Python with `await`.
//! Every other method is a local redb read or one durable write (an fsync, about a millisecond);
//! an Android app calls them off the main thread (`Dispatchers.IO`) like any disk access. A
//! `FieldStore` is safe to share between threads; sync rounds of one store run one at a time.
//!
//! [`BackgroundSync`] is what an app keeps running instead of calling `sync` itself: it runs a
//! round whenever the app asks (connectivity came back, a timer, the sync button), one at a
//! time, retries after a lost connection on its own, and tells the UI its [`SyncState`].
//!
//! The generated foreign module is named `fieldsync` (namespace below).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldsync_device::client::{self, SyncOptions};
use fieldsync_device::store::{CheckInForm, DeviceStore};
use fieldsync_proto::model::{self, Kind};
use uuid::Uuid;

mod background;
mod error;
mod types;

pub use background::{
    BackgroundSync, BackgroundSyncOptions, SyncFailure, SyncState, SyncStateListener,
};
pub use error::FieldSyncError;
pub use types::{
    Deferral, Enrollment, FieldRecord, FieldSpec, FieldType, FieldValue, HistoryEntry,
    HoursSummary, Refusal, Reverted, Role, SyncProgress, SyncReport,
};

uniffi::setup_scaffolding!("fieldsync");

/// Receives the progress of a sync round; implemented by the app.
///
/// Called on the thread that drives the round, never concurrently for one round: hop to the
/// UI thread before touching views.
#[uniffi::export(with_foreign)]
pub trait SyncProgressListener: Send + Sync {
    /// Records sent out of those to send, and received out of those to receive. Called at
    /// the start (nothing done), after each answer and each stored batch, and at the end, when
    /// `sent == to_send` and `received == to_receive`.
    fn on_progress(&self, progress: SyncProgress);
}

/// A phone's store of records: open it once per app process and share it.
#[derive(uniffi::Object)]
pub struct FieldStore {
    inner: DeviceStore,
    /// Keeps a second sync of this store (a double tap, a background job) from running while
    /// one is in flight: it would push the same records again for nothing.
    sync_lock: tokio::sync::Mutex<()>,
}

#[uniffi::export(async_runtime = "tokio")]
impl FieldStore {
    /// Opens the store in the folder `path`, creating it and this device's key on first use.
    ///
    /// Fails with `Storage` if another `FieldStore` (in this process or another) has it open.
    #[uniffi::constructor]
    pub fn open(path: String) -> Result<Arc<FieldStore>, FieldSyncError> {
        let inner = DeviceStore::open(&PathBuf::from(path))?;
        Ok(Arc::new(FieldStore {
            inner,
            sync_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// This device's id (hex), as the server's admin sees it (e.g. to revoke a lost phone).
    pub fn device_id(&self) -> String {
        self.inner.device_id()
    }

    /// Who this device is enrolled as; `None` before enrollment.
    pub fn enrollment(&self) -> Result<Option<Enrollment>, FieldSyncError> {
        Ok(self.inner.enrollment()?.map(Into::into))
    }

    /// Enrolls this device with a one-time code from the server's admin and pins the server's
    /// certificate `fingerprint` (64 hex digits). `server` is `host:port`.
    ///
    /// Reconnects while the link drops, for up to `deadline_seconds` (default: core's two
    /// minutes), then fails with `Network`. Enrolling again with the same code after a reply
    /// was lost is answered with the same enrollment. A wrong fingerprint fails at once with
    /// `Certificate`.
    #[uniffi::method(default(deadline_seconds = None))]
    pub async fn enroll(
        &self,
        server: String,
        fingerprint: String,
        code: String,
        deadline_seconds: Option<u32>,
    ) -> Result<Enrollment, FieldSyncError> {
        let options = SyncOptions {
            deadline: deadline(deadline_seconds)?,
            ..SyncOptions::default()
        };
        let info = client::enroll_with(&self.inner, &server, &fingerprint, &code, &options).await?;
        Ok(info.into())
    }

    /// Records a volunteer check-in for the enrolled user; returns the new record's id.
    ///
    /// Times are RFC 3339 (`2026-11-28T08:00:00+08:00`); `ended_at` may be left out and set
    /// at check-out with `update`. The volunteer, team, `status` (`submitted`) and device time
    /// are filled in from the enrollment and the clock. `scope` defaults to the user's first
    /// team scope; a scope that is not the user's is `Refused` at once, nothing written.
    #[uniffi::method(default(
        ended_at = None,
        lat = None,
        lon = None,
        accuracy_m = None,
        note = None,
        scope = None
    ))]
    #[allow(clippy::too_many_arguments)] // mirrors the check-in form, field by field
    pub fn check_in(
        &self,
        activity: String,
        place: String,
        started_at: String,
        ended_at: Option<String>,
        lat: Option<f64>,
        lon: Option<f64>,
        accuracy_m: Option<f64>,
        note: Option<String>,
        scope: Option<String>,
    ) -> Result<String, FieldSyncError> {
        let form = CheckInForm {
            activity,
            place,
            started_at,
            ended_at,
            lat,
            lon,
            accuracy_m,
            note,
            scope,
        };
        Ok(self.inner.check_in(&form)?.id)
    }

    /// Creates a record of any kind in `scope` with `fields`, as one durable write.
    ///
    /// Every value is checked against the kind's schema first; nothing is written if any is
    /// refused (`InvalidInput`). What the enrolled role and scopes may not write is `Refused`
    /// at once, with the reason the server would give (before enrollment any kind is kept as a
    /// draft, and the server decides at the first sync).
    pub fn create(
        &self,
        kind: String,
        scope: String,
        fields: HashMap<String, FieldValue>,
    ) -> Result<FieldRecord, FieldSyncError> {
        let kind: Kind = kind.parse()?;
        let view = self.inner.create(kind, &scope, &core_fields(fields))?;
        Ok(view.into())
    }

    /// Sets `fields` of record `id` as one change; nothing is written if any value is refused.
    ///
    /// Setting a field that is in conflict resolves the conflict to the new value. An edit the
    /// enrolled role and scopes do not allow is `Refused`, like `create`.
    pub fn update(
        &self,
        id: String,
        fields: HashMap<String, FieldValue>,
    ) -> Result<FieldRecord, FieldSyncError> {
        let view = self.inner.update(parse_id(&id)?, &core_fields(fields))?;
        Ok(view.into())
    }

    /// One record, or `None` if this device has no record `id`.
    pub fn get(&self, id: String) -> Result<Option<FieldRecord>, FieldSyncError> {
        Ok(self.inner.get(parse_id(&id)?)?.map(Into::into))
    }

    /// Every record on the device, optionally only of `kind` and/or in `scope`, oldest first.
    #[uniffi::method(default(kind = None, scope = None))]
    pub fn list(
        &self,
        kind: Option<String>,
        scope: Option<String>,
    ) -> Result<Vec<FieldRecord>, FieldSyncError> {
        let kind = kind.map(|k| k.parse::<Kind>()).transpose()?;
        let views = self.inner.list(kind, scope.as_deref())?;
        Ok(views.into_iter().map(Into::into).collect())
    }

    /// Who changed which fields of record `id`, and when; oldest first.
    pub fn history(&self, id: String) -> Result<Vec<HistoryEntry>, FieldSyncError> {
        let history = self.inner.history(parse_id(&id)?)?;
        Ok(history.into_iter().map(Into::into).collect())
    }

    /// Records with changes the server has not acknowledged yet.
    pub fn pending_count(&self) -> Result<u64, FieldSyncError> {
        Ok(self.inner.pending_count()?)
    }

    /// Records the server refused, with its reasons, until they are edited again or reverted.
    pub fn refused(&self) -> Result<Vec<Refusal>, FieldSyncError> {
        Ok(self
            .inner
            .refused()?
            .into_iter()
            .map(|(id, reason)| Refusal {
                id: id.to_string(),
                reason,
            })
            .collect())
    }

    /// Takes back what the server refused of record `id`, as one durable write: the record
    /// goes back to the version the server holds (`ToServer`), or, if the server never had it,
    /// it is dropped from the phone (`Dropped`).
    ///
    /// The way out of a refusal besides editing the record. Only a refused record (see
    /// `refused()`) can be reverted: any other is `InvalidInput` and stays as it is, so an edit
    /// not yet synced is never thrown away by mistake; an unknown id is `NotFound`.
    pub fn revert(&self, id: String) -> Result<Reverted, FieldSyncError> {
        Ok(self.inner.revert(parse_id(&id)?)?.into())
    }

    /// The enrolled user's check-in hours on this device, by review status.
    pub fn my_hours(&self) -> Result<HoursSummary, FieldSyncError> {
        Ok(self.inner.my_hours()?.into())
    }

    /// Runs one sync round: pushes every pending record, pulls what changed in the user's
    /// scopes, and reports progress to `listener`.
    ///
    /// The round outlives a dropped connection: it reconnects with jittered backoff and goes
    /// on where it was (progress keeps counting) for up to `deadline_seconds` (default: core's
    /// two minutes), then fails with `Network`; what is not acknowledged by then stays pending.
    /// A record the server refuses does not fail the round: it is listed in the report's
    /// `refused` (and by `refused()`); one the server could not take because of its own
    /// trouble with it is listed in `deferred` and stays pending for the next round. The call
    /// fails (`Network`, `ServerUnavailable`, `Unauthorized`, `Certificate`, `Refused`,
    /// `NotEnrolled`, `Storage`) only when the round as a whole could not run; nothing
    /// unacknowledged is then marked acknowledged, and the round is simply run again later.
    /// Only `Network` and `ServerUnavailable` are worth retrying on their own;
    /// [`BackgroundSync`] does that.
    #[uniffi::method(default(listener = None, deadline_seconds = None))]
    pub async fn sync(
        &self,
        listener: Option<Arc<dyn SyncProgressListener>>,
        deadline_seconds: Option<u32>,
    ) -> Result<SyncReport, FieldSyncError> {
        let deadline = deadline(deadline_seconds)?;
        self.round(deadline, |p| {
            if let Some(l) = &listener {
                l.on_progress(p);
            }
        })
        .await
    }
}

impl FieldStore {
    /// One sync round within `deadline`, one round of this store at a time (a second caller
    /// waits for the first: running both would push the same records twice for nothing).
    pub(crate) async fn round(
        &self,
        deadline: Duration,
        progress: impl Fn(SyncProgress) + Send,
    ) -> Result<SyncReport, FieldSyncError> {
        let _one_round_at_a_time = self.sync_lock.lock().await;
        let options = SyncOptions {
            deadline,
            ..SyncOptions::default()
        };
        let mut progress = move |p: fieldsync_proto::sync::Progress| progress(p.into());
        let (report, _wire_bytes) = client::sync_with(&self.inner, &options, &mut progress).await?;
        Ok(report.into())
    }
}

/// A round's or enrollment's deadline from what the app passed: core's default when `None`.
pub(crate) fn deadline(seconds: Option<u32>) -> Result<Duration, FieldSyncError> {
    match seconds {
        None => Ok(client::DEFAULT_DEADLINE),
        Some(0) => Err(FieldSyncError::invalid(
            "a deadline of 0 s leaves no time to reach the server; pass at least 1",
        )),
        Some(s) => Ok(Duration::from_secs(u64::from(s))),
    }
}

/// The fields of `kind` (`check_in`, `village_visit`, `village_survey`), for building forms.
#[uniffi::export]
pub fn field_schema(kind: String) -> Result<Vec<FieldSpec>, FieldSyncError> {
    Ok(types::schema_of(kind.parse()?))
}

/// Parses what a person typed for `field` of `kind` into a value of the field's type.
///
/// Numbers, integers and `true`/`false` (or `yes`/`no`) as typed; text and timestamps as they
/// are (timestamps checked); lists as `a; b; c` or a JSON array. JSON is accepted for any type.
#[uniffi::export]
pub fn parse_field_value(
    kind: String,
    field: String,
    input: String,
) -> Result<FieldValue, FieldSyncError> {
    let kind: Kind = kind.parse()?;
    let spec = kind
        .schema()
        .field(&field)
        .ok_or_else(|| FieldSyncError::invalid(format!("{kind} has no field `{field}`")))?;
    Ok(model::parse_input(spec, &input)?.into())
}

fn parse_id(id: &str) -> Result<Uuid, FieldSyncError> {
    Uuid::parse_str(id).map_err(|_| FieldSyncError::invalid(format!("`{id}` is not a record id")))
}

fn core_fields(fields: HashMap<String, FieldValue>) -> Vec<(String, model::FieldValue)> {
    // Sorted, so the one change a write makes is the same whatever the map's order.
    let mut fields: Vec<(String, model::FieldValue)> =
        fields.into_iter().map(|(k, v)| (k, v.into())).collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> FieldValue {
        FieldValue::Text { value: s.into() }
    }

    fn open() -> (tempfile::TempDir, Arc<FieldStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = FieldStore::open(dir.path().to_string_lossy().into_owned()).unwrap();
        (dir, store)
    }

    #[test]
    fn records_round_trip_through_the_facade_types() {
        let (_dir, store) = open();
        let fields = HashMap::from([
            ("village".to_string(), text("大坪村")),
            (
                "licensed_doctors".to_string(),
                FieldValue::Integer { value: 2 },
            ),
            (
                "tap_water_pct".to_string(),
                FieldValue::Integer { value: 95 },
            ),
            ("bus_service".to_string(), FieldValue::Bool { value: true }),
        ]);
        let created = store
            .create("village_survey".into(), "village:3".into(), fields)
            .unwrap();
        assert_eq!(created.kind, "village_survey");
        // An integer given for a number field is stored as a number, as core decides.
        assert_eq!(
            created.fields["tap_water_pct"],
            FieldValue::Number { value: 95.0 }
        );
        assert_eq!(
            store.get(created.id.clone()).unwrap(),
            Some(created.clone())
        );
        let visit = store
            .create(
                "village_visit".into(),
                "village:3".into(),
                HashMap::from([
                    ("village".to_string(), text("大坪村")),
                    ("household".to_string(), text("李家")),
                    ("visited_at".to_string(), text("2026-11-28T09:00:00+08:00")),
                    (
                        "visitors".to_string(),
                        FieldValue::TextList {
                            values: vec!["张三".into(), "李四".into()],
                        },
                    ),
                ]),
            )
            .unwrap();
        assert_eq!(store.list(None, None).unwrap().len(), 2);
        assert_eq!(
            store.list(Some("village_visit".into()), None).unwrap(),
            vec![visit]
        );
        assert!(
            store
                .list(None, Some("village:4".into()))
                .unwrap()
                .is_empty()
        );
        let updated = store
            .update(
                created.id.clone(),
                HashMap::from([(
                    "licensed_doctors".to_string(),
                    FieldValue::Integer { value: 3 },
                )]),
            )
            .unwrap();
        assert_eq!(
            updated.fields["licensed_doctors"],
            FieldValue::Integer { value: 3 }
        );
        let history = store.history(created.id).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].fields, vec!["licensed_doctors".to_string()]);
        assert_eq!(history[1].device_id, store.device_id());
        assert_eq!(store.pending_count().unwrap(), 2);
    }

    #[test]
    fn bad_input_is_invalid_input_and_changes_nothing() {
        let (_dir, store) = open();
        let err = store
            .create("parade".into(), "village:3".into(), HashMap::new())
            .unwrap_err();
        assert!(
            matches!(err, FieldSyncError::InvalidInput { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("unknown kind"), "{err}");
        let err = store
            .create(
                "village_survey".into(),
                "village:3".into(),
                HashMap::from([
                    ("village".to_string(), text("大坪村")),
                    ("licensed_doctors".to_string(), text("two")),
                ]),
            )
            .unwrap_err();
        assert!(
            matches!(err, FieldSyncError::InvalidInput { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("licensed_doctors"), "{err}");
        let err = store
            .create("village_survey".into(), "team:3".into(), HashMap::new())
            .unwrap_err();
        assert!(
            matches!(err, FieldSyncError::InvalidInput { .. }),
            "{err:?}"
        );
        assert!(matches!(
            store.get("not-a-uuid".into()),
            Err(FieldSyncError::InvalidInput { .. })
        ));
        assert!(matches!(
            store.update(Uuid::now_v7().to_string(), HashMap::new()),
            Err(FieldSyncError::NotFound { .. })
        ));
        assert_eq!(store.pending_count().unwrap(), 0);
        assert!(store.list(None, None).unwrap().is_empty());
    }

    #[test]
    fn check_in_and_hours_need_an_enrollment() {
        let (_dir, store) = open();
        assert_eq!(store.enrollment().unwrap(), None);
        let err = store
            .check_in(
                "清洁家园".into(),
                "幸福社区".into(),
                "2026-11-28T08:00:00+08:00".into(),
                None,
                None,
                None,
                None,
                None,
                None,
            )
            .unwrap_err();
        assert!(matches!(err, FieldSyncError::NotEnrolled { .. }), "{err:?}");
        assert!(matches!(
            store.my_hours(),
            Err(FieldSyncError::NotEnrolled { .. })
        ));
    }

    #[tokio::test]
    async fn deadlines_default_to_core_s_and_zero_is_refused() {
        assert_eq!(deadline(None).unwrap(), client::DEFAULT_DEADLINE);
        assert_eq!(deadline(Some(7)).unwrap(), Duration::from_secs(7));
        let (_dir, store) = open();
        let err = store.sync(None, Some(0)).await.unwrap_err();
        assert!(
            matches!(err, FieldSyncError::InvalidInput { .. }),
            "{err:?}"
        );
        let err = store
            .enroll(
                "127.0.0.1:1".into(),
                "00".repeat(32),
                "CODE".into(),
                Some(0),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, FieldSyncError::InvalidInput { .. }),
            "{err:?}"
        );
        // Not enrolled is said at once, whatever the deadline.
        let err = store.sync(None, Some(1)).await.unwrap_err();
        assert!(matches!(err, FieldSyncError::NotEnrolled { .. }), "{err:?}");
    }

    #[test]
    fn writes_the_rules_forbid_are_refused_and_revert_says_what_it_did() {
        let (_dir, store) = open();
        store
            .inner
            .set_enrollment(&fieldsync_device::store::EnrollmentInfo {
                server: "127.0.0.1:1".into(),
                fingerprint: "00".repeat(32),
                device_id: store.device_id(),
                user_id: "zhang3".into(),
                user_name: "张三".into(),
                role: fieldsync_proto::Role::Volunteer,
                scopes: vec!["team:7".parse().unwrap()],
            })
            .unwrap();
        let err = store
            .create(
                "village_survey".into(),
                "village:3".into(),
                HashMap::from([("village".to_string(), text("大坪村"))]),
            )
            .unwrap_err();
        match err {
            FieldSyncError::Refused { message } => {
                assert_eq!(message, "a volunteer may not write village_survey records")
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        let id = store
            .check_in(
                "清洁家园".into(),
                "幸福社区".into(),
                "2026-11-28T08:00:00+08:00".into(),
                None,
                None,
                None,
                None,
                None,
                None,
            )
            .unwrap();
        let err = store
            .update(
                id.clone(),
                HashMap::from([("status".to_string(), text("confirmed"))]),
            )
            .unwrap_err();
        assert!(matches!(err, FieldSyncError::Refused { .. }), "{err:?}");
        assert_eq!(store.pending_count().unwrap(), 1);
        assert_eq!(store.list(None, None).unwrap().len(), 1);

        let err = store.revert(id.clone()).unwrap_err();
        assert!(
            matches!(err, FieldSyncError::InvalidInput { .. }),
            "{err:?}"
        );
        let uuid = parse_id(&id).unwrap();
        store
            .inner
            .acknowledge(&[], &[(*uuid.as_bytes(), "rules changed".into())])
            .unwrap();
        assert_eq!(store.revert(id.clone()).unwrap(), Reverted::Dropped);
        assert_eq!(store.get(id.clone()).unwrap(), None);
        assert!(matches!(
            store.revert(id),
            Err(FieldSyncError::NotFound { .. })
        ));
    }

    #[test]
    fn a_store_open_twice_is_a_storage_error() {
        let (dir, _store) = open();
        let again = FieldStore::open(dir.path().to_string_lossy().into_owned());
        assert!(matches!(again, Err(FieldSyncError::Storage { .. })));
    }

    #[test]
    fn schema_and_typed_input_come_from_core() {
        let schema = field_schema("village_survey".into()).unwrap();
        let doctors = schema
            .iter()
            .find(|f| f.name == "licensed_doctors")
            .unwrap();
        assert_eq!(doctors.field_type, FieldType::Integer);
        let hours = field_schema("check_in".into())
            .unwrap()
            .into_iter()
            .find(|f| f.name == "hours")
            .unwrap();
        assert!(hours.derived);
        assert_eq!(
            parse_field_value(
                "village_survey".into(),
                "licensed_doctors".into(),
                "3".into()
            )
            .unwrap(),
            FieldValue::Integer { value: 3 }
        );
        assert_eq!(
            parse_field_value(
                "village_visit".into(),
                "visitors".into(),
                "张三; 李四".into()
            )
            .unwrap(),
            FieldValue::TextList {
                values: vec!["张三".into(), "李四".into()]
            }
        );
        assert!(matches!(
            parse_field_value("village_survey".into(), "colour".into(), "red".into()),
            Err(FieldSyncError::InvalidInput { .. })
        ));
        assert!(matches!(
            field_schema("parade".into()),
            Err(FieldSyncError::InvalidInput { .. })
        ));
    }
}
