#!/usr/bin/env bash
# Installs what the bindings tests and the mobile demo need, and only what is missing:
#
#   Debian  libjna-java (JNA, which the generated Kotlin loads the library with),
#           libkotlinx-coroutines-java + libkotlinx-atomicfu-java (the generated Kotlin's async
#           calls are suspend functions), default-jdk-headless if there is no java at all
#   PyPI    pytest, pytest-asyncio (the Python tests)
#   npm     kotlin-compiler@2.4.20 (a JVM kotlinc) into .tools/kotlin/ (git-ignored)
#
# Idempotent: a second run installs nothing. `apt-get update` runs once, and only if a Debian
# package must be installed. Run as root (as CI and the developer machines are), or with sudo.
#
#   bash bindings/install-deps.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
KOTLIN_COMPILER_VERSION=2.4.20
tools="$root/.tools"

sudo_=()
if [ "$(id -u)" != 0 ]; then
  sudo_=(sudo)
fi

# --- Debian packages ---------------------------------------------------------------------
need_apt=()
for pkg in libjna-java libkotlinx-coroutines-java libkotlinx-atomicfu-java; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    need_apt+=("$pkg")
  fi
done
if ! command -v java >/dev/null 2>&1; then
  need_apt+=(default-jdk-headless)
fi
if ! command -v npm >/dev/null 2>&1; then
  need_apt+=(nodejs npm)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  "${sudo_[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
else
  echo "== Debian packages: all present"
fi

# --- Python packages ---------------------------------------------------------------------
python=${PYTHON:-python3}
if "$python" -c "import pytest, pytest_asyncio" 2>/dev/null; then
  echo "== pytest, pytest-asyncio: present"
else
  echo "== pip install pytest pytest-asyncio"
  pip_=("$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
  # A Debian-managed python refuses plain installs (PEP 668); these two test tools are safe to add.
  "${pip_[@]}" pytest pytest-asyncio || "${pip_[@]}" --break-system-packages pytest pytest-asyncio
fi

# --- kotlinc from npm --------------------------------------------------------------------
kotlin_dir="$tools/kotlin"
installed=$(node -p "require('$kotlin_dir/node_modules/kotlin-compiler/package.json').version" 2>/dev/null || true)
if [ "$installed" = "$KOTLIN_COMPILER_VERSION" ]; then
  echo "== kotlin-compiler $KOTLIN_COMPILER_VERSION: present"
else
  echo "== npm install kotlin-compiler@$KOTLIN_COMPILER_VERSION into $kotlin_dir"
  mkdir -p "$kotlin_dir"
  npm install --silent --no-audit --no-fund --prefix "$kotlin_dir" "kotlin-compiler@$KOTLIN_COMPILER_VERSION"
fi

echo "install-deps: done"
