#!/usr/bin/env bash
# Builds what the field app demo needs and runs its JVM front end.
#
#   bash mobile-demo/run.sh --scenario     the scripted scenario (what run-scenario.sh runs)
#   bash mobile-demo/run.sh --store DIR    the interactive terminal app on the phone store in DIR
#
# Needs bindings/install-deps.sh to have run. Builds fieldsync-server and the bindings library
# (cargo, debug), generates the Kotlin sources, and compiles the bindings and the demo with
# kotlinc (skipped when their sources did not change).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}

# Build output goes to stderr so a scripted run's stdout is the scenario alone.
# generate.sh builds the workspace in debug: fieldsync-server and the library among it.
bash bindings/generate.sh >/dev/null
# shellcheck source=../bindings/jvm/kotlin-env.sh
source bindings/jvm/kotlin-env.sh
{
  build_bindings_jar
  mapfile -t sources < <(find mobile-demo/app mobile-demo/jvm -name '*.kt' | sort)
  compile_kotlin_jar "$JVM_OUT/mobile-demo.jar" "$BINDINGS_JAR:$JVM_DEPS" "${sources[@]}"
} 1>&2

export FIELDSYNC_SERVER_BIN="$target/debug/fieldsync-server"
run_kotlin_main org.fieldsync.demo.jvm.MainKt "$JVM_OUT/mobile-demo.jar" "$@"
