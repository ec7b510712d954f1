# shellcheck shell=bash
# Prometheus, to scrape the /metrics endpoint of `relaybox relay --listen`
# in tests, sourced by dev/services.
#
# The server of Debian's `prometheus` package (/usr/bin/prometheus, installed
# with apt-get when missing; the package's own service is not used) on
# 127.0.0.1 only, port RELAYBOX_PROMETHEUS_PORT (default 9090), detached,
# with its configuration, data, pid file and log in <repo>/.dev/prometheus-<port>.
# It scrapes every second (scrape_interval 1s) the targets listed in the
# file_sd files <state>/targets/*.json, read again every second: a test adds
# its relay as a target by writing a file there, e.g.
#   [{"targets": ["127.0.0.1:9187"], "labels": {"test": "metrics"}}]
# and removes the file when done. Readiness is an HTTP probe of /-/ready.
#
# `dev/services env prometheus` prints RELAYBOX_PROMETHEUS_URL (the HTTP API,
# e.g. $RELAYBOX_PROMETHEUS_URL/api/v1/query) and
# RELAYBOX_PROMETHEUS_TARGETS_DIR (where target files go).

OPTIONAL_SERVICES+=(prometheus)

PROMETHEUS_HOST=127.0.0.1
PROMETHEUS_PORT="${RELAYBOX_PROMETHEUS_PORT:-9090}"
PROMETHEUS_URL="http://$PROMETHEUS_HOST:$PROMETHEUS_PORT"
PROMETHEUS_STATE="$DEV_DIR/prometheus-$PROMETHEUS_PORT"
PROMETHEUS_TARGETS="$PROMETHEUS_STATE/targets"
PROMETHEUS_CONFIG="$PROMETHEUS_STATE/prometheus.yml"
PROMETHEUS_PIDFILE="$PROMETHEUS_STATE/prometheus.pid"
PROMETHEUS_LOG="$PROMETHEUS_STATE/server.log"
PROMETHEUS_READY_TIMEOUT=60
PROMETHEUS_STOP_TIMEOUT=20

prometheus_install() {
  [[ -x /usr/bin/prometheus ]] && return 0
  log "installing prometheus (apt-get)"
  apt_install prometheus || die "could not install Debian's prometheus package"
  [[ -x /usr/bin/prometheus ]] || die "the prometheus package installed no /usr/bin/prometheus"
  # The package's own service is not wanted: relaybox runs its own server.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
}

prometheus_ready() {
  curl -fsS --max-time 3 "$PROMETHEUS_URL/-/ready" >/dev/null 2>&1
}

prometheus_port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$PROMETHEUS_HOST" "$PROMETHEUS_PORT" 2>/dev/null
}

# Pid of the server started by this script when it is still running, else "".
prometheus_managed_pid() {
  local pid
  pid="$(cat "$PROMETHEUS_PIDFILE" 2>/dev/null)" || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "--config.file=$PROMETHEUS_CONFIG"; then
    printf '%s\n' "$pid"
  fi
}

prometheus_write_config() {
  mkdir -p "$PROMETHEUS_TARGETS" "$PROMETHEUS_STATE/data"
  cat >"$PROMETHEUS_CONFIG" <<EOF
# Written by dev/services (dev/services.d/prometheus.sh).
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: relaybox
    file_sd_configs:
      - files: ["$PROMETHEUS_TARGETS/*.json"]
        refresh_interval: 1s
EOF
}

start_prometheus() {
  if prometheus_ready; then
    [[ -n "$(prometheus_managed_pid)" ]] || log "reusing the Prometheus server already listening at $PROMETHEUS_URL"
    echo "prometheus: ready at $PROMETHEUS_URL"
    return 0
  fi
  if [[ -z "$(prometheus_managed_pid)" ]]; then
    if prometheus_port_open; then
      die "$PROMETHEUS_HOST:$PROMETHEUS_PORT is taken by a server that does not answer as Prometheus; stop it or set RELAYBOX_PROMETHEUS_PORT"
    fi
    prometheus_install
    prometheus_write_config
    [[ -f "$PROMETHEUS_LOG" ]] && mv -f "$PROMETHEUS_LOG" "$PROMETHEUS_LOG.1"
    log "starting Prometheus on $PROMETHEUS_URL (log $PROMETHEUS_LOG)"
    (
      cd "$PROMETHEUS_STATE" || exit 1
      # shellcheck disable=SC2016 # expanded by the inner bash
      setsid bash -c 'echo $$ >"$0"; exec nohup "$@"' "$PROMETHEUS_PIDFILE" \
        /usr/bin/prometheus --config.file="$PROMETHEUS_CONFIG" \
        --storage.tsdb.path="$PROMETHEUS_STATE/data" \
        --storage.tsdb.retention.time=1d \
        --web.listen-address="$PROMETHEUS_HOST:$PROMETHEUS_PORT" \
        >"$PROMETHEUS_LOG" 2>&1 </dev/null 9>&- &
    )
    local i
    for ((i = 0; i < 50; i++)); do
      [[ -n "$(prometheus_managed_pid)" ]] && break
      sleep 0.1
    done
  fi
  local deadline=$((SECONDS + PROMETHEUS_READY_TIMEOUT))
  until prometheus_ready; do
    if [[ -z "$(prometheus_managed_pid)" ]]; then
      [[ -f "$PROMETHEUS_LOG" ]] && tail -n 20 "$PROMETHEUS_LOG" >&2
      die "Prometheus exited during startup (log $PROMETHEUS_LOG)"
    fi
    if ((SECONDS >= deadline)); then
      [[ -f "$PROMETHEUS_LOG" ]] && tail -n 20 "$PROMETHEUS_LOG" >&2
      die "Prometheus did not answer at $PROMETHEUS_URL within ${PROMETHEUS_READY_TIMEOUT}s (still running: dev/services stop prometheus)"
    fi
    sleep 0.3
  done
  echo "prometheus: ready at $PROMETHEUS_URL"
}

stop_prometheus() {
  local pid i
  pid="$(prometheus_managed_pid)"
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < PROMETHEUS_STOP_TIMEOUT * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "Prometheus (pid $pid) still running after ${PROMETHEUS_STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PROMETHEUS_PIDFILE"
    echo "prometheus: stopped"
  elif prometheus_ready; then
    echo "prometheus: not started by dev/services; server at $PROMETHEUS_URL left running"
  else
    rm -f "$PROMETHEUS_PIDFILE"
    echo "prometheus: not running"
  fi
}

# Returns 0 when the service is up, 1 otherwise.
status_prometheus() {
  local pid
  pid="$(prometheus_managed_pid)"
  if prometheus_ready; then
    if [[ -n "$pid" ]]; then
      echo "prometheus: up at $PROMETHEUS_URL (pid $pid, targets $PROMETHEUS_TARGETS)"
    else
      echo "prometheus: up at $PROMETHEUS_URL (not managed by dev/services)"
    fi
    return 0
  fi
  if [[ -n "$pid" ]]; then
    echo "prometheus: down (process $pid running but not answering at $PROMETHEUS_URL)"
  else
    echo "prometheus: down"
  fi
  return 1
}

env_prometheus() {
  echo "export RELAYBOX_PROMETHEUS_URL=$PROMETHEUS_URL"
  echo "export RELAYBOX_PROMETHEUS_TARGETS_DIR=$PROMETHEUS_TARGETS"
}
