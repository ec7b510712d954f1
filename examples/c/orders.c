/*
 * relaybox from C: an order and its event written in one transaction, the
 * relay publishing the event, and a consumer callback marking the order
 * shipped in the consumer's own transaction.
 *
 * Environment: RELAYBOX_TEST_DATABASE_URL (or RELAYBOX_DATABASE_URL), a
 * PostgreSQL URL; RELAYBOX_KAFKA_BOOTSTRAP, when set, relays through that
 * Kafka broker, otherwise through the database transport. Everything the
 * program creates (tables with a prefix of its own, a topic of its own) is
 * removed at the end. Exits non-zero on any failure.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "relaybox.h"

#define ORDERS 5

static void check(relaybox_status status, const char *what) {
  if (status != RELAYBOX_OK) {
    fprintf(stderr, "orders: %s failed: %s (%s)\n", what,
            relaybox_status_name(status), relaybox_last_error());
    exit(1);
  }
}

static void expect(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "orders: expected %s\n", what);
    exit(1);
  }
}

/* What the consumer callback shares with main: the SQL it runs and a count of
 * its calls. Called on the library's threads, so the counter is atomic. */
struct shipping {
  char sql[256];
  atomic_int calls;
};

/* Marks the order of the message's key shipped, in the transaction that also
 * records the message as processed. The message JSON itself is the one SQL
 * parameter (a JSON object becomes a jsonb parameter). */
static int ship(const char *message_json, size_t len, relaybox_tx *tx,
                void *user_data) {
  struct shipping *shipping = user_data;
  atomic_fetch_add(&shipping->calls, 1);
  char *params = malloc(len + 3);
  if (params == NULL) {
    return RELAYBOX_HANDLER_RETRY;
  }
  snprintf(params, len + 3, "[%s]", message_json);
  uint64_t updated = 0;
  relaybox_status status =
      relaybox_tx_execute(tx, shipping->sql, params, &updated);
  free(params);
  if (status != RELAYBOX_OK) {
    relaybox_tx_set_failure_reason(tx, relaybox_last_error());
    return RELAYBOX_HANDLER_RETRY;
  }
  if (updated != 1) {
    relaybox_tx_set_failure_reason(tx, "no order for this message");
    return RELAYBOX_HANDLER_REJECT;
  }
  return RELAYBOX_HANDLER_ACK;
}

/* Runs one statement in a transaction of its own. */
static void run(relaybox_outbox *outbox, const char *sql) {
  relaybox_tx *tx = NULL;
  check(relaybox_outbox_begin(outbox, &tx), "begin");
  check(relaybox_tx_execute(tx, sql, NULL, NULL), sql);
  check(relaybox_tx_commit(tx), "commit");
  check(relaybox_tx_free(tx), "tx_free");
}

/* The first column of the first row of a one-row integer query. */
static long long query_number(relaybox_outbox *outbox, const char *sql) {
  relaybox_tx *tx = NULL;
  char *rows = NULL;
  check(relaybox_outbox_begin(outbox, &tx), "begin");
  check(relaybox_tx_query(tx, sql, NULL, &rows), sql);
  check(relaybox_tx_rollback(tx), "rollback");
  check(relaybox_tx_free(tx), "tx_free");
  const char *colon = strchr(rows, ':');
  long long n = colon ? strtoll(colon + 1, NULL, 10) : -1;
  relaybox_string_free(rows);
  return n;
}

int main(void) {
  const char *url = getenv("RELAYBOX_TEST_DATABASE_URL");
  if (url == NULL || *url == '\0') {
    url = getenv("RELAYBOX_DATABASE_URL");
  }
  if (url == NULL || *url == '\0') {
    fprintf(stderr, "orders: set RELAYBOX_TEST_DATABASE_URL to a PostgreSQL URL\n");
    return 1;
  }
  const char *kafka = getenv("RELAYBOX_KAFKA_BOOTSTRAP");
  char transport[256];
  if (kafka != NULL && *kafka != '\0') {
    snprintf(transport, sizeof transport,
             "{\"kafka\": {\"bootstrap_servers\": \"%s\", \"create_topics\": true, "
             "\"topic_partitions\": 1}}",
             kafka);
  } else {
    snprintf(transport, sizeof transport, "\"database\"");
  }

  char prefix[64], topic[64], orders[96], options[128], sql[512];
  unsigned long run_id = (unsigned long)getpid() ^ (unsigned long)time(NULL);
  snprintf(prefix, sizeof prefix, "c_%lx_", run_id);
  snprintf(topic, sizeof topic, "c-orders-%lx", run_id);
  snprintf(orders, sizeof orders, "%sorders", prefix);
  snprintf(options, sizeof options, "{\"table_prefix\": \"%s\"}", prefix);
  printf("relaybox %s, transport %s\n", relaybox_version(), transport);

  relaybox_outbox *outbox = NULL;
  check(relaybox_outbox_open(url, options, true, &outbox), "outbox_open");
  snprintf(sql, sizeof sql,
           "CREATE TABLE %s (id int PRIMARY KEY, item text NOT NULL, "
           "shipped int NOT NULL DEFAULT 0)",
           orders);
  run(outbox, sql);

  /* Each order row and its event commit together. */
  for (int id = 1; id <= ORDERS; id++) {
    relaybox_tx *tx = NULL;
    char params[128], spec[256];
    char *message_id = NULL;
    check(relaybox_outbox_begin(outbox, &tx), "begin");
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, item) VALUES ($1, $2)", orders);
    snprintf(params, sizeof params, "[%d, \"book %d\"]", id, id);
    check(relaybox_tx_execute(tx, sql, params, NULL), "insert order");
    snprintf(spec, sizeof spec,
             "{\"topic\": \"%s\", \"key\": \"%d\", \"type\": \"OrderPlaced\", "
             "\"payload\": {\"order\": %d, \"item\": \"book %d\"}}",
             topic, id, id, id);
    check(relaybox_tx_enqueue(tx, spec, &message_id), "enqueue");
    check(relaybox_tx_commit(tx), "commit");
    check(relaybox_tx_free(tx), "tx_free");
    printf("order %d placed, event %s\n", id, message_id);
    relaybox_string_free(message_id);
  }

  /* A rolled-back order leaves neither a row nor an event. */
  {
    relaybox_tx *tx = NULL;
    check(relaybox_outbox_begin(outbox, &tx), "begin");
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, item) VALUES (99, 'lost')", orders);
    check(relaybox_tx_execute(tx, sql, NULL, NULL), "insert order 99");
    char spec[160];
    snprintf(spec, sizeof spec, "{\"topic\": \"%s\", \"key\": \"99\", \"payload\": {}}", topic);
    check(relaybox_tx_enqueue(tx, spec, NULL), "enqueue 99");
    check(relaybox_tx_rollback(tx), "rollback");
    check(relaybox_tx_free(tx), "tx_free");
  }
  int64_t pending = 0;
  check(relaybox_outbox_pending_count(outbox, &pending), "pending_count");
  expect(pending == ORDERS, "one pending event per committed order");

  relaybox_relay *relay = NULL;
  check(relaybox_relay_start(outbox, transport, "{\"poll_interval\": \"200ms\"}", &relay),
        "relay_start");

  struct shipping shipping;
  snprintf(shipping.sql, sizeof shipping.sql,
           "UPDATE %s SET shipped = shipped + 1 WHERE id::text = $1->>'key'", orders);
  atomic_init(&shipping.calls, 0);
  char consumer_config[160];
  snprintf(consumer_config, sizeof consumer_config,
           "{\"group\": \"c-orders-%lx\", \"poll_interval\": \"100ms\"}", run_id);
  relaybox_consumer *consumer = NULL;
  check(relaybox_consumer_start(outbox, transport, topic, consumer_config, ship,
                                &shipping, &consumer),
        "consumer_start");

  snprintf(sql, sizeof sql, "SELECT count(*) AS n FROM %s WHERE shipped > 0", orders);
  long long shipped = 0;
  for (int waited = 0; waited < 1200 && shipped < ORDERS; waited++) {
    usleep(100 * 1000);
    shipped = query_number(outbox, sql);
  }
  expect(shipped == ORDERS, "every order shipped within 120 s");

  check(relaybox_consumer_stop(consumer), "consumer_stop");
  check(relaybox_relay_stop(relay), "relay_stop");
  relaybox_relay_stats relay_stats;
  relaybox_consumer_stats consumer_stats;
  check(relaybox_relay_get_stats(relay, &relay_stats), "relay_stats");
  check(relaybox_consumer_get_stats(consumer, &consumer_stats), "consumer_stats");
  printf("relay delivered %llu, consumer processed %llu (%d handler calls)\n",
         (unsigned long long)relay_stats.delivered,
         (unsigned long long)consumer_stats.processed, atomic_load(&shipping.calls));
  expect(relay_stats.delivered == ORDERS, "the relay to deliver every event once");
  expect(consumer_stats.processed == ORDERS, "the consumer to process every event once");

  snprintf(sql, sizeof sql, "SELECT coalesce(sum(shipped), 0)::int8 AS n FROM %s", orders);
  expect(query_number(outbox, sql) == ORDERS, "each order shipped exactly once");
  snprintf(sql, sizeof sql, "SELECT count(*) AS n FROM %s WHERE id = 99", orders);
  expect(query_number(outbox, sql) == 0, "no row of the rolled-back order");
  check(relaybox_outbox_pending_count(outbox, &pending), "pending_count");
  expect(pending == 0, "an empty outbox");

  snprintf(sql, sizeof sql,
           "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables "
           "WHERE schemaname = current_schema() AND left(tablename, %zu) = '%s' "
           "LOOP EXECUTE format('DROP TABLE %%I CASCADE', t); END LOOP; END $$",
           strlen(prefix), prefix);
  run(outbox, sql);

  check(relaybox_consumer_free(consumer), "consumer_free");
  check(relaybox_relay_free(relay), "relay_free");
  check(relaybox_outbox_close(outbox), "outbox_close");
  check(relaybox_outbox_free(outbox), "outbox_free");
  printf("orders: %d orders placed, relayed and shipped exactly once\n", ORDERS);
  return 0;
}
