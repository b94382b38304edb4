package org.fieldsync.demo.jvm

import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import org.fieldsync.BackgroundSyncOptions
import org.fieldsync.FieldStore
import org.fieldsync.FieldValue
import org.fieldsync.SyncFailure
import org.fieldsync.demo.data.FieldRepository
import org.fieldsync.demo.data.Location
import org.fieldsync.demo.data.VisitInput
import org.fieldsync.demo.ui.NO_CONNECTION
import org.fieldsync.demo.ui.PhoneApp
import org.fieldsync.demo.ui.SyncViewModel
import org.fieldsync.demo.ui.display
import org.fieldsync.testing.ServerProcess
import org.fieldsync.testing.ServerUser

/**
 * The scripted scenario: a server, three phones, a day without signal, and the merged result;
 * then lost phones, and a volunteer whose team is taken away while the phone is out.
 *
 * It drives the same view models the terminal menu (or an Android UI) drives, prints what each
 * phone's screens would show, and checks the outcome; the last line is
 * `scenario: N passed, N failed` and the exit code is non-zero if any check failed.
 */
class Scenario(private val workDir: File) {
    private val volunteer = ServerUser("zhang3", "张三", "volunteer", listOf("team:7"))
    private val villageA = ServerUser("li4", "李四", "village", listOf("village:3"))
    private val villageB = ServerUser("chen7", "陈七", "village", listOf("village:3"))
    // Two teams at first; the office takes team:8 away in section 9.
    private val newcomer = ServerUser("wang5", "王五", "volunteer", listOf("team:8", "team:7"))

    private var passed = 0
    private val failures = mutableListOf<String>()

    private fun check(what: String, ok: Boolean) {
        if (ok) passed++ else failures += what
        println("   ${if (ok) "✓" else "✗ FAILED:"} $what")
    }

    private fun section(title: String) = println("\n── $title")

    /** One phone: its own store folder, repository and view models, like one app install. */
    private inner class Phone(val owner: ServerUser, scope: CoroutineScope) {
        val store = FieldStore.open(File(workDir, "phone-${owner.id}").path)
        val app = PhoneApp(FieldRepository(store), clock, location, scope, syncOptions)
        fun say(text: String) = println("[${owner.name}] $text")
        fun close() {
            app.close()
            store.close()
        }
    }

    // Short rounds and quick retries, so a scripted day without signal takes seconds (a phone
    // keeps the defaults: 2 min rounds, retries from 15 s up to 5 min apart).
    private val syncOptions = BackgroundSyncOptions(deadlineSeconds = 3u, firstRetrySeconds = 2u, maxRetrySeconds = 10u)

    // A fixed day, so the printed hours are the same on every run.
    private var minuteOfDay = 8 * 60
    private val clock = org.fieldsync.demo.data.Clock {
        "2026-11-28T%02d:%02d:00+08:00".format(minuteOfDay / 60, minuteOfDay % 60)
    }
    private val location = org.fieldsync.demo.data.LocationProvider { Location(28.228, 112.939, 8.0) }

    fun run(): Int = runBlocking {
        println("fieldsync field app demo: scripted scenario")
        val (server, codes) = ServerProcess.startWith(File(workDir, "server"), listOf(volunteer, villageA, villageB, newcomer))
        println("server listening on ${server.address}, certificate ${server.fingerprint.take(16)}…")
        val phones = listOf(volunteer, villageA, villageB, newcomer).map { Phone(it, this) }
        val (zhang3, li4, chen7, wang5) = phones
        try {
            story(server, codes, zhang3, li4, chen7)
            lostPhones(server, codes, zhang3, wang5)
            rules(server, wang5)
        } finally {
            phones.forEach { it.close() }
            server.stop()
        }
        failures.forEach { println("failed: $it") }
        println("scenario: $passed passed, ${failures.size} failed")
        if (failures.isEmpty()) 0 else 1
    }

    private suspend fun story(server: ServerProcess, codes: Map<String, String>, zhang3: Phone, li4: Phone, chen7: Phone) {
        val phones = listOf(zhang3, li4, chen7)

        section("1. Each phone is enrolled with its one-time code (online)")
        for (p in phones) {
            p.app.enrollment.enroll(server.address, server.fingerprint, codes.getValue(p.owner.id)).join()
            p.say(p.app.enrollment.notice.value?.text ?: "")
        }
        check("all three phones enrolled", phones.all { it.app.enrollment.enrollment.value != null })

        section("2. 李四 starts the survey of 大坪村; 陈七's phone receives it")
        li4.app.village.createSurvey("village:3", "大坪村").join()
        li4.app.village.edit(surveyId(li4), "licensed_doctors", "1").join()
        li4.app.village.edit(surveyId(li4), "tap_water_pct", "92").join()
        syncAndShow(li4)
        syncAndShow(chen7)
        check("陈七 has the survey", chen7.app.village.surveys.value.size == 1)

        section("3. The signal goes. Everyone keeps working offline")
        server.stop()
        val checkIn = zhang3.app.checkIn
        checkIn.edit { it.copy(activity = "清洁家园", place = "幸福社区", note = "清理河道垃圾") }
        checkIn.submit().join()
        zhang3.say(checkIn.notice.value?.text ?: "")
        val openId = checkIn.saved.value
        minuteOfDay = 10 * 60 + 30
        zhang3.app.myRecords.refresh().join()
        if (openId != null) zhang3.app.myRecords.checkOut(openId).join()
        zhang3.say("${zhang3.app.myRecords.notice.value?.text} (08:00–10:30)")
        checkIn.edit {
            it.copy(activity = "文明城市创建", place = "人民路", startedAt = "2026-11-28T14:00:00+08:00",
                endedAt = "2026-11-28T15:30:00+08:00")
        }
        checkIn.submit().join()
        zhang3.say(checkIn.notice.value?.text ?: "")

        val survey = surveyId(li4)
        li4.app.village.edit(survey, "licensed_doctors", "2").join()
        li4.say(li4.app.village.notice.value?.text ?: "")
        li4.app.village.edit(survey, "bus_service", "yes").join()
        li4.say(li4.app.village.notice.value?.text ?: "")
        li4.app.village.recordVisit("village:3", VisitInput("大坪村", "李家", "2026-11-28T09:00:00+08:00",
            listOf("李四"), findings = "老人独居", needs = "屋顶漏水")).join()
        li4.say(li4.app.village.notice.value?.text ?: "")
        chen7.app.village.edit(survey, "licensed_doctors", "3").join()
        chen7.say(chen7.app.village.notice.value?.text ?: "")
        chen7.app.village.edit(survey, "road_km_hardened", "12.5").join()
        chen7.say(chen7.app.village.notice.value?.text ?: "")
        chen7.app.village.recordVisit("village:3", VisitInput("大坪村", "王家", "2026-11-28T10:00:00+08:00",
            listOf("陈七"), needs = "助学申请")).join()
        chen7.say(chen7.app.village.notice.value?.text ?: "")

        // All three try at once: each round keeps reconnecting until its 3 s deadline, then the
        // background sync says "no connection" and schedules a retry of its own.
        val offline = phones.map { it.app.sync.sync() }.awaitAll()
        for ((p, status) in phones.zip(offline)) {
            p.say("sync: ${(status as? SyncViewModel.Status.Waiting)?.message ?: status} (pending ${p.app.sync.pending.value})")
        }
        check("offline syncs wait to retry, shown as \"no connection\"", offline.all {
            it is SyncViewModel.Status.Waiting && it.message.startsWith(NO_CONNECTION)
        })
        check("offline work waits as pending: 张三 2, 李四 2, 陈七 2",
            phones.map { it.app.sync.pending.value } == listOf(2L, 2L, 2L))

        section("4. The signal is back: the phones sync again on their own (张三's is watched), then by hand")
        val (byItself, states) = untilIdle(zhang3) { server.start() }
        zhang3.say("sync on its own: ${states.joinToString(" → ")}; sent ${byItself?.last?.sent}")
        check("张三's phone synced without being asked (… → Syncing → Idle, 2 sent)",
            byItself?.last?.sent == 2uL && states.takeLast(2) == listOf("Syncing", "Idle"))
        zhang3.app.myRecords.refresh().join()
        for (p in listOf(li4, chen7, li4)) syncAndShow(p)
        check("nothing left pending", phones.all { it.app.sync.pending.value == 0L })
        check("nothing refused", phones.all { it.app.sync.refused.value.isEmpty() })

        section("5. The merged result, as each phone shows it")
        for (p in listOf(li4, chen7)) showVillage(p)
        showMyRecords(zhang3)
        val a = li4.app.village.surveys.value.single()
        val b = chen7.app.village.surveys.value.single()
        check("both village phones show the same survey", a == b)
        check("the concurrent licensed_doctors edits are shown as a conflict of 2 and 3",
            a.conflicts.map { it.name } == listOf("licensed_doctors") &&
                a.conflicts.single().conflict?.toSet() == setOf<FieldValue>(FieldValue.Integer(2), FieldValue.Integer(3)))
        check("edits of different fields merged (bus_service, road_km_hardened)",
            a.fields.first { it.name == "bus_service" }.value == FieldValue.Bool(true) &&
                a.fields.first { it.name == "road_km_hardened" }.value == FieldValue.Number(12.5))
        check("both visits on both village phones", li4.app.village.visits.value.size == 2 && chen7.app.village.visits.value.size == 2)
        val hours = zhang3.app.myRecords.hours.value
        check("张三's hours: 4.0 submitted (2.5 + 1.5)", hours != null && hours.submittedHours == 4.0 && hours.submitted == 2uL)
        check("the volunteer's phone holds only team:7 check-ins",
            zhang3.app.repo.records().all { it.scope == "team:7" })

        section("6. 李四 resolves the conflict (the clinic has 3 doctors); both phones sync")
        li4.app.village.resolve(survey, "licensed_doctors", FieldValue.Integer(3)).join()
        li4.say(li4.app.village.notice.value?.text ?: "")
        syncAndShow(li4)
        syncAndShow(chen7)
        chen7.app.village.refresh().join()
        val resolved = chen7.app.village.surveys.value.single()
        check("陈七 sees the conflict resolved to 3",
            resolved.conflicts.isEmpty() && resolved.fields.first { it.name == "licensed_doctors" }.value == FieldValue.Integer(3))

        section("7. The server's merged records (fieldsync-server export --format json)")
        server.stop()
        val export = server.admin("export", "--format", "json").lines().filter { it.trimStart().startsWith("{") }
        export.forEach { println("   $it") }
        check("the server holds all 5 records (1 survey, 2 visits, 2 check-ins)", export.size == 5)
        check("the server's survey has no conflict left", export.any {
            it.contains("\"village_survey\"") && it.contains("\"licensed_doctors\":3") && it.contains("\"conflicts\":{}")
        })
    }

    private fun surveyId(p: Phone): String = p.app.village.surveys.value.first().id

    /** The name of a status, as the state sequence prints it. */
    private fun name(s: SyncViewModel.Status): String = s::class.simpleName ?: "?"

    /** "Sync now" on [p], printing the progress and the states the sync view model went through. */
    private suspend fun syncAndShow(p: Phone): SyncViewModel.Status {
        val steps = mutableListOf<String>()
        val states = mutableListOf<String>()
        val stop = p.app.sync.status.observe { s ->
            synchronized(states) { if (states.lastOrNull() != name(s)) states += name(s) }
            if (s is SyncViewModel.Status.Running && s.progress.toSend + s.progress.toReceive > 0uL) {
                val p = s.progress
                steps += "↑${p.sent}/${p.toSend} ↓${p.received}/${p.toReceive}"
            }
        }
        p.app.sync.refresh().join()
        val outcome = p.app.sync.sync().await()
        stop()
        val sequence = synchronized(states) { states.toList() }.dropWhile { it != "Running" }.map { it.replace("Running", "Syncing") }
        when (outcome) {
            is SyncViewModel.Status.Idle -> p.say(
                "sync: ${sequence.joinToString(" → ")}; progress ${steps.distinct().joinToString(" → ").ifEmpty { "(nothing to do)" }}; " +
                    "sent ${outcome.last?.sent}, received ${outcome.last?.received}, refused ${outcome.last?.refused?.size}",
            )
            is SyncViewModel.Status.Waiting -> p.say("sync: ${sequence.joinToString(" → ")}: ${outcome.message}")
            is SyncViewModel.Status.Failed -> p.say("sync: ${sequence.joinToString(" → ")}: ${outcome.message}")
            is SyncViewModel.Status.Running -> p.say("sync: $outcome")
        }
        // The round this sync waited for is the last: it went Syncing → Idle (a retry of its own
        // may have run just before).
        check("${p.owner.name}'s sync went Syncing → Idle", outcome is SyncViewModel.Status.Idle && sequence.takeLast(2) == listOf("Syncing", "Idle"))
        p.app.village.refresh().join()
        p.app.myRecords.refresh().join()
        return outcome
    }

    /**
     * Runs [meanwhile], then waits (up to a minute) until [p]'s background sync is Idle after a
     * round it ran on its own; returns that state and the states it went through.
     */
    private suspend fun untilIdle(p: Phone, meanwhile: () -> Unit): Pair<SyncViewModel.Status.Idle?, List<String>> {
        val states = mutableListOf<String>()
        val stop = p.app.sync.status.observe { s ->
            val n = name(s).replace("Running", "Syncing")
            synchronized(states) { if (states.lastOrNull() != n) states += n }
        }
        meanwhile()
        val started = System.nanoTime()
        var idle: SyncViewModel.Status.Idle? = null
        while (idle == null && System.nanoTime() - started < 60_000_000_000L) {
            idle = (p.app.sync.status.value as? SyncViewModel.Status.Idle)?.takeIf { it.last != null }
            if (idle == null) delay(50)
        }
        stop()
        p.app.sync.refresh().join()
        return idle to synchronized(states) { states.toList() }
    }

    /**
     * 8. Lost and new phones: what the sync line says when the signal is not the problem.
     * A revoked phone is told to enroll again (and the phone stops trying); a phone enrolling
     * with a mistyped fingerprint is told to check it. Neither says "no connection".
     */
    private suspend fun lostPhones(server: ServerProcess, codes: Map<String, String>, zhang3: Phone, wang5: Phone) {
        section("8. 张三's phone is lost and revoked; 王五 types the fingerprint wrong")
        // The server is stopped after the export: the admin revokes, then serves again.
        server.revoke(zhang3.store.deviceId())
        server.start()
        zhang3.app.checkIn.edit { it.copy(activity = "清洁家园", place = "幸福社区") }
        zhang3.app.checkIn.submit().join()
        val revoked = zhang3.app.sync.sync().await()
        zhang3.say("sync: ${(revoked as? SyncViewModel.Status.Failed)?.message ?: revoked}")
        check("a revoked phone's sync fails as unauthorized, not \"no connection\"",
            revoked is SyncViewModel.Status.Failed && revoked.kind == SyncFailure.UNAUTHORIZED &&
                !revoked.message.startsWith(NO_CONNECTION) && revoked.message.contains("new code"))
        delay(3_000) // a retry (2 s) would have started by now
        check("a revoked phone does not retry on its own and keeps its check-in",
            zhang3.app.sync.status.value == revoked && zhang3.app.sync.pending.value == 1L)

        val wrong = server.fingerprint.reversed()
        wang5.app.enrollment.enroll(server.address, wrong, codes.getValue(wang5.owner.id)).join()
        val notice = wang5.app.enrollment.notice.value
        wang5.say(notice?.text ?: "")
        check("a wrong fingerprint says so, not \"no connection\"",
            notice != null && notice.error && notice.text.contains("fingerprint") && !notice.text.startsWith(NO_CONNECTION) &&
                wang5.app.enrollment.enrollment.value == null)
        wang5.app.enrollment.enroll(server.address, server.fingerprint, codes.getValue(wang5.owner.id)).join()
        wang5.say(wang5.app.enrollment.notice.value?.text ?: "")
        check("with the right fingerprint 王五's phone enrolls", wang5.app.enrollment.enrollment.value != null)
        server.stop()
    }

    /**
     * 9. The rules on the phone, and the way out of a refusal. 王五's phone refuses at once what
     * a volunteer may not write. Then the office takes team:8 away while the phone still has the
     * old rules: what it records there is refused at the next sync, and 王五 takes it back.
     */
    private suspend fun rules(server: ServerProcess, wang5: Phone) {
        section("9. 王五's phone knows the rules; team:8 is taken away, and a refused record is taken back")
        server.start()
        val village = wang5.app.village
        village.createSurvey("village:3", "大坪村").join()
        val refusedAtOnce = village.notice.value
        wang5.say(refusedAtOnce?.text ?: "")
        check("a volunteer's survey is refused on the phone with the server's reason, nothing saved",
            refusedAtOnce != null && refusedAtOnce.error &&
                refusedAtOnce.text.contains("a volunteer may not write village_survey records") &&
                village.surveys.value.isEmpty() && wang5.app.sync.pending.value == 0L)

        val checkIn = wang5.app.checkIn
        minuteOfDay = 8 * 60
        checkIn.edit { it.copy(activity = "社区网格化", place = "东区") }
        checkIn.submit().join()
        val kept = checkIn.saved.value ?: ""
        syncAndShow(wang5)
        val serverVersion = wang5.app.repo.record(kept)

        server.stop()
        server.enroll(ServerUser("wang5", "王五", "volunteer", listOf("team:7")), replace = true)
        server.start()
        println("   (the office takes team:8 away from 王五; the phone is out of signal and still has the old rules)")
        minuteOfDay = 9 * 60 + 30
        wang5.app.myRecords.refresh().join()
        wang5.app.myRecords.checkOut(kept).join()
        wang5.say("${wang5.app.myRecords.notice.value?.text} (08:00–09:30, team:8)")
        checkIn.edit { it.copy(activity = "清洁家园", place = "东区") }
        checkIn.submit().join()
        val fresh = checkIn.saved.value ?: ""
        wang5.say(checkIn.notice.value?.text ?: "")
        val outcome = syncAndShow(wang5)
        val refused = wang5.app.sync.refused.value
        refused.forEach { wang5.say("refused ${it.id.take(8)}…: ${it.reason}") }
        check("the server refuses both team:8 records, saying why",
            (outcome as? SyncViewModel.Status.Idle)?.last?.sent == 0uL &&
                refused.map { it.id }.toSet() == setOf(kept, fresh) && refused.all { it.reason.contains("team:8") })

        for (r in refused) {
            wang5.app.sync.revert(r.id).join()
            wang5.say("take back ${r.id.take(8)}…: ${wang5.app.sync.notice.value?.text}")
        }
        check("the check-out goes back to the server's version, the new check-in is dropped",
            wang5.app.repo.record(kept) == serverVersion && wang5.app.repo.record(fresh) == null &&
                wang5.app.sync.refused.value.isEmpty() && wang5.app.sync.pending.value == 0L)
        val clean = syncAndShow(wang5)
        check("the next sync is clean",
            (clean as? SyncViewModel.Status.Idle)?.last.let { it != null && it.sent == 0uL && it.refused.isEmpty() })
        server.stop()
    }

    private suspend fun showVillage(p: Phone) {
        p.app.village.refresh().join()
        for (s in p.app.village.surveys.value) {
            p.say("survey ${s.village} (${s.scope})")
            for (f in s.fields.filter { it.value != null }) {
                val conflict = f.conflict?.let { "   ⚠ conflict: ${it.joinToString(" | ") { v -> v.display() }}" } ?: ""
                println("      ${f.name}: ${f.value?.display()}$conflict")
            }
        }
        for (v in p.app.village.visits.value) {
            p.say("visit ${v.fields["household"]?.display()} at ${v.fields["visited_at"]?.display()}: needs ${v.fields["needs"]?.display() ?: "-"}")
        }
    }

    private suspend fun showMyRecords(p: Phone) {
        p.app.myRecords.refresh().join()
        p.say("my check-ins:")
        for (r in p.app.myRecords.rows.value) {
            println("      ${r.startedAt.substring(11, 16)}–${r.endedAt?.substring(11, 16) ?: "open"} ${r.activity} @ ${r.place}: ${r.hours ?: "-"} h, ${r.status}")
        }
        val h = p.app.myRecords.hours.value
        p.say("my hours: confirmed ${h?.confirmedHours} h, submitted ${h?.submittedHours} h, open ${h?.open}")
    }

    companion object {
        fun main(): Int {
            val dir = Files.createTempDirectory("fieldsync-demo").toFile()
            return try {
                Scenario(dir).run()
            } finally {
                dir.deleteRecursively()
            }
        }
    }
}
