/*
 * The cross-language fixtures of tests/fixtures (the directory is the first
 * argument), read from C as every binding reads them:
 *
 * - envelopes/<name>.json: each file's message is enqueued (its id, timestamps,
 *   payload bytes and headers given in the spec), relayed through the
 *   database transport and consumed; the consumer handler's canonical JSON
 *   is the file's content, byte for byte;
 * - invalid_messages.json: each message is refused by relaybox_tx_enqueue
 *   with the status named by its error code (relaybox_status_name), in a
 *   store with the stated max_payload_bytes, and nothing is written.
 *
 * partitions.json is not read: the C ABI has no partition function.
 * Runs against RELAYBOX_TEST_DATABASE_URL; removes its tables at the end.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "relaybox.h"

static int failures = 0;

#define CHECK(cond, what)                                                  \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "fixtures_test.c:%d: %s: failed: %s\n", __LINE__,    \
              (what), #cond);                                              \
      failures++;                                                          \
    }                                                                      \
  } while (0)

#define OK(call)                                                           \
  do {                                                                     \
    relaybox_status ok_status_ = (call);                                   \
    if (ok_status_ != RELAYBOX_OK) {                                       \
      fprintf(stderr, "fixtures_test.c:%d: %s returned %s: %s\n", __LINE__, \
              #call, relaybox_status_name(ok_status_),                     \
              relaybox_last_error());                                      \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

/* The whole file at `path`, NUL-terminated; exits when it cannot be read. */
static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "fixtures_test: cannot open %s\n", path);
    exit(1);
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)size + 1);
  if (text == NULL || fread(text, 1, (size_t)size, f) != (size_t)size) {
    fprintf(stderr, "fixtures_test: cannot read %s\n", path);
    exit(1);
  }
  text[size] = '\0';
  fclose(f);
  return text;
}

/*
 * A JSON scanner just large enough for the fixtures: it finds where values
 * start and end (strings with their escapes, nested objects and arrays),
 * leaving their text untouched.
 */
static const char *skip_space(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
  return p;
}

/* The end of the value starting at `p` (which is not whitespace). */
static const char *skip_value(const char *p) {
  if (*p == '"') {
    for (p++; *p != '"'; p++) {
      if (*p == '\\') p++;
      if (*p == '\0') return p;
    }
    return p + 1;
  }
  if (*p == '{' || *p == '[') {
    int depth = 0;
    do {
      if (*p == '"') {
        p = skip_value(p);
        continue;
      }
      if (*p == '{' || *p == '[') depth++;
      if (*p == '}' || *p == ']') depth--;
      p++;
    } while (depth > 0 && *p != '\0');
    return p;
  }
  while (*p != '\0' && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n') p++;
  return p;
}

/* One member of an object: its key (with quotes) and value, as text spans. */
struct member {
  const char *key;
  size_t key_len;
  const char *value;
  size_t value_len;
};

/*
 * The next member of the object whose text continues at `*cursor` (just
 * after its '{' at first); 0 at the closing brace.
 */
static int next_member(const char **cursor, struct member *m) {
  const char *p = skip_space(*cursor);
  if (*p == ',') p = skip_space(p + 1);
  if (*p != '"') return 0;
  m->key = p;
  p = skip_value(p);
  m->key_len = (size_t)(p - m->key);
  p = skip_space(p);
  if (*p != ':') return 0;
  p = skip_space(p + 1);
  m->value = p;
  p = skip_value(p);
  m->value_len = (size_t)(p - m->value);
  *cursor = p;
  return 1;
}

/* The value of member `name` (a quoted key) of the object at `object`. */
static int member_of(const char *object, const char *name, struct member *out) {
  const char *cursor = skip_space(object) + 1;
  struct member m;
  while (next_member(&cursor, &m)) {
    if (m.key_len == strlen(name) && strncmp(m.key, name, m.key_len) == 0) {
      *out = m;
      return 1;
    }
  }
  return 0;
}

/*
 * The message spec of a canonical message object: the same members, the
 * base64 `payload` given as `payload_base64` (a spec's `payload` is a JSON
 * value). Free it with free().
 */
static char *spec_of(const char *object) {
  size_t cap = strlen(object) + 64;
  char *spec = malloc(cap);
  size_t len = 0;
  spec[len++] = '{';
  const char *cursor = skip_space(object) + 1;
  struct member m;
  while (next_member(&cursor, &m)) {
    if (len > 1) spec[len++] = ',';
    if (m.key_len == 9 && strncmp(m.key, "\"payload\"", 9) == 0) {
      len += (size_t)sprintf(spec + len, "\"payload_base64\"");
    } else {
      memcpy(spec + len, m.key, m.key_len);
      len += m.key_len;
    }
    spec[len++] = ':';
    memcpy(spec + len, m.value, m.value_len);
    len += m.value_len;
  }
  spec[len++] = '}';
  spec[len] = '\0';
  return spec;
}

/* What the consumer handler received: each message's canonical JSON. */
#define MAX_ENVELOPES 32
static struct {
  pthread_mutex_t lock;
  char *received[MAX_ENVELOPES];
  int count;
} inbox = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int keep(const char *message_json, size_t len, relaybox_tx *tx, void *user_data) {
  (void)tx;
  (void)user_data;
  pthread_mutex_lock(&inbox.lock);
  if (inbox.count < MAX_ENVELOPES) {
    inbox.received[inbox.count] = malloc(len + 1);
    memcpy(inbox.received[inbox.count], message_json, len + 1);
    inbox.count++;
  }
  pthread_mutex_unlock(&inbox.lock);
  return RELAYBOX_HANDLER_ACK;
}

static int received_count(void) {
  pthread_mutex_lock(&inbox.lock);
  int n = inbox.count;
  pthread_mutex_unlock(&inbox.lock);
  return n;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void envelopes(const char *url, const char *dir, const char *prefix) {
  char path[1024], options[128];
  snprintf(path, sizeof path, "%s/envelopes", dir);
  DIR *d = opendir(path);
  if (d == NULL) {
    fprintf(stderr, "fixtures_test: no directory %s\n", path);
    exit(1);
  }
  char *names[MAX_ENVELOPES];
  int n = 0;
  struct dirent *entry;
  while ((entry = readdir(d)) != NULL && n < MAX_ENVELOPES) {
    size_t len = strlen(entry->d_name);
    if (len > 5 && strcmp(entry->d_name + len - 5, ".json") == 0) names[n++] = strdup(entry->d_name);
  }
  closedir(d);
  qsort(names, (size_t)n, sizeof names[0], by_name);
  CHECK(n >= 4, "envelopes/*.json");

  snprintf(options, sizeof options, "{\"table_prefix\": \"%senv_\"}", prefix);
  relaybox_outbox *outbox = NULL;
  OK(relaybox_outbox_open(url, options, true, &outbox));

  /* One consumer per topic; the files' topics are distinct. */
  char *texts[MAX_ENVELOPES];
  relaybox_consumer *consumers[MAX_ENVELOPES];
  relaybox_tx *tx = NULL;
  OK(relaybox_outbox_begin(outbox, &tx));
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/envelopes/%s", dir, names[i]);
    texts[i] = read_file(path);
    size_t len = strlen(texts[i]);
    CHECK(len > 0 && texts[i][len - 1] == '\n', names[i]);
    if (len > 0 && texts[i][len - 1] == '\n') texts[i][len - 1] = '\0';
    char *spec = spec_of(texts[i]);
    OK(relaybox_tx_enqueue(tx, spec, NULL));
    free(spec);
  }
  OK(relaybox_tx_commit(tx));
  OK(relaybox_tx_free(tx));

  relaybox_relay *relay = NULL;
  OK(relaybox_relay_start(outbox, "\"database\"", "{\"poll_interval\": \"50ms\"}", &relay));
  const char *config = "{\"group\": \"fixtures\", \"poll_interval\": \"50ms\"}";
  for (int i = 0; i < n; i++) {
    struct member topic;
    if (!member_of(texts[i], "\"topic\"", &topic)) {
      fprintf(stderr, "fixtures_test: %s has no topic\n", names[i]);
      exit(1);
    }
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)topic.value_len - 2, topic.value + 1);
    OK(relaybox_consumer_start(outbox, "\"database\"", name, config, keep, NULL, &consumers[i]));
  }
  for (int i = 0; i < 600 && received_count() < n; i++) usleep(50 * 1000);
  for (int i = 0; i < n; i++) {
    OK(relaybox_consumer_stop(consumers[i]));
    OK(relaybox_consumer_free(consumers[i]));
  }
  OK(relaybox_relay_stop(relay));
  OK(relaybox_relay_free(relay));
  CHECK(received_count() == n, "every envelope consumed");

  /* Each file's content is what a consumer received, byte for byte. */
  for (int i = 0; i < n; i++) {
    int found = 0;
    for (int j = 0; j < inbox.count; j++) {
      if (strcmp(inbox.received[j], texts[i]) == 0) found = 1;
    }
    if (!found) {
      fprintf(stderr, "fixtures_test: %s\n  expected %s\n  received:\n", names[i], texts[i]);
      for (int j = 0; j < inbox.count; j++) fprintf(stderr, "    %s\n", inbox.received[j]);
    }
    CHECK(found, names[i]);
    free(texts[i]);
    free(names[i]);
  }
  for (int j = 0; j < inbox.count; j++) free(inbox.received[j]);
  OK(relaybox_outbox_close(outbox));
  OK(relaybox_outbox_free(outbox));
}

static int64_t pending(relaybox_outbox *outbox) {
  int64_t count = -1;
  OK(relaybox_outbox_pending_count(outbox, &count));
  return count;
}

static void invalid_messages(const char *url, const char *dir, const char *prefix) {
  char path[1024], options[160];
  snprintf(path, sizeof path, "%s/invalid_messages.json", dir);
  char *text = read_file(path);
  int cases = 0;
  const char *p = skip_space(text);
  if (*p != '[') {
    fprintf(stderr, "fixtures_test: %s is not a JSON array\n", path);
    exit(1);
  }
  p = skip_space(p + 1);
  /* One store per stated payload limit (0: the default limit). */
  long limits[8];
  relaybox_outbox *outboxes[8];
  int stores = 0;
  while (*p == '{') {
    const char *end = skip_value(p);
    struct member name, message, code, limit;
    if (!member_of(p, "\"name\"", &name) || !member_of(p, "\"message\"", &message) ||
        !member_of(p, "\"error_code\"", &code)) {
      fprintf(stderr, "fixtures_test: a case without name, message or error_code\n");
      exit(1);
    }
    long max_payload = member_of(p, "\"max_payload_bytes\"", &limit) ? strtol(limit.value, NULL, 10) : 0;
    int store = 0;
    while (store < stores && limits[store] != max_payload) store++;
    if (store == stores) {
      if (max_payload > 0) {
        snprintf(options, sizeof options, "{\"table_prefix\": \"%sinv%d_\", \"max_payload_bytes\": %ld}",
                 prefix, store, max_payload);
      } else {
        snprintf(options, sizeof options, "{\"table_prefix\": \"%sinv%d_\"}", prefix, store);
      }
      OK(relaybox_outbox_open(url, options, true, &outboxes[store]));
      limits[store] = max_payload;
      stores++;
    }

    char label[256], expected[64];
    snprintf(label, sizeof label, "%.*s", (int)name.value_len, name.value);
    snprintf(expected, sizeof expected, "%.*s", (int)code.value_len - 2, code.value + 1);
    char *spec = spec_of(message.value);
    relaybox_tx *tx = NULL;
    OK(relaybox_outbox_begin(outboxes[store], &tx));
    char *id = NULL;
    relaybox_status status = relaybox_tx_enqueue(tx, spec, &id);
    if (strcmp(relaybox_status_name(status), expected) != 0) {
      fprintf(stderr, "fixtures_test: %s: expected %s, got %s (%s)\n", label, expected,
              relaybox_status_name(status), relaybox_last_error());
    }
    CHECK(strcmp(relaybox_status_name(status), expected) == 0, label);
    CHECK(id == NULL, label);
    OK(relaybox_tx_commit(tx));
    OK(relaybox_tx_free(tx));
    free(spec);
    cases++;
    p = skip_space(end);
    if (*p == ',') p = skip_space(p + 1);
  }
  free(text);
  CHECK(cases >= 10, "invalid_messages.json");
  for (int i = 0; i < stores; i++) {
    CHECK(pending(outboxes[i]) == 0, "rejected messages write nothing");
    OK(relaybox_outbox_close(outboxes[i]));
    OK(relaybox_outbox_free(outboxes[i]));
  }
}

int main(int argc, char **argv) {
  const char *url = getenv("RELAYBOX_TEST_DATABASE_URL");
  if (url == NULL || *url == '\0' || argc != 2) {
    fprintf(stderr, "usage: RELAYBOX_TEST_DATABASE_URL=... fixtures_test <tests/fixtures directory>\n");
    return 1;
  }
  char prefix[64], sql[512];
  snprintf(prefix, sizeof prefix, "cfix_%lx_", (unsigned long)getpid() ^ (unsigned long)time(NULL));

  envelopes(url, argv[1], prefix);
  invalid_messages(url, argv[1], prefix);

  relaybox_outbox *outbox = NULL;
  relaybox_tx *tx = NULL;
  char options[128];
  snprintf(options, sizeof options, "{\"table_prefix\": \"%s\"}", prefix);
  OK(relaybox_outbox_open(url, options, true, &outbox));
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
  OK(relaybox_outbox_free(outbox));

  if (failures > 0) {
    fprintf(stderr, "fixtures_test: %d check(s) failed\n", failures);
    return 1;
  }
  printf("fixtures_test: all checks passed\n");
  return 0;
}
