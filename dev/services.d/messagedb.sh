# shellcheck shell=bash
# Service `messagedb`: Message DB (https://github.com/message-db/message-db),
# the PostgreSQL event store, installed into the dev PostgreSQL.
#
# Message DB is a set of SQL objects (schema `message_store`, table
# `messages`, functions `write_message`, `get_category_messages`, ...) and
# not a server of its own: `start` starts postgres (see dev/services), then
# installs Message DB from the npm package @eventide/message-db
# (version MESSAGEDB_VERSION, cached in
# ${RELAYBOX_CACHE_DIR:-~/.cache/relaybox}/message-db-<version>) into the
# database RELAYBOX_MESSAGE_DB_NAME (default `message_store`) by running the
# package's own install script with psql. It is idempotent: a database whose
# functions are present is left alone. `stop` takes Message DB offline
# without touching postgres or the data (nor the relaybox databases beside
# it): the database stops accepting connections (ALLOW_CONNECTIONS false)
# and its open sessions are terminated, which clients see as an outage;
# `start` allows connections again. `status` checks that connections are
# allowed and the functions are present; `env` prints
# RELAYBOX_MESSAGE_DB_URL. The port is postgres's (RELAYBOX_PG_PORT).

OPTIONAL_SERVICES+=(messagedb)

MESSAGEDB_VERSION=1.3.1
MESSAGEDB_NAME="${RELAYBOX_MESSAGE_DB_NAME:-message_store}"
MESSAGEDB_URL="$PG_URL_BASE/$MESSAGEDB_NAME"

# Directory holding the unpacked npm package (its `database/` folder).
messagedb_package_dir() {
  echo "$(cache_root)/message-db-$MESSAGEDB_VERSION"
}

# Fetches @eventide/message-db with npm into the cache unless it is there.
messagedb_fetch() {
  local dir tmp tarball
  dir="$(messagedb_package_dir)"
  [[ -x "$dir/database/install.sh" ]] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    log "installing npm (apt-get)"
    apt_install npm || die "npm is needed to fetch @eventide/message-db; install it (apt-get install npm)"
  fi
  tmp="$(mktemp -d)"
  log "fetching @eventide/message-db@$MESSAGEDB_VERSION from npm"
  if ! tarball="$(cd "$tmp" && npm pack --silent "@eventide/message-db@$MESSAGEDB_VERSION" 2>&1 | tail -n 1)" ||
    [[ ! -f "$tmp/$tarball" ]]; then
    rm -rf "$tmp"
    die "npm pack @eventide/message-db@$MESSAGEDB_VERSION failed: $tarball"
  fi
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tmp/$tarball" -C "$tmp/unpacked"
  [[ -x "$tmp/unpacked/package/database/install.sh" ]] ||
    die "@eventide/message-db@$MESSAGEDB_VERSION has no database/install.sh"
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir"
  mv "$tmp/unpacked/package" "$dir"
  rm -rf "$tmp"
}

# psql against the Message DB database.
messagedb_psql() {
  "$(pg_tool psql)" -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$MESSAGEDB_NAME" "$@"
}

# True when the database accepts connections (not stopped).
messagedb_online() {
  [[ "$(pg_psql -tAc "SELECT datallowconn FROM pg_database WHERE datname = '$MESSAGEDB_NAME'" 2>/dev/null)" == t ]]
}

# Allows (true) or refuses (false) connections to the database.
messagedb_allow_connections() {
  pg_psql -c "ALTER DATABASE \"$MESSAGEDB_NAME\" ALLOW_CONNECTIONS $1" >/dev/null
}

# True when write_message and get_category_messages exist in the database.
messagedb_installed() {
  pg_db_exists "$MESSAGEDB_NAME" 2>/dev/null || return 1
  messagedb_online || return 1
  [[ "$(messagedb_psql -tAc "SELECT count(DISTINCT p.proname) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'message_store'
          AND p.proname IN ('write_message', 'get_category_messages', 'get_stream_messages', 'hash_64')" \
    2>/dev/null)" == 4 ]]
}

# Runs the package's install script against the dev PostgreSQL.
messagedb_install() {
  local dir bindir create=on out
  dir="$(messagedb_package_dir)"
  if pg_db_exists "$MESSAGEDB_NAME"; then
    # A database without the functions: a broken or partial install; start over.
    log "database $MESSAGEDB_NAME lacks the Message DB functions; reinstalling its message_store schema"
    messagedb_psql -c 'DROP SCHEMA IF EXISTS message_store CASCADE' >&2
    create=off
  fi
  bindir="$(dirname "$(pg_tool psql)")"
  log "installing Message DB $MESSAGEDB_VERSION into database $MESSAGEDB_NAME"
  if ! out="$(PATH="$bindir:$PATH" PGHOST="$PG_HOST" PGPORT="$PG_PORT" PGUSER="$PG_USER" \
    DATABASE_NAME="$MESSAGEDB_NAME" CREATE_DATABASE="$create" \
    bash "$dir/database/install.sh" 2>&1)"; then
    printf '%s\n' "$out" | tail -n 30 >&2
    die "the Message DB install script failed"
  fi
}

start_messagedb() {
  start_postgres >/dev/null
  if pg_db_exists "$MESSAGEDB_NAME" && ! messagedb_online; then
    log "allowing connections to $MESSAGEDB_NAME again"
    messagedb_allow_connections true
  fi
  if ! messagedb_installed; then
    messagedb_fetch
    messagedb_install
    messagedb_installed || die "Message DB functions are missing after the install into $MESSAGEDB_NAME"
  fi
  echo "messagedb: ready at $MESSAGEDB_URL"
}

stop_messagedb() {
  pg_ready >/dev/null 2>&1 || return 0
  pg_db_exists "$MESSAGEDB_NAME" || return 0
  messagedb_allow_connections false
  pg_psql -tAc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = '$MESSAGEDB_NAME' AND pid <> pg_backend_pid()" >/dev/null
  echo "messagedb: stopped (database $MESSAGEDB_NAME refuses connections until started)"
}

status_messagedb() {
  if messagedb_installed; then
    echo "messagedb: up at $MESSAGEDB_URL (Message DB $MESSAGEDB_VERSION functions present)"
    return 0
  fi
  if pg_db_exists "$MESSAGEDB_NAME" 2>/dev/null && ! messagedb_online; then
    echo "messagedb: down (stopped: $MESSAGEDB_URL refuses connections)"
  else
    echo "messagedb: down (no Message DB functions in $MESSAGEDB_URL)"
  fi
  return 1
}

env_messagedb() {
  env_line RELAYBOX_MESSAGE_DB_URL "$MESSAGEDB_URL"
}
