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

# The pid of the server dev/services started, if it is still running.
prometheus_managed_pid() { managed_pid "$PROMETHEUS_PIDFILE" "--config.file=$PROMETHEUS_CONFIG"; }

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
  reuse_if_up prometheus "$PROMETHEUS_URL" prometheus_ready "$(prometheus_managed_pid)" && return 0
  if [[ -z "$(prometheus_managed_pid)" ]]; then
    refuse_taken_port prometheus "$PROMETHEUS_HOST" "$PROMETHEUS_PORT" RELAYBOX_PROMETHEUS_PORT
    prometheus_install
    prometheus_write_config
    log "starting Prometheus on $PROMETHEUS_URL (log $PROMETHEUS_LOG)"
    launch_detached "$PROMETHEUS_PIDFILE" "--config.file=$PROMETHEUS_CONFIG" "$PROMETHEUS_STATE" "$PROMETHEUS_LOG" \
      /usr/bin/prometheus --config.file="$PROMETHEUS_CONFIG" \
      --storage.tsdb.path="$PROMETHEUS_STATE/data" \
      --storage.tsdb.retention.time=1d \
      --web.listen-address="$PROMETHEUS_HOST:$PROMETHEUS_PORT"
  fi
  wait_ready prometheus "$PROMETHEUS_URL" "$PROMETHEUS_READY_TIMEOUT" prometheus_ready prometheus_managed_pid "$PROMETHEUS_LOG"
  echo "prometheus: ready at $PROMETHEUS_URL"
}

stop_prometheus() {
  stop_managed prometheus "$PROMETHEUS_URL" "$(prometheus_managed_pid)" "$PROMETHEUS_PIDFILE" "$PROMETHEUS_STOP_TIMEOUT" prometheus_ready
}

# Returns 0 when the service is up, 1 otherwise.
status_prometheus() {
  status_managed prometheus "$PROMETHEUS_URL" "$(prometheus_managed_pid)" "targets $PROMETHEUS_TARGETS" prometheus_ready
}

env_prometheus() {
  env_line RELAYBOX_PROMETHEUS_URL "$PROMETHEUS_URL"
  env_line RELAYBOX_PROMETHEUS_TARGETS_DIR "$PROMETHEUS_TARGETS"
}
