#!/usr/bin/env bash
# The image's build and runtime stages without a container engine: what deploy/Dockerfile
# does, step by step, on a clean clone, then three nodes started from the runtime tree alone
# (dist/src, dist/gen, pruned node_modules, package.json), a write and a read through the
# `cairn` entrypoint, and a SIGTERM stop. Checks that the runtime stage lacks nothing the
# server needs and, under strace when there is one, that a node writes nothing outside its
# data dir (so readOnlyRootFilesystem holds).
#
#   bash deploy/smoke-runtime.sh                      # with the node and npm on PATH
#   CAIRN_SMOKE_NODE=/path/to/node26 bash deploy/smoke-runtime.sh
#
# Loopback only, free ports picked by the kernel, every wait bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODE=${CAIRN_SMOKE_NODE:-$(command -v node)}
NPM_CLI=${CAIRN_SMOKE_NPM_CLI:-$(readlink -f "$(command -v npm)")}
STARTUP_DEADLINE_SECONDS=60
STOP_DEADLINE_SECONDS=30
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-smoke.XXXXXX")
PIDS=()
STRACE_PID=

cleanup() {
  for pid in "${PIDS[@]}" $STRACE_PID; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { echo "smoke-runtime: $*"; }
npm_() { PATH="$(dirname "$NODE"):$PATH" "$NODE" "$NPM_CLI" "$@"; }

step "node $("$NODE" --version), npm $(npm_ --version); work dir $WORK"

# --- build stage: the Dockerfile's COPY and RUN lines, in order ---
# The committed state (HEAD), as CI's fresh clone has it.
git clone -q --no-checkout "$ROOT" "$WORK/clone"
git -C "$WORK/clone" checkout -q "$(git -C "$ROOT" rev-parse HEAD)"
mkdir "$WORK/build"
cp "$WORK/clone/package.json" "$WORK/clone/package-lock.json" "$WORK/clone/tsconfig.json" "$WORK/build/"
cp -r "$WORK/clone/gen" "$WORK/clone/src" "$WORK/build/"
(cd "$WORK/build" && npm_ ci --no-audit --no-fund --loglevel=error && npm_ run build --silent && npm_ prune --omit=dev --no-audit --no-fund --loglevel=error)

# --- runtime stage: only what the Dockerfile copies ---
APP="$WORK/app"
mkdir -p "$APP/dist"
cp "$WORK/build/package.json" "$APP/"
cp -r "$WORK/build/node_modules" "$APP/"
cp -r "$WORK/build/dist/gen" "$WORK/build/dist/src" "$APP/dist/"
if [ -e "$APP/node_modules/typescript" ] || [ -e "$APP/node_modules/jest" ]; then
  echo "smoke-runtime: FAIL: development dependencies survived npm prune" >&2; exit 1
fi
step "runtime tree: $(du -sh "$APP" | cut -f1) ($(ls "$APP/node_modules" | wc -l) top-level packages)"

# --- three nodes from the runtime tree ---
read -r -a PORTS <<<"$("$NODE" -e '
  const net = require("net");
  const servers = Array.from({ length: 6 }, () => net.createServer().listen(0, "127.0.0.1"));
  Promise.all(servers.map((s) => new Promise((r) => s.on("listening", r)))).then(() => {
    console.log(servers.map((s) => s.address().port).join(" "));
    servers.forEach((s) => s.close());
  });')"
PEERS="1=127.0.0.1:${PORTS[3]},2=127.0.0.1:${PORTS[4]},3=127.0.0.1:${PORTS[5]}"
ENDPOINTS="127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]}"
cairn() { (cd "$APP" && env -i PATH="$PATH" NODE_ENV=production "$NODE" "$APP/dist/src/cli/main.js" "$@"); }

for i in 1 2 3; do
  mkdir "$WORK/data-$i"
  launcher=()
  if [ "$i" = 1 ] && command -v strace >/dev/null 2>&1; then
    launcher=(strace -f -qq -o "$WORK/strace-1" -e trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat)
  fi
  (cd "$APP" && exec env -i PATH="$PATH" NODE_ENV=production CAIRN_ID="$i" CAIRN_PEERS="$PEERS" \
    CAIRN_DATA_DIR="$WORK/data-$i" CAIRN_CLIENT_ADDR="127.0.0.1:${PORTS[$((i - 1))]}" \
    CAIRN_PEER_ADDR="127.0.0.1:${PORTS[$((i + 2))]}" CAIRN_CLUSTER_TOKEN=smoke \
    "${launcher[@]}" "$NODE" "$APP/dist/src/cli/main.js" serve) >"$WORK/node-$i.log" 2>&1 &
  pid=$!
  if [ ${#launcher[@]} -gt 0 ]; then
    # Signal node itself, not strace (which would detach and leave it running).
    for _ in $(seq 50); do child=$(pgrep -P "$pid" || true); [ -n "$child" ] && break; sleep 0.1; done
    [ -n "$child" ] || { echo "smoke-runtime: FAIL: node 1 did not start under strace" >&2; exit 1; }
    PIDS+=("$child"); STRACE_PID=$pid
  else
    PIDS+=("$pid")
  fi
done

deadline=$((SECONDS + STARTUP_DEADLINE_SECONDS))
until cairn status -e "$ENDPOINTS" --timeout-ms 2000 >"$WORK/status.txt" 2>&1; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "smoke-runtime: FAIL: no serving cluster within ${STARTUP_DEADLINE_SECONDS}s" >&2
    cat "$WORK/status.txt" "$WORK"/node-*.log >&2; exit 1
  fi
  sleep 0.5
done
step "$(tail -1 "$WORK/status.txt")"

cairn put -e "$ENDPOINTS" smoke/key "from the runtime tree" >/dev/null
value=$(cairn get -e "$ENDPOINTS" smoke/key)
[ "$value" = "from the runtime tree" ] || { echo "smoke-runtime: FAIL: read back \"$value\"" >&2; exit 1; }
step "put and get through the entrypoint: ok"

# --- SIGTERM: every node stops by itself, exit code 0, well within the grace period ---
for pid in "${PIDS[@]}"; do kill -TERM "$pid"; done
deadline=$((SECONDS + STOP_DEADLINE_SECONDS))
for i in 0 1 2; do
  while kill -0 "${PIDS[$i]}" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "smoke-runtime: FAIL: node $((i + 1)) still running ${STOP_DEADLINE_SECONDS}s after SIGTERM" >&2; exit 1; fi
    sleep 0.2
  done
  # node 1's exit code comes through strace, which exits with its tracee's code.
  waited=${PIDS[$i]}; [ "$i" = 0 ] && [ -n "${STRACE_PID:-}" ] && waited=$STRACE_PID
  status=0; wait "$waited" || status=$?
  [ "$status" = 0 ] || { echo "smoke-runtime: FAIL: node $((i + 1)) exited $status" >&2; cat "$WORK/node-$((i + 1)).log" >&2; exit 1; }
  grep -q '"msg":"stopped"' "$WORK/node-$((i + 1)).log" || { echo "smoke-runtime: FAIL: node $((i + 1)) logged no \"stopped\"" >&2; exit 1; }
done
PIDS=()
step "SIGTERM: all three stopped with exit code 0"

# --- read-only root: node 1 created, renamed or removed nothing outside its data dir ---
if [ -f "$WORK/strace-1" ]; then
  outside=$(grep -E 'O_WRONLY|O_RDWR|O_CREAT|mkdir|rename|unlink' "$WORK/strace-1" \
    | grep -v -F "$WORK/data-1" | grep -v -E '"/dev/|= -1 E' || true)
  inside=$(grep -E 'O_CREAT' "$WORK/strace-1" | grep -c -F "$WORK/data-1" || true)
  [ "$inside" -gt 0 ] || { echo "smoke-runtime: FAIL: the trace shows no write even in the data dir: strace saw nothing" >&2; exit 1; }
  if [ -n "$outside" ]; then
    echo "smoke-runtime: FAIL: node 1 wrote outside its data dir:" >&2; echo "$outside" >&2; exit 1
  fi
  step "strace: node 1 wrote only under its data dir"
else
  step "strace not found: the read-only-root check was skipped"
fi
step "ok"
