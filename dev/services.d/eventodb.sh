# shellcheck shell=bash
# Service `eventodb`: the EventoDB server (https://github.com/eventodb-hq/eventodb),
# a Go HTTP server (RPC API on POST /rpc) storing its messages in the dev
# PostgreSQL, sourced by dev/services.
#
# The server is built with `go build` from <repo>/../shared/vendor/eventodb
# when that folder exists, otherwise from a clone of the server's public
# repository at commit EVENTODB_COMMIT (cached in
# ${RELAYBOX_CACHE_DIR:-~/.cache/relaybox}/eventodb-src-<commit>). Its Go
# dependencies come from the Go module proxy. Go itself is the `go` on PATH
# (or /usr/local/go/bin/go), else Debian's `golang-go` (apt-get); it must be
# at least the version the server's go.mod names. The binary is cached in
# <dev dir>/eventodb-bin/<key>/eventodb, <key> being a hash of the source
# files (or the commit of a clone), so a second start does not rebuild.
#
# `start` starts postgres (see dev/services), creates the database
# RELAYBOX_EVENTODB_DB (default `eventodb`) and runs
# `eventodb serve -port RELAYBOX_EVENTODB_PORT -db-url postgres://...` (port
# default 18080; the server listens on every interface, not only loopback).
# The default namespace's token is generated here and kept, with the pid
# file and server.log, in <dev dir>/eventodb-<port>; through it the
# namespace `relaybox` is created with the RPC `ns.create`, and its token
# is kept there too. Readiness is GET /health answering, then an
# authenticated `sys.version`. `stop` sends SIGTERM (the data stays in
# PostgreSQL, so stop/start is an outage, not a reset); `status` checks
# /health; `env` prints RELAYBOX_EVENTODB_URL and, once a start created it,
# RELAYBOX_EVENTODB_TOKEN (the namespace token the tests read).
#
#   dev/services start eventodb     dev/services stop eventodb
#   dev/services status eventodb    eval "$(dev/services env eventodb)"

OPTIONAL_SERVICES+=(eventodb)

# The commit a clone is built from (the source in ../shared/vendor/eventodb).
EVENTODB_REPO_URL=https://github.com/eventodb-hq/eventodb
EVENTODB_COMMIT=dbf3e5f
EVENTODB_VENDOR="$REPO_ROOT/../shared/vendor/eventodb"
EVENTODB_HOST=127.0.0.1
EVENTODB_PORT="${RELAYBOX_EVENTODB_PORT:-18080}"
EVENTODB_URL="http://$EVENTODB_HOST:$EVENTODB_PORT"
EVENTODB_DB="${RELAYBOX_EVENTODB_DB:-eventodb}"
EVENTODB_NAMESPACE=relaybox
EVENTODB_STATE="$DEV_DIR/eventodb-$EVENTODB_PORT"
EVENTODB_PIDFILE="$EVENTODB_STATE/eventodb.pid"
EVENTODB_LOG="$EVENTODB_STATE/server.log"
EVENTODB_ADMIN_TOKEN_FILE="$EVENTODB_STATE/default.token"
EVENTODB_TOKEN_FILE="$EVENTODB_STATE/namespace.token"
EVENTODB_READY_TIMEOUT=30
EVENTODB_STOP_TIMEOUT=20

# The `go` binary: PATH, /usr/local/go, else Debian's golang-go.
eventodb_go() {
  if command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    echo /usr/local/go/bin/go
  else
    log "installing Go (apt-get install golang-go)"
    apt_install golang-go || die "Go is needed to build the EventoDB server; install it (apt-get install golang-go, or from go.dev)"
    command -v go || die "apt-get install golang-go did not provide go"
  fi
}

# The server's source folder (the `golang/` folder of its repository):
# the vendored copy, else a clone at EVENTODB_COMMIT.
eventodb_source() {
  if [[ -f "$EVENTODB_VENDOR/golang/go.mod" ]]; then
    (cd "$EVENTODB_VENDOR/golang" && pwd -P)
    return 0
  fi
  local dir tmp out
  dir="$(cache_root)/eventodb-src-$EVENTODB_COMMIT"
  if [[ ! -f "$dir/golang/go.mod" ]]; then
    command -v git >/dev/null 2>&1 || apt_install git || die "git is needed to clone $EVENTODB_REPO_URL"
    tmp="$(mktemp -d)"
    log "cloning $EVENTODB_REPO_URL at $EVENTODB_COMMIT"
    if ! out="$(git clone -q "$EVENTODB_REPO_URL" "$tmp/src" 2>&1 && git -C "$tmp/src" checkout -q "$EVENTODB_COMMIT" 2>&1)"; then
      rm -rf "$tmp"
      printf '%s\n' "$out" >&2
      die "could not clone $EVENTODB_REPO_URL (commit $EVENTODB_COMMIT)"
    fi
    mkdir -p "$(dirname "$dir")"
    rm -rf "$dir"
    mv "$tmp/src" "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir/golang"
}

# A key naming the source: the clone's commit, or a hash of the vendored files.
eventodb_source_key() {
  local src="$1"
  if [[ "$src" == "$(cache_root)/eventodb-src-"* ]]; then
    echo "$EVENTODB_COMMIT"
  else
    (cd "$src" && find . -type f ! -name '*_test.go' -print0 | LC_ALL=C sort -z |
      xargs -0 sha256sum | sha256sum | cut -c1-16)
  fi
}

# Path of the built server binary, built unless cached for this source.
eventodb_binary() {
  local src key bin go need have out
  # Command substitutions do not inherit `set -e`: a failure is passed on by hand.
  src="$(eventodb_source)" || exit 1
  key="$(eventodb_source_key "$src")" || exit 1
  bin="$DEV_DIR/eventodb-bin/$key/eventodb"
  if [[ -x "$bin" ]]; then
    echo "$bin"
    return 0
  fi
  go="$(eventodb_go)" || exit 1
  need="$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$src/go.mod" | head -n 1)"
  have="$("$go" env GOVERSION 2>/dev/null | sed 's/^go//')"
  if [[ -n "$need" && "$(printf '%s\n%s\n' "$need" "${have:-0}" | sort -V | head -n 1)" != "$need" ]]; then
    die "the EventoDB server needs Go $need or newer (go.mod); $go is ${have:-older than 1.21}: install a newer Go (go.dev/dl or a backports golang package)"
  fi
  mkdir -p "$(dirname "$bin")"
  log "building the EventoDB server from $src (go build; its modules come from the Go module proxy)"
  if ! out="$(cd "$src" && "$go" build -o "$bin.tmp" ./cmd/eventodb 2>&1 9>&-)"; then
    rm -f "$bin.tmp"
    printf '%s\n' "$out" | tail -n 30 >&2
    die "go build of the EventoDB server failed"
  fi
  mv "$bin.tmp" "$bin"
  echo "$bin"
}

# POST /rpc with the JSON body $1 and bearer token $2; prints the answer.
eventodb_rpc() {
  curl -s --max-time 10 -X POST "$EVENTODB_URL/rpc" \
    -H 'Content-Type: application/json' -H "Authorization: Bearer $2" -d "$1"
}

eventodb_healthy() {
  [[ "$(curl -s --max-time 2 "$EVENTODB_URL/health" 2>/dev/null)" == *'"ok"'* ]]
}

# The pid of the server this script started, if it is still running.
# The pid of the server dev/services started, if it is still running.
eventodb_managed_pid() { managed_pid "$EVENTODB_PIDFILE" "serve -port $EVENTODB_PORT"; }

eventodb_new_default_token() {
  printf 'ns_ZGVmYXVsdA_%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
}

# Creates the server's database unless it exists; a database without the
# tokens kept in the state directory (which the server only stores hashed)
# is dropped and created anew.
eventodb_prepare_database() {
  if pg_db_exists "$EVENTODB_DB" && [[ ! -s "$EVENTODB_ADMIN_TOKEN_FILE" || ! -s "$EVENTODB_TOKEN_FILE" ]]; then
    log "database $EVENTODB_DB has no tokens in $EVENTODB_STATE; creating it anew"
    pg_psql -c "DROP DATABASE \"$EVENTODB_DB\" WITH (FORCE)" >/dev/null
  fi
  if ! pg_db_exists "$EVENTODB_DB"; then
    rm -f "$EVENTODB_TOKEN_FILE"
    pg_psql -c "CREATE DATABASE \"$EVENTODB_DB\"" >/dev/null || die "could not create database $EVENTODB_DB"
  fi
  if [[ ! -s "$EVENTODB_ADMIN_TOKEN_FILE" ]]; then
    (umask 077 && eventodb_new_default_token >"$EVENTODB_ADMIN_TOKEN_FILE")
  fi
}

# Creates the namespace through `ns.create` unless its token is kept.
eventodb_ensure_namespace() {
  local admin answer token
  admin="$(cat "$EVENTODB_ADMIN_TOKEN_FILE")"
  if [[ -s "$EVENTODB_TOKEN_FILE" ]]; then
    answer="$(eventodb_rpc '["sys.version"]' "$(cat "$EVENTODB_TOKEN_FILE")")"
    [[ "$answer" != *'"error"'* ]] && return 0
    log "the kept namespace token is refused; creating namespace $EVENTODB_NAMESPACE anew"
    eventodb_rpc "[\"ns.delete\", \"$EVENTODB_NAMESPACE\"]" "$admin" >/dev/null
  fi
  answer="$(eventodb_rpc "[\"ns.create\", \"$EVENTODB_NAMESPACE\", {\"description\": \"relaybox tests\"}]" "$admin")"
  if [[ "$answer" == *NAMESPACE_EXISTS* ]]; then
    # Created by an earlier start whose token is lost: the server keeps only its hash.
    log "namespace $EVENTODB_NAMESPACE exists without a kept token; creating it anew"
    eventodb_rpc "[\"ns.delete\", \"$EVENTODB_NAMESPACE\"]" "$admin" >/dev/null
    answer="$(eventodb_rpc "[\"ns.create\", \"$EVENTODB_NAMESPACE\", {\"description\": \"relaybox tests\"}]" "$admin")"
  fi
  token="$(printf '%s' "$answer" | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')"
  if [[ -z "$token" ]]; then
    # The answer may be an error; it holds no token.
    die "ns.create $EVENTODB_NAMESPACE failed: $answer"
  fi
  (umask 077 && printf '%s\n' "$token" >"$EVENTODB_TOKEN_FILE")
}

start_eventodb() {
  local bin
  command -v curl >/dev/null 2>&1 || apt_install curl || die "curl is needed to talk to the EventoDB server"
  start_postgres >/dev/null
  mkdir -p "$EVENTODB_STATE"
  if eventodb_healthy && [[ -z "$(eventodb_managed_pid)" ]]; then
    die "a server not started by dev/services answers on $EVENTODB_URL; stop it or set RELAYBOX_EVENTODB_PORT"
  fi
  if [[ -z "$(eventodb_managed_pid)" ]]; then
    refuse_taken_port eventodb "$EVENTODB_HOST" "$EVENTODB_PORT" RELAYBOX_EVENTODB_PORT
    bin="$(eventodb_binary)" || exit 1
    eventodb_prepare_database
    log "starting the EventoDB server on port $EVENTODB_PORT (log $EVENTODB_LOG)"
    EVENTODB_TOKEN="$(cat "$EVENTODB_ADMIN_TOKEN_FILE")" launch_detached \
      "$EVENTODB_PIDFILE" "serve -port $EVENTODB_PORT" "$EVENTODB_STATE" "$EVENTODB_LOG" \
      "$bin" serve -port "$EVENTODB_PORT" -db-url "$PG_URL_BASE/$EVENTODB_DB?sslmode=disable" \
      -log-level warn -log-format json
  fi
  wait_ready eventodb "$EVENTODB_URL" "$EVENTODB_READY_TIMEOUT" eventodb_healthy eventodb_managed_pid "$EVENTODB_LOG"
  eventodb_ensure_namespace
  echo "eventodb: ready at $EVENTODB_URL (namespace $EVENTODB_NAMESPACE)"
}

stop_eventodb() {
  stop_managed eventodb "$EVENTODB_URL" "$(eventodb_managed_pid)" "$EVENTODB_PIDFILE" "$EVENTODB_STOP_TIMEOUT" eventodb_healthy
}

# Returns 0 when the service is up, 1 otherwise.
status_eventodb() {
  status_managed eventodb "$EVENTODB_URL" "$(eventodb_managed_pid)" "state $EVENTODB_STATE" eventodb_healthy
}

env_eventodb() {
  env_line RELAYBOX_EVENTODB_URL "$EVENTODB_URL"
  if [[ -s "$EVENTODB_TOKEN_FILE" ]]; then
    env_line RELAYBOX_EVENTODB_TOKEN "$(cat "$EVENTODB_TOKEN_FILE")"
  fi
}
