# shellcheck shell=bash
# RabbitMQ for dev/services (sourced by it; not run on its own).
#
# A single RabbitMQ node (Debian's `rabbitmq-server`, installed with apt when
# missing) listening for AMQP on 127.0.0.1 only, port RELAYBOX_RABBITMQ_PORT
# (default 5672), with the default `guest` user (loopback only) and the
# default virtual host `/`. Everything of a node is derived from its port so
# that two checkouts can run their own nodes side by side: node name
# relaybox-<port>@localhost, Erlang distribution port <port> + 20000 (or
# <port> - 20000 when that would pass 65535), and its
# state under <repo>/.dev/rabbitmq-<port> (mnesia/ database, log/, pid file,
# enabled_plugins, the Erlang cookie). The node runs as the calling user
# (the Debian wrapper that switches to the `rabbitmq` user is bypassed).
# epmd is shared by every Erlang node on the machine: stop leaves it running
# while another node is registered with it. The node also serves AMQP over
# TLS (amqps) on RELAYBOX_RABBITMQ_TLS_PORT (default the port - 1, 5671)
# with dev/services' test server certificate (valid for the name
# localhost; clients are not asked for a certificate); its settings are in
# the node's rabbitmq.conf, written on every start.
#
#   dev/services start rabbitmq    install if needed, start, wait until ready
#   dev/services env rabbitmq      RELAYBOX_RABBITMQ_URL, RABBITMQ_URL and
#                                  RELAYBOX_RABBITMQ_TLS_URL (amqps://)
#   dev/services stop rabbitmq     stop the node this checkout started

OPTIONAL_SERVICES+=(rabbitmq)

RABBITMQ_HOST=127.0.0.1
RABBITMQ_AMQP_PORT="${RELAYBOX_RABBITMQ_PORT:-5672}"
RABBITMQ_TLS_PORT="${RELAYBOX_RABBITMQ_TLS_PORT:-$((RABBITMQ_AMQP_PORT - 1))}"
RABBITMQ_STATE="$DEV_DIR/rabbitmq-$RABBITMQ_AMQP_PORT"
RABBITMQ_NODE="relaybox-$RABBITMQ_AMQP_PORT@localhost"
RABBITMQ_BIN=/usr/lib/rabbitmq/bin
RABBITMQ_READY_TIMEOUT=120
RABBITMQ_DIST_PORT=$((RABBITMQ_AMQP_PORT + 20000))
((RABBITMQ_DIST_PORT <= 65535)) || RABBITMQ_DIST_PORT=$((RABBITMQ_AMQP_PORT - 20000))
RABBITMQ_URL_VALUE="amqp://guest:guest@$RABBITMQ_HOST:$RABBITMQ_AMQP_PORT/%2f"
RABBITMQ_TLS_URL_VALUE="amqps://guest:guest@localhost:$RABBITMQ_TLS_PORT/%2f"

# Runs a RabbitMQ program with this checkout's node environment, killed
# after SECONDS: rabbitmq_run SECONDS PROGRAM [ARG...].
rabbitmq_run() {
  local seconds="$1" program="$2"
  shift 2
  mkdir -p "$RABBITMQ_STATE"
  HOME="$RABBITMQ_STATE" \
    RABBITMQ_NODENAME="$RABBITMQ_NODE" \
    RABBITMQ_NODE_IP_ADDRESS="$RABBITMQ_HOST" \
    RABBITMQ_NODE_PORT="$RABBITMQ_AMQP_PORT" \
    RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT" \
    ERL_EPMD_ADDRESS="$RABBITMQ_HOST" \
    RABBITMQ_MNESIA_BASE="$RABBITMQ_STATE/mnesia" \
    RABBITMQ_LOG_BASE="$RABBITMQ_STATE/log" \
    RABBITMQ_PID_FILE="$RABBITMQ_STATE/rabbitmq.pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$RABBITMQ_STATE/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$RABBITMQ_STATE/rabbitmq" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$RABBITMQ_STATE/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$RABBITMQ_STATE/rabbitmq-env.conf" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    timeout "$seconds" "$RABBITMQ_BIN/$program" "$@"
}

rabbitmq_install() {
  [[ -x "$RABBITMQ_BIN/rabbitmq-server" ]] && return 0
  log "installing rabbitmq-server (apt)"
  apt_install rabbitmq-server || die "could not install rabbitmq-server with apt-get"
  # The package may start its own node on 5672; this script manages its own nodes.
  if command -v service >/dev/null 2>&1; then
    service rabbitmq-server stop >/dev/null 2>&1 || true
  fi
}

# True when the AMQP port answers an AMQP 0-9-1 protocol header with a frame.
rabbitmq_probe() {
  [[ "$(tcp_probe "$RABBITMQ_HOST" "$RABBITMQ_AMQP_PORT" 'AMQP\x00\x00\x09\x01' 1)" == 01 ]]
}

# The pid of this checkout's node when it is running (its pid file names a
# live process), else nothing.
rabbitmq_node_pid() { managed_pid "$RABBITMQ_STATE/rabbitmq.pid"; }

# True when the node answers AMQP and its CLI.
rabbitmq_ready() { rabbitmq_probe && rabbitmq_node_running; }

# True when this checkout's node is running (it answers its CLI).
rabbitmq_node_running() {
  [[ -x "$RABBITMQ_BIN/rabbitmq-diagnostics" ]] || return 1
  rabbitmq_run 20 rabbitmq-diagnostics -q -n "$RABBITMQ_NODE" check_running >/dev/null 2>&1
}

rabbitmq_log_tail() {
  local f
  for f in "$RABBITMQ_STATE"/log/*.log "$RABBITMQ_STATE/startup.log"; do
    [[ -s "$f" ]] || continue
    log "last lines of $f:"
    tail -n 15 "$f" >&2
  done
}

start_rabbitmq() {
  reuse_if_up rabbitmq "$RABBITMQ_HOST:$RABBITMQ_AMQP_PORT" rabbitmq_probe "$(rabbitmq_node_pid)" && return 0
  refuse_taken_port rabbitmq "$RABBITMQ_HOST" "$RABBITMQ_AMQP_PORT" RELAYBOX_RABBITMQ_PORT
  rabbitmq_install
  mkdir -p "$RABBITMQ_STATE/mnesia" "$RABBITMQ_STATE/log"
  [[ -f "$RABBITMQ_STATE/enabled_plugins" ]] || printf '[].\n' >"$RABBITMQ_STATE/enabled_plugins"
  : >"$RABBITMQ_STATE/rabbitmq-env.conf"
  cat >"$RABBITMQ_STATE/rabbitmq.conf" <<EOF
# Written by dev/services on every start.
listeners.ssl.default = $RABBITMQ_HOST:$RABBITMQ_TLS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
  if ! rabbitmq_node_running; then
    log "starting RabbitMQ node $RABBITMQ_NODE on $RABBITMQ_HOST:$RABBITMQ_AMQP_PORT (state $RABBITMQ_STATE)"
    (cd "$RABBITMQ_STATE" && rabbitmq_run 60 rabbitmq-server -detached >"$RABBITMQ_STATE/startup.log" 2>&1 </dev/null 9>&-) ||
      {
        rabbitmq_log_tail
        die "rabbitmq-server failed to start"
      }
  fi
  wait_ready rabbitmq "$RABBITMQ_HOST:$RABBITMQ_AMQP_PORT" "$RABBITMQ_READY_TIMEOUT" rabbitmq_ready "" rabbitmq_log_tail
  echo "rabbitmq: ready at $RABBITMQ_HOST:$RABBITMQ_AMQP_PORT"
}

stop_rabbitmq() {
  if rabbitmq_node_running; then
    rabbitmq_run 60 rabbitmqctl -q -n "$RABBITMQ_NODE" stop "$RABBITMQ_STATE/rabbitmq.pid" >/dev/null 2>&1 ||
      log "rabbitmqctl stop failed for $RABBITMQ_NODE"
    # epmd is shared: only stop it when no other node is registered.
    if command -v epmd >/dev/null 2>&1 && ! ERL_EPMD_ADDRESS="$RABBITMQ_HOST" epmd -names 2>/dev/null | grep -q '^name '; then
      ERL_EPMD_ADDRESS="$RABBITMQ_HOST" epmd -kill >/dev/null 2>&1 || true
    fi
    echo "rabbitmq: stopped"
  elif rabbitmq_probe; then
    echo "rabbitmq: not started by dev/services; server at $RABBITMQ_HOST:$RABBITMQ_AMQP_PORT left running"
  else
    echo "rabbitmq: not running"
  fi
}

# Returns 0 when the service is up, 1 otherwise.
status_rabbitmq() {
  status_managed rabbitmq "$RABBITMQ_HOST:$RABBITMQ_AMQP_PORT" "$(rabbitmq_node_pid)" "node $RABBITMQ_NODE" rabbitmq_probe
}

env_rabbitmq() {
  env_line RELAYBOX_RABBITMQ_URL "$RABBITMQ_URL_VALUE"
  env_line RABBITMQ_URL "$RABBITMQ_URL_VALUE"
  env_line RELAYBOX_RABBITMQ_TLS_URL "$RABBITMQ_TLS_URL_VALUE"
}
