package relaybox_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	relaybox "github.com/relaybox/relaybox/bindings/go"
)

// collector is an slog.Handler that keeps every record.
type collector struct {
	mu      sync.Mutex
	records []slog.Record
}

func (c *collector) Enabled(context.Context, slog.Level) bool { return true }
func (c *collector) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *collector) WithGroup(string) slog.Handler            { return c }
func (c *collector) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = append(c.records, r.Clone())
	return nil
}

func (c *collector) find(prefix string) (slog.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.records {
		if strings.HasPrefix(r.Message, prefix) {
			return r, true
		}
	}
	return slog.Record{}, false
}

func attrs(r slog.Record) map[string]any {
	m := map[string]any{}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.Any()
		return true
	})
	return m
}

// A message the handler rejects is dead-lettered, and the core's warning
// reaches the slog handler with its fields.
func TestDeadLetterWarningReachesSlog(t *testing.T) {
	logs := &collector{}
	if err := relaybox.SetLogHandler(logs, slog.LevelWarn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relaybox.SetLogHandler(nil, slog.LevelWarn) })
	e := setup(t)
	e.enqueueCommitted(t, "ink")
	e.relay(t)
	c, err := e.outbox.ConsumePgx(e.pool, "database", e.topic, fastRetry,
		func(context.Context, pgx.Tx, *relaybox.Delivery) error {
			return &relaybox.Reject{Reason: "ink is not sold"}
		})
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	defer func() { _ = c.Stop() }()
	var record slog.Record
	eventually(t, "the dead-letter warning", func() bool {
		var ok bool
		record, ok = logs.find("relaybox message rejected by its handler; dead-lettered")
		return ok
	})
	if record.Level != slog.LevelWarn {
		t.Fatalf("level %v", record.Level)
	}
	got := attrs(record)
	if got["target"] != "relaybox::consumer" || got["group"] != "billing" || got["error"] != "ink is not sold" {
		t.Fatalf("attributes %v", got)
	}
	if id, _ := got["id"].(string); len(id) != 36 || !strings.Contains(record.Message, "id="+id) {
		t.Fatalf("id %v in %q", got["id"], record.Message)
	}
	if _, ok := logs.find("relaybox relay started"); ok {
		t.Fatal("an info record passed a warn-level handler")
	}
}
