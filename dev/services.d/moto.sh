# shellcheck shell=bash
# moto: a local stand-in for AWS SNS and SQS, for the sns and sqs transports.
#
# `dev/services start moto` installs moto (`moto[server]` from PyPI) into a
# virtualenv cached in ${RELAYBOX_CACHE_DIR:-~/.cache/relaybox}/moto-venv
# (python3-venv comes from apt when missing) and runs `moto_server` in server
# mode on 127.0.0.1 only (port RELAYBOX_MOTO_PORT, default 5000), detached,
# with its pid file and log in <repo>/.dev/moto-<port>. Readiness is an HTTP
# probe of moto's own API (/moto-api/data.json). moto keeps its state in
# memory: a restart starts with no topics and no queues.
#
# `dev/services env moto` prints the endpoint and moto's test credentials:
#   RELAYBOX_AWS_ENDPOINT_URL=http://127.0.0.1:<port>, AWS_ACCESS_KEY_ID=testing,
#   AWS_SECRET_ACCESS_KEY=testing, AWS_DEFAULT_REGION=us-east-1.

OPTIONAL_SERVICES+=(moto)

MOTO_HOST=127.0.0.1
MOTO_PORT="${RELAYBOX_MOTO_PORT:-5000}"
MOTO_URL="http://$MOTO_HOST:$MOTO_PORT"
MOTO_STATE="$DEV_DIR/moto-$MOTO_PORT"
MOTO_PIDFILE="$MOTO_STATE/moto.pid"
MOTO_LOG="$MOTO_STATE/server.log"
MOTO_READY_TIMEOUT=60
MOTO_STOP_TIMEOUT=10

moto_venv() {
  printf '%s\n' "$(cache_root)/moto-venv"
}

# Creates the virtualenv and installs moto's server into it when missing.
moto_install() {
  local venv
  venv="$(moto_venv)"
  [[ -x "$venv/bin/moto_server" ]] && return 0
  command -v python3 >/dev/null 2>&1 || apt_install python3 || die "python3 is missing and could not be installed"
  if [[ ! -x "$venv/bin/pip" ]]; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      log "python3 -m venv failed; installing python3-venv with apt-get"
      local minor
      minor="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt_install python3-venv "python$minor-venv" || apt_install python3-venv ||
        die "could not install python3-venv"
      rm -rf "$venv"
      python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    fi
  fi
  log "installing moto[server] into $venv"
  local out
  out="$("$venv/bin/pip" install -q 'moto[server]' 2>&1 9>&-)" || {
    printf '%s\n' "$out" | tail -n 20 >&2
    die "pip could not install moto[server]"
  }
  [[ -x "$venv/bin/moto_server" ]] || die "moto[server] installed no moto_server in $venv"
}

# True when moto answers its own API on the configured address.
moto_ready() {
  local venv
  venv="$(moto_venv)"
  local py=python3
  [[ -x "$venv/bin/python" ]] && py="$venv/bin/python"
  "$py" - "$MOTO_URL/moto-api/data.json" <<'PY' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        json.load(r)
except Exception:
    sys.exit(1)
PY
}

# The pid of the server dev/services started, if it is still running.
moto_managed_pid() { managed_pid "$MOTO_PIDFILE" "moto_server -H $MOTO_HOST -p $MOTO_PORT"; }

start_moto() {
  reuse_if_up moto "$MOTO_URL" moto_ready "$(moto_managed_pid)" && return 0
  if [[ -z "$(moto_managed_pid)" ]]; then
    refuse_taken_port moto "$MOTO_HOST" "$MOTO_PORT" RELAYBOX_MOTO_PORT
    moto_install
    mkdir -p "$MOTO_STATE"
    local venv
    venv="$(moto_venv)"
    log "starting moto on $MOTO_URL (log $MOTO_LOG)"
    launch_detached "$MOTO_PIDFILE" "moto_server -H $MOTO_HOST -p $MOTO_PORT" "$MOTO_STATE" "$MOTO_LOG" \
      "$venv/bin/python" "$venv/bin/moto_server" -H "$MOTO_HOST" -p "$MOTO_PORT"
  fi
  wait_ready moto "$MOTO_URL" "$MOTO_READY_TIMEOUT" moto_ready moto_managed_pid "$MOTO_LOG"
  echo "moto: ready at $MOTO_URL"
}

stop_moto() {
  stop_managed moto "$MOTO_URL" "$(moto_managed_pid)" "$MOTO_PIDFILE" "$MOTO_STOP_TIMEOUT" moto_ready
}

# Returns 0 when the service is up, 1 otherwise.
status_moto() {
  status_managed moto "$MOTO_URL" "$(moto_managed_pid)" "" moto_ready
}

env_moto() {
  env_line RELAYBOX_AWS_ENDPOINT_URL "$MOTO_URL"
  env_line AWS_ACCESS_KEY_ID testing
  env_line AWS_SECRET_ACCESS_KEY testing
  env_line AWS_DEFAULT_REGION us-east-1
}
