package org.fieldsync.demo.jvm

import java.io.File
import kotlin.system.exitProcess

private const val USAGE = """usage:
  fieldsync-demo --scenario       run the scripted scenario (starts its own server); exit 1 if anything is off
  fieldsync-demo --store DIR      the interactive terminal app on the phone store in DIR"""

/** The JVM front end of the field app demo: the scripted scenario or the terminal menu. */
fun main(args: Array<String>) {
    val code = when {
        args.size == 1 && args[0] == "--scenario" -> Scenario.main()
        args.size == 2 && args[0] == "--store" -> TerminalApp.main(File(args[1]))
        else -> {
            System.err.println(USAGE)
            2
        }
    }
    exitProcess(code)
}
