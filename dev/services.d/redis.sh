# shellcheck shell=bash
# Redis for the Redis Streams transport (and as a Celery broker), sourced by
# dev/services.
#
# A single redis-server from Debian's `redis-server` package (installed with
# apt-get when missing) on 127.0.0.1 only, port RELAYBOX_REDIS_PORT (default
# 6379), without a password. Its pid file, log and append-only file are in
# <repo>/.dev/redis-<port>. The server runs with `appendonly yes` and
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
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # The package's own service is not wanted: relaybox runs its own server.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
}

redis_ready() {
  command -v redis-cli >/dev/null || return 1
  [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

# The pid of the server this script started, if it is still running.
redis_managed_pid() {
  local pid
  [[ -f "$REDIS_PIDFILE" ]] || return 0
  pid="$(cat "$REDIS_PIDFILE" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

start_redis() {
  redis_install
  if redis_ready; then
    [[ -n "$(redis_managed_pid)" ]] || log "reusing the Redis server already listening on $REDIS_HOST:$REDIS_PORT"
    echo "redis: ready at redis://$REDIS_HOST:$REDIS_PORT"
    return 0
  fi
  mkdir -p "$REDIS_STATE"
  log "starting redis-server on $REDIS_HOST:$REDIS_PORT (log $REDIS_LOG)"
  redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --daemonize yes \
    --dir "$REDIS_STATE" --save '' --appendonly yes --appendfsync always \
    --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" \
    --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$TLS_DIR/server.pem" \
    --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.pem" \
    --tls-auth-clients no 9>&- \
    || die "redis-server failed to start (log $REDIS_LOG)"
  local deadline=$((SECONDS + REDIS_READY_TIMEOUT))
  until redis_ready; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$REDIS_LOG" >&2 || true
      die "Redis did not answer on $REDIS_HOST:$REDIS_PORT within ${REDIS_READY_TIMEOUT}s"
    fi
    sleep 0.1
  done
  echo "redis: ready at redis://$REDIS_HOST:$REDIS_PORT"
}

stop_redis() {
  local pid i
  pid="$(redis_managed_pid)"
  if [[ -n "$pid" ]]; then
    # SIGTERM: redis-server finishes writing its append-only file, then exits.
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < REDIS_STOP_TIMEOUT * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "Redis (pid $pid) still running after ${REDIS_STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$REDIS_PIDFILE"
    echo "redis: stopped"
  elif redis_ready; then
    echo "redis: not started by dev/services; server at $REDIS_HOST:$REDIS_PORT left running"
  else
    rm -f "$REDIS_PIDFILE"
    echo "redis: not running"
  fi
}

# Returns 0 when the service is up, 1 otherwise.
status_redis() {
  local pid
  pid="$(redis_managed_pid)"
  if redis_ready; then
    if [[ -n "$pid" ]]; then
      echo "redis: up at redis://$REDIS_HOST:$REDIS_PORT (pid $pid, state $REDIS_STATE)"
    else
      echo "redis: up at redis://$REDIS_HOST:$REDIS_PORT (not managed by dev/services)"
    fi
    return 0
  fi
  echo "redis: down"
  return 1
}

env_redis() {
  echo "export RELAYBOX_REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT"
  echo "export REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT"
  echo "export RELAYBOX_REDIS_TLS_URL=rediss://localhost:$REDIS_TLS_PORT"
}
