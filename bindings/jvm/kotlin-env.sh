# Sourced by bindings/test.sh and mobile-demo/run-scenario.sh: where kotlinc, JNA and
# kotlinx-coroutines are, and how the generated Kotlin is compiled into a jar once.
#
# After `source bindings/jvm/kotlin-env.sh`:
#   $KOTLINC            the JVM kotlinc (npm kotlin-compiler, installed by bindings/install-deps.sh)
#   $JVM_DEPS           JNA, kotlinx-coroutines, atomicfu and the Kotlin stdlib (a class path)
#   $BINDINGS_JAR       the generated bindings + JVM shims, compiled (build_bindings_jar)
#   $NATIVE_DIR         where libfieldsync_bindings.so is (for -Djna.library.path)
#   build_bindings_jar  compiles $BINDINGS_JAR unless it is up to date
#   compile_kotlin_jar JAR CLASSPATH SOURCES...   the same for any jar
#   run_kotlin_main CLASS CLASSPATH ARGS...   runs a compiled main with the native library found

_fs_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_fs_target=${CARGO_TARGET_DIR:-$_fs_root/target}
_fs_kotlin_home="$_fs_root/.tools/kotlin/node_modules/kotlin-compiler"

KOTLINC="$_fs_kotlin_home/bin/kotlinc"
JVM_DEPS="/usr/share/java/jna.jar:/usr/share/java/kotlinx-coroutines-core.jar:/usr/share/java/atomicfu.jar:$_fs_kotlin_home/lib/kotlin-stdlib.jar"
JVM_OUT="$_fs_target/bindings/jvm"
BINDINGS_JAR="$JVM_OUT/fieldsync-bindings.jar"
NATIVE_DIR="$_fs_target/bindings/native"
GENERATED_KT="$_fs_target/bindings/kotlin/org/fieldsync/fieldsync.kt"

for _fs_need in "$KOTLINC" /usr/share/java/jna.jar /usr/share/java/kotlinx-coroutines-core.jar /usr/share/java/atomicfu.jar; do
  if [ ! -e "$_fs_need" ]; then
    echo "error: $_fs_need is missing: run bash bindings/install-deps.sh" >&2
    return 1 2>/dev/null || exit 1
  fi
done

# kotlinc: no daemon (one-shot builds), warnings kept short.
kotlinc_() {
  "$KOTLINC" -nowarn -jvm-target 17 "$@"
}

# compile_kotlin_jar JAR CLASSPATH SOURCES...: compiles SOURCES into JAR unless JAR was built
# from the same sources against the same class path. By content, not time: generate.sh rewrites
# the generated sources on every run, mostly unchanged, and kotlinc is the slow part here.
compile_kotlin_jar() {
  local jar=$1 cp=$2
  shift 2
  local digest
  digest=$( (cat "$@"; echo "$cp"; for j in ${cp//:/ }; do cat "$j.sha256" 2>/dev/null || true; done) | sha256sum | cut -d' ' -f1)
  if [ -s "$jar" ] && [ "$(cat "$jar.sha256" 2>/dev/null)" = "$digest" ]; then
    echo "== $(basename "$jar") is up to date"
    return 0
  fi
  mkdir -p "$(dirname "$jar")"
  echo "== kotlinc -> $jar"
  kotlinc_ -cp "$cp" -d "$jar.tmp.jar" "$@" || return 1
  mv "$jar.tmp.jar" "$jar"
  echo "$digest" > "$jar.sha256"
}

build_bindings_jar() {
  if [ ! -s "$GENERATED_KT" ]; then
    echo "error: $GENERATED_KT is missing: run bash bindings/generate.sh" >&2
    return 1
  fi
  compile_kotlin_jar "$BINDINGS_JAR" "$JVM_DEPS" "$GENERATED_KT" "$_fs_root"/bindings/jvm/*.kt
}

run_kotlin_main() {
  local class=$1 cp=$2
  shift 2
  java -Djna.library.path="$NATIVE_DIR" -cp "$cp:$BINDINGS_JAR:$JVM_DEPS" "$class" "$@"
}
