#!/usr/bin/env bash
# Regenerates the Go stubs of cairn's client API (proto/cairn/kv/v1/kv.proto) into
# clients/go/gen, or into DIR when given: `generate.sh [DIR]` (smoke.sh generates into a
# temporary DIR and compares it with the committed stubs byte for byte).
#
# Needs protoc, protoc-gen-go and protoc-gen-go-grpc on PATH (Debian: protobuf-compiler,
# protoc-gen-go, protoc-gen-go-grpc). The Go import path is given here with protoc's M
# mapping flags, so the .proto files carry no go_package option.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/gen}"

# The stubs' Go import path is under the module go.mod names.
module_path="$(awk '$1 == "module" { print $2 }' "$here/go.mod")"
[ -n "$module_path" ] || { echo "generate.sh: $here/go.mod names no module" >&2; exit 1; }
proto_file="cairn/kv/v1/kv.proto"
go_package="$module_path/gen/cairn/kv/v1;kvv1"

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "generate.sh: $tool is not on PATH (see clients/go/README.md)" >&2; exit 1; }
done

# kv.proto imports nothing today. An import of another cairn file would need its own M
# mapping and its own place in gen/: say so instead of generating code that cannot build.
if grep -Eq '^[[:space:]]*import[[:space:]]+"cairn/' "$repo/proto/$proto_file"; then
  echo "generate.sh: $proto_file now imports another cairn .proto; add it (and its M mapping) here" >&2
  exit 1
fi

# Clear only what this script writes, so a stale file from a removed service cannot linger.
rm -rf "$out/cairn/kv/v1"
mkdir -p "$out"
protoc -I "$repo/proto" \
  --go_out="$out" --go_opt=paths=source_relative --go_opt="M$proto_file=$go_package" \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative --go-grpc_opt="M$proto_file=$go_package" \
  "$repo/proto/$proto_file"
