package org.fieldsync.demo.data

import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import org.fieldsync.BackgroundSync
import org.fieldsync.BackgroundSyncOptions
import org.fieldsync.Enrollment
import org.fieldsync.FieldRecord
import org.fieldsync.FieldSpec
import org.fieldsync.FieldStore
import org.fieldsync.FieldValue
import org.fieldsync.HistoryEntry
import org.fieldsync.HoursSummary
import org.fieldsync.Refusal
import org.fieldsync.Reverted
import org.fieldsync.SyncProgress
import org.fieldsync.SyncProgressListener
import org.fieldsync.SyncReport
import org.fieldsync.SyncState
import org.fieldsync.SyncStateListener
import org.fieldsync.fieldSchema
import org.fieldsync.parseFieldValue

/** Record kinds and field names: the contract in DESIGN.md, spelled once for the app. */
object Kinds {
    const val CHECK_IN = "check_in"
    const val VILLAGE_VISIT = "village_visit"
    const val VILLAGE_SURVEY = "village_survey"
}

/** What the check-in screen collects; the rest (volunteer, team, status) comes from the enrollment. */
data class CheckInInput(
    val activity: String,
    val place: String,
    val startedAt: String,
    val endedAt: String? = null,
    val location: Location? = null,
    val note: String? = null,
)

/** A household visit as the visit screen collects it. */
data class VisitInput(
    val village: String,
    val household: String,
    val visitedAt: String,
    val visitors: List<String> = emptyList(),
    val findings: String? = null,
    val needs: String? = null,
)

/**
 * The app's single source of records: one [FieldStore] (one per process), reached only here.
 *
 * Local calls are disk reads or one durable write each, so they run on [io] (Android:
 * `Dispatchers.IO`), never on the main thread; `enroll` and `sync` are suspend functions of the
 * bindings already and need no dispatcher, and the background sync runs on its own thread. Errors are the bindings' `FieldSyncException`s, left
 * to the view models, which turn them into what the screen says.
 */
class FieldRepository(
    private val store: FieldStore,
    private val io: CoroutineDispatcher = Dispatchers.IO,
) {
    val deviceId: String get() = store.deviceId()

    suspend fun enrollment(): Enrollment? = withContext(io) { store.enrollment() }

    suspend fun enroll(server: String, fingerprint: String, code: String): Enrollment =
        store.enroll(server, fingerprint, code)

    suspend fun checkIn(input: CheckInInput): String = withContext(io) {
        store.checkIn(
            activity = input.activity,
            place = input.place,
            startedAt = input.startedAt,
            endedAt = input.endedAt,
            lat = input.location?.lat,
            lon = input.location?.lon,
            accuracyM = input.location?.accuracyM,
            note = input.note,
        )
    }

    suspend fun checkOut(id: String, endedAt: String): FieldRecord =
        update(id, mapOf("ended_at" to FieldValue.Text(endedAt)))

    /** The enrolled user's own check-ins, newest first (the list also holds the team's). */
    suspend fun myCheckIns(): List<FieldRecord> = withContext(io) {
        val me = store.enrollment()?.userId
        store.list(Kinds.CHECK_IN, null)
            .filter { me != null && it.fields["volunteer_id"] == FieldValue.Text(me) }
            .reversed()
    }

    suspend fun myHours(): HoursSummary = withContext(io) { store.myHours() }

    suspend fun records(kind: String? = null, scope: String? = null): List<FieldRecord> =
        withContext(io) { store.list(kind, scope) }

    suspend fun record(id: String): FieldRecord? = withContext(io) { store.get(id) }

    suspend fun history(id: String): List<HistoryEntry> = withContext(io) { store.history(id) }

    suspend fun createSurvey(scope: String, village: String): FieldRecord = withContext(io) {
        store.create(Kinds.VILLAGE_SURVEY, scope, mapOf("village" to FieldValue.Text(village)))
    }

    suspend fun recordVisit(scope: String, visit: VisitInput): FieldRecord = withContext(io) {
        val fields = mutableMapOf<String, FieldValue>(
            "village" to FieldValue.Text(visit.village),
            "household" to FieldValue.Text(visit.household),
            "visited_at" to FieldValue.Text(visit.visitedAt),
        )
        if (visit.visitors.isNotEmpty()) fields["visitors"] = FieldValue.TextList(visit.visitors)
        visit.findings?.let { fields["findings"] = FieldValue.Text(it) }
        visit.needs?.let { fields["needs"] = FieldValue.Text(it) }
        store.create(Kinds.VILLAGE_VISIT, scope, fields)
    }

    suspend fun update(id: String, fields: Map<String, FieldValue>): FieldRecord =
        withContext(io) { store.update(id, fields) }

    suspend fun pendingCount(): Long = withContext(io) { store.pendingCount().toLong() }

    suspend fun refused(): List<Refusal> = withContext(io) { store.refused() }

    /** Takes back what the server refused of [id]: its version of the record, or the record dropped. */
    suspend fun revert(id: String): Reverted = withContext(io) { store.revert(id) }

    /**
     * The store's background sync: rounds when asked, one at a time, lost connections retried on
     * its own. [onState] is called on the sync's own thread. One per store, kept for the app's
     * life (Android: created in `Application.onCreate`, stopped never or on sign-out).
     */
    fun backgroundSync(options: BackgroundSyncOptions? = null, onState: (SyncState) -> Unit): BackgroundSync =
        BackgroundSync(
            store,
            object : SyncStateListener {
                override fun onState(state: SyncState) = onState(state)
            },
            options,
        )

    /**
     * One sync round that the caller waits for, within [deadlineSeconds] (null: two minutes);
     * [onProgress] gets records sent and received out of their totals as it goes. What an
     * Android `CoroutineWorker` would call (it needs a result to return); the screens use
     * [backgroundSync].
     */
    suspend fun sync(deadlineSeconds: UInt? = null, onProgress: (SyncProgress) -> Unit = {}): SyncReport =
        store.sync(
            object : SyncProgressListener {
                override fun onProgress(progress: SyncProgress) = onProgress(progress)
            },
            deadlineSeconds,
        )

    /** The fields of [kind], for building its form. */
    fun schema(kind: String): List<FieldSpec> = fieldSchema(kind)

    /** What a person typed, as a value of the field's type (core parses it). */
    fun parse(kind: String, field: String, input: String): FieldValue = parseFieldValue(kind, field, input)
}
