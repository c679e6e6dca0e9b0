#!/usr/bin/env bash
# Install the browser used by tests/test_browser.py: Debian's chromium at /usr/bin/chromium.
#
# Idempotent: does nothing when /usr/bin/chromium already exists. Never runs `playwright install`
# (playwright only drives this system browser). As root, installs with apt and fails loudly on error.
# Not root and chromium missing: prints how to install it and exits 0 (the browser tests then skip
# locally; with CI=true they fail instead).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser: $CHROMIUM is missing and this is not root; install it with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
    echo "install_browser: browser tests will be skipped (they fail when CI=true)." >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! apt-get update -qq >"$log" 2>&1; then
    echo "install_browser: apt-get update failed:" >&2
    cat "$log" >&2
    exit 1
fi
if ! apt-get install -y -qq --no-install-recommends chromium >"$log" 2>&1; then
    echo "install_browser: apt-get install chromium failed:" >&2
    cat "$log" >&2
    exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser: chromium package installed but $CHROMIUM is missing" >&2
    exit 1
fi
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
