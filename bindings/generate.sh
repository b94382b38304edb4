#!/usr/bin/env bash
# Builds libfieldsync_bindings and generates its Kotlin, Swift and Python sources.
#
#   bash bindings/generate.sh            # debug build of the workspace (what the tests use)
#   bash bindings/generate.sh --release  # optimised build, as an app would ship
#
# Output (build output, git-ignored), under $CARGO_TARGET_DIR or ./target:
#   bindings/kotlin/org/fieldsync/fieldsync.kt      package org.fieldsync (needs JNA + kotlinx-coroutines)
#   bindings/swift/FieldSync.swift, FieldSyncFFI.h, FieldSyncFFI.modulemap
#   bindings/python/fieldsync.py + libfieldsync_bindings.so   (`import fieldsync` with that folder on sys.path)
#   bindings/native/libfieldsync_bindings.so        what JNA loads (-Djna.library.path=<this folder>)
#
# The generator is the `uniffi-bindgen` binary of this workspace (crate uniffi-bindgen), which
# reads the interface from the built library itself ("library mode"), so the sources always
# match the library they are generated from.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

profile=debug
cargo_profile=()
case "${1:-}" in
  --release) profile=release; cargo_profile=(--release) ;;
  "") ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac

target=${CARGO_TARGET_DIR:-$root/target}
case "$(uname -s)" in
  Darwin) libfile=libfieldsync_bindings.dylib ;;
  *) libfile=libfieldsync_bindings.so ;;
esac

if [ "$profile" = debug ]; then
  echo "== building the workspace (debug): library, uniffi-bindgen, fieldsync-server"
  # The very build `cargo test --workspace` makes (features unified over the whole workspace),
  # so the tests, the server the bindings tests start and the library share one set of
  # artifacts: building one package alone would unify features differently and rebuild many
  # dependencies (minutes on two cores).
  cargo build --workspace --all-targets
else
  echo "== building fieldsync-bindings ($profile) and uniffi-bindgen"
  # The generator is a build tool: always the debug build, whatever the library's profile.
  cargo build -p fieldsync-bindings "${cargo_profile[@]}"
  cargo build -p uniffi-bindgen
fi

lib="$target/$profile/$libfile"
bindgen="$target/debug/uniffi-bindgen"
out="$target/bindings"
[ -f "$lib" ] || { echo "error: $lib was not built" >&2; exit 1; }

rm -rf "$out/kotlin" "$out/swift" "$out/python" "$out/native"
for language in kotlin swift python; do
  echo "== generating $language"
  # --no-format: the formatters (ktlint, swiftformat, yapf) are not needed to compile the output.
  "$bindgen" generate --library "$lib" --language "$language" --out-dir "$out/$language" --no-format
done

mkdir -p "$out/native"
cp "$lib" "$out/native/"
# Python's generated module loads the library from its own folder.
cp "$lib" "$out/python/"

# Nothing here can compile Swift: check at least that every piece was produced.
for f in kotlin/org/fieldsync/fieldsync.kt swift/FieldSync.swift swift/FieldSyncFFI.h \
         swift/FieldSyncFFI.modulemap python/fieldsync.py "python/$libfile" "native/$libfile"; do
  [ -s "$out/$f" ] || { echo "error: $out/$f was not generated" >&2; exit 1; }
done
echo "generated into $out: kotlin/ swift/ python/ native/"
