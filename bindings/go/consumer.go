package relaybox

/*
#include <stdint.h>
#include <stdlib.h>
#include "relaybox.h"

extern int relayboxGoHostHandler(char *message_json, size_t message_len, char *inbox_json,
	size_t inbox_len, relaybox_host_reason *reason, void *user_data);

static int relaybox_go_host_trampoline(const char *message_json, size_t message_len,
		const char *inbox_json, size_t inbox_len, relaybox_host_reason *reason, void *user_data) {
	return relayboxGoHostHandler((char *)message_json, message_len, (char *)inbox_json, inbox_len,
		reason, user_data);
}

static relaybox_status relaybox_go_consumer_start_host(const relaybox_outbox *outbox,
		const char *transport, const char *topic, const char *config, const char *placeholders,
		uintptr_t handle, relaybox_consumer **out) {
	return relaybox_consumer_start_host(outbox, transport, topic, config, placeholders,
		relaybox_go_host_trampoline, (void *)handle, out);
}
*/
import "C"

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/cgo"
	"unsafe"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PgxHandler handles one message in tx, a transaction of the application's
// pgx pool that already holds the message's inbox row: write through tx and
// return nil, and the writes and the inbox row commit together. An error
// rolls everything back and the message is retried with backoff, then
// dead-lettered; a *Reject error dead-letters it at once. Do not commit or
// roll back tx.
type PgxHandler func(ctx context.Context, tx pgx.Tx, message *Delivery) error

// SQLHandler is PgxHandler for database/sql: tx is a *sql.Tx of the
// application's *sql.DB holding the inbox row.
type SQLHandler func(ctx context.Context, tx *sql.Tx, message *Delivery) error

// Reject is a handler error that dead-letters the message without retries.
type Reject struct {
	// Reason is recorded with the dead letter.
	Reason string
}

// Error returns the reason.
func (r *Reject) Error() string { return r.Reason }

// ConsumerConfig are the consumer settings (JSON keys of the core's
// ConsumerConfig): at least "group"; e.g. {"group": "billing",
// "concurrency": 4, "retry_delay": "1s", "max_retries": 10}.
type ConsumerConfig map[string]any

// Stats are a consumer's counters.
type Stats struct {
	// Processed counts messages whose handler committed.
	Processed uint64
	// Duplicates counts deliveries the inbox already had.
	Duplicates uint64
	// Retried counts handler failures that were retried.
	Retried uint64
	// DeadLettered counts messages moved to dead letters.
	DeadLettered uint64
}

// Consumer is a running idempotent consumer in host-transaction mode.
type Consumer struct {
	ptr    *C.relaybox_consumer
	handle cgo.Handle
	cancel context.CancelFunc
}

// hostTx is one delivery's transaction in the application's driver.
type hostTx interface {
	exec(ctx context.Context, sql string, args []any) (int64, error)
	handle(ctx context.Context, message *Delivery) error
	commit(ctx context.Context) error
	rollback(ctx context.Context)
}

// host begins a transaction for each delivery.
type host struct {
	ctx   context.Context
	begin func(ctx context.Context) (hostTx, error)
}

type pgxHostTx struct {
	tx      pgx.Tx
	handler PgxHandler
}

func (t *pgxHostTx) exec(ctx context.Context, sql string, args []any) (int64, error) {
	tag, err := t.tx.Exec(ctx, sql, args...)
	return tag.RowsAffected(), err
}
func (t *pgxHostTx) handle(ctx context.Context, m *Delivery) error { return t.handler(ctx, t.tx, m) }
func (t *pgxHostTx) commit(ctx context.Context) error              { return t.tx.Commit(ctx) }
func (t *pgxHostTx) rollback(ctx context.Context)                  { _ = t.tx.Rollback(ctx) }

type sqlHostTx struct {
	tx      *sql.Tx
	handler SQLHandler
}

func (t *sqlHostTx) exec(ctx context.Context, sql string, args []any) (int64, error) {
	res, err := t.tx.ExecContext(ctx, sql, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
func (t *sqlHostTx) handle(ctx context.Context, m *Delivery) error { return t.handler(ctx, t.tx, m) }
func (t *sqlHostTx) commit(context.Context) error                  { return t.tx.Commit() }
func (t *sqlHostTx) rollback(context.Context)                      { _ = t.tx.Rollback() }

// ConsumePgx starts consuming topic from transport (see Transport) with
// config; each message runs in its own transaction of pool, which must be
// on the outbox's database: the inbox row first, then handler (see
// PgxHandler). Returns at once; the handler is called on relaybox's worker
// threads, for several messages at once when "concurrency" is above 1
// (messages of one key one at a time).
func (o *Outbox) ConsumePgx(pool *pgxpool.Pool, transport Transport, topic string, config ConsumerConfig, handler PgxHandler) (*Consumer, error) {
	if pool == nil || handler == nil {
		return nil, errorf(CodeInvalidConfig, nil, "ConsumePgx needs a pool and a handler")
	}
	if err := o.checkSame(context.Background(), fmt.Sprintf("%T", pool), func(ctx context.Context) ([]string, error) {
		var name, started string
		err := pool.QueryRow(ctx, IdentitySQL).Scan(&name, &started)
		return []string{name, started}, err
	}); err != nil {
		return nil, err
	}
	return o.consume(transport, topic, config, func(ctx context.Context) (hostTx, error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return nil, err
		}
		return &pgxHostTx{tx: tx, handler: handler}, nil
	})
}

// ConsumeSQL is ConsumePgx for database/sql: each message runs in a
// transaction of db (a PostgreSQL driver with $1 placeholders, such as
// pgx's stdlib or lib/pq), handed to handler as a *sql.Tx.
func (o *Outbox) ConsumeSQL(db *sql.DB, transport Transport, topic string, config ConsumerConfig, handler SQLHandler) (*Consumer, error) {
	if db == nil || handler == nil {
		return nil, errorf(CodeInvalidConfig, nil, "ConsumeSQL needs a *sql.DB and a handler")
	}
	if err := o.checkSame(context.Background(), "*sql.DB", func(ctx context.Context) ([]string, error) {
		var name, started string
		err := db.QueryRowContext(ctx, IdentitySQL).Scan(&name, &started)
		return []string{name, started}, err
	}); err != nil {
		return nil, err
	}
	return o.consume(transport, topic, config, func(ctx context.Context) (hostTx, error) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return nil, err
		}
		return &sqlHostTx{tx: tx, handler: handler}, nil
	})
}

// checkSame fails with ErrInvalidConfig unless identity reads the outbox's
// database.
func (o *Outbox) checkSame(ctx context.Context, kind string, identity func(context.Context) ([]string, error)) error {
	want, err := o.outboxIdentity()
	if err != nil {
		return err
	}
	got, err := identity(ctx)
	if err != nil {
		return txError(kind, err)
	}
	if got[0] != want[0] || got[1] != want[1] {
		return errorf(CodeInvalidConfig, nil,
			"%s: connected to database %q, not to the outbox's database %q (or to another server): "+
				"the inbox row would not commit with your writes", kind, got[0], want[0])
	}
	return nil
}

func (o *Outbox) consume(transport Transport, topic string, config ConsumerConfig, begin func(context.Context) (hostTx, error)) (*Consumer, error) {
	t, err := configJSON("transport", transport)
	if err != nil {
		return nil, err
	}
	c, err := configJSON("consumer config", config)
	if err != nil {
		return nil, err
	}
	if c == "" || c == "null" {
		c = "{}"
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	ptr, err := o.handle()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	consumer := &Consumer{cancel: cancel, handle: cgo.NewHandle(&host{ctx: ctx, begin: begin})}
	cTransport, cTopic, cConfig, cStyle := cstring(t), cstring(topic), cstring(c), cstring("dollar")
	defer free(cTransport)
	defer free(cTopic)
	defer free(cConfig)
	defer free(cStyle)
	err = call(func() C.relaybox_status {
		return C.relaybox_go_consumer_start_host(ptr, cTransport, cTopic, cConfig, cStyle,
			C.uintptr_t(consumer.handle), &consumer.ptr)
	})
	if err != nil {
		consumer.handle.Delete()
		cancel()
		return nil, err
	}
	return consumer, nil
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() (Stats, error) {
	if c == nil || c.ptr == nil {
		return Stats{}, errorf(CodeClosed, nil, "the consumer is stopped")
	}
	var s C.relaybox_consumer_stats
	err := call(func() C.relaybox_status { return C.relaybox_consumer_get_stats(c.ptr, &s) })
	return Stats{uint64(s.processed), uint64(s.duplicates), uint64(s.retried), uint64(s.dead_lettered)}, err
}

// Stop finishes the messages in flight, stops and releases the consumer;
// the handler is not called after it returns. Do not call it from a handler.
func (c *Consumer) Stop() error {
	if c == nil || c.ptr == nil {
		return nil
	}
	ptr := c.ptr
	err := call(func() C.relaybox_status { return C.relaybox_consumer_stop(ptr) })
	if freeErr := call(func() C.relaybox_status { return C.relaybox_consumer_free(ptr) }); err == nil {
		err = freeErr
	}
	c.ptr = nil
	c.cancel()
	c.handle.Delete()
	return err
}

// Abort releases the consumer without finishing the messages in flight,
// as a crash would: deliveries not yet acknowledged come again, and the
// inbox skips those already committed.
func (c *Consumer) Abort() error {
	if c == nil || c.ptr == nil {
		return nil
	}
	ptr := c.ptr
	err := call(func() C.relaybox_status { return C.relaybox_consumer_free(ptr) })
	c.ptr = nil
	c.cancel()
	// The handle stays valid: a callback in progress may still use it.
	return err
}

// inboxStatement is the inbox INSERT of one delivery.
type inboxStatement struct {
	SQL    string  `json:"sql"`
	Params []param `json:"params"`
}

// Host outcomes (relaybox_host_outcome).
const (
	outcomeProcessed = C.RELAYBOX_HOST_PROCESSED
	outcomeDuplicate = C.RELAYBOX_HOST_DUPLICATE
	outcomeFailed    = C.RELAYBOX_HOST_FAILED
	outcomeRejected  = C.RELAYBOX_HOST_REJECTED
)

// deliver runs one delivery: the inbox row, then the handler, in one
// transaction; it returns the outcome and the reason of a failure.
func (h *host) deliver(messageJSON, inboxJSON []byte) (outcome C.int, reason string) {
	var message Delivery
	if err := json.Unmarshal(messageJSON, &message); err != nil {
		return outcomeRejected, "the message is not canonical JSON: " + err.Error()
	}
	var inbox inboxStatement
	if err := json.Unmarshal(inboxJSON, &inbox); err != nil {
		return outcomeFailed, "the inbox statement is not JSON: " + err.Error()
	}
	args := make([]any, len(inbox.Params))
	for i, p := range inbox.Params {
		a, err := p.arg()
		if err != nil {
			return outcomeFailed, err.Error()
		}
		args[i] = a
	}
	ctx := h.ctx
	tx, err := h.begin(ctx)
	if err != nil {
		return outcomeFailed, "begin: " + err.Error()
	}
	committed := false
	defer func() {
		if p := recover(); p != nil {
			outcome, reason = outcomeFailed, fmt.Sprintf("the handler panicked: %v", p)
		}
		if !committed {
			tx.rollback(context.WithoutCancel(ctx))
		}
	}()
	inserted, err := tx.exec(ctx, inbox.SQL, args)
	if err != nil {
		return outcomeFailed, "inbox: " + err.Error()
	}
	if inserted == 0 {
		return outcomeDuplicate, ""
	}
	if err := tx.handle(ctx, &message); err != nil {
		var reject *Reject
		if errors.As(err, &reject) {
			return outcomeRejected, err.Error()
		}
		return outcomeFailed, err.Error()
	}
	committed = true
	if err := tx.commit(ctx); err != nil {
		return outcomeFailed, "commit: " + err.Error()
	}
	return outcomeProcessed, ""
}

//export relayboxGoHostHandler
func relayboxGoHostHandler(messageJSON *C.char, messageLen C.size_t, inboxJSON *C.char, inboxLen C.size_t, reason *C.relaybox_host_reason, userData unsafe.Pointer) C.int {
	h, ok := cgo.Handle(uintptr(userData)).Value().(*host)
	if !ok {
		return outcomeFailed
	}
	outcome, text := h.deliver(
		C.GoBytes(unsafe.Pointer(messageJSON), C.int(messageLen)),
		C.GoBytes(unsafe.Pointer(inboxJSON), C.int(inboxLen)),
	)
	if text != "" {
		cText := cstring(text)
		defer free(cText)
		C.relaybox_host_reason_set(reason, cText)
	}
	return outcome
}
