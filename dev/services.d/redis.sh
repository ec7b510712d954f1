# shellcheck shell=bash
# Redis for the Redis Streams transport (and as a Celery broker), sourced by
# dev/services.
#
# A single redis-server from Debian's `redis-server` package (installed with
# apt-get when missing) on 127.0.0.1 only, port RELAYBOX_REDIS_PORT (default
# 6379), without a password. Its pid file, log and append-only file are in
# <state dir>/redis-<port>. The server runs with `appendonly yes` and
# `appendfsync always`, so an entry whose XADD returned is on disk and a
# stop/start (as the outage tests do) loses nothing. Readiness is
# `redis-cli -p PORT ping` answering PONG. A server already answering on the
# port is reused and left running by stop. The server also serves TLS on
# RELAYBOX_REDIS_TLS_PORT (default the port + 1) with dev/services' test
# server certificate (valid for the name localhost; clients are not asked
# for a certificate); `env` exports its URL as RELAYBOX_REDIS_TLS_URL
# (rediss://localhost:PORT).
#
#   dev/services start redis     dev/services stop redis
#   dev/services status redis    eval "$(dev/services env redis)"

OPTIONAL_SERVICES+=(redis)

REDIS_HOST=127.0.0.1
REDIS_PORT="${RELAYBOX_REDIS_PORT:-6379}"
REDIS_TLS_PORT="${RELAYBOX_REDIS_TLS_PORT:-$((REDIS_PORT + 1))}"
REDIS_STATE="$DEV_DIR/redis-$REDIS_PORT"
REDIS_PIDFILE="$REDIS_STATE/redis.pid"
REDIS_LOG="$REDIS_STATE/redis.log"
REDIS_READY_TIMEOUT=20
REDIS_STOP_TIMEOUT=20

redis_install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "installing redis-server (apt-get)"
  apt_install redis-server || die "could not install redis-server with apt-get"
  # The package's own service is not wanted: relaybox runs its own server.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
}

redis_ready() {
  command -v redis-cli >/dev/null || return 1
  [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

# The pid of the server dev/services started, if it is still running.
redis_managed_pid() { managed_pid "$REDIS_PIDFILE" redis-server; }

start_redis() {
  redis_install
  reuse_if_up redis "redis://$REDIS_HOST:$REDIS_PORT" redis_ready "$(redis_managed_pid)" && return 0
  if [[ -z "$(redis_managed_pid)" ]]; then
    refuse_taken_port redis "$REDIS_HOST" "$REDIS_PORT" RELAYBOX_REDIS_PORT
    mkdir -p "$REDIS_STATE"
    log "starting redis-server on $REDIS_HOST:$REDIS_PORT (log $REDIS_LOG)"
    launch_detached "$REDIS_PIDFILE" redis-server "$REDIS_STATE" "$REDIS_LOG" \
      redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" \
      --dir "$REDIS_STATE" --save '' --appendonly yes --appendfsync always \
      --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$TLS_DIR/server.pem" \
      --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.pem" \
      --tls-auth-clients no
  fi
  wait_ready redis "redis://$REDIS_HOST:$REDIS_PORT" "$REDIS_READY_TIMEOUT" redis_ready redis_managed_pid "$REDIS_LOG"
  echo "redis: ready at redis://$REDIS_HOST:$REDIS_PORT"
}

# SIGTERM: redis-server finishes writing its append-only file, then exits.
stop_redis() {
  stop_managed redis "$REDIS_HOST:$REDIS_PORT" "$(redis_managed_pid)" "$REDIS_PIDFILE" "$REDIS_STOP_TIMEOUT" redis_ready
}

# Returns 0 when the service is up, 1 otherwise.
status_redis() {
  status_managed redis "redis://$REDIS_HOST:$REDIS_PORT" "$(redis_managed_pid)" "state $REDIS_STATE" redis_ready
}

env_redis() {
  env_line RELAYBOX_REDIS_URL "redis://$REDIS_HOST:$REDIS_PORT"
  env_line REDIS_URL "redis://$REDIS_HOST:$REDIS_PORT"
  env_line RELAYBOX_REDIS_TLS_URL "rediss://localhost:$REDIS_TLS_PORT"
}
