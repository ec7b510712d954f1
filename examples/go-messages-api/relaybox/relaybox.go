// Package relaybox is a small Go wrapper over the relaybox C ABI
// (bindings/c/include/relaybox.h), built with cgo against the library in the
// Cargo workspace's target/debug directory.
//
// Every call runs on a locked OS thread, so that the thread-local
// relaybox_last_error() read after a failure belongs to that failure. Calls
// that wait for the database or the broker block their goroutine's thread in
// C, as any cgo call does; the Go scheduler keeps running other goroutines.
package relaybox

/*
#cgo CFLAGS: -I${SRCDIR}/../../../bindings/c/include
#cgo LDFLAGS: -L${SRCDIR}/../../../target/debug -Wl,-rpath,${SRCDIR}/../../../target/debug -lrelaybox_ffi
#include <stdint.h>
#include <stdlib.h>
#include "relaybox.h"

extern int relayboxGoHandler(char *message_json, size_t len, relaybox_tx *tx, void *user_data);

static int relaybox_go_trampoline(const char *message_json, size_t len, relaybox_tx *tx, void *user_data) {
	return relayboxGoHandler((char *)message_json, len, tx, user_data);
}

static relaybox_status relaybox_go_consumer_start(const relaybox_outbox *outbox, const char *transport,
		const char *topic, const char *config, uintptr_t handle, relaybox_consumer **out) {
	return relaybox_consumer_start(outbox, transport, topic, config, relaybox_go_trampoline,
		(void *)handle, out);
}
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// Status is a relaybox_status code.
type Status int

// Status codes of the C ABI that callers commonly test for.
const (
	StatusOK             Status = C.RELAYBOX_OK
	StatusMisuse         Status = C.RELAYBOX_MISUSE
	StatusInvalidMessage Status = C.RELAYBOX_INVALID_MESSAGE
	StatusInvalidConfig  Status = C.RELAYBOX_INVALID_CONFIG
	StatusClosed         Status = C.RELAYBOX_CLOSED
	StatusDatabase       Status = C.RELAYBOX_DATABASE
)

// Error is a failed relaybox call: its status, the status's stable name, the
// message of relaybox_last_error() and whether retrying may succeed.
type Error struct {
	Status    Status
	Code      string
	Message   string
	Retryable bool
}

func (e *Error) Error() string {
	return fmt.Sprintf("relaybox %s: %s", e.Code, e.Message)
}

// call runs one C call on a locked thread and turns a failure into *Error.
func call(f func() C.relaybox_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	status := f()
	if status == C.RELAYBOX_OK {
		return nil
	}
	return &Error{
		Status:    Status(status),
		Code:      C.GoString(C.relaybox_status_name(status)),
		Message:   C.GoString(C.relaybox_last_error()),
		Retryable: bool(C.relaybox_last_error_retryable()),
	}
}

// cstring is a C copy of s; free it with C.free.
func cstring(s string) *C.char {
	return C.CString(s)
}

// optional is NULL for "" and a C copy of s otherwise.
func optional(s string) *C.char {
	if s == "" {
		return nil
	}
	return C.CString(s)
}

func free(p *C.char) {
	if p != nil {
		C.free(unsafe.Pointer(p))
	}
}

// take copies a string the library returned and frees it.
func take(p *C.char) string {
	defer C.relaybox_string_free(p)
	return C.GoString(p)
}

func marshal(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// Version is the version of the relaybox library.
func Version() string {
	return C.GoString(C.relaybox_version())
}

// Outbox is an open relaybox store: a connection pool and the relaybox tables.
type Outbox struct {
	ptr *C.relaybox_outbox
}

// Open connects to url; options is a store options object (marshalled to
// JSON; nil for the defaults). With migrate the schema is applied first.
func Open(url string, options any, migrate bool) (*Outbox, error) {
	opts := ""
	if options != nil {
		var err error
		if opts, err = marshal(options); err != nil {
			return nil, err
		}
	}
	cURL, cOpts := cstring(url), optional(opts)
	defer free(cURL)
	defer free(cOpts)
	o := &Outbox{}
	err := call(func() C.relaybox_status {
		return C.relaybox_outbox_open(cURL, cOpts, C.bool(migrate), &o.ptr)
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// Begin starts a transaction; finish it with Commit or Rollback, then Free.
func (o *Outbox) Begin() (*Tx, error) {
	tx := &Tx{}
	if err := call(func() C.relaybox_status { return C.relaybox_outbox_begin(o.ptr, &tx.ptr) }); err != nil {
		return nil, err
	}
	return tx, nil
}

// PendingCount is the number of undelivered outbox rows.
func (o *Outbox) PendingCount() (int64, error) {
	var n C.int64_t
	err := call(func() C.relaybox_status { return C.relaybox_outbox_pending_count(o.ptr, &n) })
	return int64(n), err
}

// Close closes the pool and releases the handle.
func (o *Outbox) Close() error {
	err := call(func() C.relaybox_status { return C.relaybox_outbox_close(o.ptr) })
	if freeErr := call(func() C.relaybox_status { return C.relaybox_outbox_free(o.ptr) }); err == nil {
		err = freeErr
	}
	o.ptr = nil
	return err
}

// Tx is an open transaction: business writes and enqueued events commit
// together. In a consumer handler it is the handler's transaction, which
// the consumer commits.
type Tx struct {
	ptr *C.relaybox_tx
}

// Exec runs a statement with positional parameters ($1, $2, ...), passed as
// a JSON array; it returns the number of rows affected.
func (tx *Tx) Exec(sql string, params ...any) (uint64, error) {
	cSQL, cParams, err := statement(sql, params)
	if err != nil {
		return 0, err
	}
	defer free(cSQL)
	defer free(cParams)
	var rows C.uint64_t
	err = call(func() C.relaybox_status { return C.relaybox_tx_execute(tx.ptr, cSQL, cParams, &rows) })
	return uint64(rows), err
}

// Query runs a query and decodes its rows (a JSON array of objects, column
// name to value) into dst, e.g. a pointer to a slice of structs.
func (tx *Tx) Query(dst any, sql string, params ...any) error {
	cSQL, cParams, err := statement(sql, params)
	if err != nil {
		return err
	}
	defer free(cSQL)
	defer free(cParams)
	var out *C.char
	if err := call(func() C.relaybox_status { return C.relaybox_tx_query(tx.ptr, cSQL, cParams, &out) }); err != nil {
		return err
	}
	return json.Unmarshal([]byte(take(out)), dst)
}

func statement(sql string, params []any) (*C.char, *C.char, error) {
	if params == nil {
		params = []any{}
	}
	encoded, err := marshal(params)
	if err != nil {
		return nil, nil, err
	}
	return cstring(sql), cstring(encoded), nil
}

// Message is a message spec as relaybox's core parses it (MessageSpec).
type Message struct {
	Topic   string            `json:"topic"`
	Key     string            `json:"key,omitempty"`
	Type    string            `json:"type,omitempty"`
	Payload any               `json:"payload"`
	Headers map[string]string `json:"headers,omitempty"`
}

// Enqueue writes one message into the outbox in this transaction and
// returns its id.
func (tx *Tx) Enqueue(message Message) (string, error) {
	spec, err := marshal(message)
	if err != nil {
		return "", err
	}
	cSpec := cstring(spec)
	defer free(cSpec)
	var id *C.char
	if err := call(func() C.relaybox_status { return C.relaybox_tx_enqueue(tx.ptr, cSpec, &id) }); err != nil {
		return "", err
	}
	return take(id), nil
}

// Commit commits the transaction.
func (tx *Tx) Commit() error {
	return call(func() C.relaybox_status { return C.relaybox_tx_commit(tx.ptr) })
}

// Rollback rolls the transaction back.
func (tx *Tx) Rollback() error {
	return call(func() C.relaybox_status { return C.relaybox_tx_rollback(tx.ptr) })
}

// Free releases the handle (rolling back if unfinished).
func (tx *Tx) Free() error {
	err := call(func() C.relaybox_status { return C.relaybox_tx_free(tx.ptr) })
	tx.ptr = nil
	return err
}

// SetFailureReason records, inside a handler, why it is about to fail.
func (tx *Tx) SetFailureReason(reason string) error {
	cReason := cstring(reason)
	defer free(cReason)
	return call(func() C.relaybox_status { return C.relaybox_tx_set_failure_reason(tx.ptr, cReason) })
}

// Relay is a running relay.
type Relay struct {
	ptr *C.relaybox_relay
}

// StartRelay relays the outbox's committed messages to the transport
// ("database" or {"kafka": {...}}) with the relay settings (nil for defaults).
func (o *Outbox) StartRelay(transport any, config any) (*Relay, error) {
	cTransport, cConfig, err := configs(transport, config)
	if err != nil {
		return nil, err
	}
	defer free(cTransport)
	defer free(cConfig)
	r := &Relay{}
	err = call(func() C.relaybox_status {
		return C.relaybox_relay_start(o.ptr, cTransport, cConfig, &r.ptr)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

func configs(transport, config any) (*C.char, *C.char, error) {
	t, err := marshal(transport)
	if err != nil {
		return nil, nil, err
	}
	c := ""
	if config != nil {
		if c, err = marshal(config); err != nil {
			return nil, nil, err
		}
	}
	return cstring(t), optional(c), nil
}

// Stop finishes the batch in flight and stops; then the handle is released.
func (r *Relay) Stop() error {
	err := call(func() C.relaybox_status { return C.relaybox_relay_stop(r.ptr) })
	if freeErr := call(func() C.relaybox_status { return C.relaybox_relay_free(r.ptr) }); err == nil {
		err = freeErr
	}
	r.ptr = nil
	return err
}

// Handler handles one delivered message inside tx. Return nil to
// acknowledge; an error retries the message (a *Reject dead-letters it at
// once). It is called from several threads at once.
type Handler func(message Delivered, tx *Tx) error

// Reject is a handler error that dead-letters the message without retries.
type Reject struct{ Reason string }

func (r *Reject) Error() string { return r.Reason }

// Delivered is a message as a handler receives it (canonical JSON).
type Delivered struct {
	ID          string            `json:"id"`
	Topic       string            `json:"topic"`
	Key         *string           `json:"key"`
	Type        string            `json:"type"`
	Payload     []byte            `json:"payload"`
	ContentType string            `json:"content_type"`
	Headers     map[string]string `json:"headers"`
	CreatedAt   string            `json:"created_at"`
}

// Consumer is a running idempotent consumer.
type Consumer struct {
	ptr    *C.relaybox_consumer
	handle cgo.Handle
}

// StartConsumer consumes topic from the transport with the consumer
// settings (at least {"group": ...}), calling handler for each message.
func (o *Outbox) StartConsumer(transport any, topic string, config any, handler Handler) (*Consumer, error) {
	cTransport, cConfig, err := configs(transport, config)
	if err != nil {
		return nil, err
	}
	defer free(cTransport)
	defer free(cConfig)
	cTopic := cstring(topic)
	defer free(cTopic)
	c := &Consumer{handle: cgo.NewHandle(handler)}
	err = call(func() C.relaybox_status {
		return C.relaybox_go_consumer_start(o.ptr, cTransport, cTopic, cConfig, C.uintptr_t(c.handle), &c.ptr)
	})
	if err != nil {
		c.handle.Delete()
		return nil, err
	}
	return c, nil
}

// Stats are a consumer's counters.
type Stats struct {
	Processed, Duplicates, Retried, DeadLettered uint64
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() (Stats, error) {
	var s C.relaybox_consumer_stats
	err := call(func() C.relaybox_status { return C.relaybox_consumer_get_stats(c.ptr, &s) })
	return Stats{uint64(s.processed), uint64(s.duplicates), uint64(s.retried), uint64(s.dead_lettered)}, err
}

// Stop finishes the messages in flight and stops; then the handle is released.
func (c *Consumer) Stop() error {
	err := call(func() C.relaybox_status { return C.relaybox_consumer_stop(c.ptr) })
	if freeErr := call(func() C.relaybox_status { return C.relaybox_consumer_free(c.ptr) }); err == nil {
		err = freeErr
	}
	c.ptr = nil
	c.handle.Delete()
	return err
}

//export relayboxGoHandler
func relayboxGoHandler(messageJSON *C.char, length C.size_t, tx *C.relaybox_tx, userData unsafe.Pointer) C.int {
	handler, ok := cgo.Handle(uintptr(userData)).Value().(Handler)
	if !ok {
		return C.RELAYBOX_HANDLER_RETRY
	}
	handle := &Tx{ptr: tx}
	var message Delivered
	if err := json.Unmarshal(C.GoBytes(unsafe.Pointer(messageJSON), C.int(length)), &message); err != nil {
		_ = handle.SetFailureReason("the message is not canonical JSON: " + err.Error())
		return C.RELAYBOX_HANDLER_REJECT
	}
	err := handler(message, handle)
	if err == nil {
		return C.RELAYBOX_HANDLER_ACK
	}
	_ = handle.SetFailureReason(err.Error())
	if _, reject := err.(*Reject); reject {
		return C.RELAYBOX_HANDLER_REJECT
	}
	return C.RELAYBOX_HANDLER_RETRY
}
