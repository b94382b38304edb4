package org.fieldsync.demo.ui

import java.time.Instant
import java.time.ZoneId
import java.time.format.DateTimeFormatter
import java.util.concurrent.CopyOnWriteArrayList
import org.fieldsync.FieldSyncException
import org.fieldsync.FieldValue
import org.fieldsync.SyncFailure

/**
 * An observable value a view model exposes and a screen renders: the role `StateFlow` (or
 * `LiveData`) plays in an Android app. It is hand-rolled only because the JVM build here uses
 * Debian's kotlinx-coroutines 1.0.1, which predates StateFlow; on Android replace it with
 * `MutableStateFlow` one for one (`value`, and `collect` instead of `observe`).
 */
class State<T>(initial: T) {
    @Volatile
    var value: T = initial
        private set
    private val observers = CopyOnWriteArrayList<(T) -> Unit>()

    /** Calls [observer] now and on every change; returns what stops it. */
    fun observe(observer: (T) -> Unit): () -> Unit {
        observers += observer
        observer(value)
        return { observers -= observer }
    }

    internal fun set(next: T) {
        value = next
        observers.forEach { it(next) }
    }
}

/** A value as a screen shows it. */
fun FieldValue.display(): String = when (this) {
    is FieldValue.Text -> value
    is FieldValue.Number -> if (value == Math.floor(value) && !value.isInfinite()) value.toLong().toString() else value.toString()
    is FieldValue.Integer -> value.toString()
    is FieldValue.Bool -> if (value) "yes" else "no"
    is FieldValue.TextList -> values.joinToString("; ")
}

/** How every "no signal" message starts: the one failure that is only a matter of waiting. */
const val NO_CONNECTION = "No connection to the server."

/** What the screen says when a call fails: each kind of failure asks something else of the user. */
fun userMessage(e: FieldSyncException): String = when (e) {
    is FieldSyncException.Network ->
        "$NO_CONNECTION Everything is saved on this phone and will sync later."
    is FieldSyncException.ServerUnavailable ->
        "The server could not take the sync just now. Everything is saved on this phone and will sync later. (${e.message ?: ""})"
    is FieldSyncException.Unauthorized -> syncFailureMessage(SyncFailure.UNAUTHORIZED, e.message ?: "")
    is FieldSyncException.Certificate -> syncFailureMessage(SyncFailure.CERTIFICATE, e.message ?: "")
    is FieldSyncException.NotEnrolled -> syncFailureMessage(SyncFailure.NOT_ENROLLED, e.message ?: "")
    is FieldSyncException.Refused -> syncFailureMessage(SyncFailure.REFUSED, e.message ?: "")
    is FieldSyncException.InvalidInput -> "Please check the form: ${e.message}"
    is FieldSyncException.NotFound -> "That record is not on this phone."
    is FieldSyncException.Storage -> syncFailureMessage(SyncFailure.STORAGE, e.message ?: "")
}

/**
 * What the screen says when saving a record fails. `Refused` here is the phone itself applying
 * the role and scope rules the server applies (with the server's reason): nothing was saved.
 */
fun writeMessage(e: FieldSyncException): String = when (e) {
    is FieldSyncException.Refused -> "Not allowed for your role and teams: ${e.message}. Nothing was saved."
    else -> userMessage(e)
}

/** What the sync status line says when the background sync stopped trying, by what to do. */
fun syncFailureMessage(kind: SyncFailure, reason: String): String = when (kind) {
    SyncFailure.UNAUTHORIZED ->
        "This phone is not (or no longer) enrolled on the server; ask the office for a new code. ($reason)"
    SyncFailure.CERTIFICATE ->
        "The server did not prove it is the one this phone enrolled with (wrong fingerprint?). " +
            "Nothing was sent; ask the office. ($reason)"
    SyncFailure.NOT_ENROLLED -> "Enroll this phone first."
    SyncFailure.REFUSED -> "The server refused: $reason"
    SyncFailure.STORAGE -> "The phone's storage failed: $reason"
}

/** The status line while the phone has no signal. */
fun waitingMessage(atUnixMs: Long): String {
    val at = Instant.ofEpochMilli(atUnixMs).atZone(ZoneId.systemDefault())
    return "$NO_CONNECTION Everything is saved on this phone; trying again at ${DateTimeFormatter.ofPattern("HH:mm:ss").format(at)}."
}
