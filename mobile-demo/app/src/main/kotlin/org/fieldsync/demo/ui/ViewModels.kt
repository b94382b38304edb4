package org.fieldsync.demo.ui

import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Deferred
import kotlinx.coroutines.Job
import kotlinx.coroutines.async
import kotlinx.coroutines.launch
import org.fieldsync.BackgroundSyncOptions
import org.fieldsync.Enrollment
import org.fieldsync.FieldRecord
import org.fieldsync.FieldSyncException
import org.fieldsync.FieldType
import org.fieldsync.FieldValue
import org.fieldsync.HoursSummary
import org.fieldsync.Refusal
import org.fieldsync.Reverted
import org.fieldsync.SyncFailure
import org.fieldsync.SyncProgress
import org.fieldsync.SyncReport
import org.fieldsync.SyncState
import org.fieldsync.demo.data.CheckInInput
import org.fieldsync.demo.data.Clock
import org.fieldsync.demo.data.FieldRepository
import org.fieldsync.demo.data.Kinds
import org.fieldsync.demo.data.LocationProvider
import org.fieldsync.demo.data.VisitInput

// The view-model layer: what each screen shows (as State) and what its buttons do (functions
// returning the Job they launch). Each takes the CoroutineScope it lives in — on Android the
// ViewModel's `viewModelScope`, so leaving the screen cancels its work — and a repository.
// Nothing here knows whether a terminal or Compose draws the screen.

/** A message for the user after an action: saved, or what went wrong. */
data class Notice(val text: String, val error: Boolean = false)

/** The enrollment screen (or QR scan) and who this phone is. */
class EnrollmentViewModel(private val repo: FieldRepository, private val scope: CoroutineScope) {
    val enrollment = State<Enrollment?>(null)
    val notice = State<Notice?>(null)

    fun load(): Job = scope.launch { enrollment.set(repo.enrollment()) }

    fun enroll(server: String, fingerprint: String, code: String): Job = scope.launch {
        try {
            val info = repo.enroll(server.trim(), fingerprint.trim(), code.trim())
            enrollment.set(info)
            notice.set(Notice("Enrolled as ${info.userName} (${info.role.name.lowercase()}, ${info.scopes.joinToString()})"))
        } catch (e: FieldSyncException) {
            notice.set(Notice(userMessage(e), error = true))
        }
    }
}

/** The check-in form: fill in activity and place, check in now (or at a given time). */
class CheckInViewModel(
    private val repo: FieldRepository,
    private val clock: Clock,
    private val location: LocationProvider,
    private val scope: CoroutineScope,
) {
    data class Form(
        val activity: String = "",
        val place: String = "",
        val startedAt: String = "",
        val endedAt: String = "",
        val note: String = "",
    )

    val form = State(Form())
    val notice = State<Notice?>(null)
    /** The id of the check-in just saved. */
    val saved = State<String?>(null)

    fun edit(change: (Form) -> Form) = form.set(change(form.value))

    /** Saves the form as a check-in; an empty start means "now". Keeps the form on failure. */
    fun submit(): Job = scope.launch {
        val f = form.value
        if (f.activity.isBlank() || f.place.isBlank()) {
            notice.set(Notice("Activity and place are required.", error = true))
            return@launch
        }
        try {
            val id = repo.checkIn(
                CheckInInput(
                    activity = f.activity.trim(),
                    place = f.place.trim(),
                    startedAt = f.startedAt.ifBlank { clock.now() },
                    endedAt = f.endedAt.ifBlank { null },
                    location = location.current(),
                    note = f.note.ifBlank { null },
                ),
            )
            saved.set(id)
            form.set(Form())
            notice.set(Notice("Checked in. It syncs with the next connection."))
        } catch (e: FieldSyncException) {
            notice.set(Notice(writeMessage(e), error = true))
        }
    }
}

/** My check-ins and my hours; checking out of an open check-in. */
class MyRecordsViewModel(
    private val repo: FieldRepository,
    private val clock: Clock,
    private val scope: CoroutineScope,
) {
    data class Row(
        val id: String,
        val activity: String,
        val place: String,
        val startedAt: String,
        val endedAt: String?,
        val hours: Double?,
        val status: String,
        val reviewNote: String?,
        val conflicts: Set<String>,
    ) {
        val open: Boolean get() = endedAt == null
    }

    val rows = State<List<Row>>(emptyList())
    val hours = State<HoursSummary?>(null)
    val notice = State<Notice?>(null)

    fun refresh(): Job = scope.launch {
        try {
            rows.set(repo.myCheckIns().map(::row))
            hours.set(repo.myHours())
        } catch (e: FieldSyncException) {
            notice.set(Notice(userMessage(e), error = true))
        }
    }

    /** Ends an open check-in now (or at [at]). */
    fun checkOut(id: String, at: String? = null): Job = scope.launch {
        try {
            repo.checkOut(id, at ?: clock.now())
            notice.set(Notice("Checked out."))
            rows.set(repo.myCheckIns().map(::row))
            hours.set(repo.myHours())
        } catch (e: FieldSyncException) {
            notice.set(Notice(writeMessage(e), error = true))
        }
    }

    private fun row(r: FieldRecord): Row {
        fun text(name: String) = (r.fields[name] as? FieldValue.Text)?.value
        return Row(
            id = r.id,
            activity = text("activity") ?: "",
            place = text("place") ?: "",
            startedAt = text("started_at") ?: "",
            endedAt = text("ended_at"),
            hours = (r.fields["hours"] as? FieldValue.Number)?.value,
            status = text("status") ?: "",
            reviewNote = text("review_note"),
            conflicts = r.conflicts.keys,
        )
    }
}

/** Village records: the survey edit screen (with conflicts) and household visits. */
class VillageViewModel(private val repo: FieldRepository, private val scope: CoroutineScope) {
    /** One row of the survey form: the field, its value, and every concurrent value if any. */
    data class SurveyField(
        val name: String,
        val type: FieldType,
        val value: FieldValue?,
        val conflict: List<FieldValue>?,
    )

    data class Survey(val id: String, val scope: String, val village: String, val fields: List<SurveyField>) {
        val conflicts: List<SurveyField> get() = fields.filter { it.conflict != null }
    }

    val surveys = State<List<Survey>>(emptyList())
    val visits = State<List<FieldRecord>>(emptyList())
    val notice = State<Notice?>(null)

    fun refresh(): Job = scope.launch { reload() }

    fun createSurvey(recordScope: String, village: String): Job = scope.launch {
        guarded { repo.createSurvey(recordScope, village); "Survey of $village created." }
    }

    /** Sets one field from what the user typed (parsed by the field's type). */
    fun edit(surveyId: String, field: String, input: String): Job = scope.launch {
        guarded {
            val value = repo.parse(Kinds.VILLAGE_SURVEY, field, input)
            repo.update(surveyId, mapOf(field to value))
            "$field set to ${value.display()}."
        }
    }

    /** Resolves a conflict by choosing one of the values (or a new one): an ordinary edit. */
    fun resolve(surveyId: String, field: String, chosen: FieldValue): Job = scope.launch {
        guarded {
            repo.update(surveyId, mapOf(field to chosen))
            "Conflict on $field resolved to ${chosen.display()}."
        }
    }

    fun recordVisit(recordScope: String, visit: VisitInput): Job = scope.launch {
        guarded { repo.recordVisit(recordScope, visit); "Visit to ${visit.household} saved." }
    }

    private suspend fun guarded(action: suspend () -> String) {
        try {
            notice.set(Notice(action()))
        } catch (e: FieldSyncException) {
            notice.set(Notice(writeMessage(e), error = true))
        }
        reload()
    }

    private suspend fun reload() {
        val spec = repo.schema(Kinds.VILLAGE_SURVEY)
        surveys.set(
            repo.records(Kinds.VILLAGE_SURVEY).map { r ->
                Survey(
                    id = r.id,
                    scope = r.scope,
                    village = (r.fields["village"] as? FieldValue.Text)?.value ?: "",
                    fields = spec.filter { !it.derived }.map {
                        SurveyField(it.name, it.fieldType, r.fields[it.name], r.conflicts[it.name])
                    },
                )
            },
        )
        visits.set(repo.records(Kinds.VILLAGE_VISIT))
    }
}

/**
 * The sync status line, its progress bar, the pending badge, and the "sync now" button, over
 * the store's background sync (which retries a lost connection on its own).
 *
 * The background sync runs rounds when asked — [sync] (the button, or the app's connectivity
 * callback when the network comes back) — one at a time, and reports every state on its own
 * thread; [status] follows it. Android: the states are posted to `viewModelScope` on
 * `Dispatchers.Main` before touching a `StateFlow` the UI collects.
 */
class SyncViewModel(
    private val repo: FieldRepository,
    private val scope: CoroutineScope,
    options: BackgroundSyncOptions? = null,
) {
    sealed class Status {
        /** Nothing running; [last] is what the last round did, if one ran. */
        data class Idle(val last: SyncReport?) : Status()

        /** Sent and received so far; [done] of [total] drives a single progress bar. */
        data class Running(val progress: SyncProgress) : Status() {
            val done: Long get() = (progress.sent + progress.received).toLong()
            val total: Long get() = (progress.toSend + progress.toReceive).toLong()
        }

        /** No signal: work waits as pending, and the phone tries again on its own at [atUnixMs]. */
        data class Waiting(val atUnixMs: Long, val message: String, val reason: String) : Status()

        /** The phone's user has to do something ([kind] says what); not retried on its own. */
        data class Failed(val kind: SyncFailure, val message: String, val reason: String) : Status()
    }

    val status = State<Status>(Status.Idle(null))
    val pending = State(0L)
    val refused = State<List<Refusal>>(emptyList())
    /** What the last [revert] did, or why it could not. */
    val notice = State<Notice?>(null)

    private val background = repo.backgroundSync(options) { state ->
        status.set(statusOf(state))
        // A round ended (asked for or a retry on its own): the badge follows.
        if (state !is SyncState.Syncing) refresh()
    }

    fun refresh(): Job = scope.launch {
        pending.set(repo.pendingCount())
        refused.set(repo.refused())
    }

    /**
     * "Sync now": asks the background sync for a round and completes, with the status it ended
     * in, when a round that started after this call has ended (a round already running when
     * asked is not the one: it may have missed what was just saved). The badge is fresh then.
     */
    fun sync(): Deferred<Status> = scope.async {
        val ended = CompletableDeferred<Status>()
        val round = RoundAfterRequest(ended)
        val unobserve = status.observe(round::see)
        val outcome = try {
            background.requestSync()
            ended.await()
        } finally {
            unobserve()
        }
        pending.set(repo.pendingCount())
        refused.set(repo.refused())
        outcome
    }

    /**
     * "Take back" on a refused record (the server's rules changed since the phone recorded it):
     * the record returns to the version the server holds, or, if the server never had it, is
     * dropped. The other way out is editing it so the rules allow it.
     */
    fun revert(id: String): Job = scope.launch {
        try {
            val text = when (repo.revert(id)) {
                is Reverted.ToServer -> "Back to the server's version; the refused changes are gone."
                is Reverted.Dropped -> "Dropped: the server never had this record."
            }
            notice.set(Notice(text))
        } catch (e: FieldSyncException) {
            notice.set(Notice(userMessage(e), error = true))
        }
        pending.set(repo.pendingCount())
        refused.set(repo.refused())
    }

    /** The app goes away (Android: `onCleared`): no more rounds, a running one is cut off. */
    fun stop() {
        background.stop()
        background.close()
    }

    /** Follows the status stream until the end of the first round that started after a request. */
    private class RoundAfterRequest(private val ended: CompletableDeferred<Status>) {
        private var skipRunning: Boolean? = null // true: a round was running when asked
        private var inOurs = false

        @Synchronized
        fun see(s: Status) {
            val running = s is Status.Running
            when {
                skipRunning == null -> skipRunning = running // the status when asked
                skipRunning == true -> if (!running) skipRunning = false
                !inOurs -> inOurs = running
                !running -> ended.complete(s)
            }
        }
    }

    private fun statusOf(state: SyncState): Status = when (state) {
        is SyncState.Idle -> Status.Idle(state.last)
        is SyncState.Syncing -> Status.Running(state.progress)
        is SyncState.WaitingToRetry -> Status.Waiting(state.atUnixMs, waitingMessage(state.atUnixMs), state.reason)
        is SyncState.Failed -> Status.Failed(state.kind, syncFailureMessage(state.kind, state.reason), state.reason)
    }
}

/** The view models of one phone app, sharing its repository and scope. */
class PhoneApp(
    val repo: FieldRepository,
    clock: Clock,
    location: LocationProvider,
    scope: CoroutineScope,
    syncOptions: BackgroundSyncOptions? = null,
) {
    val enrollment = EnrollmentViewModel(repo, scope)
    val checkIn = CheckInViewModel(repo, clock, location, scope)
    val myRecords = MyRecordsViewModel(repo, clock, scope)
    val village = VillageViewModel(repo, scope)
    val sync = SyncViewModel(repo, scope, syncOptions)

    /** Before the store is closed: ends the background sync. */
    fun close() = sync.stop()
}
