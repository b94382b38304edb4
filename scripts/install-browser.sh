#!/bin/sh
# Installs what tests/tests/browser.rs drives: Debian's Chromium and its chromedriver, plus CJK
# fonts so the zh-CN dashboard (and its screenshots) shows Chinese instead of empty boxes.
#
# Idempotent: installs only what is missing, and runs apt-get only then. Needs root (or sudo).
set -eu

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
installed fonts-noto-cjk || missing="$missing fonts-noto-cjk"

if [ -z "$missing" ]; then
    echo "install-browser: chromium, chromium-driver and fonts-noto-cjk are already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-browser: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO apt-get install -y $missing

/usr/bin/chromium --version
/usr/bin/chromedriver --version
