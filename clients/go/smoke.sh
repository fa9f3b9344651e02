#!/usr/bin/env bash
# What CI runs for the Go client (clients/go). It installs the Debian packages it needs when
# they are missing, checks that generate.sh reproduces the committed stubs byte for byte,
# builds, vets and unit-tests cairn-example against Debian's Go libraries (GOPATH mode: no
# module downloads), starts a local 3-node cluster on free ports, and through one follower
# alone puts a key and gets it back. Its last line is "go client: N passed, M failed"; the exit
# code is 1 when anything failed. About 20 s here with Go's build cache warm; 45 s from a fresh
# clone with a cold cache, the packages to install and dist/ to build.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cairn=(node "$repo/dist/src/cli/main.js")

# Debian's grpc (1.33) takes github.com/golang/protobuf 1.3 or 1.5; only 1.5 (built on
# google.golang.org/protobuf) can marshal what protoc-gen-go 1.28 generates (1.3 panics), so
# it is named here and replaces 1.3 when that is installed.
debian_packages=(protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-go
  golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev openssl)
# Where Debian's -dev packages put Go sources (the GOPATH layout: src/IMPORT/PATH).
debian_gopath=/usr/share/gocode
leader_deadline_seconds=30
cluster_stop_deadline_seconds=10
status_timeout_ms=2000
example_timeout=5s
# Client ports P..P+2 and peer ports P+500..P+502 (`cairn cluster` gives node N port + N - 1),
# P drawn from here, and P+3 for an endpoint nothing listens on.
port_range_first=23000
port_range_size=450
peer_port_offset=500
port_draws=20

passed=0
failed=0
tmp="$(mktemp -d)"
cluster_pid=""

pass() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1" >&2; }

stop_cluster() {
  [ -n "$cluster_pid" ] || return 0
  kill -TERM "$cluster_pid" 2>/dev/null
  local deadline=$((SECONDS + cluster_stop_deadline_seconds))
  while kill -0 "$cluster_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if kill -0 "$cluster_pid" 2>/dev/null; then
    echo "the cluster did not stop within ${cluster_stop_deadline_seconds} s of SIGTERM: SIGKILL (its nodes stop with it)" >&2
    kill -KILL "$cluster_pid" 2>/dev/null
  fi
  wait "$cluster_pid" 2>/dev/null
  cluster_pid=""
}

finish() {
  stop_cluster
  rm -rf "$tmp"
  echo "go client: $passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
}
trap 'finish; exit $?' EXIT
trap 'fail "interrupted"; exit 1' INT TERM

# A failure that leaves nothing further worth checking.
give_up() { fail "$1"; exit 1; }

install_missing_packages() {
  command -v dpkg-query >/dev/null 2>&1 || give_up "not a Debian system: install the equivalents of ${debian_packages[*]} (see clients/go/README.md)"
  local missing=() package
  for package in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || give_up "missing Debian packages ${missing[*]}: run as root, or apt-get install them"
  echo "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || give_up "apt-get install ${missing[*]} failed"
}

# GOPATH mode over Debian's sources: this directory is linked in under the module path
# go.mod names (GOPATH mode does not read go.mod; generate.sh does, for the stubs' import path).
setup_go() {
  module_path="$(awk '$1 == "module" { print $2 }' "$here/go.mod")"
  [ -n "$module_path" ] || give_up "clients/go/go.mod names no module"
  mkdir -p "$(dirname "$tmp/gopath/src/$module_path")"
  ln -s "$here" "$tmp/gopath/src/$module_path"
  export GO111MODULE=off GOPATH="$tmp/gopath:$debian_gopath" GOFLAGS= GOPROXY=off
  if [ -z "${GOCACHE:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${HOME:-}" ]; then
    export GOCACHE="$tmp/gocache"
  fi
}

check_stubs_reproduce() {
  if "$here/generate.sh" "$tmp/gen" && diff -r "$tmp/gen" "$here/gen"; then
    pass "generate.sh reproduces clients/go/gen byte for byte"
  else
    fail "clients/go/gen differs from what generate.sh produces now ($(protoc --version), $(protoc-gen-go --version 2>&1)): run clients/go/generate.sh and commit the result"
  fi
}

build_example() {
  go build -o "$tmp/cairn-example" "$module_path/example" || give_up "go build of cairn-example failed"
  pass "cairn-example builds"
}

check_vet_and_unit_tests() {
  local unformatted
  unformatted="$(gofmt -l "$here/example")"
  if [ -n "$unformatted" ]; then
    fail "not gofmt-formatted: $unformatted"
  elif go vet "$module_path/example" && go test "$module_path/example"; then
    pass "cairn-example: gofmt, go vet and unit tests"
  else
    fail "cairn-example: go vet or unit tests"
  fi
}

ports_free() {
  node -e '
    const net = require("node:net");
    const ports = process.argv.slice(1).map(Number);
    let left = ports.length, taken = false;
    for (const port of ports) {
      const server = net.createServer();
      const done = () => { if (--left === 0) process.exit(taken ? 1 : 0); };
      server.once("error", () => { taken = true; done(); });
      server.listen(port, "127.0.0.1", () => server.close(done));
    }' "$@"
}

pick_ports() {
  local draw
  for ((draw = 0; draw < port_draws; draw++)); do
    client_port=$((port_range_first + RANDOM % port_range_size))
    peer_port=$((client_port + peer_port_offset))
    dead_port=$((client_port + 3))
    if ports_free "$client_port" $((client_port + 1)) $((client_port + 2)) "$dead_port" \
      "$peer_port" $((peer_port + 1)) $((peer_port + 2)); then
      return 0
    fi
  done
  give_up "no free ports found in $port_draws draws from $port_range_first-$((port_range_first + port_range_size + peer_port_offset + 2))"
}

start_cluster() {
  if [ ! -f "$repo/dist/src/cli/main.js" ]; then
    echo "dist/ is missing: npm run build"
    (cd "$repo" && npm run build >/dev/null) || give_up "npm run build failed"
  fi
  pick_ports
  endpoints="127.0.0.1:$client_port,127.0.0.1:$((client_port + 1)),127.0.0.1:$((client_port + 2))"
  "${cairn[@]}" cluster --nodes 3 --data-dir "$tmp/data" --client-port "$client_port" --peer-port "$peer_port" \
    >"$tmp/cluster.log" 2>&1 &
  cluster_pid=$!
  echo "cluster started (pid $cluster_pid): client endpoints $endpoints"
}

# Waits until `cairn status` says the cluster serves and a follower knows the leader, and
# sets follower to that follower's client endpoint.
wait_for_follower() {
  local deadline=$((SECONDS + leader_deadline_seconds))
  follower=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$cluster_pid" 2>/dev/null || { tail -n 20 "$tmp/cluster.log" >&2; give_up "the cluster exited before it elected a leader"; }
    if "${cairn[@]}" status --endpoints "$endpoints" --timeout-ms "$status_timeout_ms" >"$tmp/status" 2>&1; then
      # ENDPOINT ID ROLE TERM LEADER COMMIT APPLIED
      follower="$(awk '$3 == "follower" && $5 != "0" { print $1; exit }' "$tmp/status")"
      [ -n "$follower" ] && break
    fi
    sleep 0.2
  done
  if [ -z "$follower" ]; then
    cat "$tmp/status" >&2
    give_up "no leader with a follower that knows it within ${leader_deadline_seconds} s"
  fi
  cat "$tmp/status"
  pass "the cluster elected a leader; follower $follower"
}

# expect NAME WANT_EXIT WANT_OUTPUT_REGEX ARGS...: runs cairn-example ARGS, checks both.
expect() {
  local name="$1" want_exit="$2" want_output="$3" output exit_code
  shift 3
  output="$("$tmp/cairn-example" -timeout "$example_timeout" "$@" 2>&1)"
  exit_code=$?
  if [ "$exit_code" -eq "$want_exit" ] && [[ "$output" =~ $want_output ]]; then
    pass "$name: $output"
  else
    fail "$name: cairn-example $* exited $exit_code (want $want_exit) with output: $output"
  fi
}

check_through_follower() {
  local key="go-smoke/$RANDOM$RANDOM" value="value with spaces, ünïcode and \$ $RANDOM"
  local quoted_value
  quoted_value="$(printf '%s' "$value" | sed 's/[][\.*^$(){}?+|/]/\\&/g')"
  expect "put through follower $follower alone" 0 '^OK \(revision [0-9]+\)$' -endpoints "$follower" put "$key" "$value"
  expect "linearizable get through follower $follower alone" 0 "^$quoted_value\$" -endpoints "$follower" get "$key"
  expect "get tries the next endpoint after UNAVAILABLE" 0 "^$quoted_value\$" -endpoints "127.0.0.1:$dead_port,$follower" get "$key"
  expect "get of a missing key" 1 "^\\(not found: $key/missing\\)\$" -endpoints "$follower" get "$key/missing"
  expect "put of an empty key is refused" 1 'INVALID_ARGUMENT from ' -endpoints "$follower" put "" "$value"
}

# One `cairn serve` with TLS on its client port and client certificates required, with a CA
# and certificates made now by openssl (docs/security.md); cairn-example with -cacert, -cert
# and -key puts and gets through it, and without a client certificate is refused.
check_tls() {
  local dir="$tmp/tls" tls_port tls_peer_port pid deadline ok=""
  mkdir -p "$dir"
  issue() {
    printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$2" >"$dir/$1.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/$1.key" -out "$dir/$1.csr" -subj "/CN=$1" &&
      openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
        -days 2 -out "$dir/$1.pem" -extfile "$dir/$1.ext"
  }
  { openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" \
      -subj /CN=go-smoke-ca -days 2 && issue server IP:127.0.0.1 && issue client URI:cairn-user:go-smoke; } >/dev/null 2>&1 \
    || { fail "openssl could not make the test certificates"; return; }
  tls_port=$((client_port + 3 + peer_port_offset + 10))
  tls_peer_port=$((tls_port + 1))
  ports_free "$tls_port" "$tls_peer_port" || { fail "TLS: ports $tls_port, $tls_peer_port taken"; return; }
  "${cairn[@]}" serve --id 1 --data-dir "$dir/data" --client-addr "127.0.0.1:$tls_port" --peer-addr "127.0.0.1:$tls_peer_port" \
    --cert-file "$dir/server.pem" --key-file "$dir/server.key" --client-ca-file "$dir/ca.pem" >"$dir/node.log" 2>&1 &
  pid=$!
  local tls_flags=(-cacert "$dir/ca.pem" -cert "$dir/client.pem" -key "$dir/client.key")
  deadline=$((SECONDS + leader_deadline_seconds))
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null; do
    if "$tmp/cairn-example" -timeout 1s -endpoints "127.0.0.1:$tls_port" "${tls_flags[@]}" put go-smoke/tls ready >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  if [ -z "$ok" ]; then
    tail -n 20 "$dir/node.log" >&2
    fail "TLS: the node never accepted a put with -cacert, -cert and -key"
  else
    expect "TLS: get with -cacert, -cert and -key" 0 '^ready$' -endpoints "127.0.0.1:$tls_port" "${tls_flags[@]}" get go-smoke/tls
    expect "TLS: without a client certificate the node refuses" 1 'UNAVAILABLE' -timeout 2s -endpoints "127.0.0.1:$tls_port" -cacert "$dir/ca.pem" get go-smoke/tls
    expect "TLS: -cert without -key is a usage error" 2 '-cert and -key go together' -endpoints "127.0.0.1:$tls_port" -cert "$dir/client.pem" get go-smoke/tls
  fi
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

install_missing_packages
setup_go
check_stubs_reproduce
build_example
check_vet_and_unit_tests
start_cluster
wait_for_follower
check_through_follower
check_tls
