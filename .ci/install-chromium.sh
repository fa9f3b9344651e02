#!/usr/bin/env bash
# CI: Debian's chromium, which test/integration/status-page.test.ts drives headless through
# playwright-core (which never downloads a browser of its own). Run before `npm test`.
# Fails when chromium is missing and cannot be installed: the test would fail anyway.
set -euo pipefail
CHROMIUM="${CAIRN_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  echo "chromium present: $CHROMIUM"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "chromium is missing at $CHROMIUM and this is not root with apt-get: install Debian's chromium" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
"$CHROMIUM" --version
