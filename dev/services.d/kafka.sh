# shellcheck shell=bash
# Apache Kafka for dev/services (sourced by it; started only when named).
#
# A single-node broker (KRaft, broker and controller in one JVM) on
# 127.0.0.1 only (port RELAYBOX_KAFKA_PORT, default 9092; controller port
# RELAYBOX_KAFKA_CONTROLLER_PORT, default 9093), without authentication, and
# an SSL listener advertised as localhost:RELAYBOX_KAFKA_SSL_PORT (default
# the broker port + 2) with the test server certificate. Its jars come from
# Maven Central through dev/kafka/pom.xml and are cached in
# <cache>/kafka-<version> (cache: RELAYBOX_CACHE_DIR, default
# ~/.cache/relaybox); its configuration, data, pid file and server.log are in
# <state dir>/kafka. It runs on the `java` on PATH (Java 17 or newer;
# openjdk-17-jre-headless is installed with apt-get when there is none).
# Readiness: an ApiVersions round trip, and (with kcat, installed when
# possible) a metadata listing with a live broker.
#
#   dev/services start kafka     dev/services stop kafka
#   dev/services status kafka    eval "$(dev/services env kafka)"

OPTIONAL_SERVICES+=(kafka)

KAFKA_HOST=127.0.0.1
KAFKA_PORT="${RELAYBOX_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${RELAYBOX_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
KAFKA_SSL_PORT="${RELAYBOX_KAFKA_SSL_PORT:-$((KAFKA_PORT + 2))}"
KAFKA_SSL_BOOTSTRAP="localhost:$KAFKA_SSL_PORT"
KAFKA_SRC="$REPO_ROOT/dev/kafka"
KAFKA_STATE="$DEV_DIR/kafka"
KAFKA_PIDFILE="$KAFKA_STATE/kafka.pid"
KAFKA_LOG="$KAFKA_STATE/server.log"
KAFKA_CONFIG="$KAFKA_STATE/server.properties"
KAFKA_READY_TIMEOUT=90
KAFKA_STOP_TIMEOUT=20
# Kafka's own default heap (kafka-server-start.sh): with less, a broker that
# has seen the benchmark's drains keeps more live data than G1's concurrent
# marking threshold, and marks (with its remark pauses) all the time.
KAFKA_HEAP=(-Xms1g -Xmx1g)

# Kafka version: <kafka.version> in dev/kafka/pom.xml.
kafka_version() {
  local v
  v="$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$KAFKA_SRC/pom.xml" | head -n 1)"
  [[ -n "$v" ]] || die "no <kafka.version> in $KAFKA_SRC/pom.xml"
  printf '%s\n' "$v"
}

# Major version of a java binary (17 for "17.0.15"), or "" when unknown.
java_major() {
  "$1" -version 2>&1 | sed -n '1s/^[^"]*"\([0-9]*\).*/\1/p'
}

# Sets KAFKA_JAVA to a Java 17+ binary: `java` on PATH, else one under
# /usr/lib/jvm, else openjdk-17-jre-headless installed with apt-get.
kafka_find_java() {
  local candidate major attempt
  for attempt in 1 2; do
    for candidate in "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
      [[ -n "$candidate" && -x "$candidate" ]] || continue
      major="$(java_major "$candidate")"
      if [[ -n "$major" ]] && ((major >= 17)); then
        KAFKA_JAVA="$candidate"
        return 0
      fi
    done
    [[ $attempt -eq 1 ]] || break
    log "Java 17 or newer not found; installing openjdk-17-jre-headless with apt-get"
    apt_install openjdk-17-jre-headless ||
      die "Kafka needs Java 17 or newer: install it (apt-get install openjdk-17-jre-headless) or put it on PATH"
  done
  die "Kafka needs Java 17 or newer, and none was found after installing openjdk-17-jre-headless"
}

# Sets KAFKA_LIBS to the directory holding the broker jars, fetching them
# with Maven unless the cache is complete for the current dev/kafka/pom.xml
# (its checksum is the content of libs/.complete).
kafka_fetch() {
  local version cache sum tmp out
  version="$(kafka_version)"
  cache="$(cache_root)/kafka-$version"
  KAFKA_LIBS="$cache/libs"
  sum="$(sha256sum <"$KAFKA_SRC/pom.xml" | cut -c1-64)"
  [[ "$(cat "$KAFKA_LIBS/.complete" 2>/dev/null)" == "$sum" ]] && return 0

  if ! command -v mvn >/dev/null 2>&1; then
    log "Maven not found; installing it with apt-get"
    apt_install maven || die "Maven (mvn) is needed to fetch the Kafka jars: install it (apt-get install maven)"
  fi
  mkdir -p "$cache"
  # Other clones share the cache: one fetch at a time.
  if command -v flock >/dev/null 2>&1; then
    exec 8>>"$cache/.lock"
    flock -w 600 8 || die "timed out waiting for $cache/.lock"
  fi
  if [[ "$(cat "$KAFKA_LIBS/.complete" 2>/dev/null)" != "$sum" ]]; then
    log "fetching the Apache Kafka $version jars with Maven into $KAFKA_LIBS"
    local started=$SECONDS
    tmp="$(mktemp -d "$cache/libs.tmp.XXXXXX")"
    if ! out="$(mvn -B -q -f "$KAFKA_SRC/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 9>&- 8>&-)"; then
      printf '%s\n' "$out" | tail -n 40 >&2
      rm -rf "$tmp"
      die "Maven could not fetch the Kafka $version jars (dev/kafka/pom.xml)"
    fi
    if [[ ! -f "$tmp/kafka_2.13-$version.jar" ]]; then
      rm -rf "$tmp"
      die "Maven did not provide kafka_2.13-$version.jar"
    fi
    printf '%s\n' "$sum" >"$tmp/.complete"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    log "fetched $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - started))s"
  fi
  if command -v flock >/dev/null 2>&1; then
    exec 8>&-
  fi
}

# kcat (Kafka command-line client) for the readiness check and for tests;
# best effort: without it, readiness is an ApiVersions round trip.
kafka_install_kcat() {
  command -v kcat >/dev/null 2>&1 && return 0
  log "kcat not found; installing it with apt-get"
  apt_install kcat || log "note: could not install kcat; continuing without it"
}

# True when a Kafka broker answers an ApiVersions request (v0, correlation
# id "RBOX") on the configured address: the broker is processing requests.
kafka_probe() {
  local reply
  reply="$(tcp_probe "$KAFKA_HOST" "$KAFKA_PORT" '\x00\x00\x00\x0c\x00\x12\x00\x00RBOX\x00\x02rb' 8)"
  [[ "${reply:8}" == 52424f58 ]]
}

# True when the broker answers and, if kcat is installed, lists at least one
# live broker in its metadata (so it accepts produce requests).
kafka_ready() {
  kafka_probe || return 1
  command -v kcat >/dev/null 2>&1 || return 0
  timeout 15 kcat -b "$KAFKA_BOOTSTRAP" -L -m 5 2>/dev/null | grep -Eq '^ *[1-9][0-9]* brokers:'
}

# Pid of the broker dev/services started when it is still running, else "".
kafka_managed_pid() { managed_pid "$KAFKA_PIDFILE" "kafka.Kafka $KAFKA_CONFIG"; }

# The first errors (with the exception line after each) and the last lines
# of the server log: a failed startup ends with pages of shutdown messages.
kafka_log_tail() {
  [[ -f "$KAFKA_LOG" ]] || return 0
  if grep -qE '^\[[^]]*\] (ERROR|FATAL) ' "$KAFKA_LOG"; then
    log "first errors in $KAFKA_LOG:"
    grep -m 5 -A 1 -E '^\[[^]]*\] (ERROR|FATAL) ' "$KAFKA_LOG" >&2
  fi
  log "last lines of $KAFKA_LOG:"
  tail -n 15 "$KAFKA_LOG" >&2
}

# JVM options common to the broker and the storage tool.
kafka_jvm_opts() {
  KAFKA_JVM_OPTS=(
    -cp "$KAFKA_LIBS/*"
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties"
    -Dkafka.logs.dir="$KAFKA_STATE"
  )
}

# Write server.properties from the template and format the storage once
# (the cluster id is kept in cluster.id).
kafka_prepare() {
  local template out cluster_id
  mkdir -p "$KAFKA_STATE/data"
  template="$(<"$KAFKA_SRC/server.properties")"
  template="${template//@HOST@/"$KAFKA_HOST"}"
  template="${template//@PORT@/"$KAFKA_PORT"}"
  template="${template//@CONTROLLER_PORT@/"$KAFKA_CONTROLLER_PORT"}"
  template="${template//@SSL_PORT@/"$KAFKA_SSL_PORT"}"
  template="${template//@TLS_DIR@/"$TLS_DIR"}"
  template="${template//@TLS_P12_PASSWORD@/"$TLS_P12_PASSWORD"}"
  template="${template//@DATA_DIR@/"$KAFKA_STATE/data"}"
  printf '%s\n' "$template" >"$KAFKA_CONFIG"

  [[ -f "$KAFKA_STATE/data/meta.properties" ]] && return 0
  if [[ -s "$KAFKA_STATE/cluster.id" ]]; then
    cluster_id="$(<"$KAFKA_STATE/cluster.id")"
  else
    cluster_id="$("$KAFKA_JAVA" "${KAFKA_JVM_OPTS[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka.tools.StorageTool random-uuid printed no cluster id"
    printf '%s\n' "$cluster_id" >"$KAFKA_STATE/cluster.id"
  fi
  log "formatting Kafka storage $KAFKA_STATE/data (cluster id $cluster_id)"
  if ! out="$("$KAFKA_JAVA" "${KAFKA_JVM_OPTS[@]}" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$KAFKA_CONFIG" --standalone 2>&1 9>&-)"; then
    printf '%s\n' "$out" >&2
    die "kafka.tools.StorageTool format failed for $KAFKA_STATE/data"
  fi
}

# Starts the broker, detached, in its own session.
kafka_launch() {
  launch_detached "$KAFKA_PIDFILE" "kafka.Kafka $KAFKA_CONFIG" "$KAFKA_STATE" "$KAFKA_LOG" \
    "$KAFKA_JAVA" "${KAFKA_HEAP[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:+ExitOnOutOfMemoryError -Dlog4j2.shutdownHookEnabled=false \
    "${KAFKA_JVM_OPTS[@]}" kafka.Kafka "$KAFKA_CONFIG"
}

start_kafka() {
  kafka_install_kcat
  reuse_if_up kafka "$KAFKA_BOOTSTRAP" kafka_ready "$(kafka_managed_pid)" && return 0
  if [[ -z "$(kafka_managed_pid)" ]]; then
    refuse_taken_port kafka "$KAFKA_HOST" "$KAFKA_PORT" RELAYBOX_KAFKA_PORT
    kafka_find_java
    kafka_fetch
    kafka_jvm_opts
    kafka_prepare
    log "starting Kafka $(kafka_version) on $KAFKA_BOOTSTRAP (log $KAFKA_LOG)"
    kafka_launch
  fi
  wait_ready kafka "$KAFKA_BOOTSTRAP" "$KAFKA_READY_TIMEOUT" kafka_ready kafka_managed_pid kafka_log_tail
  echo "kafka: ready at $KAFKA_BOOTSTRAP"
}

stop_kafka() {
  stop_managed kafka "$KAFKA_BOOTSTRAP" "$(kafka_managed_pid)" "$KAFKA_PIDFILE" "$KAFKA_STOP_TIMEOUT" kafka_probe
}

# Returns 0 when the service is up, 1 otherwise.
status_kafka() {
  status_managed kafka "$KAFKA_BOOTSTRAP" "$(kafka_managed_pid)" "data directory $KAFKA_STATE/data" kafka_ready
}

env_kafka() {
  env_line RELAYBOX_KAFKA_BOOTSTRAP "$KAFKA_BOOTSTRAP"
  env_line RELAYBOX_KAFKA_SSL_BOOTSTRAP "$KAFKA_SSL_BOOTSTRAP"
}
