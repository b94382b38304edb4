package org.fieldsync.demo.ui

import java.util.concurrent.CopyOnWriteArrayList
import org.fieldsync.FieldSyncException
import org.fieldsync.FieldValue

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

/** What the screen says when a call fails: each kind of failure asks something else of the user. */
fun userMessage(e: FieldSyncException): String = when (e) {
    is FieldSyncException.Network ->
        "No connection to the server. Everything is saved on this phone and will sync later."
    is FieldSyncException.Unauthorized ->
        "This phone is not (or no longer) enrolled on the server; ask the office for a new code. (${e.message})"
    is FieldSyncException.Certificate ->
        "The server did not prove it is the one this phone enrolled with (wrong fingerprint?). Nothing was sent; ask the office. (${e.message})"
    is FieldSyncException.NotEnrolled -> "Enroll this phone first."
    is FieldSyncException.Refused -> "The server refused: ${e.message}"
    is FieldSyncException.InvalidInput -> "Please check the form: ${e.message}"
    is FieldSyncException.NotFound -> "That record is not on this phone."
    is FieldSyncException.Storage -> "The phone's storage failed: ${e.message}"
}
