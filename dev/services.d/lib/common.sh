# shellcheck shell=bash
# Helpers shared by every service of dev/services (sourced by it before the
# services in dev/services.d/*.sh): messages, the start/stop lock, apt
# installs, the shared download cache, TCP probes (a port that accepts, a
# request that gets its reply), and the life cycle of a server that
# dev/services starts as a detached process with a pid file: launch, wait
# until it answers (or fail with its log), stop (SIGTERM, then SIGKILL),
# status lines and `export` lines.

log() { printf 'dev/services: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Serialises start/stop so that concurrent invocations (two dev/test runs)
# do not both initialise or start the same server. The lock is fd 9: a
# started server must not inherit it (every launch closes it with 9>&-).
take_lock() {
  mkdir -p "$DEV_DIR"
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>>"$DEV_DIR/services.lock"
  flock -w 120 9 || die "timed out waiting for $DEV_DIR/services.lock"
}

# apt-get install as root (updating the package lists if the first attempt
# fails); its output is shown only on failure.
apt_install() {
  [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  local out
  out="$(apt-get install -y -qq "$@" 2>&1 9>&-)" && return 0
  out="$({ apt-get update -qq && apt-get install -y -qq "$@"; } 2>&1 9>&-)" && return 0
  printf '%s\n' "$out" | tail -n 20 >&2
  return 1
}

# The directory every clone shares for downloads and builds (the Kafka jars,
# the moto virtualenv, EventoDB's sources).
cache_root() {
  if [[ -n "${RELAYBOX_CACHE_DIR:-}" ]]; then
    printf '%s\n' "$RELAYBOX_CACHE_DIR"
  elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then
    printf '%s\n' "$XDG_CACHE_HOME/relaybox"
  elif [[ -n "${HOME:-}" ]]; then
    printf '%s\n' "$HOME/.cache/relaybox"
  else
    printf '%s\n' "$DEV_DIR/cache"
  fi
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# tcp_probe HOST PORT BYTES LENGTH: sends BYTES (printf escapes such as
# '\x00' allowed; pass them single-quoted) over a TCP connection to HOST:PORT
# and prints the first LENGTH bytes of the reply as lowercase hex without
# spaces. Prints less (or nothing) when the server closes early, nothing
# listens or nothing answers within 5 s; always returns 0, so the caller
# compares what it prints with the reply its protocol expects.
tcp_probe() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "$2" >&3
    head -c "$3" <&3
  ' "$1" "$2" "$3" "$4" 2>/dev/null | od -An -tx1 | tr -d ' \n' || true
}

# managed_pid PIDFILE [FRAGMENT]: prints the pid in PIDFILE when that process
# is alive and its command line holds FRAGMENT (when given); else nothing.
managed_pid() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 0
  [[ "$pid" =~ ^[0-9]+$ && -d "/proc/$pid" ]] || return 0
  if [[ -n "${2:-}" ]] && ! tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$2"; then
    return 0
  fi
  printf '%s\n' "$pid"
}

# launch_detached PIDFILE FRAGMENT DIR LOG COMMAND...: starts COMMAND in DIR
# in a session of its own, detached, output to LOG (the previous LOG kept as
# LOG.1); its pid goes to PIDFILE, written by the process itself before it
# becomes COMMAND. Returns once `managed_pid PIDFILE FRAGMENT` names it (at
# most 5 s; a command that exits at once is caught by wait_ready).
launch_detached() {
  local pidfile="$1" fragment="$2" dir="$3" logfile="$4" i
  shift 4
  [[ -f "$logfile" ]] && mv -f "$logfile" "$logfile.1"
  (
    cd "$dir" || exit 1
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'echo $$ >"$0"; exec nohup "$@"' "$pidfile" "$@" \
      >"$logfile" 2>&1 </dev/null 9>&- &
  )
  for ((i = 0; i < 50; i++)); do
    [[ -n "$(managed_pid "$pidfile" "$fragment")" ]] && return 0
    sleep 0.1
  done
}

# show_log SOURCE: SOURCE is a function (called) or a file (its last lines).
show_log() {
  if declare -F "$1" >/dev/null; then
    "$1"
  elif [[ -s "$1" ]]; then
    log "last lines of $1:"
    tail -n 20 "$1" >&2
  fi
}

# wait_ready SERVICE WHERE TIMEOUT READY PID LOG: polls the function READY
# until it succeeds. Fails, after show_log LOG, when the function PID prints
# nothing (the server exited) or TIMEOUT seconds pass. PID may be "" for a
# server that is not ours to watch.
wait_ready() {
  local service="$1" where="$2" timeout="$3" ready="$4" pid_fn="$5" logsrc="$6"
  local deadline=$((SECONDS + timeout))
  until "$ready"; do
    if [[ -n "$pid_fn" && -z "$("$pid_fn")" ]]; then
      show_log "$logsrc"
      die "$service exited during startup (log: $logsrc)"
    fi
    if ((SECONDS >= deadline)); then
      show_log "$logsrc"
      die "$service did not answer at $where within ${timeout}s (still running: dev/services stop $service)"
    fi
    sleep 0.3
  done
}

# reuse_if_up SERVICE WHERE READY PID: true (and says so) when the server
# already answers; a server dev/services did not start (PID empty) is
# reused and named as such.
reuse_if_up() {
  "$3" || return 1
  [[ -n "$4" ]] || log "reusing the $1 server already answering at $2"
  echo "$1: ready at $2"
}

# refuse_taken_port SERVICE HOST PORT VARIABLE: fails when something that is
# not the service holds its port.
refuse_taken_port() {
  if port_open "$2" "$3"; then
    die "$2:$3 is taken by a server that does not answer as $1; stop it or set $4"
  fi
}

# stop_pid SERVICE PID TIMEOUT: SIGTERM, then SIGKILL after TIMEOUT seconds.
stop_pid() {
  local service="$1" pid="$2" timeout="$3" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$service (pid $pid) still running after ${timeout}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

# stop_managed SERVICE WHERE PID PIDFILE TIMEOUT READY: stops the server
# dev/services started (PID), leaves one it did not start running.
stop_managed() {
  local service="$1" where="$2" pid="$3" pidfile="$4" timeout="$5" ready="$6"
  if [[ -n "$pid" ]]; then
    stop_pid "$service" "$pid" "$timeout"
    rm -f "$pidfile"
    echo "$service: stopped"
  elif "$ready"; then
    echo "$service: not started by dev/services; server at $where left running"
  else
    rm -f "$pidfile"
    echo "$service: not running"
  fi
}

# status_managed SERVICE WHERE PID DETAIL READY: one status line; returns 0
# when the server answers, 1 otherwise.
status_managed() {
  local service="$1" where="$2" pid="$3" detail="$4" ready="$5"
  if "$ready"; then
    if [[ -n "$pid" ]]; then
      echo "$service: up at $where (pid $pid${detail:+, $detail})"
    else
      echo "$service: up at $where (not managed by dev/services)"
    fi
    return 0
  fi
  if [[ -n "$pid" ]]; then
    echo "$service: down (process $pid running but not answering at $where)"
  else
    echo "$service: down"
  fi
  return 1
}

# env_line VARIABLE VALUE: an `export` line for `eval "$(dev/services env)"`.
env_line() {
  printf "export %s='%s'\n" "$1" "$2"
}
