# shellcheck shell=bash
# PostgreSQL for dev/services (sourced by it), started by default.
#
# A server from Debian's packages (installed with apt-get when missing),
# listening on 127.0.0.1 only, port RELAYBOX_PG_PORT (default 5432), with
# trust authentication, TLS on the same port (plaintext still accepted) and
# its Unix socket in the data directory. The data directory is
# <state dir>/postgres, or /var/tmp/relaybox-<hash>/postgres when the
# postgres user cannot reach the state directory. Databases relaybox and
# relaybox_test are created. A server already answering on the port is
# reused and left running by stop.
#
#   dev/services start postgres     dev/services stop postgres
#   dev/services status postgres    eval "$(dev/services env postgres)"
#
# `env` exports RELAYBOX_DATABASE_URL, RELAYBOX_TEST_DATABASE_URL,
# RELAYBOX_TEST_DATABASE_TLS_URL (verify-full against the test CA) and
# RELAYBOX_TEST_DATABASE_SOCKET_URL (the Unix socket, where the server
# answers a TLS request with "not supported").

SERVICES+=(postgres)

PG_HOST=127.0.0.1
PG_PORT="${RELAYBOX_PG_PORT:-5432}"
PG_USER=postgres
PG_DATABASES=(relaybox relaybox_test)
PG_READY_TIMEOUT=30
PG_URL_BASE="postgres://$PG_USER@$PG_HOST:$PG_PORT"
# Newest /usr/lib/postgresql/<version>/bin holding the server binaries, or "".
pg_bindir() {
  local dir
  printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | while read -r dir; do
    if [[ -x "$dir/postgres" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      printf '%s\n' "$dir"
    fi
  done | tail -n 1
}

# Path of a PostgreSQL client/server tool: versioned bindir first, then PATH.
pg_tool() {
  local bindir
  bindir="$(pg_bindir)"
  if [[ -n "$bindir" && -x "$bindir/$1" ]]; then
    printf '%s\n' "$bindir/$1"
  else
    command -v "$1" || return 1
  fi
}

# Server processes must not run as root: as root, run as the postgres user;
# otherwise run as the invoking user (who then owns the data directory).
# The lock descriptor (fd 9) is closed so a started server cannot inherit
# and hold the lock.
as_pg() {
  if [[ $EUID -ne 0 ]]; then
    "$@" 9>&-
  elif command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u postgres -- "$@" 9>&-)
  else
    (cd / && su postgres -s /bin/bash -c "$(printf '%q ' "$@")" 9>&-)
  fi
}

pg_user_exists() { [[ $EUID -ne 0 ]] || id postgres >/dev/null 2>&1; }

# pg_isready against the configured address; exit status 0 accepting,
# 1 rejecting (e.g. starting up), 2 no response, 3 no attempt made.
pg_ready() {
  local isready
  isready="$(pg_tool pg_isready)" || return 3
  "$isready" -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -t 2
}

# Sets PG_DATA (and PG_DATA_FALLBACK=1 when the state directory's parent (the
# repository by default) is not reachable by the postgres user and a
# directory under /var/tmp is used instead).
pg_choose_datadir() {
  PG_DATA="$DEV_DIR/postgres"
  PG_DATA_FALLBACK=0
  [[ $EUID -eq 0 ]] || return 0
  if ! pg_user_exists || as_pg test -x "$(dirname "$DEV_DIR")"; then
    return 0
  fi
  # Keyed by the repository for the default state directory, else by it.
  local hash key="$REPO_ROOT"
  [[ "$DEV_DIR" == "$REPO_ROOT/.dev" ]] || key="$DEV_DIR"
  hash="$(printf '%s' "$key" | sha256sum | cut -c1-12)"
  PG_DATA="/var/tmp/relaybox-$hash/postgres"
  PG_DATA_FALLBACK=1
}

# True when the server owning PG_DATA is running (pid file and live process).
pg_managed_running() {
  local pg_ctl
  [[ -f "$PG_DATA/PG_VERSION" ]] || return 1
  pg_user_exists || return 1
  pg_ctl="$(pg_tool pg_ctl)" || return 1
  as_pg "$pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_log_tail() {
  if [[ -f "$PG_DATA/server.log" ]]; then
    log "last lines of $PG_DATA/server.log:"
    tail -n 30 "$PG_DATA/server.log" >&2
  fi
}

# Install the Debian packages when the server binaries are missing.
pg_install() {
  [[ -n "$(pg_bindir)" ]] && return 0
  [[ $EUID -eq 0 ]] ||
    die "PostgreSQL server binaries not found under /usr/lib/postgresql; run as root or install them (apt-get install postgresql)"
  command -v apt-get >/dev/null 2>&1 ||
    die "PostgreSQL is not installed and apt-get is not available"
  log "PostgreSQL not found; installing it with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  [[ -n "$(pg_bindir)" ]] || die "apt-get install postgresql did not provide /usr/lib/postgresql/*/bin/postgres"
  # The package may have started its own cluster (password auth) on our port;
  # stop it so the trust-auth server below can take the port.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    local ver name port status _
    while read -r ver name port status _; do
      if [[ "$port" == "$PG_PORT" && "$status" == online* ]]; then
        log "stopping packaged cluster $ver/$name that apt started on port $PG_PORT"
        pg_ctlcluster "$ver" "$name" stop
      fi
    done < <(pg_lsclusters -h)
  fi
}

# Create the data directory, owned by the server user, and initdb it once.
pg_prepare_datadir() {
  pg_choose_datadir
  if [[ $PG_DATA_FALLBACK -eq 1 ]]; then
    log "note: user postgres cannot reach $REPO_ROOT; using data directory $PG_DATA"
  fi
  mkdir -p "$PG_DATA"
  if [[ $EUID -eq 0 ]]; then
    chmod 755 "$(dirname "$PG_DATA")"
    if [[ "$(stat -c %U "$PG_DATA")" != postgres ]]; then
      chown -R postgres:postgres "$PG_DATA"
    fi
  fi
  chmod 700 "$PG_DATA"

  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    log "initialising PostgreSQL data directory $PG_DATA"
    local out
    if ! out="$(as_pg "$(pg_tool initdb)" -D "$PG_DATA" -U "$PG_USER" \
      --auth=trust --encoding=UTF8 --locale=C.UTF-8 2>&1)"; then
      printf '%s\n' "$out" >&2
      die "initdb failed for $PG_DATA"
    fi
  fi
  pg_write_config
}

# The directory of the server's Unix socket: the data directory, or ""
# (TCP only) when the socket's path would pass the 107-byte limit.
pg_socket_dir() {
  if ((${#PG_DATA} + 20 > 107)); then
    echo ""
  else
    printf '%s\n' "$PG_DATA"
  fi
}

# Settings for tests and benchmarks live in relaybox.conf (rewritten on
# every start, included from postgresql.conf). Durability settings
# (fsync, synchronous_commit) keep their defaults.
pg_write_config() {
  local conf="$PG_DATA/relaybox.conf" sockdir
  sockdir="$(pg_socket_dir)"
  cat >"$conf" <<EOF
# Managed by dev/services; rewritten on every start.
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '${sockdir//\'/\'\'}'
max_connections = 200
shared_buffers = 256MB
ssl = on
ssl_cert_file = 'relaybox-server.crt'
ssl_key_file = 'relaybox-server.key'
EOF
  # The server reads its key as the user it runs as, and refuses a key that
  # others may read: the data directory holds copies.
  install -m 600 "$TLS_DIR/server.pem" "$PG_DATA/relaybox-server.crt"
  install -m 600 "$TLS_DIR/server.key" "$PG_DATA/relaybox-server.key"
  if ! grep -qx "include_if_exists = 'relaybox.conf'" "$PG_DATA/postgresql.conf"; then
    printf "\ninclude_if_exists = 'relaybox.conf'\n" >>"$PG_DATA/postgresql.conf"
  fi
  if [[ $EUID -eq 0 ]]; then
    chown postgres:postgres "$conf" "$PG_DATA/postgresql.conf" \
      "$PG_DATA/relaybox-server.crt" "$PG_DATA/relaybox-server.key"
  fi
}

# A running server of ours that does not serve TLS (started before
# dev/services configured it) gets the configuration and a reload.
pg_ensure_tls() {
  [[ "$(pg_psql -tAc 'SHOW ssl' 2>/dev/null)" == on ]] && return 0
  log "turning TLS on in the running PostgreSQL server (reload)"
  pg_write_config
  as_pg "$(pg_tool pg_ctl)" -D "$PG_DATA" -s reload
  local deadline=$((SECONDS + PG_READY_TIMEOUT))
  until [[ "$(pg_psql -tAc 'SHOW ssl' 2>/dev/null)" == on ]]; do
    if ((SECONDS >= deadline)); then
      pg_log_tail
      die "PostgreSQL at $PG_HOST:$PG_PORT did not turn TLS on after a reload"
    fi
    sleep 0.2
  done
}

pg_psql() {
  "$(pg_tool psql)" -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

pg_db_exists() {
  [[ "$(pg_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'")" == 1 ]]
}

# Create each database in PG_DATABASES unless it exists (tolerating a
# concurrent creator).
pg_ensure_databases() {
  local db out
  if ! out="$(pg_psql -tAc 'SELECT 1' 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "cannot connect to PostgreSQL at $PG_HOST:$PG_PORT as $PG_USER without a password; if that server is not the one dev/services manages, stop it or set RELAYBOX_PG_PORT"
  fi
  for db in "${PG_DATABASES[@]}"; do
    pg_db_exists "$db" && continue
    if ! out="$("$(pg_tool createdb)" -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$db" 2>&1)" &&
      ! pg_db_exists "$db"; then
      printf '%s\n' "$out" >&2
      die "could not create database $db"
    fi
    log "created database $db"
  done
}

start_postgres() {
  pg_install
  pg_choose_datadir
  local rc=0
  pg_ready || rc=$?

  if [[ $rc -eq 0 ]]; then
    # Something already accepts connections on the port: reuse it.
    if ! pg_managed_running; then
      log "reusing the PostgreSQL server already listening on $PG_HOST:$PG_PORT"
    else
      pg_ensure_tls
    fi
  elif [[ $rc -eq 1 ]] || pg_managed_running; then
    # A server is starting up on the port (or ours is): wait for it.
    wait_ready postgres "$PG_HOST:$PG_PORT" "$PG_READY_TIMEOUT" pg_ready "" pg_log_tail
  else
    pg_prepare_datadir
    if ! as_pg "$(pg_tool pg_ctl)" -D "$PG_DATA" -l "$PG_DATA/server.log" \
      -w -t "$PG_READY_TIMEOUT" -s start; then
      pg_log_tail
      die "PostgreSQL failed to start (data directory $PG_DATA)"
    fi
    wait_ready postgres "$PG_HOST:$PG_PORT" "$PG_READY_TIMEOUT" pg_ready "" pg_log_tail
  fi

  pg_ensure_databases
  echo "postgres: ready at $PG_URL_BASE/${PG_DATABASES[0]}"
}

stop_postgres() {
  pg_choose_datadir
  if pg_managed_running; then
    as_pg "$(pg_tool pg_ctl)" -D "$PG_DATA" -m fast -w -s stop
    echo "postgres: stopped"
  elif pg_ready; then
    echo "postgres: not started by dev/services; server at $PG_HOST:$PG_PORT left running"
  else
    echo "postgres: not running"
  fi
}

# Returns 0 when the service is up, 1 otherwise.
status_postgres() {
  pg_choose_datadir
  if pg_ready; then
    if pg_managed_running; then
      echo "postgres: up at $PG_URL_BASE (data directory $PG_DATA)"
    else
      echo "postgres: up at $PG_URL_BASE (not managed by dev/services)"
    fi
    return 0
  fi
  if pg_managed_running; then
    echo "postgres: down (server process running from $PG_DATA but not accepting connections)"
  else
    echo "postgres: down"
  fi
  return 1
}

env_postgres() {
  env_line RELAYBOX_DATABASE_URL "$PG_URL_BASE/${PG_DATABASES[0]}"
  env_line RELAYBOX_TEST_DATABASE_URL "$PG_URL_BASE/${PG_DATABASES[1]}"
  env_line RELAYBOX_TEST_DATABASE_TLS_URL \
    "postgres://$PG_USER@localhost:$PG_PORT/${PG_DATABASES[1]}?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem"
  # The Unix socket: PostgreSQL answers a TLS request there with "not
  # supported", a server without TLS for the tests of sslmode=require.
  local sockdir
  pg_choose_datadir
  sockdir="$(pg_socket_dir)"
  if [[ -n "$sockdir" ]]; then
    env_line RELAYBOX_TEST_DATABASE_SOCKET_URL "postgres://$PG_USER@localhost:$PG_PORT/${PG_DATABASES[1]}?host=$sockdir"
  fi
}

