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
  printf '%s\n' "$(kafka_cache_root)/moto-venv"
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

moto_port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$MOTO_HOST" "$MOTO_PORT" 2>/dev/null
}

# Pid of the server started by this script when it is still running, else "".
moto_managed_pid() {
  local pid
  pid="$(cat "$MOTO_PIDFILE" 2>/dev/null)" || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "moto_server -H $MOTO_HOST -p $MOTO_PORT"; then
    printf '%s\n' "$pid"
  fi
}

start_moto() {
  if moto_ready; then
    [[ -n "$(moto_managed_pid)" ]] || log "reusing the moto server already listening at $MOTO_URL"
    echo "moto: ready at $MOTO_URL"
    return 0
  fi
  if [[ -z "$(moto_managed_pid)" ]]; then
    if moto_port_open; then
      die "$MOTO_HOST:$MOTO_PORT is taken by a server that does not answer as moto; stop it or set RELAYBOX_MOTO_PORT"
    fi
    moto_install
    mkdir -p "$MOTO_STATE"
    [[ -f "$MOTO_LOG" ]] && mv -f "$MOTO_LOG" "$MOTO_LOG.1"
    local venv
    venv="$(moto_venv)"
    log "starting moto on $MOTO_URL (log $MOTO_LOG)"
    (
      cd "$MOTO_STATE" || exit 1
      # shellcheck disable=SC2016 # expanded by the inner bash
      setsid bash -c 'echo $$ >"$0"; exec nohup "$@"' "$MOTO_PIDFILE" \
        "$venv/bin/python" "$venv/bin/moto_server" -H "$MOTO_HOST" -p "$MOTO_PORT" \
        >"$MOTO_LOG" 2>&1 </dev/null 9>&- &
    )
    local i
    for ((i = 0; i < 50; i++)); do
      [[ -n "$(moto_managed_pid)" ]] && break
      sleep 0.1
    done
  fi
  local deadline=$((SECONDS + MOTO_READY_TIMEOUT))
  until moto_ready; do
    if [[ -z "$(moto_managed_pid)" ]]; then
      [[ -f "$MOTO_LOG" ]] && tail -n 20 "$MOTO_LOG" >&2
      die "moto exited during startup (log $MOTO_LOG)"
    fi
    if ((SECONDS >= deadline)); then
      [[ -f "$MOTO_LOG" ]] && tail -n 20 "$MOTO_LOG" >&2
      die "moto did not answer at $MOTO_URL within ${MOTO_READY_TIMEOUT}s (still running: dev/services stop moto)"
    fi
    sleep 0.3
  done
  echo "moto: ready at $MOTO_URL"
}

stop_moto() {
  local pid i
  pid="$(moto_managed_pid)"
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < MOTO_STOP_TIMEOUT * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "moto (pid $pid) still running after ${MOTO_STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$MOTO_PIDFILE"
    echo "moto: stopped"
  elif moto_ready; then
    echo "moto: not started by dev/services; server at $MOTO_URL left running"
  else
    rm -f "$MOTO_PIDFILE"
    echo "moto: not running"
  fi
}

# Returns 0 when the service is up, 1 otherwise.
status_moto() {
  local pid
  pid="$(moto_managed_pid)"
  if moto_ready; then
    if [[ -n "$pid" ]]; then
      echo "moto: up at $MOTO_URL (pid $pid)"
    else
      echo "moto: up at $MOTO_URL (not managed by dev/services)"
    fi
    return 0
  fi
  if [[ -n "$pid" ]]; then
    echo "moto: down (process $pid running but not answering at $MOTO_URL)"
  else
    echo "moto: down"
  fi
  return 1
}

env_moto() {
  echo "export RELAYBOX_AWS_ENDPOINT_URL=$MOTO_URL"
  echo "export AWS_ACCESS_KEY_ID=testing"
  echo "export AWS_SECRET_ACCESS_KEY=testing"
  echo "export AWS_DEFAULT_REGION=us-east-1"
}
