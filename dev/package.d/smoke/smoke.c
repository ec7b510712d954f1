/*
 * The C package's check program: built against an unpacked release tarball
 * with `pkg-config --cflags --libs relaybox`. On SQLite in a fresh directory
 * it enqueues one message in a transaction, relays it over the database
 * transport, consumes it once, and checks that a second consumer of the
 * same group does not handle it again. Prints
 * `smoke: delivered=1 handled=1 startup_ms=<n>`, where n is the time from
 * main() to the first enqueue's commit returning. Exits non-zero on failure.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "relaybox.h"

static void check(relaybox_status status, const char *what) {
  if (status != RELAYBOX_OK) {
    fprintf(stderr, "smoke: %s failed: %s (%s)\n", what, relaybox_status_name(status),
            relaybox_last_error());
    exit(1);
  }
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Counts the handler's calls; runs on the library's threads. */
static int handle(const char *message_json, size_t len, relaybox_tx *tx, void *user_data) {
  (void)message_json;
  (void)len;
  (void)tx;
  atomic_fetch_add((atomic_int *)user_data, 1);
  return RELAYBOX_HANDLER_ACK;
}

/* Consumes "smoke" with group "smoke" until `want` handler calls or 20 s,
 * then 300 ms more for any extra call; returns the consumer's processed count. */
static uint64_t consume(relaybox_outbox *outbox, atomic_int *calls, int want) {
  relaybox_consumer *consumer = NULL;
  check(relaybox_consumer_start(outbox, "\"database\"", "smoke",
                                "{\"group\": \"smoke\", \"poll_interval\": \"50ms\"}", handle,
                                calls, &consumer),
        "consumer_start");
  for (int i = 0; i < 400 && atomic_load(calls) < want; i++) {
    usleep(50 * 1000);
  }
  usleep(300 * 1000);
  check(relaybox_consumer_stop(consumer), "consumer_stop");
  relaybox_consumer_stats stats;
  check(relaybox_consumer_get_stats(consumer, &stats), "consumer_stats");
  check(relaybox_consumer_free(consumer), "consumer_free");
  return stats.processed;
}

int main(int argc, char **argv) {
  double start = now_ms();
  if (argc != 2) {
    fprintf(stderr, "usage: smoke DIRECTORY\n");
    return 2;
  }
  char url[4096];
  snprintf(url, sizeof url, "sqlite://%s/smoke.db", argv[1]);

  relaybox_outbox *outbox = NULL;
  check(relaybox_outbox_open(url, NULL, true, &outbox), "outbox_open");
  relaybox_tx *tx = NULL;
  check(relaybox_outbox_begin(outbox, &tx), "begin");
  check(relaybox_tx_enqueue(tx, "{\"topic\": \"smoke\", \"key\": \"k\", \"payload\": {\"n\": 1}}",
                            NULL),
        "enqueue");
  check(relaybox_tx_commit(tx), "commit");
  check(relaybox_tx_free(tx), "tx_free");
  double startup = now_ms() - start;

  relaybox_relay *relay = NULL;
  check(relaybox_relay_start(outbox, "\"database\"", "{\"poll_interval\": \"50ms\"}", &relay),
        "relay_start");
  atomic_int calls;
  atomic_init(&calls, 0);
  uint64_t processed = consume(outbox, &calls, 1);
  check(relaybox_relay_stop(relay), "relay_stop");
  relaybox_relay_stats relay_stats;
  check(relaybox_relay_get_stats(relay, &relay_stats), "relay_stats");
  check(relaybox_relay_free(relay), "relay_free");
  if (relay_stats.delivered != 1 || processed != 1 || atomic_load(&calls) != 1) {
    fprintf(stderr, "smoke: expected 1 delivered and 1 handled, got %llu delivered, %d handled\n",
            (unsigned long long)relay_stats.delivered, atomic_load(&calls));
    return 1;
  }

  /* The same group again: the message is not handled a second time. */
  uint64_t again = consume(outbox, &calls, 2);
  if (again != 0 || atomic_load(&calls) != 1) {
    fprintf(stderr, "smoke: the message was handled again (%d calls)\n", atomic_load(&calls));
    return 1;
  }
  check(relaybox_outbox_close(outbox), "outbox_close");
  check(relaybox_outbox_free(outbox), "outbox_free");
  printf("smoke: relaybox %s delivered=1 handled=1 startup_ms=%.1f\n", relaybox_version(),
         startup);
  return 0;
}
