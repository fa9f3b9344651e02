#!/usr/bin/env bash
# What CI runs for the Python client: installs Debian's protoc, grpc_python_plugin, grpcio
# and protobuf when missing, builds dist/ when missing (the tests start `cairn cluster` from
# it), then runs test_client.py (which also checks that cairn_client/gen matches proto/).
# Exits non-zero on any failure; the last line is "python client: N passed, M failed".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# Debian's interpreter: it sees python3-grpcio and python3-protobuf (a python3 earlier on
# PATH, such as pyenv's, may not).
PYTHON="${PYTHON:-/usr/bin/python3}"
packages=(protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf)

have_tools() {
  command -v protoc >/dev/null 2>&1 && command -v grpc_python_plugin >/dev/null 2>&1 &&
    [ -x "$PYTHON" ] && "$PYTHON" -c 'import grpc, google.protobuf' >/dev/null 2>&1
}
if ! have_tools; then
  echo "installing ${packages[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
  have_tools || { echo "run-tests.sh: protoc, grpc_python_plugin or $PYTHON with grpc still missing" >&2; exit 1; }
fi

if [ ! -d "$here/cairn_client/gen" ]; then
  bash "$here/generate.sh"
fi

if [ ! -f "$repo/dist/src/cli/main.js" ]; then
  (cd "$repo" && npm run build)
fi

cd "$here"
output="$(mktemp)"
trap 'rm -f "$output"' EXIT
status=0
"$PYTHON" test_client.py 2>&1 | tee "$output" || status=$?
if ! grep -q '^python client: [0-9]* passed, [0-9]* failed' "$output"; then
  # It ended before it could count (an import error, say): still one summary line.
  echo "python client: 0 passed, 1 failed (test_client.py exited with code $status before reporting)"
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
