/*
 * Checks of the C ABI as a C caller sees it: status codes and messages for
 * bad arguments (NULL, invalid UTF-8, malformed JSON), nothing written on
 * invalid input, the thread-local last error, panics returned as
 * RELAYBOX_INTERNAL, and the consumer handler contract (acknowledge, retry,
 * reject with a reason; the handler's transaction cannot be committed or
 * freed); the host-transaction statements and the host-mode consumer's
 * outcomes; the log callback (a dead-lettered message's warning with its
 * fields, levels, delivery on the library's log thread). Runs against RELAYBOX_TEST_DATABASE_URL with the database
 * transport; removes its tables at the end.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "relaybox.h"

/* Not in the header: a guarded call that panics, for this test only. */
relaybox_status relaybox__panic_for_tests(void);
/* Not in the header: emits core log records (target relaybox::testing). */
relaybox_status relaybox__log_for_tests(int level, const char *message, uint64_t count);

static int failures = 0;

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "abi_test.c:%d: failed: %s (last error: %s)\n",   \
              __LINE__, #cond, relaybox_last_error());                  \
      failures++;                                                       \
    }                                                                   \
  } while (0)

#define OK(call)                                                        \
  do {                                                                  \
    relaybox_status ok_status_ = (call);                                \
    if (ok_status_ != RELAYBOX_OK) {                                    \
      fprintf(stderr, "abi_test.c:%d: %s returned %s: %s\n", __LINE__,  \
              #call, relaybox_status_name(ok_status_),                  \
              relaybox_last_error());                                   \
      exit(1);                                                          \
    }                                                                   \
  } while (0)

static int contains(const char *haystack, const char *needle) {
  return haystack != NULL && strstr(haystack, needle) != NULL;
}

static char prefix[64];
static char topic[64];

/* The records the log callback received (copies; the last LOG_SLOTS). */
#define LOG_SLOTS 256
struct log_copy {
  int level;
  char target[64];
  char text[512];
  char fields[512];
};
static struct {
  pthread_mutex_t lock;
  pthread_t main_thread;
  struct log_copy records[LOG_SLOTS];
  int count;
  int on_main_thread;
} logs = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void on_log(const relaybox_log_record *record, void *user_data) {
  (void)user_data;
  pthread_mutex_lock(&logs.lock);
  struct log_copy *copy = &logs.records[logs.count % LOG_SLOTS];
  copy->level = record->level;
  snprintf(copy->target, sizeof copy->target, "%s", record->target);
  snprintf(copy->text, sizeof copy->text, "%s", record->text);
  snprintf(copy->fields, sizeof copy->fields, "%s", record->fields_json);
  logs.count++;
  if (pthread_equal(pthread_self(), logs.main_thread)) {
    logs.on_main_thread++;
  }
  pthread_mutex_unlock(&logs.lock);
}

/* Waits up to 10 s for a record whose text contains `needle`; copies it. */
static int find_log(const char *needle, struct log_copy *out) {
  for (int i = 0; i < 200; i++) {
    pthread_mutex_lock(&logs.lock);
    int first = logs.count > LOG_SLOTS ? logs.count - LOG_SLOTS : 0;
    for (int n = first; n < logs.count; n++) {
      if (contains(logs.records[n % LOG_SLOTS].text, needle)) {
        *out = logs.records[n % LOG_SLOTS];
        pthread_mutex_unlock(&logs.lock);
        return 1;
      }
    }
    pthread_mutex_unlock(&logs.lock);
    usleep(50 * 1000);
  }
  return 0;
}

/* Whether any record received so far contains `needle`. */
static int logged(const char *needle) {
  int found = 0;
  pthread_mutex_lock(&logs.lock);
  int first = logs.count > LOG_SLOTS ? logs.count - LOG_SLOTS : 0;
  for (int n = first; n < logs.count; n++) {
    found |= contains(logs.records[n % LOG_SLOTS].text, needle);
  }
  pthread_mutex_unlock(&logs.lock);
  return found;
}

static long long count(relaybox_outbox *outbox, const char *sql) {
  relaybox_tx *tx = NULL;
  char *rows = NULL;
  OK(relaybox_outbox_begin(outbox, &tx));
  OK(relaybox_tx_query(tx, sql, NULL, &rows));
  OK(relaybox_tx_free(tx));
  const char *colon = strchr(rows, ':');
  long long n = colon ? strtoll(colon + 1, NULL, 10) : -1;
  relaybox_string_free(rows);
  return n;
}

static void *fail_on_other_thread(void *unused) {
  (void)unused;
  relaybox_outbox *out = NULL;
  relaybox_status status = relaybox_outbox_open(NULL, NULL, false, &out);
  return (void *)(size_t)(status == RELAYBOX_NULL_POINTER &&
                          contains(relaybox_last_error(), "url"));
}

static void arguments(const char *url) {
  relaybox_outbox *outbox = (relaybox_outbox *)&failures; /* must be reset */
  CHECK(relaybox_outbox_open(NULL, NULL, false, &outbox) == RELAYBOX_NULL_POINTER);
  CHECK(outbox == NULL);
  CHECK(contains(relaybox_last_error(), "`url` must not be NULL"));
  CHECK(relaybox_outbox_open(url, NULL, false, NULL) == RELAYBOX_NULL_POINTER);
  CHECK(contains(relaybox_last_error(), "out_outbox"));
  CHECK(relaybox_outbox_open("postgres://\xff\xfe", NULL, false, &outbox) ==
        RELAYBOX_INVALID_UTF8);
  CHECK(contains(relaybox_last_error(), "UTF-8"));
  CHECK(relaybox_outbox_open(url, "{\"table_prefx\": \"x_\"}", false, &outbox) ==
        RELAYBOX_INVALID_CONFIG);
  CHECK(contains(relaybox_last_error(), "table_prefx"));
  CHECK(relaybox_outbox_open(url, "not json", false, &outbox) == RELAYBOX_INVALID_CONFIG);
  /* The last error may be an argument of the next call (valgrind checks the
   * memory stays valid while the call replaces it). */
  CHECK(relaybox_outbox_open(url, relaybox_last_error(), false, &outbox) ==
        RELAYBOX_INVALID_CONFIG);
  CHECK(contains(relaybox_last_error(), "store options"));

  /* A success clears the last error; each thread has its own. */
  char *sql = NULL;
  OK(relaybox_schema_sql("postgres", "abi_", 4, &sql));
  CHECK(strcmp(relaybox_last_error(), "") == 0);
  CHECK(contains(sql, "abi_outbox"));
  relaybox_string_free(sql);
  CHECK(relaybox_schema_sql("oracle", "abi_", 4, &sql) == RELAYBOX_INVALID_CONFIG);
  CHECK(sql == NULL);
  pthread_t thread;
  void *thread_ok = NULL;
  CHECK(pthread_create(&thread, NULL, fail_on_other_thread, NULL) == 0);
  CHECK(pthread_join(thread, &thread_ok) == 0);
  CHECK(thread_ok != NULL);
  CHECK(contains(relaybox_last_error(), "oracle"));

  CHECK(relaybox__panic_for_tests() == RELAYBOX_INTERNAL);
  CHECK(contains(relaybox_last_error(), "panic"));
  CHECK(strcmp(relaybox_status_name(RELAYBOX_DATABASE), "database") == 0);
  CHECK(strcmp(relaybox_status_name(RELAYBOX_OK), "ok") == 0);

  /* Freeing NULL is allowed. */
  CHECK(relaybox_outbox_free(NULL) == RELAYBOX_OK);
  CHECK(relaybox_tx_free(NULL) == RELAYBOX_OK);
  CHECK(relaybox_relay_free(NULL) == RELAYBOX_OK);
  CHECK(relaybox_consumer_free(NULL) == RELAYBOX_OK);
  relaybox_string_free(NULL);
}

static void transactions(relaybox_outbox *outbox) {
  char spec[256], sql[256];
  relaybox_tx *tx = NULL;
  OK(relaybox_outbox_begin(outbox, &tx));

  /* Invalid messages are refused with their own status; nothing is written. */
  char *id = (char *)"untouched";
  CHECK(relaybox_tx_enqueue(tx, "{\"topic\": \"t\", \"payload\": 1, \"kee\": 1}", &id) ==
        RELAYBOX_INVALID_MESSAGE);
  CHECK(id == NULL);
  CHECK(contains(relaybox_last_error(), "kee"));
  CHECK(relaybox_tx_enqueue(tx, "{\"topic\": \"no spaces\", \"payload\": 1}", NULL) ==
        RELAYBOX_INVALID_TOPIC);
  CHECK(relaybox_tx_enqueue(tx, "{\"topic\": \"t\"}", NULL) == RELAYBOX_INVALID_MESSAGE);
  CHECK(relaybox_tx_enqueue(tx, "[", NULL) == RELAYBOX_INVALID_MESSAGE);
  CHECK(relaybox_tx_enqueue(tx, NULL, NULL) == RELAYBOX_NULL_POINTER);
  CHECK(relaybox_tx_enqueue(tx, "{\"topic\": \"\xc3\x28\"}", NULL) == RELAYBOX_INVALID_UTF8);
  CHECK(relaybox_tx_enqueue_batch(
            tx, "[{\"topic\": \"t\", \"payload\": 1}, {\"topic\": \"t\"}]", NULL) ==
        RELAYBOX_INVALID_MESSAGE);
  CHECK(relaybox_tx_execute(tx, "SELECT $1::int", "{\"a\": 1}", NULL) ==
        RELAYBOX_INVALID_VALUE);
  CHECK(relaybox_tx_execute(NULL, "SELECT 1", NULL, NULL) == RELAYBOX_NULL_POINTER);

  /* Values round-trip through JSON parameters and rows. */
  char *rows = NULL;
  OK(relaybox_tx_query(tx,
                       "SELECT $1::int8 AS i, $2::text AS s, $3::jsonb AS j, $4::bool AS b, "
                       "$5::text IS NULL AS n, $6::uuid AS u",
                       "[42, \"h\\u00e9\", {\"k\": [1]}, true, null, "
                       "\"01a20312-5cc1-76c3-9703-b83e696f9d1a\"]",
                       &rows));
  CHECK(contains(rows, "\"i\":42"));
  CHECK(contains(rows, "\"s\":\"h\xc3\xa9\""));
  CHECK(contains(rows, "\"j\":{\"k\":[1]}"));
  CHECK(contains(rows, "\"b\":true"));
  CHECK(contains(rows, "\"n\":true"));
  CHECK(contains(rows, "\"u\":\"01a20312-5cc1-76c3-9703-b83e696f9d1a\""));
  relaybox_string_free(rows);

  char *ids = NULL;
  snprintf(spec, sizeof spec,
           "[{\"topic\": \"%s\", \"key\": \"a\", \"payload_text\": \"one\"},"
           " {\"topic\": \"%s\", \"key\": \"b\", \"payload_base64\": \"AAE=\"}]",
           topic, topic);
  OK(relaybox_tx_enqueue_batch(tx, spec, &ids));
  CHECK(ids != NULL && ids[0] == '[' && strlen(ids) == 2 + 2 * 38 + 1);
  relaybox_string_free(ids);
  OK(relaybox_tx_commit(tx));
  CHECK(relaybox_tx_commit(tx) == RELAYBOX_CLOSED);
  CHECK(relaybox_tx_execute(tx, "SELECT 1", NULL, NULL) == RELAYBOX_CLOSED);
  CHECK(relaybox_tx_set_failure_reason(tx, "x") == RELAYBOX_MISUSE);
  OK(relaybox_tx_free(tx));

  int64_t pending = -1;
  OK(relaybox_outbox_pending_count(outbox, &pending));
  CHECK(pending == 2);

  /* A database error aborts the transaction; a dropped one rolls back. */
  OK(relaybox_outbox_begin(outbox, &tx));
  snprintf(spec, sizeof spec, "{\"topic\": \"%s\", \"payload\": null}", topic);
  OK(relaybox_tx_enqueue(tx, spec, NULL));
  CHECK(relaybox_tx_execute(tx, "SELECT * FROM no_such_table", NULL, NULL) ==
        RELAYBOX_DATABASE);
  CHECK(contains(relaybox_last_error(), "no_such_table"));
  OK(relaybox_tx_free(tx));
  OK(relaybox_outbox_pending_count(outbox, &pending));
  CHECK(pending == 2);
  snprintf(sql, sizeof sql, "SELECT count(*) AS n FROM %soutbox", prefix);
  CHECK(count(outbox, sql) == 2);

  char *status = NULL;
  OK(relaybox_outbox_status_json(outbox, &status));
  CHECK(contains(status, topic));
  relaybox_string_free(status);
}

/* The handler of the consumer test: message "a" is rejected, message "b"
 * fails once and then succeeds; both try what a handler must not do. */
struct probe {
  atomic_int calls_a;
  atomic_int calls_b;
  atomic_int misuse_refused;
  char sql[160];
};

static int handler(const char *message_json, size_t len, relaybox_tx *tx, void *user_data) {
  struct probe *probe = user_data;
  if (strlen(message_json) != len) {
    return RELAYBOX_HANDLER_REJECT;
  }
  if (relaybox_tx_commit(tx) == RELAYBOX_MISUSE && relaybox_tx_rollback(tx) == RELAYBOX_MISUSE &&
      relaybox_tx_free(tx) == RELAYBOX_MISUSE) {
    atomic_fetch_add(&probe->misuse_refused, 1);
  }
  char params[1024];
  snprintf(params, sizeof params, "[%s]", message_json);
  if (relaybox_tx_execute(tx, probe->sql, params, NULL) != RELAYBOX_OK) {
    relaybox_tx_set_failure_reason(tx, relaybox_last_error());
    return RELAYBOX_HANDLER_RETRY;
  }
  if (contains(message_json, "\"key\":\"a\"")) {
    atomic_fetch_add(&probe->calls_a, 1);
    relaybox_tx_set_failure_reason(tx, "message a is not wanted");
    return RELAYBOX_HANDLER_REJECT;
  }
  if (atomic_fetch_add(&probe->calls_b, 1) == 0) {
    return 7; /* any other value retries */
  }
  return RELAYBOX_HANDLER_ACK;
}

static void consumer(relaybox_outbox *outbox) {
  relaybox_relay *relay = NULL;
  CHECK(relaybox_relay_start(outbox, "\"carrier-pigeon\"", NULL, &relay) ==
        RELAYBOX_INVALID_CONFIG);
  CHECK(relay == NULL);
  OK(relaybox_relay_start(outbox, "\"database\"", "{\"poll_interval\": \"100ms\"}", &relay));

  struct probe probe;
  atomic_init(&probe.calls_a, 0);
  atomic_init(&probe.calls_b, 0);
  atomic_init(&probe.misuse_refused, 0);
  snprintf(probe.sql, sizeof probe.sql, "INSERT INTO %sseen (k) VALUES ($1->>'key')", prefix);
  relaybox_consumer *c = NULL;
  const char *config = "{\"group\": \"abi\", \"retry_delay\": \"50ms\", \"poll_interval\": \"50ms\"}";
  CHECK(relaybox_consumer_start(outbox, "\"database\"", topic, config, NULL, NULL, &c) ==
        RELAYBOX_NULL_POINTER);
  CHECK(relaybox_consumer_start(outbox, "\"database\"", topic, "{}", handler, &probe, &c) ==
        RELAYBOX_INVALID_CONFIG);
  OK(relaybox_consumer_start(outbox, "\"database\"", topic, config, handler, &probe, &c));

  relaybox_consumer_stats stats = {0};
  for (int i = 0; i < 600 && stats.processed + stats.dead_lettered < 2; i++) {
    usleep(50 * 1000);
    OK(relaybox_consumer_get_stats(c, &stats));
  }
  bool running = false;
  OK(relaybox_consumer_running(c, &running));
  CHECK(running);
  OK(relaybox_consumer_stop(c));
  OK(relaybox_consumer_running(c, &running));
  CHECK(!running);
  OK(relaybox_relay_stop(relay));

  CHECK(stats.processed == 1);
  CHECK(stats.dead_lettered == 1);
  CHECK(stats.retried == 1);
  CHECK(atomic_load(&probe.calls_a) == 1);
  CHECK(atomic_load(&probe.calls_b) == 2);
  CHECK(atomic_load(&probe.misuse_refused) == 3);

  /* Only the acknowledged attempt's write remains. */
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT count(*) AS n FROM %sseen WHERE k = 'b'", prefix);
  CHECK(count(outbox, sql) == 1);
  snprintf(sql, sizeof sql, "SELECT count(*) AS n FROM %sseen WHERE k = 'a'", prefix);
  CHECK(count(outbox, sql) == 0);

  /* The core's dead-letter warning reached the log callback with its fields. */
  struct log_copy warning;
  CHECK(find_log("rejected by its handler; dead-lettered", &warning));
  CHECK(warning.level == RELAYBOX_LOG_WARN);
  CHECK(strcmp(warning.target, "relaybox::consumer") == 0);
  CHECK(contains(warning.fields, "\"group\":\"abi\""));
  CHECK(contains(warning.fields, "\"error\":\"message a is not wanted\""));
  CHECK(contains(warning.text, "group=abi error=message a is not wanted"));

  char *letters = NULL;
  OK(relaybox_outbox_dead_letters_json(outbox, 10, &letters));
  CHECK(contains(letters, "message a is not wanted"));
  char id_field[64];
  const char *id = strstr(letters, "\"id\":\"");
  CHECK(id != NULL);
  if (id != NULL) {
    snprintf(id_field, sizeof id_field, "\"id\":\"%.36s\"", id + 6);
    CHECK(contains(warning.fields, id_field));
  }
  relaybox_string_free(letters);
  uint64_t purged = 0;
  CHECK(relaybox_outbox_purge_dead_letters(outbox, "[\"nope\"]", &purged) ==
        RELAYBOX_INVALID_VALUE);
  OK(relaybox_outbox_purge_dead_letters(outbox, NULL, &purged));
  CHECK(purged == 1);

  OK(relaybox_consumer_free(c));
  OK(relaybox_relay_free(relay));
}

/* The host-transaction protocol: statements for the application's driver. */
static void host_statements(relaybox_outbox *outbox) {
  char *json = NULL;
  CHECK(relaybox_outbox_insert_statements(outbox, "{\"topic\": \"bad topic!\", \"payload\": 1}", "dollar", &json) ==
        RELAYBOX_INVALID_TOPIC);
  CHECK(json == NULL);
  CHECK(relaybox_outbox_insert_statements(outbox, "[]", "dollar", &json) ==
        RELAYBOX_INVALID_MESSAGE);
  CHECK(relaybox_outbox_insert_statements(outbox, "{\"topic\": \"t\", \"payload\": 1}", "curly", &json) ==
        RELAYBOX_INVALID_CONFIG);
  CHECK(relaybox_outbox_insert_statements(outbox, NULL, "dollar", &json) == RELAYBOX_NULL_POINTER);

  OK(relaybox_outbox_insert_statements(
      outbox, "[{\"topic\": \"t\", \"key\": \"k\", \"payload\": {\"n\": 1}}, {\"topic\": \"t\", \"payload\": null}]",
      "dollar", &json));
  CHECK(contains(json, "INSERT INTO"));
  CHECK(contains(json, "$20"));
  CHECK(contains(json, "\"type\":\"bytes\""));
  CHECK(contains(json, "\"type\":\"null\""));
  CHECK(contains(json, "\"cast\":\"uuid\""));
  CHECK(contains(json, "\"cast\":\"timestamptz\""));
  CHECK(contains(json, "\"wake\":\"NOTIFY "));
  relaybox_string_free(json);

  char *wake = NULL;
  OK(relaybox_outbox_wake_statement(outbox, &wake));
  CHECK(contains(wake, "NOTIFY"));
  relaybox_string_free(wake);
  OK(relaybox_outbox_wake_relays(outbox));
  /* Statements only: nothing was written. */
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT count(*) AS n FROM %soutbox WHERE topic = 't'", prefix);
  CHECK(count(outbox, sql) == 0);
}

struct host_probe {
  atomic_int calls;
  atomic_int shaped;
};

static int host_handler(const char *message_json, size_t message_len, const char *inbox_json,
                        size_t inbox_len, relaybox_host_reason *reason, void *user_data) {
  struct host_probe *probe = user_data;
  if (strlen(message_json) == message_len && strlen(inbox_json) == inbox_len &&
      contains(inbox_json, "ON CONFLICT DO NOTHING") && contains(inbox_json, "\"host\"")) {
    atomic_fetch_add(&probe->shaped, 1);
  }
  if (atomic_fetch_add(&probe->calls, 1) == 0) {
    CHECK(relaybox_host_reason_set(reason, "the host rolled back") == RELAYBOX_OK);
    return RELAYBOX_HOST_FAILED;
  }
  return RELAYBOX_HOST_PROCESSED;
}

/* The host-mode consumer: outcomes reported by the callback drive retries. */
static void host_consumer(relaybox_outbox *outbox) {
  char host_topic[80];
  snprintf(host_topic, sizeof host_topic, "%s-host", topic);
  char spec[160];
  snprintf(spec, sizeof spec, "{\"topic\": \"%s\", \"key\": \"h\", \"payload\": 1}", host_topic);
  relaybox_tx *tx = NULL;
  char *id = NULL;
  OK(relaybox_outbox_begin(outbox, &tx));
  OK(relaybox_tx_enqueue(tx, spec, &id));
  OK(relaybox_tx_commit(tx));
  OK(relaybox_tx_free(tx));
  relaybox_string_free(id);

  relaybox_relay *relay = NULL;
  OK(relaybox_relay_start(outbox, "\"database\"", "{\"poll_interval\": \"100ms\"}", &relay));
  struct host_probe probe;
  atomic_init(&probe.calls, 0);
  atomic_init(&probe.shaped, 0);
  const char *config = "{\"group\": \"host\", \"retry_delay\": \"50ms\", \"poll_interval\": \"50ms\"}";
  relaybox_consumer *c = NULL;
  CHECK(relaybox_consumer_start_host(outbox, "\"database\"", host_topic, config, "dollar", NULL,
                                     NULL, &c) == RELAYBOX_NULL_POINTER);
  CHECK(relaybox_consumer_start_host(outbox, "\"database\"", host_topic, config, "curly",
                                     host_handler, &probe, &c) == RELAYBOX_INVALID_CONFIG);
  CHECK(c == NULL);
  OK(relaybox_consumer_start_host(outbox, "\"database\"", host_topic, config, "dollar",
                                  host_handler, &probe, &c));
  relaybox_consumer_stats stats = {0};
  for (int i = 0; i < 600 && stats.processed < 1; i++) {
    usleep(50 * 1000);
    OK(relaybox_consumer_get_stats(c, &stats));
  }
  OK(relaybox_consumer_stop(c));
  OK(relaybox_relay_stop(relay));
  CHECK(stats.processed == 1);
  CHECK(stats.retried == 1);
  CHECK(atomic_load(&probe.calls) == 2);
  CHECK(atomic_load(&probe.shaped) == 2);
  OK(relaybox_consumer_free(c));
  OK(relaybox_relay_free(relay));
}

/* Levels, value types, the log thread, and turning the callback off. */
static void log_levels(void) {
  CHECK(relaybox_set_log_callback(on_log, NULL, 9) == RELAYBOX_INVALID_CONFIG);
  CHECK(contains(relaybox_last_error(), "min_level"));
  OK(relaybox_set_log_callback(on_log, NULL, RELAYBOX_LOG_INFO));
  OK(relaybox__log_for_tests(RELAYBOX_LOG_DEBUG, "below info", 1));
  OK(relaybox__log_for_tests(RELAYBOX_LOG_INFO, "at info", 1));
  struct log_copy record;
  CHECK(find_log("at info", &record));
  CHECK(record.level == RELAYBOX_LOG_INFO);
  CHECK(strcmp(record.target, "relaybox::testing") == 0);
  CHECK(strcmp(record.text, "at info n=0 flag=true ratio=0.5 text=two words") == 0);
  CHECK(contains(record.fields, "\"n\":0"));
  CHECK(contains(record.fields, "\"flag\":true"));
  CHECK(contains(record.fields, "\"ratio\":0.5"));
  CHECK(contains(record.fields, "\"text\":\"two words\""));
  CHECK(!logged("below info"));

  OK(relaybox_set_log_callback(NULL, NULL, RELAYBOX_LOG_TRACE));
  OK(relaybox__log_for_tests(RELAYBOX_LOG_ERROR, "while off", 1));
  OK(relaybox_set_log_callback(on_log, NULL, RELAYBOX_LOG_WARN));
  OK(relaybox__log_for_tests(RELAYBOX_LOG_ERROR, "back on", 1));
  CHECK(find_log("back on", &record));
  CHECK(record.level == RELAYBOX_LOG_ERROR);
  CHECK(!logged("while off"));
  pthread_mutex_lock(&logs.lock);
  CHECK(logs.on_main_thread == 0);
  pthread_mutex_unlock(&logs.lock);
}

int main(void) {
  const char *url = getenv("RELAYBOX_TEST_DATABASE_URL");
  if (url == NULL || *url == '\0') {
    fprintf(stderr, "abi_test: set RELAYBOX_TEST_DATABASE_URL\n");
    return 1;
  }
  unsigned long run_id = (unsigned long)getpid() ^ (unsigned long)time(NULL);
  snprintf(prefix, sizeof prefix, "cabi_%lx_", run_id);
  snprintf(topic, sizeof topic, "cabi-%lx", run_id);

  logs.main_thread = pthread_self();
  log_levels();
  arguments(url);

  char options[128], sql[512];
  snprintf(options, sizeof options, "{\"table_prefix\": \"%s\", \"partitions\": 4}", prefix);
  relaybox_outbox *outbox = NULL;
  OK(relaybox_outbox_open(url, options, true, &outbox));
  relaybox_tx *tx = NULL;
  OK(relaybox_outbox_begin(outbox, &tx));
  snprintf(sql, sizeof sql, "CREATE TABLE %sseen (k text NOT NULL)", prefix);
  OK(relaybox_tx_execute(tx, sql, NULL, NULL));
  OK(relaybox_tx_commit(tx));
  OK(relaybox_tx_free(tx));

  transactions(outbox);
  consumer(outbox);
  host_statements(outbox);
  host_consumer(outbox);

  snprintf(sql, sizeof sql,
           "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables "
           "WHERE schemaname = current_schema() AND left(tablename, %zu) = '%s' "
           "LOOP EXECUTE format('DROP TABLE %%I CASCADE', t); END LOOP; END $$",
           strlen(prefix), prefix);
  OK(relaybox_outbox_begin(outbox, &tx));
  OK(relaybox_tx_execute(tx, sql, NULL, NULL));
  OK(relaybox_tx_commit(tx));
  OK(relaybox_tx_free(tx));
  OK(relaybox_outbox_close(outbox));
  CHECK(relaybox_outbox_begin(outbox, &tx) == RELAYBOX_CLOSED);
  OK(relaybox_outbox_free(outbox));
  OK(relaybox_set_log_callback(NULL, NULL, RELAYBOX_LOG_OFF));

  if (failures > 0) {
    fprintf(stderr, "abi_test: %d check(s) failed\n", failures);
    return 1;
  }
  printf("abi_test: all checks passed\n");
  return 0;
}
