#!/usr/bin/env bash
# Regenerates the Python stubs of cairn's client API (proto/cairn/kv/v1/kv.proto and the
# cairn protos it imports) into clients/python/cairn_client/gen, with Debian's protoc and
# grpc_python_plugin.
#
#   generate.sh            rewrite cairn_client/gen
#   generate.sh --check    regenerate into a temporary folder and compare byte for byte with
#                          the committed cairn_client/gen (exit 1 and show the difference if
#                          it drifted, e.g. after a change to kv.proto without regenerating)
#
# protoc's Python output imports its dependencies by their proto path (`from cairn.kv.v1
# import kv_pb2`); the stubs live inside the cairn_client package, so those imports are
# rewritten to `from cairn_client.gen.cairn.kv.v1 import ...` (the only change made to
# protoc's output), and every folder gets an empty __init__.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
proto_root="$repo/proto"
entry="cairn/kv/v1/kv.proto"
committed="$here/cairn_client/gen"
PROTOC="${PROTOC:-protoc}"
GRPC_PYTHON_PLUGIN="${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin || true)}"

mode=write
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v "$PROTOC" >/dev/null || { echo "generate.sh: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
[ -n "$GRPC_PYTHON_PLUGIN" ] && [ -x "$GRPC_PYTHON_PLUGIN" ] || {
  echo "generate.sh: grpc_python_plugin not found (apt-get install protobuf-compiler-grpc)" >&2; exit 1; }

# The entry file and every cairn proto it imports, transitively (google/protobuf/* come
# with the protobuf runtime and are not generated here).
protos=()
pending=("$entry")
while [ "${#pending[@]}" -gt 0 ]; do
  file="${pending[0]}"
  pending=("${pending[@]:1}")
  case " ${protos[*]:-} " in *" $file "*) continue ;; esac
  [ -f "$proto_root/$file" ] || { echo "generate.sh: $proto_root/$file not found" >&2; exit 1; }
  protos+=("$file")
  while IFS= read -r dep; do pending+=("$dep"); done < <(
    sed -n 's/^[[:space:]]*import[[:space:]]\{1,\}\(public[[:space:]]\{1,\}\|weak[[:space:]]\{1,\}\)\{0,1\}"\(cairn\/[^"]*\)";.*/\2/p' "$proto_root/$file")
done
# A stable order, so the output does not depend on the order of the imports.
mapfile -t protos < <(printf '%s\n' "${protos[@]}" | LC_ALL=C sort)

generate_into() {
  local out="$1"
  mkdir -p "$out"
  "$PROTOC" -I "$proto_root" \
    --python_out="$out" \
    --grpc_python_out="$out" \
    --plugin=protoc-gen-grpc_python="$GRPC_PYTHON_PLUGIN" \
    "${protos[@]}"
  find "$out" -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 sed -i 's/^from cairn\./from cairn_client.gen.cairn./'
  find "$out" -type d -print0 | while IFS= read -r -d '' dir; do : > "$dir/__init__.py"; done
}

if [ "$mode" = write ]; then
  rm -rf "$committed"
  generate_into "$committed"
  echo "generated ${protos[*]} into ${committed#"$repo"/} ($("$PROTOC" --version))"
  exit 0
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
generate_into "$scratch/gen"
if [ ! -d "$committed" ]; then
  echo "generate.sh --check: ${committed#"$repo"/} is missing: run clients/python/generate.sh" >&2
  exit 1
fi
if ! diff -r -x __pycache__ "$committed" "$scratch/gen" >"$scratch/diff"; then
  echo "generate.sh --check: ${committed#"$repo"/} differs from what $("$PROTOC" --version) generates from proto/: run clients/python/generate.sh and commit the result" >&2
  sed 's#'"$scratch"'/gen#(regenerated)#g' "$scratch/diff" | head -n 40 >&2
  exit 1
fi
echo "generate.sh --check: ${committed#"$repo"/} matches proto/ (${protos[*]})"
