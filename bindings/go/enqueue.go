package relaybox

/*
#include <stdlib.h>
#include "relaybox.h"
*/
import "C"

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// IdentitySQL identifies a PostgreSQL database: its name and its server's
// start time. Enqueue compares it on the caller's transaction with the
// outbox's own connection.
const IdentitySQL = "SELECT current_database() AS database, " +
	"CAST(CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000 AS bigint) AS text) AS started"

// PgxDBTX is the shape sqlc generates for pgx (`DBTX`): a pgx.Tx has it.
type PgxDBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SQLDBTX is the shape sqlc generates for database/sql (`DBTX`): a *sql.Tx
// has it.
type SQLDBTX interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// param is one statement parameter as the C ABI describes it.
type param struct {
	Type  string          `json:"type"`
	Value json.RawMessage `json:"value"`
}

// arg is the Go value a driver binds for the parameter: text as string,
// bytes as []byte, integers as int64, null as nil.
func (p param) arg() (any, error) {
	switch p.Type {
	case "null":
		return nil, nil
	case "text", "uuid", "timestamptz", "jsonb":
		var s string
		err := json.Unmarshal(p.Value, &s)
		return s, err
	case "bytes":
		var s string
		if err := json.Unmarshal(p.Value, &s); err != nil {
			return nil, err
		}
		return base64.StdEncoding.DecodeString(s)
	case "int8":
		var i int64
		err := json.Unmarshal(p.Value, &i)
		return i, err
	case "float8":
		var f float64
		err := json.Unmarshal(p.Value, &f)
		return f, err
	case "bool":
		var b bool
		err := json.Unmarshal(p.Value, &b)
		return b, err
	}
	return nil, fmt.Errorf("unknown parameter type %q", p.Type)
}

// statement is one SQL statement with its parameters.
type statement struct {
	SQL        string   `json:"sql"`
	Params     []param  `json:"params"`
	MessageIDs []string `json:"message_ids"`
	Wake       *string  `json:"wake"`
}

func (s statement) args() ([]any, error) {
	args := make([]any, len(s.Params))
	for i, p := range s.Params {
		a, err := p.arg()
		if err != nil {
			return nil, errorf(CodeInternal, err, "parameter %d: %v", i+1, err)
		}
		args[i] = a
	}
	return args, nil
}

// statements are the INSERTs (with their wake-ups) that write messages, in
// $n placeholders; every message is validated first.
func (o *Outbox) statements(messages []Message) ([]statement, error) {
	if len(messages) == 0 {
		return nil, errorf(CodeInvalidMessage, nil, "no messages to enqueue")
	}
	specs, err := json.Marshal(messages)
	if err != nil {
		return nil, errorf(CodeInvalidMessage, err, "the message cannot be encoded: %v", err)
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	ptr, err := o.handle()
	if err != nil {
		return nil, err
	}
	cSpecs, cStyle := cstring(string(specs)), cstring("dollar")
	defer free(cSpecs)
	defer free(cStyle)
	var out *C.char
	err = call(func() C.relaybox_status {
		return C.relaybox_outbox_insert_statements(ptr, cSpecs, cStyle, &out)
	})
	if err != nil {
		return nil, err
	}
	var list []statement
	if err := json.Unmarshal([]byte(take(out)), &list); err != nil {
		return nil, errorf(CodeInternal, err, "insert statements: %v", err)
	}
	return list, nil
}

// outboxIdentity is the identity (IdentitySQL) of the outbox's database,
// read once.
func (o *Outbox) outboxIdentity() ([]string, error) {
	o.mu.RLock()
	if o.identity != nil {
		defer o.mu.RUnlock()
		return o.identity, nil
	}
	ptr, err := o.handle()
	if err != nil {
		o.mu.RUnlock()
		return nil, err
	}
	var wake *C.char
	err = call(func() C.relaybox_status { return C.relaybox_outbox_wake_statement(ptr, &wake) })
	if err == nil && wake == nil {
		err = errorf(CodeInvalidConfig, nil, "the Go binding joins PostgreSQL transactions; this outbox is not on PostgreSQL")
	}
	take(wake)
	if err != nil {
		o.mu.RUnlock()
		return nil, err
	}
	rows, err := o.query(IdentitySQL)
	o.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	var decoded []map[string]any
	if err := json.Unmarshal([]byte(rows), &decoded); err != nil || len(decoded) != 1 {
		return nil, errorf(CodeInternal, err, "the outbox's identity could not be read")
	}
	identity := []string{fmt.Sprint(decoded[0]["database"]), fmt.Sprint(decoded[0]["started"])}
	o.mu.Lock()
	o.identity = identity
	o.mu.Unlock()
	return identity, nil
}

// executor runs SQL in the caller's transaction.
type executor struct {
	kind     string
	exec     func(ctx context.Context, sql string, args ...any) error
	identity func(ctx context.Context) ([]string, error)
}

// txError maps a driver error of the caller's transaction to an *Error.
func txError(kind string, err error) error {
	if errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, sql.ErrTxDone) || errors.Is(err, sql.ErrConnDone) {
		return errorf(CodeClosed, err, "%s: the transaction is finished (committed, rolled back or closed)", kind)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "25P02" {
		return errorf(CodeClosed, err, "%s: the transaction is aborted by an earlier error; roll it back", kind)
	}
	var rbErr *Error
	if errors.As(err, &rbErr) {
		return err
	}
	return errorf(CodeDatabase, err, "%s: %v", kind, err)
}

// rowScanner is one row of a query: pgx.Row and *sql.Row.
type rowScanner interface {
	Scan(dest ...any) error
}

// newExecutor is the executor of a transaction of kind %T whose statements
// run with exec and whose single-row queries run with queryRow.
func newExecutor(tx any, exec func(ctx context.Context, sql string, args ...any) error,
	queryRow func(ctx context.Context, sql string) rowScanner) *executor {
	return &executor{
		kind: fmt.Sprintf("%T", tx),
		exec: exec,
		identity: func(ctx context.Context) ([]string, error) {
			var name, started string
			err := queryRow(ctx, IdentitySQL).Scan(&name, &started)
			return []string{name, started}, err
		},
	}
}

// executorOf recognises the caller's transaction object.
func executorOf(tx any) (*executor, error) {
	if tx == nil {
		return nil, errorf(CodeInvalidConfig, nil, "Enqueue needs a transaction, got nil")
	}
	if v := reflect.ValueOf(tx); v.Kind() == reflect.Pointer && v.IsNil() {
		return nil, errorf(CodeInvalidConfig, nil, "Enqueue needs a transaction, got a nil %T", tx)
	}
	switch t := tx.(type) {
	case *pgxpool.Pool, *pgx.Conn, *pgxpool.Conn, *sql.DB, *sql.Conn:
		return nil, errorf(CodeInvalidConfig, nil,
			"Enqueue needs an open transaction (pgx.Tx, *sql.Tx), not a %T: begin one so that the event commits with your rows", tx)
	case PgxDBTX:
		return newExecutor(tx,
			func(ctx context.Context, sql string, args ...any) error {
				_, err := t.Exec(ctx, sql, args...)
				return err
			},
			func(ctx context.Context, sql string) rowScanner { return t.QueryRow(ctx, sql) }), nil
	case SQLDBTX:
		return newExecutor(tx,
			func(ctx context.Context, sql string, args ...any) error {
				_, err := t.ExecContext(ctx, sql, args...)
				return err
			},
			func(ctx context.Context, sql string) rowScanner { return t.QueryRowContext(ctx, sql) }), nil
	}
	return nil, errorf(CodeInvalidConfig, nil,
		"Enqueue cannot write through a %T: pass a pgx.Tx, a *sql.Tx or an sqlc DBTX of your transaction", tx)
}

// Enqueue writes messages to the outbox inside the caller's open
// transaction tx: a pgx.Tx, a *sql.Tx, or any value with the shape of
// sqlc's DBTX for pgx (PgxDBTX) or database/sql (SQLDBTX) that runs in a
// transaction. It runs relaybox's INSERT and the relays' wake-up (a NOTIFY,
// delivered only on commit) in that transaction, so the messages commit or
// roll back with the caller's rows. It returns the message ids.
//
// Every message is validated before anything is written: an invalid one is
// an *Error (ErrInvalidTopic, ErrInvalidMessage, ...) and nothing is
// written. A transaction object of another kind, a pool or connection
// outside a transaction, or a transaction to a database other than the
// outbox's is ErrInvalidConfig; a finished transaction is ErrClosed.
// The outbox must be on PostgreSQL.
func (o *Outbox) Enqueue(ctx context.Context, tx any, messages ...Message) ([]string, error) {
	exec, err := executorOf(tx)
	if err != nil {
		return nil, err
	}
	statements, err := o.statements(messages)
	if err != nil {
		return nil, err
	}
	want, err := o.outboxIdentity()
	if err != nil {
		return nil, err
	}
	got, err := exec.identity(ctx)
	if err != nil {
		return nil, txError(exec.kind, err)
	}
	if got[0] != want[0] || got[1] != want[1] {
		return nil, errorf(CodeInvalidConfig, nil,
			"%s: the transaction is on database %q, not on the outbox's database %q (or on another server): "+
				"the event would not commit with your rows", exec.kind, got[0], want[0])
	}
	var ids []string
	for _, s := range statements {
		args, err := s.args()
		if err != nil {
			return nil, err
		}
		if err := exec.exec(ctx, s.SQL, args...); err != nil {
			return nil, txError(exec.kind, err)
		}
		if s.Wake != nil {
			if err := exec.exec(ctx, *s.Wake); err != nil {
				return nil, txError(exec.kind, err)
			}
		}
		ids = append(ids, s.MessageIDs...)
	}
	return ids, nil
}
