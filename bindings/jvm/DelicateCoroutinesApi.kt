// Compatibility shim for the JVM tests and demo only; an Android app does not need it.
//
// The generated Kotlin imports kotlinx.coroutines.DelicateCoroutinesApi (kotlinx-coroutines
// 1.5+). Debian's libkotlinx-coroutines-java is 1.0.1, which predates it, and the import is
// never used for anything but an opt-in marker, so declaring the annotation here is enough.
// Apps build against a current kotlinx-coroutines, which has it.
package kotlinx.coroutines

@RequiresOptIn(level = RequiresOptIn.Level.WARNING)
@Retention(AnnotationRetention.BINARY)
annotation class DelicateCoroutinesApi
