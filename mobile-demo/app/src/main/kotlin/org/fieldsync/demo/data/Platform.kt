package org.fieldsync.demo.data

import java.time.OffsetDateTime
import java.time.format.DateTimeFormatter
import java.time.temporal.ChronoUnit

/** The phone's clock, as RFC 3339 text with the local offset (what the record schema wants). */
fun interface Clock {
    fun now(): String
}

/** The system clock. java.time is on Android from API 26 (or with core library desugaring). */
object SystemClock : Clock {
    override fun now(): String =
        OffsetDateTime.now().truncatedTo(ChronoUnit.SECONDS).format(DateTimeFormatter.ISO_OFFSET_DATE_TIME)
}

/** A GPS fix. */
data class Location(val lat: Double, val lon: Double, val accuracyM: Double)

/**
 * Where the phone is, if it may say. On Android this is the fused location provider, asked only
 * after the user granted ACCESS_FINE_LOCATION; `null` means no fix or no permission, and the
 * check-in is saved without coordinates rather than not at all.
 */
fun interface LocationProvider {
    suspend fun current(): Location?
}
