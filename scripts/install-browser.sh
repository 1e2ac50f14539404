#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/web/test_browser.py): Debian's `chromium` package,
# driven by Playwright for Python through executable_path=/usr/bin/chromium. Playwright's own browser
# download (`playwright install`) is never used. Idempotent: does nothing when Chromium is there.
# Needs root (or sudo) and the Debian package mirrors; ~22 s and ~500 MB on a fresh Debian 12.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "install-browser: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-browser: need root (or sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null

if [ ! -x "$CHROMIUM" ]; then
  echo "install-browser: apt-get finished but $CHROMIUM is missing" >&2
  exit 1
fi
echo "install-browser: installed $("$CHROMIUM" --version 2>/dev/null)"
