// Package relaybox is the Go binding of relaybox (transactional outbox,
// relay and idempotent consumer) over its C ABI (bindings/c), built with
// cgo against the C library that pkg-config finds as `relaybox`: the
// release tarball's lib/pkgconfig on PKG_CONFIG_PATH (`dev/package c`
// builds it into dist/).
//
// The event is written in the transaction the application already has open:
// Enqueue runs relaybox's INSERT and its wake-up through a pgx.Tx, a
// *sql.Tx or an sqlc DBTX of that transaction, so the event commits or rolls
// back with the application's rows. A consumer started with ConsumePgx or
// ConsumeSQL hands its handler a transaction of the application's pool that
// already holds the message's inbox row, so the handler's writes and the
// "processed" mark commit together.
//
// Every C call runs on a locked OS thread, so that the thread-local last
// error read after a failure belongs to that failure. Calls that wait for
// the database or the broker block their goroutine's thread in C, as any cgo
// call does.
package relaybox

/*
#cgo pkg-config: relaybox
#include <stdint.h>
#include <stdlib.h>
#include "relaybox.h"
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Stable error codes: the Code of an *Error.
const (
	CodeNullPointer     = "null_pointer"
	CodeInvalidUTF8     = "invalid_utf8"
	CodeMisuse          = "misuse"
	CodeInvalidTopic    = "invalid_topic"
	CodePayloadTooLarge = "payload_too_large"
	CodeInvalidHeader   = "invalid_header"
	CodeInvalidMessage  = "invalid_message"
	CodeInvalidConfig   = "invalid_config"
	CodeInvalidValue    = "invalid_value"
	CodeClosed          = "closed"
	CodeSchema          = "schema"
	CodeDatabase        = "database"
	CodeTransport       = "transport"
	CodeHandler         = "handler"
	CodeTimeout         = "timeout"
	CodeNotFound        = "not_found"
	CodeInternal        = "internal"
)

// Error is a relaybox failure: a stable code (one of the Code constants),
// a message naming the problem and whether retrying may succeed. Test for a
// kind with errors.Is(err, relaybox.ErrClosed) (and the other Err values),
// which compares codes, or errors.As for the details.
type Error struct {
	// Code is the stable lower-case code, e.g. "invalid_topic".
	Code string
	// Message describes the failure; it never contains credentials.
	Message string
	// Retryable tells whether the same call may succeed if tried again.
	Retryable bool
	// Err is the underlying driver error, when there is one.
	Err error
}

// Error formats the failure as "relaybox <code>: <message>".
func (e *Error) Error() string {
	return fmt.Sprintf("relaybox %s: %s", e.Code, e.Message)
}

// Unwrap returns the underlying driver error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is, one per code.
var (
	ErrMisuse          = &Error{Code: CodeMisuse, Message: "misuse"}
	ErrInvalidTopic    = &Error{Code: CodeInvalidTopic, Message: "invalid topic"}
	ErrPayloadTooLarge = &Error{Code: CodePayloadTooLarge, Message: "payload too large"}
	ErrInvalidHeader   = &Error{Code: CodeInvalidHeader, Message: "invalid header"}
	ErrInvalidMessage  = &Error{Code: CodeInvalidMessage, Message: "invalid message"}
	ErrInvalidConfig   = &Error{Code: CodeInvalidConfig, Message: "invalid configuration"}
	ErrInvalidValue    = &Error{Code: CodeInvalidValue, Message: "invalid value"}
	ErrClosed          = &Error{Code: CodeClosed, Message: "closed"}
	ErrSchema          = &Error{Code: CodeSchema, Message: "schema"}
	ErrDatabase        = &Error{Code: CodeDatabase, Message: "database"}
	ErrTransport       = &Error{Code: CodeTransport, Message: "transport"}
	ErrHandler         = &Error{Code: CodeHandler, Message: "handler"}
	ErrTimeout         = &Error{Code: CodeTimeout, Message: "timeout"}
	ErrNotFound        = &Error{Code: CodeNotFound, Message: "not found"}
	ErrInternal        = &Error{Code: CodeInternal, Message: "internal"}
)

// call runs one C call on a locked thread and turns a failure into *Error.
func call(f func() C.relaybox_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	status := f()
	if status == C.RELAYBOX_OK {
		return nil
	}
	return &Error{
		Code:      C.GoString(C.relaybox_status_name(status)),
		Message:   C.GoString(C.relaybox_last_error()),
		Retryable: bool(C.relaybox_last_error_retryable()),
	}
}

// cstring is a C copy of s; free it with free.
func cstring(s string) *C.char { return C.CString(s) }

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

// take copies a string the library returned and frees it ("" for NULL).
func take(p *C.char) string {
	if p == nil {
		return ""
	}
	defer C.relaybox_string_free(p)
	return C.GoString(p)
}

// configJSON marshals a configuration value; a string or []byte that holds
// JSON text is passed through, nil gives "".
func configJSON(what string, v any) (string, error) {
	switch c := v.(type) {
	case nil:
		return "", nil
	case json.RawMessage:
		return string(c), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", &Error{Code: CodeInvalidConfig, Message: fmt.Sprintf("%s: %v", what, err), Err: err}
	}
	return string(b), nil
}

// Version is the version of the relaybox library.
func Version() string {
	return C.GoString(C.relaybox_version())
}

// Options are the store options of Open (JSON keys of the core's
// StoreOptions, e.g. {"table_prefix": "app_", "partitions": 16}).
type Options map[string]any

// Outbox is an open relaybox store: a connection pool of relaybox and the
// relaybox tables. Safe for use by several goroutines.
type Outbox struct {
	mu       sync.RWMutex
	ptr      *C.relaybox_outbox
	identity []string
}

// Open connects to url (postgres://... or sqlite:...) with the store options
// (nil for the defaults); with migrate the schema is created or upgraded
// first. Blocks until connected.
func Open(url string, options Options, migrate bool) (*Outbox, error) {
	var opts string
	if options != nil {
		var err error
		if opts, err = configJSON("store options", options); err != nil {
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

// handle is the live C handle, or ErrClosed after Close.
func (o *Outbox) handle() (*C.relaybox_outbox, error) {
	if o == nil || o.ptr == nil {
		return nil, &Error{Code: CodeClosed, Message: "the outbox is closed"}
	}
	return o.ptr, nil
}

// Migrate applies pending schema migrations.
func (o *Outbox) Migrate() error {
	o.mu.RLock()
	defer o.mu.RUnlock()
	ptr, err := o.handle()
	if err != nil {
		return err
	}
	return call(func() C.relaybox_status { return C.relaybox_outbox_migrate(ptr) })
}

// PendingCount is the number of undelivered outbox rows.
func (o *Outbox) PendingCount() (int64, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	ptr, err := o.handle()
	if err != nil {
		return 0, err
	}
	var n C.int64_t
	err = call(func() C.relaybox_status { return C.relaybox_outbox_pending_count(ptr, &n) })
	return int64(n), err
}

// Status is the backlog, dead letters and lease owners as JSON text.
func (o *Outbox) Status() (json.RawMessage, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	ptr, err := o.handle()
	if err != nil {
		return nil, err
	}
	var out *C.char
	err = call(func() C.relaybox_status { return C.relaybox_outbox_status_json(ptr, &out) })
	return json.RawMessage(take(out)), err
}

// DeadLetters lists up to limit dead letters, oldest first, as JSON text.
func (o *Outbox) DeadLetters(limit uint32) (json.RawMessage, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	ptr, err := o.handle()
	if err != nil {
		return nil, err
	}
	var out *C.char
	err = call(func() C.relaybox_status {
		return C.relaybox_outbox_dead_letters_json(ptr, C.uint32_t(limit), &out)
	})
	return json.RawMessage(take(out)), err
}

// query runs a read-only query in a relaybox transaction (rolled back) and
// returns its rows as JSON text.
func (o *Outbox) query(sql string) (string, error) {
	ptr, err := o.handle()
	if err != nil {
		return "", err
	}
	var tx *C.relaybox_tx
	if err := call(func() C.relaybox_status { return C.relaybox_outbox_begin(ptr, &tx) }); err != nil {
		return "", err
	}
	defer func() { _ = call(func() C.relaybox_status { return C.relaybox_tx_free(tx) }) }()
	cSQL := cstring(sql)
	defer free(cSQL)
	var out *C.char
	err = call(func() C.relaybox_status { return C.relaybox_tx_query(tx, cSQL, nil, &out) })
	return take(out), err
}

// Close closes the connection pool and releases the handle; later calls
// fail with ErrClosed. Relays and consumers must be stopped first.
func (o *Outbox) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ptr == nil {
		return nil
	}
	ptr := o.ptr
	err := call(func() C.relaybox_status { return C.relaybox_outbox_close(ptr) })
	if freeErr := call(func() C.relaybox_status { return C.relaybox_outbox_free(ptr) }); err == nil {
		err = freeErr
	}
	o.ptr = nil
	return err
}

// errorf is an *Error with code and a formatted message.
func errorf(code string, cause error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: cause}
}
