// The generated Kotlin bindings on the JVM (through JNA), against a real fieldsync-server.
//
// A plain main: each test prints `ok`/`FAIL`, the last line is `kotlin: N passed, N failed`, and
// the exit code is non-zero if anything failed. `bindings/test.sh` compiles and runs it.
// Suspending calls (`enroll`, `sync`) are made from coroutines, as an app makes them.
package org.fieldsync.tests

import java.io.File
import java.nio.file.Files
import kotlin.system.exitProcess
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.fieldsync.BackgroundSync
import org.fieldsync.BackgroundSyncOptions
import org.fieldsync.FieldRecord
import org.fieldsync.FieldStore
import org.fieldsync.FieldSyncException
import org.fieldsync.FieldValue
import org.fieldsync.Reverted
import org.fieldsync.Role
import org.fieldsync.SyncFailure
import org.fieldsync.SyncProgress
import org.fieldsync.SyncProgressListener
import org.fieldsync.SyncReport
import org.fieldsync.SyncState
import org.fieldsync.SyncStateListener
import org.fieldsync.fieldSchema
import org.fieldsync.FieldType
import org.fieldsync.testing.ServerProcess
import org.fieldsync.testing.ServerUser

val LI4 = ServerUser("li4", "李四", "village", listOf("village:3"))
val CHEN7 = ServerUser("chen7", "陈七", "village", listOf("village:3", "village:4"))
val ZHANG3 = ServerUser("zhang3", "张三", "volunteer", listOf("team:7"))

fun day(hour: Int, minute: Int = 0) = "2026-11-28T%02d:%02d:00+08:00".format(hour, minute)

class AssertionFailed(message: String) : Exception(message)

fun check(condition: Boolean, message: () -> String) {
    if (!condition) throw AssertionFailed(message())
}

fun <T> checkEq(actual: T, expected: T, what: String) =
    check(actual == expected) { "$what: expected $expected, got $actual" }

inline fun <reified E : Throwable> expectThrows(what: String, block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionFailed("$what: expected ${E::class.simpleName}, got $e")
    }
    throw AssertionFailed("$what: expected ${E::class.simpleName}, nothing was thrown")
}

/** Records every progress report of one sync round and checks them for sanity. */
class Progress : SyncProgressListener {
    val calls = mutableListOf<SyncProgress>()

    @Synchronized
    override fun onProgress(progress: SyncProgress) {
        calls += progress
    }

    @Synchronized
    fun assertSane(report: SyncReport, pendingBefore: Long) {
        check(calls.isNotEmpty()) { "the progress listener was never called" }
        checkEq(calls.first(), SyncProgress(0u, pendingBefore.toULong(), 0u, 0u), "first progress report")
        calls.zipWithNext().forEach { (a, b) ->
            check(b.sent >= a.sent && b.received >= a.received && b.toReceive >= a.toReceive) {
                "progress went backwards: $calls"
            }
        }
        check(calls.all { it.sent <= it.toSend && it.received <= it.toReceive }) { "past a total: $calls" }
        val last = calls.last()
        checkEq(last.sent, report.sent + report.refused.size.toULong() + report.deferred.size.toULong(), "records sent at the end")
        checkEq(last.sent, last.toSend, "all sent at the end")
        checkEq(last.received, report.received, "records received at the end")
        checkEq(last.received, last.toReceive, "all received at the end")
    }
}

/** One sync round the way an app runs it (a suspend call from a coroutine), progress checked. */
suspend fun FieldStore.syncChecked(): SyncReport {
    val progress = Progress()
    val pending = pendingCount().toLong()
    val report = sync(progress)
    progress.assertSane(report, pending)
    return report
}

fun text(s: String) = FieldValue.Text(s)

/** Every state a background sync reported (called on its own thread). */
class States : SyncStateListener {
    private val seen = mutableListOf<SyncState>()

    @Synchronized
    override fun onState(state: SyncState) {
        seen += state
    }

    @Synchronized
    fun seen(): List<SyncState> = seen.toList()

    /** Waits (suspending, not blocking) until the latest state satisfies [done]. */
    suspend fun until(timeoutMs: Long = 60_000, done: (SyncState) -> Boolean): SyncState {
        val started = System.nanoTime()
        while (true) {
            seen().lastOrNull()?.let { if (done(it)) return it }
            check((System.nanoTime() - started) / 1_000_000 < timeoutMs) { "no such state in $timeoutMs ms: ${seen()}" }
            delay(20)
        }
    }
}

/** State names in order, repeats collapsed (Syncing repeats with progress). */
fun names(states: List<SyncState>): List<String> =
    states.map { it::class.simpleName ?: "?" }.fold(mutableListOf()) { acc, n -> if (acc.lastOrNull() != n) acc += n; acc }

/** Quick retries, so a test sees them. */
val FAST = BackgroundSyncOptions(deadlineSeconds = 2u, firstRetrySeconds = 1u, maxRetrySeconds = 2u)

fun elapsedMs(since: Long) = (System.nanoTime() - since) / 1_000_000

/** What a test body has: its folder, servers and phones, and a coroutine scope to launch in. */
class Env(val dir: File, scope: CoroutineScope) : CoroutineScope by scope {
    private val servers = mutableListOf<ServerProcess>()
    private val phones = mutableListOf<FieldStore>()

    fun server(vararg users: ServerUser): Pair<ServerProcess, Map<String, String>> {
        val started = ServerProcess.startWith(File(dir, "server${servers.size}"), users.toList())
        servers += started.first
        return started
    }

    fun phone(name: String): FieldStore =
        FieldStore.open(File(dir, "phones/$name").path).also { phones += it }

    fun close() {
        phones.forEach { it.close() }
        servers.forEach { it.stop() }
    }
}

suspend fun FieldStore.enrollWith(server: ServerProcess, codes: Map<String, String>, user: ServerUser) =
    enroll(server.address, server.fingerprint, codes.getValue(user.id))

fun ids(records: List<FieldRecord>) = records.map { it.id }.toSet()

val tests = linkedMapOf<String, suspend Env.() -> Unit>(
    "two phones record offline, sync, and see what their scopes allow" to {
        val (server, codes) = server(LI4, CHEN7, ZHANG3)
        val li4 = phone("li4")
        val chen7 = phone("chen7")
        val zhang3 = phone("zhang3")
        val info = li4.enrollWith(server, codes, LI4)
        checkEq(info.role, Role.VILLAGE, "role")
        checkEq(info.deviceId, li4.deviceId(), "device id")
        chen7.enrollWith(server, codes, CHEN7)
        zhang3.enrollWith(server, codes, ZHANG3)

        server.stop() // no signal from here on
        val survey = li4.create(
            "village_survey", "village:3",
            mapOf("village" to text("大坪村"), "licensed_doctors" to FieldValue.Integer(2)),
        )
        val visit = chen7.create(
            "village_visit", "village:3",
            mapOf(
                "village" to text("大坪村"),
                "household" to text("王家"),
                "visited_at" to text(day(10)),
                "visitors" to FieldValue.TextList(listOf("陈七", "李四")),
            ),
        )
        val other = chen7.create("village_survey", "village:4", mapOf("village" to text("石桥村")))
        val checkIn = zhang3.checkIn("清洁家园", "幸福社区", day(8), day(10, 30), lat = 28.2, lon = 112.9)
        checkEq(li4.pendingCount(), 1uL, "li4 pending")
        checkEq(chen7.pendingCount(), 2uL, "chen7 pending")

        // Offline: a network error, and the calling thread keeps running other coroutines.
        var ticks = 0
        val ticker = launch {
            while (true) {
                delay(50)
                ticks++
            }
        }
        val started = System.nanoTime()
        expectThrows<FieldSyncException.Network>("sync offline") { li4.sync(null, deadlineSeconds = 3u) }
        val waitedMs = (System.nanoTime() - started) / 1_000_000
        ticker.cancel()
        check(ticks >= waitedMs / 50 / 2) { "the calling thread was blocked: $ticks ticks in $waitedMs ms" }
        checkEq(li4.pendingCount(), 1uL, "li4 pending after a failed sync")

        server.start()
        checkEq(li4.syncChecked().sent, 1uL, "li4 sent")
        val a = async { chen7.syncChecked() }
        val b = async { zhang3.syncChecked() }
        checkEq(a.await().received, 1uL, "chen7 received li4's survey")
        checkEq(b.await().sent, 1uL, "zhang3 sent")
        checkEq(li4.syncChecked().received, 1uL, "li4 received chen7's visit")

        checkEq(ids(li4.list()), setOf(survey.id, visit.id), "li4 (village:3) sees")
        checkEq(ids(chen7.list()), setOf(survey.id, visit.id, other.id), "chen7 (village:3, :4) sees")
        checkEq(ids(zhang3.list()), setOf(checkIn), "the volunteer sees")
        checkEq(li4.get(visit.id), visit, "the visit as recorded")
        checkEq(li4.get(other.id), null, "a record out of scope")
        checkEq(zhang3.get(checkIn)?.fields?.get("hours"), FieldValue.Number(2.5), "derived hours")
        checkEq(zhang3.myHours().submittedHours, 2.5, "my submitted hours")
    },

    "concurrent edits of one field show a conflict until resolved" to {
        val (server, codes) = server(LI4, CHEN7)
        val li4 = phone("li4")
        val chen7 = phone("chen7")
        li4.enrollWith(server, codes, LI4)
        chen7.enrollWith(server, codes, CHEN7)
        val record = li4.create(
            "village_survey", "village:3",
            mapOf("village" to text("大坪村"), "licensed_doctors" to FieldValue.Integer(1)),
        )
        li4.syncChecked()
        chen7.syncChecked()
        li4.update(record.id, mapOf("licensed_doctors" to FieldValue.Integer(2)))
        chen7.update(record.id, mapOf("licensed_doctors" to FieldValue.Integer(3), "bus_service" to FieldValue.Bool(true)))
        li4.syncChecked()
        chen7.syncChecked()
        li4.syncChecked()
        val mine = li4.get(record.id)!!
        checkEq(mine, chen7.get(record.id), "both phones converge")
        checkEq(mine.conflicts.keys, setOf("licensed_doctors"), "conflicted fields")
        checkEq(
            mine.conflicts.getValue("licensed_doctors").toSet(),
            setOf<FieldValue>(FieldValue.Integer(2), FieldValue.Integer(3)),
            "both values kept",
        )
        checkEq(mine.fields["bus_service"], FieldValue.Bool(true), "the other edit merged")
        checkEq(li4.history(record.id).map { it.deviceId }.toSet(), setOf(li4.deviceId(), chen7.deviceId()), "history")

        check(li4.update(record.id, mapOf("licensed_doctors" to FieldValue.Integer(3))).conflicts.isEmpty()) { "resolved" }
        li4.syncChecked()
        chen7.syncChecked()
        checkEq(chen7.get(record.id)?.conflicts, emptyMap(), "resolved on the other phone")
        checkEq(chen7.get(record.id)?.fields?.get("licensed_doctors"), FieldValue.Integer(3), "resolved value")
    },

    "bad input raises clear exceptions and changes nothing" to {
        val store = phone("phone")
        val record = store.create("village_survey", "village:3", mapOf("village" to text("大坪村")))
        val unknown = expectThrows<FieldSyncException.InvalidInput>("unknown kind") {
            store.create("parade", "village:3", mapOf())
        }
        check(unknown.message!!.contains("unknown kind `parade`")) { "message: ${unknown.message}" }
        val wrongType = expectThrows<FieldSyncException.InvalidInput>("wrong type") {
            store.update(record.id, mapOf("licensed_doctors" to text("two"), "note" to text("x")))
        }
        check(wrongType.message!!.contains("licensed_doctors")) { "message: ${wrongType.message}" }
        expectThrows<FieldSyncException.InvalidInput>("bad scope") {
            store.create("village_survey", "team:3", mapOf("village" to text("x")))
        }
        expectThrows<FieldSyncException.NotFound>("unknown id") {
            store.update("0190f0c4-0000-7000-8000-000000000000", mapOf("note" to text("x")))
        }
        expectThrows<FieldSyncException.NotEnrolled>("check-in before enrollment") {
            store.checkIn("清洁家园", "幸福社区", day(8))
        }
        expectThrows<FieldSyncException.NotEnrolled>("sync before enrollment") { store.sync(null) }
        checkEq(store.pendingCount(), 1uL, "pending")
        checkEq(store.list(), listOf(record), "records")
        checkEq(store.history(record.id).size, 1, "changes")
        val doctors = fieldSchema("village_survey").first { it.name == "licensed_doctors" }
        checkEq(doctors.fieldType, FieldType.INTEGER, "schema type")
    },

    "the phone refuses what the role may not write; what the server refuses later is reverted or dropped" to {
        val twoTeams = ServerUser("zhang3", "张三", "volunteer", listOf("team:7", "team:8"))
        val (server, codes) = server(twoTeams)
        val phone = phone("zhang3")
        phone.enrollWith(server, codes, twoTeams)
        val e = expectThrows<FieldSyncException.Refused>("a volunteer's survey") {
            phone.create("village_survey", "village:3", mapOf("village" to text("大坪村")))
        }
        checkEq(e.message, "a volunteer may not write village_survey records", "the server's reason")
        checkEq(phone.pendingCount(), 0uL, "nothing stored")
        val edited = phone.checkIn("清洁家园", "幸福社区", day(8), day(9), scope = "team:8")
        checkEq(phone.syncChecked().sent, 1uL, "sent")
        val serverVersion = phone.get(edited)

        // team:8 is taken away on the server; the phone still has the old rules.
        server.stop()
        server.enroll(ServerUser("zhang3", "张三", "volunteer", listOf("team:7")), replace = true)
        server.start()
        phone.update(edited, mapOf("note" to text("补签")))
        val fresh = phone.checkIn("社区网格化", "东区", day(10), day(11), scope = "team:8")
        val report = phone.syncChecked()
        checkEq(report.refused.map { it.id }.toSet(), setOf(edited, fresh), "refused by the server")

        val back = phone.revert(edited)
        check(back is Reverted.ToServer && back.record == serverVersion) { "back to the server's version: $back" }
        checkEq(phone.revert(fresh), Reverted.Dropped, "the new one is dropped")
        checkEq(phone.get(fresh), null, "dropped")
        expectThrows<FieldSyncException.InvalidInput>("revert of a record not refused") { phone.revert(edited) }
        checkEq(phone.refused(), emptyList(), "nothing refused")
        val clean = phone.syncChecked()
        checkEq(clean.sent to clean.refused.size, 0uL to 0, "the next round is clean")
    },

    "a sync to a stopped server fails as Network within its deadline" to {
        val (server, codes) = server(ZHANG3)
        val phone = phone("phone")
        phone.enrollWith(server, codes, ZHANG3)
        phone.checkIn("清洁家园", "幸福社区", day(8), day(9))
        server.stop()
        val started = System.nanoTime()
        expectThrows<FieldSyncException.Network>("sync with a 2 s deadline") { phone.sync(null, 2u) }
        val waited = elapsedMs(started)
        check(waited in 1_000..5_000) { "a 2 s deadline took $waited ms" }
        checkEq(phone.pendingCount(), 1uL, "pending kept")
        expectThrows<FieldSyncException.InvalidInput>("a deadline of 0") { phone.sync(null, 0u) }
    },

    "background sync pushes pending records and comes back to Idle" to {
        val (server, codes) = server(ZHANG3)
        val phone = phone("phone")
        phone.enrollWith(server, codes, ZHANG3)
        server.stop() // no signal when the records are made and the first round runs
        phone.checkIn("清洁家园", "幸福社区", day(8), day(9))
        phone.checkIn("文明城市创建", "人民路", day(10), day(11))
        val states = States()
        BackgroundSync(phone, states, FAST).use { background ->
            checkEq(states.until { it is SyncState.Idle }, SyncState.Idle(null), "Idle until asked")
            background.requestSync()
            val waiting = states.until { it is SyncState.WaitingToRetry } as SyncState.WaitingToRetry
            check(waiting.reason.isNotEmpty()) { "a reason" }
            check(waiting.atUnixMs > System.currentTimeMillis() - 1_000) { "a retry time: ${waiting.atUnixMs}" }
            server.start() // the signal is back; nobody asks
            val done = states.until { it is SyncState.Idle && it.last != null } as SyncState.Idle
            checkEq(done.last?.sent, 2uL, "sent in the background")
            checkEq(phone.pendingCount(), 0uL, "nothing pending")
            val seen = states.seen()
            check(seen.none { it is SyncState.Failed }) { "no signal is never Failed: $seen" }
            checkEq(names(seen).take(4), listOf("Idle", "Syncing", "WaitingToRetry", "Syncing"), "state sequence")
            checkEq(names(seen).last(), "Idle", "last state")
            val progress = seen.filterIsInstance<SyncState.Syncing>().last().progress
            checkEq(progress.sent to progress.toSend, 2uL to 2uL, "progress at the end")
            // A request runs one more round; a manual sync meanwhile waits its turn.
            background.requestSync()
            checkEq(phone.syncChecked().sent, 0uL, "a manual sync beside the background one")
            states.until { it is SyncState.Idle && states.seen().size > seen.size }
        }
    },

    "a wrong fingerprint is Certificate, not no signal" to {
        val (server, codes) = server(ZHANG3)
        val phone = phone("phone")
        val e = expectThrows<FieldSyncException.Certificate>("enroll with a wrong fingerprint") {
            phone.enroll(server.address, "ab".repeat(32), codes.getValue(ZHANG3.id), deadlineSeconds = 10u)
        }
        check(e.message!!.contains("certificate")) { "message: ${e.message}" }
        checkEq(phone.enrollment(), null, "not enrolled")
        phone.enrollWith(server, codes, ZHANG3)
    },

    "a revoked phone is refused and keeps its records" to {
        val (server, codes) = server(ZHANG3)
        val phone = phone("lost")
        phone.enrollWith(server, codes, ZHANG3)
        phone.checkIn("清洁家园", "幸福社区", day(8), day(9))
        checkEq(phone.syncChecked().sent, 1uL, "sent before revocation")
        val kept = phone.checkIn("清洁家园", "幸福社区", day(10), day(11))
        server.stop()
        server.revoke(phone.deviceId())
        server.start()
        expectThrows<FieldSyncException.Unauthorized>("sync after revocation") { phone.sync(null) }
        checkEq(phone.pendingCount(), 1uL, "pending kept")
        check(phone.get(kept) != null) { "record kept" }
        // In the background: Failed with what to do (enroll again), and not retried.
        val states = States()
        BackgroundSync(phone, states, FAST).use { background ->
            background.requestSync()
            val failed = states.until { it is SyncState.Failed } as SyncState.Failed
            checkEq(failed.kind, SyncFailure.UNAUTHORIZED, "failure kind")
            val seen = states.seen()
            delay(3_000) // a retry after 1-2 s would show by now
            checkEq(states.seen(), seen, "states after Failed (no retry)")
            checkEq(names(seen), listOf("Idle", "Syncing", "Failed"), "state sequence")
        }
        val bad = phone("bad-code")
        expectThrows<FieldSyncException.Refused>("unknown enrollment code") {
            bad.enroll(server.address, server.fingerprint, "NOTACODE23")
        }
    },
)

fun main() {
    val root = Files.createTempDirectory("fieldsync-kotlin-test").toFile()
    var passed = 0
    val failed = mutableListOf<String>()
    for ((name, body) in tests) {
        val dir = File(root, "t${passed + failed.size}")
        val started = System.nanoTime()
        try {
            runBlocking {
                val env = Env(dir, this)
                try {
                    env.body()
                } finally {
                    env.close()
                }
            }
            passed++
            println("ok   $name (${(System.nanoTime() - started) / 1_000_000} ms)")
        } catch (e: Throwable) {
            failed += name
            println("FAIL $name: $e")
            e.printStackTrace()
        }
    }
    root.deleteRecursively()
    failed.forEach { println("failed: $it") }
    println("kotlin: $passed passed, ${failed.size} failed")
    exitProcess(if (failed.isEmpty()) 0 else 1)
}
