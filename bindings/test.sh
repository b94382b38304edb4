#!/usr/bin/env bash
# Tests the generated bindings for real: builds the server and the library, generates the
# sources, runs the Python tests (pytest) and the Kotlin tests (kotlinc + JNA on the JVM), each
# against real fieldsync-server processes. Needs bindings/install-deps.sh to have run.
#
#   bash bindings/test.sh
#
# Every step runs even if an earlier test step failed; the exit code is non-zero if anything
# failed, or if fewer tests ran than each suite holds (expected_python, expected_kotlin below).
# The last lines are the time of each step and one summary line:
#   bindings: N passed, N failed
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
log_dir="$target/bindings/logs"

# How many tests each suite holds: a run that reports fewer passed and failed than this lost
# tests silently (a file not collected, a test body skipped) and fails. Update with the tests.
expected_python=16
expected_kotlin=8

passed=0
failed=0
broken=()
timings=()

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME COMMAND...: runs a step, records its time; a failing build step stops everything.
step() {
  local name=$1
  shift
  echo
  echo "==== $name"
  local t0
  t0=$(now)
  "$@"
  local rc=$?
  timings+=("$(printf '%-34s %6ss' "$name" "$(elapsed "$t0")")")
  return $rc
}

fatal() {
  echo "bindings: step '$1' failed; nothing was tested" >&2
  echo "bindings: 0 passed, 1 failed"
  exit 1
}

mkdir -p "$log_dir"

# generate.sh builds the workspace in debug: the library, the generator and fieldsync-server.
step "build workspace + generate sources" bash bindings/generate.sh || fatal "generate"

# --- Python ------------------------------------------------------------------------------
python=${PYTHON:-python3}
run_pytest() {
  PYTHONDONTWRITEBYTECODE=1 \
    FIELDSYNC_BINDINGS_PY="$target/bindings/python" \
    FIELDSYNC_SERVER_BIN="$target/debug/fieldsync-server" \
    "$python" -m pytest -p no:cacheprovider -q bindings/tests/python 2>&1 | tee "$log_dir/pytest.log"
  return "${PIPESTATUS[0]}"
}
step "python tests (pytest)" run_pytest
py_rc=$?
py_passed=$(grep -oE '[0-9]+ passed' "$log_dir/pytest.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
py_failed=$(grep -oE '[0-9]+ (failed|errors?)' "$log_dir/pytest.log" | awk '{ s += $1 } END { print s + 0 }')
if [ "$py_rc" -ne 0 ] && [ "$py_failed" -eq 0 ]; then
  py_failed=1 # pytest itself failed (collection, import): count it
fi
if [ $((py_passed + py_failed)) -lt "$expected_python" ]; then
  echo "python: $((py_passed + py_failed)) tests ran, $expected_python expected" >&2
  py_failed=$((py_failed + expected_python - py_passed - py_failed))
  py_rc=1
fi
passed=$((passed + py_passed))
failed=$((failed + py_failed))
[ "$py_rc" -eq 0 ] || broken+=("python")

# --- Kotlin on the JVM -------------------------------------------------------------------
kotlin_compile() {
  # shellcheck source=jvm/kotlin-env.sh
  source bindings/jvm/kotlin-env.sh || return 1
  build_bindings_jar || return 1
  compile_kotlin_jar "$JVM_OUT/bindings-test.jar" "$BINDINGS_JAR:$JVM_DEPS" bindings/tests/kotlin/*.kt
}
kotlin_run() {
  source bindings/jvm/kotlin-env.sh || return 1
  FIELDSYNC_SERVER_BIN="$target/debug/fieldsync-server" \
    run_kotlin_main org.fieldsync.tests.BindingsTestKt "$JVM_OUT/bindings-test.jar" 2>&1 |
    tee "$log_dir/kotlin.log"
  return "${PIPESTATUS[0]}"
}
if step "kotlin compile (kotlinc)" kotlin_compile; then
  step "kotlin tests (JVM + JNA)" kotlin_run
  kt_rc=$?
  kt_line=$(grep -E '^kotlin: [0-9]+ passed, [0-9]+ failed' "$log_dir/kotlin.log" | tail -1)
  kt_passed=$(echo "$kt_line" | awk '{ print $2 }')
  kt_failed=$(echo "$kt_line" | awk '{ print $4 }')
  [ -n "$kt_passed" ] || kt_passed=0
  [ -n "$kt_failed" ] || kt_failed=0
  if [ "$kt_rc" -ne 0 ] && [ "$kt_failed" -eq 0 ]; then
    kt_failed=1 # the JVM died before its summary
  fi
  if [ $((kt_passed + kt_failed)) -lt "$expected_kotlin" ]; then
    echo "kotlin: $((kt_passed + kt_failed)) tests ran, $expected_kotlin expected" >&2
    kt_failed=$((kt_failed + expected_kotlin - kt_passed - kt_failed))
    kt_rc=1
  fi
  passed=$((passed + kt_passed))
  failed=$((failed + kt_failed))
  [ "$kt_rc" -eq 0 ] || broken+=("kotlin")
else
  failed=$((failed + expected_kotlin))
  broken+=("kotlin compile")
fi

echo
echo "==== times"
printf '%s\n' "${timings[@]}"
if [ ${#broken[@]} -gt 0 ]; then
  echo "failing: ${broken[*]} (logs in $log_dir)"
fi
echo "bindings: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#broken[@]} -eq 0 ]
