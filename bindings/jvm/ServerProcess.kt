// A real fieldsync-server as a child process, for the JVM tests and the demo's scripted mode.
//
// JVM-only (ProcessBuilder, files): it stands in for the office's server, which a phone app never
// starts. Kept out of the demo's repository and view-model layers on purpose.
package org.fieldsync.testing

import java.io.File
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** A user the admin enrolls, with the scopes the user reads and writes. */
data class ServerUser(val id: String, val name: String, val role: String, val scopes: List<String>)

/**
 * One `fieldsync-server` data folder, served by a child process that can be stopped and started
 * again on the same port (phones keep the address they enrolled with).
 *
 * `init`, `enroll` and `revoke` open the redb file themselves, so they run only while the server
 * is stopped, as an admin would run them.
 */
class ServerProcess(
    val binary: File,
    var data: File,
    private val logDir: File,
) {
    var port: Int = 0
        private set
    var fingerprint: String = ""
        private set
    private var process: Process? = null
    private var starts = 0

    val address: String get() = "127.0.0.1:$port"
    val running: Boolean get() = process != null

    /** Runs an admin command against the data folder; returns its standard output. */
    fun admin(vararg args: String): String {
        check(process == null) { "admin commands need the server stopped (redb is single-process)" }
        val err = File(logDir, "admin.err")
        val proc = ProcessBuilder(listOf(binary.path) + args + listOf("--data", data.path))
            .redirectError(err)
            .start()
        val out = proc.inputStream.bufferedReader().readText()
        if (!proc.waitFor(60, TimeUnit.SECONDS)) {
            proc.destroyForcibly()
            error("fieldsync-server ${args.joinToString(" ")} hung")
        }
        check(proc.exitValue() == 0) {
            "fieldsync-server ${args.joinToString(" ")} failed: ${err.readText()}"
        }
        return out
    }

    fun init() {
        fingerprint = lineValue(admin("init"), "fingerprint")
    }

    /** Issues a one-time enrollment code for [user]; [replace] changes an existing user's rights. */
    fun enroll(user: ServerUser, replace: Boolean = false): String {
        val args = mutableListOf("enroll", "--user", user.id, "--name", user.name, "--role", user.role)
        for (scope in user.scopes) args += listOf("--scope", scope)
        if (replace) args += "--replace"
        return lineValue(admin(*args.toTypedArray()), "code")
    }

    fun revoke(deviceId: String) {
        admin("revoke", "--device", deviceId)
    }

    /** Starts `serve` (on the port of the first start) and waits for its `listening on` line. */
    fun start() {
        check(process == null) { "already running" }
        starts += 1
        val proc = ProcessBuilder(
            binary.path, "serve", "--data", data.path, "--listen", address,
        )
            .redirectError(File(logDir, "server-$starts.log"))
            .also { it.environment()["NO_COLOR"] = "1" }
            .start()
        process = proc
        val lines = LinkedBlockingQueue<String>()
        // Drains stdout for the server's whole life so it never blocks on a full pipe.
        val pump = Thread {
            proc.inputStream.bufferedReader().forEachLine { lines.put(it) }
            lines.put(EOF)
        }
        pump.isDaemon = true
        pump.start()
        while (true) {
            val line = lines.poll(START_TIMEOUT_S, TimeUnit.SECONDS)
            if (line == null) {
                stop()
                error("fieldsync-server did not listen within $START_TIMEOUT_S s")
            }
            if (line == EOF) {
                process = null
                error("fieldsync-server exited (${proc.waitFor()}) before listening; see $logDir")
            }
            if (line.startsWith("fingerprint: ")) fingerprint = line.substringAfter(": ").trim()
            if (line.startsWith("listening on ")) {
                port = line.substringAfterLast(":").trim().toInt()
                return
            }
        }
    }

    /** SIGTERM (a clean shutdown), then a forced kill if it hangs. */
    fun stop() {
        val proc = process ?: return
        proc.destroy()
        if (!proc.waitFor(20, TimeUnit.SECONDS)) {
            proc.destroyForcibly()
            proc.waitFor()
        }
        process = null
    }

    companion object {
        private const val START_TIMEOUT_S = 60L
        private const val EOF = "\u0000eof"

        /** The server binary: `$FIELDSYNC_SERVER_BIN`, else `target/debug/fieldsync-server`. */
        fun defaultBinary(): File {
            val bin = File(System.getenv("FIELDSYNC_SERVER_BIN") ?: "target/debug/fieldsync-server")
            check(bin.canExecute()) { "$bin is missing: cargo build -p fieldsync-server" }
            return bin
        }

        /** A new data folder under [dir] with a code for each user, served. */
        fun startWith(dir: File, users: List<ServerUser>): Pair<ServerProcess, Map<String, String>> {
            dir.mkdirs()
            val server = ServerProcess(defaultBinary(), File(dir, "server-data"), dir)
            server.init()
            val codes = users.associate { it.id to server.enroll(it) }
            server.start()
            return server to codes
        }

        private fun lineValue(out: String, key: String): String =
            out.lineSequence().firstOrNull { it.startsWith("$key: ") }?.substringAfter(": ")?.trim()
                ?: error("no `$key:` line in: $out")
    }
}
