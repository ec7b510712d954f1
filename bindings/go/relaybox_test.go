package relaybox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"

	relaybox "github.com/relaybox/relaybox/bindings/go"
)

// env is one test's outbox (own table prefix and topic), pgx pool and
// database/sql handle on RELAYBOX_TEST_DATABASE_URL.
type env struct {
	url    string
	prefix string
	topic  string
	outbox *relaybox.Outbox
	pool   *pgxpool.Pool
	db     *sql.DB
}

var runs atomic.Int64

func setup(t *testing.T) *env {
	t.Helper()
	dbURL := os.Getenv("RELAYBOX_TEST_DATABASE_URL")
	if dbURL == "" {
		t.Fatal("RELAYBOX_TEST_DATABASE_URL is not set; start PostgreSQL with dev/services")
	}
	run := fmt.Sprintf("%x%x", os.Getpid(), runs.Add(1))
	e := &env{url: dbURL, prefix: "gobind_" + run + "_", topic: "gobind-" + run}
	var err error
	e.outbox, err = relaybox.Open(dbURL, relaybox.Options{"table_prefix": e.prefix, "partitions": 4}, true)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ctx := context.Background()
	if e.pool, err = pgxpool.New(ctx, dbURL); err != nil {
		t.Fatalf("pool: %v", err)
	}
	if e.db, err = sql.Open("pgx", dbURL); err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	e.mustExec(t, fmt.Sprintf("CREATE TABLE %sorders (id bigserial PRIMARY KEY, item text NOT NULL)", e.prefix))
	e.mustExec(t, fmt.Sprintf("CREATE TABLE %sseen (message_id uuid NOT NULL, item text NOT NULL)", e.prefix))
	t.Cleanup(func() {
		e.mustExec(t, fmt.Sprintf(`DO $$ DECLARE t text; BEGIN
			FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = current_schema()
			AND left(tablename, %d) = '%s' LOOP EXECUTE format('DROP TABLE %%I CASCADE', t); END LOOP; END $$`,
			len(e.prefix), e.prefix))
		_ = e.db.Close()
		e.pool.Close()
		if err := e.outbox.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return e
}

func (e *env) mustExec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) count(t *testing.T, table string) int64 {
	t.Helper()
	var n int64
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+e.prefix+table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func (e *env) message(item string) relaybox.Message {
	return relaybox.Message{Topic: e.topic, Key: item, Type: "order.created", Payload: map[string]string{"item": item}}
}

// eventually polls cond until it holds, failing after a generous deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantCode(t *testing.T, err error, target *relaybox.Error) {
	t.Helper()
	var rbErr *relaybox.Error
	if !errors.As(err, &rbErr) || !errors.Is(err, target) {
		t.Fatalf("want a relaybox %s error, got %v", target.Code, err)
	}
}

// sqlcQueries is what sqlc generates for pgx: it runs its statements
// through a DBTX, here the caller's transaction.
type sqlcDBTX interface {
	Exec(context.Context, string, ...interface{}) (pgconn.CommandTag, error)
	QueryRow(context.Context, string, ...interface{}) pgx.Row
}

type sqlcQueries struct{ db sqlcDBTX }

func (q *sqlcQueries) Exec(ctx context.Context, sql string, args ...interface{}) (pgconn.CommandTag, error) {
	return q.db.Exec(ctx, sql, args...)
}

func (q *sqlcQueries) QueryRow(ctx context.Context, sql string, args ...interface{}) pgx.Row {
	return q.db.QueryRow(ctx, sql, args...)
}

// A rolled-back pgx or database/sql transaction leaves neither the row nor
// the event; a committed one leaves both.
func TestEnqueueCommitsAndRollsBackWithTheTransaction(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	insert := "INSERT INTO " + e.prefix + "orders (item) VALUES ($1)"

	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, insert, "pgx-rolled-back"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.outbox.Enqueue(ctx, tx, e.message("pgx-rolled-back")); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	stx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stx.ExecContext(ctx, insert, "sql-rolled-back"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.outbox.Enqueue(ctx, stx, e.message("sql-rolled-back")); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if err := stx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "outbox"); n != 0 {
		t.Fatalf("rolled back: %d outbox rows", n)
	}
	if n := e.count(t, "orders"); n != 0 {
		t.Fatalf("rolled back: %d orders", n)
	}

	var ids []string
	tx, err = e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.outbox.Enqueue(ctx, tx, e.message("pgx-1"), e.message("pgx-2"))
	if err != nil {
		t.Fatalf("enqueue batch: %v", err)
	}
	ids = append(ids, got...)
	got, err = e.outbox.Enqueue(ctx, &sqlcQueries{db: tx}, e.message("sqlc"))
	if err != nil {
		t.Fatalf("enqueue through an sqlc DBTX: %v", err)
	}
	ids = append(ids, got...)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	stx, err = e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err = e.outbox.Enqueue(ctx, stx, relaybox.Message{Topic: e.topic, Data: []byte{0, 1, 2}})
	if err != nil {
		t.Fatalf("enqueue *sql.Tx: %v", err)
	}
	ids = append(ids, got...)
	if err := stx.Commit(); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 4 {
		t.Fatalf("ids: %v", ids)
	}
	pending, err := e.outbox.PendingCount()
	if err != nil || pending != 4 {
		t.Fatalf("pending: %d, %v", pending, err)
	}
	var payload []byte
	if err := e.pool.QueryRow(ctx, "SELECT payload FROM "+e.prefix+"outbox WHERE id = $1", ids[3]).Scan(&payload); err != nil || string(payload) != "\x00\x01\x02" {
		t.Fatalf("payload %q, %v", payload, err)
	}
}

// Bad input is a typed error and writes nothing.
func TestEnqueueRefusesBadInput(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.outbox.Enqueue(ctx, tx, e.message("ok"), relaybox.Message{Topic: "no spaces allowed", Payload: 1})
	wantCode(t, err, relaybox.ErrInvalidTopic)
	_, err = e.outbox.Enqueue(ctx, tx, relaybox.Message{Topic: e.topic, Payload: 1, Headers: map[string]string{"": "x"}})
	wantCode(t, err, relaybox.ErrInvalidHeader)
	_, err = e.outbox.Enqueue(ctx, tx)
	wantCode(t, err, relaybox.ErrInvalidMessage)
	// The transaction is still usable: nothing was sent to it.
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit after refused input: %v", err)
	}

	for _, bad := range []any{nil, "not a transaction", e.pool, e.db, (*sql.Tx)(nil)} {
		_, err = e.outbox.Enqueue(ctx, bad, e.message("x"))
		wantCode(t, err, relaybox.ErrInvalidConfig)
	}

	done, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = done.Rollback(ctx)
	_, err = e.outbox.Enqueue(ctx, done, e.message("x"))
	wantCode(t, err, relaybox.ErrClosed)
	sdone, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = sdone.Commit()
	_, err = e.outbox.Enqueue(ctx, sdone, e.message("x"))
	wantCode(t, err, relaybox.ErrClosed)

	// A transaction on another database of the same server.
	other, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	other.Path = "/postgres"
	conn, err := pgx.Connect(ctx, other.String())
	if err != nil {
		t.Fatalf("connect to the postgres database: %v", err)
	}
	defer conn.Close(ctx)
	otx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.outbox.Enqueue(ctx, otx, e.message("x"))
	wantCode(t, err, relaybox.ErrInvalidConfig)
	_ = otx.Rollback(ctx)

	if n := e.count(t, "outbox"); n != 0 {
		t.Fatalf("bad input wrote %d outbox rows", n)
	}
}

func (e *env) enqueueCommitted(t *testing.T, items ...string) []string {
	t.Helper()
	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var messages []relaybox.Message
	for _, item := range items {
		if _, err := tx.Exec(ctx, "INSERT INTO "+e.prefix+"orders (item) VALUES ($1)", item); err != nil {
			t.Fatal(err)
		}
		messages = append(messages, e.message(item))
	}
	ids, err := e.outbox.Enqueue(ctx, tx, messages...)
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

func (e *env) relay(t *testing.T) {
	t.Helper()
	relay, err := e.outbox.StartRelay("database", map[string]any{"poll_interval": "50ms"})
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	t.Cleanup(func() {
		if err := relay.Stop(); err != nil {
			t.Errorf("relay stop: %v", err)
		}
	})
}

func stats(t *testing.T, c *relaybox.Consumer) relaybox.Stats {
	t.Helper()
	s, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var fastRetry = relaybox.ConsumerConfig{"group": "billing", "retry_delay": "20ms", "poll_interval": "50ms"}

// A committed event is received once by a pgx consumer, whose write commits
// with the inbox row; delivered again after its position is lost, it is a
// duplicate and the handler does not run.
func TestPgxConsumerReceivesOnceAndDeduplicates(t *testing.T) {
	e := setup(t)
	ids := e.enqueueCommitted(t, "book")
	e.relay(t)
	var calls atomic.Int64
	handler := func(ctx context.Context, tx pgx.Tx, m *relaybox.Delivery) error {
		calls.Add(1)
		var body struct{ Item string }
		if err := m.Decode(&body); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO "+e.prefix+"seen (message_id, item) VALUES ($1, $2)", m.ID, body.Item)
		return err
	}
	c, err := e.outbox.ConsumePgx(e.pool, "database", e.topic, fastRetry, handler)
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	eventually(t, "processed", func() bool { return stats(t, c).Processed == 1 })
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	var seenID, item string
	if err := e.pool.QueryRow(context.Background(), "SELECT message_id::text, item FROM "+e.prefix+"seen").Scan(&seenID, &item); err != nil {
		t.Fatal(err)
	}
	if seenID != ids[0] || item != "book" {
		t.Fatalf("seen %s %s, want %s book", seenID, item, ids[0])
	}

	// As if the consumer died after its commit and before its position was
	// stored: the group reads the topic from the beginning again.
	e.mustExec(t, "DELETE FROM "+e.prefix+"positions")
	c, err = e.outbox.ConsumePgx(e.pool, "database", e.topic, fastRetry, handler)
	if err != nil {
		t.Fatalf("consume again: %v", err)
	}
	eventually(t, "duplicate", func() bool { return stats(t, c).Duplicates == 1 })
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || e.count(t, "seen") != 1 {
		t.Fatalf("handler calls %d, seen rows %d; want 1 and 1", calls.Load(), e.count(t, "seen"))
	}
}

// A *sql.Tx handler that writes and then fails leaves nothing; the retry
// commits once. A pool of another database is refused.
func TestSQLConsumerRollsBackAFailedHandlerAndRetries(t *testing.T) {
	e := setup(t)
	e.enqueueCommitted(t, "pen")
	e.relay(t)
	var calls atomic.Int64
	c, err := e.outbox.ConsumeSQL(e.db, "database", e.topic, fastRetry,
		func(ctx context.Context, tx *sql.Tx, m *relaybox.Delivery) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.prefix+"seen (message_id, item) VALUES ($1, 'pen')", m.ID); err != nil {
				return err
			}
			if calls.Add(1) == 1 {
				return errors.New("the first attempt fails after its write")
			}
			return nil
		})
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	eventually(t, "processed", func() bool { return stats(t, c).Processed == 1 })
	s := stats(t, c)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if s.Retried != 1 || calls.Load() != 2 {
		t.Fatalf("stats %+v, calls %d", s, calls.Load())
	}
	if n := e.count(t, "seen"); n != 1 {
		t.Fatalf("seen rows %d, want 1 (the failed attempt's write rolled back)", n)
	}

	other, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	other.Path = "/postgres"
	pool, err := pgxpool.New(context.Background(), other.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	_, err = e.outbox.ConsumePgx(pool, "database", e.topic, fastRetry,
		func(context.Context, pgx.Tx, *relaybox.Delivery) error { return nil })
	wantCode(t, err, relaybox.ErrInvalidConfig)
	_, err = e.outbox.ConsumePgx(e.pool, "database", e.topic, relaybox.ConsumerConfig{},
		func(context.Context, pgx.Tx, *relaybox.Delivery) error { return nil })
	wantCode(t, err, relaybox.ErrInvalidConfig)
}

// Through Kafka: a rolled-back event never arrives, a committed one is
// received once by a pgx consumer.
func TestKafkaCommitIsReceivedOnceRollbackNever(t *testing.T) {
	bootstrap := os.Getenv("RELAYBOX_KAFKA_BOOTSTRAP")
	if bootstrap == "" {
		t.Fatal("RELAYBOX_KAFKA_BOOTSTRAP is not set; start Kafka with dev/services")
	}
	e := setup(t)
	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.outbox.Enqueue(ctx, tx, e.message("rolled-back")); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	ids := e.enqueueCommitted(t, "lamp")

	transport := map[string]any{"kafka": map[string]any{"bootstrap_servers": bootstrap, "create_topics": true}}
	relay, err := e.outbox.StartRelay(transport, map[string]any{"poll_interval": "50ms"})
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	defer func() { _ = relay.Stop() }()
	var received atomic.Value
	var calls atomic.Int64
	c, err := e.outbox.ConsumePgx(e.pool, transport, e.topic, relaybox.ConsumerConfig{"group": e.topic},
		func(ctx context.Context, tx pgx.Tx, m *relaybox.Delivery) error {
			calls.Add(1)
			received.Store(m.ID)
			_, err := tx.Exec(ctx, "INSERT INTO "+e.prefix+"seen (message_id, item) VALUES ($1, 'lamp')", m.ID)
			return err
		})
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	eventually(t, "received over Kafka", func() bool { return stats(t, c).Processed == 1 })
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || received.Load() != ids[0] || e.count(t, "seen") != 1 {
		t.Fatalf("received %v (calls %d), want only %s", received.Load(), calls.Load(), ids[0])
	}
}

// Bad options are a typed error naming the option; goroutines that fail at
// once on different OS threads each get their own message.
func TestFailuresAreTypedAndKeepTheirOwnMessage(t *testing.T) {
	_, err := relaybox.Open("postgres://127.0.0.1:1/none", relaybox.Options{"table_prefx": "x_"}, false)
	var rbErr *relaybox.Error
	if !errors.As(err, &rbErr) || rbErr.Code != relaybox.CodeInvalidConfig || !strings.Contains(rbErr.Message, "table_prefx") {
		t.Fatalf("bad options: %#v", err)
	}

	e := setup(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	failures := make(chan string, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tx, err := e.pool.Begin(ctx)
			if err != nil {
				failures <- err.Error()
				return
			}
			defer func() { _ = tx.Rollback(ctx) }()
			for i := 0; i < 20; i++ {
				topic := fmt.Sprintf("bad topic %d-%d", g, i)
				_, err := e.outbox.Enqueue(ctx, tx, relaybox.Message{Topic: topic, Payload: 1})
				if !errors.Is(err, relaybox.ErrInvalidTopic) || !strings.Contains(err.Error(), topic) {
					failures <- fmt.Sprintf("%s: %v", topic, err)
				}
			}
		}()
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
}
