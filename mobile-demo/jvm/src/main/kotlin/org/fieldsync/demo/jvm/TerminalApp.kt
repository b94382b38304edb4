package org.fieldsync.demo.jvm

import java.io.BufferedReader
import java.io.File
import java.io.InputStreamReader
import kotlinx.coroutines.cancelChildren
import kotlinx.coroutines.runBlocking
import org.fieldsync.FieldStore
import org.fieldsync.FieldSyncException
import org.fieldsync.FieldValue
import org.fieldsync.demo.data.FieldRepository
import org.fieldsync.demo.data.Location
import org.fieldsync.demo.data.LocationProvider
import org.fieldsync.demo.data.SystemClock
import org.fieldsync.demo.data.VisitInput
import org.fieldsync.demo.ui.Notice
import org.fieldsync.demo.ui.PhoneApp
import org.fieldsync.demo.ui.State
import org.fieldsync.demo.ui.SyncViewModel
import org.fieldsync.demo.ui.display
import org.fieldsync.demo.ui.userMessage

/**
 * The interactive terminal front end: a menu standing in for the phone's screens, driving the
 * same view models an Android UI would. One phone per process (one store folder).
 */
class TerminalApp(private val repo: FieldRepository, private val input: BufferedReader) {
    // The screens' view models live in the scope of the running menu (an Activity's lifetime).
    private lateinit var app: PhoneApp

    private fun ask(prompt: String): String? {
        print(if (prompt == ">") "> " else "$prompt: ")
        System.out.flush()
        return input.readLine()?.trim()
    }

    private fun show(notice: State<Notice?>) {
        notice.value?.let { println(if (it.error) "! ${it.text}" else "  ${it.text}") }
    }

    fun run() = runBlocking {
        // A desk has no GPS: check-ins from the terminal carry no coordinates.
        app = PhoneApp(repo, SystemClock, LocationProvider { null as Location? }, this)
        app.enrollment.load().join()
        // A phone syncs when the app starts; the background sync retries without signal.
        if (app.enrollment.enrollment.value != null) app.sync.sync()
        try {
            menu()
        } finally {
            app.close()
            // A sync the menu asked for may never end now: it was cut off.
            coroutineContext.cancelChildren()
        }
    }

    private suspend fun menu() {
        while (true) {
            app.sync.refresh().join()
            val who = app.enrollment.enrollment.value
                ?.let { "${it.userName} (${it.role.name.lowercase()}: ${it.scopes.joinToString()})" }
                ?: "not enrolled"
            println()
            println("== fieldsync · $who · ${app.sync.pending.value} pending · ${app.sync.refused.value.size} refused · ${line(app.sync.status.value)}")
            println(" 1 check in               2 check out            3 my check-ins and hours")
            println(" 4 village surveys        5 edit a survey field  6 record a household visit")
            println(" 7 sync now               8 enroll this phone    9 history of a record")
            println(" r take back a refused record                   0 quit")
            when (ask(">") ?: return) {
                "1" -> checkIn()
                "2" -> checkOut()
                "3" -> myRecords()
                "4" -> surveys()
                "5" -> editSurvey()
                "6" -> visit()
                "7" -> sync()
                "8" -> enroll()
                "9" -> history()
                "r" -> takeBack()
                "0", "q" -> return
                else -> println("? choose a number from the menu")
            }
        }
    }

    /** The sync status in the menu's header. */
    private fun line(s: SyncViewModel.Status): String = when (s) {
        is SyncViewModel.Status.Idle -> if (s.last == null) "not synced yet" else "synced"
        is SyncViewModel.Status.Running -> "syncing ${s.done}/${s.total}"
        is SyncViewModel.Status.Waiting -> "no signal, retrying on its own"
        is SyncViewModel.Status.Failed -> "sync stopped: ${s.kind.name.lowercase()}"
    }

    private suspend fun checkIn() {
        val activity = ask("activity (e.g. 清洁家园)") ?: return
        val place = ask("place") ?: return
        val start = ask("start, RFC 3339 (empty: now)") ?: return
        val end = ask("end (empty: still going, check out later)") ?: return
        val note = ask("note (optional)") ?: return
        app.checkIn.edit { it.copy(activity = activity, place = place, startedAt = start, endedAt = end, note = note) }
        app.checkIn.submit().join()
        show(app.checkIn.notice)
    }

    private suspend fun checkOut() {
        app.myRecords.refresh().join()
        val open = app.myRecords.rows.value.filter { it.open }
        if (open.isEmpty()) return println("  no open check-in")
        open.forEachIndexed { i, r -> println("  ${i + 1}) ${r.activity} @ ${r.place} since ${r.startedAt}") }
        val pick = ask("which")?.toIntOrNull()?.let { open.getOrNull(it - 1) } ?: return println("? no such row")
        app.myRecords.checkOut(pick.id).join()
        show(app.myRecords.notice)
    }

    private suspend fun myRecords() {
        app.myRecords.refresh().join()
        for (r in app.myRecords.rows.value) {
            val review = r.reviewNote?.let { " ($it)" } ?: ""
            println("  ${r.startedAt} – ${r.endedAt ?: "open"}  ${r.activity} @ ${r.place}: ${r.hours ?: "-"} h, ${r.status}$review")
        }
        app.myRecords.hours.value?.let {
            println("  hours: confirmed ${it.confirmedHours}, submitted ${it.submittedHours}, rejected ${it.rejectedHours}; open ${it.open}")
        }
        show(app.myRecords.notice)
    }

    private suspend fun surveys() {
        app.village.refresh().join()
        if (app.village.surveys.value.isEmpty()) {
            println("  no survey on this phone")
            val scope = ask("create one? village scope (e.g. village:3, empty: no)") ?: return
            if (scope.isEmpty()) return
            val village = ask("village name") ?: return
            app.village.createSurvey(scope, village).join()
            show(app.village.notice)
            return
        }
        for (s in app.village.surveys.value) {
            println("  ${s.village} (${s.scope}) ${s.id}")
            for (f in s.fields) {
                val conflict = f.conflict?.let { "   ⚠ conflict: ${it.joinToString(" | ") { v -> v.display() }}" } ?: ""
                println("    ${f.name} [${f.type.name.lowercase()}]: ${f.value?.display() ?: "-"}$conflict")
            }
        }
    }

    private suspend fun editSurvey() {
        app.village.refresh().join()
        val surveys = app.village.surveys.value
        if (surveys.isEmpty()) return println("  no survey on this phone (menu 4 creates one)")
        surveys.forEachIndexed { i, s -> println("  ${i + 1}) ${s.village} (${s.scope})") }
        val survey = ask("which")?.toIntOrNull()?.let { surveys.getOrNull(it - 1) } ?: return println("? no such row")
        val field = ask("field (e.g. licensed_doctors)") ?: return
        val conflict = survey.fields.firstOrNull { it.name == field }?.conflict
        if (conflict != null) {
            conflict.forEachIndexed { i, v -> println("  ${i + 1}) keep ${v.display()}") }
            println("  or type a new value")
        }
        val answer = ask("value") ?: return
        val chosen: FieldValue? = conflict?.let { c -> answer.toIntOrNull()?.let { c.getOrNull(it - 1) } }
        if (chosen != null) app.village.resolve(survey.id, field, chosen).join()
        else app.village.edit(survey.id, field, answer).join()
        show(app.village.notice)
    }

    private suspend fun visit() {
        val scope = ask("village scope (e.g. village:3)") ?: return
        val village = ask("village") ?: return
        val household = ask("household") ?: return
        val at = ask("visited at, RFC 3339 (empty: now)") ?: return
        val visitors = ask("visitors, separated by ;") ?: return
        val needs = ask("needs (optional)") ?: return
        app.village.recordVisit(
            scope,
            VisitInput(
                village = village,
                household = household,
                visitedAt = at.ifEmpty { SystemClock.now() },
                visitors = visitors.split(';').map { it.trim() }.filter { it.isNotEmpty() },
                needs = needs.ifEmpty { null },
            ),
        ).join()
        show(app.village.notice)
    }

    private suspend fun sync() {
        val stop = app.sync.status.observe { s ->
            if (s is SyncViewModel.Status.Running) {
                val width = 20
                val filled = if (s.total == 0L) width else (s.done * width / s.total).toInt()
                print("\r  syncing [${"#".repeat(filled)}${".".repeat(width - filled)}] ${s.done}/${s.total}")
                System.out.flush()
            }
        }
        val outcome = app.sync.sync().await()
        stop()
        println()
        when (outcome) {
            is SyncViewModel.Status.Idle -> outcome.last?.let { r ->
                println("  sent ${r.sent}, received ${r.received}, refused ${r.refused.size}")
                r.refused.forEach { println("  ! refused ${it.id}: ${it.reason}") }
            }
            is SyncViewModel.Status.Waiting -> println("! ${outcome.message}")
            is SyncViewModel.Status.Failed -> println("! ${outcome.message}")
            is SyncViewModel.Status.Running -> {}
        }
    }

    private suspend fun takeBack() {
        app.sync.refresh().join()
        val refused = app.sync.refused.value
        if (refused.isEmpty()) return println("  nothing refused")
        refused.forEachIndexed { i, r -> println("  ${i + 1}) ${r.id}: ${r.reason}") }
        val pick = ask("which")?.toIntOrNull()?.let { refused.getOrNull(it - 1) } ?: return println("? no such row")
        app.sync.revert(pick.id).join()
        show(app.sync.notice)
    }

    private suspend fun enroll() {
        val server = ask("server (host:port)") ?: return
        val fingerprint = ask("server fingerprint (64 hex)") ?: return
        val code = ask("one-time code") ?: return
        app.enrollment.enroll(server, fingerprint, code).join()
        show(app.enrollment.notice)
    }

    private suspend fun history() {
        val id = ask("record id") ?: return
        try {
            for (h in app.repo.history(id)) {
                val who = if (h.deviceId == app.repo.deviceId) "this phone" else "device ${h.deviceId.take(8)}"
                println("  ${java.time.Instant.ofEpochSecond(h.time)}  $who: ${h.fields.joinToString()}")
            }
        } catch (e: FieldSyncException) {
            println("! ${userMessage(e)}")
        }
    }

    companion object {
        fun main(storeDir: File): Int {
            val store = FieldStore.open(storeDir.path)
            store.use {
                TerminalApp(FieldRepository(it), BufferedReader(InputStreamReader(System.`in`, Charsets.UTF_8))).run()
            }
            return 0
        }
    }
}
